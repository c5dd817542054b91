//! How a connection ended: its role and the variant of its close, classified from the folded
//! [`Trace`]s of the connection and, when it was traced too, of its peer.

use super::{
    model::{step_pending, Meaning, Step, Trace},
    seq::{self, Ends},
    verdict::{Code, Judgement, ResetBy, ResetInfo, Role, TimeWaitPath, Variant},
};
use crate::{
    event::{Event, TcpState},
    tracker::{Connection, RecordEnd},
};

use libc::{ECONNREFUSED, ECONNRESET, EPIPE, ETIMEDOUT};

/// Below this gap between the ACK of our FIN and the peer's FIN, both were in one segment (the
/// kernel processes the ACK part, then the FIN, in one pass: docs/close-sequence.md, fact 8). A heuristic, used only
/// when neither the peer's trace nor the orphan flag decides.
pub const MERGED_GAP_NS: u64 = 20_000;

/// `ECONNRESET 104`: the name with the number, as the kernel's users know both.
fn errno_text(err: i32) -> String {
    let name = crate::event::errno_name(err);
    if name.starts_with("errno") {
        name.into_owned()
    } else {
        format!("{name} {err}")
    }
}

/// The outcome of the end classification.
pub(super) struct End {
    pub(super) variant: Variant,
    pub(super) why: String,
    pub(super) reset: Option<ResetInfo>,
    pub(super) time_wait: Option<TimeWaitPath>,
}

impl End {
    fn new(variant: Variant, why: impl Into<String>) -> End {
        End {
            variant,
            why: why.into(),
            reset: None,
            time_wait: None,
        }
    }
}

/// "step N never came: ", or nothing when no step applies.
fn never_came(step: Option<Step>) -> String {
    step.map_or(String::new(), |s| {
        format!("step {} never came: ", s.number())
    })
}

fn close_err(t: &Trace<'_>) -> i32 {
    t.close.and_then(|e| e.sock).map_or(0, |s| s.err)
}

/// Who reset, from the reset events first, then from `sk_err`.
fn reset_by(t: &Trace<'_>) -> Option<ResetBy> {
    if !t.resets_received.is_empty() {
        Some(ResetBy::Peer)
    } else if !t.resets_sent.is_empty() {
        Some(ResetBy::Us)
    } else if matches!(close_err(t), ECONNRESET | EPIPE | ECONNREFUSED) {
        Some(ResetBy::Peer)
    } else {
        None
    }
}

fn states_seen<'t>(t: &'t Trace<'_>) -> impl Iterator<Item = TcpState> + 't {
    t.first_state
        .into_iter()
        .chain(t.marks.iter().map(|(_, e)| e.kind.state_after()))
        .chain(t.illegal.iter().map(|e| e.kind.state_after()))
}

pub(super) fn role_of(conn: &Connection, t: &Trace<'_>) -> Role {
    use TcpState::*;
    if conn.is_listener() {
        return Role::Listener;
    }
    if t.has(Meaning::SimultaneousFin) || t.has(Meaning::ClosingAcked) {
        return Role::Simultaneous;
    }
    if t.has(Meaning::SendFin) {
        return Role::ActiveCloser;
    }
    if t.has(Meaning::ReceiveFin) || t.has(Meaning::SendThirdWave) {
        return Role::PassiveCloser;
    }
    let seen: Vec<TcpState> = states_seen(t).collect();
    if seen.contains(&Closing) {
        return Role::Simultaneous;
    }
    if seen.iter().any(|s| matches!(s, FinWait1 | FinWait2)) {
        return Role::ActiveCloser;
    }
    if seen.iter().any(|s| matches!(s, CloseWait | LastAck)) {
        return Role::PassiveCloser;
    }
    if t.has(Meaning::Abort) {
        return match reset_by(t) {
            Some(ResetBy::Peer) => Role::PassiveCloser,
            Some(ResetBy::Us) => Role::ActiveCloser,
            _ if close_err(t) == 0 && t.close.and_then(|e| e.sock).is_some() => Role::ActiveCloser,
            _ => Role::Unknown,
        };
    }
    if !t.established
        && seen
            .iter()
            .all(|s| matches!(s, Close | SynSent | SynRecv | Listen | NewSynRecv))
        && !seen.is_empty()
    {
        return Role::NeverEstablished;
    }
    Role::Unknown
}

/// The evidence that the passive closer's ACK rode on its FIN (three segments).
fn merged_evidence(
    active: Option<&Trace<'_>>,
    passive: Option<&Trace<'_>>,
) -> Option<&'static str> {
    if let (Some(a), Some(p)) = (active, passive) {
        if let (Some(fa), Some(la)) = (a.mark(Meaning::FinAcked), p.mark(Meaning::SendThirdWave)) {
            return (la.ts_ns <= fa.ts_ns).then_some(
                "the passive end sent its FIN before the active end got the ACK of its FIN (both ends traced)",
            );
        }
    }
    let a = active?;
    let close = a.close?;
    let done = close.sock.is_some_and(|s| s.done());
    match a.close_from()? {
        TcpState::FinWait1 if done => {
            return Some(
                "FIN_WAIT1 -> CLOSE with the peer's FIN received: ACK and FIN came together",
            )
        }
        TcpState::FinWait2 if done => {}
        _ => return None,
    }
    let fa = a.mark(Meaning::FinAcked)?;
    if fa.sock.is_some_and(|s| s.dead()) && !a.has(Meaning::Orphaned) {
        return Some(
            "orphaned, yet it did not become a FIN_WAIT2 timewait socket: the FIN came with the ACK (fact 8)",
        );
    }
    (close.ts_ns.saturating_sub(fa.ts_ns) <= MERGED_GAP_NS)
        .then_some("the peer's FIN was processed with the ACK of ours (within 20 µs): one segment")
}

/// The variant of a close that followed the documented sequence to its end.
fn clean_variant(
    role: Role,
    us: &Trace<'_>,
    peer: Option<&Trace<'_>>,
    ends: Option<&Ends<'_, '_>>,
) -> End {
    if role == Role::Simultaneous || us.has(Meaning::SimultaneousFin) {
        return End::new(
            Variant::SimultaneousClose,
            "FIN_WAIT1 -> CLOSING: the FINs crossed",
        );
    }
    if let Some(n) = ends.and_then(seq::data_in_close_wait).filter(|&n| n > 0) {
        return End::new(
            Variant::HalfCloseWithData,
            format!(
                "W - V = {n}: the passive closer sent {n} bytes from CLOSE_WAIT before its FIN"
            ),
        );
    }
    let (active, passive) = match role {
        Role::PassiveCloser => (peer, Some(us)),
        _ => (Some(us), peer),
    };
    match merged_evidence(active, passive) {
        Some(why) => End::new(Variant::ThreeSegmentClose, why),
        None => End::new(Variant::FourWayClose, "the documented sequence"),
    }
}

pub(super) struct Ctx<'c, 't, 'a> {
    pub(super) conn: &'c Connection,
    pub(super) us: &'t Trace<'a>,
    pub(super) peer: Option<(&'c Connection, &'t Trace<'a>)>,
    pub(super) role: Role,
    pub(super) ends: Option<Ends<'t, 'a>>,
}

impl Ctx<'_, '_, '_> {
    fn peer_trace(&self) -> Option<&Trace<'_>> {
        self.peer.map(|(_, t)| t)
    }

    /// The application itself made this transition (same task as the socket's owner).
    fn by_owner(&self, ev: &Event) -> Option<String> {
        let p = self.conn.process?;
        (p.pid == ev.pid).then(|| format!(" by {} ({})", p.comm, p.pid))
    }
}

pub(super) fn classify(cx: &Ctx<'_, '_, '_>, j: &mut Judgement) -> End {
    use TcpState::*;
    let us = cx.us;
    if cx.conn.is_listener() {
        return End::new(Variant::Listener, "a listening socket");
    }
    let Some(close) = us.close else {
        let state = us.state.map_or("no state", |s| s.name());
        if us.state == Some(CloseWait) {
            j.note(
                Some(Step::ThirdWave),
                Code::CloseWaitOpen,
                "in CLOSE_WAIT: the peer closed but the application has not called close() yet \
                 (a descriptor leak if it never does)"
                    .to_owned(),
            );
        }
        return match cx.conn.end {
            RecordEnd::StillOpen => End::new(Variant::StillOpen, format!("still open in {state}")),
            _ => End::new(Variant::Unfinished, format!("record ended in {state}")),
        };
    };
    let from = us.close_from().unwrap_or(Close);
    let sock = close.sock;
    let err = sock.map_or(0, |s| s.err);
    let by = reset_by(us);
    let pending = step_pending(from);

    // Handshakes.
    if matches!(from, SynSent | SynRecv) {
        let mut e = if by == Some(ResetBy::Peer) || err == ECONNREFUSED {
            let mut e = End::new(
                if from == SynSent {
                    Variant::HandshakeRefused
                } else {
                    Variant::HandshakeAborted
                },
                format!("RST from the peer in {from}"),
            );
            e.reset = Some(ResetInfo {
                by: ResetBy::Peer,
                state: from,
                err: (err != 0).then_some(err),
                cause: if from == SynSent {
                    "connection refused".to_owned()
                } else {
                    "the peer reset the handshake".to_owned()
                },
            });
            e
        } else if err == ETIMEDOUT {
            End::new(
                Variant::HandshakeTimedOut,
                format!("{from} timed out (ETIMEDOUT)"),
            )
        } else if err != 0 {
            End::new(
                Variant::HandshakeAborted,
                format!("{from} ended with {}", errno_text(err)),
            )
        } else if sock.is_none() {
            End::new(
                Variant::HandshakeAborted,
                format!("{from} -> CLOSE (socket error not read)"),
            )
        } else {
            End::new(
                Variant::HandshakeAborted,
                format!("{from} -> CLOSE: closed before established"),
            )
        };
        if us
            .retransmits
            .iter()
            .any(|r| matches!(r.kind.state_after(), SynSent | SynRecv))
        {
            e.why.push_str(" after SYN retransmissions");
        }
        return e;
    }

    // Timeouts and errors other than RST.
    if err == ETIMEDOUT {
        let n = us
            .retransmits
            .iter()
            .filter(|r| r.kind.state_after() == from)
            .count();
        let tries = match n {
            0 => String::new(),
            1 => " after 1 retransmission".to_owned(),
            n => format!(" after {n} retransmissions"),
        };
        let (variant, code, msg) = match from {
            FinWait1 => (
                Variant::FinWait1GivenUp,
                Code::NoFinAck,
                format!("step 2 never came: our FIN was never ACKed; FIN_WAIT1 gave up{tries} (ETIMEDOUT)"),
            ),
            Closing => (
                Variant::ClosingGivenUp,
                Code::NoFinAck,
                format!("step 2 never came: our FIN was never ACKed; CLOSING gave up{tries} (ETIMEDOUT)"),
            ),
            LastAck => (
                Variant::LastAckGivenUp,
                Code::NoFinalAck,
                format!("step 4 never came: the final ACK never arrived; LAST_ACK gave up{tries} (ETIMEDOUT)"),
            ),
            FinWait2 => (
                Variant::FinWait2Timeout,
                Code::NoPeerFin,
                "step 3 never came: the peer sent no FIN; FIN_WAIT2 timed out (ETIMEDOUT)".to_owned(),
            ),
            _ => (
                Variant::TimedOut,
                Code::TimedOut,
                format!(
                    "{}the connection timed out in {from}{tries} (ETIMEDOUT)",
                    never_came(pending)
                ),
            ),
        };
        j.finding(pending, code, msg);
        let mut e = End::new(variant, format!("{from} -> CLOSE with ETIMEDOUT"));
        if matches!(from, FinWait1 | FinWait2 | Closing) {
            e.time_wait = Some(TimeWaitPath::TimedOut);
        }
        return e;
    }
    if err != 0 && by.is_none() {
        j.finding(
            pending,
            Code::AbortedByError,
            format!(
                "{}the connection ended in {from} with {}",
                never_came(pending),
                errno_text(err)
            ),
        );
        let mut e = End::new(
            Variant::AbortByError,
            format!("{from} -> CLOSE with {}", errno_text(err)),
        );
        if matches!(from, FinWait1 | FinWait2 | Closing) {
            e.time_wait = Some(TimeWaitPath::Undetermined);
        }
        return e;
    }

    // Resets.
    if let Some(by) = by {
        return reset_end(cx, j, from, by, err, close);
    }
    if matches!(from, Established | CloseWait) {
        // No RST event and no error: an abortive close by the application (its RST event may
        // not have been traced), unless the error was not read.
        let by = if sock.is_some() {
            ResetBy::Us
        } else {
            ResetBy::Unknown
        };
        return reset_end(cx, j, from, by, err, close);
    }

    // The documented ends.
    match from {
        Closing | TimeWait => {
            let mut e = clean_variant(cx.role, us, cx.peer_trace(), cx.ends.as_ref());
            e.time_wait = Some(TimeWaitPath::Entered);
            e
        }
        LastAck => clean_variant(cx.role, us, cx.peer_trace(), cx.ends.as_ref()),
        FinWait1 | FinWait2 => active_end(cx, j, from, close),
        _ => End::new(Variant::Unclassified, format!("{from} -> CLOSE")),
    }
}

/// A normal `-> CLOSE` from FIN_WAIT1 or FIN_WAIT2: TIME_WAIT, a timewait socket, or unknown.
fn active_end(cx: &Ctx<'_, '_, '_>, j: &mut Judgement, from: TcpState, close: &Event) -> End {
    let us = cx.us;
    let Some(sock) = close.sock else {
        j.unknown.push(format!(
            "socket flags not read at {from} -> CLOSE: TIME_WAIT, timewait socket or other end unknown (fact 10)"
        ));
        let mut e = match cx.peer {
            Some((_, p)) if clean_final_ack(p) => {
                clean_variant(cx.role, us, cx.peer_trace(), cx.ends.as_ref())
            }
            _ => End::new(
                Variant::Unclassified,
                format!("{from} -> CLOSE, flags not read"),
            ),
        };
        e.time_wait = Some(TimeWaitPath::Undetermined);
        return e;
    };
    if sock.done() {
        let mut e = clean_variant(cx.role, us, cx.peer_trace(), cx.ends.as_ref());
        e.time_wait = Some(TimeWaitPath::Entered);
        return e;
    }
    if from == TcpState::FinWait2 && sock.dead() {
        return orphan_end(cx, j);
    }
    let step = step_pending(from);
    j.finding(
        step,
        Code::UnexplainedClose,
        format!(
            "{}{from} -> CLOSE without the peer's FIN, orphaning, RST or error",
            never_came(step)
        ),
    );
    let mut e = End::new(
        Variant::Unclassified,
        format!("{from} -> CLOSE, unexplained"),
    );
    e.time_wait = Some(TimeWaitPath::Undetermined);
    e
}

/// The peer's socket ended LAST_ACK -> CLOSE cleanly: it got the final ACK.
fn clean_final_ack(p: &Trace<'_>) -> bool {
    p.close_from() == Some(TcpState::LastAck) && reset_by(p).is_none() && close_err(p) == 0
}

/// FIN_WAIT2 -> CLOSE orphaned without the peer's FIN: a FIN_WAIT2 timewait socket
/// (docs/close-sequence.md, fact 2).
fn orphan_end(cx: &Ctx<'_, '_, '_>, j: &mut Judgement) -> End {
    use TcpState::*;
    let us = cx.us;
    // The peer's end, when traced, tells what became of the timewait socket.
    if let Some((pc, p)) = cx.peer {
        if clean_final_ack(p) {
            let mut e = clean_variant(cx.role, us, Some(p), cx.ends.as_ref());
            e.why = format!("{}; the peer's FIN reached our timewait socket", e.why);
            e.time_wait = Some(TimeWaitPath::FinWait2TimewaitThenTimeWait);
            return e;
        }
        if let (Some(pfrom), Some(pby)) = (p.close_from(), reset_by(p)) {
            if matches!(pfrom, CloseWait | LastAck) && pby == ResetBy::Peer {
                let perr = close_err(p);
                j.finding(
                    Some(Step::ThirdWave),
                    Code::NoPeerFin,
                    format!(
                        "step 3 never came: the peer sent no FIN; it wrote after our close and our \
                         timewait socket reset it in {pfrom}{} (fact 4)",
                        if perr != 0 { format!(" ({})", errno_text(perr)) } else { String::new() }
                    ),
                );
                let mut e = End::new(
                    Variant::AbortByRst,
                    "FIN_WAIT2 timewait socket answered the peer's data with RST",
                );
                e.reset = Some(ResetInfo {
                    by: ResetBy::Us,
                    state: FinWait2,
                    err: None,
                    cause:
                        "our FIN_WAIT2 timewait socket answered data the peer wrote after our close"
                            .to_owned(),
                });
                e.time_wait = Some(TimeWaitPath::Reset);
                return e;
            }
        }
        if pc.end == RecordEnd::StillOpen && p.state == Some(CloseWait) {
            j.note(
                Some(Step::ThirdWave),
                Code::PeerInCloseWait,
                "the peer is still in CLOSE_WAIT: its application has not closed yet".to_owned(),
            );
        }
    }
    if !us.timewait_resets.is_empty() {
        j.finding(
            Some(Step::ThirdWave),
            Code::NoPeerFin,
            "step 3 never came: the peer sent no FIN; it wrote after our close and our timewait \
             socket answered with RST (fact 4)"
                .to_owned(),
        );
        let mut e = End::new(Variant::AbortByRst, "FIN_WAIT2 timewait socket sent RST");
        e.reset = Some(ResetInfo {
            by: ResetBy::Us,
            state: FinWait2,
            err: None,
            cause: "our FIN_WAIT2 timewait socket answered data the peer wrote after our close"
                .to_owned(),
        });
        e.time_wait = Some(TimeWaitPath::Reset);
        return e;
    }
    j.note(
        Some(Step::ThirdWave),
        Code::TimeWaitNotVisible,
        "orphaned: the socket became a FIN_WAIT2 timewait socket when its FIN was ACKed (fact 2); \
         the peer's FIN and the TIME_WAIT entry happen there, without events (sock_diag shows them)"
            .to_owned(),
    );
    let mut e = End::new(
        Variant::OrphanedFinWait2,
        "FIN_WAIT2 -> CLOSE with SOCK_DEAD and no SOCK_DONE: FIN_WAIT2 timewait socket",
    );
    e.time_wait = Some(TimeWaitPath::FinWait2Timewait);
    e
}

/// A connection ended by a RST, sent by `by`, in `from`.
/// Whether we had sent data the peer had not acknowledged when its RST arrived (None: the
/// sequence fields were not read).
fn wrote_unacked(t: &Trace<'_>) -> Option<bool> {
    let seq = t.resets_received.last()?.seq?;
    Some(seq.snd_nxt != seq.snd_una)
}

fn reset_end(
    cx: &Ctx<'_, '_, '_>,
    j: &mut Judgement,
    from: TcpState,
    by: ResetBy,
    err: i32,
    close: &Event,
) -> End {
    use TcpState::*;
    let step = step_pending(from);
    let err_txt = if err != 0 {
        format!(" ({})", errno_text(err))
    } else {
        String::new()
    };
    let dead = close.sock.is_some_and(|s| s.dead());
    let (variant, cause) = match (by, from) {
        // The timeout path sends its RST before the -> CLOSE; a RST sent after it (in CLOSE)
        // answered data that reached the already closed socket (below).
        (ResetBy::Us, FinWait2)
            if err == 0
                && cx
                    .us
                    .resets_sent
                    .iter()
                    .any(|e| e.kind.state_after() == FinWait2) =>
        (
            Variant::FinWait2Timeout,
            "FIN_WAIT2 timed out (tcp_fin_timeout) and we reset: the peer's FIN never came".to_owned(),
        ),
        (ResetBy::Us, Established | CloseWait) => (
            Variant::AbortByRst,
            format!(
                "abortive close: close() with unread received data (RFC 2525) or SO_LINGER 0{}",
                cx.by_owner(close).unwrap_or_default()
            ),
        ),
        (ResetBy::Us, FinWait1 | FinWait2 | Closing | LastAck) if !dead && err == 0 => (
            Variant::AbortByRst,
            format!(
                "abortive close by the application in {from} (SO_LINGER 0){}",
                cx.by_owner(close).unwrap_or_default()
            ),
        ),
        (ResetBy::Us, _) if err == ECONNRESET || dead => (
            Variant::AbortByRst,
            "data arrived after close(): the closed socket answered the peer's data with RST"
                .to_owned(),
        ),
        (ResetBy::Us, _) => (Variant::AbortByRst, format!("we sent RST in {from}")),
        // Any RST received in CLOSE_WAIT leaves EPIPE; it is fact 4 (docs/close-sequence.md) only when we had written
        // data the peer never acknowledged (its closed socket answered that data).
        (ResetBy::Peer, CloseWait) if err == EPIPE && wrote_unacked(cx.us) == Some(true) => (
            Variant::AbortByRst,
            "the peer reset while we were in CLOSE_WAIT (EPIPE): we wrote after the peer had fully \
             closed (fact 4)"
                .to_owned(),
        ),
        (ResetBy::Peer, CloseWait) if err == EPIPE && wrote_unacked(cx.us) == Some(false) => (
            Variant::AbortByRst,
            "the peer aborted while we were in CLOSE_WAIT (we had sent nothing unacknowledged)"
                .to_owned(),
        ),
        (ResetBy::Peer, _) => (Variant::AbortByRst, "the peer reset the connection".to_owned()),
        (ResetBy::Unknown, _) => (
            Variant::AbortByRst,
            format!("{from} -> CLOSE; who reset is unknown (socket error not read)"),
        ),
    };
    let code = match (variant, by) {
        (Variant::FinWait2Timeout, _) => Code::NoPeerFin,
        (_, ResetBy::Peer) => Code::ResetReceived,
        (_, ResetBy::Us) => Code::ResetSent,
        (_, ResetBy::Unknown) => Code::Reset,
    };
    let what = match from {
        Established => "no FIN was sent".to_owned(),
        FinWait1 | Closing => "our FIN was never ACKed".to_owned(),
        FinWait2 => "the peer sent no FIN".to_owned(),
        CloseWait => "we sent no FIN".to_owned(),
        LastAck => "the final ACK never came".to_owned(),
        _ => format!("ended in {from}"),
    };
    let message = if variant == Variant::FinWait2Timeout {
        format!("step 3 never came: {what}; FIN_WAIT2 timed out and we reset")
    } else {
        let who = match by {
            ResetBy::Us => "by our RST",
            ResetBy::Peer => "by the peer's RST",
            ResetBy::Unknown => "by RST",
        };
        let generic = by == ResetBy::Peer && !(from == CloseWait && err == EPIPE);
        let cause_txt = if generic {
            String::new()
        } else {
            format!(": {cause}")
        };
        format!(
            "{}{what}; ended {who} in {from}{err_txt}{cause_txt}",
            never_came(step)
        )
    };
    j.finding(step, code, message);
    let mut e = End::new(variant, format!("RST in {from}"));
    e.reset = Some(ResetInfo {
        by,
        state: from,
        err: (err != 0).then_some(err),
        cause,
    });
    if matches!(from, FinWait1 | FinWait2 | Closing) {
        e.time_wait = Some(TimeWaitPath::Reset);
    }
    e
}
