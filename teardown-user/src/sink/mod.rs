//! Where judged connections go: the terminal, JSON Lines, or anything else behind [`Sink`].

mod channel;
mod jsonl;
mod text;

use std::{io, net::SocketAddr};

pub use channel::DeviationLines;
pub use jsonl::JsonlSink;
pub use text::TextSink;

use crate::{pipeline::Summary, tracker::Connection, validate::Verdict};

/// One finished connection with its verdict, as handed to every sink.
pub struct Report<'a> {
    pub conn: &'a Connection,
    /// The id of the other end, when it was traced too.
    pub peer_id: Option<u64>,
    pub verdict: &'a Verdict,
    /// CLOCK_REALTIME - CLOCK_MONOTONIC when the trace began, to print wall-clock times.
    pub wall_offset_ns: i64,
}

/// An output of the pipeline.
pub trait Sink {
    fn connection(&mut self, report: &Report<'_>) -> io::Result<()>;
    /// End of the trace: write the summary and flush.
    fn finish(&mut self, summary: &Summary) -> io::Result<()>;
}

/// `127.0.0.1:80` / `[::1]:80`, and `*` for an unknown (zero) port.
pub(crate) fn endpoint(a: &SocketAddr) -> String {
    if a.port() == 0 {
        format!("{}:*", a.ip())
    } else {
        a.to_string()
    }
}
