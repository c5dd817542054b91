//! The soak: one `teardown trace` with default settings under the churn for minutes, its memory
//! (VmRSS) sampled every few seconds: does it keep up once the ring buffer's slack is used up,
//! and does its memory stay flat once the load is steady?

use std::{
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde::Serialize;

use super::{
    bpfstats, last_lines, mark, procs, start_trace, stop_agent, trace_result, Churner, Config, Ctx,
    Round, SETTLE,
};
use crate::churn::ChurnResult;

const SAMPLE_EVERY: Duration = Duration::from_secs(2);
const PROGRESS_EVERY: Duration = Duration::from_secs(60);
/// The memory compared with the end's is the first minute's.
const FIRST_MINUTE_S: f64 = 60.0;
/// The soak stops, and says so, when its output's disk has less than this left.
const DISK_RESERVE: u64 = 2 << 30;

/// One look at the agent during the soak.
#[derive(Clone, Debug, Serialize)]
pub(super) struct Sample {
    /// Seconds since the churn began.
    pub t_s: f64,
    pub rss_kib: u64,
    pub anon_kib: u64,
    pub cpu_s: f64,
    /// State changes since the churn began (the kernel's count).
    pub state_changes: u64,
    pub output_bytes: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub(super) struct SoakResult {
    /// Churn seconds asked for.
    pub seconds: f64,
    /// What the throughput is compared with.
    pub baseline: String,
    pub baseline_per_second: Option<f64>,
    /// The traced soak, measured as a round is (its `ratio` is to the baseline).
    pub trace: Round,
    /// Seconds into the churn of the memory compared with the end's: the first minute (or half
    /// way, in a soak shorter than two minutes).
    pub rss_first_at_s: Option<f64>,
    pub rss_first_kib: Option<u64>,
    /// VmRSS once the churn ended, just before the agent was stopped.
    pub rss_end_kib: Option<u64>,
    /// End over first.
    pub rss_end_ratio: Option<f64>,
    /// State changes per second (the kernel's count) over the first and the last minute of the
    /// churn (half its length, when shorter than two minutes): whether the load held steady.
    pub state_changes_per_s_first_minute: Option<f64>,
    pub state_changes_per_s_last_minute: Option<f64>,
    /// That "minute", in seconds.
    pub minute_s: Option<f64>,
    pub samples: Vec<Sample>,
}

pub(super) fn run(ctx: &Ctx, untraced_rounds_rate: Option<f64>) -> SoakResult {
    let secs = ctx.args.soak_seconds;
    let mut res = SoakResult {
        seconds: secs,
        ..SoakResult::default()
    };
    if ctx.args.soak_untraced {
        println!("bench: soak: the untraced baseline, {secs} s of churn");
        match untraced(ctx, secs) {
            Ok(rate) => {
                println!("bench: soak: untraced {rate:.0} conn/s");
                res.baseline = format!("an untraced churn of {secs} s");
                res.baseline_per_second = Some(rate);
            }
            Err(e) => {
                eprintln!("bench: the untraced soak failed: {e:#}");
                res.baseline = format!("none (the untraced soak failed: {e:#})");
            }
        }
    } else {
        res.baseline = "the untraced rounds' median rate".into();
        res.baseline_per_second = untraced_rounds_rate;
    }
    println!("bench: soak: {secs} s of churn under teardown trace, its memory sampled");
    let out = ctx.work.join("soak.jsonl");
    let err = ctx.work.join("soak.err");
    res.trace.config = Some(Config::Trace);
    if let Err(e) = traced(ctx, &mut res, &out, &err) {
        eprintln!("bench: the soak failed: {e:#}");
        res.trace.error = Some(format!("{e:#}"));
    }
    let _ = std::fs::remove_file(&out);
    if let Some(b) = res
        .baseline_per_second
        .filter(|&b| b > 0.0 && res.trace.error.is_none())
    {
        res.trace.ratio = Some(res.trace.per_second / b);
    }
    if res.trace.error.is_none() {
        println!(
            "bench: soak: {}; RSS {} at {:.0} s, {} at the end",
            super::round_line(&res.trace),
            mib(res.rss_first_kib),
            res.rss_first_at_s.unwrap_or(0.0),
            mib(res.rss_end_kib),
        );
    }
    res
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("?".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

fn churn_args(ctx: &Ctx, secs: f64) -> [String; 4] {
    [
        "--threads".into(),
        ctx.args.threads.to_string(),
        "--seconds".into(),
        secs.to_string(),
    ]
}

/// The untraced churn of the soak's length: its rate.
fn untraced(ctx: &Ctx, secs: f64) -> Result<f64> {
    let mut churn = Churner::start(&ctx.xtask, &churn_args(ctx, secs))?;
    churn.next(Duration::from_secs(30))?;
    churn.go()?;
    let r: ChurnResult = serde_json::from_value(churn.next(Duration::from_secs_f64(secs + 60.0))?)
        .context("the churn generator's result")?;
    churn.finish(Duration::from_secs(10))?;
    if r.connections == 0 {
        bail!("the churn made no connections");
    }
    Ok(r.per_second)
}

fn traced(ctx: &Ctx, res: &mut SoakResult, out: &Path, err: &Path) -> Result<()> {
    let secs = res.seconds;
    let mut churn = Churner::start(&ctx.xtask, &churn_args(ctx, secs))?;
    churn.next(Duration::from_secs(30))?;
    let mut p = start_trace(ctx, &ctx.args.trace_args, out, err)?;
    thread::sleep(SETTLE);
    let start = mark(&p);
    let state0 = bpfstats::state_changes(&start.progs, true).unwrap_or(0);
    let look = |p: &procs::Proc, t0: Instant| Sample {
        t_s: t0.elapsed().as_secs_f64(),
        rss_kib: p.status_kib("VmRSS").unwrap_or(0),
        anon_kib: p.status_kib("RssAnon").unwrap_or(0),
        cpu_s: p.cpu_now().unwrap_or(0.0),
        state_changes: bpfstats::state_changes(&bpfstats::stats_of(p.pid()), true)
            .unwrap_or(0)
            .saturating_sub(state0),
        output_bytes: std::fs::metadata(out).map_or(0, |m| m.len()),
    };
    churn.go()?;
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(secs + 120.0);
    let (mut next_sample, mut next_progress) = (t0, t0 + PROGRESS_EVERY);
    let result = loop {
        let now = Instant::now();
        if now >= next_sample {
            res.samples.push(look(&p, t0));
            next_sample += SAMPLE_EVERY;
        }
        if now >= next_progress {
            if let Some(s) = res.samples.last() {
                println!(
                    "bench: soak: {:.0} s, RSS {:.1} MiB, {:.0} state changes/s, output {:.2} GB",
                    s.t_s,
                    s.rss_kib as f64 / 1024.0,
                    s.state_changes as f64 / s.t_s.max(1e-9),
                    s.output_bytes as f64 / 1e9
                );
            }
            next_progress += PROGRESS_EVERY;
        }
        if let Some(v) = churn.try_next(Duration::from_millis(100))? {
            break v;
        }
        if let Some(e) = p.try_exit()? {
            let t = std::fs::read_to_string(err).unwrap_or_default();
            bail!(
                "teardown trace ended during the soak ({}): {}",
                e.describe(),
                last_lines(&t, 5)
            );
        }
        if now > deadline {
            bail!(
                "the churn generator did not end within {:.0} s",
                secs + 120.0
            );
        }
        if procs::disk_avail_bytes(&ctx.work).is_some_and(|b| b < DISK_RESERVE) {
            bail!(
                "less than {} GiB left on the disk of the trace's output after {:.0} s: soak \
                 stopped",
                DISK_RESERVE >> 30,
                t0.elapsed().as_secs_f64()
            );
        }
    };
    let r: ChurnResult = serde_json::from_value(result).context("the churn generator's result")?;
    let cexit = churn.finish(Duration::from_secs(10))?;
    if !cexit.success() {
        bail!("the churn generator failed: {}", cexit.describe());
    }
    if r.connections == 0 {
        bail!("the churn made no connections");
    }
    let in_load = r.seconds;
    let end = look(&p, t0);
    res.rss_end_kib = Some(end.rss_kib);
    res.samples.push(end);
    let (e, f) = stop_agent(&mut p, &start, true, r.seconds)?;
    res.trace.connections = r.connections;
    res.trace.per_second = r.per_second;
    res.trace.churn_errors = r.errors;
    res.trace.agent = f;
    trace_result(&e, out, err, &mut res.trace)?;

    let first_at = FIRST_MINUTE_S.min(in_load / 2.0);
    res.minute_s = Some(first_at);
    let at = |t: f64| res.samples.iter().find(|s| s.t_s >= t);
    if let Some(s) = at(first_at) {
        res.rss_first_at_s = Some(s.t_s);
        res.rss_first_kib = Some(s.rss_kib);
    }
    res.rss_end_ratio = match (res.rss_first_kib, res.rss_end_kib) {
        (Some(a), Some(b)) if a > 0 => Some(b as f64 / a as f64),
        _ => None,
    };
    let rate = |a: &Sample, b: &Sample| {
        (b.t_s > a.t_s)
            .then(|| b.state_changes.saturating_sub(a.state_changes) as f64 / (b.t_s - a.t_s))
    };
    let first = res.samples.first();
    let load: Vec<&Sample> = res.samples.iter().filter(|s| s.t_s <= in_load).collect();
    if let (Some(a), Some(b)) = (first, at(first_at)) {
        res.state_changes_per_s_first_minute = rate(a, b);
    }
    if let Some(b) = load.last() {
        if let Some(a) = load.iter().find(|s| s.t_s >= b.t_s - first_at) {
            res.state_changes_per_s_last_minute = rate(a, b);
        }
    }
    Ok(())
}
