//! Types shared by the kernel programs (`teardown-ebpf`) and the agent (`teardown-user`).
//!
//! Two kinds of things live here, each defined once for the kernel programs, the decoder,
//! sock_diag and recordings alike:
//! - the records the kernel writes into the ring buffer and the settings the agent hands the
//!   programs: `#[repr(C)]` plain data, whose layout both sides must agree on to the byte;
//! - the shared vocabulary: TCP states and the predicates on their changes ([`tcp`]), event
//!   kinds ([`kind`]), timewait substates and fates ([`timewait`]), endpoints compared across
//!   address families ([`addr`]).
#![no_std]

pub mod addr;
pub mod tcp;
pub mod timewait;

pub use tcp::TcpState;
pub use timewait::{TwFate, TwSubstate};

/// What produced an [`Event`].
pub mod kind {
    /// `sock:inet_sock_set_state`: the socket changed TCP state.
    pub const STATE: u8 = 1;
    /// `tcp:tcp_retransmit_skb`: a segment was retransmitted (a FIN, when closing).
    pub const RETRANSMIT: u8 = 2;
    /// `tcp:tcp_send_reset`: this socket sent a RST.
    pub const SEND_RESET: u8 = 3;
    /// `tcp:tcp_receive_reset`: this socket received a RST.
    pub const RECV_RESET: u8 = 4;
    /// `timer:timer_start` on a timewait socket's timer: it entered a substate, or its timer
    /// was re-armed (a [`super::TwTimerEvent`], not an [`super::Event`]).
    pub const TW_START: u8 = 5;
    /// `timer:timer_expire_entry` on a timewait socket's timer: it ran out.
    pub const TW_EXPIRE: u8 = 6;
    /// `timer:timer_cancel` on a timewait socket's timer: taken off the wheel, to be re-armed
    /// (a start follows at once), to run (an expiry follows), or for the socket to go early.
    pub const TW_CANCEL: u8 = 7;
}

/// Why the kernel programs did not deliver an event: the indices of their per-CPU `LOST`
/// counters, and the two counters of the matched-socket table from which its evictions follow.
pub mod lost {
    /// The ring buffer had no room for it.
    pub const RING_FULL: u32 = 0;
    /// A field the event needs could not be read (or read as something no TCP socket holds),
    /// on any path: the state or family of a socket, the fields of a classic tracepoint record,
    /// the tuple of a timewait socket. Counted whether or not the event would have passed the
    /// `--port` filter, which needs those fields to decide.
    pub const UNREADABLE: u32 = 1;
    /// The agent was behind (the ring buffer more than [`BEHIND_EIGHTHS`] eighths full): the
    /// event was counted in `NOT_JUDGED` by what it was, instead of being sent.
    pub const BEHIND: u32 = 2;
    /// A matched socket that the `MATCHED` table refused (an insert that failed other than
    /// for the key being there already): its later events with a zero port will not pass.
    pub const PORT_TABLE_REFUSED: u32 = 3;
    /// Keys added to the `MATCHED` table (inserts made with `BPF_NOEXIST` that succeeded).
    /// Not a cause: with [`MATCHED_REMOVED`] and the keys present, it gives the evictions.
    pub const MATCHED_ADDED: u32 = 4;
    /// Keys removed from the `MATCHED` table by the programs (removals that succeeded).
    pub const MATCHED_REMOVED: u32 = 5;
    /// How many counters `LOST` has.
    pub const COUNTERS: u32 = 6;
    /// Past this many eighths of the ring buffer waiting to be read, events are summarised:
    /// the room left takes what is already on its way, and the counts tell what was missed.
    pub const BEHIND_EIGHTHS: u64 = 7;
    /// The `NOT_JUDGED` counters: one per (old, new) state pair of a state change, at
    /// `old * 16 + new` (state numbers are below 16), then one per other event kind at
    /// `TRANSITIONS + kind`.
    pub const TRANSITIONS: u32 = 16 * 16;
    pub const NOT_JUDGED_SLOTS: u32 = TRANSITIONS + 8;

    /// The `NOT_JUDGED` slot of an event of `kind` (old and new states for a state change).
    pub const fn not_judged_slot(kind: u8, old: u8, new: u8) -> u32 {
        if kind == super::kind::STATE {
            (old as u32 & 15) * 16 + (new as u32 & 15)
        } else {
            TRANSITIONS + (kind as u32 & 7)
        }
    }
}

/// The sizes of the `--port` filter's maps, which the kernel programs declare and the agent
/// checks the user's ports against and sets at load time.
pub mod filter {
    /// Ports the `FILTER_PORTS` map holds at most.
    pub const MAX_PORTS: u32 = 64;
    /// The `MATCHED` table's size unless the user sets one (`--port-table`).
    pub const DEFAULT_PORT_TABLE: u32 = 65_536;
}

/// Bits of [`Event::flags`].
pub mod flags {
    /// The sequence fields (`snd_una`, `snd_nxt`, `rcv_nxt`, `write_seq`) were read.
    pub const SEQ_VALID: u8 = 1 << 0;
    /// `sk_flags` and `sk_err` were read.
    pub const SOCK_VALID: u8 = 1 << 1;
}

/// `sk_flags` bits the validator looks at (include/net/sock.h, `enum sock_flags`).
pub mod sock_flag {
    /// The socket is orphaned: the application closed it.
    pub const DEAD: u32 = 1 << 0;
    /// A FIN was received from the peer.
    pub const DONE: u32 = 1 << 1;
}

/// One record in the ring buffer. 112 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_ns()`: monotonic nanoseconds since boot.
    pub ts_ns: u64,
    /// Address of the kernel `struct sock`; reused after the socket is freed.
    pub skaddr: u64,
    /// Thread-group id (the user-visible pid) of the task that was running.
    pub pid: u32,
    pub snd_una: u32,
    pub snd_nxt: u32,
    pub rcv_nxt: u32,
    pub write_seq: u32,
    /// Low 32 bits of `sk_flags`.
    pub sk_flags: u32,
    /// `sk_err` (a positive errno), 0 when none.
    pub sk_err: i32,
    /// Inode number of the socket's network namespace (as in `/proc/PID/ns/net`), 0 when
    /// unknown.
    pub netns: u32,
    pub _pad_netns: u32,
    /// Source and destination address; IPv4 uses the first 4 bytes.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Local port in host byte order (0 once the socket is unhashed).
    pub sport: u16,
    /// Remote port in host byte order.
    pub dport: u16,
    /// `AF_INET` (2) or `AF_INET6` (10).
    pub family: u16,
    /// One of [`kind`].
    pub kind: u8,
    /// TCP states as the kernel numbers them (`TCP_ESTABLISHED` = 1 ...). For events that are not
    /// state changes, `oldstate == newstate` is the state the socket was in.
    pub oldstate: u8,
    pub newstate: u8,
    /// Bits of [`flags`].
    pub flags: u8,
    pub _pad: [u8; 2],
    /// `comm` of the task that was running.
    pub comm: [u8; 16],
}

impl Event {
    pub const ZERO: Event = Event {
        ts_ns: 0,
        skaddr: 0,
        pid: 0,
        snd_una: 0,
        snd_nxt: 0,
        rcv_nxt: 0,
        write_seq: 0,
        sk_flags: 0,
        sk_err: 0,
        netns: 0,
        _pad_netns: 0,
        saddr: [0; 16],
        daddr: [0; 16],
        sport: 0,
        dport: 0,
        family: 0,
        kind: 0,
        oldstate: 0,
        newstate: 0,
        flags: 0,
        _pad: [0; 2],
        comm: [0; 16],
    };
}

/// One record of a timewait socket's timer in the ring buffer (kinds [`kind::TW_START`],
/// [`kind::TW_EXPIRE`], [`kind::TW_CANCEL`]). 80 bytes: the decoder tells it from an [`Event`]
/// (112) by its size.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TwTimerEvent {
    /// `bpf_ktime_get_ns()`: monotonic nanoseconds since boot.
    pub ts_ns: u64,
    /// Address of the kernel `struct inet_timewait_sock`; reused after it is freed.
    pub twaddr: u64,
    /// The timer's `expires` at the event, in jiffies.
    pub expires: u64,
    /// `bpf_jiffies64()` at the event.
    pub jiffies: u64,
    /// Inode number of the socket's network namespace, 0 when unknown.
    pub netns: u32,
    /// The namespace's reference count: 0 while it is being removed, [`u32::MAX`] when unknown.
    pub net_refs: u32,
    /// Local and remote address; IPv4 uses the first 4 bytes.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Local and remote port, host byte order.
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    /// One of the `kind::TW_*`.
    pub kind: u8,
    /// `tw_substate` at the event, a TCP state number (TIME_WAIT or FIN_WAIT2).
    pub substate: u8,
}

impl TwTimerEvent {
    pub const ZERO: TwTimerEvent = TwTimerEvent {
        ts_ns: 0,
        twaddr: 0,
        expires: 0,
        jiffies: 0,
        netns: 0,
        net_refs: u32::MAX,
        saddr: [0; 16],
        daddr: [0; 16],
        sport: 0,
        dport: 0,
        family: 0,
        kind: 0,
        substate: 0,
    };
}

/// Offsets for the timewait timer programs, from the kernel's BTF (the `sock_common` fields of a
/// timewait socket are those of [`SockOffsets`]: it begins with one).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TwOffsets {
    /// `inet_timewait_sock.tw_timer`.
    pub tw_timer: u32,
    /// `inet_timewait_sock.tw_substate` (a byte).
    pub tw_substate: u32,
    /// `timer_list.function`.
    pub timer_function: u32,
    /// `timer_list.expires`.
    pub timer_expires: u32,
    /// The reference count of `struct net` (`ns.__ns_ref`, `ns.count` before 6.18): optional.
    pub net_refs: u32,
}

impl TwOffsets {
    pub const UNKNOWN: TwOffsets = TwOffsets {
        tw_timer: OFFSET_UNKNOWN,
        tw_substate: OFFSET_UNKNOWN,
        timer_function: OFFSET_UNKNOWN,
        timer_expires: OFFSET_UNKNOWN,
        net_refs: OFFSET_UNKNOWN,
    };

    pub fn complete(&self) -> bool {
        [
            self.tw_timer,
            self.tw_substate,
            self.timer_function,
            self.timer_expires,
        ]
        .iter()
        .all(|&o| o != OFFSET_UNKNOWN)
    }
}

/// An offset that could not be resolved from the kernel's BTF.
pub const OFFSET_UNKNOWN: u32 = u32::MAX;

/// Byte offsets into `struct sock` / `struct tcp_sock` of the running kernel, resolved from its
/// BTF by the agent and handed to the kernel programs as a read-only global. Never hard-coded:
/// they differ between kernel builds.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockOffsets {
    pub skc_family: u32,
    pub skc_num: u32,
    pub skc_dport: u32,
    pub skc_rcv_saddr: u32,
    pub skc_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    pub skc_v6_daddr: u32,
    pub skc_flags: u32,
    pub sk_protocol: u32,
    pub sk_err: u32,
    pub snd_una: u32,
    pub snd_nxt: u32,
    pub rcv_nxt: u32,
    pub write_seq: u32,
    /// `sk->__sk_common.skc_net.net`: the socket's `struct net *`.
    pub skc_net: u32,
    /// `net->ns.inum`, from the start of `struct net`: the namespace's inode number.
    pub net_inum: u32,
    /// Bits of [`fast`]: how the kernel program may read the socket (layouts the agent verified
    /// in BTF, and whether plain loads are allowed).
    pub fast: u32,
}

/// Bits of [`SockOffsets::fast`].
pub mod fast {
    /// `skc_daddr`, `skc_rcv_saddr` (+4), `skc_dport` (+12), `skc_num` (+14), `skc_family` (+16):
    /// the head of `struct sock_common` ([`super::CommonHead`]).
    pub const COMMON_HEAD: u32 = 1 << 0;
    /// `rcv_nxt`, `snd_nxt` (+4), `snd_una` (+8).
    pub const SEQ_TRIPLE: u32 = 1 << 1;
    /// The BTF programs read fields with plain loads through the `tcp_sock` pointer, which the
    /// verifier checks against the kernel's BTF, instead of a `bpf_probe_read_kernel` call per
    /// field. Set by the agent at load time; cleared for a retry if the verifier refuses it.
    pub const DIRECT_LOADS: u32 = 1 << 2;
}

/// The head of `struct sock_common` when [`fast::COMMON_HEAD`] holds, read from `skc_daddr`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommonHead {
    pub daddr: [u8; 4],
    pub rcv_saddr: [u8; 4],
    pub hash: u32,
    /// Network byte order.
    pub dport: u16,
    pub num: u16,
    pub family: u16,
    pub _pad: u16,
}

impl SockOffsets {
    pub const UNKNOWN: SockOffsets = SockOffsets {
        skc_family: OFFSET_UNKNOWN,
        skc_num: OFFSET_UNKNOWN,
        skc_dport: OFFSET_UNKNOWN,
        skc_rcv_saddr: OFFSET_UNKNOWN,
        skc_daddr: OFFSET_UNKNOWN,
        skc_v6_rcv_saddr: OFFSET_UNKNOWN,
        skc_v6_daddr: OFFSET_UNKNOWN,
        skc_flags: OFFSET_UNKNOWN,
        sk_protocol: OFFSET_UNKNOWN,
        sk_err: OFFSET_UNKNOWN,
        snd_una: OFFSET_UNKNOWN,
        snd_nxt: OFFSET_UNKNOWN,
        rcv_nxt: OFFSET_UNKNOWN,
        write_seq: OFFSET_UNKNOWN,
        skc_net: OFFSET_UNKNOWN,
        net_inum: OFFSET_UNKNOWN,
        fast: 0,
    };

    /// The `fast` bits that these offsets allow.
    pub fn fast_bits(&self) -> u32 {
        let known = |o: u32| o != OFFSET_UNKNOWN;
        let mut bits = 0;
        let d = self.skc_daddr;
        if known(d)
            && self.skc_rcv_saddr == d.wrapping_add(4)
            && self.skc_dport == d.wrapping_add(12)
            && self.skc_num == d.wrapping_add(14)
            && self.skc_family == d.wrapping_add(16)
        {
            bits |= fast::COMMON_HEAD;
        }
        let r = self.rcv_nxt;
        if known(r) && self.snd_nxt == r.wrapping_add(4) && self.snd_una == r.wrapping_add(8) {
            bits |= fast::SEQ_TRIPLE;
        }
        bits
    }
}

/// Offsets into the classic tracepoint's record, read from its `format` file in tracefs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TracepointOffsets {
    pub skaddr: u32,
    pub oldstate: u32,
    pub newstate: u32,
    pub sport: u32,
    pub dport: u32,
    pub family: u32,
    pub protocol: u32,
    pub saddr: u32,
    pub daddr: u32,
    pub saddr_v6: u32,
    pub daddr_v6: u32,
}

impl TracepointOffsets {
    pub const UNKNOWN: TracepointOffsets = TracepointOffsets {
        skaddr: OFFSET_UNKNOWN,
        oldstate: OFFSET_UNKNOWN,
        newstate: OFFSET_UNKNOWN,
        sport: OFFSET_UNKNOWN,
        dport: OFFSET_UNKNOWN,
        family: OFFSET_UNKNOWN,
        protocol: OFFSET_UNKNOWN,
        saddr: OFFSET_UNKNOWN,
        daddr: OFFSET_UNKNOWN,
        saddr_v6: OFFSET_UNKNOWN,
        daddr_v6: OFFSET_UNKNOWN,
    };
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` data with no pointers, every bit pattern valid.
    unsafe impl aya::Pod for super::Event {}
    // SAFETY: `u32` fields only, `#[repr(C)]`: every bit pattern is valid.
    unsafe impl aya::Pod for super::SockOffsets {}
    // SAFETY: `u32` fields only, `#[repr(C)]`: every bit pattern is valid.
    unsafe impl aya::Pod for super::TracepointOffsets {}
    // SAFETY: `u32` fields only, `#[repr(C)]`: every bit pattern is valid.
    unsafe impl aya::Pod for super::TwOffsets {}
    // SAFETY: plain `#[repr(C)]` integers and byte arrays, every bit pattern valid.
    unsafe impl aya::Pod for super::TwTimerEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_paths_only_for_the_layouts_they_assume() {
        let mut o = SockOffsets::UNKNOWN;
        assert_eq!(o.fast_bits(), 0);
        o.skc_daddr = 0;
        o.skc_rcv_saddr = 4;
        o.skc_dport = 12;
        o.skc_num = 14;
        o.skc_family = 16;
        o.rcv_nxt = 1664;
        o.snd_nxt = 1668;
        o.snd_una = 1672;
        assert_eq!(o.fast_bits(), fast::COMMON_HEAD | fast::SEQ_TRIPLE);
        o.skc_family = 18;
        o.snd_una = 1680;
        assert_eq!(o.fast_bits(), 0);
        assert_eq!(core::mem::size_of::<CommonHead>(), 20);
    }

    #[test]
    fn event_layout_is_stable() {
        assert_eq!(core::mem::size_of::<Event>(), 112);
        assert_eq!(core::mem::align_of::<Event>(), 8);
        assert_eq!(core::mem::size_of::<TwTimerEvent>(), 80);
        assert_eq!(core::mem::align_of::<TwTimerEvent>(), 8);
    }
}
