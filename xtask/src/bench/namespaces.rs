//! The namespaces scenario: what `teardown timewait` and `teardown top` cost on a host with many
//! network namespaces, each holding TIME_WAIT sockets (both cover every namespace by default).
//!
//! N namespaces are made with `ip netns add` (named after this process, removed at the end on
//! every path), `lo` is brought up in each, and M TIME_WAIT sockets are made in each by a thread
//! that entered it: a listener on 127.0.0.1 and M connections whose server end closes first, so
//! the server ends wait in TIME_WAIT. The kernel holds a TIME_WAIT socket 60 s, not tunable, so
//! a measurement starts only when the sockets have time enough left for it; when they have not,
//! the set is made again (deleting a namespace frees its sockets, so the count stays N x M).
//! Every report measured must show them all, N x M TIME_WAIT sockets in the N namespaces, or
//! the run is marked failed with why.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use serde::Serialize;

use super::{last_lines, spread, wait_for_text, Proc, Spread, TOP_POLL_LINE};

/// `teardown timewait` runs measured.
pub(super) const TIMEWAIT_RUNS: usize = 5;
/// `teardown top`'s sustained run.
pub(super) const TOP_SECONDS: u64 = 30;
/// Start of every namespace name this scenario makes; the pid and a generation follow.
const NAME_PREFIX: &str = "tdbench-";
const NETNS_DIR: &str = "/run/netns";
/// How long the kernel holds a TIME_WAIT socket (TCP_TIMEWAIT_LEN).
const TIME_WAIT_LEN: Duration = Duration::from_secs(60);
/// Kept free at the end of the window: the last poll must still see every socket.
const MARGIN: Duration = Duration::from_secs(3);
/// What `teardown top` may take before its first poll (it loads its eBPF tracer first).
const TOP_START: Duration = Duration::from_secs(15);
/// A timewait run's window when none has run yet.
const FIRST_RUN_NEED: Duration = Duration::from_secs(5);
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
const IP_TIMEOUT: Duration = Duration::from_secs(300);
/// Making the sockets must leave room for a measurement in the window.
const FILL_LIMIT: Duration = Duration::from_secs(20);
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Namespace sets made at most (the first, then one per measurement at most).
const MAX_SETS: usize = TIMEWAIT_RUNS + 2;

/// What one report of `teardown timewait --format json` saw.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub(super) struct Seen {
    /// Namespaces observed (every one of the host).
    pub namespaces: usize,
    /// TIME_WAIT sockets over all of them (`totals.time_wait`).
    pub time_wait: u64,
    /// The scenario's own namespaces among them (by their `ip netns` names).
    pub ours: usize,
    /// TIME_WAIT sockets in those.
    pub ours_time_wait: u64,
    /// Namespaces found but not observed (entering failed).
    pub unobserved: usize,
    /// Namespaces beyond the scan's limit.
    pub left_out: u64,
}

/// One `teardown timewait --format json` run.
#[derive(Clone, Debug, Default, Serialize)]
pub(super) struct TimewaitRun {
    /// User + system CPU of the child, from wait4.
    pub cpu_ms: f64,
    pub wall_ms: f64,
    pub peak_rss_kib: u64,
    pub seen: Option<Seen>,
    /// Why this run does not count (it failed, or did not see every socket).
    pub error: Option<String>,
}

/// `teardown top --batch --interval 1 --duration 30s`.
#[derive(Clone, Debug, Default, Serialize)]
pub(super) struct TopRun {
    /// From its first poll line to its exit: the sustained polling.
    pub span_s: f64,
    pub cpu_s: f64,
    /// CPU over the span, in percent of one core.
    pub cpu_pct: f64,
    /// The whole run, its start-up (loading the eBPF tracer) included.
    pub whole_s: f64,
    pub whole_cpu_s: f64,
    pub whole_cpu_pct: f64,
    /// Poll lines printed.
    pub polls: usize,
    /// The fewest TIME_WAIT sockets (over every namespace) and namespaces any poll saw.
    pub min_time_wait: Option<u64>,
    pub min_namespaces: Option<usize>,
    pub peak_rss_kib: u64,
    pub error: Option<String>,
}

/// Making one set of namespaces and its sockets.
#[derive(Clone, Debug, Default, Serialize)]
pub(super) struct SetMade {
    /// `ip netns add` of every namespace.
    pub namespaces_s: f64,
    /// `lo` up and the sockets, in every namespace.
    pub sockets_s: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub(super) struct NamespacesResult {
    pub namespaces: usize,
    pub sockets_per_namespace: usize,
    /// The host's TCP established hash table (net.ipv4.tcp_ehash_entries), which namespaces
    /// share unless they were made with one of their own (net.ipv4.tcp_child_ehash_entries,
    /// 0: none): a socket dump in a namespace walks it.
    pub host_ehash_entries: Option<u64>,
    pub child_ehash_entries: Option<u64>,
    /// Each set made (a new one when the sockets of the last would expire during a
    /// measurement).
    pub sets: Vec<SetMade>,
    pub timewait: Vec<TimewaitRun>,
    /// Over the runs that saw every socket.
    pub timewait_cpu_ms: Option<Spread>,
    pub timewait_wall_ms: Option<Spread>,
    pub top: Option<TopRun>,
    /// The scenario could not be set up or measured at all.
    pub error: Option<String>,
}

impl NamespacesResult {
    /// Runs that did not count, with why (at most a few).
    pub fn timewait_failures(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .timewait
            .iter()
            .enumerate()
            .filter_map(|(i, r)| Some(format!("run {}: {}", i + 1, r.error.as_ref()?)))
            .collect();
        v.truncate(3);
        v
    }
}

pub(super) fn run(teardown: &Path, work: &Path, n: usize, m: usize) -> NamespacesResult {
    let sysctl = |name: &str| -> Option<u64> {
        std::fs::read_to_string(Path::new("/proc/sys/net/ipv4").join(name))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let mut res = NamespacesResult {
        namespaces: n,
        sockets_per_namespace: m,
        host_ehash_entries: sysctl("tcp_ehash_entries"),
        child_ehash_entries: sysctl("tcp_child_ehash_entries"),
        ..NamespacesResult::default()
    };
    remove_stale(work);
    let mut scene = Scene {
        n,
        m,
        work: work.to_owned(),
        sets: 0,
        current: None,
    };
    if let Err(e) = measure(teardown, &mut scene, &mut res) {
        eprintln!("bench: the namespaces scenario failed: {e:#}");
        res.error = Some(format!("{e:#}"));
    }
    // Removes the namespaces now rather than when the report is written.
    scene.current = None;
    let ok = |r: &&TimewaitRun| r.error.is_none();
    res.timewait_cpu_ms = spread(res.timewait.iter().filter(ok).map(|r| r.cpu_ms).collect());
    res.timewait_wall_ms = spread(res.timewait.iter().filter(ok).map(|r| r.wall_ms).collect());
    res
}

fn measure(teardown: &Path, scene: &mut Scene, res: &mut NamespacesResult) -> Result<()> {
    let (n, m) = (scene.n, scene.m);
    let mut need = FIRST_RUN_NEED;
    for i in 0..TIMEWAIT_RUNS {
        if let Some(s) = scene.ensure(need)? {
            res.sets.push(s);
        }
        let r = timewait_run(teardown, &scene.work, &scene.prefix(), n, m, i);
        println!(
            "bench: namespaces: timewait run {}/{TIMEWAIT_RUNS}: {:.0} ms CPU, {:.0} ms wall{}",
            i + 1,
            r.cpu_ms,
            r.wall_ms,
            r.error
                .as_ref()
                .map_or(String::new(), |e| format!(": failed: {e}"))
        );
        // Room for the next one: twice this one's wall time.
        need = Duration::from_secs_f64((2.0 * r.wall_ms / 1000.0).max(1.0));
        res.timewait.push(r);
    }
    if let Some(s) = scene.ensure(Duration::from_secs(TOP_SECONDS) + TOP_START)? {
        res.sets.push(s);
    }
    println!("bench: namespaces: teardown top --batch for {TOP_SECONDS} s");
    let top = top_run(teardown, &scene.work, n, m);
    println!(
        "bench: namespaces: top: {:.1}% of a core over {:.1} s, {} polls{}",
        top.cpu_pct,
        top.span_s,
        top.polls,
        top.error
            .as_ref()
            .map_or(String::new(), |e| format!(": failed: {e}"))
    );
    res.top = Some(top);
    Ok(())
}

/// The current set of namespaces and when its sockets were made.
struct Scene {
    n: usize,
    m: usize,
    work: PathBuf,
    /// Sets made so far (the generation in the names).
    sets: usize,
    current: Option<(NetnsSet, Instant)>,
}

impl Scene {
    fn prefix(&self) -> String {
        format!("{NAME_PREFIX}{}-{}-", std::process::id(), self.sets)
    }

    /// Makes sure the sockets will last `need` more (plus a margin): makes a new set when they
    /// would not. Returns what making it took, when it did.
    fn ensure(&mut self, need: Duration) -> Result<Option<SetMade>> {
        if let Some((_, at)) = &self.current {
            if at.elapsed() + need + MARGIN <= TIME_WAIT_LEN {
                return Ok(None);
            }
        }
        // Deleting the old namespaces frees their sockets: only the new set's are counted.
        self.current = None;
        ensure!(
            self.sets < MAX_SETS,
            "{MAX_SETS} sets of namespaces made already"
        );
        self.sets += 1;
        let prefix = self.prefix();
        let t = Instant::now();
        let set = NetnsSet::create(&prefix, self.n, &self.work)?;
        let namespaces_s = t.elapsed().as_secs_f64();
        let at = Instant::now();
        fill(&set.paths(), self.m, at + FILL_LIMIT)?;
        let made = SetMade {
            namespaces_s,
            sockets_s: at.elapsed().as_secs_f64(),
        };
        println!(
            "bench: namespaces: {} namespaces made in {:.1} s, {} TIME_WAIT sockets in each in \
             {:.1} s",
            self.n, made.namespaces_s, self.m, made.sockets_s
        );
        ensure!(
            at.elapsed() + need + MARGIN <= TIME_WAIT_LEN,
            "making the sockets took {:.1} s: too long to measure within their 60 s of TIME_WAIT",
            made.sockets_s
        );
        self.current = Some((set, at));
        Ok(Some(made))
    }
}

/// Namespaces made by `ip netns add`, deleted on drop, on every path.
struct NetnsSet {
    names: Vec<String>,
    work: PathBuf,
}

impl NetnsSet {
    fn create(prefix: &str, n: usize, work: &Path) -> Result<NetnsSet> {
        let wanted: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
        let mut set = NetnsSet {
            names: Vec::new(),
            work: work.to_owned(),
        };
        let r = ip_batch(work, wanted.iter().map(|w| format!("netns add {w}")));
        // Whatever was made is the set's, so that dropping it removes them, failure or not.
        set.names = wanted
            .into_iter()
            .filter(|w| Path::new(NETNS_DIR).join(w).exists())
            .collect();
        r.context("ip netns add")?;
        ensure!(
            set.names.len() == n,
            "ip netns add made {} of {n} namespaces",
            set.names.len()
        );
        Ok(set)
    }

    fn paths(&self) -> Vec<PathBuf> {
        self.names
            .iter()
            .map(|n| Path::new(NETNS_DIR).join(n))
            .collect()
    }
}

impl Drop for NetnsSet {
    fn drop(&mut self) {
        if self.names.is_empty() {
            return;
        }
        let r = ip_batch(
            &self.work,
            self.names.iter().map(|n| format!("netns delete {n}")),
        );
        let left = self.paths().iter().filter(|p| p.exists()).count();
        if let Err(e) = r.as_ref().map_err(|e| format!("{e:#}")).and_then(|()| {
            if left > 0 {
                Err(format!("{left} still exist"))
            } else {
                Ok(())
            }
        }) {
            eprintln!(
                "bench: warning: removing the benchmark's namespaces ({}...) failed: {e}",
                self.names[0]
            );
        }
    }
}

/// Runs `ip -force -batch -` on `lines` (every line is tried, failures or not).
fn ip_batch(work: &Path, lines: impl Iterator<Item = String>) -> Result<()> {
    let err = work.join("ip-batch.err");
    let mut cmd = Command::new("ip");
    cmd.args(["-force", "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(File::create(&err)?);
    let mut p = Proc::spawn(&mut cmd, "ip -batch")?;
    let mut input = String::new();
    for l in lines {
        input += &l;
        input.push('\n');
    }
    {
        let mut stdin = p
            .child_mut()
            .stdin
            .take()
            .context("no stdin for ip -batch")?;
        stdin.write_all(input.as_bytes())?;
    }
    let e = p.wait_timeout(IP_TIMEOUT)?;
    if !e.success() {
        let text = std::fs::read_to_string(&err).unwrap_or_default();
        bail!(
            "ip -batch failed ({}): {}",
            e.describe(),
            last_lines(&text, 3)
        );
    }
    Ok(())
}

/// Removes namespaces an earlier benchmark left (it was killed before it could), those whose
/// process is gone.
fn remove_stale(work: &Path) {
    let Ok(dir) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    let stale: Vec<String> = dir
        .take(100_000)
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| stale_pid(name).is_some_and(|pid| !Path::new("/proc").join(pid).exists()))
        .collect();
    if stale.is_empty() {
        return;
    }
    println!(
        "bench: removing {} namespaces an earlier benchmark left",
        stale.len()
    );
    if let Err(e) = ip_batch(work, stale.iter().map(|s| format!("netns delete {s}"))) {
        eprintln!("bench: warning: {e:#}");
    }
}

/// The pid in one of this scenario's namespace names.
fn stale_pid(name: &str) -> Option<&str> {
    let pid = name.strip_prefix(NAME_PREFIX)?.split('-').next()?;
    (!pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())).then_some(pid)
}

/// On a thread of its own (which enters each namespace in turn and then ends, so no other
/// thread changes namespace): `lo` up and `m` TIME_WAIT sockets in each namespace of `paths`.
fn fill(paths: &[PathBuf], m: usize, deadline: Instant) -> Result<()> {
    let paths = paths.to_vec();
    let h = thread::Builder::new()
        .name("netns-fill".into())
        .spawn(move || -> Result<()> {
            for p in &paths {
                let f = File::open(p).with_context(|| format!("opening {}", p.display()))?;
                // SAFETY: setns on an open nsfs descriptor; it moves only this thread.
                if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error())
                        .with_context(|| format!("entering {}", p.display()));
                }
                crate::churn::lo_up().with_context(|| format!("in {}", p.display()))?;
                make_timewait(m, deadline).with_context(|| format!("in {}", p.display()))?;
            }
            Ok(())
        })
        .context("cannot start a thread")?;
    match h.join() {
        Ok(r) => r,
        Err(_) => bail!("the thread making the sockets panicked"),
    }
}

/// `m` connections to a listener on 127.0.0.1, each closed by the server end first: the
/// server ends go through FIN_WAIT2 to TIME_WAIT once the client end closes in turn.
fn make_timewait(m: usize, deadline: Instant) -> Result<()> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("listening on 127.0.0.1")?;
    l.set_nonblocking(true)?;
    let addr: SocketAddr = l.local_addr()?;
    for _ in 0..m {
        ensure!(
            Instant::now() < deadline,
            "the sockets were not made within {} s",
            FILL_LIMIT.as_secs()
        );
        let c = TcpStream::connect_timeout(&addr, IO_TIMEOUT).context("connecting")?;
        let until = Instant::now() + IO_TIMEOUT;
        let server = loop {
            match l.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    ensure!(Instant::now() < until, "no connection to accept");
                    thread::sleep(Duration::from_micros(200));
                }
                Err(e) => return Err(e).context("accepting"),
            }
        };
        // The server end's close comes first: it sends the first FIN.
        drop(server);
        c.set_read_timeout(Some(IO_TIMEOUT))?;
        let mut b = [0u8; 1];
        let got = (&c).read(&mut b).context("waiting for the server's FIN")?;
        ensure!(got == 0, "the server end sent data");
        // The client end's FIN: the server end enters TIME_WAIT.
        drop(c);
    }
    Ok(())
}

/// Runs `teardown timewait --format json` once and checks that it saw every socket.
fn timewait_run(
    teardown: &Path,
    work: &Path,
    prefix: &str,
    n: usize,
    m: usize,
    i: usize,
) -> TimewaitRun {
    let mut r = TimewaitRun::default();
    let (out, err) = (
        work.join(format!("timewait-{i}.json")),
        work.join(format!("timewait-{i}.err")),
    );
    let result = (|| -> Result<Seen> {
        let mut cmd = Command::new(teardown);
        cmd.args(["timewait", "--format", "json"])
            .stdin(Stdio::null())
            .stdout(File::create(&out)?)
            .stderr(File::create(&err)?);
        let t = Instant::now();
        let mut p = Proc::spawn(&mut cmd, "teardown timewait")?;
        // Polled finely, for the wall time; bounded by the timeout.
        let e = loop {
            if let Some(e) = p.try_exit()? {
                break e;
            }
            if t.elapsed() > RUN_TIMEOUT {
                p.stop(libc::SIGKILL, Duration::from_secs(10))?;
                bail!("not done after {} s: killed", RUN_TIMEOUT.as_secs());
            }
            thread::sleep(Duration::from_millis(1));
        };
        r.wall_ms = t.elapsed().as_secs_f64() * 1000.0;
        r.cpu_ms = e.cpu_s * 1000.0;
        r.peak_rss_kib = e.maxrss_kib;
        if !e.success() {
            let text = std::fs::read_to_string(&err).unwrap_or_default();
            bail!("{}: {}", e.describe(), last_lines(&text, 3));
        }
        parse_timewait(&std::fs::read_to_string(&out)?, prefix)
    })();
    let _ = std::fs::remove_file(&out);
    let _ = std::fs::remove_file(&err);
    match result {
        Ok(seen) => {
            r.error = check_timewait(&seen, n, m);
            r.seen = Some(seen);
        }
        Err(e) => r.error = Some(format!("{e:#}")),
    }
    r
}

/// The figures of a `teardown timewait --format json` report (every namespace); `prefix`
/// names the scenario's own namespaces.
pub(super) fn parse_timewait(json: &str, prefix: &str) -> Result<Seen> {
    let v: serde_json::Value = serde_json::from_str(json).context("the report is not JSON")?;
    let namespaces = v
        .get("namespaces")
        .and_then(|n| n.as_array())
        .context("the report has no namespaces list")?;
    let tw = |x: &serde_json::Value| x.get("time_wait").and_then(|t| t.as_u64());
    let time_wait = v
        .get("totals")
        .and_then(tw)
        .context("the report has no totals.time_wait")?;
    let mut s = Seen {
        namespaces: namespaces.len(),
        time_wait,
        unobserved: v
            .get("unobserved")
            .and_then(|u| u.as_array())
            .map_or(0, Vec::len),
        left_out: v.get("left_out").and_then(|l| l.as_u64()).unwrap_or(0),
        ..Seen::default()
    };
    for ns in namespaces {
        let ours = ns
            .get("ip_netns")
            .and_then(|n| n.as_array())
            .is_some_and(|names| {
                names
                    .iter()
                    .any(|n| n.as_str().is_some_and(|n| n.starts_with(prefix)))
            });
        if ours {
            s.ours += 1;
            s.ours_time_wait += ns
                .get("report")
                .and_then(|r| r.get("counts"))
                .and_then(tw)
                .context("a namespace's report has no counts.time_wait")?;
        }
    }
    Ok(s)
}

/// Why a report does not show the scenario's sockets, or None when it shows them all.
pub(super) fn check_timewait(s: &Seen, n: usize, m: usize) -> Option<String> {
    let want = (n * m) as u64;
    if s.ours < n {
        return Some(format!(
            "it listed {} of the {n} namespaces ({} observed, {} unobserved, {} beyond its limit)",
            s.ours, s.namespaces, s.unobserved, s.left_out
        ));
    }
    if s.ours_time_wait < want || s.time_wait < want {
        return Some(format!(
            "it counted {} TIME_WAIT sockets in them ({} in all), not {want}",
            s.ours_time_wait, s.time_wait
        ));
    }
    None
}

/// A poll line of `teardown top --batch` over every namespace: TIME_WAIT over all of them, and
/// how many there were (`... TIME_WAIT=N ... | namespaces K, most timewait: ...`).
pub(super) fn parse_top_line(line: &str) -> Option<(u64, Option<usize>)> {
    let number = |s: &str| -> Option<u64> {
        let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        s[..end].parse().ok()
    };
    let (_, after) = line.split_once(TOP_POLL_LINE)?;
    let tw = number(after)?;
    let ns = line
        .split_once(" | namespaces ")
        .and_then(|(_, a)| number(a))
        .map(|k| k as usize);
    Some((tw, ns))
}

/// Top's polls: how many, the fewest TIME_WAIT and namespaces any saw, and why they do not show
/// the scenario's sockets (None when every poll does).
pub(super) fn check_top(
    out: &str,
    n: usize,
    m: usize,
) -> (usize, Option<u64>, Option<usize>, Option<String>) {
    let polls: Vec<(u64, Option<usize>)> = out.lines().filter_map(parse_top_line).collect();
    let min_tw = polls.iter().map(|p| p.0).min();
    let min_ns = polls.iter().filter_map(|p| p.1).min();
    let want = (n * m) as u64;
    let why = if polls.is_empty() {
        Some("it printed no poll line".to_owned())
    } else if polls.iter().any(|p| p.1.is_none()) {
        Some("a poll line does not say how many namespaces it covered".to_owned())
    } else if min_ns.is_some_and(|k| k < n) {
        Some(format!(
            "a poll covered {} namespaces, fewer than the {n}",
            min_ns.unwrap_or(0)
        ))
    } else if min_tw.is_some_and(|t| t < want) {
        Some(format!(
            "a poll counted {} TIME_WAIT sockets, fewer than the {want}",
            min_tw.unwrap_or(0)
        ))
    } else {
        None
    };
    (polls.len(), min_tw, min_ns, why)
}

/// `teardown top --batch --interval 1 --duration 30s`, its CPU from its first poll to its exit.
fn top_run(teardown: &Path, work: &Path, n: usize, m: usize) -> TopRun {
    let mut t = TopRun::default();
    let (out, err) = (work.join("top.out"), work.join("top.err"));
    let result = (|| -> Result<()> {
        let mut cmd = Command::new(teardown);
        cmd.args(["top", "--batch", "--interval", "1", "--duration"])
            .arg(format!("{TOP_SECONDS}s"))
            .stdin(Stdio::null())
            .stdout(File::create(&out)?)
            .stderr(File::create(&err)?);
        let began = Instant::now();
        let mut p = Proc::spawn(&mut cmd, "teardown top --batch")?;
        wait_for_text(&mut p, &out, &err, TOP_POLL_LINE, TOP_START)?;
        let (at, cpu_at) = (Instant::now(), p.cpu_now().unwrap_or(0.0));
        let e = p.wait_timeout(Duration::from_secs(TOP_SECONDS) + RUN_TIMEOUT)?;
        t.span_s = at.elapsed().as_secs_f64();
        t.whole_s = began.elapsed().as_secs_f64();
        t.cpu_s = (e.cpu_s - cpu_at).max(0.0);
        t.cpu_pct = 100.0 * t.cpu_s / t.span_s.max(1e-9);
        t.whole_cpu_s = e.cpu_s;
        t.whole_cpu_pct = 100.0 * e.cpu_s / t.whole_s.max(1e-9);
        t.peak_rss_kib = e.maxrss_kib;
        if !e.success() {
            let text = std::fs::read_to_string(&err).unwrap_or_default();
            bail!("{}: {}", e.describe(), last_lines(&text, 3));
        }
        let (polls, min_tw, min_ns, why) = check_top(&std::fs::read_to_string(&out)?, n, m);
        t.polls = polls;
        t.min_time_wait = min_tw;
        t.min_namespaces = min_ns;
        if let Some(w) = why {
            bail!(w);
        }
        Ok(())
    })();
    let _ = std::fs::remove_file(&out);
    let _ = std::fs::remove_file(&err);
    if let Err(e) = result {
        t.error = Some(format!("{e:#}"));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = r#"{
      "namespaces": [
        {"netns": 4026531840, "own": true, "processes": 90,
         "report": {"counts": {"time_wait": 7, "fin_wait2_timewait": 1}}},
        {"netns": 4026532001, "own": false, "ip_netns": ["tdbench-42-1-0"], "processes": 0,
         "report": {"counts": {"time_wait": 100, "fin_wait2_timewait": 0}}},
        {"netns": 4026532002, "own": false, "ip_netns": ["tdbench-42-1-1"], "processes": 0,
         "report": {"counts": {"time_wait": 99, "fin_wait2_timewait": 1}}},
        {"netns": 4026532003, "own": false, "ip_netns": ["tdbench-42-0-0"], "processes": 0,
         "report": {"counts": {"time_wait": 100}}}
      ],
      "unobserved": [{"netns": 4026532009, "own": false, "processes": 1, "error": "gone"}],
      "left_out": 0,
      "totals": {"time_wait": 306, "fin_wait2_timewait": 2},
      "level": "ok"
    }"#;

    #[test]
    fn reads_the_timewait_report() {
        let s = parse_timewait(REPORT, "tdbench-42-1-").unwrap_or_default();
        assert_eq!(
            s,
            Seen {
                namespaces: 4,
                time_wait: 306,
                ours: 2,
                ours_time_wait: 199,
                unobserved: 1,
                left_out: 0,
            }
        );
        assert!(parse_timewait("{\"namespaces\": []}", "x").is_err());
        assert!(parse_timewait("not json", "x").is_err());
    }

    #[test]
    fn a_report_must_show_every_socket() {
        let s = parse_timewait(REPORT, "tdbench-42-1-").unwrap_or_default();
        // 2 namespaces of 100: one socket short.
        let why = check_timewait(&s, 2, 100).unwrap_or_default();
        assert!(why.contains("199 TIME_WAIT"), "{why}");
        assert_eq!(check_timewait(&s, 2, 99), None);
        let why = check_timewait(&s, 3, 10).unwrap_or_default();
        assert!(why.contains("2 of the 3 namespaces"), "{why}");
    }

    #[test]
    fn reads_top_poll_lines() {
        let line = "04:30:01Z ok       TIME_WAIT=20007 FIN_WAIT2_tw=0 FIN_WAIT1=0 | timewait \
                    20007/262144 (7.6%) overflow 0 | entries 0.0/s steady 0 | leaks 0 stuck 0 \
                    | namespaces 203, most timewait: ip netns tdbench-9-1-0 (100)";
        assert_eq!(parse_top_line(line), Some((20007, Some(203))));
        assert_eq!(
            parse_top_line("04:30:01Z ok       TIME_WAIT=5 FIN_WAIT1=0 | leaks 0"),
            Some((5, None))
        );
        assert_eq!(parse_top_line("deviating: 10.0.0.1:80 RST"), None);

        let out = format!("# a note\n{line}\n{}\n", line.replace("=20007", "=19999"));
        let (polls, tw, ns, why) = check_top(&out, 200, 100);
        assert_eq!((polls, tw, ns), (2, Some(19999), Some(203)));
        assert!(why.unwrap_or_default().contains("19999"));
        assert_eq!(check_top(&out, 200, 99).3, None);
        assert!(check_top(&out, 204, 1).3.is_some());
        assert!(check_top("", 1, 1).3.is_some());
    }

    #[test]
    fn knows_its_own_names() {
        assert_eq!(stale_pid("tdbench-1234-2-17"), Some("1234"));
        assert_eq!(stale_pid("tdbench--2-17"), None);
        assert_eq!(stale_pid("td-twk-fw2-25397-7"), None);
    }
}
