//! The host's closing TCP sockets as they are now, read from the kernel's sock_diag netlink
//! interface (what `ss` uses).
//!
//! A [`Poller`] dumps the TCP sockets of the network namespace of the calling thread, IPv4 and
//! IPv6, and returns a [`Snapshot`]:
//!
//! - timewait sockets ([`TimewaitSocket`]): the lightweight sockets the kernel keeps after a
//!   close, in the sub-state TIME_WAIT or FIN_WAIT2 (an orphaned FIN_WAIT2 socket is replaced by a
//!   timewait socket at once), with the remaining time of their timer;
//! - full sockets in a closing state ([`FullSocket`]): CLOSE_WAIT, LAST_ACK, FIN_WAIT1,
//!   FIN_WAIT2, CLOSING, with their inode and uid (the inode leads to the owning process, see
//!   [`owners`]);
//! - optionally the 4-tuples of open connections, so that a timewait socket that vanished can be
//!   told "reused by a new connection" rather than "killed".
//!
//! The cost of a poll is one netlink dump per address family, proportional to the number of
//! sockets the kernel returns; the kernel filters by state, so established connections are only
//! read when [`PollOptions::include_open`] asks for them.

pub mod follow;
mod netlink;
pub mod netns;
pub mod owners;
pub mod sysctl;

use std::fmt;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

pub use netlink::{PollOptions, Poller};
pub use owners::{find_owners, Owner, OwnerScan, ScanLimits};

/// Errors of the sock_diag poller.
#[derive(Debug, thiserror::Error)]
pub enum DiagError {
    /// The netlink socket could not be opened, bound, or used.
    #[error("sock_diag netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    /// The kernel answered the dump with an error code.
    #[error("sock_diag dump refused by the kernel: errno {0}")]
    Kernel(i32),
    /// A message from the kernel could not be decoded.
    #[error("sock_diag: undecodable message: {0}")]
    Decode(String),
    /// The network namespace could not be entered.
    #[error("cannot enter network namespace {0}: {1}")]
    Netns(String, #[source] std::io::Error),
    /// The dump was interrupted by concurrent changes too many times in a row.
    #[error("sock_diag dump interrupted {0} times in a row; the socket table changes too fast")]
    Interrupted(u32),
}

/// TCP states as the kernel numbers them (`include/net/tcp_states.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TcpState {
    Established,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    NewSynRecv,
}

impl TcpState {
    /// The state for a kernel state number.
    pub fn from_kernel(n: u8) -> Option<Self> {
        Some(match n {
            1 => Self::Established,
            2 => Self::SynSent,
            3 => Self::SynRecv,
            4 => Self::FinWait1,
            5 => Self::FinWait2,
            6 => Self::TimeWait,
            7 => Self::Close,
            8 => Self::CloseWait,
            9 => Self::LastAck,
            10 => Self::Listen,
            11 => Self::Closing,
            12 => Self::NewSynRecv,
            _ => return None,
        })
    }

    /// The kernel's state number.
    pub fn kernel_number(self) -> u8 {
        match self {
            Self::Established => 1,
            Self::SynSent => 2,
            Self::SynRecv => 3,
            Self::FinWait1 => 4,
            Self::FinWait2 => 5,
            Self::TimeWait => 6,
            Self::Close => 7,
            Self::CloseWait => 8,
            Self::LastAck => 9,
            Self::Listen => 10,
            Self::Closing => 11,
            Self::NewSynRecv => 12,
        }
    }

    /// The name as `ss` and the RFC write it (`TIME-WAIT` is `TIME_WAIT` here).
    pub fn name(self) -> &'static str {
        match self {
            Self::Established => "ESTABLISHED",
            Self::SynSent => "SYN_SENT",
            Self::SynRecv => "SYN_RECV",
            Self::FinWait1 => "FIN_WAIT1",
            Self::FinWait2 => "FIN_WAIT2",
            Self::TimeWait => "TIME_WAIT",
            Self::Close => "CLOSE",
            Self::CloseWait => "CLOSE_WAIT",
            Self::LastAck => "LAST_ACK",
            Self::Listen => "LISTEN",
            Self::Closing => "CLOSING",
            Self::NewSynRecv => "NEW_SYN_RECV",
        }
    }

    /// The closing states a full (non-timewait) socket can be in.
    pub const CLOSING_FULL: [TcpState; 5] = [
        TcpState::FinWait1,
        TcpState::FinWait2,
        TcpState::Closing,
        TcpState::CloseWait,
        TcpState::LastAck,
    ];
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The sub-state of a timewait socket (`tw_substate`, reported by sock_diag as the state).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TwSubstate {
    /// The peer's FIN was received: the real TIME_WAIT (60 s, restarted by a resent FIN).
    TimeWait,
    /// An orphaned FIN_WAIT2 socket: our FIN was acknowledged, the peer's FIN has not come yet.
    /// The timer is `tcp_fin_timeout`; the peer's FIN turns it into TIME_WAIT.
    FinWait2,
}

impl TwSubstate {
    pub fn name(self) -> &'static str {
        match self {
            Self::TimeWait => "TIME_WAIT",
            Self::FinWait2 => "FIN_WAIT2",
        }
    }
}

impl fmt::Display for TwSubstate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A connection's addresses, as seen from this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct FourTuple {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

impl fmt::Display for FourTuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.local, self.remote)
    }
}

/// A timewait socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TimewaitSocket {
    pub tuple: FourTuple,
    pub substate: TwSubstate,
    /// Time left on its timer, in milliseconds (`idiag_expires`).
    pub remaining_ms: u64,
    /// The kernel's socket cookie: it stays the same while this timewait socket lives (a timer
    /// restart keeps it), and a new connection on the same 4-tuple gets another one.
    pub cookie: u64,
}

/// A full socket in a closing state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FullSocket {
    pub tuple: FourTuple,
    pub state: TcpState,
    /// Socket inode; 0 for an orphan (closed by the application, still finishing in the kernel).
    pub inode: u64,
    pub uid: u32,
    pub cookie: u64,
    /// Bytes not yet read by the application (CLOSE_WAIT) or not yet acknowledged.
    pub recv_queue: u32,
    pub send_queue: u32,
    /// Retransmissions of the segment the retransmit timer waits for, if that timer is armed.
    pub retransmits: Option<u8>,
    /// Time left on the socket's active timer, in milliseconds.
    pub timer_ms: Option<u64>,
    /// Milliseconds since the last ACK from the peer (`tcpi_last_ack_recv`; asked for CLOSE_WAIT
    /// sockets only). The peer's FIN carries an ACK and a closed peer sends nothing more unless
    /// we send, so for a CLOSE_WAIT socket this is a lower bound of its time in CLOSE_WAIT.
    pub last_ack_recv_ms: Option<u64>,
}

/// An open (not closing) connection, listed only to recognise reuse of a 4-tuple.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OpenSocket {
    pub tuple: FourTuple,
    pub state: TcpState,
    pub cookie: u64,
}

/// What sock_diag returned at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    /// When the dump was taken, in milliseconds since the Unix epoch.
    pub taken_at_ms: u64,
    pub timewait: Vec<TimewaitSocket>,
    pub closing: Vec<FullSocket>,
    /// Open connections (only when [`PollOptions::include_open`] was set).
    pub open: Vec<OpenSocket>,
}

impl Snapshot {
    /// Timewait sockets in the given sub-state.
    pub fn count_timewait(&self, substate: TwSubstate) -> usize {
        self.timewait
            .iter()
            .filter(|t| t.substate == substate)
            .count()
    }

    /// Full sockets in the given state.
    pub fn count_full(&self, state: TcpState) -> usize {
        self.closing.iter().filter(|s| s.state == state).count()
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// One poll with default options (closing sockets and open connections).
pub fn snapshot() -> Result<Snapshot, DiagError> {
    Poller::new(PollOptions::default())?.poll()
}
