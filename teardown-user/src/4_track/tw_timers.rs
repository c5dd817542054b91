//! A timewait socket's life, from its timer's tracepoints, as the [`TwFact`]s the [`Joiner`]
//! joins to the connection it came from: the same vocabulary as sock_diag's, in every network
//! namespace, as it happens.
//!
//! What the kernel shows, and how it is read:
//! - a `start` of a timer not seen before: the socket entered its substate (TIME_WAIT, or an
//!   orphan's FIN_WAIT2) then;
//! - a `cancel` then a `start` of the same socket: its timer was re-armed (a resent FIN restarts
//!   TIME_WAIT; the peer's FIN turns a FIN_WAIT2 socket into TIME_WAIT, read from the substate);
//! - a `cancel` then an `expire`: it ran out;
//! - a `cancel` alone: it went early (a RST, a new connection on its 4-tuple, its namespace
//!   removed). A namespace being removed reads a zero reference count at the cancel; a new
//!   connection is one starting on the same 4-tuple around then; else it was killed.
//!
//! The kernel re-arms a pending timer silently when the new expiry falls in the same bucket of
//! its timer wheel (a 60 s timer's buckets are seconds wide): no event at all. The timer's
//! `expires`, read again at expiry or cancel, still tells: later than as armed means re-armed,
//! at `expires - 60 s`, exact to a jiffy. Jiffies become wall-clock time through the kernel's
//! tick rate, learnt from the first TIME_WAIT entry (armed for exactly 60 s of jiffies).
//!
//! [`Joiner`]: super::timewait::Joiner

use std::{collections::VecDeque, net::SocketAddr};

use teardown_common::addr::canonical;

use super::{
    timewait::{TwFact, TwWhat},
    SkMap, TupleMap,
};
use crate::{
    decode::{Event, EventKind, TcpState, TimerOp, TwSubstate, TwTimer},
    sock_diag::{sysctl::TIMEWAIT_LEN_MS, TwFate},
};

/// Timewait sockets followed at most (beyond, new ones are counted in [`TwTimers::overflow`]).
const LIVES_MAX: usize = 1 << 18;
/// How long a cancel waits for the start (re-arm) or the expiry that follows it when it is one:
/// the same kernel call, microseconds later; ample for a slow emulated machine.
const REARM_NS: u64 = 50_000_000;
/// How long an early end with no sign of a new connection on its 4-tuple waits for one (a
/// SYN that reached a TIME_WAIT server socket: the new connection shows a round trip later),
/// before it counts as killed.
const HOLD_NS: u64 = 1_000_000_000;
/// A connection starting on a timewait socket's 4-tuple this long before its cancel took it
/// over (a bound `connect()` is traced before it takes the 4-tuple).
const REUSE_BEFORE_NS: u64 = 1_000_000_000;
/// Connection starts remembered at most, for telling a reuse from a kill.
const STARTS_MAX: usize = 1 << 16;
/// The tick rates Linux is built with.
const HZ_CHOICES: [u64; 4] = [100, 250, 300, 1000];

/// A timewait socket's identity for the joiner: namespace and canonical 4-tuple.
type Key = (u32, SocketAddr, SocketAddr);

/// A cancel not yet explained.
#[derive(Clone, Copy, Debug)]
struct Cancel {
    ts_ns: u64,
    netns_gone: bool,
    substate: TwSubstate,
    expires: u64,
    jiffies: u64,
}

/// A timewait socket whose timer is followed.
#[derive(Clone, Copy, Debug)]
struct Life {
    netns: u32,
    local: SocketAddr,
    remote: SocketAddr,
    substate: TwSubstate,
    /// Monotonic time of its first entry: connections that started before are not its reuse.
    born_ns: u64,
    /// When it entered its substate (or its TIME_WAIT last restarted), ms since the epoch.
    entered_ms: u64,
    /// The expiry it was last seen armed with, in jiffies.
    expires: u64,
    restarts: u32,
    cancel: Option<Cancel>,
}

/// Turns timewait timer events into [`TwFact`]s. Bounded: at most [`LIVES_MAX`] sockets and
/// [`STARTS_MAX`] remembered connection starts; nothing allocates per event once the tables
/// have grown.
pub struct TwTimers {
    wall_offset_ns: i64,
    /// The kernel's tick rate, once learnt.
    hz: Option<u64>,
    lives: SkMap<Life>,
    /// (cancel time, socket) of cancels younger than [`REARM_NS`], in order.
    cancels: VecDeque<(u64, u64)>,
    /// The same for early ends waiting for a sign of a new connection ([`HOLD_NS`]).
    held: VecDeque<(u64, u64)>,
    /// The socket of each 4-tuple whose cancel is not explained yet.
    cancelled: TupleMap<Key, u64>,
    /// When a connection last started on each 4-tuple, and the same in order, to forget them.
    starts: TupleMap<Key, u64>,
    start_queue: VecDeque<(u64, Key)>,
    /// Timewait sockets not followed because the table was full.
    pub overflow: u64,
}

impl TwTimers {
    pub fn new(wall_offset_ns: i64) -> TwTimers {
        TwTimers {
            wall_offset_ns,
            hz: None,
            lives: SkMap::default(),
            cancels: VecDeque::new(),
            held: VecDeque::new(),
            cancelled: TupleMap::default(),
            starts: TupleMap::default(),
            start_queue: VecDeque::new(),
            overflow: 0,
        }
    }

    /// The kernel's tick rate, once a TIME_WAIT entry told it.
    pub fn hz(&self) -> Option<u64> {
        self.hz
    }

    fn wall_ms(&self, ts_ns: u64) -> u64 {
        let ms = (i128::from(ts_ns) + i128::from(self.wall_offset_ns)) / 1_000_000;
        u64::try_from(ms.max(0)).unwrap_or(u64::MAX)
    }

    /// A socket event: a connection starting on a 4-tuple may be taking over a timewait
    /// socket's. Also moves time on.
    pub fn on_sock(&mut self, ev: &Event, out: &mut impl FnMut(TwFact)) {
        self.flush(ev.ts_ns, out);
        let EventKind::State { old, new } = ev.kind else {
            return;
        };
        let starts = matches!(
            (old, new),
            (_, TcpState::SynSent)
                | (TcpState::SynSent, TcpState::Established)
                | (TcpState::Listen, TcpState::SynRecv)
                | (TcpState::SynRecv, TcpState::Established)
        );
        if !starts || !ev.has_tuple() {
            return;
        }
        let key = (ev.netns, canonical(ev.local), canonical(ev.remote));
        while let Some(&(at, k)) = self.start_queue.front() {
            if at.saturating_add(REUSE_BEFORE_NS + HOLD_NS) > ev.ts_ns
                && self.start_queue.len() < STARTS_MAX
            {
                break;
            }
            self.start_queue.pop_front();
            if self.starts.get(&k) == Some(&at) {
                self.starts.remove(&k);
            }
        }
        self.starts.insert(key, ev.ts_ns);
        self.start_queue.push_back((ev.ts_ns, key));
        // A new connection on the 4-tuple of a socket whose timer was just cancelled: that
        // socket is gone (no re-arm can follow), reused.
        if let Some(&tw) = self.cancelled.get(&key) {
            self.resolve(tw, out);
        }
    }

    /// One event of a timewait socket's timer.
    pub fn on_timer(&mut self, t: &TwTimer, out: &mut impl FnMut(TwFact)) {
        self.flush(t.ts_ns, out);
        let at = self.wall_ms(t.ts_ns);
        match t.op {
            TimerOp::Start => self.start(t, at, out),
            TimerOp::Cancel => {
                let Some(life) = self.lives.get_mut(&t.tw) else {
                    return;
                };
                life.cancel = Some(Cancel {
                    ts_ns: t.ts_ns,
                    netns_gone: t.netns_gone,
                    substate: t.substate,
                    expires: t.expires,
                    jiffies: t.jiffies,
                });
                let key = key_of(life);
                self.cancels.push_back((t.ts_ns, t.tw));
                self.cancelled.insert(key, t.tw);
            }
            TimerOp::Expire => {
                let Some(mut life) = self.lives.remove(&t.tw) else {
                    return;
                };
                self.forget_cancel(&life, t.tw);
                self.silent_rearm(&mut life, t.substate, t.expires, t.jiffies, at, out);
                out(left(&life, TwFate::Expired, at));
            }
        }
    }

    fn start(&mut self, t: &TwTimer, at: u64, out: &mut impl FnMut(TwFact)) {
        if t.substate == TwSubstate::TimeWait && self.hz.is_none() {
            self.hz = hz_of(t.expires.wrapping_sub(t.jiffies));
        }
        if let Some(life) = self.lives.get_mut(&t.tw) {
            if life.cancel.take().is_some() {
                // Re-armed, in the same call that cancelled it.
                let fact = rearmed(life, t.substate, at);
                life.expires = t.expires;
                let life = *life;
                self.forget_cancel(&life, t.tw);
                out(fact);
                return;
            }
            // A start with no cancel before it: the address is another socket's now (the
            // first one's end was not seen).
            self.lives.remove(&t.tw);
        }
        // Another socket whose timer was just cancelled had this 4-tuple: it is gone, before
        // this one's entry is told.
        let key = (t.netns, canonical(t.local), canonical(t.remote));
        if let Some(&old) = self.cancelled.get(&key) {
            self.resolve(old, out);
        }
        if self.lives.len() >= LIVES_MAX {
            self.overflow += 1;
            return;
        }
        let life = Life {
            netns: t.netns,
            local: t.local,
            remote: t.remote,
            substate: t.substate,
            born_ns: t.ts_ns,
            entered_ms: at,
            expires: t.expires,
            restarts: 0,
            cancel: None,
        };
        self.lives.insert(t.tw, life);
        out(fact(
            &life,
            at,
            TwWhat::Entered {
                state: t.substate,
                entered_ms: at,
            },
        ));
    }

    /// Monotonic time moved on to `now_ns`: cancels with no re-arm or expiry after them were
    /// their socket's early end; told at once when the namespace is going or a new connection
    /// took the 4-tuple, else after [`HOLD_NS`].
    pub fn flush(&mut self, now_ns: u64, out: &mut impl FnMut(TwFact)) {
        while let Some(&(ts, tw)) = self.cancels.front() {
            if ts.saturating_add(REARM_NS) > now_ns {
                break;
            }
            self.cancels.pop_front();
            let Some((life, c)) = self.pending(tw, ts) else {
                continue;
            };
            if self.fate(&life, &c) == TwFate::Killed {
                self.held.push_back((ts, tw));
            } else {
                self.resolve(tw, out);
            }
        }
        while let Some(&(ts, tw)) = self.held.front() {
            if ts.saturating_add(HOLD_NS) > now_ns {
                break;
            }
            self.held.pop_front();
            if self.pending(tw, ts).is_some() {
                self.resolve(tw, out);
            }
        }
    }

    /// The socket `tw` and its cancel made at `ts`, when that cancel is still unexplained.
    fn pending(&self, tw: u64, ts: u64) -> Option<(Life, Cancel)> {
        let life = self.lives.get(&tw)?;
        let c = life.cancel.filter(|c| c.ts_ns == ts)?;
        Some((*life, c))
    }

    /// How a socket whose timer was cancelled (and not re-armed) went.
    fn fate(&self, life: &Life, c: &Cancel) -> TwFate {
        if c.netns_gone {
            return TwFate::Purged;
        }
        // A connection that started on its 4-tuple after it was born, around the cancel.
        let reused = self.starts.get(&key_of(life)).is_some_and(|&s| {
            s > life.born_ns
                && s.saturating_add(REUSE_BEFORE_NS) >= c.ts_ns
                && s <= c.ts_ns.saturating_add(HOLD_NS)
        });
        if reused {
            TwFate::Reused
        } else {
            TwFate::Killed
        }
    }

    /// Tells the early end of `tw`, whose timer was cancelled.
    fn resolve(&mut self, tw: u64, out: &mut impl FnMut(TwFact)) {
        let Some(mut life) = self.lives.remove(&tw) else {
            return;
        };
        self.forget_cancel(&life, tw);
        let Some(c) = life.cancel else {
            return;
        };
        let at = self.wall_ms(c.ts_ns);
        let how = self.fate(&life, &c);
        self.silent_rearm(&mut life, c.substate, c.expires, c.jiffies, at, out);
        out(left(&life, how, at));
    }

    fn forget_cancel(&mut self, life: &Life, tw: u64) {
        let key = key_of(life);
        if self.cancelled.get(&key) == Some(&tw) {
            self.cancelled.remove(&key);
        }
    }

    /// The trace ends: every cancel still held is an early end.
    pub fn finish(&mut self, out: &mut impl FnMut(TwFact)) {
        self.flush(u64::MAX, out);
    }

    /// What the timer read at its end tells of re-arms that left no event: the peer's FIN
    /// reaching a FIN_WAIT2 socket (its substate now reads TIME_WAIT), a TIME_WAIT restarted
    /// (its expiry now later than as armed).
    fn silent_rearm(
        &self,
        life: &mut Life,
        substate: TwSubstate,
        expires: u64,
        jiffies: u64,
        at: u64,
        out: &mut impl FnMut(TwFact),
    ) {
        let later = (expires.wrapping_sub(life.expires) as i64) > 0;
        let to_time_wait =
            life.substate == TwSubstate::FinWait2 && substate == TwSubstate::TimeWait;
        if !later && !to_time_wait {
            return;
        }
        // When: the new expiry less TIME_WAIT's length, back from now in jiffies.
        let when = self
            .hz
            .filter(|_| substate == TwSubstate::TimeWait)
            .and_then(|hz| {
                let armed_at = expires.checked_sub(TIMEWAIT_LEN_MS * hz / 1000)?;
                let ago_ms = jiffies.checked_sub(armed_at)? * 1000 / hz;
                at.checked_sub(ago_ms)
            })
            .unwrap_or(at);
        let fact_ = rearmed(life, substate, when);
        life.expires = expires;
        out(fact_);
    }
}

/// The fact of a re-arm at `when` into `substate`, applied to `life`.
fn rearmed(life: &mut Life, substate: TwSubstate, when: u64) -> TwFact {
    let what = if life.substate == TwSubstate::TimeWait {
        life.restarts += 1;
        TwWhat::Restarted {
            previous_entered_ms: life.entered_ms,
            entered_ms: when,
        }
    } else {
        TwWhat::Entered {
            state: substate,
            entered_ms: when,
        }
    };
    life.substate = substate;
    life.entered_ms = when;
    fact(life, when, what)
}

fn key_of(life: &Life) -> Key {
    (life.netns, canonical(life.local), canonical(life.remote))
}

fn left(life: &Life, how: TwFate, at: u64) -> TwFact {
    fact(
        life,
        at,
        TwWhat::Left {
            how,
            entered_ms: life.entered_ms,
            restarts: life.restarts,
        },
    )
}

fn fact(life: &Life, at_ms: u64, what: TwWhat) -> TwFact {
    TwFact {
        netns: life.netns,
        local: life.local,
        remote: life.remote,
        at_ms,
        what,
    }
}

/// The tick rate for a TIME_WAIT timer armed `jiffies` ahead (60 s), when it is one of Linux's.
fn hz_of(jiffies: u64) -> Option<u64> {
    let secs = TIMEWAIT_LEN_MS / 1000;
    let measured = jiffies as f64 / secs as f64;
    HZ_CHOICES
        .into_iter()
        .find(|&hz| (measured - hz as f64).abs() <= hz as f64 * 0.02)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Comm;

    const HZ: u64 = 250;
    /// Jiffies at monotonic time 0.
    const J0: u64 = 4_294_000_000;
    const TW: u64 = 0xffff_8880_0000_1000;

    fn jiffies(ts_ns: u64) -> u64 {
        J0 + ts_ns * HZ / 1_000_000_000
    }

    fn timer(ts_ns: u64, op: TimerOp, substate: TwSubstate, expires: u64) -> TwTimer {
        TwTimer {
            ts_ns,
            tw: TW,
            op,
            substate,
            expires,
            jiffies: jiffies(ts_ns),
            local: "127.0.0.1:40000".parse().unwrap(),
            remote: "127.0.0.1:80".parse().unwrap(),
            netns: 7,
            netns_gone: false,
        }
    }

    /// A TIME_WAIT entry at `ts_ns` (a 60 s timer).
    fn entry(ts_ns: u64) -> TwTimer {
        let expires = jiffies(ts_ns) + 60 * HZ;
        timer(ts_ns, TimerOp::Start, TwSubstate::TimeWait, expires)
    }

    fn run(t: &mut TwTimers, events: &[TwTimer]) -> Vec<TwWhat> {
        let mut out = Vec::new();
        for e in events {
            t.on_timer(e, &mut |f| out.push(f.what));
        }
        t.finish(&mut |f| out.push(f.what));
        out
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn entry_then_expiry() {
        let mut t = TwTimers::new(0);
        let e = entry(S);
        let out = run(
            &mut t,
            &[
                e,
                timer(61 * S, TimerOp::Cancel, TwSubstate::TimeWait, e.expires),
                timer(61 * S, TimerOp::Expire, TwSubstate::TimeWait, e.expires),
            ],
        );
        assert_eq!(t.hz(), Some(HZ));
        assert_eq!(
            out,
            [
                TwWhat::Entered {
                    state: TwSubstate::TimeWait,
                    entered_ms: 1_000
                },
                TwWhat::Left {
                    how: TwFate::Expired,
                    entered_ms: 1_000,
                    restarts: 0
                },
            ]
        );
    }

    #[test]
    fn a_silent_restart_is_read_from_the_expiry() {
        let mut t = TwTimers::new(0);
        let e = entry(S);
        // Restarted at 1.5 s: no event, only the later expiry, seen when it is cancelled.
        let restarted = jiffies(S + S / 2) + 60 * HZ;
        let out = run(
            &mut t,
            &[
                e,
                timer(3 * S, TimerOp::Cancel, TwSubstate::TimeWait, restarted),
            ],
        );
        assert_eq!(
            out,
            [
                TwWhat::Entered {
                    state: TwSubstate::TimeWait,
                    entered_ms: 1_000
                },
                TwWhat::Restarted {
                    previous_entered_ms: 1_000,
                    entered_ms: 1_500
                },
                TwWhat::Left {
                    how: TwFate::Killed,
                    entered_ms: 1_500,
                    restarts: 1
                },
            ]
        );
    }

    #[test]
    fn cancel_then_start_is_a_rearm() {
        let mut t = TwTimers::new(0);
        let fw2 = timer(S, TimerOp::Start, TwSubstate::FinWait2, jiffies(S) + HZ);
        let tw_expires = jiffies(S + S / 4) + 60 * HZ;
        let out = run(
            &mut t,
            &[
                fw2,
                timer(
                    S + S / 4,
                    TimerOp::Cancel,
                    TwSubstate::TimeWait,
                    fw2.expires,
                ),
                timer(S + S / 4, TimerOp::Start, TwSubstate::TimeWait, tw_expires),
                timer(2 * S, TimerOp::Cancel, TwSubstate::TimeWait, tw_expires),
                timer(2 * S, TimerOp::Start, TwSubstate::TimeWait, tw_expires + HZ),
                timer(
                    70 * S,
                    TimerOp::Cancel,
                    TwSubstate::TimeWait,
                    tw_expires + HZ,
                ),
                timer(
                    70 * S,
                    TimerOp::Expire,
                    TwSubstate::TimeWait,
                    tw_expires + HZ,
                ),
            ],
        );
        assert_eq!(
            out,
            [
                TwWhat::Entered {
                    state: TwSubstate::FinWait2,
                    entered_ms: 1_000
                },
                TwWhat::Entered {
                    state: TwSubstate::TimeWait,
                    entered_ms: 1_250
                },
                TwWhat::Restarted {
                    previous_entered_ms: 1_250,
                    entered_ms: 2_000
                },
                TwWhat::Left {
                    how: TwFate::Expired,
                    entered_ms: 2_000,
                    restarts: 1
                },
            ]
        );
    }

    #[test]
    fn a_fin_wait2_socket_that_got_the_fin_silently_says_so_at_its_end() {
        let mut t = TwTimers::new(0);
        let fw2 = timer(
            S,
            TimerOp::Start,
            TwSubstate::FinWait2,
            jiffies(S) + 60 * HZ,
        );
        let out = run(
            &mut t,
            &[
                fw2,
                timer(61 * S, TimerOp::Expire, TwSubstate::TimeWait, fw2.expires),
            ],
        );
        assert!(matches!(
            out[1],
            TwWhat::Entered {
                state: TwSubstate::TimeWait,
                ..
            }
        ));
        assert!(matches!(
            out[2],
            TwWhat::Left {
                how: TwFate::Expired,
                restarts: 0,
                ..
            }
        ));
    }

    #[test]
    fn a_cancel_is_a_reuse_when_a_connection_starts_on_the_four_tuple() {
        let e = entry(S);
        let cancel = timer(2 * S, TimerOp::Cancel, TwSubstate::TimeWait, e.expires);
        let mut syn = crate::decode::testing::ev(
            2 * S - 1_000,
            0xbeef,
            TcpState::Close,
            TcpState::SynSent,
            "127.0.0.1:40000",
            "127.0.0.1:80",
        );
        syn.netns = 7;
        syn.comm = Comm::new("client");
        for (start, how) in [(Some(syn), TwFate::Reused), (None, TwFate::Killed)] {
            let mut t = TwTimers::new(0);
            let mut out = Vec::new();
            t.on_timer(&e, &mut |f| out.push(f.what));
            if let Some(s) = &start {
                t.on_sock(s, &mut |f| out.push(f.what));
            }
            t.on_timer(&cancel, &mut |f| out.push(f.what));
            assert_eq!(out.len(), 1, "held: a re-arm may follow");
            t.flush(2 * S + HOLD_NS, &mut |f| out.push(f.what));
            assert!(
                matches!(out[1], TwWhat::Left { how: h, .. } if h == how),
                "{out:?}"
            );
        }
    }

    #[test]
    fn the_connection_that_made_the_socket_is_not_its_reuse() {
        let mut t = TwTimers::new(0);
        let mut out = Vec::new();
        let mut est = crate::decode::testing::ev(
            S / 2,
            0xbeef,
            TcpState::SynSent,
            TcpState::Established,
            "127.0.0.1:40000",
            "127.0.0.1:80",
        );
        est.netns = 7;
        t.on_sock(&est, &mut |f| out.push(f.what));
        let e = entry(S);
        t.on_timer(&e, &mut |f| out.push(f.what));
        let cancel = timer(S + S / 10, TimerOp::Cancel, TwSubstate::TimeWait, e.expires);
        t.on_timer(&cancel, &mut |f| out.push(f.what));
        t.flush(S + S / 10 + REARM_NS, &mut |f| out.push(f.what));
        assert_eq!(out.len(), 1, "held for a sign of a new connection: {out:?}");
        t.flush(S + S / 10 + HOLD_NS, &mut |f| out.push(f.what));
        assert!(
            matches!(
                out[1],
                TwWhat::Left {
                    how: TwFate::Killed,
                    ..
                }
            ),
            "{out:?}"
        );
    }

    #[test]
    fn a_new_socket_on_the_four_tuple_ends_the_cancelled_one_first() {
        let mut t = TwTimers::new(0);
        let mut out = Vec::new();
        let e = entry(S);
        t.on_timer(&e, &mut |f| out.push(f));
        let mut syn = crate::decode::testing::ev(
            2 * S,
            0xbeef,
            TcpState::Close,
            TcpState::SynSent,
            "127.0.0.1:40000",
            "127.0.0.1:80",
        );
        syn.netns = 7;
        t.on_sock(&syn, &mut |f| out.push(f));
        t.on_timer(
            &timer(2 * S + 1, TimerOp::Cancel, TwSubstate::TimeWait, e.expires),
            &mut |f| out.push(f),
        );
        // The new connection closes at once and its own timewait socket enters TIME_WAIT.
        let mut second = entry(2 * S + 1_000);
        second.tw = TW + 0x800;
        t.on_timer(&second, &mut |f| out.push(f));
        let whats: Vec<_> = out.iter().map(|f| f.what.clone()).collect();
        assert!(
            matches!(
                whats[..],
                [
                    TwWhat::Entered { .. },
                    TwWhat::Left {
                        how: TwFate::Reused,
                        ..
                    },
                    TwWhat::Entered { .. }
                ]
            ),
            "{whats:?}"
        );
    }

    #[test]
    fn a_cancel_in_a_namespace_being_removed_is_a_purge() {
        let mut t = TwTimers::new(0);
        let e = entry(S);
        let mut cancel = timer(2 * S, TimerOp::Cancel, TwSubstate::TimeWait, e.expires);
        cancel.netns_gone = true;
        let out = run(&mut t, &[e, cancel]);
        assert!(
            matches!(
                out[1],
                TwWhat::Left {
                    how: TwFate::Purged,
                    ..
                }
            ),
            "{out:?}"
        );
    }

    #[test]
    fn the_table_is_bounded() {
        let mut t = TwTimers::new(0);
        let mut out = 0;
        for i in 0..(LIVES_MAX as u64 + 3) {
            let mut e = entry(S);
            e.tw = i;
            t.on_timer(&e, &mut |_| out += 1);
        }
        assert_eq!(out, LIVES_MAX);
        assert_eq!(t.overflow, 3);
    }

    #[test]
    fn tick_rates_are_recognised() {
        assert_eq!(hz_of(60 * 250 - 1), Some(250));
        assert_eq!(hz_of(60 * 1000), Some(1000));
        assert_eq!(hz_of(60 * 100 + 2), Some(100));
        assert_eq!(hz_of(60 * 700), None);
    }
}
