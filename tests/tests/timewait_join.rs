//! `teardown trace` follows the timewait socket a connection leaves behind, through sock_diag:
//! when it entered TIME_WAIT, and how it left (here: reused by a new connection on the same
//! 4-tuple, which `tcp_tw_reuse=2`, the default, allows on loopback).

// A failed unwrap in a test is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::Read,
    net::{SocketAddr, TcpListener},
    time::Duration,
};

use socket2::{Domain, Socket, Type};
use teardown_integration_tests::{cli, gate};

fn connect_from(local: SocketAddr, server: SocketAddr) -> std::net::TcpStream {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.set_reuse_address(true).unwrap();
    s.bind(&local.into()).unwrap();
    s.connect(&server.into()).unwrap();
    s.into()
}

#[test]
fn timewait_entry_and_reuse_join_the_traced_connection() {
    if !gate::can_run(gate::KERNEL) {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server = listener.local_addr().unwrap();
    let (child, _) = cli::start_trace_jsonl(
        server.port(),
        &["--duration", "8s", "--timewait-poll", "200ms"],
    )
    .unwrap();

    // First connection: the client closes first and its socket goes to TIME_WAIT.
    // SO_REUSEADDR on both connections: the second binds the first one's port explicitly.
    let client = connect_from("127.0.0.1:0".parse().unwrap(), server);
    let local = client.local_addr().unwrap();
    let (mut accepted, _) = listener.accept().unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let mut buf = Vec::new();
    accepted.read_to_end(&mut buf).unwrap();
    drop(accepted);
    let mut client = client;
    client.read_to_end(&mut buf).unwrap();
    drop(client);
    // tcp_tw_reuse lets a TIME_WAIT 4-tuple be taken again after 1 s (loopback, timestamps):
    // the sleep is the scenario, the socket growing older than that.
    std::thread::sleep(Duration::from_millis(1500));
    let again = connect_from(local, server);
    let (accepted2, _) = listener.accept().unwrap();
    // Held open across three of the agent's 200 ms polls: it tells "reused" from "killed" by
    // seeing the new connection on the 4-tuple, which the test cannot observe from outside.
    std::thread::sleep(Duration::from_millis(600));
    drop(again);
    drop(accepted2);

    let (out, lines) = child.jsonl_output().unwrap();
    let first = lines
        .iter()
        .find(|v| {
            v["type"] == "connection"
                && v["local"] == local.to_string()
                && v["verdict"]["role"] == "active_closer"
        })
        .unwrap_or_else(|| panic!("no timeline for {local}: {out}"));
    let id = first["id"].clone();
    assert_eq!(first["verdict"]["time_wait"], "entered", "{first:#}");
    let facts: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|v| v["type"] == "timewait" && v["id"] == id)
        .collect();
    assert!(
        facts
            .iter()
            .any(|f| f["fact"] == "entered" && f["state"] == "TIME_WAIT"),
        "{facts:#?}"
    );
    assert!(
        facts
            .iter()
            .any(|f| f["fact"] == "left" && f["how"] == "reused"),
        "{facts:#?}\n{out}"
    );
}
