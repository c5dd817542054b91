//! `teardown serve` scraped by a real Prometheus server (Debian's), with real teardowns driven on
//! the host and in a network namespace; what a fleet's dashboards would ask is asked in PromQL
//! through Prometheus' HTTP API.

// A failed unwrap in a test is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::BTreeSet,
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use teardown_integration_tests::{
    cli, gate, loopback::close_one, netns::Netns, prometheus::Prometheus,
};

/// Long enough for a poll of the namespaces (1 s), a scrape (1 s) and slow machines.
const SETTLE: Duration = Duration::from_secs(30);

#[test]
fn prometheus_aggregates_what_the_agent_judged_and_saw() {
    if !gate::can_run(gate::PROMETHEUS) {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let ns = Netns::new("prom").unwrap();
    // Every timewait socket holds its port in the namespace, so that port pressure is exact.
    ns.set_sysctl("net.ipv4.tcp_tw_reuse", "0").unwrap();
    let range = ns.sysctl("net.ipv4.ip_local_port_range").unwrap();
    let range: Vec<f64> = range
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    let range_size = range[1] - range[0] + 1.0;
    let out = std::env::temp_dir().join(format!("teardown-serve-{}.jsonl", std::process::id()));
    let port_arg = port.to_string();
    let out_arg = out.display().to_string();
    let (mut agent, said) = cli::start_tracing_saying(&[
        "serve",
        "--port",
        &port_arg,
        "--metrics",
        "127.0.0.1:0",
        "--figures-every",
        "1s",
        "--close-wait-threshold",
        "1",
        // Whatever else this host holds, the test's namespace and destination get series.
        "--metrics-namespaces",
        "10000",
        "--metrics-destinations",
        "10000",
        "-o",
        &out_arg,
    ])
    .unwrap();
    let addr: SocketAddr = said
        .iter()
        .find_map(|l| {
            l.strip_prefix("metrics at http://")?
                .strip_suffix("/metrics")
        })
        .unwrap_or_else(|| panic!("no metrics address in {said:?}"))
        .parse()
        .unwrap();
    assert!(addr.ip().is_loopback(), "{addr}");
    let prom = Prometheus::start(&[addr]).unwrap();
    let check = |r: Result<f64, String>| r.unwrap_or_else(|e| panic!("{e}\n{}", prom.log()));
    check(prom.wait_for("up{job=\"teardown\"}", "up", SETTLE, |v| v == 1.0));

    // On the host: orderly closes and RST aborts.
    for _ in 0..5 {
        close_one(&listener, false).unwrap();
    }
    // One abort first, seen by Prometheus before the others: a series has a rate once it
    // has grown between two scrapes.
    let aborts = "sum(teardown_connections_total{namespace=\"host\",conformance=\"deviates\",\
                  variant=\"abort_by_rst\"})";
    close_one(&listener, true).unwrap();
    check(prom.wait_for(aborts, "both ends of the first abort", SETTLE, |v| v == 2.0));
    for _ in 0..2 {
        close_one(&listener, true).unwrap();
    }
    // In the namespace: clients that close first, leaving TIME_WAIT there; and a CLOSE_WAIT
    // leak (the peer closed; the application holds its socket and never closes it).
    let held = ns.run(|| {
        let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
        for _ in 0..7 {
            close_one(&l, false).unwrap();
        }
        let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (held, _) = l.accept().unwrap();
        drop(client);
        held
    });
    let timewait = ns.ss(&["-tan", "state", "time-wait"]).unwrap().len();
    assert_eq!(timewait, 7, "ss in the namespace");
    let netns = format!("netns {}", ns.inode());

    // TIME_WAIT per namespace, as `ss` counts it.
    check(prom.wait_for(
        &format!("sum(teardown_closing_sockets{{namespace=\"{netns}\",state=\"TIME_WAIT\"}})"),
        "what ss says",
        SETTLE,
        |v| v == timewait as f64,
    ));
    // The ports they hold toward their one destination, and the pressure that makes: the 7
    // TIME_WAIT sockets, and the leak's client end, an orphan in FIN_WAIT2 (a timewait socket
    // too, which holds its port whatever tcp_tw_reuse says).
    let dest = format!("namespace=\"{netns}\",destination=\"127.0.0.1:{port}\"");
    check(prom.wait_for(
        &format!("teardown_destination_ports_held{{{dest}}}"),
        "8",
        SETTLE,
        |v| v == 8.0,
    ));
    check(prom.wait_for(
        &format!("teardown_port_pressure_ratio{{namespace=\"{netns}\"}}"),
        "8 ports of the range",
        SETTLE,
        |v| (v - 8.0 / range_size).abs() < 1e-9,
    ));
    // The leak, once older than the threshold.
    check(prom.wait_for(
        &format!("sum(teardown_closing_sockets{{namespace=\"{netns}\",state=\"CLOSE_WAIT\"}})"),
        "the one CLOSE_WAIT socket",
        SETTLE,
        |v| v == 1.0,
    ));
    check(prom.wait_for(
        &format!("teardown_close_wait_leaks{{namespace=\"{netns}\"}}"),
        "the one leak",
        SETTLE,
        |v| v == 1.0,
    ));

    // The judged teardowns: both ends of each, per namespace and conformance.
    let conns = |labels: &str| format!("sum(teardown_connections_total{{{labels}}})");
    check(prom.wait_for(
        &conns("namespace=\"host\",conformance=\"conforms\""),
        "both ends of the 5 orderly closes",
        SETTLE,
        |v| v == 10.0,
    ));
    check(prom.wait_for(aborts, "both ends of the 3 aborts", SETTLE, |v| v == 6.0));
    check(prom.wait_for(
        &conns(&format!("namespace=\"{netns}\"")),
        // Not the leak's ends: the server's is open, and the client's verdict waits for what
        // its FIN_WAIT2 timewait socket meets (the server's FIN, or its timer).
        "both ends of the namespace's 7 closes",
        SETTLE,
        |v| v == 14.0,
    ));
    // The rate of deviating teardowns by variant: the aborts alone.
    let deviating = prom
        .query(
            "sum by (variant) (rate(teardown_connections_total{conformance=\"deviates\"}[5m])) > 0",
        )
        .unwrap();
    let variants: BTreeSet<&str> = deviating
        .iter()
        .map(|s| s.labels["variant"].as_str())
        .collect();
    assert_eq!(variants, BTreeSet::from(["abort_by_rst"]), "{deviating:?}");
    let mut findings: Vec<(String, f64)> = prom
        .query("sum by (finding) (teardown_findings_total)")
        .unwrap()
        .iter()
        .map(|s| (s.labels["finding"].clone(), s.value))
        .collect();
    findings.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        findings,
        vec![("reset_received".into(), 3.0), ("reset_sent".into(), 3.0)]
    );
    // Lost events, by cause: every cause present, none counted.
    assert_eq!(
        prom.value("count(teardown_lost_events_total)").unwrap(),
        Some(5.0)
    );
    assert_eq!(
        prom.value("sum(teardown_lost_events_total)").unwrap(),
        Some(0.0)
    );

    // Prometheus understood every metric's type, and the names follow its conventions: a
    // counter's samples end in _total, nothing else's do.
    let metadata = prom.api("/api/v1/metadata").unwrap();
    let names = prom.api("/api/v1/label/__name__/values").unwrap();
    let series: BTreeSet<&str> = names
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n.as_str())
        .filter(|n| n.starts_with("teardown_"))
        .collect();
    assert!(series.len() > 20, "{series:?}");
    for name in &series {
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "{name} is not snake_case"
        );
        let family = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| metadata.get(*f).is_some()))
            .unwrap_or(name);
        let kind = metadata[family][0]["type"].as_str().unwrap_or("none");
        match kind {
            "counter" => assert!(name.ends_with("_total"), "counter {name}"),
            "gauge" => assert!(!name.ends_with("_total"), "gauge {name}"),
            "histogram" => {}
            _ => panic!("{name}: Prometheus took its type for {kind:?}: {metadata}"),
        }
    }

    // SIGTERM: a clean stop, the output flushed and ended by the summary.
    cli::signal(agent.id(), libc::SIGTERM).unwrap();
    assert!(agent.wait().unwrap().success());
    let written = std::fs::read_to_string(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    let last: serde_json::Value = serde_json::from_str(written.lines().last().unwrap()).unwrap();
    assert_eq!(last["type"], "summary", "{written}");
    drop(held);
}
