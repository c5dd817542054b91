//! `cargo xtask bench`: what tracing costs a busy host, side by side with the alternatives.
//!
//! Interleaved rounds (untraced, `teardown trace`, top's back end, the peer tool, then again) of
//! the loopback churn of `cargo xtask churn`, each round in a fresh network namespace, so machine
//! drift and timewait build-up cancel out. Then a second scenario holds 50,000 connections open
//! under `teardown trace` to measure its memory per open tracked connection. Results go to
//! bench-results/latest.json and latest.md, and the table is printed.

mod bpfstats;
mod procs;

use std::{
    fmt::Write as _,
    fs::File,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde::Serialize;

use crate::{
    churn::ChurnResult,
    setup,
    sh::{output_of, run},
};
use bpfstats::ProgStat;
use procs::{last_lines, wait_for_text, Churner, Exit, Proc};

/// Arguments of `cargo xtask bench`.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// Rounds of each configuration (interleaved).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Churn seconds per round.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Client threads of the churn.
    #[arg(long, default_value_t = 8)]
    pub threads: usize,
    /// Connections held open in the memory scenario (0: skip it).
    #[arg(long, default_value_t = 50_000)]
    pub hold: u64,
    /// Peer tool: libbpf-tools tcpstates, or a bpftrace program printing the same fields.
    #[arg(long, value_enum, default_value_t = PeerChoice::Auto)]
    pub peer: PeerChoice,
    /// Where latest.json and latest.md go.
    #[arg(long, default_value = "bench-results")]
    pub out_dir: PathBuf,
    /// Use the binaries already built in target/release.
    #[arg(long)]
    pub no_build: bool,
    /// An extra argument for `teardown trace` (repeat for several), to measure a setting:
    /// `--trace-arg=--ring-size --trace-arg=8`.
    #[arg(long = "trace-arg", allow_hyphen_values = true)]
    pub trace_args: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PeerChoice {
    /// tcpstates when it runs here, else bpftrace.
    Auto,
    Tcpstates,
    Bpftrace,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Config {
    Untraced,
    Trace,
    Top,
    Peer,
}

const CONFIGS: [Config; 4] = [Config::Untraced, Config::Trace, Config::Top, Config::Peer];
const OUR_PROGRAMS: [&str; 4] = [
    "inet_sock_set_state_btf",
    "tcp_retransmit_skb_btf",
    "tcp_send_reset_btf",
    "tcp_receive_reset_btf",
];
/// What the tracers print once attached.
const TRACE_READY: &str = "tracing TCP teardowns";
const PEER_HEADER: &str = "SKADDR";
const TRACER_START_TIMEOUT: Duration = Duration::from_secs(60);
const TRACER_STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// The bpftrace version of tcpstates: same tracepoint, same fields, one line per transition.
const BPFTRACE_PROG: &str = r#"BEGIN { printf("SKADDR           PID     COMM             IP LADDR           LPORT RADDR           RPORT OLDSTATE -> NEWSTATE MS\n"); }
tracepoint:sock:inet_sock_set_state / args->protocol == 6 /
{
  $now = nsecs;
  $last = @ts[args->skaddr];
  $ms = $last > 0 ? ($now - $last) / 1000000 : 0;
  printf("%p %-7d %-16s %d  %-15s %-5d %-15s %-5d %d -> %d %d\n", args->skaddr, pid, comm,
         args->family == 2 ? 4 : 6, ntop(args->family, args->saddr), args->sport,
         ntop(args->family, args->daddr), args->dport, args->oldstate, args->newstate, $ms);
  if (args->newstate == 7) { delete(@ts[args->skaddr]); } else { @ts[args->skaddr] = $now; }
}
END { clear(@ts); }
"#;

#[derive(Clone, Debug)]
enum Peer {
    Tcpstates(PathBuf),
    Bpftrace(PathBuf),
}

impl Peer {
    fn label(&self) -> &'static str {
        match self {
            Peer::Tcpstates(_) => "peer: libbpf-tools tcpstates > file",
            Peer::Bpftrace(_) => "peer: bpftrace tcpstates-like > file",
        }
    }
}

/// One configuration in one round.
#[derive(Clone, Debug, Default, Serialize)]
struct Round {
    config: Option<Config>,
    round: usize,
    connections: u64,
    per_second: f64,
    churn_errors: u64,
    /// Throughput over the untraced run of the same round.
    ratio: Option<f64>,
    events_seen: Option<u64>,
    events_lost: Option<u64>,
    /// Connections x events per connection (from our tracer's rounds): what a tracer should see.
    events_expected: Option<u64>,
    kernel_ns_per_run: Option<f64>,
    kernel_programs: Vec<ProgStat>,
    agent_cpu_s: Option<f64>,
    agent_cpu_us_per_event: Option<f64>,
    /// Agent CPU over the churn's wall time, in percent of one core.
    agent_cpu_pct: Option<f64>,
    agent_peak_rss_kib: Option<u64>,
    note: Option<String>,
    error: Option<String>,
}

#[derive(Clone, Copy, Debug, Serialize)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
    n: usize,
}

fn spread(mut v: Vec<f64>) -> Option<Spread> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Spread {
        median,
        min: v[0],
        max: v[n - 1],
        n,
    })
}

#[derive(Clone, Debug, Serialize)]
struct ConfigSummary {
    config: Config,
    label: String,
    rounds_ok: usize,
    per_second: Option<Spread>,
    ratio: Option<Spread>,
    events_seen: Option<Spread>,
    events_lost: Option<Spread>,
    events_expected: Option<Spread>,
    kernel_ns_per_run: Option<Spread>,
    agent_cpu_us_per_event: Option<Spread>,
    agent_cpu_pct: Option<Spread>,
    agent_peak_rss_kib: Option<Spread>,
    notes: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
struct HoldResult {
    /// Loopback connections held open: both ends are on this host.
    connections: u64,
    /// What the tracker holds for them: each end is a connection of its own (as in teardown's
    /// output, where the two ends are `peer`s of each other).
    tracked_connections: u64,
    rss_before_kib: u64,
    rss_with_kib: u64,
    anon_before_kib: u64,
    anon_with_kib: u64,
    /// (RssAnon with - before) / tracked connections: the agent's heap per open tracked
    /// connection.
    bytes_per_connection_anon: f64,
    /// Same from VmRSS (also counts ring-buffer pages touched by the burst of events).
    bytes_per_connection_rss: f64,
    peak_rss_kib: u64,
    events_seen: Option<u64>,
    events_lost: Option<u64>,
    error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
struct Machine {
    kernel: String,
    cpu_model: String,
    cores: usize,
    mem_total_mib: u64,
}

#[derive(Clone, Debug, Serialize)]
struct Target {
    target: String,
    measured: String,
    met: Option<bool>,
}

#[derive(Clone, Debug, Serialize)]
struct Report {
    date: String,
    machine: Machine,
    rounds: usize,
    seconds_per_round: f64,
    churn_threads: usize,
    peer: String,
    top_back_end: String,
    events_per_connection: Option<f64>,
    summary: Vec<ConfigSummary>,
    hold: Option<HoldResult>,
    targets: Vec<Target>,
    runs: Vec<Round>,
}

struct Ctx {
    teardown: PathBuf,
    xtask: PathBuf,
    work: PathBuf,
    args: BenchArgs,
    peer: Peer,
}

pub fn bench(args: BenchArgs) -> Result<()> {
    if !setup::is_root() {
        bail!("the benchmark loads eBPF programs and creates network namespaces: run it as root");
    }
    if args.rounds == 0 || args.rounds > 100 {
        bail!("--rounds must be between 1 and 100");
    }
    if !(args.seconds >= 0.5 && args.seconds <= 600.0) {
        bail!("--seconds must be between 0.5 and 600");
    }
    if !args.no_build {
        setup::setup(true)?;
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        println!("bench: building the release binaries (teardown, and the churn generator)");
        run(Command::new(cargo).args([
            "build",
            "--release",
            "--package",
            "teardown-user",
            "--package",
            "xtask",
        ]))
        .context("building the release binaries failed")?;
    }
    let root = workspace_root()?;
    let teardown = root.join("target/release/teardown");
    let xtask = root.join("target/release/xtask");
    for b in [&teardown, &xtask] {
        if !b.exists() {
            bail!("{} is missing (build it, or drop --no-build)", b.display());
        }
    }
    let out_dir = if args.out_dir.is_absolute() {
        args.out_dir.clone()
    } else {
        root.join(&args.out_dir)
    };
    let work = out_dir.join("work");
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;

    let peer = choose_peer(args.peer, &work)?;
    if !bpfstats::available() {
        bail!("this kernel has no kernel.bpf_stats_enabled sysctl");
    }
    let _stats = bpfstats::StatsGuard::enable()?;
    let machine = machine();
    println!(
        "bench: {} rounds x {} configurations x {} s; machine: Linux {}, {}, {} cores",
        args.rounds,
        CONFIGS.len(),
        args.seconds,
        machine.kernel,
        machine.cpu_model,
        machine.cores
    );
    let ctx = Ctx {
        teardown,
        xtask,
        work: work.clone(),
        args: args.clone(),
        peer,
    };

    let mut runs: Vec<Round> = Vec::new();
    for r in 0..args.rounds {
        for cfg in CONFIGS {
            let label = label(&ctx, cfg);
            let mut res = match run_round(&ctx, cfg, r) {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("bench: round {} {label} failed: {e:#}", r + 1);
                    Round {
                        error: Some(format!("{e:#}")),
                        ..Round::default()
                    }
                }
            };
            res.config = Some(cfg);
            res.round = r;
            println!(
                "bench: round {}/{} {:<40} {:>8.0} conn/s{}{}{}",
                r + 1,
                args.rounds,
                label,
                res.per_second,
                res.events_seen
                    .map_or(String::new(), |e| format!(", {e} events")),
                res.events_lost
                    .map_or(String::new(), |e| format!(", {e} lost")),
                res.agent_cpu_us_per_event
                    .map_or(String::new(), |c| format!(", {c:.2} µs CPU/event")),
            );
            runs.push(res);
        }
    }
    fill_ratios(&mut runs);
    let epc = spread(
        runs.iter()
            .filter(|r| r.config == Some(Config::Trace) && r.error.is_none() && r.connections > 0)
            .filter_map(|r| {
                Some((r.events_seen? + r.events_lost.unwrap_or(0)) as f64 / r.connections as f64)
            })
            .collect(),
    )
    .map(|s| s.median);
    if let Some(epc) = epc {
        for r in runs
            .iter_mut()
            .filter(|r| r.config != Some(Config::Untraced) && r.config != Some(Config::Top))
        {
            r.events_expected = Some((r.connections as f64 * epc).round() as u64);
        }
    }

    let hold = if args.hold > 0 {
        println!(
            "bench: memory scenario: {} connections held open under teardown trace",
            args.hold
        );
        Some(match run_hold(&ctx) {
            Ok(h) => h,
            Err(e) => {
                eprintln!("bench: the memory scenario failed: {e:#}");
                HoldResult {
                    error: Some(format!("{e:#}")),
                    ..HoldResult::default()
                }
            }
        })
    } else {
        None
    };

    let summary: Vec<ConfigSummary> = CONFIGS.iter().map(|&c| summarize(&ctx, c, &runs)).collect();
    let targets = targets(&summary, hold.as_ref());
    let report = Report {
        date: output_of("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"])
            .unwrap_or_default()
            .trim()
            .to_owned(),
        machine,
        rounds: args.rounds,
        seconds_per_round: args.seconds,
        churn_threads: args.threads,
        peer: ctx.peer.label().to_owned(),
        top_back_end: TOP_BACK_END.to_owned(),
        events_per_connection: epc,
        summary,
        hold,
        targets,
        runs,
    };
    let md = markdown(&report);
    let json = serde_json::to_string_pretty(&report)?;
    std::fs::write(out_dir.join("latest.json"), json)
        .with_context(|| format!("cannot write {}", out_dir.join("latest.json").display()))?;
    std::fs::write(out_dir.join("latest.md"), &md)
        .with_context(|| format!("cannot write {}", out_dir.join("latest.md").display()))?;
    let _ = std::fs::remove_dir_all(&work);
    println!("\n{md}");
    println!(
        "bench: wrote {} and {}",
        out_dir.join("latest.json").display(),
        out_dir.join("latest.md").display()
    );
    Ok(())
}

fn workspace_root() -> Result<PathBuf> {
    // xtask lives in <root>/xtask.
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    dir.parent()
        .map(Path::to_path_buf)
        .context("cannot find the workspace root")
}

fn label(ctx: &Ctx, cfg: Config) -> String {
    match cfg {
        Config::Untraced => "untraced".into(),
        Config::Trace if ctx.args.trace_args.is_empty() => {
            "teardown trace --format jsonl -o FILE".into()
        }
        Config::Trace => format!(
            "teardown trace --format jsonl -o FILE {}",
            ctx.args.trace_args.join(" ")
        ),
        Config::Top => "teardown top --batch --netns CHURN".into(),
        Config::Peer => ctx.peer.label().into(),
    }
}

fn find_tool(name: &str) -> Option<PathBuf> {
    which::which(name).ok().or_else(|| {
        ["/usr/sbin", "/usr/bin", "/sbin"]
            .iter()
            .map(|d| Path::new(d).join(name))
            .find(|p| p.exists())
    })
}

fn choose_peer(choice: PeerChoice, work: &Path) -> Result<Peer> {
    // Both peers attach to the classic tracepoint, which needs tracefs; a fresh machine may
    // not have it mounted (teardown itself mounts it only when it falls back to that hook).
    mount_tracefs()?;
    if choice != PeerChoice::Bpftrace {
        setup::ensure_tool(
            "tcpstates",
            "libbpf-tools",
            "the benchmark compares teardown with libbpf-tools' tcpstates, the peer users would run",
        )?;
        let path = find_tool("tcpstates").context("tcpstates is not on PATH after installing")?;
        match probe_peer(&Peer::Tcpstates(path.clone()), work) {
            Ok(()) => return Ok(Peer::Tcpstates(path)),
            Err(e) if choice == PeerChoice::Auto => {
                println!("bench: tcpstates does not run here ({e:#}): using bpftrace instead")
            }
            Err(e) => return Err(e.context("tcpstates does not run here")),
        }
    }
    setup::ensure_tool(
        "bpftrace",
        "bpftrace",
        "the benchmark's peer tool is a bpftrace program when tcpstates does not run",
    )?;
    let path = find_tool("bpftrace").context("bpftrace is not on PATH after installing")?;
    let peer = Peer::Bpftrace(path);
    probe_peer(&peer, work).context("the bpftrace peer does not run here")?;
    Ok(peer)
}

fn mount_tracefs() -> Result<()> {
    const TRACEFS: &str = "/sys/kernel/tracing";
    if Path::new(TRACEFS).join("events").exists() {
        return Ok(());
    }
    println!("bench: mounting tracefs at {TRACEFS} (the peer tools attach to a tracepoint)");
    let status = Command::new("mount")
        .args(["-t", "tracefs", "tracefs", TRACEFS])
        .status()
        .context("running mount")?;
    if !status.success() {
        bail!("cannot mount tracefs at {TRACEFS} ({status}); mount it by hand: mount -t tracefs tracefs {TRACEFS}");
    }
    Ok(())
}

/// Starts the peer, waits for its header, stops it.
fn probe_peer(peer: &Peer, work: &Path) -> Result<()> {
    let out = work.join("peer-probe.out");
    let err = work.join("peer-probe.err");
    let mut p = start_peer(peer, work, &out, &err)?;
    let r = wait_for_text(&mut p, &out, &err, PEER_HEADER, TRACER_START_TIMEOUT);
    p.stop(libc::SIGINT, Duration::from_secs(10))?;
    r
}

fn start_peer(peer: &Peer, work: &Path, out: &Path, err: &Path) -> Result<Proc> {
    let mut cmd = match peer {
        Peer::Tcpstates(path) => {
            // Block-buffered when not on a terminal: line-buffer it to write as it goes.
            let mut c = Command::new("stdbuf");
            c.arg("-oL").arg(path);
            c
        }
        Peer::Bpftrace(path) => {
            let prog = work.join("tcpstates.bt");
            std::fs::write(&prog, BPFTRACE_PROG)?;
            let mut c = Command::new(path);
            c.args(["-B", "line"]).arg(&prog);
            c
        }
    };
    cmd.stdin(Stdio::null())
        .stdout(File::create(out)?)
        .stderr(File::create(err)?);
    Proc::spawn(&mut cmd, "the peer tool")
}

fn start_trace(ctx: &Ctx, out: &Path, err: &Path) -> Result<Proc> {
    let mut cmd = Command::new(&ctx.teardown);
    cmd.args(["trace", "--format", "jsonl", "-o"])
        .arg(out)
        .args(&ctx.args.trace_args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(err)?);
    let mut p = Proc::spawn(&mut cmd, "teardown trace")?;
    wait_for_text(&mut p, err, err, TRACE_READY, TRACER_START_TIMEOUT)?;
    Ok(p)
}

/// What the top configuration runs, for the report.
const TOP_BACK_END: &str = "teardown top --batch --interval 1 --netns (the churn's namespace): \
its sock_diag collector, history, leak and pressure figures, and its eBPF tracer judging every \
teardown of that namespace for the deviation panel, as the view gets them";

/// In every line `top --batch` prints per poll.
const TOP_POLL_LINE: &str = " TIME_WAIT=";

fn start_top(ctx: &Ctx, churn_pid: i64, out: &Path, err: &Path) -> Result<Proc> {
    let mut cmd = Command::new(&ctx.teardown);
    cmd.args(["top", "--batch", "--interval", "1", "--netns"])
        .arg(format!("/proc/{churn_pid}/ns/net"))
        .stdin(Stdio::null())
        .stdout(File::create(out)?)
        .stderr(File::create(err)?);
    Proc::spawn(&mut cmd, "teardown top --batch")
}

/// `summary: A connections reported (B seen), E events, L lost events` -> (E, L).
fn parse_summary(stderr: &str) -> Option<(u64, u64)> {
    let line = stderr
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with("summary:"))?;
    let t: Vec<&str> = line.split_whitespace().collect();
    let before = |w: &str| -> Option<u64> {
        let i = t.iter().position(|x| x.trim_end_matches(',') == w)?;
        t.get(i.checked_sub(1)?)?.parse().ok()
    };
    Some((before("events")?, before("lost")?))
}

/// Sum of every "lost N events" / "Lost N events" a peer printed.
fn peer_lost(text: &str) -> u64 {
    let mut total = 0;
    for l in text.lines() {
        let t: Vec<&str> = l.split_whitespace().collect();
        for w in t.windows(3) {
            if w[0].eq_ignore_ascii_case("lost") && w[2].starts_with("event") {
                total += w[1].parse::<u64>().unwrap_or(0);
            }
        }
    }
    total
}

/// Transition lines in a peer's output (header and notices left out).
fn peer_lines(path: &Path) -> Result<u64> {
    use std::io::BufRead as _;
    let f = std::io::BufReader::with_capacity(1 << 20, File::open(path)?);
    let mut lines = 0u64;
    for l in f.split(b'\n') {
        let l = l?;
        if l.starts_with(PEER_HEADER.as_bytes())
            || l.starts_with(b"Attaching")
            || l.starts_with(b"Lost ")
            || l.is_empty()
        {
            continue;
        }
        lines += 1;
    }
    Ok(lines)
}

/// The top back end: `teardown timewait --format json` every second, in the churn's namespace,
/// until `stop`. Returns (CPU seconds in all, peak RSS KiB, runs, failures).
enum Agent {
    None,
    Trace { p: Proc, out: PathBuf, err: PathBuf },
    Peer { p: Proc, out: PathBuf, err: PathBuf },
    Top { p: Proc, out: PathBuf, err: PathBuf },
}

fn run_round(ctx: &Ctx, cfg: Config, r: usize) -> Result<Round> {
    let a = &ctx.args;
    let mut churn = Churner::start(
        &ctx.xtask,
        &[
            "--threads".into(),
            a.threads.to_string(),
            "--seconds".into(),
            a.seconds.to_string(),
        ],
    )?;
    let ready = churn.next(Duration::from_secs(30))?;
    let churn_pid = ready
        .get("pid")
        .and_then(|p| p.as_i64())
        .context("the churn generator did not say its pid")?;
    let tag = format!("{cfg:?}-{r}").to_lowercase();
    let mut agent = match cfg {
        Config::Untraced => Agent::None,
        Config::Trace => {
            let (out, err) = (
                ctx.work.join(format!("{tag}.jsonl")),
                ctx.work.join(format!("{tag}.err")),
            );
            let p = start_trace(ctx, &out, &err)?;
            Agent::Trace { p, out, err }
        }
        Config::Peer => {
            let (out, err) = (
                ctx.work.join(format!("{tag}.out")),
                ctx.work.join(format!("{tag}.err")),
            );
            let mut p = start_peer(&ctx.peer, &ctx.work, &out, &err)?;
            wait_for_text(&mut p, &out, &err, PEER_HEADER, TRACER_START_TIMEOUT)?;
            Agent::Peer { p, out, err }
        }
        Config::Top => {
            let (out, err) = (
                ctx.work.join(format!("{tag}.out")),
                ctx.work.join(format!("{tag}.err")),
            );
            let mut p = start_top(ctx, churn_pid, &out, &err)?;
            wait_for_text(&mut p, &out, &err, TOP_POLL_LINE, TRACER_START_TIMEOUT)?;
            Agent::Top { p, out, err }
        }
    };
    // Let the agent settle, then take its CPU baseline (start-up is not charged to the load).
    thread::sleep(Duration::from_millis(300));
    let cpu0 = match &agent {
        Agent::Trace { p, .. } | Agent::Peer { p, .. } | Agent::Top { p, .. } => p.cpu_now(),
        _ => None,
    };
    churn.go()?;
    let result: ChurnResult =
        serde_json::from_value(churn.next(Duration::from_secs_f64(a.seconds + 60.0))?)
            .context("the churn generator's result")?;
    let cexit = churn.finish(Duration::from_secs(10))?;
    if !cexit.success() {
        bail!("the churn generator failed: {}", cexit.describe());
    }
    let mut round = Round {
        connections: result.connections,
        per_second: result.per_second,
        churn_errors: result.errors,
        ..Round::default()
    };
    if result.connections == 0 {
        round.error = Some("the churn made no connections".into());
    }
    let wall = result.seconds.max(1e-9);

    let finish = |p: &mut Proc, round: &mut Round, our: bool| -> Result<Exit> {
        // The kernel's statistics of the programs this agent holds, before it lets them go.
        let mut progs = bpfstats::stats_of(p.pid());
        if our {
            progs.retain(|s| OUR_PROGRAMS.iter().any(|o| o.starts_with(&s.name)));
        }
        round.kernel_ns_per_run = bpfstats::avg_ns(&progs);
        round.kernel_programs = progs;
        let e = p.stop(libc::SIGINT, TRACER_STOP_TIMEOUT)?;
        round.agent_peak_rss_kib = Some(e.maxrss_kib);
        let cpu = (e.cpu_s - cpu0.unwrap_or(0.0)).max(0.0);
        round.agent_cpu_s = Some(cpu);
        round.agent_cpu_pct = Some(100.0 * cpu / wall);
        Ok(e)
    };
    match &mut agent {
        Agent::None => {}
        Agent::Trace { p, out, err } => {
            let e = finish(p, &mut round, true)?;
            let text = std::fs::read_to_string(&*err).unwrap_or_default();
            match parse_summary(&text) {
                Some((ev, lost)) => {
                    round.events_seen = Some(ev);
                    round.events_lost = Some(lost);
                    round.agent_cpu_us_per_event = round
                        .agent_cpu_s
                        .filter(|_| ev > 0)
                        .map(|c| c * 1e6 / ev as f64);
                }
                None => bail!(
                    "teardown trace printed no summary ({}): {}",
                    e.describe(),
                    last_lines(&text, 5)
                ),
            }
            let _ = std::fs::remove_file(&*out);
        }
        Agent::Peer { p, out, err } => {
            let e = finish(p, &mut round, false)?;
            let seen = peer_lines(out)?;
            let errtext = std::fs::read_to_string(&*err).unwrap_or_default();
            // tcpstates warns on stderr; bpftrace says "Lost N events" on stdout.
            let mut lost = peer_lost(&errtext);
            if matches!(ctx.peer, Peer::Bpftrace(_)) {
                lost += peer_lost(&std::fs::read_to_string(&*out).unwrap_or_default());
            }
            round.events_seen = Some(seen);
            round.events_lost = Some(lost);
            round.agent_cpu_us_per_event = round
                .agent_cpu_s
                .filter(|_| seen > 0)
                .map(|c| c * 1e6 / seen as f64);
            let by_sigint = libc::WIFSIGNALED(e.status) && libc::WTERMSIG(e.status) == libc::SIGINT;
            if !(e.success() || by_sigint) {
                round.note = Some(format!("the peer ended with {}", e.describe()));
            }
            let _ = std::fs::remove_file(&*out);
        }
        Agent::Top { p, out, err } => {
            let e = finish(p, &mut round, false)?;
            let text = std::fs::read_to_string(&*out).unwrap_or_default();
            let polls = text.lines().filter(|l| l.contains(TOP_POLL_LINE)).count();
            round.note = Some(format!("{polls} polls"));
            if !e.success() {
                let t = std::fs::read_to_string(&*err).unwrap_or_default();
                bail!(
                    "teardown top --batch failed ({}): {}",
                    e.describe(),
                    last_lines(&t, 3)
                );
            }
            let _ = std::fs::remove_file(&*out);
        }
    }
    Ok(round)
}

/// The memory scenario: `teardown trace` running, then `hold` connections opened and kept.
fn run_hold(ctx: &Ctx) -> Result<HoldResult> {
    let n = ctx.args.hold;
    let mut churn = Churner::start(
        &ctx.xtask,
        &[
            "--hold".into(),
            n.to_string(),
            "--seconds".into(),
            "120".into(),
        ],
    )?;
    churn.next(Duration::from_secs(60))?;
    let (out, err) = (ctx.work.join("hold.jsonl"), ctx.work.join("hold.err"));
    let mut p = start_trace(ctx, &out, &err)?;
    thread::sleep(Duration::from_secs(1));
    let mut h = HoldResult {
        rss_before_kib: p.status_kib("VmRSS").unwrap_or(0),
        anon_before_kib: p.status_kib("RssAnon").unwrap_or(0),
        ..HoldResult::default()
    };
    churn.go()?;
    let held = churn.next(Duration::from_secs(180))?;
    h.connections = held.get("open").and_then(|o| o.as_u64()).unwrap_or(0);
    if h.connections == 0 {
        bail!("no connection could be held open");
    }
    // Let the agent take in the burst: wait until its CPU time stops moving (bounded).
    let until = Instant::now() + Duration::from_secs(30);
    let mut last = p.cpu_now();
    while Instant::now() < until {
        thread::sleep(Duration::from_millis(1000));
        let now = p.cpu_now();
        if now == last {
            break;
        }
        last = now;
    }
    h.rss_with_kib = p.status_kib("VmRSS").unwrap_or(0);
    h.anon_with_kib = p.status_kib("RssAnon").unwrap_or(0);
    h.tracked_connections = 2 * h.connections;
    let per = |a: u64, b: u64| (b.saturating_sub(a) as f64 * 1024.0) / h.tracked_connections as f64;
    h.bytes_per_connection_anon = per(h.anon_before_kib, h.anon_with_kib);
    h.bytes_per_connection_rss = per(h.rss_before_kib, h.rss_with_kib);
    churn.go()?; // release
    let _ = churn.next(Duration::from_secs(60));
    churn.finish(Duration::from_secs(30))?;
    let e = p.stop(libc::SIGINT, TRACER_STOP_TIMEOUT)?;
    h.peak_rss_kib = e.maxrss_kib;
    if let Some((ev, lost)) = parse_summary(&std::fs::read_to_string(&err).unwrap_or_default()) {
        h.events_seen = Some(ev);
        h.events_lost = Some(lost);
    }
    let _ = std::fs::remove_file(&out);
    Ok(h)
}

fn fill_ratios(runs: &mut [Round]) {
    let base: Vec<(usize, f64)> = runs
        .iter()
        .filter(|r| r.config == Some(Config::Untraced) && r.error.is_none())
        .map(|r| (r.round, r.per_second))
        .collect();
    for r in runs.iter_mut().filter(|r| r.error.is_none()) {
        if let Some(&(_, b)) = base.iter().find(|(i, _)| *i == r.round) {
            if b > 0.0 {
                r.ratio = Some(r.per_second / b);
            }
        }
    }
}

fn summarize(ctx: &Ctx, cfg: Config, runs: &[Round]) -> ConfigSummary {
    let ok: Vec<&Round> = runs
        .iter()
        .filter(|r| r.config == Some(cfg) && r.error.is_none())
        .collect();
    let f = |g: &dyn Fn(&Round) -> Option<f64>| spread(ok.iter().filter_map(|r| g(r)).collect());
    let mut notes: Vec<String> = runs
        .iter()
        .filter(|r| r.config == Some(cfg))
        .filter_map(|r| r.error.clone().or_else(|| r.note.clone()))
        .collect();
    notes.dedup();
    notes.truncate(3);
    ConfigSummary {
        config: cfg,
        label: label(ctx, cfg),
        rounds_ok: ok.len(),
        per_second: f(&|r| Some(r.per_second)),
        ratio: f(&|r| r.ratio),
        events_seen: f(&|r| r.events_seen.map(|x| x as f64)),
        events_lost: f(&|r| r.events_lost.map(|x| x as f64)),
        events_expected: f(&|r| r.events_expected.map(|x| x as f64)),
        kernel_ns_per_run: f(&|r| r.kernel_ns_per_run),
        agent_cpu_us_per_event: f(&|r| r.agent_cpu_us_per_event),
        agent_cpu_pct: f(&|r| r.agent_cpu_pct),
        agent_peak_rss_kib: f(&|r| r.agent_peak_rss_kib.map(|x| x as f64)),
        notes,
    }
}

fn targets(summary: &[ConfigSummary], hold: Option<&HoldResult>) -> Vec<Target> {
    let get = |c: Config| summary.iter().find(|s| s.config == c);
    let mut t = Vec::new();
    let trace = get(Config::Trace);
    let peer = get(Config::Peer);
    let tr = trace.and_then(|s| s.ratio);
    let pr = peer.and_then(|s| s.ratio);
    t.push(Target {
        target: "trace throughput >= 95% of untraced".into(),
        measured: tr.map_or("n/a".into(), |r| format!("{:.1}%", r.median * 100.0)),
        met: tr.map(|r| r.median >= 0.95),
    });
    t.push(Target {
        target: "trace ratio better than the peer's".into(),
        measured: match (tr, pr) {
            (Some(a), Some(b)) => format!("{:.3} vs {:.3}", a.median, b.median),
            _ => "n/a".into(),
        },
        met: match (tr, pr) {
            (Some(a), Some(b)) => Some(a.median > b.median),
            _ => None,
        },
    });
    let lost = trace.and_then(|s| s.events_lost);
    t.push(Target {
        target: "zero lost events at max churn (default settings)".into(),
        measured: lost.map_or("n/a".into(), |l| {
            format!("max {} lost per round (median {})", l.max, l.median)
        }),
        met: lost.map(|l| l.max == 0.0),
    });
    let k = trace.and_then(|s| s.kernel_ns_per_run);
    t.push(Target {
        target: "kernel program <= 300 ns per invocation".into(),
        measured: k.map_or("n/a".into(), |k| format!("{:.0} ns", k.median)),
        met: k.map(|k| k.median <= 300.0),
    });
    let c = trace.and_then(|s| s.agent_cpu_us_per_event);
    t.push(Target {
        target: "agent <= 2 µs CPU per event".into(),
        measured: c.map_or("n/a".into(), |c| format!("{:.2} µs", c.median)),
        met: c.map(|c| c.median <= 2.0),
    });
    let m = hold.filter(|h| h.error.is_none() && h.connections > 0);
    t.push(Target {
        target: "<= 1 KiB per open tracked connection".into(),
        measured: m.map_or("n/a".into(), |h| {
            format!(
                "{:.0} B (heap, RssAnon); {:.0} B by VmRSS",
                h.bytes_per_connection_anon, h.bytes_per_connection_rss
            )
        }),
        met: m.map(|h| h.bytes_per_connection_anon <= 1024.0),
    });
    t
}

fn fmt_spread(s: Option<Spread>, f: &dyn Fn(f64) -> String) -> String {
    match s {
        None => "–".into(),
        Some(s) if s.n == 1 || s.min == s.max => f(s.median),
        Some(s) => format!("{} ({}–{})", f(s.median), f(s.min), f(s.max)),
    }
}

fn thousands(x: f64) -> String {
    let n = x.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let m = &r.machine;
    let _ = writeln!(s, "### teardown benchmark ({})", r.date);
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "Machine: Linux {}, {}, {} cores, {} MiB RAM. Loopback churn: {} client threads, connect, \
         1 byte each way, client closes first; {} interleaved rounds of {} s per configuration, \
         each round in a fresh network namespace. Medians, with (min–max) over rounds.",
        m.kernel,
        m.cpu_model,
        m.cores,
        m.mem_total_mib,
        r.churn_threads,
        r.rounds,
        r.seconds_per_round
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| configuration | connections/s | ratio to untraced | events seen | events lost | \
         kernel ns/run | agent CPU µs/event | agent CPU % of a core | agent peak RSS MiB |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for c in &r.summary {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            c.label,
            fmt_spread(c.per_second, &thousands),
            fmt_spread(c.ratio, &|x| format!("{x:.3}")),
            fmt_spread(c.events_seen, &thousands),
            fmt_spread(c.events_lost, &thousands),
            fmt_spread(c.kernel_ns_per_run, &|x| format!("{x:.0}")),
            fmt_spread(c.agent_cpu_us_per_event, &|x| format!("{x:.2}")),
            fmt_spread(c.agent_cpu_pct, &|x| format!("{x:.1}")),
            fmt_spread(c.agent_peak_rss_kib, &|x| format!("{:.1}", x / 1024.0)),
        );
    }
    let _ = writeln!(s);
    if let Some(epc) = r.events_per_connection {
        let _ = writeln!(
            s,
            "About {epc:.1} state changes per connection (teardown's events seen + lost / \
             connections). The peer's expected events per round are connections × that: {}.",
            r.summary
                .iter()
                .find(|c| c.config == Config::Peer)
                .and_then(|c| c.events_expected)
                .map_or("n/a".into(), |e| format!("median {}", thousands(e.median)))
        );
        let _ = writeln!(s);
    }
    let _ = writeln!(s, "Top's back end: {}.", r.top_back_end);
    for c in &r.summary {
        for n in &c.notes {
            let _ = writeln!(s, "- {}: {}", c.label, n);
        }
    }
    let _ = writeln!(s);
    if let Some(h) = &r.hold {
        match &h.error {
            Some(e) => {
                let _ = writeln!(s, "Memory scenario failed: {e}");
            }
            None => {
                let _ = writeln!(
                    s,
                    "Memory: {} loopback connections held open under `teardown trace`, both ends \
                     on this host, so {} tracked connections (each end is one, as in the \
                     output): RSS {:.1} → {:.1} MiB, heap (RssAnon) {:.1} → {:.1} MiB: **{:.0} B \
                     per open tracked connection** ({:.0} B per loopback pair; heap; {:.0} B by \
                     VmRSS, which also counts ring-buffer pages touched by the burst); peak RSS \
                     {:.1} MiB; {} events, {} lost.",
                    thousands(h.connections as f64),
                    thousands(h.tracked_connections as f64),
                    h.rss_before_kib as f64 / 1024.0,
                    h.rss_with_kib as f64 / 1024.0,
                    h.anon_before_kib as f64 / 1024.0,
                    h.anon_with_kib as f64 / 1024.0,
                    h.bytes_per_connection_anon,
                    2.0 * h.bytes_per_connection_anon,
                    h.bytes_per_connection_rss,
                    h.peak_rss_kib as f64 / 1024.0,
                    h.events_seen.map_or("?".into(), |x| thousands(x as f64)),
                    h.events_lost.map_or("?".into(), |x| thousands(x as f64)),
                );
            }
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(s, "| target | measured | met |");
    let _ = writeln!(s, "|---|---|---|");
    for t in &r.targets {
        let _ = writeln!(
            s,
            "| {} | {} | {} |",
            t.target,
            t.measured,
            match t.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "n/a",
            }
        );
    }
    s
}

fn machine() -> Machine {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    let mem_total_mib = procs::meminfo_kib("MemTotal").unwrap_or(0) / 1024;
    Machine {
        kernel,
        cpu_model,
        cores,
        mem_total_mib,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_our_summary() {
        let s = "tracing TCP teardowns (hook: btf)\nsummary: 10 connections reported (12 seen), 1234 events, 5 lost events\n  verdicts: 1 conform";
        assert_eq!(parse_summary(s), Some((1234, 5)));
    }

    #[test]
    fn parses_peer_loss() {
        assert_eq!(
            peer_lost("lost 12 events on CPU #0\nlost 3 events on CPU #1\nLost 7 events\n"),
            22
        );
    }

    #[test]
    fn spreads() {
        let s = spread(vec![3.0, 1.0, 2.0]).map(|s| (s.median, s.min, s.max));
        assert_eq!(s, Some((2.0, 1.0, 3.0)));
        assert_eq!(thousands(1234567.0), "1,234,567");
    }
}
