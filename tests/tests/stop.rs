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
