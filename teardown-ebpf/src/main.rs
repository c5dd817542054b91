//! Kernel programs of teardown.
//!
//! Every TCP state change (`sock:inet_sock_set_state`), and with BTF also every retransmission
//! and reset, that passes the agent's port filter becomes one [`Event`] in the `EVENTS` ring
//! buffer. The socket's sequence fields and flags are read at that moment, at offsets the agent
//! resolved from the running kernel's BTF. Events not delivered are counted per CPU in `LOST`
//! by cause: the ring buffer full, a field that cannot be read (on every path that skips an
//! event for it), the agent behind, or a matched socket the port table refused; the table's
//! evictions follow from the keys it added and removed, counted there too, and the keys the
//! agent finds in it. The agent behind is a choice, not an accident: once the ring buffer is
//! nearly full the programs stop sending and count each event by what it was (`NOT_JUDGED`), so
//! that an agent that cannot keep up still learns what it missed. (Runs of a program that the
//! kernel skipped, one of ours being already running on that CPU, the kernel counts itself: the
//! agent reads them from each program's info.)
//!
//! The rare paths, where a program drops an event or leaves part of it empty for a reason the
//! agent cannot see (a field it could not read, a family it does not know, a socket that is not
//! what its state says, an event the full ring buffer refused), leave a debug record through
//! aya-log naming the program, the field and the socket, when the agent asks for them
//! (`teardown -vv`). By default the agent loads the programs with aya-log's level at "off": the
//! records, and the few checks made only for them, are then dead code the verifier removes (see
//! [`debug_on`]). The state and family numbers the events carry are checked by the agent's
//! decoder, not here, where the check would cost every event.
#![no_std]
#![no_main]

use aya_ebpf::{
    cty::c_void,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_jiffies64, bpf_ktime_get_ns,
        bpf_probe_read_kernel, bpf_skc_to_tcp_sock,
    },
    macros::{btf_tracepoint, map, tracepoint},
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, TracePointContext},
};
// `macro_support` is aya-log-ebpf's own check of its load-time level (pinned release).
use aya_log_ebpf::{
    debug,
    macro_support::{level_enabled, Level},
};
use teardown_common::{
    fast, filter, flags, kind, lost,
    tcp::{filter_step, may_be_owner, starts_connection, FilterStep},
    CommonHead, Event, SockOffsets, TcpState, TracepointOffsets, TwOffsets, TwTimerEvent,
    OFFSET_UNKNOWN,
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;
// The states whose sockets are not full ones; the numbers are teardown-common's, which the
// agent checks against the kernel's BTF before it loads these programs.
const TCP_TIME_WAIT: u8 = TcpState::TimeWait.kernel_number();
const TCP_NEW_SYN_RECV: u8 = TcpState::NewSynRecv.kernel_number();

/// The 16 MiB here is a placeholder: the agent sets the size (and `RING_BYTES`) at load time
/// (`--ring-size`, 64 MiB by default: about four seconds of events at the reference VM's
/// maximum churn, so a stalled agent loses nothing for a while).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(16 << 20, 0);

/// Events not delivered, per CPU, by cause, and the port table's additions and removals
/// (indices in teardown-common's `lost`).
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(lost::COUNTERS, 0);

/// Events counted instead of sent while the agent was behind, per CPU, by what they were
/// (`lost::not_judged_slot`): what the agent could not judge, it can still count.
#[map]
static NOT_JUDGED: PerCpuArray<u64> = PerCpuArray::with_max_entries(lost::NOT_JUDGED_SLOTS, 0);

/// Set by the agent at load time: the ring buffer's size in bytes.
#[no_mangle]
static RING_BYTES: u64 = 16 << 20;

/// The user's `--port` filter, set by the agent (used only when `FILTER_ON` is 1): filtering
/// here spares the ring buffer and the agent every other connection of a busy host.
#[map]
static FILTER_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(filter::MAX_PORTS, 0);

/// Socket addresses whose local or remote port matched the filter during the socket's current
/// life: their last transitions, when the local port is already zero, still pass. The agent
/// sets its size (`--port-table`); what it evicts is counted by difference (see [`wanted`]).
#[map]
static MATCHED: LruHashMap<u64, u8> = LruHashMap::with_max_entries(filter::DEFAULT_PORT_TABLE, 0);

/// Set by the agent at load time: 1 when `FILTER_PORTS` holds the user's ports, 0 for no filter.
#[no_mangle]
static FILTER_ON: u8 = 0;

/// Set by the agent at load time from the kernel's BTF.
#[no_mangle]
static SOCK_OFFSETS: SockOffsets = SockOffsets::UNKNOWN;

/// Set by the agent at load time from the tracepoint's format file (classic tracepoint only).
#[no_mangle]
static TP_OFFSETS: TracepointOffsets = TracepointOffsets::UNKNOWN;

/// Set by the agent: the offset of `skc_state` in `struct sock_common`.
#[no_mangle]
static SKC_STATE_OFFSET: u32 = OFFSET_UNKNOWN;

/// Set by the agent: the address of `tw_timer_handler` (from /proc/kallsyms), the function of
/// every timewait socket's timer. The timer programs attach only when it is known.
#[no_mangle]
static TW_TIMER_HANDLER: u64 = 0;

/// Set by the agent at load time from the kernel's BTF: where the timer sits in a timewait
/// socket, and its fields.
#[no_mangle]
static TW_OFFSETS: TwOffsets = TwOffsets::UNKNOWN;

/// Whether the agent asked for the debug records of the rare paths (`teardown -vv`).
///
/// aya-log's level (`AYA_LOG_LEVEL`) is a global the agent sets at load; the map behind it is
/// frozen and read-only, so the verifier knows its value and, when it is off, drops every branch
/// behind this test (aya-log's macros make the same test first). Only rare paths test it: the
/// common path does not even load the level.
#[inline(always)]
fn debug_on() -> bool {
    level_enabled(Level::Debug)
}

/// A debug record of a rare path, `program: what, skaddr 0x...`, logged by the agent under the
/// target `teardown::ebpf`. (The ctx argument of aya-log's macros is unused in this release.)
macro_rules! rare {
    ($($arg:tt)+) => {
        debug!((), target: "teardown::ebpf", $($arg)+)
    };
}

/// A kernel program, as its debug records name it: a type, so that the name is a constant in
/// each program's code (a name passed at run time would be copied byte by byte in a loop, and
/// kept ready on the common path).
trait Prog {
    const NAME: &'static str;
}

macro_rules! progs {
    ($($ty:ident = $name:literal),+ $(,)?) => {
        $(
            struct $ty;
            impl Prog for $ty {
                const NAME: &'static str = $name;
            }
        )+
    };
}

progs! {
    StateBtf = "inet_sock_set_state_btf",
    RetransmitBtf = "tcp_retransmit_skb_btf",
    SendResetBtf = "tcp_send_reset_btf",
    ReceiveResetBtf = "tcp_receive_reset_btf",
    StateTp = "inet_sock_set_state_tp",
    TwStart = "tw_timer_start",
    TwExpire = "tw_timer_expire",
    TwCancel = "tw_timer_cancel",
}

/// A socket's address as a plain number, for a debug record. The verifier types the socket
/// pointer a tp_btf program gets as a pointer, which a record (written a byte at a time) may not
/// take apart; a copy made by `bpf_probe_read_kernel` is a plain number. Rare paths only.
#[inline(always)]
fn number(addr: u64) -> u64 {
    // SAFETY: the helper copies the local `addr`, a u64 (valid for any bytes), and fails
    // cleanly on a fault.
    unsafe { bpf_probe_read_kernel(&addr) }.unwrap_or(0)
}

/// The offsets, each field read on its own: the verifier then knows every one as a constant
/// (the global is frozen and read-only), which the direct loads of [`Fields::Direct`] need.
#[inline(always)]
fn offsets() -> SockOffsets {
    let p = &raw const SOCK_OFFSETS;
    // Volatile so the compiler does not fold the placeholder values: the loader rewrites them.
    macro_rules! field {
        ($f:ident) => {
            // SAFETY: `p` points to a static, so it is valid, aligned and initialised for the
            // whole program, and nothing writes to it while the program runs (the map behind it
            // is frozen at load).
            unsafe { core::ptr::read_volatile(&raw const (*p).$f) }
        };
    }
    SockOffsets {
        skc_family: field!(skc_family),
        skc_num: field!(skc_num),
        skc_dport: field!(skc_dport),
        skc_rcv_saddr: field!(skc_rcv_saddr),
        skc_daddr: field!(skc_daddr),
        skc_v6_rcv_saddr: field!(skc_v6_rcv_saddr),
        skc_v6_daddr: field!(skc_v6_daddr),
        skc_flags: field!(skc_flags),
        sk_protocol: field!(sk_protocol),
        sk_err: field!(sk_err),
        snd_una: field!(snd_una),
        snd_nxt: field!(snd_nxt),
        rcv_nxt: field!(rcv_nxt),
        write_seq: field!(write_seq),
        skc_net: field!(skc_net),
        net_inum: field!(net_inum),
        fast: field!(fast),
    }
}

/// Reads a `T` at `base + off` with `bpf_probe_read_kernel`, or None when the offset is unknown
/// or the read faults.
///
/// # Safety
///
/// Any address may be passed: the helper copies through the kernel's fault-tolerant path and
/// reports a bad address as an error. `T` must be valid for any bit pattern (plain integers and
/// arrays of them), as the bytes are whatever the kernel holds there.
#[inline(always)]
unsafe fn read_at<T: Copy>(base: *const u8, off: u32) -> Option<T> {
    if off == OFFSET_UNKNOWN {
        return None;
    }
    // SAFETY: `add` is address arithmetic only (no Rust object lives at `base`, and BPF has no
    // pointer provenance to break); the helper checks the address itself and fails on a fault.
    // The caller vouches that `T` accepts any bytes.
    unsafe { bpf_probe_read_kernel(base.add(off as usize) as *const T).ok() }
}

/// How a socket's fields are read.
#[derive(Clone, Copy)]
enum Fields {
    /// A `bpf_probe_read_kernel` call per read: works on any address (the classic tracepoint
    /// hands us a bare number), and may read neighbouring fields in one go.
    Probed(*const u8),
    /// Plain loads through the BTF-typed `tcp_sock` pointer of a tp_btf program: the verifier
    /// checks each against the kernel's BTF and the JIT emits a guarded load, with no helper
    /// call. Each load must stay within one field.
    Direct(*const u8),
}

impl Fields {
    /// The socket's fields for a tp_btf program, None when it is not a full TCP socket, or
    /// [`Unreadable`] when its protocol cannot be read.
    #[inline(always)]
    fn of_btf_sock<P: Prog>(
        sk: *const u8,
        offs: &SockOffsets,
    ) -> Result<Option<Fields>, Unreadable> {
        if offs.fast & fast::DIRECT_LOADS != 0 {
            // Checks that it is a full TCP socket and types the pointer as one for the
            // verifier.
            // SAFETY: `sk` is the tracepoint's BTF-typed socket argument, checked non-null by
            // the caller; the helper only inspects it and returns null for anything that is not
            // a full TCP socket.
            let tp = unsafe { bpf_skc_to_tcp_sock(sk as *mut c_void) };
            return Ok((!tp.is_null()).then_some(Fields::Direct(tp as *const u8)));
        }
        // SAFETY: a u16 accepts any bytes; the probed read tolerates any address.
        let Some(protocol) = (unsafe { read_at::<u16>(sk, offs.sk_protocol) }) else {
            if offs.sk_protocol != OFFSET_UNKNOWN {
                rare!(
                    "{}: sk_protocol unreadable, skaddr 0x{:x}",
                    P::NAME,
                    number(sk as u64)
                );
            }
            return Err(Unreadable);
        };
        Ok((protocol == IPPROTO_TCP).then_some(Fields::Probed(sk)))
    }

    /// The socket's address, as a number for a debug record.
    #[inline(always)]
    fn addr(self) -> u64 {
        match self {
            Fields::Probed(p) | Fields::Direct(p) => number(p as u64),
        }
    }

    #[inline(always)]
    fn read<T: Copy>(self, off: u32) -> Option<T> {
        match self {
            // SAFETY: the probed read tolerates any address; every `T` read here is an integer,
            // an array of integers, a pointer or `CommonHead`, all valid for any bytes.
            Fields::Probed(base) => unsafe { read_at(base, off) },
            Fields::Direct(base) if off != OFFSET_UNKNOWN => {
                // SAFETY: `base` came from `bpf_skc_to_tcp_sock` (or was read through such a
                // pointer), so the verifier knows its BTF type and checks this load against it:
                // an offset outside the type, or a load straddling two fields, makes the program
                // fail to load (the agent then retries with probed reads), and the JIT turns a
                // fault into a zero. Volatile so the compiler neither merges nor widens the load
                // across fields.
                Some(unsafe { core::ptr::read_volatile(base.add(off as usize) as *const T) })
            }
            Fields::Direct(_) => None,
        }
    }

    #[inline(always)]
    fn read_v4(self, off: u32) -> Option<[u8; 4]> {
        self.read::<u32>(off).map(u32::to_ne_bytes)
    }

    #[inline(always)]
    fn read_v6(self, off: u32) -> Option<[u8; 16]> {
        match self {
            // SAFETY: the probed read tolerates any address; a byte array accepts any bytes.
            Fields::Probed(base) => unsafe { read_at(base, off) },
            Fields::Direct(_) => {
                // Four 4-byte loads, each within the 16-byte address field.
                let mut a = [0u8; 16];
                for i in 0..4u32 {
                    let w = self.read::<u32>(off.checked_add(4 * i)?)?;
                    a[4 * i as usize..4 * i as usize + 4].copy_from_slice(&w.to_ne_bytes());
                }
                Some(a)
            }
        }
    }

    #[inline(always)]
    fn probed(self) -> bool {
        matches!(self, Fields::Probed(_))
    }

    /// The inode number of the socket's network namespace: `skc_net.net->ns.inum`.
    #[inline(always)]
    fn netns(self, offs: &SockOffsets) -> Option<u32> {
        let net = self.read::<*const u8>(offs.skc_net)?;
        if net.is_null() {
            return None;
        }
        // The pointer read through a BTF-typed socket is itself typed `struct net *` for the
        // verifier, so the same kind of read goes on.
        match self {
            Fields::Probed(_) => Fields::Probed(net),
            Fields::Direct(_) => Fields::Direct(net),
        }
        .read::<u32>(offs.net_inum)
    }
}

/// The socket's network namespace inode, 0 when unknown.
#[inline(always)]
fn netns_of<P: Prog>(sk: Fields, offs: &SockOffsets) -> u32 {
    let ns = sk.netns(offs);
    if ns.is_none()
        && debug_on()
        && offs.skc_net != OFFSET_UNKNOWN
        && offs.net_inum != OFFSET_UNKNOWN
    {
        rare!(
            "{}: skc_net->ns.inum unreadable, skaddr 0x{:x}",
            P::NAME,
            sk.addr()
        );
    }
    ns.unwrap_or(0)
}

#[inline(always)]
fn count(map: &PerCpuArray<u64>, index: u32) {
    if let Some(n) = map.get_ptr_mut(index) {
        // SAFETY: the lookup succeeded, so `n` points to this CPU's u64 slot at `index`, valid
        // and aligned for the program's run; no other CPU touches it. (A program of ours that
        // interrupts this one on the same CPU between the load and the store of this one
        // slot, a window of two instructions, would make one increment go missing, never an
        // invalid access: an atomic add needs compare-and-swap support the BPF target of
        // stable Rust does not offer.)
        unsafe { *n += 1 };
    }
}

#[inline(always)]
fn count_lost(cause: u32) {
    count(&LOST, cause);
}

/// Wake the agent only once this much is waiting: a wake-up per event costs more than the
/// event itself. The agent also reads on a short timer, so a quiet host still sees its events
/// promptly.
const WAKEUP_BYTES: u64 = 256 * 1024;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

/// A record the ring buffer carries: what it counts as when it is not sent, and its socket.
trait Record: Copy + 'static {
    /// Its footprint in the ring: the record and its 8-byte header.
    const BYTES: u64 = core::mem::size_of::<Self>() as u64 + 8;
    fn slot(&self) -> u32;
    fn addr(&self) -> u64;
}

impl Record for Event {
    #[inline(always)]
    fn slot(&self) -> u32 {
        lost::not_judged_slot(self.kind, self.oldstate, self.newstate)
    }
    #[inline(always)]
    fn addr(&self) -> u64 {
        self.skaddr
    }
}

impl Record for TwTimerEvent {
    #[inline(always)]
    fn slot(&self) -> u32 {
        lost::not_judged_slot(self.kind, 0, 0)
    }
    #[inline(always)]
    fn addr(&self) -> u64 {
        self.twaddr
    }
}

/// The bytes waiting in the ring buffer, or None when the agent is behind (more than
/// `BEHIND_EIGHTHS` of it waiting): the event is then counted by what it was (kind and states,
/// already filled) rather than sent, before anything else is read for it, and rather than fill
/// the last of the ring buffer and then drop events unseen.
#[inline(always)]
fn room<P: Prog, R: Record>(ev: &R) -> Option<u64> {
    let avail = EVENTS.query(BPF_RB_AVAIL_DATA);
    // SAFETY: a valid, aligned static, written only by the loader before the program runs.
    // Volatile so the compiler does not fold the placeholder that the loader rewrites.
    let ring = unsafe { core::ptr::read_volatile(&RING_BYTES) };
    if avail <= ring / 8 * lost::BEHIND_EIGHTHS {
        return Some(avail);
    }
    count_lost(lost::BEHIND);
    count(&NOT_JUDGED, ev.slot());
    rare!(
        "{}: agent behind, event counted, skaddr 0x{:x}",
        P::NAME,
        number(ev.addr())
    );
    None
}

/// Sends the event; `avail` is what [`room`] said was waiting.
#[inline(always)]
fn emit<P: Prog, R: Record>(ev: &R, avail: u64) {
    match EVENTS.reserve::<R>(0) {
        Some(mut entry) => {
            // Copied a u64 at a time: a byte-wise copy may read single bytes of a stack slot
            // the compiler spilled a register to, which the verifier refuses.
            let words: usize = core::mem::size_of::<R>() / 8;
            let src = ev as *const R as *const u64;
            let dst = entry.as_mut_ptr() as *mut u64;
            for i in 0..words {
                // SAFETY: `src` is a live, 8-aligned record (both kinds have alignment 8 and a
                // size that is a multiple of 8) and `dst` the reserved record of `size_of::<R>()`
                // bytes, which the ring buffer places on an 8-byte boundary; `i < words` keeps
                // both inside. The reservation is ours
                // alone until `submit`.
                unsafe {
                    core::ptr::write_volatile(dst.add(i), core::ptr::read_volatile(src.add(i)))
                };
            }
            // Wake once each time the waiting data crosses a multiple of WAKEUP_BYTES, not at
            // every event past it: a wake-up is an interrupt, the dearest thing we could do.
            let after = avail + R::BYTES;
            let flags = if after / WAKEUP_BYTES != avail / WAKEUP_BYTES {
                BPF_RB_FORCE_WAKEUP
            } else {
                BPF_RB_NO_WAKEUP
            };
            entry.submit(flags);
        }
        None => {
            count_lost(lost::RING_FULL);
            rare!(
                "{}: EVENTS full, event dropped, skaddr 0x{:x}",
                P::NAME,
                number(ev.addr())
            );
        }
    }
}

/// `bpf_map_update_elem`'s flag: add the key only if it is absent.
const BPF_NOEXIST: u64 = 1;
const EEXIST: i64 = 17;

/// Whether the user's filter lets this event through. Call with the tuple and states filled.
///
/// The `MATCHED` table is an LRU: when full, adding a key evicts another, unseen by us. So the
/// programs count the keys they add (only an insert with `BPF_NOEXIST` that succeeds, so a key
/// already there, even one added by another CPU at the same moment, is never counted twice)
/// and the keys they remove (only removals that succeed). Nothing else adds or removes keys
/// (the agent only reads the table): the keys present are always those added, less those
/// removed, less those evicted, so the agent that counts the keys present knows the evictions
/// exactly (but for the nested increment [`count`] describes, a window of two instructions).
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "map keys by reference are read in place (in `ev` on the stack); by value, each \
              is first copied to a stack slot of its own, which changes the programs' code"
)]
#[inline(always)]
fn wanted(ev: &Event) -> bool {
    // SAFETY: a valid, aligned static, written only by the loader before the program runs.
    // Volatile so the compiler does not fold the placeholder 0 that the loader rewrites.
    if unsafe { core::ptr::read_volatile(&FILTER_ON) } == 0 {
        return true;
    }
    // SAFETY: only whether the port is present is used; the returned reference, which a
    // concurrent update could change under us, is dropped at once.
    let port_hit = |p: u16| p != 0 && unsafe { FILTER_PORTS.get(&p) }.is_some();
    let hit = port_hit(ev.sport) || port_hit(ev.dport);
    let starts = ev.kind == kind::STATE && starts_connection(ev.oldstate, ev.newstate);
    // The same rule as the agent's filter of recordings: a socket stays matched for its life.
    match filter_step(hit, starts) {
        FilterStep::Match => {
            // SAFETY: only presence is used and the reference dropped. The lookup also marks
            // the key as recently used, as an update would.
            if unsafe { MATCHED.get(&ev.skaddr) }.is_none() {
                match MATCHED.insert(&ev.skaddr, &1, BPF_NOEXIST) {
                    Ok(()) => count(&LOST, lost::MATCHED_ADDED),
                    // Added by another CPU meanwhile: present, and counted there.
                    Err(e) if i64::from(e) == -EEXIST => {}
                    Err(_) => count_lost(lost::PORT_TABLE_REFUSED),
                }
            }
            true
        }
        FilterStep::Forget => {
            // A new life of this socket address, not ours: forget the old one's match.
            if MATCHED.remove(&ev.skaddr).is_ok() {
                count(&LOST, lost::MATCHED_REMOVED);
            }
            false
        }
        // SAFETY: as for `FILTER_PORTS` above, only presence is used and the reference dropped.
        FilterStep::AsBefore => unsafe { MATCHED.get(&ev.skaddr) }.is_some(),
    }
}

/// What every event of a full socket carries besides its tuple: time, network namespace, task,
/// and the socket's sequence fields and flags.
#[inline(always)]
fn fill_task_and_sock<P: Prog>(ev: &mut Event, sk: Fields, offs: &SockOffsets) {
    // SAFETY: the helper takes no arguments and only reads the clock.
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    // After the filter: a pointer chase that events the filter drops need not pay.
    ev.netns = netns_of::<P>(sk, offs);
    ev.pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // The name is only worth copying when the task may be the owner: a system call, an
    // abortive close (which may be one), or a retransmission or reset (a reset, e.g., may be
    // sent by close() itself).
    if ev.kind != kind::STATE || may_be_owner(ev.oldstate, ev.newstate) {
        if let Ok(comm) = bpf_get_current_comm() {
            ev.comm = comm;
        }
    }
    // One read for the three neighbours when the agent found them side by side in BTF.
    let triple = if sk.probed() && offs.fast & fast::SEQ_TRIPLE != 0 {
        sk.read::<[u32; 3]>(offs.rcv_nxt)
            .map(|t| (t[2], t[1], t[0]))
    } else {
        match (
            sk.read::<u32>(offs.snd_una),
            sk.read::<u32>(offs.snd_nxt),
            sk.read::<u32>(offs.rcv_nxt),
        ) {
            (Some(a), Some(b), Some(c)) => Some((a, b, c)),
            _ => None,
        }
    };
    if let (Some((una, nxt, rcv)), Some(wseq)) = (triple, sk.read::<u32>(offs.write_seq)) {
        ev.snd_una = una;
        ev.snd_nxt = nxt;
        ev.rcv_nxt = rcv;
        ev.write_seq = wseq;
        ev.flags |= flags::SEQ_VALID;
    } else if debug_on()
        && [offs.snd_una, offs.snd_nxt, offs.rcv_nxt, offs.write_seq]
            .iter()
            .all(|&o| o != OFFSET_UNKNOWN)
    {
        rare!(
            "{}: sequence fields unreadable, skaddr 0x{:x}",
            P::NAME,
            sk.addr()
        );
    }
    // `skc_flags` is an unsigned long: its low half holds every flag we report (x86-64 and
    // arm64 are little-endian).
    if let (Some(f), Some(err)) = (sk.read::<u32>(offs.skc_flags), sk.read::<i32>(offs.sk_err)) {
        ev.sk_flags = f;
        ev.sk_err = err;
        ev.flags |= flags::SOCK_VALID;
    } else if debug_on() && offs.skc_flags != OFFSET_UNKNOWN && offs.sk_err != OFFSET_UNKNOWN {
        rare!(
            "{}: skc_flags or sk_err unreadable, skaddr 0x{:x}",
            P::NAME,
            sk.addr()
        );
    }
}

/// The 4-tuple from `struct sock_common`, which full, request and timewait sockets share.
/// Returns false when the family cannot be read or is neither IPv4 nor IPv6 (these programs see
/// only TCP sockets, so the read went wrong): the event is skipped, and counted as unreadable.
#[inline(always)]
fn fill_tuple_common<P: Prog>(ev: &mut Event, sk: Fields, offs: &SockOffsets) -> bool {
    let read = read_tuple_common::<P>(ev, sk, offs);
    if !read {
        count_lost(lost::UNREADABLE);
    }
    read
}

#[inline(always)]
fn read_tuple_common<P: Prog>(ev: &mut Event, sk: Fields, offs: &SockOffsets) -> bool {
    if sk.probed() && offs.fast & fast::COMMON_HEAD != 0 {
        // One read for addresses, ports and family (layout verified by the agent in BTF).
        let Some(h) = sk.read::<CommonHead>(offs.skc_daddr) else {
            rare!(
                "{}: sock_common head unreadable, skaddr 0x{:x}",
                P::NAME,
                sk.addr()
            );
            return false;
        };
        ev.family = h.family;
        ev.sport = h.num;
        ev.dport = u16::from_be(h.dport);
        if h.family == AF_INET {
            ev.saddr[..4].copy_from_slice(&h.rcv_saddr);
            ev.daddr[..4].copy_from_slice(&h.daddr);
            return true;
        }
    } else {
        let Some(family) = sk.read::<u16>(offs.skc_family) else {
            if offs.skc_family != OFFSET_UNKNOWN {
                rare!(
                    "{}: skc_family unreadable, skaddr 0x{:x}",
                    P::NAME,
                    sk.addr()
                );
            }
            return false;
        };
        ev.family = family;
        ev.sport = sk.read::<u16>(offs.skc_num).unwrap_or(0);
        ev.dport = u16::from_be(sk.read::<u16>(offs.skc_dport).unwrap_or(0));
        if family == AF_INET {
            if let Some(a) = sk.read_v4(offs.skc_rcv_saddr) {
                ev.saddr[..4].copy_from_slice(&a);
            }
            if let Some(a) = sk.read_v4(offs.skc_daddr) {
                ev.daddr[..4].copy_from_slice(&a);
            }
            return true;
        }
    }
    if ev.family != AF_INET6 {
        rare!(
            "{}: skc_family {} unexpected, skaddr 0x{:x}",
            P::NAME,
            ev.family,
            sk.addr()
        );
        return false;
    }
    if let Some(a) = sk.read_v6(offs.skc_v6_rcv_saddr) {
        ev.saddr = a;
    }
    if let Some(a) = sk.read_v6(offs.skc_v6_daddr) {
        ev.daddr = a;
    }
    true
}

/// `inet_sock_set_state(const struct sock *sk, int oldstate, int newstate)` through BTF.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_btf(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let oldstate: i32 = ctx.arg(1);
    let newstate: i32 = ctx.arg(2);
    // Never null here, but some kernels type tracepoint arguments as maybe-null, and the
    // verifier then wants the check before the pointer goes to a helper.
    if sk.is_null() {
        return 0;
    }
    let offs = offsets();
    let fields = match Fields::of_btf_sock::<StateBtf>(sk, &offs) {
        Ok(Some(f)) => f,
        // Not TCP (SCTP, say, changes state through the same tracepoint): not ours.
        Ok(None) => return 0,
        Err(Unreadable) => {
            count_lost(lost::UNREADABLE);
            return 0;
        }
    };
    let mut ev = Event::ZERO;
    if !fill_tuple_common::<StateBtf>(&mut ev, fields, &offs) {
        return 0;
    }
    ev.kind = kind::STATE;
    ev.oldstate = oldstate as u8;
    ev.newstate = newstate as u8;
    ev.skaddr = sk as u64;
    if !wanted(&ev) {
        return 0;
    }
    let Some(avail) = room::<StateBtf, _>(&ev) else {
        return 0;
    };
    fill_task_and_sock::<StateBtf>(&mut ev, fields, &offs);
    emit::<StateBtf, _>(&ev, avail);
    0
}

/// Retransmissions, resets sent and resets received share one shape: the socket is argument 0
/// and its current state is read from it.
#[inline(always)]
fn sock_event<P: Prog>(ctx: &BtfTracePointContext, event_kind: u8) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    if sk.is_null() {
        // A RST sent for no socket (e.g. a SYN to a closed port): nothing to attach it to.
        return 0;
    }
    let offs = offsets();
    let mut ev = Event::ZERO;
    // SAFETY: a valid, aligned static, written only by the loader before the program runs.
    // Volatile so the compiler does not fold the placeholder that the loader rewrites.
    let state_off = unsafe { core::ptr::read_volatile(&SKC_STATE_OFFSET) };
    // Without the state we cannot tell a timewait socket (whose struct ends early) from a full
    // one, so nothing past sock_common may be read: skip the event.
    // SAFETY: a u8 accepts any byte; the probed read tolerates any address.
    let Some(state) = (unsafe { read_at::<u8>(sk, state_off) }) else {
        count_lost(lost::UNREADABLE);
        rare!(
            "{}: skc_state unreadable, skaddr 0x{:x}",
            P::NAME,
            number(sk as u64)
        );
        return 0;
    };
    ev.kind = event_kind;
    ev.oldstate = state;
    ev.newstate = state;
    if state == TCP_TIME_WAIT || state == TCP_NEW_SYN_RECV {
        // A timewait or request socket: only its sock_common part exists (no sk_protocol, no
        // sequence fields), and these tracepoints only see TCP ones.
        if !fill_tuple_common::<P>(&mut ev, Fields::Probed(sk), &offs) {
            return 0;
        }
        ev.skaddr = sk as u64;
        if !wanted(&ev) {
            return 0;
        }
        let Some(avail) = room::<P, _>(&ev) else {
            return 0;
        };
        // SAFETY: the helper takes no arguments and only reads the clock.
        ev.ts_ns = unsafe { bpf_ktime_get_ns() };
        ev.pid = (bpf_get_current_pid_tgid() >> 32) as u32;
        ev.netns = netns_of::<P>(Fields::Probed(sk), &offs);
        emit::<P, _>(&ev, avail);
        return 0;
    }
    let Ok(Some(fields)) = Fields::of_btf_sock::<P>(sk, &offs) else {
        // These tracepoints see TCP sockets only, and this state is not a timewait or request
        // socket's: the state, or the socket, is not what it should be (or its protocol could
        // not be read). Skipped for a field misread: counted so.
        count_lost(lost::UNREADABLE);
        rare!(
            "{}: skc_state {} but not a full TCP socket, skaddr 0x{:x}",
            P::NAME,
            state,
            number(sk as u64)
        );
        return 0;
    };
    if !fill_tuple_common::<P>(&mut ev, fields, &offs) {
        return 0;
    }
    ev.skaddr = sk as u64;
    if !wanted(&ev) {
        return 0;
    }
    let Some(avail) = room::<P, _>(&ev) else {
        return 0;
    };
    fill_task_and_sock::<P>(&mut ev, fields, &offs);
    emit::<P, _>(&ev, avail);
    0
}

#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb_btf(ctx: BtfTracePointContext) -> i32 {
    sock_event::<RetransmitBtf>(&ctx, kind::RETRANSMIT)
}

#[btf_tracepoint(function = "tcp_send_reset")]
pub fn tcp_send_reset_btf(ctx: BtfTracePointContext) -> i32 {
    sock_event::<SendResetBtf>(&ctx, kind::SEND_RESET)
}

#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn tcp_receive_reset_btf(ctx: BtfTracePointContext) -> i32 {
    sock_event::<ReceiveResetBtf>(&ctx, kind::RECV_RESET)
}

/// The timewait offsets, each field read on its own (see [`offsets`]).
#[inline(always)]
fn tw_offsets() -> TwOffsets {
    let p = &raw const TW_OFFSETS;
    macro_rules! field {
        ($f:ident) => {
            // SAFETY: `p` points to a static, valid, aligned and initialised for the whole
            // program, and frozen at load.
            unsafe { core::ptr::read_volatile(&raw const (*p).$f) }
        };
    }
    TwOffsets {
        tw_timer: field!(tw_timer),
        tw_substate: field!(tw_substate),
        timer_function: field!(timer_function),
        timer_expires: field!(timer_expires),
        net_refs: field!(net_refs),
    }
}

/// The timer tracepoints see every kernel timer, thousands a second on a busy host: only the
/// timers whose function is `tw_timer_handler` go further, and the test for that is one plain
/// load (checked by the verifier against `struct timer_list` in BTF) and one comparison.
#[inline(always)]
fn tw_timer<P: Prog>(ctx: &BtfTracePointContext, event_kind: u8) -> i32 {
    let timer: *const u8 = ctx.arg(0);
    if timer.is_null() {
        return 0;
    }
    // SAFETY: valid, aligned statics, written only by the loader before the program runs
    // (frozen, so the verifier knows their values). Volatile so the compiler does not fold the
    // placeholders that the loader rewrites.
    let (handler, function_off) = unsafe {
        (
            core::ptr::read_volatile(&TW_TIMER_HANDLER),
            core::ptr::read_volatile(&raw const TW_OFFSETS.timer_function),
        )
    };
    if function_off == OFFSET_UNKNOWN {
        return 0;
    }
    // SAFETY: `timer` is the tracepoint's BTF-typed `struct timer_list *`, checked non-null; the
    // verifier checks this load against that type (a bad offset fails the load, never a read of
    // the wrong field), and the JIT turns a fault into a zero.
    let function =
        unsafe { core::ptr::read_volatile(timer.add(function_off as usize) as *const u64) };
    if function != handler {
        return 0;
    }
    tw_event::<P>(timer, event_kind);
    0
}

/// The event of a timewait socket's timer: the socket is the timer's container.
#[inline(always)]
fn tw_event<P: Prog>(timer: *const u8, event_kind: u8) {
    let to = tw_offsets();
    let offs = offsets();
    if to.tw_timer == OFFSET_UNKNOWN {
        return;
    }
    // A plain number: the socket is reached by probe reads, and pointer arithmetic backwards
    // from a BTF-typed pointer is not something the verifier types.
    let timer = number(timer as u64);
    let tw = timer.wrapping_sub(u64::from(to.tw_timer)) as *const u8;
    let sk = Fields::Probed(tw);
    let mut tuple = Event::ZERO;
    if !fill_tuple_common::<P>(&mut tuple, sk, &offs) {
        return;
    }
    // SAFETY: a valid, aligned static, written only by the loader before the program runs.
    if unsafe { core::ptr::read_volatile(&FILTER_ON) } != 0 {
        // A timewait socket belongs to the connection it continues: its ports decide.
        // SAFETY: only presence is used; the reference is dropped at once.
        let port_hit = |p: u16| p != 0 && unsafe { FILTER_PORTS.get(p) }.is_some();
        if !port_hit(tuple.sport) && !port_hit(tuple.dport) {
            return;
        }
    }
    let mut ev = TwTimerEvent::ZERO;
    ev.kind = event_kind;
    ev.twaddr = tw as u64;
    let Some(avail) = room::<P, _>(&ev) else {
        return;
    };
    ev.family = tuple.family;
    ev.sport = tuple.sport;
    ev.dport = tuple.dport;
    ev.saddr = tuple.saddr;
    ev.daddr = tuple.daddr;
    // SAFETY: a u8 and a u64 accept any bytes; the probed read tolerates any address.
    ev.substate = unsafe { read_at::<u8>(tw, to.tw_substate) }.unwrap_or(0);
    // SAFETY: as above.
    ev.expires = unsafe { read_at::<u64>(timer as *const u8, to.timer_expires) }.unwrap_or(0);
    // SAFETY: the helpers take no arguments and only read clocks.
    ev.jiffies = unsafe { bpf_jiffies64() };
    // SAFETY: as above.
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    ev.netns = netns_of::<P>(sk, &offs);
    // Whether the namespace is being removed (its count at zero): the end that tells a purge
    // from a RST.
    if let Some(net) = sk.read::<u64>(offs.skc_net).filter(|&n| n != 0) {
        // SAFETY: a u32 accepts any bytes; the probed read tolerates any address.
        if let Some(refs) = unsafe { read_at::<u32>(net as *const u8, to.net_refs) } {
            ev.net_refs = refs;
        }
    }
    emit::<P, _>(&ev, avail);
}

#[btf_tracepoint(function = "timer_start")]
pub fn tw_timer_start(ctx: BtfTracePointContext) -> i32 {
    tw_timer::<TwStart>(&ctx, kind::TW_START)
}

#[btf_tracepoint(function = "timer_expire_entry")]
pub fn tw_timer_expire(ctx: BtfTracePointContext) -> i32 {
    tw_timer::<TwExpire>(&ctx, kind::TW_EXPIRE)
}

#[btf_tracepoint(function = "timer_cancel")]
pub fn tw_timer_cancel(ctx: BtfTracePointContext) -> i32 {
    tw_timer::<TwCancel>(&ctx, kind::TW_CANCEL)
}

/// The classic tracepoint, for kernels without BTF: the record carries the 4-tuple itself, at
/// offsets the agent read from the tracepoint's format file.
#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state_tp(ctx: TracePointContext) -> u32 {
    // SAFETY: a valid, aligned static of plain integers, written only by the loader before the
    // program runs. Volatile so the compiler does not fold the placeholders.
    let tp = unsafe { core::ptr::read_volatile(&TP_OFFSETS) };
    if try_tracepoint(&ctx, &tp) == Err(Unreadable) {
        // A record whose fields (or even its protocol) could not be read: counted as such, not
        // dropped silently.
        count_lost(lost::UNREADABLE);
    }
    0
}

/// A field of the classic tracepoint's record, at an offset from its format file. Only plain
/// integers and arrays of them are read.
#[inline(always)]
fn tp_read<T>(ctx: &TracePointContext, off: u32) -> Option<T> {
    if off == OFFSET_UNKNOWN {
        return None;
    }
    // SAFETY: `read_at` is `bpf_probe_read_kernel` at the record's address plus `off`: any
    // address is tolerated (a fault is an error), and every `T` used accepts any bytes.
    unsafe { ctx.read_at::<T>(off as usize).ok() }
}

#[derive(PartialEq, Eq)]
struct Unreadable;

#[inline(always)]
fn try_tracepoint(ctx: &TracePointContext, tp: &TracepointOffsets) -> Result<(), Unreadable> {
    match tp_read::<u16>(ctx, tp.protocol) {
        Some(IPPROTO_TCP) => {}
        Some(_) => return Ok(()),
        None => {
            rare!("{}: protocol unreadable", StateTp::NAME);
            return Err(Unreadable);
        }
    }
    read_tracepoint(ctx, tp).ok_or(Unreadable)
}

#[inline(always)]
fn read_tracepoint(ctx: &TracePointContext, tp: &TracepointOffsets) -> Option<()> {
    let Some(sk) = tp_read::<u64>(ctx, tp.skaddr) else {
        rare!("{}: skaddr unreadable", StateTp::NAME);
        return None;
    };
    // A field of the record; when it cannot be read, a debug record names it.
    macro_rules! field {
        ($t:ty, $name:ident) => {
            match tp_read::<$t>(ctx, tp.$name) {
                Some(v) => v,
                None => {
                    rare!(
                        "{}: {} unreadable, skaddr 0x{:x}",
                        StateTp::NAME,
                        stringify!($name),
                        sk
                    );
                    return None;
                }
            }
        };
    }
    let mut ev = Event::ZERO;
    ev.family = field!(u16, family);
    ev.oldstate = field!(i32, oldstate) as u8;
    ev.newstate = field!(i32, newstate) as u8;
    ev.sport = field!(u16, sport);
    ev.dport = field!(u16, dport);
    if ev.family == AF_INET {
        let s: [u8; 4] = field!([u8; 4], saddr);
        let d: [u8; 4] = field!([u8; 4], daddr);
        ev.saddr[..4].copy_from_slice(&s);
        ev.daddr[..4].copy_from_slice(&d);
    } else {
        ev.saddr = field!([u8; 16], saddr_v6);
        ev.daddr = field!([u8; 16], daddr_v6);
    }
    ev.kind = kind::STATE;
    ev.skaddr = sk;
    if !wanted(&ev) {
        return Some(());
    }
    let Some(avail) = room::<StateTp, _>(&ev) else {
        return Some(());
    };
    fill_task_and_sock::<StateTp>(&mut ev, Fields::Probed(sk as *const u8), &offsets());
    emit::<StateTp, _>(&ev, avail);
    Some(())
}

// Nothing here may panic in practice: a panic path left in the object would be this loop, and
// the verifier refuses a program with an unbounded loop.
#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// GPL-compatible, as the kernel requires of programs calling GPL-only helpers such as
// bpf_probe_read_kernel.
#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
