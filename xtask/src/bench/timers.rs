//! The cost of the timewait timer programs: the three on the kernel's timer tracepoints
//! (`timer_start`, `timer_expire_entry`, `timer_cancel`), which run on every kernel timer and
//! go further only for a timewait socket's.
//!
//! Their runs are of two kinds the kernel's statistics do not tell apart, so the cost is split
//! in two measurements:
//! - (a) ns per timer that is not a timewait socket's: the trace under a churn whose every
//!   connection ends in a reset, which leaves no timewait socket (counted: none), so every run
//!   is such a timer (the filter's load and comparison, then return), as hot in the caches as
//!   in the rounds. The trace idle is measured too: its few runs a second are cold, and dearer;
//! - (b) ns per timewait-socket event: over the churn rounds, the programs' run time minus (a)
//!   times their runs that were other timers, over the timewait events. Those are counted by the
//!   kernel in the churn's own namespace, held open for the span so its sockets are not purged
//!   in it: a timer start per timewait socket made (`TW` and `TWKilled`, which the kernel counts
//!   as it first arms the timer), a cancel per one reused by a new connection (`TWRecycled`),
//!   an expiry per one made and neither alive at the end (the `tw` count of sockstat) nor
//!   reused.

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde::Serialize;

use super::{
    bpfstats::{self, ProgStat},
    procs::{self, Proc},
    start_trace, Ctx, SETTLE, TRACER_STOP_TIMEOUT,
};

/// The timer programs, as the kernel names them, with the event each run is.
pub const START: &str = "tw_timer_start";
pub const EXPIRE: &str = "tw_timer_expire";
pub const CANCEL: &str = "tw_timer_cancel";
pub const PROGRAMS: [&str; 3] = [START, EXPIRE, CANCEL];

pub fn is_timer_program(name: &str) -> bool {
    PROGRAMS.contains(&name)
}

/// Timewait-socket events of a span, per timer program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TwEvents {
    pub starts: u64,
    pub cancels: u64,
    pub expiries: u64,
}

impl TwEvents {
    pub fn total(&self) -> u64 {
        self.starts + self.cancels + self.expiries
    }
    fn of(&self, program: &str) -> u64 {
        match program {
            START => self.starts,
            CANCEL => self.cancels,
            EXPIRE => self.expiries,
            _ => 0,
        }
    }
    pub fn add(&mut self, o: &TwEvents) {
        self.starts += o.starts;
        self.cancels += o.cancels;
        self.expiries += o.expiries;
    }
}

/// A namespace's timewait counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TwMib {
    /// Timewait sockets alive (`tw` of /proc/net/sockstat).
    pub alive: u64,
    /// Reused by a new connection on their 4-tuple (`TcpExt: TWRecycled`): a cancel each.
    pub recycled: u64,
    /// Made (`TcpExt: TW` and `TWKilled`, counted as the timer is first armed, by how long it
    /// is armed for): a start each.
    pub made: u64,
    /// Not made, the table full (`TcpExt: TCPTimeWaitOverflow`): no timer at all.
    pub overflow: u64,
}

impl TwMib {
    fn parse(sockstat: &str, netstat: &str) -> Option<TwMib> {
        let alive = sockstat
            .lines()
            .find_map(|l| l.strip_prefix("TCP:"))
            .and_then(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                let i = w.iter().position(|&x| x == "tw")?;
                w.get(i + 1)?.parse().ok()
            })?;
        let c = |n| procs::snmp_counter(netstat, "TcpExt:", n);
        Some(TwMib {
            alive,
            recycled: c("TWRecycled")?,
            made: c("TW")? + c("TWKilled")?,
            overflow: c("TCPTimeWaitOverflow").unwrap_or(0),
        })
    }

    /// The events between two readings: every socket made starts its timer once; the alive
    /// count grew by those made less those that went, reused (a cancel) or expired.
    pub fn events_since(&self, before: &TwMib) -> TwEvents {
        let starts = self.made.saturating_sub(before.made);
        let cancels = self.recycled.saturating_sub(before.recycled);
        let grown = self.alive as i64 - before.alive as i64;
        let expiries = (starts as i64 - grown - cancels as i64).max(0) as u64;
        TwEvents {
            starts,
            cancels,
            expiries,
        }
    }
}

/// A process's network namespace, held open: it outlives the process while held.
pub struct Netns(File);

impl Netns {
    pub fn of(pid: i64) -> Result<Netns> {
        let p = format!("/proc/{pid}/ns/net");
        Ok(Netns(
            File::open(&p).with_context(|| format!("cannot open {p}"))?,
        ))
    }

    /// Its timewait counters, read by a thread that enters it (a namespace is per thread).
    pub fn tw_mib(&self) -> Result<TwMib> {
        let fd = self.0.as_raw_fd();
        thread::scope(|s| {
            s.spawn(|| -> Result<TwMib> {
                // SAFETY: setns takes a file descriptor we hold open and a flag; it changes
                // only this thread's namespace, and the thread ends right after.
                if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error()).context("setns(CLONE_NEWNET)");
                }
                let read = |f: &str| {
                    std::fs::read_to_string(format!("/proc/thread-self/net/{f}"))
                        .with_context(|| format!("cannot read the namespace's {f}"))
                };
                TwMib::parse(&read("sockstat")?, &read("netstat")?)
                    .context("no timewait counters in the namespace's sockstat and netstat")
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the thread reading a namespace's counters panicked"))?
        })
    }
}

impl Netns {
    /// Lets the namespace go, and waits (at most `timeout`) until the kernel has freed most
    /// of its timewait sockets, so that their timers' cancels do not fall into the next
    /// round's span. Says so when they were not seen going.
    pub fn release(self, timeout: Duration) -> Option<String> {
        let alive = self.tw_mib().map(|m| m.alive).unwrap_or(0);
        let before = tw_slab_objects();
        drop(self);
        let (Some(before), true) = (before, alive > 0) else {
            return None;
        };
        let goal = before.saturating_sub(alive - alive / 10);
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            if tw_slab_objects().is_some_and(|n| n <= goal) {
                return None;
            }
            thread::sleep(Duration::from_millis(100));
        }
        Some(format!(
            "the churn's namespace, {alive} timewait sockets, was not seen removed within {} s",
            timeout.as_secs()
        ))
    }
}

/// Timewait sockets of the whole host, IPv4 and IPv6: the objects in use of their slab caches.
fn tw_slab_objects() -> Option<u64> {
    slab_objects(&std::fs::read_to_string("/proc/slabinfo").ok()?)
}

fn slab_objects(slabinfo: &str) -> Option<u64> {
    let n: Vec<u64> = slabinfo
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            matches!(w.next(), Some("tw_sock_TCP" | "tw_sock_TCPv6"))
                .then(|| w.next()?.parse().ok())?
        })
        .collect();
    (!n.is_empty()).then(|| n.iter().sum())
}

/// (a): the trace idle, or under a churn that leaves no timewait socket.
#[derive(Clone, Debug, Default, Serialize)]
pub struct IdleResult {
    pub seconds: f64,
    /// The timer programs' runs and run time over the span.
    pub programs: Vec<ProgStat>,
    /// The churn's connections (None: idle).
    pub connections: Option<u64>,
    /// Timewait events the churn's namespace counted (none expected).
    pub tw_events: Option<TwEvents>,
    pub error: Option<String>,
}

/// Runs `teardown trace` (default settings) idle for `seconds` and reads its timer programs.
pub fn run_idle(ctx: &Ctx, seconds: f64) -> IdleResult {
    match idle(ctx, seconds) {
        Ok(r) => r,
        Err(e) => IdleResult {
            seconds,
            error: Some(format!("{e:#}")),
            ..IdleResult::default()
        },
    }
}

fn idle(ctx: &Ctx, seconds: f64) -> Result<IdleResult> {
    let (out, err) = (ctx.work.join("idle.jsonl"), ctx.work.join("idle.err"));
    let mut p: Proc = start_trace(ctx, &ctx.args.trace_args, &out, &err)?;
    thread::sleep(SETTLE);
    let before = bpfstats::stats_of(p.pid());
    thread::sleep(Duration::from_secs_f64(seconds));
    let after = bpfstats::stats_of(p.pid());
    p.stop(libc::SIGINT, TRACER_STOP_TIMEOUT)?;
    let _ = std::fs::remove_file(&out);
    let programs: Vec<ProgStat> = bpfstats::deltas(&before, &after)
        .into_iter()
        .filter(|p| is_timer_program(&p.name))
        .collect();
    if programs.is_empty() {
        bail!(
            "teardown trace loaded no timer program ({}): {}",
            PROGRAMS.join(", "),
            procs::last_lines(&std::fs::read_to_string(&err).unwrap_or_default(), 3)
        );
    }
    Ok(IdleResult {
        seconds,
        programs,
        connections: None,
        tw_events: None,
        error: None,
    })
}

/// Runs `teardown trace` (default settings) under a churn of `seconds` whose connections all
/// end in a reset (no timewait socket), and reads its timer programs.
pub fn run_reset_churn(ctx: &Ctx, seconds: f64) -> IdleResult {
    match reset_churn(ctx, seconds) {
        Ok(r) => r,
        Err(e) => IdleResult {
            seconds,
            error: Some(format!("{e:#}")),
            ..IdleResult::default()
        },
    }
}

fn reset_churn(ctx: &Ctx, seconds: f64) -> Result<IdleResult> {
    let mut churn = procs::Churner::start(
        &ctx.xtask,
        &[
            "--threads".into(),
            ctx.args.threads.to_string(),
            "--seconds".into(),
            seconds.to_string(),
            "--rst-pct".into(),
            "100".into(),
        ],
    )?;
    let ready = churn.next(Duration::from_secs(30))?;
    let pid = ready
        .get("pid")
        .and_then(|p| p.as_i64())
        .context("the churn generator did not say its pid")?;
    let ns = Netns::of(pid)?;
    let (out, err) = (ctx.work.join("resets.jsonl"), ctx.work.join("resets.err"));
    let mut p: Proc = start_trace(ctx, &ctx.args.trace_args, &out, &err)?;
    thread::sleep(SETTLE);
    let before = bpfstats::stats_of(p.pid());
    let mib_before = ns.tw_mib()?;
    churn.go()?;
    let result: crate::churn::ChurnResult =
        serde_json::from_value(churn.next(Duration::from_secs_f64(seconds + 60.0))?)
            .context("the churn generator's result")?;
    churn.finish(Duration::from_secs(10))?;
    let mib_after = ns.tw_mib()?;
    let after = bpfstats::stats_of(p.pid());
    p.stop(libc::SIGINT, TRACER_STOP_TIMEOUT)?;
    let _ = std::fs::remove_file(&out);
    let _ = ns.release(Duration::from_secs(15));
    let programs: Vec<ProgStat> = bpfstats::deltas(&before, &after)
        .into_iter()
        .filter(|p| is_timer_program(&p.name))
        .collect();
    if programs.is_empty() {
        bail!("teardown trace loaded no timer program");
    }
    if result.connections == 0 {
        bail!("the churn made no connections");
    }
    Ok(IdleResult {
        seconds: result.seconds,
        programs,
        connections: Some(result.connections),
        tw_events: Some(mib_after.events_since(&mib_before)),
        error: None,
    })
}

/// One timer program over the churn rounds.
#[derive(Clone, Debug, Serialize)]
pub struct ProgramSplit {
    pub name: String,
    pub runs: u64,
    pub run_time_ns: u64,
    /// Its runs that were timewait-socket events.
    pub tw_events: u64,
    /// (a) for it: ns per run in the idle phase.
    pub idle_ns_per_run: Option<f64>,
    /// Its run time left for the timewait events once (a) is taken off the other runs.
    pub tw_time_ns: Option<f64>,
}

/// The split of the timer programs' cost.
#[derive(Clone, Debug, Serialize)]
pub struct TimerSplit {
    /// (a): ns per run of a timer that is not a timewait socket's (the phase given, the three
    /// programs together).
    pub ns_per_other_timer: Option<f64>,
    /// (b): ns per timewait-socket event.
    pub ns_per_tw_event: Option<f64>,
    pub tw_events: TwEvents,
    pub programs: Vec<ProgramSplit>,
}

/// Splits the timer programs' run time over the churn (`churn`, summed over the rounds) with
/// the idle phase's cost per run (`idle`) and the timewait events counted (`events`).
pub fn split(idle: &[ProgStat], churn: &[ProgStat], events: TwEvents) -> TimerSplit {
    let idle_of = |name: &str| {
        idle.iter()
            .find(|p| p.name == name && p.run_cnt > 0)
            .map(|p| p.run_time_ns as f64 / p.run_cnt as f64)
    };
    let idle_timers: Vec<ProgStat> = idle
        .iter()
        .filter(|p| is_timer_program(&p.name))
        .cloned()
        .collect();
    let programs: Vec<ProgramSplit> = PROGRAMS
        .iter()
        .filter_map(|&name| {
            let (runs, t) = churn
                .iter()
                .filter(|p| p.name == name)
                .fold((0, 0), |(n, t), p| (n + p.run_cnt, t + p.run_time_ns));
            if runs == 0 && !churn.iter().any(|p| p.name == name) {
                return None;
            }
            let tw = events.of(name);
            let a = idle_of(name);
            Some(ProgramSplit {
                name: name.to_owned(),
                runs,
                run_time_ns: t,
                tw_events: tw,
                idle_ns_per_run: a,
                tw_time_ns: a.map(|a| t as f64 - a * runs.saturating_sub(tw) as f64),
            })
        })
        .collect();
    let tw_time: Option<f64> = programs.iter().map(|p| p.tw_time_ns).sum();
    let ns_per_tw_event = match (tw_time, events.total()) {
        (Some(t), n) if n > 0 && !programs.is_empty() => Some(t / n as f64),
        _ => None,
    };
    TimerSplit {
        ns_per_other_timer: bpfstats::avg_ns(&idle_timers),
        ns_per_tw_event,
        tw_events: events,
        programs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(name: &str, t: u64, n: u64) -> ProgStat {
        ProgStat {
            id: 1,
            name: name.into(),
            run_time_ns: t,
            run_cnt: n,
        }
    }

    #[test]
    fn reads_a_namespaces_timewait_counters() {
        let sockstat = "sockets: used 12\nTCP: inuse 3 orphan 0 tw 131072 alloc 5 mem 1\n\
                        UDP: inuse 0 mem 0\n";
        let netstat = "TcpExt: SyncookiesSent TW TWRecycled TWKilled TCPTimeWaitOverflow\n\
                       TcpExt: 0 17 2500 3 298000\nIpExt: InNoRoutes\nIpExt: 0\n";
        assert_eq!(
            TwMib::parse(sockstat, netstat),
            Some(TwMib {
                alive: 131_072,
                recycled: 2500,
                made: 20,
                overflow: 298_000
            })
        );
        assert_eq!(TwMib::parse("TCP: inuse 3\n", netstat), None);
    }

    #[test]
    fn counts_timewait_sockets_in_the_slab() {
        let t = "slabinfo - version: 2.1\n# name <active_objs> <num_objs>\n\
                 tw_sock_TCPv6         64     64    256   16    1 : tunables 0 0 0\n\
                 tw_sock_TCP       131144 131200    256   16    1 : tunables 0 0 0\n\
                 request_sock_TCP      0      0    304   26    2 : tunables 0 0 0\n";
        assert_eq!(slab_objects(t), Some(131_208));
        assert_eq!(slab_objects("request_sock_TCP 0 0 304\n"), None);
    }

    #[test]
    fn counts_the_events_of_a_span() {
        let before = TwMib {
            alive: 100,
            recycled: 10,
            made: 5,
            overflow: 0,
        };
        let after = TwMib {
            alive: 1100,
            recycled: 310,
            made: 1325,
            overflow: 7,
        };
        // 1320 made, 300 reused, 1000 more alive: 20 expired.
        assert_eq!(
            after.events_since(&before),
            TwEvents {
                starts: 1320,
                cancels: 300,
                expiries: 20
            }
        );
    }

    #[test]
    fn splits_timewait_events_from_other_timers() {
        // Idle: 20 ns per run of start, 30 of cancel, 40 of expire.
        let idle = [
            stat(START, 20_000, 1000),
            stat(CANCEL, 30_000, 1000),
            stat(EXPIRE, 40_000, 1000),
            stat("inet_sock_set_s", 9_000_000, 1),
        ];
        // Churn, two rounds of start: 10,000 runs of which 1000 timewait at 220 ns; cancel:
        // 5000 runs of which 500 timewait at 230 ns; expire: 2000 runs, none timewait.
        let churn = [
            stat(START, 4500 * 20 + 500 * 220, 5000),
            stat(START, 4500 * 20 + 500 * 220, 5000),
            stat(CANCEL, 4500 * 30 + 500 * 230, 5000),
            stat(EXPIRE, 2000 * 40, 2000),
        ];
        let ev = TwEvents {
            starts: 1000,
            cancels: 500,
            expiries: 0,
        };
        let s = split(&idle, &churn, ev);
        assert_eq!(s.ns_per_other_timer, Some(30.0));
        let b = s.ns_per_tw_event.unwrap_or(f64::NAN);
        let want = (1000.0 * 220.0 + 500.0 * 230.0) / 1500.0;
        assert!((b - want).abs() < 1e-9, "{b} != {want}");
        let names: Vec<&str> = s.programs.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, [START, EXPIRE, CANCEL]);
        assert_eq!(s.programs[0].runs, 10_000);
        assert_eq!(s.programs[1].tw_time_ns, Some(0.0));

        // No idle figure for a program: no split; no timewait event: no figure per event.
        let s = split(&idle[..2], &churn, ev);
        assert_eq!(s.ns_per_tw_event, None);
        let s = split(&idle, &churn, TwEvents::default());
        assert_eq!(s.ns_per_tw_event, None);
        assert_eq!(s.ns_per_other_timer, Some(30.0));
    }
}
