//! The errors a user meets when tracing, said once and with what to do.

// A failed unwrap in a test is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    net::TcpListener,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use teardown_integration_tests::{cli, gate};

/// `trace --metrics` on a port another program listens on: the trace stops at once, and says
/// the cause once and what to do.
#[test]
fn metrics_on_a_port_in_use_say_the_cause_once_and_what_to_do() {
    if !gate::can_run(gate::KERNEL) {
        return;
    }
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut child = Command::new(cli::teardown_bin().unwrap())
        .args(["trace", "--duration", "60s", "--metrics", &addr])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Loading the programs takes seconds in a slow guest; the refusal follows at once.
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(50) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("trace went on with its metrics port in use");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    let cause = std::io::Error::from_raw_os_error(libc::EADDRINUSE).to_string();
    assert_eq!(err.matches(&cause).count(), 1, "{err}");
    let line = err.lines().find(|l| l.starts_with("error: ")).unwrap();
    assert!(
        line.contains(&format!("cannot serve metrics on {addr}")),
        "{line}"
    );
    assert!(line.contains("choose another --metrics port"), "{line}");
    drop(taken);
}

/// `record` given a directory: its cause once, and what it needs.
#[test]
fn a_recording_path_that_is_a_directory_is_said_once_with_what_to_give() {
    if !gate::can_run(gate::KERNEL) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("teardown-record-dir-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new(cli::teardown_bin().unwrap())
        .arg("record")
        .arg(&dir)
        .args(["--duration", "5s"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    let cause = std::io::Error::from_raw_os_error(libc::EISDIR).to_string();
    assert_eq!(err.matches(&cause).count(), 1, "{err}");
    let line = err.lines().find(|l| l.starts_with("error: ")).unwrap();
    assert!(line.contains(&dir.display().to_string()), "{line}");
    assert!(line.contains("give record the path of a file"), "{line}");
}
