//! Human-readable output: one block per connection, then a summary.

use std::io::{self, Write};

use super::{endpoint, utc_time, Report, Sink, Summary};
use crate::escape;
use crate::sock_diag::namespaces::ContainerDirectory;
use crate::{
    decode::{EventKind, SockSnapshot},
    sock_diag::{TwFate, TwSubstate},
    track::timewait::{TimewaitNote, TwWhat},
    track::RecordEnd,
};

pub struct TextSink<W: Write> {
    out: W,
    /// Reused for the verdict's text, so a report costs no new buffer.
    buf: String,
    /// Show raw sequence fields on each event line.
    raw: bool,
    /// Connections of any other network namespace are marked with theirs.
    home_netns: Option<u32>,
    /// Names the container of such a namespace.
    containers: Option<ContainerDirectory>,
}

impl<W: Write> TextSink<W> {
    pub fn new(out: W, raw: bool) -> Self {
        TextSink {
            out,
            buf: String::new(),
            raw,
            home_netns: None,
            containers: None,
        }
    }

    /// Names the container behind a connection's network namespace, when one is.
    pub fn with_containers(mut self, containers: Option<ContainerDirectory>) -> Self {
        self.containers = containers;
        self
    }

    /// Marks connections outside network namespace `home` (e.g. a container's) with theirs.
    pub fn with_home_netns(mut self, home: Option<u32>) -> Self {
        self.home_netns = home;
        self
    }
}

fn sock_note(s: &SockSnapshot) -> String {
    let mut parts = Vec::new();
    if s.dead() {
        parts.push("DEAD".to_owned());
    }
    if s.done() {
        parts.push("DONE".to_owned());
    }
    if s.err != 0 {
        parts.push(format!("err={}", crate::decode::errno_name(s.err)));
    }
    parts.join(" ")
}

impl<W: Write> Sink for TextSink<W> {
    fn connection(&mut self, r: &Report<'_>) -> io::Result<()> {
        let c = r.conn;
        let end = match c.end {
            RecordEnd::Closed => "closed",
            RecordEnd::StillOpen => "still open",
            RecordEnd::Superseded => "record cut short (address reused)",
            RecordEnd::Evicted => "evicted from a full table",
        };
        let process = match c.process {
            Some(t) => format!("pid {} ({})", t.pid, escape::text(&t.comm.as_str())),
            None => "pid ?".to_owned(),
        };
        let peer = r
            .peer_id
            .map(|p| format!("  peer #{p}"))
            .unwrap_or_default();
        let netns = match self.home_netns {
            Some(home) if c.netns != 0 && c.netns != home => {
                match self.containers.as_ref().and_then(|d| d.get(c.netns)) {
                    Some(container) => format!(
                        "  netns {} ({})",
                        c.netns,
                        escape::text(&container.to_string())
                    ),
                    None => format!("  netns {}", c.netns),
                }
            }
            _ => String::new(),
        };
        writeln!(
            self.out,
            "#{} {} -> {}  {}  {}{}{}",
            c.id,
            endpoint(&c.local),
            endpoint(&c.remote),
            process,
            end,
            peer,
            netns
        )?;
        writeln!(self.out, "    {}", r.verdict.headline())?;
        if let Some(st) = c.state_at_start {
            writeln!(
                self.out,
                "    already in {st} when the trace began (sock_diag)"
            )?;
        }
        let t0 = c.first_ts();
        for r in &c.events {
            let e = &r.ev;
            let ms = r.first_ts.saturating_sub(t0) as f64 / 1e6;
            let mut what = match e.kind {
                EventKind::State { old, new } => format!("{old:<11} -> {new}"),
                EventKind::Retransmit { state } => format!("retransmit in {state}"),
                EventKind::ResetSent { state } => format!("RST sent in {state}"),
                EventKind::ResetReceived { state } => format!("RST received in {state}"),
            };
            if r.folded() {
                // A run: how many, until when (the fields shown are its last event's).
                let last = e.ts_ns.saturating_sub(t0) as f64 / 1e6;
                what.push_str(&format!(" x{} to {last:+.3} ms", r.count()));
            }
            let mut extra = String::new();
            if let Some(s) = e.seq.filter(|_| self.raw) {
                extra.push_str(&format!(
                    "  una={} nxt={} rcv={} wseq={}",
                    s.snd_una, s.snd_nxt, s.rcv_nxt, s.write_seq
                ));
            }
            if let Some(s) = e.sock {
                let note = sock_note(&s);
                if !note.is_empty() {
                    extra.push_str("  ");
                    extra.push_str(&note);
                }
            }
            if extra.is_empty() {
                writeln!(self.out, "    {ms:>+10.3} ms  {what}")?;
            } else {
                writeln!(self.out, "    {ms:>+10.3} ms  {what:<30}{extra}")?;
            }
        }
        if c.unstored > 0 {
            writeln!(
                self.out,
                "    ... {} more events not stored (at most {} steps kept per connection)",
                c.unstored,
                crate::track::MAX_STEPS
            )?;
        }
        self.buf.clear();
        // Writing to a String cannot fail.
        let _ = r.verdict.write_text(&mut self.buf);
        for line in self.buf.lines() {
            writeln!(self.out, "    {line}")?;
        }
        writeln!(self.out)
    }

    fn timewait(&mut self, n: &TimewaitNote) -> io::Result<()> {
        let f = &n.fact;
        let what = match &f.what {
            TwWhat::Entered {
                state: TwSubstate::TimeWait,
                entered_ms,
            } => format!("entered TIME_WAIT at {} UTC (from its timer)", utc_time(*entered_ms)),
            TwWhat::Entered {
                state: TwSubstate::FinWait2,
                entered_ms,
            } => format!(
                "FIN_WAIT2 timewait socket since {} UTC, waiting for the peer's FIN",
                utc_time(*entered_ms)
            ),
            TwWhat::Restarted {
                previous_entered_ms,
                entered_ms,
            } => format!(
                "TIME_WAIT timer restarted (+{} ms): the peer resent its FIN, so the final ACK (step 4) was presumably lost; TIME_WAIT did its job and answered it",
                entered_ms.saturating_sub(*previous_entered_ms)
            ),
            TwWhat::Left {
                how,
                entered_ms,
                restarts,
            } => {
                let how = match how {
                    TwFate::Expired => "expired",
                    TwFate::Reused => "reused by a new connection on the same 4-tuple",
                    TwFate::Killed => {
                        "killed early: by a RST (RFC 1337: with net.ipv4.tcp_rfc1337 at 0, the default, a RST ends TIME_WAIT), or a reuse already over"
                    }
                    TwFate::Purged => "gone with its network namespace, which was removed",
                };
                format!(
                    "left TIME_WAIT: {how}, {:.1} s after entering, {restarts} timer restart(s)",
                    f.at_ms.saturating_sub(*entered_ms) as f64 / 1000.0
                )
            }
        };
        writeln!(
            self.out,
            "#{} {} -> {}  {}: {what}\n",
            n.id,
            endpoint(&f.local),
            endpoint(&f.remote),
            if n.from_kernel { "timer" } else { "sock_diag" }
        )
    }

    fn finish(&mut self, s: &Summary) -> io::Result<()> {
        writeln!(self.out, "{}", s.to_text())?;
        self.out.flush()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod netns_tests {
    use super::*;
    use crate::{
        decode::{Comm, Event, EventKind, TcpState},
        track::Connection,
    };

    fn header(home: Option<u32>, netns: u32) -> String {
        let ev = Event {
            ts_ns: 1,
            sk: 0xa,
            kind: EventKind::State {
                old: TcpState::Close,
                new: TcpState::SynSent,
            },
            local: "10.0.0.1:40000".parse().unwrap(),
            remote: "10.0.0.2:80".parse().unwrap(),
            pid: 7,
            comm: Comm::new("app"),
            netns,
            seq: None,
            sock: None,
        };
        let conn = Connection {
            id: 1,
            sk: 0xa,
            local: ev.local,
            remote: ev.remote,
            process: ev.task(),
            netns,
            events: vec![ev.into()],
            unstored: 0,
            seen_from_start: true,
            events_maybe_lost: false,
            state_at_start: None,
            end: RecordEnd::StillOpen,
        };
        let verdict = crate::judge::judge(&conn, None);
        let mut sink = TextSink::new(Vec::new(), false).with_home_netns(home);
        sink.connection(&Report {
            conn: &conn,
            peer_id: None,
            peer: None,
            verdict: &verdict,
            wall_offset_ns: 0,
        })
        .unwrap();
        let text = String::from_utf8(sink.out).unwrap();
        text.lines().next().unwrap().to_owned()
    }

    #[test]
    fn connections_of_another_namespace_are_marked() {
        assert!(header(Some(4), 5).ends_with("still open  netns 5"));
        assert!(header(Some(5), 5).ends_with("still open"));
        assert!(header(None, 5).ends_with("still open"));
        assert!(header(Some(4), 0).ends_with("still open"));
    }
}
