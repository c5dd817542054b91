//! Figures of one snapshot: counts per closing state, TIME_WAIT per local address and per remote
//! address and port, ephemeral-port pressure per destination, and headroom to
//! `tcp_max_tw_buckets`. All pure functions of a [`Snapshot`] and the [`KernelSettings`].

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

use crate::sock_diag::sysctl::{KernelSettings, TIMEWAIT_LEN_MS};
use crate::sock_diag::{Snapshot, TcpState, TwSubstate};

/// How many sockets sit in each closing state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StateCounts {
    /// Timewait sockets in the TIME_WAIT sub-state (`ss state time-wait`).
    pub time_wait: usize,
    /// Timewait sockets in the FIN_WAIT2 sub-state: orphaned FIN_WAIT2 (`ss -o state fin-wait-2`
    /// with a `timewait` timer).
    pub fin_wait2_timewait: usize,
    /// Full sockets.
    pub fin_wait1: usize,
    pub fin_wait2: usize,
    pub closing: usize,
    pub close_wait: usize,
    pub last_ack: usize,
}

impl StateCounts {
    /// Adds another namespace's counts to these.
    pub fn add(&mut self, o: &StateCounts) {
        self.time_wait += o.time_wait;
        self.fin_wait2_timewait += o.fin_wait2_timewait;
        self.fin_wait1 += o.fin_wait1;
        self.fin_wait2 += o.fin_wait2;
        self.closing += o.closing;
        self.close_wait += o.close_wait;
        self.last_ack += o.last_ack;
    }

    /// All timewait sockets (both sub-states): what `tcp_max_tw_buckets` limits.
    pub fn timewait_total(&self) -> usize {
        self.time_wait + self.fin_wait2_timewait
    }

    /// Labels and values in display order.
    pub fn rows(&self) -> [(&'static str, usize); 7] {
        [
            ("TIME_WAIT", self.time_wait),
            ("FIN_WAIT2 (timewait)", self.fin_wait2_timewait),
            ("FIN_WAIT1", self.fin_wait1),
            ("FIN_WAIT2", self.fin_wait2),
            ("CLOSING", self.closing),
            ("CLOSE_WAIT", self.close_wait),
            ("LAST_ACK", self.last_ack),
        ]
    }
}

/// Counts per closing state.
pub fn state_counts(snap: &Snapshot) -> StateCounts {
    let mut c = StateCounts {
        time_wait: snap.count_timewait(TwSubstate::TimeWait),
        fin_wait2_timewait: snap.count_timewait(TwSubstate::FinWait2),
        ..StateCounts::default()
    };
    for s in &snap.closing {
        match s.state {
            TcpState::FinWait1 => c.fin_wait1 += 1,
            TcpState::FinWait2 => c.fin_wait2 += 1,
            TcpState::Closing => c.closing += 1,
            TcpState::CloseWait => c.close_wait += 1,
            TcpState::LastAck => c.last_ack += 1,
            _ => {}
        }
    }
    c
}

/// Timewait sockets grouped by one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TimewaitGroup<K> {
    pub key: K,
    pub time_wait: usize,
    pub fin_wait2: usize,
}

impl<K> TimewaitGroup<K> {
    pub fn total(&self) -> usize {
        self.time_wait + self.fin_wait2
    }
}

fn group_by<K: Ord + Copy>(
    snap: &Snapshot,
    key: impl Fn(&crate::sock_diag::TimewaitSocket) -> K,
) -> Vec<TimewaitGroup<K>> {
    let mut m: BTreeMap<K, (usize, usize)> = BTreeMap::new();
    for t in &snap.timewait {
        let e = m.entry(key(t)).or_default();
        match t.substate {
            TwSubstate::TimeWait => e.0 += 1,
            TwSubstate::FinWait2 => e.1 += 1,
        }
    }
    let mut v: Vec<_> = m
        .into_iter()
        .map(|(key, (time_wait, fin_wait2))| TimewaitGroup {
            key,
            time_wait,
            fin_wait2,
        })
        .collect();
    v.sort_by(|a, b| b.total().cmp(&a.total()).then(a.key.cmp(&b.key)));
    v
}

/// Timewait sockets per local address, most first.
pub fn per_local_addr(snap: &Snapshot) -> Vec<TimewaitGroup<IpAddr>> {
    group_by(snap, |t| t.tuple.local.ip())
}

/// Timewait sockets per remote address and port, most first.
pub fn per_remote(snap: &Snapshot) -> Vec<TimewaitGroup<SocketAddr>> {
    group_by(snap, |t| t.tuple.remote)
}

/// A warning level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Notice,
    Warning,
    Critical,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Notice => "notice",
            Level::Warning => "WARNING",
            Level::Critical => "CRITICAL",
        }
    }

    /// The level for a use ratio in percent against the thresholds.
    pub fn for_pct(pct: f64, t: &Thresholds) -> Self {
        if pct >= t.critical_pct {
            Level::Critical
        } else if pct >= t.warning_pct {
            Level::Warning
        } else if pct >= t.notice_pct {
            Level::Notice
        } else {
            Level::Ok
        }
    }
}

/// Percentages of a limit at which a figure becomes a notice, a warning, critical.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Thresholds {
    pub notice_pct: f64,
    pub warning_pct: f64,
    pub critical_pct: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            notice_pct: 25.0,
            warning_pct: 50.0,
            critical_pct: 90.0,
        }
    }
}

/// Whether `tcp_tw_reuse` lets `connect()` take over a TIME_WAIT socket's port toward a
/// destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reuse {
    /// `tcp_tw_reuse` is 0, or timestamps are off: every timewait socket holds its port.
    Off,
    /// Reuse applies: TIME_WAIT sockets older than `tcp_tw_reuse_delay` free their port on demand.
    Applies,
    /// `tcp_tw_reuse` is 2 (loopback only) and the destination is not loopback.
    NotForThisDestination,
}

/// Ephemeral-port pressure toward one destination.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PortPressure {
    pub remote: SocketAddr,
    /// Timewait sockets toward it whose local port is ephemeral.
    pub timewait: usize,
    /// Of those, the ones that block a new `connect()` (all of them without reuse; with reuse,
    /// FIN_WAIT2 timewait sockets and TIME_WAIT ones younger than the reuse delay).
    pub blocking: usize,
    /// Size of `ip_local_port_range`.
    pub range_size: u32,
    /// `blocking` in percent of the range.
    pub used_pct: f64,
    pub reuse: Reuse,
    pub level: Level,
}

/// Port pressure per destination (local ephemeral port, one remote address and port), worst
/// first. Server-side timewait sockets (local port outside the range) take no ephemeral port.
pub fn port_pressure(
    snap: &Snapshot,
    settings: &KernelSettings,
    thresholds: &Thresholds,
) -> Vec<PortPressure> {
    let mut m: BTreeMap<SocketAddr, (usize, usize)> = BTreeMap::new();
    for t in &snap.timewait {
        if !settings.is_ephemeral(t.tuple.local.port()) {
            continue;
        }
        let reuse = reuse_for(settings, t.tuple.remote.ip());
        let age_ms = TIMEWAIT_LEN_MS.saturating_sub(t.remaining_ms);
        let blocks = match (reuse, t.substate) {
            (Reuse::Applies, TwSubstate::TimeWait) => age_ms < settings.tw_reuse_delay_ms,
            _ => true,
        };
        let e = m.entry(t.tuple.remote).or_default();
        e.0 += 1;
        if blocks {
            e.1 += 1;
        }
    }
    let range_size = settings.port_range_size();
    let mut v: Vec<PortPressure> = m
        .into_iter()
        .map(|(remote, (timewait, blocking))| {
            let used_pct = 100.0 * blocking as f64 / f64::from(range_size.max(1));
            PortPressure {
                remote,
                timewait,
                blocking,
                range_size,
                used_pct,
                reuse: reuse_for(settings, remote.ip()),
                level: Level::for_pct(used_pct, thresholds),
            }
        })
        .collect();
    v.sort_by(|a, b| {
        b.blocking
            .cmp(&a.blocking)
            .then(b.timewait.cmp(&a.timewait))
            .then(a.remote.cmp(&b.remote))
    });
    v
}

/// Whether reuse applies toward `remote`.
pub fn reuse_for(settings: &KernelSettings, remote: IpAddr) -> Reuse {
    if settings.timestamps == 0 {
        return Reuse::Off;
    }
    match settings.tw_reuse {
        0 => Reuse::Off,
        2 if !is_loopback(remote) => Reuse::NotForThisDestination,
        _ => Reuse::Applies,
    }
}

/// Loopback, IPv4-mapped loopback (`::ffff:127.0.0.1`) included.
fn is_loopback(a: IpAddr) -> bool {
    teardown_common::addr::canonical_ip(a).is_loopback()
}

/// Headroom to `tcp_max_tw_buckets`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TwBuckets {
    /// Timewait sockets now (both sub-states, IPv4 and IPv6: one table per namespace).
    pub count: usize,
    pub max: u64,
    pub headroom: u64,
    pub used_pct: f64,
    /// `TcpExt: TCPTimeWaitOverflow` now (since boot or namespace creation).
    pub overflow_total: Option<u64>,
    /// Its increase since the previous reading, when there was one.
    pub overflow_delta: Option<u64>,
    pub level: Level,
}

/// Headroom to the timewait table's limit; an overflow since the last reading is critical.
pub fn tw_buckets(
    counts: &StateCounts,
    settings: &KernelSettings,
    previous_overflow: Option<u64>,
    thresholds: &Thresholds,
) -> TwBuckets {
    let count = counts.timewait_total();
    let max = settings.max_tw_buckets;
    let used_pct = 100.0 * count as f64 / (max.max(1) as f64);
    let overflow_delta = match (settings.tw_overflow, previous_overflow) {
        (Some(now), Some(before)) => Some(now.saturating_sub(before)),
        _ => None,
    };
    let mut level = Level::for_pct(used_pct, thresholds);
    if overflow_delta.is_some_and(|d| d > 0) {
        level = Level::Critical;
    }
    TwBuckets {
        count,
        max,
        headroom: max.saturating_sub(count as u64),
        used_pct,
        overflow_total: settings.tw_overflow,
        overflow_delta,
        level,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sock_diag::{FourTuple, FullSocket, TimewaitSocket};

    fn tw(l: &str, r: &str, sub: TwSubstate, remaining: u64) -> TimewaitSocket {
        TimewaitSocket {
            tuple: FourTuple {
                local: l.parse().unwrap(),
                remote: r.parse().unwrap(),
            },
            substate: sub,
            remaining_ms: remaining,
            cookie: 0,
        }
    }

    fn full(state: TcpState) -> FullSocket {
        FullSocket {
            tuple: FourTuple {
                local: "10.0.0.1:80".parse().unwrap(),
                remote: "10.0.0.2:50000".parse().unwrap(),
            },
            state,
            inode: 1,
            uid: 0,
            cookie: 1,
            recv_queue: 0,
            send_queue: 0,
            retransmits: None,
            timer_ms: None,
            last_ack_recv_ms: None,
        }
    }

    fn sample() -> Snapshot {
        Snapshot {
            taken_at_ms: 1_000_000,
            timewait: vec![
                tw(
                    "10.0.0.1:40000",
                    "10.0.0.9:443",
                    TwSubstate::TimeWait,
                    59_000,
                ),
                tw("10.0.0.1:40001", "10.0.0.9:443", TwSubstate::TimeWait, 100),
                tw(
                    "10.0.0.1:40002",
                    "10.0.0.9:443",
                    TwSubstate::FinWait2,
                    30_000,
                ),
                tw(
                    "10.0.0.2:40003",
                    "10.0.0.8:80",
                    TwSubstate::TimeWait,
                    30_000,
                ),
                tw(
                    "10.0.0.2:80",
                    "10.0.0.7:51000",
                    TwSubstate::TimeWait,
                    30_000,
                ),
            ],
            closing: vec![
                full(TcpState::CloseWait),
                full(TcpState::CloseWait),
                full(TcpState::LastAck),
                full(TcpState::FinWait2),
            ],
            open: vec![],
        }
    }

    #[test]
    fn counts_per_state() {
        let c = state_counts(&sample());
        assert_eq!(c.time_wait, 4);
        assert_eq!(c.fin_wait2_timewait, 1);
        assert_eq!(c.timewait_total(), 5);
        assert_eq!(c.close_wait, 2);
        assert_eq!(c.last_ack, 1);
        assert_eq!(c.fin_wait2, 1);
        assert_eq!(c.fin_wait1, 0);
    }

    #[test]
    fn groups_per_local_and_remote_most_first() {
        let s = sample();
        let l = per_local_addr(&s);
        assert_eq!(l[0].key.to_string(), "10.0.0.1");
        assert_eq!((l[0].time_wait, l[0].fin_wait2), (2, 1));
        assert_eq!(l[1].total(), 2);
        let r = per_remote(&s);
        assert_eq!(r[0].key.to_string(), "10.0.0.9:443");
        assert_eq!(r[0].total(), 3);
        assert_eq!(r.len(), 3);
    }

    #[test]
    fn port_pressure_counts_only_ephemeral_and_honours_reuse() {
        let s = sample();
        let mut k = KernelSettings::linux_defaults();
        k.port_range = (40000, 40003); // 4 ports
        k.tw_reuse = 0;
        let p = port_pressure(&s, &k, &Thresholds::default());
        assert_eq!(
            p.len(),
            2,
            "the server-side socket on port 80 takes no ephemeral port"
        );
        assert_eq!(p[0].remote.to_string(), "10.0.0.9:443");
        assert_eq!((p[0].timewait, p[0].blocking), (3, 3));
        assert_eq!(p[0].used_pct, 75.0);
        assert_eq!(p[0].level, Level::Warning);
        assert_eq!(p[0].reuse, Reuse::Off);

        k.tw_reuse = 1;
        let p = port_pressure(&s, &k, &Thresholds::default());
        // Blocking: the FIN_WAIT2 one only; the TIME_WAIT ones are at least 1 s old (the
        // reuse delay), so connect() can take their ports.
        assert_eq!((p[0].timewait, p[0].blocking), (3, 1));
        assert_eq!(p[0].reuse, Reuse::Applies);
        assert_eq!(p[0].level, Level::Notice);

        k.tw_reuse = 2;
        let p = port_pressure(&s, &k, &Thresholds::default());
        assert_eq!(p[0].reuse, Reuse::NotForThisDestination);
        assert_eq!(p[0].blocking, 3);
    }

    #[test]
    fn loopback_reuse_and_timestamps() {
        let mut k = KernelSettings::linux_defaults();
        assert_eq!(reuse_for(&k, "127.0.0.1".parse().unwrap()), Reuse::Applies);
        assert_eq!(reuse_for(&k, "::1".parse().unwrap()), Reuse::Applies);
        assert_eq!(
            reuse_for(&k, "::ffff:127.0.0.1".parse().unwrap()),
            Reuse::Applies
        );
        k.timestamps = 0;
        assert_eq!(reuse_for(&k, "127.0.0.1".parse().unwrap()), Reuse::Off);
    }

    #[test]
    fn buckets_headroom_and_overflow() {
        let c = state_counts(&sample());
        let mut k = KernelSettings::linux_defaults();
        k.max_tw_buckets = 10;
        k.tw_overflow = Some(7);
        let b = tw_buckets(&c, &k, None, &Thresholds::default());
        assert_eq!((b.count, b.headroom), (5, 5));
        assert_eq!(b.level, Level::Warning);
        assert_eq!(b.overflow_delta, None);
        let b = tw_buckets(&c, &k, Some(5), &Thresholds::default());
        assert_eq!(b.overflow_delta, Some(2));
        assert_eq!(b.level, Level::Critical);
    }
}
