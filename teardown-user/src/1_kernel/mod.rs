//! Stage 1, kernel: the first stage of the event pipeline.
//!
//! The kernel side, seen from the agent: checks the host can run the programs, loads the
//! embedded eBPF object, resolves kernel facts (BTF offsets, tracepoint layout), attaches, and
//! streams ring-buffer records.

pub mod btf;
pub mod caps;
pub mod clock;
pub mod files;
mod preflight;
mod stream;
pub mod tracefs;

use std::{
    cell::Cell,
    os::fd::{AsFd as _, AsRawFd as _},
    path::Path,
    time::Instant,
};

use aya::{
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, TracePoint},
    Ebpf, EbpfLoader,
};
use aya_log::EbpfLogger;
use teardown_common::{fast, lost, SockOffsets, TracepointOffsets, TwOffsets, OFFSET_UNKNOWN};

pub use preflight::{check_kernel_version, check_privileges};
pub use stream::EventStream;

/// The compiled kernel programs, embedded at build time by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/teardown"));

/// Which hook carries the state changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Hook {
    /// The BTF raw tracepoint when the kernel has BTF, else the classic tracepoint.
    Auto,
    /// `tp_btf/inet_sock_set_state`: needs kernel BTF; gives sequence numbers and flags.
    Btf,
    /// `tracepoint/sock/inet_sock_set_state`: needs tracefs; state changes and 4-tuples only.
    Tracepoint,
}

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("cannot read the kernel programs' debug records: {0}")]
    Log(#[source] aya_log::Error),
    #[error(transparent)]
    Preflight(#[from] preflight::PreflightError),
    #[error("--hook btf needs kernel BTF, and {path} is not readable; use --hook tracepoint, or a kernel built with CONFIG_DEBUG_INFO_BTF=y", path = btf::VMLINUX_BTF)]
    NoBtf,
    #[error(transparent)]
    Btf(#[from] btf::BtfError),
    #[error(
        "this kernel numbers TCP states otherwise than teardown was built for ({}): its events \
         would be misread; please report this kernel's version",
        .0.iter()
            .map(|(name, theirs, ours)| format!("{name} is {theirs} here, {ours} in teardown"))
            .collect::<Vec<_>>()
            .join(", ")
    )]
    StateNumbers(Vec<(&'static str, u32, u8)>),
    #[error(transparent)]
    Tracefs(#[from] tracefs::TracefsError),
    #[error("loading the eBPF object failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error(
        "the eBPF object has no program or map named {0} (a build mismatch: rebuild teardown)"
    )]
    Missing(&'static str),
    #[error("{what} failed: {source}")]
    Program {
        what: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("cannot poll the ring buffer (is this running inside a tokio runtime?): {0}")]
    Stream(std::io::Error),
    #[error("reading the map {name} failed: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

impl KernelError {
    /// When the verifier refused a program: the line of its log that says why (the whole log,
    /// often thousands of lines, goes to the debug log instead).
    pub fn verifier_refusal(&self) -> Option<String> {
        let KernelError::Program {
            source:
                aya::programs::ProgramError::LoadError {
                    io_error,
                    verifier_log,
                },
            ..
        } = self
        else {
            return None;
        };
        let log = verifier_log.to_string();
        Some(match verifier_reason(&log) {
            Some(line) => format!("{io_error}: {line}"),
            None => io_error.to_string(),
        })
    }
}

/// The verifier's reason in its log: the last line before its closing statistics.
fn verifier_reason(log: &str) -> Option<&str> {
    const STATS: [&str; 4] = [
        "processed ",
        "verification time",
        "stack depth",
        "-- END PROG LOAD LOG --",
    ];
    log.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty() && !STATS.iter().any(|s| l.starts_with(s)))
}

/// Options of the kernel side.
#[derive(Clone, Debug)]
pub struct ProbeConfig {
    pub hook: Hook,
    /// Ring buffer size in bytes (a power of two, a multiple of the page size).
    pub ring_bytes: u32,
    /// Only sockets with one of these local or remote ports (none: all), filtered in the
    /// kernel. At most [`MAX_FILTER_PORTS`].
    pub ports: Vec<u16>,
    /// Let the BTF programs read socket fields with plain loads the verifier checks against
    /// BTF (several times cheaper than a probe read each). When the verifier refuses them,
    /// the programs are loaded again with probe reads and a note says so; false asks for
    /// probe reads from the start.
    pub direct_loads: bool,
    /// Load the programs with their debug records on (`-vv`), and read them ([`KernelLog`]).
    /// Off, the rare-path checks behind those records are dead code the verifier removes.
    pub kernel_log: bool,
    /// Follow timewait sockets through their timer's tracepoints. False leaves them out as a
    /// kernel that refuses them would (sock_diag polling then follows what it can).
    pub timewait_timers: bool,
    /// Sockets the kernel filter remembers as matched (with [`ProbeConfig::ports`]): past
    /// this many, the least recently used is evicted and its last events (those with a zero
    /// local port) no longer pass; each eviction is counted.
    pub port_table: u32,
    /// Faults to inject, for the tests of the loss counters only (see [`Fault`]).
    pub faults: Vec<Fault>,
}

/// A fault the loader injects into the kernel programs' settings, so that a test can produce
/// on a real kernel each loss the programs count, which a healthy host does not produce on
/// demand. Not for use otherwise: the trace then misses events on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The programs are told the offset of `skc_state` is unknown: every retransmission and
    /// reset then fails to read the socket's state, as a fault would, and is counted as
    /// unreadable. (A real offset past the end of the socket is no sure fault: within 4 GiB of
    /// a slab object, memory is usually mapped, and the read returns another object's bytes.)
    Unreadable,
    /// The programs read the state of retransmissions and resets at the offset of the local
    /// port: the low byte of a port, often no TCP state number (0 once the socket let its port
    /// go), reaches the agent, whose decoder refuses the record.
    Undecodable,
    /// The programs are told the ring buffer is far larger than it is, so they never see the
    /// agent behind: once the ring buffer is full, reservations fail.
    RingFull,
}

/// Ports the kernel filter holds at most (the size of its map).
pub const MAX_FILTER_PORTS: usize = teardown_common::filter::MAX_PORTS as usize;

/// The matched-socket table's size by default ([`ProbeConfig::port_table`]).
pub const DEFAULT_PORT_TABLE: u32 = teardown_common::filter::DEFAULT_PORT_TABLE;

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            hook: Hook::Auto,
            ring_bytes: 64 << 20,
            ports: Vec::new(),
            direct_loads: true,
            kernel_log: false,
            timewait_timers: true,
            port_table: DEFAULT_PORT_TABLE,
            faults: Vec::new(),
        }
    }
}

/// What the loaded probe can see, for the user and for the output.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Capabilities {
    /// "btf" or "tracepoint".
    pub hook: &'static str,
    /// Sequence numbers and socket flags are read at each event.
    pub seq: bool,
    /// Retransmissions and resets are traced.
    pub retransmits_and_resets: bool,
    /// Every reset the kernel sends is traced, also those of TIME_WAIT and request sockets (Linux
    /// 6.10 and later); else only those of full sockets.
    pub every_reset: bool,
    /// Socket fields are read with plain loads checked by the verifier, not probe reads.
    pub direct_loads: bool,
    /// Events carry the socket's network namespace.
    pub netns: bool,
    /// Timewait sockets are followed through their timer's tracepoints, in every namespace,
    /// as it happens (else only sock_diag polling follows them).
    pub timewait_timers: bool,
    /// Things the user should know (fallbacks, missing fields), in plain words.
    pub notes: Vec<String>,
}

/// The loaded and attached kernel programs.
pub struct Probe {
    ebpf: Ebpf,
    lost: PerCpuArray<MapData, u64>,
    not_judged: PerCpuArray<MapData, u64>,
    matched: BpfHashMap<MapData, u64, u8>,
    port_table: u32,
    /// The matched-socket table's evictions, as last counted.
    evictions: Cell<Evictions>,
    kernel_log: Option<KernelLog>,
    pub caps: Capabilities,
}

/// What the last count of the matched-socket table found.
#[derive(Clone, Copy, Debug)]
struct Evictions {
    /// The programs' counts of keys added and removed when the table was counted.
    added: u64,
    removed: u64,
    evicted: u64,
    at: Option<Instant>,
}

/// The kernel programs' debug records (aya-log's ring buffer), attached only when
/// [`ProbeConfig::kernel_log`] asks for them.
pub struct KernelLog(EbpfLogger<&'static dyn log::Log>);

impl KernelLog {
    /// Hands the records waiting in the kernel to the `log` crate's logger (target
    /// `teardown::ebpf`, debug level). They are rare: reading them on a timer is enough.
    pub fn flush(&mut self) {
        self.0.flush();
    }
}

/// The programs' names in the object, for the load report.
const PROGRAMS: [&str; 8] = [
    "inet_sock_set_state_btf",
    "tcp_retransmit_skb_btf",
    "tcp_send_reset_btf",
    "tcp_receive_reset_btf",
    "inet_sock_set_state_tp",
    "tw_timer_start",
    "tw_timer_expire",
    "tw_timer_cancel",
];

/// The timewait timer programs and their tracepoints.
const TW_PROGRAMS: [(&str, &str); 3] = [
    ("tw_timer_start", "timer_start"),
    ("tw_timer_expire", "timer_expire_entry"),
    ("tw_timer_cancel", "timer_cancel"),
];

/// The function of every timewait socket's timer.
const TW_HANDLER: &str = "tw_timer_handler";

/// The address of kernel symbol `name` in /proc/kallsyms, None when absent or hidden (a
/// kptr_restrict that shows zeros).
pub fn kallsyms_address(kallsyms: &str, name: &str) -> Option<u64> {
    kallsyms.lines().find_map(|l| {
        let mut f = l.split_ascii_whitespace();
        let (addr, _kind, sym) = (f.next()?, f.next()?, f.next()?);
        // Only the kernel's own symbol, not a module's of the same name ("sym [module]").
        (sym == name && f.next().is_none())
            .then(|| u64::from_str_radix(addr, 16).ok())
            .flatten()
            .filter(|&a| a != 0)
    })
}

impl Probe {
    /// Checks the host, loads and attaches. Errors say what to do.
    pub fn load(cfg: ProbeConfig) -> Result<Probe, KernelError> {
        preflight::check_kernel_version()?;
        preflight::check_privileges()?;
        preflight::raise_memlock_limit();

        let btf_path = Path::new(btf::VMLINUX_BTF);
        let mut caps = Capabilities::default();
        // The kernel's BTF, parsed twice: by btf-rs for field offsets, by aya to load tp_btf.
        let resolved = match btf::resolve(btf_path) {
            Ok(r) => Some(r),
            Err(_) if cfg.hook == Hook::Btf => return Err(KernelError::NoBtf),
            Err(e) => {
                caps.notes.push(format!(
                    "{e}: using the classic tracepoint; events carry no sequence numbers or \
                     socket flags, and retransmissions and resets are not traced"
                ));
                None
            }
        };
        let kernel_btf = match (&resolved, cfg.hook) {
            (None, _) | (_, Hook::Tracepoint) => None,
            (Some(_), hook) => match aya::Btf::from_sys_fs() {
                Ok(b) => Some(b),
                Err(_) if hook == Hook::Btf => return Err(KernelError::NoBtf),
                Err(e) => {
                    caps.notes.push(format!(
                        "the kernel's BTF cannot be loaded for tp_btf ({e}): using the classic \
                         tracepoint; retransmissions and resets are not traced"
                    ));
                    None
                }
            },
        };
        let use_btf = kernel_btf.is_some();

        let (sock_offsets, skc_state) = match &resolved {
            Some(r) => {
                match &r.state_numbers {
                    btf::StateNumbers::Match => {}
                    btf::StateNumbers::Unknown => caps.notes.push(
                        "this kernel's BTF has no enum of TCP states: the state numbers could \
                         not be checked"
                            .into(),
                    ),
                    btf::StateNumbers::Differ(d) => {
                        return Err(KernelError::StateNumbers(d.clone()))
                    }
                }
                if !r.missing.is_empty() {
                    let lacking = match (r.has_seq(), r.offsets.skc_flags != OFFSET_UNKNOWN) {
                        (true, true) => "part of their",
                        (true, false) => "socket-flag",
                        (false, true) => "sequence",
                        (false, false) => "sequence or socket-flag",
                    };
                    caps.notes.push(format!(
                        "not usable in this kernel's BTF: {}; events carry no {lacking} data",
                        r.missing.join(", ")
                    ));
                }
                caps.seq = r.has_seq();
                caps.netns =
                    r.offsets.skc_net != OFFSET_UNKNOWN && r.offsets.net_inum != OFFSET_UNKNOWN;
                if !caps.netns {
                    caps.notes.push(
                        "this kernel's BTF has no network namespace inode for sockets: events \
                         carry no namespace, and --netns is unavailable"
                            .into(),
                    );
                }
                (r.offsets, r.skc_state)
            }
            None => (SockOffsets::UNKNOWN, OFFSET_UNKNOWN),
        };
        let tp_offsets = if use_btf {
            TracepointOffsets::UNKNOWN
        } else {
            tracefs::ensure_mounted()?;
            tracefs::tracepoint_offsets()?
        };

        // The timewait timer programs: what they need, or why they cannot be used.
        let tw = match (&resolved, use_btf) {
            _ if !cfg.timewait_timers => Err("left out by --timewait-source sock-diag".to_owned()),
            (None, _) | (_, false) => Err("they need the BTF programs".to_owned()),
            (Some(r), true) if !r.tw.complete() => Err(
                "this kernel's BTF lacks inet_timewait_sock.tw_timer, tw_substate or timer_list \
                 fields"
                    .to_owned(),
            ),
            (Some(r), true) => files::read_to_string("/proc/kallsyms", files::TABLE)
                .ok()
                .and_then(|k| kallsyms_address(&k, TW_HANDLER))
                .map(|a| (r.tw, a))
                .ok_or_else(|| {
                    // Addresses read as zero without CAP_SYSLOG, unless perf_event_paranoid
                    // is 1 or lower.
                    let why = caps::lacking_note(caps::Capability::Syslog)
                        .map(|n| format!(": {n}"))
                        .unwrap_or_default();
                    format!("/proc/kallsyms shows no address for {TW_HANDLER}{why}")
                }),
        };
        let plan = Plan {
            sock_offsets,
            skc_state,
            tp_offsets,
            tw: tw.as_ref().ok().copied(),
            kernel_btf: kernel_btf.as_ref(),
            resolved: resolved.is_some(),
            every_reset: resolved.as_ref().is_some_and(|r| r.every_reset_traced),
        };
        let direct = cfg.direct_loads && kernel_btf.is_some();
        let (mut ebpf, direct) = match plan.load_and_attach(&cfg, direct, &mut caps) {
            Ok(ebpf) => (ebpf, direct),
            Err(e) if direct && e.verifier_refusal().is_some() => {
                let reason = e.verifier_refusal().unwrap_or_default();
                log::debug!("verifier refusal of the plain-load programs: {e}");
                caps.notes.push(format!(
                    "the verifier refused plain loads of socket fields ({reason}); reading them \
                     with bpf_probe_read_kernel, which costs more per event"
                ));
                (plan.load_and_attach(&cfg, false, &mut caps)?, false)
            }
            Err(e) => return Err(e),
        };
        caps.direct_loads = direct;
        // (A refusal at attach time was said where it happened.)
        if let Err(why) = tw {
            caps.notes.push(format!(
                "{TIMEWAIT_NOT_FROM_KERNEL} ({why}): {TIMEWAIT_COST}"
            ));
        }

        if !cfg.ports.is_empty() {
            let map = ebpf
                .map_mut("FILTER_PORTS")
                .ok_or(KernelError::Missing("FILTER_PORTS"))?;
            let mut ports: aya::maps::HashMap<_, u16, u8> = aya::maps::HashMap::try_from(map)
                .map_err(|source| KernelError::Map {
                    name: "FILTER_PORTS",
                    source,
                })?;
            for &p in cfg.ports.iter().take(MAX_FILTER_PORTS) {
                ports.insert(p, 1, 0).map_err(|source| KernelError::Map {
                    name: "FILTER_PORTS",
                    source,
                })?;
            }
        }

        let lost_map = ebpf.take_map("LOST").ok_or(KernelError::Missing("LOST"))?;
        let lost = PerCpuArray::try_from(lost_map).map_err(|source| KernelError::Map {
            name: "LOST",
            source,
        })?;
        let not_judged_map = ebpf
            .take_map("NOT_JUDGED")
            .ok_or(KernelError::Missing("NOT_JUDGED"))?;
        let not_judged =
            PerCpuArray::try_from(not_judged_map).map_err(|source| KernelError::Map {
                name: "NOT_JUDGED",
                source,
            })?;
        let matched_map = ebpf
            .take_map("MATCHED")
            .ok_or(KernelError::Missing("MATCHED"))?;
        let matched = BpfHashMap::try_from(matched_map).map_err(|source| KernelError::Map {
            name: "MATCHED",
            source,
        })?;
        report_programs(&ebpf, cfg.kernel_log);
        let kernel_log = if cfg.kernel_log {
            let logger = EbpfLogger::init(&mut ebpf).map_err(KernelError::Log)?;
            log::debug!("reading the kernel programs' debug records (target teardown::ebpf)");
            Some(KernelLog(logger))
        } else {
            None
        };
        Ok(Probe {
            ebpf,
            lost,
            not_judged,
            matched,
            port_table: cfg.port_table,
            evictions: Cell::new(Evictions {
                added: 0,
                removed: 0,
                evicted: 0,
                at: None,
            }),
            kernel_log,
            caps,
        })
    }

    /// The kernel programs' debug records, when [`ProbeConfig::kernel_log`] asked for them.
    /// Call once.
    pub fn kernel_log(&mut self) -> Option<KernelLog> {
        self.kernel_log.take()
    }

    /// The ring buffer, as an async stream of records. Call once.
    pub fn events(&mut self) -> Result<EventStream, KernelError> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .ok_or(KernelError::Missing("EVENTS"))?;
        let ring = RingBuf::try_from(map).map_err(|source| KernelError::Map {
            name: "EVENTS",
            source,
        })?;
        EventStream::new(ring).map_err(KernelError::Stream)
    }

    /// Events the kernel programs did not deliver, by cause, summed over CPUs, since load.
    ///
    /// The matched-socket table is counted again only when the programs added or removed keys
    /// since its last count, at most once a second (a count is a system call per key), and
    /// whenever `final_read` asks; its evictions are exact as of that count.
    pub fn lost(&self, final_read: bool) -> Result<LostCounts, KernelError> {
        let counter = |i: u32| self.counter(i);
        let misses = self.recursion_misses();
        let sum = |timers: bool| {
            misses
                .iter()
                .filter(|(name, _)| TW_PROGRAMS.iter().any(|(p, _)| p == name) == timers)
                .map(|(_, n)| n)
                .sum()
        };
        Ok(LostCounts {
            ring_full: counter(lost::RING_FULL)?,
            unreadable: counter(lost::UNREADABLE)?,
            behind: counter(lost::BEHIND)?,
            port_table_evicted: counter(lost::PORT_TABLE_REFUSED)?
                + self.port_table_evicted(final_read)?,
            recursion: sum(false),
            timer_recursion: sum(true),
        })
    }

    fn counter(&self, i: u32) -> Result<u64, KernelError> {
        let per_cpu = self.lost.get(&i, 0).map_err(|source| KernelError::Map {
            name: "LOST",
            source,
        })?;
        Ok(per_cpu.iter().sum())
    }

    /// The keys the LRU table of matched sockets evicted: nothing but the programs adds or
    /// removes keys, and they count each key they add and each they remove, so the keys
    /// missing from the table are the evicted ones. The count of keys is only exact while no
    /// key comes or goes: the counters are read before and after it, and a count they do not
    /// agree around is tried again (three times), else the last exact figure stands.
    fn port_table_evicted(&self, final_read: bool) -> Result<u64, KernelError> {
        let last = self.evictions.get();
        let moved = |a: u64, r: u64| a != last.added || r != last.removed;
        let (added, removed) = (
            self.counter(lost::MATCHED_ADDED)?,
            self.counter(lost::MATCHED_REMOVED)?,
        );
        let due = last.at.is_none_or(|t| t.elapsed().as_secs() >= 1);
        if !moved(added, removed) || !(due || final_read) {
            return Ok(last.evicted);
        }
        let (mut a, mut r) = (added, removed);
        for _ in 0..3 {
            // Bounded: a key removed while the walk stands on it restarts the walk.
            let present = self
                .matched
                .keys()
                .take(2 * self.port_table as usize + 1)
                .take_while(Result::is_ok)
                .count() as u64;
            let (a2, r2) = (
                self.counter(lost::MATCHED_ADDED)?,
                self.counter(lost::MATCHED_REMOVED)?,
            );
            if (a2, r2) == (a, r) {
                let evicted = a
                    .saturating_sub(r)
                    .saturating_sub(present)
                    .max(last.evicted);
                self.evictions.set(Evictions {
                    added: a,
                    removed: r,
                    evicted,
                    at: Some(Instant::now()),
                });
                return Ok(evicted);
            }
            (a, r) = (a2, r2);
        }
        Ok(last.evicted)
    }

    /// Runs of each program that the kernel skipped because a program of ours was already
    /// running on that CPU (`recursion_misses` of its info, Linux 5.12 and later; 0 before),
    /// for the programs loaded.
    pub fn recursion_misses(&self) -> Vec<(&'static str, u64)> {
        PROGRAMS
            .iter()
            .filter_map(|&name| {
                let fd = self.ebpf.program(name)?.fd().ok()?;
                Some((name, recursion_misses(fd.as_fd().as_raw_fd())?))
            })
            .collect()
    }

    /// The events counted instead of sent while the agent was behind, as (slot, count) for
    /// each slot that counted any (`teardown_common::lost::not_judged_slot`), since load. A
    /// read per slot: call it when [`LostCounts::behind`] moved.
    pub fn not_judged(&self) -> Result<Vec<(u32, u64)>, KernelError> {
        let mut out = Vec::new();
        for slot in 0..lost::NOT_JUDGED_SLOTS {
            let per_cpu = self
                .not_judged
                .get(&slot, 0)
                .map_err(|source| KernelError::Map {
                    name: "NOT_JUDGED",
                    source,
                })?;
            let n: u64 = per_cpu.iter().sum();
            if n > 0 {
                out.push((slot, n));
            }
        }
        Ok(out)
    }
}

/// `recursion_misses` of a program's `struct bpf_prog_info` (include/uapi/linux/bpf.h), read
/// with `BPF_OBJ_GET_INFO_BY_FD`: None when the kernel's info is too short to have it.
fn recursion_misses(prog_fd: std::os::fd::RawFd) -> Option<u64> {
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    // The field's offset in the structure (after run_time_ns and run_cnt), stable as uapi.
    const RECURSION_MISSES: usize = 208;
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    // Larger than any kernel's structure yet: the kernel fills what it has and says how much.
    let mut info = [0u64; 64];
    let mut attr = InfoAttr {
        bpf_fd: u32::try_from(prog_fd).ok()?,
        info_len: std::mem::size_of_val(&info) as u32,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: `attr` is the syscall's `info` variant of `union bpf_attr`, its size passed;
    // `info` points to `info_len` writable bytes that outlive the call, and the rest of them
    // are zero as the kernel requires of bytes beyond its structure.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &mut attr as *mut InfoAttr,
            std::mem::size_of::<InfoAttr>(),
        )
    };
    (rc == 0 && attr.info_len as usize >= RECURSION_MISSES + 8).then(|| info[RECURSION_MISSES / 8])
}

/// Events the kernel programs did not deliver, by cause (see `teardown_common::lost`). The
/// causes added after the first three read 0 from a recording made before them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct LostCounts {
    /// The ring buffer had no room.
    pub ring_full: u64,
    /// Events skipped for a field that could not be read (any hook).
    pub unreadable: u64,
    /// Counted by kind instead of sent, the agent being behind.
    pub behind: u64,
    /// Sockets the matched-socket table of `--port` evicted (or refused): those still open
    /// lose their last events, which have a zero local port. One each, whatever they lost; not
    /// in [`LostCounts::total`], since most evicted sockets have closed and lose nothing.
    pub port_table_evicted: u64,
    /// Runs of the event programs (state changes, retransmits, resets) the kernel skipped, one
    /// of ours being already running on that CPU: each an event lost.
    pub recursion: u64,
    /// Runs of the timewait timer programs skipped so: they see every timer of the kernel,
    /// almost all of them no timewait socket's, so these are not in [`LostCounts::total`].
    #[serde(default)]
    pub timer_recursion: u64,
}

impl LostCounts {
    /// The events lost: those the kernel programs did not send or could not read, and those
    /// the kernel did not let them see.
    pub fn total(&self) -> u64 {
        self.ring_full + self.unreadable + self.behind + self.recursion
    }

    /// Each count the larger of the two (counters only grow; a replay may repeat a report).
    pub fn max(self, o: LostCounts) -> LostCounts {
        LostCounts {
            ring_full: self.ring_full.max(o.ring_full),
            unreadable: self.unreadable.max(o.unreadable),
            behind: self.behind.max(o.behind),
            port_table_evicted: self.port_table_evicted.max(o.port_table_evicted),
            recursion: self.recursion.max(o.recursion),
            timer_recursion: self.timer_recursion.max(o.timer_recursion),
        }
    }
}

/// The start of the note that says timewait sockets are not followed from the kernel.
pub const TIMEWAIT_NOT_FROM_KERNEL: &str =
    "timewait sockets are not followed through their timer's tracepoints";
/// What that costs.
const TIMEWAIT_COST: &str = "only sock_diag polling follows them, in the host's namespace and \
                             those of --timewait-netns, and a timer restart or a short life \
                             between two polls is missed";

/// What the kernel programs are loaded with, resolved once.
struct Plan<'a> {
    /// The timewait timer programs' offsets and `tw_timer_handler`'s address, when they are to
    /// be attached.
    tw: Option<(TwOffsets, u64)>,
    sock_offsets: SockOffsets,
    skc_state: u32,
    tp_offsets: TracepointOffsets,
    /// Present when the BTF programs are to be used.
    kernel_btf: Option<&'a aya::Btf>,
    /// Offsets were resolved from BTF (even if the classic tracepoint is used).
    resolved: bool,
    /// The kernel traces every reset it sends ([`btf::traces_every_reset`]).
    every_reset: bool,
}

impl Plan<'_> {
    /// Loads the object and attaches its programs; `direct` sets [`fast::DIRECT_LOADS`].
    fn load_and_attach(
        &self,
        cfg: &ProbeConfig,
        direct: bool,
        caps: &mut Capabilities,
    ) -> Result<Ebpf, KernelError> {
        let sock_offsets = SockOffsets {
            fast: if direct {
                self.sock_offsets.fast | fast::DIRECT_LOADS
            } else {
                self.sock_offsets.fast & !fast::DIRECT_LOADS
            },
            ..self.sock_offsets
        };
        // Off unless asked: the programs' rare-path checks then vanish at verification.
        let log_level: u8 = if cfg.kernel_log {
            aya_log::Level::Debug.into()
        } else {
            LOG_OFF
        };
        let (tw_offsets, tw_handler) = self.tw.unwrap_or((TwOffsets::UNKNOWN, 0));
        let fault = |f: Fault| cfg.faults.contains(&f);
        let skc_state = if fault(Fault::Unreadable) {
            OFFSET_UNKNOWN
        } else if fault(Fault::Undecodable) {
            self.sock_offsets.skc_num
        } else {
            self.skc_state
        };
        // Past any real ring buffer: the programs never think the agent behind.
        let ring_bytes = if fault(Fault::RingFull) {
            u64::MAX / 2
        } else {
            u64::from(cfg.ring_bytes)
        };
        let mut ebpf = EbpfLoader::new()
            .override_global(aya_log::LEVEL, &log_level, true)
            .override_global("TW_OFFSETS", &tw_offsets, true)
            .override_global("TW_TIMER_HANDLER", &tw_handler, true)
            .override_global("SOCK_OFFSETS", &sock_offsets, true)
            .override_global("TP_OFFSETS", &self.tp_offsets, true)
            .override_global("SKC_STATE_OFFSET", &skc_state, true)
            .override_global("FILTER_ON", &u8::from(!cfg.ports.is_empty()), true)
            .override_global("RING_BYTES", &ring_bytes, true)
            .map_max_entries("EVENTS", cfg.ring_bytes)
            .map_max_entries("MATCHED", cfg.port_table)
            .load(EBPF_OBJECT)?;

        if let Some(kbtf) = self.kernel_btf {
            attach_btf(
                &mut ebpf,
                "inet_sock_set_state_btf",
                "inet_sock_set_state",
                kbtf,
            )?;
            let mut missing = Vec::new();
            for (prog, tp) in [
                ("tcp_retransmit_skb_btf", "tcp_retransmit_skb"),
                ("tcp_send_reset_btf", "tcp_send_reset"),
                ("tcp_receive_reset_btf", "tcp_receive_reset"),
            ] {
                match attach_btf(&mut ebpf, prog, tp, kbtf) {
                    // These share the plain loads of the state program: a verifier refusal
                    // here is worth the retry with probe reads too.
                    Err(e) if direct && e.verifier_refusal().is_some() => return Err(e),
                    Err(e) => {
                        log::debug!("{tp}: {e}");
                        let why = e.verifier_refusal().unwrap_or_else(|| e.to_string());
                        missing.push(format!("{tp} is not traced: {why}"));
                    }
                    Ok(()) => {}
                }
            }
            caps.hook = "btf";
            caps.retransmits_and_resets = missing.is_empty();
            caps.every_reset = caps.retransmits_and_resets && self.every_reset;
            if caps.retransmits_and_resets && !self.every_reset {
                caps.notes.push(
                    "this kernel traces the resets of full sockets only (as before Linux 6.10): \
                     a RST sent from TIME_WAIT, or by a socket still in its handshake, is not \
                     seen"
                        .into(),
                );
            }
            caps.notes.extend(missing);
            if self.tw.is_some() {
                caps.timewait_timers = attach_tw_timers(&mut ebpf, kbtf, caps);
            }
        } else {
            let prog: &mut TracePoint = program(&mut ebpf, "inet_sock_set_state_tp")?;
            prog.load().map_err(|source| KernelError::Program {
                what: "loading the tracepoint program".into(),
                source,
            })?;
            prog.attach("sock", "inet_sock_set_state")
                .map_err(|source| KernelError::Program {
                    what: "attaching to tracepoint sock:inet_sock_set_state".into(),
                    source,
                })?;
            caps.hook = "tracepoint";
            if self.resolved {
                caps.notes.push(
                    "classic tracepoint chosen: retransmissions and resets are not traced".into(),
                );
            }
        }
        Ok(ebpf)
    }
}

/// aya-log's level below its lowest (error): no record is written.
const LOG_OFF: u8 = 0;

/// Says at info level (`-v`) what each attached program is: its instructions after
/// verification and how many the verifier went through, the figures that differ from kernel to
/// kernel and with the debug records on or off.
fn report_programs(ebpf: &Ebpf, kernel_log: bool) {
    let records = if kernel_log { "on" } else { "off" };
    for name in PROGRAMS {
        let Some(info) = ebpf.program(name).and_then(|p| p.info().ok()) else {
            continue;
        };
        let count = |n: Option<u32>| n.map_or_else(|| "?".to_owned(), |n| n.to_string());
        log::info!(
            "loaded {name}: {} instructions, {} verified, debug records {records}",
            // 8 bytes an instruction, as the kernel translated it.
            count(info.size_translated().map(|b| b / 8)),
            count(info.verified_instruction_count()),
        );
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, KernelError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let p = ebpf.program_mut(name).ok_or(KernelError::Missing(name))?;
    p.try_into().map_err(|source| KernelError::Program {
        what: format!("program {name}"),
        source,
    })
}

/// Attaches the three timewait timer programs, all or none (a life seen in part would be
/// misread); a refusal is said in the note [`Probe::load`] adds, its detail at debug level.
fn attach_tw_timers(ebpf: &mut Ebpf, btf: &aya::Btf, caps: &mut Capabilities) -> bool {
    for (i, (prog, tp)) in TW_PROGRAMS.iter().enumerate() {
        if let Err(e) = attach_btf(ebpf, prog, tp, btf) {
            log::debug!("{tp}: {e}");
            let why = e.verifier_refusal().unwrap_or_else(|| e.to_string());
            caps.notes.push(format!(
                "{TIMEWAIT_NOT_FROM_KERNEL} (tp_btf/{tp}: {why}): {TIMEWAIT_COST}"
            ));
            for (done, _) in &TW_PROGRAMS[..i] {
                if let Ok(p) = program::<BtfTracePoint>(ebpf, done) {
                    let _ = p.unload();
                }
            }
            return false;
        }
    }
    true
}

fn attach_btf(
    ebpf: &mut Ebpf,
    name: &'static str,
    tracepoint: &str,
    btf: &aya::Btf,
) -> Result<(), KernelError> {
    let prog: &mut BtfTracePoint = program(ebpf, name)?;
    prog.load(tracepoint, btf)
        .map_err(|source| KernelError::Program {
            what: format!("loading tp_btf/{tracepoint}"),
            source,
        })?;
    prog.attach().map_err(|source| KernelError::Program {
        what: format!("attaching tp_btf/{tracepoint}"),
        source,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{kallsyms_address, verifier_reason, LostCounts};

    #[test]
    fn loss_counts_of_older_recordings_read_the_newer_causes_as_zero() {
        let old: LostCounts =
            serde_json::from_str(r#"{"ring_full":1,"unreadable":2,"behind":3}"#).unwrap();
        assert_eq!(
            old,
            LostCounts {
                ring_full: 1,
                unreadable: 2,
                behind: 3,
                port_table_evicted: 0,
                recursion: 0,
                timer_recursion: 0,
            }
        );
        assert_eq!(old.total(), 6);
    }

    #[test]
    fn kernel_symbols_are_found_by_exact_name() {
        let kallsyms = "ffffffff82064e00 t inet_twsk_kill\n\
                        ffffffff82064f30 t tw_timer_handler\n\
                        ffffffffc0a01000 t tw_timer_handler_x\n\
                        ffffffffc0a02000 t other_handler\t[some_module]\n";
        assert_eq!(
            kallsyms_address(kallsyms, "tw_timer_handler"),
            Some(0xffff_ffff_8206_4f30)
        );
        assert_eq!(kallsyms_address(kallsyms, "tw_timer"), None);
        // A module's symbol is not the kernel's.
        assert_eq!(kallsyms_address(kallsyms, "other_handler"), None);
        // kptr_restrict hides addresses as zeros: as good as absent.
        assert_eq!(
            kallsyms_address("0000000000000000 t tw_timer_handler\n", "tw_timer_handler"),
            None
        );
    }

    #[test]
    fn the_verifier_reason_is_the_line_before_the_statistics() {
        let log = "0: R1=ctx() R10=fp0\n; @ main.rs:300\n12: (61) r2 = *(u32 *)(r1 +1200)\n\
                   access beyond struct sock at off 1200 size 4\n\
                   processed 12 insns (limit 1000000) max_states_per_insn 0\n\
                   stack depth 104\n\n";
        assert_eq!(
            verifier_reason(log),
            Some("access beyond struct sock at off 1200 size 4")
        );
        assert_eq!(verifier_reason("\n\n"), None);
    }
}
