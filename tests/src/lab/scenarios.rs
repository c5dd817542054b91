//! The lab's scenarios: each builds its own [`Lab`], drives a real teardown through it with the
//! real tracer attached, prints the trace and the verdicts, and asserts the timeline, the
//! sequence numbers and the validator's variant and findings.
//!
//! They are called by the `lab` integration tests (one test each) and by the `scenario` binary
//! (`cargo xtask scenario NAME`), which shows the printed trace.

// Test-only code: a failed unwrap here is a failed scenario, reported with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{self, ErrorKind, Read, Write},
    net::{Shutdown, TcpStream},
    time::{Duration, Instant},
};

use socket2::SockRef;
use teardown::{
    decode::{Event, SeqSnapshot, SockSnapshot},
    judge::{Outcome, Role, Variant},
    monitor::{Collector, ReportConfig},
    sock_diag::{TcpState, TwSubstate},
};

use super::{ack_now, read_to_eof, wait_until, Family, Lab, Side, WAIT};
use crate::tracer::{
    split_ends, steps, Traced, Tracer, ACTIVE_CLOSE, CLIENT_OPEN, PASSIVE_CLOSE,
    RESET_IN_CLOSE_WAIT, RESET_RECEIVED, RESET_SENT, SERVER_OPEN,
};

/// One scenario of the lab.
pub struct Scenario {
    /// `cargo xtask scenario NAME`.
    pub name: &'static str,
    /// The scenario's number in the lab (14 = IPv6 versions).
    pub number: u8,
    pub about: &'static str,
    pub run: fn(),
}

macro_rules! scenarios {
    ($($number:literal $name:literal $f:ident: $about:literal,)*) => {
        /// Every scenario, in the lab's order.
        pub const ALL: &[Scenario] = &[
            $(Scenario { name: $name, number: $number, about: $about, run: $f },)*
        ];
    };
}

scenarios! {
    1 "four-way-client-first" four_way_client_first:
        "the documented four-way close, the client closes first",
    2 "four-way-server-first" four_way_server_first:
        "the documented four-way close, the server closes first",
    3 "three-segment-close" three_segment_close:
        "the server closes on EOF at once: its ACK rides on its FIN",
    4 "half-close-with-data" half_close_with_data:
        "shutdown(SHUT_WR), the server sends 4 bytes from CLOSE_WAIT, then closes",
    5 "simultaneous-close" simultaneous_close:
        "both FINs held back, then crossing: FIN_WAIT1 -> CLOSING -> TIME_WAIT on both ends",
    6 "final-ack-lost" final_ack_lost:
        "the final ACK is dropped: FIN resent from LAST_ACK, ACKed again from TIME_WAIT",
    7 "first-fin-lost" first_fin_lost:
        "the first FIN is dropped: resent from FIN_WAIT1",
    8 "fin-wait2-timeout" fin_wait2_timeout:
        "orphaned FIN_WAIT2 full socket times out (keepalive timer path): RST",
    8 "fin-wait2-timewait-expires" fin_wait2_timewait_expires:
        "orphaned FIN_WAIT2 timewait socket expires (tcp_fin_timeout=5); the late FIN meets a RST",
    9 "last-ack-given-up" last_ack_given_up:
        "nothing comes back from the peer: LAST_ACK retransmits, then gives up",
    10 "reset-linger-zero" reset_linger_zero:
        "SO_LINGER 0: close() sends RST",
    10 "reset-unread-data" reset_unread_data:
        "close() with unread received data sends RST (RFC 2525)",
    10 "reset-data-after-close" reset_data_after_close:
        "the server writes after the client fully closed: the client's timewait socket resets",
    10 "reset-in-close-wait" reset_in_close_wait:
        "the half-closed client aborts (SO_LINGER 0): RST received in CLOSE_WAIT",
    11 "close-wait-leak" close_wait_leak:
        "the server never closes: CLOSE_WAIT past a threshold, reported as a leak",
    12 "time-wait-reuse" time_wait_reuse:
        "a TIME_WAIT 4-tuple reused by a new connection (tcp_tw_reuse=1)",
    13 "syn-to-closed-port" syn_to_closed_port:
        "SYN to a port nobody listens on: RST, connection refused",
    14 "ipv6-four-way-client-first" ipv6_four_way_client_first:
        "scenario 1 over IPv6",
    14 "ipv6-final-ack-lost" ipv6_final_ack_lost:
        "scenario 6 over IPv6",
}

/// The scenario called `name`.
pub fn find(name: &str) -> Option<&'static Scenario> {
    ALL.iter().find(|s| s.name == name)
}

// ---------------------------------------------------------------------------------------------
// Helpers.

/// Splits the traced connections on the lab's port into (client end, server end).
fn ends(lab: &Lab, tracer: Tracer) -> (Traced, Traced) {
    let traced = tracer.connections(lab.server_ip, lab.port);
    show(&traced);
    split_ends(traced, lab.port)
}

fn flags(s: &SockSnapshot) -> String {
    let mut v = Vec::new();
    if s.dead() {
        v.push("DEAD".to_owned());
    }
    if s.done() {
        v.push("DONE".to_owned());
    }
    if s.err != 0 {
        v.push(format!("err={}", teardown::decode::errno_name(s.err)));
    }
    v.join("|")
}

/// Prints each connection: its events with sequence fields and flags, and its verdict.
pub fn show(traced: &[Traced]) {
    for t in traced {
        let c = &t.finished.conn;
        println!("#{} {} -> {}", c.id, c.local, c.remote);
        let t0 = c.first_ts();
        for (e, step) in c.events.iter().zip(t.steps()) {
            let seq = e.ev.seq.map_or(String::new(), |s| {
                format!(
                    "snd_una={} snd_nxt={} rcv_nxt={} write_seq={}",
                    s.snd_una, s.snd_nxt, s.rcv_nxt, s.write_seq
                )
            });
            let fl = e.ev.sock.as_ref().map_or(String::new(), flags);
            println!(
                "  {:>10.3}ms  {step:<24} {seq} {fl}",
                e.first_ts.saturating_sub(t0) as f64 / 1e6
            );
        }
        println!("  verdict: {}", t.verdict.headline());
        let mut text = String::new();
        let _ = t.verdict.write_text(&mut text);
        print!("{text}");
    }
}

/// The event of a step (`"CLOSE_WAIT->LAST_ACK"`), the first one.
fn event<'a>(t: &'a Traced, step: &str) -> &'a Event {
    let i = t
        .steps()
        .iter()
        .position(|s| s == step)
        .unwrap_or_else(|| panic!("no {step} in {:?}", t.steps()));
    &t.finished.conn.events[i].ev
}

fn seq(t: &Traced, step: &str) -> SeqSnapshot {
    event(t, step)
        .seq
        .unwrap_or_else(|| panic!("no sequence fields at {step}"))
}

fn sock(t: &Traced, step: &str) -> SockSnapshot {
    event(t, step)
        .sock
        .unwrap_or_else(|| panic!("no socket flags at {step}"))
}

fn finding_codes(t: &Traced) -> Vec<&'static str> {
    t.verdict.findings.iter().map(|f| f.code.as_str()).collect()
}

fn note_codes(t: &Traced) -> Vec<&'static str> {
    t.verdict.notes.iter().map(|f| f.code.as_str()).collect()
}

/// The verdict is `variant`, conforms, and no sequence relation is broken.
fn assert_conforms(t: &Traced, role: Role, variant: Variant) {
    let v = &t.verdict;
    assert_eq!(v.role, role, "role of {}", t.finished.conn.local);
    assert_eq!(
        v.variant.name(),
        variant.name(),
        "variant of {}: {}",
        t.finished.conn.local,
        v.why
    );
    assert!(
        v.conforms && v.findings.is_empty(),
        "findings: {:?}",
        v.findings
    );
    assert_no_broken_checks(t);
}

fn assert_no_broken_checks(t: &Traced) {
    let broken: Vec<_> = t
        .verdict
        .checks
        .iter()
        .filter(|c| c.outcome == Outcome::Broken)
        .collect();
    assert!(broken.is_empty(), "broken relations: {broken:?}");
}

/// The verdict is `variant` with exactly these finding codes.
fn assert_deviates(t: &Traced, variant: Variant, codes: &[&str]) {
    let v = &t.verdict;
    assert_eq!(
        v.variant.name(),
        variant.name(),
        "variant of {}: {}",
        t.finished.conn.local,
        v.why
    );
    assert!(!v.conforms);
    assert_eq!(finding_codes(t), codes, "findings: {:?}", v.findings);
}

/// The documented arithmetic (docs/close-sequence.md, §1 and §5) read on both ends: U from the
/// active end's FIN, V and W from the passive end, and every ACK = FIN + 1. `data` is what the
/// passive end sent from CLOSE_WAIT (W - V).
fn assert_documented_seq(active: &Traced, passive: &Traced, data: u32) {
    let u = seq(active, "ESTABLISHED->FIN_WAIT1").write_seq;
    let cw = seq(passive, "ESTABLISHED->CLOSE_WAIT");
    assert_eq!(cw.rcv_nxt, u.wrapping_add(1), "step 1: the FIN consumes U");
    let v = cw.snd_nxt;
    assert_eq!(
        seq(active, "FIN_WAIT1->FIN_WAIT2").snd_una,
        u.wrapping_add(1),
        "step 2: ack = U+1"
    );
    let w = seq(passive, "CLOSE_WAIT->LAST_ACK").write_seq;
    assert_eq!(
        w.wrapping_sub(v),
        data,
        "step 3: W = V + data from CLOSE_WAIT"
    );
    let last = seq(passive, "LAST_ACK->CLOSE");
    assert_eq!(last.snd_una, w.wrapping_add(1), "step 4: ack = W+1");
    assert_eq!(last.rcv_nxt, u.wrapping_add(1), "step 4: seq = U+1");
}

/// The server reads the client's FIN and ACKs it alone, at once (no delayed ACK to ride on a
/// FIN of its own); returns when the client has that ACK (FIN_WAIT2).
fn server_acks_fin(lab: &Lab, s: &mut TcpStream) {
    assert!(read_to_eof(s).unwrap().is_empty());
    ack_now(s).unwrap();
    lab.wait_state(Side::Client, "FIN_WAIT2", WAIT).unwrap();
}

/// The server closes after the client did: returns when the client is in TIME_WAIT and the
/// server's LAST_ACK has ended.
fn server_closes_last(lab: &Lab, s: TcpStream) {
    drop(s);
    lab.wait_state(Side::Client, "TIME_WAIT", WAIT).unwrap();
    lab.wait_gone(Side::Server, TcpState::LastAck, WAIT)
        .unwrap();
}

/// `t`'s steps are `before`, at least `min` retransmissions in `state`, then `after`.
fn assert_retransmitted(t: &Traced, before: &[String], state: &str, min: usize, after: &[&str]) {
    let st = t.steps();
    let n = st.len();
    assert!(
        n >= before.len() + min + after.len(),
        "at least {min} retransmissions in {state} expected: {st:?}"
    );
    assert_eq!(st[..before.len()], before[..], "{st:?}");
    let retransmit = format!("retransmit@{state}");
    assert!(
        st[before.len()..n - after.len()]
            .iter()
            .all(|s| *s == retransmit),
        "{st:?}"
    );
    assert_eq!(st[n - after.len()..], after[..], "{st:?}");
}

/// `t`'s verdict notes the FIN resent at `step` of the documented sequence.
fn assert_fin_retransmitted(t: &Traced, step: u8) {
    assert!(
        t.verdict
            .notes
            .iter()
            .any(|n| n.code == teardown::judge::Code::FinRetransmitted && n.step == Some(step)),
        "{:?}",
        t.verdict.notes
    );
}

/// A RST received in CLOSE_WAIT, seen on the server's end: its steps, the EPIPE the kernel
/// leaves, and an abort by RST as the verdict.
fn assert_reset_in_close_wait(s: &Traced) {
    assert_eq!(s.steps(), steps(SERVER_OPEN, &RESET_IN_CLOSE_WAIT));
    assert_eq!(sock(s, "CLOSE_WAIT->CLOSE").err, libc::EPIPE);
    assert_deviates(s, Variant::AbortByRst, &["reset_received"]);
}

/// The end of the scenarios where the client, its FIN ACKed, sends a RST (from `rst_at`) that
/// the server gets in CLOSE_WAIT: waits for that, stops tracing, checks both ends' steps and
/// the server's verdict, and returns the ends (client, server).
fn rst_into_close_wait(lab: &Lab, tracer: Tracer, s: TcpStream, rst_at: &str) -> (Traced, Traced) {
    lab.wait_gone(Side::Server, TcpState::CloseWait, WAIT)
        .unwrap();
    drop(s);
    // The RST of a timewait socket is traced only by kernels that trace every reset (6.10 and
    // later), and the probe says which kind it runs on. The verdicts are the same on both:
    // they are judged with the peer's end, which got the RST.
    let rst_traced = rst_at != "TIME_WAIT" || tracer.caps.every_reset;
    let (c, s) = ends(lab, tracer);
    let rst = format!("rst_sent@{rst_at}");
    let rst: &[&str] = if rst_traced { &[rst.as_str()] } else { &[] };
    assert_eq!(
        c.steps(),
        steps(CLIENT_OPEN, &[&ACTIVE_CLOSE[..], rst].concat())
    );
    assert_reset_in_close_wait(&s);
    (c, s)
}

/// A connection the client aborted while established: the client sent the RST, the server got
/// it, and each verdict says so.
fn assert_reset_while_established(c: &Traced, s: &Traced) {
    assert_eq!(c.steps(), steps(CLIENT_OPEN, &RESET_SENT));
    assert_eq!(s.steps(), steps(SERVER_OPEN, &RESET_RECEIVED));
    assert_deviates(c, Variant::AbortByRst, &["reset_sent"]);
    assert_deviates(s, Variant::AbortByRst, &["reset_received"]);
}

/// Zeek's `conn_state` and `history` of the connection (docs/zeek.md derives each scenario's
/// from Zeek's definitions), as the end judged last gives them, with the whole of the other's
/// trace: what the conn.log row says. Both ends take the client for the originator.
fn assert_zeek(c: &Traced, s: &Traced, conn_state: &str, history: &str) {
    use teardown::judge::zeek::Originator;
    let last = |t: &Traced| t.finished.conn.events.last().map_or(0, |r| r.ev.ts_ns);
    let later = if last(c) >= last(s) { c } else { s };
    let z = &later.verdict.zeek;
    assert_eq!(
        (z.conn_state.code(), z.history.as_str()),
        (conn_state, history),
        "Zeek's words for the connection, from the {} end",
        if std::ptr::eq(later, c) {
            "client"
        } else {
            "server"
        }
    );
    assert_eq!(c.verdict.zeek.originator, Originator::ThisEnd);
    assert_eq!(s.verdict.zeek.originator, Originator::Peer);
}

/// [`assert_zeek`] for a connection whose client alone has a socket.
fn assert_zeek_client(c: &Traced, conn_state: &str, history: &str) {
    let z = &c.verdict.zeek;
    assert_eq!(
        (z.conn_state.code(), z.history.as_str()),
        (conn_state, history)
    );
    assert_eq!(z.originator, teardown::judge::zeek::Originator::ThisEnd);
}

fn lab(slot: u8, family: Family) -> Lab {
    Lab::new(slot, family).unwrap_or_else(|e| panic!("building the lab: {e}"))
}

// ---------------------------------------------------------------------------------------------
// 1, 2, 14: the documented four-way close.

fn four_way_client_first() {
    four_way_client_first_in(1, Family::V4);
}

fn ipv6_four_way_client_first() {
    four_way_client_first_in(21, Family::V6);
}

fn four_way_client_first_in(slot: u8, family: Family) {
    let lab = lab(slot, family);
    let tracer = Tracer::start();
    let (mut c, mut s) = lab.pair().unwrap();
    c.write_all(b"hello").unwrap();
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).unwrap();
    drop(c); // close(): FIN, the socket is orphaned
             // The server ACKs the FIN alone (no delayed ACK riding on its FIN), and the client has it
             // before the server closes: four segments.
    server_acks_fin(&lab, &mut s);
    server_closes_last(&lab, s);
    let (c, s) = ends(&lab, tracer);

    assert_eq!(c.steps(), steps(CLIENT_OPEN, &ACTIVE_CLOSE));
    assert_eq!(s.steps(), steps(SERVER_OPEN, &PASSIVE_CLOSE));
    assert_documented_seq(&c, &s, 0);
    // Orphaned: the ACK of its FIN made the client a FIN_WAIT2 timewait socket (docs/close-sequence.md, fact 2).
    let close = sock(&c, "FIN_WAIT2->CLOSE");
    assert!(close.dead() && !close.done(), "{close:?}");
    assert_eq!(
        c.finished.peer.as_ref().map(|p| p.sk),
        Some(s.finished.conn.sk)
    );

    assert_conforms(&c, Role::ActiveCloser, Variant::FourWayClose);
    assert_conforms(&s, Role::PassiveCloser, Variant::FourWayClose);
    assert_eq!(
        c.verdict.time_wait,
        Some(teardown::judge::TimeWaitPath::FinWait2TimewaitThenTimeWait)
    );
    assert!(c.verdict.with_peer && s.verdict.with_peer);
    assert_zeek(&c, &s, "SF", "ShADFf");
}

fn four_way_server_first() {
    let lab = lab(2, Family::V4);
    let tracer = Tracer::start();
    let (mut c, s) = lab.pair().unwrap();
    drop(s);
    assert!(read_to_eof(&mut c).unwrap().is_empty());
    ack_now(&c).unwrap();
    lab.wait_state(Side::Server, "FIN_WAIT2", WAIT).unwrap();
    drop(c);
    lab.wait_state(Side::Server, "TIME_WAIT", WAIT).unwrap();
    lab.wait_gone(Side::Client, TcpState::LastAck, WAIT)
        .unwrap();
    let (c, s) = ends(&lab, tracer);

    assert_eq!(c.steps(), steps(CLIENT_OPEN, &PASSIVE_CLOSE));
    assert_eq!(s.steps(), steps(SERVER_OPEN, &ACTIVE_CLOSE));
    assert_documented_seq(&s, &c, 0);
    assert_conforms(&s, Role::ActiveCloser, Variant::FourWayClose);
    assert_conforms(&c, Role::PassiveCloser, Variant::FourWayClose);
    assert_zeek(&c, &s, "SF", "ShAfFa");
}

// ---------------------------------------------------------------------------------------------
// 3: three segments.

/// How many times scenario 3 is driven before a machine is called too slow for it.
const MERGE_ATTEMPTS: u32 = 5;

fn three_segment_close() {
    for attempt in 1..=MERGE_ATTEMPTS {
        let lab = lab(3, Family::V4);
        let tracer = Tracer::start();
        let (c, mut s) = lab.pair().unwrap();
        drop(c);
        // On the FIN the server's socket enters pingpong mode: its ACK is delayed (at least
        // 40 ms, TCP_ATO_MIN). Closing at once, within microseconds, puts that ACK on the
        // server's FIN.
        assert!(read_to_eof(&mut s).unwrap().is_empty());
        server_closes_last(&lab, s);
        let (c, s) = ends(&lab, tracer);
        // A machine slow enough that the server's close came more than 40 ms after the FIN (an
        // emulated guest under load) sent the delayed ACK alone: the client then took it in
        // FIN_WAIT1 without a FIN (no DONE) and became a FIN_WAIT2 timewait socket. That is
        // scenario 1's wire, not this one's, so it is driven again.
        let merged = sock(&c, "FIN_WAIT2->CLOSE").done();
        if !merged && attempt < MERGE_ATTEMPTS {
            println!("attempt {attempt}: the delayed ACK left before the server's FIN; again");
            continue;
        }
        assert_three_segment_close(&c, &s);
        return;
    }
}

fn assert_three_segment_close(c: &Traced, s: &Traced) {
    assert_eq!(c.steps(), steps(CLIENT_OPEN, &ACTIVE_CLOSE));
    assert_eq!(s.steps(), steps(SERVER_OPEN, &PASSIVE_CLOSE));
    assert_documented_seq(c, s, 0);
    // The merge, seen on both ends: the server sent its FIN (CLOSE_WAIT -> LAST_ACK) before the
    // client processed the ACK of its own FIN; and that client socket, although orphaned, did not
    // become a FIN_WAIT2 timewait socket: the FIN came in the same segment (docs/close-sequence.md, fact 8).
    assert!(
        event(s, "CLOSE_WAIT->LAST_ACK").ts_ns <= event(c, "FIN_WAIT1->FIN_WAIT2").ts_ns,
        "the server's FIN was sent after the client saw the ACK: not merged"
    );
    let close = sock(c, "FIN_WAIT2->CLOSE");
    assert!(
        close.dead() && close.done(),
        "{close:?}: the ACK came without the FIN in each of {MERGE_ATTEMPTS} attempts"
    );
    let w = seq(s, "CLOSE_WAIT->LAST_ACK").write_seq;
    assert_eq!(seq(c, "FIN_WAIT2->CLOSE").rcv_nxt, w.wrapping_add(1));

    assert_conforms(c, Role::ActiveCloser, Variant::ThreeSegmentClose);
    assert_conforms(s, Role::PassiveCloser, Variant::ThreeSegmentClose);
    assert_zeek(c, s, "SF", "ShAFf");
}

// ---------------------------------------------------------------------------------------------
// 4: half-close.

fn half_close_with_data() {
    let lab = lab(4, Family::V4);
    let tracer = Tracer::start();
    let (mut c, mut s) = lab.pair().unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    assert!(read_to_eof(&mut s).unwrap().is_empty());
    s.write_all(b"late").unwrap();
    drop(s);
    assert_eq!(read_to_eof(&mut c).unwrap(), b"late");
    drop(c);
    lab.wait_gone(Side::Server, TcpState::LastAck, WAIT)
        .unwrap();
    let (c, s) = ends(&lab, tracer);

    assert_eq!(c.steps(), steps(CLIENT_OPEN, &ACTIVE_CLOSE));
    assert_eq!(s.steps(), steps(SERVER_OPEN, &PASSIVE_CLOSE));
    assert_documented_seq(&c, &s, 4);
    // Not orphaned when the server's FIN came: the client entered TIME_WAIT itself.
    let close = sock(&c, "FIN_WAIT2->CLOSE");
    assert!(close.done() && !close.dead(), "{close:?}");
    assert_conforms(&c, Role::ActiveCloser, Variant::HalfCloseWithData);
    assert_conforms(&s, Role::PassiveCloser, Variant::HalfCloseWithData);
    assert_zeek(&c, &s, "SF", "ShAFdf");
}

// ---------------------------------------------------------------------------------------------
// 5: simultaneous close.

/// Pins the calling thread to one CPU (best effort).
fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the calls only read/modify it and the
    // calling thread's affinity.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn simultaneous_close() {
    let lab = lab(5, Family::V4);
    let port = lab.port;
    let tracer = Tracer::start();
    let (c, s) = lab.pair().unwrap();
    let cport = c.local_addr().unwrap().port();
    // Both ends drop the other's first FIN on arrival: each sends its FIN and stays in
    // FIN_WAIT1. Only the first, decided in the kernel: deleting the rules from here would race
    // with the retransmissions on a slow machine, letting one FIN through before the other.
    let fin = "tcp flags & fin == fin";
    let nft_c = lab.nft(Side::Client).unwrap();
    let nft_s = lab.nft(Side::Server).unwrap();
    let rc = nft_c
        .drop_first(1, &format!("tcp sport {port} {fin}"))
        .unwrap();
    let rs = nft_s
        .drop_first(1, &format!("tcp sport {cport} {fin}"))
        .unwrap();
    // Both shutdowns from one thread on one CPU, microseconds apart: both retransmission
    // timers are armed in the same jiffy on the same CPU, so they fire in the same timer
    // softirq and both resent FINs are on the wire before either is received (veth delivers in
    // the later NET_RX softirq): they cross.
    pin_to_cpu(0);
    c.shutdown(Shutdown::Write).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    wait_until("both FINs dropped", WAIT, || {
        Ok(nft_c.total(&rc)? >= 1 && nft_s.total(&rs)? >= 1)
    })
    .unwrap();
    lab.wait_state(Side::Client, "TIME_WAIT", WAIT).unwrap();
    lab.wait_state(Side::Server, "TIME_WAIT", WAIT).unwrap();
    drop((c, s));
    let (c, s) = ends(&lab, tracer);

    // Both resent FINs leave in the same timer run; whether each is on the wire before the other
    // arrives depends on the kernel's delivery (on 6.18 they cross; on 6.1 one end may receive
    // the other's FIN first, ACK it, and resend its own from CLOSING). So at least one end goes
    // through CLOSING; an end that got its FIN ACKed first closes as in the four-way close. Each
    // end's verdict names what it went through, and both conform.
    let through_closing = |t: &Traced| t.steps().iter().any(|s| s == "FIN_WAIT1->CLOSING");
    assert!(
        through_closing(&c) || through_closing(&s),
        "client {:?}, server {:?}",
        c.steps(),
        s.steps()
    );
    for (t, open) in [(&c, CLIENT_OPEN), (&s, SERVER_OPEN)] {
        let st = t.steps();
        // Its FIN was dropped once, so it was resent: from FIN_WAIT1, or from CLOSING.
        let resent = st
            .iter()
            .filter(|s| *s == "retransmit@FIN_WAIT1" || *s == "retransmit@CLOSING")
            .count();
        assert!(resent >= 1, "{st:?}");
        let rest: Vec<&str> = st
            .iter()
            .map(String::as_str)
            .filter(|s| !s.starts_with("retransmit@"))
            .collect();
        let before = steps(open, &["ESTABLISHED->FIN_WAIT1"]);
        assert_eq!(rest[..before.len()], before[..], "{st:?}");
        if through_closing(t) {
            assert_eq!(
                rest[before.len()..],
                ["FIN_WAIT1->CLOSING", "CLOSING->CLOSE"],
                "{st:?}"
            );
            assert!(sock(t, "CLOSING->CLOSE").done());
            assert_conforms(t, Role::Simultaneous, Variant::SimultaneousClose);
        } else {
            assert_eq!(
                rest[before.len()..],
                ["FIN_WAIT1->FIN_WAIT2", "FIN_WAIT2->CLOSE"],
                "{st:?}"
            );
            assert_conforms(t, Role::ActiveCloser, Variant::FourWayClose);
        }
    }
    // Each FIN is seq = write_seq at FIN_WAIT1; an end's rcv_nxt at CLOSING is the other's FIN
    // + 1, and at the end both FINs are ACKed.
    let uc = seq(&c, "ESTABLISHED->FIN_WAIT1").write_seq;
    let us = seq(&s, "ESTABLISHED->FIN_WAIT1").write_seq;
    for (t, own, other) in [(&c, uc, us), (&s, us, uc)] {
        if through_closing(t) {
            assert_eq!(seq(t, "FIN_WAIT1->CLOSING").rcv_nxt, other.wrapping_add(1));
            assert_eq!(seq(t, "CLOSING->CLOSE").snd_una, own.wrapping_add(1));
        } else {
            assert_eq!(seq(t, "FIN_WAIT2->CLOSE").rcv_nxt, other.wrapping_add(1));
            assert_eq!(seq(t, "FIN_WAIT2->CLOSE").snd_una, own.wrapping_add(1));
        }
    }
    // Zeek writes the FINs in the order they left; the responder's pure ACK of the
    // originator's FIN (from CLOSING, or its TIME_WAIT entry) follows both.
    let fin = |t: &Traced| event(t, "ESTABLISHED->FIN_WAIT1").ts_ns;
    let fins = if fin(&c) <= fin(&s) { "Ff" } else { "fF" };
    assert_zeek(&c, &s, "SF", &format!("ShA{fins}a"));
}

// ---------------------------------------------------------------------------------------------
// 6, 14: the final ACK lost.

fn final_ack_lost() {
    final_ack_lost_in(6, Family::V4);
}

fn ipv6_final_ack_lost() {
    final_ack_lost_in(26, Family::V6);
}

fn final_ack_lost_in(slot: u8, family: Family) {
    let lab = lab(slot, family);
    let port = lab.port;
    let tracer = Tracer::start();
    let (mut c, mut s) = lab.pair().unwrap();
    // The client shuts down and keeps its descriptor: it enters TIME_WAIT itself on the
    // server's FIN (an orphaned client would do it as a timewait socket, without events).
    c.shutdown(Shutdown::Write).unwrap();
    server_acks_fin(&lab, &mut s);
    // From now on the client sends nothing but the final ACK: drop the first pure ACK.
    let nft = lab.nft(Side::Server).unwrap();
    let rules = nft
        .drop_first(1, &format!("tcp dport {port} tcp flags == ack"))
        .unwrap();
    drop(s); // LAST_ACK; its FIN puts the client in TIME_WAIT, the client's ACK is lost
    assert!(read_to_eof(&mut c).unwrap().is_empty());
    lab.wait_state(Side::Client, "TIME_WAIT", WAIT).unwrap();
    let entry1 = lab.time_wait_entry_ms(Side::Client).unwrap().unwrap();
    // The server resends its FIN from LAST_ACK; the client ACKs again from TIME_WAIT.
    lab.wait_gone(Side::Server, TcpState::LastAck, WAIT)
        .unwrap();
    let entry2 = lab.time_wait_entry_ms(Side::Client).unwrap().unwrap();
    drop(c);
    assert_eq!(nft.total(&rules).unwrap(), 1, "exactly one ACK dropped");
    let (c, s) = ends(&lab, tracer);
    println!("client TIME_WAIT entry moved by {} ms", entry2 - entry1);

    assert_eq!(c.steps(), steps(CLIENT_OPEN, &ACTIVE_CLOSE));
    let close = sock(&c, "FIN_WAIT2->CLOSE");
    assert!(close.done() && !close.dead(), "{close:?}");
    assert_retransmitted(
        &s,
        &steps(SERVER_OPEN, &PASSIVE_CLOSE[..2]),
        "LAST_ACK",
        1,
        &PASSIVE_CLOSE[2..],
    );
    assert_documented_seq(&c, &s, 0);
    // The client's TIME_WAIT entry: rcv_nxt = W+1 (the server's FIN, the first time).
    let w = seq(&s, "CLOSE_WAIT->LAST_ACK").write_seq;
    assert_eq!(seq(&c, "FIN_WAIT2->CLOSE").rcv_nxt, w.wrapping_add(1));
    // The resent FIN restarted the client's TIME_WAIT timer (docs/close-sequence.md, fact 6): its entry time moved by
    // about the server's retransmission timeout (200 ms floor).
    assert!(
        entry2 >= entry1 + 150,
        "TIME_WAIT entry {entry1} -> {entry2}: timer not restarted"
    );

    assert_conforms(&c, Role::ActiveCloser, Variant::FourWayClose);
    assert_eq!(
        c.verdict.time_wait,
        Some(teardown::judge::TimeWaitPath::Entered)
    );
    assert_conforms(&s, Role::PassiveCloser, Variant::FourWayClose);
    assert_fin_retransmitted(&s, 4);
    assert_zeek(&c, &s, "SF", "ShAFaf");
}

// ---------------------------------------------------------------------------------------------
// 7: the first FIN lost.

fn first_fin_lost() {
    let lab = lab(7, Family::V4);
    let port = lab.port;
    let tracer = Tracer::start();
    let (c, mut s) = lab.pair().unwrap();
    let nft = lab.nft(Side::Server).unwrap();
    let rules = nft
        .drop_first(1, &format!("tcp dport {port} tcp flags & fin == fin"))
        .unwrap();
    drop(c);
    server_acks_fin(&lab, &mut s); // the resent FIN
    server_closes_last(&lab, s);
    assert_eq!(nft.total(&rules).unwrap(), 1, "exactly one FIN dropped");
    let (c, s) = ends(&lab, tracer);

    assert_retransmitted(
        &c,
        &steps(CLIENT_OPEN, &ACTIVE_CLOSE[..1]),
        "FIN_WAIT1",
        1,
        &ACTIVE_CLOSE[1..],
    );
    assert_eq!(s.steps(), steps(SERVER_OPEN, &PASSIVE_CLOSE));
    // The resent FIN has the same seq U: the server's rcv_nxt is U+1.
    assert_documented_seq(&c, &s, 0);

    assert_conforms(&c, Role::ActiveCloser, Variant::FourWayClose);
    assert_conforms(&s, Role::PassiveCloser, Variant::FourWayClose);
    assert_fin_retransmitted(&c, 2);
    assert_zeek(&c, &s, "SF", "ShAFaf");
}

// ---------------------------------------------------------------------------------------------
// 8: FIN_WAIT2 timeouts.

/// The kernel's keepalive path: an orphaned socket whose FIN is ACKed while `tcp_fin_timeout`
/// is above 60 s stays a full FIN_WAIT2 socket on its keepalive timer (tmo - 60 s). When that
/// timer fires with the timeout now at 2 s (tmo - 60 s <= 0), the kernel gives up on the peer's
/// FIN: it sends a RST and the socket closes (tcp_keepalive_timer). Costs 3 s: the timer is
/// given that long so that a slow machine lowers the timeout before it fires.
fn fin_wait2_timeout() {
    let lab = lab(8, Family::V4);
    lab.sysctl(Side::Client, "net.ipv4.tcp_fin_timeout", "63")
        .unwrap();
    let tracer = Tracer::start();
    let (c, mut s) = lab.pair().unwrap();
    drop(c);
    assert!(read_to_eof(&mut s).unwrap().is_empty());
    ack_now(&s).unwrap();
    // A full socket in FIN_WAIT2 (not a timewait socket), its timer at 63 - 60 = 3 s.
    wait_until("client full socket in FIN_WAIT2", WAIT, || {
        Ok(lab
            .closing(Side::Client)?
            .iter()
            .any(|f| f.state == TcpState::FinWait2))
    })
    .unwrap();
    lab.sysctl(Side::Client, "net.ipv4.tcp_fin_timeout", "2")
        .unwrap();
    // The server never closes: its CLOSE_WAIT gets the RST.
    let mut buf = [0u8; 1];
    let t0 = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    lab.wait_gone(Side::Server, TcpState::CloseWait, WAIT)
        .unwrap();
    println!("FIN_WAIT2 ended after {:?}", t0.elapsed());
    let _ = s.read(&mut buf);
    drop(s);
    let (c, s) = ends(&lab, tracer);

    assert_eq!(
        c.steps(),
        steps(
            CLIENT_OPEN,
            &[
                "ESTABLISHED->FIN_WAIT1",
                "FIN_WAIT1->FIN_WAIT2",
                "rst_sent@FIN_WAIT2",
                "FIN_WAIT2->CLOSE"
            ]
        )
    );
    let close = sock(&c, "FIN_WAIT2->CLOSE");
    assert!(close.dead() && !close.done(), "{close:?}");
    assert_reset_in_close_wait(&s);
    assert_deviates(&c, Variant::FinWait2Timeout, &["no_peer_fin"]);
    assert_eq!(c.verdict.role, Role::ActiveCloser);
    assert_eq!(s.verdict.role, Role::PassiveCloser);
    assert_zeek(&c, &s, "RSTO", "ShAFaR");
}

/// The usual path with `tcp_fin_timeout` <= 60: the orphaned socket became a FIN_WAIT2 timewait
/// socket when its FIN was ACKed (no event when it expires); once it expired, the server's late
/// FIN finds no socket and gets a RST. The timer is 5 s: an emulated guest under load has let
/// 2 s pass between two looks at the namespace, and the socket was gone before the second.
fn fin_wait2_timewait_expires() {
    const FIN_TIMEOUT_MS: u64 = 5_000;
    let lab = lab(9, Family::V4);
    lab.sysctl(
        Side::Client,
        "net.ipv4.tcp_fin_timeout",
        &(FIN_TIMEOUT_MS / 1_000).to_string(),
    )
    .unwrap();
    let tracer = Tracer::start();
    let (c, mut s) = lab.pair().unwrap();
    drop(c);
    assert!(read_to_eof(&mut s).unwrap().is_empty());
    ack_now(&s).unwrap();
    // Seen in the same look that finds it: its timer is the one set from tcp_fin_timeout.
    let mut tw = Vec::new();
    wait_until("a FIN_WAIT2 timewait socket of the client", WAIT, || {
        tw = lab.timewait(Side::Client)?;
        Ok(!tw.is_empty())
    })
    .unwrap();
    assert!(
        tw.len() == 1
            && tw[0].substate == TwSubstate::FinWait2
            && tw[0].remaining_ms <= FIN_TIMEOUT_MS,
        "one FIN_WAIT2 timewait socket on a {FIN_TIMEOUT_MS} ms timer: {tw:?}"
    );
    wait_until(
        "the FIN_WAIT2 timewait socket to expire",
        Duration::from_millis(FIN_TIMEOUT_MS) + WAIT,
        || Ok(lab.timewait(Side::Client)?.is_empty()),
    )
    .unwrap();
    drop(s); // the FIN meets no socket: RST
    lab.wait_gone(Side::Server, TcpState::LastAck, WAIT)
        .unwrap();
    let (c, s) = ends(&lab, tracer);

    assert_eq!(c.steps(), steps(CLIENT_OPEN, &ACTIVE_CLOSE));
    let close = sock(&c, "FIN_WAIT2->CLOSE");
    assert!(close.dead() && !close.done(), "{close:?}");
    assert_eq!(
        s.steps(),
        steps(
            SERVER_OPEN,
            &[
                "ESTABLISHED->CLOSE_WAIT",
                "CLOSE_WAIT->LAST_ACK",
                "rst_received@LAST_ACK",
                "LAST_ACK->CLOSE"
            ]
        )
    );
    assert_eq!(sock(&s, "LAST_ACK->CLOSE").err, libc::ECONNRESET);
    // The expiry of a timewait socket fires no tracepoint: the client's record ends as an
    // orphaned FIN_WAIT2 timewait socket, handed on (200 ms after its close) while the server
    // was still in CLOSE_WAIT. The timeout itself is what sock_diag showed above.
    assert_conforms(&c, Role::ActiveCloser, Variant::OrphanedFinWait2);
    assert_eq!(
        note_codes(&c),
        ["peer_in_close_wait", "time_wait_not_visible"]
    );
    // The server did send its FIN (step 3), and met the RST of a host with no socket left.
    assert_deviates(&s, Variant::AbortByRst, &["reset_received"]);
    assert_eq!(s.verdict.role, Role::PassiveCloser);
    assert_zeek(&c, &s, "RSTO", "ShAFafR");
}

// ---------------------------------------------------------------------------------------------
// 9: LAST_ACK given up.

fn last_ack_given_up() {
    let lab = lab(10, Family::V4);
    let port = lab.port;
    // An orphaned LAST_ACK socket retries tcp_orphan_retries times (timed as if from a 200 ms
    // RTO: about 0.6 s for 1); rto_min 10 ms makes the retransmissions come fast.
    lab.sysctl(Side::Server, "net.ipv4.tcp_orphan_retries", "1")
        .unwrap();
    lab.rto_min(Side::Server, 10).unwrap();
    let tracer = Tracer::start();
    let (c, mut s) = lab.pair().unwrap();
    drop(c);
    server_acks_fin(&lab, &mut s);
    let nft = lab.nft(Side::Server).unwrap();
    let rule = nft.drop(&format!("tcp dport {port}")).unwrap();
    let t0 = Instant::now();
    drop(s);
    lab.wait_state(Side::Server, "LAST_ACK", WAIT).unwrap();
    lab.wait_gone(Side::Server, TcpState::LastAck, Duration::from_secs(10))
        .unwrap();
    println!("LAST_ACK gave up after {:?}", t0.elapsed());
    assert!(nft.packets(rule).unwrap() >= 2);
    // The client's timewait socket did get the FIN (and ACKed it, each time, in vain).
    lab.wait_state(Side::Client, "TIME_WAIT", WAIT).unwrap();
    let (c, s) = ends(&lab, tracer);

    assert_eq!(c.steps(), steps(CLIENT_OPEN, &ACTIVE_CLOSE));
    // Several retransmissions.
    assert_retransmitted(
        &s,
        &steps(SERVER_OPEN, &PASSIVE_CLOSE[..2]),
        "LAST_ACK",
        2,
        &PASSIVE_CLOSE[2..],
    );
    let last = sock(&s, "LAST_ACK->CLOSE");
    assert_eq!(last.err, libc::ETIMEDOUT);
    let w = seq(&s, "CLOSE_WAIT->LAST_ACK").write_seq;
    assert_eq!(
        seq(&s, "LAST_ACK->CLOSE").snd_una,
        w,
        "the FIN was never ACKed"
    );

    assert_deviates(&s, Variant::LastAckGivenUp, &["no_final_ack"]);
    assert_eq!(s.verdict.role, Role::PassiveCloser);
    // The client did its part: it became a FIN_WAIT2 timewait socket, which got the FIN.
    assert_conforms(&c, Role::ActiveCloser, Variant::OrphanedFinWait2);
    assert_zeek(&c, &s, "SF", "ShAFaf");
}

// ---------------------------------------------------------------------------------------------
// 10: resets.

fn reset_linger_zero() {
    let lab = lab(11, Family::V4);
    let tracer = Tracer::start();
    let (c, mut s) = lab.pair().unwrap();
    SockRef::from(&c).set_linger(Some(Duration::ZERO)).unwrap();
    drop(c);
    let mut buf = [0u8; 1];
    assert_eq!(
        s.read(&mut buf).unwrap_err().kind(),
        ErrorKind::ConnectionReset
    );
    drop(s);
    let (c, s) = ends(&lab, tracer);

    assert_reset_while_established(&c, &s);
    assert_eq!(sock(&s, "ESTABLISHED->CLOSE").err, libc::ECONNRESET);
    assert_eq!(c.verdict.role, Role::ActiveCloser);
    assert_eq!(s.verdict.role, Role::PassiveCloser);
    assert_zeek(&c, &s, "RSTO", "ShAR");
}

fn reset_unread_data() {
    let lab = lab(12, Family::V4);
    let tracer = Tracer::start();
    let (c, mut s) = lab.pair().unwrap();
    s.write_all(b"never read").unwrap();
    let mut buf = [0u8; 16];
    wait_until("the data to arrive", WAIT, || Ok(c.peek(&mut buf)? > 0)).unwrap();
    drop(c); // unread data: RST instead of FIN (RFC 2525)
    assert_eq!(
        s.read(&mut buf).unwrap_err().kind(),
        ErrorKind::ConnectionReset
    );
    drop(s);
    let (c, s) = ends(&lab, tracer);

    assert_reset_while_established(&c, &s);
    assert_zeek(&c, &s, "RSTO", "ShAdR");
}

fn reset_data_after_close() {
    let lab = lab(13, Family::V4);
    let tracer = Tracer::start();
    let (c, mut s) = lab.pair().unwrap();
    drop(c);
    server_acks_fin(&lab, &mut s);
    s.write_all(b"too late").unwrap();
    // The RST is sent by the client's timewait socket (FIN_WAIT2 sub-state).
    let (c, s) = rst_into_close_wait(&lab, tracer, s, "TIME_WAIT");
    assert_deviates(&c, Variant::AbortByRst, &["no_peer_fin"]);
    // The client's RST, where the kernel traces its timewait socket's (6.10 and later), comes
    // before the server had it: whether the server's bytes left before it is unknown, and `d`
    // is left out. Elsewhere the RST is seen where the server received it, after its bytes.
    let rst_traced = c.steps().iter().any(|s| s == "rst_sent@TIME_WAIT");
    assert_zeek(&c, &s, "RSTO", if rst_traced { "ShAFR" } else { "ShAFdR" });
}

fn reset_in_close_wait() {
    let lab = lab(14, Family::V4);
    let tracer = Tracer::start();
    let (c, mut s) = lab.pair().unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    server_acks_fin(&lab, &mut s);
    SockRef::from(&c).set_linger(Some(Duration::ZERO)).unwrap();
    drop(c); // abort from FIN_WAIT2: RST
    let (c, s) = rst_into_close_wait(&lab, tracer, s, "CLOSE");
    // The client aborted (SO_LINGER 0) in FIN_WAIT2: an abort by its own RST, not a timeout.
    assert_deviates(&c, Variant::AbortByRst, &["reset_sent"]);
    assert!(
        !sock(&c, "FIN_WAIT2->CLOSE").dead(),
        "closed by the application"
    );
    // Any RST received in CLOSE_WAIT leaves EPIPE (tcp_reset); here the server wrote nothing
    // (snd_nxt == snd_una): the cause is the peer's abort, not data written after the peer had
    // fully closed (docs/close-sequence.md, fact 4; scenario reset-data-after-close).
    let at_rst = seq(&s, "rst_received@CLOSE_WAIT");
    assert_eq!(at_rst.snd_nxt, at_rst.snd_una, "the server sent no data");
    let reset = s.verdict.reset.as_ref().expect("reset info");
    assert_eq!(reset.by, teardown::judge::ResetBy::Peer);
    assert!(
        !reset.cause.contains("wrote"),
        "validator misjudges the cause: {:?} (the server wrote nothing; the peer aborted)",
        reset.cause
    );
    assert_zeek(&c, &s, "RSTO", "ShAFaR");
}

// ---------------------------------------------------------------------------------------------
// 11: CLOSE_WAIT that never ends.

fn close_wait_leak() {
    const THRESHOLD_MS: u64 = 1_000;
    let lab = lab(15, Family::V4);
    let tracer = Tracer::start();
    let (c, mut s) = lab.pair().unwrap();
    drop(c);
    assert!(read_to_eof(&mut s).unwrap().is_empty());
    // The server never calls close(). The monitor, polling sock_diag in the server's namespace,
    // reports the CLOSE_WAIT socket once it is older than the threshold, with its owner.
    let port = lab.port;
    let leak = lab.ns(Side::Server).run(move || {
        let cfg = ReportConfig {
            close_wait_threshold_ms: THRESHOLD_MS,
            ..ReportConfig::default()
        };
        let mut col = Collector::new(Default::default(), cfg, Some(Default::default())).unwrap();
        let mut leak = None;
        wait_until("a CLOSE_WAIT leak reported", WAIT, || {
            let (report, _) = col.poll().map_err(io::Error::other)?;
            leak = report
                .close_wait_leaks
                .into_iter()
                .find(|l| l.tuple.local.port() == port);
            Ok(leak.is_some())
        })
        .unwrap();
        leak.unwrap()
    });
    println!("leak reported: {leak:?}");
    assert!(leak.age_ms >= THRESHOLD_MS);
    assert_eq!(leak.owners.first().map(|o| o.pid), Some(std::process::id()));
    let (c, traced_s) = ends(&lab, tracer);
    drop(s); // only now, after the trace stopped
    let s = traced_s;

    assert_eq!(c.steps(), steps(CLIENT_OPEN, &ACTIVE_CLOSE));
    assert_eq!(s.steps(), steps(SERVER_OPEN, &["ESTABLISHED->CLOSE_WAIT"]));
    let v = &s.verdict;
    assert_eq!(v.variant.name(), Variant::StillOpen.name());
    assert_eq!(v.role, Role::PassiveCloser);
    assert!(v.findings.is_empty(), "{:?}", v.findings);
    assert!(note_codes(&s).contains(&"close_wait_open"), "{:?}", v.notes);
    assert!(
        v.incomplete
            .as_deref()
            .is_some_and(|u| u.contains("CLOSE_WAIT")),
        "{:?}",
        v.incomplete
    );
    // The client's side: orphaned FIN_WAIT2 timewait socket, the peer still in CLOSE_WAIT.
    assert_eq!(c.verdict.variant.name(), Variant::OrphanedFinWait2.name());
    assert!(
        note_codes(&c).contains(&"peer_in_close_wait"),
        "{:?}",
        c.verdict.notes
    );
    assert_zeek(&c, &s, "S2", "ShAFa");
}

// ---------------------------------------------------------------------------------------------
// 12: TIME_WAIT reuse.

fn time_wait_reuse() {
    let lab = lab(16, Family::V4);
    lab.sysctl(Side::Client, "net.ipv4.tcp_tw_reuse", "1")
        .unwrap();
    let cport = lab.port + 10_000;
    let tracer = Tracer::start();
    let listener = lab.listen().unwrap();
    let close_client_first = |c: TcpStream, mut s: TcpStream| {
        drop(c);
        server_acks_fin(&lab, &mut s);
        drop(s);
        lab.wait_state(Side::Client, "TIME_WAIT", WAIT).unwrap();
    };
    let c1 = lab.connect_from(Some(cport)).unwrap();
    let (s1, _) = listener.accept().unwrap();
    s1.set_read_timeout(Some(WAIT)).unwrap();
    close_client_first(c1, s1);
    let tw1 = lab.timewait(Side::Client).unwrap();
    assert_eq!(tw1.len(), 1);
    // tcp_tw_reuse takes over a TIME_WAIT socket whose last timestamp is at least a second old.
    std::thread::sleep(Duration::from_millis(1_100));
    let c2 = lab.connect_from(Some(cport)).unwrap();
    let (s2, _) = listener.accept().unwrap();
    s2.set_read_timeout(Some(WAIT)).unwrap();
    assert_eq!(c2.local_addr().unwrap().port(), cport);
    assert!(
        lab.timewait(Side::Client)
            .unwrap()
            .iter()
            .all(|t| t.cookie != tw1[0].cookie),
        "the TIME_WAIT socket was taken over"
    );
    close_client_first(c2, s2);
    drop(listener);
    let traced = tracer.connections(lab.server_ip, lab.port);
    show(&traced);

    let (mut clients, mut servers): (Vec<Traced>, Vec<Traced>) = traced
        .into_iter()
        .partition(|t| t.finished.conn.remote.port() == lab.port);
    clients.sort_by_key(|t| t.finished.conn.id);
    servers.sort_by_key(|t| t.finished.conn.id);
    assert_eq!((clients.len(), servers.len()), (2, 2));
    for c in &clients {
        assert_eq!(c.finished.conn.local.port(), cport, "the same 4-tuple");
        assert_eq!(c.steps(), steps(CLIENT_OPEN, &ACTIVE_CLOSE));
        assert_conforms(c, Role::ActiveCloser, Variant::FourWayClose);
    }
    for s in &servers {
        assert_eq!(s.steps(), steps(SERVER_OPEN, &PASSIVE_CLOSE));
        assert_conforms(s, Role::PassiveCloser, Variant::FourWayClose);
    }
    // Each connection is paired with its own peer, not with the earlier one on the same tuple.
    for (c, s) in clients.iter().zip(&servers) {
        assert_eq!(
            c.finished.peer.as_ref().map(|p| p.sk),
            Some(s.finished.conn.sk)
        );
        assert_documented_seq(c, s, 0);
    }
    // The new connection's ISN is past the old one's sequence space (tcp_tw_reuse sets
    // write_seq = tw_snd_nxt + 65535 + 2).
    let old_end = seq(&clients[0], "FIN_WAIT2->CLOSE").snd_nxt;
    let new_fin = seq(&clients[1], "ESTABLISHED->FIN_WAIT1").write_seq;
    assert!(
        new_fin.wrapping_sub(old_end) > 65_535 && new_fin.wrapping_sub(old_end) < 1 << 31,
        "old end {old_end}, new FIN {new_fin}"
    );
    for (c, s) in clients.iter().zip(&servers) {
        assert_zeek(c, s, "SF", "ShAFaf");
    }
}

// ---------------------------------------------------------------------------------------------
// 13: SYN to a closed port.

fn syn_to_closed_port() {
    let lab = lab(17, Family::V4);
    let tracer = Tracer::start();
    let err = lab.connect_from(None).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
    let traced = tracer.connections(lab.server_ip, lab.port);
    show(&traced);
    let clients: Vec<&Traced> = traced
        .iter()
        .filter(|t| t.finished.conn.remote.port() == lab.port)
        .collect();
    assert_eq!(clients.len(), 1, "one client socket");
    let c = clients[0];
    assert_eq!(
        c.steps(),
        [
            "CLOSE->SYN_SENT",
            "rst_received@SYN_SENT",
            "SYN_SENT->CLOSE"
        ]
    );
    assert_eq!(sock(c, "SYN_SENT->CLOSE").err, libc::ECONNREFUSED);
    assert_eq!(c.verdict.role, Role::NeverEstablished);
    assert_eq!(c.verdict.variant.name(), Variant::HandshakeRefused.name());
    assert!(c.verdict.findings.is_empty(), "{:?}", c.verdict.findings);
    assert_eq!(
        c.verdict.reset.as_ref().map(|r| r.by),
        Some(teardown::judge::ResetBy::Peer)
    );
    assert_zeek_client(c, "REJ", "Sr");
}
