//! Stage 2, sock_diag: the second source, read by the monitor and by the trace's timewait
//! follow-up.
//!
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
//! A kernel whose `tcp_diag` is a module that is not loaded refuses the dumps: the poller then
//! loads it, once per process ([`module`]), or its error says how.
//!
//! Who owns a namespace is read beside the dumps ([`containers`]): the container behind a
//! process inside it, from the process's cgroup, named from the container engines' metadata.
//!
//! A poll is one netlink dump for both address families, which walks the kernel's TCP hash
//! table (the host's, unless the namespace was given one of its own; its size sets the floor of
//! the cost) and returns only the sockets of the wanted states, so established connections are
//! only read when [`PollOptions::include_open`] asks for them; a kernel that refuses that
//! request gets two dumps per family ([`walk_in_use`]). A namespace without any TCP socket is
//! not dumped.

pub mod containers;
pub mod follow;
pub mod module;
pub mod namespaces;
mod netlink;
pub mod netns;
pub mod owners;
pub mod sysctl;
pub mod watch;

use std::fmt;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

pub use netlink::{walk_in_use, PollOptions, Poller, Walk};
pub use owners::{find_owners, Owner, OwnerScan, ScanLimits};

/// Errors of the sock_diag poller.
#[derive(Debug, thiserror::Error)]
pub enum DiagError {
    /// The netlink socket could not be opened, bound, or used.
    #[error("sock_diag netlink socket: {0}")]
    Socket(std::io::Error),
    /// The kernel answered the dump with an error code.
    #[error("sock_diag dump refused by the kernel: errno {0}")]
    Kernel(i32),
    /// TCP dumps are refused (ENOENT) for want of the tcp_diag module, which could not be
    /// loaded: why not.
    #[error(
        "sock_diag cannot list TCP sockets: the kernel refuses the dump with errno 2 (ENOENT), \
         as it does without its {m} module, and `modprobe {m}` failed ({0}). Load it as root \
         with `modprobe {m}` (inet_diag comes with it); a kernel built without \
         CONFIG_INET_TCP_DIAG cannot list them",
        m = module::TCP_DIAG
    )]
    NoTcpDiag(String),
    /// TCP dumps are still refused (ENOENT) after tcp_diag was loaded.
    #[error(
        "sock_diag cannot list TCP sockets: the kernel still refuses the dump with errno 2 \
         (ENOENT) after `modprobe {m}` succeeded; `lsmod | grep diag` shows the diag modules \
         loaded, and a kernel built without CONFIG_INET_TCP_DIAG cannot list them",
        m = module::TCP_DIAG
    )]
    StillRefused,
    /// A message from the kernel could not be decoded.
    #[error("sock_diag: undecodable message: {0}")]
    Decode(String),
    /// The network namespace could not be entered.
    /// (The path, then why: the error, or the capability lacking for it.)
    #[error("cannot enter network namespace {0}: {1}")]
    Netns(String, String),
    /// The dump was interrupted by concurrent changes too many times in a row.
    #[error("sock_diag dump interrupted {0} times in a row; the socket table changes too fast")]
    Interrupted(u32),
}

pub use teardown_common::{TcpState, TwFate, TwSubstate};

/// A connection's addresses, as seen from this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct FourTuple {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

impl FourTuple {
    /// The same endpoints with IPv4-mapped addresses as their IPv4 form, for comparing tuples
    /// across address families (an IPv4 socket and a dual-stack one share the IPv4 4-tuples).
    pub fn canonical(self) -> FourTuple {
        FourTuple {
            local: teardown_common::addr::canonical(self.local),
            remote: teardown_common::addr::canonical(self.remote),
        }
    }
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
