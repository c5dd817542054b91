//! Connections are told apart by network namespace: `trace --netns` reports one namespace's
//! connections only, and `top --batch --netns` shows only that namespace's deviating teardowns.

// A failed unwrap in a test is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{os::unix::fs::MetadataExt as _, time::Duration};

use teardown_integration_tests::{cli, gate, loopback::close_one_on, netns::Netns};

#[test]
fn trace_reports_only_the_named_namespace() {
    if !gate::can_run(gate::KERNEL) {
        return;
    }
    let ns = Netns::new("td-nsf").unwrap();
    let port = 24_721u16;
    let (child, _) =
        cli::start_trace_jsonl(port, &["--duration", "3s", "--netns", ns.name()]).unwrap();
    // The same port in both namespaces: only the namespace's two ends are reported.
    close_one_on(port, false).unwrap();
    ns.run(|| close_one_on(port, false).unwrap());
    let (out, lines) = child.jsonl_output().unwrap();
    let inode = std::fs::metadata(ns.path()).unwrap().ino();
    let conns: Vec<&serde_json::Value> =
        lines.iter().filter(|v| v["type"] == "connection").collect();
    assert_eq!(conns.len(), 2, "{out}");
    assert!(conns.iter().all(|c| c["netns"] == inode), "{out}");
}

#[test]
fn top_batch_shows_only_the_named_namespaces_teardowns() {
    if !gate::can_run(gate::KERNEL) {
        return;
    }
    let ns = Netns::new("td-nst").unwrap();
    let (host_port, ns_port) = (24_731u16, 24_732u16);
    let (mut child, lines) = cli::start_top_batch(&[
        "--interval",
        "0.2",
        "--no-owners",
        "--netns",
        ns.name(),
        "--duration",
        "120s",
    ])
    .unwrap();
    let next = || lines.recv_timeout(Duration::from_secs(30)).unwrap();
    let first = next();
    assert!(
        !first.starts_with('#'),
        "the tracer did not attach: {first}"
    );

    // An abort on the host first, then one in the namespace: only the latter is shown.
    close_one_on(host_port, true).unwrap();
    ns.run(|| close_one_on(ns_port, true).unwrap());
    let mut shown = Vec::new();
    // Bounded: the namespace's two lines come within a settle time; 100 lines is ample.
    for _ in 0..100 {
        let l = next();
        if l.starts_with("teardown ") {
            shown.push(l);
            if shown
                .iter()
                .filter(|l| l.contains(&format!(":{ns_port}")))
                .count()
                == 2
            {
                break;
            }
        }
    }
    assert!(
        shown.iter().all(|l| !l.contains(&format!(":{host_port}"))),
        "a host teardown was shown: {shown:?}"
    );
    assert_eq!(
        shown
            .iter()
            .filter(|l| l.contains(&format!(":{ns_port}")))
            .count(),
        2,
        "{shown:?}"
    );

    teardown_integration_tests::cli::signal(child.id(), libc::SIGTERM).unwrap();
    assert!(child.wait().unwrap().success());
}
