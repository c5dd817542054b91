//! What a trace saw, in totals: printed at its end and written as the last JSON line.

use std::{collections::BTreeMap, fmt::Write as _};

use serde::Serialize;

use crate::kernel::LostCounts;

/// What the trace saw, printed at the end and written as the last JSON line.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    /// Connections reported (after filters).
    pub connections: u64,
    /// Connections seen in all, reported or not.
    pub connections_seen: u64,
    /// Kernel events received.
    pub events: u64,
    /// Events the kernel did not deliver, in all. Never silent.
    pub lost_events: u64,
    /// `lost_events` by cause.
    pub lost_by_cause: LostCounts,
    /// What the events counted instead of sent (the agent behind) were: `OLD>NEW` for state
    /// changes, the kind for others.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub not_judged: BTreeMap<String, u64>,
    /// Records that could not be decoded.
    pub undecodable: u64,
    /// `lost_by_cause.recursion` by program, when a live trace read them.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub recursion_by_program: BTreeMap<&'static str, u64>,
    /// Connections dropped from a full table.
    pub evicted: u64,
    /// The other bounded tables' evictions, and events over the per-connection cap.
    #[serde(flatten)]
    pub bounds: Bounds,
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
    /// What was learnt of reported connections' timewait sockets.
    pub timewait: TimewaitCounts,
    /// The timewait facts came from the kernel's timer events (else from sock_diag).
    #[serde(skip)]
    pub timewait_from_kernel: bool,
    /// Timewait sockets not followed because the table of them was full.
    #[serde(skip_serializing_if = "is_zero")]
    pub timewait_untracked: u64,
    /// Orphans reported without their FIN_WAIT2 timewait socket's fate: it did not come in
    /// time, the trace stopped first, or too many were waiting.
    #[serde(skip_serializing_if = "is_zero")]
    pub timewait_fate_unseen: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What the bounds on memory cost, past the open-connection table's `evicted` (each present in
/// JSON Lines when not 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Bounds {
    /// Events of connections that had taken all their stored runs (each connection's
    /// `unstored_events`, summed over all tracked, reported or not).
    #[serde(skip_serializing_if = "is_zero")]
    pub events_unstored: u64,
    /// Closed connections handed on before their settle time: that table was full.
    #[serde(skip_serializing_if = "is_zero")]
    pub settle_cut: u64,
    /// Sockets already closing at start that were not remembered: that table was full.
    #[serde(skip_serializing_if = "is_zero")]
    pub seeds_dropped: u64,
    /// Closed ends dropped while waiting for a peer still open: that table was full.
    #[serde(skip_serializing_if = "is_zero")]
    pub peer_wait_evicted: u64,
}

/// Every event not delivered or not understood, by cause: the kernel's counts and the
/// agent's undecodable records (the `lost` object of the JSON Lines summary).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LostReport {
    /// The events lost: the kernel's `lost_events` and the undecodable records (not the two
    /// counts of what may have cost events, `port_table_evicted` and `timer_recursion`).
    pub total: u64,
    pub ring_full: u64,
    pub behind: u64,
    pub unreadable: u64,
    pub port_table_evicted: u64,
    pub undecodable: u64,
    pub recursion: u64,
    pub timer_recursion: u64,
    /// `recursion` and `timer_recursion` by program.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub recursion_by_program: BTreeMap<&'static str, u64>,
    /// A recording made before causes were told apart: its losses not told apart.
    #[serde(skip_serializing_if = "is_zero")]
    pub untold: u64,
}

/// Timewait facts joined to reported connections.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct TimewaitCounts {
    pub entered: u64,
    pub restarts: u64,
    pub expired: u64,
    pub reused: u64,
    pub killed: u64,
    /// Gone with their network namespace (known from the kernel's timer events only).
    #[serde(skip_serializing_if = "is_zero")]
    pub purged: u64,
}

impl Summary {
    /// The losses by cause.
    pub fn lost(&self) -> LostReport {
        let l = &self.lost_by_cause;
        LostReport {
            total: self.lost_events.max(l.total()) + self.undecodable,
            ring_full: l.ring_full,
            behind: l.behind,
            unreadable: l.unreadable,
            port_table_evicted: l.port_table_evicted,
            undecodable: self.undecodable,
            recursion: l.recursion,
            timer_recursion: l.timer_recursion,
            recursion_by_program: self.recursion_by_program.clone(),
            untold: self.lost_events.saturating_sub(l.total()),
        }
    }

    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "summary: {} connections reported ({} seen), {} events, {} lost events{}",
            self.connections,
            self.connections_seen,
            self.events,
            self.lost().total,
            self.lost_causes()
        );
        let at_risk = self.at_risk();
        if !at_risk.is_empty() {
            let _ = writeln!(s, "  may have cost events: {}", at_risk.join("; "));
        }
        if !self.not_judged.is_empty() {
            let mut by_count: Vec<(&String, &u64)> = self.not_judged.iter().collect();
            by_count.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            let _ = writeln!(s, "  counted, not judged (the agent was behind):");
            for (what, n) in by_count {
                let _ = writeln!(s, "    {n:>8}  {what}");
            }
        }
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
        // What the bounds on memory cost (undecodable records are among the lost, above).
        let b = &self.bounds;
        let bounds: Vec<String> = [
            (
                self.evicted,
                "connections evicted from a full table (raise --max-connections)",
            ),
            (
                b.events_unstored,
                "events not stored (connections at their cap of stored steps)",
            ),
            (
                b.settle_cut,
                "closed connections handed on early (settling table full)",
            ),
            (b.seeds_dropped, "sockets closing at start not remembered"),
            (
                b.peer_wait_evicted,
                "closed ends dropped while their peer was open",
            ),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
        if !bounds.is_empty() {
            let _ = writeln!(s, "  bounds: {}", bounds.join(", "));
        }
        if self.unattached > 0 {
            let _ = writeln!(
                s,
                "  also: {} timewait events matching no traced connection",
                self.unattached
            );
        }
        let tw = &self.timewait;
        if tw.entered + tw.restarts + tw.expired + tw.reused + tw.killed + tw.purged > 0 {
            let purged = if tw.purged > 0 {
                format!(", {} gone with their namespace", tw.purged)
            } else {
                String::new()
            };
            let _ = writeln!(
                s,
                "  timewait sockets ({}): {} seen, {} timer restarts, {} expired, {} reused, {} killed{purged}",
                if self.timewait_from_kernel {
                    "kernel timers"
                } else {
                    "sock_diag"
                },
                tw.entered, tw.restarts, tw.expired, tw.reused, tw.killed
            );
        }
        if self.timewait_fate_unseen > 0 {
            let _ = writeln!(
                s,
                "  {} orphans reported before their FIN_WAIT2 timewait socket told whether the peer's FIN came",
                self.timewait_fate_unseen
            );
        }
        if self.timewait_untracked > 0 {
            let _ = writeln!(
                s,
                "  {} timewait sockets not followed (their table was full)",
                self.timewait_untracked
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

    /// What may have cost events without being lost events itself, each with what to do:
    /// sockets the `--port` table evicted (those still open lose their last events; most have
    /// closed) and skipped runs of the timer programs (which see every timer of the kernel).
    fn at_risk(&self) -> Vec<String> {
        let l = &self.lost_by_cause;
        let mut parts = Vec::new();
        if l.port_table_evicted > 0 {
            parts.push(format!(
                "{} from the --port table (a socket evicted while still open loses its last \
                 events): raise --port-table",
                plural(l.port_table_evicted, "socket evicted", "sockets evicted")
            ));
        }
        if l.timer_recursion > 0 {
            parts.push(format!(
                "{} of the timer programs skipped by the kernel, one of ours already running on \
                 that CPU (a timewait socket's fact may be missing)",
                plural(l.timer_recursion, "run", "runs")
            ));
        }
        parts
    }

    /// ` (N ring buffer full: what to do; ...)`, each cause with what to do about it, or
    /// nothing when none were lost.
    fn lost_causes(&self) -> String {
        let l = self.lost();
        let mut parts = Vec::new();
        if l.ring_full > 0 {
            parts.push(format!(
                "{} ring buffer full: raise --ring-size",
                l.ring_full
            ));
        }
        if l.behind > 0 {
            parts.push(format!(
                "{} counted while the agent was behind: raise --ring-size or narrow the filters",
                l.behind
            ));
        }
        if l.unreadable > 0 {
            parts.push(format!(
                "{} with a field unreadable: -vv names the fields",
                l.unreadable
            ));
        }
        if l.undecodable > 0 {
            parts.push(format!(
                "{}: -vv says why",
                plural(l.undecodable, "undecodable record", "undecodable records")
            ));
        }
        if l.recursion > 0 {
            parts.push(format!(
                "{} skipped by the kernel, one of ours already running on that CPU: nothing to \
                 set, report it if frequent",
                plural(l.recursion, "program run", "program runs")
            ));
        }
        // A recording made before causes were told apart: a full ring buffer or unreadable
        // records.
        if l.untold > 0 {
            parts.push(format!(
                "{} ring buffer full or unreadable, not told apart in this recording",
                l.untold
            ));
        }
        if parts.is_empty() {
            return String::new();
        }
        format!(" ({})", parts.join("; "))
    }
}

/// `1 ONE` or `N MANY`.
fn plural(n: u64, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losses_are_told_by_cause_with_what_to_do() {
        let mut s = Summary::default();
        assert!(s
            .to_text()
            .starts_with("summary: 0 connections reported (0 seen), 0 events, 0 lost events\n"));
        s.lost_events = 7;
        s.lost_by_cause = LostCounts {
            ring_full: 1,
            unreadable: 2,
            behind: 4,
            ..LostCounts::default()
        };
        s.not_judged = [
            ("retransmit".to_owned(), 1),
            ("LAST_ACK>CLOSE".to_owned(), 3),
        ]
        .into();
        let text = s.to_text();
        assert!(
            text.starts_with(
                "summary: 0 connections reported (0 seen), 0 events, 7 lost events (1 ring buffer \
                 full: raise --ring-size; 4 counted while the agent was behind: raise \
                 --ring-size or narrow the filters; 2 with a field unreadable: -vv names the \
                 fields)\n"
            ),
            "{text}"
        );
        // A recording made before causes were told apart.
        let old = Summary {
            lost_events: 5,
            ..Summary::default()
        };
        assert!(
            old.to_text().starts_with(
                "summary: 0 connections reported (0 seen), 0 events, 5 lost events (5 ring \
                 buffer full or unreadable, not told apart in this recording)\n"
            ),
            "{}",
            old.to_text()
        );
        // Every other cause, each with what to do; what may have cost events on a line of its
        // own, apart from the events lost.
        let all = Summary {
            lost_events: 4,
            lost_by_cause: LostCounts {
                ring_full: 1,
                port_table_evicted: 2,
                recursion: 3,
                timer_recursion: 5,
                ..LostCounts::default()
            },
            undecodable: 1,
            ..Summary::default()
        };
        assert!(
            all.to_text().starts_with(
                "summary: 0 connections reported (0 seen), 0 events, 5 lost events (1 ring buffer \
                 full: raise --ring-size; 1 undecodable record: -vv says why; 3 program runs \
                 skipped by the kernel, one of ours already running on that CPU: nothing to set, \
                 report it if frequent)\n  may have cost events: 2 sockets evicted from the \
                 --port table (a socket evicted while still open loses its last events): raise \
                 --port-table; 5 runs of the timer programs skipped by the kernel, one of ours \
                 already running on that CPU (a timewait socket's fact may be missing)\n"
            ),
            "{}",
            all.to_text()
        );
        let lost = all.lost();
        assert_eq!(
            (
                lost.total,
                lost.port_table_evicted,
                lost.timer_recursion,
                lost.undecodable,
                lost.untold
            ),
            (5, 2, 5, 1, 0)
        );
        // Most counted first.
        assert!(
            text.contains(&format!(
                "  counted, not judged (the agent was behind):\n    {:>8}  LAST_ACK>CLOSE\n    {:>8}  \
                 retransmit\n",
                3, 1
            )),
            "{text}"
        );
    }
}
