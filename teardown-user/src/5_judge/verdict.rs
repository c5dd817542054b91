//! The verdict of one connection: the output types the judging produces and the sinks read.

use serde::Serialize;

use super::{
    model::{DocSide, StateTime, Step},
    seq::{self, Outcome, SeqCheck, Waves},
};
use crate::decode::TcpState;

/// Which side of the close a socket was on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Sent the first FIN (ESTABLISHED -> FIN_WAIT1), or aborted first.
    ActiveCloser,
    /// Received the first FIN (ESTABLISHED -> CLOSE_WAIT), or was aborted by the peer.
    PassiveCloser,
    /// Both FINs crossed (FIN_WAIT1 -> CLOSING).
    Simultaneous,
    /// The handshake never completed.
    NeverEstablished,
    /// A listening socket.
    Listener,
    /// Not visible from the record (first seen mid-life, no close seen).
    Unknown,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::ActiveCloser => "active closer",
            Role::PassiveCloser => "passive closer",
            Role::Simultaneous => "simultaneous closer",
            Role::NeverEstablished => "never established",
            Role::Listener => "listener",
            Role::Unknown => "unknown role",
        }
    }

    /// The name in JSON and in metric labels.
    pub fn code(self) -> &'static str {
        match self {
            Role::ActiveCloser => "active_closer",
            Role::PassiveCloser => "passive_closer",
            Role::Simultaneous => "simultaneous",
            Role::NeverEstablished => "never_established",
            Role::Listener => "listener",
            Role::Unknown => "unknown",
        }
    }

    /// Its side in the document's table, if it took part in a close.
    pub fn doc_side(self) -> Option<DocSide> {
        match self {
            Role::ActiveCloser | Role::Simultaneous => Some(DocSide::Active),
            Role::PassiveCloser => Some(DocSide::Passive),
            _ => None,
        }
    }
}

/// How the connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    /// The documented sequence, four segments.
    FourWayClose,
    /// The passive closer's ACK rode on its FIN: three segments (valid).
    ThreeSegmentClose,
    /// Both FINs crossed: FIN_WAIT1 -> CLOSING -> TIME_WAIT.
    SimultaneousClose,
    /// The passive closer sent data from CLOSE_WAIT before its FIN (W != V).
    HalfCloseWithData,
    /// The application closed; the ACK of its FIN came alone and the socket became a FIN_WAIT2
    /// timewait socket (docs/close-sequence.md, fact 2). The normal path of a plain close(): the rest (the peer's FIN,
    /// TIME_WAIT) happens without events.
    OrphanedFinWait2,
    /// FIN_WAIT2 ended without the peer's FIN (tcp_fin_timeout).
    FinWait2Timeout,
    /// Ended by a RST (see `reset`).
    AbortByRst,
    /// Ended by a socket error other than a RST or a timeout (e.g. an ICMP error).
    AbortByError,
    /// Our FIN was never ACKed: FIN_WAIT1 gave up.
    FinWait1GivenUp,
    /// Our FIN was never ACKed after a simultaneous close: CLOSING gave up.
    ClosingGivenUp,
    /// The final ACK never came: LAST_ACK gave up.
    LastAckGivenUp,
    /// Timed out before the close began (ESTABLISHED or CLOSE_WAIT).
    TimedOut,
    /// The handshake was refused (RST to the SYN, ECONNREFUSED).
    HandshakeRefused,
    /// The handshake timed out.
    HandshakeTimedOut,
    /// The handshake ended otherwise (the application closed, a RST to SYN_RECV, an error).
    HandshakeAborted,
    /// A listening socket.
    Listener,
    /// Still open when the trace stopped.
    StillOpen,
    /// The record ended (superseded, evicted) before the close.
    Unfinished,
    /// The events do not say how it ended.
    Unclassified,
}

impl Variant {
    /// Stable snake_case name (the serde name), for counting.
    pub fn name(&self) -> &'static str {
        match self {
            Variant::FourWayClose => "four_way_close",
            Variant::ThreeSegmentClose => "three_segment_close",
            Variant::SimultaneousClose => "simultaneous_close",
            Variant::HalfCloseWithData => "half_close_with_data",
            Variant::OrphanedFinWait2 => "orphaned_fin_wait2",
            Variant::FinWait2Timeout => "fin_wait2_timeout",
            Variant::AbortByRst => "abort_by_rst",
            Variant::AbortByError => "abort_by_error",
            Variant::FinWait1GivenUp => "fin_wait1_given_up",
            Variant::ClosingGivenUp => "closing_given_up",
            Variant::LastAckGivenUp => "last_ack_given_up",
            Variant::TimedOut => "timed_out",
            Variant::HandshakeRefused => "handshake_refused",
            Variant::HandshakeTimedOut => "handshake_timed_out",
            Variant::HandshakeAborted => "handshake_aborted",
            Variant::Listener => "listener",
            Variant::StillOpen => "still_open",
            Variant::Unfinished => "unfinished",
            Variant::Unclassified => "unclassified",
        }
    }

    /// Words for people.
    pub fn label(&self) -> &'static str {
        match self {
            Variant::FourWayClose => "four-way close",
            Variant::ThreeSegmentClose => "three-segment close",
            Variant::SimultaneousClose => "simultaneous close",
            Variant::HalfCloseWithData => "half-close with data from CLOSE_WAIT",
            Variant::OrphanedFinWait2 => "orphaned FIN_WAIT2 timewait socket",
            Variant::FinWait2Timeout => "FIN_WAIT2 timeout",
            Variant::AbortByRst => "abort by RST",
            Variant::AbortByError => "abort by error",
            Variant::FinWait1GivenUp => "FIN_WAIT1 given up",
            Variant::ClosingGivenUp => "CLOSING given up",
            Variant::LastAckGivenUp => "LAST_ACK given up",
            Variant::TimedOut => "timed out",
            Variant::HandshakeRefused => "handshake refused",
            Variant::HandshakeTimedOut => "handshake timed out",
            Variant::HandshakeAborted => "handshake aborted",
            Variant::Listener => "listener",
            Variant::StillOpen => "still open",
            Variant::Unfinished => "record ended before the close",
            Variant::Unclassified => "unclassified",
        }
    }

    /// Every variant, for tests and summaries.
    pub const ALL: [Variant; 19] = [
        Variant::FourWayClose,
        Variant::ThreeSegmentClose,
        Variant::SimultaneousClose,
        Variant::HalfCloseWithData,
        Variant::OrphanedFinWait2,
        Variant::FinWait2Timeout,
        Variant::AbortByRst,
        Variant::AbortByError,
        Variant::FinWait1GivenUp,
        Variant::ClosingGivenUp,
        Variant::LastAckGivenUp,
        Variant::TimedOut,
        Variant::HandshakeRefused,
        Variant::HandshakeTimedOut,
        Variant::HandshakeAborted,
        Variant::Listener,
        Variant::StillOpen,
        Variant::Unfinished,
        Variant::Unclassified,
    ];
}

/// Conforms, deviates (findings), or cannot be told (incomplete record).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Conformance {
    Conforms,
    Deviates,
    Incomplete,
}

/// What a finding or a note is about: a stable identifier, for counting and filtering (its
/// snake_case name in JSON, metrics and text).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    /// A transition not in the model's table.
    IllegalTransition,
    /// A transition whose `old` is not the state the socket was in.
    DiscontinuousTransition,
    /// Wave 2 never came: our FIN was never ACKed.
    NoFinAck,
    /// Wave 4 never came: the final ACK never arrived.
    NoFinalAck,
    /// Wave 3 never came: the peer sent no FIN.
    NoPeerFin,
    /// The connection timed out before or outside the close.
    TimedOut,
    /// Ended by a socket error other than a RST or a timeout.
    AbortedByError,
    /// Ended by the peer's RST.
    ResetReceived,
    /// Ended by our RST.
    ResetSent,
    /// Ended by a RST whose sender is unknown.
    Reset,
    /// An active closer's `-> CLOSE` that no flag, RST or error explains.
    UnexplainedClose,
    /// A relation of wave 1 (the FIN's seq U) does not hold.
    Step1FinSeqMismatch,
    /// Wave 2's seq is not V.
    Step2SeqMismatch,
    /// Wave 2's ack is not U+1.
    Step2AckMismatch,
    /// A relation of wave 3's seq W does not hold.
    Step3FinSeqMismatch,
    /// Wave 3's ack is not U+1.
    Step3AckMismatch,
    /// W lies before V.
    Step3WBeforeV,
    /// A relation of wave 4's seq U+1 does not hold.
    Step4SeqMismatch,
    /// Wave 4's ack is not W+1.
    Step4AckMismatch,
    /// Note: still in CLOSE_WAIT, the application has not closed.
    CloseWaitOpen,
    /// Note: TIME_WAIT happens in a timewait socket, without events.
    TimeWaitNotVisible,
    /// Note: the peer is still in CLOSE_WAIT.
    PeerInCloseWait,
    /// Note: our timewait socket sent a RST.
    TimewaitReset,
    /// Note: from one end it is not visible whether waves 2 and 3 were one segment.
    MergeNotVisible,
    /// Note: the events carry no sequence fields.
    NoSequenceData,
    /// Note: a FIN was retransmitted.
    FinRetransmitted,
    /// Note: the handshake was retransmitted.
    SynRetransmitted,
    /// Note: data was retransmitted.
    DataRetransmitted,
    /// Note: the application sat in CLOSE_WAIT longer than the slow-close threshold.
    SlowClose,
}

impl Code {
    /// The snake_case name (the serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            Code::IllegalTransition => "illegal_transition",
            Code::DiscontinuousTransition => "discontinuous_transition",
            Code::NoFinAck => "no_fin_ack",
            Code::NoFinalAck => "no_final_ack",
            Code::NoPeerFin => "no_peer_fin",
            Code::TimedOut => "timed_out",
            Code::AbortedByError => "aborted_by_error",
            Code::ResetReceived => "reset_received",
            Code::ResetSent => "reset_sent",
            Code::Reset => "reset",
            Code::UnexplainedClose => "unexplained_close",
            Code::Step1FinSeqMismatch => "step1_fin_seq_mismatch",
            Code::Step2SeqMismatch => "step2_seq_mismatch",
            Code::Step2AckMismatch => "step2_ack_mismatch",
            Code::Step3FinSeqMismatch => "step3_fin_seq_mismatch",
            Code::Step3AckMismatch => "step3_ack_mismatch",
            Code::Step3WBeforeV => "step3_w_before_v",
            Code::Step4SeqMismatch => "step4_seq_mismatch",
            Code::Step4AckMismatch => "step4_ack_mismatch",
            Code::CloseWaitOpen => "close_wait_open",
            Code::TimeWaitNotVisible => "time_wait_not_visible",
            Code::PeerInCloseWait => "peer_in_close_wait",
            Code::TimewaitReset => "timewait_reset",
            Code::MergeNotVisible => "merge_not_visible",
            Code::NoSequenceData => "no_sequence_data",
            Code::FinRetransmitted => "fin_retransmitted",
            Code::SynRetransmitted => "syn_retransmitted",
            Code::DataRetransmitted => "data_retransmitted",
            Code::SlowClose => "slow_close",
        }
    }

    /// Every code, for tests.
    pub const ALL: [Code; 29] = [
        Code::IllegalTransition,
        Code::DiscontinuousTransition,
        Code::NoFinAck,
        Code::NoFinalAck,
        Code::NoPeerFin,
        Code::TimedOut,
        Code::AbortedByError,
        Code::ResetReceived,
        Code::ResetSent,
        Code::Reset,
        Code::UnexplainedClose,
        Code::Step1FinSeqMismatch,
        Code::Step2SeqMismatch,
        Code::Step2AckMismatch,
        Code::Step3FinSeqMismatch,
        Code::Step3AckMismatch,
        Code::Step3WBeforeV,
        Code::Step4SeqMismatch,
        Code::Step4AckMismatch,
        Code::CloseWaitOpen,
        Code::TimeWaitNotVisible,
        Code::PeerInCloseWait,
        Code::TimewaitReset,
        Code::MergeNotVisible,
        Code::NoSequenceData,
        Code::FinRetransmitted,
        Code::SynRetransmitted,
        Code::DataRetransmitted,
        Code::SlowClose,
    ];
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A way in which the teardown departed from the documented sequence (in `findings`), or an
/// observation that is not a deviation (in `notes`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The documented step (1-4) it concerns.
    pub step: Option<u8>,
    /// What it is; serialized as [`Code::as_str`], the name the sinks count findings by.
    pub code: Code,
    pub message: String,
}

/// Who sent the RST that ended the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ResetBy {
    Us,
    Peer,
    Unknown,
}

/// The RST that ended the connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ResetInfo {
    pub by: ResetBy,
    /// The state it ended.
    pub state: TcpState,
    /// `sk_err` at the close, when set.
    pub err: Option<i32>,
    pub cause: String,
}

/// What became of a closing socket at its `-> CLOSE` (docs/close-sequence.md, fact 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeWaitPath {
    /// The peer's FIN had arrived (SOCK_DONE): the socket entered TIME_WAIT.
    Entered,
    /// Orphaned, the peer's FIN not yet in (SOCK_DEAD without SOCK_DONE): it became a FIN_WAIT2
    /// timewait socket; whether that reached TIME_WAIT is not visible from state changes.
    FinWait2Timewait,
    /// As `FinWait2Timewait`, and the peer's trace shows its FIN was ACKed: the timewait socket
    /// went on to TIME_WAIT.
    FinWait2TimewaitThenTimeWait,
    /// Ended by a RST.
    Reset,
    /// Gave up (ETIMEDOUT).
    TimedOut,
    /// The socket's flags were not read, or do not explain the close.
    Undetermined,
}

impl TimeWaitPath {
    pub fn describe(self) -> &'static str {
        match self {
            TimeWaitPath::Entered => "entered TIME_WAIT (the peer's FIN was received)",
            TimeWaitPath::FinWait2Timewait => {
                "became an orphaned FIN_WAIT2 timewait socket (peer FIN and TIME_WAIT not visible)"
            }
            TimeWaitPath::FinWait2TimewaitThenTimeWait => {
                "became a FIN_WAIT2 timewait socket, which then entered TIME_WAIT (seen from the peer)"
            }
            TimeWaitPath::Reset => "ended by RST, no TIME_WAIT",
            TimeWaitPath::TimedOut => "gave up (ETIMEDOUT), no TIME_WAIT",
            TimeWaitPath::Undetermined => "undetermined",
        }
    }
}

/// The judgement of one connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub role: Role,
    pub variant: Variant,
    pub conformance: Conformance,
    /// False exactly when there are findings.
    pub conforms: bool,
    /// What is unknown, when the record is incomplete (not a deviation).
    pub incomplete: Option<String>,
    /// Why this variant: the evidence, in a few words.
    pub why: String,
    /// Deviations from the documented sequence, each naming the step it breaks.
    pub findings: Vec<Finding>,
    /// Observations that are not deviations (retransmitted FIN, invisible TIME_WAIT, ...).
    pub notes: Vec<Finding>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reset: Option<ResetInfo>,
    /// At the `-> CLOSE` of a socket that sent a FIN first or simultaneously.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_wait: Option<TimeWaitPath>,
    /// Nanoseconds spent in each closing state.
    pub closing_times: Vec<StateTime>,
    /// U, V, W and the four waves, once a close began.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waves: Option<Waves>,
    /// How the documented relations fared, counted.
    pub check_counts: CheckCounts,
    /// The documented relations read on this end. In JSON only when one is broken: the counts
    /// say the rest, and a busy host's output stays small.
    #[serde(skip_serializing_if = "seq::none_broken")]
    pub checks: Vec<SeqCheck>,
    /// The peer's trace was used.
    pub with_peer: bool,
    /// The connection in Zeek's words (conn.log's `conn_state` and `history`): the same for
    /// both ends when both were traced.
    pub zeek: super::zeek::Zeek,
}

/// Collects findings, notes and unknowns while judging.
#[derive(Default)]
pub(super) struct Judgement {
    pub(super) findings: Vec<Finding>,
    pub(super) notes: Vec<Finding>,
    pub(super) unknown: Vec<String>,
}

impl Judgement {
    pub(super) fn finding(&mut self, step: Option<Step>, code: Code, message: String) {
        self.findings.push(Finding {
            step: step.map(Step::number),
            code,
            message,
        });
    }
    pub(super) fn note(&mut self, step: Option<Step>, code: Code, message: String) {
        self.notes.push(Finding {
            step: step.map(Step::number),
            code,
            message,
        });
    }
}

/// Relations by outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CheckCounts {
    pub holds: u32,
    pub broken: u32,
    pub not_checkable: u32,
    /// Fields read to define U, V or W.
    pub defines: u32,
}

impl CheckCounts {
    pub(super) fn of(checks: &[SeqCheck]) -> CheckCounts {
        let mut c = CheckCounts::default();
        for x in checks {
            match x.outcome {
                Outcome::Holds => c.holds += 1,
                Outcome::Broken => c.broken += 1,
                Outcome::NotCheckable => c.not_checkable += 1,
                Outcome::Defines => c.defines += 1,
            }
        }
        c
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::Code;

    #[test]
    fn a_code_is_serialized_as_its_name() {
        for c in Code::ALL {
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
        }
        let mut names: Vec<&str> = Code::ALL.iter().map(|c| c.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Code::ALL.len());
    }
}
