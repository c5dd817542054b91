//! A JSON Lines trace (what `trace --format jsonl` writes) read back into connections and
//! judged again, for the outputs that need more than the lines say (`teardown report`'s
//! ladders): each connection line's events rebuilt from its full or compact form, both ends
//! paired by their `peer` ids, each judged with its peer's events as a live trace judges it;
//! the `timewait` lines handed on as they were.
//!
//! What the live agent knew beyond the events is not in the lines, and so not in the new
//! verdicts: the state sock_diag showed at the start is kept, a held orphan's timer fate is not.

use std::{
    collections::HashMap,
    io::{self, BufRead},
    net::SocketAddr,
};

use serde_json::Value;

use crate::{
    decode::{
        recording::{read_line_bounded, MAX_LINE},
        Comm, Event, EventKind, SeqSnapshot, SockSnapshot, Task, TcpState,
    },
    judge::{self, JudgeOptions},
    sinks::{Report, Sink, Summary},
    sock_diag::watch::TwFact,
    track::{timewait::TimewaitNote, Connection, RecordEnd, Run, MAX_STEPS},
};

/// Why a line could not be read.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {why}")]
pub struct LineError {
    pub line: u64,
    pub why: String,
}

/// Whether `first_line` is a JSON Lines trace's (rather than a recording's header).
pub fn is_trace_line(first_line: &str) -> bool {
    serde_json::from_str::<Value>(first_line).is_ok_and(|v| {
        matches!(
            v.get("type").and_then(Value::as_str),
            Some("connection" | "timewait" | "summary")
        )
    })
}

fn state(name: &str) -> Option<TcpState> {
    TcpState::ALL.into_iter().find(|s| s.name() == name)
}

/// `127.0.0.1:80`, `[::1]:80`, and `127.0.0.1:*` (port unknown, 0).
fn endpoint(s: &str) -> Option<SocketAddr> {
    match s.strip_suffix(":*") {
        Some(ip) => Some(SocketAddr::new(
            ip.trim_start_matches('[')
                .trim_end_matches(']')
                .parse()
                .ok()?,
            0,
        )),
        None => s.parse().ok(),
    }
}

/// `OLD>NEW`, `retransmit@STATE`, `reset_sent@STATE`, `reset_received@STATE`.
fn compact_kind(s: &str) -> Option<EventKind> {
    if let Some((old, new)) = s.split_once('>') {
        return Some(EventKind::State {
            old: state(old)?,
            new: state(new)?,
        });
    }
    let (what, at) = s.split_once('@')?;
    let st = state(at)?;
    match what {
        "retransmit" => Some(EventKind::Retransmit { state: st }),
        "reset_sent" => Some(EventKind::ResetSent { state: st }),
        "reset_received" => Some(EventKind::ResetReceived { state: st }),
        _ => None,
    }
}

fn full_kind(e: &Value) -> Option<EventKind> {
    let st = |k: &str| e.get(k).and_then(Value::as_str).and_then(state);
    match e.get("kind")?.as_str()? {
        "state" => Some(EventKind::State {
            old: st("old")?,
            new: st("new")?,
        }),
        "retransmit" => Some(EventKind::Retransmit {
            state: st("state")?,
        }),
        "reset_sent" => Some(EventKind::ResetSent {
            state: st("state")?,
        }),
        "reset_received" => Some(EventKind::ResetReceived {
            state: st("state")?,
        }),
        _ => None,
    }
}

/// One step of a line: (first time ns, kind, seq, sock, run of count ending at ns).
type Step = (
    u64,
    EventKind,
    Option<SeqSnapshot>,
    Option<SockSnapshot>,
    Option<(u64, u64)>,
);

fn compact_steps(steps: &[Value]) -> Option<Vec<Step>> {
    steps
        .iter()
        .map(|s| {
            let a = s.as_array()?;
            let n = |i: usize| a.get(i).and_then(Value::as_u64);
            let kind = compact_kind(a.get(1)?.as_str()?)?;
            let seq = match (n(2), n(3), n(4), n(5)) {
                (Some(una), Some(nxt), Some(rcv), Some(w)) => Some(SeqSnapshot {
                    snd_una: una as u32,
                    snd_nxt: nxt as u32,
                    rcv_nxt: rcv as u32,
                    write_seq: w as u32,
                }),
                _ => None,
            };
            let sock = match (n(6), a.get(7).and_then(Value::as_i64)) {
                (Some(flags), Some(err)) => Some(SockSnapshot {
                    flags: flags as u32,
                    err: err as i32,
                }),
                _ => None,
            };
            let run = n(8).zip(n(9));
            Some((n(0)?, kind, seq, sock, run))
        })
        .collect()
}

fn full_steps(events: &[Value]) -> Option<Vec<Step>> {
    let ns = |v: Option<&Value>| {
        v.and_then(Value::as_f64)
            .map(|us| (us * 1e3).round() as u64)
    };
    events
        .iter()
        .map(|e| {
            let kind = full_kind(e)?;
            let seq = e
                .get("seq")
                .and_then(|s| serde_json::from_value::<SeqSnapshot>(s.clone()).ok());
            let sock = e.get("sock").and_then(|s| {
                Some(SockSnapshot {
                    flags: s.get("flags")?.as_u64()? as u32,
                    err: s.get("err")?.as_i64()? as i32,
                })
            });
            let run = e
                .get("count")
                .and_then(Value::as_u64)
                .zip(ns(e.get("last_t_us")));
            Some((ns(e.get("t_us"))?, kind, seq, sock, run))
        })
        .collect()
}

/// A connection line's connection, and its peer's id. Times: ns since the Unix epoch.
fn connection(v: &Value) -> Option<(Connection, Option<u64>)> {
    let id = v.get("id")?.as_u64()?;
    let sk = u64::from_str_radix(v.get("sk")?.as_str()?.trim_start_matches("0x"), 16).ok()?;
    let local = endpoint(v.get("local")?.as_str()?)?;
    let remote = endpoint(v.get("remote")?.as_str()?)?;
    let process = v.get("process").and_then(|p| {
        Some(Task {
            pid: p.get("pid")?.as_u64()? as u32,
            comm: Comm::new(p.get("comm")?.as_str()?),
        })
    });
    let netns = v.get("netns").and_then(Value::as_u64).unwrap_or(0) as u32;
    let t0 = (v.get("start_unix")?.as_f64()? * 1e9) as u64;
    let steps = match v.get("form").and_then(Value::as_str) {
        Some("compact") => v.get("steps")?.as_array()?,
        _ => v.get("events")?.as_array()?,
    };
    // A trace keeps at most MAX_STEPS runs of a connection: more is not a trace's line, and
    // the ladders are drawn for that bound.
    if steps.len() > MAX_STEPS {
        return None;
    }
    let steps = match v.get("form").and_then(Value::as_str) {
        Some("compact") => compact_steps(steps)?,
        _ => full_steps(steps)?,
    };
    let end = match v.get("end").and_then(Value::as_str) {
        Some("closed") => RecordEnd::Closed,
        Some("superseded") => RecordEnd::Superseded,
        Some("evicted") => RecordEnd::Evicted,
        _ => RecordEnd::StillOpen,
    };
    let runs: Vec<Run> = steps
        .into_iter()
        .map(|(t, kind, seq, sock, run)| {
            let last = run.map_or(t, |(_, last)| last);
            if last < t {
                return None;
            }
            let ev = Event {
                ts_ns: t0.checked_add(last)?,
                sk,
                kind,
                local,
                remote,
                pid: process.as_ref().map_or(0, |p| p.pid),
                comm: process.as_ref().map_or(Comm::new(""), |p| p.comm),
                netns,
                seq,
                sock,
            };
            Some(Run {
                ev,
                repeats: run.map_or(0, |(count, _)| count.saturating_sub(1)),
                first_ts: t0 + t,
            })
        })
        .collect::<Option<_>>()?;
    let seen_from_start = runs.first().is_some_and(|r| r.ev.starts_connection());
    let conn = Connection {
        id,
        sk,
        local,
        remote,
        process,
        netns,
        events: runs,
        unstored: v
            .get("unstored_events")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        seen_from_start,
        events_maybe_lost: false,
        state_at_start: v
            .get("state_at_start")
            .and_then(Value::as_str)
            .and_then(state),
        end,
    };
    Some((conn, v.get("peer").and_then(Value::as_u64)))
}

/// Every connection of the trace `input` judged into `sinks`, then its timewait lines, then
/// the summary (its event and loss counts are the trace's own).
pub fn judge_lines(
    input: impl BufRead,
    sinks: &mut [Box<dyn Sink + Send>],
    slow_close_ns: u64,
) -> Result<Summary, LineError> {
    let mut conns: Vec<(Connection, Option<u64>)> = Vec::new();
    let mut notes: Vec<TimewaitNote> = Vec::new();
    let mut summary = Summary::default();
    let io_error = |line, e: io::Error| LineError {
        line,
        why: e.to_string(),
    };
    let mut input = input;
    let mut buf = Vec::new();
    for n in 1u64.. {
        buf.clear();
        if read_line_bounded(&mut input, &mut buf).map_err(|e| io_error(n, e))? == 0 {
            break;
        }
        let bad = |why: &str| LineError {
            line: n,
            why: why.to_owned(),
        };
        if buf.len() > MAX_LINE {
            // Reading on would look for the next line however far it is.
            return Err(bad(&format!(
                "longer than {MAX_LINE} bytes, which no line of a trace is"
            )));
        }
        if buf.trim_ascii().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_slice(&buf).map_err(|e| bad(&e.to_string()))?;
        match v.get("type").and_then(Value::as_str) {
            Some("connection") => conns.push(
                connection(&v).ok_or_else(|| bad("a connection line this teardown cannot read"))?,
            ),
            Some("timewait") => {
                let id = v
                    .get("id")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| bad("no id"))?;
                let fact: TwFact =
                    serde_json::from_value(v.clone()).map_err(|e| bad(&e.to_string()))?;
                notes.push(TimewaitNote {
                    id,
                    of_conforming: false,
                    from_kernel: false,
                    fact,
                });
            }
            Some("summary") => {
                let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
                summary.events = n("events");
                summary.lost_events = n("lost_events");
                summary.connections_seen = n("connections_seen");
            }
            _ => return Err(bad("not a line of `teardown trace --format jsonl`")),
        }
    }
    let index: HashMap<u64, usize> = conns
        .iter()
        .enumerate()
        .map(|(i, (c, _))| (c.id, i))
        .collect();
    let opts = JudgeOptions {
        slow_close_ns,
        timewait: None,
    };
    let write = |e: io::Error| LineError {
        line: 0,
        why: format!("cannot write the output: {e}"),
    };
    for (conn, peer_id) in &conns {
        let peer = peer_id
            .and_then(|p| index.get(&p))
            .and_then(|i| conns.get(*i))
            .map(|(c, _)| c);
        let verdict = judge::judge_with(conn, peer, &opts);
        summary.connections += 1;
        *summary
            .by_variant
            .entry(verdict.variant.name())
            .or_default() += 1;
        let report = Report {
            conn,
            peer_id: peer.map(|p| p.id),
            peer,
            verdict: &verdict,
            wall_offset_ns: 0,
        };
        for s in sinks.iter_mut() {
            s.connection(&report).map_err(write)?;
        }
    }
    for note in &notes {
        for s in sinks.iter_mut() {
            s.timewait(note).map_err(write)?;
        }
    }
    for s in sinks.iter_mut() {
        s.finish(&summary).map_err(write)?;
    }
    Ok(summary)
}
