//! The kernel programs' debug records (aya-log): read only with `-vv`, and silent for ordinary
//! connections, whose events take none of the rare paths that write them. Without `-vv` the
//! programs are loaded with the records off, and the verifier leaves them out.

// A failed unwrap in a test is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::BTreeMap,
    fs::File,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use teardown::kernel::{Probe, ProbeConfig};
use teardown_integration_tests::{
    cli::{self, Running},
    gate,
    loopback::close_one,
    wait::wait_until,
};

/// The line `teardown -v` writes for each program it loaded:
/// `loaded NAME: N instructions, M verified, debug records on|off`.
fn loaded_programs(stderr: &str) -> BTreeMap<String, (u32, bool)> {
    stderr
        .lines()
        .filter_map(|l| l.split_once("] loaded ").map(|(_, rest)| rest))
        .map(|rest| {
            let (name, rest) = rest.split_once(": ").unwrap();
            let instructions = rest.split(' ').next().unwrap().parse().unwrap();
            let on = match rest.rsplit(' ').next().unwrap() {
                "on" => true,
                "off" => false,
                other => panic!("debug records {other:?} in {rest:?}"),
            };
            (name.to_owned(), (instructions, on))
        })
        .collect()
}

/// `ss` lines of sockets to or from `port` in a closing state other than TIME_WAIT.
fn closing_on(port: &str) -> std::io::Result<String> {
    let p = format!(":{port}");
    let out = Command::new("ss")
        .args(["-tanH", "state", "fin-wait-1", "state", "fin-wait-2"])
        .args([
            "state",
            "close-wait",
            "state",
            "last-ack",
            "state",
            "closing",
        ])
        .args(["(", "sport", "=", &p, "or", "dport", "=", &p, ")"])
        .output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!("ss: {out:?}")));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

struct Run {
    stderr: String,
    /// The connection records of the JSON Lines output.
    connections: usize,
}

/// `teardown trace` with `args`, while `n` connections to a port of its filter open and close
/// (every third one aborted with a RST); stopped with SIGTERM once they are done.
fn trace_with(args: &[&str], n: usize, tag: &str) -> Run {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let path = |what: &str| -> PathBuf {
        std::env::temp_dir().join(format!(
            "teardown-kernel-log-{}-{tag}.{what}",
            std::process::id()
        ))
    };
    let (out, err) = (path("jsonl"), path("stderr"));
    let mut child = Running::new(
        Command::new(cli::teardown_bin().unwrap())
            .args(["trace", "--format", "jsonl", "--port", &port, "-o"])
            .arg(&out)
            .args(args)
            .stdout(Stdio::null())
            .stderr(File::create(&err).unwrap())
            .spawn()
            .unwrap(),
    );
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    wait_until("teardown to start tracing", Duration::from_secs(30), || {
        if let Some(status) = child.try_wait()? {
            panic!(
                "teardown ended with {status} before tracing: {}",
                read(&err)
            );
        }
        Ok(read(&err).lines().any(|l| l.starts_with("tracing")))
    })
    .unwrap();
    for i in 0..n {
        close_one(&listener, i % 3 == 2).unwrap();
    }
    // Until every end has closed but for TIME_WAIT: every transition happened before the
    // signal.
    wait_until("the connections to close", Duration::from_secs(10), || {
        Ok(closing_on(&port)?.is_empty())
    })
    .unwrap();
    cli::signal(child.id(), libc::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    let (stderr, output) = (read(&err), read(&out));
    std::fs::remove_file(&err).unwrap();
    std::fs::remove_file(&out).unwrap();
    assert!(status.success(), "teardown ended with {status}: {stderr}");
    Run {
        stderr,
        connections: output.matches("\"type\":\"connection\"").count(),
    }
}

#[test]
fn vv_reads_the_kernel_records_and_ordinary_connections_write_none() {
    if !gate::can_run(gate::KERNEL) {
        return;
    }
    for hook in ["btf", "tracepoint"] {
        let quiet = trace_with(&["-v", "--hook", hook], 6, &format!("{hook}-v"));
        let loud = trace_with(&["-vv", "--hook", hook], 6, &format!("{hook}-vv"));
        assert_eq!(quiet.connections, 12, "{}", quiet.stderr);
        assert_eq!(loud.connections, 12, "{}", loud.stderr);

        let (off, on) = (
            loaded_programs(&quiet.stderr),
            loaded_programs(&loud.stderr),
        );
        // The timewait timer programs, unless a note says this kernel does without them.
        let timers = !quiet
            .stderr
            .contains("not followed through their timer's tracepoints");
        let expected: &[&str] = match (hook, timers) {
            ("btf", true) => &[
                "inet_sock_set_state_btf",
                "tcp_receive_reset_btf",
                "tcp_retransmit_skb_btf",
                "tcp_send_reset_btf",
                "tw_timer_cancel",
                "tw_timer_expire",
                "tw_timer_start",
            ],
            ("btf", false) => &[
                "inet_sock_set_state_btf",
                "tcp_receive_reset_btf",
                "tcp_retransmit_skb_btf",
                "tcp_send_reset_btf",
            ],
            _ => &["inet_sock_set_state_tp"],
        };
        assert_eq!(
            off.keys().map(String::as_str).collect::<Vec<_>>(),
            expected,
            "{}",
            quiet.stderr
        );
        assert_eq!(
            on.keys().collect::<Vec<_>>(),
            off.keys().collect::<Vec<_>>()
        );
        for (name, &(off_insns, off_on)) in &off {
            let (on_insns, on_on) = on[name];
            assert!(!off_on && on_on, "{name}: {}", loud.stderr);
            // With the records off the verifier drops them: the program as loaded is smaller.
            assert!(
                off_insns < on_insns,
                "{name}: {off_insns} instructions with the records off, {on_insns} on"
            );
        }

        // -v neither attaches the logger nor shows debug lines.
        assert!(!quiet.stderr.contains("DEBUG"), "{}", quiet.stderr);
        assert!(
            loud.stderr
                .contains("reading the kernel programs' debug records"),
            "{}",
            loud.stderr
        );
        // Ordinary connections take no rare path: no kernel record, and nothing the agent
        // warns of once tracing began (other lines, such as a module loaded, may come).
        assert!(!loud.stderr.contains(" teardown::ebpf]"), "{}", loud.stderr);
        let warnings: Vec<&str> = loud
            .stderr
            .lines()
            .skip_while(|l| !l.starts_with("tracing"))
            .filter(|l| l.starts_with('[') && (l.contains(" WARN ") || l.contains(" ERROR ")))
            .collect();
        assert!(warnings.is_empty(), "warnings: {warnings:?}");
    }
}

/// One rare path that a host does take: an agent that does not read (stopped here) while
/// connections come. Once the ring buffer is nearly full the kernel counts each event by what
/// it was instead of sending it: the summary says so and lists them, nothing is dropped unseen,
/// and with `-vv` the kernel's records of the counted events reach stderr, naming the program
/// and the socket.
#[test]
fn an_agent_that_falls_behind_is_told_what_it_missed() {
    if !gate::can_run(gate::KERNEL) {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let path = |what: &str| {
        std::env::temp_dir().join(format!(
            "teardown-kernel-log-{}-behind.{what}",
            std::process::id()
        ))
    };
    let (out, err) = (path("jsonl"), path("stderr"));
    // The smallest ring (1 MiB) holds some 7,000 events; 1,500 connections make about 15,000.
    let mut child = Running::new(
        Command::new(cli::teardown_bin().unwrap())
            .args(["trace", "-vv", "--ring-size", "1", "--format", "jsonl"])
            .args(["--timewait-poll", "0", "--port", &port, "-o"])
            .arg(&out)
            .stdout(Stdio::null())
            .stderr(File::create(&err).unwrap())
            .spawn()
            .unwrap(),
    );
    let read = || std::fs::read_to_string(&err).unwrap_or_default();
    wait_until("teardown to start tracing", Duration::from_secs(30), || {
        Ok(read().lines().any(|l| l.starts_with("tracing")))
    })
    .unwrap();
    cli::signal(child.id(), libc::SIGSTOP).unwrap();
    for _ in 0..1500 {
        close_one(&listener, false).unwrap();
    }
    cli::signal(child.id(), libc::SIGCONT).unwrap();
    let counted = "DEBUG teardown::ebpf] inet_sock_set_state_btf: agent behind, event counted, \
                   skaddr 0x";
    wait_until(
        "the kernel's records of counted events",
        Duration::from_secs(10),
        || Ok(read().contains(counted)),
    )
    .unwrap();
    wait_until(
        "the note that the agent is behind",
        Duration::from_secs(10),
        || Ok(read().contains("note: the agent is behind the kernel")),
    )
    .unwrap();
    cli::signal(child.id(), libc::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    let stderr = read();
    let jsonl = std::fs::read_to_string(&out).unwrap();
    std::fs::remove_file(&err).unwrap();
    std::fs::remove_file(&out).unwrap();
    assert!(status.success(), "teardown ended with {status}: {stderr}");
    assert!(
        stderr.contains(" counted while the agent was behind"),
        "{stderr}"
    );
    assert!(
        stderr.contains("counted, not judged (the agent was behind):"),
        "{stderr}"
    );
    let summary: serde_json::Value = serde_json::from_str(jsonl.lines().last().unwrap()).unwrap();
    let by_cause = &summary["lost_by_cause"];
    let behind = by_cause["behind"].as_u64().unwrap();
    assert!(behind > 1000, "{summary:#}");
    // Counted rather than dropped: the last eighth of the ring took what was on its way.
    assert_eq!(by_cause["ring_full"], 0, "{summary:#}");
    assert_eq!(summary["lost_events"].as_u64(), Some(behind), "{summary:#}");
    let not_judged = summary["not_judged"].as_object().unwrap();
    let listed: u64 = not_judged.values().map(|n| n.as_u64().unwrap()).sum();
    assert_eq!(listed, behind, "{summary:#}");
    // The events of the closes that came while it was stopped, by transition.
    for step in [
        "ESTABLISHED>FIN_WAIT1",
        "ESTABLISHED>CLOSE_WAIT",
        "LAST_ACK>CLOSE",
    ] {
        assert!(not_judged.contains_key(step), "{step}: {summary:#}");
    }
}

/// The library's side of the same switch: the records' ring buffer is taken for reading only
/// when asked for.
#[test]
fn the_kernel_log_is_attached_only_when_asked() {
    if !gate::can_run(gate::KERNEL) {
        return;
    }
    for kernel_log in [false, true] {
        let mut probe = Probe::load(ProbeConfig {
            kernel_log,
            ..ProbeConfig::default()
        })
        .unwrap();
        assert_eq!(probe.kernel_log().is_some(), kernel_log);
        // Handed out once, like the event stream.
        assert!(probe.kernel_log().is_none());
    }
}
