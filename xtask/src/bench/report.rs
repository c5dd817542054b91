//! The benchmark's report: the targets, met or missed with their figures, and the markdown.

use std::fmt::Write as _;

use super::{
    namespaces::{NamespacesResult, TIMEWAIT_RUNS, TOP_SECONDS},
    timers, Config, ConfigSummary, Report, Round, Spread, Target, TimersResult, CONFORMING,
    SOCK_DIAG, TIMEWAIT_SOURCE,
};

/// The targets' bounds.
const MIN_ROUND_S: f64 = 30.0;
const MIN_SOAK_S: f64 = 300.0;
const MIN_RATIO: f64 = 0.99;
const RSS_DRIFT: f64 = 0.10;
const MAX_AGENT_US: f64 = 0.5;
const MAX_KERNEL_NS: f64 = 300.0;
const MAX_HOLD_BYTES: f64 = 1024.0;
/// The namespaces scenario's size in the targets, and its bounds.
const TARGET_NAMESPACES: usize = 200;
const TARGET_SOCKETS: usize = 100;
const MAX_TIMEWAIT_CPU_MS: f64 = 200.0;
const MAX_TOP_PCT: f64 = 10.0;
/// The timer programs' bounds: per timewait-socket event, and per other timer.
const MAX_TW_EVENT_NS: f64 = 200.0;
const MAX_TIMER_NS: f64 = 50.0;

fn summary(r: &Report, c: Config) -> Option<&ConfigSummary> {
    r.summary.iter().find(|s| s.config == c)
}

/// The rounds of one configuration, failed ones included.
fn rounds(r: &Report, c: Config) -> impl Iterator<Item = &Round> {
    r.runs.iter().filter(move |x| x.config == Some(c))
}

/// The soak when it ran through.
fn soak_ok(r: &Report) -> Option<&super::SoakResult> {
    r.soak.as_ref().filter(|s| s.trace.error.is_none())
}

pub(super) fn targets(r: &Report) -> Vec<Target> {
    let mut t = if r.rounds > 0 {
        churn_targets(r)
    } else {
        Vec::new()
    };
    t.extend(namespace_targets(r.namespaces.as_ref()));
    t
}

/// The targets of the churn rounds, the soak and the memory scenario.
fn churn_targets(r: &Report) -> Vec<Target> {
    let mut t = Vec::new();
    let short_rounds = r.seconds_per_round < MIN_ROUND_S;
    let short = |what: &str, s: f64, min: f64| {
        format!("; {what} of {s} s, shorter than the target's {min} s: not assessed")
    };

    // Losses in every round.
    let tr: Vec<&Round> = rounds(r, Config::Trace).collect();
    let failed = tr.iter().filter(|x| x.error.is_some()).count();
    let lost: Vec<u64> = tr.iter().filter_map(|x| x.events_lost).collect();
    let max_lost = lost.iter().copied().max();
    let mut m = match max_lost {
        None => "n/a".to_owned(),
        Some(_) => format!(
            "lost per round: {} (of {} events at most)",
            lost.iter()
                .map(|&l| thousands(l as f64))
                .collect::<Vec<_>>()
                .join(", "),
            thousands(
                tr.iter()
                    .filter_map(|x| Some(x.events_seen? + x.events_lost?))
                    .max()
                    .unwrap_or(0) as f64
            )
        ),
    };
    if failed > 0 {
        m += &format!("; {failed} rounds failed");
    }
    if short_rounds {
        m += &short("rounds", r.seconds_per_round, MIN_ROUND_S);
    }
    t.push(Target {
        target: format!(
            "hard: 0 lost events in every round of >= {MIN_ROUND_S} s (default settings)"
        ),
        measured: m,
        met: match max_lost {
            _ if failed > 0 => Some(false),
            Some(l) if !short_rounds => Some(l == 0),
            _ => None,
        },
    });

    let soak = soak_ok(r);
    let soak_short = r.soak.as_ref().is_some_and(|s| s.seconds < MIN_SOAK_S);
    let soak_state = |m: String| match &r.soak {
        None => "no soak (--soak-seconds 0)".to_owned(),
        Some(s) if s.trace.error.is_some() => {
            format!(
                "the soak failed: {}",
                s.trace.error.as_deref().unwrap_or("")
            )
        }
        Some(s) if s.seconds < MIN_SOAK_S => m + &short("a soak", s.seconds, MIN_SOAK_S),
        Some(_) => m,
    };
    let soak_met = |ok: Option<bool>| {
        if r.soak.as_ref().is_some_and(|s| s.trace.error.is_some()) {
            Some(false)
        } else if soak_short {
            None
        } else {
            ok
        }
    };
    let sl = soak.and_then(|s| Some((s.trace.events_lost?, s.trace.events_seen?)));
    t.push(Target {
        target: format!(
            "hard: 0 lost events in a soak of >= {} min (default settings)",
            MIN_SOAK_S / 60.0
        ),
        measured: soak_state(sl.map_or("n/a".into(), |(l, s)| {
            format!(
                "{} lost of {} events",
                thousands(l as f64),
                thousands((s + l) as f64)
            )
        })),
        met: soak_met(sl.map(|(l, _)| l == 0)),
    });

    let ratio = summary(r, Config::Trace).and_then(|s| s.ratio);
    t.push(Target {
        target: format!(
            "hard: throughput >= {:.0}% of untraced, rounds",
            MIN_RATIO * 100.0
        ),
        measured: ratio.map_or("n/a".into(), |x| {
            format!(
                "median {:.1}% (min {:.1}%) over {} rounds",
                x.median * 100.0,
                x.min * 100.0,
                x.n
            )
        }),
        met: ratio.map(|x| x.median >= MIN_RATIO),
    });
    let sr = soak.and_then(|s| s.trace.ratio);
    t.push(Target {
        target: format!(
            "hard: throughput >= {:.0}% of untraced, soak",
            MIN_RATIO * 100.0
        ),
        measured: soak_state(match (soak, sr) {
            (Some(s), Some(x)) => format!(
                "{:.1}% ({} conn/s against {}: {})",
                x * 100.0,
                thousands(s.trace.per_second),
                thousands(s.baseline_per_second.unwrap_or(0.0)),
                s.baseline
            ),
            _ => "n/a".into(),
        }),
        met: soak_met(sr.map(|x| x >= MIN_RATIO)),
    });

    let rss = soak.and_then(|s| Some((s.rss_first_kib?, s.rss_end_kib?, s.rss_end_ratio?)));
    t.push(Target {
        target: format!(
            "hard: soak RSS at the end within {:.0}% of its first minute's",
            RSS_DRIFT * 100.0
        ),
        measured: soak_state(match (soak, rss) {
            (Some(s), Some((a, b, x))) => format!(
                "{:.1} MiB at {:.0} s, {:.1} MiB at the end: x{x:.3}",
                a as f64 / 1024.0,
                s.rss_first_at_s.unwrap_or(0.0),
                b as f64 / 1024.0
            ),
            _ => "n/a".into(),
        }),
        met: soak_met(rss.map(|(_, _, x)| (x - 1.0).abs() <= RSS_DRIFT)),
    });

    let with_soak = |rounds: Option<Spread>, soak: Option<f64>, f: &dyn Fn(f64) -> String| {
        let mut m = rounds.map_or("rounds: n/a".into(), |x| {
            format!("rounds: median {} (max {})", f(x.median), f(x.max))
        });
        if let Some(v) = soak {
            m += &format!("; soak: {}", f(v));
        }
        m
    };
    let within = |rounds: Option<Spread>, soak: Option<f64>, max: f64| {
        rounds.map(|x| x.median <= max && soak.is_none_or(|v| v <= max))
    };
    let cpu = summary(r, Config::Trace).and_then(|s| s.agent_cpu_us_per_state_change);
    let soak_cpu = soak.and_then(|s| s.trace.agent.agent_cpu_us_per_state_change);
    t.push(Target {
        target: format!("agent <= {MAX_AGENT_US} µs CPU per state change (the kernel's count)"),
        measured: with_soak(cpu, soak_cpu, &|v| format!("{v:.3} µs")),
        met: within(cpu, soak_cpu, MAX_AGENT_US),
    });
    let k = summary(r, Config::Trace).and_then(|s| s.kernel_ns_per_state_change);
    let soak_k = soak.and_then(|s| s.trace.agent.kernel_ns_per_state_change);
    t.push(Target {
        target: format!("kernel programs <= {MAX_KERNEL_NS} ns per state change"),
        measured: with_soak(k, soak_k, &|v| format!("{v:.0} ns")),
        met: within(k, soak_k, MAX_KERNEL_NS),
    });

    let bytes: Vec<String> = [Config::Trace, Config::TraceFull, Config::TraceNone]
        .iter()
        .filter_map(|&c| {
            let b = summary(r, c)?.bytes_per_connection_end?;
            Some(format!("{}: {}", choice_name(r, c), fmt_bytes(b.median)))
        })
        .collect();
    t.push(Target {
        target: "JSON Lines bytes per connection end, per output choice (figures, no bound)".into(),
        measured: if bytes.is_empty() {
            "n/a".into()
        } else {
            bytes.join("; ")
        },
        met: None,
    });

    let pr = summary(r, Config::Peer).and_then(|s| s.ratio);
    t.push(Target {
        target: "trace ratio better than the peer's".into(),
        measured: match (ratio, pr) {
            (Some(a), Some(b)) => format!("{:.3} vs {:.3}", a.median, b.median),
            _ => "n/a".into(),
        },
        met: match (ratio, pr) {
            (Some(a), Some(b)) => Some(a.median > b.median),
            _ => None,
        },
    });
    let h = r
        .hold
        .as_ref()
        .filter(|h| h.error.is_none() && h.connections > 0);
    t.push(Target {
        target: "<= 1 KiB per open tracked connection".into(),
        measured: h.map_or("n/a".into(), |h| {
            format!(
                "{:.0} B (heap, RssAnon); {:.0} B by VmRSS",
                h.bytes_per_connection_anon, h.bytes_per_connection_rss
            )
        }),
        met: h.map(|h| h.bytes_per_connection_anon <= MAX_HOLD_BYTES),
    });
    t.extend(timer_targets(r.timers.as_ref()));
    let without: Vec<&Round> = rounds(r, Config::TraceSockDiag).collect();
    if !without.is_empty() {
        t.push(loss_with_without(&tr, &without));
    }
    t
}

/// The timer programs' two rows: (b) per timewait-socket event, (a) per other timer.
fn timer_targets(tm: Option<&TimersResult>) -> [Target; 2] {
    let tw_target = format!("timewait programs <= {MAX_TW_EVENT_NS:.0} ns per timewait event");
    let timer_target = format!(
        "timer programs <= {MAX_TIMER_NS:.0} ns per timer (a run on a timer not a timewait \
         socket's)"
    );
    let Some(tm) = tm else {
        return [tw_target, timer_target].map(|target| Target {
            target,
            measured: "not measured (--idle-seconds 0)".into(),
            met: None,
        });
    };
    // (a) from the churn of resets when it ran through, else from the idle phase.
    let (phase, what) = match &tm.resets {
        Some(r) if r.error.is_none() => (r, "a churn of resets (no timewait socket)"),
        _ => (&tm.idle, "the trace idle"),
    };
    if let Some(e) = &phase.error {
        return [tw_target, timer_target].map(|target| Target {
            target,
            measured: format!("the phase measuring the other timers failed: {e}"),
            met: Some(false),
        });
    }
    let per_run = |v: &[super::bpfstats::ProgStat]| -> String {
        v.iter()
            .map(|p| {
                format!(
                    "{} {}",
                    p.name,
                    super::bpfstats::avg_ns(std::slice::from_ref(p))
                        .map_or("–".into(), |v| format!("{v:.1} ns"))
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let a = tm
        .split
        .as_ref()
        .and_then(|s| s.ns_per_other_timer)
        .or_else(|| super::bpfstats::avg_ns(&phase.programs));
    let runs: u64 = phase.programs.iter().map(|p| p.run_cnt).sum();
    let mut m = a.map_or(
        format!("n/a: the timer programs did not run under {what}"),
        |a| {
            format!(
                "{a:.1} ns per run over {} runs in {:.0} s of {what} ({})",
                thousands(runs as f64),
                phase.seconds,
                per_run(&phase.programs)
            )
        },
    );
    if let Some(e) = tm.resets.as_ref().and_then(|r| r.error.as_ref()) {
        m += &format!("; the churn of resets failed: {e}");
    }
    if !std::ptr::eq(phase, &tm.idle) && tm.idle.error.is_none() {
        if let Some(i) = super::bpfstats::avg_ns(&tm.idle.programs) {
            m += &format!(
                "; idle, {:.0} runs/s, cold: {i:.0} ns per run",
                tm.idle.programs.iter().map(|p| p.run_cnt).sum::<u64>() as f64
                    / tm.idle.seconds.max(1e-9)
            );
        }
    }
    if let Some(e) = phase.tw_events.filter(|e| e.total() > 0) {
        m += &format!(
            "; {} timewait events among them",
            thousands(e.total() as f64)
        );
    }
    let timer = Target {
        target: timer_target,
        measured: m,
        met: a.map(|a| a <= MAX_TIMER_NS),
    };
    let b = tm
        .split
        .as_ref()
        .and_then(|s| Some((s.ns_per_tw_event?, s.tw_events)));
    let tw = Target {
        target: tw_target,
        measured: match b {
            Some((b, e)) => format!(
                "{b:.0} ns per timewait event over {} events ({} starts, {} cancels, {} \
                 expiries) in {} default trace rounds, once the other timers' runs are charged \
                 {:.1} ns each",
                thousands(e.total() as f64),
                thousands(e.starts as f64),
                thousands(e.cancels as f64),
                thousands(e.expiries as f64),
                tm.rounds,
                a.unwrap_or(0.0)
            ),
            None if tm.rounds == 0 => {
                "n/a: no default trace round counted its timewait events".into()
            }
            None => "n/a: no timewait event in the rounds, or a timer program without a figure \
                     for other timers"
                .into(),
        },
        met: b.map(|(b, _)| b <= MAX_TW_EVENT_NS),
    };
    [tw, timer]
}

/// The trace's loss at the churn with the timer programs and without them (the rounds of
/// `--timewait-source sock-diag`, run beside them): it must not grow.
fn loss_with_without(with: &[&Round], without: &[&Round]) -> Target {
    let ok = |v: &[&Round]| -> Option<Vec<u64>> {
        v.iter()
            .map(|x| x.error.is_none().then_some(x.events_lost?))
            .collect()
    };
    let show = |v: &[&Round]| {
        let lost = v
            .iter()
            .map(|x| match (&x.error, x.events_lost) {
                (None, Some(l)) => thousands(l as f64),
                _ => "failed".into(),
            })
            .collect::<Vec<_>>()
            .join(", ");
        let ratios: Vec<f64> = v.iter().filter_map(|x| x.ratio).collect();
        let ratio = super::spread(ratios).map_or(String::new(), |s| {
            format!("; ratio to untraced, median {:.3}", s.median)
        });
        format!("lost per round {lost}{ratio}")
    };
    let (w, wo) = (ok(with), ok(without));
    Target {
        target: format!(
            "the trace's loss at maximum churn does not grow with the timer programs (against \
             {TIMEWAIT_SOURCE} {SOCK_DIAG}, the same rounds)"
        ),
        measured: format!("with: {}; without: {}", show(with), show(without)),
        met: match (w, wo) {
            (Some(w), Some(wo)) if !w.is_empty() && !wo.is_empty() => {
                Some(w.iter().sum::<u64>() <= wo.iter().sum::<u64>())
            }
            _ => Some(false),
        },
    }
}

/// The namespaces scenario's two rows: one `timewait` report's CPU, and `top`'s share of a
/// core. A run that did not see every socket fails its row; a smaller scenario than the
/// target's is not assessed.
fn namespace_targets(ns: Option<&NamespacesResult>) -> Vec<Target> {
    let tw_target = format!(
        "`timewait` over {TARGET_NAMESPACES} namespaces ({TARGET_SOCKETS} TIME_WAIT sockets \
         each) <= {MAX_TIMEWAIT_CPU_MS:.0} ms CPU (median of {TIMEWAIT_RUNS} runs)"
    );
    let top_target = format!("`top` polling them every second < {MAX_TOP_PCT:.0}% of a core");
    let Some(ns) = ns else {
        return [tw_target, top_target]
            .into_iter()
            .map(|target| Target {
                target,
                measured: "not run (--namespaces 0)".into(),
                met: None,
            })
            .collect();
    };
    let size = format!("{} x {}", ns.namespaces, ns.sockets_per_namespace);
    let small = ns.namespaces < TARGET_NAMESPACES || ns.sockets_per_namespace < TARGET_SOCKETS;
    let small_note = if small {
        format!("; fewer than the target's {TARGET_NAMESPACES} x {TARGET_SOCKETS}: not assessed")
    } else {
        String::new()
    };
    let scenario_failed = ns
        .error
        .as_ref()
        .map_or(String::new(), |e| format!("; the scenario failed: {e}"));

    let failures = ns.timewait_failures();
    let failed = ns.timewait.iter().filter(|r| r.error.is_some()).count();
    let tw_failed = failed > 0 || (ns.timewait.len() < TIMEWAIT_RUNS && ns.error.is_some());
    let mut m = format!(
        "{size}: {}",
        ns.timewait_cpu_ms.map_or("n/a".into(), |c| format!(
            "median {:.0} ms, max {:.0} ms CPU over {} runs; wall {}",
            c.median,
            c.max,
            c.n,
            ns.timewait_wall_ms
                .map_or("n/a".into(), |w| format!("{:.0} ms", w.median))
        ))
    );
    if failed > 0 {
        m += &format!(
            "; {failed} of {} runs failed: {}",
            ns.timewait.len(),
            failures.join("; ")
        );
    }
    if ns.timewait.len() < TIMEWAIT_RUNS {
        m += &scenario_failed;
    }
    m += &small_note;
    let tw = Target {
        target: tw_target,
        measured: m,
        met: if tw_failed {
            Some(false)
        } else if small {
            None
        } else {
            ns.timewait_cpu_ms.map(|c| c.median <= MAX_TIMEWAIT_CPU_MS)
        },
    };

    let top_ok = ns.top.as_ref().filter(|t| t.error.is_none());
    let mut m = format!(
        "{size}: {}",
        match (&ns.top, top_ok) {
            (_, Some(t)) => format!(
                "{:.1}% of a core over {:.1} s from its first poll, {} polls; {:.1}% with its \
                 start-up",
                t.cpu_pct, t.span_s, t.polls, t.whole_cpu_pct
            ),
            (Some(t), None) => format!("failed: {}", t.error.as_deref().unwrap_or("")),
            (None, None) => "n/a".into(),
        }
    );
    if ns.top.is_none() {
        m += &scenario_failed;
    }
    m += &small_note;
    let top = Target {
        target: top_target,
        measured: m,
        met: if ns.top.as_ref().is_some_and(|t| t.error.is_some())
            || (ns.top.is_none() && ns.error.is_some())
        {
            Some(false)
        } else if small {
            None
        } else {
            top_ok.map(|t| t.cpu_pct < MAX_TOP_PCT)
        },
    };
    vec![tw, top]
}

fn namespaces_markdown(s: &mut String, ns: &NamespacesResult) {
    let _ = writeln!(
        s,
        "Every network namespace: {} namespaces made with `ip netns add` (`lo` up) x {} \
         TIME_WAIT sockets each (connections to a listener on 127.0.0.1 whose server end \
         closed first), {} in all, beside the host's other namespaces. The kernel holds a \
         TIME_WAIT socket 60 s: every measurement ran within the first minute of its set ({} \
         set{} made{}). Each report had to show them all.{}",
        ns.namespaces,
        ns.sockets_per_namespace,
        thousands((ns.namespaces * ns.sockets_per_namespace) as f64),
        ns.sets.len(),
        if ns.sets.len() == 1 { "" } else { "s" },
        ns.sets.first().map_or(String::new(), |m| format!(
            "; the first: namespaces in {:.1} s, sockets in {:.1} s",
            m.namespaces_s, m.sockets_s
        )),
        match (ns.host_ehash_entries, ns.child_ehash_entries) {
            (Some(h), Some(0)) => format!(
                " The namespaces share the host's TCP hash table of {} buckets \
                 (net.ipv4.tcp_child_ehash_entries is 0), which a socket dump in a namespace \
                 walks.",
                thousands(h as f64)
            ),
            (Some(h), Some(c)) => format!(
                " Each namespace has a TCP hash table of its own, of {} buckets \
                 (net.ipv4.tcp_child_ehash_entries; the host's has {}).",
                thousands(c as f64),
                thousands(h as f64)
            ),
            _ => String::new(),
        }
    );
    let _ = writeln!(s);
    if let Some(e) = &ns.error {
        let _ = writeln!(s, "The scenario failed: {e}");
        let _ = writeln!(s);
    }
    let ok: Vec<_> = ns.timewait.iter().filter(|r| r.error.is_none()).collect();
    let seen_min = |f: &dyn Fn(&super::namespaces::Seen) -> u64| {
        ok.iter().filter_map(|r| r.seen.as_ref().map(f)).min()
    };
    let mut rows: Vec<(String, String)> = vec![
        (
            "`teardown timewait --format json`: CPU (user + system, from wait4)".into(),
            fmt_spread(ns.timewait_cpu_ms, &|v| format!("{v:.0} ms")),
        ),
        (
            "`teardown timewait`: wall time".into(),
            fmt_spread(ns.timewait_wall_ms, &|v| format!("{v:.0} ms")),
        ),
        (
            "`teardown timewait`: peak RSS".into(),
            ok.iter()
                .map(|r| r.peak_rss_kib)
                .max()
                .map_or("–".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0)),
        ),
        (
            "what every run saw (at least)".into(),
            match (
                seen_min(&|x| x.namespaces as u64),
                seen_min(&|x| x.time_wait),
            ) {
                (Some(k), Some(t)) => format!(
                    "{k} namespaces, {} TIME_WAIT sockets in all",
                    thousands(t as f64)
                ),
                _ => "–".into(),
            },
        ),
    ];
    for f in ns.timewait_failures() {
        rows.push(("`teardown timewait` failed".into(), f));
    }
    if let Some(t) = &ns.top {
        let label = format!("`teardown top --batch --interval 1 --duration {TOP_SECONDS}s`");
        match &t.error {
            Some(e) => rows.push((label, format!("failed: {e}"))),
            None => {
                rows.push((
                    format!("{label}: CPU, % of a core"),
                    format!(
                        "{:.1}% from its first poll to its exit ({:.1} s, {} polls); {:.1}% \
                         over its whole run of {:.1} s, start-up included",
                        t.cpu_pct, t.span_s, t.polls, t.whole_cpu_pct, t.whole_s
                    ),
                ));
                rows.push((
                    "what every poll of top saw (at least)".into(),
                    format!(
                        "{} namespaces, {} TIME_WAIT sockets; peak RSS {:.1} MiB",
                        t.min_namespaces.map_or("?".into(), |k| k.to_string()),
                        t.min_time_wait.map_or("?".into(), |v| thousands(v as f64)),
                        t.peak_rss_kib as f64 / 1024.0
                    ),
                ));
            }
        }
    }
    let _ = writeln!(s, "| every network namespace | measured |");
    let _ = writeln!(s, "|---|---|");
    for (k, v) in rows {
        let _ = writeln!(s, "| {k} | {v} |");
    }
    let _ = writeln!(s);
}

/// The output choice of a trace configuration, as the report names it.
fn choice_name(r: &Report, c: Config) -> String {
    match c {
        Config::TraceFull => format!("{CONFORMING} full"),
        Config::TraceNone => format!("{CONFORMING} none"),
        _ => match r.conforming_default.as_deref() {
            Some(d) if !d.is_empty() => format!("default ({CONFORMING} {d})"),
            _ => "default".into(),
        },
    }
}

fn fmt_bytes(b: f64) -> String {
    if b >= 100.0 {
        format!("{} B", thousands(b))
    } else if b >= 1.0 {
        format!("{b:.1} B")
    } else {
        // `--conforming none`: the summary line alone, over every connection end.
        format!("{b:.4} B")
    }
}

fn fmt_spread(s: Option<Spread>, f: &dyn Fn(f64) -> String) -> String {
    match s {
        None => "–".into(),
        Some(s) if s.n == 1 || s.min == s.max => f(s.median),
        Some(s) => format!("{} ({}–{})", f(s.median), f(s.min), f(s.max)),
    }
}

pub(super) fn thousands(x: f64) -> String {
    let n = x.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

fn opt(x: Option<f64>, f: &dyn Fn(f64) -> String) -> String {
    x.map_or("–".into(), f)
}

fn pct_lost(seen: Option<u64>, lost: Option<u64>) -> Option<f64> {
    let (s, l) = (seen?, lost?);
    Some(100.0 * l as f64 / (s + l).max(1) as f64)
}

pub(super) fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "### teardown benchmark ({})", r.date);
    let _ = writeln!(s);
    if r.rounds > 0 {
        churn_markdown(&mut s, r);
    } else {
        let m = &r.machine;
        let _ = writeln!(
            s,
            "Machine: Linux {}, {}, {} cores, {} MiB RAM. The whole run took {:.1} min.",
            m.kernel,
            m.cpu_model,
            m.cores,
            m.mem_total_mib,
            r.wall_seconds / 60.0
        );
        let _ = writeln!(s);
        for n in &r.notes {
            let _ = writeln!(s, "- {n}");
        }
        let _ = writeln!(s);
    }
    if let Some(ns) = &r.namespaces {
        namespaces_markdown(&mut s, ns);
    }
    let _ = writeln!(s, "| target | measured | met |");
    let _ = writeln!(s, "|---|---|---|");
    for t in &r.targets {
        let _ = writeln!(
            s,
            "| {} | {} | {} |",
            t.target,
            t.measured,
            match t.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "n/a",
            }
        );
    }
    s
}

/// The churn rounds, the soak and the memory scenario.
fn churn_markdown(s: &mut String, r: &Report) {
    let m = &r.machine;
    let choices =
        summary(r, Config::TraceFull).is_some() || summary(r, Config::TraceNone).is_some();
    let _ = writeln!(
        s,
        "Machine: Linux {}, {}, {} cores, {} MiB RAM. Loopback churn: {} client threads, connect, \
         1 byte each way, client closes first; {} interleaved rounds of {} s per configuration{}, \
         each round in a fresh network namespace{}. Medians, with (min–max) over rounds. The \
         whole run took {:.1} min.",
        m.kernel,
        m.cpu_model,
        m.cores,
        m.mem_total_mib,
        r.churn_threads,
        r.rounds,
        r.seconds_per_round,
        if choices {
            format!(" (the other output choices, {CONFORMING} full and none, one round each)")
        } else {
            String::new()
        },
        r.soak.as_ref().map_or(String::new(), |k| format!(
            "; then a soak of {} s under `teardown trace` with default settings (its throughput \
             against {})",
            k.seconds, k.baseline
        )),
        r.wall_seconds / 60.0
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "State changes: the kernel's count of runs of the tracer's program on \
         `inet_sock_set_state` over the measured span (every TCP state change on the host, \
         whatever the tracer records). Agent CPU: user + system, from 300 ms after the tracer \
         is ready (when the state-change count starts too) to its exit, draining included. \
         Kernel ns per state change: all the tracer's programs' run time over those state \
         changes. Bytes per connection end: the JSON Lines file over the connections its \
         summary reports."
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| configuration | connections/s | ratio to untraced | events seen | events lost | \
         state changes (kernel) | agent CPU µs/state change | agent CPU µs/event | kernel \
         ns/state change | agent CPU % of a core | agent peak RSS MiB | JSON Lines bytes/connection end |"
    );
    let _ = writeln!(
        s,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for c in &r.summary {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            c.label,
            fmt_spread(c.per_second, &thousands),
            fmt_spread(c.ratio, &|x| format!("{x:.3}")),
            fmt_spread(c.events_seen, &thousands),
            fmt_spread(c.events_lost, &thousands),
            fmt_spread(c.state_changes, &thousands),
            fmt_spread(c.agent_cpu_us_per_state_change, &|x| format!("{x:.3}")),
            fmt_spread(c.agent_cpu_us_per_event, &|x| format!("{x:.2}")),
            fmt_spread(c.kernel_ns_per_state_change, &|x| format!("{x:.0}")),
            fmt_spread(c.agent_cpu_pct, &|x| format!("{x:.1}")),
            fmt_spread(c.agent_peak_rss_kib, &|x| format!("{:.1}", x / 1024.0)),
            fmt_spread(c.bytes_per_connection_end, &fmt_bytes),
        );
    }
    let _ = writeln!(s);

    let _ = writeln!(s, "Per round, the tracers' losses:");
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| round | configuration | connections/s | ratio to untraced | events seen | events lost \
         | lost % | state changes (kernel) |"
    );
    let _ = writeln!(s, "|---:|---|---:|---:|---:|---:|---:|---:|");
    for x in r.runs.iter().filter(|x| {
        matches!(
            x.config,
            Some(
                Config::Trace
                    | Config::TraceSockDiag
                    | Config::TraceFull
                    | Config::TraceNone
                    | Config::Peer
            )
        )
    }) {
        let label = r
            .summary
            .iter()
            .find(|c| Some(c.config) == x.config)
            .map_or("?", |c| c.label.as_str());
        if let Some(e) = &x.error {
            let _ = writeln!(s, "| {} | {label} | failed: {e} | | | | | |", x.round + 1);
            continue;
        }
        let _ = writeln!(
            s,
            "| {} | {label} | {} | {} | {} | {} | {} | {} |",
            x.round + 1,
            thousands(x.per_second),
            opt(x.ratio, &|v| format!("{v:.3}")),
            opt(x.events_seen.map(|v| v as f64), &thousands),
            opt(x.events_lost.map(|v| v as f64), &thousands),
            opt(pct_lost(x.events_seen, x.events_lost), &|v| format!(
                "{v:.2}"
            )),
            opt(x.agent.state_changes.map(|v| v as f64), &thousands),
        );
    }
    let _ = writeln!(s);

    // Per program, over all the default trace rounds together.
    let mut progs: Vec<(String, u64, u64)> = Vec::new();
    let mut secs = 0.0;
    for x in rounds(r, Config::Trace).filter(|x| x.error.is_none()) {
        secs += x.connections as f64 / x.per_second.max(1e-9);
        for p in &x.agent.kernel_programs {
            match progs.iter_mut().find(|q| q.0 == p.name) {
                Some(q) => {
                    q.1 += p.run_cnt;
                    q.2 += p.run_time_ns;
                }
                None => progs.push((p.name.clone(), p.run_cnt, p.run_time_ns)),
            }
        }
    }
    if !progs.is_empty() {
        let _ = writeln!(
            s,
            "Kernel programs of `teardown trace` (default settings), over all its rounds \
             (names as the kernel keeps them, cut to 15 characters):"
        );
        let _ = writeln!(s);
        let _ = writeln!(s, "| program | runs/s | ns/run |");
        let _ = writeln!(s, "|---|---:|---:|");
        for (name, n, t) in &progs {
            let _ = writeln!(
                s,
                "| {name} | {} | {} |",
                thousands(*n as f64 / secs.max(1e-9)),
                if *n > 0 {
                    format!("{:.0}", *t as f64 / *n as f64)
                } else {
                    "–".into()
                }
            );
        }
        let _ = writeln!(s);
    }

    if let Some(tm) = &r.timers {
        timers_markdown(s, r, tm);
    }

    if let Some(k) = &r.soak {
        let label = summary(r, Config::Trace).map_or("teardown trace", |c| c.label.as_str());
        soak_markdown(s, k, label);
    }

    for n in &r.notes {
        let _ = writeln!(s, "- {n}");
    }
    let _ = writeln!(s, "- Top's back end: {}.", r.top_back_end);
    for c in &r.summary {
        for n in &c.notes {
            let _ = writeln!(s, "- {}: {}", c.label, n);
        }
    }
    let _ = writeln!(s);
    if let Some(h) = &r.hold {
        match &h.error {
            Some(e) => {
                let _ = writeln!(s, "Memory scenario failed: {e}");
            }
            None => {
                let _ = writeln!(
                    s,
                    "Memory: {} loopback connections held open under `teardown trace`, both ends \
                     on this host, so {} tracked connections (each end is one, as in the \
                     output): RSS {:.1} → {:.1} MiB, heap (RssAnon) {:.1} → {:.1} MiB: **{:.0} B \
                     per open tracked connection** ({:.0} B per loopback pair; heap; {:.0} B by \
                     VmRSS, which also counts ring-buffer pages touched by the burst); peak RSS \
                     {:.1} MiB; {} events, {} lost.",
                    thousands(h.connections as f64),
                    thousands(h.tracked_connections as f64),
                    h.rss_before_kib as f64 / 1024.0,
                    h.rss_with_kib as f64 / 1024.0,
                    h.anon_before_kib as f64 / 1024.0,
                    h.anon_with_kib as f64 / 1024.0,
                    h.bytes_per_connection_anon,
                    2.0 * h.bytes_per_connection_anon,
                    h.bytes_per_connection_rss,
                    h.peak_rss_kib as f64 / 1024.0,
                    h.events_seen.map_or("?".into(), |x| thousands(x as f64)),
                    h.events_lost.map_or("?".into(), |x| thousands(x as f64)),
                );
            }
        }
        let _ = writeln!(s);
    }
}

/// The timer programs' split: the method, then each program's figures.
fn timers_markdown(s: &mut String, r: &Report, tm: &TimersResult) {
    let resets_ok = tm.resets.as_ref().is_some_and(|x| x.error.is_none());
    let _ = writeln!(
        s,
        "Timer programs ({}): they run on every kernel timer and go further only for a \
         timewait socket's. (a) Their cost on other timers: `teardown trace` for {:.0} s \
         under the same churn but with every connection ended by a reset, which leaves no \
         timewait socket (the namespace's count says none), so every run is another timer, \
         as hot in the caches as in the rounds{}; also idle for {:.0} s (a few runs a second, \
         cold: dearer). (b) Their cost per timewait-socket event: over the {} default trace \
         rounds, their run time minus (a) (each program's own) times their runs that were \
         other timers, over the timewait events. Those are the kernel's counts in the churn's \
         namespace, held open until the span ends so that no socket of it is purged inside: a \
         timer start per timewait socket made (`TW` and `TWKilled`, which the kernel counts as \
         it first arms the timer), a cancel per socket reused by a new connection \
         (`TWRecycled`), an expiry per one made and neither reused nor alive at the end (the \
         `tw` count of sockstat). A timer restart (a cancel and a start) is not counted, nor \
         are other processes' timewait sockets: both are rare here.",
        timers::PROGRAMS.join(", "),
        tm.resets.as_ref().map_or(0.0, |x| x.seconds),
        if resets_ok {
            ""
        } else {
            " (it failed: (a) is the idle figure)"
        },
        tm.idle.seconds,
        tm.rounds
    );
    let _ = writeln!(s);
    for (what, x) in [
        ("idle phase", Some(&tm.idle)),
        ("churn of resets", tm.resets.as_ref()),
    ] {
        if let Some(e) = x.and_then(|x| x.error.as_ref()) {
            let _ = writeln!(s, "The {what} failed: {e}");
            let _ = writeln!(s);
        }
    }
    let secs: f64 = rounds(r, Config::Trace)
        .filter(|x| x.error.is_none() && x.timewait_events.is_some())
        .map(|x| x.connections as f64 / x.per_second.max(1e-9))
        .sum();
    let overflow: u64 = rounds(r, Config::Trace)
        .filter(|x| x.error.is_none())
        .filter_map(|x| x.timewait_overflow)
        .sum();
    let _ = writeln!(
        s,
        "| program | idle: runs/s | idle: ns/run | resets: runs/s | resets: ns/run (a) | \
         rounds: runs/s | rounds: ns/run | timewait events | ns per timewait event (b) |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let ns = |t: f64, n: u64| {
        if n > 0 {
            format!("{:.0}", t / n as f64)
        } else {
            "–".into()
        }
    };
    let phase = |x: Option<&super::IdleResult>, name: &str| -> (String, String) {
        match x.filter(|x| x.error.is_none()) {
            Some(x) => match x.programs.iter().find(|p| p.name == name) {
                Some(p) => (
                    thousands(p.run_cnt as f64 / x.seconds.max(1e-9)),
                    super::bpfstats::avg_ns(std::slice::from_ref(p))
                        .map_or("–".into(), |v| format!("{v:.1}")),
                ),
                None => ("–".into(), "–".into()),
            },
            None => ("–".into(), "–".into()),
        }
    };
    for name in timers::PROGRAMS {
        let (ir, ins) = phase(Some(&tm.idle), name);
        let (rr, rns) = phase(tm.resets.as_ref(), name);
        let churn = tm
            .split
            .as_ref()
            .and_then(|x| x.programs.iter().find(|p| p.name == name));
        let _ = writeln!(
            s,
            "| {name} | {ir} | {ins} | {rr} | {rns} | {} | {} | {} | {} |",
            churn.map_or("–".into(), |p| thousands(p.runs as f64 / secs.max(1e-9))),
            churn.map_or("–".into(), |p| ns(p.run_time_ns as f64, p.runs)),
            churn.map_or("–".into(), |p| thousands(p.tw_events as f64)),
            churn
                .and_then(|p| Some((p.tw_time_ns?, p.tw_events)))
                .map_or("–".into(), |(t, n)| ns(t, n)),
        );
    }
    let _ = writeln!(s);
    if let Some(x) = &tm.split {
        let _ = writeln!(
            s,
            "All three: {} ns per other timer (a), {} ns per timewait event (b), over {} \
             timewait events; {} closes made no timewait socket, the namespace's table full \
             (`TCPTimeWaitOverflow`: no timer).",
            opt(x.ns_per_other_timer, &|v| format!("{v:.1}")),
            opt(x.ns_per_tw_event, &|v| format!("{v:.0}")),
            thousands(x.tw_events.total() as f64),
            thousands(overflow as f64)
        );
        let _ = writeln!(s);
    }
}

fn minutes(m: &super::soak::Minutes) -> String {
    format!("{} → {}", opt(m.first, &thousands), opt(m.last, &thousands))
}

fn soak_markdown(s: &mut String, k: &super::SoakResult, label: &str) {
    let t = &k.trace;
    let _ = writeln!(
        s,
        "Soak: {} s of the same churn under `{label}`, its VmRSS sampled every 2 s.",
        k.seconds
    );
    let _ = writeln!(s);
    if let Some(e) = &t.error {
        let _ = writeln!(s, "The soak failed: {e}");
        let _ = writeln!(s);
        return;
    }
    let a = &t.agent;
    let _ = writeln!(s, "| soak | measured |");
    let _ = writeln!(s, "|---|---|");
    let rows: [(&str, String); 8] = [
        (
            "throughput",
            format!(
                "{} connections, {} conn/s; {} of {} conn/s ({}); connect()s per second over \
                 the first {} s and the last: {}{}",
                thousands(t.connections as f64),
                thousands(t.per_second),
                opt(t.ratio, &|x| format!("{x:.3}")),
                opt(k.baseline_per_second, &thousands),
                k.baseline,
                opt(k.minute_s, &|v| format!("{v:.0}")),
                minutes(&k.connects_per_s),
                k.untraced_connects_per_s
                    .as_ref()
                    .map_or(String::new(), |u| format!(" (untraced: {})", minutes(u)))
            ),
        ),
        (
            "events",
            format!(
                "{} seen, {} lost ({}%)",
                opt(t.events_seen.map(|v| v as f64), &thousands),
                opt(t.events_lost.map(|v| v as f64), &thousands),
                opt(pct_lost(t.events_seen, t.events_lost), &|v| format!(
                    "{v:.2}"
                ))
            ),
        ),
        (
            "state changes (kernel)",
            format!(
                "{}; per second over the first {} s and the last: {}",
                opt(a.state_changes.map(|v| v as f64), &thousands),
                opt(k.minute_s, &|v| format!("{v:.0}")),
                minutes(&k.state_changes_per_s)
            ),
        ),
        (
            "agent CPU",
            format!(
                "{} µs per state change, {} µs per event, {}% of a core",
                opt(a.agent_cpu_us_per_state_change, &|v| format!("{v:.3}")),
                opt(a.agent_cpu_us_per_event, &|v| format!("{v:.2}")),
                opt(a.agent_cpu_pct, &|v| format!("{v:.1}"))
            ),
        ),
        (
            "kernel programs",
            format!(
                "{} ns per state change ({} ns per run)",
                opt(a.kernel_ns_per_state_change, &|v| format!("{v:.0}")),
                opt(a.kernel_ns_per_run, &|v| format!("{v:.0}"))
            ),
        ),
        (
            "RSS",
            format!(
                "{} MiB at {} s, {} MiB at the end: x{}; peak {} MiB",
                opt(k.rss_first_kib.map(|v| v as f64), &|v| format!(
                    "{:.1}",
                    v / 1024.0
                )),
                opt(k.rss_first_at_s, &|v| format!("{v:.0}")),
                opt(k.rss_end_kib.map(|v| v as f64), &|v| format!(
                    "{:.1}",
                    v / 1024.0
                )),
                opt(k.rss_end_ratio, &|v| format!("{v:.3}")),
                opt(a.agent_peak_rss_kib.map(|v| v as f64), &|v| format!(
                    "{:.1}",
                    v / 1024.0
                ))
            ),
        ),
        (
            "JSON Lines",
            format!(
                "{} per connection end ({} connection ends, {:.2} GB)",
                opt(t.bytes_per_connection_end, &fmt_bytes),
                opt(t.connections_reported.map(|v| v as f64), &thousands),
                t.output_bytes.unwrap_or(0) as f64 / 1e9
            ),
        ),
        ("churn errors", thousands(t.churn_errors as f64)),
    ];
    for (k, v) in rows {
        let _ = writeln!(s, "| {k} | {v} |");
    }
    let _ = writeln!(s);
}

#[cfg(test)]
mod tests {
    use super::super::namespaces::{TimewaitRun, TopRun};
    use super::*;

    fn scenario(n: usize, m: usize, cpu_ms: &[f64], top_pct: f64) -> NamespacesResult {
        let runs: Vec<TimewaitRun> = cpu_ms
            .iter()
            .map(|&c| TimewaitRun {
                cpu_ms: c,
                wall_ms: c + 50.0,
                ..TimewaitRun::default()
            })
            .collect();
        NamespacesResult {
            namespaces: n,
            sockets_per_namespace: m,
            timewait_cpu_ms: super::super::spread(cpu_ms.to_vec()),
            timewait_wall_ms: super::super::spread(runs.iter().map(|r| r.wall_ms).collect()),
            timewait: runs,
            top: Some(TopRun {
                span_s: 29.0,
                cpu_pct: top_pct,
                whole_cpu_pct: top_pct + 1.0,
                polls: 29,
                ..TopRun::default()
            }),
            ..NamespacesResult::default()
        }
    }

    fn met(t: &[Target]) -> Vec<Option<bool>> {
        t.iter().map(|x| x.met).collect()
    }

    #[test]
    fn namespace_rows_judge_the_median_and_top_share() {
        let t = namespace_targets(Some(&scenario(
            200,
            100,
            &[150.0, 180.0, 250.0, 170.0, 160.0],
            9.5,
        )));
        assert_eq!(met(&t), [Some(true), Some(true)]);
        assert!(
            t[0].measured.contains("median 170 ms, max 250 ms"),
            "{}",
            t[0].measured
        );
        assert!(
            t[1].measured.contains("9.5% of a core"),
            "{}",
            t[1].measured
        );

        let t = namespace_targets(Some(&scenario(200, 100, &[2600.0; 5], 94.0)));
        assert_eq!(met(&t), [Some(false), Some(false)]);
    }

    #[test]
    fn namespace_rows_fail_a_run_that_missed_sockets_and_skip_a_small_scenario() {
        let mut s = scenario(200, 100, &[150.0; 5], 5.0);
        s.timewait[2].error = Some("it counted 19900 TIME_WAIT sockets".into());
        if let Some(t) = s.top.as_mut() {
            t.error = Some("a poll covered 150 namespaces".into());
        }
        let t = namespace_targets(Some(&s));
        assert_eq!(met(&t), [Some(false), Some(false)]);
        assert!(
            t[0].measured.contains("run 3: it counted 19900"),
            "{}",
            t[0].measured
        );
        assert!(
            t[1].measured.contains("150 namespaces"),
            "{}",
            t[1].measured
        );

        let t = namespace_targets(Some(&scenario(20, 100, &[15.0; 5], 1.0)));
        assert_eq!(met(&t), [None, None]);
        assert!(t[0].measured.contains("not assessed"), "{}", t[0].measured);

        let t = namespace_targets(None);
        assert_eq!(met(&t), [None, None]);
        assert!(t[1].measured.contains("--namespaces 0"));
    }

    fn stat(name: &str, t: u64, n: u64) -> super::super::bpfstats::ProgStat {
        super::super::bpfstats::ProgStat {
            id: 1,
            name: name.into(),
            run_time_ns: t,
            run_cnt: n,
        }
    }

    /// Other timers at `a` ns per run under the churn of resets (400 ns idle, cold); one churn
    /// round whose 1000 timewait starts cost `b` ns each.
    fn timers_at(a: u64, b: u64) -> TimersResult {
        let phase = |ns: u64, runs: u64, conns: Option<u64>| super::super::IdleResult {
            seconds: 10.0,
            programs: vec![
                stat(timers::START, ns * runs, runs),
                stat(timers::CANCEL, ns * runs / 5, runs / 5),
            ],
            connections: conns,
            tw_events: conns.map(|_| timers::TwEvents::default()),
            error: None,
        };
        let resets = phase(a, 500, Some(50_000));
        let churn = [
            stat(timers::START, 9000 * a + 1000 * b, 10_000),
            stat(timers::CANCEL, 2000 * a, 2000),
        ];
        let ev = timers::TwEvents {
            starts: 1000,
            ..timers::TwEvents::default()
        };
        TimersResult {
            split: Some(timers::split(&resets.programs, &churn, ev)),
            idle: phase(400, 200, None),
            resets: Some(resets),
            rounds: 1,
        }
    }

    #[test]
    fn timer_rows_judge_each_bound() {
        let t = timer_targets(Some(&timers_at(20, 150)));
        assert_eq!(met(&t), [Some(true), Some(true)]);
        assert!(
            t[0].measured
                .starts_with("150 ns per timewait event over 1,000 events (1,000 starts"),
            "{}",
            t[0].measured
        );
        assert!(
            t[1].measured
                .starts_with("20.0 ns per run over 600 runs in 10 s of a churn of resets"),
            "{}",
            t[1].measured
        );
        assert!(
            t[1].measured
                .contains("idle, 24 runs/s, cold: 400 ns per run"),
            "{}",
            t[1].measured
        );

        let t = timer_targets(Some(&timers_at(60, 250)));
        assert_eq!(met(&t), [Some(false), Some(false)]);
        assert!(t[0].measured.starts_with("250 ns"), "{}", t[0].measured);

        // Only (b) is missing when no round counted its events.
        let mut tm = timers_at(20, 150);
        tm.split = None;
        tm.rounds = 0;
        let t = timer_targets(Some(&tm));
        assert_eq!(met(&t), [None, Some(true)]);
        assert!(
            t[0].measured.contains("no default trace round"),
            "{}",
            t[0].measured
        );

        // The churn of resets failed: (a) falls back to the idle phase, and says so.
        if let Some(r) = tm.resets.as_mut() {
            r.error = Some("the churn made no connections".into());
        }
        let t = timer_targets(Some(&tm));
        assert_eq!(t[1].met, Some(false));
        assert!(
            t[1].measured
                .starts_with("400.0 ns per run over 240 runs in 10 s of the trace idle")
                && t[1].measured.contains("the churn of resets failed"),
            "{}",
            t[1].measured
        );
        tm.idle.error = Some("teardown trace loaded no timer program".into());
        assert_eq!(met(&timer_targets(Some(&tm))), [Some(false), Some(false)]);
        assert_eq!(met(&timer_targets(None)), [None, None]);
    }

    #[test]
    fn the_loss_row_compares_the_same_rounds_with_and_without_the_timers() {
        let round = |lost: u64, ratio: f64| Round {
            events_lost: Some(lost),
            events_seen: Some(1000),
            ratio: Some(ratio),
            ..Round::default()
        };
        let (a, b) = (round(0, 0.99), round(0, 0.995));
        let t = loss_with_without(&[&a, &a], &[&b, &b]);
        assert_eq!(t.met, Some(true));
        assert_eq!(
            t.measured,
            "with: lost per round 0, 0; ratio to untraced, median 0.990; without: lost per round \
             0, 0; ratio to untraced, median 0.995"
        );
        let worse = round(5, 0.98);
        assert_eq!(loss_with_without(&[&a, &worse], &[&b, &b]).met, Some(false));
        // Losing less than without is not growing.
        assert_eq!(loss_with_without(&[&a], &[&round(7, 0.9)]).met, Some(true));
        let failed = Round {
            error: Some("the churn made no connections".into()),
            ..Round::default()
        };
        let t = loss_with_without(&[&a, &failed], &[&b, &b]);
        assert_eq!(t.met, Some(false));
        assert!(t.measured.contains("0, failed"), "{}", t.measured);
    }

    #[test]
    fn a_scenario_that_could_not_start_fails_both_rows() {
        let s = NamespacesResult {
            namespaces: 200,
            sockets_per_namespace: 100,
            error: Some("ip netns add made 12 of 200 namespaces".into()),
            ..NamespacesResult::default()
        };
        let t = namespace_targets(Some(&s));
        assert_eq!(met(&t), [Some(false), Some(false)]);
        assert!(
            t[0].measured.contains("made 12 of 200"),
            "{}",
            t[0].measured
        );
    }
}
