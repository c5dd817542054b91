//! Real containers (podman with runc): `teardown timewait` finds each container's network
//! namespace, names the container, and counts its timewait sockets as `ss` does inside it.
//!
//! Runs on the host only: the kernel matrix's guests carry no container engine.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use teardown_integration_tests::containers::{Container, Image, HTTP_PORT};
use teardown_integration_tests::gate::{can_run, CONTAINERS};
use teardown_integration_tests::netns::Netns;
use teardown_integration_tests::wait::wait_until;

/// `teardown timewait ARGS`, its stdout.
fn timewait(args: &[&str]) -> String {
    let bin = teardown_integration_tests::cli::teardown_bin().expect("teardown binary");
    let out = Command::new(bin)
        .arg("timewait")
        .args(args)
        .output()
        .expect("running teardown timewait");
    assert!(
        out.status.success(),
        "teardown timewait failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// `GET /metrics` of the trace's endpoint.
fn scrape(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Waits until `ss` inside `c` lists `n` TIME_WAIT sockets, and returns them.
fn settled_time_wait(c: &Container, n: usize) -> Vec<String> {
    let mut lines = Vec::new();
    wait_until(
        "the TIME_WAIT sockets in the container",
        Duration::from_secs(20),
        || {
            lines = c.ss(&["-tan", "state", "time-wait"])?;
            Ok(lines.len() >= n)
        },
    )
    .unwrap();
    lines
}

#[test]
fn timewait_names_each_container_and_counts_its_sockets_as_ss_does() {
    if !can_run(CONTAINERS) {
        return;
    }
    let image = Image::build().expect("building the busybox image");
    let web = Container::httpd(&image, "teardown-web").expect("starting a container");
    let api = Container::httpd(&image, "teardown-api").expect("starting a container");
    // The probe that waited for httpd left sockets of its own: counted first.
    let before = |c: &Container| c.ss(&["-tan", "state", "time-wait"]).unwrap().len();
    let (web_before, api_before) = (before(&web), before(&api));
    // Traced while the requests are made: the tracepoints see every namespace.
    let (trace, said) = teardown_integration_tests::cli::start_trace_jsonl(
        HTTP_PORT,
        &[
            "--duration",
            "6s",
            "--conforming",
            "full",
            "--metrics",
            "127.0.0.1:0",
        ],
    )
    .unwrap();
    let metrics_addr = said
        .iter()
        .find_map(|l| {
            l.strip_prefix("metrics at http://")?
                .strip_suffix("/metrics")
        })
        .unwrap_or_else(|| panic!("no metrics address in {said:?}"))
        .to_string();
    web.get(7).unwrap();
    api.get(12).unwrap();
    // The metrics count each container's connections under its name: both ends of each request
    // (bounded wait: they are counted once they settle).
    let series = |c: &Container| format!("namespace=\"podman:{}\"", c.name);
    let counted = |text: &str, c: &Container| -> f64 {
        text.lines()
            .filter(|l| l.starts_with("teardown_connections_total{") && l.contains(&series(c)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let mut text = String::new();
    let _ = wait_until(
        "the containers' connections counted",
        Duration::from_secs(4),
        || {
            text = scrape(&metrics_addr);
            Ok(counted(&text, &web) >= 14.0 && counted(&text, &api) >= 24.0)
        },
    );
    assert_eq!(counted(&text, &web), 14.0, "{text}");
    assert_eq!(counted(&text, &api), 24.0, "{text}");
    let (out, lines) = trace.jsonl_output().unwrap();
    let ss_web = settled_time_wait(&web, web_before + 7);
    let ss_api = settled_time_wait(&api, api_before + 12);
    assert_eq!(
        (ss_web.len(), ss_api.len()),
        (web_before + 7, api_before + 12),
        "{ss_web:#?} {ss_api:#?}"
    );

    // Each connection is named after its container: the client and server ends of the 19
    // requests, in the namespace of the container that served them.
    for c in [&web, &api] {
        let netns = c.netns_inode().unwrap();
        let ends: Vec<_> = lines
            .iter()
            .filter(|v| v["type"] == "connection" && v["netns"] == netns)
            .collect();
        let requests = if c.name == web.name { 7 } else { 12 };
        assert!(
            ends.len() >= 2 * requests,
            "{} ends in {netns}: {out}",
            ends.len()
        );
        for end in ends {
            assert_eq!(end["container"]["name"], c.name.as_str(), "{end:#}");
            assert_eq!(end["container"]["runtime"], "podman", "{end:#}");
        }
    }

    // A namespace that no process holds any more (only its mount under /run/netns), with
    // sockets of its own: three connections whose server closed first.
    let plain = Netns::new("teardown-plain").unwrap();
    plain.run(|| {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        for _ in 0..3 {
            let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            drop(l.accept().unwrap());
            let mut rest = Vec::new();
            c.read_to_end(&mut rest).unwrap();
        }
    });
    let mut ss_plain = Vec::new();
    wait_until(
        "TIME_WAIT in the plain namespace",
        Duration::from_secs(20),
        || {
            ss_plain = plain.ss(&["-tan", "state", "time-wait"])?;
            Ok(ss_plain.len() >= 3)
        },
    )
    .unwrap();

    let report: serde_json::Value = serde_json::from_str(&timewait(&["--format", "json"])).unwrap();
    let namespaces = report["namespaces"]
        .as_array()
        .expect("a list of namespaces");
    let find = |inode: u32| {
        namespaces
            .iter()
            .find(|n| n["netns"] == inode)
            .unwrap_or_else(|| panic!("namespace {inode} not in the report: {report:#}"))
    };
    for (c, ss) in [(&web, &ss_web), (&api, &ss_api)] {
        let n = find(c.netns_inode().unwrap());
        assert_eq!(n["container"]["runtime"], "podman", "{n:#}");
        assert_eq!(n["container"]["name"], c.name.as_str(), "{n:#}");
        assert_eq!(n["container"]["id"], c.id.as_str(), "{n:#}");
        assert!(n["processes"].as_u64().unwrap() >= 1, "{n:#}");
        assert_eq!(n["report"]["counts"]["time_wait"], ss.len(), "{n:#}");
        assert_eq!(n["own"], false);
    }
    let p = find(plain.inode());
    assert_eq!(p["processes"], 0, "{p:#}");
    assert!(p.get("container").is_none(), "{p:#}");
    assert_eq!(p["ip_netns"][0], plain.name(), "{p:#}");
    assert_eq!(p["report"]["counts"]["time_wait"], ss_plain.len(), "{p:#}");
    let own: Vec<_> = namespaces.iter().filter(|n| n["own"] == true).collect();
    assert_eq!(own.len(), 1, "exactly one own namespace: {report:#}");
    let total: u64 = namespaces
        .iter()
        .map(|n| n["report"]["counts"]["time_wait"].as_u64().unwrap())
        .sum();
    assert_eq!(report["totals"]["time_wait"], total);

    // The text report: a row per namespace, named as an operator knows it.
    let text = timewait(&[]);
    let row = |label: &str| {
        text.lines()
            .find(|l| l.contains(label))
            .unwrap_or_else(|| panic!("no row for {label}:\n{text}"))
            .to_string()
    };
    let web_row = row(&format!("podman:{}", web.name));
    let api_row = row(&format!("podman:{}", api.name));
    let columns = |r: &str| r.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    // NETNS OWNER PROCS TIME_WAIT ...: the count is the fourth column.
    assert_eq!(columns(&web_row)[3], ss_web.len().to_string(), "{web_row}");
    assert_eq!(columns(&api_row)[3], ss_api.len().to_string(), "{api_row}");
    let plain_row = row(&format!("ip netns {} (no process left)", plain.name()));
    let after_label: Vec<&str> = plain_row
        .split_once("(no process left)")
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    assert_eq!(after_label.get(..2), Some(&["0", "3"][..]), "{plain_row}");

    // --netns narrows to one: the container's namespace alone, as before.
    let one: serde_json::Value = serde_json::from_str(&timewait(&[
        "--format",
        "json",
        "--netns",
        &web.netns_path().display().to_string(),
    ]))
    .unwrap();
    assert_eq!(one["counts"]["time_wait"], ss_web.len(), "{one:#}");
}

/// As an unprivileged user, `timewait` names a container with exactly its capabilities: other
/// users' /proc entries show the container's namespace (CAP_SYS_PTRACE), entering it takes
/// CAP_SYS_ADMIN, and the engine's record of its name is root's alone (CAP_DAC_READ_SEARCH).
#[test]
fn an_unprivileged_timewait_names_containers_with_exactly_its_capabilities() {
    use teardown_integration_tests::unprivileged::{without, Nobody, TIMEWAIT};
    if !can_run(CONTAINERS) || !can_run(teardown_integration_tests::gate::PRIVILEGE) {
        return;
    }
    let nobody = Nobody::new();
    let image = Image::build().expect("building the busybox image");
    let web = Container::httpd(&image, "teardown-nobody").expect("starting a container");
    let inode = web.netns_inode().unwrap();
    let report = |caps: &[&str]| -> serde_json::Value {
        let out = nobody
            .run(caps, &["timewait", "--format", "json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let find = |r: &serde_json::Value, key: &str| {
        r[key]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["netns"] == inode)
            .cloned()
    };

    let all = report(TIMEWAIT);
    let n = find(&all, "namespaces").unwrap_or_else(|| panic!("{all:#}"));
    assert_eq!(n["container"]["name"], web.name.as_str(), "{n:#}");
    assert_eq!(n["container"]["id"], web.id.as_str(), "{n:#}");

    // Without CAP_DAC_READ_SEARCH: the container is known from its cgroup, not by name.
    let r = report(&without(TIMEWAIT, "dac_read_search"));
    let n = find(&r, "namespaces").unwrap_or_else(|| panic!("{r:#}"));
    assert_eq!(n["container"]["id"], web.id.as_str(), "{n:#}");
    assert!(n["container"].get("name").is_none(), "{n:#}");

    // Without CAP_SYS_ADMIN: found and named, not entered.
    let r = report(&without(TIMEWAIT, "sys_admin"));
    let n = find(&r, "unobserved").unwrap_or_else(|| panic!("{r:#}"));
    assert_eq!(n["container"]["name"], web.name.as_str(), "{n:#}");
    assert!(
        n["error"]
            .as_str()
            .unwrap()
            .ends_with("CAP_SYS_ADMIN is lacking"),
        "{n:#}"
    );

    // Without CAP_SYS_PTRACE: only root's process refers to the namespace (`--network none`
    // makes no mount), so it is not found, and the report counts what it could not read.
    let r = report(&without(TIMEWAIT, "sys_ptrace"));
    assert!(
        find(&r, "namespaces").is_none() && find(&r, "unobserved").is_none(),
        "{r:#}"
    );
    assert!(r["unreadable_processes"].as_u64() >= Some(1), "{r:#}");
}
