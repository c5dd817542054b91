//! Stage 4, track: decoded events grouped per connection, before they are judged (stage 5).
//!
//! Groups events into connections.
//!
//! A connection is one life of a kernel socket: from `connect()` (CLOSE -> SYN_SENT), `listen()`,
//! or a child socket made for an incoming SYN (LISTEN -> SYN_RECV), to its `-> CLOSE`. Two kernel
//! facts shape this module (docs/close-sequence.md, fact 5):
//! - the 4-tuple is already zero at the last transition (the socket was unhashed), so connections
//!   are keyed by socket address and keep the tuple seen at earlier transitions;
//! - a socket address is reused after free, so a connection-starting event on a known address
//!   begins a new connection.
//!
//! Whether an event on a known address still belongs to its connection is read from the states
//! the kernel reports (they continue from the last one, or they do not), not from the 4-tuple:
//! the same socket may report another 4-tuple mid-life (a dual-stack server's child socket shows
//! the listener's unspecified address first on some kernels, its IPv4-mapped one later). And the
//! tuples are compared, and keyed, with IPv4-mapped addresses as their IPv4 form
//! ([`teardown_common::addr`]), so that a dual-stack server's end meets its IPv4 client's.
//!
//! A connection's memory is bounded whatever its life: repeats of one kind in one state (a lossy
//! path's retransmissions) are folded into a [`Run`] past the first few, at most [`MAX_STEPS`]
//! runs are stored, and every table is bounded with its evictions counted ([`TrackerStats`]).
//!
//! A closed connection *settles* for a short while before it is handed on: a RST sent by
//! `close()` is traced just after the `-> CLOSE`, and the peer's socket usually closes a moment
//! later, so that both ends can be judged together.

pub mod filter;
pub mod timewait;
pub mod tw_timers;

pub use filter::Filter;

use std::{
    collections::{hash_map::Entry, HashMap},
    net::SocketAddr,
    sync::Arc,
};

/// Tables keyed by kernel socket addresses or our own ids: a fast hasher is safe there (no peer
/// chooses those keys).
type SkMap<V> = rustc_hash::FxHashMap<u64, V>;
/// Tables keyed by 4-tuples, which a remote peer partly chooses: a fast hasher seeded at random
/// per process, so that collisions cannot be aimed at.
pub(crate) type TupleMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

use serde::Serialize;

use teardown_common::addr::{canonical, canonical_ip};

use crate::decode::{Event, EventKind, Task, TcpState};

/// How a connection's record ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordEnd {
    /// Its `-> CLOSE` transition was seen.
    Closed,
    /// It was still open when the trace stopped.
    StillOpen,
    /// Its socket address began a new connection before a `-> CLOSE` was seen (events lost).
    Superseded,
    /// Dropped from a full connection table.
    Evicted,
}

/// Events of the same kind in the same state (retransmissions, RSTs) stored one by one before the
/// next are folded into a run: a lossy path's thousands of retransmissions then cost one.
pub const VERBATIM_REPEATS: usize = 3;
/// Runs stored per connection at most: beyond, each newer event takes the place of the latest
/// run that is not a state change (the state changes and the close stay known), and the events
/// that run stood for are counted in [`Connection::unstored`].
pub const MAX_STEPS: usize = 32;

/// One stored event, or a run of events of one kind in one state folded into one (a state change
/// is always a run of one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    /// The event; for a run, the latest of it (its time, sequence fields and flags).
    pub ev: Event,
    /// Events folded in besides `ev` (0: a single event).
    pub repeats: u64,
    /// When the run began (`ev.ts_ns` for a single event).
    pub first_ts: u64,
}

impl Run {
    /// How many events this step stands for.
    pub fn count(&self) -> u64 {
        self.repeats.saturating_add(1)
    }

    pub fn folded(&self) -> bool {
        self.repeats > 0
    }
}

impl From<Event> for Run {
    fn from(ev: Event) -> Run {
        Run {
            ev,
            repeats: 0,
            first_ts: ev.ts_ns,
        }
    }
}

/// One connection's events, in order (repeats folded, at most [`MAX_STEPS`] runs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    /// Order of first appearance in this trace, from 1.
    pub id: u64,
    pub sk: u64,
    /// The 4-tuple as the kernel reported it (zero ports when no event had one): from the first
    /// event that had one, or a later one that filled in an address left unspecified before.
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The owning process, from the first event made in process context.
    pub process: Option<Task>,
    /// Inode number of its network namespace, from its first event (0: unknown). Fixed for its
    /// life: it is part of the keys the tracker files it under.
    pub netns: u32,
    pub events: Vec<Run>,
    /// Events not stored: all [`MAX_STEPS`] runs were taken.
    pub unstored: u64,
    /// The connection's beginning was seen (it was not first seen mid-life).
    pub seen_from_start: bool,
    /// Events may have been lost while it was open (the kernel's loss counter moved).
    pub events_maybe_lost: bool,
    /// The state sock_diag showed when the trace began, for a connection already closing then.
    pub state_at_start: Option<TcpState>,
    pub end: RecordEnd,
}

impl Connection {
    fn new(id: u64, ev: &Event) -> Connection {
        let mut c = Connection {
            id,
            sk: ev.sk,
            local: ev.local,
            remote: ev.remote,
            process: None,
            netns: ev.netns,
            events: Vec::with_capacity(2),
            unstored: 0,
            seen_from_start: ev.starts_connection(),
            events_maybe_lost: false,
            state_at_start: None,
            end: RecordEnd::StillOpen,
        };
        c.push(*ev);
        c
    }

    fn push(&mut self, ev: Event) {
        if self.local.port() == 0 && ev.local.port() != 0 {
            self.local = ev.local;
        }
        if self.remote.port() == 0 && ev.remote.port() != 0 {
            self.remote = ev.remote;
        }
        if self.process.is_none() {
            self.process = ev.task();
        }
        self.store(ev);
    }

    /// Stores `ev`: folded into the run of its kind in its state once [`VERBATIM_REPEATS`] of
    /// them are stored one by one and a run follows them, else as a run of its own while there
    /// is room.
    fn store(&mut self, ev: Event) {
        if !matches!(ev.kind, EventKind::State { .. }) {
            // The same kind in the same state since the last state change.
            let mut same = 0;
            let mut latest = None;
            for (i, s) in self.events.iter().enumerate().rev() {
                if matches!(s.ev.kind, EventKind::State { .. }) {
                    break;
                }
                if s.ev.kind == ev.kind {
                    same += 1;
                    latest.get_or_insert(i);
                }
            }
            // The first few one by one, the next begins the run that takes the rest.
            if let Some(i) = latest.filter(|_| same > VERBATIM_REPEATS) {
                let run = &mut self.events[i];
                run.repeats = run.repeats.saturating_add(1);
                run.ev = ev;
                return;
            }
        }
        if self.events.len() >= MAX_STEPS {
            // Full: the state changes are what the verdict reads, so the latest other step
            // gives its place (the last one only when every step is a state change).
            let last = self.events.len() - 1;
            let gone = self
                .events
                .iter()
                .rposition(|s| !matches!(s.ev.kind, EventKind::State { .. }))
                .unwrap_or(last);
            let gone = self.events.remove(gone);
            self.unstored = self.unstored.saturating_add(gone.count());
        }
        if self.events.len() == 2 && self.events.capacity() == 2 {
            // A connection that goes on past its handshake usually closes in five or six
            // events: one reallocation to that size, rather than two doubling past it.
            self.events.reserve_exact(4);
        }
        self.events.push(Run::from(ev));
    }

    /// Events it saw: those stored, folded, and left unstored.
    pub fn event_count(&self) -> u64 {
        self.events
            .iter()
            .map(Run::count)
            .fold(self.unstored, u64::saturating_add)
    }

    /// A listening socket rather than a connection.
    pub fn is_listener(&self) -> bool {
        self.events.iter().any(|e| {
            matches!(e.ev.kind, EventKind::State { old, new } if old == TcpState::Listen && new == TcpState::Close
                || new == TcpState::Listen)
        })
    }

    /// The state after the last state change (retransmits and resets do not change it).
    fn last_transition_state(&self) -> Option<TcpState> {
        self.events.iter().rev().find_map(|e| match e.ev.kind {
            EventKind::State { new, .. } => Some(new),
            _ => None,
        })
    }

    /// State the connection was last seen in.
    pub fn last_state(&self) -> Option<TcpState> {
        self.events.last().map(|e| e.ev.kind.state_after())
    }

    pub fn first_ts(&self) -> u64 {
        self.events.first().map_or(0, |e| e.first_ts)
    }

    /// Time of its latest event: the last step's, or a run's that went on after it.
    pub fn last_ts(&self) -> u64 {
        let last = self.events.last().map_or(0, |e| e.ev.ts_ns);
        self.events
            .iter()
            .filter(|e| e.folded())
            .map(|e| e.ev.ts_ns)
            .fold(last, u64::max)
    }

    /// The tuple as seen from the other end.
    pub fn mirrored(&self) -> (SocketAddr, SocketAddr) {
        (self.remote, self.local)
    }

    fn has_tuple(&self) -> bool {
        self.local.port() != 0 && self.remote.port() != 0
    }

    /// `ev` names the same endpoints as the connection (an IPv4-mapped address and its IPv4
    /// form are one endpoint).
    fn same_tuple(&self, ev: &Event) -> bool {
        if self.local == ev.local && self.remote == ev.remote {
            return true;
        }
        canonical(self.local) == canonical(ev.local)
            && canonical(self.remote) == canonical(ev.remote)
    }

    /// `ev` carries on from where the connection's states left off: a state change from the
    /// last state seen, or another event in it. (A connection-starting event never does; the
    /// tracker sees to it first.)
    fn continues_with(&self, ev: &Event) -> bool {
        let Some(last) = self.last_transition_state().or_else(|| self.last_state()) else {
            return true;
        };
        match ev.kind {
            EventKind::State { old, .. } => old == last,
            other => other.state_after() == last,
        }
    }

    /// `ev`, on this connection's socket address and with another 4-tuple, belongs to another
    /// connection: the address was reused, and this one's close and that one's start were not
    /// seen. The kernel says so by a break in the states, or by a second complete 4-tuple: a
    /// socket's own tuple only ever gains an address it lacked (the kernel's report of a loss
    /// may come after the events that followed it, so a loss is not waited for).
    fn is_reused_by(&self, ev: &Event) -> bool {
        if !(self.has_tuple() && ev.has_tuple()) || self.same_tuple(ev) {
            return false;
        }
        !self.continues_with(ev)
            || (specified(self.local, self.remote) == 2 && specified(ev.local, ev.remote) == 2)
    }

    /// Takes the 4-tuple of `ev`, an event of this same connection, when it is at least as full
    /// as the one it had (it names more addresses, or as many, and is the kernel's latest word).
    /// Returns whether the tuple changed.
    fn take_fuller_tuple(&mut self, ev: &Event) -> bool {
        let fuller = self.has_tuple()
            && ev.has_tuple()
            && !self.same_tuple(ev)
            && specified(ev.local, ev.remote) >= specified(self.local, self.remote);
        if fuller {
            self.local = ev.local;
            self.remote = ev.remote;
        }
        fuller
    }
}

/// How many of a 4-tuple's two addresses are specified (not `0.0.0.0` or `::`).
fn specified(local: SocketAddr, remote: SocketAddr) -> u8 {
    u8::from(!canonical_ip(local.ip()).is_unspecified())
        + u8::from(!canonical_ip(remote.ip()).is_unspecified())
}

/// A connection handed on by the tracker, with the other end when it is on this host too.
#[derive(Debug)]
pub struct Finished {
    pub conn: Arc<Connection>,
    /// The socket with the mirrored 4-tuple, when both ends were traced (a copy when it is
    /// still open). Shared, not copied, when both ends are handed on together.
    pub peer: Option<Arc<Connection>>,
}

/// Counters of the tracker's own work, reported in the summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TrackerStats {
    pub events: u64,
    pub connections: u64,
    /// Connections dropped because the table was full.
    pub evicted: u64,
    /// Events of timewait sockets that matched no traced connection.
    pub unattached: u64,
    /// Closed connections handed on before their settle time, the table of settling ones
    /// being full (their peer or a trailing RST may then be missed).
    pub settle_cut: u64,
    /// Sockets already closing at start (sock_diag) not remembered: that table was full.
    pub seeds_dropped: u64,
    /// Closed ends dropped from the table of those waiting for a peer still open: that peer
    /// is judged alone.
    pub peer_wait_evicted: u64,
}

/// Tracker settings.
#[derive(Clone, Copy, Debug)]
pub struct TrackerConfig {
    /// Open connections kept at most; beyond that the least recently active are evicted (and
    /// counted). Closed connections settling, and sockets already closing at start, are
    /// bounded by it too.
    pub max_open: usize,
    /// How long a closed connection waits for trailing events and its peer, in nanoseconds.
    pub settle_ns: u64,
    /// How long an orphaned end (a FIN_WAIT2 timewait socket now) waits for its still-open
    /// peer on this host, in nanoseconds.
    pub peer_wait_ns: u64,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            max_open: 262_144,
            settle_ns: 200_000_000,
            peer_wait_ns: 2_000_000_000,
        }
    }
}

/// Where a 4-tuple's connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    /// Open, by socket address.
    Open(u64),
    /// Closed and settling, by connection id (its socket address may already be reused).
    Settling(u64),
}

/// The per-connection tracker: feed it events in order, it hands back finished connections.
pub struct Tracker {
    cfg: TrackerConfig,
    open: SkMap<Connection>,
    /// Closed connections waiting out the settle time, by connection id.
    settling: SkMap<Connection>,
    /// Socket address -> the settling connection of its last life, for trailing events (a RST
    /// sent just after the close). Dropped when the address starts a new life.
    settling_sk: SkMap<u64>,
    /// (due, connection id) in closing order: what to flush next, without scanning.
    settle_queue: std::collections::VecDeque<(u64, u64)>,
    /// The same for orphaned ends waiting longer for their peer (`peer_wait_ns`).
    orphan_queue: std::collections::VecDeque<(u64, u64)>,
    /// 4-tuple -> open or settling connection.
    by_tuple: TupleMap<TupleKey, Slot>,
    /// Open connections with a 4-tuple that another connection holds in `by_tuple` (a settling
    /// earlier life of the same 4-tuple, say): filed at their next events, once it is free.
    unfiled: rustc_hash::FxHashSet<u64>,
    next_id: u64,
    lost: u64,
    /// Monotonic time spans in which the kernel lost events, newest last (bounded).
    loss_windows: std::collections::VecDeque<(u64, u64)>,
    /// Connections already closing when the trace began (sock_diag), by 4-tuple.
    seeds: TupleMap<TupleKey, TcpState>,
    /// Closed ends whose peer was still open, by their own 4-tuple.
    awaiting_peer: TupleMap<TupleKey, (u64, Arc<Connection>)>,
    stats: TrackerStats,
}

/// Closed ends kept for a peer that is still open, at most, and for how long once full.
const AWAITING_PEER_MAX: usize = 16_384;
const AWAITING_PEER_NS: u64 = 120_000_000_000;

/// A 4-tuple as the tracker tells sockets apart: with its network namespace when it is a
/// loopback one (loopback traffic never leaves its namespace, so two containers may each have
/// the same loopback 4-tuple), without it otherwise (veth traffic between namespaces joins ends
/// in two of them). The namespace is 0 when events do not carry it. IPv4-mapped addresses are
/// keyed as their IPv4 form: a dual-stack socket and the IPv4 socket at the other end then have
/// mirrored keys.
type TupleKey = (u32, SocketAddr, SocketAddr);

fn tuple_key(netns: u32, local: SocketAddr, remote: SocketAddr) -> TupleKey {
    let (local, remote) = (canonical(local), canonical(remote));
    let scoped = local.ip().is_loopback() || remote.ip().is_loopback();
    (if scoped { netns } else { 0 }, local, remote)
}

impl Connection {
    /// Its own tuple key.
    fn key(&self) -> TupleKey {
        tuple_key(self.netns, self.local, self.remote)
    }

    /// The tuple key its peer has.
    fn peer_key(&self) -> TupleKey {
        tuple_key(self.netns, self.remote, self.local)
    }
}

/// A FIN_WAIT2 -> CLOSE of an orphan whose peer's FIN had not come: the socket became a
/// FIN_WAIT2 timewait socket (docs/close-sequence.md, fact 2).
fn is_orphan_fin_wait2(ev: &Event) -> bool {
    matches!(
        ev.kind,
        EventKind::State {
            old: TcpState::FinWait2,
            new: TcpState::Close
        }
    ) && ev.sock.is_some_and(|s| s.dead() && !s.done())
}

/// Loss windows kept: enough for connections that live across many loss reports.
const LOSS_WINDOWS_KEPT: usize = 1024;

impl Tracker {
    pub fn new(cfg: TrackerConfig) -> Tracker {
        Tracker {
            cfg,
            open: HashMap::default(),
            settling: HashMap::default(),
            settling_sk: HashMap::default(),
            settle_queue: std::collections::VecDeque::new(),
            orphan_queue: std::collections::VecDeque::new(),
            by_tuple: HashMap::default(),
            unfiled: Default::default(),
            next_id: 1,
            lost: 0,
            loss_windows: std::collections::VecDeque::new(),
            seeds: HashMap::default(),
            awaiting_peer: HashMap::default(),
            stats: TrackerStats::default(),
        }
    }

    pub fn stats(&self) -> TrackerStats {
        self.stats
    }

    /// Connections currently open.
    pub fn open_connections(&self) -> impl Iterator<Item = &Connection> {
        self.open.values()
    }

    /// How many connections are open now.
    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    /// The kernel's loss counter read `total` at monotonic time `to_ns`, having read less at
    /// `from_ns`: events were lost in between. Connections open now, and any connection whose
    /// events span that window (the pipeline may lag behind the kernel), may miss events.
    pub fn on_lost(&mut self, total: u64, from_ns: u64, to_ns: u64) {
        if total > self.lost {
            self.lost = total;
            for c in self.open.values_mut() {
                c.events_maybe_lost = true;
            }
            if self.loss_windows.len() >= LOSS_WINDOWS_KEPT {
                self.loss_windows.pop_front();
            }
            self.loss_windows.push_back((from_ns, to_ns));
        }
    }

    /// A connection already in `state` when the trace began: when its events come, its record
    /// says so (its beginning is not in the trace).
    /// `netns` is the inode number of the namespace it was seen in (0: unknown).
    pub fn seed(&mut self, netns: u32, local: SocketAddr, remote: SocketAddr, state: TcpState) {
        if self.seeds.len() < self.cfg.max_open {
            self.seeds.insert(tuple_key(netns, local, remote), state);
        } else {
            self.stats.seeds_dropped += 1;
        }
    }

    /// Takes one event; finished connections go to `out`.
    pub fn on_event(&mut self, ev: Event, out: &mut impl FnMut(Finished)) {
        self.stats.events += 1;
        self.flush_settled(ev.ts_ns, out);
        let state = ev.kind.state_after();
        if matches!(state, TcpState::TimeWait | TcpState::NewSynRecv)
            && !matches!(ev.kind, EventKind::State { .. })
        {
            // A timewait or request socket (a RST it sent): attach by tuple, it has no life of
            // its own here.
            self.attach_by_tuple(ev);
            return;
        }
        if ev.starts_connection() {
            if let Some(mut old) = self.open.remove(&ev.sk) {
                self.unindex(&old, Slot::Open(old.sk));
                old.end = RecordEnd::Superseded;
                self.emit(old, out);
            }
            // A closed life of this address settles on; trailing events are no longer its.
            self.settling_sk.remove(&ev.sk);
            self.open_new(ev, out);
        } else if let Some(c) = self.open.get_mut(&ev.sk).filter(|c| !c.is_reused_by(&ev)) {
            if let (EventKind::State { old, .. }, Some(last)) = (ev.kind, c.last_transition_state())
            {
                if old != last {
                    // A transition is missing between the two: events were lost.
                    c.events_maybe_lost = true;
                }
            }
            let tuple_before = c.has_tuple().then(|| c.key());
            c.push(ev);
            // The same socket may report a fuller 4-tuple than it did (see the module's notes):
            // it is then filed under that one, for its peer and its seed to find it.
            let retupled = c.take_fuller_tuple(&ev);
            let tuple_now = c.has_tuple().then(|| c.key());
            if retupled && !c.seen_from_start && c.state_at_start.is_none() {
                if let Some(t) = tuple_now {
                    c.state_at_start = self.seeds.remove(&t);
                }
            }
            // Filed anew only when the tuple changed or another held it: hashing a 4-tuple per
            // event is the dearest part of a busy trace's tracking.
            if tuple_before != tuple_now || self.unfiled.contains(&ev.sk) {
                if let Some(t) = tuple_before.filter(|&t| Some(t) != tuple_now) {
                    self.unindex_key(t, Slot::Open(ev.sk));
                }
                match tuple_now {
                    Some(t) => self.file(t, ev.sk),
                    None => {
                        self.unfiled.remove(&ev.sk);
                    }
                }
            }
        } else if self.open.contains_key(&ev.sk) {
            // Another connection on the same socket address: the old connection's end and the
            // new one's start were not seen (events lost).
            if let Some(mut old) = self.open.remove(&ev.sk) {
                self.unindex(&old, Slot::Open(old.sk));
                old.end = RecordEnd::Superseded;
                old.events_maybe_lost = true;
                self.emit(old, out);
            }
            self.open_new(ev, out);
            if let Some(c) = self.open.get_mut(&ev.sk) {
                c.events_maybe_lost = true;
            }
        } else if let Some(&id) = self.settling_sk.get(&ev.sk) {
            if matches!(ev.kind, EventKind::State { .. }) {
                // A state change after CLOSE that does not start a connection: the previous
                // life is over, this one was first seen mid-way.
                self.settling_sk.remove(&ev.sk);
                self.open_new(ev, out);
            } else {
                if let Some(c) = self.settling.get_mut(&id) {
                    c.push(ev);
                }
                return;
            }
        } else {
            self.open_new(ev, out);
        }
        if ev.kind.state_after() == TcpState::Close {
            self.unfiled.remove(&ev.sk);
            if self.open.contains_key(&ev.sk) && self.settling.len() >= self.cfg.max_open {
                self.cut_settling(out);
            }
            if let Some(mut c) = self.open.remove(&ev.sk) {
                c.end = RecordEnd::Closed;
                // An orphan that became a FIN_WAIT2 timewait socket while its peer, on this host,
                // is still open: the rest of its teardown is the peer's to show, so it waits
                // (bounded) to be judged with it, whatever the application's timing.
                let peer_open = c.has_tuple()
                    && matches!(self.by_tuple.get(&c.peer_key()), Some(Slot::Open(sk)) if self.open.contains_key(sk));
                let (queue, wait) = if peer_open && is_orphan_fin_wait2(&ev) {
                    (&mut self.orphan_queue, self.cfg.peer_wait_ns)
                } else {
                    (&mut self.settle_queue, self.cfg.settle_ns)
                };
                queue.push_back((ev.ts_ns.saturating_add(wait), c.id));
                if c.has_tuple() {
                    let slot = self.by_tuple.entry(c.key()).or_insert(Slot::Settling(c.id));
                    if *slot == Slot::Open(ev.sk) {
                        *slot = Slot::Settling(c.id);
                    }
                }
                self.settling_sk.insert(ev.sk, c.id);
                self.settling.insert(c.id, c);
            }
        }
    }

    /// Hands on connections that have settled by monotonic time `now_ns`.
    pub fn tick(&mut self, now_ns: u64, out: &mut impl FnMut(Finished)) {
        self.flush_settled(now_ns, out);
    }

    /// End of the trace: everything is handed on, open connections as [`RecordEnd::StillOpen`].
    pub fn finish(&mut self, out: &mut impl FnMut(Finished)) {
        self.flush_settled(u64::MAX, out);
        let mut rest: Vec<Connection> = self.open.drain().map(|(_, c)| c).collect();
        self.by_tuple.clear();
        self.unfiled.clear();
        rest.sort_by_key(|c| c.id);
        for c in rest {
            let peer = self.take_awaiting_peer(&c);
            out(Finished {
                conn: Arc::new(c),
                peer,
            });
        }
    }

    /// The closed end that waited for `c`, when their lives overlap (a 4-tuple can be reused).
    fn take_awaiting_peer(&mut self, c: &Connection) -> Option<Arc<Connection>> {
        if !c.has_tuple() {
            return None;
        }
        let key = c.peer_key();
        let overlaps = self
            .awaiting_peer
            .get(&key)
            .is_some_and(|(_, p)| p.first_ts() <= c.last_ts() && p.last_ts() >= c.first_ts());
        if overlaps {
            self.awaiting_peer.remove(&key).map(|(_, p)| p)
        } else {
            None
        }
    }

    fn open_new(&mut self, ev: Event, out: &mut impl FnMut(Finished)) {
        if self.open.len() >= self.cfg.max_open {
            // Evict the least recently active sixteenth of the table at once: bounded memory,
            // a cost per connection that stays constant, and every eviction counted.
            let mut ages: Vec<(u64, u64)> =
                self.open.iter().map(|(&sk, c)| (c.last_ts(), sk)).collect();
            let n = (ages.len() / 16).max(1);
            if n < ages.len() {
                ages.select_nth_unstable(n - 1);
            }
            ages.truncate(n);
            ages.sort_unstable();
            for (_, sk) in ages {
                if let Some(mut c) = self.open.remove(&sk) {
                    self.unindex(&c, Slot::Open(sk));
                    c.end = RecordEnd::Evicted;
                    self.stats.evicted += 1;
                    out(Finished {
                        conn: Arc::new(c),
                        peer: None,
                    });
                }
            }
        }
        let mut c = Connection::new(self.next_id, &ev);
        if !c.seen_from_start && !self.seeds.is_empty() {
            c.state_at_start = self.seeds.remove(&tuple_key(ev.netns, ev.local, ev.remote));
        }
        self.next_id += 1;
        self.stats.connections += 1;
        self.unfiled.remove(&c.sk);
        if c.has_tuple() {
            if let Some(Slot::Open(other)) = self.by_tuple.insert(c.key(), Slot::Open(c.sk)) {
                if other != c.sk && self.open.contains_key(&other) {
                    // Still open under the same 4-tuple (events were lost): it files itself
                    // again once this one is gone.
                    self.unfiled.insert(other);
                }
            }
        }
        self.open.insert(ev.sk, c);
    }

    /// Files the open connection at `sk` under `key`, unless another holds it: then it is
    /// tried again at the connection's next event.
    fn file(&mut self, key: TupleKey, sk: u64) {
        if *self.by_tuple.entry(key).or_insert(Slot::Open(sk)) == Slot::Open(sk) {
            self.unfiled.remove(&sk);
        } else {
            self.unfiled.insert(sk);
        }
    }

    fn attach_by_tuple(&mut self, ev: Event) {
        let attached = match self.by_tuple.get(&tuple_key(ev.netns, ev.local, ev.remote)) {
            Some(Slot::Open(sk)) => self.open.get_mut(sk),
            Some(Slot::Settling(id)) => self.settling.get_mut(id),
            None => None,
        };
        match attached {
            Some(c) => c.store(ev),
            None => self.stats.unattached += 1,
        }
    }

    /// Forgets the 4-tuple of a connection leaving `slot`, unless another holds it now.
    fn unindex(&mut self, c: &Connection, slot: Slot) {
        self.unindex_key(c.key(), slot);
    }

    /// Forgets `key` when `slot` holds it.
    fn unindex_key(&mut self, key: TupleKey, slot: Slot) {
        if let Entry::Occupied(e) = self.by_tuple.entry(key) {
            if *e.get() == slot {
                e.remove();
            }
        }
    }

    /// Takes a settling connection out of every index.
    fn take_settling(&mut self, id: u64) -> Option<Connection> {
        let c = self.settling.remove(&id)?;
        if self.settling_sk.get(&c.sk) == Some(&id) {
            self.settling_sk.remove(&c.sk);
        }
        self.unindex(&c, Slot::Settling(id));
        Some(c)
    }

    /// The table of settling connections is full: the one closed first is handed on now.
    fn cut_settling(&mut self, out: &mut impl FnMut(Finished)) {
        while let Some((_, id)) = self
            .settle_queue
            .pop_front()
            .or_else(|| self.orphan_queue.pop_front())
        {
            // Entries of connections handed on with their peer are gone already.
            if let Some(c) = self.take_settling(id) {
                self.stats.settle_cut += 1;
                self.emit(c, out);
                return;
            }
        }
    }

    fn flush_settled(&mut self, now_ns: u64, out: &mut impl FnMut(Finished)) {
        for orphans in [false, true] {
            loop {
                let queue = if orphans {
                    &mut self.orphan_queue
                } else {
                    &mut self.settle_queue
                };
                let Some(&(due, id)) = queue.front() else {
                    break;
                };
                if now_ns != u64::MAX && due > now_ns {
                    break;
                }
                queue.pop_front();
                // Gone already when it was handed on with its peer.
                if let Some(c) = self.take_settling(id) {
                    self.emit(c, out);
                }
            }
        }
    }

    /// Keeps a closed end whose peer is still open, for that peer's verdict (bounded in count
    /// and age: a peer that stays open longer is judged alone).
    fn await_peer(&mut self, conn: Arc<Connection>) {
        let now = conn.last_ts();
        if self.awaiting_peer.len() >= AWAITING_PEER_MAX {
            let before = self.awaiting_peer.len();
            // Amortized: one pass frees at least a quarter of the table.
            let horizon = now.saturating_sub(AWAITING_PEER_NS);
            self.awaiting_peer.retain(|_, (ts, _)| *ts >= horizon);
            if self.awaiting_peer.len() >= AWAITING_PEER_MAX {
                let mut ts: Vec<u64> = self.awaiting_peer.values().map(|(t, _)| *t).collect();
                let cut = ts.len() / 4;
                let (_, &mut oldest_kept, _) = ts.select_nth_unstable(cut);
                self.awaiting_peer.retain(|_, (t, _)| *t >= oldest_kept);
            }
            self.stats.peer_wait_evicted += (before - self.awaiting_peer.len()) as u64;
        }
        self.awaiting_peer.insert(conn.key(), (now, conn));
    }

    fn overlaps_loss(&self, c: &Connection) -> bool {
        let (first, last) = (c.first_ts(), c.last_ts());
        self.loss_windows
            .iter()
            .any(|&(from, to)| first <= to && last >= from)
    }

    /// Hands on a finished connection together with its peer: a settling peer goes with it
    /// (both ends are then done), an open one is copied.
    fn emit(&mut self, mut conn: Connection, out: &mut impl FnMut(Finished)) {
        if self.overlaps_loss(&conn) {
            conn.events_maybe_lost = true;
        }
        let slot = if conn.has_tuple() {
            self.by_tuple.get(&conn.peer_key()).copied()
        } else {
            None
        };
        let mut peer_open = None;
        let peer = match slot {
            Some(Slot::Settling(id)) => self.take_settling(id),
            Some(Slot::Open(sk)) => {
                // The peer is still open: a copy of it now, and this end is kept so that the
                // peer, when it finishes, is judged with it.
                peer_open = self.open.get(&sk).cloned();
                None
            }
            // The peer finished earlier (and was handed on then) and waited for this end.
            None => {
                if let Some(p) = self.take_awaiting_peer(&conn) {
                    out(Finished {
                        conn: Arc::new(conn),
                        peer: Some(p),
                    });
                    return;
                }
                None
            }
        };
        let mark = |mut p: Connection, t: &Tracker| {
            if t.overlaps_loss(&p) {
                p.events_maybe_lost = true;
            }
            p
        };
        if let Some(p) = peer_open {
            let p = mark(p, self);
            let conn = Arc::new(conn);
            if conn.end == RecordEnd::Closed {
                self.await_peer(conn.clone());
            }
            out(Finished {
                conn,
                peer: Some(Arc::new(p)),
            });
            return;
        }
        match peer.map(|p| mark(p, self)) {
            Some(p) if p.end == RecordEnd::Closed => {
                // Both ends are finished: hand on each, each knowing the other (shared).
                let (a, b) = (Arc::new(conn), Arc::new(p));
                let (first, second) = if a.id <= b.id { (a, b) } else { (b, a) };
                out(Finished {
                    conn: first.clone(),
                    peer: Some(second.clone()),
                });
                out(Finished {
                    conn: second,
                    peer: Some(first),
                });
            }
            peer => out(Finished {
                conn: Arc::new(conn),
                peer: peer.map(Arc::new),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{testing::ev, EventKind};

    fn run(events: &[Event]) -> Vec<Finished> {
        let mut t = Tracker::new(TrackerConfig::default());
        let mut out = Vec::new();
        for e in events {
            t.on_event(*e, &mut |f| out.push(f));
        }
        t.finish(&mut |f| out.push(f));
        out
    }

    use TcpState::*;
    const C: &str = "127.0.0.1:40000";
    const S: &str = "127.0.0.1:8080";
    const Z: &str = "0.0.0.0:0";

    #[test]
    fn groups_both_ends_and_pairs_them() {
        let events = [
            ev(1, 0xa, Close, SynSent, C, S),
            ev(2, 0xb, Listen, SynRecv, S, C),
            ev(3, 0xa, SynSent, Established, C, S),
            ev(4, 0xb, SynRecv, Established, S, C),
            ev(5, 0xa, Established, FinWait1, C, S),
            ev(6, 0xb, Established, CloseWait, S, C),
            ev(7, 0xa, FinWait1, FinWait2, C, S),
            ev(8, 0xb, CloseWait, LastAck, S, C),
            // The 4-tuple is zero at the last transitions.
            ev(9, 0xa, FinWait2, Close, Z, S),
            ev(10, 0xb, LastAck, Close, Z, C),
        ];
        let out = run(&events);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].conn.sk, 0xa);
        assert_eq!(out[0].conn.local, C.parse().unwrap());
        assert_eq!(out[0].conn.events.len(), 5);
        assert_eq!(out[0].conn.end, RecordEnd::Closed);
        assert!(out[0].conn.seen_from_start);
        assert_eq!(out[0].peer.as_ref().unwrap().sk, 0xb);
        assert_eq!(out[1].conn.sk, 0xb);
        assert_eq!(out[1].peer.as_ref().unwrap().sk, 0xa);
        assert_eq!(out[1].conn.process.unwrap().pid, 100);
    }

    /// `ev` in network namespace `netns`.
    fn ev_in(netns: u32, e: Event) -> Event {
        Event { netns, ..e }
    }

    /// One orderly close of client `c` and server `s` in namespace `ns`, from time `t`.
    fn close_in(ns: u32, t: u64, (c, s): (u64, u64), (cl, sv): (&str, &str)) -> Vec<Event> {
        [
            ev(t, c, Close, SynSent, cl, sv),
            ev(t + 1, s, Listen, SynRecv, sv, cl),
            ev(t + 2, c, SynSent, Established, cl, sv),
            ev(t + 3, s, SynRecv, Established, sv, cl),
            ev(t + 4, c, Established, FinWait1, cl, sv),
            ev(t + 5, s, Established, CloseWait, sv, cl),
            ev(t + 6, c, FinWait1, FinWait2, cl, sv),
            ev(t + 7, s, CloseWait, LastAck, sv, cl),
            ev(t + 8, c, FinWait2, Close, Z, sv),
            ev(t + 9, s, LastAck, Close, Z, cl),
        ]
        .into_iter()
        .map(|e| ev_in(ns, e))
        .collect()
    }

    #[test]
    fn the_same_loopback_tuple_in_two_namespaces_is_two_connections() {
        // Two containers' loopback connections on the same 4-tuple, one just after the other
        // (the first still settling): each end is paired with its own namespace's.
        let mut events = close_in(1, 100, (0xa, 0xb), (C, S));
        events.extend(close_in(2, 120, (0xc, 0xd), (C, S)));
        let out = run(&events);
        assert_eq!(out.len(), 4, "{out:#?}");
        for f in &out {
            let peer = f.peer.as_ref().unwrap_or_else(|| panic!("no peer: {f:#?}"));
            assert_eq!(peer.netns, f.conn.netns, "{f:#?}");
        }
    }

    #[test]
    fn ends_in_two_namespaces_over_veth_are_paired() {
        let (cl, sv) = ("10.0.0.1:40000", "10.0.0.2:80");
        let events: Vec<Event> = close_in(0, 100, (0xa, 0xb), (cl, sv))
            .into_iter()
            .map(|e| Event {
                netns: if e.sk == 0xa { 1 } else { 2 },
                ..e
            })
            .collect();
        let out = run(&events);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|f| f.peer.is_some()), "{out:#?}");
    }

    #[test]
    fn a_peer_that_closes_later_is_judged_with_the_end_that_waited() {
        let mut t = Tracker::new(TrackerConfig::default());
        let mut out = Vec::new();
        let sec = 1_000_000_000;
        for e in [
            ev(1, 0xa, Close, SynSent, C, S),
            ev(2, 0xb, Listen, SynRecv, S, C),
            ev(3, 0xa, SynSent, Established, C, S),
            ev(4, 0xb, SynRecv, Established, S, C),
            ev(5, 0xa, Established, FinWait1, C, S),
            ev(6, 0xb, Established, CloseWait, S, C),
            ev(7, 0xa, FinWait1, FinWait2, C, S),
            ev(8, 0xa, FinWait2, Close, Z, S),
        ] {
            t.on_event(e, &mut |f| out.push(f));
        }
        t.tick(8 + sec, &mut |f| out.push(f));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].peer.as_ref().unwrap().end, RecordEnd::StillOpen);
        // The server closes seconds later.
        for e in [
            ev(5 * sec, 0xb, CloseWait, LastAck, S, C),
            ev(5 * sec + 1, 0xb, LastAck, Close, Z, C),
        ] {
            t.on_event(e, &mut |f| out.push(f));
        }
        t.finish(&mut |f| out.push(f));
        assert_eq!(out.len(), 2, "{out:#?}");
        let server = &out[1];
        assert_eq!(server.conn.sk, 0xb);
        assert_eq!(server.peer.as_ref().unwrap().sk, 0xa);
        assert_eq!(server.peer.as_ref().unwrap().end, RecordEnd::Closed);
    }

    #[test]
    fn a_settling_end_whose_address_is_reused_still_meets_its_peer() {
        let mut t = Tracker::new(TrackerConfig::default());
        let mut out = Vec::new();
        let mut orphan_close = ev(8, 0xa, FinWait2, Close, Z, S);
        orphan_close.sock = Some(crate::decode::SockSnapshot {
            flags: teardown_common::sock_flag::DEAD,
            err: 0,
        });
        for e in [
            ev(1, 0xa, Close, SynSent, C, S),
            ev(2, 0xb, Listen, SynRecv, S, C),
            ev(3, 0xa, SynSent, Established, C, S),
            ev(4, 0xb, SynRecv, Established, S, C),
            ev(5, 0xa, Established, FinWait1, C, S),
            ev(6, 0xb, Established, CloseWait, S, C),
            ev(7, 0xa, FinWait1, FinWait2, C, S),
            orphan_close,
            // The freed socket's address is taken at once by another connection.
            ev(9, 0xa, Close, SynSent, "127.0.0.1:40007", "127.0.0.1:9999"),
            // The server closes 150 ms later.
            ev(150_000_000, 0xb, CloseWait, LastAck, S, C),
            ev(150_000_001, 0xb, LastAck, Close, Z, C),
        ] {
            t.on_event(e, &mut |f| out.push(f));
        }
        t.finish(&mut |f| out.push(f));
        let client = out.iter().find(|f| f.conn.local.port() == 40000).unwrap();
        let peer = client.peer.as_ref().unwrap();
        assert_eq!(peer.sk, 0xb);
        assert_eq!(
            peer.end,
            RecordEnd::Closed,
            "judged with the peer's whole teardown"
        );
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn socket_address_reuse_starts_a_new_connection() {
        let other = "127.0.0.1:40001";
        let events = [
            ev(1, 0xa, Close, SynSent, C, S),
            ev(2, 0xa, SynSent, Close, C, S),
            // Same address, reused by the next connect() at once.
            ev(3, 0xa, Close, SynSent, other, S),
            ev(4, 0xa, SynSent, Established, other, S),
        ];
        let out = run(&events);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].conn.events.len(), 2);
        assert_eq!(out[0].conn.end, RecordEnd::Closed);
        assert_eq!(out[1].conn.local, other.parse().unwrap());
        assert_eq!(out[1].conn.end, RecordEnd::StillOpen);
    }

    #[test]
    fn a_new_life_without_a_close_supersedes_the_old() {
        let events = [
            ev(1, 0xa, Close, SynSent, C, S),
            ev(2, 0xa, SynSent, Established, C, S),
            ev(3, 0xa, Close, SynSent, "127.0.0.1:40002", S),
        ];
        let out = run(&events);
        assert_eq!(out[0].conn.end, RecordEnd::Superseded);
        assert_eq!(out[1].conn.end, RecordEnd::StillOpen);
    }

    #[test]
    fn first_seen_mid_life_and_loss_are_marked() {
        let mut t = Tracker::new(TrackerConfig::default());
        let mut out = Vec::new();
        t.on_event(ev(1, 0xa, Established, FinWait1, C, S), &mut |f| {
            out.push(f)
        });
        t.on_lost(3, 0, 1);
        t.on_event(ev(2, 0xa, FinWait1, Close, C, S), &mut |f| out.push(f));
        t.finish(&mut |f| out.push(f));
        assert!(!out[0].conn.seen_from_start);
        assert!(out[0].conn.events_maybe_lost);
    }

    #[test]
    fn loss_behind_the_pipeline_marks_connections_that_span_it() {
        let mut t = Tracker::new(TrackerConfig::default());
        let mut out = Vec::new();
        // The counter moved between times 50 and 60, before the pipeline saw these events.
        t.on_lost(7, 50, 60);
        for e in [
            ev(55, 0xa, Close, SynSent, C, S),
            ev(70, 0xa, SynSent, Close, C, S),
            ev(80, 0xb, Close, SynSent, "127.0.0.1:40001", S),
            ev(90, 0xb, SynSent, Close, "127.0.0.1:40001", S),
        ] {
            t.on_event(e, &mut |f| out.push(f));
        }
        t.finish(&mut |f| out.push(f));
        assert!(out[0].conn.events_maybe_lost, "spans the loss window");
        assert!(!out[1].conn.events_maybe_lost, "began after it");
    }

    #[test]
    fn a_missing_transition_or_another_tuple_means_events_were_lost() {
        let other = "127.0.0.1:40009";
        let out = run(&[
            ev(1, 0xa, Close, SynSent, C, S),
            ev(2, 0xa, SynSent, Established, C, S),
            // ESTABLISHED -> FIN_WAIT1 is missing.
            ev(3, 0xa, FinWait1, FinWait2, C, S),
            // Another connection on the same address, its start lost.
            ev(4, 0xa, Established, CloseWait, other, S),
        ]);
        assert_eq!(out.len(), 2);
        assert!(out[0].conn.events_maybe_lost);
        assert_eq!(out[0].conn.end, RecordEnd::Superseded);
        assert_eq!(out[1].conn.local, other.parse().unwrap());
        assert!(out[1].conn.events_maybe_lost);
        assert!(!out[1].conn.seen_from_start);
    }

    /// A dual-stack server (listening on `[::]:9000`) and its IPv4 client: the client's end in
    /// IPv4 form, the server's IPv4-mapped.
    const C4: &str = "127.0.0.1:34888";
    const S4: &str = "127.0.0.1:9000";
    const MS: &str = "[::ffff:127.0.0.1]:9000";
    const MC: &str = "[::ffff:127.0.0.1]:34888";
    const Z6: &str = "[::]:0";

    /// One orderly close between the IPv4 client `0xa` and the dual-stack server `0xb`, the
    /// client first or the server first, in namespace 7. `server_tuples` gives the server's
    /// tuple at LISTEN -> SYN_RECV and at SYN_RECV -> ESTABLISHED; the mapped one follows.
    fn dual_stack_close(client_first: bool, server_tuples: [(&str, &str); 2]) -> Vec<Event> {
        let [(l1, r1), (l2, r2)] = server_tuples;
        let mut events = vec![
            ev(1, 0xa, Close, SynSent, C4, S4),
            ev(2, 0xb, Listen, SynRecv, l1, r1),
            ev(3, 0xa, SynSent, Established, C4, S4),
            ev(4, 0xb, SynRecv, Established, l2, r2),
        ];
        events.extend(if client_first {
            [
                ev(5, 0xa, Established, FinWait1, C4, S4),
                ev(6, 0xb, Established, CloseWait, MS, MC),
                ev(7, 0xa, FinWait1, FinWait2, C4, S4),
                ev(8, 0xb, CloseWait, LastAck, MS, MC),
                ev(9, 0xa, FinWait2, Close, Z, S4),
                ev(10, 0xb, LastAck, Close, Z6, MC),
            ]
        } else {
            [
                ev(5, 0xb, Established, FinWait1, MS, MC),
                ev(6, 0xa, Established, CloseWait, C4, S4),
                ev(7, 0xb, FinWait1, FinWait2, MS, MC),
                ev(8, 0xa, CloseWait, LastAck, C4, S4),
                ev(9, 0xb, FinWait2, Close, Z6, MC),
                ev(10, 0xa, LastAck, Close, Z, S4),
            ]
        });
        events.into_iter().map(|e| ev_in(7, e)).collect()
    }

    /// Both ends, each closed, seen whole, and naming the other.
    fn assert_one_paired_record_each(out: &[Finished]) {
        assert_eq!(out.len(), 2, "{out:#?}");
        for (sk, peer) in [(0xa, 0xb), (0xb, 0xa)] {
            let f = out.iter().find(|f| f.conn.sk == sk).unwrap();
            assert_eq!(f.conn.end, RecordEnd::Closed, "{f:#?}");
            assert!(f.conn.seen_from_start, "{f:#?}");
            assert!(!f.conn.events_maybe_lost, "{f:#?}");
            assert_eq!(f.conn.events.len(), 5, "{f:#?}");
            assert_eq!(f.peer.as_ref().map(|p| p.sk), Some(peer), "{f:#?}");
        }
    }

    #[test]
    fn a_dual_stack_server_end_pairs_with_its_ipv4_client() {
        // The mapped address throughout (as 6.18 reports it), in either closing order.
        for client_first in [true, false] {
            let out = run(&dual_stack_close(client_first, [(MS, MC), (MS, MC)]));
            assert_one_paired_record_each(&out);
            // Addresses are shown as the kernel reported them.
            let server = out.iter().find(|f| f.conn.sk == 0xb).unwrap();
            assert_eq!(server.conn.local, MS.parse().unwrap());
            assert_eq!(server.conn.remote, MC.parse().unwrap());
            let client = out.iter().find(|f| f.conn.sk == 0xa).unwrap();
            assert_eq!(client.conn.local, C4.parse().unwrap());
        }
    }

    #[test]
    fn a_socket_whose_tuple_fills_in_mid_life_stays_one_connection() {
        // As 6.1 and 6.12 report a dual-stack server's child socket: the listener's address
        // (local unspecified) until ESTABLISHED, then the mapped one, on the same socket with
        // its states continuing.
        for client_first in [true, false] {
            for early in [
                [("[::]:9000", Z6), ("[::]:9000", MC)],
                [("[::]:9000", "[::]:34888"), ("[::]:9000", "[::]:34888")],
            ] {
                let out = run(&dual_stack_close(client_first, early));
                assert_one_paired_record_each(&out);
                let server = out.iter().find(|f| f.conn.sk == 0xb).unwrap();
                // It takes the fuller tuple, as the kernel showed it.
                assert_eq!(server.conn.local, MS.parse().unwrap(), "{early:?}");
                assert_eq!(server.conn.remote, MC.parse().unwrap(), "{early:?}");
            }
        }
    }

    #[test]
    fn a_fuller_tuple_does_not_give_way_to_an_emptier_one() {
        let out = run(&[
            ev(1, 0xb, Listen, SynRecv, MS, MC),
            ev(2, 0xb, SynRecv, Established, "[::]:9000", MC),
            ev(3, 0xb, Established, CloseWait, MS, MC),
        ]);
        assert_eq!(out.len(), 1, "{out:#?}");
        assert_eq!(out[0].conn.local, MS.parse().unwrap());
        assert!(!out[0].conn.events_maybe_lost);
    }

    #[test]
    fn a_tuple_change_with_a_break_in_the_states_is_another_connection() {
        let out = run(&[
            ev(1, 0xb, Listen, SynRecv, "[::]:9000", "[::]:34888"),
            ev(2, 0xb, SynRecv, Established, "[::]:9000", "[::]:34888"),
            // Not from ESTABLISHED: this socket address lives another life now, whose start
            // (and the close of the first) were lost.
            ev(3, 0xb, FinWait1, FinWait2, MS, "[::ffff:127.0.0.1]:40000"),
        ]);
        assert_eq!(out.len(), 2, "{out:#?}");
        assert_eq!(out[0].conn.end, RecordEnd::Superseded);
        assert!(out[0].conn.events_maybe_lost);
        assert!(out[1].conn.events_maybe_lost);
        assert!(!out[1].conn.seen_from_start);
        assert_eq!(out[1].conn.local, MS.parse().unwrap());
    }

    #[test]
    fn a_second_complete_tuple_is_another_connection() {
        let mut t = Tracker::new(TrackerConfig::default());
        let mut out = Vec::new();
        let other = "127.0.0.1:40001";
        t.on_event(ev(1, 0xa, Close, SynSent, C, S), &mut |f| out.push(f));
        t.on_event(ev(2, 0xa, SynSent, Established, C, S), &mut |f| out.push(f));
        // The kernel lost events: the states happen to line up, the tuples cannot both be
        // this socket's.
        t.on_lost(1, 2, 3);
        t.on_event(ev(4, 0xa, Established, FinWait1, other, S), &mut |f| {
            out.push(f)
        });
        t.finish(&mut |f| out.push(f));
        assert_eq!(out.len(), 2, "{out:#?}");
        assert_eq!(out[0].conn.end, RecordEnd::Superseded);
        assert_eq!(out[1].conn.local, other.parse().unwrap());
        // The same before the kernel has reported the loss: it may come after these events.
        let out = run(&[
            ev(1, 0xa, Close, SynSent, C, S),
            ev(2, 0xa, SynSent, Established, C, S),
            ev(4, 0xa, Established, FinWait1, other, S),
        ]);
        assert_eq!(out.len(), 2, "{out:#?}");
        assert_eq!(out[0].conn.end, RecordEnd::Superseded);
        assert_eq!(out[1].conn.local, other.parse().unwrap());
    }

    #[test]
    fn a_seed_in_ipv4_form_marks_a_dual_stack_connection_seen_mid_life() {
        let mut t = Tracker::new(TrackerConfig::default());
        t.seed(0, S4.parse().unwrap(), C4.parse().unwrap(), CloseWait);
        let mut out = Vec::new();
        for e in [
            ev(1, 0xb, CloseWait, LastAck, MS, MC),
            ev(2, 0xb, LastAck, Close, Z6, MC),
        ] {
            t.on_event(e, &mut |f| out.push(f));
        }
        t.finish(&mut |f| out.push(f));
        assert_eq!(out[0].conn.state_at_start, Some(CloseWait));
    }

    #[test]
    fn trailing_reset_joins_the_closed_connection() {
        let mut rst = ev(3, 0xa, Close, Close, Z, S);
        rst.kind = EventKind::ResetSent { state: Close };
        let events = [
            ev(1, 0xa, Close, SynSent, C, S),
            ev(2, 0xa, SynSent, Established, C, S),
            ev(3, 0xa, Established, Close, C, S),
            rst,
        ];
        let out = run(&events);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].conn.events.len(), 4);
    }

    #[test]
    fn settled_connections_are_handed_on_after_the_settle_time() {
        let mut t = Tracker::new(TrackerConfig::default());
        let mut out = Vec::new();
        t.on_event(ev(1, 0xa, Close, SynSent, C, S), &mut |f| out.push(f));
        t.on_event(ev(2, 0xa, SynSent, Close, C, S), &mut |f| out.push(f));
        t.tick(2 + 100_000_000, &mut |f| out.push(f));
        assert!(out.is_empty(), "handed on before the settle time");
        t.tick(2 + 200_000_000, &mut |f| out.push(f));
        assert_eq!(out.len(), 1);
    }

    /// `n` retransmissions of `sk` in `state`, from time `t`, 1 ms apart.
    fn retransmits(sk: u64, state: TcpState, t: u64, n: u64) -> Vec<Event> {
        (0..n)
            .map(|i| {
                let mut e = ev(t + i * 1_000_000, sk, state, state, C, S);
                e.kind = EventKind::Retransmit { state };
                e
            })
            .collect()
    }

    #[test]
    fn repeats_in_a_state_are_folded_into_one_run_past_the_first_few() {
        let mut events = vec![
            ev(1, 0xa, Close, SynSent, C, S),
            ev(2, 0xa, SynSent, Established, C, S),
        ];
        let t = 10_000_000;
        events.extend(retransmits(0xa, Established, t, 5000));
        let mut rst = ev(9_000_000_000, 0xa, Established, Established, C, S);
        rst.kind = EventKind::ResetReceived { state: Established };
        events.push(rst);
        // A retransmission after the RST, in the same state: still the same run.
        events.extend(retransmits(0xa, Established, 9_100_000_000, 1));
        events.push(ev(9_200_000_000, 0xa, Established, Close, Z, S));
        let out = run(&events);
        let c = &out[0].conn;
        let counts: Vec<u64> = c.events.iter().map(Run::count).collect();
        // Two transitions, three retransmissions one by one, the run of the rest, the RST,
        // the close.
        assert_eq!(counts, [1, 1, 1, 1, 1, 4998, 1, 1], "{c:#?}");
        let folded = &c.events[5];
        assert_eq!(
            folded.first_ts,
            t + 3_000_000,
            "the run begins at the fourth"
        );
        assert_eq!(folded.ev.ts_ns, 9_100_000_000, "and ends at the last");
        assert_eq!(c.event_count(), events.len() as u64);
        assert_eq!(c.last_ts(), 9_200_000_000);
        assert_eq!(c.unstored, 0);
        // Another state, another run.
        let mut events = vec![
            ev(1, 0xb, Close, SynSent, C, S),
            ev(2, 0xb, SynSent, Established, C, S),
        ];
        events.extend(retransmits(0xb, Established, 10, 10));
        events.push(ev(20_000_000, 0xb, Established, FinWait1, C, S));
        events.extend(retransmits(0xb, FinWait1, 30_000_000, 10));
        let out = run(&events);
        let counts: Vec<u64> = out[0].conn.events.iter().map(Run::count).collect();
        assert_eq!(counts, [1, 1, 1, 1, 1, 7, 1, 1, 1, 1, 7]);
    }

    #[test]
    fn a_connection_stores_a_bounded_number_of_runs_and_counts_the_rest() {
        // Transitions that never repeat a (kind, state) run: each is a step of its own.
        let mut events = vec![
            ev(1, 0xa, Close, SynSent, C, S),
            ev(2, 0xa, SynSent, Established, C, S),
        ];
        for i in 0..200u64 {
            let (old, new) = if i % 2 == 0 {
                (Established, CloseWait)
            } else {
                (CloseWait, Established)
            };
            events.push(ev(10 + i, 0xa, old, new, C, S));
        }
        events.push(ev(1_000, 0xa, Established, Close, Z, S));
        let out = run(&events);
        let c = &out[0].conn;
        assert_eq!(c.events.len(), MAX_STEPS);
        assert_eq!(c.event_count(), events.len() as u64);
        assert_eq!(c.unstored, (events.len() - MAX_STEPS) as u64);
        assert_eq!(c.end, RecordEnd::Closed, "the close is still seen");
        assert_eq!(c.last_state(), Some(Close));
    }

    #[test]
    fn a_full_connection_keeps_its_state_changes_over_its_other_steps() {
        let mut events = vec![
            ev(1, 0xa, Close, SynSent, C, S),
            ev(2, 0xa, SynSent, Established, C, S),
        ];
        // Toggles, some followed by retransmissions (four steps each: three, then a run),
        // the last ones without: the table fills with a state change last.
        let mut t = 10;
        let mut state = Established;
        for i in 0..10 {
            let next = if state == Established {
                CloseWait
            } else {
                Established
            };
            events.push(ev(t, 0xa, state, next, C, S));
            state = next;
            if i < 5 {
                events.extend(retransmits(0xa, state, t + 1, 6));
            }
            t += 100_000_000;
        }
        // A retransmission, then the close, once every place is taken.
        events.extend(retransmits(0xa, state, t, 1));
        events.push(ev(t + 50_000_000, 0xa, state, Close, Z, S));
        let states = |evs: &mut dyn Iterator<Item = EventKind>| -> Vec<EventKind> {
            evs.filter(|k| matches!(k, EventKind::State { .. }))
                .collect()
        };
        let sent = states(&mut events.iter().map(|e| e.kind));
        let out = run(&events);
        let c = &out[0].conn;
        assert_eq!(c.events.len(), MAX_STEPS);
        assert_eq!(states(&mut c.events.iter().map(|r| r.ev.kind)), sent);
        assert!(c.unstored > 0);
        assert_eq!(c.event_count(), events.len() as u64);
        assert_eq!(c.last_state(), Some(Close));
    }

    /// The memory a tracked connection end costs at most, whatever its events: its record with
    /// every run taken, and its entries in the tables (open, by 4-tuple) with a hash table's
    /// worst load (a table just grown is half empty). The README states this bound.
    #[test]
    fn memory_per_connection_is_bounded_by_a_constant() {
        use std::mem::size_of;
        let record = size_of::<Connection>() + MAX_STEPS * size_of::<Run>();
        // Each table entry: key, value and one control byte; at worst twice that per entry.
        let open_entry = 2 * (size_of::<u64>() + size_of::<Connection>() + 1);
        let tuple_entry = 2 * (size_of::<TupleKey>() + size_of::<Slot>() + 1);
        let worst = record - size_of::<Connection>() + open_entry + tuple_entry;
        // The README's figure: 5,596 bytes on 64-bit Linux.
        assert!(worst <= 5_600, "{worst} bytes");
        // A connection end held open after its handshake (two events, the usual case of a
        // table full of open connections) stays within 1 KiB.
        let held = 2 * size_of::<Run>() + open_entry + tuple_entry;
        assert!(held <= 1024, "{held} bytes");
        // However long it lives: thousands of retransmissions leave it at a few runs.
        let mut events = vec![
            ev(1, 0xa, Close, SynSent, C, S),
            ev(2, 0xa, SynSent, Established, C, S),
        ];
        events.extend(retransmits(0xa, Established, 10, 100_000));
        let out = run(&events);
        assert_eq!(out[0].conn.events.len(), 2 + VERBATIM_REPEATS + 1);
        assert!(out[0].conn.events.capacity() <= MAX_STEPS);
    }

    #[test]
    fn other_tables_are_bounded_and_their_evictions_counted() {
        let mut t = Tracker::new(TrackerConfig {
            max_open: 4,
            ..Default::default()
        });
        for i in 0..6u16 {
            let l: SocketAddr = format!("127.0.0.1:{}", 41000 + i).parse().unwrap();
            t.seed(0, l, S.parse().unwrap(), CloseWait);
        }
        assert_eq!(t.stats().seeds_dropped, 2);
        // Six connections close within their settle time: the settling table holds four.
        let mut out = Vec::new();
        for i in 0..6u64 {
            let l = format!("127.0.0.1:{}", 40000 + i);
            t.on_event(ev(10 * i + 1, 0x10 + i, Close, SynSent, &l, S), &mut |f| {
                out.push(f)
            });
            t.on_event(ev(10 * i + 2, 0x10 + i, SynSent, Close, &l, S), &mut |f| {
                out.push(f)
            });
        }
        assert_eq!(t.stats().settle_cut, 2);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].conn.sk, 0x10, "the one closed first goes first");
        assert_eq!(t.settling.len(), 4);
        t.finish(&mut |f| out.push(f));
        assert_eq!(out.len(), 6);
    }

    #[test]
    fn table_is_bounded_and_evictions_counted() {
        let mut t = Tracker::new(TrackerConfig {
            max_open: 2,
            ..Default::default()
        });
        let mut out = Vec::new();
        for i in 0..3u64 {
            let l = format!("127.0.0.1:{}", 40000 + i);
            t.on_event(ev(i + 1, i + 1, Close, SynSent, &l, S), &mut |f| {
                out.push(f)
            });
        }
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].conn.end, RecordEnd::Evicted);
        assert_eq!(out[0].conn.sk, 1);
        assert_eq!(t.stats().evicted, 1);
    }
    #[test]
    fn a_tuple_held_by_its_previous_life_is_filed_once_that_life_left() {
        const MS: u64 = 1_000_000;
        const C0: &str = "127.0.0.1:0";
        let events = [
            // The previous life of the client's 4-tuple closes and settles (200 ms).
            ev(1, 0xa, Close, SynSent, C0, S),
            ev(2, 0xa, SynSent, Established, C, S),
            ev(3, 0xa, Established, Close, Z, S),
            // A new client on the same 4-tuple: its tuple is known only from ESTABLISHED,
            // while the previous life still holds the key.
            ev(10 * MS, 0xc, Close, SynSent, C0, S),
            ev(10 * MS + 1, 0xd, Listen, SynRecv, S, C),
            ev(11 * MS, 0xc, SynSent, Established, C, S),
            ev(11 * MS + 1, 0xd, SynRecv, Established, S, C),
            // Later (the previous life handed on by now): the server closes first.
            ev(300 * MS, 0xd, Established, FinWait1, S, C),
            ev(301 * MS, 0xc, Established, CloseWait, C, S),
            ev(302 * MS, 0xd, FinWait1, FinWait2, S, C),
            ev(303 * MS, 0xd, FinWait2, Close, Z, C),
            // The client's application closes a second later.
            ev(1300 * MS, 0xc, CloseWait, LastAck, C, S),
            ev(1301 * MS, 0xc, LastAck, Close, Z, S),
        ];
        let out = run(&events);
        let peers: Vec<(u64, Option<u64>)> = out
            .iter()
            .map(|f| (f.conn.sk, f.peer.as_ref().map(|p| p.sk)))
            .collect();
        assert!(peers.contains(&(0xd, Some(0xc))), "{peers:x?}");
        assert!(peers.contains(&(0xc, Some(0xd))), "{peers:x?}");
    }
}
