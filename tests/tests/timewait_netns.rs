//! `teardown trace --timewait-netns`: the tracepoints see connections of every network
//! namespace, and the timewait socket a connection leaves behind in another namespace is
//! followed too: by the kernel's timer events in any namespace, or, polling sock_diag alone
//! (which answers for one namespace at a time), when that namespace is named.

// A failed unwrap in a test is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::Read,
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
};

use teardown_integration_tests::{cli, gate, netns::Netns};

/// A connection inside `ns` whose client closes first and ends in TIME_WAIT there; returns
/// the client's address.
fn client_enters_time_wait(ns: &Netns, port: u16) -> SocketAddr {
    ns.run(|| {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let local = client.local_addr().unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        let mut buf = Vec::new();
        server.read_to_end(&mut buf).unwrap();
        drop(server);
        client.read_to_end(&mut buf).unwrap();
        local
    })
}

/// Traces `port` for 3 s with `extra` arguments while the connection is made in `ns`; returns
/// the client's timeline and the timewait facts joined to it.
fn trace(ns: &Netns, port: u16, extra: &[&str]) -> (serde_json::Value, Vec<serde_json::Value>) {
    let mut args = vec!["--duration", "3s", "--timewait-poll", "200ms"];
    args.extend_from_slice(extra);
    let (child, _) = cli::start_trace_jsonl(port, &args).unwrap();
    let client = client_enters_time_wait(ns, port);
    let (out, lines) = child.jsonl_output().unwrap();
    let timeline = lines
        .iter()
        .find(|v| v["type"] == "connection" && v["local"] == client.to_string())
        .unwrap_or_else(|| panic!("no timeline for {client}: {out}"))
        .clone();
    let facts = lines
        .iter()
        .filter(|v| v["type"] == "timewait" && v["id"] == timeline["id"])
        .cloned()
        .collect();
    (timeline, facts)
}

#[test]
fn timewait_sockets_of_a_named_namespace_join_their_connection() {
    if !gate::can_run(gate::KERNEL) {
        return;
    }
    let ns = Netns::new("td-twns").unwrap();
    // A port each, so that no connection meets another one's TIME_WAIT.
    let (followed, unfollowed, polled_only) = (24_701, 24_702, 24_703);

    let (timeline, facts) = trace(&ns, followed, &["--timewait-netns", ns.name()]);
    let ns_inode = {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(ns.path()).unwrap().ino()
    };
    assert_eq!(timeline["netns"], ns_inode, "{timeline:#}");
    assert_eq!(timeline["verdict"]["role"], "active_closer", "{timeline:#}");
    assert_eq!(timeline["verdict"]["time_wait"], "entered", "{timeline:#}");
    assert!(
        facts
            .iter()
            .any(|f| f["fact"] == "entered" && f["state"] == "TIME_WAIT"),
        "{facts:#?}"
    );

    // Without the option, the kernel's timer events follow it all the same.
    let (timeline, facts) = trace(&ns, unfollowed, &[]);
    assert_eq!(timeline["verdict"]["time_wait"], "entered", "{timeline:#}");
    assert!(
        facts
            .iter()
            .any(|f| f["fact"] == "entered" && f["state"] == "TIME_WAIT"),
        "{facts:#?}"
    );

    // Polling sock_diag alone (a kernel without the timer programs), the connection is still
    // traced, but its timewait socket is not seen without the option.
    let (timeline, facts) = trace(&ns, polled_only, &["--timewait-source", "sock-diag"]);
    assert_eq!(timeline["verdict"]["time_wait"], "entered", "{timeline:#}");
    assert!(facts.is_empty(), "{facts:#?}");
}

/// The same 4-tuple in TIME_WAIT in two namespaces at once: each connection gets the facts of
/// its own namespace's timewait socket, once.
#[test]
fn the_same_four_tuple_in_two_namespaces_is_joined_to_each_its_own() {
    if !gate::can_run(gate::KERNEL) {
        return;
    }
    let ns = Netns::new("td-twns2").unwrap();
    // Ports free on the host now (the namespace is new: free there too).
    let free_port = || {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (server_port, client_port) = (free_port(), free_port());
    let (child, _) = cli::start_trace_jsonl(
        server_port,
        &[
            "--duration",
            "4s",
            "--timewait-poll",
            "200ms",
            "--timewait-netns",
            ns.name(),
        ],
    )
    .unwrap();
    let connect = || {
        let listener = TcpListener::bind(("127.0.0.1", server_port)).unwrap();
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_reuse_address(true).unwrap();
        let local: SocketAddr = ([127, 0, 0, 1], client_port).into();
        s.bind(&local.into()).unwrap();
        let server: SocketAddr = ([127, 0, 0, 1], server_port).into();
        s.connect(&server.into()).unwrap();
        let mut client: TcpStream = s.into();
        let (mut accepted, _) = listener.accept().unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        let mut buf = Vec::new();
        accepted.read_to_end(&mut buf).unwrap();
        drop(accepted);
        client.read_to_end(&mut buf).unwrap();
    };
    connect();
    ns.run(connect);
    let (out, lines) = child.jsonl_output().unwrap();
    let client = format!("127.0.0.1:{client_port}");
    let timelines: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|v| v["type"] == "connection" && v["local"] == client)
        .collect();
    assert_eq!(timelines.len(), 2, "{out}");
    assert_ne!(timelines[0]["netns"], timelines[1]["netns"], "{out}");
    for t in timelines {
        // Judged with the server end of its own namespace, not the other one's.
        let peer = lines
            .iter()
            .find(|v| v["type"] == "connection" && v["id"] == t["peer"])
            .unwrap_or_else(|| panic!("no peer for {t:#}\n{out}"));
        assert_eq!(peer["netns"], t["netns"], "{out}");
        assert_eq!(t["verdict"]["conformance"], "conforms", "{t:#}");
        let entered: Vec<&serde_json::Value> = lines
            .iter()
            .filter(|v| v["type"] == "timewait" && v["id"] == t["id"] && v["fact"] == "entered")
            .collect();
        assert_eq!(entered.len(), 1, "{t:#}\n{out}");
        assert_eq!(entered[0]["netns"], t["netns"], "{out}");
    }
}

#[test]
fn an_unknown_namespace_is_refused_before_tracing() {
    let out = std::process::Command::new(cli::teardown_bin().unwrap())
        .args(["trace", "--timewait-netns", "no-such-namespace-here"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--timewait-netns no-such-namespace-here: no network namespace at"),
        "{err}"
    );
}
