//! `teardown trace` stops cleanly on SIGTERM and on Ctrl-C (SIGINT) alike: every connection seen
//! so far is written, the still-open ones too, and the summary ends the output.

// A failed unwrap in a test is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{BufRead, BufReader, Read},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use teardown_integration_tests::kernel;

fn teardown_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().join("teardown")
}

fn stops_cleanly_on(signal: libc::c_int) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let out = std::env::temp_dir().join(format!(
        "teardown-stop-{}-{signal}.jsonl",
        std::process::id()
    ));
    let mut child = Command::new(teardown_bin())
        .args(["trace", "--format", "jsonl", "--port"])
        .arg(addr.port().to_string())
        .arg("-o")
        .arg(&out)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !line.starts_with("tracing") {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "teardown exited");
        assert!(Instant::now() < deadline, "teardown did not start");
    }
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
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: sending a signal to our own child.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, signal) }, 0);
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status {status:?}");
    let text = std::fs::read_to_string(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
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
    if kernel::available("sigterm_flushes_everything") {
        stops_cleanly_on(libc::SIGTERM);
    }
}

#[test]
fn ctrl_c_flushes_everything() {
    if kernel::available("ctrl_c_flushes_everything") {
        stops_cleanly_on(libc::SIGINT);
    }
}
