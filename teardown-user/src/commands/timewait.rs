//! `teardown timewait`: a one-shot report of the host's closing sockets, from sock_diag, in
//! every network namespace or in one.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;

use crate::kernel::clock::{human_age, human_ms};
use crate::monitor::{
    Collector, HostCollector, HostReport, Report, ReportConfig, Reuse, Thresholds,
};
use crate::sock_diag::{netns, PollOptions, ScanLimits};

/// Output format of `teardown timewait`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Tables for people.
    Text,
    /// One JSON object (the whole report) for programs.
    Json,
}

/// Report TIME_WAIT and CLOSE_WAIT build-up, once.
#[derive(Debug, Clone, clap::Args)]
#[command(
    about = "Report TIME_WAIT and CLOSE_WAIT build-up (one shot, from sock_diag)",
    long_about = "Report the host's closing TCP sockets as the kernel lists them through sock_diag \
(what `ss` uses), in every network namespace of the host (the host's own, each container's, each \
`ip netns`), with the figures that tell whether it is getting dangerous.

The first table has one row per namespace, with the container inside it where one is (podman, \
docker, containerd, CRI-O, Kubernetes pods, named from the container engine's own records) and \
its counts; the namespaces holding closing sockets follow, each with its own figures, as each has \
its own socket table, sysctls and counters. --netns shows one namespace only.

The figures of a namespace:

  * counts per closing state. A timewait socket is either TIME_WAIT (the peer's FIN came; Linux \
holds it a fixed 60 s, restarted if the peer resends its FIN) or FIN_WAIT2 (an application \
close()d and the peer has not sent its FIN yet; held tcp_fin_timeout);
  * TIME_WAIT per local address and per remote address:port, the rate of entries and the count \
that rate settles at (rate x 60 s);
  * ephemeral-port pressure per destination: timewait sockets toward one remote address:port \
hold a local port each out of net.ipv4.ip_local_port_range, unless net.ipv4.tcp_tw_reuse \
(1 = always, 2 = loopback only) lets connect() take over those older than 1 s;
  * headroom to net.ipv4.tcp_max_tw_buckets (past it, closing sockets skip TIME_WAIT and \
TcpExtTCPTimeWaitOverflow counts them);
  * CLOSE_WAIT leaks: the peer closed, the application never called close(); listed with the \
owning pid and command when older than --close-wait-threshold;
  * FIN_WAIT2 / LAST_ACK / FIN_WAIT1 / CLOSING sockets stuck past their expected time.

Ages of sockets that existed before the first poll are lower bounds, shown as `>=`. With \
--interval the report polls twice and measures the entry rate and how timewait sockets left \
(expired, reused by a new connection, killed early) instead of estimating from timers.

Works without the eBPF tracer and without privileges for this process's own namespace. \
CAP_SYS_PTRACE reads other users' processes (their namespaces, and which process holds a \
socket); CAP_SYS_ADMIN enters the other namespaces.",
    after_help = "Examples:
  teardown timewait                         # every namespace, one poll
  teardown timewait --interval 5            # two polls 5 s apart: measured rates and exits
  teardown timewait --format json | jq '.namespaces[] | {netns, container, tw: .report.counts.time_wait}'
  teardown timewait --netns /proc/4242/ns/net --format json | jq .port_pressure
  teardown timewait --netns blue --list     # inside `ip netns` blue, every timewait socket"
)]
pub struct TimewaitArgs {
    /// Output format: `text` tables or one `json` object.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,

    /// Poll twice, this many seconds apart, to measure the TIME_WAIT entry rate and exits
    /// (0: one poll; the rate is then estimated from the timers).
    #[arg(long, value_name = "SECS", default_value_t = 0.0, value_parser = super::args::parse_secs)]
    pub interval: f64,

    /// Report CLOSE_WAIT sockets older than this many seconds as leaks.
    #[arg(long, value_name = "SECS", default_value_t = 60.0, value_parser = super::args::parse_secs)]
    pub close_wait_threshold: f64,

    /// Report LAST_ACK, FIN_WAIT1 and CLOSING sockets older than this many seconds as stuck
    /// (FIN_WAIT2 is measured against net.ipv4.tcp_fin_timeout).
    #[arg(long, value_name = "SECS", default_value_t = 60.0, value_parser = super::args::parse_secs)]
    pub stall_after: f64,

    /// Port pressure (percent of ip_local_port_range held) at which to warn.
    #[arg(long, value_name = "PCT", default_value_t = 50.0, value_parser = parse_pct)]
    pub warn_pct: f64,

    /// Port pressure (percent) that is critical.
    #[arg(long, value_name = "PCT", default_value_t = 90.0, value_parser = parse_pct)]
    pub critical_pct: f64,

    /// Rows in the per-address and per-destination tables.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub top: usize,

    /// Also list every timewait socket with its entry time and timer restarts.
    #[arg(long)]
    pub list: bool,

    /// Do not scan /proc/*/fd for the processes owning leaking CLOSE_WAIT sockets.
    #[arg(long)]
    pub no_owners: bool,

    /// Do not dump open connections (cheaper on hosts with very many; a timewait socket that
    /// vanishes early is then reported killed even if a new connection reused its 4-tuple).
    #[arg(long)]
    pub no_open: bool,

    /// Observe only this network namespace: a name from `ip netns` or a path such as
    /// /proc/PID/ns/net (the output is then that namespace's report alone).
    #[arg(long, value_name = "NAME|PATH")]
    pub netns: Option<String>,
}

impl TimewaitArgs {
    /// The report configuration these arguments ask for.
    pub fn report_config(&self) -> ReportConfig {
        ReportConfig {
            close_wait_threshold_ms: secs_to_ms(self.close_wait_threshold),
            stall_after_ms: secs_to_ms(self.stall_after),
            thresholds: Thresholds {
                warning_pct: self.warn_pct,
                critical_pct: self.critical_pct,
                ..Thresholds::default()
            },
            top: self.top,
            list_timewait: self.list,
        }
    }
}

pub(crate) fn secs_to_ms(s: f64) -> u64 {
    if s.is_finite() && s > 0.0 {
        (s * 1000.0).round() as u64
    } else {
        0
    }
}

/// Runs `teardown timewait`. Standard output closed early (`| head`) is no error.
pub fn run(args: TimewaitArgs) -> anyhow::Result<()> {
    match report(args) {
        Err(e) if super::output::is_closed_pipe(&e) => Ok(()),
        r => r,
    }
}

fn report(args: TimewaitArgs) -> anyhow::Result<()> {
    // Buffered: stdout is line-buffered, and a JSON report has tens of thousands of lines.
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let Some(name) = &args.netns else {
        let report = collect_host(&args)?;
        match args.format {
            OutputFormat::Json => {
                serde_json::to_writer_pretty(&mut out, &report)?;
                writeln!(out)?;
            }
            OutputFormat::Text => out.write_all(render_host_text(&report).as_bytes())?,
        }
        out.flush()?;
        return Ok(());
    };
    let path = netns::path_for(name);
    let report = netns::run_in(&path, || collect(&args))
        .with_context(|| format!("--netns {name}: see `ip netns list`, or give a path"))??;
    match args.format {
        OutputFormat::Json => {
            serde_json::to_writer_pretty(&mut out, &report)?;
            writeln!(out)?;
        }
        OutputFormat::Text => out.write_all(render_text(&report).as_bytes())?,
    }
    out.flush()?;
    Ok(())
}

fn poll_options(args: &TimewaitArgs) -> PollOptions {
    PollOptions {
        include_open: !args.no_open,
        ipv6: true,
    }
}

/// Polls once, or twice `--interval` apart, in the calling thread's network namespace, and
/// returns the report.
pub fn collect(args: &TimewaitArgs) -> anyhow::Result<Report> {
    let owners = (!args.no_owners).then(ScanLimits::default);
    let mut c = Collector::new(poll_options(args), args.report_config(), owners)
        .context("sock_diag is not available")?;
    let (mut report, _) = c.poll()?;
    if args.interval > 0.0 {
        std::thread::sleep(Duration::from_millis(secs_to_ms(args.interval)));
        report = c.poll()?.0;
    }
    Ok(report)
}

/// Polls every network namespace once, or twice `--interval` apart. Fails only when not even
/// this process's own namespace could be observed (the others are listed as unobserved).
pub fn collect_host(args: &TimewaitArgs) -> anyhow::Result<HostReport> {
    let owners = (!args.no_owners).then(ScanLimits::default);
    let mut c = HostCollector::new(poll_options(args), args.report_config(), owners)
        .context("cannot open this thread's network namespace (/proc/thread-self/ns/net)")?;
    let mut report = c.poll();
    if args.interval > 0.0 {
        std::thread::sleep(Duration::from_millis(secs_to_ms(args.interval)));
        report = c.poll();
    }
    if let Some(u) = report.unobserved.iter().find(|u| u.owner.own) {
        anyhow::bail!(
            "sock_diag is not available in this process's network namespace: {}",
            u.error
        );
    }
    Ok(report)
}

/// Namespaces given a section of their own in the text report; the rest are in the table.
const DETAILED_NAMESPACES: usize = 5;

/// The report of every namespace as text: one table, then the namespaces with closing sockets.
pub fn render_host_text(r: &HostReport) -> String {
    let mut o = String::new();
    // Writing to a String cannot fail.
    let _ = write_host_report(&mut o, r);
    o
}

fn write_host_report(o: &mut String, r: &HostReport) -> std::fmt::Result {
    writeln!(
        o,
        "Closing TCP sockets in {} network namespace{} (sock_diag)   level: {}",
        r.namespaces.len(),
        if r.namespaces.len() == 1 { "" } else { "s" },
        r.level.name()
    )?;
    writeln!(o)?;
    writeln!(
        o,
        "{:<11} {:<34} {:>5} {:>9} {:>9} {:>10} {:>7}  LEVEL",
        "NETNS", "OWNER", "PROCS", "TIME_WAIT", "FIN_WAIT2", "CLOSE_WAIT", "OTHER"
    )?;
    let other =
        |c: &crate::monitor::StateCounts| c.fin_wait1 + c.fin_wait2 + c.closing + c.last_ack;
    for n in &r.namespaces {
        let c = &n.report.counts;
        writeln!(
            o,
            "{:<11} {:<34} {:>5} {:>9} {:>9} {:>10} {:>7}  {}",
            n.owner.netns,
            n.owner.label(),
            n.owner.processes,
            c.time_wait,
            c.fin_wait2_timewait,
            c.close_wait,
            other(c),
            n.report.level.name()
        )?;
    }
    let t = &r.totals;
    writeln!(
        o,
        "{:<11} {:<34} {:>5} {:>9} {:>9} {:>10} {:>7}",
        "TOTAL",
        "",
        "",
        t.time_wait,
        t.fin_wait2_timewait,
        t.close_wait,
        other(t)
    )?;
    for u in &r.unobserved {
        writeln!(
            o,
            "{:<11} {:<34} not observed: {}",
            u.owner.netns,
            u.owner.label(),
            crate::escape::text(&u.error)
        )?;
    }
    if r.left_out > 0 {
        writeln!(o, "({} more namespaces not observed: too many)", r.left_out)?;
    }
    if r.unreadable_processes > 0 {
        writeln!(
            o,
            "({} could not be read: {}; a namespace only those are in is missing, and PROCS \
             counts the readable ones)",
            match r.unreadable_processes {
                1 => "1 process".to_owned(),
                n => format!("{n} processes"),
            },
            crate::kernel::caps::lacking_note(crate::kernel::caps::Capability::SysPtrace)
                .unwrap_or_else(|| "permission denied".to_owned())
        )?;
    }
    let busy: Vec<_> = r
        .namespaces
        .iter()
        .filter(|n| {
            n.report.counts.rows().iter().any(|(_, c)| *c > 0)
                || n.report.level > crate::monitor::Level::Ok
        })
        .collect();
    for n in busy.iter().take(DETAILED_NAMESPACES) {
        writeln!(o)?;
        writeln!(o, "== netns {} ({}) ==", n.owner.netns, n.owner.label())?;
        write_report(o, &n.report)?;
    }
    if busy.len() > DETAILED_NAMESPACES {
        writeln!(o)?;
        writeln!(
            o,
            "{} more namespaces hold closing sockets: `teardown timewait --netns /proc/PID/ns/net` shows one",
            busy.len() - DETAILED_NAMESPACES
        )?;
    }
    Ok(())
}

/// The report as text tables.
pub fn render_text(r: &Report) -> String {
    let mut o = String::new();
    // Writing to a String cannot fail.
    let _ = write_report(&mut o, r);
    o
}

/// One table of timewait sockets grouped by address.
fn write_groups<K: std::fmt::Display>(
    o: &mut String,
    title: &str,
    groups: &[crate::monitor::TimewaitGroup<K>],
) -> std::fmt::Result {
    writeln!(o)?;
    writeln!(o, "{title:<40} {:>9} {:>9}", "TIME_WAIT", "FIN_WAIT2")?;
    for g in groups {
        writeln!(
            o,
            "{:<40} {:>9} {:>9}",
            g.key.to_string(),
            g.time_wait,
            g.fin_wait2
        )?;
    }
    Ok(())
}

fn write_report(o: &mut String, r: &Report) -> std::fmt::Result {
    let k = &r.settings;
    writeln!(
        o,
        "Closing TCP sockets (sock_diag, {} poll{}){}   level: {}",
        r.polls,
        if r.polls == 1 { "" } else { "s" },
        if r.rate.method == "observed" {
            format!(" over {}", human_ms(r.rate.window_ms))
        } else {
            String::new()
        },
        r.level.name()
    )?;
    writeln!(o)?;
    writeln!(o, "{:<22} {:>8}", "STATE", "COUNT")?;
    for (name, n) in r.counts.rows() {
        writeln!(o, "{name:<22} {n:>8}")?;
    }
    writeln!(o)?;
    let b = &r.tw_buckets;
    let overflow = match (b.overflow_total, b.overflow_delta) {
        (Some(t), Some(d)) => format!("{t} (+{d} since last poll)"),
        (Some(t), None) => t.to_string(),
        _ => "unavailable".into(),
    };
    writeln!(
        o,
        "Timewait table: {} of {} (tcp_max_tw_buckets), headroom {} ({:.1}% used) [{}]; TCPTimeWaitOverflow {}",
        b.count,
        b.max,
        b.headroom,
        b.used_pct,
        b.level.name(),
        overflow
    )?;
    let rate = &r.rate;
    if rate.method == "observed" {
        writeln!(
            o,
            "Entries: {} in {} = {:.1}/s -> steady state about {:.0} timewait sockets (now {})",
            rate.entries,
            human_ms(rate.window_ms),
            rate.per_second,
            rate.steady_state,
            rate.current
        )?;
    } else {
        writeln!(
            o,
            "Entries: about {:.1}/s (estimated from the timers of {} TIME_WAIT sockets: all entered within 60 s; use --interval to measure)",
            rate.per_second, rate.entries
        )?;
    }
    let e = &r.exits;
    if r.polls > 1 {
        writeln!(
            o,
            "Left TIME_WAIT since the first poll: {} expired, {} reused, {} killed early; {} timer restarts (peer resent its FIN)",
            e.expired, e.reused, e.killed, e.timer_restarts
        )?;
    }

    if !r.per_local.is_empty() {
        write_groups(o, "TIMEWAIT PER LOCAL ADDRESS", &r.per_local)?;
        write_groups(o, "TIMEWAIT PER REMOTE ADDR:PORT", &r.per_remote)?;
    }

    writeln!(o)?;
    writeln!(
        o,
        "Ephemeral port pressure: ip_local_port_range {}-{} ({} ports), tcp_tw_reuse={}, tcp_timestamps={}",
        k.port_range.0,
        k.port_range.1,
        k.port_range.0.abs_diff(k.port_range.1) as u32 + 1,
        k.tw_reuse,
        k.timestamps
    )?;
    if r.port_pressure.is_empty() {
        writeln!(
            o,
            "  no client-side timewait sockets (local port in the range)"
        )?;
    } else {
        writeln!(
            o,
            "{:<40} {:>8} {:>8} {:>7}  {:<10} LEVEL",
            "DESTINATION", "TIMEWAIT", "BLOCKING", "USED", "REUSE"
        )?;
        for p in &r.port_pressure {
            writeln!(
                o,
                "{:<40} {:>8} {:>8} {:>6.1}%  {:<10} {}",
                p.remote.to_string(),
                p.timewait,
                p.blocking,
                p.used_pct,
                match p.reuse {
                    Reuse::Off => "off",
                    Reuse::Applies => "applies",
                    Reuse::NotForThisDestination => "not here",
                },
                p.level.name()
            )?;
        }
    }

    writeln!(o)?;
    writeln!(
        o,
        "CLOSE_WAIT leaks (older than {}): {}",
        human_ms(r.close_wait_threshold_ms),
        r.close_wait_leaks.len()
    )?;
    if !r.close_wait_leaks.is_empty() {
        writeln!(
            o,
            "{:<48} {:>9} {:>7} {:>6}  PROCESS",
            "LOCAL -> REMOTE", "AGE", "RECV-Q", "UID"
        )?;
        for l in &r.close_wait_leaks {
            let owners = if l.owners.is_empty() {
                "?".to_string()
            } else {
                l.owners
                    .iter()
                    .map(|w| format!("{}/{} (fd {})", w.pid, crate::escape::text(&w.comm), w.fd))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            writeln!(
                o,
                "{:<48} {:>9} {:>7} {:>6}  {}",
                l.tuple.to_string(),
                human_age(l.age_ms, l.at_least),
                l.recv_queue,
                l.uid,
                owners
            )?;
        }
    }
    if let Some(s) = &r.owner_scan {
        if s.truncated {
            writeln!(o, "  (owner scan stopped after {} descriptors)", s.fds_read)?;
        }
    }

    writeln!(o)?;
    writeln!(o, "Stuck closing sockets: {}", r.stalls.len())?;
    for s in &r.stalls {
        writeln!(
            o,
            "  {:<10} {:<48} {:>9} (expected < {})  {}",
            s.state.name(),
            s.tuple.to_string(),
            human_age(s.age_ms, s.at_least),
            human_ms(s.expected_ms),
            s.reason
        )?;
    }

    if !e.recent.is_empty() {
        writeln!(o)?;
        writeln!(o, "Latest timewait exits:")?;
        for x in e.recent.iter().rev().take(10) {
            writeln!(
                o,
                "  {:<8} {:<48} {} restarts",
                x.kind.name(),
                x.tuple.to_string(),
                x.restarts
            )?;
        }
    }

    if let Some(list) = &r.timewait_sockets {
        writeln!(o)?;
        writeln!(
            o,
            "{:<48} {:<10} {:>9} {:>9} {:>8}",
            "TIMEWAIT SOCKET", "SUBSTATE", "ENTERED", "REMAINING", "RESTARTS"
        )?;
        for t in list {
            writeln!(
                o,
                "{:<48} {:<10} {:>9} {:>9} {:>8}",
                t.tuple.to_string(),
                t.substate.name(),
                format!("-{}", human_ms(r.taken_at_ms.saturating_sub(t.entered_ms))),
                human_ms(t.remaining_ms),
                t.restarts
            )?;
        }
    }
    Ok(())
}

/// A percentage for an option: from 0 to 100.
fn parse_pct(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a percentage"))?;
    if !(v.is_finite() && (0.0..=100.0).contains(&v)) {
        return Err(format!("{s:?}: give a percentage from 0 to 100"));
    }
    Ok(v)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::monitor::build_report;
    use crate::sock_diag::{follow::Tracker, sysctl::KernelSettings};
    use crate::sock_diag::{FourTuple, FullSocket, Snapshot, TcpState, TimewaitSocket, TwSubstate};
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: TimewaitArgs,
    }

    #[test]
    fn args_parse_and_help_teaches() {
        let c = Cli::try_parse_from([
            "t",
            "--format",
            "json",
            "--interval",
            "2.5",
            "--close-wait-threshold",
            "30",
        ])
        .unwrap();
        assert_eq!(c.args.format, OutputFormat::Json);
        let cfg = c.args.report_config();
        assert_eq!(cfg.close_wait_threshold_ms, 30_000);
        assert_eq!(secs_to_ms(c.args.interval), 2_500);
        let mut help = Vec::new();
        use clap::CommandFactory;
        Cli::command().write_long_help(&mut help).unwrap();
        let help = String::from_utf8(help).unwrap();
        assert!(help.contains("tcp_tw_reuse"));
        assert!(help.contains("--close-wait-threshold"));
    }

    #[test]
    fn text_report_has_the_tables() {
        let t0 = 1_700_000_000_000;
        let tuple = |l: &str, r: &str| FourTuple {
            local: l.parse().unwrap(),
            remote: r.parse().unwrap(),
        };
        let snap = Snapshot {
            taken_at_ms: t0,
            timewait: vec![TimewaitSocket {
                tuple: tuple("10.0.0.1:40000", "10.0.0.9:443"),
                substate: TwSubstate::TimeWait,
                remaining_ms: 30_000,
                cookie: 1,
            }],
            closing: vec![FullSocket {
                tuple: tuple("10.0.0.1:80", "10.0.0.2:5555"),
                state: TcpState::CloseWait,
                inode: 7,
                uid: 0,
                cookie: 2,
                recv_queue: 1,
                send_queue: 0,
                retransmits: None,
                timer_ms: None,
                last_ack_recv_ms: Some(120_000),
            }],
            open: vec![],
        };
        let mut tr = Tracker::new(60);
        tr.observe(&snap);
        let cfg = ReportConfig {
            list_timewait: true,
            ..ReportConfig::default()
        };
        let r = build_report(
            &snap,
            &tr,
            &KernelSettings::linux_defaults(),
            None,
            None,
            &cfg,
        );
        let text = render_text(&r);
        assert!(text.contains("TIME_WAIT                     1"), "{text}");
        assert!(text.contains("10.0.0.9:443"));
        assert!(text.contains("CLOSE_WAIT leaks (older than 1m00s): 1"));
        assert!(text.contains(">=2m00s"));
        assert!(text.contains("level: WARNING"));
        assert!(text.contains("-30s"));
    }
}
