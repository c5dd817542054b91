//! Stage 6, sinks: where verdicts (stage 5) go.
//!
//! Where judged connections go: the terminal, JSON Lines, a Zeek conn.log, or anything else
//! behind [`Sink`].

mod channel;
mod jsonl;
pub mod ladder;
pub mod metrics;
pub mod report;
mod summary;
mod svg_dir;
mod text;
mod zeek;

use std::{io, net::SocketAddr};

pub use channel::DeviationLines;
pub use jsonl::{Conforming, JsonlSink};
pub use metrics::{Metrics, MetricsSink};
pub use report::ReportSink;
pub use summary::{LostReport, Summary, TimewaitCounts};
pub use svg_dir::SvgDirSink;
pub use text::TextSink;
pub use zeek::{zeek_close, zeek_header, ZeekSink};

use crate::{judge::Verdict, track::timewait::TimewaitNote, track::Connection};

/// One finished connection with its verdict, as handed to every sink.
pub struct Report<'a> {
    pub conn: &'a Connection,
    /// The id of the other end, when it was traced too.
    pub peer_id: Option<u64>,
    /// The other end's events, when it was traced too (`peer_id` is its id).
    pub peer: Option<&'a Connection>,
    pub verdict: &'a Verdict,
    /// CLOCK_REALTIME - CLOCK_MONOTONIC when the trace began, to print wall-clock times.
    pub wall_offset_ns: i64,
}

/// An output of the pipeline.
pub trait Sink {
    fn connection(&mut self, report: &Report<'_>) -> io::Result<()>;
    /// What sock_diag later showed of a reported connection's timewait socket.
    fn timewait(&mut self, _note: &TimewaitNote) -> io::Result<()> {
        Ok(())
    }
    /// End of the trace: write the summary and flush.
    fn finish(&mut self, summary: &Summary) -> io::Result<()>;
}

/// `HH:MM:SS.mmm` UTC of a time in ms since the Unix epoch.
pub(crate) fn utc_time(ms: u64) -> String {
    let day_ms = ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1000 % 60,
        day_ms % 1000
    )
}

/// `127.0.0.1:80` / `[::1]:80`, and `*` for an unknown (zero) port.
pub(crate) fn endpoint(a: &SocketAddr) -> String {
    if a.port() == 0 {
        format!("{}:*", a.ip())
    } else {
        a.to_string()
    }
}
