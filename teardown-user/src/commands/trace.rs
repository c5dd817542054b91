//! `teardown trace` and `teardown record`: the arguments, turned into a loaded probe, sinks and
//! a [`Pipeline`] that the live loop ([`crate::live::live`]) drives until Ctrl-C, SIGTERM or
//! `--duration`, or until its standard output is closed.

use std::{
    io::BufWriter,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use tokio::signal::unix::{signal, SignalKind};

use super::output::{FilterArgs, OutputArgs};
use crate::{
    decode::recording,
    kernel::caps::{self, CapSet, Capability},
    kernel::clock,
    kernel::{Hook, Probe, ProbeConfig},
    live::{live, LiveOptions, Pipeline, TimewaitFollow},
    monitor::{HostCollector, ReportConfig},
    sinks::Summary,
    sinks::{
        metrics::{NamespaceLabels, SharedLabels},
        Metrics, MetricsSink,
    },
    sock_diag::{namespaces::ContainerDirectory, PollOptions},
    views::gauges::{self, FigureGauges, FiguresThread},
};

#[derive(Clone, Debug, clap::Args)]
#[command(after_help = "Examples:
  sudo teardown trace                         every teardown on this host until Ctrl-C
  sudo teardown trace --port 5432 -d 1m       connections to or from port 5432, for a minute
  sudo teardown trace --format jsonl -o t.jsonl --ring-size 64
  sudo teardown trace --format jsonl --conforming none    only what deviates, and the summary

--port is applied in the kernel: other connections cost the host next to nothing. --addr and
--pid choose what is reported. Events the kernel could not deliver are counted by cause and
reported in the summary. When the agent falls behind, the kernel counts the events by what they
were (ESTABLISHED>CLOSE_WAIT, ...) rather than fill the ring buffer, and the agent says so at
once: raise --ring-size if a burst does it, or write less (--conforming none).

Stopping: Ctrl-C (SIGINT), SIGTERM, --duration, or standard output closed (its reader went away,
as `teardown trace | head` does): each ends the trace the same way, the programs detached, the
output flushed, the summary written (to stderr when stdout is gone), with exit status 0: the trace
ended as asked, not in failure. SIGHUP reopens the -o file (after logrotate renamed it, the next
records go to a new file at that path; the recording of `record` is not reopened); without -o it
is ignored.")]
pub struct TraceArgs {
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub filters: FilterArgs,
    /// Stop after this long (e.g. 30s, 5m); default: until Ctrl-C or SIGTERM.
    #[arg(long, short, value_parser = super::args::parse_duration)]
    pub duration: Option<Duration>,
    /// Kernel hook for state changes.
    #[arg(long, value_enum, default_value_t = HookArg::Auto)]
    pub hook: HookArg,
    /// Ring buffer size in MiB (a power of two). Raise it if events are lost in bursts.
    #[arg(long, value_name = "MIB", default_value_t = 64, value_parser = parse_ring_mib)]
    pub ring_size: u32,
    /// Sockets the kernel's --port filter remembers as matched (their last events, once the
    /// local port is zero, pass thanks to it). Past this many the oldest are evicted, and the
    /// summary counts them; raise it if it does.
    #[arg(long, value_name = "N", default_value_t = crate::kernel::DEFAULT_PORT_TABLE,
          value_parser = clap::value_parser!(u32).range(1..=16_777_216))]
    pub port_table: u32,
    /// Test only: a fault injected into the kernel programs' settings, so that the tests can
    /// produce each counted loss on a real kernel. Hidden: a trace with one misses events.
    #[arg(long, value_enum, hide = true)]
    pub inject_fault: Vec<FaultArg>,
    /// Poll sock_diag (what `ss` uses) this often to follow the timewait sockets the traced
    /// connections leave behind — when each entered TIME_WAIT, timer restarts (a resent FIN),
    /// how it left — and to note the sockets already closing at start. 0 turns it off. Sees the
    /// host's own network namespace, and those of --timewait-netns. Where the kernel allows the
    /// timer programs (see --timewait-source), they follow timewait sockets instead, in every
    /// namespace, and sock_diag only notes the sockets already closing.
    #[arg(long, value_name = "SECS", default_value = "1", value_parser = super::args::parse_duration)]
    pub timewait_poll: Duration,
    /// How timewait sockets are followed: `auto` through their timer's tracepoints where the
    /// kernel allows them (every namespace, as it happens; sock_diag then only notes the
    /// sockets already closing at start), else by polling sock_diag; `sock-diag` polls only, as
    /// on a kernel that refuses the timer programs.
    #[arg(long, value_enum, default_value_t = TimewaitSource::Auto)]
    pub timewait_source: TimewaitSource,
    /// Also follow the timewait sockets of this network namespace (a name from `ip netns`, or a
    /// path such as /proc/PID/ns/net of a container's process); repeat for several. The
    /// tracepoints see every namespace; sock_diag answers for one at a time.
    #[arg(long, value_name = "NAME|PATH")]
    pub timewait_netns: Vec<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics while tracing: connections by role,
    /// variant and conformance, findings, time in each closing state, timewait facts, kernel
    /// events and losses by cause, and the closing sockets of every network namespace (see
    /// --figures-every). A port alone (9464) is on loopback, 127.0.0.1; give an address to be
    /// reached from elsewhere (e.g. 10.1.2.3:9464). Port 0 picks a free one (the address is
    /// said).
    #[arg(long, value_name = "[ADDR:]PORT", value_parser = parse_metrics_addr)]
    pub metrics: Option<std::net::SocketAddr>,
    /// Network namespaces that get a `namespace` label of their own in the metrics (the
    /// container's name, `host`, or `netns N`), in the order they are first seen; the others
    /// are summed under `other`, so that the series stay few on a host with many containers.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub metrics_namespaces: usize,
    /// Destinations (address:port) that get a series of their own in the metrics' port
    /// pressure: the host's N with the most ports held by timewait sockets; the others of each
    /// namespace are summed as `other`.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub metrics_destinations: usize,
    /// With --metrics: poll every network namespace's closing sockets through sock_diag this
    /// often, for the metrics' gauges (TIME_WAIT, CLOSE_WAIT and the other closing states per
    /// namespace, leaks, port pressure, timewait table limits): what `teardown timewait`
    /// reports. A poll walks every socket of every namespace, and entering the other
    /// namespaces takes CAP_SYS_ADMIN. 0 (trace's default) turns it off; `serve` polls every
    /// 15 s.
    #[arg(long, value_name = "SECS", default_value = "0", value_parser = parse_figures_every)]
    pub figures_every: Duration,
    /// With --metrics: a CLOSE_WAIT socket older than this many seconds counts as a leak in
    /// `teardown_close_wait_leaks`.
    #[arg(long, value_name = "SECS", default_value_t = 60.0, value_parser = super::args::parse_secs)]
    pub close_wait_threshold: f64,
    /// The nice value of the thread that reads and judges the events (-20 to 19). Raised by
    /// default: on a host whose cores the workload saturates, an agent at the workload's
    /// priority gets too small a share to keep up at its busiest, exactly when it matters; it
    /// only uses what it needs. 0 leaves it as any process.
    #[arg(long, value_name = "N", default_value_t = -5, allow_negative_numbers = true,
          value_parser = clap::value_parser!(i32).range(-20..=19))]
    pub nice: i32,
    /// Read the kernel programs' debug records: set from the global `-vv`.
    #[arg(skip)]
    pub kernel_log: bool,
}

impl TraceArgs {
    /// The thread that polls every namespace for the metrics' gauges (none with
    /// --figures-every 0).
    fn figures(
        &self,
        gauges: Arc<FigureGauges>,
        labels: &SharedLabels,
    ) -> anyhow::Result<Option<FiguresThread>> {
        if self.figures_every.is_zero() {
            return Ok(None);
        }
        let cfg = ReportConfig {
            close_wait_threshold_ms: super::timewait::secs_to_ms(self.close_wait_threshold),
            top: self.metrics_destinations,
            ..ReportConfig::default()
        };
        let collector = HostCollector::new(PollOptions::default(), cfg, None)
            .context("cannot open this thread's network namespace")?;
        let thread = gauges::spawn(
            collector,
            self.figures_every,
            gauges,
            Arc::clone(labels),
            self.metrics_destinations,
        )
        .context("cannot start the thread that polls the namespaces")?;
        Ok(Some(thread))
    }

    /// The timewait sockets to follow; an error names a namespace that does not exist.
    fn timewait_follow(&self) -> anyhow::Result<Option<TimewaitFollow>> {
        if self.timewait_poll.is_zero() {
            if !self.timewait_netns.is_empty() {
                anyhow::bail!("--timewait-netns needs --timewait-poll above 0");
            }
            return Ok(None);
        }
        // A namespace is followed once: the same one named twice, or our own, would double
        // every fact. Namespace files are told apart by device and inode.
        let id = |p: &std::path::Path| {
            use std::os::unix::fs::MetadataExt as _;
            std::fs::metadata(p).map(|m| (m.dev(), m.ino()))
        };
        let mut seen = vec![id(std::path::Path::new("/proc/self/ns/net"))
            .context("cannot read this process's network namespace")?];
        let mut netns = Vec::with_capacity(self.timewait_netns.len());
        // The namespaces reported with --netns (by name or path) are followed too.
        let filtered = self
            .filters
            .netns
            .iter()
            .filter(|n| crate::sock_diag::netns::path_for(n).exists());
        for name in self.timewait_netns.iter().chain(filtered) {
            let path = crate::sock_diag::netns::path_for(name);
            let Ok(ns) = id(&path) else {
                anyhow::bail!(
                    "--timewait-netns {name}: no network namespace at {} (see `ip netns list`, \
                     or give /proc/PID/ns/net of a process inside it)",
                    path.display()
                );
            };
            if !seen.contains(&ns) {
                seen.push(ns);
                netns.push(path);
            }
        }
        Ok(Some(TimewaitFollow {
            every: self.timewait_poll,
            netns,
        }))
    }
}

/// `--metrics`: `ADDR:PORT`, or a port alone on loopback. An IPv6 address may come without
/// brackets (`fd00::1:9464`), as `ADDR:PORT` does when ADDR is filled in from a variable (a
/// Kubernetes node's address): the last colon separates the port.
fn parse_metrics_addr(s: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok((std::net::Ipv4Addr::LOCALHOST, port).into());
    }
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    s.rsplit_once(':')
        .and_then(|(ip, port)| Some((ip.parse::<std::net::Ipv6Addr>().ok()?, port.parse().ok()?)))
        .map(|(ip, port)| (ip, port).into())
        .ok_or_else(|| {
            format!(
                "{s:?} is not a port or an address:port (e.g. 9464, 127.0.0.1:9464, [::1]:9464)"
            )
        })
}

/// `--figures-every`: 0 (off), or at least a second (a poll walks every socket of the host).
fn parse_figures_every(s: &str) -> Result<Duration, String> {
    let d = super::args::parse_duration(s)?;
    if !d.is_zero() && d < Duration::from_secs(1) {
        return Err(format!(
            "{s:?}: poll at most once a second (a poll walks every socket of every namespace), \
             or 0 for no figures"
        ));
    }
    Ok(d)
}

fn parse_ring_mib(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of MiB"))?;
    if n == 0 || !n.is_power_of_two() || n > 1024 {
        return Err("the ring buffer size must be a power of two between 1 and 1024 MiB".into());
    }
    Ok(n)
}

/// `--inject-fault` (tests only; see `kernel::Fault`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FaultArg {
    Unreadable,
    Undecodable,
    RingFull,
}

impl From<FaultArg> for crate::kernel::Fault {
    fn from(f: FaultArg) -> Self {
        match f {
            FaultArg::Unreadable => crate::kernel::Fault::Unreadable,
            FaultArg::Undecodable => crate::kernel::Fault::Undecodable,
            FaultArg::RingFull => crate::kernel::Fault::RingFull,
        }
    }
}

/// `--timewait-source`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TimewaitSource {
    /// The timer's tracepoints when the kernel allows them, else sock_diag.
    Auto,
    /// sock_diag polling only.
    SockDiag,
}

/// `--hook`, as clap sees [`Hook`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum HookArg {
    /// The BTF raw tracepoint when the kernel has BTF, else the classic tracepoint.
    Auto,
    /// `tp_btf/inet_sock_set_state`: needs kernel BTF; gives sequence numbers and flags.
    Btf,
    /// `tracepoint/sock/inet_sock_set_state`: needs tracefs; state changes and 4-tuples only.
    Tracepoint,
}

impl From<HookArg> for Hook {
    fn from(h: HookArg) -> Hook {
        match h {
            HookArg::Auto => Hook::Auto,
            HookArg::Btf => Hook::Btf,
            HookArg::Tracepoint => Hook::Tracepoint,
        }
    }
}

/// `teardown serve`: `trace` as a long-running host agent, with the defaults of one.
#[derive(Clone, Debug, clap::Args)]
#[command(
    mut_arg("format", |a| a.default_value("jsonl")),
    mut_arg("metrics", |a| a.default_value("127.0.0.1:9464")),
    mut_arg("figures_every", |a| a.default_value("15s")),
    after_help = "Examples:
  sudo teardown serve                              JSON Lines on stdout, metrics on 127.0.0.1:9464
  sudo teardown serve -o /var/log/teardown/teardown.jsonl --metrics 10.1.2.3:9464
  sudo teardown serve --conforming none            only what deviates, and the counters

What a fleet runs on each host (deploy/ has a systemd unit and a Kubernetes DaemonSet): every
teardown judged, to JSON Lines on stdout (for journald or a container's log) or to -o FILE,
which SIGHUP reopens (logrotate's postrotate); Prometheus metrics of the judged teardowns and of
every network namespace's closing sockets, on loopback unless an address is given. Memory is
bounded whatever the uptime. SIGTERM or SIGINT stop it cleanly: the programs detached, the
output flushed, the summary on stderr. Every option of `trace` applies.")]
pub struct ServeArgs {
    #[command(flatten)]
    pub trace: TraceArgs,
}

#[derive(Clone, Debug, clap::Args)]
pub struct RecordArgs {
    /// File to write the raw events to (versioned JSON Lines; replay it with `teardown replay`).
    /// --port and --addr also narrow what is recorded (whole socket lives); --pid only what is
    /// reported, since the owner is known only at some transitions.
    pub file: PathBuf,
    #[command(flatten)]
    pub trace: TraceArgs,
}

pub async fn run(args: TraceArgs, record: Option<PathBuf>) -> anyhow::Result<Summary> {
    // First of all, so that a Ctrl-C or SIGTERM at any moment (even while the programs load)
    // ends the trace cleanly, with its output flushed.
    let mut sigterm = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    // Watched always: its default would end the trace on a hang-up.
    let mut sighup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    let timewait = args.timewait_follow()?;
    let filter = args.filters.filter()?;
    let mut probe = load(&args)?;
    if !filter.netns.is_empty() && !probe.caps.netns {
        anyhow::bail!(
            "--netns needs the socket's namespace in each event, which this kernel's BTF does \
             not give (see the notes above); filter by --addr or --port instead"
        );
    }
    let wall_offset_ns = clock::wall_offset_ns();
    let recorder = match &record {
        Some(path) => {
            let file = super::output::create_output_file(path).with_context(|| {
                format!(
                    "cannot create the recording {} (give record the path of a file in a \
                     directory you can write)",
                    path.display()
                )
            })?;
            let header = recording::Header {
                format: recording::FORMAT.into(),
                version: recording::VERSION,
                wall_offset_ns,
                hook: probe.caps.hook.into(),
                seq: probe.caps.seq,
                netns: probe.caps.netns,
                tw_timers: probe.caps.timewait_timers,
            };
            let filter =
                recording::EventFilter::new(args.filters.port.clone(), args.filters.addr.clone());
            Some(recording::Writer::new(BufWriter::new(file), &header)?.with_filter(filter))
        }
        None => None,
    };
    let home_netns = probe
        .caps
        .netns
        .then(crate::sock_diag::watch::current_netns)
        .filter(|&n| n != 0);
    // Connections of other namespaces are named after their container.
    let containers = match home_netns.map(|_| ContainerDirectory::start()) {
        Some(Ok(d)) => {
            // Other users' processes show their namespace to CAP_SYS_PTRACE, and the engines'
            // records (root's alone) open to CAP_DAC_READ_SEARCH.
            let lacking =
                CapSet::effective().lacking(&[Capability::SysPtrace, Capability::DacReadSearch]);
            if !lacking.is_empty() {
                crate::say!(
                    "note: containers may be left unnamed: {} {} lacking",
                    caps::list(&lacking),
                    if lacking.len() == 1 { "is" } else { "are" }
                );
            }
            Some(d)
        }
        Some(Err(e)) => {
            crate::say!(
                "note: containers are not named: {}",
                crate::escape::text(&e.to_string())
            );
            None
        }
        None => None,
    };
    let (sink, reopen) = args
        .output
        .reopenable_sink(home_netns, containers.clone())?;
    let mut sinks = vec![sink];
    if let Some(svg) = args.output.svg_sink()? {
        sinks.push(svg);
    }
    let labels = Arc::new(Mutex::new(NamespaceLabels::new(
        home_netns,
        containers,
        args.metrics_namespaces,
    )));
    let metrics = match args.metrics {
        Some(addr) => {
            let gauges = Arc::new(FigureGauges::default());
            let m = Arc::new(Metrics::new().with_collector(Box::new(Arc::clone(&gauges))));
            let server = crate::sinks::metrics::serve(addr, Arc::clone(&m))?;
            crate::say!("metrics at http://{}/metrics", server.addr);
            sinks.push(Box::new(MetricsSink::new(
                Arc::clone(&m),
                Arc::clone(&labels),
            )));
            let figures = args.figures(gauges, &labels)?;
            Some((m, server, figures))
        }
        None => None,
    };
    let mut pipeline = Pipeline::new(args.filters.tracker(), filter, sinks, wall_offset_ns);
    pipeline.slow_close_after(args.output.slow_close_ns());
    pipeline.match_netns(probe.caps.netns);
    if probe.caps.timewait_timers {
        pipeline.timewait_from_kernel();
    }
    if probe.caps.netns {
        // Facts come from the namespaces polled only: connections of any other are not
        // followed (on a container host, that is most of them).
        let mut polled: Vec<u32> = home_netns
            .filter(|_| timewait.is_some())
            .into_iter()
            .collect();
        for path in timewait.iter().flat_map(|t| &t.netns) {
            polled.extend(super::output::namespace_file_inode(path).ok());
        }
        pipeline.follow_timewait_of(polled);
    }
    let duration = args.duration;
    let to_stdout = args.output.output.is_none();
    // Polled by the live loop between two steps only, so a reopen falls between two records.
    let stop = async move {
        let hangups = async {
            while sighup.recv().await.is_some() {
                match &reopen {
                    Some(r) => match r.reopen() {
                        Ok(()) => log::info!("SIGHUP: reopened {}", r.path().display()),
                        Err(e) => crate::say!(
                            "note: SIGHUP: cannot reopen {} ({e}); writing on to the file as it was",
                            crate::escape::text(&r.path().to_string_lossy())
                        ),
                    },
                    None => log::debug!("SIGHUP ignored: no -o file to reopen"),
                }
            }
            std::future::pending::<()>().await;
        };
        tokio::select! {
            _ = sigint.recv() => {}
            _ = sigterm.recv() => {}
            _ = async {
                match duration {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            } => {}
            _ = async {
                if to_stdout {
                    super::output::watch_stdout().await
                } else {
                    std::future::pending().await
                }
            } => {}
            _ = hangups => {}
        }
    };
    crate::say!(
        "tracing TCP teardowns (hook: {}{}); {}",
        probe.caps.hook,
        if probe.caps.seq {
            ", with sequence numbers"
        } else {
            ", without sequence numbers"
        },
        match args.duration {
            Some(d) => format!("stops after {d:?}, or on Ctrl-C"),
            None => "stop with Ctrl-C".to_owned(),
        }
    );
    let live_metrics = metrics.as_ref().map(|(m, _, _)| Arc::clone(m));
    let options = LiveOptions {
        say_losses: true,
        nice: (args.nice != 0).then_some(args.nice),
    };
    let summary = live(
        &mut probe,
        pipeline,
        recorder,
        timewait,
        live_metrics,
        options,
        stop,
    )
    .await?;
    // The endpoint closes with the trace.
    drop(metrics);
    let closed = to_stdout && super::output::stdout_closed();
    if closed {
        crate::say!("standard output was closed (its reader went away): the trace stopped");
    }
    if closed || args.output.output.is_some() || args.output.format != super::output::Format::Text {
        // The summary went to the output; say it on the terminal too.
        crate::say!("{}", summary.to_text());
    }
    Ok(summary)
}

/// Loads and attaches the kernel programs, printing what the user should know.
pub fn load(args: &TraceArgs) -> anyhow::Result<Probe> {
    let ports = &args.filters.port;
    if ports.len() > crate::kernel::MAX_FILTER_PORTS {
        anyhow::bail!(
            "at most {} --port filters are supported (the kernel filter's size)",
            crate::kernel::MAX_FILTER_PORTS
        );
    }
    let cfg = ProbeConfig {
        hook: args.hook.into(),
        ring_bytes: args.ring_size << 20,
        ports: ports.clone(),
        port_table: args.port_table,
        faults: args.inject_fault.iter().map(|&f| f.into()).collect(),
        kernel_log: args.kernel_log,
        timewait_timers: args.timewait_source == TimewaitSource::Auto,
        ..ProbeConfig::default()
    };
    let probe = Probe::load(cfg).context("cannot start tracing")?;
    for note in &probe.caps.notes {
        crate::say!("note: {note}");
    }
    Ok(probe)
}
