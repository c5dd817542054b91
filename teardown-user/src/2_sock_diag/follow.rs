//! What only a series of snapshots tells: when each timewait socket entered its state, whether
//! its timer restarted, how it left, the rate of entries, and how long closing full sockets have
//! been in their state.
//!
//! Timing rests on docs/close-sequence.md, fact 6: Linux holds TIME_WAIT for a fixed 60 s, and
//! sock_diag gives the time left, so `entered = now + remaining - 60 s`. The same timewait socket
//! keeps its cookie; if its entry time moves forward, its timer was restarted (the peer resent
//! its FIN). An orphaned FIN_WAIT2 timewait socket runs on `tcp_fin_timeout` instead, and becomes
//! TIME_WAIT (a new 60 s timer, same cookie) when the peer's FIN arrives.

use std::collections::{HashMap, HashSet, VecDeque};

use serde::Serialize;

use super::sysctl::TIMEWAIT_LEN_MS;
use super::{FourTuple, Snapshot, TcpState, TwFate, TwSubstate};

/// Entry-time movements smaller than this are clock and rounding noise, not restarts.
pub const RESTART_TOLERANCE_MS: u64 = 1_000;
/// How many recent exits and restarts are kept.
const RECENT_CAP: usize = 256;

/// One timewait socket as followed across polls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TwTrack {
    pub tuple: FourTuple,
    pub substate: TwSubstate,
    pub cookie: u64,
    /// When it entered its current sub-state (ms since the epoch), from its timer.
    pub entered_ms: u64,
    /// When its timer will fire, as of the last poll.
    pub expires_ms: u64,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    /// Timer restarts seen (the peer resent its FIN).
    pub restarts: u32,
    /// Whether it was a FIN_WAIT2 timewait socket that has since received the peer's FIN.
    pub was_fin_wait2: bool,
}

/// A timewait socket that left between two polls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TwExit {
    pub tuple: FourTuple,
    pub substate: TwSubstate,
    pub entered_ms: u64,
    /// It was last seen at this time...
    pub last_seen_ms: u64,
    /// ...and found gone at this one.
    pub gone_at_ms: u64,
    pub kind: TwFate,
    pub restarts: u32,
}

/// A timer restart seen between two polls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TwRestart {
    pub tuple: FourTuple,
    pub previous_entered_ms: u64,
    pub entered_ms: u64,
    pub seen_at_ms: u64,
}

/// A full closing socket as followed across polls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FullTrack {
    pub tuple: FourTuple,
    pub state: TcpState,
    pub inode: u64,
    pub uid: u32,
    pub cookie: u64,
    /// When it was first seen in its current state.
    pub since_ms: u64,
    /// True when its real age is at least `now - since_ms` rather than about that: it was
    /// already in that state at the first poll, or (CLOSE_WAIT) it was dated by the peer's last
    /// ACK.
    pub present_at_start: bool,
    pub recv_queue: u32,
    pub retransmits: Option<u8>,
}

impl FullTrack {
    pub fn age_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.since_ms)
    }
}

/// What changed at one poll.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PollDelta {
    /// Timewait sockets that entered since the previous poll.
    pub entered: usize,
    pub restarts: Vec<TwRestart>,
    pub exits: Vec<TwExit>,
}

/// Follows snapshots over time.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    fin_timeout_ms: u64,
    first_poll_ms: Option<u64>,
    last_poll_ms: Option<u64>,
    polls: u64,
    tw: HashMap<FourTuple, TwTrack>,
    full: HashMap<u64, FullTrack>,
    /// Entries observed after the first poll (count, over `first_poll..last_poll`).
    entries_observed: u64,
    exit_counts: HashMap<TwFate, u64>,
    restart_count: u64,
    recent_exits: VecDeque<TwExit>,
    recent_restarts: VecDeque<TwRestart>,
}

impl Tracker {
    /// A tracker for a namespace whose `tcp_fin_timeout` is `fin_timeout_s`.
    pub fn new(fin_timeout_s: u64) -> Self {
        Self {
            fin_timeout_ms: fin_timeout_s.saturating_mul(1000),
            ..Self::default()
        }
    }

    fn timer_len(&self, sub: TwSubstate) -> u64 {
        match sub {
            TwSubstate::TimeWait => TIMEWAIT_LEN_MS,
            // An orphan's FIN_WAIT2 timer is at most tcp_fin_timeout (less the time it already
            // spent in FIN_WAIT2 as a full socket, which is normally nothing).
            TwSubstate::FinWait2 => self.fin_timeout_ms.min(TIMEWAIT_LEN_MS),
        }
    }

    /// Takes in a snapshot; returns what changed since the previous one.
    pub fn observe(&mut self, snap: &Snapshot) -> PollDelta {
        let now = snap.taken_at_ms;
        let first = self.first_poll_ms.is_none();
        let mut delta = PollDelta::default();
        let mut seen: HashSet<FourTuple> = HashSet::with_capacity(snap.timewait.len());

        for t in &snap.timewait {
            seen.insert(t.tuple);
            let entered = (now + t.remaining_ms).saturating_sub(self.timer_len(t.substate));
            let expires = now + t.remaining_ms;
            let fresh = TwTrack {
                tuple: t.tuple,
                substate: t.substate,
                cookie: t.cookie,
                entered_ms: entered,
                expires_ms: expires,
                first_seen_ms: now,
                last_seen_ms: now,
                restarts: 0,
                was_fin_wait2: false,
            };
            match self.tw.get_mut(&t.tuple) {
                Some(old) if old.cookie == t.cookie => {
                    if old.substate == TwSubstate::FinWait2 && t.substate == TwSubstate::TimeWait {
                        // The peer's FIN arrived: the orphan entered TIME_WAIT.
                        old.was_fin_wait2 = true;
                        old.substate = TwSubstate::TimeWait;
                        old.entered_ms = entered;
                        if !first {
                            delta.entered += 1;
                        }
                    } else if entered > old.entered_ms + RESTART_TOLERANCE_MS {
                        let r = TwRestart {
                            tuple: t.tuple,
                            previous_entered_ms: old.entered_ms,
                            entered_ms: entered,
                            seen_at_ms: now,
                        };
                        old.entered_ms = entered;
                        old.restarts += 1;
                        delta.restarts.push(r);
                    }
                    old.expires_ms = expires;
                    old.last_seen_ms = now;
                }
                Some(old) => {
                    // Same 4-tuple, another socket: the old one was reused by a new connection,
                    // which has already closed in turn.
                    delta.exits.push(exit_of(old, now, TwFate::Reused));
                    *old = fresh;
                    delta.entered += 1;
                }
                None => {
                    if !first {
                        delta.entered += 1;
                    }
                    self.tw.insert(t.tuple, fresh);
                }
            }
        }

        // Timewait sockets gone since the previous poll. A new connection that reuses a
        // 4-tuple may be of the other family (an IPv4 tuple taken by a dual-stack socket, shown
        // IPv4-mapped): tuples are compared in their IPv4 form.
        let live: HashSet<FourTuple> = snap
            .open
            .iter()
            .map(|o| o.tuple.canonical())
            .chain(snap.closing.iter().map(|c| c.tuple.canonical()))
            .collect();
        let gone: Vec<FourTuple> = self
            .tw
            .keys()
            .filter(|k| !seen.contains(k))
            .copied()
            .collect();
        for k in gone {
            if let Some(old) = self.tw.remove(&k) {
                let kind = if live.contains(&k.canonical()) {
                    TwFate::Reused
                } else if now + RESTART_TOLERANCE_MS >= old.expires_ms {
                    TwFate::Expired
                } else {
                    TwFate::Killed
                };
                delta.exits.push(exit_of(&old, now, kind));
            }
        }

        // Full closing sockets, keyed by cookie (one per socket for its whole life).
        let mut present: HashSet<u64> = HashSet::with_capacity(snap.closing.len());
        for s in &snap.closing {
            present.insert(s.cookie);
            match self.full.get_mut(&s.cookie) {
                Some(old) if old.state == s.state => {
                    old.inode = s.inode;
                    old.recv_queue = s.recv_queue;
                    old.retransmits = s.retransmits;
                }
                _ => {
                    // A CLOSE_WAIT socket is dated by the peer's last ACK (its FIN, unless we
                    // sent since): a lower bound of its time in CLOSE_WAIT.
                    let dated = match (s.state, s.last_ack_recv_ms) {
                        (TcpState::CloseWait, Some(ago)) => Some(now.saturating_sub(ago)),
                        _ => None,
                    };
                    self.full.insert(
                        s.cookie,
                        FullTrack {
                            tuple: s.tuple,
                            state: s.state,
                            inode: s.inode,
                            uid: s.uid,
                            cookie: s.cookie,
                            since_ms: dated.unwrap_or(now),
                            present_at_start: first || dated.is_some(),
                            recv_queue: s.recv_queue,
                            retransmits: s.retransmits,
                        },
                    );
                }
            }
        }
        self.full.retain(|c, _| present.contains(c));

        if !first {
            self.entries_observed += delta.entered as u64;
        }
        for e in &delta.exits {
            *self.exit_counts.entry(e.kind).or_default() += 1;
            push_capped(&mut self.recent_exits, e.clone());
        }
        for r in &delta.restarts {
            self.restart_count += 1;
            push_capped(&mut self.recent_restarts, r.clone());
        }
        self.first_poll_ms.get_or_insert(now);
        self.last_poll_ms = Some(now);
        self.polls += 1;
        delta
    }

    /// Number of snapshots taken in.
    pub fn polls(&self) -> u64 {
        self.polls
    }

    /// The time span observed, in ms (0 after one poll).
    pub fn window_ms(&self) -> u64 {
        match (self.first_poll_ms, self.last_poll_ms) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => 0,
        }
    }

    /// Timewait sockets that entered after the first poll.
    pub fn entries_observed(&self) -> u64 {
        self.entries_observed
    }

    /// Timewait sockets currently followed.
    pub fn timewait(&self) -> impl Iterator<Item = &TwTrack> {
        self.tw.values()
    }

    /// Full closing sockets currently followed.
    pub fn full(&self) -> impl Iterator<Item = &FullTrack> {
        self.full.values()
    }

    /// Exits seen so far, by kind.
    pub fn exit_count(&self, kind: TwFate) -> u64 {
        self.exit_counts.get(&kind).copied().unwrap_or(0)
    }

    /// Timer restarts seen so far.
    pub fn restart_count(&self) -> u64 {
        self.restart_count
    }

    /// The latest exits, oldest first (at most 256).
    pub fn recent_exits(&self) -> impl Iterator<Item = &TwExit> {
        self.recent_exits.iter()
    }

    /// The latest restarts, oldest first (at most 256).
    pub fn recent_restarts(&self) -> impl Iterator<Item = &TwRestart> {
        self.recent_restarts.iter()
    }
}

fn exit_of(t: &TwTrack, now: u64, kind: TwFate) -> TwExit {
    TwExit {
        tuple: t.tuple,
        substate: t.substate,
        entered_ms: t.entered_ms,
        last_seen_ms: t.last_seen_ms,
        gone_at_ms: now,
        kind,
        restarts: t.restarts,
    }
}

fn push_capped<T>(q: &mut VecDeque<T>, v: T) {
    if q.len() >= RECENT_CAP {
        q.pop_front();
    }
    q.push_back(v);
}

/// The rate of TIME_WAIT entries and the count it implies once steady.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EntryRate {
    /// How it was measured: `"observed"` (entries counted between polls) or `"timer-estimate"`
    /// (from one snapshot: the TIME_WAIT sockets present entered during the last 60 s).
    pub method: &'static str,
    pub window_ms: u64,
    pub entries: u64,
    pub per_second: f64,
    /// `per_second * 60 s`: the TIME_WAIT count this rate settles at.
    pub steady_state: f64,
    /// Timewait sockets now.
    pub current: usize,
}

/// The entry rate: observed across polls when there were at least two, else estimated from the
/// timers of one snapshot (a lower bound: sockets that already left early are not counted).
pub fn entry_rate(tracker: &Tracker, snap: &Snapshot) -> EntryRate {
    let current = snap.timewait.len();
    let window = tracker.window_ms();
    if tracker.polls() >= 2 && window > 0 {
        let entries = tracker.entries_observed();
        let per_second = entries as f64 * 1000.0 / window as f64;
        EntryRate {
            method: "observed",
            window_ms: window,
            entries,
            per_second,
            steady_state: per_second * (TIMEWAIT_LEN_MS / 1000) as f64,
            current,
        }
    } else {
        let entries = snap
            .timewait
            .iter()
            .filter(|t| t.substate == TwSubstate::TimeWait)
            .count() as u64;
        let per_second = entries as f64 * 1000.0 / TIMEWAIT_LEN_MS as f64;
        EntryRate {
            method: "timer-estimate",
            window_ms: TIMEWAIT_LEN_MS,
            entries,
            per_second,
            steady_state: per_second * (TIMEWAIT_LEN_MS / 1000) as f64,
            current,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sock_diag::{FullSocket, OpenSocket, TimewaitSocket};

    fn tuple(lport: u16) -> FourTuple {
        FourTuple {
            local: format!("10.0.0.1:{lport}").parse().unwrap(),
            remote: "10.0.0.2:80".parse().unwrap(),
        }
    }

    fn tw(lport: u16, cookie: u64, sub: TwSubstate, remaining: u64) -> TimewaitSocket {
        TimewaitSocket {
            tuple: tuple(lport),
            substate: sub,
            remaining_ms: remaining,
            cookie,
        }
    }

    fn snap(at: u64, timewait: Vec<TimewaitSocket>) -> Snapshot {
        Snapshot {
            taken_at_ms: at,
            timewait,
            ..Snapshot::default()
        }
    }

    const T0: u64 = 1_700_000_000_000;

    #[test]
    fn entry_time_from_remaining_timer() {
        let mut t = Tracker::new(60);
        t.observe(&snap(T0, vec![tw(40000, 1, TwSubstate::TimeWait, 45_000)]));
        let s = t.timewait().next().unwrap();
        assert_eq!(s.entered_ms, T0 - 15_000);
        assert_eq!(s.expires_ms, T0 + 45_000);
    }

    #[test]
    fn timer_restart_is_a_forward_jump_of_entry_time_with_same_cookie() {
        let mut t = Tracker::new(60);
        t.observe(&snap(T0, vec![tw(40000, 1, TwSubstate::TimeWait, 45_000)]));
        // 10 s later the timer should read 35 s; it reads 58 s: restarted 2 s ago.
        let d = t.observe(&snap(
            T0 + 10_000,
            vec![tw(40000, 1, TwSubstate::TimeWait, 58_000)],
        ));
        assert_eq!(d.restarts.len(), 1);
        assert_eq!(d.restarts[0].previous_entered_ms, T0 - 15_000);
        assert_eq!(d.restarts[0].entered_ms, T0 + 8_000);
        assert_eq!(d.entered, 0);
        assert_eq!(t.restart_count(), 1);
        // A normal countdown is not a restart, small noise neither.
        let d = t.observe(&snap(
            T0 + 20_000,
            vec![tw(40000, 1, TwSubstate::TimeWait, 48_400)],
        ));
        assert!(d.restarts.is_empty());
    }

    #[test]
    fn expired_reused_and_killed_exits() {
        let mut t = Tracker::new(60);
        t.observe(&snap(
            T0,
            vec![
                tw(40000, 1, TwSubstate::TimeWait, 500),    // about to expire
                tw(40001, 2, TwSubstate::TimeWait, 50_000), // will be reused by an open socket
                tw(40002, 3, TwSubstate::TimeWait, 50_000), // will vanish early: killed
                tw(40003, 4, TwSubstate::TimeWait, 50_000), // reused, new one closed again
            ],
        ));
        let mut s = snap(T0 + 2_000, vec![tw(40003, 9, TwSubstate::TimeWait, 59_000)]);
        s.open.push(OpenSocket {
            tuple: tuple(40001),
            state: TcpState::Established,
            cookie: 77,
        });
        let d = t.observe(&s);
        let kind = |p: u16| d.exits.iter().find(|e| e.tuple == tuple(p)).unwrap().kind;
        assert_eq!(kind(40000), TwFate::Expired);
        assert_eq!(kind(40001), TwFate::Reused);
        assert_eq!(kind(40002), TwFate::Killed);
        assert_eq!(kind(40003), TwFate::Reused);
        assert_eq!(d.entered, 1);
        assert_eq!(t.exit_count(TwFate::Reused), 2);
        assert_eq!(t.recent_exits().count(), 4);
    }

    #[test]
    fn a_tuple_reused_by_a_dual_stack_socket_is_reused_not_killed() {
        let mut t = Tracker::new(60);
        t.observe(&snap(T0, vec![tw(40001, 2, TwSubstate::TimeWait, 50_000)]));
        // The new connection on the same IPv4 4-tuple is a dual-stack socket's: shown mapped.
        let mut s = snap(T0 + 2_000, vec![]);
        s.open.push(OpenSocket {
            tuple: FourTuple {
                local: "[::ffff:10.0.0.1]:40001".parse().unwrap(),
                remote: "[::ffff:10.0.0.2]:80".parse().unwrap(),
            },
            state: TcpState::Established,
            cookie: 77,
        });
        let d = t.observe(&s);
        assert_eq!(d.exits.len(), 1);
        assert_eq!(d.exits[0].kind, TwFate::Reused);
        // The exit keeps the tuple as sock_diag showed the timewait socket.
        assert_eq!(d.exits[0].tuple, tuple(40001));
    }

    #[test]
    fn fin_wait2_timewait_becoming_time_wait_is_an_entry_not_a_restart() {
        let mut t = Tracker::new(60);
        t.observe(&snap(T0, vec![tw(40000, 1, TwSubstate::FinWait2, 55_000)]));
        let d = t.observe(&snap(
            T0 + 5_000,
            vec![tw(40000, 1, TwSubstate::TimeWait, 59_900)],
        ));
        assert!(d.restarts.is_empty());
        assert_eq!(d.entered, 1);
        let s = t.timewait().next().unwrap();
        assert!(s.was_fin_wait2);
        assert_eq!(s.entered_ms, T0 + 4_900);
    }

    #[test]
    fn rate_observed_and_estimated() {
        let mut t = Tracker::new(60);
        let s0 = snap(T0, vec![tw(40000, 1, TwSubstate::TimeWait, 30_000)]);
        t.observe(&s0);
        let r = entry_rate(&t, &s0);
        assert_eq!(r.method, "timer-estimate");
        assert_eq!(r.entries, 1);
        let s1 = snap(
            T0 + 2_000,
            vec![
                tw(40000, 1, TwSubstate::TimeWait, 28_000),
                tw(40001, 2, TwSubstate::TimeWait, 59_500),
                tw(40002, 3, TwSubstate::TimeWait, 59_000),
                tw(40003, 4, TwSubstate::TimeWait, 58_500),
                tw(40004, 5, TwSubstate::TimeWait, 58_100),
            ],
        );
        t.observe(&s1);
        let r = entry_rate(&t, &s1);
        assert_eq!(r.method, "observed");
        assert_eq!(r.entries, 4);
        assert_eq!(r.per_second, 2.0);
        assert_eq!(r.steady_state, 120.0);
        assert_eq!(r.current, 5);
    }

    fn cw(cookie: u64, state: TcpState) -> FullSocket {
        FullSocket {
            tuple: tuple(5000),
            state,
            inode: cookie * 10,
            uid: 0,
            cookie,
            recv_queue: 0,
            send_queue: 0,
            retransmits: None,
            timer_ms: None,
            last_ack_recv_ms: None,
        }
    }

    #[test]
    fn close_wait_dated_by_last_ack_received() {
        let mut t = Tracker::new(60);
        let mut s = snap(T0, vec![]);
        let mut c = cw(1, TcpState::CloseWait);
        c.last_ack_recv_ms = Some(90_000);
        s.closing.push(c);
        t.observe(&s);
        let f = t.full().next().unwrap();
        assert_eq!(f.age_ms(T0), 90_000);
        assert!(f.present_at_start);
    }

    #[test]
    fn full_socket_age_since_first_seen_and_at_least_flag() {
        let mut t = Tracker::new(60);
        let mut s = snap(T0, vec![]);
        s.closing.push(cw(1, TcpState::CloseWait));
        t.observe(&s);
        let mut s = snap(T0 + 5_000, vec![]);
        s.closing.push(cw(1, TcpState::CloseWait));
        s.closing.push(cw(2, TcpState::CloseWait));
        t.observe(&s);
        let mut v: Vec<_> = t.full().cloned().collect();
        v.sort_by_key(|f| f.cookie);
        assert!(v[0].present_at_start);
        assert_eq!(v[0].age_ms(T0 + 5_000), 5_000);
        assert!(!v[1].present_at_start);
        assert_eq!(v[1].age_ms(T0 + 5_000), 0);
        // A state change restarts the clock; a vanished socket is forgotten.
        let mut s = snap(T0 + 6_000, vec![]);
        s.closing.push(cw(1, TcpState::LastAck));
        t.observe(&s);
        let v: Vec<_> = t.full().collect();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].state, TcpState::LastAck);
        assert_eq!(v[0].since_ms, T0 + 6_000);
        assert!(!v[0].present_at_start);
    }
}
