//! The sock_diag dump over a NETLINK_SOCK_DIAG socket.
//!
//! A dump walks the kernel's whole TCP hash table: the table is the host's, shared by every
//! namespace unless `net.ipv4.tcp_child_ehash_entries` gives one a table of its own, so a walk
//! costs about the same in a namespace of ten sockets as in one of a million, and a host of many
//! namespaces pays it once per namespace. A poll therefore walks it once: one `TCPDIAG_GETSOCK`
//! request, the first version of the interface (`struct inet_diag_req`), which inet_diag still
//! serves and dumps for IPv4 and IPv6 together (it sets the family to AF_UNSPEC), answering with
//! the same `struct inet_diag_msg` as the current requests. A kernel that refuses it gets the
//! current requests (`SOCK_DIAG_BY_FAMILY`), two per family, for the rest of the process. Once
//! a dump has worked, a namespace that holds no TCP socket at all, as its `sockstat` counters
//! say, is not dumped.
//!
//! Per-family requests are built with `netlink-packet-sock-diag`; responses are framed with
//! `netlink-packet-core` and decoded with the crate's `InetResponse`, except for one field:
//! the crate drops `idiag_expires` of timewait sockets (its `Timer::TimeWait` has no duration), so
//! the remaining time is read from the fixed `struct inet_diag_msg` header directly.

use std::os::unix::fs::MetadataExt as _;
use std::sync::atomic::{AtomicU8, Ordering};

use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, Parseable, NLM_F_DUMP, NLM_F_DUMP_INTR,
    NLM_F_REQUEST,
};
use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, IPPROTO_TCP, SOCK_DIAG_BY_FAMILY},
    inet::{nlas::Nla, ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags, Timer},
    SockDiagMessage,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr as NlAddr};

use crate::kernel::files;

use super::{
    module, now_ms, DiagError, FourTuple, FullSocket, OpenSocket, Snapshot, TcpState,
    TimewaitSocket, TwSubstate,
};

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// `struct nlmsghdr`: length, type, flags, sequence number, port id.
const NLMSG_HDRLEN: usize = 16;
/// The request (and reply) type of the first sock_diag version, for TCP.
const TCPDIAG_GETSOCK: u16 = 18;
/// `struct inet_diag_req`: family, src_len, dst_len, ext (4 bytes), `inet_diag_sockid` (48
/// bytes), then the u32s `idiag_states` and `idiag_dbs`.
const INET_DIAG_REQ_LEN: usize = 60;
/// Where `idiag_states` sits in `struct inet_diag_req`.
const INET_DIAG_REQ_STATES_OFFSET: usize = 52;
/// `struct inet_diag_msg`: family, state, timer, retrans (4 bytes), `inet_diag_sockid` (48 bytes),
/// then `idiag_expires`.
const EXPIRES_OFFSET: usize = 52;
/// `idiag_timer` value for a timewait socket.
const TIMER_TIMEWAIT: u8 = 3;
/// `struct tcp_info`: 8 bytes of u8 fields, then u32 fields; `tcpi_last_ack_recv` is the 13th.
const TCPI_LAST_ACK_RECV_OFFSET: usize = 56;
/// How many times a dump interrupted by concurrent changes (NLM_F_DUMP_INTR) is redone.
const MAX_DUMP_RETRIES: u32 = 3;
/// Upper bound on messages read for one dump, so that a misbehaving kernel cannot keep us
/// reading forever (a dump of 10 million sockets stays far below it).
const MAX_RECV_CALLS: usize = 1_000_000;

const EINVAL: i32 = 22;
const ENOENT: i32 = 2;
const EOPNOTSUPP: i32 = 95;

/// The TCP counters of the calling thread's network namespace: `TCP: inuse N orphan N tw N ...`
/// (inuse and tw are the namespace's; orphan and alloc are the host's).
const SOCKSTAT: &str = "/proc/thread-self/net/sockstat";
/// `TCP6: inuse N`, the namespace's IPv6 TCP sockets (absent from a kernel without IPv6).
const SOCKSTAT6: &str = "/proc/thread-self/net/sockstat6";
/// The calling thread's network namespace.
const THREAD_NETNS: &str = "/proc/thread-self/ns/net";

/// What a poll asks the kernel for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollOptions {
    /// Also list open connections (ESTABLISHED, SYN_SENT, SYN_RECV), so that a timewait socket
    /// that vanished early can be recognised as reused by a new connection. Costs one entry per
    /// open connection on the host.
    pub include_open: bool,
    /// Ask for IPv6 sockets as well as IPv4.
    pub ipv6: bool,
}

impl Default for PollOptions {
    fn default() -> Self {
        Self {
            include_open: true,
            ipv6: true,
        }
    }
}

/// How this process's polls walk the socket table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Walk {
    /// One `TCPDIAG_GETSOCK` dump for both families and every state.
    Single,
    /// Two `SOCK_DIAG_BY_FAMILY` dumps per family, the kernel having refused the single one.
    PerFamily,
}

const WALK_UNKNOWN: u8 = 0;
const WALK_SINGLE: u8 = 1;
const WALK_PER_FAMILY: u8 = 2;

/// The walk the kernel answered, set by the first dump that worked (the answer is the
/// kernel's, the same in every namespace).
static WALK: AtomicU8 = AtomicU8::new(WALK_UNKNOWN);

/// The walk this process's polls use, once a dump has worked (None before).
pub fn walk_in_use() -> Option<Walk> {
    match WALK.load(Ordering::Relaxed) {
        WALK_SINGLE => Some(Walk::Single),
        WALK_PER_FAMILY => Some(Walk::PerFamily),
        _ => None,
    }
}

/// A sock_diag netlink socket, bound in the network namespace of the thread that created it.
pub struct Poller {
    socket: Socket,
    options: PollOptions,
    buf: Vec<u8>,
    seq: u32,
    /// The namespace the socket was bound in, as (device, inode) of its nsfs file: sockstat is
    /// read only on a thread of that namespace.
    netns: Option<(u64, u64)>,
}

impl std::fmt::Debug for Poller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Poller")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Poller {
    /// Opens the netlink socket. The namespace is fixed here: create the poller on a thread that
    /// is in the namespace to observe.
    pub fn new(options: PollOptions) -> Result<Self, DiagError> {
        let mut socket = Socket::new(NETLINK_SOCK_DIAG).map_err(DiagError::Socket)?;
        socket.bind_auto().map_err(DiagError::Socket)?;
        socket
            .connect(&NlAddr::new(0, 0))
            .map_err(DiagError::Socket)?;
        Ok(Self {
            socket,
            options,
            buf: vec![0; 64 * 1024],
            seq: 0,
            netns: thread_netns(),
        })
    }

    /// The options this poller was created with.
    pub fn options(&self) -> PollOptions {
        self.options
    }

    /// Dumps the closing sockets (and open ones, if asked) of IPv4 and IPv6.
    pub fn poll(&mut self) -> Result<Snapshot, DiagError> {
        let taken_at_ms = now_ms();
        // Not before a dump has worked in this process: the first one is what loads tcp_diag
        // where the kernel does not, or says why it cannot, as in a namespace with sockets.
        if walk_in_use().is_some() && self.holds_no_tcp_socket() {
            return Ok(Snapshot {
                taken_at_ms,
                ..Snapshot::default()
            });
        }
        if WALK.load(Ordering::Relaxed) != WALK_PER_FAMILY {
            if let Some(snap) = self.poll_single_walk(taken_at_ms)? {
                WALK.store(WALK_SINGLE, Ordering::Relaxed);
                return Ok(snap);
            }
            let snap = self.poll_per_family_at(taken_at_ms)?;
            // Remembered once the other walk answered: a refusal that the per-family dumps
            // share (no tcp_diag) is reported by them, and says nothing of the single walk.
            if WALK.swap(WALK_PER_FAMILY, Ordering::Relaxed) != WALK_PER_FAMILY {
                log::info!(
                    "sock_diag: the kernel refuses the single TCPDIAG_GETSOCK dump; polls dump \
                     each address family instead"
                );
            }
            return Ok(snap);
        }
        self.poll_per_family_at(taken_at_ms)
    }

    /// One poll through the per-family dumps, whatever the kernel accepts, with no sockstat
    /// shortcut: for tests that compare both walks.
    #[doc(hidden)]
    pub fn poll_per_family(&mut self) -> Result<Snapshot, DiagError> {
        self.poll_per_family_at(now_ms())
    }

    /// True when sockstat says the namespace holds no TCP socket: no hashed full IPv4 or IPv6
    /// socket (`inuse` counts listeners and every socket of the connection table, orphans
    /// included; a SYN_RECV request socket hangs under a listener), and no timewait socket of
    /// either family (`tw`). Only on a thread of the poller's namespace, whose figures
    /// `/proc/thread-self` shows; anything unreadable means "dump".
    fn holds_no_tcp_socket(&self) -> bool {
        if self.netns.is_none() || thread_netns() != self.netns {
            return false;
        }
        let Ok(v4) = files::read_to_string(SOCKSTAT, files::SMALL) else {
            return false;
        };
        let v6 = if self.options.ipv6 {
            match files::read_to_string(SOCKSTAT6, files::SMALL) {
                Ok(text) => Some(text),
                // A kernel without IPv6 has no IPv6 socket.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(_) => return false,
            }
        } else {
            None
        };
        no_tcp_socket(&v4, v6.as_deref())
    }

    /// The single walk: Some(snapshot), or None when the kernel refuses the request (after
    /// loading tcp_diag, should that be why).
    fn poll_single_walk(&mut self, taken_at_ms: u64) -> Result<Option<Snapshot>, DiagError> {
        let mut attempt = 0;
        let mut loaded = false;
        loop {
            let mut snap = Snapshot {
                taken_at_ms,
                ..Snapshot::default()
            };
            self.seq = self.seq.wrapping_add(1);
            let req = compat_request(
                self.seq,
                all_states(self.options.include_open),
                ExtensionFlags::INFO,
            );
            match self.dump(&req, TCPDIAG_GETSOCK, self.options.ipv6, &mut snap) {
                Err(DiagError::Kernel(errno)) if [EINVAL, ENOENT, EOPNOTSUPP].contains(&errno) => {
                    if ask_again_after(errno, loaded, &module::TCP_DIAG_LOADER) {
                        loaded = true;
                        continue;
                    }
                    return Ok(None);
                }
                Err(e) => return Err(e),
                Ok(DumpEnd::Complete) => {
                    per_family_order(&mut snap);
                    return Ok(Some(snap));
                }
                Ok(DumpEnd::Interrupted) => {
                    attempt += 1;
                    if attempt > MAX_DUMP_RETRIES {
                        return Err(DiagError::Interrupted(attempt));
                    }
                }
            }
        }
    }

    fn poll_per_family_at(&mut self, taken_at_ms: u64) -> Result<Snapshot, DiagError> {
        let mut snap = Snapshot {
            taken_at_ms,
            ..Snapshot::default()
        };
        let mut families = vec![AF_INET];
        if self.options.ipv6 {
            families.push(AF_INET6);
        }
        for family in families {
            let mut attempt = 0;
            let mut refused = false;
            loop {
                let mut part = Snapshot::default();
                let end = match self.dump_family(family, &mut part) {
                    // Without its tcp_diag module the kernel answers ENOENT: load it (once per
                    // process) and dump once more.
                    Err(DiagError::Kernel(errno)) => {
                        module::after_refusal(errno, refused, &module::TCP_DIAG_LOADER)?;
                        refused = true;
                        continue;
                    }
                    end => end?,
                };
                match end {
                    DumpEnd::Complete => {
                        snap.timewait.append(&mut part.timewait);
                        snap.closing.append(&mut part.closing);
                        snap.open.append(&mut part.open);
                        break;
                    }
                    DumpEnd::Interrupted => {
                        attempt += 1;
                        if attempt > MAX_DUMP_RETRIES {
                            return Err(DiagError::Interrupted(attempt));
                        }
                    }
                }
            }
        }
        Ok(snap)
    }

    /// The two dumps of one family: CLOSE_WAIT with TCP_INFO (its last_ack_recv dates the
    /// peer's FIN); the other states without, to keep the dump small.
    fn dump_family(&mut self, family: u8, part: &mut Snapshot) -> Result<DumpEnd, DiagError> {
        let req = self.family_request(family, StateFlags::CLOSE_WAIT, ExtensionFlags::INFO);
        match self.dump(&req, SOCK_DIAG_BY_FAMILY, true, part)? {
            DumpEnd::Complete => {
                let req = self.family_request(
                    family,
                    other_states(self.options.include_open),
                    ExtensionFlags::empty(),
                );
                self.dump(&req, SOCK_DIAG_BY_FAMILY, true, part)
            }
            DumpEnd::Interrupted => Ok(DumpEnd::Interrupted),
        }
    }

    /// A `SOCK_DIAG_BY_FAMILY` dump request, with the next sequence number.
    fn family_request(
        &mut self,
        family: u8,
        states: StateFlags,
        extensions: ExtensionFlags,
    ) -> Vec<u8> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        header.sequence_number = self.seq;
        let mut msg = NetlinkMessage::new(
            header,
            SockDiagMessage::InetRequest(InetRequest {
                family,
                protocol: IPPROTO_TCP,
                extensions,
                states,
                socket_id: if family == AF_INET6 {
                    SocketId::new_v6()
                } else {
                    SocketId::new_v4()
                },
            })
            .into(),
        );
        msg.finalize();
        let mut req = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut req);
        req
    }

    /// Sends `req` (numbered `self.seq`) and reads its dump into `out`; replies are of
    /// `reply_type`, and IPv6 sockets are dropped unless `ipv6`.
    fn dump(
        &mut self,
        req: &[u8],
        reply_type: u16,
        ipv6: bool,
        out: &mut Snapshot,
    ) -> Result<DumpEnd, DiagError> {
        self.socket.send(req, 0).map_err(DiagError::Socket)?;

        let mut interrupted = false;
        for _ in 0..MAX_RECV_CALLS {
            let n = self
                .socket
                .recv(&mut &mut self.buf[..], 0)
                .map_err(DiagError::Socket)?;
            let mut offset = 0;
            while offset < n {
                let bytes = &self.buf[offset..n];
                let nl = NetlinkBuffer::new_checked(bytes)
                    .map_err(|e| DiagError::Decode(e.to_string()))?;
                let len = nl.length() as usize;
                if nl.sequence_number() != self.seq {
                    // A late answer to an earlier request: skip it.
                    offset += align4(len.max(16));
                    continue;
                }
                if nl.flags() & NLM_F_DUMP_INTR != 0 {
                    interrupted = true;
                }
                match nl.message_type() {
                    NLMSG_DONE => {
                        if let Some(errno) = dump_done_errno(nl.payload()) {
                            return Err(DiagError::Kernel(errno));
                        }
                        return Ok(if interrupted {
                            DumpEnd::Interrupted
                        } else {
                            DumpEnd::Complete
                        });
                    }
                    NLMSG_ERROR => {
                        let code = read_i32(nl.payload(), 0).unwrap_or(0);
                        if code != 0 {
                            return Err(DiagError::Kernel(-code));
                        }
                    }
                    t if t == reply_type => {
                        let payload = nl.payload();
                        if ipv6 || payload.first() != Some(&AF_INET6) {
                            decode(payload, out)?;
                        }
                    }
                    _ => {}
                }
                if len == 0 {
                    break;
                }
                offset += align4(len);
            }
        }
        Err(DiagError::Decode(format!(
            "no end of dump after {MAX_RECV_CALLS} reads"
        )))
    }
}

enum DumpEnd {
    Complete,
    Interrupted,
}

/// After the kernel refused the single walk with `errno`: true to ask once more, tcp_diag
/// having been loaded (once per process, by `loader`), false to fall back to the per-family
/// dumps. inet_diag without tcp_diag answers ENOENT, and a kernel that cannot load inet_diag
/// itself EOPNOTSUPP (tcp_diag brings it along); a kernel without the request says EINVAL.
/// `loaded`: the refusal answers the second request.
fn ask_again_after(errno: i32, loaded: bool, loader: &module::Loader) -> bool {
    (errno == ENOENT || errno == EOPNOTSUPP) && !loaded && loader.load().is_ok()
}

/// The states of the second per-family dump: every wanted one but CLOSE_WAIT.
fn other_states(include_open: bool) -> StateFlags {
    let mut states = StateFlags::FIN_WAIT1
        | StateFlags::FIN_WAIT2
        | StateFlags::TIME_WAIT
        | StateFlags::LAST_ACK
        | StateFlags::CLOSING;
    if include_open {
        states |= StateFlags::ESTABLISHED | StateFlags::SYN_SENT | StateFlags::SYN_RECV;
    }
    states
}

/// The states of the single walk: those of both per-family dumps.
fn all_states(include_open: bool) -> StateFlags {
    other_states(include_open) | StateFlags::CLOSE_WAIT
}

/// A `TCPDIAG_GETSOCK` dump request numbered `seq`: `struct nlmsghdr` then `struct
/// inet_diag_req`, in the host's byte order. No socket id: it would filter by port, and dumps
/// ignore its addresses and cookie. The family is ignored too (the dump covers both); it is set
/// to AF_INET as `ss` does.
fn compat_request(
    seq: u32,
    states: StateFlags,
    extensions: ExtensionFlags,
) -> [u8; NLMSG_HDRLEN + INET_DIAG_REQ_LEN] {
    const LEN: usize = NLMSG_HDRLEN + INET_DIAG_REQ_LEN;
    let mut b = [0u8; LEN];
    b[0..4].copy_from_slice(&(LEN as u32).to_ne_bytes());
    b[4..6].copy_from_slice(&TCPDIAG_GETSOCK.to_ne_bytes());
    b[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    b[8..12].copy_from_slice(&seq.to_ne_bytes());
    // Port id 0: the kernel.
    let r = &mut b[NLMSG_HDRLEN..];
    r[0] = AF_INET;
    r[3] = extensions.bits();
    r[INET_DIAG_REQ_STATES_OFFSET..INET_DIAG_REQ_STATES_OFFSET + 4]
        .copy_from_slice(&states.bits().to_ne_bytes());
    // idiag_dbs, the last u32, stays 0: the kernel never read it.
    b
}

/// Puts a single walk's sockets in the order the per-family dumps list them: IPv4 before IPv6,
/// and within a family CLOSE_WAIT (dumped on its own) before the other states. Both walk the
/// same hash table in the same order, so a stable sort gives the same lists.
fn per_family_order(snap: &mut Snapshot) {
    snap.timewait.sort_by_key(|t| t.tuple.local.is_ipv6());
    snap.closing
        .sort_by_key(|s| (s.tuple.local.is_ipv6(), s.state != TcpState::CloseWait));
    snap.open.sort_by_key(|s| s.tuple.local.is_ipv6());
}

/// The calling thread's network namespace: (device, inode) of its nsfs file.
fn thread_netns() -> Option<(u64, u64)> {
    let m = std::fs::metadata(THREAD_NETNS).ok()?;
    Some((m.dev(), m.ino()))
}

/// Whether sockstat's texts say the namespace holds no TCP socket: `TCP: inuse 0` and `tw 0`
/// in `sockstat`, and `TCP6: inuse 0` in `sockstat6` when there is one to read (None: no IPv6
/// in this kernel, or none asked for). A figure that cannot be read counts as not zero.
fn no_tcp_socket(sockstat: &str, sockstat6: Option<&str>) -> bool {
    let zero = |text: &str, proto: &str, key: &str| sockstat_field(text, proto, key) == Some(0);
    zero(sockstat, "TCP", "inuse")
        && zero(sockstat, "TCP", "tw")
        && sockstat6.is_none_or(|text| zero(text, "TCP6", "inuse"))
}

/// The value of `key` on the `PROTO:` line of a sockstat text (`TCP: inuse 3 orphan 0 tw 2 ...`).
fn sockstat_field(text: &str, proto: &str, key: &str) -> Option<u64> {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(proto)?.strip_prefix(':'))?;
    let mut words = line.split_whitespace();
    while let (Some(name), Some(value)) = (words.next(), words.next()) {
        if name == key {
            return value.parse().ok();
        }
    }
    None
}

/// The error a dump ended with, from its NLMSG_DONE: a dump that fails once started (inet_diag
/// loaded, tcp_diag missing: ENOENT) says so there, as a negative errno, not in an NLMSG_ERROR.
/// A dump that completed carries 0.
fn dump_done_errno(payload: &[u8]) -> Option<i32> {
    read_i32(payload, 0)
        .filter(|&code| code < 0)
        .map(|code| -code)
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn read_i32(b: &[u8], at: usize) -> Option<i32> {
    let s = b.get(at..at + 4)?;
    Some(i32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

/// Decodes one `inet_diag_msg` into the snapshot.
pub(crate) fn decode(payload: &[u8], out: &mut Snapshot) -> Result<(), DiagError> {
    let response = InetResponse::parse(payload).map_err(|e| DiagError::Decode(e.to_string()))?;
    let header = &response.header;
    let raw_timer = payload.get(2).copied().unwrap_or(0);
    let expires = u64::from(read_u32(payload, EXPIRES_OFFSET).unwrap_or(0));
    let id = &header.socket_id;
    let tuple = FourTuple {
        local: std::net::SocketAddr::new(id.source_address, id.source_port),
        remote: std::net::SocketAddr::new(id.destination_address, id.destination_port),
    };
    let cookie = u64::from_ne_bytes(id.cookie);
    // A bound socket that never connected or listened is no connection: not asked for, and
    // dropped should a kernel send one.
    let Some(state) = TcpState::from_kernel(header.state).filter(|&s| s != TcpState::BoundInactive)
    else {
        return Ok(());
    };
    if raw_timer == TIMER_TIMEWAIT || state == TcpState::TimeWait {
        let substate = match state {
            TcpState::FinWait2 => TwSubstate::FinWait2,
            _ => TwSubstate::TimeWait,
        };
        out.timewait.push(TimewaitSocket {
            tuple,
            substate,
            remaining_ms: expires,
            cookie,
        });
        return Ok(());
    }
    if TcpState::CLOSING_FULL.contains(&state) {
        let (retransmits, timer_ms) = match header.timer {
            Some(Timer::Retransmit(d, r)) => (Some(r), Some(duration_ms(d))),
            Some(Timer::KeepAlive(d)) | Some(Timer::Probe(d)) => (None, Some(duration_ms(d))),
            _ => (None, None),
        };
        // The single walk asks every full socket for its TCP_INFO; the figure is a CLOSE_WAIT
        // one (see FullSocket), and the other states go without it, as in their own dump.
        let last_ack_recv_ms = if state == TcpState::CloseWait {
            response.nlas.iter().find_map(|n| match n {
                Nla::TcpInfo(info) => read_u32(info, TCPI_LAST_ACK_RECV_OFFSET).map(u64::from),
                _ => None,
            })
        } else {
            None
        };
        out.closing.push(FullSocket {
            tuple,
            state,
            inode: u64::from(header.inode),
            uid: header.uid,
            cookie,
            recv_queue: header.recv_queue,
            send_queue: header.send_queue,
            retransmits,
            timer_ms,
            last_ack_recv_ms,
        });
    } else {
        out.open.push(OpenSocket {
            tuple,
            state,
            cookie,
        });
    }
    Ok(())
}

fn duration_ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn msg(state: u8, timer: u8, expires: u32, inode: u32) -> Vec<u8> {
        let mut b = vec![0u8; 72];
        b[0] = AF_INET;
        b[1] = state;
        b[2] = timer;
        b[4..6].copy_from_slice(&40000u16.to_be_bytes());
        b[6..8].copy_from_slice(&5000u16.to_be_bytes());
        b[8..12].copy_from_slice(&[127, 0, 0, 1]);
        b[24..28].copy_from_slice(&[127, 0, 0, 2]);
        b[44..52].copy_from_slice(&7u64.to_ne_bytes());
        b[52..56].copy_from_slice(&expires.to_ne_bytes());
        b[64..68].copy_from_slice(&1000u32.to_ne_bytes());
        b[68..72].copy_from_slice(&inode.to_ne_bytes());
        b
    }

    fn with_tcp_info(mut b: Vec<u8>, last_ack_recv: u32) -> Vec<u8> {
        let mut info = vec![0u8; 104];
        info[56..60].copy_from_slice(&last_ack_recv.to_ne_bytes());
        let len = 4 + info.len();
        b.extend_from_slice(&(len as u16).to_ne_bytes());
        b.extend_from_slice(&2u16.to_ne_bytes()); // INET_DIAG_INFO
        b.extend_from_slice(&info);
        b
    }

    #[test]
    fn reads_last_ack_recv_from_tcp_info() {
        let b = with_tcp_info(msg(8, 0, 0, 4242), 12_345);
        let mut s = Snapshot::default();
        decode(&b, &mut s).unwrap();
        assert_eq!(s.closing[0].last_ack_recv_ms, Some(12_345));
    }

    #[test]
    fn last_ack_recv_is_a_close_wait_figure_only() {
        // LAST_ACK (9) and FIN_WAIT1 (4) with TCP_INFO, as the single walk returns them.
        let mut s = Snapshot::default();
        decode(&with_tcp_info(msg(9, 1, 200, 1), 10), &mut s).unwrap();
        decode(&with_tcp_info(msg(4, 1, 200, 2), 10), &mut s).unwrap();
        assert_eq!(s.closing.len(), 2);
        assert!(s.closing.iter().all(|c| c.last_ack_recv_ms.is_none()));
    }

    #[test]
    fn decodes_timewait_with_remaining_time_and_substate() {
        let mut s = Snapshot::default();
        decode(&msg(6, 3, 59_123, 0), &mut s).unwrap();
        decode(&msg(5, 3, 42_000, 0), &mut s).unwrap();
        assert_eq!(s.timewait.len(), 2);
        assert_eq!(s.timewait[0].substate, TwSubstate::TimeWait);
        assert_eq!(s.timewait[0].remaining_ms, 59_123);
        assert_eq!(s.timewait[0].cookie, 7);
        assert_eq!(s.timewait[1].substate, TwSubstate::FinWait2);
        assert_eq!(s.timewait[0].tuple.local.to_string(), "127.0.0.1:40000");
        assert_eq!(s.timewait[0].tuple.remote.to_string(), "127.0.0.2:5000");
    }

    #[test]
    fn decodes_full_closing_and_open_sockets() {
        let mut s = Snapshot::default();
        decode(&msg(8, 0, 0, 4242), &mut s).unwrap();
        decode(&msg(5, 0, 0, 4243), &mut s).unwrap();
        decode(&msg(1, 2, 1000, 4244), &mut s).unwrap();
        assert_eq!(s.closing.len(), 2);
        assert_eq!(s.closing[0].state, TcpState::CloseWait);
        assert_eq!(s.closing[0].inode, 4242);
        assert_eq!(s.closing[0].uid, 1000);
        assert_eq!(s.closing[1].state, TcpState::FinWait2);
        assert_eq!(s.open.len(), 1);
        assert_eq!(s.open[0].state, TcpState::Established);
    }

    #[test]
    fn a_dump_that_ended_in_error_says_its_errno() {
        assert_eq!(dump_done_errno(&(-2i32).to_ne_bytes()), Some(2));
        assert_eq!(dump_done_errno(&0i32.to_ne_bytes()), None);
        assert_eq!(dump_done_errno(&[]), None);
    }

    #[test]
    fn short_message_is_a_decode_error() {
        let mut s = Snapshot::default();
        assert!(decode(&[0u8; 10], &mut s).is_err());
    }

    #[test]
    fn compat_request_is_a_nlmsghdr_and_an_inet_diag_req() {
        let states = StateFlags::CLOSE_WAIT | StateFlags::TIME_WAIT | StateFlags::FIN_WAIT1;
        let b = compat_request(0x0102_0304, states, ExtensionFlags::INFO);
        let ne32 = |v: u32| v.to_ne_bytes();
        let ne16 = |v: u16| v.to_ne_bytes();
        let mut want = Vec::new();
        // struct nlmsghdr
        want.extend_from_slice(&ne32(76)); // nlmsg_len: 16 + sizeof(struct inet_diag_req)
        want.extend_from_slice(&ne16(18)); // nlmsg_type: TCPDIAG_GETSOCK
        want.extend_from_slice(&ne16(0x301)); // NLM_F_REQUEST | NLM_F_DUMP
        want.extend_from_slice(&ne32(0x0102_0304)); // nlmsg_seq
        want.extend_from_slice(&ne32(0)); // nlmsg_pid
                                          // struct inet_diag_req
        want.extend_from_slice(&[2, 0, 0, 2]); // AF_INET, src_len, dst_len, 1 << (INET_DIAG_INFO - 1)
        want.extend_from_slice(&[0; 48]); // struct inet_diag_sockid: nothing to match
        want.extend_from_slice(&ne32((1 << 8) | (1 << 6) | (1 << 4))); // idiag_states
        want.extend_from_slice(&ne32(0)); // idiag_dbs
        assert_eq!(b.len(), 76);
        assert_eq!(b.to_vec(), want);
    }

    #[test]
    fn a_refused_single_walk_loads_tcp_diag_once_or_falls_back() {
        use std::sync::atomic::AtomicUsize;
        static RUNS: AtomicUsize = AtomicUsize::new(0);
        static LOADS: module::Loader = module::Loader::new(module::TCP_DIAG, |_| {
            RUNS.fetch_add(1, Ordering::SeqCst);
            Ok(())
        });
        static FAILS: module::Loader =
            module::Loader::new(module::TCP_DIAG, |_| Err("not found".into()));
        static NEVER: module::Loader =
            module::Loader::new(module::TCP_DIAG, |_| panic!("modprobe run for EINVAL"));
        // No such request: fall back, no modprobe.
        assert!(!ask_again_after(EINVAL, false, &NEVER));
        // tcp_diag (or inet_diag) missing: loaded, then asked once more; refused again, fall back.
        assert!(ask_again_after(ENOENT, false, &LOADS));
        assert!(!ask_again_after(ENOENT, true, &LOADS));
        assert!(ask_again_after(EOPNOTSUPP, false, &LOADS));
        assert_eq!(RUNS.load(Ordering::SeqCst), 1, "modprobe once per process");
        // Not loadable: fall back; the per-family dumps say why, as before.
        assert!(!ask_again_after(ENOENT, false, &FAILS));
        assert!(!ask_again_after(EOPNOTSUPP, false, &FAILS));
    }

    #[test]
    fn single_walk_asks_every_state_of_both_dumps() {
        let closing = (1u32 << 4) | (1 << 5) | (1 << 6) | (1 << 8) | (1 << 9) | (1 << 11);
        assert_eq!(all_states(false).bits(), closing);
        let open = (1u32 << 1) | (1 << 2) | (1 << 3);
        assert_eq!(all_states(true).bits(), closing | open);
        assert_eq!(
            all_states(true),
            other_states(true) | StateFlags::CLOSE_WAIT
        );
    }

    #[test]
    fn single_walk_lists_sockets_in_the_per_family_order() {
        let v4 = "127.0.0.1:1".parse().unwrap();
        let v6 = "[::1]:1".parse().unwrap();
        let full = |local, state| FullSocket {
            tuple: FourTuple {
                local,
                remote: local,
            },
            state,
            inode: 0,
            uid: 0,
            cookie: 0,
            recv_queue: 0,
            send_queue: 0,
            retransmits: None,
            timer_ms: None,
            last_ack_recv_ms: None,
        };
        let mut s = Snapshot {
            closing: vec![
                full(v6, TcpState::LastAck),
                full(v4, TcpState::FinWait1),
                full(v6, TcpState::CloseWait),
                full(v4, TcpState::CloseWait),
                full(v4, TcpState::LastAck),
            ],
            ..Snapshot::default()
        };
        per_family_order(&mut s);
        let got: Vec<_> = s
            .closing
            .iter()
            .map(|c| (c.tuple.local.is_ipv6(), c.state))
            .collect();
        assert_eq!(
            got,
            vec![
                (false, TcpState::CloseWait),
                (false, TcpState::FinWait1),
                (false, TcpState::LastAck),
                (true, TcpState::CloseWait),
                (true, TcpState::LastAck),
            ]
        );
    }

    const SOCKSTAT_TEXT: &str = "sockets: used 11\n\
        TCP: inuse 0 orphan 3 tw 0 alloc 9 mem 1\n\
        UDP: inuse 2 mem 0\n\
        UDPLITE: inuse 0\n\
        RAW: inuse 0\n\
        FRAG: inuse 0 memory 0\n";
    const SOCKSTAT6_TEXT: &str = "TCP6: inuse 0\nUDP6: inuse 1\nUDPLITE6: inuse 0\n\
        RAW6: inuse 0\nFRAG6: inuse 0 memory 0\n";

    #[test]
    fn sockstat_fields_are_read_by_name() {
        let t = "sockets: used 1\nTCP: inuse 3 orphan 1 tw 250 alloc 7 mem 2 pressure 0\n";
        assert_eq!(sockstat_field(t, "TCP", "inuse"), Some(3));
        assert_eq!(sockstat_field(t, "TCP", "tw"), Some(250));
        assert_eq!(sockstat_field(t, "TCP", "pressure"), Some(0));
        assert_eq!(sockstat_field(t, "TCP", "nothing"), None);
        assert_eq!(sockstat_field(t, "UDP", "inuse"), None);
        // "TCP6:" is not the TCP line, nor "TCP:" the TCP6 one.
        assert_eq!(sockstat_field("TCP6: inuse 4\n", "TCP", "inuse"), None);
        assert_eq!(sockstat_field(t, "TCP6", "inuse"), None);
        assert_eq!(sockstat_field("TCP6: inuse 4\n", "TCP6", "inuse"), Some(4));
    }

    #[test]
    fn a_namespace_is_empty_only_when_every_tcp_figure_is_zero() {
        // Host-wide orphans and allocations do not count.
        assert!(no_tcp_socket(SOCKSTAT_TEXT, Some(SOCKSTAT6_TEXT)));
        assert!(no_tcp_socket(SOCKSTAT_TEXT, None));
        let tw = SOCKSTAT_TEXT.replace("tw 0", "tw 1");
        assert!(!no_tcp_socket(&tw, Some(SOCKSTAT6_TEXT)));
        let inuse = SOCKSTAT_TEXT.replace("TCP: inuse 0", "TCP: inuse 1");
        assert!(!no_tcp_socket(&inuse, Some(SOCKSTAT6_TEXT)));
        let inuse6 = SOCKSTAT6_TEXT.replace("TCP6: inuse 0", "TCP6: inuse 2");
        assert!(!no_tcp_socket(SOCKSTAT_TEXT, Some(&inuse6)));
        // Unreadable figures mean "dump".
        assert!(!no_tcp_socket("", Some(SOCKSTAT6_TEXT)));
        assert!(!no_tcp_socket(SOCKSTAT_TEXT, Some("")));
        assert!(!no_tcp_socket("TCP: inuse x orphan 0 tw 0\n", None));
    }
}
