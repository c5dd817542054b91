//! One poll end to end: kernel settings, sock_diag snapshot, tracker, owner scan, report. Used by
//! `teardown timewait` and by the collector thread of `teardown top`. Create and use a
//! [`Collector`] on a thread of the network namespace to observe.

use super::report::{build_report, leak_inodes, Report, ReportConfig};
use super::MonitorError;
use crate::sock_diag::follow::{PollDelta, Tracker};
use crate::sock_diag::sysctl::KernelSettings;
use crate::sock_diag::{find_owners, PollOptions, Poller, ScanLimits, Snapshot};

/// Polls sock_diag and keeps the history the figures need.
#[derive(Debug)]
pub struct Collector {
    poller: Poller,
    tracker: Tracker,
    cfg: ReportConfig,
    owner_limits: Option<ScanLimits>,
    previous_overflow: Option<u64>,
    last_snapshot: Option<Snapshot>,
}

impl Collector {
    /// `owner_limits`: scan `/proc` for the owners of leaking CLOSE_WAIT sockets within these
    /// bounds, or `None` to skip it.
    pub fn new(
        options: PollOptions,
        cfg: ReportConfig,
        owner_limits: Option<ScanLimits>,
    ) -> Result<Self, MonitorError> {
        let settings = KernelSettings::read()?;
        Ok(Self {
            poller: Poller::new(options)?,
            tracker: Tracker::new(settings.fin_timeout_s),
            cfg,
            owner_limits,
            previous_overflow: None,
            last_snapshot: None,
        })
    }

    /// Takes one snapshot and returns the report with what changed since the previous poll.
    pub fn poll(&mut self) -> Result<(Report, PollDelta), MonitorError> {
        let settings = KernelSettings::read()?;
        let snap = self.poller.poll()?;
        let delta = self.tracker.observe(&snap);
        let owners = self.owner_limits.map(|limits| {
            find_owners(
                &leak_inodes(&self.tracker, snap.taken_at_ms, &self.cfg),
                limits,
            )
        });
        let report = build_report(
            &snap,
            &self.tracker,
            &settings,
            self.previous_overflow,
            owners.as_ref(),
            &self.cfg,
        );
        self.previous_overflow = settings.tw_overflow.or(self.previous_overflow);
        self.last_snapshot = Some(snap);
        Ok((report, delta))
    }

    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    /// The snapshot of the latest poll.
    pub fn last_snapshot(&self) -> Option<&Snapshot> {
        self.last_snapshot.as_ref()
    }

    pub fn config(&self) -> &ReportConfig {
        &self.cfg
    }
}
