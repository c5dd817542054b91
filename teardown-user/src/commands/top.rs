//! `teardown top`: the live view of closing sockets.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::timewait::secs_to_ms;
use crate::monitor::{Collector, HostCollector, ReportConfig, Thresholds};
use crate::sock_diag::{netns, PollOptions, ScanLimits};
use crate::views::{self, App, Feed};

/// Watch TIME_WAIT and CLOSE_WAIT build-up live.
#[derive(Debug, Clone, clap::Args)]
#[command(
    about = "Live view of closing TCP sockets: counts, history, destinations, port pressure, leaks",
    long_about = "A live terminal view of the host's closing TCP sockets, polled from sock_diag \
(what `ss` uses) every --interval seconds, in every network namespace of the host (the \
host's own, each container's, each `ip netns`; --netns narrows to one):

  * counts per closing state, summed over the namespaces, and their history as a chart;
  * one row per namespace, named after the container inside it, most timewait sockets first;
  * the destinations (remote address:port) with the most TIME_WAIT;
  * ephemeral-port pressure per destination against net.ipv4.ip_local_port_range, taking \
net.ipv4.tcp_tw_reuse into account;
  * CLOSE_WAIT sockets older than --close-wait-threshold with their owning process, and \
FIN_WAIT2 / LAST_ACK sockets stuck past their expected time;
  * the latest teardowns that deviated from the documented close sequence, when the eBPF tracer \
feeds them (otherwise the panel says the tracer is not attached and the rest works from \
sock_diag alone).

Keys: q or Esc quits, p or space pauses, c clears the teardown panel. Plain characters and \
colours only: works over SSH. `teardown timewait` prints the same figures once.

With --batch there is no view: a line per poll (UTC time, level, counts per state, TIME_WAIT \
table use, entry rate, leaks and stuck sockets, the namespace with the most timewait sockets) and a line per deviating teardown go to stdout, \
as `top -b` does, for logs and scripts. It stops on Ctrl-C, SIGTERM or --duration.",
    after_help = "Examples:
  teardown top
  teardown top --interval 0.5 --close-wait-threshold 10
  teardown top --netns blue
  teardown top --batch --duration 1h >> closing.log"
)]
pub struct TopArgs {
    /// Seconds between two sock_diag polls.
    #[arg(long, value_name = "SECS", default_value_t = 1.0, value_parser = super::args::parse_secs)]
    pub interval: f64,

    /// CLOSE_WAIT sockets older than this many seconds are shown as leaks.
    #[arg(long, value_name = "SECS", default_value_t = 60.0, value_parser = super::args::parse_secs)]
    pub close_wait_threshold: f64,

    /// LAST_ACK, FIN_WAIT1 and CLOSING sockets older than this many seconds are shown as stuck.
    #[arg(long, value_name = "SECS", default_value_t = 60.0, value_parser = super::args::parse_secs)]
    pub stall_after: f64,

    /// Polls kept for the history chart.
    #[arg(long, value_name = "N", default_value_t = 300)]
    pub history: usize,

    /// Rows kept in the destination and port-pressure panels.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub top: usize,

    /// Do not scan /proc/*/fd for the owners of leaking CLOSE_WAIT sockets.
    #[arg(long)]
    pub no_owners: bool,

    /// Observe only this network namespace: a name from `ip netns` or a path such as
    /// /proc/PID/ns/net of a container's process. Its closing sockets are polled there, and
    /// only its deviating teardowns are shown.
    #[arg(long, value_name = "NAME|PATH")]
    pub netns: Option<String>,

    /// No view: print a line per poll and per deviating teardown to stdout (like `top -b`).
    #[arg(long)]
    pub batch: bool,

    /// Stop after this long (e.g. 30s, 5m, 1h); by default, run until q, Ctrl-C or SIGTERM.
    #[arg(long, value_name = "DURATION", value_parser = super::args::parse_duration)]
    pub duration: Option<Duration>,
}

/// Runs `teardown top`: sock_diag, plus the eBPF tracer's deviating teardowns when it can be
/// loaded (without it, the view says why and works from sock_diag alone).
pub fn run(args: TopArgs) -> anyhow::Result<()> {
    // First of all, so that a signal while the tracer loads still ends `top` cleanly.
    let signals = SignalWatch::start().context("cannot watch SIGINT/SIGTERM")?;
    // The tracer is host-wide: with --netns, only that namespace's teardowns are shown.
    let netns = match args.netns.as_deref() {
        // sock_diag enters the namespace by its file: it must be one, and is checked before
        // anything loads.
        Some(name) => Some(
            super::output::namespace_file_inode(&netns::path_for(name)).with_context(|| {
                format!("--netns {name}: give a name from `ip netns` or a path")
            })?,
        ),
        None => None,
    };
    match crate::live::TracerFeed::start(netns) {
        Ok(feed) => {
            let crate::live::TracerFeed {
                lines,
                stop,
                thread,
            } = feed;
            let result = run_with(args, Some(lines), None, &signals.flag);
            let _ = stop.send(());
            let _ = thread.join();
            result
        }
        Err(why) => run_with(
            args,
            None,
            Some(format!("eBPF tracer not attached: {why}")),
            &signals.flag,
        ),
    }
}

/// Runs `teardown top` with deviating teardowns fed by `teardowns` (one line each), e.g. from
/// the eBPF tracer. `tracer_note` says why there is none when `teardowns` is `None`. Stops when
/// `signalled` is set, on `q`, or after `--duration`.
pub fn run_with(
    args: TopArgs,
    teardowns: Option<Receiver<String>>,
    tracer_note: Option<String>,
    signalled: &AtomicBool,
) -> anyhow::Result<()> {
    let interval = Duration::from_millis(secs_to_ms(args.interval).max(100));
    let cfg = ReportConfig {
        close_wait_threshold_ms: secs_to_ms(args.close_wait_threshold),
        stall_after_ms: secs_to_ms(args.stall_after),
        thresholds: Thresholds::default(),
        top: args.top,
        list_timewait: false,
    };
    let owners = (!args.no_owners).then(ScanLimits::default);
    let source = match &args.netns {
        Some(n) => format!("netns {n}"),
        None => "every network namespace".to_string(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    // Fail early, on this thread, if sock_diag cannot be used at all.
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let collector = {
        let stop = Arc::clone(&stop);
        let netns_path = args.netns.as_deref().map(netns::path_for);
        std::thread::Builder::new()
            .name("sock_diag".into())
            .spawn(move || {
                let source = match &netns_path {
                    Some(p) => netns::enter(p).map_err(|e| e.to_string()).and_then(|()| {
                        Collector::new(PollOptions::default(), cfg, owners)
                            .map(|c| Source::One(Box::new(c)))
                            .map_err(|e| e.to_string())
                    }),
                    None => HostCollector::new(PollOptions::default(), cfg, owners)
                        .map(|c| Source::Host(Box::new(c)))
                        .map_err(|e| e.to_string()),
                };
                match source {
                    Ok(source) => {
                        let _ = ready_tx.send(Ok(()));
                        collect_loop(source, &tx, &stop, interval);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .context("spawning the sock_diag thread")?
    };
    match ready_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => anyhow::bail!("sock_diag is not available: {e}"),
        Err(_) => anyhow::bail!("the sock_diag thread ended before starting"),
    }
    let mut app = App::new(source, args.history);
    app.set_tracer(teardowns.is_some(), tracer_note);
    let until = args.duration.map(|d| Instant::now() + d);
    let result = if args.batch {
        views::batch::run(
            &mut app,
            &rx,
            teardowns.as_ref(),
            signalled,
            until,
            &mut std::io::stdout().lock(),
        )
        .or_else(|e| {
            // Its reader went away (`top --batch | head`): done, as `top -b` would be.
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                Ok(())
            } else {
                Err(e)
            }
        })
        .context("writing to stdout")
    } else {
        views::run(&mut app, rx, teardowns, signalled, until).map_err(Into::into)
    };
    stop.store(true, Ordering::Relaxed);
    let _ = collector.join();
    result
}

/// A flag set on SIGINT or SIGTERM, watched from a thread of its own: the view or the batch
/// loop then stops cleanly (terminal restored, output flushed) instead of being killed. The
/// handlers go when this is dropped.
struct SignalWatch {
    flag: Arc<AtomicBool>,
    done: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SignalWatch {
    fn start() -> anyhow::Result<SignalWatch> {
        use tokio::signal::unix::{signal, SignalKind};
        let flag = Arc::new(AtomicBool::new(false));
        let set = Arc::clone(&flag);
        let (done, mut done_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = mpsc::channel::<std::io::Result<()>>();
        let thread = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                rt.block_on(async move {
                    let (mut term, mut int) = match (
                        signal(SignalKind::terminate()),
                        signal(SignalKind::interrupt()),
                    ) {
                        (Ok(t), Ok(i)) => (t, i),
                        (Err(e), _) | (_, Err(e)) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    tokio::select! {
                        _ = term.recv() => set.store(true, Ordering::Relaxed),
                        _ = int.recv() => set.store(true, Ordering::Relaxed),
                        _ = &mut done_rx => {}
                    }
                });
            })?;
        match ready_rx.recv() {
            Ok(r) => r?,
            Err(_) => anyhow::bail!("the signal thread ended before starting"),
        }
        Ok(SignalWatch {
            flag,
            done: Some(done),
            thread: Some(thread),
        })
    }
}

impl Drop for SignalWatch {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the collector thread polls: one namespace (`--netns`) or every one.
enum Source {
    One(Box<Collector>),
    Host(Box<HostCollector>),
}

impl Source {
    fn poll(&mut self) -> Feed {
        match self {
            Source::One(c) => match c.poll() {
                Ok((report, _)) => Feed::Report(Box::new(report)),
                Err(e) => Feed::Error(e.to_string()),
            },
            Source::Host(c) => Feed::Host(Box::new(c.poll())),
        }
    }
}

fn collect_loop(mut source: Source, tx: &Sender<Feed>, stop: &AtomicBool, interval: Duration) {
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        if tx.send(source.poll()).is_err() {
            return;
        }
        // Sleep in small steps so that quitting is quick.
        while started.elapsed() < interval && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50).min(interval));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: TopArgs,
    }

    #[test]
    fn args_parse() {
        let c = Cli::try_parse_from(["t", "--interval", "0.5", "--netns", "blue"]).unwrap();
        assert_eq!(secs_to_ms(c.args.interval), 500);
        assert_eq!(c.args.netns.as_deref(), Some("blue"));
        assert_eq!(c.args.history, 300);
    }
}
