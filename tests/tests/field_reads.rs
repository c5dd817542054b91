//! The kernel programs read socket fields two ways: plain loads checked by the verifier against
//! BTF (the default), and `bpf_probe_read_kernel` (when the verifier refuses plain loads). Both
//! must give the same facts about a real connection: its 4-tuple, its network namespace, and
//! sequence numbers that agree across its two ends.

// A failed unwrap in a test is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use teardown::{
    decode::{EventKind, SeqSnapshot, TcpState},
    kernel::ProbeConfig,
};
use teardown_integration_tests::{
    gate,
    tracer::{split_ends, Traced, Tracer},
};

const SENT: u32 = 5;

/// The snapshot of the transition into `new` (there is exactly one).
fn seq_at(t: &Traced, new: TcpState) -> SeqSnapshot {
    let mut at = t
        .finished
        .conn
        .events
        .iter()
        .map(|r| &r.ev)
        .filter(|e| matches!(e.kind, EventKind::State { new: n, .. } if n == new));
    let e = at
        .next()
        .unwrap_or_else(|| panic!("no ->{new}: {:?}", t.steps()));
    assert!(at.next().is_none(), "two ->{new}: {:?}", t.steps());
    assert!(e.sock.is_some(), "no socket flags at ->{new}");
    e.seq
        .unwrap_or_else(|| panic!("no sequence numbers at ->{new}"))
}

fn client_sends_and_closes_first(ip: IpAddr, direct_loads: bool) {
    let tracer = Tracer::start_with(ProbeConfig {
        direct_loads,
        ..ProbeConfig::default()
    });
    assert_eq!(tracer.caps.direct_loads, direct_loads, "{:?}", tracer.caps);
    assert!(tracer.caps.seq, "{:?}", tracer.caps);

    let listener = TcpListener::bind(SocketAddr::new(ip, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut client = TcpStream::connect(SocketAddr::new(ip, port)).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let (client_addr, server_addr) = (client.local_addr().unwrap(), server.local_addr().unwrap());
    client.write_all(&[7; SENT as usize]).unwrap();
    drop(client);
    let mut got = Vec::new();
    server.read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), SENT as usize);
    drop(server);

    let (client_t, server_t) = split_ends(tracer.connections(ip, port), port);
    assert_eq!(
        (client_t.finished.conn.local, client_t.finished.conn.remote),
        (client_addr, server_addr)
    );
    assert_eq!(
        (server_t.finished.conn.local, server_t.finished.conn.remote),
        (server_addr, client_addr)
    );

    // Both ends live in this process's network namespace: every event says which one it is.
    let own_netns = {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata("/proc/self/ns/net").unwrap().ino() as u32
    };
    for t in [&client_t, &server_t] {
        assert_eq!(t.finished.conn.netns, own_netns);
        assert!(t
            .finished
            .conn
            .events
            .iter()
            .all(|e| e.ev.netns == own_netns));
    }

    let c_est = seq_at(&client_t, TcpState::Established);
    let s_est = seq_at(&server_t, TcpState::Established);
    // Each end's next expected byte is the other's first unacknowledged one: ISS + 1.
    assert_eq!(s_est.rcv_nxt, c_est.snd_una, "{c_est:?} {s_est:?}");
    assert_eq!(c_est.rcv_nxt, s_est.snd_una, "{c_est:?} {s_est:?}");
    // The server entered CLOSE_WAIT having received the data and the FIN: U + 1.
    let s_cw = seq_at(&server_t, TcpState::CloseWait);
    assert_eq!(s_cw.rcv_nxt, c_est.snd_una.wrapping_add(SENT + 1));
    // The client queued its FIN after the data: U = its first byte + SENT.
    let c_fw1 = seq_at(&client_t, TcpState::FinWait1);
    assert_eq!(c_fw1.write_seq, c_est.snd_una.wrapping_add(SENT));
    let v = serde_json::to_value(&client_t.verdict).unwrap();
    assert_eq!(v["conformance"], "conforms", "{v:#}");
}

fn both_ways(ip: IpAddr) {
    for direct_loads in [true, false] {
        client_sends_and_closes_first(ip, direct_loads);
    }
}

#[test]
fn plain_loads_and_probe_reads_agree_ipv4() {
    if gate::can_run(gate::KERNEL) {
        both_ways(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
}

#[test]
fn plain_loads_and_probe_reads_agree_ipv6() {
    if gate::can_run(gate::KERNEL) {
        both_ways(IpAddr::V6(Ipv6Addr::LOCALHOST));
    }
}
