//! The `teardown` binary: parses the command line and hands over to one module per subcommand.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use teardown::commands::{replay, timewait, top, trace};

/// Watch TCP connections close, and check each teardown against the documented sequence.
///
/// teardown attaches to the kernel's TCP state-change tracepoint and follows every connection
/// on this host to its end: FIN, ACK, FIN+ACK, ACK, then TIME_WAIT. For each connection it
/// prints the states it went through, with times, and a verdict: who closed first, which
/// variant of the close it was (four-way, three-segment, simultaneous, half-close, reset,
/// timeout...), and what departed from the documented sequence and why.
///
/// Tracing needs root (or CAP_BPF and CAP_PERFMON). `replay` needs neither.
#[derive(Parser, Debug)]
#[command(name = "teardown", version, propagate_version = true, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// More detail on standard error (repeat for more).
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
}

const EXAMPLES: &str = "Examples:
  sudo teardown trace                          every teardown on this host, until Ctrl-C
  sudo teardown trace --port 443 -d 30s        connections to or from port 443, for 30 s
  sudo teardown trace --format jsonl -o t.jsonl
  sudo teardown record events.jsonl            keep the raw events to judge them later
  teardown replay events.jsonl                 the same output, no root, no kernel
  sudo teardown timewait                       TIME_WAIT and CLOSE_WAIT build-up, now
  sudo teardown top                            the same, live";

#[derive(Subcommand, Debug)]
enum Command {
    /// Trace connections as they close and judge each teardown (live; needs root).
    Trace(trace::TraceArgs),
    /// Trace like `trace`, and also write the raw events to a file for `replay`.
    Record(trace::RecordArgs),
    /// Judge the connections of a recording: the output of `trace`, with no kernel and no root.
    Replay(replay::ReplayArgs),
    /// Report the sockets in TIME_WAIT, CLOSE_WAIT and other closing states, right now.
    Timewait(timewait::TimewaitArgs),
    /// A live terminal view of closing sockets, port pressure, leaks and deviating teardowns.
    Top(top::TopArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        _ => log::LevelFilter::Debug,
    };
    env_logger::Builder::new().filter_level(level).init();

    let result = match cli.command {
        Command::Trace(args) => block_on(trace::run(args, None)).map(drop),
        Command::Record(args) => block_on(trace::run(args.trace, Some(args.file))).map(drop),
        Command::Replay(args) => replay::run(args).map(drop),
        Command::Timewait(args) => timewait::run(args),
        Command::Top(args) => top::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            teardown::say!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// One thread is enough: the reader and the pipeline take turns, which keeps the agent's cost
/// on a busy host to a single core at most.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(f),
        Err(e) => {
            teardown::say!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    }
}
