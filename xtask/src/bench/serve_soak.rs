//! The fleet soak (`cargo xtask bench --serve-soak`): `teardown serve` as a fleet runs it (JSON
//! Lines to a file, metrics with every namespace's figures, scraped as Prometheus would) under
//! a steady churn at a fixed rate for half an hour: does its memory stay flat once the load is
//! steady, does it keep up, and do scrapes stay quick while the timewait sockets of the churn
//! (rate x 60 s of them) are counted at every poll? Results go to serve-soak.json and .md beside
//! the benchmark's latest.*.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::TcpStream,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde::Serialize;

use super::{last_lines, parse_summary, procs, wait_for_text, Churner, Proc, TRACE_READY};
use super::{TRACER_START_TIMEOUT, TRACER_STOP_TIMEOUT};
use crate::churn::ChurnResult;

const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// As a Prometheus server's usual scrape interval, and the agent's default figures poll.
const SCRAPE_EVERY: Duration = Duration::from_secs(15);
const PROGRESS_EVERY: Duration = Duration::from_secs(60);

/// One look at the agent.
#[derive(Clone, Debug, Default, Serialize)]
pub(super) struct Sample {
    pub t_s: f64,
    pub rss_kib: u64,
    pub cpu_s: f64,
    /// The churn's connect()s so far.
    pub connects: Option<u64>,
}

/// One scrape of the endpoint.
#[derive(Clone, Debug, Default, Serialize)]
pub(super) struct Scrape {
    pub t_s: f64,
    pub ms: f64,
    pub bytes: usize,
    /// Both ends of every judged teardown so far (`teardown_connections_total`, summed).
    pub connections: f64,
    /// Every cause of `teardown_lost_events_total`, summed.
    pub lost: f64,
    /// TIME_WAIT sockets of every namespace, as the figures counted them.
    pub time_wait: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub(super) struct ServeSoakResult {
    pub date: String,
    pub seconds: f64,
    pub rate_asked: f64,
    pub threads: usize,
    /// connect()s per second over the whole churn.
    pub connects_per_s: Option<f64>,
    pub churn_errors: u64,
    pub rss_at_60_s_kib: Option<u64>,
    pub rss_end_kib: Option<u64>,
    pub rss_max_kib: Option<u64>,
    /// End over the first minute's.
    pub rss_end_ratio: Option<f64>,
    /// The agent's CPU over the churn, in percent of one core.
    pub agent_cpu_pct: Option<f64>,
    pub scrapes: usize,
    pub scrape_ms_max: Option<f64>,
    pub time_wait_max: Option<f64>,
    /// From the agent's summary at its end (SIGTERM).
    pub reported: Option<u64>,
    pub lost: Option<u64>,
    pub clean_stop: bool,
    pub error: Option<String>,
    pub samples: Vec<Sample>,
    pub scrape_log: Vec<Scrape>,
}

pub(super) fn run(
    teardown: &Path,
    xtask: &Path,
    work: &Path,
    secs: f64,
    rate: f64,
    threads: usize,
) -> ServeSoakResult {
    let mut res = ServeSoakResult {
        date: super::date_now(),
        seconds: secs,
        rate_asked: rate,
        threads,
        ..ServeSoakResult::default()
    };
    if let Err(e) = soak(teardown, xtask, work, &mut res) {
        eprintln!("bench: the serve soak failed: {e:#}");
        res.error = Some(format!("{e:#}"));
    }
    res
}

fn soak(teardown: &Path, xtask: &Path, work: &Path, res: &mut ServeSoakResult) -> Result<()> {
    let out = work.join("serve-soak.jsonl");
    let err = work.join("serve-soak.err");
    let args = [
        "--threads".to_string(),
        res.threads.to_string(),
        "--seconds".into(),
        res.seconds.to_string(),
        "--rate".into(),
        res.rate_asked.to_string(),
    ];
    let mut churn = Churner::start(xtask, &args)?;
    let ready = churn.next(Duration::from_secs(30))?;
    let churn_pid = ready
        .get("pid")
        .and_then(|p| p.as_i64())
        .and_then(|p| i32::try_from(p).ok())
        .context("the churn generator did not say its pid")?;
    let mut cmd = Command::new(teardown);
    cmd.args(["serve", "--metrics", "127.0.0.1:0", "-o"])
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&err)?);
    let mut p = Proc::spawn(&mut cmd, "teardown serve")?;
    wait_for_text(&mut p, &err, &err, TRACE_READY, TRACER_START_TIMEOUT)?;
    let said = std::fs::read_to_string(&err).unwrap_or_default();
    let addr = said
        .lines()
        .find_map(|l| {
            l.strip_prefix("metrics at http://")?
                .strip_suffix("/metrics")
        })
        .context("teardown serve did not say where its metrics are")?
        .to_owned();
    let cpu0 = p.cpu_now().unwrap_or(0.0);
    churn.go()?;
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(res.seconds + 120.0);
    let (mut next_sample, mut next_scrape) = (t0, t0 + SCRAPE_EVERY);
    let mut next_progress = t0 + PROGRESS_EVERY;
    let look = |p: &Proc| Sample {
        t_s: t0.elapsed().as_secs_f64(),
        rss_kib: p.status_kib("VmRSS").unwrap_or(0),
        cpu_s: p.cpu_now().unwrap_or(0.0) - cpu0,
        connects: procs::tcp_counter(churn_pid, "ActiveOpens"),
    };
    let result = loop {
        let now = Instant::now();
        if now >= next_sample {
            res.samples.push(look(&p));
            next_sample += SAMPLE_EVERY;
        }
        if now >= next_scrape {
            res.scrape_log.push(scrape(&addr, t0)?);
            next_scrape += SCRAPE_EVERY;
        }
        if now >= next_progress {
            if let (Some(s), Some(c)) = (res.samples.last(), res.scrape_log.last()) {
                println!(
                    "bench: serve soak: {:.0} s, RSS {:.1} MiB, CPU {:.0}%, {:.0} ends judged, \
                     {:.0} lost, {:.0} TIME_WAIT, scrape {:.0} ms",
                    s.t_s,
                    s.rss_kib as f64 / 1024.0,
                    100.0 * s.cpu_s / s.t_s.max(1e-9),
                    c.connections,
                    c.lost,
                    c.time_wait,
                    c.ms
                );
            }
            next_progress += PROGRESS_EVERY;
        }
        if let Some(v) = churn.try_next(Duration::from_millis(100))? {
            break v;
        }
        if let Some(e) = p.try_exit()? {
            let t = std::fs::read_to_string(&err).unwrap_or_default();
            bail!(
                "teardown serve ended during the soak ({}): {}",
                e.describe(),
                last_lines(&t, 5)
            );
        }
        if Instant::now() > deadline {
            bail!("the churn did not end within {:.0} s", res.seconds + 120.0);
        }
    };
    let end = look(&p);
    let r: ChurnResult = serde_json::from_value(result).context("the churn's result")?;
    let cexit = churn.finish(Duration::from_secs(10))?;
    if !cexit.success() {
        bail!("the churn generator failed: {}", cexit.describe());
    }
    res.scrape_log.push(scrape(&addr, t0)?);
    res.samples.push(end.clone());
    // SIGTERM, as a service manager stops it.
    let e = p.stop(libc::SIGTERM, TRACER_STOP_TIMEOUT)?;
    res.clean_stop = e.success();
    let text = std::fs::read_to_string(&err).unwrap_or_default();
    let _ = std::fs::remove_file(&out);
    if let Some(s) = parse_summary(&text) {
        res.reported = Some(s.connections);
        res.lost = Some(s.lost);
    }
    res.connects_per_s = Some(r.per_second);
    res.churn_errors = r.errors;
    res.rss_end_kib = Some(end.rss_kib);
    res.rss_max_kib = res.samples.iter().map(|s| s.rss_kib).max();
    res.rss_at_60_s_kib = res
        .samples
        .iter()
        .find(|s| s.t_s >= 60.0)
        .map(|s| s.rss_kib);
    res.rss_end_ratio = match (res.rss_at_60_s_kib, res.rss_end_kib) {
        (Some(a), Some(b)) if a > 0 => Some(b as f64 / a as f64),
        _ => None,
    };
    res.agent_cpu_pct = Some(100.0 * end.cpu_s / end.t_s.max(1e-9));
    res.scrapes = res.scrape_log.len();
    res.scrape_ms_max = res.scrape_log.iter().map(|s| s.ms).reduce(f64::max);
    res.time_wait_max = res.scrape_log.iter().map(|s| s.time_wait).reduce(f64::max);
    if !res.clean_stop {
        bail!(
            "teardown serve did not stop cleanly on SIGTERM ({}): {}",
            e.describe(),
            last_lines(&text, 5)
        );
    }
    Ok(())
}

/// One scrape, timed, with the figures the soak follows.
fn scrape(addr: &str, t0: Instant) -> Result<Scrape> {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).context("cannot reach the metrics endpoint")?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)
        .context("reading the metrics endpoint")?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let sum = |prefix: &str, must: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(prefix) && l.contains(must))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    Ok(Scrape {
        t_s: t0.elapsed().as_secs_f64(),
        ms,
        bytes: text.len(),
        connections: sum("teardown_connections_total{", ""),
        lost: sum("teardown_lost_events_total{", ""),
        time_wait: sum("teardown_closing_sockets{", "state=\"TIME_WAIT\""),
    })
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("–".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".into(), |v| format!("{v:.digits$}"))
}

/// The report's Markdown.
pub(super) fn markdown(r: &ServeSoakResult, machine: &str) -> String {
    let mut s = String::new();
    s.push_str("# teardown serve: the fleet soak\n\n");
    s.push_str(&format!(
        "{} on {machine}. `teardown serve --metrics 127.0.0.1:0 -o FILE` (defaults: JSON Lines \
         of every judged teardown, the figures of every namespace polled every 15 s), scraped \
         every 15 s, under `cargo xtask churn --rate {} --threads {}` for {:.0} s, then stopped \
         with SIGTERM.\n\n",
        r.date, r.rate_asked, r.threads, r.seconds
    ));
    if let Some(e) = &r.error {
        s.push_str(&format!("**The soak failed**: {e}\n\n"));
    }
    s.push_str("| figure | value |\n|---|---|\n");
    let rows = [
        (
            "connections per second (asked, made)",
            format!("{:.0}, {}", r.rate_asked, opt(r.connects_per_s, 0)),
        ),
        ("churn errors", r.churn_errors.to_string()),
        ("VmRSS at 60 s", mib(r.rss_at_60_s_kib)),
        ("VmRSS at the end", mib(r.rss_end_kib)),
        ("VmRSS at most", mib(r.rss_max_kib)),
        ("end / 60 s", opt(r.rss_end_ratio, 3)),
        ("agent CPU (% of one core)", opt(r.agent_cpu_pct, 1)),
        (
            "connection ends judged (summary)",
            r.reported.map_or("–".into(), |n| n.to_string()),
        ),
        (
            "lost events (summary)",
            r.lost.map_or("–".into(), |n| n.to_string()),
        ),
        ("scrapes", r.scrapes.to_string()),
        ("slowest scrape", opt(r.scrape_ms_max, 1) + " ms"),
        ("TIME_WAIT counted at most", opt(r.time_wait_max, 0)),
        (
            "clean stop on SIGTERM",
            if r.clean_stop { "yes" } else { "no" }.into(),
        ),
    ];
    for (k, v) in rows {
        s.push_str(&format!("| {k} | {v} |\n"));
    }
    s.push_str("\nVmRSS every 5 minutes:\n\n| t (s) | VmRSS |\n|---|---|\n");
    let mut next = 0.0;
    for smp in &r.samples {
        if smp.t_s >= next {
            s.push_str(&format!(
                "| {:.0} | {} |\n",
                smp.t_s,
                mib(Some(smp.rss_kib))
            ));
            next += 300.0;
        }
    }
    if let Some(last) = r.samples.last() {
        s.push_str(&format!(
            "| {:.0} (end) | {} |\n",
            last.t_s,
            mib(Some(last.rss_kib))
        ));
    }
    s
}
