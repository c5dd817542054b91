//! Every event the trace does not deliver is counted by cause, each produced here on the real
//! kernel: the ring buffer full, the `--port` table of matched sockets evicting, a field the
//! kernel programs cannot read, a record the agent cannot decode. Each count is the same in
//! the summary text, the JSON Lines summary's `lost` object and a scrape of the metrics.
//!
//! A healthy host does not fill a field with unreadable bytes on demand, and the programs see
//! the agent behind before the ring buffer fills: those three run with a fault the loader
//! injects (`--inject-fault`, hidden, for these tests).

// A failed unwrap in a test is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    fs::File,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use teardown_integration_tests::{
    cli::{self, Running},
    gate,
    loopback::close_one,
    wait::wait_until,
};

fn scrape(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// `teardown_lost_events_total{cause="CAUSE"}` in a scrape; the port table's evictions, which
/// are not lost events themselves, as `teardown_port_table_evictions_total`.
fn scraped(text: &str, cause: &str) -> Option<u64> {
    let series = if cause == "port_table_evicted" {
        "teardown_port_table_evictions_total ".to_owned()
    } else {
        format!("teardown_lost_events_total{{cause=\"{cause}\"}} ")
    };
    text.lines()
        .find_map(|l| l.strip_prefix(series.as_str())?.trim().parse().ok())
}

/// The count the summary text gives a cause: the part that names it, `N what: what to do`, of
/// its lost-events list or of the line of what may have cost events.
fn in_text(summary: &str, names: &str) -> Option<u64> {
    let line = summary.lines().find(|l| l.starts_with("summary:"))?;
    let lost = line
        .split_once(" lost events (")
        .and_then(|(_, causes)| causes.strip_suffix(')'));
    let at_risk = summary
        .lines()
        .find_map(|l| l.strip_prefix("  may have cost events: "));
    lost.into_iter()
        .chain(at_risk)
        .flat_map(|p| p.split("; "))
        .find_map(|part| {
            let (n, what) = part.split_once(' ')?;
            what.contains(names).then(|| n.parse().ok()).flatten()
        })
}

/// How long a count must stand still to be taken as final.
const SETTLED: Duration = Duration::from_secs(3);

/// What one trace said of its losses.
struct Said {
    /// The summary teardown wrote on stderr.
    text: String,
    /// The JSON Lines summary's `lost` object.
    json: serde_json::Value,
    /// The last scrape, once the cause's count had settled.
    scrape: String,
}

impl Said {
    /// The cause's count in the text, the JSON and the scrape.
    fn counts(&self, cause: &str, names: &str) -> (Option<u64>, Option<u64>, Option<u64>) {
        (
            in_text(&self.text, names),
            self.json[cause].as_u64(),
            scraped(&self.scrape, cause),
        )
    }
}

/// Runs `teardown trace --port PORT ARGS` (JSON Lines to a file, metrics on a free port),
/// runs `work` with its pid once it traces, waits until `cause`'s scraped count is at least
/// `at_least` and has stood still for three seconds (the agent counts the port table at most
/// once a second, on its quarter-second tick, and only after it changed), then stops it with
/// SIGTERM.
fn trace(port: u16, args: &[&str], cause: &str, at_least: u64, work: impl FnOnce(u32)) -> Said {
    let path = |what: &str| -> PathBuf {
        std::env::temp_dir().join(format!(
            "teardown-lost-{}-{cause}.{what}",
            std::process::id()
        ))
    };
    let (out, err) = (path("jsonl"), path("stderr"));
    let mut child = Running::new(
        Command::new(cli::teardown_bin().unwrap())
            .args(["trace", "--format", "jsonl", "--timewait-poll", "0"])
            .args(["--metrics", "127.0.0.1:0", "--port", &port.to_string()])
            .args(args)
            .arg("-o")
            .arg(&out)
            .stdout(Stdio::null())
            .stderr(File::create(&err).unwrap())
            .spawn()
            .unwrap(),
    );
    let read = || std::fs::read_to_string(&err).unwrap_or_default();
    wait_until("teardown to start tracing", Duration::from_secs(30), || {
        Ok(read().lines().any(|l| l.starts_with("tracing")))
    })
    .unwrap_or_else(|e| panic!("{e}: {}", read()));
    let addr = read()
        .lines()
        .find_map(|l| {
            l.strip_prefix("metrics at http://")?
                .strip_suffix("/metrics")
        })
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no metrics address in {}", read()));
    work(child.id());
    let mut text = scrape(&addr);
    let mut last = (scraped(&text, cause), Instant::now());
    let settled = wait_until(
        &format!("{cause} to reach {at_least} and settle"),
        Duration::from_secs(30),
        || {
            std::thread::sleep(Duration::from_millis(100));
            text = scrape(&addr);
            let now = scraped(&text, cause);
            if now != last.0 {
                last = (now, Instant::now());
            }
            Ok(now >= Some(at_least) && last.1.elapsed() >= SETTLED)
        },
    );
    cli::signal(child.id(), libc::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    let stderr = read();
    let jsonl = std::fs::read_to_string(&out).unwrap_or_default();
    let _ = std::fs::remove_file(&err);
    let _ = std::fs::remove_file(&out);
    settled.unwrap_or_else(|e| panic!("{e}\nlast scrape:\n{text}\nstderr:\n{stderr}"));
    assert!(status.success(), "teardown ended with {status}: {stderr}");
    let summary: serde_json::Value = serde_json::from_str(jsonl.lines().last().unwrap()).unwrap();
    assert_eq!(summary["type"], "summary", "{summary:#}");
    Said {
        text: stderr,
        json: summary["lost"].clone(),
        scrape: text,
    }
}

/// A listener on loopback whose port's low byte is no TCP state number (so that the state
/// the undecodable fault reads from a socket bound to it is none).
fn listener() -> TcpListener {
    for _ in 0..100 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        if l.local_addr().unwrap().port() & 0xff >= 16 {
            return l;
        }
    }
    panic!("no port with a low byte above 15 in 100 tries");
}

/// `n` aborted connections (SO_LINGER 0): a RST sent and one received each.
fn aborts(listener: &TcpListener, n: usize) {
    for _ in 0..n {
        close_one(listener, true).unwrap();
    }
}

#[test]
fn a_full_ring_buffer_is_counted_as_such() {
    if !gate::can_run(gate::KERNEL) {
        return;
    }
    let l = listener();
    let port = l.local_addr().unwrap().port();
    // The smallest ring (1 MiB) holds some 8,000 events; 1,500 connections make about 15,000,
    // made while the agent is stopped. The fault hides the ring's size from the programs, so
    // that they never count events as the agent behind: the ring buffer fills instead.
    let said = trace(
        port,
        &["--ring-size", "1", "--inject-fault", "ring-full"],
        "ring_full",
        1,
        |pid| {
            cli::signal(pid, libc::SIGSTOP).unwrap();
            for _ in 0..1500 {
                close_one(&l, false).unwrap();
            }
            cli::signal(pid, libc::SIGCONT).unwrap();
        },
    );
    let (text, json, scraped) = said.counts("ring_full", "ring buffer full");
    assert!(json > Some(1000), "{:#}\n{}", said.json, said.text);
    assert_eq!(
        (text, scraped),
        (json, json),
        "{}\n{}",
        said.text,
        said.scrape
    );
    assert!(
        said.text.contains("ring buffer full: raise --ring-size"),
        "{}",
        said.text
    );
    assert_eq!(said.json["behind"], 0, "{:#}", said.json);
}

#[test]
fn sockets_evicted_from_the_port_table_are_counted() {
    if !gate::can_run(gate::KERNEL) {
        return;
    }
    let l = listener();
    let port = l.local_addr().unwrap().port();
    const TABLE: u64 = 16;
    const HELD: usize = 64;
    // Both ends of 64 held connections and the listener: 129 matched sockets for 16 places.
    let said = trace(
        port,
        &["--port-table", &TABLE.to_string()],
        "port_table_evicted",
        HELD as u64,
        |_| {
            let held: Vec<(TcpStream, TcpStream)> = (0..HELD)
                .map(|_| {
                    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
                    (c, l.accept().unwrap().0)
                })
                .collect();
            drop(held);
        },
    );
    let (text, json, scraped) = said.counts("port_table_evicted", "from the --port table");
    // Each socket was added once at least, and at most TABLE stay: the rest were evicted
    // (some more than once, added again by a later event with their port).
    let evicted = json.unwrap();
    assert!(
        evicted > (2 * HELD as u64 + 1) - TABLE - 8,
        "{:#}\n{}",
        said.json,
        said.text
    );
    assert_eq!(
        (text, scraped),
        (json, json),
        "{}\n{}",
        said.text,
        said.scrape
    );
    assert!(said.text.contains("raise --port-table"), "{}", said.text);
}

#[test]
fn events_with_an_unreadable_field_are_counted() {
    if !gate::can_run(gate::KERNEL) {
        return;
    }
    let l = listener();
    let port = l.local_addr().unwrap().port();
    // The fault leaves the programs without the socket state's offset: each reset (sent by
    // the client, received by the server) fails to read it and is skipped.
    let said = trace(
        port,
        &["--inject-fault", "unreadable"],
        "unreadable",
        10,
        |_| aborts(&l, 5),
    );
    let (text, json, scraped) = said.counts("unreadable", "with a field unreadable");
    // Counted before the port filter, which needs the fields: another test's resets may add
    // to it after the scrape.
    assert!(json >= Some(10), "{:#}\n{}", said.json, said.text);
    assert_eq!(text, json, "{}", said.text);
    assert!(
        scraped >= Some(10) && scraped <= json,
        "{}\n{:#}",
        said.scrape,
        said.json
    );
    assert!(said.text.contains("-vv names the fields"), "{}", said.text);
}

#[test]
fn undecodable_records_are_counted() {
    if !gate::can_run(gate::KERNEL) {
        return;
    }
    let l = listener();
    let port = l.local_addr().unwrap().port();
    // The fault has the programs read the state of a reset at the local port's offset: 0 for
    // the client that let its port go, the port's low byte (above 15) for the server: no
    // TCP state, and the agent's decoder refuses both records.
    let said = trace(
        port,
        &["--inject-fault", "undecodable"],
        "undecodable",
        10,
        |_| aborts(&l, 5),
    );
    let (text, json, scraped) = said.counts("undecodable", "undecodable record");
    assert_eq!(json, Some(10), "{:#}\n{}", said.json, said.text);
    assert_eq!(
        (text, scraped),
        (json, json),
        "{}\n{}",
        said.text,
        said.scrape
    );
    assert!(said.text.contains("undecodable records: "), "{}", said.text);
}
