//! The ladder of teardowns built event by event: what is drawn for a missing step, a
//! retransmitted FIN and an untraced peer, and, for any events at all, a drawing whose every
//! row exists.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;

use super::*;
use crate::{
    decode::{Comm, Event, EventKind, SeqSnapshot, SockSnapshot, TcpState},
    judge::{judge, seq},
    sinks::Report,
    track::{Connection, RecordEnd, Run},
};
use teardown_common::sock_flag::{DEAD, DONE};
use TcpState::*;

const U: u32 = 3_239_587_339;
const V: u32 = 4_264_540_243;
const MS: u64 = 1_000_000;

fn ev(ts: u64, kind: EventKind, seq: Option<[u32; 4]>, flags: u32, err: i32) -> Event {
    Event {
        ts_ns: ts,
        sk: 0xb,
        kind,
        local: "127.0.0.1:8080".parse().unwrap(),
        remote: "127.0.0.1:40000".parse().unwrap(),
        pid: 7,
        comm: Comm::new("server"),
        netns: 0,
        seq: seq.map(|f| SeqSnapshot {
            snd_una: f[0],
            snd_nxt: f[1],
            rcv_nxt: f[2],
            write_seq: f[3],
        }),
        sock: Some(SockSnapshot { flags, err }),
    }
}

fn st(ts: u64, old: TcpState, new: TcpState, seq: [u32; 4], flags: u32, err: i32) -> Event {
    ev(ts, EventKind::State { old, new }, Some(seq), flags, err)
}

fn conn(events: Vec<Event>) -> Connection {
    Connection {
        id: 5,
        sk: 0xb,
        local: "127.0.0.1:8080".parse().unwrap(),
        remote: "127.0.0.1:40000".parse().unwrap(),
        process: None,
        netns: 0,
        events: events.into_iter().map(Run::from).collect(),
        unstored: 0,
        seen_from_start: true,
        events_maybe_lost: false,
        state_at_start: None,
        end: RecordEnd::Closed,
    }
}

fn ladder_of(c: &Connection) -> Ladder {
    let verdict = judge(c, None);
    Ladder::of(&Report {
        conn: c,
        peer_id: None,
        peer: None,
        verdict: &verdict,
        wall_offset_ns: 0,
    })
}

/// A passive closer whose FIN was never ACKed: LAST_ACK resent it, then gave up (ETIMEDOUT).
fn last_ack_given_up() -> Connection {
    let mut resent = ev(
        40 * MS,
        EventKind::Retransmit { state: LastAck },
        Some([V, V + 1, U + 1, V + 1]),
        DONE | DEAD,
        0,
    );
    resent.ts_ns = 40 * MS;
    let mut runs: Vec<Event> = vec![
        st(MS, Listen, SynRecv, [0; 4], 0, 0),
        st(2 * MS, SynRecv, Established, [V, V, U, V], 0, 0),
        st(10 * MS, Established, CloseWait, [V, V, U + 1, V], DONE, 0),
        st(
            20 * MS,
            CloseWait,
            LastAck,
            [V, V, U + 1, V],
            DONE | DEAD,
            0,
        ),
        resent,
    ];
    runs.push(st(
        900 * MS,
        LastAck,
        Close,
        [V, V + 1, U + 1, V + 1],
        DONE | DEAD,
        110,
    ));
    conn(runs)
}

#[test]
fn a_step_that_never_came_is_drawn_missing() {
    let c = last_ack_given_up();
    let l = ladder_of(&c);
    assert!(l.findings.contains(&Code::NoFinalAck), "{l:#?}");
    let four: Vec<&Arrow> = l.arrows.iter().filter(|a| a.step == Some(4)).collect();
    assert_eq!(four.len(), 1);
    assert_eq!(four[0].kind, ArrowKind::Missing);
    assert_eq!(four[0].label, "ACK seq=U+1 ack=W+1");
    // From the active closer (left), the peer here; we are the passive closer (right).
    assert_eq!(l.us_lane(), 1);
    assert_eq!(four[0].from, 0);
    let resent: Vec<&Arrow> = l
        .arrows
        .iter()
        .filter(|a| a.kind == ArrowKind::Retransmit)
        .collect();
    assert_eq!(resent.len(), 1);
    assert_eq!(resent[0].label, "FIN retransmitted");
    assert_eq!(resent[0].from, 1);
    // Steps 1-3 were seen: 1 arrived here, 2 and 3 left from here.
    for n in 1..=3 {
        let a = l.arrows.iter().find(|a| a.step == Some(n)).unwrap();
        assert_eq!(a.kind, ArrowKind::Step, "step {n}: {a:?}");
    }
    assert_eq!((l.u, l.v, l.w), (Some(U), Some(V), Some(V)));
    assert!(l.time_wait.is_none(), "no final ACK, no TIME_WAIT");
}

#[test]
fn an_untraced_peer_gets_the_documents_states() {
    let l = ladder_of(&last_ack_given_up());
    let peer: Vec<(TcpState, bool)> = l
        .states
        .iter()
        .filter(|s| s.lane == 0)
        .map(|s| (s.state, s.inferred))
        .collect();
    // Its FIN arrived; what it did with ours is not known (it never answered).
    assert_eq!(peer, [(FinWait1, true)], "{l:#?}");
    assert!(!l.lanes[0].traced && l.lanes[1].traced && l.lanes[1].us);
}

#[test]
fn every_step_is_shown_on_both_sides() {
    for spec in &crate::judge::STEPS {
        let sides: Vec<DocSide> = seq::evidence(spec.step).map(|(s, _)| s).collect();
        assert!(sides.contains(&DocSide::Active), "{:?}", spec.step);
        assert!(sides.contains(&DocSide::Passive), "{:?}", spec.step);
    }
    // The states the document gives each end after each step (its figure).
    let after = |step| [DocSide::Active, DocSide::Passive].map(|side| doc_state_after(step, side));
    assert_eq!(after(Step::FirstWave), [FinWait1, CloseWait]);
    assert_eq!(after(Step::SecondWave), [FinWait2, CloseWait]);
    assert_eq!(after(Step::ThirdWave), [TimeWait, LastAck]);
    assert_eq!(after(Step::FourthWave), [TimeWait, Close]);
}

#[test]
fn text_is_escaped_for_xml_and_for_a_script_element() {
    assert_eq!(
        svg::xml("</script><b>'\"&\u{1}"),
        "&lt;/script&gt;&lt;b&gt;&#39;&quot;&amp;\u{fffd}"
    );
    let mut b = Vec::new();
    crate::sinks::report::json_str(&mut b, "</script>&\u{2028}");
    assert_eq!(
        String::from_utf8(b).unwrap(),
        "\"\\u003c/script\\u003e\\u0026\\u2028\""
    );
}

const STATES: [TcpState; 11] = [
    Established,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    Closing,
];

fn event() -> impl Strategy<Value = Event> {
    (
        0u64..2_000,
        0usize..STATES.len(),
        0usize..STATES.len(),
        0u8..4,
        any::<[u32; 4]>(),
        0u32..4,
        prop_oneof![Just(0), Just(104), Just(110)],
    )
        .prop_map(|(t, a, b, kind, seq, flags, err)| {
            let (old, new) = (STATES[a], STATES[b]);
            let kind = match kind {
                0 | 1 => EventKind::State { old, new },
                2 => EventKind::Retransmit { state: old },
                _ => EventKind::ResetReceived { state: old },
            };
            ev(t * MS, kind, Some(seq), flags << 8, err)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    /// Whatever the events, the ladder is drawn: every arrow, state, template step and bar on
    /// a row that exists.
    #[test]
    fn any_events_give_a_drawable_ladder(mut events in proptest::collection::vec(event(), 0..14)) {
        events.sort_by_key(|e| e.ts_ns);
        let c = conn(events);
        let l = ladder_of(&c);
        let rows = l.rows.len() as u16;
        for a in &l.arrows {
            prop_assert!(a.row < rows.max(1) && a.to_row < rows.max(1) && a.row <= a.to_row, "{a:?} of {rows}");
            prop_assert!(a.from <= 1);
        }
        for s in &l.states {
            prop_assert!(s.row < rows && s.lane <= 1);
        }
        for r in l.template {
            prop_assert!(r < rows.max(1), "template row {r} of {rows}");
        }
        if let Some(bar) = l.time_wait {
            prop_assert!(bar.row < rows && bar.lane <= 1);
        }
        prop_assert!(l.rows.windows(2).all(|w| w[0] <= w[1]), "rows in time order");
        let svg = svg::render(&l, "t");
        prop_assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
    }
}

/// A passive closer whose ESTABLISHED -> CLOSE_WAIT event was lost: steps 1 and 2 came (step 3
/// and 4 were seen after them) but no event shows them.
fn first_steps_lost() -> Connection {
    let mut c = conn(vec![
        st(MS, Listen, SynRecv, [0; 4], 0, 0),
        st(2 * MS, SynRecv, Established, [V, V, U, V], 0, 0),
        st(
            20 * MS,
            CloseWait,
            LastAck,
            [V, V, U + 1, V],
            DONE | DEAD,
            0,
        ),
        st(
            30 * MS,
            LastAck,
            Close,
            [V + 1, V + 1, U + 1, V + 1],
            DONE | DEAD,
            0,
        ),
    ]);
    c.events_maybe_lost = true;
    c
}

#[test]
fn a_step_not_seen_before_one_seen_is_drawn_unseen_in_its_place() {
    let l = ladder_of(&first_steps_lost());
    let step = |n| l.arrows.iter().find(|a| a.step == Some(n)).unwrap();
    let kinds: Vec<ArrowKind> = (1..=4).map(|n| step(n).kind).collect();
    use ArrowKind::{Step as Seen, Unseen};
    assert_eq!(kinds, [Unseen, Unseen, Seen, Seen], "{l:#?}");
    // In the document's order, each on its own row, and the rows of the steps seen still
    // at their events' times (after the first event's, 1 ms).
    let rows: Vec<u16> = (1..=4).map(|n| step(n).row).collect();
    assert!(rows.windows(2).all(|w| w[0] < w[1]), "{rows:?}");
    assert_eq!(l.rows[usize::from(step(3).row)], 19 * MS);
    assert_eq!(l.rows[usize::from(step(4).row)], 29 * MS);
    assert_eq!(l.template.to_vec(), rows);
}

/// The documented steps drawn, with how.
fn step_kinds(l: &Ladder) -> Vec<(u8, ArrowKind)> {
    l.arrows
        .iter()
        .filter_map(|a| a.step.map(|n| (n, a.kind)))
        .collect()
}

/// A passive closer reset in CLOSE_WAIT, and one still there when the trace ended.
fn cut_short(reset: bool) -> Connection {
    let mut events = vec![
        st(MS, Listen, SynRecv, [0; 4], 0, 0),
        st(2 * MS, SynRecv, Established, [V, V, U, V], 0, 0),
        st(10 * MS, Established, CloseWait, [V, V, U + 1, V], DONE, 0),
    ];
    if reset {
        events.push(ev(
            15 * MS,
            EventKind::ResetReceived { state: CloseWait },
            Some([V, V, U + 1, V]),
            DONE,
            0,
        ));
        events.push(st(15 * MS, CloseWait, Close, [V, V, U + 1, V], DONE, 104));
    }
    let mut c = conn(events);
    if !reset {
        c.end = RecordEnd::StillOpen;
    }
    c
}

#[test]
fn steps_after_a_close_stopped_are_only_the_template() {
    for reset in [true, false] {
        let l = ladder_of(&cut_short(reset));
        let kinds = step_kinds(&l);
        // Steps 3 and 4 never came: nothing says they did, unseen or otherwise.
        assert_eq!(
            kinds,
            [(1, ArrowKind::Step), (2, ArrowKind::Step)],
            "reset {reset}: {l:#?}"
        );
        assert!(l.template.iter().all(|&r| usize::from(r) < l.rows.len()));
        assert!(l.template[1] < l.template[2] && l.template[2] < l.template[3]);
    }
}

/// An active closer whose FIN was never ACKed: FIN_WAIT1 resent it, then gave up (ETIMEDOUT).
fn fin_never_acked() -> Connection {
    conn(vec![
        st(MS, Close, SynSent, [U, U, 0, U], 0, 0),
        st(2 * MS, SynSent, Established, [U, U, V, U], 0, 0),
        st(10 * MS, Established, FinWait1, [U, U, V, U], 0, 0),
        ev(
            20 * MS,
            EventKind::Retransmit { state: FinWait1 },
            Some([U, U + 1, V, U + 1]),
            DEAD,
            0,
        ),
        st(900 * MS, FinWait1, Close, [U, U + 1, V, U + 1], DEAD, 110),
    ])
}

#[test]
fn after_a_step_that_never_came_the_rest_did_not_either() {
    let l = ladder_of(&fin_never_acked());
    let kinds = step_kinds(&l);
    assert_eq!(
        kinds,
        [(1, ArrowKind::Step), (2, ArrowKind::Missing)],
        "{l:#?}"
    );
    // The same end closed by an error without a finding of a missing step: nothing unseen.
    let mut c = fin_never_acked();
    c.events.truncate(3);
    c.events.push(Run::from(st(
        30 * MS,
        FinWait1,
        Close,
        [U, U + 1, V, U + 1],
        DEAD,
        104,
    )));
    let l = ladder_of(&c);
    assert!(
        l.arrows.iter().all(|a| a.kind != ArrowKind::Unseen),
        "{l:#?}"
    );
}
