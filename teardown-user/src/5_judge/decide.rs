//! The judge: one connection's events in, one [`Verdict`] out.

use super::{
    classify::{classify, role_of, Ctx},
    model::{step_pending, DocSide, Step, Trace},
    seq::{self, Ends, Outcome},
    verdict::{CheckCounts, Code, Conformance, Judgement, TimeWaitPath, Variant, Verdict},
};
use crate::{
    decode::TcpState,
    kernel::clock::human_ms,
    sock_diag::{TwFate, TwSubstate},
    track::{Connection, RecordEnd},
};

/// What the kernel showed of a connection's timewait socket before its verdict was given: for
/// an orphan that became a FIN_WAIT2 timewait socket, whether the peer's FIN came after all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimewaitOutcome {
    /// The substate it reached: TIME_WAIT once the peer's FIN came.
    pub reached: TwSubstate,
    /// How it left, if it has.
    pub left: Option<TwFate>,
}

/// What judging a connection takes besides its events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JudgeOptions {
    /// A passive closer that stayed in CLOSE_WAIT longer than this gets a note (0: never).
    pub slow_close_ns: u64,
    /// What became of its timewait socket, when that was waited for.
    pub timewait: Option<TimewaitOutcome>,
}

impl JudgeOptions {
    /// The slow-close threshold of `trace` by default: 1 s.
    pub const SLOW_CLOSE_NS: u64 = 1_000_000_000;
}

/// Notes on retransmissions, grouped by state.
fn retransmit_notes(us: &Trace<'_>, j: &mut Judgement) {
    use TcpState::*;
    let mut by_state: Vec<(TcpState, u64)> = Vec::new();
    for r in &us.retransmits {
        let s = r.ev.kind.state_after();
        match by_state.iter_mut().find(|(st, _)| *st == s) {
            Some((_, n)) => *n = n.saturating_add(r.count()),
            None => by_state.push((s, r.count())),
        }
    }
    for (s, n) in by_state {
        let times = if n == 1 {
            "once".to_owned()
        } else {
            format!("{n} times")
        };
        match s {
            FinWait1 => j.note(
                Some(Step::SecondWave),
                Code::FinRetransmitted,
                format!("retransmitted {times} from FIN_WAIT1: our FIN (or data before it) was not ACKed in time; step 2 came late"),
            ),
            Closing => j.note(
                Some(Step::SecondWave),
                Code::FinRetransmitted,
                format!("FIN retransmitted {times} from CLOSING: the ACK of our FIN was lost or late"),
            ),
            LastAck => j.note(
                Some(Step::FourthWave),
                Code::FinRetransmitted,
                format!("FIN retransmitted {times} from LAST_ACK: the final ACK (step 4) was lost or late"),
            ),
            SynSent | SynRecv => j.note(None, Code::SynRetransmitted, format!("handshake retransmitted {times} in {s}")),
            _ => j.note(None, Code::DataRetransmitted, format!("retransmitted {times} in {s}")),
        }
    }
}

/// Judges one connection; `peer` is the other end when it was traced on this host too.
pub fn judge(conn: &Connection, peer: Option<&Connection>) -> Verdict {
    judge_with(conn, peer, &JudgeOptions::default())
}

/// A passive closer's time in CLOSE_WAIT over the threshold: its application was slow to
/// close after the peer's FIN.
fn slow_close_note(conn: &Connection, us: &Trace<'_>, threshold_ns: u64, j: &mut Judgement) {
    let Some(ns) = us.time_in(TcpState::CloseWait) else {
        return;
    };
    if threshold_ns == 0 || ns <= threshold_ns {
        return;
    }
    let who = conn
        .process
        .as_ref()
        .map_or("the application".to_owned(), |p| {
            format!("{} ({})", crate::escape::text(&p.comm.as_str()), p.pid)
        });
    j.note(
        Some(Step::ThirdWave),
        Code::SlowClose,
        format!(
            "{who} closed {} after the peer's FIN (in CLOSE_WAIT over the {} threshold): slow \
             to close, a CLOSE_WAIT leak in the making",
            human_ms(ns / 1_000_000),
            human_ms(threshold_ns / 1_000_000)
        ),
    );
}

/// [`judge`], with what else is known of the connection.
pub fn judge_with(conn: &Connection, peer: Option<&Connection>, opts: &JudgeOptions) -> Verdict {
    let us = Trace::of(&conn.events);
    let peer_trace = peer.map(|p| (p, Trace::of(&p.events)));
    let peer_ref = peer_trace.as_ref().map(|(p, t)| (*p, t));
    let role = role_of(conn, &us);
    let ends = role.doc_side().map(|we_are| Ends {
        we_are,
        us: &us,
        peer: peer_ref.map(|(_, t)| t),
    });
    let mut j = Judgement::default();
    let gaps_expected = conn.events_maybe_lost
        || conn.unstored > 0
        || matches!(conn.end, RecordEnd::Superseded | RecordEnd::Evicted);

    // Transitions.
    for ev in &us.illegal {
        if let crate::decode::EventKind::State { old, new } = ev.kind {
            j.finding(
                step_pending(old),
                Code::IllegalTransition,
                format!(
                    "{old} -> {new} is not a legal transition (RFC 9293 with Linux's additions)"
                ),
            );
        }
    }
    for (cur, ev) in &us.gaps {
        if let crate::decode::EventKind::State { old, new } = ev.kind {
            let msg = format!("the socket was in {cur}, the next transition is {old} -> {new}: a transition is missing");
            if gaps_expected {
                j.note(
                    step_pending(*cur),
                    Code::DiscontinuousTransition,
                    format!("{msg} (events may have been lost)"),
                );
            } else {
                j.finding(step_pending(*cur), Code::DiscontinuousTransition, msg);
            }
        }
    }

    // How it ended.
    let cx = Ctx {
        conn,
        us: &us,
        peer: peer_ref,
        role,
        ends,
        timewait: opts.timewait,
    };
    let end = classify(&cx, &mut j);

    // Sequence arithmetic.
    let (waves, checks) = match &cx.ends {
        Some(ends) => {
            let checks = seq::check(ends);
            for c in checks.iter().filter(|c| c.outcome == Outcome::Broken) {
                j.finding(
                    Step::from_number(c.step),
                    c.code,
                    format!(
                        "step {}: {} does not hold: {} is {}, expected {}{}",
                        c.step,
                        c.relation,
                        c.relation.field.name(),
                        c.observed.map_or("?".to_owned(), |v| v.to_string()),
                        c.expected.map_or("?".to_owned(), |v| v.to_string()),
                        c.note.as_ref().map_or(String::new(), |n| format!(" ({n})"))
                    ),
                );
            }
            if ends.we_are == DocSide::Passive {
                if let Some(d) = seq::w_minus_v(ends).filter(|&d| d < 0) {
                    j.finding(
                        Some(Step::ThirdWave),
                        Code::Step3WBeforeV,
                        format!("step 3: our FIN's seq W is {} before V (W = V + data sent from CLOSE_WAIT)", -i64::from(d)),
                    );
                }
            }
            let no_seq = !conn.events.is_empty() && conn.events.iter().all(|e| e.ev.seq.is_none());
            if no_seq {
                j.note(
                    None,
                    Code::NoSequenceData,
                    "the events carry no sequence data: the U/V/W relations are not checkable"
                        .to_owned(),
                );
            }
            let closing = us.close_began();
            let waves = seq::waves(ends);
            let known = waves.u.is_some() || waves.v.is_some() || waves.w.is_some();
            ((closing || known).then_some(waves), checks)
        }
        None => (None, Vec::new()),
    };

    retransmit_notes(&us, &mut j);
    if role.doc_side() == Some(DocSide::Passive) {
        slow_close_note(conn, &us, opts.slow_close_ns, &mut j);
    }
    if !us.timewait_resets.is_empty() && end.time_wait != Some(TimeWaitPath::Reset) {
        j.note(
            None,
            Code::TimewaitReset,
            "our timewait socket sent a RST (to a segment after the close)".to_owned(),
        );
    }
    if role.doc_side() == Some(DocSide::Passive)
        && end.variant == Variant::FourWayClose
        && peer.is_none()
    {
        j.note(
            Some(Step::SecondWave),
            Code::MergeNotVisible,
            "from this end alone it is not visible whether step 2 rode on step 3 (a three-segment close)"
                .to_owned(),
        );
    }

    // What is unknown.
    let mut unknown = Vec::new();
    if conn.events.is_empty() {
        unknown.push("no events".to_owned());
    } else if !conn.seen_from_start && !conn.is_listener() {
        let first = us.first_state.map_or("?", |s| s.name());
        unknown.push(format!(
            "first seen mid-life (in {first}): its beginning was not seen"
        ));
    }
    if conn.events_maybe_lost {
        unknown.push("events may have been lost while it was open".to_owned());
    }
    if conn.unstored > 0 {
        unknown.push(format!(
            "{} of its events were not stored (at most {} steps are kept per connection)",
            conn.unstored,
            crate::track::MAX_STEPS
        ));
    }
    match conn.end {
        RecordEnd::Superseded => {
            unknown.push("its socket began a new connection before its close was seen".to_owned())
        }
        RecordEnd::Evicted => {
            unknown.push("dropped from the full connection table before its close".to_owned())
        }
        RecordEnd::StillOpen if us.close.is_none() && !conn.is_listener() && us.state.is_some() => {
            unknown.push(format!(
                "still open in {} when the trace stopped: its close was not seen",
                us.state.map_or("?", |s| s.name())
            ))
        }
        _ => {}
    }
    unknown.append(&mut j.unknown);

    let conformance = if !j.findings.is_empty() {
        Conformance::Deviates
    } else if !unknown.is_empty() {
        Conformance::Incomplete
    } else {
        Conformance::Conforms
    };
    Verdict {
        role,
        variant: end.variant,
        conformance,
        conforms: j.findings.is_empty(),
        incomplete: (!unknown.is_empty()).then(|| unknown.join("; ")),
        why: end.why,
        findings: j.findings,
        notes: j.notes,
        reset: end.reset,
        time_wait: end.time_wait,
        closing_times: us.times.clone(),
        waves,
        check_counts: CheckCounts::of(&checks),
        checks,
        with_peer: peer.is_some(),
        zeek: super::zeek::zeek(conn, &us, peer_ref, opts.timewait),
    }
}
