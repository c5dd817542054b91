//! JSON Lines: one object per connection timeline, then one summary object. The schema is in the
//! README ("JSON Lines output").
//!
//! A conforming connection is written in one of three forms ([`Conforming`]); deviating and
//! incomplete ones always in full. The compact form is written by hand into a reused buffer:
//! on a busy host it is most of the output, and serde's per-field work was most of its cost.

use std::io::{self, Write};
use std::sync::Arc;

use serde::Serialize;

use super::{Report, Sink, Summary};
use crate::{
    decode::{EventKind, SeqSnapshot, SockSnapshot, TcpState},
    judge::{Conformance, Verdict},
    sock_diag::{containers::Container, namespaces::ContainerDirectory},
    track::timewait::TimewaitNote,
    track::RecordEnd,
};

/// What is written for a conforming connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Conforming {
    /// The whole timeline and verdict, as for a deviating connection.
    Full,
    /// One short line: every step's time, states and sequence numbers, and the verdict's
    /// names, without the explanations a conforming close does not need.
    #[default]
    Compact,
    /// Nothing: only counted in the summary.
    Omitted,
}

pub struct JsonlSink<W: Write> {
    out: W,
    conforming: Conforming,
    /// The compact line being written (reused).
    line: Vec<u8>,
    /// Names the container of a connection's network namespace.
    containers: Option<ContainerDirectory>,
}

impl<W: Write> JsonlSink<W> {
    pub fn new(out: W, conforming: Conforming) -> Self {
        JsonlSink {
            out,
            conforming,
            line: Vec::with_capacity(1024),
            containers: None,
        }
    }

    /// Adds a `container` object to connections of a container's network namespace.
    pub fn with_containers(mut self, containers: Option<ContainerDirectory>) -> Self {
        self.containers = containers;
        self
    }
}

#[derive(Serialize)]
struct Process<'a> {
    pid: u32,
    comm: &'a str,
}

/// One event of a timeline: `{"t_us":..,"kind":"state","old":..,"new":..,"seq":{..},"sock":{..}}`;
/// a run of repeats adds `"count":N,"last_t_us":..` (`t_us` is then the run's first, `seq` and
/// `sock` its last event's).
struct Step {
    /// Microseconds since the connection's first event.
    t_us: f64,
    /// A run's event count and last time, when it is one.
    run: Option<(u64, f64)>,
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
        let fields = 1
            + kind_fields
            + 2 * usize::from(self.run.is_some())
            + usize::from(self.seq.is_some())
            + usize::from(self.sock.is_some());
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
        if let Some((count, last_t_us)) = self.run {
            st.serialize_field("count", &count)?;
            st.serialize_field("last_t_us", &last_t_us)?;
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
    /// The container whose network namespace it is, when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    container: Option<&'a Container>,
    /// Wall-clock time of the first event, seconds since the Unix epoch.
    start_unix: f64,
    end: RecordEnd,
    #[serde(skip_serializing_if = "Option::is_none")]
    state_at_start: Option<TcpState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_state: Option<TcpState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    peer: Option<u64>,
    /// Events not stored (the connection's runs were all taken).
    #[serde(skip_serializing_if = "Option::is_none")]
    unstored_events: Option<u64>,
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
    events: &'a [crate::track::Run],
    t0: u64,
}

impl Serialize for Steps<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let us = |ts: u64| ts.saturating_sub(self.t0) as f64 / 1e3;
        s.collect_seq(self.events.iter().map(|r| Step {
            t_us: us(r.first_ts),
            run: r.folded().then(|| (r.count(), us(r.ev.ts_ns))),
            kind: r.ev.kind,
            seq: r.ev.seq,
            sock: r.ev.sock,
        }))
    }
}

impl<W: Write> JsonlSink<W> {
    fn container_of(&self, netns: u32) -> Option<Arc<Container>> {
        (netns != 0).then(|| self.containers.as_ref()?.get(netns))?
    }
}

impl<W: Write> Sink for JsonlSink<W> {
    fn connection(&mut self, r: &Report<'_>) -> io::Result<()> {
        if r.verdict.conformance == Conformance::Conforms {
            match self.conforming {
                Conforming::Full => {}
                Conforming::Compact => {
                    self.line.clear();
                    let container = self.container_of(r.conn.netns);
                    compact::line(&mut self.line, r, container.as_deref());
                    return self.out.write_all(&self.line);
                }
                Conforming::Omitted => return Ok(()),
            }
        }
        let c = r.conn;
        let comm = c.process.as_ref().map(|p| p.comm.as_str());
        let t0 = c.first_ts();
        let container = self.container_of(c.netns);
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
            container: container.as_deref(),
            start_unix: (t0 as i128 + r.wall_offset_ns as i128) as f64 / 1e9,
            end: c.end,
            state_at_start: c.state_at_start,
            last_state: c.last_state(),
            peer: r.peer_id,
            unstored_events: (c.unstored > 0).then_some(c.unstored),
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
        if n.of_conforming && self.conforming == Conforming::Omitted {
            return Ok(());
        }
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
            /// Every loss by cause, the agent's undecodable records included.
            lost: super::summary::LostReport,
        }
        serde_json::to_writer(
            &mut self.out,
            &Line {
                r#type: "summary",
                summary: s,
                lost: s.lost(),
            },
        )?;
        self.out.write_all(b"\n")?;
        self.out.flush()
    }
}

/// The compact line of a conforming connection:
/// `{"type":"connection","form":"compact",..,"steps":[[t_ns,"OLD>NEW",una,nxt,rcv,wseq,flags,err],..],"verdict":{..}}`.
mod compact {
    use std::{io::Write as _, net::SocketAddr};

    use super::Report;
    use crate::decode::EventKind;
    use crate::sock_diag::containers::Container;
    use crate::track::Run;

    fn raw(b: &mut Vec<u8>, s: &str) {
        b.extend_from_slice(s.as_bytes());
    }

    fn num(b: &mut Vec<u8>, n: impl itoa::Integer) {
        raw(b, itoa::Buffer::new().format(n));
    }

    /// A JSON value through serde_json: strings that may need escaping, floats, enums.
    fn value(b: &mut Vec<u8>, v: &impl serde::Serialize) {
        // Writing into a Vec cannot fail, and these values always serialize.
        let _ = serde_json::to_writer(&mut *b, v);
    }

    /// As the full form writes it: `127.0.0.1:80`, `[::1]:80`, `127.0.0.1:*` for no port.
    fn endpoint(b: &mut Vec<u8>, a: &SocketAddr) {
        b.push(b'"');
        match a {
            SocketAddr::V4(v4) => {
                for (i, o) in v4.ip().octets().iter().enumerate() {
                    if i > 0 {
                        b.push(b'.');
                    }
                    num(b, *o);
                }
                b.push(b':');
                if a.port() == 0 {
                    b.push(b'*');
                } else {
                    num(b, a.port());
                }
            }
            SocketAddr::V6(_) if a.port() == 0 => {
                let _ = write!(b, "{}:*", a.ip());
            }
            SocketAddr::V6(_) => {
                let _ = write!(b, "{a}");
            }
        }
        b.push(b'"');
    }

    /// `[t_ns, what, una, nxt, rcv, wseq, flags, err]`, and `count, last_t_ns` for a run of
    /// repeats (`t_ns` its first event's, the fields its last's).
    fn step(b: &mut Vec<u8>, r: &Run, t0: u64) {
        let e = &r.ev;
        b.push(b'[');
        num(b, r.first_ts.saturating_sub(t0));
        raw(b, ",\"");
        match e.kind {
            EventKind::State { old, new } => {
                raw(b, old.name());
                b.push(b'>');
                raw(b, new.name());
            }
            EventKind::Retransmit { state } => {
                raw(b, "retransmit@");
                raw(b, state.name());
            }
            EventKind::ResetSent { state } => {
                raw(b, "reset_sent@");
                raw(b, state.name());
            }
            EventKind::ResetReceived { state } => {
                raw(b, "reset_received@");
                raw(b, state.name());
            }
        }
        b.push(b'"');
        match e.seq {
            Some(s) => {
                for n in [s.snd_una, s.snd_nxt, s.rcv_nxt, s.write_seq] {
                    b.push(b',');
                    num(b, n);
                }
            }
            None => raw(b, ",null,null,null,null"),
        }
        match e.sock {
            Some(s) => {
                b.push(b',');
                num(b, s.flags);
                b.push(b',');
                num(b, s.err);
            }
            None => raw(b, ",null,null"),
        }
        if r.folded() {
            b.push(b',');
            num(b, r.count());
            b.push(b',');
            num(b, e.ts_ns.saturating_sub(t0));
        }
        b.push(b']');
    }

    pub(super) fn line(b: &mut Vec<u8>, r: &Report<'_>, container: Option<&Container>) {
        let (c, v) = (r.conn, r.verdict);
        let t0 = c.first_ts();
        raw(b, "{\"type\":\"connection\",\"form\":\"compact\",\"id\":");
        num(b, c.id);
        let _ = write!(b, ",\"sk\":\"{:#x}\",\"local\":", c.sk);
        endpoint(b, &c.local);
        raw(b, ",\"remote\":");
        endpoint(b, &c.remote);
        if let Some(p) = &c.process {
            raw(b, ",\"process\":{\"pid\":");
            num(b, p.pid);
            raw(b, ",\"comm\":");
            value(b, &p.comm.as_str());
            b.push(b'}');
        }
        if c.netns != 0 {
            raw(b, ",\"netns\":");
            num(b, c.netns);
        }
        if let Some(container) = container {
            raw(b, ",\"container\":");
            value(b, container);
        }
        raw(b, ",\"start_unix\":");
        value(b, &((t0 as i128 + r.wall_offset_ns as i128) as f64 / 1e9));
        raw(b, ",\"end\":");
        value(b, &c.end);
        if let Some(s) = c.state_at_start {
            raw(b, ",\"state_at_start\":\"");
            raw(b, s.name());
            b.push(b'"');
        }
        if let Some(s) = c.last_state() {
            raw(b, ",\"last_state\":\"");
            raw(b, s.name());
            b.push(b'"');
        }
        if let Some(p) = r.peer_id {
            raw(b, ",\"peer\":");
            num(b, p);
        }
        raw(b, ",\"steps\":[");
        for (i, e) in c.events.iter().enumerate() {
            if i > 0 {
                b.push(b',');
            }
            step(b, e, t0);
        }
        raw(b, "],\"verdict\":{\"role\":");
        value(b, &v.role);
        raw(b, ",\"variant\":\"");
        raw(b, v.variant.name());
        raw(b, "\",\"conformance\":\"conforms\"");
        if let Some(tw) = v.time_wait {
            raw(b, ",\"time_wait\":");
            value(b, &tw);
        }
        if !v.notes.is_empty() {
            raw(b, ",\"notes\":[");
            for (i, n) in v.notes.iter().enumerate() {
                if i > 0 {
                    b.push(b',');
                }
                b.push(b'"');
                raw(b, n.code.as_str());
                b.push(b'"');
            }
            b.push(b']');
        }
        // Zeek's words: written by hand too, the letters and codes being plain ASCII.
        let z = &v.zeek;
        raw(b, ",\"zeek\":{\"conn_state\":\"");
        raw(b, z.conn_state.code());
        raw(b, "\",\"history\":\"");
        raw(b, z.history.as_str());
        raw(b, "\",\"originator\":");
        value(b, &z.originator);
        for (key, bytes) in [
            (",\"orig_bytes\":", z.orig_bytes),
            (",\"resp_bytes\":", z.resp_bytes),
        ] {
            if let Some(n) = bytes {
                raw(b, key);
                num(b, n);
            }
        }
        raw(b, "}}}\n");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::decode::TcpState;

    /// A connection's line in `form`, as JSON.
    fn line(conn: &crate::track::Connection, form: Conforming) -> serde_json::Value {
        let verdict = crate::judge::judge(conn, None);
        let mut sink = JsonlSink::new(Vec::new(), form);
        sink.connection(&Report {
            conn,
            peer_id: Some(9),
            peer: None,
            verdict: &verdict,
            wall_offset_ns: 1_700_000_000_000_000_000,
        })
        .unwrap();
        let text = String::from_utf8(sink.out).unwrap();
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        serde_json::from_str(&text).unwrap()
    }

    /// A connection of the tracker whose FIN was retransmitted 50 times: 3 one by one, then
    /// one run of 47.
    fn retransmitting() -> crate::track::Connection {
        use crate::decode::{testing::ev, EventKind};
        use crate::track::{Tracker, TrackerConfig};
        use TcpState::*;
        let (c, s, z) = ("127.0.0.1:40000", "127.0.0.1:80", "0.0.0.0:0");
        let mut events = vec![
            ev(1_000, 0xa, Close, SynSent, c, s),
            ev(2_000, 0xa, SynSent, Established, c, s),
            ev(3_000, 0xa, Established, FinWait1, c, s),
        ];
        for i in 0..50 {
            let mut r = ev(10_000 + i * 1_000, 0xa, FinWait1, FinWait1, c, s);
            r.kind = EventKind::Retransmit { state: FinWait1 };
            events.push(r);
        }
        events.push(ev(100_000, 0xa, FinWait1, FinWait2, c, s));
        events.push(ev(200_000, 0xa, FinWait2, TimeWait, c, s));
        events.push(ev(300_000, 0xa, TimeWait, Close, z, s));
        let mut t = Tracker::new(TrackerConfig::default());
        let mut out = Vec::new();
        for e in events {
            t.on_event(e, &mut |f| out.push(f));
        }
        t.finish(&mut |f| out.push(f));
        (*out.remove(0).conn).clone()
    }

    #[test]
    fn a_run_of_repeats_is_written_compactly_in_every_form() {
        let conn = retransmitting();
        let full = line(&conn, Conforming::Full);
        let events = full["events"].as_array().unwrap();
        assert_eq!(events.len(), 3 + 3 + 1 + 3, "{full}");
        assert!(events[3].get("count").is_none(), "one by one: as before");
        let run = &events[6];
        assert_eq!(run["kind"], "retransmit");
        assert_eq!(run["count"], 47);
        assert_eq!(run["t_us"], 12.0, "the fourth retransmission");
        assert_eq!(run["last_t_us"], 58.0, "the last");
        assert!(full.get("unstored_events").is_none());
        let notes = full["verdict"]["notes"].to_string();
        assert!(
            notes.contains("retransmitted 50 times from FIN_WAIT1"),
            "{notes}"
        );
        // The compact form (a FIN retransmitted is not a deviation): the run's count and
        // last time after the usual eight fields.
        assert_eq!(full["verdict"]["conformance"], "conforms", "{full}");
        let compact = line(&conn, Conforming::Compact);
        let steps = compact["steps"].as_array().unwrap();
        assert_eq!(steps[3].as_array().unwrap().len(), 8);
        assert_eq!(
            steps[6],
            serde_json::json!([
                12_000,
                "retransmit@FIN_WAIT1",
                null,
                null,
                null,
                null,
                null,
                null,
                47,
                58_000
            ])
        );
        // And in text: one line for the run.
        let verdict = crate::judge::judge(&conn, None);
        let mut out = Vec::new();
        super::super::TextSink::new(&mut out, false)
            .connection(&Report {
                conn: &conn,
                peer_id: None,
                peer: None,
                verdict: &verdict,
                wall_offset_ns: 0,
            })
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches("retransmit in FIN_WAIT1").count(), 4, "{text}");
        assert!(
            text.contains("+0.012 ms  retransmit in FIN_WAIT1 x47 to +0.058 ms"),
            "{text}"
        );
    }

    #[test]
    fn events_over_the_cap_are_counted_in_the_record() {
        let mut conn = retransmitting();
        conn.unstored = 12;
        let full = line(&conn, Conforming::Compact);
        assert_eq!(full["unstored_events"], 12, "{full}");
        assert_ne!(full["verdict"]["conformance"], "conforms");
    }

    /// The compact line writes by hand what the full one writes through serde: on the fields
    /// the fixtures never have (a namespace, a state at start, no owner, IPv6, unread fields, a
    /// name that needs escaping), each value is the full form's, and no key is added or lost.
    #[test]
    fn the_compact_form_writes_each_field_as_the_full_one() {
        use crate::decode::{Comm, Event, EventKind, SeqSnapshot, SockSnapshot};
        use TcpState::*;
        let local: std::net::SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        let remote: std::net::SocketAddr = "[2001:db8::2]:40000".parse().unwrap();
        let step = |ts_ns, old, new, seq, sock| Event {
            ts_ns,
            sk: 0xffff_8881_0000_0a00,
            kind: EventKind::State { old, new },
            local,
            remote,
            pid: 0,
            comm: Comm::default(),
            netns: 4_026_532_000,
            seq,
            sock,
        };
        let seq = |n| {
            Some(SeqSnapshot {
                snd_una: n,
                snd_nxt: n,
                rcv_nxt: 7,
                write_seq: n,
            })
        };
        let sock = |flags| Some(SockSnapshot { flags, err: 0 });
        let mut events = vec![
            step(1_000, Listen, SynRecv, None, None),
            step(2_000, SynRecv, Established, seq(5), None),
            step(3_000, Established, CloseWait, None, sock(2)),
            step(4_500, CloseWait, LastAck, None, sock(2)),
            step(9_999, LastAck, Close, None, sock(3)),
        ];
        events[3].pid = 42;
        events[3].comm = Comm::new("a\"b\\c\u{1b}[2J");
        let conn = crate::track::Connection {
            id: 3,
            sk: events[0].sk,
            local,
            remote: "[2001:db8::2]:0".parse().unwrap(),
            process: None,
            netns: 4_026_532_000,
            events: events.into_iter().map(crate::track::Run::from).collect(),
            unstored: 0,
            seen_from_start: true,
            events_maybe_lost: false,
            // Only a connection first seen mid-life has one (and it is then incomplete); here
            // for the writer's sake.
            state_at_start: Some(CloseWait),
            end: crate::track::RecordEnd::Closed,
        };
        let mut with_owner = conn.clone();
        with_owner.process = with_owner.events[1].ev.task();
        // Nothing at all for `none`.
        let verdict = crate::judge::judge(&conn, None);
        let mut sink = JsonlSink::new(Vec::new(), Conforming::Omitted);
        sink.connection(&Report {
            conn: &conn,
            peer_id: None,
            peer: None,
            verdict: &verdict,
            wall_offset_ns: 0,
        })
        .unwrap();
        assert_eq!(verdict.conformance, Conformance::Conforms);
        assert!(sink.out.is_empty());
        for conn in [conn, with_owner] {
            let full = line(&conn, Conforming::Full);
            assert_eq!(full["verdict"]["conformance"], "conforms", "{full:#}");
            let compact = line(&conn, Conforming::Compact);
            let keys = |v: &serde_json::Value| {
                let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
                k.sort();
                k
            };
            let mut expected = keys(&full);
            expected.retain(|k| k != "events");
            expected.extend(["form".to_owned(), "steps".to_owned()]);
            expected.sort();
            assert_eq!(keys(&compact), expected);
            for (key, value) in full.as_object().unwrap() {
                if key != "events" && key != "verdict" {
                    assert_eq!(&compact[key], value, "{key}");
                }
            }
            for key in ["role", "variant", "conformance", "time_wait", "zeek"] {
                assert_eq!(compact["verdict"][key], full["verdict"][key], "{key}");
            }
            assert_eq!(
                compact["steps"],
                serde_json::json!([
                    [0, "LISTEN>SYN_RECV", null, null, null, null, null, null],
                    [1000, "SYN_RECV>ESTABLISHED", 5, 5, 7, 5, null, null],
                    [2000, "ESTABLISHED>CLOSE_WAIT", null, null, null, null, 2, 0],
                    [3500, "CLOSE_WAIT>LAST_ACK", null, null, null, null, 2, 0],
                    [8999, "LAST_ACK>CLOSE", null, null, null, null, 3, 0]
                ])
            );
        }
    }

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
                    run: None,
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
                run: None,
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
