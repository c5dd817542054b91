//! How a connection ended: its role and the variant of its close, classified from the folded
//! [`Trace`]s of the connection and, when it was traced too, of its peer.
//!
//! The classification is the table [`ENDINGS`]: (state left at `-> CLOSE`, [`Cause`]) ->
//! (variant, finding, RST, TIME_WAIT path), read top-down, the first row that holds deciding.
//! Where the table says "clean" or "timewait socket", the peer's trace and the sequence numbers
//! tell the variant ([`clean_variant`], [`orphan_end`]).

use super::{
    model::{heads_for_time_wait, step_pending, Meaning, Step, Trace},
    seq::{self, Ends},
    verdict::{Code, Judgement, ResetBy, ResetInfo, Role, TimeWaitPath, Variant},
};
use crate::{
    decode::{Event, SockSnapshot, TcpState},
    sock_diag::{TwFate, TwSubstate},
    track::{Connection, RecordEnd},
};

use libc::{ECONNREFUSED, ECONNRESET, EPIPE, ETIMEDOUT};
use TcpState::*;

/// Below this gap between the ACK of our FIN and the peer's FIN, both were in one segment (the
/// kernel processes the ACK part, then the FIN, in one pass: docs/close-sequence.md, fact 8). A
/// heuristic, used only when neither the peer's trace nor the orphan flag decides.
pub const MERGED_GAP_NS: u64 = 20_000;

/// `ECONNRESET 104`: the name with the number, as the kernel's users know both.
fn errno_text(err: i32) -> String {
    let name = crate::decode::errno_name(err);
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
pub(super) fn merged_evidence(
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
    /// What the kernel showed of the timewait socket, when the verdict waited for it.
    pub(super) timewait: Option<super::decide::TimewaitOutcome>,
}

impl Ctx<'_, '_, '_> {
    fn peer_trace(&self) -> Option<&Trace<'_>> {
        self.peer.map(|(_, t)| t)
    }

    /// The application itself made this transition (same task as the socket's owner).
    fn by_owner(&self, ev: &Event) -> Option<String> {
        let p = self.conn.process?;
        (p.pid == ev.pid)
            .then(|| format!(" by {} ({})", crate::escape::text(&p.comm.as_str()), p.pid))
    }
}

/// What ended a socket, as its `-> CLOSE` and its reset events tell: the cause column of
/// [`ENDINGS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cause {
    /// Whatever is left in the row's states.
    Any,
    /// The socket's flags and error were not read at the close.
    NotRead,
    /// `sk_err` = ETIMEDOUT: a retransmission timer gave up.
    TimedOut,
    /// A RST from the peer, or `sk_err` = ECONNREFUSED: what refuses a handshake.
    Refused,
    /// `sk_err` is set.
    Error,
    /// `sk_err` is set, and no RST was seen or implied by it.
    ErrorWithoutReset,
    /// A RST sent by the side named.
    Rst(ResetBy),
    /// Our RST from FIN_WAIT2 without an error: the tcp_fin_timeout timer's reset.
    FinWait2Timer,
    /// Our RST while the socket was still the application's (not orphaned) and without an
    /// error: the application aborted.
    OurRstByTheApplication,
    /// Our RST after the application had closed (orphaned, or ECONNRESET): data came in.
    OurRstAfterClose,
    /// The peer's RST left EPIPE after we wrote data it never ACKed (fact 4).
    PeerRstAfterOurData,
    /// The peer's RST left EPIPE, and we had sent nothing it had not ACKed.
    PeerRstNothingUnacked,
    /// SOCK_DONE: the peer's FIN was received (fact 3).
    PeerFin,
    /// SOCK_DEAD: the socket was orphaned (fact 3).
    Orphaned,
}

/// What the judging knows at a `-> CLOSE`, for the causes and the words of [`ENDINGS`].
struct Facts<'x> {
    cx: &'x Ctx<'x, 'x, 'x>,
    close: &'x Event,
    /// The state the socket left.
    from: TcpState,
    /// `sk_err` at the close, 0 when not set or not read.
    err: i32,
    sock: Option<SockSnapshot>,
    /// Who reset, from the reset events and `sk_err`.
    by: Option<ResetBy>,
    /// The wave the socket still waited for.
    pending: Option<Step>,
}

impl Cause {
    fn holds(self, f: &Facts<'_>) -> bool {
        let dead = f.sock.is_some_and(|s| s.dead());
        match self {
            Cause::Any => true,
            Cause::NotRead => f.sock.is_none(),
            Cause::TimedOut => f.err == ETIMEDOUT,
            Cause::Refused => f.by == Some(ResetBy::Peer) || f.err == ECONNREFUSED,
            Cause::Error => f.err != 0,
            Cause::ErrorWithoutReset => f.err != 0 && f.by.is_none(),
            Cause::Rst(by) => f.by == Some(by),
            Cause::FinWait2Timer => {
                f.by == Some(ResetBy::Us)
                    && f.err == 0
                    && f.cx
                        .us
                        .resets_sent
                        .iter()
                        .any(|e| e.ev.kind.state_after() == TcpState::FinWait2)
            }
            Cause::OurRstByTheApplication => f.by == Some(ResetBy::Us) && !dead && f.err == 0,
            Cause::OurRstAfterClose => f.by == Some(ResetBy::Us) && (f.err == ECONNRESET || dead),
            Cause::PeerRstAfterOurData => {
                f.by == Some(ResetBy::Peer)
                    && f.err == EPIPE
                    && wrote_unacked(f.cx.us) == Some(true)
            }
            Cause::PeerRstNothingUnacked => {
                f.by == Some(ResetBy::Peer)
                    && f.err == EPIPE
                    && wrote_unacked(f.cx.us) == Some(false)
            }
            Cause::PeerFin => f.sock.is_some_and(|s| s.done()),
            Cause::Orphaned => dead,
        }
    }
}

/// The variant a row gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Then {
    Is(Variant),
    /// The documented close or a legal variant of it: [`clean_variant`] tells which, from the
    /// peer's trace and the sequence numbers.
    Clean,
    /// The orphan's FIN_WAIT2 timewait socket: what became of it, the peer's trace tells
    /// ([`orphan_end`]).
    TimewaitSocket,
    /// The socket's flags were not read: a clean close when the peer's trace shows one, else
    /// this variant.
    Unread(Variant),
}

/// What a row says of the socket's TIME_WAIT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tw {
    Nothing,
    /// This path, for a socket heading for TIME_WAIT ([`heads_for_time_wait`]).
    Heading(TimeWaitPath),
    /// This path: the socket was in TIME_WAIT.
    Was(TimeWaitPath),
}

/// The RST of a row ended by one: who sent it and why.
struct Rst<'s> {
    by: ResetBy,
    cause: &'s str,
}

/// Words of a row, from the facts and, for a row ended by RST, that RST.
type Words = fn(&Facts<'_>, &Rst<'_>) -> String;

/// One row of the classification: in these states (none: any), for this cause, the close is
/// this variant with this finding.
struct Ending {
    states: &'static [TcpState],
    cause: Cause,
    then: Then,
    /// The finding, on the wave the socket waited for.
    finding: Option<Code>,
    /// Who sent the RST that ended it, for a row ended by RST.
    reset: Option<ResetBy>,
    time_wait: Tw,
    why: Words,
    /// The finding's message.
    message: Words,
    /// The RST's cause, for a row ended by RST.
    rst_cause: Words,
}

const HANDSHAKE: &[TcpState] = &[SynSent, SynRecv];
const ANY: &[TcpState] = &[];

/// The row defaults: no finding, no RST, nothing of TIME_WAIT, no words.
const ROW: Ending = Ending {
    states: ANY,
    cause: Cause::Any,
    then: Then::Is(Variant::Unclassified),
    finding: None,
    reset: None,
    time_wait: Tw::Nothing,
    why: |_, _| String::new(),
    message: |_, _| String::new(),
    rst_cause: |_, _| String::new(),
};

/// How a connection ended, from the state its socket left at `-> CLOSE` and the cause
/// (docs/close-sequence.md, §4 and facts 1-4, 8, 10): the first row whose states and cause hold
/// decides.
// Every row ends in `..ROW`, also one that sets every field, so that the rows read alike.
#[allow(clippy::needless_update)]
#[rustfmt::skip]
const ENDINGS: &[Ending] = &[
    // A handshake that did not complete.
    Ending { states: &[SynSent], cause: Cause::Refused, then: Then::Is(Variant::HandshakeRefused),
        reset: Some(ResetBy::Peer),
        why: |f, _| format!("RST from the peer in {}", f.from),
        rst_cause: |_, _| "connection refused".to_owned(), ..ROW },
    Ending { states: &[SynRecv], cause: Cause::Refused, then: Then::Is(Variant::HandshakeAborted),
        reset: Some(ResetBy::Peer),
        why: |f, _| format!("RST from the peer in {}", f.from),
        rst_cause: |_, _| "the peer reset the handshake".to_owned(), ..ROW },
    Ending { states: HANDSHAKE, cause: Cause::TimedOut, then: Then::Is(Variant::HandshakeTimedOut),
        why: |f, _| format!("{} timed out (ETIMEDOUT)", f.from), ..ROW },
    Ending { states: HANDSHAKE, cause: Cause::Error, then: Then::Is(Variant::HandshakeAborted),
        why: |f, _| format!("{} ended with {}", f.from, errno_text(f.err)), ..ROW },
    Ending { states: HANDSHAKE, cause: Cause::NotRead, then: Then::Is(Variant::HandshakeAborted),
        why: |f, _| format!("{} -> CLOSE (socket error not read)", f.from), ..ROW },
    Ending { states: HANDSHAKE, cause: Cause::Any, then: Then::Is(Variant::HandshakeAborted),
        why: |f, _| format!("{} -> CLOSE: closed before established", f.from), ..ROW },
    // Timers that gave up (ETIMEDOUT).
    Ending { states: &[FinWait1], cause: Cause::TimedOut, then: Then::Is(Variant::FinWait1GivenUp),
        finding: Some(Code::NoFinAck), time_wait: Tw::Heading(TimeWaitPath::TimedOut),
        why: timed_out_why, message: |f, _| gave_up(f, "our FIN was never ACKed"), ..ROW },
    Ending { states: &[Closing], cause: Cause::TimedOut, then: Then::Is(Variant::ClosingGivenUp),
        finding: Some(Code::NoFinAck), time_wait: Tw::Heading(TimeWaitPath::TimedOut),
        why: timed_out_why, message: |f, _| gave_up(f, "our FIN was never ACKed"), ..ROW },
    Ending { states: &[LastAck], cause: Cause::TimedOut, then: Then::Is(Variant::LastAckGivenUp),
        finding: Some(Code::NoFinalAck),
        why: timed_out_why, message: |f, _| gave_up(f, "the final ACK never arrived"), ..ROW },
    Ending { states: &[FinWait2], cause: Cause::TimedOut, then: Then::Is(Variant::FinWait2Timeout),
        finding: Some(Code::NoPeerFin), time_wait: Tw::Heading(TimeWaitPath::TimedOut),
        why: timed_out_why,
        message: |f, _| format!("{}the peer sent no FIN; {} timed out (ETIMEDOUT)", never_came(f.pending), f.from),
        ..ROW },
    Ending { states: ANY, cause: Cause::TimedOut, then: Then::Is(Variant::TimedOut),
        finding: Some(Code::TimedOut), time_wait: Tw::Heading(TimeWaitPath::TimedOut),
        why: timed_out_why,
        message: |f, _| format!("{}the connection timed out in {}{} (ETIMEDOUT)", never_came(f.pending), f.from, tries(f)),
        ..ROW },
    // Socket errors other than a RST.
    Ending { states: ANY, cause: Cause::ErrorWithoutReset, then: Then::Is(Variant::AbortByError),
        finding: Some(Code::AbortedByError), time_wait: Tw::Heading(TimeWaitPath::Undetermined),
        why: |f, _| format!("{} -> CLOSE with {}", f.from, errno_text(f.err)),
        message: |f, _| format!("{}the connection ended in {} with {}", never_came(f.pending), f.from, errno_text(f.err)),
        ..ROW },
    // RSTs we sent. The timeout path sends its RST before the -> CLOSE; a RST sent after it
    // (in CLOSE) answered data that reached the already closed socket.
    Ending { states: &[FinWait2], cause: Cause::FinWait2Timer, then: Then::Is(Variant::FinWait2Timeout),
        finding: Some(Code::NoPeerFin), reset: Some(ResetBy::Us), time_wait: Tw::Heading(TimeWaitPath::Reset),
        why: rst_why,
        message: |f, _| format!("{}{}; {} timed out and we reset", never_came(f.pending), missing(f.from), f.from),
        rst_cause: |_, _| "FIN_WAIT2 timed out (tcp_fin_timeout) and we reset: the peer's FIN never came".to_owned(),
        ..ROW },
    Ending { states: &[Established, CloseWait], cause: Cause::Rst(ResetBy::Us), then: Then::Is(Variant::AbortByRst),
        finding: Some(Code::ResetSent), reset: Some(ResetBy::Us),
        why: rst_why, message: rst_message, rst_cause: abortive_close, ..ROW },
    Ending { states: &[FinWait1, FinWait2, Closing, LastAck], cause: Cause::OurRstByTheApplication,
        then: Then::Is(Variant::AbortByRst),
        finding: Some(Code::ResetSent), reset: Some(ResetBy::Us), time_wait: Tw::Heading(TimeWaitPath::Reset),
        why: rst_why, message: rst_message,
        rst_cause: |f, _| format!("abortive close by the application in {} (SO_LINGER 0){}", f.from, f.cx.by_owner(f.close).unwrap_or_default()),
        ..ROW },
    Ending { states: ANY, cause: Cause::OurRstAfterClose, then: Then::Is(Variant::AbortByRst),
        finding: Some(Code::ResetSent), reset: Some(ResetBy::Us), time_wait: Tw::Heading(TimeWaitPath::Reset),
        why: rst_why, message: rst_message,
        rst_cause: |_, _| "data arrived after close(): the closed socket answered the peer's data with RST".to_owned(),
        ..ROW },
    Ending { states: ANY, cause: Cause::Rst(ResetBy::Us), then: Then::Is(Variant::AbortByRst),
        finding: Some(Code::ResetSent), reset: Some(ResetBy::Us), time_wait: Tw::Heading(TimeWaitPath::Reset),
        why: rst_why, message: rst_message, rst_cause: |f, _| format!("we sent RST in {}", f.from),
        ..ROW },
    // RSTs the peer sent. Any RST received in CLOSE_WAIT leaves EPIPE; it is fact 4 only when
    // we had written data the peer never acknowledged (its closed socket answered that data).
    Ending { states: &[CloseWait], cause: Cause::PeerRstAfterOurData, then: Then::Is(Variant::AbortByRst),
        finding: Some(Code::ResetReceived), reset: Some(ResetBy::Peer),
        why: rst_why, message: rst_message,
        rst_cause: |_, _| "the peer reset while we were in CLOSE_WAIT (EPIPE): we wrote after the peer had \
                           fully closed (fact 4)".to_owned(),
        ..ROW },
    Ending { states: &[CloseWait], cause: Cause::PeerRstNothingUnacked, then: Then::Is(Variant::AbortByRst),
        finding: Some(Code::ResetReceived), reset: Some(ResetBy::Peer),
        why: rst_why, message: rst_message,
        rst_cause: |_, _| "the peer aborted while we were in CLOSE_WAIT (we had sent nothing unacknowledged)".to_owned(),
        ..ROW },
    Ending { states: ANY, cause: Cause::Rst(ResetBy::Peer), then: Then::Is(Variant::AbortByRst),
        finding: Some(Code::ResetReceived), reset: Some(ResetBy::Peer), time_wait: Tw::Heading(TimeWaitPath::Reset),
        why: rst_why, message: rst_message, rst_cause: |_, _| "the peer reset the connection".to_owned(),
        ..ROW },
    // No RST event and no error before the close began: an abortive close by the application
    // (its RST event may not have been traced), unless the error was not read.
    Ending { states: &[Established, CloseWait], cause: Cause::NotRead, then: Then::Is(Variant::AbortByRst),
        finding: Some(Code::Reset), reset: Some(ResetBy::Unknown),
        why: rst_why, message: rst_message,
        rst_cause: |f, _| format!("{} -> CLOSE; who reset is unknown (socket error not read)", f.from),
        ..ROW },
    Ending { states: &[Established, CloseWait], cause: Cause::Any, then: Then::Is(Variant::AbortByRst),
        finding: Some(Code::ResetSent), reset: Some(ResetBy::Us),
        why: rst_why, message: rst_message, rst_cause: abortive_close, ..ROW },
    // The documented ends: the final ACK, TIME_WAIT, or the orphan's timewait socket.
    Ending { states: &[Closing], cause: Cause::Any, then: Then::Clean,
        time_wait: Tw::Heading(TimeWaitPath::Entered), ..ROW },
    Ending { states: &[TimeWait], cause: Cause::Any, then: Then::Clean,
        time_wait: Tw::Was(TimeWaitPath::Entered), ..ROW },
    Ending { states: &[LastAck], cause: Cause::Any, then: Then::Clean, ..ROW },
    Ending { states: &[FinWait1, FinWait2], cause: Cause::NotRead, then: Then::Unread(Variant::Unclassified),
        time_wait: Tw::Heading(TimeWaitPath::Undetermined),
        why: |f, _| format!("{} -> CLOSE, flags not read", f.from), ..ROW },
    Ending { states: &[FinWait1, FinWait2], cause: Cause::PeerFin, then: Then::Clean,
        time_wait: Tw::Heading(TimeWaitPath::Entered), ..ROW },
    Ending { states: &[FinWait2], cause: Cause::Orphaned, then: Then::TimewaitSocket, ..ROW },
    Ending { states: &[FinWait1, FinWait2], cause: Cause::Any, then: Then::Is(Variant::Unclassified),
        finding: Some(Code::UnexplainedClose), time_wait: Tw::Heading(TimeWaitPath::Undetermined),
        why: |f, _| format!("{} -> CLOSE, unexplained", f.from),
        message: |f, _| format!("{}{} -> CLOSE without the peer's FIN, orphaning, RST or error", never_came(f.pending), f.from),
        ..ROW },
    Ending { states: ANY, cause: Cause::Any, then: Then::Is(Variant::Unclassified),
        why: |f, _| format!("{} -> CLOSE", f.from), ..ROW },
];

fn timed_out_why(f: &Facts<'_>, _: &Rst<'_>) -> String {
    format!("{} -> CLOSE with ETIMEDOUT", f.from)
}

/// " after N retransmissions" in the state the socket left.
fn tries(f: &Facts<'_>) -> String {
    match f.cx.us.retransmits_in(f.from) {
        0 => String::new(),
        1 => " after 1 retransmission".to_owned(),
        n => format!(" after {n} retransmissions"),
    }
}

/// "step 2 never came: our FIN was never ACKed; FIN_WAIT1 gave up after 3 retransmissions".
fn gave_up(f: &Facts<'_>, what: &str) -> String {
    format!(
        "{}{what}; {} gave up{} (ETIMEDOUT)",
        never_came(f.pending),
        f.from,
        tries(f)
    )
}

fn rst_why(f: &Facts<'_>, _: &Rst<'_>) -> String {
    format!("RST in {}", f.from)
}

fn abortive_close(f: &Facts<'_>, _: &Rst<'_>) -> String {
    format!(
        "abortive close: close() with unread received data (RFC 2525) or SO_LINGER 0{}",
        f.cx.by_owner(f.close).unwrap_or_default()
    )
}

/// What never came, for a socket that ended in `from` before the close was done.
fn missing(from: TcpState) -> String {
    match from {
        Established => "no FIN was sent".to_owned(),
        FinWait1 | Closing => "our FIN was never ACKed".to_owned(),
        FinWait2 => "the peer sent no FIN".to_owned(),
        CloseWait => "we sent no FIN".to_owned(),
        LastAck => "the final ACK never came".to_owned(),
        _ => format!("ended in {from}"),
    }
}

/// "step 3 never came: we sent no FIN; ended by the peer's RST in CLOSE_WAIT (EPIPE 32): ...".
/// The cause is left out of a plain RST from the peer: it says no more than the rest.
fn rst_message(f: &Facts<'_>, rst: &Rst<'_>) -> String {
    let by = rst.by;
    let who = match by {
        ResetBy::Us => "by our RST",
        ResetBy::Peer => "by the peer's RST",
        ResetBy::Unknown => "by RST",
    };
    let err_txt = if f.err != 0 {
        format!(" ({})", errno_text(f.err))
    } else {
        String::new()
    };
    let generic = by == ResetBy::Peer && !(f.from == CloseWait && f.err == EPIPE);
    let cause_txt = if generic {
        String::new()
    } else {
        format!(": {}", rst.cause)
    };
    format!(
        "{}{}; ended {who} in {}{err_txt}{cause_txt}",
        never_came(f.pending),
        missing(f.from),
        f.from
    )
}

pub(super) fn classify(cx: &Ctx<'_, '_, '_>, j: &mut Judgement) -> End {
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
    let f = Facts {
        cx,
        close,
        from,
        err: close.sock.map_or(0, |s| s.err),
        sock: close.sock,
        by: reset_by(us),
        pending: step_pending(from),
    };
    let row = ENDINGS
        .iter()
        .find(|r| (r.states.is_empty() || r.states.contains(&from)) && r.cause.holds(&f));
    let Some(row) = row else {
        return End::new(Variant::Unclassified, format!("{from} -> CLOSE"));
    };
    conclude(row, &f, j)
}

/// The end a row of [`ENDINGS`] gives, its finding recorded.
fn conclude(row: &Ending, f: &Facts<'_>, j: &mut Judgement) -> End {
    let cx = f.cx;
    let from = f.from;
    let clean = || clean_variant(cx.role, cx.us, cx.peer_trace(), cx.ends.as_ref());
    let by = row.reset.unwrap_or(ResetBy::Unknown);
    let rst_cause = (row.rst_cause)(f, &Rst { by, cause: "" });
    let rst = Rst {
        by,
        cause: &rst_cause,
    };
    let mut e = match row.then {
        Then::Is(v) => End::new(v, (row.why)(f, &rst)),
        Then::Clean => clean(),
        Then::TimewaitSocket => orphan_end(cx, j),
        Then::Unread(v) => {
            j.unknown.push(format!(
                "socket flags not read at {from} -> CLOSE: TIME_WAIT, timewait socket or other end unknown (fact 10)"
            ));
            match cx.peer {
                Some((_, p)) if clean_final_ack(p) => clean(),
                _ => End::new(v, (row.why)(f, &rst)),
            }
        }
    };
    if let Some(code) = row.finding {
        j.finding(f.pending, code, (row.message)(f, &rst));
    }
    if let Some(by) = row.reset {
        e.reset = Some(ResetInfo {
            by,
            state: from,
            err: (f.err != 0).then_some(f.err),
            cause: rst_cause.clone(),
        });
    }
    match row.time_wait {
        Tw::Nothing => {}
        Tw::Heading(path) if heads_for_time_wait(from) => e.time_wait = Some(path),
        Tw::Heading(_) => {}
        Tw::Was(path) => e.time_wait = Some(path),
    }
    if HANDSHAKE.contains(&from)
        && cx
            .us
            .retransmits
            .iter()
            .any(|r| HANDSHAKE.contains(&r.ev.kind.state_after()))
    {
        e.why.push_str(" after SYN retransmissions");
    }
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
    if let Some(fate) = cx.timewait {
        if let Some(e) = orphan_fate(cx, fate, j) {
            return e;
        }
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

/// What became of an orphan's FIN_WAIT2 timewait socket, as the kernel's timer events told it:
/// (substate reached, how it left) -> (variant, finding, TIME_WAIT path, why). `None` for how
/// it left: still there when the verdict was given (it reached TIME_WAIT: the rest is its
/// 60 s). A pair not in the table (reused while FIN_WAIT2) leaves the verdict as without.
pub(super) const ORPHAN_FATES: &[OrphanFate] = &[
    OrphanFate {
        reached: TwSubstate::TimeWait,
        left: None,
        variant: None,
        finding: None,
        time_wait: TimeWaitPath::FinWait2TimewaitThenTimeWait,
        why: "the peer's FIN reached our timewait socket, which entered TIME_WAIT",
    },
    OrphanFate {
        reached: TwSubstate::TimeWait,
        left: Some(TwFate::Expired),
        variant: None,
        finding: None,
        time_wait: TimeWaitPath::FinWait2TimewaitThenTimeWait,
        why: "the peer's FIN reached our timewait socket, which entered TIME_WAIT",
    },
    OrphanFate {
        reached: TwSubstate::FinWait2,
        left: Some(TwFate::Expired),
        variant: Some(Variant::FinWait2Timeout),
        finding: Some((
            Code::NoPeerFin,
            "step 3 never came: the peer never sent its FIN, and our orphaned FIN_WAIT2 \
             timewait socket expired after tcp_fin_timeout (the peer never closed)",
        )),
        time_wait: TimeWaitPath::TimedOut,
        why: "orphaned FIN_WAIT2 timewait socket expired without the peer's FIN",
    },
    OrphanFate {
        reached: TwSubstate::FinWait2,
        left: Some(TwFate::Killed),
        variant: Some(Variant::AbortByRst),
        finding: Some((
            Code::NoPeerFin,
            "step 3 never came: the peer sent no FIN; a RST ended our orphaned FIN_WAIT2 \
             timewait socket",
        )),
        time_wait: TimeWaitPath::Reset,
        why: "orphaned FIN_WAIT2 timewait socket killed by a RST before the peer's FIN",
    },
];

/// A row of [`ORPHAN_FATES`].
pub(super) struct OrphanFate {
    pub(super) reached: TwSubstate,
    pub(super) left: Option<TwFate>,
    /// None: the clean variant of the close, as when the peer's trace shows its FIN was ACKed.
    pub(super) variant: Option<Variant>,
    pub(super) finding: Option<(Code, &'static str)>,
    pub(super) time_wait: TimeWaitPath,
    pub(super) why: &'static str,
}

/// The end of an orphan whose timewait socket's fate is known, from [`ORPHAN_FATES`].
fn orphan_fate(
    cx: &Ctx<'_, '_, '_>,
    fate: super::decide::TimewaitOutcome,
    j: &mut Judgement,
) -> Option<End> {
    let row = ORPHAN_FATES
        .iter()
        .find(|r| r.reached == fate.reached && r.left == fate.left)?;
    if let Some((code, text)) = row.finding {
        j.finding(Some(Step::ThirdWave), code, text.to_owned());
    }
    let mut e = match row.variant {
        Some(v) => End::new(v, row.why),
        None => {
            let mut e = clean_variant(cx.role, cx.us, None, cx.ends.as_ref());
            e.why = format!("{}; {}", e.why, row.why);
            e
        }
    };
    e.time_wait = Some(row.time_wait);
    Some(e)
}

/// Whether we had sent data the peer had not acknowledged when its RST arrived (None: the
/// sequence fields were not read).
fn wrote_unacked(t: &Trace<'_>) -> Option<bool> {
    let seq = t.resets_received.last()?.ev.seq?;
    Some(seq.snd_nxt != seq.snd_una)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covers(r: &Ending, s: TcpState) -> bool {
        r.states.is_empty() || r.states.contains(&s)
    }

    #[test]
    fn every_row_of_the_endings_can_decide() {
        // A row is dead when, in each of its states, an earlier row holds whatever the cause.
        for (i, row) in ENDINGS.iter().enumerate() {
            let live = TcpState::ALL.iter().any(|&s| {
                covers(row, s)
                    && !ENDINGS[..i]
                        .iter()
                        .any(|e| e.cause == Cause::Any && covers(e, s))
            });
            assert!(
                live,
                "row {i} ({:?}, {:?}) is shadowed",
                row.states, row.cause
            );
        }
    }

    #[test]
    fn every_state_has_an_ending() {
        for s in TcpState::ALL {
            assert!(
                ENDINGS
                    .iter()
                    .any(|r| r.cause == Cause::Any && covers(r, s)),
                "{s}"
            );
        }
    }

    #[test]
    fn a_close_ended_by_rst_is_a_finding_a_refused_handshake_is_not() {
        for (i, row) in ENDINGS.iter().enumerate() {
            let handshake =
                !row.states.is_empty() && row.states.iter().all(|s| HANDSHAKE.contains(s));
            if handshake {
                assert!(row.finding.is_none(), "row {i}");
            } else if row.reset.is_some() {
                assert!(row.finding.is_some(), "row {i}");
            }
        }
    }
}
