//! TCP states and the predicates on state changes that the kernel programs and the agent both
//! apply: written once, here, so a filter in the kernel and its twin in a replay cannot drift.

use core::fmt;

/// TCP states, numbered as the Linux kernel numbers them (`include/net/tcp_states.h`; the same
/// numbers the tracepoints, sock_diag and `ss` use). The agent checks these numbers against the
/// running kernel's BTF before it loads the programs.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "SCREAMING_SNAKE_CASE")
)]
pub enum TcpState {
    Established = 1,
    SynSent = 2,
    SynRecv = 3,
    FinWait1 = 4,
    FinWait2 = 5,
    TimeWait = 6,
    Close = 7,
    CloseWait = 8,
    LastAck = 9,
    Listen = 10,
    Closing = 11,
    NewSynRecv = 12,
    BoundInactive = 13,
}

impl TcpState {
    /// Every state, in the kernel's order.
    pub const ALL: [TcpState; 13] = [
        TcpState::Established,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::FinWait1,
        TcpState::FinWait2,
        TcpState::TimeWait,
        TcpState::Close,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::Listen,
        TcpState::Closing,
        TcpState::NewSynRecv,
        TcpState::BoundInactive,
    ];

    /// The closing states a full (non-timewait) socket can be in.
    pub const CLOSING_FULL: [TcpState; 5] = [
        TcpState::FinWait1,
        TcpState::FinWait2,
        TcpState::Closing,
        TcpState::CloseWait,
        TcpState::LastAck,
    ];

    /// The state for a kernel state number.
    pub const fn from_kernel(n: u8) -> Option<TcpState> {
        if n >= 1 && n as usize <= Self::ALL.len() {
            Some(Self::ALL[n as usize - 1])
        } else {
            None
        }
    }

    /// The kernel's state number.
    pub const fn kernel_number(self) -> u8 {
        self as u8
    }

    /// The name `ss` and the RFC use, e.g. `FIN_WAIT1` (the RFC's `TIME-WAIT` is `TIME_WAIT`).
    pub fn name(self) -> &'static str {
        // The kernel's enumerator without its `TCP_` prefix (every one has it, see the test).
        let k = self.kernel_name();
        k.get(4..).unwrap_or(k)
    }

    /// The enumerator's name in the kernel's sources and BTF, e.g. `TCP_FIN_WAIT1`.
    pub const fn kernel_name(self) -> &'static str {
        match self {
            TcpState::Established => "TCP_ESTABLISHED",
            TcpState::SynSent => "TCP_SYN_SENT",
            TcpState::SynRecv => "TCP_SYN_RECV",
            TcpState::FinWait1 => "TCP_FIN_WAIT1",
            TcpState::FinWait2 => "TCP_FIN_WAIT2",
            TcpState::TimeWait => "TCP_TIME_WAIT",
            TcpState::Close => "TCP_CLOSE",
            TcpState::CloseWait => "TCP_CLOSE_WAIT",
            TcpState::LastAck => "TCP_LAST_ACK",
            TcpState::Listen => "TCP_LISTEN",
            TcpState::Closing => "TCP_CLOSING",
            TcpState::NewSynRecv => "TCP_NEW_SYN_RECV",
            TcpState::BoundInactive => "TCP_BOUND_INACTIVE",
        }
    }

    /// States a connection passes through while it is being torn down.
    pub const fn is_closing(self) -> bool {
        matches!(
            self,
            TcpState::FinWait1
                | TcpState::FinWait2
                | TcpState::Closing
                | TcpState::CloseWait
                | TcpState::LastAck
                | TcpState::TimeWait
        )
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

const CLOSE: u8 = TcpState::Close as u8;
const SYN_SENT: u8 = TcpState::SynSent as u8;
const SYN_RECV: u8 = TcpState::SynRecv as u8;
const LISTEN: u8 = TcpState::Listen as u8;
const ESTABLISHED: u8 = TcpState::Established as u8;
const FIN_WAIT1: u8 = TcpState::FinWait1 as u8;
const FIN_WAIT2: u8 = TcpState::FinWait2 as u8;
const CLOSE_WAIT: u8 = TcpState::CloseWait as u8;
const LAST_ACK: u8 = TcpState::LastAck as u8;

/// A state change that begins a new life of the socket address: `connect()`, `listen()`, or a
/// child socket made for an incoming SYN. Kernel state numbers, so the kernel programs can ask
/// without decoding.
#[inline(always)]
pub const fn starts_connection(old: u8, new: u8) -> bool {
    matches!(
        (old, new),
        (CLOSE, SYN_SENT) | (CLOSE, LISTEN) | (LISTEN, SYN_RECV)
    )
}

/// A state change made by a system call of the socket's owner (connect, listen, close,
/// shutdown): only then is the running task the owner. Other changes run in softirq or timer
/// context, on whatever task the CPU was running (on loopback, often the peer).
#[inline(always)]
pub const fn in_process_context(old: u8, new: u8) -> bool {
    matches!(
        (old, new),
        (CLOSE, SYN_SENT)
            | (CLOSE, LISTEN)
            | (LISTEN, CLOSE)
            | (ESTABLISHED, FIN_WAIT1)
            | (CLOSE_WAIT, LAST_ACK)
            | (FIN_WAIT2, FIN_WAIT2)
    )
}

/// A state change after which the running task may be the owner though the change is not in
/// process context: an abortive close (a RST sent by `close()` with unread data or SO_LINGER 0)
/// runs in the owner's system call, and so does the same change made by a received RST. The
/// kernel programs copy the task's name for these too; the agent decides later which it was.
#[inline(always)]
pub const fn may_be_owner(old: u8, new: u8) -> bool {
    in_process_context(old, new) || (new == CLOSE && (old == ESTABLISHED || old == CLOSE_WAIT))
}

/// What the port and address filter does with one event of a socket, in the kernel and in the
/// agent alike. A filter cannot judge each event alone: the last events of a connection carry no
/// local port (the socket was unhashed), so a socket that matched once stays matched until its
/// address begins a new life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterStep {
    /// The event matches: keep it, and remember the socket as matched.
    Match,
    /// A new life of the address that does not match: drop it and forget the old life's match.
    Forget,
    /// Neither: keep the event if the socket was matched before.
    AsBefore,
}

/// The [`FilterStep`] for an event: `hit` whether its 4-tuple matches the filter, `starts`
/// whether it begins a new life of the socket ([`starts_connection`]).
#[inline(always)]
pub const fn filter_step(hit: bool, starts: bool) -> FilterStep {
    if hit {
        FilterStep::Match
    } else if starts {
        FilterStep::Forget
    } else {
        FilterStep::AsBefore
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_numbers_round_trip_and_names_drop_the_prefix() {
        for (i, s) in TcpState::ALL.iter().enumerate() {
            assert_eq!(usize::from(s.kernel_number()), i + 1);
            assert_eq!(TcpState::from_kernel(s.kernel_number()), Some(*s));
            assert!(s.kernel_name().starts_with("TCP_"), "{s:?}");
            assert_eq!(&s.kernel_name()[4..], s.name());
        }
        assert_eq!(TcpState::from_kernel(0), None);
        assert_eq!(TcpState::from_kernel(14), None);
        assert_eq!(TcpState::FinWait1.name(), "FIN_WAIT1");
    }

    #[test]
    fn a_matching_event_that_starts_a_life_is_a_match() {
        // The kernel's filter used to test the port first, the agent's the start first: both
        // must keep a connect() whose port matches.
        assert_eq!(filter_step(true, true), FilterStep::Match);
        assert_eq!(filter_step(false, true), FilterStep::Forget);
        assert_eq!(filter_step(false, false), FilterStep::AsBefore);
    }

    #[test]
    fn owner_context() {
        let n = |s: TcpState| s.kernel_number();
        use TcpState::*;
        assert!(in_process_context(n(Established), n(FinWait1)));
        assert!(!in_process_context(n(FinWait1), n(FinWait2)));
        assert!(may_be_owner(n(Established), n(Close)));
        assert!(!may_be_owner(n(LastAck), n(Close)));
        assert!(starts_connection(n(Listen), n(SynRecv)));
        assert!(!starts_connection(n(SynSent), n(Established)));
    }
}
