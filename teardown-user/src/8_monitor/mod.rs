//! Stage 8, monitor: figures from sock_diag (stage 2) for `timewait` and `top`.
//!
//! Build-up figures computed from sock_diag snapshots: how many sockets sit in each closing
//! state, toward which peers, since when, owned by which process, and whether it is getting
//! dangerous.
//!
//! - [`figures`]: pure functions of one snapshot (counts, per address, port pressure, headroom
//!   to `tcp_max_tw_buckets`);
//! - [`crate::sock_diag::follow`]: what a series of snapshots tells (entry times, timer
//!   restarts, how timewait sockets left, rates, ages of closing sockets), shared with the trace;
//! - [`report`]: all of it together, with CLOSE_WAIT leaks and stalled FIN_WAIT2 / LAST_ACK
//!   sockets, as one serialisable [`Report`];
//! - [`collect`]: the polling that keeps the history, in one network namespace;
//! - [`host`]: every network namespace of the host, each with its collector and its owner
//!   (the container inside);
//! - [`crate::sock_diag::sysctl`]: the sysctls and counters the figures are measured against.

pub mod collect;
pub mod figures;
pub mod host;
pub mod report;

pub use collect::Collector;
pub use figures::{Level, PortPressure, Reuse, StateCounts, Thresholds, TimewaitGroup, TwBuckets};
pub use host::{HostCollector, HostReport, NamespaceOwner, NamespaceReport};
pub use report::{build_report, Leak, PressureTotals, Report, ReportConfig, Stall};

/// Errors reading the kernel's settings.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error(transparent)]
    Settings(#[from] crate::sock_diag::sysctl::SettingsError),
    #[error(transparent)]
    Diag(#[from] crate::sock_diag::DiagError),
}
