//! `teardown top --batch`, run as a user would: a line per poll, a line per deviating teardown
//! from its eBPF tracer, and a clean exit on SIGTERM.

// A failed unwrap in a test is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    net::{TcpListener, TcpStream},
    time::Duration,
};

use socket2::SockRef;
use teardown_integration_tests::{cli, gate};

#[test]
fn batch_mode_reports_polls_and_a_reset_then_stops_on_sigterm() {
    if !gate::can_run(gate::KERNEL) {
        return;
    }
    // --duration: a backstop should the test fail before its SIGTERM.
    let (mut child, lines) =
        cli::start_top_batch(&["--interval", "0.2", "--no-owners", "--duration", "120s"]).unwrap();
    let next = || lines.recv_timeout(Duration::from_secs(30)).unwrap();
    // The tracer is attached before the first poll is printed.
    let first = next();
    assert!(
        !first.starts_with('#'),
        "the tracer did not attach: {first}"
    );
    assert!(first.contains(" TIME_WAIT="), "{first}");

    // A connection aborted with SO_LINGER 0: a teardown that deviates.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let client = TcpStream::connect(addr).unwrap();
    let (server, _) = listener.accept().unwrap();
    SockRef::from(&client)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(client);
    drop(server);

    let ours = format!(":{} ", addr.port());
    // Poll lines after the first one: polling goes on (one every 0.2 s) while teardowns are
    // reported, so at least one more comes before the reset lines are all in, or after.
    let (mut polls, mut resets) = (0, Vec::new());
    // Bounded: the two ends' lines come within a settle time; 100 lines is ample.
    for _ in 0..100 {
        let l = next();
        if l.starts_with("teardown ") && l.contains(&ours) {
            resets.push(l);
        } else if l.contains(" TIME_WAIT=") {
            polls += 1;
        }
        if resets.len() == 2 && polls >= 1 {
            break;
        }
    }
    assert_eq!(
        resets.len(),
        2,
        "both ends of the reset connection: {resets:?}"
    );
    assert!(
        resets.iter().all(|l| l.contains("abort by RST: deviates")),
        "{resets:?}"
    );
    assert!(polls >= 1, "no poll line after the first one");

    teardown_integration_tests::cli::signal(child.id(), libc::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status {status:?}");
}
