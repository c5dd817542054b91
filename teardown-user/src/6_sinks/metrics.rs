//! Prometheus metrics: what the trace judged, counted, for a scraper to collect.
//!
//! [`MetricsSink`] counts each reported connection (by role, variant and conformance), each
//! finding, the time spent in each closing state, and the timewait facts; the trace loop adds
//! the kernel's event and loss totals with [`Metrics::set_totals`], and the losses by cause with
//! [`Metrics::set_lost`]. [`serve`] answers
//! `GET /metrics` in the OpenMetrics text format from a thread of its own: the network is never
//! on the event path, which at most waits the moment a scrape holds the metrics' read locks.

use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use prometheus_client::{
    collector::Collector,
    encoding::{text::encode, EncodeLabelSet},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};

use super::{LostReport, Report, Sink, Summary};
use crate::{
    judge::Conformance,
    sock_diag::namespaces::ContainerDirectory,
    sock_diag::TwFate,
    track::timewait::{TimewaitNote, TwWhat},
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectionLabels {
    role: &'static str,
    variant: &'static str,
    conformance: &'static str,
    namespace: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FindingLabels {
    finding: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabels {
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProgramLabels {
    program: &'static str,
}

/// The `cause` label of each loss, as the JSON Lines summary's `lost` object names it.
const CAUSES: [&str; 5] = [
    "ring_full",
    "behind",
    "unreadable",
    "undecodable",
    "recursion",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FactLabels {
    fact: &'static str,
    namespace: &'static str,
}

/// The `namespace` label of a connection: what its network namespace is to an operator (the
/// container's name, `host` for the trace's own, `netns N` else), for the first `max`
/// namespaces seen; the rest share `other`, and `unknown` is for events without a namespace
/// (no kernel BTF). So the series stay bounded on a host with thousands of containers.
///
/// The values are made once per namespace and kept for the process's life (at most two per
/// namespace: `netns N` becomes the container's name once the container is known), so that
/// counting a connection allocates nothing.
pub struct NamespaceLabels {
    home: Option<u32>,
    containers: Option<ContainerDirectory>,
    max: usize,
    given: HashMap<u32, (&'static str, bool)>,
}

impl NamespaceLabels {
    pub fn new(home: Option<u32>, containers: Option<ContainerDirectory>, max: usize) -> Self {
        NamespaceLabels {
            home,
            containers,
            max,
            given: HashMap::new(),
        }
    }

    /// The label of a namespace known by its inode alone (a connection's).
    pub fn of(&mut self, netns: u32) -> &'static str {
        if netns == 0 {
            return "unknown";
        }
        if self.home == Some(netns) {
            return "host";
        }
        match self.given.get(&netns) {
            Some(&(label, true)) => return label,
            Some(&(label, false)) => {
                // Known so far without its container: it may have been found since.
                let Some(c) = self.containers.as_ref().and_then(|d| d.get(netns)) else {
                    return label;
                };
                let label: &'static str = Box::leak(c.to_string().into_boxed_str());
                self.given.insert(netns, (label, true));
                return label;
            }
            None if self.given.len() >= self.max => return "other",
            None => {}
        }
        let (label, named) = match self.containers.as_ref().and_then(|d| d.get(netns)) {
            Some(c) => (c.to_string(), true),
            None => (format!("netns {netns}"), false),
        };
        let label: &'static str = Box::leak(label.into_boxed_str());
        self.given.insert(netns, (label, named));
        label
    }
}

impl NamespaceLabels {
    /// The label of a namespace that sock_diag polled: `own` is this process's, which is the
    /// host's even when the kernel's events carry no namespace.
    pub fn of_polled(&mut self, netns: u32, own: bool) -> &'static str {
        if own {
            "host"
        } else {
            self.of(netns)
        }
    }
}

/// The labels, shared by the sink and whatever else labels series by namespace (the closing
/// figures), so that one namespace has one label, and the bound holds for them all.
pub type SharedLabels = Arc<Mutex<NamespaceLabels>>;

/// The registry and its metrics, shared by the sink, the trace loop and the HTTP thread.
pub struct Metrics {
    registry: Registry,
    connections: Family<ConnectionLabels, Counter>,
    findings: Family<FindingLabels, Counter>,
    closing_seconds: Family<StateLabels, Histogram>,
    timewait_facts: Family<FactLabels, Counter>,
    events: Counter,
    lost_events: Counter,
    lost_by_cause: Family<CauseLabels, Counter>,
    port_table_evictions: Counter,
    recursion_misses: Family<ProgramLabels, Counter>,
    open_connections: Gauge,
}

/// Time in a closing state: 100 µs to about 30 min, by factors of 4.
fn closing_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1e-4, 4.0, 13))
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("teardown");
        let connections = Family::<ConnectionLabels, Counter>::default();
        registry.register(
            "connections",
            "Connections reported, by role, teardown variant and conformance to the documented \
             close sequence",
            connections.clone(),
        );
        let findings = Family::<FindingLabels, Counter>::default();
        registry.register(
            "findings",
            "Deviations from the documented close sequence, by finding",
            findings.clone(),
        );
        let closing_seconds =
            Family::<StateLabels, Histogram>::new_with_constructor(closing_histogram as fn() -> _);
        registry.register(
            "closing_state_seconds",
            "Time reported connections spent in each closing state",
            closing_seconds.clone(),
        );
        let timewait_facts = Family::<FactLabels, Counter>::default();
        registry.register(
            "timewait_facts",
            "What was learnt of reported connections' timewait sockets: entered, timer \
             restarted, expired, reused, killed, purged (with their namespace)",
            timewait_facts.clone(),
        );
        let events = Counter::default();
        registry.register(
            "kernel_events",
            "State changes, retransmissions and resets received from the kernel",
            events.clone(),
        );
        let lost_events = Counter::default();
        registry.register(
            "kernel_lost_events",
            "Events the kernel did not deliver, every cause (teardown_lost_events_total tells \
             them apart)",
            lost_events.clone(),
        );
        let lost_by_cause = Family::<CauseLabels, Counter>::default();
        registry.register(
            "lost_events",
            "Events not delivered or not understood, by cause: ring_full (raise --ring-size), \
             behind (counted by kind while the agent was behind), unreadable (a field the \
             kernel could not read), undecodable (records the agent refused), recursion (runs \
             of the event programs the kernel skipped)",
            lost_by_cause.clone(),
        );
        // Every cause from the start, at 0: a scraper sees the series before a loss.
        for cause in CAUSES {
            let _ = lost_by_cause.get_or_create(&CauseLabels { cause });
        }
        let port_table_evictions = Counter::default();
        registry.register(
            "port_table_evictions",
            "Sockets the --port table evicted or refused: one still open loses its last events \
             (raise --port-table); most have closed and lose nothing",
            port_table_evictions.clone(),
        );
        let recursion_misses = Family::<ProgramLabels, Counter>::default();
        registry.register(
            "recursion_misses",
            "Runs of each kernel program that the kernel skipped, one of ours being already \
             running on that CPU",
            recursion_misses.clone(),
        );
        let open_connections = Gauge::default();
        registry.register(
            "open_connections",
            "Connections being tracked now (not closed yet)",
            open_connections.clone(),
        );
        Metrics {
            registry,
            connections,
            findings,
            closing_seconds,
            timewait_facts,
            events,
            lost_events,
            lost_by_cause,
            port_table_evictions,
            recursion_misses,
            open_connections,
        }
    }

    /// Adds metrics that are made at each scrape (the closing figures of every namespace).
    pub fn with_collector(mut self, collector: Box<dyn Collector>) -> Metrics {
        self.registry.register_collector(collector);
        self
    }

    /// The losses by cause, as the trace knows them. Counters only move forward.
    pub fn set_lost(&self, lost: &LostReport) {
        let values = [
            lost.ring_full,
            lost.behind,
            lost.unreadable,
            lost.undecodable,
            lost.recursion,
        ];
        for (cause, total) in CAUSES.into_iter().zip(values) {
            forward(
                &self.lost_by_cause.get_or_create(&CauseLabels { cause }),
                total,
            );
        }
        forward(&self.port_table_evictions, lost.port_table_evicted);
        for (&program, &total) in &lost.recursion_by_program {
            forward(
                &self
                    .recursion_misses
                    .get_or_create(&ProgramLabels { program }),
                total,
            );
        }
    }

    /// The kernel's running totals and the tracker's open connections, as the trace loop
    /// knows them. Counters only move forward.
    pub fn set_totals(&self, events: u64, lost_events: u64, open_connections: u64) {
        forward(&self.events, events);
        forward(&self.lost_events, lost_events);
        self.open_connections
            .set(i64::try_from(open_connections).unwrap_or(i64::MAX));
    }

    /// Prometheus' text exposition format.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut s, &self.registry);
        s
    }
}

/// Moves a counter up to `total`, never down.
fn forward(c: &Counter, total: u64) {
    let now = c.get();
    if total > now {
        c.inc_by(total - now);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The sink that feeds [`Metrics`].
pub struct MetricsSink {
    metrics: Arc<Metrics>,
    namespaces: SharedLabels,
}

impl MetricsSink {
    /// Counts into `metrics`, connections and timewait facts labelled with their namespace.
    pub fn new(metrics: Arc<Metrics>, namespaces: SharedLabels) -> MetricsSink {
        MetricsSink {
            metrics,
            namespaces,
        }
    }
}

impl Sink for MetricsSink {
    fn connection(&mut self, report: &Report<'_>) -> io::Result<()> {
        let v = report.verdict;
        let namespace = label_of(&self.namespaces, report.conn.netns);
        let m = &self.metrics;
        m.connections
            .get_or_create(&ConnectionLabels {
                namespace,
                role: v.role.code(),
                variant: v.variant.name(),
                conformance: match v.conformance {
                    Conformance::Conforms => "conforms",
                    Conformance::Deviates => "deviates",
                    Conformance::Incomplete => "incomplete",
                },
            })
            .inc();
        for f in &v.findings {
            m.findings
                .get_or_create(&FindingLabels {
                    finding: f.code.as_str(),
                })
                .inc();
        }
        for t in &v.closing_times {
            m.closing_seconds
                .get_or_create(&StateLabels {
                    state: t.state.name(),
                })
                .observe(t.ns as f64 / 1e9);
        }
        Ok(())
    }

    fn timewait(&mut self, note: &TimewaitNote) -> io::Result<()> {
        let fact = match note.fact.what {
            TwWhat::Entered { .. } => "entered",
            TwWhat::Restarted { .. } => "restarted",
            TwWhat::Left { how, .. } => match how {
                TwFate::Expired => "expired",
                TwFate::Reused => "reused",
                TwFate::Killed => "killed",
                TwFate::Purged => "purged",
            },
        };
        let namespace = label_of(&self.namespaces, note.fact.netns);
        self.metrics
            .timewait_facts
            .get_or_create(&FactLabels { fact, namespace })
            .inc();
        Ok(())
    }

    fn finish(&mut self, summary: &Summary) -> io::Result<()> {
        self.metrics
            .set_totals(summary.events, summary.lost_events, 0);
        self.metrics.set_lost(&summary.lost());
        Ok(())
    }
}

/// The label of `netns`. A poisoned lock (a panic while labelling) still holds valid labels.
fn label_of(labels: &SharedLabels, netns: u32) -> &'static str {
    labels
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .of(netns)
}

/// Errors of the metrics endpoint: the cause, said once (it is not also a `source()`), and what
/// to do about it.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve metrics on {addr}: {cause}; {}", advice(cause.as_ref()))]
pub struct ServeError {
    addr: SocketAddr,
    cause: Box<dyn std::error::Error + Send + Sync>,
}

fn advice(cause: &(dyn std::error::Error + 'static)) -> &'static str {
    match cause
        .downcast_ref::<std::io::Error>()
        .map(std::io::Error::kind)
    {
        Some(std::io::ErrorKind::AddrInUse) => {
            "another program listens there: choose another --metrics port"
        }
        Some(std::io::ErrorKind::AddrNotAvailable) => {
            "that is not an address of this host: choose another --metrics address"
        }
        Some(std::io::ErrorKind::PermissionDenied) => {
            "ports below 1024 need CAP_NET_BIND_SERVICE: choose another --metrics port"
        }
        _ => "choose another --metrics address",
    }
}

/// The metrics endpoint, until dropped.
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Where it listens (the port the kernel chose when asked for port 0).
    pub addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves `GET /metrics` at `addr` from a thread of its own.
pub fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<Server, ServeError> {
    let server = tiny_http::Server::http(addr).map_err(|cause| ServeError { addr, cause })?;
    let bound = server.server_addr().to_ip().unwrap_or(addr);
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    let thread = std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                // Wakes up now and then to see the stop flag.
                let req = match server.recv_timeout(Duration::from_millis(200)) {
                    Ok(Some(req)) => req,
                    Ok(None) => continue,
                    Err(e) => {
                        // tiny_http's listener has stopped (e.g. out of file descriptors).
                        crate::say!("note: the metrics endpoint on {addr} stopped: {e}");
                        return;
                    }
                };
                let response = if req.url() == "/metrics" || req.url().starts_with("/metrics?") {
                    // prometheus-client writes OpenMetrics (counters typed without their
                    // `_total` suffix, a closing `# EOF`): say so, or Prometheus would parse it
                    // as the older text format and lose the counters' type.
                    let content_type = tiny_http::Header::from_bytes(
                        "Content-Type",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    );
                    let r = tiny_http::Response::from_string(metrics.encode());
                    match content_type {
                        Ok(h) => r.with_header(h),
                        Err(()) => r,
                    }
                } else {
                    tiny_http::Response::from_string("teardown: metrics are at /metrics\n")
                        .with_status_code(404)
                };
                // A scraper that went away is its own problem.
                let _ = req.respond(response);
            }
        })
        .map_err(|e| ServeError {
            addr,
            cause: Box::new(e),
        })?;
    Ok(Server {
        stop,
        thread: Some(thread),
        addr: bound,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sock_diag::TwSubstate;
    use crate::track::timewait::TwFact;

    #[test]
    fn role_labels_are_the_json_names() {
        use crate::judge::Role;
        for r in [
            Role::ActiveCloser,
            Role::PassiveCloser,
            Role::Simultaneous,
            Role::NeverEstablished,
            Role::Listener,
            Role::Unknown,
        ] {
            assert_eq!(serde_json::to_value(r).unwrap(), r.code());
        }
    }

    #[test]
    fn a_port_in_use_is_said_once_with_what_to_do() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let Err(e) = serve(addr, Arc::new(Metrics::new())) else {
            panic!("served on a port in use");
        };
        // As the binary says it: every cause of the chain.
        let text = format!("{:#}", anyhow::Error::new(e));
        let cause = std::io::Error::from_raw_os_error(libc::EADDRINUSE).to_string();
        assert_eq!(text.matches(&cause).count(), 1, "{text}");
        assert!(
            text.starts_with(&format!("cannot serve metrics on {addr}: ")),
            "{text}"
        );
        assert!(text.ends_with("choose another --metrics port"), "{text}");
    }

    #[test]
    fn totals_only_move_forward_and_timewait_facts_are_counted() {
        let metrics = Arc::new(Metrics::new());
        metrics.set_totals(10, 0, 3);
        metrics.set_totals(7, 2, 1);
        let labels = Arc::new(Mutex::new(NamespaceLabels::new(None, None, 4)));
        let mut sink = MetricsSink::new(Arc::clone(&metrics), labels);
        let fact = |what| TimewaitNote {
            id: 1,
            of_conforming: true,
            from_kernel: false,
            fact: TwFact {
                netns: 0,
                local: "127.0.0.1:1".parse().unwrap(),
                remote: "127.0.0.1:2".parse().unwrap(),
                at_ms: 0,
                what,
            },
        };
        sink.timewait(&fact(TwWhat::Entered {
            state: TwSubstate::TimeWait,
            entered_ms: 0,
        }))
        .unwrap();
        sink.timewait(&fact(TwWhat::Left {
            how: TwFate::Reused,
            entered_ms: 0,
            restarts: 0,
        }))
        .unwrap();
        let text = metrics.encode();
        for want in [
            "teardown_kernel_events_total 10\n",
            "teardown_kernel_lost_events_total 2\n",
            "teardown_open_connections 1\n",
            "teardown_timewait_facts_total{fact=\"entered\",namespace=\"unknown\"} 1\n",
            "teardown_timewait_facts_total{fact=\"reused\",namespace=\"unknown\"} 1\n",
        ] {
            assert!(text.contains(want), "no {want:?} in\n{text}");
        }
    }

    #[test]
    fn losses_are_counted_by_cause_from_the_start() {
        let metrics = Metrics::new();
        let text = metrics.encode();
        for cause in CAUSES {
            let want = format!("teardown_lost_events_total{{cause=\"{cause}\"}} 0\n");
            assert!(text.contains(&want), "no {want:?} in\n{text}");
        }
        let lost = LostReport {
            port_table_evicted: 3,
            undecodable: 2,
            recursion: 1,
            recursion_by_program: [("tw_timer_start", 1)].into(),
            ..LostReport::default()
        };
        metrics.set_lost(&lost);
        // Counters never go back.
        metrics.set_lost(&LostReport::default());
        let text = metrics.encode();
        for want in [
            "teardown_port_table_evictions_total 3\n",
            "teardown_lost_events_total{cause=\"undecodable\"} 2\n",
            "teardown_lost_events_total{cause=\"ring_full\"} 0\n",
            "teardown_recursion_misses_total{program=\"tw_timer_start\"} 1\n",
        ] {
            assert!(text.contains(want), "no {want:?} in\n{text}");
        }
    }

    #[test]
    fn namespace_labels_are_bounded() {
        let mut l = NamespaceLabels::new(Some(1), None, 2);
        assert_eq!(l.of(1), "host");
        assert_eq!(l.of(0), "unknown");
        assert_eq!(l.of(5), "netns 5");
        assert_eq!(l.of(6), "netns 6");
        // Past the bound, every new namespace shares one label; the first ones keep theirs.
        assert_eq!(l.of(7), "other");
        assert_eq!(l.of(8), "other");
        assert_eq!(l.of(5), "netns 5");
        assert_eq!(l.given.len(), 2);
    }
}
