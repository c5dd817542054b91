//! `teardown trace --format zeek` on the real kernel: a conn.log with Zeek's header and one row
//! per connection, both traced ends merged, in Zeek's words.

// A failed unwrap in a test is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{io::Read, net::TcpListener};

use teardown_integration_tests::{cli, gate, loopback::close_one, wait::wait_until};

#[test]
fn a_live_trace_writes_a_zeek_conn_log() {
    if !gate::can_run(gate::KERNEL) {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let port_arg = port.to_string();
    let (mut agent, _) =
        cli::start_tracing_saying(&["trace", "--format", "zeek", "--port", &port_arg]).unwrap();
    close_one(&listener, false).unwrap();
    close_one(&listener, true).unwrap();
    // Both ends of both reported: the orderly close's client once its FIN_WAIT2 timewait
    // socket is handed on (200 ms); then a clean stop.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    cli::signal(agent.id(), libc::SIGINT).unwrap();
    let mut log = String::new();
    agent
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(agent.wait().unwrap().success());

    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(
        lines[..5],
        [
            "#separator \\x09",
            "#set_separator\t,",
            "#empty_field\t(empty)",
            "#unset_field\t-",
            "#path\tconn"
        ],
        "{log}"
    );
    let fields: Vec<&str> = lines
        .iter()
        .find_map(|l| l.strip_prefix("#fields\t"))
        .unwrap()
        .split('\t')
        .collect();
    let col = |k: &str| fields.iter().position(|f| *f == k).unwrap();
    let rows: Vec<Vec<&str>> = lines
        .iter()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split('\t').collect())
        .collect();
    // Two connections, each one row though both its ends were traced.
    assert_eq!(rows.len(), 2, "{log}");
    for r in &rows {
        assert_eq!(
            r[col("id.resp_p")],
            port_arg,
            "the server is the responder: {r:?}"
        );
        assert_eq!(r[col("id.orig_h")], "127.0.0.1");
        assert_eq!(r[col("proto")], "tcp");
        assert_eq!(r[col("orig_bytes")], "0", "{r:?}");
        assert_eq!(r[col("resp_bytes")], "0", "{r:?}");
    }
    // In either order: a row is written once both its ends are reported, and the orderly
    // close's client is reported 200 ms after its close.
    let mut words: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r[col("conn_state")], r[col("history")]))
        .collect();
    words.sort();
    assert_eq!(words[0], ("RSTO", "ShAR"), "{log}");
    // The orderly close: the server's ACK alone (four segments) or on its FIN (three).
    assert!(
        words[1] == ("SF", "ShAFaf") || words[1] == ("SF", "ShAFf"),
        "{words:?}"
    );
    assert!(lines.last().unwrap().starts_with("#close\t"), "{log}");
}

/// SIGHUP on `-o conn.log`: the renamed file ends with its `#close`, the new one begins with
/// Zeek's header, and the rows of each are whole.
#[test]
fn a_rotated_zeek_log_is_closed_and_the_new_one_has_the_header() {
    if !gate::can_run(gate::KERNEL) {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let dir = std::env::temp_dir();
    let out = dir.join(format!("teardown-conn-{}.log", std::process::id()));
    let rotated = dir.join(format!("teardown-conn-{}.log.1", std::process::id()));
    let (mut agent, said) = cli::start_tracing_saying(&[
        "trace",
        "--format",
        "zeek",
        "--port",
        &port,
        "-o",
        out.to_str().unwrap(),
        "--metrics",
        "127.0.0.1:0",
    ])
    .unwrap();
    let metrics = said
        .iter()
        .find_map(|l| {
            l.strip_prefix("metrics at http://")?
                .strip_suffix("/metrics")
        })
        .unwrap_or_else(|| panic!("no metrics address in {said:?}"))
        .to_owned();
    let judged = |n: f64| {
        wait_until(
            "the ends judged",
            std::time::Duration::from_secs(15),
            || Ok(cli::connections_counted(&metrics)? >= n),
        )
        .unwrap()
    };
    // An abort: both ends reported at once, its row written as the second comes.
    close_one(&listener, true).unwrap();
    judged(2.0);
    std::fs::rename(&out, &rotated).unwrap();
    cli::signal(agent.id(), libc::SIGHUP).unwrap();
    wait_until(
        "the reopened file",
        std::time::Duration::from_secs(10),
        || Ok(out.exists()),
    )
    .unwrap();
    close_one(&listener, true).unwrap();
    judged(4.0);
    cli::signal(agent.id(), libc::SIGTERM).unwrap();
    assert!(agent.wait().unwrap().success());
    let old = std::fs::read_to_string(&rotated).unwrap();
    let new = std::fs::read_to_string(&out).unwrap();
    std::fs::remove_file(&rotated).unwrap();
    std::fs::remove_file(&out).unwrap();
    let rows = |text: &str| text.lines().filter(|l| !l.starts_with('#')).count();
    for (what, text) in [("renamed", &old), ("new", &new)] {
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "#separator \\x09", "the {what} file: {text}");
        assert!(lines.iter().any(|l| l.starts_with("#fields\t")), "{text}");
        assert!(
            lines.last().unwrap().starts_with("#close\t"),
            "the {what} file: {text}"
        );
        assert_eq!(rows(text), 1, "the {what} file: {text}");
        let row = lines.iter().find(|l| !l.starts_with('#')).unwrap();
        assert_eq!(row.split('\t').count(), 22, "{row}");
        assert!(row.contains("\tRSTO\t"), "{row}");
    }
}
