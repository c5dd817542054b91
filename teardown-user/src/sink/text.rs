//! Human-readable output: one block per connection, then a summary.

use std::io::{self, Write};

use super::{endpoint, Report, Sink};
use crate::{
    event::{EventKind, SockSnapshot},
    pipeline::Summary,
    tracker::RecordEnd,
};

pub struct TextSink<W: Write> {
    out: W,
    /// Reused for the verdict's text, so a report costs no new buffer.
    buf: String,
    /// Show raw sequence fields on each event line.
    raw: bool,
}

impl<W: Write> TextSink<W> {
    pub fn new(out: W, raw: bool) -> Self {
        TextSink {
            out,
            buf: String::new(),
            raw,
        }
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
        parts.push(format!("err={}", crate::event::errno_name(s.err)));
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
            Some(t) => format!("pid {} ({})", t.pid, t.comm),
            None => "pid ?".to_owned(),
        };
        let peer = r
            .peer_id
            .map(|p| format!("  peer #{p}"))
            .unwrap_or_default();
        writeln!(
            self.out,
            "#{} {} -> {}  {}  {}{}",
            c.id,
            endpoint(&c.local),
            endpoint(&c.remote),
            process,
            end,
            peer
        )?;
        writeln!(self.out, "    {}", r.verdict.headline())?;
        let t0 = c.first_ts();
        for e in &c.events {
            let ms = e.ts_ns.saturating_sub(t0) as f64 / 1e6;
            let what = match e.kind {
                EventKind::State { old, new } => format!("{old:<11} -> {new}"),
                EventKind::Retransmit { state } => format!("retransmit in {state}"),
                EventKind::ResetSent { state } => format!("RST sent in {state}"),
                EventKind::ResetReceived { state } => format!("RST received in {state}"),
            };
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
        self.buf.clear();
        // Writing to a String cannot fail.
        let _ = r.verdict.write_text(&mut self.buf);
        for line in self.buf.lines() {
            writeln!(self.out, "    {line}")?;
        }
        writeln!(self.out)
    }

    fn finish(&mut self, s: &Summary) -> io::Result<()> {
        writeln!(self.out, "{}", s.to_text())?;
        self.out.flush()
    }
}
