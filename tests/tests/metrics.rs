//! `teardown trace --metrics`: a Prometheus endpoint that counts what the trace judged, scraped
//! over HTTP while real connections close.

// A failed unwrap in a test is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    time::Duration,
};

use teardown_integration_tests::{cli, gate, loopback::close_one, wait::wait_until};

fn scrape(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// The value of the sample `name{labels}` (labels exactly as written), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[test]
fn metrics_count_the_judged_teardowns() {
    if !gate::can_run(gate::KERNEL) {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (mut child, said) = cli::start_trace_jsonl(port, &["--metrics", "127.0.0.1:0"]).unwrap();
    let url = said
        .iter()
        .find_map(|l| l.strip_prefix("metrics at http://"))
        .unwrap_or_else(|| panic!("no metrics address in {said:?}"));
    let addr = url.strip_suffix("/metrics").unwrap().to_owned();

    // One orderly close, one abort with SO_LINGER 0.
    for abort in [false, true] {
        close_one(&listener, abort).unwrap();
    }

    // Both ends of both connections are reported once they settle: scrape until they are
    // (bounded: 10 s); the assertions below say what is missing if they never are.
    let reported = |t: &str| {
        t.lines()
            .filter(|l| l.starts_with("teardown_connections_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let mut text = String::new();
    let _ = wait_until("four ends counted", Duration::from_secs(10), || {
        text = scrape(&addr, "/metrics");
        Ok(reported(&text) >= 4.0)
    });
    assert!(text.starts_with("HTTP/1."), "{text}");
    assert!(
        text.contains("Content-Type: application/openmetrics-text; version=1.0.0"),
        "{text}"
    );
    assert_eq!(reported(&text), 4.0, "{text}");
    assert!(
        text.trim_end().ends_with("# EOF"),
        "not OpenMetrics: {text}"
    );
    let aborted = |role: &str| {
        sample(
            &text,
            &format!(
                "teardown_connections_total{{role=\"{role}\",variant=\"abort_by_rst\",conformance=\"deviates\",namespace=\"host\"}}"
            ),
        )
    };
    assert_eq!(aborted("active_closer"), Some(1.0), "{text}");
    assert_eq!(aborted("passive_closer"), Some(1.0), "{text}");
    assert_eq!(
        sample(&text, "teardown_findings_total{finding=\"reset_sent\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "teardown_kernel_lost_events_total"),
        Some(0.0),
        "{text}"
    );
    // Both ends: 5 state changes each for the orderly close, 3 each for the abort, and resets.
    assert!(
        sample(&text, "teardown_kernel_events_total").unwrap_or(0.0) >= 16.0,
        "{text}"
    );
    let elsewhere = scrape(&addr, "/elsewhere");
    assert!(
        elsewhere
            .lines()
            .next()
            .unwrap_or("")
            .ends_with(" 404 Not Found"),
        "{elsewhere}"
    );

    teardown_integration_tests::cli::signal(child.id(), libc::SIGTERM).unwrap();
    assert!(child.wait().unwrap().success());
}
