//! Least privilege: each command runs as an unprivileged user (`nobody`) holding exactly the
//! capabilities the README lists for it, as ambient capabilities, and works; with any one of
//! them dropped it says which one it lacks. And no file it writes is world-writable, whatever
//! the umask.

// A failed unwrap in a test is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{BufRead, BufReader},
    net::TcpListener,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use teardown_integration_tests::{
    cli::Running,
    gate, loopback,
    netns::Netns,
    unprivileged::{without, Nobody, SERVE, TIMEWAIT, TOP, TRACE},
};

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// "CAP_SYS_NICE" for "sys_nice".
fn cap_name(c: &str) -> String {
    format!("CAP_{}", c.to_uppercase())
}

/// Whether kernel addresses in /proc/kallsyms need CAP_SYSLOG here, and whether they can be
/// read at all (kptr_restrict 2 hides them from everyone).
fn kallsyms_needs_syslog() -> (bool, bool) {
    let read = |p: &str| -> i64 {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(2)
    };
    let kptr = read("/proc/sys/kernel/kptr_restrict");
    let paranoid = read("/proc/sys/kernel/perf_event_paranoid");
    let readable = kptr < 2;
    (readable && (kptr == 1 || paranoid > 1), readable)
}

/// Runs `teardown trace --format jsonl --port P --duration 4s -o FILE` as `nobody` with `caps`;
/// once it says it is tracing, one connection closes on P. Returns the run's output and the
/// JSON Lines written to FILE (None when the trace did not start).
fn trace_as_nobody(nobody: &Nobody, caps: &[&str], tag: &str) -> (Output, Option<String>) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = nobody.out().join(format!("trace-{tag}.jsonl"));
    let _ = std::fs::remove_file(&out);
    let mut child = Running::new(
        nobody
            .run(
                caps,
                &[
                    "trace",
                    "--format",
                    "jsonl",
                    "--port",
                    &port.to_string(),
                    "--duration",
                    "4s",
                    "-o",
                    out.to_str().unwrap(),
                ],
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut started = false;
    let mut err = Vec::new();
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        let tracing = line.starts_with("tracing");
        err.push(line);
        if tracing {
            started = true;
            break;
        }
    }
    if started {
        loopback::close_one_on(port, false).unwrap();
    }
    let status = child.wait().unwrap();
    reader.join().unwrap();
    err.extend(rx.try_iter());
    let output = Output {
        status,
        stdout: Vec::new(),
        stderr: err.join("\n").into_bytes(),
    };
    let written = started.then(|| std::fs::read_to_string(&out).unwrap());
    if started {
        let mode = std::fs::metadata(&out).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o002,
            0,
            "{} is world-writable (mode {mode:o})",
            out.display()
        );
        std::fs::remove_file(&out).unwrap();
    }
    (output, written)
}

#[test]
fn trace_works_with_exactly_its_capabilities() {
    if !gate::can_run(gate::PRIVILEGE) {
        return;
    }
    let nobody = Nobody::new();
    let (out, written) = trace_as_nobody(&nobody, TRACE, "all");
    let (_, err) = text(&out);
    assert!(out.status.success(), "{err}");
    let written = written.expect("the trace started");
    let (_, kallsyms_readable) = kallsyms_needs_syslog();
    assert!(
        !err.contains("lacking"),
        "a capability reported lacking: {err}"
    );
    if kallsyms_readable {
        assert!(!err.contains("kallsyms"), "{err}");
    }
    assert!(!err.contains("priority could not be raised"), "{err}");
    // The connection was traced and judged: both ends, as for root.
    let conns = written
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["type"] == "connection" && v.get("verdict").is_some())
        .count();
    assert!(conns >= 2, "{written}\n{err}");
}

#[test]
fn trace_without_each_capability_names_it() {
    if !gate::can_run(gate::PRIVILEGE) {
        return;
    }
    let nobody = Nobody::new();
    let (syslog_needed, _) = kallsyms_needs_syslog();
    for dropped in TRACE {
        let (out, written) = trace_as_nobody(&nobody, &without(TRACE, dropped), dropped);
        let (_, err) = text(&out);
        let name = cap_name(dropped);
        match *dropped {
            // Required: the trace does not start, and the one lacking is named alone.
            "bpf" | "perfmon" => {
                assert!(!out.status.success(), "{dropped}: {err}");
                assert!(written.is_none(), "{dropped}: {err}");
                assert!(
                    err.contains(&format!("this process lacks {name}:")),
                    "{dropped}: {err}"
                );
                assert_eq!(
                    err.matches("error:").count(),
                    1,
                    "{dropped}: said once: {err}"
                );
            }
            // Optional: the trace runs, and a note says what is left out and why.
            _ => {
                assert!(out.status.success(), "{dropped}: {err}");
                assert!(written.is_some(), "{dropped}: {err}");
                if *dropped == "syslog" && !syslog_needed {
                    continue;
                }
                let note = err
                    .lines()
                    .find(|l| l.contains(&name))
                    .unwrap_or_else(|| panic!("{dropped}: no note names {name}: {err}"));
                assert!(note.starts_with("note: "), "{note}");
                assert!(note.contains("lacking"), "{note}");
            }
        }
    }
}

#[test]
fn the_classic_tracepoint_needs_tracefs_readable() {
    if !gate::can_run(gate::PRIVILEGE) {
        return;
    }
    let nobody = Nobody::new();
    let mode = std::fs::metadata("/sys/kernel/tracing")
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0);
    let caps = ["bpf", "perfmon", "dac_read_search"];
    let run = |caps: &[&str]| {
        nobody
            .run(caps, &["trace", "--hook", "tracepoint", "--duration", "1s"])
            .output()
            .unwrap()
    };
    let with = run(&caps);
    assert!(with.status.success(), "{:?}", text(&with));
    let lacking = run(&caps[..2]);
    if mode & 0o005 == 0o005 {
        // tracefs readable by everyone here: the capability is not needed.
        assert!(lacking.status.success(), "{:?}", text(&lacking));
        return;
    }
    let (_, err) = text(&lacking);
    assert!(!lacking.status.success(), "{err}");
    assert!(err.contains("CAP_DAC_READ_SEARCH is lacking"), "{err}");
    assert_eq!(
        err.matches("CAP_DAC_READ_SEARCH is lacking").count(),
        1,
        "{err}"
    );
}

/// A network namespace that only a process refers to (no mount under /run/netns): finding it
/// takes reading that root process's /proc entry. It holds one TIME_WAIT socket.
struct HiddenNamespace {
    holder: std::process::Child,
    inode: u64,
}

impl HiddenNamespace {
    fn new() -> HiddenNamespace {
        let mut holder = Command::new("unshare")
            .args(["--net", "sleep", "120"])
            .spawn()
            .unwrap();
        let path = PathBuf::from(format!("/proc/{}/ns/net", holder.id()));
        let own = std::fs::read_link("/proc/self/ns/net").unwrap();
        let entered = teardown_integration_tests::wait::wait_until(
            "unshare to enter its namespace",
            Duration::from_secs(10),
            || Ok(std::fs::read_link(&path).is_ok_and(|t| t != own)),
        );
        if let Err(e) = entered {
            let _ = holder.kill();
            panic!("{e}");
        }
        use std::os::unix::fs::MetadataExt;
        let inode = std::fs::metadata(&path).unwrap().ino();
        teardown::sock_diag::netns::run_in(&path, || {
            let up = Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .status()
                .unwrap();
            assert!(up.success());
            // The client closes first: its end stays in TIME_WAIT for a minute.
            loopback::close_one_on(0, false).unwrap();
        })
        .unwrap();
        HiddenNamespace { holder, inode }
    }
}

impl Drop for HiddenNamespace {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// The namespace `inode` in `timewait --format json`'s report: (observed, its entry).
fn namespace_in(report: &serde_json::Value, inode: u64) -> Option<(bool, serde_json::Value)> {
    let find = |key: &str| {
        report[key]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["netns"].as_u64() == Some(inode))
            .cloned()
    };
    find("namespaces")
        .map(|n| (true, n))
        .or_else(|| find("unobserved").map(|n| (false, n)))
}

#[test]
fn timewait_sees_every_namespace_with_exactly_its_capabilities() {
    if !gate::can_run(gate::PRIVILEGE) {
        return;
    }
    let nobody = Nobody::new();
    let hidden = HiddenNamespace::new();
    let mounted = Netns::new("priv").unwrap();
    let json = |caps: &[&str]| -> (serde_json::Value, String) {
        let out = nobody
            .run(caps, &["timewait", "--format", "json"])
            .output()
            .unwrap();
        let (stdout, err) = text(&out);
        assert!(out.status.success(), "{err}");
        (serde_json::from_str(&stdout).unwrap(), stdout)
    };

    let (report, raw) = json(TIMEWAIT);
    let (observed, ns) = namespace_in(&report, hidden.inode).unwrap_or_else(|| panic!("{raw}"));
    assert!(observed, "{ns}");
    assert!(
        ns["report"]["counts"]["time_wait"].as_u64() >= Some(1),
        "{ns}"
    );
    assert!(ns["processes"].as_u64() >= Some(1), "{ns}");
    let inode = u64::from(mounted.inode());
    assert!(
        namespace_in(&report, inode).is_some_and(|(o, _)| o),
        "{raw}"
    );

    // Without CAP_SYS_ADMIN: found, not entered, and the text says why.
    let caps = without(TIMEWAIT, "sys_admin");
    let (report, raw) = json(&caps);
    let (observed, ns) = namespace_in(&report, hidden.inode).unwrap_or_else(|| panic!("{raw}"));
    assert!(!observed, "{ns}");
    assert!(
        ns["error"]
            .as_str()
            .unwrap()
            .ends_with("CAP_SYS_ADMIN is lacking"),
        "{ns}"
    );
    let out = nobody.run(&caps, &["timewait"]).output().unwrap();
    let (stdout, _) = text(&out);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with(&hidden.inode.to_string())
                && l.contains("not observed")
                && l.contains("CAP_SYS_ADMIN is lacking")),
        "{stdout}"
    );

    // Without CAP_SYS_PTRACE: the namespace only a root process is in cannot be found, and
    // the report says so.
    let caps = without(TIMEWAIT, "sys_ptrace");
    let (report, raw) = json(&caps);
    assert!(namespace_in(&report, hidden.inode).is_none(), "{raw}");
    assert!(report["unreadable_processes"].as_u64() >= Some(1), "{raw}");
    assert!(
        namespace_in(&report, inode).is_some_and(|(o, _)| o),
        "{raw}"
    );
    let out = nobody.run(&caps, &["timewait"]).output().unwrap();
    let (stdout, _) = text(&out);
    assert!(stdout.contains("CAP_SYS_PTRACE is lacking"), "{stdout}");
}

#[test]
fn top_names_what_it_lacks() {
    if !gate::can_run(gate::PRIVILEGE) {
        return;
    }
    let nobody = Nobody::new();
    let _mounted = Netns::new("privtop").unwrap();
    let batch = |caps: &[&str]| {
        let out = nobody
            .run(caps, &["top", "--batch", "--duration", "1500ms"])
            .output()
            .unwrap();
        let (stdout, err) = text(&out);
        assert!(out.status.success(), "{err}");
        stdout
    };
    let full = batch(TOP);
    assert!(!full.contains("not attached"), "{full}");
    assert!(!full.contains("not observed"), "{full}");
    assert!(!full.contains("lacking"), "{full}");

    // CAP_SYS_ADMIN is what both halves need: the tracer cannot load (nor do CAP_BPF and
    // CAP_PERFMON stand in for it) and the other namespaces are not entered.
    let no_admin = batch(&without(TOP, "sys_admin"));
    assert!(no_admin.contains("not attached"), "{no_admin}");
    assert!(
        no_admin.contains("lacks CAP_BPF and CAP_PERFMON"),
        "{no_admin}"
    );
    assert!(no_admin.contains("not observed"), "{no_admin}");
    assert!(no_admin.contains("CAP_SYS_ADMIN is lacking"), "{no_admin}");
}

#[test]
fn replay_needs_no_capability_and_writes_no_world_writable_file() {
    if !gate::can_run(gate::PRIVILEGE) {
        return;
    }
    let nobody = Nobody::new();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../teardown-user/tests/fixtures/four_way_close.events.jsonl");
    let input = nobody.dir().join("replay-input.jsonl");
    std::fs::copy(&fixture, &input).unwrap();
    std::fs::set_permissions(&input, std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = nobody.out().join("replay-output.jsonl");
    let _ = std::fs::remove_file(&output);
    let out = nobody
        .run(
            &[],
            &[
                "replay",
                input.to_str().unwrap(),
                "--format",
                "jsonl",
                "-o",
                output.to_str().unwrap(),
            ],
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    let written = std::fs::read_to_string(&output).unwrap();
    assert!(written.lines().count() >= 2, "{written}");
    let mode = std::fs::metadata(&output).unwrap().permissions().mode();
    assert_eq!(mode & 0o002, 0, "world-writable: {mode:o}");
}

#[test]
fn a_recording_is_not_world_writable() {
    if !gate::can_run(gate::PRIVILEGE) {
        return;
    }
    let nobody = Nobody::new();
    let file = nobody.out().join("rec.jsonl");
    let _ = std::fs::remove_file(&file);
    let out = nobody
        .run(
            &["bpf", "perfmon"],
            &["record", file.to_str().unwrap(), "--duration", "1s"],
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o002, 0, "world-writable: {mode:o}");
    assert!(std::fs::read_to_string(&file).unwrap().starts_with('{'));
}

/// What `serve` as `nobody` with `caps` said and served: its stderr, and the metrics scraped
/// once they counted a closed connection's two ends and the figures covered `hidden` (at most
/// 15 s), or None when it did not start.
fn serve_as_nobody(nobody: &Nobody, caps: &[&str], hidden: u64) -> (String, Option<String>) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = nobody.out().join("serve.jsonl");
    let _ = std::fs::remove_file(&out);
    let mut child = Running::new(
        nobody
            .run(
                caps,
                &[
                    "serve",
                    "--port",
                    &port.to_string(),
                    "--metrics",
                    "127.0.0.1:0",
                    "--figures-every",
                    "1s",
                    // Whatever else this host holds, the test's namespace has a label.
                    "--metrics-namespaces",
                    "10000",
                    "--duration",
                    "30s",
                    "-o",
                    out.to_str().unwrap(),
                ],
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut err = Vec::new();
    let mut started = false;
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        started = line.starts_with("tracing");
        err.push(line);
        if started {
            break;
        }
    }
    let mut scraped = None;
    if started {
        let addr = err
            .iter()
            .find_map(|l| {
                l.strip_prefix("metrics at http://")?
                    .strip_suffix("/metrics")
            })
            .unwrap()
            .to_owned();
        loopback::close_one_on(port, false).unwrap();
        let hidden_tw = format!(
            "teardown_closing_sockets{{namespace=\"netns {hidden}\",state=\"TIME_WAIT\",\
             socket=\"timewait\"}} "
        );
        let end = Instant::now() + Duration::from_secs(15);
        loop {
            let text = scrape(&addr);
            let ends: f64 = text
                .lines()
                .filter(|l| l.starts_with("teardown_connections_total{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            let done = ends >= 2.0 && text.contains(&hidden_tw);
            if done || Instant::now() >= end {
                scraped = Some(text);
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        // SIGTERM: the clean stop the service manager asks for.
        teardown_integration_tests::cli::signal(child.id(), libc::SIGTERM).unwrap();
    }
    let status = child.wait().unwrap();
    reader.join().unwrap();
    err.extend(rx.try_iter());
    let err = err.join("\n");
    if started {
        assert!(status.success(), "{err}");
    }
    let _ = std::fs::remove_file(&out);
    (err, scraped)
}

fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// The set that deploy/ grants (the deploy tests check the files against SERVE) is enough for
/// all of `serve`, and each of its capabilities is needed: without one, it is named.
#[test]
fn serve_works_with_exactly_the_capabilities_its_unit_grants() {
    if !gate::can_run(gate::PRIVILEGE) {
        return;
    }
    let nobody = Nobody::new();
    let hidden = HiddenNamespace::new();
    let (syslog_needed, _) = kallsyms_needs_syslog();
    let (err, scraped) = serve_as_nobody(&nobody, SERVE, hidden.inode);
    let text = scraped.unwrap_or_else(|| panic!("serve did not start: {err}"));
    assert!(!err.contains("lacking"), "{err}");
    assert!(!err.contains("priority could not be raised"), "{err}");
    // Both ends judged, and the namespace only a root process is in, found and entered.
    let hidden_tw = format!(
        "teardown_closing_sockets{{namespace=\"netns {}\",state=\"TIME_WAIT\",socket=\"timewait\"}} 1",
        hidden.inode
    );
    assert!(text.contains(&hidden_tw), "{text}\n{err}");
    for dropped in SERVE {
        if *dropped == "syslog" && !syslog_needed {
            continue;
        }
        let (err, scraped) = serve_as_nobody(&nobody, &without(SERVE, dropped), hidden.inode);
        let name = cap_name(dropped);
        if *dropped == "sys_admin" {
            // Neither loads the programs nor enters the namespaces: an error, said once.
            assert!(scraped.is_none(), "{err}");
            assert!(err.contains(&name), "{err}");
            assert_eq!(err.matches("error:").count(), 1, "{err}");
        } else {
            // It runs without it, and says what it leaves out.
            assert!(scraped.is_some(), "{dropped}: {err}");
            let note = err
                .lines()
                .find(|l| l.contains(&name))
                .unwrap_or_else(|| panic!("{dropped}: no note names {name}: {err}"));
            assert!(note.starts_with("note: "), "{note}");
        }
    }
}
