//! JSON Lines: one object per connection timeline, then one summary object. The schema is in the
//! README ("JSON Lines output").

use std::io::{self, Write};

use serde::Serialize;

use super::{Report, Sink, Summary};
use crate::{
    decode::{EventKind, SeqSnapshot, SockSnapshot, TcpState},
    judge::Verdict,
    track::timewait::TimewaitNote,
    track::RecordEnd,
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

/// One event of a timeline: `{"t_us":..,"kind":"state","old":..,"new":..,"seq":{..},"sock":{..}}`.
struct Step {
    /// Microseconds since the connection's first event.
    t_us: f64,
    kind: EventKind,
    seq: Option<SeqSnapshot>,
    sock: Option<SockSnapshot>,
}

// Written by hand rather than with `#[serde(flatten)]` on the kind: flattening turns the whole
// step into a map serialized entry by entry, the dearest part of a busy trace's output.
impl Serialize for Step {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let kind_fields = if matches!(self.kind, EventKind::State { .. }) {
            3
        } else {
            2
        };
        let fields =
            1 + kind_fields + usize::from(self.seq.is_some()) + usize::from(self.sock.is_some());
        let mut st = s.serialize_struct("Step", fields)?;
        st.serialize_field("t_us", &self.t_us)?;
        match self.kind {
            EventKind::State { old, new } => {
                st.serialize_field("kind", "state")?;
                st.serialize_field("old", &old)?;
                st.serialize_field("new", &new)?;
            }
            EventKind::Retransmit { state } => {
                st.serialize_field("kind", "retransmit")?;
                st.serialize_field("state", &state)?;
            }
            EventKind::ResetSent { state } => {
                st.serialize_field("kind", "reset_sent")?;
                st.serialize_field("state", &state)?;
            }
            EventKind::ResetReceived { state } => {
                st.serialize_field("kind", "reset_received")?;
                st.serialize_field("state", &state)?;
            }
        }
        if let Some(seq) = &self.seq {
            st.serialize_field("seq", seq)?;
        }
        if let Some(sock) = &self.sock {
            st.serialize_field("sock", sock)?;
        }
        st.end()
    }
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
    /// Inode number of the network namespace, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    netns: Option<u32>,
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
    events: &'a [crate::decode::Event],
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
            netns: (c.netns != 0).then_some(c.netns),
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::decode::TcpState;

    /// The hand-written step writes the very bytes the derived, flattened one did.
    #[test]
    fn steps_are_written_as_the_event_kinds_serialize() {
        #[derive(Serialize)]
        struct Flattened {
            t_us: f64,
            #[serde(flatten)]
            kind: EventKind,
            #[serde(skip_serializing_if = "Option::is_none")]
            seq: Option<SeqSnapshot>,
            #[serde(skip_serializing_if = "Option::is_none")]
            sock: Option<SockSnapshot>,
        }
        let seq = SeqSnapshot {
            snd_una: 1,
            snd_nxt: 2,
            rcv_nxt: 3,
            write_seq: 4,
        };
        for kind in [
            EventKind::State {
                old: TcpState::Established,
                new: TcpState::FinWait1,
            },
            EventKind::Retransmit {
                state: TcpState::LastAck,
            },
            EventKind::ResetSent {
                state: TcpState::CloseWait,
            },
            EventKind::ResetReceived {
                state: TcpState::Established,
            },
        ] {
            for (seq, sock) in [
                (Some(seq), None),
                (None, Some(SockSnapshot { flags: 3, err: 104 })),
                (Some(seq), Some(SockSnapshot { flags: 0, err: 0 })),
                (None, None),
            ] {
                let step = Step {
                    t_us: 1.5,
                    kind,
                    seq,
                    sock,
                };
                let old = Flattened {
                    t_us: 1.5,
                    kind,
                    seq,
                    sock,
                };
                assert_eq!(
                    serde_json::to_string(&step).unwrap(),
                    serde_json::to_string(&old).unwrap()
                );
            }
            let step = Step {
                t_us: 1.5,
                kind,
                seq: Some(seq),
                sock: None,
            };
            let mut want = serde_json::json!({"t_us": 1.5, "seq": seq});
            let kind_json = serde_json::to_value(kind).unwrap();
            for (k, v) in kind_json.as_object().unwrap() {
                want[k] = v.clone();
            }
            let got = serde_json::to_value(&step).unwrap();
            assert_eq!(got, want);
            let text = serde_json::to_string(&step).unwrap();
            assert!(text.starts_with("{\"t_us\":1.5,\"kind\":"), "{text}");
        }
    }
}
