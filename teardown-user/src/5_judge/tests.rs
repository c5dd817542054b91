//! Table-driven tests of every variant and of a deviation of each, built from the measured
//! numbers of docs/close-sequence.md, §5 ("fact N" below is a fact of that section), and property
//! tests over arbitrary events.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;

use super::*;
use crate::{
    decode::{Comm, Event, EventKind, SeqSnapshot, SockSnapshot, TcpState},
    track::{Connection, RecordEnd},
};
use teardown_common::sock_flag::{DEAD, DONE};
use TcpState::*;

const U: u32 = 3_239_587_339;
const V: u32 = 4_264_540_243;
/// Four bytes sent from CLOSE_WAIT (the measured half-close).
const W4: u32 = V + 4;
const C: &str = "127.0.0.1:40000";
const S: &str = "127.0.0.1:8080";
const MS: u64 = 1_000_000;
const NO_FLAGS: u32 = 0;

fn ev(ts: u64, kind: EventKind) -> Event {
    Event {
        ts_ns: ts,
        sk: 0xa,
        kind,
        local: C.parse().unwrap(),
        remote: S.parse().unwrap(),
        pid: 100,
        comm: Comm::new("app"),
        netns: 0,
        seq: None,
        sock: None,
    }
}

fn st(ts: u64, old: TcpState, new: TcpState) -> Event {
    ev(ts, EventKind::State { old, new })
}

/// A state change with sequence fields (snd_una, snd_nxt, rcv_nxt, write_seq) and sk_flags/err.
fn sq(ts: u64, old: TcpState, new: TcpState, f: [u32; 4], flags: u32, err: i32) -> Event {
    let mut e = st(ts, old, new);
    e.seq = Some(SeqSnapshot {
        snd_una: f[0],
        snd_nxt: f[1],
        rcv_nxt: f[2],
        write_seq: f[3],
    });
    e.sock = Some(SockSnapshot { flags, err });
    e
}

fn rst_in(ts: u64, state: TcpState) -> Event {
    ev(ts, EventKind::ResetReceived { state })
}
fn rst_out(ts: u64, state: TcpState) -> Event {
    ev(ts, EventKind::ResetSent { state })
}
fn retx(ts: u64, state: TcpState) -> Event {
    ev(ts, EventKind::Retransmit { state })
}

/// `base` followed by `more`.
fn then(mut base: Vec<Event>, more: impl IntoIterator<Item = Event>) -> Vec<Event> {
    base.extend(more);
    base
}

fn conn(events: Vec<Event>) -> Connection {
    let seen_from_start = events.first().is_some_and(|e| e.starts_connection());
    let closed = events
        .iter()
        .any(|e| matches!(e.kind, EventKind::State { new: Close, .. }));
    Connection {
        id: 1,
        sk: 0xa,
        local: C.parse().unwrap(),
        remote: S.parse().unwrap(),
        process: None,
        netns: 0,
        events: events.into_iter().map(crate::track::Run::from).collect(),
        unstored: 0,
        seen_from_start,
        events_maybe_lost: false,
        state_at_start: None,
        end: if closed {
            RecordEnd::Closed
        } else {
            RecordEnd::StillOpen
        },
    }
}

fn mirrored(mut c: Connection) -> Connection {
    std::mem::swap(&mut c.local, &mut c.remote);
    c.id = 2;
    c.sk = 0xb;
    c
}

fn client_open() -> Vec<Event> {
    vec![st(MS, Close, SynSent), st(2 * MS, SynSent, Established)]
}
fn server_open() -> Vec<Event> {
    vec![st(MS, Listen, SynRecv), st(2 * MS, SynRecv, Established)]
}

/// The measured half-close, active end: W is the passive end's FIN seq.
#[rustfmt::skip]
fn active_close(w: u32, fin_ack_una: u32) -> Vec<Event> {
    let mut e = client_open();
    e.extend([
        sq(10 * MS, Established, FinWait1, [U, U, V, U], NO_FLAGS, 0),
        sq(20 * MS, FinWait1, FinWait2, [fin_ack_una, U + 1, V, U + 1], NO_FLAGS, 0),
        sq(40 * MS, FinWait2, Close, [U + 1, U + 1, w + 1, U + 1], DONE, 0),
    ]);
    e
}

/// The measured half-close, passive end: `w` = its FIN seq, `final_una` = snd_una at the end.
#[rustfmt::skip]
fn passive_close(w: u32, rcv_at_cw: u32, final_una: u32) -> Vec<Event> {
    let mut e = server_open();
    e.extend([
        sq(15 * MS, Established, CloseWait, [V, V, rcv_at_cw, V], DONE, 0),
        sq(30 * MS, CloseWait, LastAck, [w, w, U + 1, w], DONE, 0),
        sq(50 * MS, LastAck, Close, [final_una, w + 1, U + 1, w + 1], DONE | DEAD, 0),
    ]);
    e
}

/// A plain close(): orphaned, the ACK of the FIN comes alone (fact 2).
#[rustfmt::skip]
fn orphan_close() -> Vec<Event> {
    let mut e = client_open();
    e.extend([
        sq(10 * MS, Established, FinWait1, [U, U, V, U], NO_FLAGS, 0),
        sq(11 * MS, FinWait1, FinWait2, [U + 1, U + 1, V, U + 1], DEAD, 0),
        sq(11 * MS + 500, FinWait2, Close, [U + 1, U + 1, V, U + 1], DEAD, 0),
    ]);
    e
}

#[rustfmt::skip]
fn three_segment_active() -> Vec<Event> {
    let mut e = client_open();
    e.extend([
        sq(10 * MS, Established, FinWait1, [U, U, V, U], NO_FLAGS, 0),
        sq(13 * MS, FinWait1, FinWait2, [U + 1, U + 1, V, U + 1], DEAD, 0),
        sq(13 * MS + 3_000, FinWait2, Close, [U + 1, U + 1, V + 1, U + 1], DEAD | DONE, 0),
    ]);
    e
}

#[rustfmt::skip]
fn three_segment_passive() -> Vec<Event> {
    let mut e = server_open();
    e.extend([
        sq(11 * MS, Established, CloseWait, [V, V, U + 1, V], DONE, 0),
        sq(12 * MS, CloseWait, LastAck, [V, V, U + 1, V], DONE | DEAD, 0),
        sq(14 * MS, LastAck, Close, [V + 1, V + 1, U + 1, V + 1], DONE | DEAD, 0),
    ]);
    e
}

#[rustfmt::skip]
fn simultaneous(peer_fin_plus_1: u32, final_una: u32) -> Vec<Event> {
    let mut e = client_open();
    e.extend([
        sq(10 * MS, Established, FinWait1, [U, U, V, U], NO_FLAGS, 0),
        sq(11 * MS, FinWait1, Closing, [U, U + 1, peer_fin_plus_1, U + 1], DONE, 0),
        sq(12 * MS, Closing, Close, [final_una, U + 1, peer_fin_plus_1, U + 1], DONE, 0),
    ]);
    e
}

fn codes(v: &Verdict) -> Vec<&'static str> {
    v.findings.iter().map(|f| f.code.as_str()).collect()
}
fn note_codes(v: &Verdict) -> Vec<&'static str> {
    v.notes.iter().map(|f| f.code.as_str()).collect()
}
fn text(v: &Verdict) -> String {
    let mut s = String::new();
    v.write_text(&mut s).unwrap();
    s
}

/// One table row: a connection (and its peer), what the verdict must say.
struct Case {
    name: &'static str,
    conn: Connection,
    peer: Option<Connection>,
    role: Role,
    variant: Variant,
    conformance: Conformance,
    /// Finding codes, in order, and the step of the first.
    findings: &'static [&'static str],
    step: Option<u8>,
}

fn case(name: &'static str, events: Vec<Event>, role: Role, variant: Variant) -> Case {
    Case {
        name,
        conn: conn(events),
        peer: None,
        role,
        variant,
        conformance: Conformance::Conforms,
        findings: &[],
        step: None,
    }
}

impl Case {
    fn deviates(mut self, findings: &'static [&'static str], step: Option<u8>) -> Case {
        self.conformance = Conformance::Deviates;
        self.findings = findings;
        self.step = step;
        self
    }
    fn incomplete(mut self) -> Case {
        self.conformance = Conformance::Incomplete;
        self
    }
    fn peer(mut self, events: Vec<Event>) -> Case {
        self.peer = Some(mirrored(conn(events)));
        self
    }
    fn with(mut self, f: impl FnOnce(&mut Connection)) -> Case {
        f(&mut self.conn);
        self
    }
}

#[rustfmt::skip]
fn cases() -> Vec<Case> {
    use Role as R;
    use Variant as X;
    vec![
        // --- Clean closes and a deviation of each.
        case("four-way, active", active_close(V, U + 1), R::ActiveCloser, X::FourWayClose),
        case("four-way, step 2 ack wrong", active_close(V, U + 7), R::ActiveCloser, X::FourWayClose)
        .deviates(&["step2_ack_mismatch"], Some(2)),
        case(
            "four-way, passive",
            passive_close(V, U + 1, V + 1),
            R::PassiveCloser,
            X::FourWayClose,
        ),
        case(
            "four-way, passive, step 4 ack wrong",
            passive_close(V, U + 1, V),
            R::PassiveCloser,
            X::FourWayClose,
        )
        .deviates(&["step4_ack_mismatch"], Some(4)),
        case("four-way, both ends", active_close(V, U + 1), R::ActiveCloser, X::FourWayClose)
        .peer(passive_close(V, U + 1, V + 1)),
        case(
            "four-way, peer's rcv_nxt at CLOSE_WAIT is not our U+1",
            passive_close(V, U + 9, V + 1),
            R::PassiveCloser,
            X::FourWayClose,
        )
        .peer(active_close(V, U + 1))
        .deviates(&["step1_fin_seq_mismatch"], Some(1)),
        case(
            "four-way, active, peer FIN seq differs from the peer's W",
            active_close(V + 2, U + 1),
            R::ActiveCloser,
            X::FourWayClose,
        )
        .peer(passive_close(V, U + 1, V + 1))
        .deviates(&["step3_fin_seq_mismatch"], Some(3)),
        case(
            "three-segment, active (orphaned, DONE at close)",
            three_segment_active(),
            R::ActiveCloser,
            X::ThreeSegmentClose,
        ),
        case(
            "three-segment, passive with peer",
            three_segment_passive(),
            R::PassiveCloser,
            X::ThreeSegmentClose,
        )
        .peer(three_segment_active()),
        case(
            "three-segment, active with peer",
            three_segment_active(),
            R::ActiveCloser,
            X::ThreeSegmentClose,
        )
        .peer(three_segment_passive()),
        case(
            "three-segment, final ack wrong",
            {
                let mut e = three_segment_passive();
                e[4] = sq(14 * MS, LastAck, Close, [V, V + 1, U + 1, V + 1], DONE | DEAD, 0);
                e
            },
            R::PassiveCloser,
            X::ThreeSegmentClose,
        )
        .peer(three_segment_active())
        .deviates(&["step4_ack_mismatch"], Some(4)),
        case("simultaneous", simultaneous(V + 1, U + 1), R::Simultaneous, X::SimultaneousClose),
        case(
            "simultaneous, our FIN's ACK wrong",
            simultaneous(V + 1, U),
            R::Simultaneous,
            X::SimultaneousClose,
        )
        .deviates(&["step2_ack_mismatch"], Some(2)),
        case(
            "simultaneous, peer FIN seq differs from the peer's write_seq",
            simultaneous(V + 5, U + 1),
            R::Simultaneous,
            X::SimultaneousClose,
        )
        .peer(then(
            client_open(),
            [
                    sq(10 * MS, Established, FinWait1, [V, V, U, V], NO_FLAGS, 0),
                    sq(11 * MS, FinWait1, Closing, [V, V + 1, U + 1, V + 1], DONE, 0),
                    sq(12 * MS, Closing, Close, [V + 1, V + 1, U + 1, V + 1], DONE, 0),
            ],
        ))
        .deviates(&["step3_fin_seq_mismatch"], Some(3)),
        case(
            "half-close with data, active, measured",
            active_close(W4, U + 1),
            R::ActiveCloser,
            X::HalfCloseWithData,
        ),
        case(
            "half-close with data, passive, measured",
            passive_close(W4, U + 1, W4 + 1),
            R::PassiveCloser,
            X::HalfCloseWithData,
        ),
        case(
            "half-close, both ends",
            active_close(W4, U + 1),
            R::ActiveCloser,
            X::HalfCloseWithData,
        )
        .peer(passive_close(W4, U + 1, W4 + 1)),
        case(
            "half-close, W before V",
            passive_close(V - 3, U + 1, V - 2),
            R::PassiveCloser,
            X::FourWayClose,
        )
        .deviates(&["step3_w_before_v"], Some(3)),
        case(
            "half-close, FIN,ACK acks the wrong seq",
            {
                let mut e = passive_close(W4, U + 1, W4 + 1);
                e[3] = sq(30 * MS, CloseWait, LastAck, [W4, W4, U + 2, W4], DONE, 0);
                e
            },
            R::PassiveCloser,
            X::HalfCloseWithData,
        )
        .deviates(&["step3_ack_mismatch"], Some(3)),
        // --- Plain close(): orphaned FIN_WAIT2 timewait socket.
        case("orphaned FIN_WAIT2", orphan_close(), R::ActiveCloser, X::OrphanedFinWait2),
        case(
            "orphaned FIN_WAIT2, step 2 ack wrong",
            {
                let mut e = orphan_close();
                e[3] = sq(11 * MS, FinWait1, FinWait2, [U, U + 1, V, U + 1], DEAD, 0);
                e
            },
            R::ActiveCloser,
            X::OrphanedFinWait2,
        )
        .deviates(&["step2_ack_mismatch"], Some(2)),
        case(
            "orphaned FIN_WAIT2, peer closed cleanly",
            orphan_close(),
            R::ActiveCloser,
            X::FourWayClose,
        )
        .peer(passive_close(V, U + 1, V + 1)),
        case(
            "orphaned FIN_WAIT2, peer wrote and was reset (fact 4)",
            orphan_close(),
            R::ActiveCloser,
            X::AbortByRst,
        )
        .peer(then(
            server_open(),
            [
                    sq(10 * MS, Established, CloseWait, [V, V, U + 1, V], DONE, 0),
                    rst_in(12 * MS, CloseWait),
                    sq(12 * MS, CloseWait, Close, [V, V + 4, U + 1, V + 4], DONE, 32),
            ],
        ))
        .deviates(&["no_peer_fin"], Some(3)),
        case(
            "orphaned FIN_WAIT2, timewait socket sent RST",
            then(orphan_close(), [rst_out(12 * MS, TimeWait)]),
            R::ActiveCloser,
            X::AbortByRst,
        )
        .deviates(&["no_peer_fin"], Some(3)),
        case(
            "shutdown, then close in FIN_WAIT2 (fact 9)",
            then(
                client_open(),
                [
                        sq(10 * MS, Established, FinWait1, [U, U, V, U], NO_FLAGS, 0),
                        sq(11 * MS, FinWait1, FinWait2, [U + 1, U + 1, V, U + 1], NO_FLAGS, 0),
                        sq(30 * MS, FinWait2, FinWait2, [U + 1, U + 1, V, U + 1], DEAD, 0),
                        sq(30 * MS + 1_000, FinWait2, Close, [U + 1, U + 1, V, U + 1], DEAD, 0),
                ],
            ),
            R::ActiveCloser,
            X::OrphanedFinWait2,
        ),
        case(
            "shutdown, then close in FIN_WAIT1 before the FIN is ACKed (fact 9)",
            then(
                client_open(),
                [
                        sq(10 * MS, Established, FinWait1, [U, U, V, U], NO_FLAGS, 0),
                        sq(12 * MS, FinWait1, FinWait1, [U, U + 1, V, U + 1], DEAD, 0),
                        sq(15 * MS, FinWait1, FinWait2, [U + 1, U + 1, V, U + 1], DEAD, 0),
                        sq(15 * MS + 1_000, FinWait2, Close, [U + 1, U + 1, V, U + 1], DEAD, 0),
                ],
            ),
            R::ActiveCloser,
            X::OrphanedFinWait2,
        ),
        case(
            "three-segment, not orphaned (timing)",
            then(
                client_open(),
                [
                        sq(10 * MS, Established, FinWait1, [U, U, V, U], NO_FLAGS, 0),
                        sq(13 * MS, FinWait1, FinWait2, [U + 1, U + 1, V, U + 1], NO_FLAGS, 0),
                        sq(13 * MS + 2_000, FinWait2, Close, [U + 1, U + 1, V + 1, U + 1], DONE, 0),
                ],
            ),
            R::ActiveCloser,
            X::ThreeSegmentClose,
        ),
        // --- FIN_WAIT2 timeout.
        case(
            "FIN_WAIT2 timeout",
            {
                let mut e = orphan_close();
                e.truncate(4);
                e.extend([
                    rst_out(70_000 * MS, FinWait2),
                    sq(70_000 * MS, FinWait2, Close, [U + 1, U + 1, V, U + 1], DEAD, 0),
                ]);
                e
            },
            R::ActiveCloser,
            X::FinWait2Timeout,
        )
        .deviates(&["no_peer_fin"], Some(3)),
        // --- Resets.
        case(
            "RST by us in ESTABLISHED (SO_LINGER 0)",
            then(
                client_open(),
                [
                        sq(10 * MS, Established, Close, [U, U, V, U], NO_FLAGS, 0),
                        rst_out(10 * MS, Close),
                ],
            ),
            R::ActiveCloser,
            X::AbortByRst,
        )
        .deviates(&["reset_sent"], Some(1)),
        case(
            "RST by peer in ESTABLISHED",
            then(
                client_open(),
                [
                        rst_in(10 * MS, Established),
                        sq(10 * MS, Established, Close, [U, U, V, U], NO_FLAGS, 104),
                ],
            ),
            R::PassiveCloser,
            X::AbortByRst,
        )
        .deviates(&["reset_received"], Some(1)),
        case(
            "RST by peer in CLOSE_WAIT (EPIPE, fact 4)",
            then(
                server_open(),
                [
                        sq(10 * MS, Established, CloseWait, [V, V, U + 1, V], DONE, 0),
                        sq(12 * MS, CloseWait, Close, [V, V + 4, U + 1, V + 4], DONE, 32),
                ],
            ),
            R::PassiveCloser,
            X::AbortByRst,
        )
        .deviates(&["reset_received"], Some(3)),
        case(
            "RST by us in CLOSE_WAIT (unread data)",
            then(
                server_open(),
                [
                        sq(10 * MS, Established, CloseWait, [V, V, U + 1, V], DONE, 0),
                        sq(12 * MS, CloseWait, Close, [V, V, U + 1, V], DONE, 0),
                        rst_out(12 * MS, Close),
                ],
            ),
            R::PassiveCloser,
            X::AbortByRst,
        )
        .deviates(&["reset_sent"], Some(3)),
        case(
            "RST by peer in FIN_WAIT2",
            {
                let mut e = active_close(V, U + 1);
                e[4] = rst_in(40 * MS, FinWait2);
                e.push(sq(40 * MS, FinWait2, Close, [U + 1, U + 1, V, U + 1], NO_FLAGS, 104));
                e
            },
            R::ActiveCloser,
            X::AbortByRst,
        )
        .deviates(&["reset_received"], Some(3)),
        case(
            "RST by peer in LAST_ACK",
            {
                let mut e = passive_close(V, U + 1, V + 1);
                e[4] = rst_in(50 * MS, LastAck);
                e.push(sq(50 * MS, LastAck, Close, [V, V + 1, U + 1, V + 1], DONE | DEAD, 104));
                e
            },
            R::PassiveCloser,
            X::AbortByRst,
        )
        .deviates(&["reset_received"], Some(4)),
        case(
            "abort by error",
            then(client_open(), [sq(10 * MS, Established, Close, [U, U, V, U], NO_FLAGS, 113)]),
            R::Unknown,
            X::AbortByError,
        )
        .deviates(&["aborted_by_error"], Some(1)),
        // --- Given up.
        case(
            "FIN_WAIT1 given up",
            then(
                client_open(),
                [
                        sq(10 * MS, Established, FinWait1, [U, U, V, U], NO_FLAGS, 0),
                        retx(210 * MS, FinWait1),
                        retx(610 * MS, FinWait1),
                        sq(9_000 * MS, FinWait1, Close, [U, U + 1, V, U + 1], DEAD, 110),
                ],
            ),
            R::ActiveCloser,
            X::FinWait1GivenUp,
        )
        .deviates(&["no_fin_ack"], Some(2)),
        case(
            "CLOSING given up",
            {
                let mut e = simultaneous(V + 1, U);
                e[4] = sq(9_000 * MS, Closing, Close, [U, U + 1, V + 1, U + 1], DONE, 110);
                e
            },
            R::Simultaneous,
            X::ClosingGivenUp,
        )
        .deviates(&["no_fin_ack"], Some(2)),
        case(
            "LAST_ACK given up",
            {
                let mut e = passive_close(V, U + 1, V + 1);
                e[4] = retx(40 * MS, LastAck);
                e.push(sq(9_000 * MS, LastAck, Close, [V, V + 1, U + 1, V + 1], DONE | DEAD, 110));
                e
            },
            R::PassiveCloser,
            X::LastAckGivenUp,
        )
        .deviates(&["no_final_ack"], Some(4)),
        case(
            "timed out in ESTABLISHED",
            then(
                client_open(),
                [
                        retx(5 * MS, Established),
                        sq(9_000 * MS, Established, Close, [U, U + 9, V, U + 9], NO_FLAGS, 110),
                ],
            ),
            R::Unknown,
            X::TimedOut,
        )
        .deviates(&["timed_out"], Some(1)),
        // --- Handshakes.
        case(
            "refused",
            vec![
                st(MS, Close, SynSent),
                rst_in(2 * MS, SynSent),
                sq(2 * MS, SynSent, Close, [U, U + 1, 0, U + 1], NO_FLAGS, 111),
            ],
            R::NeverEstablished,
            X::HandshakeRefused,
        ),
        case(
            "refused, after an illegal transition",
            vec![
                st(MS, Close, SynSent),
                st(MS, SynSent, SynSent),
                rst_in(2 * MS, SynSent),
                sq(2 * MS, SynSent, Close, [U, U + 1, 0, U + 1], NO_FLAGS, 111),
            ],
            R::NeverEstablished,
            X::HandshakeRefused,
        )
        .deviates(&["illegal_transition"], None),
        case(
            "handshake timed out",
            vec![
                st(MS, Close, SynSent),
                retx(1_000 * MS, SynSent),
                sq(3_000 * MS, SynSent, Close, [U, U + 1, 0, U + 1], NO_FLAGS, 110),
            ],
            R::NeverEstablished,
            X::HandshakeTimedOut,
        ),
        case(
            "handshake aborted by the application",
            vec![
                st(MS, Close, SynSent),
                sq(2 * MS, SynSent, Close, [U, U + 1, 0, U + 1], NO_FLAGS, 0),
            ],
            R::NeverEstablished,
            X::HandshakeAborted,
        ),
        // --- Listener, still open, unfinished.
        case(
            "listener",
            vec![st(MS, Close, Listen), st(9 * MS, Listen, Close)],
            R::Listener,
            X::Listener,
        ),
        case(
            "listener with an illegal transition",
            vec![
                st(MS, Close, Listen),
                st(2 * MS, Listen, Established),
                st(9 * MS, Established, Close),
            ],
            R::Listener,
            X::Listener,
        )
        .deviates(&["illegal_transition"], None),
        case("still open", client_open(), R::Unknown, X::StillOpen).incomplete(),
        case(
            "still open in CLOSE_WAIT",
            then(server_open(), [sq(10 * MS, Established, CloseWait, [V, V, U + 1, V], DONE, 0)]),
            R::PassiveCloser,
            X::StillOpen,
        )
        .incomplete(),
        case(
            "still open after an illegal transition",
            then(client_open(), [st(3 * MS, Established, LastAck)]),
            R::PassiveCloser,
            X::StillOpen,
        )
        .deviates(&["illegal_transition"], Some(1)),
        case("superseded", client_open(), R::Unknown, X::Unfinished)
            .with(|c| c.end = RecordEnd::Superseded)
            .incomplete(),
        // --- Incomplete knowledge.
        case(
            "first seen mid-life",
            active_close(V, U + 1)[2..].to_vec(),
            R::ActiveCloser,
            X::FourWayClose,
        )
        .incomplete(),
        case(
            "events maybe lost, gap",
            {
                let mut e = active_close(V, U + 1);
                e.remove(3);
                e
            },
            R::ActiveCloser,
            X::FourWayClose,
        )
        .with(|c| c.events_maybe_lost = true)
        .incomplete(),
        case(
            "gap without loss",
            {
                let mut e = active_close(V, U + 1);
                e.remove(3);
                e
            },
            R::ActiveCloser,
            X::FourWayClose,
        )
        .deviates(&["discontinuous_transition"], Some(2)),
        case(
            "no flags at FIN_WAIT2 -> CLOSE",
            {
                let mut e = active_close(V, U + 1);
                e[4].sock = None;
                e
            },
            R::ActiveCloser,
            X::Unclassified,
        )
        .incomplete(),
        case(
            "only the close seen",
            vec![st(40 * MS, FinWait2, Close)],
            R::ActiveCloser,
            X::Unclassified,
        )
        .incomplete(),
        case("no events", vec![], R::Unknown, X::StillOpen).incomplete(),
    ]
}

#[test]
fn table_of_variants_and_deviations() {
    let mut failures = Vec::new();
    for c in cases() {
        let v = judge(&c.conn, c.peer.as_ref());
        let got = (v.role, v.variant, v.conformance, codes(&v));
        let want = (c.role, c.variant, c.conformance, c.findings.to_vec());
        let step_ok = c.findings.is_empty() || v.findings.first().map(|f| f.step) == Some(c.step);
        if got != want || !step_ok {
            failures.push(format!(
                "{}:\n  got  {got:?}\n  want {want:?}\n{}",
                c.name,
                text(&v)
            ));
        }
        assert_eq!(v.conforms, v.findings.is_empty(), "{}", c.name);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_variant_is_covered_by_the_table() {
    let cs = cases();
    for x in Variant::ALL {
        assert!(
            cs.iter().any(|c| c.variant == x),
            "no case for {}",
            x.name()
        );
        let json = serde_json::to_string(&x).unwrap();
        assert_eq!(json, format!("\"{}\"", x.name()));
    }
}

#[test]
fn measured_half_close_checks_every_relation() {
    let client = conn(active_close(W4, U + 1));
    let server = mirrored(conn(passive_close(W4, U + 1, W4 + 1)));
    let vc = judge(&client, Some(&server));
    let vs = judge(&server, Some(&client));
    for v in [&vc, &vs] {
        let w = v.waves.as_ref().unwrap();
        assert_eq!((w.u, w.v, w.w), (Some(U), Some(V), Some(W4)));
        assert_eq!(w.data_in_close_wait, Some(4));
        assert!(
            v.checks
                .iter()
                .all(|c| matches!(c.outcome, Outcome::Holds | Outcome::Defines)),
            "{}",
            text(v)
        );
    }
    // The active end checks the peer's W at its TIME_WAIT entry; the passive end checks our U.
    assert!(vc
        .checks
        .iter()
        .any(|c| c.step == 3 && c.outcome == Outcome::Holds));
    assert!(vs
        .checks
        .iter()
        .any(|c| c.step == 1 && c.outcome == Outcome::Holds));
    assert_eq!(vc.time_wait, Some(TimeWaitPath::Entered));
    let t = text(&vc);
    assert!(
        t.contains("1 FIN      us -> peer  seq=U   (3239587339)"),
        "{t}"
    );
    assert!(
        t.contains("3 FIN,ACK  peer -> us  seq=W   (4264540247)  ack=U+1 (3239587340)"),
        "{t}"
    );
    assert!(
        t.contains("4 ACK      us -> peer  seq=U+1 (3239587340)  ack=W+1 (4264540248)"),
        "{t}"
    );
    let ts = text(&vs);
    assert!(
        ts.contains("2 ACK      us -> peer  seq=V   (4264540243)  ack=U+1 (3239587340)"),
        "{ts}"
    );
}

#[test]
fn active_end_alone_estimates_data_and_leaves_v_unknown() {
    let v = judge(&conn(active_close(W4, U + 1)), None);
    let w = v.waves.as_ref().unwrap();
    assert_eq!((w.u, w.v, w.w), (Some(U), None, Some(W4)));
    assert_eq!(w.data_in_close_wait, Some(4));
}

#[test]
fn closing_times_and_into_time_wait() {
    let v = judge(&conn(active_close(V, U + 1)), None);
    let times: Vec<(TcpState, u64)> = v.closing_times.iter().map(|t| (t.state, t.ns)).collect();
    assert_eq!(times, vec![(FinWait1, 10 * MS), (FinWait2, 20 * MS)]);
    let p = judge(&conn(passive_close(V, U + 1, V + 1)), None);
    let times: Vec<(TcpState, u64)> = p.closing_times.iter().map(|t| (t.state, t.ns)).collect();
    assert_eq!(times, vec![(CloseWait, 15 * MS), (LastAck, 20 * MS)]);
    assert_eq!(p.time_wait, None);
    assert!(note_codes(&p).contains(&"merge_not_visible"));

    let o = judge(&conn(orphan_close()), None);
    assert_eq!(o.time_wait, Some(TimeWaitPath::FinWait2Timewait));
    assert!(note_codes(&o).contains(&"time_wait_not_visible"));
    let o = judge(
        &conn(orphan_close()),
        Some(&mirrored(conn(passive_close(V, U + 1, V + 1)))),
    );
    assert_eq!(
        o.time_wait,
        Some(TimeWaitPath::FinWait2TimewaitThenTimeWait)
    );
    let r = judge(
        &conn(
            cases()
                .into_iter()
                .find(|c| c.name == "RST by peer in FIN_WAIT2")
                .unwrap()
                .conn
                .events
                .into_iter()
                .map(|r| r.ev)
                .collect(),
        ),
        None,
    );
    assert_eq!(r.time_wait, Some(TimeWaitPath::Reset));
    assert_eq!(
        r.reset.as_ref().map(|r| (r.by, r.state, r.err)),
        Some((ResetBy::Peer, FinWait2, Some(104)))
    );
}

#[test]
fn retransmitted_fin_from_last_ack_is_a_note_not_a_deviation() {
    let mut e = passive_close(V, U + 1, V + 1);
    e.insert(4, retx(40 * MS, LastAck));
    let v = judge(&conn(e), None);
    assert!(v.conforms, "{}", text(&v));
    let n = v
        .notes
        .iter()
        .find(|n| n.code == Code::FinRetransmitted)
        .unwrap();
    assert_eq!(n.step, Some(4));
    assert!(n.message.contains("LAST_ACK"), "{}", n.message);
}

#[test]
fn missing_sequence_data_is_not_checkable_not_broken() {
    let mut e = active_close(V, U + 1);
    for x in &mut e {
        x.seq = None;
    }
    let v = judge(&conn(e), None);
    assert_eq!(v.conformance, Conformance::Conforms, "{}", text(&v));
    assert!(!v.checks.is_empty());
    assert!(v.checks.iter().all(|c| c.outcome == Outcome::NotCheckable));
    assert!(note_codes(&v).contains(&"no_sequence_data"));
}

#[test]
fn reset_message_names_step_state_and_cause() {
    let c = cases()
        .into_iter()
        .find(|c| c.name == "RST by peer in CLOSE_WAIT (EPIPE, fact 4)")
        .unwrap();
    let v = judge(&c.conn, None);
    let f = &v.findings[0];
    assert!(
        f.message.starts_with(
            "step 3 never came: we sent no FIN; ended by the peer's RST in CLOSE_WAIT (EPIPE 32)"
        ),
        "{}",
        f.message
    );
    assert!(
        v.headline()
            .contains("passive closer, abort by RST: deviates"),
        "{}",
        v.headline()
    );
    let json = serde_json::to_value(&v).unwrap();
    assert_eq!(json["variant"], "abort_by_rst");
    assert_eq!(json["conformance"], "deviates");
    assert_eq!(json["reset"]["by"], "peer");
}

#[test]
fn sequence_wraps_around() {
    // U = 2^32 - 1: U+1 wraps to 0.
    let u = u32::MAX;
    let mut e = client_open();
    e.extend([
        sq(10 * MS, Established, FinWait1, [u, u, V, u], NO_FLAGS, 0),
        sq(20 * MS, FinWait1, FinWait2, [0, 0, V, 0], NO_FLAGS, 0),
        sq(40 * MS, FinWait2, Close, [0, 0, V + 1, 0], DONE, 0),
    ]);
    let v = judge(&conn(e), None);
    assert!(v.conforms, "{}", text(&v));
}

// --- Properties.

fn state() -> impl Strategy<Value = TcpState> {
    (1u8..=13).prop_map(|n| TcpState::from_kernel(n).unwrap_or(TcpState::Close))
}

fn event() -> impl Strategy<Value = Event> {
    (
        any::<u64>(),
        0u8..4,
        state(),
        state(),
        proptest::option::of(any::<[u32; 4]>()),
        proptest::option::of((
            0u32..8,
            prop_oneof![
                Just(0i32),
                Just(32),
                Just(104),
                Just(110),
                Just(111),
                any::<i32>()
            ],
        )),
        any::<u32>(),
    )
        .prop_map(|(ts, k, a, b, seq, sock, pid)| {
            let kind = match k {
                0 => EventKind::State { old: a, new: b },
                1 => EventKind::Retransmit { state: a },
                2 => EventKind::ResetSent { state: a },
                _ => EventKind::ResetReceived { state: a },
            };
            let mut e = ev(ts, kind);
            e.pid = pid;
            e.seq = seq.map(|f| SeqSnapshot {
                snd_una: f[0],
                snd_nxt: f[1],
                rcv_nxt: f[2],
                write_seq: f[3],
            });
            e.sock = sock.map(|(flags, err)| SockSnapshot { flags, err });
            e
        })
}

/// Plausible closes, so that the property runs through the interesting paths too.
fn walk() -> impl Strategy<Value = Vec<Event>> {
    proptest::collection::vec(
        (
            0usize..TRANSITIONS.len(),
            any::<u16>(),
            proptest::option::of(any::<[u32; 4]>()),
            0u32..4,
            prop_oneof![Just(0i32), Just(32), Just(104), Just(110)],
        ),
        0..8,
    )
    .prop_map(|steps| {
        let mut ts = 0u64;
        steps
            .into_iter()
            .map(|(i, dt, seq, flags, err)| {
                ts += u64::from(dt) * 1_000;
                let r = &TRANSITIONS[i];
                let mut e = st(ts, r.from, r.to);
                e.seq = seq.map(|f| SeqSnapshot {
                    snd_una: f[0],
                    snd_nxt: f[1],
                    rcv_nxt: f[2],
                    write_seq: f[3],
                });
                e.sock = Some(SockSnapshot { flags, err });
                e
            })
            .collect()
    })
}

fn connection() -> impl Strategy<Value = Connection> {
    (
        prop_oneof![proptest::collection::vec(event(), 0..12), walk()],
        any::<bool>(),
        any::<bool>(),
        0u8..4,
    )
        .prop_map(|(events, start, lost, end)| {
            let mut c = conn(events);
            c.seen_from_start = start;
            c.events_maybe_lost = lost;
            c.end = match end {
                0 => RecordEnd::Closed,
                1 => RecordEnd::StillOpen,
                2 => RecordEnd::Superseded,
                _ => RecordEnd::Evicted,
            };
            c
        })
}

/// A clock offset: an hour and a bit, in ns.
const SHIFT: u64 = 3_600_000_000_123;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_events_give_one_consistent_verdict(c in connection(), p in proptest::option::of(connection())) {
        let v = judge(&c, p.as_ref());
        for f in v.findings.iter().chain(&v.notes) {
            prop_assert!(f.step.is_none_or(|s| (1..=4).contains(&s)));
            prop_assert!(!f.message.contains("step 0"));
            // A code named after a wave ("step3_...") and a message that opens with one
            // ("step 3 never came", "step 3: ...") are about the wave the finding names.
            let wave = |s: &str| s.chars().next().and_then(|c| c.to_digit(10));
            let want = f.step.map(u32::from);
            if let Some(n) = f.code.as_str().strip_prefix("step").and_then(wave) {
                prop_assert_eq!(want, Some(n), "{}", f.code);
            }
            if let Some(n) = f.message.strip_prefix("step ").and_then(wave) {
                prop_assert_eq!(want, Some(n), "{}", f.message);
            }
        }
        for c in &v.checks {
            prop_assert!((1..=4).contains(&c.step));
        }
        prop_assert!(!v.headline().is_empty());
        let mut s = String::new();
        prop_assert!(v.write_text(&mut s).is_ok());
        prop_assert!(serde_json::to_string(&v).is_ok());
        // Judging is pure: the same input gives the same verdict.
        prop_assert_eq!(&v, &judge(&c, p.as_ref()));
        // Only the time between events counts, not the clock they were read from.
        let shift = |c: &Connection| {
            let mut c = c.clone();
            c.events.iter_mut().for_each(|e| {
                e.ev.ts_ns = e.ev.ts_ns.wrapping_add(SHIFT);
                e.first_ts = e.first_ts.wrapping_add(SHIFT);
            });
            c
        };
        let latest = c.events.iter().chain(p.iter().flat_map(|p| &p.events)).map(|e| e.ev.ts_ns).max();
        if latest.is_none_or(|t| t.checked_add(SHIFT).is_some()) {
            prop_assert_eq!(&v, &judge(&shift(&c), p.as_ref().map(shift).as_ref()));
        }
    }
}

#[test]
fn fin_wait2_twice_sums_its_time() {
    let c = cases()
        .into_iter()
        .find(|c| c.name.starts_with("shutdown, then close"))
        .unwrap();
    let v = judge(&c.conn, None);
    let fw2: Vec<u64> = v
        .closing_times
        .iter()
        .filter(|t| t.state == FinWait2)
        .map(|t| t.ns)
        .collect();
    assert_eq!(fw2, vec![19 * MS + 1_000]);
}

/// The text and the JSON of every case's verdict show what the verdict holds: each finding and
/// note by its code, the variant by its name.
#[test]
fn every_case_shows_its_verdict_in_text_and_json() {
    for c in cases() {
        let v = judge(&c.conn, c.peer.as_ref());
        let t = text(&v);
        for f in v.findings.iter().chain(&v.notes) {
            assert!(t.contains(&format!("[{}]", f.code)), "{}: {t}", c.name);
        }
        let j = serde_json::to_value(&v).unwrap();
        assert_eq!(j["variant"], v.variant.name(), "{}", c.name);
        let in_json = |key: &str| -> Vec<String> {
            let list = j[key].as_array().unwrap().iter();
            list.map(|f| f["code"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(in_json("findings"), codes(&v), "{}", c.name);
        assert_eq!(in_json("notes"), note_codes(&v), "{}", c.name);
    }
}

/// An orphan's FIN_WAIT2 timewait socket, its fate told by the kernel's timer events: the
/// verdict follows [`super::classify::ORPHAN_FATES`].
#[test]
fn an_orphans_timewait_fate_decides_its_verdict() {
    let with = |reached, left| {
        judge_with(
            &conn(orphan_close()),
            None,
            &JudgeOptions {
                timewait: Some(TimewaitOutcome { reached, left }),
                ..JudgeOptions::default()
            },
        )
    };
    use crate::sock_diag::{TwFate, TwSubstate};
    // The peer's FIN came: the documented close, TIME_WAIT seen.
    let v = with(TwSubstate::TimeWait, None);
    assert_eq!(v.conformance, Conformance::Conforms, "{}", text(&v));
    assert_eq!(
        v.time_wait,
        Some(TimeWaitPath::FinWait2TimewaitThenTimeWait)
    );
    assert!(!note_codes(&v).contains(&"time_wait_not_visible"));
    assert!(v.why.contains("entered TIME_WAIT"), "{}", v.why);
    // It expired in FIN_WAIT2: step 3 never came.
    let v = with(TwSubstate::FinWait2, Some(TwFate::Expired));
    assert_eq!(v.variant, Variant::FinWait2Timeout);
    assert_eq!(v.conformance, Conformance::Deviates);
    assert_eq!(codes(&v), ["no_peer_fin"]);
    assert_eq!(v.findings[0].step, Some(3));
    assert_eq!(v.time_wait, Some(TimeWaitPath::TimedOut));
    // A RST killed it in FIN_WAIT2.
    let v = with(TwSubstate::FinWait2, Some(TwFate::Killed));
    assert_eq!(v.variant, Variant::AbortByRst);
    assert_eq!(v.time_wait, Some(TimeWaitPath::Reset));
    // Not in the table: as if nothing were known.
    let v = with(TwSubstate::FinWait2, Some(TwFate::Reused));
    assert_eq!(v, judge(&conn(orphan_close()), None));
}

#[test]
fn a_passive_closer_slow_to_close_gets_a_note_naming_its_process() {
    // passive_close spends 15 ms in CLOSE_WAIT.
    let opts = |ms: u64| JudgeOptions {
        slow_close_ns: ms * MS,
        ..JudgeOptions::default()
    };
    let mut c = conn(passive_close(V, U + 1, V + 1));
    c.process = Some(crate::decode::Task {
        pid: 4242,
        comm: Comm::new("httpd"),
    });
    let v = judge_with(&c, None, &opts(10));
    let note = v
        .notes
        .iter()
        .find(|n| n.code == Code::SlowClose)
        .unwrap_or_else(|| panic!("no slow_close note: {}", text(&v)));
    assert!(note.message.contains("httpd (4242)"), "{}", note.message);
    assert!(note.message.contains("15ms"), "{}", note.message);
    assert_eq!(v.conformance, Conformance::Conforms);
    // Under the threshold, or off, or the active closer: no note.
    assert!(!note_codes(&judge_with(&c, None, &opts(20))).contains(&"slow_close"));
    assert!(!note_codes(&judge_with(&c, None, &opts(0))).contains(&"slow_close"));
    let a = conn(active_close(V, U + 1));
    assert!(!note_codes(&judge_with(&a, None, &opts(1))).contains(&"slow_close"));
}

/// Events a connection could not store (it had taken all its runs) leave its verdict
/// incomplete, and the transitions they held are not taken for a deviation.
#[test]
fn events_not_stored_make_a_verdict_incomplete() {
    let mut events = active_close(V, U + 1);
    // The middle of the close not stored: a transition seems to be missing.
    events.remove(3);
    let mut c = conn(events.clone());
    let v = judge(&c, None);
    assert_eq!(v.conformance, Conformance::Deviates, "{v:#?}");
    c.unstored = 1;
    let v = judge(&c, None);
    assert_eq!(v.conformance, Conformance::Incomplete, "{v:#?}");
    let incomplete = v.incomplete.unwrap_or_default();
    assert!(
        incomplete.contains("1 of its events were not stored"),
        "{incomplete}"
    );
}
