//! All figures together: one [`Report`], what `teardown timewait` prints and `teardown top`
//! draws.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

use super::figures::{
    per_local_addr, per_remote, port_pressure, state_counts, tw_buckets, Level, PortPressure,
    StateCounts, Thresholds, TimewaitGroup, TwBuckets,
};
use crate::sock_diag::follow::{entry_rate, EntryRate, FullTrack, Tracker, TwExit};
use crate::sock_diag::sysctl::KernelSettings;
use crate::sock_diag::{FourTuple, Owner, OwnerScan, Snapshot, TcpState, TwFate, TwSubstate};

/// What the report looks for, and how much of it it lists.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReportConfig {
    /// A CLOSE_WAIT socket older than this is reported as a leak.
    pub close_wait_threshold_ms: u64,
    /// A LAST_ACK, FIN_WAIT1 or CLOSING socket older than this is reported as stuck.
    /// (FIN_WAIT2 is measured against `tcp_fin_timeout`.)
    pub stall_after_ms: u64,
    pub thresholds: Thresholds,
    /// Rows kept in the per-address and per-destination tables.
    pub top: usize,
    /// List every timewait socket with its entry time.
    pub list_timewait: bool,
}

impl Default for ReportConfig {
    fn default() -> Self {
        Self {
            close_wait_threshold_ms: 60_000,
            stall_after_ms: 60_000,
            thresholds: Thresholds::default(),
            top: 10,
            list_timewait: false,
        }
    }
}

/// A CLOSE_WAIT socket older than the threshold: the peer closed, the application did not.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Leak {
    pub tuple: FourTuple,
    pub inode: u64,
    pub uid: u32,
    /// Time in CLOSE_WAIT as observed.
    pub age_ms: u64,
    /// The socket was already in CLOSE_WAIT when monitoring started: its real age is at least
    /// `age_ms`.
    pub at_least: bool,
    /// Unread bytes (the application is not even reading).
    pub recv_queue: u32,
    /// Processes holding it (`ss -p`); empty if none was found or the scan was not done.
    pub owners: Vec<Owner>,
}

/// A socket stuck in a closing state past the time it should take.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stall {
    pub tuple: FourTuple,
    pub state: TcpState,
    pub inode: u64,
    pub uid: u32,
    pub age_ms: u64,
    pub at_least: bool,
    /// The time after which it counts as stuck.
    pub expected_ms: u64,
    pub retransmits: Option<u8>,
    pub reason: &'static str,
}

/// A timewait socket with what is known of its history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TimewaitView {
    pub tuple: FourTuple,
    pub substate: TwSubstate,
    pub entered_ms: u64,
    pub remaining_ms: u64,
    pub restarts: u32,
    pub was_fin_wait2: bool,
}

/// How timewait sockets left, since monitoring started.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Exits {
    pub expired: u64,
    pub reused: u64,
    pub killed: u64,
    pub timer_restarts: u64,
    /// The latest exits, newest last.
    pub recent: Vec<TwExit>,
}

/// Timewait sockets holding ephemeral ports, summed over every destination.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PressureTotals {
    pub destinations: usize,
    pub timewait: usize,
    pub blocking: usize,
    /// The worst destination's `used_pct` (0 without any).
    pub worst_used_pct: f64,
}

/// The owner scan's cost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OwnerScanInfo {
    pub fds_read: usize,
    pub truncated: bool,
}

/// Everything `teardown timewait` reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub taken_at_ms: u64,
    pub polls: u64,
    pub settings: KernelSettings,
    pub counts: StateCounts,
    pub per_local: Vec<TimewaitGroup<IpAddr>>,
    pub per_remote: Vec<TimewaitGroup<SocketAddr>>,
    pub rate: EntryRate,
    pub port_pressure: Vec<PortPressure>,
    /// Sums over every destination, the ones `port_pressure` leaves out included.
    pub port_pressure_totals: PressureTotals,
    pub tw_buckets: TwBuckets,
    /// The CLOSE_WAIT age from which a socket is a leak.
    pub close_wait_threshold_ms: u64,
    pub close_wait_leaks: Vec<Leak>,
    pub stalls: Vec<Stall>,
    pub exits: Exits,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timewait_sockets: Option<Vec<TimewaitView>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner_scan: Option<OwnerScanInfo>,
    /// The overall level: the worst of port pressure, table headroom, leaks and stalls.
    pub level: Level,
}

/// CLOSE_WAIT sockets older than the threshold (the ones whose owners are worth looking up).
pub fn leak_candidates<'a>(
    tracker: &'a Tracker,
    now_ms: u64,
    cfg: &ReportConfig,
) -> Vec<&'a FullTrack> {
    let mut v: Vec<&FullTrack> = tracker
        .full()
        .filter(|f| {
            f.state == TcpState::CloseWait && f.age_ms(now_ms) >= cfg.close_wait_threshold_ms
        })
        .collect();
    v.sort_by(|a, b| {
        b.age_ms(now_ms)
            .cmp(&a.age_ms(now_ms))
            .then(a.tuple.cmp(&b.tuple))
    });
    v
}

/// The inodes of the leak candidates, for [`crate::sock_diag::find_owners`].
pub fn leak_inodes(tracker: &Tracker, now_ms: u64, cfg: &ReportConfig) -> HashSet<u64> {
    leak_candidates(tracker, now_ms, cfg)
        .into_iter()
        .map(|f| f.inode)
        .filter(|&i| i != 0)
        .collect()
}

/// Sockets stuck in FIN_WAIT2 (past `tcp_fin_timeout`), LAST_ACK, FIN_WAIT1 or CLOSING (past
/// `stall_after_ms`), oldest first.
pub fn stalls(
    tracker: &Tracker,
    now_ms: u64,
    settings: &KernelSettings,
    cfg: &ReportConfig,
) -> Vec<Stall> {
    let mut v: Vec<Stall> = tracker
        .full()
        .filter_map(|f| {
            let (expected_ms, reason) = match f.state {
                TcpState::FinWait2 if f.inode != 0 => (
                    settings.fin_timeout_s * 1000,
                    "our FIN was acknowledged but the peer never sent its own; the application \
                     shut down writing and still holds the socket, so no timer ends it",
                ),
                TcpState::FinWait2 => (
                    settings.fin_timeout_s * 1000,
                    "orphaned FIN_WAIT2 past tcp_fin_timeout: the peer never sent its FIN",
                ),
                TcpState::LastAck => (
                    cfg.stall_after_ms,
                    "our FIN is not acknowledged: the peer is gone or unreachable, the kernel \
                     retransmits until tcp_retries2 / tcp_orphan_retries give up",
                ),
                TcpState::FinWait1 => (
                    cfg.stall_after_ms,
                    "our FIN is not acknowledged (unreachable peer, or unsent data behind a zero \
                     window)",
                ),
                TcpState::Closing => (
                    cfg.stall_after_ms,
                    "simultaneous close: the peer's ACK of our FIN never came",
                ),
                _ => return None,
            };
            let age_ms = f.age_ms(now_ms);
            (age_ms >= expected_ms).then_some(Stall {
                tuple: f.tuple,
                state: f.state,
                inode: f.inode,
                uid: f.uid,
                age_ms,
                at_least: f.present_at_start,
                expected_ms,
                retransmits: f.retransmits,
                reason,
            })
        })
        .collect();
    v.sort_by(|a, b| b.age_ms.cmp(&a.age_ms).then(a.tuple.cmp(&b.tuple)));
    v
}

/// Puts the report together. `tracker` must already have observed `snap`; `previous_overflow`
/// is the overflow counter of the previous reading, if any; `owners` the result of the owner scan
/// over [`leak_inodes`].
pub fn build_report(
    snap: &Snapshot,
    tracker: &Tracker,
    settings: &KernelSettings,
    previous_overflow: Option<u64>,
    owners: Option<&OwnerScan>,
    cfg: &ReportConfig,
) -> Report {
    let now = snap.taken_at_ms;
    let counts = state_counts(snap);
    let mut per_local = per_local_addr(snap);
    per_local.truncate(cfg.top);
    let mut per_remote = per_remote(snap);
    per_remote.truncate(cfg.top);
    let mut pressure = port_pressure(snap, settings, &cfg.thresholds);
    let port_pressure_totals = PressureTotals {
        destinations: pressure.len(),
        timewait: pressure.iter().map(|p| p.timewait).sum(),
        blocking: pressure.iter().map(|p| p.blocking).sum(),
        worst_used_pct: pressure.first().map_or(0.0, |p| p.used_pct),
    };
    pressure.truncate(cfg.top);
    let buckets = tw_buckets(&counts, settings, previous_overflow, &cfg.thresholds);
    let leaks: Vec<Leak> = leak_candidates(tracker, now, cfg)
        .into_iter()
        .map(|f| Leak {
            tuple: f.tuple,
            inode: f.inode,
            uid: f.uid,
            age_ms: f.age_ms(now),
            at_least: f.present_at_start,
            recv_queue: f.recv_queue,
            owners: owners
                .and_then(|o| o.owners.get(&f.inode).cloned())
                .unwrap_or_default(),
        })
        .collect();
    let stalls = stalls(tracker, now, settings, cfg);
    let recent: Vec<TwExit> = {
        let all: Vec<&TwExit> = tracker.recent_exits().collect();
        all[all.len().saturating_sub(20)..]
            .iter()
            .map(|e| (*e).clone())
            .collect()
    };
    let exits = Exits {
        expired: tracker.exit_count(TwFate::Expired),
        reused: tracker.exit_count(TwFate::Reused),
        killed: tracker.exit_count(TwFate::Killed),
        timer_restarts: tracker.restart_count(),
        recent,
    };
    let timewait_sockets = cfg.list_timewait.then(|| {
        let mut v: Vec<TimewaitView> = tracker
            .timewait()
            .map(|t| TimewaitView {
                tuple: t.tuple,
                substate: t.substate,
                entered_ms: t.entered_ms,
                remaining_ms: t.expires_ms.saturating_sub(now),
                restarts: t.restarts,
                was_fin_wait2: t.was_fin_wait2,
            })
            .collect();
        v.sort_by(|a, b| a.entered_ms.cmp(&b.entered_ms).then(a.tuple.cmp(&b.tuple)));
        v
    });
    let mut level = buckets.level;
    if let Some(p) = pressure.first() {
        level = level.max(p.level);
    }
    if !leaks.is_empty() || !stalls.is_empty() {
        level = level.max(Level::Warning);
    }
    Report {
        taken_at_ms: now,
        polls: tracker.polls(),
        settings: settings.clone(),
        counts,
        per_local,
        per_remote,
        rate: entry_rate(tracker, snap),
        port_pressure: pressure,
        port_pressure_totals,
        tw_buckets: buckets,
        close_wait_threshold_ms: cfg.close_wait_threshold_ms,
        close_wait_leaks: leaks,
        stalls,
        exits,
        timewait_sockets,
        owner_scan: owners.map(|o| OwnerScanInfo {
            fds_read: o.fds_read,
            truncated: o.truncated,
        }),
        level,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sock_diag::{FullSocket, TimewaitSocket};

    const T0: u64 = 1_700_000_000_000;

    fn full(cookie: u64, state: TcpState, inode: u64) -> FullSocket {
        FullSocket {
            tuple: FourTuple {
                local: "10.0.0.1:80".parse().unwrap(),
                remote: format!("10.0.0.2:{}", 50000 + cookie).parse().unwrap(),
            },
            state,
            inode,
            uid: 1000,
            cookie,
            recv_queue: 3,
            send_queue: 0,
            retransmits: None,
            timer_ms: None,
            last_ack_recv_ms: None,
        }
    }

    fn snap(at: u64, closing: Vec<FullSocket>) -> Snapshot {
        Snapshot {
            taken_at_ms: at,
            timewait: vec![TimewaitSocket {
                tuple: FourTuple {
                    local: "10.0.0.1:40000".parse().unwrap(),
                    remote: "10.0.0.3:443".parse().unwrap(),
                },
                substate: TwSubstate::TimeWait,
                remaining_ms: 30_000,
                cookie: 99,
            }],
            closing,
            open: vec![],
        }
    }

    #[test]
    fn close_wait_leaks_past_threshold_with_owner_and_at_least() {
        let mut t = Tracker::new(60);
        let cfg = ReportConfig::default();
        let s0 = snap(T0, vec![full(1, TcpState::CloseWait, 111)]);
        t.observe(&s0);
        let s1 = snap(
            T0 + 61_000,
            vec![
                full(1, TcpState::CloseWait, 111),
                full(2, TcpState::CloseWait, 222),
            ],
        );
        t.observe(&s1);
        assert_eq!(leak_inodes(&t, s1.taken_at_ms, &cfg), HashSet::from([111]));
        let mut scan = OwnerScan::default();
        scan.owners.insert(
            111,
            vec![Owner {
                pid: 42,
                comm: "leaky".into(),
                fd: 7,
            }],
        );
        let k = KernelSettings::linux_defaults();
        let r = build_report(&s1, &t, &k, None, Some(&scan), &cfg);
        assert_eq!(r.close_wait_leaks.len(), 1);
        let l = &r.close_wait_leaks[0];
        assert_eq!(l.age_ms, 61_000);
        assert!(l.at_least);
        assert_eq!(l.owners[0].pid, 42);
        assert_eq!(r.level, Level::Warning);
        assert_eq!(r.counts.close_wait, 2);
        assert_eq!(r.polls, 2);
        // Lower threshold: the young one too, and it is not "at least".
        let cfg = ReportConfig {
            close_wait_threshold_ms: 0,
            ..ReportConfig::default()
        };
        let r = build_report(&s1, &t, &k, None, None, &cfg);
        assert_eq!(r.close_wait_leaks.len(), 2);
        assert!(!r.close_wait_leaks[1].at_least);
        assert!(r.owner_scan.is_none());
    }

    #[test]
    fn stalls_against_expected_times() {
        let mut t = Tracker::new(60);
        let mut k = KernelSettings::linux_defaults();
        k.fin_timeout_s = 30;
        let cfg = ReportConfig {
            stall_after_ms: 10_000,
            ..ReportConfig::default()
        };
        let sockets = vec![
            full(1, TcpState::FinWait2, 5),
            full(2, TcpState::LastAck, 0),
            full(3, TcpState::CloseWait, 6),
        ];
        t.observe(&snap(T0, sockets.clone()));
        t.observe(&snap(T0 + 20_000, sockets.clone()));
        let s = stalls(&t, T0 + 20_000, &k, &cfg);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].state, TcpState::LastAck);
        t.observe(&snap(T0 + 31_000, sockets));
        let s = stalls(&t, T0 + 31_000, &k, &cfg);
        assert_eq!(s.len(), 2);
        assert!(s
            .iter()
            .any(|x| x.state == TcpState::FinWait2 && x.expected_ms == 30_000));
    }

    #[test]
    fn report_lists_timewait_and_serialises() {
        let mut t = Tracker::new(60);
        let s = snap(T0, vec![]);
        t.observe(&s);
        let cfg = ReportConfig {
            list_timewait: true,
            ..ReportConfig::default()
        };
        let r = build_report(&s, &t, &KernelSettings::linux_defaults(), None, None, &cfg);
        let v = r.timewait_sockets.as_ref().unwrap();
        assert_eq!(v[0].entered_ms, T0 - 30_000);
        assert_eq!(v[0].remaining_ms, 30_000);
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["counts"]["time_wait"], 1);
        assert_eq!(j["rate"]["method"], "timer-estimate");
        assert_eq!(j["level"], "ok");
    }
}
