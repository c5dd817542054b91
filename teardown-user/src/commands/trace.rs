//! `teardown trace` and `teardown record`: the live pipeline.
//!
//! ring buffer -> decode -> bounded channel -> tracker -> validator -> sinks. The reader task
//! and the pipeline share one thread; the bounded channel between them means a slow pipeline
//! makes the ring buffer fill, and the kernel counts what it could not deliver: loss is
//! reported, never silent.

use std::{fs::File, io::BufWriter, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::{mpsc, oneshot},
};

use super::output::{FilterArgs, OutputArgs};
use crate::{
    decode::recording::{self, Record},
    decode::Event,
    kernel::clock,
    kernel::{Hook, Probe, ProbeConfig},
    live::Pipeline,
    sinks::Summary,
    sinks::{Metrics, MetricsSink},
};

#[derive(Clone, Debug, clap::Args)]
#[command(after_help = "Examples:
  sudo teardown trace                         every teardown on this host until Ctrl-C
  sudo teardown trace --port 5432 -d 1m       connections to or from port 5432, for a minute
  sudo teardown trace --format jsonl -o t.jsonl --ring-size 64

--port is applied in the kernel: other connections cost the host next to nothing. --addr and
--pid choose what is reported. Events the kernel could not deliver (ring buffer full) are
counted and reported in the summary: raise --ring-size if a burst loses some.")]
pub struct TraceArgs {
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub filters: FilterArgs,
    /// Stop after this long (e.g. 30s, 5m); default: until Ctrl-C or SIGTERM.
    #[arg(long, short, value_parser = clock::parse_duration)]
    pub duration: Option<Duration>,
    /// Kernel hook for state changes.
    #[arg(long, value_enum, default_value_t = Hook::Auto)]
    pub hook: Hook,
    /// Ring buffer size in MiB (a power of two). Raise it if events are lost in bursts.
    #[arg(long, value_name = "MIB", default_value_t = 64, value_parser = parse_ring_mib)]
    pub ring_size: u32,
    /// Poll sock_diag (what `ss` uses) this often to follow the timewait sockets the traced
    /// connections leave behind — when each entered TIME_WAIT, timer restarts (a resent FIN),
    /// how it left — and to note the sockets already closing at start. 0 turns it off. Sees the
    /// host's own network namespace, and those of --timewait-netns.
    #[arg(long, value_name = "SECS", default_value = "1", value_parser = clock::parse_duration)]
    pub timewait_poll: Duration,
    /// Also follow the timewait sockets of this network namespace (a name from `ip netns`, or a
    /// path such as /proc/PID/ns/net of a container's process); repeat for several. The
    /// tracepoints see every namespace; sock_diag answers for one at a time.
    #[arg(long, value_name = "NAME|PATH")]
    pub timewait_netns: Vec<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics while tracing: connections by role,
    /// variant and conformance, findings, time in each closing state, timewait facts, kernel
    /// events and losses. E.g. 127.0.0.1:9464; port 0 picks a free one (the address is said).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
}

/// Which network namespaces' timewait sockets are followed, and how often.
#[derive(Clone, Debug)]
pub struct TimewaitFollow {
    pub every: Duration,
    /// Namespaces besides the process's own, as paths.
    pub netns: Vec<PathBuf>,
}

impl TraceArgs {
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

fn parse_ring_mib(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of MiB"))?;
    if n == 0 || !n.is_power_of_two() || n > 1024 {
        return Err("the ring buffer size must be a power of two between 1 and 1024 MiB".into());
    }
    Ok(n)
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

/// A batch of decoded records from one wake-up of the reader.
struct Batch {
    events: Vec<Event>,
    undecodable: u64,
}

pub async fn run(args: TraceArgs, record: Option<PathBuf>) -> anyhow::Result<Summary> {
    // First of all, so that a Ctrl-C or SIGTERM at any moment (even while the programs load)
    // ends the trace cleanly, with its output flushed.
    let mut sigterm = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
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
            let file = File::create(path)
                .with_context(|| format!("cannot create the recording {}", path.display()))?;
            let header = recording::Header {
                format: recording::FORMAT.into(),
                version: recording::VERSION,
                wall_offset_ns,
                hook: probe.caps.hook.into(),
                seq: probe.caps.seq,
                netns: probe.caps.netns,
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
    let mut sinks = vec![args.output.sink(home_netns)?];
    let metrics = match args.metrics {
        Some(addr) => {
            let m = Arc::new(Metrics::new());
            let server = crate::sinks::metrics::serve(addr, Arc::clone(&m))?;
            crate::say!("metrics at http://{}/metrics", server.addr);
            sinks.push(Box::new(MetricsSink::new(Arc::clone(&m))));
            Some((m, server))
        }
        None => None,
    };
    let mut pipeline = Pipeline::new(args.filters.tracker(), filter, sinks, wall_offset_ns);
    pipeline.match_netns(probe.caps.netns);
    let duration = args.duration;
    let stop = async move {
        tokio::select! {
            _ = sigint.recv() => {}
            _ = sigterm.recv() => {}
            _ = async {
                match duration {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            } => {}
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
    let live_metrics = metrics.as_ref().map(|(m, _)| Arc::clone(m));
    let summary = live(&mut probe, pipeline, recorder, timewait, live_metrics, stop).await?;
    // The endpoint closes with the trace.
    drop(metrics);
    if args.output.output.is_some() || args.output.format != super::output::Format::Text {
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
        hook: args.hook,
        ring_bytes: args.ring_size << 20,
        ports: ports.clone(),
        ..ProbeConfig::default()
    };
    let probe = Probe::load(cfg).context("cannot start tracing")?;
    for note in &probe.caps.notes {
        crate::say!("note: {note}");
    }
    Ok(probe)
}

type Recorder = recording::Writer<BufWriter<File>>;

/// Runs the live pipeline until `stop` resolves (or an output fails), then drains the ring
/// buffer, flushes everything and returns the summary.
pub async fn live(
    probe: &mut Probe,
    mut pipeline: Pipeline,
    mut recorder: Option<Recorder>,
    timewait: Option<TimewaitFollow>,
    metrics: Option<Arc<Metrics>>,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<Summary> {
    let mut stream = probe.events().context("cannot read the ring buffer")?;
    let (mut tw_rx, tw_stop) = match timewait {
        Some(follow) => {
            let (rx, stop) = watch_timewait(&follow);
            (Some(rx), Some(stop))
        }
        None => (None, None),
    };
    let (tx, mut rx) = mpsc::channel::<Batch>(256);
    let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
    let reader = tokio::spawn(async move {
        let decode =
            |events: &mut Vec<Event>, undecodable: &mut u64, bytes: &[u8]| match Event::decode(
                bytes,
            ) {
                Ok(e) => events.push(e),
                Err(_) => *undecodable += 1,
            };
        loop {
            let mut batch = Batch {
                events: Vec::with_capacity(256),
                undecodable: 0,
            };
            tokio::select! {
                biased;
                _ = &mut stop_rx => {
                    // Last read: what is already in the ring buffer is still reported.
                    stream.drain_now(|b| decode(&mut batch.events, &mut batch.undecodable, b));
                    let _ = tx.send(batch).await;
                    return Ok::<(), std::io::Error>(());
                }
                r = stream.next_batch(4096, |b| decode(&mut batch.events, &mut batch.undecodable, b)) => {
                    r?;
                    if tx.send(batch).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    });

    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_lost = 0u64;
    let mut last_check_ns = clock::monotonic_ns();
    let handle = |pipeline: &mut Pipeline,
                  recorder: &mut Option<Recorder>,
                  batch: Batch|
     -> anyhow::Result<()> {
        for _ in 0..batch.undecodable {
            pipeline.on_undecodable();
        }
        for ev in batch.events {
            if let Some(r) = recorder.as_mut() {
                r.write(&Record::Event(ev))
                    .context("cannot write to the recording")?;
            }
            pipeline.on_event(ev);
        }
        Ok(())
    };
    let mut check_lost =
        |pipeline: &mut Pipeline, recorder: &mut Option<Recorder>| -> anyhow::Result<()> {
            let now = clock::monotonic_ns();
            let total = probe.lost().context("cannot read the lost-event counter")?;
            if total != last_lost {
                last_lost = total;
                if let Some(r) = recorder.as_mut() {
                    r.write(&Record::Lost {
                        ts_ns: now,
                        total,
                        since_ns: last_check_ns,
                    })?;
                }
                pipeline.on_lost(total, last_check_ns, now);
            }
            last_check_ns = now;
            Ok(())
        };

    tokio::pin!(stop);
    // A failure (the reader stopped, the recording cannot be written) ends the loop, but the
    // pipeline is still finished and its output flushed before the error is returned.
    let mut failure: Option<anyhow::Error> = None;
    loop {
        let step: anyhow::Result<()> = tokio::select! {
            batch = rx.recv() => match batch {
                Some(batch) => handle(&mut pipeline, &mut recorder, batch),
                None => Err(anyhow::anyhow!("the ring-buffer reader stopped")),
            },
            _ = tick.tick() => {
                let r = check_lost(&mut pipeline, &mut recorder);
                // Hand on what settled, by a clock held back behind the reader (which may lag
                // the kernel by a batch): live output then matches a replay of the recording.
                // Totals first: a scrape never shows connections whose events it does not count.
                if let Some(m) = &metrics {
                    let p = pipeline.progress();
                    m.set_totals(p.events, p.lost_events, p.open_connections);
                }
                pipeline.tick(clock::monotonic_ns().saturating_sub(TICK_LAG_NS));
                r
            }
            Some(polled) = async {
                match tw_rx.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                let Polled { facts, closing_at_start } = polled;
                if let Some(closing) = closing_at_start {
                    pipeline.seed(&closing);
                }
                let mut r = Ok(());
                for fact in facts {
                    if let Some(rec) = recorder.as_mut() {
                        if let Err(e) = rec.write(&Record::Timewait(fact.clone())) {
                            r = Err(anyhow::Error::new(e).context("cannot write to the recording"));
                        }
                    }
                    pipeline.on_timewait(fact);
                }
                r
            }
            _ = &mut stop => break,
        };
        if let Err(e) = step {
            failure = Some(e);
            break;
        }
        if pipeline.failed() {
            break;
        }
    }
    if failure.is_some() {
        // The recording failed or the reader stopped: keep the output, drop the recording.
        recorder = None;
    }

    // Clean stop: the reader drains the ring buffer once more, then everything is flushed.
    if let Some(s) = tw_stop {
        s.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let _ = stop_tx.send(());
    while let Some(batch) = rx.recv().await {
        if let Err(e) = handle(&mut pipeline, &mut recorder, batch) {
            failure.get_or_insert(e);
            recorder = None;
        }
    }
    match reader.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            failure.get_or_insert(anyhow::Error::new(e).context("reading the ring buffer failed"));
        }
        Err(e) => {
            failure.get_or_insert(anyhow::anyhow!("the ring-buffer reader stopped: {e}"));
        }
    }
    if let Err(e) = check_lost(&mut pipeline, &mut recorder) {
        failure.get_or_insert(e);
    }
    if let Some(mut r) = recorder {
        if let Err(e) = r.flush() {
            failure.get_or_insert(anyhow::Error::new(e).context("cannot write to the recording"));
        }
    }
    let summary = pipeline.finish().context("cannot write the output")?;
    match failure {
        Some(e) => Err(e.context(format!(
            "the trace stopped early; the output so far was written ({})",
            summary.to_text().lines().next().unwrap_or_default()
        ))),
        None => Ok(summary),
    }
}

/// How far the settle clock is held back behind real time in a live trace.
const TICK_LAG_NS: u64 = 500_000_000;

/// One sock_diag poll of one network namespace.
struct Polled {
    facts: Vec<crate::track::timewait::TwFact>,
    /// The sockets closing at that moment, on the namespace's first poll only (they seed the
    /// tracker: connections first seen mid-teardown).
    closing_at_start: Option<Vec<crate::track::timewait::Closing>>,
}

/// Polls sock_diag on threads of its own, one per network namespace (a dump can take
/// milliseconds on a busy host; the ring buffer must not wait for it). Problems are reported
/// once and end the polling of that namespace, not the trace.
fn watch_timewait(
    follow: &TimewaitFollow,
) -> (
    mpsc::Receiver<Polled>,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let (tx, rx) = mpsc::channel::<Polled>(16);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let namespaces = std::iter::once(None).chain(follow.netns.iter().cloned().map(Some));
    for netns in namespaces {
        let (tx, stop, every) = (tx.clone(), stop.clone(), follow.every);
        let spawned = std::thread::Builder::new()
            .name("sock_diag".into())
            .spawn(move || poll_timewait(netns, every, &tx, &stop));
        if let Err(e) = spawned {
            crate::say!("note: timewait sockets are not followed: {e}");
        }
    }
    (rx, stop)
}

/// The loop of one [`watch_timewait`] thread, in `netns` (None: the process's own).
fn poll_timewait(
    netns: Option<PathBuf>,
    every: Duration,
    tx: &mpsc::Sender<Polled>,
    stop: &std::sync::atomic::AtomicBool,
) {
    use std::sync::atomic::Ordering;
    let where_ = netns
        .as_ref()
        .map(|p| format!(" in {}", p.display()))
        .unwrap_or_default();
    if let Some(path) = &netns {
        if let Err(e) = crate::sock_diag::netns::enter(path) {
            crate::say!("note: timewait sockets{where_} are not followed: {e}");
            return;
        }
    }
    let mut watcher = match crate::sock_diag::watch::TwWatcher::new() {
        Ok(w) => w,
        Err(e) => {
            crate::say!("note: timewait sockets{where_} are not followed: {e}");
            return;
        }
    };
    let mut first = true;
    while !stop.load(Ordering::Relaxed) {
        let started = std::time::Instant::now();
        match watcher.poll() {
            Ok((facts, closing)) => {
                let polled = Polled {
                    facts,
                    closing_at_start: std::mem::take(&mut first).then_some(closing),
                };
                if tx.blocking_send(polled).is_err() {
                    return;
                }
            }
            Err(e) => {
                crate::say!("note: timewait sockets{where_} are no longer followed: {e}");
                return;
            }
        }
        while started.elapsed() < every && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20).min(every));
        }
    }
}
