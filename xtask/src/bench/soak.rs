//! The soak: one `teardown trace` with default settings under the churn for minutes, its memory
//! (VmRSS) sampled every few seconds: does it keep up once the ring buffer's slack is used up,
//! and does its memory stay flat once the load is steady? Its throughput is compared with an
//! untraced churn as long: a long churn runs slower than a round once its timewait sockets
//! start expiring, a minute in.

use std::{
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde::Serialize;

use super::{
    bpfstats, last_lines, mark, procs, start_trace, stop_agent, trace_result, Churner, Config, Ctx,
    Round, SoakBaseline, SETTLE,
};
use crate::churn::ChurnResult;

const SAMPLE_EVERY: Duration = Duration::from_secs(2);
const PROGRESS_EVERY: Duration = Duration::from_secs(60);
/// The memory compared with the end's is the first minute's.
const MINUTE_S: f64 = 60.0;
/// The soak stops, and says so, when its output's disk has less than this left.
const DISK_RESERVE: u64 = 2 << 30;

/// One look at the agent and the churn during the soak.
#[derive(Clone, Debug, Default, Serialize)]
pub(super) struct Sample {
    /// Seconds since the churn began.
    pub t_s: f64,
    /// The churn's connect()s so far (its namespace's ActiveOpens); None once it is gone.
    pub connects: Option<u64>,
    pub rss_kib: u64,
    pub anon_kib: u64,
    pub cpu_s: f64,
    /// State changes since the churn began (the kernel's count).
    pub state_changes: u64,
    pub output_bytes: u64,
}

/// A rate over the first minute of a churn and over its last.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub(super) struct Minutes {
    pub first: Option<f64>,
    pub last: Option<f64>,
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
    /// The "minute" of the figures below, in seconds: 60, or half the churn when it is shorter
    /// than two minutes.
    pub minute_s: Option<f64>,
    /// Seconds into the churn of the memory compared with the end's (the first minute).
    pub rss_first_at_s: Option<f64>,
    pub rss_first_kib: Option<u64>,
    /// VmRSS once the churn ended, just before the agent was stopped.
    pub rss_end_kib: Option<u64>,
    /// End over first.
    pub rss_end_ratio: Option<f64>,
    /// State changes per second (the kernel's count): whether the load held steady.
    pub state_changes_per_s: Minutes,
    /// connect()s per second of the traced churn, and of the untraced one when measured.
    pub connects_per_s: Minutes,
    pub untraced_connects_per_s: Option<Minutes>,
    pub samples: Vec<Sample>,
}

pub(super) fn run(ctx: &Ctx, untraced_rounds_rate: Option<f64>) -> SoakResult {
    let secs = ctx.args.soak_seconds;
    let mut res = SoakResult {
        seconds: secs,
        ..SoakResult::default()
    };
    match ctx.args.soak_baseline {
        SoakBaseline::Measured => {
            println!("bench: soak: the untraced baseline, {secs} s of churn");
            match untraced(ctx, secs) {
                Ok((rate, minutes)) => {
                    println!("bench: soak: untraced {rate:.0} conn/s");
                    res.baseline = format!("an untraced churn of {secs} s");
                    res.baseline_per_second = Some(rate);
                    res.untraced_connects_per_s = Some(minutes);
                }
                Err(e) => {
                    eprintln!("bench: the untraced soak failed: {e:#}");
                    res.baseline = format!("none (the untraced churn failed: {e:#})");
                }
            }
        }
        SoakBaseline::Rounds => {
            res.baseline = "the untraced rounds' median rate".into();
            res.baseline_per_second = untraced_rounds_rate;
        }
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

/// A churn started and ready: it and its pid.
fn ready_churn(ctx: &Ctx, secs: f64) -> Result<(Churner, i32)> {
    let mut churn = Churner::start(&ctx.xtask, &churn_args(ctx, secs))?;
    let ready = churn.next(Duration::from_secs(30))?;
    let pid = ready
        .get("pid")
        .and_then(|p| p.as_i64())
        .and_then(|p| i32::try_from(p).ok())
        .context("the churn generator did not say its pid")?;
    Ok((churn, pid))
}

/// Waits for the result of the churn that began at `t0`, calling `look` every `SAMPLE_EVERY`
/// (first at once) and `check` in between; bounded by the churn's length and two minutes.
fn drive(
    churn: &mut Churner,
    secs: f64,
    t0: Instant,
    mut look: impl FnMut(),
    mut check: impl FnMut() -> Result<()>,
) -> Result<ChurnResult> {
    let deadline = t0 + Duration::from_secs_f64(secs + 120.0);
    let mut next = t0;
    let v = loop {
        if Instant::now() >= next {
            look();
            next += SAMPLE_EVERY;
        }
        if let Some(v) = churn.try_next(Duration::from_millis(100))? {
            break v;
        }
        check()?;
        if Instant::now() > deadline {
            bail!(
                "the churn generator did not end within {:.0} s",
                secs + 120.0
            );
        }
    };
    let r: ChurnResult = serde_json::from_value(v).context("the churn generator's result")?;
    let cexit = churn.finish(Duration::from_secs(10))?;
    if !cexit.success() {
        bail!("the churn generator failed: {}", cexit.describe());
    }
    if r.connections == 0 {
        bail!("the churn made no connections");
    }
    Ok(r)
}

/// The untraced churn of the soak's length: its rate, and its connect()s over the minutes.
fn untraced(ctx: &Ctx, secs: f64) -> Result<(f64, Minutes)> {
    let (mut churn, pid) = ready_churn(ctx, secs)?;
    let mut samples: Vec<Sample> = Vec::new();
    churn.go()?;
    let t0 = Instant::now();
    let r = drive(
        &mut churn,
        secs,
        t0,
        || {
            samples.push(Sample {
                t_s: t0.elapsed().as_secs_f64(),
                connects: procs::tcp_counter(pid, "ActiveOpens"),
                ..Sample::default()
            })
        },
        || Ok(()),
    )?;
    let minute = MINUTE_S.min(r.seconds / 2.0);
    Ok((
        r.per_second,
        minutes(&samples, r.seconds, minute, |s| s.connects),
    ))
}

/// `f`'s rate over the first `minute` of the samples and over the last one up to `end_s`
/// (samples without the figure left out).
fn minutes(
    samples: &[Sample],
    end_s: f64,
    minute: f64,
    f: impl Fn(&Sample) -> Option<u64>,
) -> Minutes {
    let rate = |a: &Sample, b: &Sample| {
        let (x, y) = (f(a)?, f(b)?);
        (b.t_s > a.t_s).then(|| y.saturating_sub(x) as f64 / (b.t_s - a.t_s))
    };
    let load: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.t_s <= end_s && f(s).is_some())
        .collect();
    let at = |t: f64| load.iter().find(|s| s.t_s >= t);
    let first = match (load.first(), at(minute)) {
        (Some(a), Some(b)) => rate(a, b),
        _ => None,
    };
    let last = load.last().and_then(|b| rate(at(b.t_s - minute)?, b));
    Minutes { first, last }
}

fn traced(ctx: &Ctx, res: &mut SoakResult, out: &Path, err: &Path) -> Result<()> {
    let secs = res.seconds;
    let (mut churn, churn_pid) = ready_churn(ctx, secs)?;
    let mut p = start_trace(ctx, &ctx.args.trace_args, out, err)?;
    thread::sleep(SETTLE);
    let start = mark(&p);
    let state0 = bpfstats::state_changes(&start.progs, true).unwrap_or(0);
    let look = |p: &procs::Proc, t0: Instant| Sample {
        t_s: t0.elapsed().as_secs_f64(),
        connects: procs::tcp_counter(churn_pid, "ActiveOpens"),
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
    let mut samples: Vec<Sample> = Vec::new();
    let mut next_progress = Instant::now() + PROGRESS_EVERY;
    let r = {
        let p = &mut p;
        // `look` reads the agent; `check` may reap it: both borrow it, one at a time.
        let cell = std::cell::RefCell::new(p);
        drive(
            &mut churn,
            secs,
            t0,
            || {
                let s = look(&cell.borrow(), t0);
                if Instant::now() >= next_progress {
                    println!(
                        "bench: soak: {:.0} s, RSS {:.1} MiB, {:.0} state changes/s, output \
                         {:.2} GB",
                        s.t_s,
                        s.rss_kib as f64 / 1024.0,
                        s.state_changes as f64 / s.t_s.max(1e-9),
                        s.output_bytes as f64 / 1e9
                    );
                    next_progress += PROGRESS_EVERY;
                }
                samples.push(s);
            },
            || {
                if let Some(e) = cell.borrow_mut().try_exit()? {
                    let t = std::fs::read_to_string(err).unwrap_or_default();
                    bail!(
                        "teardown trace ended during the soak ({}): {}",
                        e.describe(),
                        last_lines(&t, 5)
                    );
                }
                if procs::disk_avail_bytes(&ctx.work).is_some_and(|b| b < DISK_RESERVE) {
                    bail!(
                        "less than {} GiB left on the disk of the trace's output after {:.0} s: \
                         soak stopped",
                        DISK_RESERVE >> 30,
                        t0.elapsed().as_secs_f64()
                    );
                }
                Ok(())
            },
        )?
    };
    // Once the churn has ended: the end of the soak.
    let end_s = r.seconds;
    let end = look(&p, t0);
    res.rss_end_kib = Some(end.rss_kib);
    samples.push(end);
    let (e, f) = stop_agent(&mut p, &start, true, r.seconds)?;
    res.trace.connections = r.connections;
    res.trace.per_second = r.per_second;
    res.trace.churn_errors = r.errors;
    res.trace.agent = f;
    trace_result(&e, out, err, &mut res.trace)?;

    let minute = MINUTE_S.min(end_s / 2.0);
    res.minute_s = Some(minute);
    if let Some(s) = samples.iter().find(|s| s.t_s >= minute) {
        res.rss_first_at_s = Some(s.t_s);
        res.rss_first_kib = Some(s.rss_kib);
    }
    res.rss_end_ratio = match (res.rss_first_kib, res.rss_end_kib) {
        (Some(a), Some(b)) if a > 0 => Some(b as f64 / a as f64),
        _ => None,
    };
    res.state_changes_per_s = minutes(&samples, end_s, minute, |s| Some(s.state_changes));
    res.connects_per_s = minutes(&samples, end_s, minute, |s| s.connects);
    res.samples = samples;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_over_the_first_and_the_last_minute() {
        // 100 a second for the first minute, then 50; samples every 10 s up to 180 s; one more
        // after the churn's end (at 185 s) that the rates leave out.
        let mut v: Vec<Sample> = (0..=18)
            .map(|i| {
                let t = i as f64 * 10.0;
                Sample {
                    t_s: t,
                    connects: Some(if t <= 60.0 {
                        100 * t as u64
                    } else {
                        6000 + 50 * (t as u64 - 60)
                    }),
                    ..Sample::default()
                }
            })
            .collect();
        v.push(Sample {
            t_s: 185.0,
            connects: Some(1_000_000),
            ..Sample::default()
        });
        let m = minutes(&v, 180.0, 60.0, |s| s.connects);
        assert_eq!((m.first, m.last), (Some(100.0), Some(50.0)));
        // A sample that could not read the counter is skipped, not taken for zero.
        v[18].connects = None;
        let m = minutes(&v, 180.0, 60.0, |s| s.connects);
        assert_eq!((m.first, m.last), (Some(100.0), Some(50.0)));
        assert_eq!(minutes(&v[..1], 180.0, 60.0, |s| s.connects).first, None);
    }
}
