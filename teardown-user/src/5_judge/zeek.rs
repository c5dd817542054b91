//! Zeek's vocabulary for a connection: its `conn_state` and `history`, as Zeek's conn.log
//! defines them (docs/zeek.md cites the definitions and derives each lab scenario's values),
//! from what the kernel's hooks showed of one or both ends.
//!
//! The history is a string of letters, one per kind of segment in the order each kind was first
//! seen, upper case for the originator (the end that sent the SYN), lower case for the
//! responder. The hooks show state changes, resets and retransmissions, with sequence numbers:
//! from them some segments are known with the moment they went (a SYN, a FIN, a RST, the
//! handshake's ACK, a TIME_WAIT entry's ACK), some only within a span (the first payload: after
//! one event, before another), and some not at all (a checksum, a gap, a zero window). A letter
//! is written only when both its presence and its place among the others are known; [`LETTERS`]
//! says for each why it is or is not, and never is a letter guessed.
//!
//! `conn_state` is Zeek's own function of the two endpoints' states (a RST, a FIN, an
//! established handshake, a SYN), which the known letters determine.

use serde::{Serialize, Serializer};

use super::model::{Meaning, Trace};
use crate::decode::{Event, EventKind};
use crate::sock_diag::TcpState;
use crate::track::Connection;

/// Zeek's `conn_state` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// Connection attempt seen, no reply.
    S0,
    /// Established, not terminated.
    S1,
    /// Normal establishment and termination.
    SF,
    /// Connection attempt rejected.
    Rej,
    /// Established, close attempt by the originator seen (no reply from the responder).
    S2,
    /// Established, close attempt by the responder seen (no reply from the originator).
    S3,
    /// Established, the originator aborted (sent a RST).
    Rsto,
    /// The responder sent a RST.
    Rstr,
    /// The originator sent a SYN then a RST; no SYN-ACK from the responder.
    Rstos0,
    /// The responder sent a SYN-ACK then a RST; no SYN from the originator.
    Rstrh,
    /// The originator sent a SYN then a FIN; no SYN-ACK from the responder.
    Sh,
    /// The responder sent a SYN-ACK then a FIN; no SYN from the originator.
    Shr,
    /// No SYN seen, just midstream traffic.
    Oth,
}

impl ConnState {
    pub fn code(self) -> &'static str {
        match self {
            ConnState::S0 => "S0",
            ConnState::S1 => "S1",
            ConnState::SF => "SF",
            ConnState::Rej => "REJ",
            ConnState::S2 => "S2",
            ConnState::S3 => "S3",
            ConnState::Rsto => "RSTO",
            ConnState::Rstr => "RSTR",
            ConnState::Rstos0 => "RSTOS0",
            ConnState::Rstrh => "RSTRH",
            ConnState::Sh => "SH",
            ConnState::Shr => "SHR",
            ConnState::Oth => "OTH",
        }
    }
}

impl Serialize for ConnState {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code())
    }
}

/// Whether a history letter can be written from the kernel's hooks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Known {
    /// Always, when it happened.
    Yes,
    /// In the cases the reason names; left out in the others.
    Sometimes,
    /// Never: the hooks do not show it.
    No,
}

/// Zeek's history letters (the originator's, upper case), what each means, and whether and
/// when we can know it.
pub const LETTERS: &[(char, &str, Known, &str)] = &[
    ('S', "a SYN without the ACK bit", Known::Yes, "connect(): CLOSE -> SYN_SENT; or a listener's child: LISTEN -> SYN_RECV"),
    ('H', "a SYN+ACK", Known::Yes, "the child of a listener (LISTEN -> SYN_RECV), or the SYN_SENT -> ESTABLISHED it answers"),
    ('A', "a pure ACK", Known::Sometimes, "the handshake's third segment, the ACK of a FIN entering TIME_WAIT or CLOSING, a final ACK; not when payload flowed toward that end before (its ACK of the payload may have been the first, when and whether pure unknown), nor an ACK that may have ridden on payload"),
    ('D', "a segment with payload", Known::Sometimes, "sent bytes from the sequence numbers (BTF kernels); written when no other letter falls between the last event before the first byte left and the first event after"),
    ('F', "a FIN", Known::Yes, "ESTABLISHED -> FIN_WAIT1, CLOSE_WAIT -> LAST_ACK; the peer's: -> CLOSE_WAIT, -> CLOSING, or a TIME_WAIT entry with the FIN received"),
    ('R', "a RST", Known::Yes, "the reset tracepoints (sent and received); repeats with another sequence number are not told apart: one letter"),
    ('T', "a retransmitted segment with payload", Known::Sometimes, "retransmissions in ESTABLISHED or CLOSE_WAIT (no FIN sent yet: payload); after a FIN, only a FIN may be resent, which is not T"),
    ('C', "a bad checksum", Known::No, "checked and dropped below the socket"),
    ('G', "a content gap", Known::No, "Zeek's reassembly; the kernel keeps out-of-order data"),
    ('W', "a zero window", Known::No, "no window in the events"),
    ('I', "an inconsistent segment (FIN+RST)", Known::No, "not in the events"),
    ('Q', "a multi-flag segment (SYN+FIN, SYN+RST)", Known::No, "not in the events"),
    ('^', "the direction flipped by Zeek's heuristic", Known::No, "the originator is the end that sent the SYN, never flipped"),
    ('X', "analysis partial", Known::No, "Zeek's own limits"),
];

/// Which end of a connection the originator is, seen from the reported end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Originator {
    /// The reported end sent the SYN.
    ThisEnd,
    /// The other end did.
    Peer,
    /// No SYN was seen: the end with the higher port is taken for the originator (the client's
    /// port is usually the ephemeral one).
    Guessed,
}

/// At most this many letters: each of 6 kinds once per direction, and T's repeats.
const MAX_LETTERS: usize = 32;
/// T is written at the 1st, 10th, 100th ... retransmission: at most this many times.
const MAX_T: u32 = 8;

/// A history string, kept inline: judging a connection allocates nothing for it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct History {
    letters: [u8; MAX_LETTERS],
    len: u8,
}

impl History {
    pub fn as_str(&self) -> &str {
        // Only ASCII letters are pushed.
        std::str::from_utf8(&self.letters[..usize::from(self.len)]).unwrap_or("")
    }

    fn push(&mut self, c: u8) {
        if usize::from(self.len) < MAX_LETTERS {
            self.letters[usize::from(self.len)] = c;
            self.len += 1;
        }
    }
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl Serialize for History {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// The connection in Zeek's words: the same for both ends when both were traced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Zeek {
    pub conn_state: ConnState,
    pub history: History,
    pub originator: Originator,
    /// Payload bytes each direction sent (Zeek's `orig_bytes`, `resp_bytes`), when the
    /// sequence numbers tell.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub orig_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resp_bytes: Option<u64>,
}

/// The direction of a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    Orig,
    Resp,
}

impl Dir {
    fn other(self) -> Dir {
        match self {
            Dir::Orig => Dir::Resp,
            Dir::Resp => Dir::Orig,
        }
    }
}

/// Kinds of letter, in the order they are written when they share a moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Syn,
    SynAck,
    Ack,
    Data,
    Retrans,
    Fin,
    Rst,
}

impl Kind {
    fn letter(self, dir: Dir) -> u8 {
        let c = match self {
            Kind::Syn => b'S',
            Kind::SynAck => b'H',
            Kind::Ack => b'A',
            Kind::Data => b'D',
            Kind::Retrans => b'T',
            Kind::Fin => b'F',
            Kind::Rst => b'R',
        };
        match dir {
            Dir::Orig => c,
            Dir::Resp => c.to_ascii_lowercase(),
        }
    }
}

/// A segment we know of: sent by `dir`, at a moment within `lo..=hi` (the same when known
/// exactly).
#[derive(Clone, Copy, Debug)]
struct Seen {
    lo: u64,
    hi: u64,
    /// Ordering among segments at one moment: earlier steps of one event first.
    order: u8,
    kind: Kind,
    dir: Dir,
}

/// Everything known of the connection's segments, at most a fixed number.
struct Segments {
    seen: [Option<Seen>; 48],
    n: usize,
}

impl Segments {
    fn new() -> Segments {
        Segments {
            seen: [None; 48],
            n: 0,
        }
    }

    fn add(&mut self, t: u64, order: u8, kind: Kind, dir: Dir) {
        self.add_span(t, t, order, kind, dir);
    }

    fn add_span(&mut self, lo: u64, hi: u64, order: u8, kind: Kind, dir: Dir) {
        if self.n < self.seen.len() {
            self.seen[self.n] = Some(Seen {
                lo,
                hi,
                order,
                kind,
                dir,
            });
            self.n += 1;
        }
    }

    fn iter(&self) -> impl Iterator<Item = Seen> + '_ {
        self.seen[..self.n].iter().flatten().copied()
    }
}

/// One traced end, with its direction.
struct EndView<'t, 'a> {
    t: &'t Trace<'a>,
    conn: &'t Connection,
    dir: Dir,
}

/// The first event of the end's handshake completion: the base of its sequence numbers.
fn established_at<'a>(t: &Trace<'a>) -> Option<&'a Event> {
    t.mark(Meaning::Established)
}

/// The end's FIN: its ESTABLISHED -> FIN_WAIT1 or CLOSE_WAIT -> LAST_ACK.
fn fin_at<'a>(t: &Trace<'a>) -> Option<&'a Event> {
    [t.mark(Meaning::SendFin), t.mark(Meaning::SendThirdWave)]
        .into_iter()
        .flatten()
        .min_by_key(|e| e.ts_ns)
}

/// Every event of an end, in order.
fn events<'t>(e: &'t EndView<'_, '_>) -> impl Iterator<Item = &'t Event> + 't {
    e.conn.events.iter().map(|r| &r.ev)
}

/// What is known of the payload one direction sent: its bytes, and the span in which its first
/// byte left (None when it sent none, or when the sequence numbers do not tell).
struct Payload {
    bytes: Option<u64>,
    first: Option<(u64, u64)>,
}

/// The payload `sender` sent, from its own sequence numbers (`snd_nxt`, `write_seq`) when it
/// was traced, else from the receiver's (`rcv_nxt`).
fn payload(sender: Option<&EndView<'_, '_>>, receiver: Option<&EndView<'_, '_>>) -> Payload {
    let unknown = Payload {
        bytes: None,
        first: None,
    };
    if let Some(s) = sender {
        let Some(base_ev) = established_at(s.t) else {
            return unknown;
        };
        let Some(base) = base_ev.seq.map(|q| q.snd_nxt) else {
            return unknown;
        };
        let fin = fin_at(s.t);
        // Bytes sent by the moment of `ev`: its snd_nxt, less our FIN once it was sent.
        let sent = |ev: &Event| -> Option<u32> {
            let q = ev.seq?;
            let fin_before = fin.is_some_and(|f| f.ts_ns < ev.ts_ns);
            Some(
                q.snd_nxt
                    .wrapping_sub(base)
                    .wrapping_sub(u32::from(fin_before)),
            )
        };
        // What the application queued, all of which leaves before the FIN.
        let queued = fin
            .and_then(|f| f.seq)
            .map(|q| q.write_seq.wrapping_sub(base));
        let mut lo = base_ev.ts_ns;
        let mut hi = None;
        let mut total = 0u32;
        for ev in events(s).filter(|e| e.ts_ns >= base_ev.ts_ns) {
            let Some(n) = sent(ev) else { continue };
            // A wrapped (negative) difference is no payload: a reading before the base.
            let n = if n > u32::MAX / 2 { 0 } else { n };
            total = total.max(n);
            if n == 0 && hi.is_none() {
                lo = ev.ts_ns;
            } else if n > 0 && hi.is_none() {
                hi = Some(ev.ts_ns);
            }
        }
        if let (Some(f), Some(q)) = (fin, queued) {
            if q > 0 && q < u32::MAX / 2 {
                total = total.max(q);
                hi = Some(hi.map_or(f.ts_ns, |h| h.min(f.ts_ns)));
            }
        }
        // The receiver had it by its first event showing it.
        if let Some(h) = receiver.and_then(|r| first_received(r)) {
            hi = Some(hi.map_or(h, |x| x.min(h)));
        }
        return Payload {
            bytes: Some(u64::from(total)),
            first: hi.filter(|_| total > 0).map(|h| (lo.min(h), h)),
        };
    }
    // The sender was not traced: what the receiver got.
    let Some(r) = receiver else { return unknown };
    let Some(base_ev) = established_at(r.t) else {
        return unknown;
    };
    let Some(base) = base_ev.seq.map(|q| q.rcv_nxt) else {
        return unknown;
    };
    let mut total = 0u32;
    let mut hi = None;
    for ev in events(r).filter(|e| e.ts_ns >= base_ev.ts_ns) {
        let Some(q) = ev.seq else { continue };
        let fin_in = ev.sock.is_some_and(|s| s.done()) || peer_fin_seen_before(r.t, ev);
        let n = q.rcv_nxt.wrapping_sub(base).wrapping_sub(u32::from(fin_in));
        let n = if n > u32::MAX / 2 { 0 } else { n };
        total = total.max(n);
        if n > 0 && hi.is_none() {
            hi = Some(ev.ts_ns);
        }
    }
    Payload {
        bytes: Some(u64::from(total)),
        // Sent at some moment after the handshake: the receiver's handshake is the bound.
        first: hi.filter(|_| total > 0).map(|h| (base_ev.ts_ns, h)),
    }
}

/// Whether the end had received the peer's FIN before `ev` (its -> CLOSE_WAIT or -> CLOSING).
fn peer_fin_seen_before(t: &Trace<'_>, ev: &Event) -> bool {
    [
        t.mark(Meaning::ReceiveFin),
        t.mark(Meaning::SimultaneousFin),
    ]
    .into_iter()
    .flatten()
    .any(|f| f.ts_ns <= ev.ts_ns)
}

/// The first event of `r` showing payload from its peer (rcv_nxt past the handshake's, the
/// peer's FIN discounted).
fn first_received(r: &EndView<'_, '_>) -> Option<u64> {
    let base_ev = established_at(r.t)?;
    let base = base_ev.seq?.rcv_nxt;
    events(r)
        .filter(|e| e.ts_ns >= base_ev.ts_ns)
        .find(|ev| {
            ev.seq.is_some_and(|q| {
                let fin_in = ev.sock.is_some_and(|s| s.done()) || peer_fin_seen_before(r.t, ev);
                let n = q.rcv_nxt.wrapping_sub(base).wrapping_sub(u32::from(fin_in));
                n > 0 && n < u32::MAX / 2
            })
        })
        .map(|e| e.ts_ns)
}

/// The segments one end's events show: its own and, by what it received, its peer's.
/// `pure_acks` collects the pure ACKs known, to be written under the rules of [`zeek`].
fn segments_of(e: &EndView<'_, '_>, seg: &mut Segments, pure_acks: &mut Vec<(u64, Dir, bool)>) {
    let (us, peer) = (e.dir, e.dir.other());
    for (rule, ev) in &e.t.marks {
        let t = ev.ts_ns;
        match rule.meaning {
            Meaning::Connect => seg.add(t, 0, Kind::Syn, us),
            Meaning::SynReceived => {
                seg.add(t, 0, Kind::Syn, peer);
                seg.add(t, 1, Kind::SynAck, us);
            }
            Meaning::Established => match ev.kind {
                EventKind::State {
                    old: TcpState::SynSent,
                    ..
                } => {
                    seg.add(t, 1, Kind::SynAck, peer);
                    seg.add(t, 2, Kind::Ack, us);
                }
                _ => seg.add(t, 2, Kind::Ack, peer),
            },
            Meaning::SendFin | Meaning::SendThirdWave => seg.add(t, 4, Kind::Fin, us),
            Meaning::ReceiveFin => seg.add(t, 4, Kind::Fin, peer),
            Meaning::SimultaneousFin => {
                seg.add(t, 4, Kind::Fin, peer);
                pure_acks.push((t, us, true));
            }
            // The ACK of our FIN: pure unless it rode on the peer's FIN or payload (decided by
            // the caller, who knows both).
            Meaning::FinAcked => pure_acks.push((t, peer, false)),
            Meaning::TimeWaitEntry if ev.sock.is_some_and(|s| s.done()) => {
                seg.add(t, 4, Kind::Fin, peer);
                pure_acks.push((t, us, true));
            }
            Meaning::ClosingAcked => pure_acks.push((t, peer, true)),
            Meaning::FinalAck
                if e.t.resets_received.is_empty() && ev.sock.is_none_or(|s| s.err == 0) =>
            {
                pure_acks.push((t, peer, true));
            }
            _ => {}
        }
    }
    for r in e.t.resets_sent.iter().chain(&e.t.timewait_resets) {
        seg.add(r.first_ts, 5, Kind::Rst, us);
    }
    for r in &e.t.resets_received {
        seg.add(r.first_ts, 5, Kind::Rst, peer);
    }
    // Retransmissions before our FIN carry payload (a SYN's are in SYN_SENT / SYN_RECV): T at
    // the 1st, 10th, 100th ... of them, where the time of that one is known (a run's first or
    // last), else within the run.
    let mut count = 0u64;
    let mut next = 1u64;
    let mut written = 0;
    for r in &e.t.retransmits {
        if !matches!(
            r.ev.kind.state_after(),
            TcpState::Established | TcpState::CloseWait
        ) {
            continue;
        }
        let (from, to) = (count + 1, count + r.count());
        while next <= to && written < MAX_T {
            let (lo, hi) = if next == from {
                (r.first_ts, r.first_ts)
            } else if next == to {
                (r.ev.ts_ns, r.ev.ts_ns)
            } else {
                (r.first_ts, r.ev.ts_ns)
            };
            seg.add_span(lo, hi, 3, Kind::Retrans, us);
            written += 1;
            next = next.saturating_mul(10);
        }
        count = to;
    }
}

/// The connection in Zeek's words, from `conn` and, when traced, its `peer`.
pub fn zeek(conn: &Connection, us: &Trace<'_>, peer: Option<(&Connection, &Trace<'_>)>) -> Zeek {
    let started = |t: &Trace<'_>| t.has(Meaning::Connect);
    let answered = |t: &Trace<'_>| t.has(Meaning::SynReceived);
    let originator = if started(us) {
        Originator::ThisEnd
    } else if answered(us) || peer.is_some_and(|(_, p)| started(p)) {
        Originator::Peer
    } else if peer.is_some_and(|(_, p)| answered(p)) {
        Originator::ThisEnd
    } else if conn.local.port() >= conn.remote.port() {
        Originator::Guessed
    } else {
        // Guessed the other way: the peer has the higher port.
        Originator::Peer
    };
    let our_dir = match originator {
        Originator::ThisEnd | Originator::Guessed => Dir::Orig,
        Originator::Peer => Dir::Resp,
    };
    let ours = EndView {
        t: us,
        conn,
        dir: our_dir,
    };
    let theirs = peer.map(|(c, t)| EndView {
        t,
        conn: c,
        dir: our_dir.other(),
    });
    let (orig, resp) = match our_dir {
        Dir::Orig => (Some(&ours), theirs.as_ref()),
        Dir::Resp => (theirs.as_ref(), Some(&ours)),
    };

    let mut seg = Segments::new();
    let mut acks = Vec::with_capacity(4);
    segments_of(&ours, &mut seg, &mut acks);
    if let Some(p) = &theirs {
        segments_of(p, &mut seg, &mut acks);
    }
    let orig_payload = payload(orig, resp);
    let resp_payload = payload(resp, orig);
    for (p, dir) in [(&orig_payload, Dir::Orig), (&resp_payload, Dir::Resp)] {
        if let Some((lo, hi)) = p.first {
            seg.add_span(lo, hi, 3, Kind::Data, dir);
        }
    }
    // Pure ACKs. The originator's first is the handshake's third segment, always known. The
    // responder's first is known only if nothing before it may have been one: payload from the
    // originator (acknowledged, perhaps by a pure ACK, at a moment the hooks do not show), or an
    // ACK of a FIN that may have ridden on the responder's payload.
    let resp_acks_known = orig_payload.bytes == Some(0);
    if resp_acks_known {
        let active = orig.map(|o| o.t);
        let merged = super::classify::merged_evidence(active, resp.map(|r| r.t)).is_some();
        let mut first: Option<u64> = None;
        let mut ambiguous_before: Option<u64> = None;
        for &(t, dir, certain) in acks.iter().filter(|a| a.1 == Dir::Resp) {
            let pure = if certain {
                Some(true)
            } else if merged {
                Some(false)
            } else {
                // The ACK of the originator's FIN, alone unless the responder's payload left
                // around then.
                match resp_payload.first {
                    Some((lo, hi)) if lo < t && t <= hi => None,
                    _ if resp_payload.bytes.is_none() => None,
                    _ => Some(true),
                }
            };
            let _ = dir;
            match pure {
                Some(true) => first = Some(first.map_or(t, |f| f.min(t))),
                Some(false) => {}
                None => ambiguous_before = Some(ambiguous_before.map_or(t, |a| a.min(t))),
            }
        }
        if let Some(t) = first.filter(|&t| ambiguous_before.is_none_or(|a| a > t)) {
            seg.add(t, 2, Kind::Ack, Dir::Resp);
        }
    }

    // The letters: each kind once per direction (T excepted) at its earliest sighting; a
    // letter known only within a span is written when no other falls inside that span.
    let mut firsts: [Option<Seen>; 48] = [None; 48];
    let mut n = 0;
    for s in seg.iter() {
        let dup = firsts[..n]
            .iter()
            .flatten()
            .position(|f| f.kind == s.kind && f.dir == s.dir && s.kind != Kind::Retrans);
        match dup {
            Some(i) => {
                if let Some(f) = firsts[i].as_mut() {
                    if s.hi < f.hi {
                        *f = s;
                    }
                }
            }
            None if n < firsts.len() => {
                firsts[n] = Some(s);
                n += 1;
            }
            None => {}
        }
    }
    let all = &firsts[..n];
    let placed = |s: &Seen| {
        s.lo == s.hi
            || !all
                .iter()
                .flatten()
                .any(|o| !std::ptr::eq(o, s) && o.hi > s.lo && o.lo < s.hi)
    };
    let mut keep: [Option<Seen>; 48] = [None; 48];
    let mut k = 0;
    for s in all.iter().flatten() {
        if placed(s) {
            keep[k] = Some(*s);
            k += 1;
        }
    }
    let kept = &mut keep[..k];
    kept.sort_by_key(|s| s.map(|s| (s.hi, s.order, s.kind, s.dir == Dir::Resp)));
    let mut history = History {
        letters: [0; MAX_LETTERS],
        len: 0,
    };
    for s in kept.iter().flatten() {
        history.push(s.kind.letter(s.dir));
    }

    let has = |kind: Kind, dir: Dir| all.iter().flatten().any(|s| s.kind == kind && s.dir == dir);
    let conn_state = conn_state(
        Endpoints {
            syn: has(Kind::Syn, Dir::Orig),
            handshake_done: has(Kind::Ack, Dir::Orig) && has(Kind::SynAck, Dir::Resp),
            orig_fin: has(Kind::Fin, Dir::Orig),
            orig_rst: has(Kind::Rst, Dir::Orig),
            synack: has(Kind::SynAck, Dir::Resp),
            resp_fin: has(Kind::Fin, Dir::Resp),
            resp_rst: has(Kind::Rst, Dir::Resp),
            no_payload: orig_payload.bytes.unwrap_or(0) == 0
                && resp_payload.bytes.unwrap_or(0) == 0,
        },
        history.as_str(),
    );
    Zeek {
        conn_state,
        history,
        originator,
        orig_bytes: orig_payload.bytes,
        resp_bytes: resp_payload.bytes,
    }
}

/// What the two endpoints did, as Zeek's endpoint states record it.
#[derive(Clone, Copy, Debug, Default)]
struct Endpoints {
    syn: bool,
    handshake_done: bool,
    orig_fin: bool,
    orig_rst: bool,
    synack: bool,
    resp_fin: bool,
    resp_rst: bool,
    no_payload: bool,
}

/// Zeek's endpoint states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EndpointState {
    Inactive,
    SynSent,
    SynAckSent,
    Established,
    Closed,
    Reset,
}

/// Zeek's `conn_state` function (base/protocols/conn/main.zeek) over the endpoint states.
fn conn_state(e: Endpoints, history: &str) -> ConnState {
    use EndpointState as S;
    let os = if e.orig_rst {
        S::Reset
    } else if e.orig_fin {
        S::Closed
    } else if e.handshake_done {
        S::Established
    } else if e.syn {
        S::SynSent
    } else {
        S::Inactive
    };
    let rs = if e.resp_rst {
        S::Reset
    } else if e.resp_fin {
        S::Closed
    } else if e.handshake_done {
        S::Established
    } else if e.synack {
        S::SynAckSent
    } else {
        S::Inactive
    };
    let o_inactive = os == S::Inactive;
    let r_inactive = rs == S::Inactive;
    if rs == S::Reset {
        if matches!(os, S::SynSent | S::SynAckSent) || (os == S::Reset && e.no_payload) {
            ConnState::Rej
        } else if o_inactive {
            ConnState::Rstrh
        } else {
            ConnState::Rstr
        }
    } else if os == S::Reset {
        if r_inactive {
            // Zeek: /^?S[^HAFGIQ]*R.*/ on the history.
            let h = history.strip_prefix('^').unwrap_or(history);
            let syn_then_rst = h.strip_prefix('S').is_some_and(|rest| {
                rest.find('R')
                    .is_some_and(|i| !rest[..i].contains(['H', 'A', 'F', 'G', 'I', 'Q']))
            });
            if syn_then_rst {
                ConnState::Rstos0
            } else {
                ConnState::Oth
            }
        } else {
            ConnState::Rsto
        }
    } else if rs == S::Closed && os == S::Closed {
        ConnState::SF
    } else if os == S::Closed {
        if r_inactive {
            ConnState::Sh
        } else {
            ConnState::S2
        }
    } else if rs == S::Closed {
        if o_inactive {
            ConnState::Shr
        } else {
            ConnState::S3
        }
    } else if os == S::SynSent && r_inactive {
        ConnState::S0
    } else if os == S::Established && rs == S::Established {
        ConnState::S1
    } else {
        ConnState::Oth
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends(f: impl Fn(&mut Endpoints)) -> Endpoints {
        let mut e = Endpoints {
            no_payload: true,
            ..Endpoints::default()
        };
        f(&mut e);
        e
    }

    /// Zeek's function, case by case, as base/protocols/conn/main.zeek writes it.
    #[test]
    fn conn_state_is_zeeks_function() {
        let est = |e: &mut Endpoints| {
            e.syn = true;
            e.synack = true;
            e.handshake_done = true;
        };
        let cases: &[(Endpoints, &str, ConnState)] = &[
            (ends(|e| e.syn = true), "S", ConnState::S0),
            (ends(|e| est(e)), "ShA", ConnState::S1),
            (
                ends(|e| {
                    est(e);
                    e.orig_fin = true;
                    e.resp_fin = true;
                }),
                "ShAFf",
                ConnState::SF,
            ),
            (
                ends(|e| {
                    e.syn = true;
                    e.resp_rst = true;
                }),
                "Sr",
                ConnState::Rej,
            ),
            (
                ends(|e| {
                    est(e);
                    e.orig_fin = true;
                }),
                "ShAF",
                ConnState::S2,
            ),
            (
                ends(|e| {
                    est(e);
                    e.resp_fin = true;
                }),
                "ShAf",
                ConnState::S3,
            ),
            (
                ends(|e| {
                    est(e);
                    e.orig_rst = true;
                }),
                "ShAR",
                ConnState::Rsto,
            ),
            (
                ends(|e| {
                    est(e);
                    e.resp_rst = true;
                }),
                "ShAr",
                ConnState::Rstr,
            ),
            (
                ends(|e| {
                    e.syn = true;
                    e.orig_rst = true;
                }),
                "SR",
                ConnState::Rstos0,
            ),
            (
                ends(|e| {
                    e.synack = true;
                    e.resp_rst = true;
                }),
                "hr",
                ConnState::Rstrh,
            ),
            (
                ends(|e| {
                    e.syn = true;
                    e.orig_fin = true;
                }),
                "SF",
                ConnState::Sh,
            ),
            (
                ends(|e| {
                    e.synack = true;
                    e.resp_fin = true;
                }),
                "hf",
                ConnState::Shr,
            ),
            (ends(|_| {}), "", ConnState::Oth),
        ];
        for (e, h, want) in cases {
            assert_eq!(conn_state(*e, h), *want, "{h}: {e:?}");
        }
        // Both ends reset without payload: REJ, as Zeek says it.
        let both = ends(|e| {
            est(e);
            e.orig_rst = true;
            e.resp_rst = true;
        });
        assert_eq!(conn_state(both, "ShARr"), ConnState::Rej);
        let mut with_data = both;
        with_data.no_payload = false;
        assert_eq!(conn_state(with_data, "ShADRr"), ConnState::Rstr);
    }

    #[test]
    fn every_letter_is_listed_once() {
        let mut seen = std::collections::BTreeSet::new();
        for (c, ..) in LETTERS {
            assert!(seen.insert(*c), "{c} twice");
        }
        for k in [
            Kind::Syn,
            Kind::SynAck,
            Kind::Ack,
            Kind::Data,
            Kind::Retrans,
            Kind::Fin,
            Kind::Rst,
        ] {
            let c = char::from(k.letter(Dir::Orig));
            assert!(
                LETTERS
                    .iter()
                    .any(|(l, _, known, _)| *l == c && *known != Known::No),
                "{c} is written but listed as never known"
            );
        }
    }
}
