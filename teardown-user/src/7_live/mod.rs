//! Stage 7, live: the loop that drives stages 1-6.
//!
//! The agent's pipeline after decoding: events -> track -> judge -> sinks, with the user's
//! filters and the running summary. Live tracing and replay both drive this, so a
//! recording replays to the same output as the live trace that made it.

mod feed;
pub mod from_lines;
mod run;
mod timewait;

pub use feed::TracerFeed;
pub use run::{live, LiveOptions, Recorder};
pub use timewait::TimewaitFollow;

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    io,
};

use crate::{
    decode::{Event, TwTimer},
    judge::{self, Conformance, JudgeOptions, TimewaitOutcome},
    kernel::LostCounts,
    sinks::{Report, Sink, Summary},
    sock_diag::{TwFate, TwSubstate},
    track::timewait::{Closing, Joiner, TimewaitNote, TwFact, TwWhat},
    track::tw_timers::TwTimers,
    track::{Filter, Finished, Tracker, TrackerConfig, TrackerStats},
};

/// Running totals of a live pipeline (see [`Pipeline::progress`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub events: u64,
    pub lost_events: u64,
    pub open_connections: u64,
}

pub struct Pipeline {
    tracker: Tracker,
    filter: Filter,
    sinks: Vec<Box<dyn Sink + Send>>,
    summary: Summary,
    wall_offset_ns: i64,
    joiner: Joiner,
    /// The first sink error; the pipeline stops writing but keeps counting.
    error: Option<io::Error>,
    /// Connections the tracker just handed on (kept, so that no event allocates it anew).
    done: Vec<Finished>,
    /// Timewait sockets followed through their timer's tracepoints, when the kernel has them.
    tw_timers: Option<TwTimers>,
    /// Facts [`TwTimers`] just made (kept, as `done`).
    tw_facts: Vec<TwFact>,
    /// What judging takes besides the events (the slow-close threshold).
    judge_options: JudgeOptions,
    /// Orphans whose verdict waits for their FIN_WAIT2 timewait socket's fate.
    held: Held,
}

/// An orphan still waiting, in its FIN_WAIT2 timewait socket, for the peer's FIN when it was
/// closed: its verdict is given when the kernel's timer events tell whether that FIN came
/// (the socket turned to TIME_WAIT) or not (it expired, or a RST killed it). Bounded in time
/// by [`HOLD_NS`] and in number by [`HOLD_MAX`].
struct HeldOrphan {
    finished: Finished,
    /// Facts of its timewait socket so far, written after its verdict.
    notes: Vec<TimewaitNote>,
    reached: TwSubstate,
}

/// How long an orphan's verdict waits: the default `tcp_fin_timeout` (60 s), the longest its
/// FIN_WAIT2 timewait socket lives, plus the time its end takes to reach us.
const HOLD_NS: u64 = 65_000_000_000;
/// Orphans held at most; beyond, one is reported at once, without its socket's fate, and counted.
const HOLD_MAX: usize = 65_536;

#[derive(Default)]
struct Held {
    by_id: HashMap<u64, HeldOrphan>,
    /// (held since, id), oldest first.
    queue: VecDeque<(u64, u64)>,
}

impl Pipeline {
    pub fn new(
        cfg: TrackerConfig,
        filter: Filter,
        sinks: Vec<Box<dyn Sink + Send>>,
        wall_offset_ns: i64,
    ) -> Pipeline {
        Pipeline {
            tracker: Tracker::new(cfg),
            filter,
            sinks,
            summary: Summary::default(),
            wall_offset_ns,
            joiner: Joiner::default(),
            error: None,
            done: Vec::with_capacity(16),
            tw_timers: None,
            tw_facts: Vec::with_capacity(16),
            judge_options: JudgeOptions::default(),
            held: Held::default(),
        }
    }

    /// A passive closer that spends longer than `ns` in CLOSE_WAIT gets a `slow_close` note
    /// (0: never).
    pub fn slow_close_after(&mut self, ns: u64) {
        self.judge_options.slow_close_ns = ns;
    }

    /// Timewait sockets are followed from the kernel's timer events ([`Pipeline::on_tw_timer`]),
    /// in every namespace: sock_diag's facts are no longer needed (its first poll still seeds the
    /// sockets already closing).
    pub fn timewait_from_kernel(&mut self) {
        self.tw_timers = Some(TwTimers::new(self.wall_offset_ns));
        self.summary.timewait_from_kernel = true;
    }

    /// Whether timewait sockets are followed from the kernel's timer events.
    pub fn follows_timewait_from_kernel(&self) -> bool {
        self.tw_timers.is_some()
    }

    /// An event of a timewait socket's timer.
    pub fn on_tw_timer(&mut self, t: &TwTimer) {
        let mut facts = std::mem::take(&mut self.tw_facts);
        if let Some(tw) = self.tw_timers.as_mut() {
            tw.on_timer(t, &mut |f| facts.push(f));
        }
        self.timewait_facts(&mut facts);
        self.tw_facts = facts;
    }

    fn timewait_facts(&mut self, facts: &mut Vec<TwFact>) {
        for fact in facts.drain(..) {
            self.on_timewait(fact);
        }
    }

    /// Events carry their network namespace (see [`crate::kernel::Capabilities::netns`]):
    /// timewait facts are then joined to connections of their own namespace only.
    pub fn match_netns(&mut self, yes: bool) {
        self.joiner = Joiner::new(yes);
    }

    /// Only the timewait sockets of these namespaces will be seen (the ones sock_diag polls):
    /// connections of others are not followed. (Not when the kernel's timer events follow
    /// them: they come from every namespace.)
    pub fn follow_timewait_of(&mut self, netns: Vec<u32>) {
        if self.tw_timers.is_none() {
            self.joiner.only_netns(netns);
        }
    }

    /// The namespaces whose timewait sockets a reported connection may still wait for (None:
    /// any), as of the wall clock now.
    pub fn timewait_wanted(&self) -> Option<Vec<u32>> {
        if self.tw_timers.is_some() {
            return Some(Vec::new());
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.joiner.wanted_netns(now_ms)
    }

    pub fn on_event(&mut self, ev: Event) {
        if let Some(tw) = self.tw_timers.as_mut() {
            let mut facts = std::mem::take(&mut self.tw_facts);
            tw.on_sock(&ev, &mut |f| facts.push(f));
            self.timewait_facts(&mut facts);
            self.tw_facts = facts;
        }
        let mut done = std::mem::take(&mut self.done);
        self.tracker.on_event(ev, &mut |f| done.push(f));
        self.report_all(&mut done);
        self.done = done;
    }

    /// Sockets already closing when the trace began.
    pub fn seed(&mut self, closing: &[Closing]) {
        self.summary.closing_at_start += closing.len() as u64;
        for c in closing {
            self.tracker.seed(c.netns, c.local, c.remote, c.state);
        }
    }

    /// What sock_diag or the kernel's timer events showed of a timewait socket.
    pub fn on_timewait(&mut self, fact: TwFact) {
        if let Some(mut note) = self.joiner.on_fact(fact) {
            note.from_kernel = self.tw_timers.is_some();
            if self.held.by_id.contains_key(&note.id) {
                self.held_note(note);
            } else {
                self.timewait_note(&note);
            }
        }
    }

    /// A fact of a held orphan's timewait socket: kept, and the verdict given once it tells
    /// whether the peer's FIN came.
    fn held_note(&mut self, note: TimewaitNote) {
        let id = note.id;
        let Some(h) = self.held.by_id.get_mut(&id) else {
            // Released by an earlier fact of the same batch: written after its verdict.
            self.timewait_note(&note);
            return;
        };
        let outcome = match note.fact.what {
            TwWhat::Entered {
                state: TwSubstate::TimeWait,
                ..
            } => Some(TimewaitOutcome {
                reached: TwSubstate::TimeWait,
                left: None,
            }),
            TwWhat::Left { how, .. } => Some(TimewaitOutcome {
                reached: h.reached,
                left: Some(how),
            }),
            _ => None,
        };
        h.notes.push(note);
        if let Some(outcome) = outcome {
            self.release(id, Some(outcome));
        }
    }

    /// Gives a held orphan its verdict (with its socket's fate, when known), then its facts.
    fn release(&mut self, id: u64, outcome: Option<TimewaitOutcome>) {
        let Some(h) = self.held.by_id.remove(&id) else {
            return;
        };
        let opts = JudgeOptions {
            timewait: outcome,
            ..self.judge_options
        };
        let verdict = judge::judge_with(&h.finished.conn, h.finished.peer.as_deref(), &opts);
        self.count(&verdict);
        self.write_report(&h.finished, &verdict);
        let conforming = verdict.conformance == Conformance::Conforms;
        for mut note in h.notes {
            note.of_conforming = conforming;
            self.timewait_note(&note);
        }
    }

    /// Releases the orphans held since before `now_ns - HOLD_NS` (all with `None`), without
    /// their socket's fate.
    fn release_due(&mut self, now_ns: Option<u64>) {
        while let Some(&(since, id)) = self.held.queue.front() {
            if now_ns.is_some_and(|now| since.saturating_add(HOLD_NS) > now) {
                break;
            }
            self.held.queue.pop_front();
            if self.held.by_id.contains_key(&id) {
                self.summary.timewait_fate_unseen += 1;
                self.release(id, None);
            }
        }
    }

    fn timewait_note(&mut self, note: &TimewaitNote) {
        let tw = &mut self.summary.timewait;
        match note.fact.what {
            TwWhat::Entered { .. } => tw.entered += 1,
            TwWhat::Restarted { .. } => tw.restarts += 1,
            TwWhat::Left { how, .. } => match how {
                TwFate::Expired => tw.expired += 1,
                TwFate::Reused => tw.reused += 1,
                TwFate::Killed => tw.killed += 1,
                TwFate::Purged => tw.purged += 1,
            },
        }
        if self.error.is_some() {
            return;
        }
        for s in &mut self.sinks {
            if let Err(e) = s.timewait(note) {
                self.error = Some(e);
                return;
            }
        }
    }

    pub fn on_undecodable(&mut self) {
        self.summary.undecodable += 1;
    }

    /// The kernel's loss counters read `total`, `by_cause`, at monotonic `to_ns`; they read
    /// less at `from_ns`. `not_judged`: what the events counted instead of sent were, since
    /// the start. (`by_cause` adds up to less than `total` in a recording made before causes
    /// were told apart.)
    pub fn on_lost(
        &mut self,
        total: u64,
        by_cause: LostCounts,
        not_judged: &BTreeMap<String, u64>,
        from_ns: u64,
        to_ns: u64,
    ) {
        let s = &mut self.summary;
        s.lost_by_cause = s.lost_by_cause.max(by_cause);
        s.lost_events = s.lost_events.max(total);
        for (what, &n) in not_judged {
            let have = s.not_judged.entry(what.clone()).or_default();
            *have = (*have).max(n);
        }
        self.tracker.on_lost(total, from_ns, to_ns);
    }

    /// The kernel's counts of program runs it skipped, by program, since load.
    pub fn on_recursion_misses(&mut self, by_program: &[(&'static str, u64)]) {
        for &(program, n) in by_program.iter().filter(|(_, n)| *n > 0) {
            let have = self
                .summary
                .recursion_by_program
                .entry(program)
                .or_default();
            *have = (*have).max(n);
        }
    }

    /// Every loss so far, by cause.
    pub fn lost(&self) -> crate::sinks::LostReport {
        self.summary.lost()
    }

    /// Monotonic time moved on to `now_ns` with no event: hand on settled connections.
    pub fn tick(&mut self, now_ns: u64) {
        if let Some(tw) = self.tw_timers.as_mut() {
            let mut facts = std::mem::take(&mut self.tw_facts);
            tw.flush(now_ns, &mut |f| facts.push(f));
            self.timewait_facts(&mut facts);
            self.tw_facts = facts;
        }
        let mut done = std::mem::take(&mut self.done);
        self.tracker.tick(now_ns, &mut |f| done.push(f));
        self.report_all(&mut done);
        self.done = done;
        self.release_due(Some(now_ns));
    }

    pub fn set_skipped_lines(&mut self, n: u64) {
        self.summary.skipped_lines = Some(n);
    }

    /// A sink failed (e.g. the output pipe closed); the trace should stop.
    pub fn failed(&self) -> bool {
        self.error.is_some()
    }

    /// Kernel events taken in, the kernel's lost-event total, and connections open now.
    pub fn progress(&self) -> Progress {
        Progress {
            events: self.tracker.stats().events,
            lost_events: self.summary.lost_events,
            open_connections: self.tracker.open_count() as u64,
        }
    }

    /// Ends the trace: connections still open are reported, the summary is written, sinks are
    /// flushed. Returns the summary, or the first output error.
    pub fn finish(mut self) -> Result<Summary, io::Error> {
        // Cancels still held are early ends; facts of connections not reported yet wait for
        // them in the joiner.
        if let Some(mut tw) = self.tw_timers.take() {
            let mut facts = Vec::new();
            tw.finish(&mut |f| facts.push(f));
            self.timewait_facts(&mut facts);
            self.summary.timewait_untracked = tw.overflow;
            self.tw_timers = Some(tw);
        }
        let mut done = Vec::new();
        self.tracker.finish(&mut |f| done.push(f));
        self.report_all(&mut done);
        // Orphans still waiting when the trace stops are reported as they stand.
        self.release_due(None);
        let TrackerStats {
            events,
            connections,
            evicted,
            unattached,
            settle_cut,
            seeds_dropped,
            peer_wait_evicted,
        } = self.tracker.stats();
        self.summary.events = events;
        self.summary.connections_seen = connections;
        self.summary.evicted = evicted;
        self.summary.unattached = unattached;
        let b = &mut self.summary.bounds;
        b.settle_cut = settle_cut;
        b.seeds_dropped = seeds_dropped;
        b.peer_wait_evicted = peer_wait_evicted;
        self.summary.timewait_untracked += self.joiner.dropped;
        // An output whose reader went away (a closed pipe, EPIPE) ends the trace as a stop
        // would: the summary is still returned, for the caller to say elsewhere.
        let closed = |e: &io::Error| e.kind() == io::ErrorKind::BrokenPipe;
        if let Some(e) = self.error.take().filter(|e| !closed(e)) {
            return Err(e);
        }
        for s in &mut self.sinks {
            match s.finish(&self.summary) {
                Err(e) if !closed(&e) => return Err(e),
                _ => {}
            }
        }
        Ok(self.summary)
    }

    /// Reports and empties `done`.
    fn report_all(&mut self, done: &mut Vec<Finished>) {
        for f in done.drain(..) {
            self.report(f);
        }
    }

    fn count(&mut self, verdict: &judge::Verdict) {
        self.summary.connections += 1;
        *self
            .summary
            .by_variant
            .entry(verdict.variant.name())
            .or_default() += 1;
        for finding in &verdict.findings {
            *self
                .summary
                .by_finding
                .entry(finding.code.as_str())
                .or_default() += 1;
        }
        match verdict.conformance {
            Conformance::Conforms => self.summary.conforming += 1,
            Conformance::Deviates => self.summary.deviating += 1,
            Conformance::Incomplete => self.summary.incomplete += 1,
        }
    }

    fn report(&mut self, f: Finished) {
        self.summary.bounds.events_unstored += f.conn.unstored;
        if !self.filter.matches(&f.conn) {
            return;
        }
        let verdict = judge::judge_with(&f.conn, f.peer.as_deref(), &self.judge_options);
        if !leaves_timewait_socket(&verdict) || f.conn.local.port() == 0 {
            self.count(&verdict);
            self.write_report(&f, &verdict);
            return;
        }
        let now_ms = (f.conn.last_ts() as i128 + self.wall_offset_ns as i128) / 1_000_000;
        let early = self.joiner.follow(
            f.conn.id,
            verdict.conformance == Conformance::Conforms,
            f.conn.netns,
            f.conn.local,
            f.conn.remote,
            now_ms.max(0) as u64,
        );
        let from_kernel = self.tw_timers.is_some();
        // An orphan waiting for the peer's FIN: its verdict waits for its timewait socket's
        // fate, which the kernel's timer events tell as it happens (sock_diag's polls could
        // not tell a FIN_WAIT2 expiry from a TIME_WAIT one).
        let waits = from_kernel && verdict.time_wait == Some(judge::TimeWaitPath::FinWait2Timewait);
        if waits && self.held.by_id.len() < HOLD_MAX {
            let (id, since) = (f.conn.id, f.conn.last_ts());
            self.held.by_id.insert(
                id,
                HeldOrphan {
                    finished: f,
                    notes: Vec::new(),
                    reached: TwSubstate::FinWait2,
                },
            );
            self.held.queue.push_back((since, id));
            for mut note in early {
                note.from_kernel = true;
                self.held_note(note);
            }
            return;
        }
        if waits {
            self.summary.timewait_fate_unseen += 1;
        }
        self.count(&verdict);
        // Reported first, then what was already learnt of its timewait socket.
        self.write_report(&f, &verdict);
        for mut note in early {
            note.from_kernel = from_kernel;
            self.timewait_note(&note);
        }
    }

    fn write_report(&mut self, f: &Finished, verdict: &judge::Verdict) {
        if self.error.is_some() {
            return;
        }
        let report = Report {
            conn: &f.conn,
            peer_id: f.peer.as_ref().map(|p| p.id),
            peer: f.peer.as_deref(),
            verdict,
            wall_offset_ns: self.wall_offset_ns,
        };
        for s in &mut self.sinks {
            if let Err(e) = s.connection(&report) {
                self.error = Some(e);
                return;
            }
        }
    }
}

/// A close that hands the connection to a timewait socket (TIME_WAIT, or an orphan's
/// FIN_WAIT2), which only sock_diag can follow further.
fn leaves_timewait_socket(v: &judge::Verdict) -> bool {
    use judge::TimeWaitPath::*;
    matches!(
        v.time_wait,
        Some(Entered | FinWait2Timewait | FinWait2TimewaitThenTimeWait)
    )
}
