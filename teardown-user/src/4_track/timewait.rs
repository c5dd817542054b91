//! Joins what sock_diag sees of timewait sockets to the traced connections they came from.
//!
//! A socket that enters TIME_WAIT is replaced by a timewait socket, and the tracepoint sees no
//! more of it (docs/close-sequence.md, facts 1, 2 and 6). sock_diag does: its timer tells when it
//! entered (Linux holds TIME_WAIT 60 s, so entry = now + remaining - 60 s), a jump of that entry
//! time tells that the peer resent its FIN, and its disappearance tells how it left. A
//! [`crate::sock_diag::watch::TwWatcher`] polls that on its own thread and turns it into [`TwFact`]s; the pipeline's
//! [`Joiner`] matches them, by 4-tuple, to the connections it reported.

use std::net::SocketAddr;

use super::TupleMap;
use serde::Serialize;
use teardown_common::addr::canonical;

pub use crate::sock_diag::watch::{Closing, TwFact, TwWhat};

/// A fact about a reported connection's timewait socket, ready for the sinks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TimewaitNote {
    /// The connection it continues.
    pub id: u64,
    /// That connection conformed (an output that left it out leaves this out too).
    #[serde(skip)]
    pub of_conforming: bool,
    /// The fact came from the kernel's timer events, not from sock_diag.
    #[serde(skip)]
    pub from_kernel: bool,
    #[serde(flatten)]
    pub fact: TwFact,
}

/// A reported connection whose timewait socket is followed.
#[derive(Clone, Copy, Debug)]
struct Followed {
    id: u64,
    /// When it was reported, or its timewait socket first seen.
    since: u64,
    conforming: bool,
}

/// How long a reported connection waits for its timewait socket's facts: its TIME_WAIT (60 s)
/// plus a FIN_WAIT2 before it (tcp_fin_timeout, 60 s by default), plus poll slack.
const FOLLOW_MS: u64 = 130_000;
/// Connections followed at most (beyond, the oldest are forgotten).
const FOLLOW_MAX: usize = 1 << 18;
/// How long a reported connection waits for sock_diag to show its timewait socket before it is
/// no longer followed (the socket may live in another network namespace, out of sight): a few
/// polls.
const CONFIRM_MS: u64 = 5_000;

/// Facts kept for a connection not reported yet (the poll may see its timewait socket before
/// the connection has settled), at most, and for how long.
const PENDING_MAX: usize = 262_144;
const PENDING_MS: u64 = 5_000;

/// A timewait socket's identity: network namespace (0 when namespaces are not told apart)
/// and 4-tuple, IPv4-mapped addresses as their IPv4 form (as the tracker keys connections).
type Key = (u32, SocketAddr, SocketAddr);

/// Matches timewait facts to reported connections.
#[derive(Default)]
pub struct Joiner {
    /// Connections whose timewait socket sock_diag has shown: followed until it leaves.
    following: TupleMap<Key, Followed>,
    /// Connections just reported, waiting for sock_diag to show their timewait socket.
    unconfirmed: TupleMap<Key, Followed>,
    /// (reported at, key) in order, to forget the unconfirmed without scanning.
    unconfirmed_queue: std::collections::VecDeque<(u64, Key)>,
    pending: TupleMap<Key, Vec<TwFact>>,
    /// Connections and facts both carry their network namespace: match on it too.
    by_netns: bool,
    /// With `by_netns`, the only namespaces facts can come from (None: any).
    polled: Option<Vec<u32>>,
    /// With `by_netns`: per namespace, when a connection of it was last followed.
    last_follow_ms: rustc_hash::FxHashMap<u32, u64>,
    /// Timewait sockets not followed, or their facts dropped, because a table was full.
    pub dropped: u64,
}

impl Joiner {
    /// A joiner that matches on the network namespace too, when both the traced connections
    /// and the facts carry it (events read with BTF; facts from this version on).
    pub fn new(by_netns: bool) -> Joiner {
        Joiner {
            by_netns,
            ..Joiner::default()
        }
    }

    /// Facts will come from these namespaces only (those sock_diag polls): connections of
    /// others are not followed. Used only when matching on namespaces.
    pub fn only_netns(&mut self, netns: Vec<u32>) {
        self.polled = Some(netns);
    }

    /// The namespaces whose timewait sockets a connection reported by `now_ms` may still be
    /// waiting for, or None when every namespace's may be (connections carry no namespace).
    /// sock_diag need not walk the others': on a host with many timewait sockets, walking them
    /// every second costs more than judging the connections that made them.
    pub fn wanted_netns(&self, now_ms: u64) -> Option<Vec<u32>> {
        if !self.by_netns {
            return None;
        }
        Some(
            self.last_follow_ms
                .iter()
                .filter(|&(_, &at)| at.saturating_add(FOLLOW_MS) >= now_ms)
                .map(|(&ns, _)| ns)
                .collect(),
        )
    }

    fn key(&self, netns: u32, local: SocketAddr, remote: SocketAddr) -> Key {
        let (local, remote) = (canonical(local), canonical(remote));
        (if self.by_netns { netns } else { 0 }, local, remote)
    }

    /// Follows connection `id` of namespace `netns` (reported at `now_ms`; `conforming`: its
    /// verdict), which left a timewait socket behind; returns the notes of facts seen before
    /// it was reported.
    pub fn follow(
        &mut self,
        id: u64,
        conforming: bool,
        netns: u32,
        local: SocketAddr,
        remote: SocketAddr,
        now_ms: u64,
    ) -> Vec<TimewaitNote> {
        if self.by_netns && self.polled.as_ref().is_some_and(|p| !p.contains(&netns)) {
            return Vec::new();
        }
        // Forget connections whose timewait socket never showed (out of sight, or gone).
        while let Some(&(since, key)) = self.unconfirmed_queue.front() {
            if since.saturating_add(CONFIRM_MS) > now_ms
                && self.unconfirmed_queue.len() < FOLLOW_MAX
            {
                break;
            }
            self.unconfirmed_queue.pop_front();
            if self.unconfirmed.get(&key).is_some_and(|f| f.since == since) {
                self.unconfirmed.remove(&key);
            }
        }
        if self.by_netns {
            self.last_follow_ms.insert(netns, now_ms);
        }
        let key = self.key(netns, local, remote);
        self.unconfirmed.insert(
            key,
            Followed {
                id,
                since: now_ms,
                conforming,
            },
        );
        self.unconfirmed_queue.push_back((now_ms, key));
        let early = self.pending.remove(&key).unwrap_or_default();
        early
            .into_iter()
            .filter(|f| f.at_ms.saturating_add(PENDING_MS) >= now_ms)
            .filter_map(|f| self.on_fact(f))
            .collect()
    }

    /// The note for `fact`, when it is about a followed connection.
    pub fn on_fact(&mut self, fact: TwFact) -> Option<TimewaitNote> {
        let key = self.key(fact.netns, fact.local, fact.remote);
        if matches!(fact.what, TwWhat::Entered { .. }) {
            if let Some(entry) = self.unconfirmed.remove(&key) {
                // Its timewait socket is in sight: follow it until it leaves.
                if self.following.len() >= FOLLOW_MAX {
                    let horizon = fact.at_ms.saturating_sub(FOLLOW_MS);
                    self.following.retain(|_, f| f.since >= horizon);
                }
                if self.following.len() < FOLLOW_MAX {
                    self.following.insert(key, entry);
                } else {
                    self.dropped += 1;
                }
            }
        }
        let Some(&Followed {
            id,
            since,
            conforming,
        }) = self.following.get(&key)
        else {
            self.keep_pending(fact);
            return None;
        };
        if since.saturating_add(FOLLOW_MS) < fact.at_ms {
            self.following.remove(&key);
            return None;
        }
        if matches!(fact.what, TwWhat::Left { .. }) {
            self.following.remove(&key);
        }
        Some(TimewaitNote {
            id,
            of_conforming: conforming,
            from_kernel: false,
            fact,
        })
    }

    fn keep_pending(&mut self, fact: TwFact) {
        let key = self.key(fact.netns, fact.local, fact.remote);
        if !matches!(fact.what, TwWhat::Entered { .. }) {
            // A restart or an exit of a socket whose entry waits for its connection's report
            // (the kernel's timer events come as it happens, before the connection settles)
            // waits with it; those of sockets no reported connection left are not ours to tell.
            if let Some(waiting) = self.pending.get_mut(&key) {
                waiting.push(fact);
            }
            return;
        }
        if self.pending.len() >= PENDING_MAX {
            let horizon = fact.at_ms.saturating_sub(PENDING_MS);
            self.pending
                .retain(|_, v| v.last().is_some_and(|f| f.at_ms >= horizon));
            if self.pending.len() >= PENDING_MAX {
                self.dropped += 1;
                return;
            }
        }
        self.pending.entry(key).or_default().push(fact);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sock_diag::{TwFate, TwSubstate};

    fn fact(at: u64, what: TwWhat) -> TwFact {
        TwFact {
            netns: 0,
            local: "127.0.0.1:40000".parse().unwrap(),
            remote: "127.0.0.1:80".parse().unwrap(),
            at_ms: at,
            what,
        }
    }

    /// A socket of namespace `netns` entering TIME_WAIT at 1 s.
    fn entered(netns: u32) -> TwFact {
        TwFact {
            netns,
            ..fact(
                1_000,
                TwWhat::Entered {
                    state: TwSubstate::TimeWait,
                    entered_ms: 990,
                },
            )
        }
    }

    #[test]
    fn namespaces_are_told_apart_when_both_sides_carry_them() {
        let f = entered(7);
        // The same 4-tuple in two namespaces: only the connection's own namespace joins.
        let mut j = Joiner::new(true);
        assert!(j.follow(1, false, 9, f.local, f.remote, 900).is_empty());
        assert_eq!(j.on_fact(entered(7)), None);
        assert_eq!(j.on_fact(entered(9)).map(|n| n.id), Some(1));
        // Without namespaces on both sides, the tuple alone joins.
        let mut j = Joiner::new(false);
        assert!(j.follow(1, false, 0, f.local, f.remote, 900).is_empty());
        assert_eq!(j.on_fact(entered(7)).map(|n| n.id), Some(1));
    }

    #[test]
    fn connections_of_namespaces_not_polled_are_not_followed() {
        let f = entered(7);
        let mut j = Joiner::new(true);
        j.only_netns(vec![7]);
        j.follow(1, false, 7, f.local, f.remote, 900);
        j.follow(2, false, 9, f.local, f.remote, 900);
        assert_eq!(j.unconfirmed.len(), 1, "namespace 9 is not polled");
        assert_eq!(j.on_fact(entered(7)).map(|n| n.id), Some(1));
        // Without namespaces on both sides, every connection is followed.
        let mut j = Joiner::new(false);
        j.only_netns(vec![7]);
        j.follow(2, false, 9, f.local, f.remote, 900);
        assert_eq!(j.on_fact(entered(9)).map(|n| n.id), Some(2));
    }

    #[test]
    fn only_namespaces_with_followed_connections_are_wanted() {
        let local = "127.0.0.1:40000".parse().unwrap();
        let remote = "127.0.0.1:80".parse().unwrap();
        let mut j = Joiner::new(true);
        assert_eq!(j.wanted_netns(0), Some(vec![]));
        j.follow(1, false, 7, local, remote, 1_000);
        assert_eq!(j.wanted_netns(1_000), Some(vec![7]));
        assert_eq!(j.wanted_netns(1_000 + FOLLOW_MS), Some(vec![7]));
        assert_eq!(j.wanted_netns(1_001 + FOLLOW_MS), Some(vec![]));
        // Connections without namespaces: every namespace may be wanted.
        assert_eq!(Joiner::new(false).wanted_netns(0), None);
    }

    #[test]
    fn facts_join_the_followed_connection_until_it_leaves() {
        let mut j = Joiner::default();
        let f = fact(
            1_000,
            TwWhat::Entered {
                state: TwSubstate::TimeWait,
                entered_ms: 990,
            },
        );
        // Seen by sock_diag before the connection was reported: joined when it is.
        assert_eq!(j.on_fact(f.clone()), None, "not followed yet");
        let early = j.follow(7, false, 0, f.local, f.remote, 1_200);
        assert_eq!(early.len(), 1);
        assert_eq!(early[0].id, 7);
        let again = fact(
            1_500,
            TwWhat::Entered {
                state: TwSubstate::FinWait2,
                entered_ms: 1_400,
            },
        );
        assert_eq!(j.on_fact(again).map(|n| n.id), Some(7));
        let left = fact(
            61_000,
            TwWhat::Left {
                how: TwFate::Expired,
                entered_ms: 990,
                restarts: 0,
            },
        );
        assert_eq!(j.on_fact(left.clone()).map(|n| n.id), Some(7));
        assert_eq!(j.on_fact(left), None, "forgotten once it left");
    }

    #[test]
    fn an_early_end_waits_with_its_entry_for_the_connection() {
        let mut j = Joiner::default();
        let e = fact(
            1_000,
            TwWhat::Entered {
                state: TwSubstate::TimeWait,
                entered_ms: 1_000,
            },
        );
        let left = fact(
            1_100,
            TwWhat::Left {
                how: TwFate::Killed,
                entered_ms: 1_000,
                restarts: 0,
            },
        );
        // An exit of a socket nobody waits for is dropped.
        assert_eq!(j.on_fact(left.clone()), None);
        assert!(j.pending.is_empty());
        assert_eq!(j.on_fact(e.clone()), None);
        assert_eq!(j.on_fact(left), None);
        let early = j.follow(4, true, 0, e.local, e.remote, 1_200);
        assert_eq!(early.len(), 2);
        assert!(matches!(early[1].fact.what, TwWhat::Left { .. }));
        assert!(j.following.is_empty(), "it left: no longer followed");
    }

    #[test]
    fn a_connection_whose_timewait_socket_never_shows_is_forgotten() {
        let mut j = Joiner::default();
        let a = fact(
            0,
            TwWhat::Entered {
                state: TwSubstate::TimeWait,
                entered_ms: 0,
            },
        );
        assert!(j.follow(1, false, 0, a.local, a.remote, 1_000).is_empty());
        // Another connection reported after the confirmation time: the first is forgotten
        // (its timewait socket lives in another namespace, out of sight).
        let other: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        assert!(j
            .follow(2, false, 0, other, a.remote, 1_000 + CONFIRM_MS + 1)
            .is_empty());
        assert_eq!(j.unconfirmed.len(), 1);
        let late = fact(
            7_000,
            TwWhat::Entered {
                state: TwSubstate::TimeWait,
                entered_ms: 6_900,
            },
        );
        assert_eq!(j.on_fact(late), None);
    }

    #[test]
    fn a_mapped_timewait_socket_joins_the_connection_reported_in_ipv4_form() {
        let entered = TwWhat::Entered {
            state: TwSubstate::TimeWait,
            entered_ms: 990,
        };
        let mapped = TwFact {
            local: "[::ffff:127.0.0.1]:40000".parse().unwrap(),
            remote: "[::ffff:127.0.0.1]:80".parse().unwrap(),
            ..fact(1_000, entered.clone())
        };
        let v4 = fact(1_000, entered);
        // Either form on either side: sock_diag and the tracepoint may each show either.
        for (conn, seen) in [(&v4, &mapped), (&mapped, &v4)] {
            let mut j = Joiner::default();
            assert!(j
                .follow(3, false, 0, conn.local, conn.remote, 900)
                .is_empty());
            assert_eq!(j.on_fact(seen.clone()).map(|n| n.id), Some(3));
        }
        // Another IPv4 address is another socket.
        let mut j = Joiner::default();
        assert!(j.follow(3, false, 0, v4.local, v4.remote, 900).is_empty());
        let other = TwFact {
            local: "[::ffff:127.0.0.2]:40000".parse().unwrap(),
            ..mapped
        };
        assert_eq!(j.on_fact(other), None);
    }

    #[test]
    fn facts_long_after_the_connection_are_not_joined() {
        let mut j = Joiner::default();
        let f = fact(
            FOLLOW_MS + 10_000,
            TwWhat::Restarted {
                previous_entered_ms: 0,
                entered_ms: 5,
            },
        );
        assert!(j.follow(1, false, 0, f.local, f.remote, 1).is_empty());
        assert_eq!(j.on_fact(f), None);
    }

    #[test]
    fn facts_round_trip_through_json() {
        let f = fact(
            5,
            TwWhat::Left {
                how: TwFate::Killed,
                entered_ms: 1,
                restarts: 2,
            },
        );
        let s = serde_json::to_string(&f).unwrap();
        assert!(
            s.contains("\"fact\":\"left\"") && s.contains("\"how\":\"killed\""),
            "{s}"
        );
        assert_eq!(serde_json::from_str::<TwFact>(&s).unwrap(), f);
    }
}
