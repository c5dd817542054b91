//! `cargo xtask bench`: what tracing costs a busy host and whether it keeps up, side by side with
//! the alternatives.
//!
//! Interleaved rounds (untraced, `teardown trace`, top's back end, the peer tool, then again) of
//! the loopback churn of `cargo xtask churn`, each round in a fresh network namespace, so machine
//! drift and timewait build-up cancel out; the trace's other output choices (`--conforming full`
//! and `none`) take one round each. Then a soak: one `teardown trace` with default settings
//! under the same churn for minutes, its memory sampled as it goes. Then a second scenario holds
//! 50,000 connections open under `teardown trace` to measure its memory per open tracked
//! connection. Last, `teardown timewait` and `teardown top` over every network namespace of a host
//! holding hundreds of them, each with TIME_WAIT sockets (see [`namespaces`]). Results go to
//! bench-results/latest.json and latest.md, and the tables are printed.
//!
//! Agent CPU is charged per state change as the kernel counts them, whatever the agent records:
//! the runs of the program on `inet_sock_set_state` (the kernel's BPF statistics), read over the
//! same span as the CPU time.

mod bpfstats;
mod html_report;
mod namespaces;
mod procs;
mod report;
mod serve_soak;
mod soak;
mod timers;

use std::{
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
use soak::SoakResult;
use timers::{IdleResult, TimerSplit, TwEvents};

/// Arguments of `cargo xtask bench`.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// Rounds of each configuration (interleaved).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Churn seconds per round.
    #[arg(long, default_value_t = 30.0)]
    pub seconds: f64,
    /// Seconds of the soak: one `teardown trace` under the churn, its memory sampled as it goes
    /// (0: skip it). A longer soak is a bigger number.
    #[arg(long, default_value_t = 300.0)]
    pub soak_seconds: f64,
    /// The soak's untraced baseline: an untraced churn of the same length (adds that long to
    /// the run), or the untraced rounds' median rate (biased: a churn runs about 1% slower once
    /// its timewait sockets start expiring, a minute in, than in a round).
    #[arg(long, value_enum, default_value_t = SoakBaseline::Measured)]
    pub soak_baseline: SoakBaseline,
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
    /// Network namespaces of the namespaces scenario, which measures `teardown timewait` and
    /// `teardown top` over every namespace of the host (0: skip it).
    #[arg(long, default_value_t = 200)]
    pub namespaces: usize,
    /// TIME_WAIT sockets made in each of those namespaces.
    #[arg(long, default_value_t = 100)]
    pub namespace_sockets: usize,
    /// Run the namespaces scenario alone: no churn rounds, soak or memory scenario (about a
    /// minute).
    #[arg(long)]
    pub only_namespaces: bool,
    /// Run the fleet soak alone: `teardown serve` (metrics scraped every 15 s) under a steady
    /// churn of --serve-soak-rate connections per second for --serve-soak-seconds; results go to
    /// serve-soak.json and serve-soak.md (latest.* are left as they are).
    #[arg(long)]
    pub serve_soak: bool,
    /// Seconds of the fleet soak.
    #[arg(long, default_value_t = 1800.0)]
    pub serve_soak_seconds: f64,
    /// Connections per second of the fleet soak's churn.
    #[arg(long, default_value_t = 2000.0)]
    pub serve_soak_rate: f64,
    /// Seconds of `teardown trace` with no churn, before the rounds: the timer programs' cost
    /// on timers that are not a timewait socket's (0: skip it).
    #[arg(long, default_value_t = 10.0)]
    pub idle_seconds: f64,
    /// Only the HTML report's section: a 100,000-connection recording made from the replay
    /// fixtures, reported and opened in headless chromium (--rounds times); results go to
    /// report.json and report.md (latest.* are left as they are).
    #[arg(long)]
    pub only_report: bool,
    /// Connections of the HTML report's recording.
    #[arg(long, default_value_t = 100_000)]
    pub report_connections: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PeerChoice {
    /// tcpstates when it runs here, else bpftrace.
    Auto,
    Tcpstates,
    Bpftrace,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SoakBaseline {
    /// An untraced churn as long as the soak.
    Measured,
    /// The untraced rounds' median rate.
    Rounds,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Config {
    Untraced,
    /// `teardown trace` with default settings (and the `--trace-arg`s).
    Trace,
    Top,
    Peer,
    /// `teardown trace --conforming full`.
    TraceFull,
    /// `teardown trace --conforming none`.
    TraceNone,
    /// `teardown trace --timewait-source sock-diag`: without the timer programs.
    TraceSockDiag,
}

/// What every round runs, in this order (the untraced run first: the others' ratio is to it).
const CONFIGS: [Config; 4] = [Config::Untraced, Config::Trace, Config::Top, Config::Peer];
/// The trace's other output choices, one round each (the i-th in round i, modulo the rounds).
const CHOICES: [(Config, &str); 2] = [(Config::TraceFull, "full"), (Config::TraceNone, "none")];
/// The option choosing what JSON Lines writes for a conforming connection.
const CONFORMING: &str = "--conforming";
/// The option turning the timer programs off, and its value that does.
const TIMEWAIT_SOURCE: &str = "--timewait-source";
const SOCK_DIAG: &str = "sock-diag";
/// What the tracers print once attached.
const TRACE_READY: &str = "tracing TCP teardowns";
const PEER_HEADER: &str = "SKADDR";
const TRACER_START_TIMEOUT: Duration = Duration::from_secs(60);
/// Stopping may mean draining a full ring buffer and writing what it held.
const TRACER_STOP_TIMEOUT: Duration = Duration::from_secs(120);
/// The agent settles this long after it is ready before its measured span begins (start-up is
/// not charged to the load).
const SETTLE: Duration = Duration::from_millis(300);

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

/// An agent measured over a span: the kernel's figures of its programs and its own CPU.
#[derive(Clone, Debug, Default, Serialize)]
struct AgentFigures {
    /// Runs of the program on `inet_sock_set_state` over the span: state changes as the kernel
    /// counts them (every TCP state change on the host, whatever the agent records).
    state_changes: Option<u64>,
    /// Run time over runs, all the agent's programs together.
    kernel_ns_per_run: Option<f64>,
    /// Run time of all the agent's programs over the state changes.
    kernel_ns_per_state_change: Option<f64>,
    /// Each program's runs and run time over the span.
    kernel_programs: Vec<ProgStat>,
    /// User + system CPU seconds from the span's start to the agent's exit (its draining and
    /// final writes included).
    agent_cpu_s: Option<f64>,
    /// Agent CPU over the churn's wall time, in percent of one core.
    agent_cpu_pct: Option<f64>,
    agent_cpu_us_per_state_change: Option<f64>,
    agent_cpu_us_per_event: Option<f64>,
    agent_peak_rss_kib: Option<u64>,
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
    #[serde(flatten)]
    agent: AgentFigures,
    /// Connection ends the trace's summary counts as reported.
    connections_reported: Option<u64>,
    /// Size of the JSON Lines file.
    output_bytes: Option<u64>,
    bytes_per_connection_end: Option<f64>,
    /// The trace with the timer programs: the timewait-socket events of the span, counted in
    /// the churn's namespace (see [`timers`]).
    timewait_events: Option<TwEvents>,
    /// Timewait sockets the churn's namespace did not make, its table full (no timer).
    timewait_overflow: Option<u64>,
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
    state_changes: Option<Spread>,
    kernel_ns_per_run: Option<Spread>,
    kernel_ns_per_state_change: Option<Spread>,
    agent_cpu_us_per_state_change: Option<Spread>,
    agent_cpu_us_per_event: Option<Spread>,
    agent_cpu_pct: Option<Spread>,
    agent_peak_rss_kib: Option<Spread>,
    bytes_per_connection_end: Option<Spread>,
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
    /// None: not assessed by this run (too short, failed, or a figure without a bound).
    met: Option<bool>,
}

/// The timer programs: the idle phase, and the split of their cost over the default trace
/// rounds.
#[derive(Clone, Debug, Serialize)]
struct TimersResult {
    idle: IdleResult,
    /// (a) as the split uses it: under a churn that leaves no timewait socket (None: not run).
    resets: Option<IdleResult>,
    /// The default trace rounds it covers.
    rounds: usize,
    split: Option<TimerSplit>,
}

#[derive(Clone, Debug, Serialize)]
struct Report {
    date: String,
    /// Wall time of the benchmark from its first round to its report (the build not counted).
    wall_seconds: f64,
    machine: Machine,
    /// 0: the churn rounds were not run (`--only-namespaces`).
    rounds: usize,
    seconds_per_round: f64,
    churn_threads: usize,
    peer: String,
    top_back_end: String,
    /// What `--conforming` is by default, when the binary has it.
    conforming_default: Option<String>,
    notes: Vec<String>,
    summary: Vec<ConfigSummary>,
    soak: Option<SoakResult>,
    hold: Option<HoldResult>,
    /// `teardown timewait` and `teardown top` over many namespaces (None: not run).
    namespaces: Option<namespaces::NamespacesResult>,
    /// The timer programs' cost (None: not measured).
    timers: Option<TimersResult>,
    targets: Vec<Target>,
    runs: Vec<Round>,
}

struct Ctx {
    teardown: PathBuf,
    xtask: PathBuf,
    work: PathBuf,
    args: BenchArgs,
    peer: Peer,
    /// `--conforming`'s default when this `teardown trace` has the option; None: it has not.
    conforming_default: Option<String>,
    /// The rounds of the other output choices run (the binary has the option, and the
    /// `--trace-arg`s do not set it).
    choices: bool,
    /// The rounds without the timer programs run (the same conditions).
    sock_diag: bool,
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
    if !(args.soak_seconds == 0.0 || (args.soak_seconds >= 10.0 && args.soak_seconds <= 86_400.0)) {
        bail!("--soak-seconds must be 0 (no soak) or between 10 and 86400");
    }
    if args.namespaces > 1000 || !(1..=1000).contains(&args.namespace_sockets) {
        bail!("--namespaces must be at most 1000, and --namespace-sockets between 1 and 1000");
    }
    if args.only_namespaces && args.namespaces == 0 {
        bail!("--only-namespaces with --namespaces 0 leaves nothing to run");
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

    let began = Instant::now();
    if args.only_report {
        if !(1..=10_000_000).contains(&args.report_connections) {
            bail!("--report-connections must be between 1 and 10000000");
        }
        let m = machine();
        let machine = format!(
            "Linux {}, {}, {} cores, {} MiB",
            m.kernel, m.cpu_model, m.cores, m.mem_total_mib
        );
        println!(
            "bench: only the HTML report: a {}-connection recording made from the replay \
             fixtures, reported and opened in headless chromium {} times; machine: {machine}",
            args.report_connections, args.rounds
        );
        let r = html_report::run(&teardown, &work, args.report_connections, args.rounds);
        let md = html_report::markdown(&r, &machine);
        for (name, text) in [
            ("report.json", serde_json::to_string_pretty(&r)?),
            ("report.md", md.clone()),
        ] {
            std::fs::write(out_dir.join(name), text)
                .with_context(|| format!("cannot write {}", out_dir.join(name).display()))?;
        }
        let _ = std::fs::remove_dir_all(&work);
        println!("\n{md}");
        if let Some(e) = r.error {
            bail!("the HTML report's benchmark failed: {e}");
        }
        return Ok(());
    }
    if args.serve_soak {
        if !(args.serve_soak_seconds >= 60.0 && args.serve_soak_seconds <= 86_400.0) {
            bail!("--serve-soak-seconds must be between 60 and 86400");
        }
        let m = machine();
        let machine = format!(
            "Linux {}, {}, {} cores, {} MiB",
            m.kernel, m.cpu_model, m.cores, m.mem_total_mib
        );
        println!(
            "bench: the fleet soak: teardown serve under {} connections/s for {:.0} min; machine: \
             {machine}",
            args.serve_soak_rate,
            args.serve_soak_seconds / 60.0
        );
        let r = serve_soak::run(
            &teardown,
            &xtask,
            &work,
            args.serve_soak_seconds,
            args.serve_soak_rate,
            args.threads,
        );
        let md = serve_soak::markdown(&r, &machine);
        for (name, text) in [
            ("serve-soak.json", serde_json::to_string_pretty(&r)?),
            ("serve-soak.md", md.clone()),
        ] {
            std::fs::write(out_dir.join(name), text)
                .with_context(|| format!("cannot write {}", out_dir.join(name).display()))?;
        }
        let _ = std::fs::remove_dir_all(&work);
        println!("\n{md}");
        if let Some(e) = r.error {
            bail!("the fleet soak failed: {e}");
        }
        return Ok(());
    }
    if args.only_namespaces {
        let machine = machine();
        println!(
            "bench: only the namespaces scenario: {}; about {:.1} min; machine: Linux {}, {}, {} \
             cores",
            namespaces_plan(&args),
            namespaces_estimate_s(&args) / 60.0,
            machine.kernel,
            machine.cpu_model,
            machine.cores
        );
        let ns = namespaces::run(&teardown, &work, args.namespaces, args.namespace_sockets);
        let report = Report {
            date: date_now(),
            wall_seconds: began.elapsed().as_secs_f64(),
            machine,
            rounds: 0,
            seconds_per_round: 0.0,
            churn_threads: 0,
            peer: "not run".to_owned(),
            top_back_end: TOP_BACK_END.to_owned(),
            conforming_default: None,
            notes: vec![
                "--only-namespaces: the churn rounds, the soak and the memory scenario were not \
                 run"
                .to_owned(),
            ],
            summary: Vec::new(),
            soak: None,
            hold: None,
            namespaces: Some(ns),
            timers: None,
            targets: Vec::new(),
            runs: Vec::new(),
        };
        return write_report(report, &out_dir, &work);
    }
    let peer = choose_peer(args.peer, &work)?;
    if !bpfstats::available() {
        bail!("this kernel has no kernel.bpf_stats_enabled sysctl");
    }
    let stats = bpfstats::StatsGuard::enable()?;
    let machine = machine();
    let load_at_start = load_average();
    let mut notes = Vec::new();
    let help = trace_help(&teardown)?;
    let conforming_default = help_default(&help, CONFORMING);
    let sock_diag = match help_default(&help, TIMEWAIT_SOURCE) {
        None => {
            notes.push(format!(
                "this `teardown trace` has no {TIMEWAIT_SOURCE} option: the rounds without the \
                 timer programs were skipped"
            ));
            false
        }
        Some(_)
            if args
                .trace_args
                .iter()
                .any(|a| a.starts_with(TIMEWAIT_SOURCE)) =>
        {
            notes.push(format!(
                "the --trace-arg's set {TIMEWAIT_SOURCE}: the rounds without the timer programs \
                 were skipped"
            ));
            false
        }
        Some(_) => true,
    };
    let choices = match &conforming_default {
        None => {
            notes.push(format!(
                "this `teardown trace` has no {CONFORMING} option: the rounds of the other \
                 output choices were skipped"
            ));
            false
        }
        Some(_) if args.trace_args.iter().any(|a| a.starts_with(CONFORMING)) => {
            notes.push(format!(
                "the --trace-arg's set {CONFORMING}: the rounds of the other output choices \
                 were skipped"
            ));
            false
        }
        Some(_) => true,
    };
    for n in &notes {
        println!("bench: note: {n}");
    }
    let ctx = Ctx {
        teardown,
        xtask,
        work: work.clone(),
        args: args.clone(),
        peer,
        conforming_default: conforming_default.clone(),
        choices,
        sock_diag,
    };
    let plan = plan(&ctx);
    let per_round = args.seconds + 1.5;
    let estimate = plan.len() as f64 * per_round
        + if args.soak_seconds > 0.0 {
            args.soak_seconds
                * match args.soak_baseline {
                    SoakBaseline::Measured => 2.0,
                    SoakBaseline::Rounds => 1.0,
                }
                + 10.0
        } else {
            0.0
        }
        + if args.hold > 0 { 60.0 } else { 0.0 }
        + if args.idle_seconds > 0.0 {
            args.idle_seconds + 3.0
        } else {
            0.0
        }
        + namespaces_estimate_s(&args);
    let last = match (args.hold > 0, args.namespaces > 0) {
        (true, true) => format!("the memory scenario, then {}", namespaces_plan(&args)),
        (true, false) => "the memory scenario".to_owned(),
        (false, true) => namespaces_plan(&args),
        (false, false) => "the report".to_owned(),
    };
    println!(
        "bench: {}{} rounds x {} configurations x {} s{}{}, then {last}; about {:.1} min; \
         machine: Linux {}, {}, {} cores",
        if args.idle_seconds > 0.0 {
            format!("{} s of teardown trace idle, then ", args.idle_seconds)
        } else {
            String::new()
        },
        args.rounds,
        CONFIGS.len() + usize::from(sock_diag),
        args.seconds,
        if choices {
            ", with one round each of --conforming full and none"
        } else {
            ""
        },
        if args.soak_seconds > 0.0 {
            format!(
                ", then a soak of {} s{}",
                args.soak_seconds,
                match args.soak_baseline {
                    SoakBaseline::Measured => " (and an untraced one as long)",
                    SoakBaseline::Rounds => "",
                }
            )
        } else {
            String::new()
        },
        estimate / 60.0,
        machine.kernel,
        machine.cpu_model,
        machine.cores
    );

    // Before the rounds: no namespace of theirs is being removed (its timewait sockets' timers
    // cancelled) while the trace is idle.
    let idle = (args.idle_seconds > 0.0).then(|| {
        println!(
            "bench: teardown trace idle for {} s (the timer programs' cost on other timers)",
            args.idle_seconds
        );
        let idle = timers::run_idle(&ctx, args.idle_seconds);
        print_timer_phase("idle", &idle);
        println!(
            "bench: teardown trace for {} s under a churn of resets (no timewait socket)",
            args.idle_seconds
        );
        let resets = timers::run_reset_churn(&ctx, args.idle_seconds);
        print_timer_phase("resets", &resets);
        (idle, resets)
    });

    let mut runs: Vec<Round> = Vec::new();
    for &(r, cfg) in &plan {
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
        // The untraced run of the round came first.
        let base = runs
            .iter()
            .find(|u| u.round == r && u.config == Some(Config::Untraced) && u.error.is_none())
            .map(|u| u.per_second);
        if let Some(b) = base.filter(|&b| b > 0.0 && res.error.is_none()) {
            res.ratio = Some(res.per_second / b);
        }
        println!(
            "bench: round {}/{} {label}: {}",
            r + 1,
            args.rounds,
            round_line(&res)
        );
        runs.push(res);
    }

    let soak = if args.soak_seconds > 0.0 {
        let untraced_rate = spread(
            runs.iter()
                .filter(|r| r.config == Some(Config::Untraced) && r.error.is_none())
                .map(|r| r.per_second)
                .collect(),
        )
        .map(|s| s.median);
        Some(soak::run(&ctx, untraced_rate))
    } else {
        None
    };

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

    // Measured as a user runs them: without the kernel's BPF statistics (top's tracer pays
    // for them on every event).
    drop(stats);
    let namespaces = (args.namespaces > 0).then(|| {
        println!("bench: {}", namespaces_plan(&args));
        namespaces::run(
            &ctx.teardown,
            &work,
            args.namespaces,
            args.namespace_sockets,
        )
    });

    let mut configs: Vec<Config> = CONFIGS.to_vec();
    configs.insert(2, Config::TraceSockDiag);
    configs.extend(CHOICES.iter().map(|c| c.0));
    let timers = idle.map(|(idle, resets)| timers_result(idle, resets, &runs));
    // Other work on the machine makes every figure noisier: say how busy it was.
    if let (Some(a), Some(b)) = (load_at_start, load_average()) {
        notes.push(format!(
            "load average (1 min) {a:.2} at the start, {b:.2} at the end, on {} cores",
            machine.cores
        ));
    }
    let summary: Vec<ConfigSummary> = configs
        .iter()
        .filter(|&&c| runs.iter().any(|r| r.config == Some(c)))
        .map(|&c| summarize(&ctx, c, &runs))
        .collect();
    let report = Report {
        date: date_now(),
        wall_seconds: began.elapsed().as_secs_f64(),
        machine,
        rounds: args.rounds,
        seconds_per_round: args.seconds,
        churn_threads: args.threads,
        peer: ctx.peer.label().to_owned(),
        top_back_end: TOP_BACK_END.to_owned(),
        conforming_default,
        notes,
        summary,
        soak,
        hold,
        namespaces,
        timers,
        targets: Vec::new(),
        runs,
    };
    write_report(report, &out_dir, &work)
}

fn print_timer_phase(what: &str, r: &IdleResult) {
    match &r.error {
        Some(e) => eprintln!("bench: the {what} phase failed: {e}"),
        None => println!(
            "bench: {what}: {}{}",
            r.programs
                .iter()
                .map(|p| format!(
                    "{} {:.0} runs/s, {}",
                    p.name,
                    p.run_cnt as f64 / r.seconds,
                    bpfstats::avg_ns(std::slice::from_ref(p))
                        .map_or("–".into(), |v| format!("{v:.1} ns/run"))
                ))
                .collect::<Vec<_>>()
                .join("; "),
            r.tw_events.map_or(String::new(), |e| format!(
                "; {} timewait events",
                e.total()
            ))
        ),
    }
}

/// The timer programs' split over the default trace rounds that counted their timewait
/// events, with (a) from the churn of resets (the idle phase when that failed).
fn timers_result(idle: IdleResult, resets: IdleResult, runs: &[Round]) -> TimersResult {
    let mut events = TwEvents::default();
    let mut progs = Vec::new();
    let mut rounds = 0;
    for r in runs
        .iter()
        .filter(|r| r.config == Some(Config::Trace) && r.error.is_none())
    {
        let Some(e) = &r.timewait_events else {
            continue;
        };
        rounds += 1;
        events.add(e);
        progs.extend(r.agent.kernel_programs.iter().cloned());
    }
    let a = if resets.error.is_none() {
        &resets
    } else {
        &idle
    };
    let split =
        (a.error.is_none() && rounds > 0).then(|| timers::split(&a.programs, &progs, events));
    TimersResult {
        idle,
        resets: Some(resets),
        rounds,
        split,
    }
}

fn date_now() -> String {
    output_of("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// What the namespaces scenario does, for the plan printed at the start.
fn namespaces_plan(args: &BenchArgs) -> String {
    format!(
        "{} network namespaces x {} TIME_WAIT sockets: teardown timewait {} times, teardown top \
         for {} s",
        args.namespaces,
        args.namespace_sockets,
        namespaces::TIMEWAIT_RUNS,
        namespaces::TOP_SECONDS
    )
}

/// Seconds the namespaces scenario takes, about: making the namespaces and the sockets, the
/// timewait runs, top's start and its run, removing them.
fn namespaces_estimate_s(args: &BenchArgs) -> f64 {
    if args.namespaces == 0 {
        return 0.0;
    }
    let per_namespace = 0.03 + 0.0001 * args.namespace_sockets as f64;
    20.0 + namespaces::TOP_SECONDS as f64 + 2.0 * per_namespace * args.namespaces as f64
}

/// Judges the targets, writes latest.json and latest.md, prints the tables.
fn write_report(mut report: Report, out_dir: &Path, work: &Path) -> Result<()> {
    report.targets = report::targets(&report);
    let md = report::markdown(&report);
    let json = serde_json::to_string_pretty(&report)?;
    std::fs::write(out_dir.join("latest.json"), json)
        .with_context(|| format!("cannot write {}", out_dir.join("latest.json").display()))?;
    std::fs::write(out_dir.join("latest.md"), &md)
        .with_context(|| format!("cannot write {}", out_dir.join("latest.md").display()))?;
    let _ = std::fs::remove_dir_all(work);
    println!("\n{md}");
    println!(
        "bench: wrote {} and {} ({:.1} min)",
        out_dir.join("latest.json").display(),
        out_dir.join("latest.md").display(),
        report.wall_seconds / 60.0
    );
    Ok(())
}

/// (round, configuration) in the order they run.
fn plan(ctx: &Ctx) -> Vec<(usize, Config)> {
    let mut v = Vec::new();
    for r in 0..ctx.args.rounds {
        for &c in &CONFIGS {
            v.push((r, c));
            // Beside the default trace, in every round: its loss and ratio with and without
            // the timer programs are compared round by round, and one round of each would be
            // noise (a round costs a tenth more of the run).
            if c == Config::Trace && ctx.sock_diag {
                v.push((r, Config::TraceSockDiag));
            }
        }
        if ctx.choices {
            v.extend(
                CHOICES
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| i % ctx.args.rounds == r)
                    .map(|(_, c)| (r, c.0)),
            );
        }
    }
    v
}

/// One line per round: throughput, then what the tracer saw and lost, and its cost.
fn round_line(r: &Round) -> String {
    if let Some(e) = &r.error {
        return format!("failed: {e}");
    }
    let mut s = format!("{:.0} conn/s", r.per_second);
    if let Some(x) = r.ratio {
        s += &format!(" ({x:.3} of untraced)");
    }
    if let Some(ev) = r.events_seen {
        s += &format!(", {ev} events");
    }
    if let Some(l) = r.events_lost {
        let all = r.events_seen.unwrap_or(0) + l;
        s += &format!(
            ", {l} lost ({:.2}%)",
            100.0 * l as f64 / (all.max(1)) as f64
        );
    }
    if let Some(n) = r.agent.state_changes {
        s += &format!(", {n} state changes");
    }
    if let Some(c) = r.agent.agent_cpu_us_per_state_change {
        s += &format!(", {c:.2} µs CPU/state change");
    }
    if let Some(c) = r.agent.agent_cpu_us_per_event {
        s += &format!(", {c:.2} µs/event");
    }
    if let Some(k) = r.agent.kernel_ns_per_state_change {
        s += &format!(", kernel {k:.0} ns/state change");
    }
    if let Some(b) = r.bytes_per_connection_end {
        s += &format!(", {b:.0} B/connection end");
    }
    s
}

fn workspace_root() -> Result<PathBuf> {
    // xtask lives in <root>/xtask.
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    dir.parent()
        .map(Path::to_path_buf)
        .context("cannot find the workspace root")
}

/// `teardown trace --help`: which options this binary has, and their defaults.
fn trace_help(teardown: &Path) -> Result<String> {
    let out = Command::new(teardown)
        .args(["trace", "--help"])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {} trace --help", teardown.display()))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// In a clap help text: the `[default: X]` of option `opt`, "" when it has none; None when the
/// help does not have the option.
fn help_default(help: &str, opt: &str) -> Option<String> {
    let indent = |l: &str| l.len() - l.trim_start().len();
    // An option's own line: `      --opt <V>` or `  -o, --opt <V>` (descriptions are indented
    // further, and "Possible values" items too).
    let is_option_line = |l: &str| indent(l) < 8 && l.trim_start().starts_with('-');
    let names_opt = |l: &str| l.trim_start().split([',', ' ', '=']).any(|w| w == opt);
    let lines: Vec<&str> = help.lines().collect();
    let at = lines
        .iter()
        .position(|l| is_option_line(l) && names_opt(l))?;
    let mut default = String::new();
    for (k, l) in lines[at..].iter().enumerate() {
        if k > 0 && (is_option_line(l) || indent(l) == 0 && !l.is_empty()) {
            break;
        }
        if let Some(i) = l.find("[default: ") {
            let v = &l[i + "[default: ".len()..];
            if let Some(j) = v.find(']') {
                default = v[..j].trim().to_owned();
                break;
            }
        }
    }
    Some(default)
}

/// `teardown trace`'s arguments beyond `--format jsonl -o FILE` for a configuration.
fn trace_extra(ctx: &Ctx, cfg: Config) -> Option<Vec<String>> {
    let mut v = ctx.args.trace_args.clone();
    match cfg {
        Config::Trace => {}
        Config::TraceFull | Config::TraceNone => {
            let (_, choice) = CHOICES.iter().find(|c| c.0 == cfg)?;
            v.extend([CONFORMING.to_owned(), (*choice).to_owned()]);
        }
        Config::TraceSockDiag => v.extend([TIMEWAIT_SOURCE.to_owned(), SOCK_DIAG.to_owned()]),
        _ => return None,
    }
    Some(v)
}

fn label(ctx: &Ctx, cfg: Config) -> String {
    match cfg {
        Config::Untraced => "untraced".into(),
        Config::Top => "teardown top --batch --netns CHURN".into(),
        Config::Peer => ctx.peer.label().into(),
        Config::Trace | Config::TraceFull | Config::TraceNone | Config::TraceSockDiag => {
            let mut s = String::from("teardown trace --format jsonl -o FILE");
            for a in trace_extra(ctx, cfg).unwrap_or_default() {
                s.push(' ');
                s.push_str(&a);
            }
            match (&ctx.conforming_default, cfg) {
                (Some(d), Config::Trace) if ctx.choices && !d.is_empty() => {
                    s += &format!(" (default {CONFORMING} {d})");
                }
                _ => {}
            }
            s
        }
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

fn start_trace(ctx: &Ctx, extra: &[String], out: &Path, err: &Path) -> Result<Proc> {
    let mut cmd = Command::new(&ctx.teardown);
    cmd.args(["trace", "--format", "jsonl", "-o"])
        .arg(out)
        .args(extra)
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

/// What `teardown trace` says at its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TraceSummary {
    /// Connection ends reported (written in full, in short, or only counted).
    connections: u64,
    events: u64,
    lost: u64,
}

/// `summary: A connections reported (B seen), E events, L lost events`.
fn parse_summary(stderr: &str) -> Option<TraceSummary> {
    let line = stderr
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with("summary:"))?;
    let t: Vec<&str> = line.split_whitespace().collect();
    let before = |w: &str| -> Option<u64> {
        let i = t.iter().position(|x| x.trim_end_matches(',') == w)?;
        t.get(i.checked_sub(1)?)?.parse().ok()
    };
    Some(TraceSummary {
        connections: before("connections")?,
        events: before("events")?,
        lost: before("lost")?,
    })
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

/// The agent's CPU time and its programs' counters at the start of a measured span.
struct Mark {
    cpu_s: Option<f64>,
    progs: Vec<ProgStat>,
}

/// Both read at the same moment (microseconds apart), so CPU and state changes cover one span.
fn mark(p: &Proc) -> Mark {
    Mark {
        cpu_s: p.cpu_now(),
        progs: bpfstats::stats_of(p.pid()),
    }
}

/// Stops the agent (SIGINT) and measures it since `start`. Its programs' counters are read
/// before the signal, while it still holds them; its CPU comes from its exit, so the draining
/// of what the span's state changes left in the ring is charged to them. `ours`: teardown,
/// whose program on the state tracepoint is known by name.
fn stop_agent(p: &mut Proc, start: &Mark, ours: bool, wall: f64) -> Result<(Exit, AgentFigures)> {
    let progs = bpfstats::deltas(&start.progs, &bpfstats::stats_of(p.pid()));
    let e = p.stop(libc::SIGINT, TRACER_STOP_TIMEOUT)?;
    let cpu = (e.cpu_s - start.cpu_s.unwrap_or(0.0)).max(0.0);
    let state_changes = bpfstats::state_changes(&progs, ours).filter(|&n| n > 0);
    let run_time: u64 = progs.iter().map(|p| p.run_time_ns).sum();
    let f = AgentFigures {
        state_changes,
        kernel_ns_per_run: bpfstats::avg_ns(&progs),
        kernel_ns_per_state_change: state_changes.map(|n| run_time as f64 / n as f64),
        kernel_programs: progs,
        agent_cpu_s: Some(cpu),
        agent_cpu_pct: Some(100.0 * cpu / wall.max(1e-9)),
        agent_cpu_us_per_state_change: state_changes.map(|n| cpu * 1e6 / n as f64),
        agent_cpu_us_per_event: None,
        agent_peak_rss_kib: Some(e.maxrss_kib),
    };
    Ok((e, f))
}

/// Reads a stopped `teardown trace`'s summary and output into `round`; removes the output.
fn trace_result(e: &Exit, out: &Path, err: &Path, round: &mut Round) -> Result<()> {
    let text = std::fs::read_to_string(err).unwrap_or_default();
    round.output_bytes = std::fs::metadata(out).ok().map(|m| m.len());
    let _ = std::fs::remove_file(out);
    let Some(s) = parse_summary(&text) else {
        bail!(
            "teardown trace printed no summary ({}): {}",
            e.describe(),
            last_lines(&text, 5)
        );
    };
    round.events_seen = Some(s.events);
    round.events_lost = Some(s.lost);
    round.connections_reported = Some(s.connections);
    round.agent.agent_cpu_us_per_event = round
        .agent
        .agent_cpu_s
        .filter(|_| s.events > 0)
        .map(|c| c * 1e6 / s.events as f64);
    round.bytes_per_connection_end = round
        .output_bytes
        .filter(|_| s.connections > 0)
        .map(|b| b as f64 / s.connections as f64);
    Ok(())
}

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
    // The churn's namespace, held open so that its removal (every timewait socket's timer
    // cancelled) waits for the end of the span, and is over before the next round; with the
    // timer programs, the trace's timewait events are counted in it.
    let held = timers::Netns::of(churn_pid);
    let mut release: Option<timers::Netns> = None;
    let netns = match cfg {
        Config::Trace | Config::TraceFull | Config::TraceNone => Some(held),
        _ => {
            release = held.ok();
            None
        }
    };
    let tag = format!("{cfg:?}-{r}").to_lowercase();
    let (out, err) = (
        ctx.work.join(format!("{tag}.out")),
        ctx.work.join(format!("{tag}.err")),
    );
    let mut agent = match cfg {
        Config::Untraced => Agent::None,
        Config::Trace | Config::TraceFull | Config::TraceNone | Config::TraceSockDiag => {
            let extra = trace_extra(ctx, cfg).unwrap_or_default();
            let p = start_trace(ctx, &extra, &out, &err)?;
            Agent::Trace { p, out, err }
        }
        Config::Peer => {
            let mut p = start_peer(&ctx.peer, &ctx.work, &out, &err)?;
            wait_for_text(&mut p, &out, &err, PEER_HEADER, TRACER_START_TIMEOUT)?;
            Agent::Peer { p, out, err }
        }
        Config::Top => {
            let mut p = start_top(ctx, churn_pid, &out, &err)?;
            wait_for_text(&mut p, &out, &err, TOP_POLL_LINE, TRACER_START_TIMEOUT)?;
            Agent::Top { p, out, err }
        }
    };
    thread::sleep(SETTLE);
    let start = match &agent {
        Agent::Trace { p, .. } | Agent::Peer { p, .. } | Agent::Top { p, .. } => Some(mark(p)),
        Agent::None => None,
    };
    let mut netns = netns.map(|n| n.and_then(|n| Ok((n.tw_mib()?, n))));
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
    let wall = result.seconds;
    let start = start.unwrap_or(Mark {
        cpu_s: None,
        progs: Vec::new(),
    });
    match &mut agent {
        Agent::None => {}
        Agent::Trace { p, out, err } => {
            // Read microseconds before the programs' counters, as at the start.
            let tw = match netns.take() {
                Some(Ok((before, n))) => {
                    let r = n.tw_mib().map(|after| (before, after));
                    release = Some(n);
                    Some(r)
                }
                Some(Err(e)) => Some(Err(e)),
                None => None,
            };
            let (e, f) = stop_agent(p, &start, true, wall)?;
            round.agent = f;
            trace_result(&e, out, err, &mut round)?;
            match tw {
                Some(Ok((before, after))) => {
                    round.timewait_events = Some(after.events_since(&before));
                    round.timewait_overflow = Some(after.overflow.saturating_sub(before.overflow));
                }
                Some(Err(e)) => {
                    round.note = Some(format!("the timewait events were not counted: {e:#}"))
                }
                None => {}
            }
        }
        Agent::Peer { p, out, err } => {
            let (e, f) = stop_agent(p, &start, false, wall)?;
            round.agent = f;
            let seen = peer_lines(out)?;
            let errtext = std::fs::read_to_string(&*err).unwrap_or_default();
            // tcpstates warns on stderr; bpftrace says "Lost N events" on stdout.
            let mut lost = peer_lost(&errtext);
            if matches!(ctx.peer, Peer::Bpftrace(_)) {
                lost += peer_lost(&std::fs::read_to_string(&*out).unwrap_or_default());
            }
            round.events_seen = Some(seen);
            round.events_lost = Some(lost);
            round.agent.agent_cpu_us_per_event = round
                .agent
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
            let (e, f) = stop_agent(p, &start, true, wall)?;
            round.agent = f;
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
    if let Some(n) = release.or_else(|| netns.and_then(|n| n.ok()).map(|(_, n)| n)) {
        if let Some(note) = n.release(NETNS_GONE_TIMEOUT) {
            println!("bench: note: {note}");
            round.note.get_or_insert(note);
        }
    }
    Ok(round)
}

/// How long a round waits for its churn's namespace to be removed.
const NETNS_GONE_TIMEOUT: Duration = Duration::from_secs(15);

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
    let mut p = start_trace(ctx, &ctx.args.trace_args, &out, &err)?;
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
    if let Some(s) = parse_summary(&std::fs::read_to_string(&err).unwrap_or_default()) {
        h.events_seen = Some(s.events);
        h.events_lost = Some(s.lost);
    }
    let _ = std::fs::remove_file(&out);
    Ok(h)
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
        state_changes: f(&|r| r.agent.state_changes.map(|x| x as f64)),
        kernel_ns_per_run: f(&|r| r.agent.kernel_ns_per_run),
        kernel_ns_per_state_change: f(&|r| r.agent.kernel_ns_per_state_change),
        agent_cpu_us_per_state_change: f(&|r| r.agent.agent_cpu_us_per_state_change),
        agent_cpu_us_per_event: f(&|r| r.agent.agent_cpu_us_per_event),
        agent_cpu_pct: f(&|r| r.agent.agent_cpu_pct),
        agent_peak_rss_kib: f(&|r| r.agent.agent_peak_rss_kib.map(|x| x as f64)),
        bytes_per_connection_end: f(&|r| r.bytes_per_connection_end),
        notes,
    }
}

/// The 1-minute load average.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
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
        assert_eq!(
            parse_summary(s),
            Some(TraceSummary {
                connections: 10,
                events: 1234,
                lost: 5
            })
        );
        assert_eq!(parse_summary("tracing TCP teardowns (hook: btf)\n"), None);
    }

    #[test]
    fn parses_peer_loss() {
        assert_eq!(
            peer_lost("lost 12 events on CPU #0\nlost 3 events on CPU #1\nLost 7 events\n"),
            22
        );
    }

    #[test]
    fn finds_an_option_default_in_help() {
        let help = "Options:\n      --format <FORMAT>\n          Output format\n\n          \
                    [default: text]\n\n      --conforming <CONFORMING>\n          What JSON \
                    Lines writes\n\n          Possible values:\n          - full: ...\n\n          \
                    [default: compact]\n\n  -o, --output <FILE>\n          Write here\n";
        assert_eq!(
            help_default(help, "--conforming").as_deref(),
            Some("compact")
        );
        assert_eq!(help_default(help, "--format").as_deref(), Some("text"));
        // An option without a default, and one the binary does not have.
        assert_eq!(help_default(help, "--output").as_deref(), Some(""));
        assert_eq!(help_default(help, "--ring-size"), None);
    }

    #[test]
    fn spreads() {
        let s = spread(vec![3.0, 1.0, 2.0]).map(|s| (s.median, s.min, s.max));
        assert_eq!(s, Some((2.0, 1.0, 3.0)));
        assert_eq!(spread(vec![f64::NAN]).map(|s| s.n), None);
    }
}
