//! The sequence numbers the tracer reads agree with what the kernel's own counters say about
//! the same connection, as `ss -tni` shows them (tcp_info): the bytes each side received and
//! had acknowledged are exactly the distances between the tracer's U, V and the initial
//! sequence numbers.

// A failed unwrap in a test is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    process::Command,
    time::Duration,
};

use teardown::decode::EventKind;
use teardown_integration_tests::{gate, tracer::Tracer, wait::wait_until};

/// `ss -tni` of the socket with local port `port` in `state` (empty when there is none).
fn ss_info(state: &str, port: u16) -> String {
    let out = Command::new("ss")
        .args(["-tniH", "state", state, "sport", "=", &format!(":{port}")])
        .output()
        .expect("ss runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `bytes_received:N` and `bytes_acked:N` of an `ss -tni` line.
fn counters(text: &str) -> (u64, u64) {
    let field = |name: &str| -> u64 {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in `ss -tni`: {text}"))
            .parse()
            .unwrap()
    };
    (field("bytes_received:"), field("bytes_acked:"))
}

#[test]
fn u_v_and_the_byte_counts_of_ss_agree() {
    if !gate::can_run(gate::KERNEL) {
        return;
    }
    let tracer = Tracer::start();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut client = TcpStream::connect(addr).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    client.write_all(b"hello world").unwrap(); // 11 bytes to the server
    let mut buf = [0u8; 11];
    server.read_exact(&mut buf).unwrap();
    server.write_all(b"hey").unwrap(); // 3 bytes back
    let mut buf = [0u8; 3];
    client.read_exact(&mut buf).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(server.read(&mut [0u8; 1]).unwrap(), 0);
    // The server is in CLOSE_WAIT now: ask the kernel what it counted.
    let mut info = String::new();
    wait_until(
        "ss to show the server in CLOSE_WAIT",
        Duration::from_secs(5),
        || {
            info = ss_info("close-wait", addr.port());
            Ok(!info.trim().is_empty())
        },
    )
    .unwrap();
    let (received, acked) = counters(&info);
    drop(server);
    drop(client);
    let traced = tracer.connections(addr.ip(), addr.port());
    let server_end = traced
        .iter()
        .find(|t| t.finished.conn.local == addr)
        .expect("the server end was traced");
    let seq_at = |old: &str, new: &str| {
        server_end
            .finished
            .conn
            .events
            .iter()
            .find(|e| {
                matches!(e.ev.kind, EventKind::State { old: o, new: n } if o.name() == old && n.name() == new)
            })
            .and_then(|e| e.ev.seq)
            .unwrap_or_else(|| panic!("no {old} -> {new} with sequence numbers"))
    };
    let established = seq_at("SYN_RECV", "ESTABLISHED");
    let close_wait = seq_at("ESTABLISHED", "CLOSE_WAIT");
    // rcv_nxt at CLOSE_WAIT is U+1 (the client's FIN + 1). The kernel's bytes_received counts
    // every sequence number received after the SYN, the FIN's included: 11 bytes + the FIN.
    let u = close_wait.rcv_nxt.wrapping_sub(1);
    assert_eq!(
        u64::from(close_wait.rcv_nxt.wrapping_sub(established.rcv_nxt)),
        received
    );
    assert_eq!(received, 12);
    assert_eq!(
        u.wrapping_sub(established.rcv_nxt),
        11,
        "U is the byte after the data"
    );
    // V (the server's next sequence number when it ACKed the FIN) = first byte + bytes acked.
    let v = close_wait.snd_nxt;
    assert_eq!(u64::from(v.wrapping_sub(established.snd_una)), acked);
    assert_eq!(acked, 3);
    // And the verdict's waves carry the same U and V.
    let waves = serde_json::to_value(&server_end.verdict).unwrap()["waves"].clone();
    assert_eq!(waves["u"], u, "{waves:#}");
    assert_eq!(waves["v"], v, "{waves:#}");
}
