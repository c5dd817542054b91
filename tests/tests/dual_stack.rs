//! A dual-stack server (listening on `[::]`, `IPV6_V6ONLY` off) and an IPv4 client, in a network
//! namespace of the test's own: `teardown trace` reports one record per socket, each seen from
//! its start, the two ends paired, both verdicts conforming.
//!
//! The server's socket shows the connection IPv4-mapped (`[::ffff:127.0.0.1]`), the client's in
//! IPv4 form. Some kernels (6.1, 6.12) report the server's socket with the listener's address
//! until it is established and with the mapped one after, on the same socket: it must stay one
//! record. Nothing here depends on which of the two a kernel does.

// A failed unwrap in a test is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{Read, Write},
    net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use socket2::{Domain, Socket, Type};
use teardown_integration_tests::{
    cli, gate,
    netns::Netns,
    tracer::{steps, ACTIVE_CLOSE, CLIENT_OPEN, PASSIVE_CLOSE, SERVER_OPEN},
    wait::wait_until,
};

/// Generous: the kernel tests also run in software-emulated guests.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// A listener on `[::]:port` that takes IPv4 connections too.
fn dual_stack_listener(port: u16) -> TcpListener {
    let s = Socket::new(Domain::IPV6, Type::STREAM, None).unwrap();
    s.set_only_v6(false).unwrap();
    s.set_reuse_address(true).unwrap();
    s.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into())
        .unwrap();
    s.listen(8).unwrap();
    s.into()
}

fn read_to_eof(s: &mut TcpStream) {
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "unexpected data: {rest:?}");
}

/// In the namespace: one IPv4 connection to the dual-stack listener on `port`, closed by the
/// client first or by the server first. Returns the client's address.
fn connect_and_close(port: u16, client_first: bool) -> SocketAddr {
    let listener = dual_stack_listener(port);
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (mut server, seen) = listener.accept().unwrap();
    drop(listener);
    let local = client.local_addr().unwrap();
    // The server's socket sees its IPv4 client IPv4-mapped: it is a dual-stack one.
    assert_eq!(
        seen.to_string(),
        format!("[::ffff:127.0.0.1]:{}", local.port())
    );
    for s in [&client, &server] {
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    }
    client.write_all(b"hello").unwrap();
    let mut buf = [0u8; 5];
    server.read_exact(&mut buf).unwrap();
    if client_first {
        drop(client);
        read_to_eof(&mut server);
        drop(server);
    } else {
        drop(server);
        read_to_eof(&mut client);
        drop(client);
    }
    local
}

/// Sockets on `port` in the namespace other than timewait ones: once there are none, both ends
/// have made their last transition.
fn busy_on(ns: &Netns, port: u16) -> std::io::Result<Vec<String>> {
    let p = format!(":{port}");
    ns.ss(&[
        "-tan",
        "exclude",
        "time-wait",
        "exclude",
        "listening",
        "(",
        "sport",
        "=",
        &p,
        "or",
        "dport",
        "=",
        &p,
        ")",
    ])
}

/// The record's steps, as `OLD->NEW` (state changes only).
fn record_steps(rec: &serde_json::Value) -> Vec<String> {
    rec["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "state")
        .map(|e| {
            format!(
                "{}->{}",
                e["old"].as_str().unwrap(),
                e["new"].as_str().unwrap()
            )
        })
        .collect()
}

fn assert_conforms(rec: &serde_json::Value, role: &str) {
    let v = &rec["verdict"];
    assert_eq!(v["role"], role, "{rec:#}");
    assert_eq!(v["conformance"], "conforms", "{rec:#}");
    assert!(v["incomplete"].is_null(), "{rec:#}");
    assert!(
        v["variant"] == "four_way_close" || v["variant"] == "three_segment_close",
        "{rec:#}"
    );
    // Judged with the other end: its sequence numbers were checked across both sockets.
    assert_eq!(v["with_peer"], true, "{rec:#}");
}

fn dual_stack_connection(port: u16, client_first: bool) {
    let ns = Netns::new("td-dual").unwrap();
    // The duration is a backstop only: the test stops the trace itself once both ends closed.
    // The full form, for the verdict's details.
    let (child, _) = cli::start_trace_jsonl(
        port,
        &[
            "--duration",
            "300s",
            "--netns",
            ns.name(),
            "--conforming",
            "full",
        ],
    )
    .unwrap();
    let client = ns.run(|| connect_and_close(port, client_first));
    wait_until("both ends to close", IO_TIMEOUT, || {
        Ok(busy_on(&ns, port)?.is_empty())
    })
    .unwrap();
    cli::signal(child.id(), libc::SIGTERM).unwrap();
    let (out, lines) = child.jsonl_output().unwrap();

    let conns: Vec<&serde_json::Value> =
        lines.iter().filter(|v| v["type"] == "connection").collect();
    assert!(
        conns.iter().all(|c| c["end"] == "closed"),
        "a record cut short (superseded, or still open): {out}"
    );
    let server_local = format!("[::ffff:127.0.0.1]:{port}");
    let client_local = client.to_string();
    let servers: Vec<&&serde_json::Value> = conns
        .iter()
        .filter(|c| c["remote"] == format!("[::ffff:127.0.0.1]:{}", client.port()))
        .collect();
    let clients: Vec<&&serde_json::Value> = conns
        .iter()
        .filter(|c| c["local"] == client_local)
        .collect();
    assert_eq!(
        servers.len(),
        1,
        "one record for the server's socket: {out}"
    );
    assert_eq!(
        clients.len(),
        1,
        "one record for the client's socket: {out}"
    );
    assert_eq!(conns.len(), 2, "{out}");
    let (server, client) = (servers[0], clients[0]);

    // Addresses as the kernel and `ss` show them: mapped on the server's socket, IPv4 on the
    // client's.
    assert_eq!(server["local"], server_local, "{server:#}");
    assert_eq!(client["remote"], format!("127.0.0.1:{port}"), "{client:#}");

    // Each seen from its start, whole.
    let (client_close, server_close) = if client_first {
        (&ACTIVE_CLOSE, &PASSIVE_CLOSE)
    } else {
        (&PASSIVE_CLOSE, &ACTIVE_CLOSE)
    };
    assert_eq!(
        record_steps(server),
        steps(SERVER_OPEN, server_close),
        "{server:#}"
    );
    assert_eq!(
        record_steps(client),
        steps(CLIENT_OPEN, client_close),
        "{client:#}"
    );

    // Paired, both ways.
    assert_eq!(server["peer"], client["id"], "{out}");
    assert_eq!(client["peer"], server["id"], "{out}");

    let (client_role, server_role) = if client_first {
        ("active_closer", "passive_closer")
    } else {
        ("passive_closer", "active_closer")
    };
    assert_conforms(client, client_role);
    assert_conforms(server, server_role);
}

#[test]
fn the_ipv4_client_closes_first() {
    if gate::can_run(gate::KERNEL) {
        dual_stack_connection(24_751, true);
    }
}

#[test]
fn the_dual_stack_server_closes_first() {
    if gate::can_run(gate::KERNEL) {
        dual_stack_connection(24_752, false);
    }
}
