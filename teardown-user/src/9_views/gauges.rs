//! The monitor's figures (stage 8) as Prometheus gauges on the trace's metrics endpoint: what a
//! fleet's Prometheus reads of every host's closing sockets, beside the judged teardowns.
//!
//! A thread of its own ([`FiguresThread`]) polls every network namespace with a
//! [`HostCollector`] now and then, and turns each poll into [`Figures`]: plain rows, labelled
//! as the teardown counters are (one [`SharedLabels`]), so that a namespace has one label in
//! every series and the bound of `--metrics-namespaces` holds for all of them. [`FigureGauges`]
//! writes the latest rows at each scrape; a namespace that went away leaves no stale series.
//!
//! Cardinality is bounded: per namespace (bounded by the labels) and per state; per destination
//! only for the `top` destinations of the host with the most ports held, the rest of each
//! namespace summed under `destination="other"`; never per 4-tuple.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use crate::monitor::{HostCollector, HostReport};
use crate::sinks::metrics::SharedLabels;

/// A namespace's label and a state's.
type Key = (&'static str, &'static str, &'static str);

/// One poll's figures, ready to be written.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Figures {
    /// Unix time of the poll, in seconds.
    pub taken_at_s: f64,
    /// (namespace, state, socket kind) -> sockets. Every closing state of every namespace,
    /// zeros included, so that a rule sees 0 rather than no series.
    pub sockets: BTreeMap<Key, u64>,
    /// Per namespace: CLOSE_WAIT leaks, stuck sockets.
    pub leaks: BTreeMap<&'static str, u64>,
    pub stuck: BTreeMap<&'static str, u64>,
    /// Per namespace with a label of its own: `tcp_max_tw_buckets`, the size of
    /// `ip_local_port_range`, `TCPTimeWaitOverflow`. Not summed under `other`: a sum of limits
    /// limits nothing.
    pub timewait_limit: BTreeMap<&'static str, u64>,
    pub ephemeral_ports: BTreeMap<&'static str, u64>,
    pub timewait_overflows: BTreeMap<&'static str, u64>,
    /// Per namespace: the worst destination's held ports, as a share of the range (0 to 1).
    pub port_pressure: BTreeMap<&'static str, f64>,
    /// (namespace, destination) -> (timewait sockets on an ephemeral port, ports they hold).
    pub destinations: BTreeMap<(&'static str, String), (u64, u64)>,
    /// Namespaces observed, found but not observed, and left out by the scan's limit.
    pub namespaces: [u64; 3],
}

/// The `socket` label: timewait sockets (the kernel's small `tcp_timewait_sock`) apart from
/// full ones, since `ss` shows a FIN_WAIT2 of either kind as FIN_WAIT2.
const TIMEWAIT: &str = "timewait";
const FULL: &str = "full";

impl Figures {
    /// The figures of `host`, labelled by `labels`, with the `top` destinations of the host;
    /// `taken_at_s` is when the poll began (Unix time).
    pub fn of(host: &HostReport, labels: &SharedLabels, top: usize, taken_at_s: f64) -> Figures {
        // The labels first, the lock held only for that: the thread that judges events takes
        // it for every connection.
        let names: Vec<&'static str> = {
            let mut labels = labels.lock().unwrap_or_else(PoisonError::into_inner);
            host.namespaces
                .iter()
                .map(|ns| labels.of_polled(ns.owner.netns, ns.owner.own))
                .collect()
        };
        let mut f = Figures {
            taken_at_s,
            namespaces: [
                host.namespaces.len() as u64,
                host.unobserved.len() as u64,
                host.left_out as u64,
            ],
            ..Figures::default()
        };
        // Every destination of the host, to pick the top ones among them.
        let mut all = Vec::new();
        for (ns, &label) in host.namespaces.iter().zip(&names) {
            let r = &ns.report;
            let c = &r.counts;
            for (state, socket, n) in [
                ("TIME_WAIT", TIMEWAIT, c.time_wait),
                ("FIN_WAIT2", TIMEWAIT, c.fin_wait2_timewait),
                ("FIN_WAIT1", FULL, c.fin_wait1),
                ("FIN_WAIT2", FULL, c.fin_wait2),
                ("CLOSING", FULL, c.closing),
                ("CLOSE_WAIT", FULL, c.close_wait),
                ("LAST_ACK", FULL, c.last_ack),
            ] {
                *f.sockets.entry((label, state, socket)).or_default() += n as u64;
            }
            *f.leaks.entry(label).or_default() += r.close_wait_leaks.len() as u64;
            *f.stuck.entry(label).or_default() += r.stalls.len() as u64;
            if label != "other" {
                // Two namespaces may share a label (two containers of one name): the larger
                // limit and range, the overflows summed.
                let max = |m: &mut BTreeMap<&'static str, u64>, v: u64| {
                    let e = m.entry(label).or_insert(v);
                    *e = (*e).max(v);
                };
                max(&mut f.timewait_limit, r.tw_buckets.max);
                max(
                    &mut f.ephemeral_ports,
                    u64::from(r.settings.port_range_size()),
                );
                if let Some(o) = r.tw_buckets.overflow_total {
                    *f.timewait_overflows.entry(label).or_default() += o;
                }
            }
            let totals = r.port_pressure_totals;
            let e = f.port_pressure.entry(label).or_insert(0.0);
            *e = e.max(totals.worst_used_pct / 100.0);
            // What the namespace's listed destinations leave of its totals is summed.
            let (mut tw_rest, mut held_rest) = (totals.timewait as u64, totals.blocking as u64);
            for p in &r.port_pressure {
                tw_rest -= (p.timewait as u64).min(tw_rest);
                held_rest -= (p.blocking as u64).min(held_rest);
                all.push((label, p.remote, p.timewait as u64, p.blocking as u64));
            }
            if tw_rest > 0 || held_rest > 0 {
                let e = f.destinations.entry((label, "other".into())).or_default();
                e.0 += tw_rest;
                e.1 += held_rest;
            }
        }
        // Most held ports first, then most sockets; the order of the address breaks ties, so
        // that the same host gives the same series from scrape to scrape.
        all.sort_by(|a, b| b.3.cmp(&a.3).then(b.2.cmp(&a.2)).then(a.1.cmp(&b.1)));
        for (i, (label, remote, timewait, held)) in all.into_iter().enumerate() {
            let destination = if i < top {
                remote.to_string()
            } else {
                "other".into()
            };
            let e = f.destinations.entry((label, destination)).or_default();
            e.0 += timewait;
            e.1 += held;
        }
        f
    }
}

/// The latest figures, written at each scrape.
#[derive(Debug, Default)]
pub struct FigureGauges {
    latest: Mutex<Option<Figures>>,
}

impl FigureGauges {
    pub fn set(&self, figures: Figures) {
        *self.latest.lock().unwrap_or_else(PoisonError::into_inner) = Some(figures);
    }
}

/// Writes one gauge family: `rows` of (labels, value).
fn gauges<L: EncodeLabelSet, V: prometheus_client::encoding::EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl Iterator<Item = (L, V)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in rows {
        family.encode_family(&labels)?.encode_gauge(&value)?;
    }
    Ok(())
}

impl Collector for FigureGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let latest = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
        // Before the first poll: no figures rather than zeros that are not known.
        let Some(f) = latest.as_ref() else {
            return Ok(());
        };
        let ns = |map: &BTreeMap<&'static str, u64>| {
            map.iter()
                .map(|(&n, &v)| ([("namespace", n)], v as i64))
                .collect::<Vec<_>>()
        };
        gauges(
            &mut encoder,
            "closing_sockets",
            "Sockets in each closing state now, per network namespace, as sock_diag lists them \
             (what ss shows); socket=timewait for the kernel's timewait sockets, full for the \
             others",
            f.sockets.iter().map(|(&(n, state, socket), &v)| {
                (
                    [("namespace", n), ("state", state), ("socket", socket)],
                    v as i64,
                )
            }),
        )?;
        gauges(
            &mut encoder,
            "close_wait_leaks",
            "CLOSE_WAIT sockets older than --close-wait-threshold: the peer closed, the \
             application did not",
            ns(&f.leaks).into_iter(),
        )?;
        gauges(
            &mut encoder,
            "stuck_sockets",
            "FIN_WAIT1, FIN_WAIT2, CLOSING and LAST_ACK sockets past the time their state \
             should take",
            ns(&f.stuck).into_iter(),
        )?;
        gauges(
            &mut encoder,
            "timewait_buckets_limit",
            "net.ipv4.tcp_max_tw_buckets: past it, closing sockets skip TIME_WAIT",
            ns(&f.timewait_limit).into_iter(),
        )?;
        gauges(
            &mut encoder,
            "ephemeral_ports",
            "Ports in net.ipv4.ip_local_port_range, which connect() picks from",
            ns(&f.ephemeral_ports).into_iter(),
        )?;
        gauges(
            &mut encoder,
            "port_pressure_ratio",
            "The ephemeral ports that timewait sockets hold toward the worst destination, as a \
             share of the range (1: connect() to it fails with EADDRNOTAVAIL)",
            f.port_pressure
                .iter()
                .map(|(&n, &v)| ([("namespace", n)], v)),
        )?;
        gauges(
            &mut encoder,
            "destination_timewait_sockets",
            "Timewait sockets on an ephemeral port, per destination (address:port) for the \
             host's top destinations, the others summed as destination=other",
            f.destinations
                .iter()
                .map(|((n, d), &(tw, _))| ([("namespace", *n), ("destination", d)], tw as i64)),
        )?;
        gauges(
            &mut encoder,
            "destination_ports_held",
            "Of those, the ones that hold their port: a connect() to that destination cannot \
             take it (tcp_tw_reuse off, or the socket younger than its delay)",
            f.destinations
                .iter()
                .map(|((n, d), &(_, held))| ([("namespace", *n), ("destination", d)], held as i64)),
        )?;
        gauges(
            &mut encoder,
            "network_namespaces",
            "Network namespaces of the host: observed, found but not observed (see the agent's \
             stderr for why), left out by the scan's limit",
            ["observed", "unobserved", "left_out"]
                .into_iter()
                .zip(f.namespaces)
                .map(|(status, v)| ([("status", status)], v as i64)),
        )?;
        let taken = ConstGauge::new(f.taken_at_s);
        taken.encode(encoder.encode_descriptor(
            "figures_timestamp_seconds",
            "When the closing figures were polled (Unix time)",
            None,
            taken.metric_type(),
        )?)?;
        let overflows = ConstCounter::new(0u64);
        let mut family = encoder.encode_descriptor(
            "timewait_overflows",
            "TcpExt TCPTimeWaitOverflow of each namespace: closing sockets that skipped \
             TIME_WAIT because the table was full",
            None,
            overflows.metric_type(),
        )?;
        for (&n, &v) in &f.timewait_overflows {
            ConstCounter::new(v).encode(family.encode_family(&[("namespace", n)])?)?;
        }
        Ok(())
    }
}

/// Says once, on one line, which namespaces the figures newly leave out and why, and that
/// unreadable processes may hide some. `said` keeps the ones said while they stay out.
fn say_left_out(
    host: &HostReport,
    said: &mut std::collections::BTreeSet<u32>,
    said_unreadable: &mut bool,
) {
    said.retain(|n| host.unobserved.iter().any(|u| u.owner.netns == *n));
    let new: Vec<_> = host
        .unobserved
        .iter()
        .filter(|u| said.insert(u.owner.netns))
        .collect();
    if let Some(first) = new.first() {
        crate::say!(
            "note: the figures leave out {}: {}{}",
            first.owner.label(),
            crate::escape::text(&first.error),
            match new.len() {
                1 => String::new(),
                n => format!(" (and {} more namespaces)", n - 1),
            }
        );
    }
    if host.unreadable_processes > 0 && !*said_unreadable {
        *said_unreadable = true;
        crate::say!(
            "note: the figures may miss network namespaces: {} could not be read{}",
            match host.unreadable_processes {
                1 => "1 process".to_string(),
                n => format!("{n} processes"),
            },
            if crate::kernel::caps::Capability::SysPtrace.held() {
                ""
            } else {
                " (CAP_SYS_PTRACE is lacking)"
            }
        );
    }
}

/// The polling thread, until dropped.
pub struct FiguresThread {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for FiguresThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Polls every namespace with `collector` now and every `every`, and sets `gauges` to what each
/// poll shows. A namespace that cannot be observed is said once on stderr.
pub fn spawn(
    mut collector: HostCollector,
    every: Duration,
    gauges: Arc<FigureGauges>,
    labels: SharedLabels,
    top: usize,
) -> std::io::Result<FiguresThread> {
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    let thread = std::thread::Builder::new()
        .name("figures".into())
        .spawn(move || {
            // The namespaces said to be left out, while they are.
            let mut said = std::collections::BTreeSet::new();
            let mut said_unreadable = false;
            while !stop2.load(Ordering::Relaxed) {
                let started = Instant::now();
                let taken_at_s = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64());
                let host = collector.poll();
                say_left_out(&host, &mut said, &mut said_unreadable);
                gauges.set(Figures::of(&host, &labels, top, taken_at_s));
                // Wakes up now and then to see the stop flag.
                while !stop2.load(Ordering::Relaxed) && started.elapsed() < every {
                    std::thread::sleep(Duration::from_millis(100).min(every));
                }
            }
        })?;
    Ok(FiguresThread {
        stop,
        thread: Some(thread),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::monitor::{build_report, Level, NamespaceOwner, NamespaceReport, ReportConfig};
    use crate::sinks::metrics::NamespaceLabels;
    use crate::sinks::Metrics;
    use crate::sock_diag::{follow::Tracker, sysctl::KernelSettings};
    use crate::sock_diag::{FourTuple, Snapshot, TimewaitSocket, TwSubstate};

    /// A namespace with `n` timewait sockets toward each of `remotes`, on ephemeral ports.
    fn ns(netns: u32, own: bool, remotes: &[&str], n: u16) -> NamespaceReport {
        let mut timewait = Vec::new();
        for (j, r) in remotes.iter().enumerate() {
            for i in 0..n {
                timewait.push(TimewaitSocket {
                    tuple: FourTuple {
                        local: format!("10.0.0.1:{}", 40000 + 100 * j as u16 + i)
                            .parse()
                            .unwrap(),
                        remote: r.parse().unwrap(),
                    },
                    substate: TwSubstate::TimeWait,
                    remaining_ms: 50_000,
                    cookie: u64::from(i),
                });
            }
        }
        let snap = Snapshot {
            taken_at_ms: 1_700_000_000_000,
            timewait,
            closing: vec![],
            open: vec![],
        };
        let mut t = Tracker::new(60);
        t.observe(&snap);
        let mut k = KernelSettings::linux_defaults();
        k.port_range = (40000, 40999);
        k.tw_reuse = 0;
        let cfg = ReportConfig {
            top: 2,
            ..ReportConfig::default()
        };
        NamespaceReport {
            owner: NamespaceOwner {
                netns,
                own,
                ip_netns: vec![],
                container: None,
                processes: 1,
                processes_hidden: false,
            },
            report: build_report(&snap, &t, &k, None, None, &cfg),
        }
    }

    fn host(namespaces: Vec<NamespaceReport>) -> HostReport {
        HostReport {
            namespaces,
            unobserved: vec![],
            left_out: 0,
            unreadable_processes: 0,
            totals: Default::default(),
            level: Level::Ok,
        }
    }

    #[test]
    fn destinations_past_the_top_are_summed_and_nothing_is_lost() {
        let labels = Arc::new(Mutex::new(NamespaceLabels::new(None, None, 10)));
        // Three destinations in one namespace (two listed by its report), one in another.
        let h = host(vec![
            ns(1, true, &["10.0.0.9:443", "10.0.0.8:443", "10.0.0.7:80"], 5),
            ns(7, false, &["10.0.0.6:5432"], 9),
        ]);
        let f = Figures::of(&h, &labels, 2, 1.0);
        let get = |n: &'static str, d: &str| f.destinations.get(&(n, d.to_string())).copied();
        assert_eq!(get("netns 7", "10.0.0.6:5432"), Some((9, 9)));
        // Ties go to the lower address.
        assert_eq!(get("host", "10.0.0.7:80"), Some((5, 5)));
        // The host's destination left out of its report (10.0.0.9:443) and the one past the
        // host's top 2 (10.0.0.8:443) are summed.
        assert_eq!(get("host", "10.0.0.8:443"), None);
        assert_eq!(get("host", "other"), Some((10, 10)));
        let total: u64 = f.destinations.values().map(|v| v.0).sum();
        assert_eq!(total, 3 * 5 + 9);
        assert_eq!(f.sockets[&("host", "TIME_WAIT", TIMEWAIT)], 15);
        assert_eq!(f.sockets[&("netns 7", "CLOSE_WAIT", FULL)], 0);
        assert!((f.port_pressure["netns 7"] - 9.0 / 1000.0).abs() < 1e-9);
        assert_eq!(f.ephemeral_ports["host"], 1000);
    }

    #[test]
    fn namespaces_past_the_bound_share_one_label() {
        let labels = Arc::new(Mutex::new(NamespaceLabels::new(None, None, 1)));
        let h = host(vec![
            ns(5, false, &["10.0.0.9:443"], 2),
            ns(6, false, &["10.0.0.9:443"], 3),
            ns(8, false, &["10.0.0.9:443"], 4),
        ]);
        let f = Figures::of(&h, &labels, 10, 1.0);
        assert_eq!(f.sockets[&("netns 5", "TIME_WAIT", TIMEWAIT)], 2);
        assert_eq!(f.sockets[&("other", "TIME_WAIT", TIMEWAIT)], 7);
        // A limit summed would limit nothing: `other` has none.
        assert!(!f.timewait_limit.contains_key("other"));
        assert_eq!(f.sockets.len(), 2 * 7);
    }

    #[test]
    fn the_endpoint_writes_the_latest_figures_after_the_first_poll() {
        let g = Arc::new(FigureGauges::default());
        let metrics = Metrics::new().with_collector(Box::new(Arc::clone(&g)));
        assert!(!metrics.encode().contains("teardown_closing_sockets"));
        let labels = Arc::new(Mutex::new(NamespaceLabels::new(None, None, 10)));
        g.set(Figures::of(
            &host(vec![ns(1, true, &["10.0.0.9:443"], 3)]),
            &labels,
            5,
            1_700_000_000.0,
        ));
        let text = metrics.encode();
        for want in [
            "# TYPE teardown_closing_sockets gauge\n",
            "teardown_closing_sockets{namespace=\"host\",state=\"TIME_WAIT\",socket=\"timewait\"} 3\n",
            "teardown_destination_ports_held{namespace=\"host\",destination=\"10.0.0.9:443\"} 3\n",
            "teardown_network_namespaces{status=\"observed\"} 1\n",
            "teardown_timewait_overflows_total{namespace=\"host\"} 0\n",
            "teardown_figures_timestamp_seconds 1700000000.0\n",
        ] {
            assert!(text.contains(want), "no {want:?} in\n{text}");
        }
    }
}
