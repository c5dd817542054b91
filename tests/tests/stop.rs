//! `teardown trace` stops cleanly on SIGTERM and on Ctrl-C (SIGINT) alike: every connection seen
//! so far is written, the still-open ones too, and the summary ends the output.

// A failed unwrap in a test is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::Read,
    net::{TcpListener, TcpStream},
    os::fd::FromRawFd,
    path::Path,
    process::Command,
    time::Duration,
};

use teardown_integration_tests::{cli, gate, wait::wait_until};

/// The JSON Lines file teardown wrote, as text and parsed; the file is removed.
fn take_jsonl(path: &Path) -> (String, Vec<serde_json::Value>) {
    let text = std::fs::read_to_string(path).unwrap();
    std::fs::remove_file(path).unwrap();
    let lines = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (text, lines)
}

/// `ss` lines of sockets to or from `port` in FIN_WAIT1 or LAST_ACK (this namespace).
fn closing_on(port: u16) -> std::io::Result<String> {
    let p = format!(":{port}");
    let out = Command::new("ss")
        .args(["-tanH", "state", "fin-wait-1", "state", "last-ack"])
        .args(["(", "sport", "=", &p, "or", "dport", "=", &p, ")"])
        .output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!("ss: {out:?}")));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn stops_cleanly_on(signal: libc::c_int) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let out = std::env::temp_dir().join(format!(
        "teardown-stop-{}-{signal}.jsonl",
        std::process::id()
    ));
    let (mut child, _) =
        cli::start_trace_jsonl(addr.port(), &["-o", out.to_str().unwrap()]).unwrap();
    // One connection that closes, one left in CLOSE_WAIT on the server side.
    for leave_open in [false, true] {
        let client = TcpStream::connect(addr).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        drop(client);
        let mut buf = Vec::new();
        server.read_to_end(&mut buf).unwrap();
        if leave_open {
            std::mem::forget(server);
        }
    }
    // Until the orderly connection has closed on both ends (its last ACK arrived, no end in
    // FIN_WAIT1 or LAST_ACK): every transition the test counts happened before the signal.
    wait_until(
        "the orderly connection to close",
        Duration::from_secs(5),
        || Ok(closing_on(addr.port())?.is_empty()),
    )
    .unwrap();
    teardown_integration_tests::cli::signal(child.id(), signal).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status {status:?}");
    let (text, lines) = take_jsonl(&out);
    let conns: Vec<&serde_json::Value> =
        lines.iter().filter(|v| v["type"] == "connection").collect();
    assert_eq!(conns.len(), 4, "two connections, both ends: {text}");
    assert!(
        conns
            .iter()
            .any(|v| v["end"] == "still_open" && v["last_state"] == "CLOSE_WAIT"),
        "{text}"
    );
    let last = lines.last().unwrap();
    assert_eq!(last["type"], "summary", "{text}");
    assert_eq!(last["connections"], 4);
}

#[test]
fn sigterm_flushes_everything() {
    if gate::can_run(gate::KERNEL) {
        stops_cleanly_on(libc::SIGTERM);
    }
}

#[test]
fn ctrl_c_flushes_everything() {
    if gate::can_run(gate::KERNEL) {
        stops_cleanly_on(libc::SIGINT);
    }
}

/// Standard error a pipe nobody reads any more (the reader exited): notes are lost, the trace
/// is not. The "tracing" line is written to that pipe at start, so a trace that survives it to
/// the end of its --duration, with every connection and the summary written, is the proof.
#[test]
fn a_closed_stderr_does_not_stop_tracing() {
    if !gate::can_run(gate::KERNEL) {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let out = std::env::temp_dir().join(format!(
        "teardown-closed-stderr-{}.jsonl",
        std::process::id()
    ));
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: a valid array of two fds for pipe(2) to fill.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both fds were just made by pipe(2) and are owned here.
    let (reader, writer) = unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    };
    drop(reader);
    let mut child = cli::Running::new(
        std::process::Command::new(cli::teardown_bin().unwrap())
            .args(["trace", "--format", "jsonl", "--duration", "4s", "--port"])
            .arg(addr.port().to_string())
            .arg("-o")
            .arg(&out)
            .stderr(writer)
            .spawn()
            .unwrap(),
    );
    // Without a line to wait for, connections are made until the trace ends: its start takes
    // seconds on a slow guest, so a fixed number of them could all come before it.
    let mut status = None;
    for _ in 0..240 {
        std::thread::sleep(Duration::from_millis(250));
        if let Some(exited) = child.try_wait().unwrap() {
            status = Some(exited);
            break;
        }
        let client = TcpStream::connect(addr).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        drop(client);
        let mut buf = Vec::new();
        server.read_to_end(&mut buf).unwrap();
    }
    let status = status.expect("the trace did not end within 60 s of a 4 s --duration");
    assert!(status.success(), "exit status {status:?}");
    let (text, lines) = take_jsonl(&out);
    assert!(
        lines.iter().any(|v| v["type"] == "connection"),
        "no connection traced: {text}"
    );
    assert_eq!(lines.last().unwrap()["type"], "summary", "{text}");
}

/// Whether process `pid` catches `signal` (its handler is installed): bit `signal - 1` of the
/// SigCgt mask in /proc/PID/status.
fn catches(pid: u32, signal: libc::c_int) -> std::io::Result<bool> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .ok_or_else(|| std::io::Error::other(format!("no SigCgt in {status}")))?;
    Ok(mask & (1 << (signal - 1)) != 0)
}

/// Standard error of a child, read to the end on a thread; the lines come through the channel.
fn stderr_lines(child: &mut cli::Running) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead as _;
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            let _ = tx.send(line);
        }
    });
    rx
}

/// Waits (at most 60 s) for a child to exit; it is killed by [`cli::Running`] otherwise.
fn exit_within(child: &mut cli::Running, what: &str) -> std::process::ExitStatus {
    for _ in 0..1200 {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what}: teardown did not exit within 60 s");
}

/// A signal that comes while the programs load (before the trace said it is tracing) still
/// ends it cleanly: exit status 0, the output a valid JSON Lines file ending with its summary.
fn stops_cleanly_before_load(signal: libc::c_int) {
    let out = std::env::temp_dir().join(format!(
        "teardown-stop-early-{}-{signal}.jsonl",
        std::process::id()
    ));
    let mut child = cli::Running::new(
        Command::new(cli::teardown_bin().unwrap())
            .args(["trace", "--format", "jsonl", "--port", "9", "-o"])
            .arg(&out)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let said = stderr_lines(&mut child);
    let pid = child.id();
    // The handlers are the first thing the trace installs: the signal is sent as soon as they
    // are, while the kernel programs are still to be loaded (that takes far longer).
    wait_until("the signal handlers", Duration::from_secs(20), || {
        Ok(catches(pid, libc::SIGINT)? && catches(pid, libc::SIGTERM)?)
    })
    .unwrap();
    cli::signal(pid, signal).unwrap();
    let before: Vec<String> = said.try_iter().collect();
    assert!(
        !before.iter().any(|l| l.starts_with("tracing")),
        "the programs were loaded before the signal: {before:?}"
    );
    let status = exit_within(&mut child, "a signal before load");
    let said: Vec<String> = before.into_iter().chain(said.iter()).collect();
    assert!(status.success(), "exit status {status:?}: {said:?}");
    let (text, lines) = take_jsonl(&out);
    assert_eq!(lines.last().unwrap()["type"], "summary", "{text}");
    assert!(
        said.iter().any(|l| l.starts_with("summary: ")),
        "no summary on stderr: {said:?}"
    );
}

#[test]
fn sigterm_before_the_programs_load_stops_cleanly() {
    if gate::can_run(gate::KERNEL) {
        stops_cleanly_before_load(libc::SIGTERM);
    }
}

#[test]
fn ctrl_c_before_the_programs_load_stops_cleanly() {
    if gate::can_run(gate::KERNEL) {
        stops_cleanly_before_load(libc::SIGINT);
    }
}

/// SIGTERM in the middle of a burst of connections: every connection the trace saw is written
/// whole, and the summary, last, counts exactly the connections written.
#[test]
fn sigterm_during_a_burst_flushes_everything() {
    if !gate::can_run(gate::KERNEL) {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let out =
        std::env::temp_dir().join(format!("teardown-stop-burst-{}.jsonl", std::process::id()));
    let (mut child, _) =
        cli::start_trace_jsonl(addr.port(), &["-o", out.to_str().unwrap()]).unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let made = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let burst = {
        let (done, made) = (done.clone(), made.clone());
        std::thread::spawn(move || {
            // Bounded: at most 20,000 connections, or until told to stop.
            for _ in 0..20_000 {
                if done.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                teardown_integration_tests::loopback::close_one(&listener, false).unwrap();
                made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        })
    };
    wait_until("a burst under way", Duration::from_secs(20), || {
        Ok(made.load(std::sync::atomic::Ordering::Relaxed) >= 200)
    })
    .unwrap();
    cli::signal(child.id(), libc::SIGTERM).unwrap();
    let status = exit_within(&mut child, "SIGTERM during a burst");
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    burst.join().unwrap();
    assert!(status.success(), "exit status {status:?}");
    let (text, lines) = take_jsonl(&out);
    let conns = lines.iter().filter(|v| v["type"] == "connection").count();
    let last = lines.last().unwrap();
    assert_eq!(
        last["type"],
        "summary",
        "{}",
        &text[text.len().saturating_sub(2000)..]
    );
    assert_eq!(
        last["connections"], conns,
        "every connection counted is written"
    );
    assert!(conns >= 200, "only {conns} connections written");
    assert_eq!(
        lines.iter().filter(|v| v["type"] == "summary").count(),
        1,
        "one summary"
    );
}

/// A pipe for a child's stdout: (read end, write end). Close-on-exec: the children other tests
/// start meanwhile must not hold the read end open.
fn pipe() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: a valid array of two fds for pipe2(2) to fill.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both fds were just made by pipe2(2) and are owned here.
    unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    }
}

/// A trace whose stdout reader goes away ends as a stop does: exit status 0, the summary on
/// stderr with a note saying why. `read_first`: the reader reads one record first, and the
/// trace finds out by a failed write (EPIPE); else it closes at once, on a quiet host, and the
/// trace finds out by poll(2) without writing anything.
fn a_closed_stdout_ends_the_trace(read_first: bool) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (reader, writer) = pipe();
    let mut child = cli::Running::new(
        Command::new(cli::teardown_bin().unwrap())
            .args(["trace", "--format", "jsonl", "--port"])
            .arg(addr.port().to_string())
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let said = stderr_lines(&mut child);
    wait_until("the trace to start", Duration::from_secs(30), || {
        Ok(said
            .recv_timeout(Duration::from_millis(100))
            .is_ok_and(|l| l.starts_with("tracing")))
    })
    .unwrap();
    let mut reader = std::fs::File::from(reader);
    let mut status = None;
    if read_first {
        // Connections until a first byte arrives, then the reader goes; connections go on
        // until the trace ends (bounded: 240 of them, a minute).
        let mut byte = [0u8; 1];
        let (tx, got) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let r = reader.read_exact(&mut byte);
            let _ = tx.send(r.is_ok());
            // `reader` is dropped here: the pipe has no reader any more.
        });
        let mut first = false;
        for _ in 0..240 {
            teardown_integration_tests::loopback::close_one(&listener, false).unwrap();
            if !first {
                first = got
                    .recv_timeout(Duration::from_millis(250))
                    .unwrap_or(false);
            } else if let Some(s) = child.try_wait().unwrap() {
                status = Some(s);
                break;
            } else {
                std::thread::sleep(Duration::from_millis(250));
            }
        }
        assert!(first, "no output from the trace");
    } else {
        drop(reader);
    }
    let status = match status {
        Some(s) => s,
        None => exit_within(&mut child, "a closed stdout"),
    };
    // Everything it said, up to its exit.
    let said: Vec<String> = said.iter().collect();
    assert!(status.success(), "exit status {status:?}: {said:?}");
    assert!(
        said.iter()
            .any(|l| l.contains("standard output was closed")),
        "{said:?}"
    );
    assert!(
        said.iter().any(|l| l.starts_with("summary: ")),
        "no summary on stderr: {said:?}"
    );
    assert!(
        !said
            .iter()
            .any(|l| l.contains("Broken pipe") || l.contains("error")),
        "{said:?}"
    );
}

#[test]
fn a_stdout_closed_while_quiet_ends_the_trace() {
    if gate::can_run(gate::KERNEL) {
        a_closed_stdout_ends_the_trace(false);
    }
}

#[test]
fn a_stdout_closed_after_output_ends_the_trace() {
    if gate::can_run(gate::KERNEL) {
        a_closed_stdout_ends_the_trace(true);
    }
}

/// `top --batch` into a pipe whose reader went away ends at its next line, with status 0 and
/// no error: long before its `--duration`, which outlasts the wait for its exit.
#[test]
fn top_batch_into_a_closed_pipe_ends_cleanly() {
    if !gate::can_run(gate::KERNEL) {
        return;
    }
    let (reader, writer) = pipe();
    drop(reader);
    let mut child = cli::Running::new(
        Command::new(cli::teardown_bin().unwrap())
            .args(["top", "--batch", "--interval", "0.2", "--duration", "10m"])
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let said = stderr_lines(&mut child);
    let status = exit_within(&mut child, "top --batch into a closed pipe");
    let said: Vec<String> = said.iter().collect();
    assert!(status.success(), "exit status {status:?}: {said:?}");
    assert!(!said.iter().any(|l| l.contains("error")), "{said:?}");
}

/// SIGHUP reopens the -o file: after it was renamed (as logrotate does), the records before
/// the signal are in the renamed file, those after it in a new file at the path; none is lost
/// or written twice, and no record is cut in two.
#[test]
fn sighup_reopens_the_output_file() {
    if !gate::can_run(gate::KERNEL) {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let dir = std::env::temp_dir();
    let out = dir.join(format!("teardown-sighup-{}.jsonl", std::process::id()));
    let rotated = dir.join(format!("teardown-sighup-{}.jsonl.1", std::process::id()));
    let (mut child, said) = cli::start_trace_jsonl(
        port,
        &["-o", out.to_str().unwrap(), "--metrics", "127.0.0.1:0"],
    )
    .unwrap();
    let metrics = said
        .iter()
        .find_map(|l| l.strip_prefix("metrics at http://"))
        .and_then(|u| u.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("no metrics address in {said:?}"))
        .to_owned();
    // Each end by its 4-tuple, as written.
    let ends = |text: &str| -> Vec<String> {
        text.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["type"] == "connection")
            .map(|v| format!("{} {}", v["local"], v["remote"]))
            .collect()
    };
    // Two connections (four ends) before the rotation, two after; each is judged (counted in
    // the metrics) before the next step.
    for round in 1..=2 {
        for _ in 0..2 {
            teardown_integration_tests::loopback::close_one(&listener, false).unwrap();
        }
        let want = f64::from(4 * round);
        wait_until("the ends judged", Duration::from_secs(15), || {
            Ok(cli::connections_counted(&metrics)? >= want)
        })
        .unwrap();
        if round == 1 {
            std::fs::rename(&out, &rotated).unwrap();
            cli::signal(child.id(), libc::SIGHUP).unwrap();
            // The new file appears once the signal is handled.
            wait_until("the reopened file", Duration::from_secs(10), || {
                Ok(out.exists())
            })
            .unwrap();
        }
    }
    cli::signal(child.id(), libc::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status {status:?}");
    let (old_text, _) = take_jsonl(&rotated);
    let (new_text, new_lines) = take_jsonl(&out);
    let (old, new) = (ends(&old_text), ends(&new_text));
    assert_eq!(
        old.len(),
        4,
        "the ends before SIGHUP, in the renamed file: {old_text}"
    );
    assert_eq!(
        new.len(),
        4,
        "the ends after SIGHUP, in the new file: {new_text}"
    );
    assert!(
        old.iter().all(|p| !new.contains(p)),
        "a connection in both files:\n{old_text}\n{new_text}"
    );
    assert!(
        !old_text.contains("\"summary\""),
        "the summary belongs to the new file: {old_text}"
    );
    assert_eq!(new_lines.last().unwrap()["type"], "summary", "{new_text}");
    assert_eq!(new_lines.last().unwrap()["connections"], 8, "{new_text}");
}

/// Without -o, SIGHUP is ignored: the trace goes on, and what follows is still traced.
#[test]
fn sighup_without_an_output_file_is_ignored() {
    if !gate::can_run(gate::KERNEL) {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (mut child, _) = cli::start_trace_jsonl(port, &[]).unwrap();
    cli::signal(child.id(), libc::SIGHUP).unwrap();
    // Still running a moment later, and tracing.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP ended the trace"
    );
    teardown_integration_tests::loopback::close_one(&listener, false).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    cli::signal(child.id(), libc::SIGTERM).unwrap();
    let (text, lines) = child.jsonl_output().unwrap();
    let conns = lines.iter().filter(|v| v["type"] == "connection").count();
    assert_eq!(conns, 2, "the connection after SIGHUP, both ends: {text}");
}
