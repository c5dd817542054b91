//! `--port` is applied in the kernel: events of other connections never reach the ring buffer,
//! while the whole life of a matching socket does (its last transitions included, when its
//! local port is already zero).

// A failed unwrap in a test is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;

use teardown::kernel::ProbeConfig;
use teardown_integration_tests::{gate, loopback::close_one, tracer::Tracer};

#[test]
fn only_matching_sockets_reach_the_agent() {
    if !gate::can_run(gate::KERNEL) {
        return;
    }
    let wanted = TcpListener::bind("127.0.0.1:0").unwrap();
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = wanted.local_addr().unwrap().port();
    let other_port = other.local_addr().unwrap().port();
    let tracer = Tracer::start_with(ProbeConfig {
        ports: vec![port],
        ..ProbeConfig::default()
    });
    close_one(&other, false).unwrap();
    close_one(&wanted, false).unwrap();
    close_one(&other, false).unwrap();
    let (events, lost) = tracer.stop();
    assert_eq!(lost, 0);
    assert!(
        events
            .iter()
            .all(|e| e.local.port() != other_port && e.remote.port() != other_port),
        "events of the other port reached the agent"
    );
    // Both ends of the wanted connection, whole: 5 transitions each, the last ones with a local
    // port of zero (the socket was unhashed) passing thanks to the socket's earlier match.
    let unhashed = events
        .iter()
        .filter(|e| e.local.port() == 0 && e.remote.port() != 0)
        .count();
    assert!(unhashed >= 1, "{events:#?}");
    let states = events
        .iter()
        .filter(|e| matches!(e.kind, teardown::decode::EventKind::State { .. }))
        .count();
    assert_eq!(states, 10, "{events:#?}");
}
