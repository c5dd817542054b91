//! Sequence arithmetic: U, V and W derived from the sockets' own fields, and every relation of
//! the documented table checked on the end being judged (docs/close-sequence.md, §5).
//!
//! - U: the active closer's FIN seq = its `write_seq` at ESTABLISHED -> FIN_WAIT1
//!   (else the passive closer's `rcv_nxt` - 1 at ESTABLISHED -> CLOSE_WAIT);
//! - V: the passive closer's `snd_nxt` at ESTABLISHED -> CLOSE_WAIT;
//! - W: the passive closer's FIN seq = its `write_seq` at CLOSE_WAIT -> LAST_ACK
//!   (else the active closer's `rcv_nxt` - 1 once it received that FIN).
//!
//! A relation whose field is the very source of the value it is compared with *defines* that
//! value; a relation without data is *not checkable*, never broken.

use std::fmt;

use serde::Serialize;

use super::{
    model::{DocSide, Expr, Meaning, Step, Trace, STEPS},
    verdict::Code,
};
use crate::decode::{Event, EventKind, SeqSnapshot};

/// A sequence field of `struct tcp_sock`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    SndUna,
    SndNxt,
    RcvNxt,
    WriteSeq,
}

impl Field {
    pub fn name(self) -> &'static str {
        match self {
            Field::SndUna => "snd_una",
            Field::SndNxt => "snd_nxt",
            Field::RcvNxt => "rcv_nxt",
            Field::WriteSeq => "write_seq",
        }
    }

    fn read(self, s: &SeqSnapshot) -> u32 {
        match self {
            Field::SndUna => s.snd_una,
            Field::SndNxt => s.snd_nxt,
            Field::RcvNxt => s.rcv_nxt,
            Field::WriteSeq => s.write_seq,
        }
    }
}

/// Where a relation is read: a transition, with the condition that makes it the documented one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum At {
    /// ESTABLISHED -> FIN_WAIT1.
    SendFin,
    /// ESTABLISHED -> CLOSE_WAIT.
    ReceiveFin,
    /// FIN_WAIT1 -> FIN_WAIT2.
    FinAcked,
    /// FIN_WAIT1 -> CLOSING.
    SimultaneousFin,
    /// CLOSE_WAIT -> LAST_ACK.
    SendThirdWave,
    /// FIN_WAIT1/2 -> CLOSE with SOCK_DONE and no error: the socket entered TIME_WAIT.
    TimeWaitEntry,
    /// CLOSING -> CLOSE with no error.
    ClosingAcked,
    /// LAST_ACK -> CLOSE with no error.
    FinalAck,
}

impl At {
    pub(crate) fn meaning(self) -> Meaning {
        match self {
            At::SendFin => Meaning::SendFin,
            At::ReceiveFin => Meaning::ReceiveFin,
            At::FinAcked => Meaning::FinAcked,
            At::SimultaneousFin => Meaning::SimultaneousFin,
            At::SendThirdWave => Meaning::SendThirdWave,
            At::TimeWaitEntry => Meaning::TimeWaitEntry,
            At::ClosingAcked => Meaning::ClosingAcked,
            At::FinalAck => Meaning::FinalAck,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            At::SendFin => "ESTABLISHED -> FIN_WAIT1",
            At::ReceiveFin => "ESTABLISHED -> CLOSE_WAIT",
            At::FinAcked => "FIN_WAIT1 -> FIN_WAIT2",
            At::SimultaneousFin => "FIN_WAIT1 -> CLOSING",
            At::SendThirdWave => "CLOSE_WAIT -> LAST_ACK",
            At::TimeWaitEntry => "TIME_WAIT entry (-> CLOSE)",
            At::ClosingAcked => "CLOSING -> CLOSE",
            At::FinalAck => "LAST_ACK -> CLOSE",
        }
    }
}

/// One relation of the documented table, read on one end.
#[derive(Clone, Copy, Debug)]
pub struct Relation {
    pub step: Step,
    pub side: DocSide,
    pub at: At,
    pub field: Field,
    pub expect: Expr,
    /// Finding code when it does not hold.
    pub code: Code,
}

const fn rel(
    step: Step,
    side: DocSide,
    at: At,
    field: Field,
    expect: Expr,
    code: Code,
) -> Relation {
    Relation {
        step,
        side,
        at,
        field,
        expect,
        code,
    }
}

use DocSide::{Active as A, Passive as P};
use Step::{FirstWave as S1, FourthWave as S4, SecondWave as S2, ThirdWave as S3};

/// The measured relations of docs/close-sequence.md, §5, as data.
pub const RELATIONS: &[Relation] = &[
    rel(
        S1,
        A,
        At::SendFin,
        Field::WriteSeq,
        Expr::U,
        Code::Step1FinSeqMismatch,
    ),
    rel(
        S1,
        P,
        At::ReceiveFin,
        Field::RcvNxt,
        Expr::UPlus1,
        Code::Step1FinSeqMismatch,
    ),
    rel(
        S2,
        P,
        At::ReceiveFin,
        Field::SndNxt,
        Expr::V,
        Code::Step2SeqMismatch,
    ),
    rel(
        S2,
        A,
        At::FinAcked,
        Field::SndUna,
        Expr::UPlus1,
        Code::Step2AckMismatch,
    ),
    rel(
        S2,
        A,
        At::ClosingAcked,
        Field::SndUna,
        Expr::UPlus1,
        Code::Step2AckMismatch,
    ),
    rel(
        S3,
        P,
        At::SendThirdWave,
        Field::WriteSeq,
        Expr::W,
        Code::Step3FinSeqMismatch,
    ),
    rel(
        S3,
        P,
        At::SendThirdWave,
        Field::RcvNxt,
        Expr::UPlus1,
        Code::Step3AckMismatch,
    ),
    rel(
        S3,
        A,
        At::SimultaneousFin,
        Field::RcvNxt,
        Expr::WPlus1,
        Code::Step3FinSeqMismatch,
    ),
    rel(
        S3,
        A,
        At::TimeWaitEntry,
        Field::RcvNxt,
        Expr::WPlus1,
        Code::Step3FinSeqMismatch,
    ),
    rel(
        S4,
        A,
        At::TimeWaitEntry,
        Field::SndNxt,
        Expr::UPlus1,
        Code::Step4SeqMismatch,
    ),
    rel(
        S4,
        P,
        At::FinalAck,
        Field::SndUna,
        Expr::WPlus1,
        Code::Step4AckMismatch,
    ),
    rel(
        S4,
        P,
        At::FinalAck,
        Field::RcvNxt,
        Expr::UPlus1,
        Code::Step4SeqMismatch,
    ),
];

/// Where each end's events show a documented step: the (side, transition) pairs at which
/// [`RELATIONS`] read it, each once. The side that is the step's sender shows it leave, the
/// other shows it arrive.
pub fn evidence(step: Step) -> impl Iterator<Item = (DocSide, At)> {
    RELATIONS
        .iter()
        .enumerate()
        .filter(move |(_, r)| r.step == step)
        .filter(|(i, r)| {
            !RELATIONS[..*i]
                .iter()
                .any(|e| e.step == r.step && e.side == r.side && e.at == r.at)
        })
        .map(|(_, r)| (r.side, r.at))
}

/// A source of U, V or W: a field read at a transition on one side, minus one when it is the
/// `rcv_nxt` just after the FIN.
type Source = (DocSide, At, Field, bool);

const U_SOURCES: &[Source] = &[
    (A, At::SendFin, Field::WriteSeq, false),
    (P, At::ReceiveFin, Field::RcvNxt, true),
];
const V_SOURCES: &[Source] = &[(P, At::ReceiveFin, Field::SndNxt, false)];
const W_SOURCES: &[Source] = &[
    (P, At::SendThirdWave, Field::WriteSeq, false),
    // The other end of a simultaneous close sent its FIN from ESTABLISHED.
    (P, At::SendFin, Field::WriteSeq, false),
    (A, At::TimeWaitEntry, Field::RcvNxt, true),
    (A, At::SimultaneousFin, Field::RcvNxt, true),
];

/// A derived value and where it was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Derived {
    pub value: u32,
    pub side: DocSide,
    pub at: At,
    pub field: Field,
    /// Read on the end being judged (else on its peer).
    pub ours: bool,
}

/// Outcome of one relation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Holds,
    Broken,
    /// The field is where the value is taken from.
    Defines,
    NotCheckable,
}

/// No relation is broken (serde: `checks` is then left out of JSON).
pub fn none_broken(checks: &[SeqCheck]) -> bool {
    !checks.iter().any(|c| c.outcome == Outcome::Broken)
}

/// One relation checked on the judged end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SeqCheck {
    pub step: u8,
    /// e.g. "snd_una at FIN_WAIT1 -> FIN_WAIT2 = U+1".
    pub relation: RelationText,
    pub expected: Option<u32>,
    pub observed: Option<u32>,
    pub outcome: Outcome,
    /// Why it is not checkable, or where the expected value came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<CheckNote>,
    #[serde(skip)]
    pub code: Code,
}

// A connection has about ten checks, and nearly all of them hold and are never shown: their
// words are written only when displayed or serialized, not built for every connection.

/// The words of a relation: `snd_una at FIN_WAIT1 -> FIN_WAIT2 = U+1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelationText {
    pub field: Field,
    pub at: At,
    pub expect: Expr,
}

impl fmt::Display for RelationText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at {} = {}",
            self.field.name(),
            self.at.describe(),
            self.expect.label()
        )
    }
}

/// Why a check could not be made, or where its expected value came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckNote {
    /// The transition it is read at is missing or not the documented one.
    NoPoint(&'static str),
    NoSequenceData,
    /// This field is where U, V or W is taken from.
    Defines(Expr),
    /// The expected value came from this field of this end.
    From {
        expect: Expr,
        ours: bool,
        field: Field,
        at: At,
    },
    /// U, V or W could not be derived.
    Unknown(Expr),
}

impl fmt::Display for CheckNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            CheckNote::NoPoint(why) => f.write_str(why),
            CheckNote::NoSequenceData => f.write_str("no sequence data at this transition"),
            CheckNote::Defines(e) => write!(f, "defines {}", expr_base(e)),
            CheckNote::From {
                expect,
                ours,
                field,
                at,
            } => write!(
                f,
                "{} from {} {} at {}",
                expr_base(expect),
                if ours { "our" } else { "the peer's" },
                field.name(),
                at.describe()
            ),
            CheckNote::Unknown(e) => write!(f, "{} unknown", expr_base(e)),
        }
    }
}

impl Serialize for RelationText {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Serialize for CheckNote {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Who sent a wave, seen from the judged end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Sender {
    Us,
    Peer,
}

/// `seq=U (3239587339)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Term {
    pub expr: &'static str,
    pub value: Option<u32>,
}

/// One documented wave with its numbers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Wave {
    pub step: u8,
    pub segment: &'static str,
    pub sender: Sender,
    pub seq: Term,
    pub ack: Option<Term>,
}

/// U, V, W and the four waves of one connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Waves {
    /// The judged end's side in the document's table.
    pub we_are: DocSide,
    pub u: Option<u32>,
    pub v: Option<u32>,
    pub w: Option<u32>,
    /// W - V: bytes the passive closer sent from CLOSE_WAIT (estimated on the active end alone
    /// from what it received after its FIN was ACKed).
    pub data_in_close_wait: Option<u32>,
    pub waves: Vec<Wave>,
}

/// The event of `at` on a trace: `None` when the transition was not seen, `Err(why)` when it was
/// seen but is not the documented one (no FIN received, ended by RST, flags unread).
pub fn point<'a>(t: &Trace<'a>, at: At) -> Option<Result<&'a Event, &'static str>> {
    let ev = match at {
        At::TimeWaitEntry | At::ClosingAcked | At::FinalAck => t.last_mark(at.meaning())?,
        _ => t.mark(at.meaning())?,
    };
    let reset = !t.resets_received.is_empty() || !t.resets_sent.is_empty();
    let needs_clean_end = matches!(at, At::TimeWaitEntry | At::ClosingAcked | At::FinalAck);
    if needs_clean_end {
        if let EventKind::State {
            new: crate::decode::TcpState::TimeWait,
            ..
        } = ev.kind
        {
            return Some(Ok(ev));
        }
        if reset || ev.sock.is_some_and(|s| s.err != 0) {
            return Some(Err("ended by RST or error"));
        }
    }
    if at == At::TimeWaitEntry {
        match ev.sock {
            None => return Some(Err("socket flags not read: TIME_WAIT entry unknown")),
            Some(s) if !s.done() => {
                return Some(Err(
                    "the peer's FIN had not arrived: the socket became a FIN_WAIT2 timewait socket",
                ))
            }
            Some(_) => {}
        }
    }
    Some(Ok(ev))
}

fn read(t: &Trace<'_>, at: At, field: Field) -> Option<u32> {
    let ev = point(t, at)?.ok()?;
    Some(field.read(&ev.seq?))
}

/// The judged end and its peer, placed in the document's table.
pub struct Ends<'t, 'a> {
    pub we_are: DocSide,
    pub us: &'t Trace<'a>,
    pub peer: Option<&'t Trace<'a>>,
}

impl<'t, 'a> Ends<'t, 'a> {
    fn side(&self, side: DocSide) -> (Option<&'t Trace<'a>>, bool) {
        if side == self.we_are {
            (Some(self.us), true)
        } else {
            (self.peer, false)
        }
    }

    fn derive(&self, sources: &[Source]) -> Option<Derived> {
        sources.iter().find_map(|&(side, at, field, minus_one)| {
            let (t, ours) = self.side(side);
            let v = read(t?, at, field)?;
            Some(Derived {
                value: if minus_one { v.wrapping_sub(1) } else { v },
                side,
                at,
                field,
                ours,
            })
        })
    }

    pub fn u(&self) -> Option<Derived> {
        self.derive(U_SOURCES)
    }
    pub fn v(&self) -> Option<Derived> {
        self.derive(V_SOURCES)
    }
    pub fn w(&self) -> Option<Derived> {
        self.derive(W_SOURCES)
    }
}

fn expr_source(
    e: Expr,
    u: Option<Derived>,
    v: Option<Derived>,
    w: Option<Derived>,
) -> Option<Derived> {
    match e {
        Expr::U | Expr::UPlus1 => u,
        Expr::V => v,
        Expr::W | Expr::WPlus1 => w,
    }
}

/// The relations of the judged end, checked.
pub fn check(ends: &Ends<'_, '_>) -> Vec<SeqCheck> {
    let (u, v, w) = (ends.u(), ends.v(), ends.w());
    let mut out = Vec::new();
    for r in RELATIONS.iter().filter(|r| r.side == ends.we_are) {
        let Some(pt) = point(ends.us, r.at) else {
            continue;
        };
        let relation = RelationText {
            field: r.field,
            at: r.at,
            expect: r.expect,
        };
        let src = expr_source(r.expect, u, v, w);
        let expected = r
            .expect
            .eval(u.map(|d| d.value), v.map(|d| d.value), w.map(|d| d.value));
        let mut c = SeqCheck {
            step: r.step.number(),
            relation,
            expected,
            observed: None,
            outcome: Outcome::NotCheckable,
            note: None,
            code: r.code,
        };
        match pt {
            Err(why) => c.note = Some(CheckNote::NoPoint(why)),
            Ok(ev) => match ev.seq {
                None => c.note = Some(CheckNote::NoSequenceData),
                Some(s) => {
                    let observed = r.field.read(&s);
                    c.observed = Some(observed);
                    match (src, expected) {
                        (Some(d), _)
                            if d.ours && d.side == r.side && d.at == r.at && d.field == r.field =>
                        {
                            c.outcome = Outcome::Defines;
                            c.expected = Some(observed);
                            c.note = Some(CheckNote::Defines(r.expect));
                        }
                        (Some(d), Some(e)) => {
                            c.outcome = if e == observed {
                                Outcome::Holds
                            } else {
                                Outcome::Broken
                            };
                            c.note = Some(CheckNote::From {
                                expect: r.expect,
                                ours: d.ours,
                                field: d.field,
                                at: d.at,
                            });
                        }
                        _ => c.note = Some(CheckNote::Unknown(r.expect)),
                    }
                }
            },
        }
        out.push(c);
    }
    out
}

fn expr_base(e: Expr) -> &'static str {
    match e {
        Expr::U | Expr::UPlus1 => "U",
        Expr::V => "V",
        Expr::W | Expr::WPlus1 => "W",
    }
}

/// W - V as a signed distance (wrapping), when both are known.
pub fn w_minus_v(ends: &Ends<'_, '_>) -> Option<i32> {
    let (v, w) = (ends.v()?, ends.w()?);
    // Reinterpreting the wrapped difference as signed is the TCP sequence comparison.
    Some(w.value.wrapping_sub(v.value) as i32)
}

/// Bytes the passive closer sent from CLOSE_WAIT: W - V, or on the active end alone what it
/// received between the ACK of its FIN and the peer's FIN.
pub fn data_in_close_wait(ends: &Ends<'_, '_>) -> Option<u32> {
    if let Some(d) = w_minus_v(ends) {
        return u32::try_from(d).ok();
    }
    if ends.we_are != DocSide::Active {
        return None;
    }
    let before = read(ends.us, At::FinAcked, Field::RcvNxt)?;
    let fin_plus_1 = read(ends.us, At::TimeWaitEntry, Field::RcvNxt)?;
    u32::try_from(fin_plus_1.wrapping_sub(1).wrapping_sub(before) as i32).ok()
}

/// The four waves with their numbers, seen from the judged end.
pub fn waves(ends: &Ends<'_, '_>) -> Waves {
    let (u, v, w) = (
        ends.u().map(|d| d.value),
        ends.v().map(|d| d.value),
        ends.w().map(|d| d.value),
    );
    let term = |e: Expr| Term {
        expr: e.label(),
        value: e.eval(u, v, w),
    };
    Waves {
        we_are: ends.we_are,
        u,
        v,
        w,
        data_in_close_wait: data_in_close_wait(ends),
        waves: STEPS
            .iter()
            .map(|s| Wave {
                step: s.step.number(),
                segment: s.segment,
                sender: if s.sender == ends.we_are {
                    Sender::Us
                } else {
                    Sender::Peer
                },
                seq: term(s.seq),
                ack: s.ack.map(term),
            })
            .collect(),
    }
}
