//! What sock_diag shows of timewait sockets over time, as facts a trace can join to the
//! connections it reported: a [`TwWatcher`] polls one network namespace and turns each change
//! into a [`TwFact`] (entered a substate, timer restarted, left), and lists the sockets already
//! closing when the trace began ([`Closing`]).

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
};

use serde::{Deserialize, Serialize};

use super::{
    follow::Tracker, sysctl::KernelSettings, DiagError, FourTuple, PollOptions, Poller, TcpState,
    TwFate, TwSubstate,
};

/// One thing sock_diag showed about a timewait socket. Times are ms since the Unix epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TwFact {
    /// Inode number of the network namespace it was seen in (0 in recordings made before
    /// namespaces were told apart).
    #[serde(default, skip_serializing_if = "super::netns::is_unknown")]
    pub netns: u32,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// When the poll that saw it was taken.
    pub at_ms: u64,
    #[serde(flatten)]
    pub what: TwWhat,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "fact", rename_all = "snake_case")]
pub enum TwWhat {
    /// First seen in this sub-state, which it entered at `entered_ms` (from its timer).
    Entered { state: TwSubstate, entered_ms: u64 },
    /// Its timer restarted: the peer resent its FIN (the final ACK was lost).
    Restarted {
        previous_entered_ms: u64,
        entered_ms: u64,
    },
    /// It left.
    Left {
        how: TwFate,
        entered_ms: u64,
        restarts: u32,
    },
}

/// A socket already closing when the trace began.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Closing {
    /// Inode number of the namespace it was seen in (0: unknown).
    pub netns: u32,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: TcpState,
}

/// Polls sock_diag in the calling thread's network namespace.
pub struct TwWatcher {
    poller: Poller,
    tracker: Tracker,
    known: HashMap<FourTuple, TwSubstate>,
    /// The namespace's inode number, which its facts carry.
    netns: u32,
}

/// Inode number of the calling thread's network namespace (0 if /proc cannot tell). The
/// thread's own, not the process's: a sock_diag thread may have entered another namespace.
pub fn current_netns() -> u32 {
    use std::os::unix::fs::MetadataExt as _;
    // SAFETY: gettid has no arguments and cannot fail.
    let tid = unsafe { libc::gettid() };
    [
        "/proc/thread-self/ns/net".to_owned(),
        format!("/proc/self/task/{tid}/ns/net"),
    ]
    .iter()
    .find_map(|p| std::fs::metadata(p).ok())
    .and_then(|m| u32::try_from(m.ino()).ok())
    .unwrap_or(0)
}

impl TwWatcher {
    pub fn new() -> Result<TwWatcher, DiagError> {
        let fin_timeout = KernelSettings::read()
            .map(|k| k.fin_timeout_s)
            .unwrap_or(60);
        Ok(TwWatcher {
            poller: Poller::new(PollOptions {
                include_open: true,
                ipv6: true,
            })?,
            tracker: Tracker::new(fin_timeout),
            known: HashMap::new(),
            netns: current_netns(),
        })
    }

    /// One poll: what changed, and the full sockets now closing (for seeding at start).
    pub fn poll(&mut self) -> Result<(Vec<TwFact>, Vec<Closing>), DiagError> {
        let snap = self.poller.poll()?;
        let delta = self.tracker.observe(&snap);
        let at = snap.taken_at_ms;
        let mut facts = Vec::new();
        let mut seen = HashSet::with_capacity(snap.timewait.len());
        for t in self.tracker.timewait() {
            seen.insert(t.tuple);
            if self.known.insert(t.tuple, t.substate) != Some(t.substate) {
                facts.push(TwFact {
                    netns: self.netns,
                    local: t.tuple.local,
                    remote: t.tuple.remote,
                    at_ms: at,
                    what: TwWhat::Entered {
                        state: t.substate,
                        entered_ms: t.entered_ms,
                    },
                });
            }
        }
        self.known.retain(|k, _| seen.contains(k));
        for r in &delta.restarts {
            facts.push(TwFact {
                netns: self.netns,
                local: r.tuple.local,
                remote: r.tuple.remote,
                at_ms: at,
                what: TwWhat::Restarted {
                    previous_entered_ms: r.previous_entered_ms,
                    entered_ms: r.entered_ms,
                },
            });
        }
        for e in &delta.exits {
            facts.push(TwFact {
                netns: self.netns,
                local: e.tuple.local,
                remote: e.tuple.remote,
                at_ms: at,
                what: TwWhat::Left {
                    how: e.kind,
                    entered_ms: e.entered_ms,
                    restarts: e.restarts,
                },
            });
        }
        let closing = snap
            .closing
            .iter()
            .map(|s| Closing {
                netns: self.netns,
                local: s.tuple.local,
                remote: s.tuple.remote,
                state: s.state,
            })
            .collect();
        Ok((facts, closing))
    }
}
