//! The life of a timewait socket: the lightweight socket the kernel keeps after a close, in one
//! of two substates, and how it ends. The state-change tracepoint does not see it; its timer's
//! tracepoints do (filtered on the timewait handler), sock_diag does, and so do recordings and
//! every output that reports it.

use core::fmt;

/// The substate of a timewait socket (`tw_substate`; sock_diag reports it as the socket's state).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "SCREAMING_SNAKE_CASE")
)]
pub enum TwSubstate {
    /// The peer's FIN was received: the real TIME_WAIT (60 s on Linux, restarted by a resent
    /// FIN).
    TimeWait,
    /// An orphaned FIN_WAIT2 socket: our FIN was acknowledged, the peer's FIN has not come yet.
    /// Its timer is `tcp_fin_timeout`; the peer's FIN turns it into TIME_WAIT.
    FinWait2,
}

impl TwSubstate {
    /// The substate for `tw_substate`, a TCP state number.
    pub const fn from_kernel(n: u8) -> Option<TwSubstate> {
        if n == crate::TcpState::TimeWait.kernel_number() {
            Some(TwSubstate::TimeWait)
        } else if n == crate::TcpState::FinWait2.kernel_number() {
            Some(TwSubstate::FinWait2)
        } else {
            None
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            TwSubstate::TimeWait => "TIME_WAIT",
            TwSubstate::FinWait2 => "FIN_WAIT2",
        }
    }
}

impl fmt::Display for TwSubstate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// How a timewait socket left.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum TwFate {
    /// Its timer ran out.
    Expired,
    /// A new connection took its 4-tuple (`tcp_tw_reuse`, or a SYN accepted in TIME_WAIT).
    Reused,
    /// Gone before its timer ran out with no new connection on its 4-tuple: killed by a RST
    /// (RFC 1337's "TIME-WAIT assassination"), or reused by a connection that has already ended.
    Killed,
    /// Gone with its network namespace, which was removed (seen only through the kernel's
    /// timer events: sock_diag cannot look into a namespace that is gone).
    Purged,
}

impl TwFate {
    pub const fn name(self) -> &'static str {
        match self {
            TwFate::Expired => "expired",
            TwFate::Reused => "reused",
            TwFate::Killed => "killed",
            TwFate::Purged => "purged",
        }
    }
}

impl fmt::Display for TwFate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}
