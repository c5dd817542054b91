//! Recordings made on the real kernel with `teardown record` (tests/fixtures/make.sh), replayed
//! with no kernel and no root: replay must print what the live trace printed, and each teardown
//! must get its verdict.

// A failed unwrap in a test is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{collections::BTreeMap, path::PathBuf, process::Command};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn replay(name: &str, args: &[&str]) -> String {
    replay_file(&fixtures().join(format!("{name}.events.jsonl")), args)
}

/// `teardown replay PATH ARGS`: its stdout, once it succeeded.
fn replay_file(path: &std::path::Path, args: &[&str]) -> String {
    let name = path.display();
    let out = Command::new(env!("CARGO_BIN_EXE_teardown"))
        .arg("replay")
        .arg(path)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "replay of {name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Connection blocks, in a stable order (live output order depends on when the settle timer
/// fired; replay's on event time), and the summary. Connection ids and the counts of events
/// and connections *seen* are left out: the live trace numbered and counted every connection
/// of the host, the recording kept only those matching its filter.
fn blocks(text: &str) -> Vec<String> {
    let mut b: Vec<String> = text
        .split("\n\n")
        .map(|block| {
            block
                .trim()
                .lines()
                .map(|line| {
                    if line.starts_with("summary:") {
                        return line.split(" (").next().unwrap_or(line).to_owned();
                    }
                    line.split_whitespace()
                        .map(|w| if w.starts_with('#') { "#N" } else { w })
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect();
    b.sort();
    b
}

const ALL: [&str; 11] = [
    "four_way_close",
    "three_segment_close",
    "server_first",
    "half_close_with_data",
    "refused",
    "linger_zero",
    "unread_data",
    "data_after_close",
    "close_wait_open",
    "four_way_close_v6",
    "reset_in_close_wait",
];

#[test]
fn replay_prints_what_the_live_trace_printed() {
    for name in ALL {
        let live = std::fs::read_to_string(fixtures().join(format!("{name}.trace.txt"))).unwrap();
        assert_eq!(
            blocks(&replay(name, &[])),
            blocks(&live),
            "replay of {name} differs from its live trace"
        );
    }
}

/// (variant, conformance, finding codes) of the connection whose local end is `role`'s.
type Expect = (&'static str, &'static str, &'static [&'static str]);

fn verdicts(name: &str) -> BTreeMap<String, (String, String, Vec<String>)> {
    let mut m = BTreeMap::new();
    for line in replay(name, &["--format", "jsonl", "--conforming", "full"]).lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v["type"] != "connection" {
            continue;
        }
        let role = v["verdict"]["role"].as_str().unwrap().to_owned();
        let findings = v["verdict"]["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["code"].as_str().unwrap().to_owned())
            .collect();
        m.insert(
            role,
            (
                v["verdict"]["variant"].as_str().unwrap().to_owned(),
                v["verdict"]["conformance"].as_str().unwrap().to_owned(),
                findings,
            ),
        );
    }
    m
}

/// Both ends of a documented four-way close.
const FOUR_WAY: &[(&str, Expect)] = &[
    ("active_closer", ("four_way_close", "conforms", &[])),
    ("passive_closer", ("four_way_close", "conforms", &[])),
];

/// Both ends of an abort: the RST sent by one, received by the other.
const ABORTED: &[(&str, Expect)] = &[
    (
        "active_closer",
        ("abort_by_rst", "deviates", &["reset_sent"]),
    ),
    (
        "passive_closer",
        ("abort_by_rst", "deviates", &["reset_received"]),
    ),
];

#[test]
fn each_recorded_teardown_gets_its_verdict() {
    let table: &[(&str, &[(&str, Expect)])] = &[
        (
            "four_way_close",
            &[
                // A plain close(): the ACK of the FIN turns the socket into a FIN_WAIT2
                // timewait socket (docs/close-sequence.md, fact 2); the rest of its teardown is seen on the peer, with
                // which it is judged.
                ("active_closer", ("four_way_close", "conforms", &[])),
                ("passive_closer", ("four_way_close", "conforms", &[])),
            ],
        ),
        ("four_way_close_v6", FOUR_WAY),
        ("server_first", FOUR_WAY),
        (
            "three_segment_close",
            &[
                ("active_closer", ("three_segment_close", "conforms", &[])),
                ("passive_closer", ("three_segment_close", "conforms", &[])),
            ],
        ),
        (
            "half_close_with_data",
            &[
                ("active_closer", ("half_close_with_data", "conforms", &[])),
                ("passive_closer", ("half_close_with_data", "conforms", &[])),
            ],
        ),
        (
            "refused",
            &[("never_established", ("handshake_refused", "conforms", &[]))],
        ),
        ("linger_zero", ABORTED),
        ("unread_data", ABORTED),
        ("data_after_close", ABORTED),
        (
            // From the scenario lab (make-lab.sh): the half-closed client aborts in FIN_WAIT2.
            "reset_in_close_wait",
            ABORTED,
        ),
        (
            "close_wait_open",
            &[
                // Its peer never closed while the trace ran: from its own end, the socket
                // became a FIN_WAIT2 timewait socket.
                ("active_closer", ("orphaned_fin_wait2", "conforms", &[])),
                // Still in CLOSE_WAIT when the trace stopped: not a deviation, not finished.
                ("passive_closer", ("still_open", "incomplete", &[])),
            ],
        ),
    ];
    for (name, expected) in table {
        let got = verdicts(name);
        assert_eq!(got.len(), expected.len(), "{name}: {got:#?}");
        for (role, (variant, conformance, codes)) in *expected {
            let (v, c, f) = got
                .get(*role)
                .unwrap_or_else(|| panic!("{name}: no {role}: {got:#?}"));
            assert_eq!(
                (v.as_str(), c.as_str(), f.clone()),
                (
                    *variant,
                    *conformance,
                    codes.iter().map(|s| s.to_string()).collect::<Vec<_>>()
                ),
                "{name}: {role}"
            );
        }
    }
}

/// The validator once took every RST received in CLOSE_WAIT (EPIPE) for data written after the
/// peer had fully closed (docs/close-sequence.md, fact 4). Here the server wrote nothing: the
/// peer aborted.
#[test]
fn a_reset_in_close_wait_is_not_taken_for_data_after_close() {
    let mut causes = BTreeMap::new();
    for line in replay("reset_in_close_wait", &["--format", "jsonl"]).lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v["type"] == "connection" {
            causes.insert(
                v["verdict"]["role"].as_str().unwrap().to_owned(),
                v["verdict"]["reset"]["cause"].as_str().unwrap().to_owned(),
            );
        }
    }
    let server = &causes["passive_closer"];
    assert!(server.contains("the peer aborted"), "{server}");
    assert!(!server.contains("wrote"), "{server}");
    assert!(
        causes["active_closer"].contains("SO_LINGER 0"),
        "{causes:?}"
    );
    // And fact 4 itself is still recognised as such, and cited by its number.
    let mut fact4 = String::new();
    for line in replay("data_after_close", &["--format", "jsonl"]).lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v["type"] == "connection" && v["verdict"]["role"] == "passive_closer" {
            fact4 = v["verdict"]["reset"]["cause"].as_str().unwrap().to_owned();
        }
    }
    assert!(fact4.contains("fact 4"), "{fact4}");
}

#[test]
fn bad_input_is_a_line_numbered_error_or_a_count_never_a_panic() {
    let dir = std::env::temp_dir().join(format!("teardown-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = std::fs::read_to_string(fixtures().join("linger_zero.events.jsonl")).unwrap();
    let mut lines: Vec<&str> = good.lines().collect();
    lines.insert(3, "{\"type\":\"event\",\"ts_ns\":");
    lines.insert(5, "\u{0}\u{1}garbage");
    let bad = lines.join("\n");
    let path = dir.join("bad.jsonl");
    std::fs::write(&path, &bad).unwrap();
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_teardown"))
            .arg("replay")
            .arg(&path)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 4"), "{err}");
    assert!(err.contains("--skip-bad-lines"), "{err}");

    let out = run(&["--skip-bad-lines", "--format", "jsonl"]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = stdout.lines().last().unwrap();
    assert!(summary.contains("\"skipped_lines\":2"), "{summary}");
    // The good lines still make both timelines.
    assert!(summary.contains("\"connections\":2"), "{summary}");

    // A truncated file, a wrong version, and bytes that are not a recording at all.
    for (what, content) in [
        ("truncated", good[..good.len() / 2].to_owned()),
        (
            "version",
            good.replacen("\"version\":1", "\"version\":7", 1),
        ),
        ("garbage", "\u{7f}ELF\u{2}\u{1}".repeat(1000)),
        ("empty", String::new()),
    ] {
        std::fs::write(&path, content).unwrap();
        let out = run(&["--skip-bad-lines"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{what}: replay panicked: {err}");
        if what != "truncated" {
            assert!(!out.status.success(), "{what} was accepted");
            assert!(
                err.contains("line 1") || err.contains("empty"),
                "{what}: {err}"
            );
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The full form's events, as the compact form writes them: `[t_ns, what, una, nxt, rcv,
/// wseq, flags, err]`.
fn steps_of_full(events: &serde_json::Value) -> serde_json::Value {
    let steps: Vec<serde_json::Value> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let what = match e["kind"].as_str().unwrap() {
                "state" => format!(
                    "{}>{}",
                    e["old"].as_str().unwrap(),
                    e["new"].as_str().unwrap()
                ),
                kind => format!("{kind}@{}", e["state"].as_str().unwrap()),
            };
            let t_ns = (e["t_us"].as_f64().unwrap() * 1e3).round() as u64;
            let seq = &e["seq"];
            serde_json::json!([
                t_ns,
                what,
                seq["snd_una"],
                seq["snd_nxt"],
                seq["rcv_nxt"],
                seq["write_seq"],
                e["sock"]["flags"],
                e["sock"]["err"]
            ])
        })
        .collect();
    serde_json::Value::Array(steps)
}

/// `--conforming compact` (the default) writes each conforming connection as one short line that
/// loses none of its steps (time, states, sequence numbers, socket flags); `none` leaves them
/// out, with their timewait lines; deviating and incomplete connections, their timewait lines
/// and the summary are the same in every form.
#[test]
fn conforming_connections_are_written_in_the_form_asked() {
    let mut compact_seen = 0;
    let mut timewait_left_out = 0;
    for name in ALL {
        let full = json_lines(&replay(
            name,
            &["--format", "jsonl", "--conforming", "full"],
        ));
        let default = replay(name, &["--format", "jsonl"]);
        let compact_text = replay(name, &["--format", "jsonl", "--conforming", "compact"]);
        assert_eq!(default, compact_text, "{name}: compact is the default");
        let compact = json_lines(&compact_text);
        let none = json_lines(&replay(
            name,
            &["--format", "jsonl", "--conforming", "none"],
        ));
        assert_eq!(full.len(), compact.len(), "{name}");
        let mut kept = Vec::new();
        let mut omitted = Vec::new();
        for (f, c) in full.iter().zip(&compact) {
            let conforms = f["type"] == "connection" && f["verdict"]["conformance"] == "conforms";
            if !conforms {
                assert_eq!(f, c, "{name}: only conforming connections change form");
                // What `none` leaves out of a connection it leaves out of its timewait lines.
                if f["type"] == "timewait" && omitted.contains(&f["id"]) {
                    timewait_left_out += 1;
                } else {
                    kept.push(f.clone());
                }
                continue;
            }
            omitted.push(f["id"].clone());
            compact_seen += 1;
            assert_eq!(c["form"], "compact", "{name}: {c}");
            for key in [
                "id",
                "sk",
                "local",
                "remote",
                "process",
                "netns",
                "start_unix",
                "end",
                "state_at_start",
                "last_state",
                "peer",
            ] {
                assert_eq!(c[key], f[key], "{name}: {key}");
            }
            for key in ["role", "variant", "conformance", "time_wait", "zeek"] {
                assert_eq!(
                    c["verdict"][key], f["verdict"][key],
                    "{name}: verdict.{key}"
                );
            }
            let notes: Vec<&serde_json::Value> = f["verdict"]["notes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| &n["code"])
                .collect();
            let compact_notes: Vec<&serde_json::Value> = c["verdict"]["notes"]
                .as_array()
                .map(|a| a.iter().collect())
                .unwrap_or_default();
            assert_eq!(compact_notes, notes, "{name}: notes");
            assert_eq!(c["steps"], steps_of_full(&f["events"]), "{name}: steps");
            let (fl, cl) = (f.to_string().len(), c.to_string().len());
            assert!(cl * 2 < fl, "{name}: compact {cl} B, full {fl} B");
        }
        assert_eq!(
            none, kept,
            "{name}: none leaves out the conforming ones only"
        );
    }
    assert!(compact_seen >= 10, "{compact_seen} conforming connections");
    assert!(
        timewait_left_out > 0,
        "no timewait line of a conforming connection"
    );
}

/// `--format zeek`: Zeek's header, one row per connection (the two traced ends of one merged),
/// each saying what the JSON Lines record of its end judged last says.
#[test]
fn the_zeek_log_has_a_row_per_connection_in_the_json_lines_words() {
    for name in ALL {
        let log = replay(name, &["--format", "zeek"]);
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.first(), Some(&"#separator \\x09"), "{name}: {log}");
        let header = |key: &str| -> Vec<&str> {
            lines
                .iter()
                .find_map(|l| l.strip_prefix(key))
                .unwrap_or_else(|| panic!("{name}: no {key} in {log}"))
                .split('\t')
                .collect()
        };
        let fields = header("#fields\t");
        assert_eq!(header("#types\t").len(), fields.len(), "{name}");
        assert_eq!(header("#path\t"), ["conn"], "{name}");
        assert!(
            lines.last().is_some_and(|l| l.starts_with("#close\t")),
            "{name}: {log}"
        );
        let col = |k: &str| fields.iter().position(|f| *f == k).unwrap();
        let rows: Vec<Vec<&str>> = lines
            .iter()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split('\t').collect())
            .collect();
        for r in &rows {
            assert_eq!(r.len(), fields.len(), "{name}: {r:?}");
        }

        let json = json_lines(&replay(
            name,
            &["--format", "jsonl", "--conforming", "full"],
        ));
        let ends: Vec<&serde_json::Value> =
            json.iter().filter(|v| v["type"] == "connection").collect();
        let ids: Vec<u64> = ends.iter().filter_map(|e| e["id"].as_u64()).collect();
        let paired = ends
            .iter()
            .filter(|e| e["peer"].as_u64().is_some_and(|p| ids.contains(&p)))
            .count();
        assert_eq!(rows.len(), ends.len() - paired / 2, "{name}: {log}");
        for r in &rows {
            let addr = |h: &str, p: &str| {
                std::net::SocketAddr::new(h.parse().unwrap(), p.parse().unwrap()).to_string()
            };
            let orig = addr(r[col("id.orig_h")], r[col("id.orig_p")]);
            let resp = addr(r[col("id.resp_h")], r[col("id.resp_p")]);
            // The end judged last is the later line.
            let end = ends
                .iter()
                .rev()
                .find(|e| {
                    let (l, rm) = (e["local"].as_str().unwrap(), e["remote"].as_str().unwrap());
                    (l == orig && rm == resp) || (l == resp && rm == orig)
                })
                .unwrap_or_else(|| panic!("{name}: no JSON Lines end for {r:?}"));
            let z = &end["verdict"]["zeek"];
            assert_eq!(r[col("conn_state")], z["conn_state"], "{name}");
            assert_eq!(r[col("history")], z["history"], "{name}");
            assert_eq!(r[col("proto")], "tcp");
            let bytes =
                |v: &serde_json::Value| v.as_u64().map_or("-".to_owned(), |n| n.to_string());
            assert_eq!(r[col("orig_bytes")], bytes(&z["orig_bytes"]), "{name}");
            assert_eq!(r[col("resp_bytes")], bytes(&z["resp_bytes"]), "{name}");
            // The originator is the end that sent the SYN: its local address is orig.
            let originator = z["originator"].as_str().unwrap();
            let local = end["local"].as_str().unwrap();
            assert_eq!(originator != "peer", local == orig, "{name}: {r:?}");
        }
    }
}

/// Zeek's words for each recorded connection, both ends read together and each end alone (the
/// recording cut to one socket's events), as docs/zeek.md's rules give them. The recordings'
/// connections carry 5 bytes each way (half_close_with_data: 4 more from CLOSE_WAIT;
/// data_after_close: 8 more after the client's close; unread_data: 6 more that stay unread),
/// but reset_in_close_wait and refused.
#[test]
fn recorded_connections_get_zeeks_words() {
    // (recording, both ends, the client alone, the server alone): (conn_state, history).
    type Words = (&'static str, &'static str);
    let expected: &[(&str, Words, Words, Words)] = &[
        // Both sent payload, in spans that overlap: neither D is placed; the server's first
        // pure ACK may have been for the client's bytes: no `a`.
        // The closer that went first alone is an orphan whose FIN_WAIT2 timewait socket got
        // the peer's FIN: no event of the full socket shows it (the cut recording leaves out
        // the timewait socket's own records), so that FIN and conn_state's SF are not known.
        (
            "four_way_close",
            ("SF", "ShAFf"),
            ("S2", "ShAF"),
            ("SF", "ShAFf"),
        ),
        // The peer's FIN came with the ACK: the client saw it before its close.
        (
            "three_segment_close",
            ("SF", "ShAFf"),
            ("SF", "ShAFf"),
            ("SF", "ShAFf"),
        ),
        (
            "server_first",
            ("SF", "ShAfF"),
            ("SF", "ShAfF"),
            ("S3", "ShAf"),
        ),
        (
            "four_way_close_v6",
            ("SF", "ShAFf"),
            ("S2", "ShAF"),
            ("SF", "ShAFf"),
        ),
        (
            "half_close_with_data",
            ("SF", "ShAFf"),
            ("SF", "ShAFf"),
            ("SF", "ShAFf"),
        ),
        (
            "linger_zero",
            ("RSTO", "ShAR"),
            ("RSTO", "ShAR"),
            ("RSTO", "ShAR"),
        ),
        // The server, unread data in hand, resets.
        (
            "unread_data",
            ("RSTR", "ShAr"),
            ("RSTR", "ShAr"),
            ("RSTR", "ShAr"),
        ),
        (
            "data_after_close",
            ("RSTO", "ShAFR"),
            ("RSTO", "ShAFR"),
            ("RSTO", "ShAFR"),
        ),
        // The server never closes; the client's end waits as an orphan.
        (
            "close_wait_open",
            ("S2", "ShAF"),
            ("S2", "ShAF"),
            ("S2", "ShAF"),
        ),
        // No payload: the server's ACK of the client's FIN is known to have gone alone when
        // both ends are read; from the client alone (not an orphan) only timing could tell.
        (
            "reset_in_close_wait",
            ("RSTO", "ShAFaR"),
            ("RSTO", "ShAFR"),
            ("RSTO", "ShAFR"),
        ),
    ];
    let words = |lines: &[serde_json::Value], local_port_is_server: bool| -> (String, String) {
        let conns: Vec<&serde_json::Value> = lines
            .iter()
            .filter(|v| v["type"] == "connection" && v["verdict"]["role"] != "listener")
            .collect();
        // The end judged last, or the only one.
        let end = conns
            .iter()
            .rev()
            .find(|c| {
                let server = c["verdict"]["zeek"]["originator"] == "peer";
                conns.len() > 1 || server == local_port_is_server
            })
            .unwrap_or_else(|| panic!("no end in {lines:?}"));
        let z = &end["verdict"]["zeek"];
        (
            z["conn_state"].as_str().unwrap().to_owned(),
            z["history"].as_str().unwrap().to_owned(),
        )
    };
    let dir = std::env::temp_dir().join(format!("teardown-zeek-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, both, client, server) in expected {
        let full = json_lines(&replay(
            name,
            &["--format", "jsonl", "--conforming", "full"],
        ));
        let got = words(&full, false);
        assert_eq!((got.0.as_str(), got.1.as_str()), *both, "{name}: both ends");
        // Each end alone: the recording cut to the events of one socket (the client's first
        // event is its connect(); the server's, its child's LISTEN -> SYN_RECV).
        let text =
            std::fs::read_to_string(fixtures().join(format!("{name}.events.jsonl"))).unwrap();
        let events: Vec<serde_json::Value> = text
            .lines()
            .skip(1)
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let sk_of = |old: &str, new: &str| {
            events
                .iter()
                .find(|e| e["old"] == old && e["new"] == new)
                .map(|e| e["sk"].clone())
                .unwrap()
        };
        for (sk, want, is_server) in [
            (sk_of("CLOSE", "SYN_SENT"), client, false),
            (sk_of("LISTEN", "SYN_RECV"), server, true),
        ] {
            let mut cut: Vec<&str> = vec![text.lines().next().unwrap()];
            cut.extend(
                text.lines()
                    .skip(1)
                    .filter(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["sk"] == sk),
            );
            let path = dir.join(format!("{name}-{is_server}.jsonl"));
            std::fs::write(&path, cut.join("\n") + "\n").unwrap();
            let out = replay_file(&path, &["--format", "jsonl", "--conforming", "full"]);
            let got = words(&json_lines(&out), is_server);
            let who = if is_server {
                "the server alone"
            } else {
                "the client alone"
            };
            assert_eq!((got.0.as_str(), got.1.as_str()), *want, "{name}: {who}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
