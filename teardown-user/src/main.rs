//! The `teardown` binary: parses the command line and hands over to one module per subcommand.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use teardown::commands::{replay, report, timewait, top, trace};

/// Watch TCP connections close, and check each teardown against the documented sequence.
///
/// teardown attaches to the kernel's TCP state-change tracepoint and follows every connection
/// on this host to its end: FIN, ACK, FIN+ACK, ACK, then TIME_WAIT. For each connection it
/// prints the states it went through, with times, and a verdict: who closed first, which
/// variant of the close it was (four-way, three-segment, simultaneous, half-close, reset,
/// timeout...), and what departed from the documented sequence and why.
///
/// Tracing needs root, or CAP_BPF and CAP_PERFMON (the README's "Privileges" lists what each
/// command needs and what each further capability adds); `replay` needs no privilege.
#[derive(Parser, Debug)]
#[command(name = "teardown", version, propagate_version = true, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// More on standard error: -v what was loaded, -vv also debug details and the kernel
    /// programs' own records of their rare paths.
    ///
    /// -v: each kernel program loaded, with its instructions after and during verification.
    ///
    /// -vv: also teardown's debug details (why the verifier refused a program, hooks that could
    /// not attach, records that could not be decoded or replayed), and, for trace and record,
    /// the kernel programs' records of their rare paths: a field they could not read, a socket
    /// whose family or state was not what they expected, an event dropped because the ring
    /// buffer was full; each names the program, the field and the socket (skaddr). Without -vv
    /// the programs are loaded with those records off, and the verifier removes them: they
    /// cost nothing.
    ///
    /// -vvv: also the debug logs of the libraries (aya's loader and its relocations).
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
}

const EXAMPLES: &str = "Examples:
  sudo teardown trace                          every teardown on this host, until Ctrl-C
  sudo teardown trace --port 443 -d 30s        connections to or from port 443, for 30 s
  sudo teardown trace --format jsonl -o t.jsonl
  sudo teardown record events.jsonl            keep the raw events to judge them later
  sudo teardown serve                          a host agent: JSON Lines, metrics on 127.0.0.1:9464
  teardown replay events.jsonl                 the same output, no root, no kernel
  teardown replay events.jsonl --svg-dir svg   and a ladder diagram of each deviating one
  teardown report events.jsonl                 events.html: totals, charts, every ladder
  sudo teardown timewait                       TIME_WAIT and CLOSE_WAIT build-up, now
  sudo teardown top                            the same, live";

#[derive(Subcommand, Debug)]
enum Command {
    /// Trace connections as they close and judge each teardown (live; root, or CAP_BPF and
    /// CAP_PERFMON).
    Trace(trace::TraceArgs),
    /// Trace like `trace`, and also write the raw events to a file for `replay`.
    Record(trace::RecordArgs),
    /// Run as a host agent: `trace` to JSON Lines, with metrics on 127.0.0.1:9464.
    Serve(trace::ServeArgs),
    /// Judge the connections of a recording: the output of `trace`, with no kernel and no root.
    Replay(replay::ReplayArgs),
    /// Write a recording's connections as one HTML page (no network needed to view it):
    /// totals, TIME_WAIT and CLOSE_WAIT over time, a table, and each teardown's ladder diagram.
    Report(report::ReportArgs),
    /// Report the sockets in TIME_WAIT, CLOSE_WAIT and other closing states, right now.
    Timewait(timewait::TimewaitArgs),
    /// A live terminal view of closing sockets, port pressure, leaks and deviating teardowns.
    Top(top::TopArgs),
}

impl Command {
    /// Hands `-vv`'s request for the kernel programs' debug records to the commands that load
    /// the programs themselves.
    fn set_kernel_log(&mut self, on: bool) {
        match self {
            Command::Trace(args) => args.kernel_log = on,
            Command::Record(args) => args.trace.kernel_log = on,
            Command::Serve(args) => args.trace.kernel_log = on,
            Command::Replay(_) | Command::Report(_) | Command::Timewait(_) | Command::Top(_) => {}
        }
    }
}

/// What a count of `-v` shows.
struct Verbosity {
    /// teardown's own logs, the kernel programs' records among them (target `teardown::ebpf`).
    teardown: log::LevelFilter,
    /// The libraries' logs.
    others: log::LevelFilter,
    /// Whether the kernel programs are loaded with their debug records on, and these are read.
    kernel_log: bool,
}

fn verbosity(count: u8) -> Verbosity {
    use log::LevelFilter::{Debug, Info, Warn};
    let (teardown, others) = match count {
        0 => (Warn, Warn),
        1 => (Info, Warn),
        2 => (Debug, Warn),
        _ => (Debug, Debug),
    };
    Verbosity {
        teardown,
        others,
        kernel_log: count >= 2,
    }
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    let v = verbosity(cli.verbose);
    env_logger::Builder::new()
        .filter_level(v.others)
        .filter_module("teardown", v.teardown)
        .init();
    cli.command.set_kernel_log(v.kernel_log);

    let result = match cli.command {
        Command::Trace(args) => block_on(trace::run(args, None)).map(drop),
        Command::Record(args) => block_on(trace::run(args.trace, Some(args.file))).map(drop),
        Command::Serve(args) => block_on(trace::run(args.trace, None)).map(drop),
        Command::Replay(args) => replay::run(args).map(drop),
        Command::Report(args) => report::run(args).map(drop),
        Command::Timewait(args) => timewait::run(args),
        Command::Top(args) => top::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // An error may quote a path or a file's contents: shown escaped.
            teardown::say!(
                "error: {}",
                teardown::escape::text(&teardown::commands::error::text(&e))
            );
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The command line as `main` turns it into commands.
    fn parsed(args: &[&str]) -> Command {
        let mut cli = Cli::try_parse_from(args).unwrap();
        cli.command
            .set_kernel_log(verbosity(cli.verbose).kernel_log);
        cli.command
    }

    #[test]
    fn serve_writes_json_lines_and_serves_metrics_on_loopback_by_default() {
        let Command::Serve(s) = parsed(&["teardown", "serve"]) else {
            panic!("not a serve");
        };
        assert_eq!(
            s.trace.output.format,
            teardown::commands::output::Format::Jsonl
        );
        assert_eq!(s.trace.metrics, Some("127.0.0.1:9464".parse().unwrap()));
        // A port alone is on loopback too; an address is taken as given.
        let Command::Serve(s) = parsed(&["teardown", "serve", "--metrics", "9500"]) else {
            panic!("not a serve");
        };
        assert_eq!(s.trace.metrics, Some("127.0.0.1:9500".parse().unwrap()));
        let Command::Trace(t) = parsed(&["teardown", "trace", "--metrics", "[::]:9464"]) else {
            panic!("not a trace");
        };
        assert_eq!(t.metrics, Some("[::]:9464".parse().unwrap()));
        assert!(
            t.figures_every.is_zero(),
            "trace polls no namespace unless asked"
        );
        // A node's IPv6 address filled in before the port, without brackets.
        let Command::Serve(s) = parsed(&["teardown", "serve", "--metrics", "fd00::1:9464"]) else {
            panic!("not a serve");
        };
        assert_eq!(s.trace.metrics, Some("[fd00::1]:9464".parse().unwrap()));
        assert_eq!(s.trace.figures_every, std::time::Duration::from_secs(15));
        assert!(Cli::try_parse_from(["teardown", "serve", "--figures-every", "10ms"]).is_err());
        let Command::Trace(t) = parsed(&["teardown", "trace"]) else {
            panic!("not a trace");
        };
        assert_eq!(t.metrics, None);
        assert_eq!(t.output.format, teardown::commands::output::Format::Text);
    }

    #[test]
    fn only_vv_reads_the_kernel_programs_records() {
        for (args, on) in [
            (&["teardown", "trace"][..], false),
            (&["teardown", "trace", "-v"][..], false),
            (&["teardown", "trace", "-vv"][..], true),
            (&["teardown", "-vv", "trace"][..], true),
            (&["teardown", "trace", "--verbose", "--verbose"][..], true),
            (&["teardown", "trace", "-vvv"][..], true),
        ] {
            let Command::Trace(t) = parsed(args) else {
                panic!("{args:?} is not a trace");
            };
            assert_eq!(t.kernel_log, on, "{args:?}");
        }
        let Command::Record(r) = parsed(&["teardown", "record", "f.jsonl", "-vv"]) else {
            panic!("not a record");
        };
        assert!(r.trace.kernel_log);
        let levels = |n| {
            let v = verbosity(n);
            (v.teardown, v.others)
        };
        use log::LevelFilter::{Debug, Info, Warn};
        assert_eq!(levels(0), (Warn, Warn));
        assert_eq!(levels(1), (Info, Warn));
        // aya's loader logs hundreds of relocation lines: only from -vvv.
        assert_eq!(levels(2), (Debug, Warn));
        assert_eq!(levels(3), (Debug, Debug));
    }
}
