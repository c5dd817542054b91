//! Every kernel hook the agent attaches, on the kernel this runs on (the host's, and each kernel
//! of the matrix): each is attached or reported missing, and what the probe says it sees is what
//! a real connection shows.

// A failed unwrap in a test is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, TcpListener};

use teardown::kernel::{Capabilities, Hook, ProbeConfig};
use teardown_integration_tests::{
    gate, loopback,
    tracer::{split_ends, Tracer},
};

/// A connection the client aborts (SO_LINGER 0): a RST sent and a RST received, both by full
/// sockets, which every kernel's reset tracepoints report. Returns the server's port.
fn aborted_pair() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    loopback::close_one(&listener, true).unwrap();
    listener.local_addr().unwrap().port()
}

/// A tracer on `hook`, and what it says it sees; None when the test cannot run here.
fn start(hook: Hook, name: &str) -> Option<(Tracer, Capabilities)> {
    if !gate::can_run(gate::KERNEL) {
        return None;
    }
    let tracer = Tracer::start_with(ProbeConfig {
        hook,
        ..ProbeConfig::default()
    });
    let caps = tracer.caps.clone();
    assert_eq!(caps.hook, name, "{caps:?}");
    Some((tracer, caps))
}

#[test]
fn the_btf_hooks_attach_and_see_resets() {
    let Some((tracer, caps)) = start(Hook::Btf, "btf") else {
        return;
    };
    // The state program and the three tcp ones (retransmit, send and receive reset): each is
    // attached, or named in a note.
    assert!(caps.retransmits_and_resets, "{caps:?}");
    assert!(caps.seq && caps.netns, "{caps:?}");
    // What the probe says of resets it cannot see is one note, and only where it applies.
    let reset_notes = caps
        .notes
        .iter()
        .filter(|n| n.contains("resets of full sockets only"));
    assert_eq!(
        reset_notes.count(),
        usize::from(!caps.every_reset),
        "{caps:?}"
    );
    // The timewait timer programs: attached, or one note says what is missing and what that
    // costs.
    let timer_notes = caps
        .notes
        .iter()
        .filter(|n| n.contains("timer's tracepoints"));
    assert_eq!(
        timer_notes.count(),
        usize::from(!caps.timewait_timers),
        "{caps:?}"
    );

    let port = aborted_pair();
    let (client, server) = split_ends(tracer.connections(Ipv4Addr::LOCALHOST.into(), port), port);
    assert!(
        client.steps().iter().any(|k| k.starts_with("rst_sent@")),
        "client: {:?}",
        client.steps()
    );
    assert!(
        server
            .steps()
            .iter()
            .any(|k| k.starts_with("rst_received@")),
        "server: {:?}",
        server.steps()
    );
}

#[test]
fn the_classic_tracepoint_attaches_and_sees_state_changes() {
    let Some((tracer, caps)) = start(Hook::Tracepoint, "tracepoint") else {
        return;
    };
    assert!(
        !caps.retransmits_and_resets && !caps.every_reset,
        "{caps:?}"
    );
    let port = aborted_pair();
    let (client, server) = split_ends(tracer.connections(Ipv4Addr::LOCALHOST.into(), port), port);
    assert_eq!(
        client.steps(),
        [
            "CLOSE->SYN_SENT",
            "SYN_SENT->ESTABLISHED",
            "ESTABLISHED->CLOSE"
        ]
    );
    let st = server.steps();
    assert!(
        st.starts_with(&["LISTEN->SYN_RECV".into(), "SYN_RECV->ESTABLISHED".into()]),
        "{st:?}"
    );
}
