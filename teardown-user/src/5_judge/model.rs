//! The documented close sequence and the TCP state diagram, written as data, and the one
//! transition function that folds a connection's events into a [`Trace`]. The judging code reads
//! these tables: the waves and their numbers ([`STEPS`]), the legal transitions with the wave each
//! records ([`TRANSITIONS`]), and from them the wave a socket still waits for ([`step_pending`]).
//!
//! The documented close (docs/close-sequence.md, §1), each arrow with its row of [`STEPS`] and,
//! under each end, the row of [`TRANSITIONS`] that end's tracepoint shows for it:
//!
//! ```text
//!  active closer                                           passive closer
//!  ESTABLISHED                                             ESTABLISHED
//!       |  STEPS[0] FirstWave: FIN seq=U                         |
//!       |------------------------------------------------------->|
//!  FIN_WAIT1                                               CLOSE_WAIT
//!    Established -> FinWait1 (SendFin)                       Established -> CloseWait (ReceiveFin)
//!       |         STEPS[1] SecondWave: ACK seq=V ack=U+1         |
//!       |<-------------------------------------------------------|
//!  FIN_WAIT2                                               CLOSE_WAIT
//!    FinWait1 -> FinWait2 (FinAcked)                           (no transition: it sent the ACK)
//!       |      STEPS[2] ThirdWave: FIN,ACK seq=W ack=U+1         |
//!       |<-------------------------------------------------------|
//!  TIME_WAIT                                               LAST_ACK
//!    FinWait2 -> TimeWait, on Linux -> Close (TimeWaitEntry)   CloseWait -> LastAck (SendThirdWave)
//!       |  STEPS[3] FourthWave: ACK seq=U+1 ack=W+1              |
//!       |------------------------------------------------------->|
//!  TIME_WAIT                                               CLOSED
//!       |  2MSL (on Linux 60 s)                                  LastAck -> Close (FinalAck)
//!  CLOSED
//!    TimeWait -> Close (TimeWaitEnd; on Linux a timewait socket's, no event)
//! ```
//!
//! Read this file top-down to read the model:
//! 1. [`STEPS`]: the four documented waves (docs/close-sequence.md, §1);
//! 2. [`TRANSITIONS`]: every legal state change (RFC 9293's diagram plus the Linux facts of
//!    docs/close-sequence.md, §5), each with the [`Meaning`] it carries, the [`Phase`] of the
//!    connection's life it belongs to and the wave it records;
//! 3. [`Trace::apply`]: the transition function.
//!
//! What a `-> CLOSE` means (TIME_WAIT, a timewait socket, a RST, a timeout) is decided from the
//! socket's flags and error by the classification table of `classify.rs`: the state names alone
//! are the same for many teardowns (docs/close-sequence.md, fact 10).

use serde::Serialize;

use crate::decode::{Event, EventKind, TcpState};
use crate::track::Run;

/// The four documented steps ("waves") of the close.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Active closer sends FIN, seq=U.
    FirstWave = 1,
    /// Passive closer ACKs it: seq=V, ack=U+1.
    SecondWave = 2,
    /// Passive closer sends its own FIN,ACK: seq=W, ack=U+1.
    ThirdWave = 3,
    /// Active closer ACKs that: seq=U+1, ack=W+1, then waits in TIME_WAIT.
    FourthWave = 4,
}

impl Step {
    pub fn number(self) -> u8 {
        self as u8
    }

    /// The step numbered `n` in [`STEPS`].
    pub fn from_number(n: u8) -> Option<Step> {
        STEPS.iter().map(|s| s.step).find(|s| s.number() == n)
    }

    pub fn spec(self) -> &'static StepSpec {
        &STEPS[usize::from(self.number() - 1)]
    }
}

/// The two ends, as the document names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DocSide {
    /// Closes first (the document's "client").
    Active,
    /// Closes second (the document's "server").
    Passive,
}

impl DocSide {
    pub fn other(self) -> DocSide {
        match self {
            DocSide::Active => DocSide::Passive,
            DocSide::Passive => DocSide::Active,
        }
    }
}

/// A sequence-number expression of the documented table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Expr {
    U,
    UPlus1,
    V,
    W,
    WPlus1,
}

impl Expr {
    pub fn label(self) -> &'static str {
        match self {
            Expr::U => "U",
            Expr::UPlus1 => "U+1",
            Expr::V => "V",
            Expr::W => "W",
            Expr::WPlus1 => "W+1",
        }
    }

    /// Its value given U, V and W (wrapping 32-bit arithmetic).
    pub fn eval(self, u: Option<u32>, v: Option<u32>, w: Option<u32>) -> Option<u32> {
        match self {
            Expr::U => u,
            Expr::UPlus1 => u.map(|u| u.wrapping_add(1)),
            Expr::V => v,
            Expr::W => w,
            Expr::WPlus1 => w.map(|w| w.wrapping_add(1)),
        }
    }
}

/// One row of the documented table: who sends which segment with which numbers.
#[derive(Clone, Copy, Debug)]
pub struct StepSpec {
    pub step: Step,
    pub segment: &'static str,
    pub sender: DocSide,
    pub seq: Expr,
    pub ack: Option<Expr>,
}

/// The documented sequence (docs/close-sequence.md, §1). The states each end is in after each
/// wave are the `to` of the [`TRANSITIONS`] rows that record it (the module's figure).
pub const STEPS: [StepSpec; 4] = [
    StepSpec {
        step: Step::FirstWave,
        segment: "FIN",
        sender: DocSide::Active,
        seq: Expr::U,
        ack: None,
    },
    StepSpec {
        step: Step::SecondWave,
        segment: "ACK",
        sender: DocSide::Passive,
        seq: Expr::V,
        ack: Some(Expr::UPlus1),
    },
    StepSpec {
        step: Step::ThirdWave,
        segment: "FIN,ACK",
        sender: DocSide::Passive,
        seq: Expr::W,
        ack: Some(Expr::UPlus1),
    },
    StepSpec {
        step: Step::FourthWave,
        segment: "ACK",
        sender: DocSide::Active,
        seq: Expr::UPlus1,
        ack: Some(Expr::WPlus1),
    },
];

/// What a legal transition means for the connection's life and close.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Meaning {
    /// CLOSE -> SYN_SENT (connect()) or LISTEN -> SYN_SENT (RFC 9293).
    Connect,
    /// CLOSE -> LISTEN: listen().
    Listen,
    /// LISTEN -> SYN_RECV: the child socket of an incoming SYN.
    SynReceived,
    /// SYN_SENT -> SYN_RECV: simultaneous open.
    SimultaneousOpen,
    /// SYN_SENT / SYN_RECV -> ESTABLISHED.
    Established,
    /// SYN_SENT / SYN_RECV -> CLOSE (or SYN_RECV -> LISTEN): refused, timed out or aborted.
    HandshakeFailed,
    /// LISTEN -> CLOSE.
    ListenerClosed,
    /// ESTABLISHED -> FIN_WAIT1: we send step 1 (we are the active closer).
    SendFin,
    /// ESTABLISHED -> CLOSE_WAIT: step 1 arrived (we are the passive closer).
    ReceiveFin,
    /// FIN_WAIT1 -> FIN_WAIT2: step 2 arrived, our FIN is ACKed.
    FinAcked,
    /// FIN_WAIT1 -> CLOSING: the peer's FIN crossed ours (simultaneous close).
    SimultaneousFin,
    /// FIN_WAIT2 -> FIN_WAIT2: a shut-down socket was closed and orphaned
    /// (docs/close-sequence.md, fact 9).
    Orphaned,
    /// CLOSE_WAIT -> LAST_ACK: we send step 3.
    SendThirdWave,
    /// FIN_WAIT1 / FIN_WAIT2 -> TIME_WAIT, on Linux -> CLOSE (docs/close-sequence.md,
    /// fact 1): step 3 arrived, we send
    /// step 4 — or the socket became a FIN_WAIT2 timewait socket, or it was reset or gave up.
    TimeWaitEntry,
    /// CLOSING -> TIME_WAIT, on Linux -> CLOSE: our FIN is ACKed after a simultaneous close.
    ClosingAcked,
    /// LAST_ACK -> CLOSE: step 4 arrived — or the socket was reset or gave up.
    FinalAck,
    /// TIME_WAIT -> CLOSE (RFC 9293; Linux never shows it on the full socket).
    TimeWaitEnd,
    /// ESTABLISHED / CLOSE_WAIT -> CLOSE: abortive close (RST sent or received, or an error).
    Abort,
}

/// The part of a connection's life a transition belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Opening, listening, and handshakes that fail.
    Open,
    /// The close: the documented sequence and its legal variants.
    Close,
    /// An abortive close from a synchronized state.
    Abort,
}

/// A legal transition and what it means.
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    pub from: TcpState,
    pub to: TcpState,
    pub meaning: Meaning,
    pub phase: Phase,
    /// The documented wave this transition records on the socket that makes it, if any.
    pub step: Option<Step>,
}

const fn rule(
    from: TcpState,
    to: TcpState,
    meaning: Meaning,
    phase: Phase,
    step: Option<Step>,
) -> Rule {
    Rule {
        from,
        to,
        meaning,
        phase,
        step,
    }
}

use Meaning as M;
use Phase::{Abort as Ab, Close as Cl, Open as Op};
use Step as S;
use TcpState::*;

/// Every legal transition: RFC 9293's diagram (section 3.3.2) with Linux's additions (facts 1
/// and 9 of docs/close-sequence.md). Anything else is an illegal transition.
#[rustfmt::skip]
pub const TRANSITIONS: &[Rule] = &[
    // Opening.
    rule(Close,       SynSent,     M::Connect,          Op, None), // connect()
    rule(Listen,      SynSent,     M::Connect,          Op, None), // RFC 9293: send from LISTEN
    rule(Close,       Listen,      M::Listen,           Op, None), // listen()
    rule(Listen,      SynRecv,     M::SynReceived,      Op, None), // a SYN arrived: child socket
    rule(SynSent,     SynRecv,     M::SimultaneousOpen, Op, None),
    rule(SynSent,     Established, M::Established,      Op, None), // SYN,ACK received
    rule(SynRecv,     Established, M::Established,      Op, None), // handshake ACK received
    rule(SynSent,     Close,       M::HandshakeFailed,  Op, None), // or connect() aborted
    rule(SynRecv,     Close,       M::HandshakeFailed,  Op, None),
    rule(SynRecv,     Listen,      M::HandshakeFailed,  Op, None), // RFC 9293: RST in SYN-RECEIVED
    rule(Listen,      Close,       M::ListenerClosed,   Op, None),
    // The close. Wave 1: our FIN (close(), shutdown()), or the peer's.
    rule(Established, FinWait1,    M::SendFin,          Cl, Some(S::FirstWave)),
    rule(SynRecv,     FinWait1,    M::SendFin,          Cl, Some(S::FirstWave)), // RFC 9293
    rule(Established, CloseWait,   M::ReceiveFin,       Cl, Some(S::FirstWave)),
    rule(SynRecv,     CloseWait,   M::ReceiveFin,       Cl, Some(S::FirstWave)), // Linux
    // Wave 2: our FIN is ACKed (after crossed FINs too; on Linux -> CLOSE is TIME_WAIT, fact 1).
    rule(FinWait1,    FinWait2,    M::FinAcked,         Cl, Some(S::SecondWave)),
    rule(Closing,     TimeWait,    M::ClosingAcked,     Cl, Some(S::SecondWave)),
    rule(Closing,     Close,       M::ClosingAcked,     Cl, Some(S::SecondWave)),
    // Wave 3: the passive closer's FIN, sent, crossing ours, or received (-> CLOSE on Linux:
    // TIME_WAIT, a FIN_WAIT2 timewait socket, or an abort; facts 1-3).
    rule(CloseWait,   LastAck,     M::SendThirdWave,    Cl, Some(S::ThirdWave)),
    rule(FinWait1,    Closing,     M::SimultaneousFin,  Cl, Some(S::ThirdWave)),
    rule(FinWait1,    TimeWait,    M::TimeWaitEntry,    Cl, Some(S::ThirdWave)), // FIN,ACK at once
    rule(FinWait1,    Close,       M::TimeWaitEntry,    Cl, Some(S::ThirdWave)),
    rule(FinWait2,    TimeWait,    M::TimeWaitEntry,    Cl, Some(S::ThirdWave)),
    rule(FinWait2,    Close,       M::TimeWaitEntry,    Cl, Some(S::ThirdWave)),
    rule(FinWait1,    FinWait1,    M::Orphaned,         Cl, None), // closed after shutdown (fact 9)
    rule(FinWait2,    FinWait2,    M::Orphaned,         Cl, None), // closed after shutdown (fact 9)
    // Wave 4: the final ACK arrives; the active closer waits 2MSL.
    rule(LastAck,     Close,       M::FinalAck,         Cl, Some(S::FourthWave)),
    rule(TimeWait,    Close,       M::TimeWaitEnd,      Cl, None),
    // Abortive closes (RFC 9293: a RST or an abort from any synchronized state).
    rule(Established, Close,       M::Abort,            Ab, None),
    rule(CloseWait,   Close,       M::Abort,            Ab, None),
];

/// The rule of a transition, `None` when it is illegal.
pub fn rule_of(from: TcpState, to: TcpState) -> Option<&'static Rule> {
    TRANSITIONS.iter().find(|r| r.from == from && r.to == to)
}

/// The first documented wave a socket in `state` still waits for on its own side: the earliest
/// wave a transition out of `state` records. Only a connection that reached ESTABLISHED waits
/// for one: a handshake state waits for none, though its close would record wave 1.
pub fn step_pending(state: TcpState) -> Option<Step> {
    if !(state == Established || state.is_closing()) {
        return None;
    }
    TRANSITIONS
        .iter()
        .filter(|r| r.from == state)
        .filter_map(|r| r.step)
        .min()
}

/// Whether a transition into TIME_WAIT is legal from `state`: the socket sent its FIN first or
/// simultaneously, so its `-> CLOSE` says what became of its TIME_WAIT.
pub fn heads_for_time_wait(state: TcpState) -> bool {
    TRANSITIONS
        .iter()
        .any(|r| r.from == state && r.to == TimeWait)
}

/// Time spent in one state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct StateTime {
    pub state: TcpState,
    /// Nanoseconds, summed over every stay.
    pub ns: u64,
}

/// The judgement state: a connection's events folded by [`Trace::apply`].
#[derive(Clone, Debug, Default)]
pub struct Trace<'a> {
    /// State after the last state change.
    pub state: Option<TcpState>,
    /// The `old` state of the first state change: where the record begins.
    pub first_state: Option<TcpState>,
    /// When the current state was entered (unknown for the record's first state).
    entered_at: Option<u64>,
    /// Time spent in closing states, in order of first entry.
    pub times: Vec<StateTime>,
    /// Legal transitions seen, with their rule.
    pub marks: Vec<(&'static Rule, &'a Event)>,
    /// Transitions not in [`TRANSITIONS`].
    pub illegal: Vec<&'a Event>,
    /// Transitions whose `old` is not the state the socket was in: (state it was in, event).
    pub gaps: Vec<(TcpState, &'a Event)>,
    /// Retransmissions and RSTs: steps, each a single event or a run of them ([`Run::count`]).
    pub retransmits: Vec<&'a Run>,
    /// RSTs sent by this socket.
    pub resets_sent: Vec<&'a Run>,
    /// RSTs sent by this connection's timewait socket (after the full socket's close).
    pub timewait_resets: Vec<&'a Run>,
    pub resets_received: Vec<&'a Run>,
    /// The last `-> CLOSE` transition.
    pub close: Option<&'a Event>,
    pub established: bool,
}

impl<'a> Trace<'a> {
    /// Folds a connection's steps, in order.
    pub fn of(events: &'a [Run]) -> Trace<'a> {
        let mut t = Trace::default();
        for step in events {
            t.apply(step);
        }
        t
    }

    /// THE transition function: one step (an event, or a run of one kind in one state) into
    /// the judgement state.
    pub fn apply(&mut self, step: &'a Run) {
        let ev = &step.ev;
        match ev.kind {
            EventKind::State { old, new } => {
                match self.state {
                    None => self.first_state = Some(old),
                    Some(cur) if cur != old => {
                        self.gaps.push((cur, ev));
                        self.entered_at = None;
                    }
                    Some(_) => {}
                }
                if let Some(t0) = self.entered_at {
                    self.spend(old, ev.ts_ns.saturating_sub(t0));
                }
                match rule_of(old, new) {
                    Some(r) => self.marks.push((r, ev)),
                    None => self.illegal.push(ev),
                }
                if new == Established || old == Established {
                    self.established = true;
                }
                if new == Close {
                    self.close = Some(ev);
                }
                self.state = Some(new);
                self.entered_at = Some(ev.ts_ns);
            }
            EventKind::Retransmit { .. } => self.retransmits.push(step),
            EventKind::ResetSent { state: TimeWait } => self.timewait_resets.push(step),
            EventKind::ResetSent { .. } => self.resets_sent.push(step),
            EventKind::ResetReceived { .. } => self.resets_received.push(step),
        }
    }

    fn spend(&mut self, state: TcpState, ns: u64) {
        if !state.is_closing() {
            return;
        }
        match self.times.iter_mut().find(|t| t.state == state) {
            Some(t) => t.ns = t.ns.saturating_add(ns),
            None => self.times.push(StateTime { state, ns }),
        }
    }

    /// Whether a transition of the close (not the opening, not an abort) was seen.
    pub fn close_began(&self) -> bool {
        self.marks.iter().any(|(r, _)| r.phase == Phase::Close)
    }

    /// The first transition with this meaning.
    pub fn mark(&self, m: Meaning) -> Option<&'a Event> {
        self.marks
            .iter()
            .find(|(r, _)| r.meaning == m)
            .map(|(_, e)| *e)
    }

    /// The last transition with this meaning.
    pub fn last_mark(&self, m: Meaning) -> Option<&'a Event> {
        self.marks
            .iter()
            .rev()
            .find(|(r, _)| r.meaning == m)
            .map(|(_, e)| *e)
    }

    pub fn has(&self, m: Meaning) -> bool {
        self.mark(m).is_some()
    }

    /// The state the socket left at its `-> CLOSE`.
    pub fn close_from(&self) -> Option<TcpState> {
        match self.close?.kind {
            EventKind::State { old, .. } => Some(old),
            _ => None,
        }
    }

    /// Retransmissions counted in `state`, runs included.
    pub fn retransmits_in(&self, state: TcpState) -> u64 {
        self.retransmits
            .iter()
            .filter(|r| r.ev.kind.state_after() == state)
            .map(|r| r.count())
            .sum()
    }

    /// Time spent in `state`, when a full stay was seen.
    pub fn time_in(&self, state: TcpState) -> Option<u64> {
        self.times.iter().find(|t| t.state == state).map(|t| t.ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_table_is_in_order() {
        for (i, s) in STEPS.iter().enumerate() {
            assert_eq!(usize::from(s.step.number()), i + 1);
            assert_eq!(s.step.spec().step, s.step);
        }
    }

    #[test]
    fn transitions_are_unique_and_documented_steps_are_legal() {
        for (i, a) in TRANSITIONS.iter().enumerate() {
            for b in &TRANSITIONS[i + 1..] {
                assert!(
                    !(a.from == b.from && a.to == b.to),
                    "{:?} twice",
                    (a.from, a.to)
                );
            }
        }
        // The document's path on both ends.
        for (f, t) in [
            (Established, FinWait1),
            (FinWait1, FinWait2),
            (FinWait2, Close),
            (Established, CloseWait),
            (CloseWait, LastAck),
            (LastAck, Close),
            (FinWait2, FinWait2),
        ] {
            assert!(rule_of(f, t).is_some(), "{f} -> {t}");
        }
        assert!(rule_of(Established, LastAck).is_none());
        assert!(rule_of(CloseWait, FinWait1).is_none());
    }

    #[test]
    fn the_pending_wave_is_the_next_one_on_each_lifeline() {
        use Step::*;
        for (state, step) in [
            (Established, Some(FirstWave)),
            (FinWait1, Some(SecondWave)),
            (Closing, Some(SecondWave)),
            (FinWait2, Some(ThirdWave)),
            (CloseWait, Some(ThirdWave)),
            (LastAck, Some(FourthWave)),
            (TimeWait, None),
            (Close, None),
            (SynSent, None),
            (SynRecv, None),
            (Listen, None),
        ] {
            assert_eq!(step_pending(state), step, "{state}");
        }
    }

    #[test]
    fn only_the_ends_that_sent_a_fin_first_head_for_time_wait() {
        let heading: Vec<TcpState> = TcpState::ALL
            .into_iter()
            .filter(|&s| heads_for_time_wait(s))
            .collect();
        assert_eq!(heading, [FinWait1, FinWait2, Closing]);
    }

    #[test]
    fn every_wave_is_recorded_by_a_transition_of_the_close() {
        let mut recorded: Vec<Step> = TRANSITIONS.iter().filter_map(|r| r.step).collect();
        recorded.sort();
        recorded.dedup();
        assert_eq!(recorded, STEPS.map(|s| s.step));
        assert!(TRANSITIONS
            .iter()
            .filter(|r| r.step.is_some())
            .all(|r| r.phase == Phase::Close));
    }
}
