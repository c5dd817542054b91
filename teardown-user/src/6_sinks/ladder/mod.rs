//! A ladder diagram of one connection's close: the document's figure (docs/close-sequence.md,
//! §1) drawn with what the trace saw. Two lifelines, the active closer on the left as in the
//! document; each documented step an arrow from the events that show it leave and arrive (the
//! pairs of `judge::seq::evidence`, read off the relations table); retransmissions, RSTs and
//! data sent from CLOSE_WAIT as arrows of their own; a step that never came drawn as missing;
//! the states each end entered beside its lifeline; the TIME_WAIT bar with its real length and
//! fate. The documented sequence is drawn faintly behind, so that a deviation stands out.
//!
//! [`Ladder`] is the drawing's content, without geometry; [`svg`] lays it out. The report page
//! (`report`) draws the same model with the same layout in the browser.

pub mod svg;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;

use teardown_common::timewait::TwFate;

use super::Report;
use crate::{
    decode::{EventKind, TcpState},
    judge::{
        model::{rule_of, DocSide, Trace, STEPS, TRANSITIONS},
        seq::{self, At},
        Code, Step, TimeWaitPath, Variant, Verdict,
    },
    sock_diag::watch::{TwFact, TwWhat},
    track::Connection,
};

/// What an arrow stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArrowKind {
    /// A documented step, seen.
    Step,
    /// Step 2 carried by step 3's segment (a three-segment close).
    Merged,
    /// A documented step that never came (a finding says so).
    Missing,
    /// A documented step no event shows that came (a later step was seen) or is taken to
    /// have come: the close ended as documented, without an error and no step missing before
    /// it (events lost; an orphan's timewait socket, which has no events, took the rest).
    Unseen,
    /// A segment sent again (`count` times).
    Retransmit,
    /// A RST.
    Reset,
    /// Data the passive closer sent from CLOSE_WAIT (W != V).
    Data,
}

impl ArrowKind {
    /// Its name: the CSS class both drawings use.
    pub const fn name(self) -> &'static str {
        match self {
            ArrowKind::Step => "step",
            ArrowKind::Merged => "merged",
            ArrowKind::Missing => "missing",
            ArrowKind::Unseen => "unseen",
            ArrowKind::Retransmit => "retransmit",
            ArrowKind::Reset => "reset",
            ArrowKind::Data => "data",
        }
    }

    pub const ALL: [ArrowKind; 7] = [
        ArrowKind::Step,
        ArrowKind::Merged,
        ArrowKind::Missing,
        ArrowKind::Unseen,
        ArrowKind::Retransmit,
        ArrowKind::Reset,
        ArrowKind::Data,
    ];
}

/// One end's lifeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lane {
    pub endpoint: SocketAddr,
    /// "active closer", "passive closer", ...
    pub role: &'static str,
    /// The end being judged (else its peer).
    pub us: bool,
    /// Its events were traced (else what it did is drawn from the other end's events).
    pub traced: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arrow {
    /// The lane it leaves (0 left, 1 right).
    pub from: u8,
    /// The row it leaves at and the row it arrives at (the same when only one end saw it).
    pub row: u16,
    pub to_row: u16,
    pub kind: ArrowKind,
    /// `FIN seq=U`, `RST`, ...: the numbers are the ladder's U, V and W.
    pub label: String,
    /// How many segments it stands for (retransmissions), 1 otherwise.
    pub count: u64,
    /// The documented step it is, if one.
    pub step: Option<u8>,
}

/// A state an end entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateMark {
    pub row: u16,
    pub lane: u8,
    pub state: TcpState,
    /// Drawn from the document's sequence, the end itself not traced.
    pub inferred: bool,
}

/// What became of a TIME_WAIT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeWaitEnd {
    /// Not seen (the trace ended first, or its timewait socket was not followed).
    NotSeen,
    Left(TwFate),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeWaitBar {
    pub lane: u8,
    /// The row it begins at.
    pub row: u16,
    pub end: TimeWaitEnd,
    /// Times its timer restarted (the peer's FIN came again).
    pub restarts: u32,
    /// How long it lasted, when it ended.
    pub duration_ms: Option<u64>,
    /// Held by a timewait socket the events do not show (drawn from the verdict).
    pub inferred: bool,
}

impl TimeWaitBar {
    /// A later fact about this TIME_WAIT: a restart, its end and length.
    pub fn apply(&mut self, fact: &TwFact) {
        match fact.what {
            TwWhat::Entered { .. } => {}
            TwWhat::Restarted { .. } => self.restarts += 1,
            TwWhat::Left {
                how,
                entered_ms,
                restarts,
            } => {
                self.end = TimeWaitEnd::Left(how);
                self.restarts = self.restarts.max(restarts);
                self.duration_ms = Some(fact.at_ms.saturating_sub(entered_ms));
            }
        }
    }
}

/// One connection's ladder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ladder {
    /// The judged end's id.
    pub id: u64,
    pub lanes: [Lane; 2],
    /// Each row's time, in ns after the first row's.
    pub rows: Vec<u64>,
    pub arrows: Vec<Arrow>,
    pub states: Vec<StateMark>,
    /// The row of each documented step (where it came, or would have): the template's arrows.
    pub template: [u16; 4],
    pub time_wait: Option<TimeWaitBar>,
    pub u: Option<u32>,
    pub v: Option<u32>,
    pub w: Option<u32>,
    /// W - V.
    pub data_in_close_wait: Option<u32>,
    /// The verdict in one line, and its finding codes.
    pub headline: String,
    pub findings: Vec<Code>,
}

/// The label of a documented step: `FIN,ACK seq=W ack=U+1`.
pub fn step_label(step: Step) -> String {
    let s = step.spec();
    match s.ack {
        Some(ack) => format!("{} seq={} ack={}", s.segment, s.seq.label(), ack.label()),
        None => format!("{} seq={}", s.segment, s.seq.label()),
    }
}

/// The step finding that says a step never came.
fn missing_step(code: Code) -> Option<Step> {
    match code {
        Code::NoFinAck => Some(Step::SecondWave),
        Code::NoPeerFin => Some(Step::ThirdWave),
        Code::NoFinalAck => Some(Step::FourthWave),
        _ => None,
    }
}

/// The state an end is in after a step, by the document: from ESTABLISHED, through each step
/// so far, the transition of [`TRANSITIONS`] that records that step on that side (one the
/// relations read it at, `seq::evidence`); a step no transition records leaves the state as
/// it was (the passive closer sends step 2 from CLOSE_WAIT and stays there).
fn doc_state_after(step: Step, side: DocSide) -> TcpState {
    let mut state = TcpState::Established;
    for spec in STEPS.iter().take_while(|s| s.step <= step) {
        let meanings: Vec<_> = seq::evidence(spec.step)
            .filter(|(s, _)| *s == side)
            .map(|(_, at)| at.meaning())
            .collect();
        if let Some(r) = TRANSITIONS
            .iter()
            .find(|r| r.from == state && r.step == Some(spec.step) && meanings.contains(&r.meaning))
        {
            state = r.to;
        }
    }
    state
}

/// Its last state change is a documented end of the close without an error: into TIME_WAIT,
/// or to CLOSE from FIN_WAIT2 (an orphan's timewait socket takes over), TIME_WAIT or LAST_ACK
/// (not a timeout nor an error from any state).
fn closed_in_order(c: &Connection) -> bool {
    let last = c.events.iter().rev().find_map(|run| match run.ev.kind {
        EventKind::State { old, new } => Some((old, new, run.ev.sock.map_or(0, |s| s.err))),
        _ => None,
    });
    match last {
        Some((_, TcpState::TimeWait, 0)) => true,
        Some((old, TcpState::Close, 0)) => matches!(
            old,
            TcpState::FinWait2 | TcpState::TimeWait | TcpState::LastAck
        ),
        _ => false,
    }
}

/// What a retransmission in `state` resent.
fn retransmitted(state: TcpState) -> &'static str {
    match state {
        TcpState::FinWait1 | TcpState::Closing | TcpState::LastAck => "FIN retransmitted",
        TcpState::SynSent => "SYN retransmitted",
        TcpState::SynRecv => "SYN,ACK retransmitted",
        _ => "data retransmitted",
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum What {
    // In this order within one instant: what leaves, then the states, then what arrives.
    Send(Step),
    /// A step sent in answer to one that arrived (an ACK): it leaves then or later (a delayed
    /// ACK), so its arrival, when seen, places it better.
    Answer(Step),
    Retransmit(TcpState, u64),
    ResetSent(TcpState),
    State(TcpState),
    Arrive(Step),
    ResetReceived(TcpState),
}

#[derive(Clone, Copy, Debug)]
struct Item {
    ts: u64,
    lane: u8,
    what: What,
}

/// The events of one traced end, as items on its lane.
fn items_of(conn: &Connection, trace: &Trace<'_>, side: DocSide, lane: u8, out: &mut Vec<Item>) {
    for run in &conn.events {
        let what = match run.ev.kind {
            EventKind::State { new, .. } => What::State(new),
            EventKind::Retransmit { state } => What::Retransmit(state, run.count()),
            EventKind::ResetSent { state } => What::ResetSent(state),
            EventKind::ResetReceived { state } => What::ResetReceived(state),
        };
        out.push(Item {
            ts: run.first_ts,
            lane,
            what,
        });
    }
    if !trace.close_began() {
        return;
    }
    for spec in &STEPS {
        for (s, at) in seq::evidence(spec.step) {
            if s != side {
                continue;
            }
            if let Some(Ok(ev)) = seq::point(trace, at) {
                // The transition records this very step (TRANSITIONS' `step`), or another.
                let own = match ev.kind {
                    EventKind::State { old, new } => {
                        rule_of(old, new).and_then(|r| r.step) == Some(spec.step)
                    }
                    _ => false,
                };
                let what = match (spec.sender == side, own) {
                    (true, true) => What::Send(spec.step),
                    (true, false) => What::Answer(spec.step),
                    (false, _) => What::Arrive(spec.step),
                };
                out.push(Item {
                    ts: ev.ts_ns,
                    lane,
                    what,
                });
            }
        }
    }
}

impl Ladder {
    /// The ladder of a reported connection (with its peer's events when both ends were traced).
    pub fn of(r: &Report<'_>) -> Ladder {
        let (conn, v) = (r.conn, r.verdict);
        let we_are = v
            .waves
            .as_ref()
            .map(|w| w.we_are)
            .or_else(|| v.role.doc_side())
            .unwrap_or(DocSide::Active);
        let us_lane: u8 = if we_are == DocSide::Active { 0 } else { 1 };
        let peer_lane = 1 - us_lane;
        let side_of = |lane: u8| {
            if lane == us_lane {
                we_are
            } else {
                we_are.other()
            }
        };

        let mut items = Vec::with_capacity(conn.events.len() * 2 + 8);
        let us_trace = Trace::of(&conn.events);
        items_of(conn, &us_trace, we_are, us_lane, &mut items);
        if let Some(p) = r.peer {
            let t = Trace::of(&p.events);
            items_of(p, &t, we_are.other(), peer_lane, &mut items);
        }
        items.sort_by_key(|i| (i.ts, i.what));

        // One row per instant.
        let t0 = items.first().map_or(0, |i| i.ts);
        let mut rows: Vec<u64> = Vec::new();
        let mut row_of = Vec::with_capacity(items.len());
        for i in &items {
            let t = i.ts - t0;
            if rows.last() != Some(&t) {
                rows.push(t);
            }
            row_of.push((rows.len() - 1) as u16);
        }
        let find = |pred: &dyn Fn(&Item) -> bool| {
            items
                .iter()
                .zip(&row_of)
                .find(|(i, _)| pred(i))
                .map(|(_, r)| *r)
        };

        let mut arrows = Vec::new();
        let mut states = Vec::new();
        for (i, row) in items.iter().zip(&row_of) {
            match i.what {
                What::State(state) => states.push(StateMark {
                    row: *row,
                    lane: i.lane,
                    state,
                    inferred: false,
                }),
                What::Retransmit(state, count) => arrows.push(Arrow {
                    from: i.lane,
                    row: *row,
                    to_row: *row,
                    kind: ArrowKind::Retransmit,
                    label: retransmitted(state).to_owned(),
                    count,
                    step: None,
                }),
                What::ResetSent(state) => {
                    // Its arrival, when the other end was traced receiving it (the receiver's
                    // event may come first: the sender's fires once the RST is out).
                    let other = find(&|o: &Item| {
                        o.lane != i.lane && matches!(o.what, What::ResetReceived(_))
                    })
                    .unwrap_or(*row);
                    arrows.push(Arrow {
                        from: i.lane,
                        row: other.min(*row),
                        to_row: other.max(*row),
                        kind: ArrowKind::Reset,
                        label: format!("RST (sent in {state})"),
                        count: 1,
                        step: None,
                    });
                }
                What::ResetReceived(state) => {
                    let sent = items
                        .iter()
                        .any(|o| o.lane != i.lane && matches!(o.what, What::ResetSent(_)));
                    if !sent {
                        arrows.push(Arrow {
                            from: 1 - i.lane,
                            row: *row,
                            to_row: *row,
                            kind: ArrowKind::Reset,
                            label: format!("RST (received in {state})"),
                            count: 1,
                            step: None,
                        });
                    }
                }
                What::Send(_) | What::Answer(_) | What::Arrive(_) => {}
            }
        }

        // The documented steps.
        let waves = v.waves.as_ref();
        let missing: Vec<Step> = v
            .findings
            .iter()
            .filter_map(|f| missing_step(f.code))
            .collect();
        // Where each step was seen leaving and arriving, in the rows as they are now.
        let seen: [(Option<u16>, Option<u16>); 4] = STEPS.map(|spec| {
            let arrived = find(&|i: &Item| i.what == What::Arrive(spec.step));
            let sent = find(&|i: &Item| i.what == What::Send(spec.step)).or_else(|| {
                arrived
                    .is_none()
                    .then(|| find(&|i: &Item| i.what == What::Answer(spec.step)))?
            });
            (sent, arrived)
        });
        // A step not seen came unseen (lost events, a timewait socket's segment) when a later
        // step was seen or the close ended as documented; else it never came, the close ended
        // or stopped before it (a RST, a connection still open), and only the template shows it.
        let reset = items
            .iter()
            .any(|i| matches!(i.what, What::ResetSent(_) | What::ResetReceived(_)));
        // A traced peer shows what it sent and received: it must have closed too.
        let closed = !reset && closed_in_order(conn) && r.peer.is_none_or(closed_in_order);
        let mut template = [0u16; 4];
        // The row of the step before, for a step not seen (placed after it).
        let mut last_step_row: Option<u16> = None;
        let mut step_rows: [Option<u16>; 4] = [None; 4];
        // Rows inserted so far: a row found before them moves down with them.
        let mut inserted: Vec<u16> = Vec::new();
        for (k, spec) in STEPS.iter().enumerate() {
            let n = spec.step.number();
            let sender_lane = if side_of(us_lane) == spec.sender {
                us_lane
            } else {
                peer_lane
            };
            let moved = |r: u16| inserted.iter().fold(r, |r, &at| r + u16::from(r >= at));
            let (sent, arrived) = (seen[k].0.map(moved), seen[k].1.map(moved));
            let later_seen = seen[k + 1..].iter().any(|(s, a)| s.or(*a).is_some());
            // After a step that never came, the rest did not either.
            let missed_before = missing.iter().any(|m| *m < spec.step);
            let kind = match (sent, arrived) {
                _ if waves.is_none() => None,
                (Some(_), _) | (_, Some(_)) => Some(ArrowKind::Step),
                _ if missing.contains(&spec.step) => Some(ArrowKind::Missing),
                _ if later_seen || (closed && !missed_before) => Some(ArrowKind::Unseen),
                _ => None,
            };
            let (row, to_row) = match (sent, arrived) {
                (Some(s), Some(a)) => (s, a.max(s)),
                (Some(s), None) => (s, s),
                (None, Some(a)) => (a, a),
                (None, None) => {
                    // Where it would have come: after the step before it and before the next
                    // one seen, on a row of its own.
                    let next = seen[k + 1..]
                        .iter()
                        .find_map(|(s, a)| s.or(*a).map(moved))
                        .map_or(rows.len(), usize::from);
                    let at = last_step_row.map_or(next, |r| usize::from(r) + 1);
                    let at = at.min(next).min(rows.len());
                    let t = at
                        .checked_sub(1)
                        .and_then(|p| rows.get(p))
                        .copied()
                        .unwrap_or(0);
                    rows.insert(at, t);
                    shift_rows(&mut arrows, &mut states, &mut step_rows, at as u16);
                    inserted.push(at as u16);
                    (at as u16, at as u16)
                }
            };
            step_rows[k] = Some(row);
            template[k] = row;
            last_step_row = Some(to_row.max(row));
            if let Some(kind) = kind {
                arrows.push(Arrow {
                    from: sender_lane,
                    row,
                    to_row,
                    kind,
                    label: step_label(spec.step),
                    count: 1,
                    step: Some(n),
                });
            }
        }
        // A three-segment close: step 2's ACK rode on step 3's FIN.
        if v.variant == Variant::ThreeSegmentClose {
            let third = arrows
                .iter()
                .find(|a| a.step == Some(3))
                .map(|a| (a.row, a.to_row));
            if let (Some((row, to_row)), Some(second)) =
                (third, arrows.iter_mut().find(|a| a.step == Some(2)))
            {
                second.kind = ArrowKind::Merged;
                second.row = row;
                second.to_row = to_row;
                second.label = format!("{} (carried by the FIN,ACK)", second.label);
            }
        }
        // The final ACK lost: the active closer answered the FIN (it entered TIME_WAIT, which
        // sends step 4), yet the passive closer sent its FIN again from LAST_ACK.
        let active_lane = if we_are == DocSide::Active {
            us_lane
        } else {
            peer_lane
        };
        let answered = items
            .iter()
            .any(|i| i.lane == active_lane && i.what == What::Arrive(Step::ThirdWave));
        let resent = items.iter().any(|i| {
            i.lane != active_lane && matches!(i.what, What::Retransmit(TcpState::LastAck, _))
        });
        let third = arrows
            .iter()
            .find(|a| a.step == Some(3) && a.kind == ArrowKind::Step)
            .map(|a| a.to_row);
        if let (true, true, Some(row)) = (answered, resent, third) {
            arrows.push(Arrow {
                from: active_lane,
                row,
                to_row: row,
                kind: ArrowKind::Missing,
                label: format!(
                    "{} not received: the FIN came again",
                    step_label(Step::FourthWave)
                ),
                count: 1,
                step: None,
            });
        }
        // The template rows may have moved with inserted rows.
        for (k, r) in step_rows.iter().enumerate() {
            if let Some(r) = r {
                template[k] = *r;
            }
        }

        // Data from CLOSE_WAIT: between steps 2 and 3.
        let data = waves.and_then(|w| w.data_in_close_wait).filter(|&d| d > 0);
        if let Some(d) = data {
            let after = step_rows[1].or(step_rows[0]).unwrap_or(0);
            let at = (usize::from(after) + 1).min(rows.len());
            let t = rows.get(usize::from(after)).copied().unwrap_or(0);
            rows.insert(at, t);
            shift_rows(&mut arrows, &mut states, &mut step_rows, at as u16);
            for (k, r) in step_rows.iter().enumerate() {
                if let Some(r) = r {
                    template[k] = *r;
                }
            }
            let passive_lane = if we_are == DocSide::Passive {
                us_lane
            } else {
                peer_lane
            };
            arrows.push(Arrow {
                from: passive_lane,
                row: at as u16,
                to_row: at as u16,
                kind: ArrowKind::Data,
                label: format!("data from CLOSE_WAIT: W-V = {d} bytes"),
                count: 1,
                step: None,
            });
        }

        // The untraced peer's states, as the document has them after each step it sent, or
        // that it answered (a later step of its own was seen).
        if r.peer.is_none() && waves.is_some() {
            let peer_side = we_are.other();
            let seen: Vec<&Arrow> = arrows
                .iter()
                .filter(|a| a.kind == ArrowKind::Step && a.step.is_some())
                .collect();
            let peer_sent_after =
                |n: u8| seen.iter().any(|a| a.from == peer_lane && a.step > Some(n));
            let mut marks = Vec::new();
            for a in &seen {
                let Some(n) = a.step else { continue };
                if a.from != peer_lane && !peer_sent_after(n) {
                    continue;
                }
                let Some(state) = Step::from_number(n).map(|s| doc_state_after(s, peer_side))
                else {
                    continue;
                };
                let row = if a.from == peer_lane { a.row } else { a.to_row };
                let known = marks
                    .last()
                    .or(states.iter().rev().find(|s| s.lane == peer_lane))
                    .is_some_and(|s: &StateMark| s.state == state);
                if !known {
                    marks.push(StateMark {
                        row,
                        lane: peer_lane,
                        state,
                        inferred: true,
                    });
                }
            }
            states.extend(marks);
        }

        let time_wait = time_wait_bar(v, we_are, us_lane, &arrows, &us_trace, r.peer);
        Ladder {
            id: conn.id,
            lanes: lanes(r, us_lane, v),
            rows,
            arrows,
            states,
            template,
            time_wait,
            u: waves.and_then(|w| w.u),
            v: waves.and_then(|w| w.v),
            w: waves.and_then(|w| w.w),
            data_in_close_wait: waves.and_then(|w| w.data_in_close_wait),
            headline: v.headline(),
            findings: v.findings.iter().map(|f| f.code).collect(),
        }
    }

    /// A later fact about the TIME_WAIT it shows: its restarts, its end and length.
    pub fn timewait_fact(&mut self, fact: &TwFact) {
        if let Some(bar) = self.time_wait.as_mut() {
            bar.apply(fact);
        }
    }

    /// The lane of the judged end.
    pub fn us_lane(&self) -> u8 {
        u8::from(!self.lanes[0].us)
    }
}

/// Rows at or past `at` move down one, a row having been inserted there.
fn shift_rows(
    arrows: &mut [Arrow],
    states: &mut [StateMark],
    steps: &mut [Option<u16>; 4],
    at: u16,
) {
    let bump = |r: &mut u16| {
        if *r >= at {
            *r += 1;
        }
    };
    for a in arrows {
        bump(&mut a.row);
        bump(&mut a.to_row);
    }
    for s in states {
        bump(&mut s.row);
    }
    for r in steps.iter_mut().flatten() {
        bump(r);
    }
}

fn lanes(r: &Report<'_>, us_lane: u8, v: &Verdict) -> [Lane; 2] {
    let us = Lane {
        endpoint: r.conn.local,
        role: v.role.name(),
        us: true,
        traced: true,
    };
    let peer_role = match v.role.doc_side() {
        Some(DocSide::Active) if v.role == crate::judge::Role::Simultaneous => {
            "simultaneous closer"
        }
        Some(DocSide::Active) => "passive closer",
        Some(DocSide::Passive) => "active closer",
        None => "peer",
    };
    let peer = Lane {
        endpoint: r.conn.remote,
        role: peer_role,
        us: false,
        traced: r.peer.is_some(),
    };
    if us_lane == 0 {
        [us, peer]
    } else {
        [peer, us]
    }
}

/// The TIME_WAIT of the active closer, when it entered one (or its timewait socket did).
fn time_wait_bar(
    v: &Verdict,
    we_are: DocSide,
    us_lane: u8,
    arrows: &[Arrow],
    us: &Trace<'_>,
    peer: Option<&Connection>,
) -> Option<TimeWaitBar> {
    let active_lane = if we_are == DocSide::Active {
        us_lane
    } else {
        1 - us_lane
    };
    let entered = if we_are == DocSide::Active {
        match v.time_wait? {
            TimeWaitPath::Entered => Some(false),
            TimeWaitPath::FinWait2TimewaitThenTimeWait => Some(true),
            _ => None,
        }
    } else {
        // The peer was the active closer: its TIME_WAIT follows the final ACK.
        let final_ack = seq::point(us, At::FinalAck).is_some_and(|p| p.is_ok());
        let traced = peer.map(|p| {
            let t = Trace::of(&p.events);
            seq::point(&t, At::TimeWaitEntry).is_some_and(|p| p.is_ok())
        });
        match traced {
            Some(true) => Some(false),
            Some(false) => final_ack.then_some(true),
            None => final_ack.then_some(true),
        }
    }?;
    // From the FIN's arrival at the active closer (its TIME_WAIT entry), else the final ACK.
    let third = arrows
        .iter()
        .find(|a| a.step == Some(3) && a.kind == ArrowKind::Step)
        .map(|a| a.to_row);
    let fourth = arrows.iter().find(|a| a.step == Some(4)).map(|a| a.row);
    let row = third.or(fourth)?;
    Some(TimeWaitBar {
        lane: active_lane,
        row,
        end: TimeWaitEnd::NotSeen,
        restarts: 0,
        duration_ms: None,
        inferred: entered,
    })
}

/// Which connections' ladders `--svg-dir` writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Chosen {
    /// Those that deviate from the documented sequence.
    #[default]
    Deviating,
    /// Those that do not conform (deviating or incomplete).
    NotConforming,
    All,
}

impl Chosen {
    pub fn takes(self, v: &Verdict) -> bool {
        use crate::judge::Conformance::*;
        match self {
            Chosen::Deviating => v.conformance == Deviates,
            Chosen::NotConforming => v.conformance != Conforms,
            Chosen::All => true,
        }
    }
}
