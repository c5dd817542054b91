//! The sock_diag dump over a NETLINK_SOCK_DIAG socket.
//!
//! Requests are built with `netlink-packet-sock-diag`; responses are framed with
//! `netlink-packet-core` and decoded with the crate's `InetResponseHeader`, except for one field:
//! the crate drops `idiag_expires` of timewait sockets (its `Timer::TimeWait` has no duration), so
//! the remaining time is read from the fixed `struct inet_diag_msg` header directly.

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

use super::{
    module, now_ms, DiagError, FourTuple, FullSocket, OpenSocket, Snapshot, TcpState,
    TimewaitSocket, TwSubstate,
};

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
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

/// A sock_diag netlink socket, bound in the network namespace of the thread that created it.
pub struct Poller {
    socket: Socket,
    options: PollOptions,
    buf: Vec<u8>,
    seq: u32,
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
        })
    }

    /// The options this poller was created with.
    pub fn options(&self) -> PollOptions {
        self.options
    }

    /// Dumps the closing sockets (and open ones, if asked) of IPv4 and IPv6.
    pub fn poll(&mut self) -> Result<Snapshot, DiagError> {
        let mut snap = Snapshot {
            taken_at_ms: now_ms(),
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
        match self.dump(family, StateFlags::CLOSE_WAIT, ExtensionFlags::INFO, part)? {
            DumpEnd::Complete => self.dump(family, self.states(), ExtensionFlags::empty(), part),
            DumpEnd::Interrupted => Ok(DumpEnd::Interrupted),
        }
    }

    fn states(&self) -> StateFlags {
        let mut states = StateFlags::FIN_WAIT1
            | StateFlags::FIN_WAIT2
            | StateFlags::TIME_WAIT
            | StateFlags::LAST_ACK
            | StateFlags::CLOSING;
        if self.options.include_open {
            states |= StateFlags::ESTABLISHED | StateFlags::SYN_SENT | StateFlags::SYN_RECV;
        }
        states
    }

    fn dump(
        &mut self,
        family: u8,
        states: StateFlags,
        extensions: ExtensionFlags,
        out: &mut Snapshot,
    ) -> Result<DumpEnd, DiagError> {
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
        self.socket.send(&req, 0).map_err(DiagError::Socket)?;

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
                    SOCK_DIAG_BY_FAMILY => decode(nl.payload(), out)?,
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
            last_ack_recv_ms: response.nlas.iter().find_map(|n| match n {
                Nla::TcpInfo(info) => read_u32(info, TCPI_LAST_ACK_RECV_OFFSET).map(u64::from),
                _ => None,
            }),
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

    #[test]
    fn reads_last_ack_recv_from_tcp_info() {
        let mut b = msg(8, 0, 0, 4242);
        let mut info = vec![0u8; 104];
        info[56..60].copy_from_slice(&12_345u32.to_ne_bytes());
        let len = 4 + info.len();
        b.extend_from_slice(&(len as u16).to_ne_bytes());
        b.extend_from_slice(&2u16.to_ne_bytes()); // INET_DIAG_INFO
        b.extend_from_slice(&info);
        let mut s = Snapshot::default();
        decode(&b, &mut s).unwrap();
        assert_eq!(s.closing[0].last_ack_recv_ms, Some(12_345));
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
}
