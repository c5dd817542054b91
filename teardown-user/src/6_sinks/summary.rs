//! What a trace saw, in totals: printed at its end and written as the last JSON line.

use std::{collections::BTreeMap, fmt::Write as _};

use serde::Serialize;

/// What the trace saw, printed at the end and written as the last JSON line.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    /// Connections reported (after filters).
    pub connections: u64,
    /// Connections seen in all, reported or not.
    pub connections_seen: u64,
    /// Kernel events received.
    pub events: u64,
    /// Events the kernel could not deliver (ring buffer full). Never silent.
    pub lost_events: u64,
    /// Records that could not be decoded.
    pub undecodable: u64,
    /// Connections dropped from a full table.
    pub evicted: u64,
    /// Events of timewait sockets matching no traced connection.
    pub unattached: u64,
    /// Replay: bad lines skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped_lines: Option<u64>,
    pub by_variant: BTreeMap<&'static str, u64>,
    pub by_finding: BTreeMap<&'static str, u64>,
    pub conforming: u64,
    pub deviating: u64,
    pub incomplete: u64,
    /// Sockets already closing when the trace began (sock_diag).
    pub closing_at_start: u64,
    /// What sock_diag showed of reported connections' timewait sockets.
    pub timewait: TimewaitCounts,
}

/// Timewait facts joined to reported connections.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct TimewaitCounts {
    pub entered: u64,
    pub restarts: u64,
    pub expired: u64,
    pub reused: u64,
    pub killed: u64,
}

impl Summary {
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "summary: {} connections reported ({} seen), {} events, {} lost events{}",
            self.connections,
            self.connections_seen,
            self.events,
            self.lost_events,
            if self.lost_events > 0 {
                " (ring buffer full: raise --ring-size or narrow the filters)"
            } else {
                ""
            }
        );
        let _ = writeln!(
            s,
            "  verdicts: {} conform, {} deviate, {} incomplete",
            self.conforming, self.deviating, self.incomplete
        );
        if !self.by_variant.is_empty() {
            let _ = writeln!(s, "  by variant:");
            for (k, v) in &self.by_variant {
                let _ = writeln!(s, "    {v:>8}  {k}");
            }
        }
        if !self.by_finding.is_empty() {
            let _ = writeln!(s, "  by finding:");
            for (k, v) in &self.by_finding {
                let _ = writeln!(s, "    {v:>8}  {k}");
            }
        }
        if self.undecodable + self.evicted + self.unattached > 0 {
            let _ = writeln!(
                s,
                "  also: {} undecodable records, {} connections evicted from a full table, {} unattached timewait events",
                self.undecodable, self.evicted, self.unattached
            );
        }
        let tw = &self.timewait;
        if tw.entered + tw.restarts + tw.expired + tw.reused + tw.killed > 0 {
            let _ = writeln!(
                s,
                "  timewait sockets (sock_diag): {} seen, {} timer restarts, {} expired, {} reused, {} killed",
                tw.entered, tw.restarts, tw.expired, tw.reused, tw.killed
            );
        }
        if self.closing_at_start > 0 {
            let _ = writeln!(
                s,
                "  {} sockets were already closing when the trace began",
                self.closing_at_start
            );
        }
        if let Some(n) = self.skipped_lines {
            let _ = writeln!(s, "  {n} bad lines skipped");
        }
        s.trim_end().to_owned()
    }
}
