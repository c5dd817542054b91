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

/// At most this many letters: each of 7 kinds once per direction.
const MAX_LETTERS: usize = 32;

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
/// segment with payload and without a FIN left (None when it sent none, when the payload may
/// all have gone on the FIN, or when the sequence numbers do not tell).
struct Payload {
    bytes: Option<u64>,
    first: Option<(u64, u64)>,
    /// Where the payload went for sure, on a segment of its own or on the FIN: no other letter
    /// whose place is only a span can be placed against it.
    span: Option<(u64, u64)>,
}

/// A sequence field followed from event to event in 64 bits: each step is taken forward modulo
/// 2^32, so any total counts as long as less than 4 GiB passed between two events.
struct Unwrap {
    prev: u32,
    total: u64,
}

impl Unwrap {
    fn new(base: u32) -> Unwrap {
        Unwrap {
            prev: base,
            total: 0,
        }
    }

    fn at(&mut self, v: u32) -> u64 {
        self.total += u64::from(v.wrapping_sub(self.prev));
        self.prev = v;
        self.total
    }
}

/// The payload `sender` sent, from its own sequence numbers (`snd_nxt`, `write_seq`) when it
/// was traced, bounded by what `receiver` shows; from the receiver's (`rcv_nxt`) alone else.
fn payload(sender: Option<&EndView<'_, '_>>, receiver: Option<&EndView<'_, '_>>) -> Payload {
    let unknown = Payload {
        bytes: None,
        first: None,
        span: None,
    };
    let received = receiver.and_then(received);
    let Some(s) = sender else {
        // The sender was not traced: what the receiver got.
        return match received {
            Some(r) => Payload {
                bytes: Some(r.total),
                first: r.first_before_fin.map(|h| (r.base_ts, h)),
                span: r.first_any.map(|h| (r.base_ts, h)),
            },
            None => unknown,
        };
    };
    let Some(base_ev) = established_at(s.t) else {
        return unknown;
    };
    let Some(base) = base_ev.seq.map(|q| q.snd_nxt) else {
        return unknown;
    };
    let fin = fin_at(s.t);
    let mut sent = Unwrap::new(base);
    let (mut lo, mut hi, mut any) = (base_ev.ts_ns, None, None);
    let mut total = 0u64;
    for ev in events(s).filter(|e| e.ts_ns >= base_ev.ts_ns) {
        let Some(q) = ev.seq else { continue };
        let fin_before = fin.is_some_and(|f| f.ts_ns < ev.ts_ns);
        // Bytes sent by the moment of `ev`, less our FIN once it was sent.
        let n = sent.at(q.snd_nxt).saturating_sub(u64::from(fin_before));
        // Queued at our FIN, all of it leaves before the FIN or with it.
        let queued = if fin.is_some_and(|f| std::ptr::eq(f, ev)) {
            u64::from(q.write_seq.wrapping_sub(q.snd_nxt))
        } else {
            0
        };
        total = total.max(n + queued);
        if any.is_none() && n + queued > 0 {
            any = Some(ev.ts_ns);
        }
        if hi.is_none() {
            if n == 0 {
                lo = ev.ts_ns;
            } else if !fin_before {
                // Sent before our FIN: a segment with payload and no FIN.
                hi = Some(ev.ts_ns);
            }
        }
    }
    // The receiver had payload before the FIN came: it came on a segment of its own.
    if let Some(h) = received.as_ref().and_then(|r| r.first_before_fin) {
        hi = Some(hi.map_or(h, |x| x.min(h)));
    }
    if let Some(h) = received.as_ref().and_then(|r| r.first_any) {
        any = Some(any.map_or(h, |x| x.min(h)));
    }
    // Bytes sent after our FIN's transition may all have gone on the FIN (Zeek writes no D
    // for it): then the first segment with payload alone is unknown.
    Payload {
        bytes: Some(total),
        first: hi.filter(|_| total > 0).map(|h| (lo.min(h), h)),
        span: any.filter(|_| total > 0).map(|h| (lo.min(h), h)),
    }
}

/// What an end received of its peer's payload.
struct Received {
    total: u64,
    /// The first event showing payload before the peer's FIN came.
    first_before_fin: Option<u64>,
    /// The first event showing payload at all.
    first_any: Option<u64>,
    /// The end's handshake: the payload left after it.
    base_ts: u64,
}

/// What `r` received: `rcv_nxt` past the handshake's, the peer's FIN discounted.
fn received(r: &EndView<'_, '_>) -> Option<Received> {
    let base_ev = established_at(r.t)?;
    let mut got = Unwrap::new(base_ev.seq?.rcv_nxt);
    let mut out = Received {
        total: 0,
        first_before_fin: None,
        first_any: None,
        base_ts: base_ev.ts_ns,
    };
    for ev in events(r).filter(|e| e.ts_ns >= base_ev.ts_ns) {
        let Some(q) = ev.seq else { continue };
        let fin_in = ev.sock.is_some_and(|s| s.done()) || peer_fin_seen_before(r.t, ev);
        let n = got.at(q.rcv_nxt).saturating_sub(u64::from(fin_in));
        out.total = out.total.max(n);
        if n > 0 && !fin_in && out.first_before_fin.is_none() {
            out.first_before_fin = Some(ev.ts_ns);
        }
        if n > 0 && out.first_any.is_none() {
            out.first_any = Some(ev.ts_ns);
        }
    }
    Some(out)
}

/// Whether the end had received the peer's FIN by `ev` (its -> CLOSE_WAIT or -> CLOSING).
fn peer_fin_seen_before(t: &Trace<'_>, ev: &Event) -> bool {
    [
        t.mark(Meaning::ReceiveFin),
        t.mark(Meaning::SimultaneousFin),
    ]
    .into_iter()
    .flatten()
    .any(|f| f.ts_ns <= ev.ts_ns)
}

/// Whether our FIN is acknowledged at `ev` (snd_una caught up with write_seq, the FIN
/// included), from its sequence numbers.
fn fin_acked_at(ev: &Event) -> bool {
    ev.seq.is_some_and(|q| q.snd_una == q.write_seq)
}

/// A pure ACK the events show: when, from which direction, whether it surely went alone (the
/// ACK of the originator's FIN may have ridden on the responder's FIN or payload, which the
/// caller, knowing both ends, decides), and its order among the segments of that moment.
#[derive(Clone, Copy, Debug)]
struct PureAck {
    t: u64,
    dir: Dir,
    alone: bool,
    order: u8,
}

/// The segments one end's events show: its own and, by what it received, its peer's.
/// `pure_acks` collects the pure ACKs known, to be written under the rules of [`zeek`].
fn segments_of(e: &EndView<'_, '_>, seg: &mut Segments, pure_acks: &mut Vec<PureAck>) {
    let (us, peer) = (e.dir, e.dir.other());
    let no_reset = e.t.resets_sent.is_empty() && e.t.resets_received.is_empty();
    // An ACK answering a FIN received in the same event comes after that FIN.
    let mut ack = |t, dir, alone, order| {
        pure_acks.push(PureAck {
            t,
            dir,
            alone,
            order,
        })
    };
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
            // FIN_WAIT1 -> CLOSING: the peer's FIN, and our ACK of it at once (tcp_fin).
            Meaning::SimultaneousFin => {
                seg.add(t, 4, Kind::Fin, peer);
                ack(t, us, true, 6);
            }
            // The ACK of our FIN: alone unless it rode on the peer's FIN or payload.
            Meaning::FinAcked => ack(t, peer, false, 2),
            // The TIME_WAIT entry on the peer's FIN: our ACK of it.
            Meaning::TimeWaitEntry if ev.sock.is_some_and(|s| s.done()) => {
                seg.add(t, 4, Kind::Fin, peer);
                ack(t, us, true, 6);
            }
            // Our FIN ACKed, not a reset nor a timeout (which end these states too).
            Meaning::ClosingAcked | Meaning::FinalAck if no_reset && fin_acked_at(ev) => {
                ack(t, peer, true, 2);
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
    // The first retransmission before our FIN carries payload (a SYN's are in SYN_SENT /
    // SYN_RECV). Only the first T is written: Zeek counts resent packets on the wire, the
    // hooks resent buffers (one may be several packets), so its 10th is not ours.
    if let Some(r) = e.t.retransmits.iter().find(|r| {
        matches!(
            r.ev.kind.state_after(),
            TcpState::Established | TcpState::CloseWait
        )
    }) {
        seg.add(r.first_ts, 3, Kind::Retrans, us);
    }
}

/// Whether the ACK of the originator's FIN (the originator's FIN_WAIT1 -> FIN_WAIT2) went
/// alone, not on the responder's FIN: from both ends (the responder sent its FIN after the
/// originator had the ACK, or never), or from the kernel's own rule for an orphan (an orphan
/// whose FIN is ACKed alone becomes a FIN_WAIT2 timewait socket, docs/close-sequence.md fact 8).
/// None when only timing could tell.
fn ack_alone(orig: &Trace<'_>, resp: Option<&Trace<'_>>) -> Option<bool> {
    let fa = orig.mark(Meaning::FinAcked)?;
    if let Some(r) = resp {
        return Some(
            r.mark(Meaning::SendThirdWave)
                .is_none_or(|la| la.ts_ns > fa.ts_ns),
        );
    }
    let close = orig.close?;
    if !fa.sock.is_some_and(|s| s.dead()) || orig.close_from() != Some(TcpState::FinWait2) {
        return None;
    }
    Some(!close.sock.is_some_and(|s| s.done()))
}

/// The connection in Zeek's words, from `conn` and, when traced, its `peer`.
/// `timewait` is what became of its timewait socket, when the verdict waited for it: an orphan
/// whose socket reached TIME_WAIT got the peer's FIN after its last event.
pub fn zeek(
    conn: &Connection,
    us: &Trace<'_>,
    peer: Option<(&Connection, &Trace<'_>)>,
    timewait: Option<super::TimewaitOutcome>,
) -> Zeek {
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
    // The orphan's timewait socket got the peer's FIN (and ACKed it) after its last event.
    if timewait.is_some_and(|t| t.reached == crate::sock_diag::TwSubstate::TimeWait) {
        if let Some(close) = us.close {
            seg.add_span(close.ts_ns, u64::MAX, 4, Kind::Fin, our_dir.other());
            acks.push(PureAck {
                t: u64::MAX,
                dir: our_dir,
                alone: true,
                order: 6,
            });
        }
    }
    let orig_payload = payload(orig, resp);
    let resp_payload = payload(resp, orig);
    for (p, dir) in [(&orig_payload, Dir::Orig), (&resp_payload, Dir::Resp)] {
        if let Some((lo, hi)) = p.first {
            seg.add_span(lo, hi, 3, Kind::Data, dir);
        }
    }
    // Pure ACKs. The originator's first is the handshake's third segment, always known. The
    // responder's first is known only if nothing before it may have been one unseen: payload
    // from the originator (acknowledged, perhaps by a pure ACK, at a moment the hooks do not
    // show), or an ACK of the originator's FIN that may have ridden on the responder's FIN or
    // payload.
    if orig_payload.bytes == Some(0) {
        let mut first: Option<PureAck> = None;
        let mut ambiguous_from: Option<u64> = None;
        for a in acks.iter().filter(|a| a.dir == Dir::Resp) {
            let alone = if a.alone {
                Some(true)
            } else {
                match (
                    orig.and_then(|o| ack_alone(o.t, resp.map(|r| r.t))),
                    resp_payload.bytes,
                ) {
                    (Some(false), _) => Some(false),
                    (Some(true), Some(0)) => Some(true),
                    _ => None,
                }
            };
            match alone {
                Some(true) if first.is_none_or(|f| a.t < f.t) => first = Some(*a),
                Some(_) => {}
                None => ambiguous_from = Some(ambiguous_from.map_or(a.t, |x| x.min(a.t))),
            }
        }
        if let Some(a) = first.filter(|f| ambiguous_from.is_none_or(|x| x > f.t)) {
            seg.add(a.t, a.order, Kind::Ack, Dir::Resp);
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
    // Payload whose letter is not placed still went at some moment of its span.
    let blockers = [
        (Dir::Orig, orig_payload.span),
        (Dir::Resp, resp_payload.span),
    ];
    let placed = |s: &Seen| {
        let inside = |lo: u64, hi: u64| hi > s.lo && lo < s.hi;
        s.lo == s.hi
            || (!all
                .iter()
                .flatten()
                .any(|o| !std::ptr::eq(o, s) && inside(o.lo, o.hi))
                && !blockers.iter().any(|&(dir, span)| {
                    !(s.kind == Kind::Data && s.dir == dir)
                        && span.is_some_and(|(lo, hi)| inside(lo, hi))
                }))
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

    /// One end's connection from (time, old, new, snd_nxt, flags) steps; write_seq and snd_una
    /// follow snd_nxt (every byte ACKed), rcv_nxt stays at 1000.
    fn one_end(
        local: &str,
        remote: &str,
        steps: &[(u64, TcpState, TcpState, u32, u32)],
    ) -> Connection {
        use crate::decode::{Comm, SeqSnapshot, SockSnapshot};
        let (local, remote) = (local.parse().unwrap(), remote.parse().unwrap());
        let events: Vec<crate::track::Run> = steps
            .iter()
            .map(|&(ts_ns, old, new, n, flags)| {
                crate::track::Run::from(Event {
                    ts_ns,
                    sk: 0xffff_8881_0000_0a00,
                    kind: EventKind::State { old, new },
                    local,
                    remote,
                    pid: 0,
                    comm: Comm::default(),
                    netns: 0,
                    seq: Some(SeqSnapshot {
                        snd_una: n,
                        snd_nxt: n,
                        rcv_nxt: 1000,
                        write_seq: n,
                    }),
                    sock: Some(SockSnapshot { flags, err: 0 }),
                })
            })
            .collect();
        Connection {
            id: 1,
            sk: 0xffff_8881_0000_0a00,
            local,
            remote,
            process: None,
            netns: 0,
            events,
            unstored: 0,
            seen_from_start: true,
            events_maybe_lost: false,
            state_at_start: None,
            end: crate::track::RecordEnd::Closed,
        }
    }

    fn words(c: &Connection) -> (&'static str, String, Originator) {
        let t = Trace::of(&c.events);
        let z = zeek(c, &t, None, None);
        (
            z.conn_state.code(),
            z.history.as_str().to_owned(),
            z.originator,
        )
    }

    /// A server traced alone, which closes first, no payload either way: the client's FIN and
    /// the server's ACK of it come in one event (its TIME_WAIT entry), the FIN first.
    #[test]
    fn an_ack_answering_a_fin_comes_after_it() {
        use TcpState::*;
        const DONE: u32 = teardown_common::sock_flag::DONE;
        let server = one_end(
            "10.0.0.1:80",
            "10.0.0.2:40000",
            &[
                (1_000, Listen, SynRecv, 0, 0),
                (2_000, SynRecv, Established, 501, 0),
                (3_000, Established, FinWait1, 501, 0),
                (4_000, FinWait1, FinWait2, 502, 0),
                (5_000, FinWait2, Close, 502, DONE),
            ],
        );
        assert_eq!(
            words(&server),
            ("SF", "ShAfFa".to_owned(), Originator::Peer)
        );
        // The client of the same close, traced alone: the server's final ACK after its FIN.
        let client = one_end(
            "10.0.0.2:40000",
            "10.0.0.1:80",
            &[
                (1_000, Close, SynSent, 0, 0),
                (2_000, SynSent, Established, 101, 0),
                (3_000, Established, CloseWait, 101, DONE),
                (4_000, CloseWait, LastAck, 101, DONE),
                (5_000, LastAck, Close, 102, DONE),
            ],
        );
        assert_eq!(
            words(&client),
            ("SF", "ShAfFa".to_owned(), Originator::ThisEnd)
        );
    }

    /// Payload counted across 32-bit wraps: 5 GiB between the handshake and the FIN, in steps
    /// under 4 GiB, is neither 0 nor 1 GiB.
    #[test]
    fn payload_is_counted_past_the_sequence_space() {
        use TcpState::*;
        const DONE: u32 = teardown_common::sock_flag::DONE;
        let gib = 1u64 << 30;
        // Sequence numbers are modulo 2^32: 5 GiB past 101 is 1 GiB past it, again.
        let at = |n: u64| ((101 + n) % (1 << 32)) as u32;
        let client = one_end(
            "10.0.0.2:40000",
            "10.0.0.1:80",
            &[
                (1_000, Close, SynSent, 0, 0),
                (2_000, SynSent, Established, at(0), 0),
                (3_000, Established, CloseWait, at(3 * gib), DONE),
                (4_000, CloseWait, LastAck, at(5 * gib), DONE),
                (5_000, LastAck, Close, at(5 * gib + 1), DONE),
            ],
        );
        let t = Trace::of(&client.events);
        let z = zeek(&client, &t, None, None);
        assert_eq!(z.orig_bytes, Some(5 * gib));
        assert_eq!(z.history.as_str(), "ShADfF", "{:?}", z.history);
        // Payload queued at the FIN and sent after its transition may all go on the FIN:
        // counted, but no D (Zeek writes none for a FIN segment).
        let mut queued = one_end(
            "10.0.0.2:40000",
            "10.0.0.1:80",
            &[
                (1_000, Close, SynSent, 0, 0),
                (2_000, SynSent, Established, 101, 0),
                (3_000, Established, FinWait1, 101, 0),
                (4_000, FinWait1, FinWait2, 107, 0),
            ],
        );
        if let Some(q) = queued.events[2].ev.seq.as_mut() {
            q.write_seq = 106;
        }
        let t = Trace::of(&queued.events);
        let z = zeek(&queued, &t, None, None);
        assert_eq!(z.orig_bytes, Some(5));
        assert_eq!(z.history.as_str(), "ShAF");
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
