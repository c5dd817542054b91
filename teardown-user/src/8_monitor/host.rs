//! Every network namespace of the host, each with its own [`Collector`]: what `teardown
//! timewait` and `teardown top` show by default.
//!
//! A socket table, its sysctls and its counters belong to one network namespace, and sock_diag
//! answers for the namespace of the calling thread. So one poll walks the namespaces in turn:
//! the polling thread enters each (setns), polls it, and returns to its own namespace at the
//! end. Collectors are kept between polls, so each namespace keeps its own history (entry
//! rates, exits, CLOSE_WAIT ages); a namespace that disappeared is dropped with its history.

use std::collections::btree_map::{BTreeMap, Entry};
use std::fs::File;
use std::path::PathBuf;

use serde::Serialize;

use super::collect::Collector;
use super::figures::{Level, StateCounts};
use super::report::{Report, ReportConfig};
use crate::kernel::caps::Capability;
use crate::sock_diag::containers::{container_of_pid, Container, ContainerNames};
use crate::sock_diag::namespaces::{list_namespaces, parse_net_link, Namespace, NamespaceLimits};
use crate::sock_diag::{netns, PollOptions, ScanLimits};

/// Who a namespace belongs to, as far as the host tells.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NamespaceOwner {
    /// The nsfs inode (what `trace` prints as `netns`).
    pub netns: u32,
    /// This process's own namespace (normally the host's).
    pub own: bool,
    /// Names from `ip netns`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ip_netns: Vec<String>,
    /// The container whose processes are inside, when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,
    /// Processes inside; 0: no process left (kept alive by a mount, or about to go).
    pub processes: usize,
    /// Other users' processes could not be read: `processes` counts the readable ones.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub processes_hidden: bool,
}

impl NamespaceOwner {
    /// What an operator calls it: `host`, the container, `ip netns blue`, or its inode, with
    /// "no process left" where that is so.
    pub fn label(&self) -> String {
        // Container and `ip netns` names are anyone's choice: shown escaped.
        let mut s = if let Some(c) = &self.container {
            crate::escape::text(&c.to_string()).into_owned()
        } else if let Some(n) = self.ip_netns.first() {
            format!("ip netns {}", crate::escape::text(n))
        } else if self.own {
            "host".to_string()
        } else {
            format!("netns {}", self.netns)
        };
        if self.processes == 0 && !self.own {
            s.push_str(if self.processes_hidden {
                " (no readable process)"
            } else {
                " (no process left)"
            });
        }
        s
    }
}

/// One namespace's report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NamespaceReport {
    #[serde(flatten)]
    pub owner: NamespaceOwner,
    pub report: Report,
}

/// A namespace that was found but could not be observed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Unobserved {
    #[serde(flatten)]
    pub owner: NamespaceOwner,
    pub error: String,
}

/// Every namespace's report, and the totals.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostReport {
    /// Sorted by timewait sockets, most first (ties: by inode).
    pub namespaces: Vec<NamespaceReport>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unobserved: Vec<Unobserved>,
    /// Namespaces beyond the scan's limit, not observed.
    pub left_out: usize,
    /// Processes whose namespace could not be read (CAP_SYS_PTRACE lacking): a namespace only
    /// they are in is missing from the report.
    pub unreadable_processes: usize,
    /// The sums over every observed namespace.
    pub totals: StateCounts,
    /// The worst level of any namespace.
    pub level: Level,
}

/// Polls every network namespace; see the module documentation.
#[derive(Debug)]
pub struct HostCollector {
    proc_root: PathBuf,
    limits: NamespaceLimits,
    options: PollOptions,
    cfg: ReportConfig,
    owner_limits: Option<ScanLimits>,
    collectors: BTreeMap<u32, Collector>,
    names: ContainerNames,
    /// The namespace the polling thread returns to.
    home: File,
    /// The thread left it during this poll.
    away: bool,
    /// Processes of the latest scan whose namespace could not be read.
    hidden: usize,
}

impl HostCollector {
    pub fn new(
        options: PollOptions,
        cfg: ReportConfig,
        owner_limits: Option<ScanLimits>,
    ) -> std::io::Result<Self> {
        Ok(Self {
            proc_root: PathBuf::from("/proc"),
            limits: NamespaceLimits::default(),
            options,
            cfg,
            owner_limits,
            collectors: BTreeMap::new(),
            names: ContainerNames::default(),
            home: File::open("/proc/thread-self/ns/net")?,
            away: false,
            hidden: 0,
        })
    }

    pub fn config(&self) -> &ReportConfig {
        &self.cfg
    }

    /// Polls every namespace once. The calling thread visits each namespace and is back in its
    /// own when this returns.
    pub fn poll(&mut self) -> HostReport {
        let mut scan = list_namespaces(&self.proc_root, self.limits);
        // Holding CAP_SYS_PTRACE, a process still unreadable is an odd one (of another user
        // namespace, say): not a reason to doubt that a namespace has none left.
        self.hidden = if Capability::SysPtrace.held() {
            0
        } else {
            scan.unreadable
        };
        // Its own namespace first, polled where the thread already is: entering any namespace,
        // even this one, takes CAP_SYS_ADMIN, which a user without it still lacks for the
        // others only.
        scan.namespaces.sort_by_key(|ns| !ns.own);
        let mut namespaces = Vec::with_capacity(scan.namespaces.len());
        let mut unobserved = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        self.away = false;
        for ns in &scan.namespaces {
            seen.insert(ns.inode);
            let owner = self.owner_of(ns);
            let polled = if ns.own && !self.away {
                self.poll_here(ns.inode)
            } else {
                self.poll_one(ns)
            };
            match polled {
                Ok(report) => namespaces.push(NamespaceReport { owner, report }),
                Err(error) => unobserved.push(Unobserved { owner, error }),
            }
        }
        if self.away {
            if let Err(e) = netns::enter_file(&self.home) {
                crate::say!("warning: could not return to this process's network namespace: {e}");
            }
        }
        self.collectors.retain(|inode, _| seen.contains(inode));

        namespaces.sort_by(|a, b| {
            let tw = |r: &NamespaceReport| r.report.counts.timewait_total();
            tw(b).cmp(&tw(a)).then(a.owner.netns.cmp(&b.owner.netns))
        });
        let mut totals = StateCounts::default();
        for n in &namespaces {
            totals.add(&n.report.counts);
        }
        let level = namespaces
            .iter()
            .map(|n| n.report.level)
            .max()
            .unwrap_or(Level::Ok);
        HostReport {
            namespaces,
            unobserved,
            left_out: scan.left_out,
            unreadable_processes: scan.unreadable,
            totals,
            level,
        }
    }

    fn owner_of(&mut self, ns: &Namespace) -> NamespaceOwner {
        let container = ns
            .pids
            .iter()
            .find_map(|&pid| container_of_pid(pid, &mut self.names));
        NamespaceOwner {
            netns: ns.inode,
            own: ns.own,
            ip_netns: ns.ip_netns_names().map(str::to_string).collect(),
            container,
            processes: ns.processes,
            processes_hidden: self.hidden > 0,
        }
    }

    /// Enters `ns` through the first path that works and polls it there.
    fn poll_one(&mut self, ns: &Namespace) -> Result<Report, String> {
        let mut error = String::from("no way to enter it");
        let mut entered = false;
        for path in ns.entry_paths(&self.proc_root) {
            if let Err(e) = netns::enter(&path) {
                error = e.to_string();
                continue;
            }
            self.away = true;
            // A pid may have been reused by a process of another namespace since the scan.
            if current_netns() == Some(ns.inode) {
                entered = true;
                break;
            }
            error = format!("{} is now another namespace", path.display());
        }
        if !entered {
            return Err(error);
        }
        self.poll_here(ns.inode)
    }

    /// Polls the namespace `inode`, which the calling thread is in.
    fn poll_here(&mut self, inode: u32) -> Result<Report, String> {
        let collector = match self.collectors.entry(inode) {
            Entry::Occupied(o) => o.into_mut(),
            Entry::Vacant(v) => v.insert(
                Collector::new(self.options, self.cfg.clone(), self.owner_limits)
                    .map_err(|e| e.to_string())?,
            ),
        };
        collector.poll().map(|(r, _)| r).map_err(|e| e.to_string())
    }
}

/// The network namespace the calling thread is in.
fn current_netns() -> Option<u32> {
    let t = std::fs::read_link("/proc/thread-self/ns/net").ok()?;
    parse_net_link(&t.to_string_lossy())
}

impl HostReport {
    /// One report for the whole host, for a view that shows one: counts, rates and exits
    /// summed; tables joined and cut to `top` rows; the timewait table of the namespace
    /// closest to its limit; the worst level. None when no namespace was observed.
    pub fn merged(&self, top: usize) -> Option<Report> {
        let mut reports = self.namespaces.iter().map(|n| &n.report);
        let mut m = reports.next()?.clone();
        m.timewait_sockets = None;
        m.owner_scan = None;
        for r in reports {
            m.taken_at_ms = m.taken_at_ms.max(r.taken_at_ms);
            m.polls = m.polls.min(r.polls);
            m.counts.add(&r.counts);
            m.per_local.extend(r.per_local.iter().cloned());
            m.per_remote.extend(r.per_remote.iter().cloned());
            m.port_pressure.extend(r.port_pressure.iter().cloned());
            m.port_pressure_totals.destinations += r.port_pressure_totals.destinations;
            m.port_pressure_totals.timewait += r.port_pressure_totals.timewait;
            m.port_pressure_totals.blocking += r.port_pressure_totals.blocking;
            m.port_pressure_totals.worst_used_pct = m
                .port_pressure_totals
                .worst_used_pct
                .max(r.port_pressure_totals.worst_used_pct);
            m.close_wait_leaks
                .extend(r.close_wait_leaks.iter().cloned());
            m.stalls.extend(r.stalls.iter().cloned());
            m.rate.entries += r.rate.entries;
            m.rate.per_second += r.rate.per_second;
            m.rate.steady_state += r.rate.steady_state;
            m.rate.current += r.rate.current;
            m.exits.expired += r.exits.expired;
            m.exits.reused += r.exits.reused;
            m.exits.killed += r.exits.killed;
            m.exits.timer_restarts += r.exits.timer_restarts;
            m.exits.recent.extend(r.exits.recent.iter().cloned());
            if r.tw_buckets.used_pct > m.tw_buckets.used_pct {
                m.tw_buckets = r.tw_buckets.clone();
            }
            m.level = m.level.max(r.level);
        }
        m.per_local.sort_by_key(|g| std::cmp::Reverse(g.total()));
        m.per_local.truncate(top);
        m.per_remote.sort_by_key(|g| std::cmp::Reverse(g.total()));
        m.per_remote.truncate(top);
        m.port_pressure
            .sort_by(|a, b| b.used_pct.total_cmp(&a.used_pct));
        m.port_pressure.truncate(top);
        Some(m)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn owner(netns: u32, own: bool, processes: usize) -> NamespaceOwner {
        NamespaceOwner {
            netns,
            own,
            ip_netns: Vec::new(),
            container: None,
            processes,
            processes_hidden: false,
        }
    }

    #[test]
    fn labels_say_what_an_operator_knows() {
        assert_eq!(owner(1, true, 80).label(), "host");
        assert_eq!(owner(7, false, 2).label(), "netns 7");
        assert_eq!(owner(7, false, 0).label(), "netns 7 (no process left)");
        let hidden = NamespaceOwner {
            processes_hidden: true,
            ..owner(7, false, 0)
        };
        assert_eq!(hidden.label(), "netns 7 (no readable process)");
        let mut o = owner(8, false, 0);
        o.ip_netns.push("blue".into());
        assert_eq!(o.label(), "ip netns blue (no process left)");
    }

    /// Polls this process's own namespace for real: the host report lists it, as `own`.
    #[test]
    fn the_own_namespace_is_observed_or_said_why_not() {
        let mut c =
            HostCollector::new(PollOptions::default(), ReportConfig::default(), None).unwrap();
        let r = c.poll();
        let own_seen = r.namespaces.iter().filter(|n| n.owner.own).count()
            + r.unobserved.iter().filter(|n| n.owner.own).count();
        assert_eq!(own_seen, 1, "{r:?}");
        if let Some(m) = r.merged(10) {
            assert_eq!(m.counts, r.totals);
        }
    }
}
