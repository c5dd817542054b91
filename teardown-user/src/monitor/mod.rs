//! Build-up figures computed from sock_diag snapshots: how many sockets sit in each closing
//! state, toward which peers, since when, owned by which process, and whether it is getting
//! dangerous.
//!
//! - [`figures`]: pure functions of one snapshot (counts, per address, port pressure, headroom
//!   to `tcp_max_tw_buckets`);
//! - [`tracker`]: what a series of snapshots tells (entry times, timer restarts, how timewait
//!   sockets left, rates, ages of closing sockets);
//! - [`report`]: all of it together, with CLOSE_WAIT leaks and stalled FIN_WAIT2 / LAST_ACK
//!   sockets, as one serialisable [`Report`];
//! - [`kernel`]: the sysctls and counters of the current network namespace.

pub mod collect;
pub mod figures;
pub mod kernel;
pub mod report;
pub mod tracker;

pub use collect::Collector;
pub use figures::{Level, PortPressure, Reuse, StateCounts, Thresholds, TimewaitGroup, TwBuckets};
pub use kernel::{KernelSettings, TIMEWAIT_LEN_MS};
pub use report::{build_report, Leak, Report, ReportConfig, Stall};
pub use tracker::{entry_rate, EntryRate, PollDelta, Tracker, TwExit, TwExitKind, TwRestart};

/// Errors reading the kernel's settings.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("cannot read {0}: {1}")]
    Read(String, #[source] std::io::Error),
    #[error("unexpected value of {0}: {1:?}")]
    Parse(String, String),
    #[error(transparent)]
    Diag(#[from] crate::diag::DiagError),
}
