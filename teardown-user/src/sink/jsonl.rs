//! JSON Lines: one object per connection timeline, then one summary object. The schema is in the
//! README ("JSON Lines output").

use std::io::{self, Write};

use serde::Serialize;

use super::{Report, Sink};
use crate::{
    event::{EventKind, SeqSnapshot, SockSnapshot, TcpState},
    join::TimewaitNote,
    pipeline::Summary,
    tracker::RecordEnd,
    validate::Verdict,
};

pub struct JsonlSink<W: Write> {
    out: W,
}

impl<W: Write> JsonlSink<W> {
    pub fn new(out: W) -> Self {
        JsonlSink { out }
    }
}

#[derive(Serialize)]
struct Process<'a> {
    pid: u32,
    comm: &'a str,
}

#[derive(Serialize)]
struct Step {
    /// Microseconds since the connection's first event.
    t_us: f64,
    #[serde(flatten)]
    kind: EventKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<SeqSnapshot>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sock: Option<SockSnapshot>,
}

#[derive(Serialize)]
struct Timeline<'a> {
    r#type: &'static str,
    id: u64,
    sk: Hex,
    local: Endpoint<'a>,
    remote: Endpoint<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    process: Option<Process<'a>>,
    /// Wall-clock time of the first event, seconds since the Unix epoch.
    start_unix: f64,
    end: RecordEnd,
    #[serde(skip_serializing_if = "Option::is_none")]
    state_at_start: Option<TcpState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_state: Option<TcpState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    peer: Option<u64>,
    events: Steps<'a>,
    verdict: &'a Verdict,
}

// Written straight into the output, with no string or vector built per connection.

/// `0xffff8881...`.
struct Hex(u64);

impl Serialize for Hex {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{:#x}", self.0))
    }
}

/// `127.0.0.1:80`, or `127.0.0.1:*` for an unknown port.
struct Endpoint<'a>(&'a std::net::SocketAddr);

impl Serialize for Endpoint<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.port() == 0 {
            s.collect_str(&format_args!("{}:*", self.0.ip()))
        } else {
            s.collect_str(self.0)
        }
    }
}

struct Steps<'a> {
    events: &'a [crate::event::Event],
    t0: u64,
}

impl Serialize for Steps<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.events.iter().map(|e| Step {
            t_us: e.ts_ns.saturating_sub(self.t0) as f64 / 1e3,
            kind: e.kind,
            seq: e.seq,
            sock: e.sock,
        }))
    }
}

impl<W: Write> Sink for JsonlSink<W> {
    fn connection(&mut self, r: &Report<'_>) -> io::Result<()> {
        let c = r.conn;
        let comm = c.process.as_ref().map(|p| p.comm.as_str());
        let t0 = c.first_ts();
        let line = Timeline {
            r#type: "connection",
            id: c.id,
            sk: Hex(c.sk),
            local: Endpoint(&c.local),
            remote: Endpoint(&c.remote),
            process: c.process.as_ref().map(|p| Process {
                pid: p.pid,
                comm: comm.as_deref().unwrap_or(""),
            }),
            start_unix: (t0 as i128 + r.wall_offset_ns as i128) as f64 / 1e9,
            end: c.end,
            state_at_start: c.state_at_start,
            last_state: c.last_state(),
            peer: r.peer_id,
            events: Steps {
                events: &c.events,
                t0,
            },
            verdict: r.verdict,
        };
        serde_json::to_writer(&mut self.out, &line)?;
        self.out.write_all(b"\n")
    }

    fn timewait(&mut self, n: &TimewaitNote) -> io::Result<()> {
        #[derive(Serialize)]
        struct Line<'a> {
            r#type: &'static str,
            #[serde(flatten)]
            note: &'a TimewaitNote,
        }
        serde_json::to_writer(
            &mut self.out,
            &Line {
                r#type: "timewait",
                note: n,
            },
        )?;
        self.out.write_all(b"\n")
    }

    fn finish(&mut self, s: &Summary) -> io::Result<()> {
        #[derive(Serialize)]
        struct Line<'a> {
            r#type: &'static str,
            #[serde(flatten)]
            summary: &'a Summary,
        }
        serde_json::to_writer(
            &mut self.out,
            &Line {
                r#type: "summary",
                summary: s,
            },
        )?;
        self.out.write_all(b"\n")?;
        self.out.flush()
    }
}
