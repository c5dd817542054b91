//! TIME_WAIT / CLOSE_WAIT monitor against `ss`, in fresh network namespaces (root).
//!
//! Each test builds a known set of closing sockets inside its own namespace, reads them through
//! `teardown::sock_diag` / `teardown::monitor` from a thread inside that namespace, and checks the
//! figures exactly against `ip netns exec NAME ss ...`.

// A failed unwrap in a test is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::io;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use teardown::commands::timewait::{collect, render_text, OutputFormat, TimewaitArgs};
use teardown::monitor::figures::{per_local_addr, per_remote, port_pressure, state_counts};
use teardown::monitor::{Collector, Level, ReportConfig, Reuse, Thresholds};
use teardown::sock_diag::sysctl::KernelSettings;
use teardown::sock_diag::{
    self, walk_in_use, FourTuple, PollOptions, Poller, ScanLimits, Snapshot, TcpState, TwSubstate,
    Walk,
};
use teardown_integration_tests::{
    gate,
    netns::{veth_pair, Netns},
    wait::wait_until,
};

/// How long a test waits for sockets to settle.
const WAIT: Duration = Duration::from_secs(5);

const PORT: u16 = 5000; // below ip_local_port_range: no collision with client ports

/// Waits for the peer's FIN: read returns 0.
fn read_eof(s: &mut TcpStream) {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 16];
    assert_eq!(s.read(&mut b).unwrap(), 0, "expected the peer's FIN");
}

/// In the calling thread's namespace: `tw` client sockets in TIME_WAIT toward `addr`, and `fw2`
/// client sockets in FIN_WAIT2-timewait whose server sides stay in CLOSE_WAIT (returned: keep
/// them to keep the CLOSE_WAIT).
fn make_sockets(l: &TcpListener, tw: usize, fw2: usize) -> Vec<TcpStream> {
    let addr = l.local_addr().unwrap();
    for _ in 0..tw {
        let c = TcpStream::connect(addr).unwrap();
        let (mut s, _) = l.accept().unwrap();
        drop(c); // client closes first: FIN_WAIT1 -> FIN_WAIT2
        read_eof(&mut s);
        drop(s); // server closes: LAST_ACK; client -> TIME_WAIT
    }
    let mut keep = Vec::new();
    for _ in 0..fw2 {
        let c = TcpStream::connect(addr).unwrap();
        let (mut s, _) = l.accept().unwrap();
        drop(c); // orphaned client: FIN_WAIT2 timewait once our FIN is ACKed
        read_eof(&mut s);
        keep.push(s); // never closed: CLOSE_WAIT
    }
    keep
}

/// Polls until `settled` holds (bounded: 5 s) and returns the last snapshot; when it never
/// does, the assertions on that snapshot say what is missing.
fn poll_until(poller: &mut Poller, settled: impl Fn(&Snapshot) -> bool) -> Snapshot {
    let mut snap = poller.poll().unwrap();
    let _ = wait_until("the sockets to settle", WAIT, || {
        if settled(&snap) {
            return Ok(true);
        }
        snap = poller.poll().map_err(io::Error::other)?;
        Ok(false)
    });
    snap
}

/// The (local, peer) pairs of `ss -tan` lines (columns: Recv-Q Send-Q Local Peer ...).
fn ss_tuples(lines: &[String]) -> BTreeSet<(String, String)> {
    lines
        .iter()
        .map(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            (c[2].to_string(), c[3].to_string())
        })
        .collect()
}

fn tuples(v: impl Iterator<Item = FourTuple>) -> BTreeSet<(String, String)> {
    v.map(|t| (t.local.to_string(), t.remote.to_string()))
        .collect()
}

#[test]
fn counts_match_ss_exactly() {
    if !gate::can_run(gate::NETNS) {
        return;
    }
    let ns = Netns::new("td-tw").unwrap();
    let (n_tw, n_fw2) = (7, 3);
    let (_listener, _keep, snap) = ns.run(|| {
        let l = TcpListener::bind(("127.0.0.1", PORT)).unwrap();
        let keep = make_sockets(&l, n_tw, n_fw2);
        let mut poller = Poller::new(PollOptions::default()).unwrap();
        // Until the sockets have settled: the last server-side closes turned into TIME_WAIT,
        // and the (delayed, the receiver is in pingpong mode) ACKs of the orphaned clients'
        // FINs arrived, turning FIN_WAIT1 into FIN_WAIT2 timewait.
        let snap = poll_until(&mut poller, |snap| {
            snap.count_timewait(TwSubstate::TimeWait) >= n_tw
                && snap.count_timewait(TwSubstate::FinWait2) >= n_fw2
        });
        (l, keep, snap)
    });

    let c = state_counts(&snap);
    let ss_tw = ns.ss(&["-tan", "state", "time-wait"]).unwrap();
    let ss_fw2_tw: Vec<String> = ns
        .ss(&["-tano", "state", "fin-wait-2"])
        .unwrap()
        .into_iter()
        .filter(|l| l.contains("timewait"))
        .collect();
    let ss_cw = ns.ss(&["-tan", "state", "close-wait"]).unwrap();

    assert_eq!(c.time_wait, n_tw);
    assert_eq!(c.time_wait, ss_tw.len(), "ss: {ss_tw:#?}");
    assert_eq!(c.fin_wait2_timewait, n_fw2);
    assert_eq!(c.fin_wait2_timewait, ss_fw2_tw.len(), "ss: {ss_fw2_tw:#?}");
    assert_eq!(c.close_wait, n_fw2);
    assert_eq!(c.close_wait, ss_cw.len());
    assert_eq!(
        (c.fin_wait1, c.fin_wait2, c.last_ack, c.closing),
        (0, 0, 0, 0)
    );

    // The very same sockets.
    let ours_tw = tuples(
        snap.timewait
            .iter()
            .filter(|t| t.substate == TwSubstate::TimeWait)
            .map(|t| t.tuple),
    );
    assert_eq!(ours_tw, ss_tuples(&ss_tw));
    let ours_fw2 = tuples(
        snap.timewait
            .iter()
            .filter(|t| t.substate == TwSubstate::FinWait2)
            .map(|t| t.tuple),
    );
    assert_eq!(ours_fw2, ss_tuples(&ss_fw2_tw));
    assert_eq!(
        tuples(snap.closing.iter().map(|s| s.tuple)),
        ss_tuples(&ss_cw)
    );

    // Per remote / per local, and timers: TIME_WAIT is 60 s, FIN_WAIT2 tcp_fin_timeout (60 s).
    let r = per_remote(&snap);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].key.to_string(), format!("127.0.0.1:{PORT}"));
    assert_eq!((r[0].time_wait, r[0].fin_wait2), (n_tw, n_fw2));
    let l = per_local_addr(&snap);
    assert_eq!(l[0].total(), n_tw + n_fw2);
    for t in &snap.timewait {
        assert!(t.remaining_ms > 50_000 && t.remaining_ms <= 60_000, "{t:?}");
    }
    // CLOSE_WAIT sockets carry inode and uid (root).
    assert!(snap.closing.iter().all(|s| s.inode != 0 && s.uid == 0));
}

/// The sockets of a snapshot as sets to compare between two polls: timers left out, as they
/// run between the polls.
#[allow(clippy::type_complexity)]
fn identities(
    snap: &Snapshot,
) -> (
    BTreeSet<(FourTuple, TwSubstate, u64)>,
    BTreeSet<(FourTuple, TcpState, u64, u64)>,
    BTreeSet<(FourTuple, TcpState, u64)>,
) {
    (
        snap.timewait
            .iter()
            .map(|t| (t.tuple, t.substate, t.cookie))
            .collect(),
        snap.closing
            .iter()
            .map(|s| (s.tuple, s.state, s.cookie, s.inode))
            .collect(),
        snap.open
            .iter()
            .map(|s| (s.tuple, s.state, s.cookie))
            .collect(),
    )
}

/// IPv4 and IPv6 at once: the single table walk (both families, every state, in one dump) gives
/// the sockets `ss` shows and those of the per-family dumps; and once only timewait sockets are
/// left, which sockstat counts in `tw` alone, the namespace is still dumped.
#[test]
fn one_walk_lists_ipv4_and_ipv6_as_ss_does() {
    if !gate::can_run(gate::NETNS) {
        return;
    }
    let ns = Netns::new("td-tw46").unwrap();
    let (n_tw, n_fw2) = (5, 2);
    let (listeners, keep, snap, per_family) = ns.run(|| {
        let l4 = TcpListener::bind(("127.0.0.1", PORT)).unwrap();
        let l6 = TcpListener::bind(("::1", PORT)).unwrap();
        let mut keep = make_sockets(&l4, n_tw, n_fw2);
        keep.extend(make_sockets(&l6, n_tw, n_fw2));
        let mut poller = Poller::new(PollOptions::default()).unwrap();
        let snap = poll_until(&mut poller, |snap| {
            snap.count_timewait(TwSubstate::TimeWait) >= 2 * n_tw
                && snap.count_timewait(TwSubstate::FinWait2) >= 2 * n_fw2
        });
        let per_family = poller.poll_per_family().unwrap();
        ((l4, l6), keep, snap, per_family)
    });
    assert_eq!(walk_in_use(), Some(Walk::Single), "this kernel serves it");

    let ss_tw = ns.ss(&["-tan", "state", "time-wait"]).unwrap();
    let ss_fw2_tw: Vec<String> = ns
        .ss(&["-tano", "state", "fin-wait-2"])
        .unwrap()
        .into_iter()
        .filter(|l| l.contains("timewait"))
        .collect();
    let ss_cw = ns.ss(&["-tan", "state", "close-wait"]).unwrap();
    let ours = |substate| {
        tuples(
            snap.timewait
                .iter()
                .filter(|t| t.substate == substate)
                .map(|t| t.tuple),
        )
    };
    assert_eq!(ours(TwSubstate::TimeWait), ss_tuples(&ss_tw));
    assert_eq!(ours(TwSubstate::FinWait2), ss_tuples(&ss_fw2_tw));
    assert_eq!(
        tuples(snap.closing.iter().map(|s| s.tuple)),
        ss_tuples(&ss_cw)
    );
    let c = state_counts(&snap);
    assert_eq!(
        (c.time_wait, c.fin_wait2_timewait, c.close_wait),
        (2 * n_tw, 2 * n_fw2, 2 * n_fw2)
    );
    for (family, v6) in [("IPv4", false), ("IPv6", true)] {
        let tw = snap
            .timewait
            .iter()
            .filter(|t| t.tuple.local.is_ipv6() == v6);
        let cw = snap
            .closing
            .iter()
            .filter(|s| s.tuple.local.is_ipv6() == v6);
        assert_eq!(tw.count(), n_tw + n_fw2, "{family} timewait");
        assert_eq!(cw.count(), n_fw2, "{family} CLOSE_WAIT");
    }
    // CLOSE_WAIT got its TCP_INFO through the one walk.
    assert!(
        snap.closing
            .iter()
            .all(|s| s.state == TcpState::CloseWait && s.last_ack_recv_ms.is_some()),
        "{:#?}",
        snap.closing
    );
    // The same sockets as the per-family dumps, in the same order (IPv4 first).
    assert_eq!(identities(&snap), identities(&per_family));
    let families = |s: &Snapshot| -> Vec<bool> {
        s.timewait.iter().map(|t| t.tuple.local.is_ipv6()).collect()
    };
    assert_eq!(families(&snap), families(&per_family));
    assert_eq!(
        snap.closing.iter().map(|s| s.tuple).collect::<Vec<_>>(),
        per_family
            .closing
            .iter()
            .map(|s| s.tuple)
            .collect::<Vec<_>>()
    );

    // Closing everything else leaves timewait sockets alone: sockstat says inuse 0 for TCP and
    // TCP6, and tw counts both families; the poll must not take that for an empty namespace.
    drop(keep);
    drop(listeners);
    let (sockstat, sockstat6, left) = ns.run(|| {
        let mut poller = Poller::new(PollOptions::default()).unwrap();
        let inuse_zero = || {
            let t = std::fs::read_to_string("/proc/thread-self/net/sockstat").unwrap();
            let t6 = std::fs::read_to_string("/proc/thread-self/net/sockstat6").unwrap();
            (
                t.contains("TCP: inuse 0 ") && t6.contains("TCP6: inuse 0\n"),
                t,
                t6,
            )
        };
        let mut last = poller.poll().unwrap();
        let _ = wait_until("only timewait sockets to be left", WAIT, || {
            if inuse_zero().0 && last.closing.is_empty() {
                return Ok(true);
            }
            last = poller.poll().map_err(io::Error::other)?;
            Ok(false)
        });
        let (_, t, t6) = inuse_zero();
        (t, t6, poller.poll().unwrap())
    });
    assert!(sockstat.contains("TCP: inuse 0 "), "{sockstat}");
    assert!(sockstat6.contains("TCP6: inuse 0\n"), "{sockstat6}");
    assert!(!sockstat.contains(" tw 0 "), "{sockstat}");
    assert!(left.closing.is_empty(), "{:#?}", left.closing);
    let ss_tw = ns.ss(&["-tan", "state", "time-wait"]).unwrap();
    assert_eq!(ss_tw.len(), 2 * (n_tw + n_fw2), "ss: {ss_tw:#?}");
    assert_eq!(
        tuples(left.timewait.iter().map(|t| t.tuple)),
        ss_tuples(&ss_tw)
    );
    assert!(left.timewait.iter().any(|t| t.tuple.local.is_ipv6()));
}

/// A namespace without any TCP socket gives an empty snapshot, open connections included; and
/// an empty namespace says nothing of another one: a poller bound in a namespace with sockets
/// still lists them when it polls from a thread of the empty one.
#[test]
fn an_empty_namespace_is_empty_and_speaks_only_for_itself() {
    if !gate::can_run(gate::NETNS) {
        return;
    }
    let full = Netns::new("td-full").unwrap();
    let empty = Netns::new("td-empty").unwrap();
    let n = 3;
    let (_l, mut poller) = full.run(|| {
        let l = TcpListener::bind(("127.0.0.1", PORT)).unwrap();
        make_sockets(&l, n, 0);
        let mut poller = Poller::new(PollOptions::default()).unwrap();
        poll_until(&mut poller, |s| s.count_timewait(TwSubstate::TimeWait) >= n);
        (l, poller)
    });
    let (own, borrowed) = empty.run(|| {
        let own = Poller::new(PollOptions::default()).unwrap().poll().unwrap();
        (own, poller.poll().unwrap())
    });
    assert_eq!(
        (own.timewait.len(), own.closing.len(), own.open.len()),
        (0, 0, 0)
    );
    assert!(empty.ss(&["-tan"]).unwrap().is_empty());
    assert_eq!(borrowed.count_timewait(TwSubstate::TimeWait), n);
    assert_eq!(
        tuples(borrowed.timewait.iter().map(|t| t.tuple)),
        ss_tuples(&full.ss(&["-tan", "state", "time-wait"]).unwrap())
    );
}

#[test]
fn close_wait_leak_found_with_our_pid() {
    if !gate::can_run(gate::NETNS) {
        return;
    }
    let ns = Netns::new("td-cw").unwrap();
    let (_l, keep, report) = ns.run(|| {
        let l = TcpListener::bind(("127.0.0.1", PORT)).unwrap();
        let keep = make_sockets(&l, 0, 2);
        let cfg = ReportConfig {
            close_wait_threshold_ms: 0,
            ..ReportConfig::default()
        };
        let mut c =
            Collector::new(PollOptions::default(), cfg, Some(ScanLimits::default())).unwrap();
        let (report, _) = c.poll().unwrap();
        (l, keep, report)
    });
    assert_eq!(report.close_wait_leaks.len(), 2);
    for leak in &report.close_wait_leaks {
        assert!(
            leak.at_least,
            "present at the first poll: age is a lower bound"
        );
        let owner = leak.owners.first().expect("owner found in /proc");
        assert_eq!(owner.pid, std::process::id());
        assert!(!owner.comm.is_empty());
    }
    assert!(report.level >= Level::Warning);
    let ss = ns.ss(&["-tanp", "state", "close-wait"]).unwrap();
    assert_eq!(ss.len(), 2);
    assert!(ss
        .iter()
        .all(|l| l.contains(&format!("pid={}", std::process::id()))));

    // The command's own path: two polls, text and JSON.
    let args = TimewaitArgs {
        format: OutputFormat::Json,
        interval: 0.2,
        close_wait_threshold: 0.1,
        stall_after: 60.0,
        warn_pct: 50.0,
        critical_pct: 90.0,
        top: 10,
        list: true,
        no_owners: false,
        no_open: false,
        netns: None,
    };
    let r = sock_diag::netns::run_in(&ns.path(), || collect(&args))
        .unwrap()
        .unwrap();
    assert_eq!(r.polls, 2);
    assert_eq!(r.rate.method, "observed");
    let text = render_text(&r);
    assert!(text.contains(&format!("{}/", std::process::id())), "{text}");
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["counts"]["close_wait"], 2);
    drop(keep);
}

#[test]
fn port_pressure_warning_with_narrow_port_range() {
    if !gate::can_run(gate::NETNS) {
        return;
    }
    let ns = Netns::new("td-pp").unwrap();
    let host_range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
    ns.set_sysctl("net.ipv4.ip_local_port_range", "40000 40019")
        .unwrap();
    ns.set_sysctl("net.ipv4.tcp_tw_reuse", "0").unwrap();
    assert_eq!(
        ns.exec(&["cat", "/proc/sys/net/ipv4/ip_local_port_range"])
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["40000", "40019"]
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap(),
        host_range,
        "the host's range is untouched"
    );
    let n = 12;
    let (_l, settings, snap) = ns.run(|| {
        let l = TcpListener::bind(("127.0.0.1", PORT)).unwrap();
        make_sockets(&l, n, 0);
        let settings = KernelSettings::read().unwrap();
        let mut p = Poller::new(PollOptions::default()).unwrap();
        let snap = poll_until(&mut p, |snap| {
            snap.count_timewait(TwSubstate::TimeWait) >= n
        });
        (l, settings, snap)
    });
    assert_eq!(settings.port_range, (40000, 40019));
    assert_eq!(settings.tw_reuse, 0);
    let ss_tw = ns.ss(&["-tan", "state", "time-wait"]).unwrap();
    assert_eq!(ss_tw.len(), n);
    let p = port_pressure(&snap, &settings, &Thresholds::default());
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].remote.to_string(), format!("127.0.0.1:{PORT}"));
    assert_eq!((p[0].timewait, p[0].blocking, p[0].range_size), (n, n, 20));
    assert_eq!(p[0].used_pct, 60.0);
    assert_eq!(p[0].reuse, Reuse::Off);
    assert_eq!(p[0].level, Level::Warning);

    // With tcp_tw_reuse=2 (loopback), TIME_WAIT older than 1 s no longer blocks connect().
    // The sleep is the scenario: the sockets must grow older than that second.
    ns.set_sysctl("net.ipv4.tcp_tw_reuse", "2").unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    let (settings, snap) = ns.run(|| {
        (
            KernelSettings::read().unwrap(),
            Poller::new(PollOptions::default()).unwrap().poll().unwrap(),
        )
    });
    let p = port_pressure(&snap, &settings, &Thresholds::default());
    assert_eq!(p[0].reuse, Reuse::Applies);
    assert_eq!((p[0].timewait, p[0].blocking), (n, 0));
    assert_eq!(p[0].level, Level::Ok);
}

#[test]
fn veth_between_namespaces_and_per_namespace_view() {
    if !gate::can_run(gate::NETNS) {
        return;
    }
    let a = Netns::new("td-va").unwrap();
    let b = Netns::new("td-vb").unwrap();
    veth_pair(&a, "10.231.7.1/24", &b, "10.231.7.2/24").unwrap();
    let server = b.run(|| TcpListener::bind(("10.231.7.2", PORT)).unwrap());
    let accept = std::thread::spawn(move || {
        let (mut s, _) = server.accept().unwrap();
        read_eof(&mut s);
        drop(s);
        server
    });
    a.run(|| {
        let c = TcpStream::connect(("10.231.7.2", PORT)).unwrap();
        drop(c);
    });
    let _server = accept.join().unwrap();
    let snap_a = a.run(|| {
        let mut p = Poller::new(PollOptions::default()).unwrap();
        poll_until(&mut p, |s| !s.timewait.is_empty())
    });
    let snap_b = b.run(|| sock_diag::snapshot().unwrap());
    assert_eq!(snap_a.timewait.len(), 1);
    assert_eq!(
        snap_a.timewait[0].tuple.remote.to_string(),
        format!("10.231.7.2:{PORT}")
    );
    assert!(
        snap_b.timewait.is_empty(),
        "the passive side holds no TIME_WAIT"
    );
    wait_until("ss in a to show it", WAIT, || {
        Ok(a.ss(&["-tan", "state", "time-wait"])?.len() == 1)
    })
    .unwrap();
}
