//! Stage 3, decode: records from the kernel (stage 1) or a recording become typed events.
//!
//! Decoded events: the kernel's raw [`teardown_common::Event`] turned into typed values.
//!
//! Decoding allocates nothing: an [`Event`] is `Copy`, so the hot path moves plain values.

#[cfg(test)]
mod corpus;
pub mod filter;
pub mod recording;

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use serde::{Deserialize, Serialize};
use teardown_common as raw;

pub use teardown_common::{TcpState, TwSubstate};

/// What happened to the socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    /// The socket moved from one TCP state to another.
    State { old: TcpState, new: TcpState },
    /// A segment was retransmitted while the socket was in `state`.
    Retransmit { state: TcpState },
    /// This socket sent a RST while in `state`.
    ResetSent { state: TcpState },
    /// This socket received a RST while in `state`.
    ResetReceived { state: TcpState },
}

impl EventKind {
    /// The state the socket is in after this event.
    pub fn state_after(self) -> TcpState {
        match self {
            EventKind::State { new, .. } => new,
            EventKind::Retransmit { state }
            | EventKind::ResetSent { state }
            | EventKind::ResetReceived { state } => state,
        }
    }
}

/// The task that was running on the CPU when the event fired. Only meaningful for transitions
/// made in process context (see [`Event::in_process_context`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Task {
    pub pid: u32,
    pub comm: Comm,
}

impl fmt::Debug for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.pid, self.comm)
    }
}

/// A task's `comm`: up to 15 bytes, NUL-padded, kept inline so events stay `Copy`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Comm(pub [u8; 16]);

impl Comm {
    pub fn new(s: &str) -> Comm {
        let mut b = [0u8; 16];
        let n = s.len().min(15);
        b[..n].copy_from_slice(&s.as_bytes()[..n]);
        Comm(b)
    }
    pub fn as_str(&self) -> std::borrow::Cow<'_, str> {
        let end = self.0.iter().position(|&c| c == 0).unwrap_or(self.0.len());
        String::from_utf8_lossy(&self.0[..end])
    }
}

impl fmt::Display for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str())
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl Serialize for Comm {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.as_str())
    }
}

impl<'de> Deserialize<'de> for Comm {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Comm, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Ok(Comm::new(&s))
    }
}

/// The socket's sequence fields at the moment of the event (docs/close-sequence.md, §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqSnapshot {
    /// Oldest unacknowledged sequence number: our FIN is ACKed once this is FIN seq + 1.
    pub snd_una: u32,
    /// Next sequence number to send.
    pub snd_nxt: u32,
    /// Next sequence number expected from the peer: the peer's FIN seq + 1 once it arrived.
    pub rcv_nxt: u32,
    /// Sequence number after the last byte queued by the application: the FIN's seq at the
    /// transition into FIN_WAIT1 or LAST_ACK.
    pub write_seq: u32,
}

/// The socket's flags and pending error at the moment of the event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SockSnapshot {
    /// Low bits of `sk_flags`: see [`teardown_common::sock_flag`].
    pub flags: u32,
    /// `sk_err`: a positive errno such as ECONNRESET (104) or EPIPE (32), 0 when none.
    pub err: i32,
}

impl SockSnapshot {
    /// The application closed the socket (it is orphaned).
    pub fn dead(&self) -> bool {
        self.flags & raw::sock_flag::DEAD != 0
    }
    /// A FIN was received from the peer.
    pub fn done(&self) -> bool {
        self.flags & raw::sock_flag::DONE != 0
    }
}

/// Events the kernel counted instead of sending while the agent was behind, by what they were
/// (`OLD>NEW` for a state change, as the compact JSON Lines form writes steps; the event kind
/// for the others), from [`crate::kernel::Probe::not_judged`]'s slots.
pub fn not_judged(slots: &[(u32, u64)]) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for &(slot, n) in slots {
        let name = if slot < raw::lost::TRANSITIONS {
            let state = |k: u32| {
                u8::try_from(k)
                    .ok()
                    .and_then(TcpState::from_kernel)
                    .map_or_else(|| format!("state {k}"), |s| s.name().to_owned())
            };
            format!("{}>{}", state(slot / 16), state(slot % 16))
        } else {
            match u8::try_from(slot - raw::lost::TRANSITIONS).unwrap_or(0) {
                raw::kind::RETRANSMIT => "retransmit".to_owned(),
                raw::kind::SEND_RESET => "reset_sent".to_owned(),
                raw::kind::RECV_RESET => "reset_received".to_owned(),
                raw::kind::TW_START => "timewait_timer_start".to_owned(),
                raw::kind::TW_EXPIRE => "timewait_timer_expire".to_owned(),
                raw::kind::TW_CANCEL => "timewait_timer_cancel".to_owned(),
                k => format!("kind {k}"),
            }
        };
        *out.entry(name).or_default() += n;
    }
    out
}

/// Whether [`not_judged`] names one of its slots so (a recording's names are checked by it).
pub fn is_not_judged_name(name: &str) -> bool {
    (0..raw::lost::NOT_JUDGED_SLOTS).any(|slot| not_judged(&[(slot, 1)]).contains_key(name))
}

/// The symbolic name of an errno the teardown paths set, e.g. `ECONNRESET`.
pub fn errno_name(err: i32) -> std::borrow::Cow<'static, str> {
    match err {
        libc::EPIPE => "EPIPE".into(),
        libc::ECONNRESET => "ECONNRESET".into(),
        libc::ECONNREFUSED => "ECONNREFUSED".into(),
        libc::ETIMEDOUT => "ETIMEDOUT".into(),
        libc::ECONNABORTED => "ECONNABORTED".into(),
        libc::EHOSTUNREACH => "EHOSTUNREACH".into(),
        libc::ENOMEM => "ENOMEM".into(),
        libc::ENETUNREACH => "ENETUNREACH".into(),
        n => format!("errno {n}").into(),
    }
}

/// One decoded kernel event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Monotonic kernel time (CLOCK_MONOTONIC), nanoseconds.
    pub ts_ns: u64,
    /// Address of the kernel socket: with the 4-tuple, the key of a connection.
    pub sk: u64,
    #[serde(flatten)]
    pub kind: EventKind,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub pid: u32,
    pub comm: Comm,
    /// Inode number of the socket's network namespace (`ls -iL /proc/PID/ns/net`), 0 when
    /// unknown (no BTF, or a recording made before it was traced).
    #[serde(default, skip_serializing_if = "crate::sock_diag::netns::is_unknown")]
    pub netns: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<SeqSnapshot>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sock: Option<SockSnapshot>,
}

/// What happened to a timewait socket's timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimerOp {
    /// Armed: the socket entered a substate, or (just after a cancel) its timer was re-armed.
    Start,
    /// It ran out: the socket goes.
    Expire,
    /// Taken off the timer wheel: to run or be re-armed (an expiry or a start follows at once),
    /// or for the socket to go early.
    Cancel,
}

/// One event of a timewait socket's timer, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TwTimer {
    /// Monotonic kernel time (CLOCK_MONOTONIC), nanoseconds.
    pub ts_ns: u64,
    /// Address of the kernel timewait socket.
    pub tw: u64,
    pub op: TimerOp,
    /// Its substate at the event.
    pub substate: TwSubstate,
    /// The timer's expiry, and the kernel's clock at the event, in jiffies.
    pub expires: u64,
    pub jiffies: u64,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    #[serde(default, skip_serializing_if = "crate::sock_diag::netns::is_unknown")]
    pub netns: u32,
    /// Its namespace was being removed (its reference count read zero).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub netns_gone: bool,
}

/// A ring-buffer record, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded {
    Sock(Event),
    Timer(TwTimer),
}

impl Decoded {
    /// Decodes one ring-buffer record of either kind, told apart by its size.
    pub fn decode(bytes: &[u8]) -> Result<Decoded, DecodeError> {
        if bytes.len() == std::mem::size_of::<raw::TwTimerEvent>() {
            // SAFETY: the length was checked and `raw::TwTimerEvent` is plain old data (any bit
            // pattern is valid); read_unaligned as ring-buffer records are only 8-byte aligned.
            let r: raw::TwTimerEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
            return TwTimer::from_raw(&r).map(Decoded::Timer);
        }
        Event::decode(bytes).map(Decoded::Sock)
    }
}

impl TwTimer {
    pub fn from_raw(r: &raw::TwTimerEvent) -> Result<TwTimer, DecodeError> {
        let op = match r.kind {
            raw::kind::TW_START => TimerOp::Start,
            raw::kind::TW_EXPIRE => TimerOp::Expire,
            raw::kind::TW_CANCEL => TimerOp::Cancel,
            k => return Err(DecodeError::Kind(k)),
        };
        let substate = TwSubstate::from_kernel(r.substate).ok_or(DecodeError::State(r.substate))?;
        let (local, remote) = addrs(r.family, &r.saddr, &r.daddr)?;
        Ok(TwTimer {
            ts_ns: r.ts_ns,
            tw: r.twaddr,
            op,
            substate,
            expires: r.expires,
            jiffies: r.jiffies,
            local: SocketAddr::new(local, r.sport),
            remote: SocketAddr::new(remote, r.dport),
            netns: r.netns,
            netns_gone: r.net_refs == 0,
        })
    }
}

/// The addresses of a record of `family`.
fn addrs(family: u16, saddr: &[u8; 16], daddr: &[u8; 16]) -> Result<(IpAddr, IpAddr), DecodeError> {
    match family {
        AF_INET => {
            let ip = |b: &[u8; 16]| IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]));
            Ok((ip(saddr), ip(daddr)))
        }
        AF_INET6 => Ok((
            IpAddr::V6(Ipv6Addr::from(*saddr)),
            IpAddr::V6(Ipv6Addr::from(*daddr)),
        )),
        f => Err(DecodeError::Family(f)),
    }
}

/// Why a raw record could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes, expected {expected}", expected = std::mem::size_of::<raw::Event>())]
    Size(usize),
    #[error("unknown event kind {0}")]
    Kind(u8),
    #[error("unknown TCP state {0}")]
    State(u8),
    #[error("unknown address family {0}")]
    Family(u16),
}

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

impl Event {
    /// Decodes one ring-buffer record.
    pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
        if bytes.len() < std::mem::size_of::<raw::Event>() {
            return Err(DecodeError::Size(bytes.len()));
        }
        // SAFETY: the length was checked and `raw::Event` is plain old data (any bit pattern is
        // valid); read_unaligned because ring-buffer records are only 8-byte aligned by contract.
        let r: raw::Event = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        Event::from_raw(&r)
    }

    pub fn from_raw(r: &raw::Event) -> Result<Event, DecodeError> {
        let state = |n| TcpState::from_kernel(n).ok_or(DecodeError::State(n));
        let kind = match r.kind {
            raw::kind::STATE => EventKind::State {
                old: state(r.oldstate)?,
                new: state(r.newstate)?,
            },
            raw::kind::RETRANSMIT => EventKind::Retransmit {
                state: state(r.newstate)?,
            },
            raw::kind::SEND_RESET => EventKind::ResetSent {
                state: state(r.newstate)?,
            },
            raw::kind::RECV_RESET => EventKind::ResetReceived {
                state: state(r.newstate)?,
            },
            k => return Err(DecodeError::Kind(k)),
        };
        let (local, remote) = addrs(r.family, &r.saddr, &r.daddr)?;
        let seq = (r.flags & raw::flags::SEQ_VALID != 0).then_some(SeqSnapshot {
            snd_una: r.snd_una,
            snd_nxt: r.snd_nxt,
            rcv_nxt: r.rcv_nxt,
            write_seq: r.write_seq,
        });
        let sock = (r.flags & raw::flags::SOCK_VALID != 0).then_some(SockSnapshot {
            flags: r.sk_flags,
            err: r.sk_err,
        });
        Ok(Event {
            ts_ns: r.ts_ns,
            sk: r.skaddr,
            kind,
            local: SocketAddr::new(local, r.sport),
            remote: SocketAddr::new(remote, r.dport),
            pid: r.pid,
            comm: Comm(r.comm),
            netns: r.netns,
            seq,
            sock,
        })
    }

    /// True when the running task is the socket's owner: the transition is made by a system call
    /// (connect, listen, close, shutdown). Other transitions run in softirq or timer context,
    /// where the current task is whoever happened to be on the CPU (on loopback, often the peer).
    pub fn in_process_context(&self) -> bool {
        match self.kind {
            EventKind::State { old, new } => {
                raw::tcp::in_process_context(old.kernel_number(), new.kernel_number())
            }
            _ => false,
        }
    }

    /// The task, when the event was made in process context.
    pub fn task(&self) -> Option<Task> {
        self.in_process_context().then_some(Task {
            pid: self.pid,
            comm: self.comm,
        })
    }

    /// True when this event begins a new life of the socket address: `connect()`, `listen()`,
    /// or a child socket created for an incoming SYN.
    pub fn starts_connection(&self) -> bool {
        match self.kind {
            EventKind::State { old, new } => {
                raw::tcp::starts_connection(old.kernel_number(), new.kernel_number())
            }
            _ => false,
        }
    }

    /// The 4-tuple is usable (not yet zeroed by unhashing).
    pub fn has_tuple(&self) -> bool {
        self.local.port() != 0 && self.remote.port() != 0
    }
}

/// Events made by hand for the unit tests of every stage.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A state change of socket `sk` between `l` and `r`, owned by `app` (pid 100).
    pub(crate) fn ev(ts: u64, sk: u64, old: TcpState, new: TcpState, l: &str, r: &str) -> Event {
        Event {
            ts_ns: ts,
            sk,
            kind: EventKind::State { old, new },
            local: l.parse().unwrap(),
            remote: r.parse().unwrap(),
            pid: 100,
            comm: Comm::new("app"),
            netns: 0,
            seq: None,
            sock: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_judged_slots_are_named_as_steps_are() {
        use raw::lost::not_judged_slot;
        let est = TcpState::Established.kernel_number();
        let cw = TcpState::CloseWait.kernel_number();
        let slots = [
            (not_judged_slot(raw::kind::STATE, est, cw), 5),
            (not_judged_slot(raw::kind::RETRANSMIT, est, est), 2),
            (not_judged_slot(raw::kind::RECV_RESET, cw, cw), 1),
            // A state number this teardown does not know is named by its number.
            (not_judged_slot(raw::kind::STATE, est, 15), 1),
        ];
        let named = not_judged(&slots);
        assert_eq!(
            named.into_iter().collect::<Vec<_>>(),
            [
                ("ESTABLISHED>CLOSE_WAIT".to_owned(), 5),
                ("ESTABLISHED>state 15".to_owned(), 1),
                ("reset_received".to_owned(), 1),
                ("retransmit".to_owned(), 2),
            ]
        );
        // Every slot the kernel may count in is within the map.
        for kind in 0..=u8::MAX {
            assert!(not_judged_slot(kind, u8::MAX, u8::MAX) < raw::lost::NOT_JUDGED_SLOTS);
        }
    }

    fn raw_event() -> raw::Event {
        let mut r = raw::Event::ZERO;
        r.ts_ns = 42;
        r.skaddr = 0xffff_8880_1234_5678;
        r.kind = raw::kind::STATE;
        r.oldstate = 1;
        r.newstate = 4;
        r.family = AF_INET;
        r.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        r.daddr[..4].copy_from_slice(&[10, 1, 2, 3]);
        r.sport = 40000;
        r.dport = 8080;
        r.pid = 77;
        r.comm[..4].copy_from_slice(b"curl");
        r.flags = raw::flags::SEQ_VALID | raw::flags::SOCK_VALID;
        r.write_seq = 1000;
        r.sk_flags = raw::sock_flag::DEAD;
        r
    }

    fn bytes(r: &raw::Event) -> Vec<u8> {
        // SAFETY: raw::Event is plain data of a fixed size.
        unsafe {
            std::slice::from_raw_parts(
                (r as *const raw::Event).cast::<u8>(),
                std::mem::size_of::<raw::Event>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn decodes_ipv4_state_change() {
        let ev = Event::decode(&bytes(&raw_event())).unwrap();
        assert_eq!(
            ev.kind,
            EventKind::State {
                old: TcpState::Established,
                new: TcpState::FinWait1
            }
        );
        assert_eq!(ev.local, "127.0.0.1:40000".parse().unwrap());
        assert_eq!(ev.remote, "10.1.2.3:8080".parse().unwrap());
        assert_eq!(ev.comm.as_str(), "curl");
        assert_eq!(ev.seq.unwrap().write_seq, 1000);
        assert!(ev.sock.unwrap().dead());
        assert!(!ev.sock.unwrap().done());
        assert!(ev.in_process_context());
        assert_eq!(ev.task().unwrap().pid, 77);
    }

    #[test]
    fn decodes_ipv6_and_missing_seq() {
        let mut r = raw_event();
        r.family = AF_INET6;
        r.saddr = Ipv6Addr::LOCALHOST.octets();
        r.daddr = "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets();
        r.flags = 0;
        r.oldstate = 8;
        r.newstate = 7;
        let ev = Event::decode(&bytes(&r)).unwrap();
        assert_eq!(ev.local, "[::1]:40000".parse().unwrap());
        assert_eq!(ev.remote, "[2001:db8::1]:8080".parse().unwrap());
        assert_eq!(ev.seq, None);
        assert_eq!(ev.sock, None);
        // CLOSE_WAIT -> CLOSE may run in softirq (a RST): the task is not the owner.
        assert_eq!(ev.task(), None);
    }

    #[test]
    fn rejects_bad_records() {
        assert_eq!(Event::decode(&[0u8; 10]), Err(DecodeError::Size(10)));
        let mut r = raw_event();
        r.newstate = 99;
        assert_eq!(Event::decode(&bytes(&r)), Err(DecodeError::State(99)));
        let mut r = raw_event();
        r.kind = 9;
        assert_eq!(Event::decode(&bytes(&r)), Err(DecodeError::Kind(9)));
        let mut r = raw_event();
        r.family = 1;
        assert_eq!(Event::decode(&bytes(&r)), Err(DecodeError::Family(1)));
    }

    #[test]
    fn decodes_timewait_timer_records_by_their_size() {
        let mut r = raw::TwTimerEvent::ZERO;
        r.ts_ns = 7;
        r.twaddr = 0xffff_8880_0000_1000;
        r.kind = raw::kind::TW_CANCEL;
        r.substate = TcpState::FinWait2.kernel_number();
        r.expires = 4_295_000_000;
        r.jiffies = 4_294_999_000;
        r.family = AF_INET6;
        r.saddr = Ipv6Addr::LOCALHOST.octets();
        r.daddr = Ipv6Addr::LOCALHOST.octets();
        r.sport = 40000;
        r.dport = 80;
        r.netns = 4026531840;
        // SAFETY: plain data of a fixed size.
        let b = unsafe {
            std::slice::from_raw_parts(
                (&r as *const raw::TwTimerEvent).cast::<u8>(),
                std::mem::size_of::<raw::TwTimerEvent>(),
            )
        };
        let Ok(Decoded::Timer(t)) = Decoded::decode(b) else {
            panic!("not a timer record");
        };
        assert_eq!(t.op, TimerOp::Cancel);
        assert_eq!(t.substate, TwSubstate::FinWait2);
        assert_eq!(t.local, "[::1]:40000".parse().unwrap());
        assert_eq!(
            (t.expires, t.jiffies, t.netns),
            (r.expires, r.jiffies, r.netns)
        );
        let back: TwTimer = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
        assert_eq!(back, t);
        r.substate = TcpState::Established.kernel_number();
        let b = unsafe {
            // SAFETY: as above.
            std::slice::from_raw_parts(
                (&r as *const raw::TwTimerEvent).cast::<u8>(),
                std::mem::size_of::<raw::TwTimerEvent>(),
            )
        };
        assert_eq!(Decoded::decode(b), Err(DecodeError::State(1)));
        // A socket event is still one.
        assert!(matches!(
            Decoded::decode(&bytes(&raw_event())),
            Ok(Decoded::Sock(_))
        ));
    }

    #[test]
    fn event_round_trips_through_json() {
        let ev = Event::decode(&bytes(&raw_event())).unwrap();
        let s = serde_json::to_string(&ev).unwrap();
        assert!(s.contains("\"old\":\"ESTABLISHED\""), "{s}");
        let back: Event = serde_json::from_str(&s).unwrap();
        assert_eq!(back, ev);
    }
}
