//! `teardown trace` follows timewait sockets through their timer's tracepoints, in every network
//! namespace, with no `--timewait-netns`: each scenario runs in namespaces created after the
//! trace started and removed right after, over IPv4 and IPv6, and its fate is joined to the
//! connection the timewait socket came from. A kernel without those programs (simulated with
//! `--timewait-source sock-diag`) still follows what sock_diag sees, and says what it loses.

// A failed unwrap in a test is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::Read,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use serde_json::Value;
use socket2::{Domain, Socket, Type};
use teardown::sock_diag::TcpState;
use teardown_integration_tests::{
    cli::{self, Running},
    gate,
    lab::{self, ack_now, read_to_eof, wait_until, Family, Lab, Side, WAIT},
    netns::Netns,
};

/// The note of a trace whose timewait sockets are not followed from the kernel.
const NOT_FROM_KERNEL: &str = "timewait sockets are not followed through their timer's tracepoints";

/// Starts `teardown trace --format jsonl --port PORT` with `extra`; the trace runs until
/// [`stop`]. Returns it and what it said before tracing.
fn start(port: u16, extra: &[&str]) -> (Running, Vec<String>) {
    cli::start_trace_jsonl(port, extra).unwrap()
}

/// Stops the trace (SIGINT, as Ctrl-C) and returns its output: everything still held (cancels
/// not yet explained, connections not yet settled) is written when it stops.
fn stop(child: Running) -> (String, Vec<Value>) {
    cli::signal(child.id(), libc::SIGINT).unwrap();
    child.jsonl_output().unwrap()
}

/// The timeline of the connection from `local` to `remote`, and the timewait facts joined to it.
fn facts_of(out: &str, lines: &[Value], local: SocketAddr, remote: SocketAddr) -> Vec<Value> {
    let timeline = lines
        .iter()
        .find(|v| {
            v["type"] == "connection"
                && v["local"] == local.to_string()
                && v["remote"] == remote.to_string()
        })
        .unwrap_or_else(|| panic!("no timeline for {local} -> {remote}: {out}"));
    lines
        .iter()
        .filter(|v| v["type"] == "timewait" && v["id"] == timeline["id"])
        .cloned()
        .collect()
}

/// The verdict of the connection from `local` to `remote`, and whether its line came before
/// every fact joined to it (a connection is reported first, then what its timewait socket did).
fn verdict_of(lines: &[Value], local: SocketAddr, remote: SocketAddr) -> (Value, bool) {
    let at = lines
        .iter()
        .position(|v| {
            v["type"] == "connection"
                && v["local"] == local.to_string()
                && v["remote"] == remote.to_string()
        })
        .unwrap_or_else(|| panic!("no timeline for {local} -> {remote}: {lines:#?}"));
    let id = &lines[at]["id"];
    let first_fact = lines
        .iter()
        .position(|v| v["type"] == "timewait" && &v["id"] == id);
    (
        lines[at]["verdict"].clone(),
        first_fact.is_none_or(|f| f > at),
    )
}

/// The facts, as `entered TIME_WAIT`, `restarted`, `left expired`.
fn kinds(facts: &[Value]) -> Vec<String> {
    facts
        .iter()
        .map(|f| match f["fact"].as_str() {
            Some("entered") => format!("entered {}", f["state"].as_str().unwrap_or("?")),
            Some("left") => format!("left {}", f["how"].as_str().unwrap_or("?")),
            Some(other) => other.to_owned(),
            None => "?".to_owned(),
        })
        .collect()
}

fn no_note_of_loss(said: &[String]) {
    assert!(
        !said.iter().any(|l| l.contains(NOT_FROM_KERNEL)),
        "this kernel should allow the timer programs: {said:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// A FIN resent into TIME_WAIT (the final ACK lost): the timer restarts.

fn fin_resent_into_time_wait(slot: u8, family: Family) {
    if !gate::can_run(gate::LAB) {
        return;
    }
    let port = lab::port_for(slot);
    let (child, said) = start(port, &[]);
    no_note_of_loss(&said);
    let lab = Lab::new(slot, family).unwrap();
    let (mut c, mut s) = lab.pair().unwrap();
    let (local, remote) = (c.local_addr().unwrap(), c.peer_addr().unwrap());
    // The client closes first; the server ACKs its FIN alone, at once.
    c.shutdown(Shutdown::Write).unwrap();
    assert!(read_to_eof(&mut s).unwrap().is_empty());
    ack_now(&s).unwrap();
    lab.wait_state(Side::Client, "FIN_WAIT2", WAIT).unwrap();
    // The client's final ACK is lost once: the server resends its FIN into the client's
    // TIME_WAIT, which ACKs it again and restarts its timer.
    let nft = lab.nft(Side::Server).unwrap();
    let rules = nft
        .drop_first(1, &format!("tcp dport {port} tcp flags == ack"))
        .unwrap();
    drop(s);
    assert!(read_to_eof(&mut c).unwrap().is_empty());
    lab.wait_state(Side::Client, "TIME_WAIT", WAIT).unwrap();
    lab.wait_gone(Side::Server, TcpState::LastAck, WAIT)
        .unwrap();
    assert_eq!(nft.total(&rules).unwrap(), 1, "exactly one ACK dropped");
    drop(c);
    // TIME_WAIT lasts 60 s: a RST ends it now, where the test can see it end (the removal of
    // a namespace is done later, by the kernel's own worker).
    kill_by_rst(&lab, local, remote);
    drop(lab);
    let (out, lines) = stop(child);
    let facts = facts_of(&out, &lines, local, remote);
    assert_eq!(
        kinds(&facts),
        ["entered TIME_WAIT", "restarted", "left killed"],
        "{facts:#?}"
    );
    // The restart came with the resent FIN: at least the server's retransmission timeout
    // (200 ms at the least) after the entry.
    let (entered, restarted) = (&facts[0], &facts[1]);
    assert_eq!(restarted["previous_entered_ms"], entered["entered_ms"]);
    let moved = restarted["entered_ms"].as_u64().unwrap() - entered["entered_ms"].as_u64().unwrap();
    assert!(
        moved >= 150,
        "restarted {moved} ms after the entry: {facts:#?}"
    );
    assert_eq!(facts[2]["restarts"], 1, "{facts:#?}");
}

#[test]
fn a_fin_resent_into_time_wait_restarts_its_timer() {
    fin_resent_into_time_wait(28, Family::V4);
}

#[test]
fn ipv6_a_fin_resent_into_time_wait_restarts_its_timer() {
    fin_resent_into_time_wait(29, Family::V6);
}

// ---------------------------------------------------------------------------------------------
// A RST into TIME_WAIT (RFC 1337's assassination, tcp_rfc1337=0).

/// With `record`, the trace is `teardown record`, and its recording is replayed after.
fn rst_into_time_wait(slot: u8, family: Family, record: bool) {
    if !gate::can_run(gate::LAB) {
        return;
    }
    let port = lab::port_for(slot);
    let recording =
        std::env::temp_dir().join(format!("teardown-twk-{}-{slot}.jsonl", std::process::id()));
    let (child, said) = if record {
        let (path, port) = (recording.to_str().unwrap(), port.to_string());
        cli::start_tracing_saying(&["record", path, "--format", "jsonl", "--port", &port]).unwrap()
    } else {
        start(port, &[])
    };
    no_note_of_loss(&said);
    let lab = Lab::new(slot, family).unwrap();
    let (mut c, mut s) = lab.pair().unwrap();
    let (local, remote) = (c.local_addr().unwrap(), c.peer_addr().unwrap());
    c.shutdown(Shutdown::Write).unwrap();
    assert!(read_to_eof(&mut s).unwrap().is_empty());
    drop(s);
    assert!(read_to_eof(&mut c).unwrap().is_empty());
    drop(c);
    lab.wait_state(Side::Client, "TIME_WAIT", WAIT).unwrap();
    lab.wait_gone(Side::Server, TcpState::LastAck, WAIT)
        .unwrap();
    kill_by_rst(&lab, local, remote);
    drop(lab);
    let (out, lines) = stop(child);
    let facts = facts_of(&out, &lines, local, remote);
    assert_eq!(
        kinds(&facts),
        ["entered TIME_WAIT", "left killed"],
        "{facts:#?}"
    );
    if record {
        // The recording keeps the timer events: replayed, it tells the same.
        let replay = std::process::Command::new(cli::teardown_bin().unwrap())
            .args(["replay", recording.to_str().unwrap(), "--format", "jsonl"])
            .output()
            .unwrap();
        let _ = std::fs::remove_file(&recording);
        assert!(replay.status.success(), "{replay:?}");
        let replayed = String::from_utf8(replay.stdout).unwrap();
        let sorted = |text: &str| {
            let mut v: Vec<String> = text
                .lines()
                .filter(|l| !l.contains("\"type\":\"summary\""))
                .map(str::to_owned)
                .collect();
            v.sort();
            v
        };
        assert_eq!(
            sorted(&replayed),
            sorted(&out),
            "live:\n{out}\nreplayed:\n{replayed}"
        );
    }
}

/// Kills the client's TIME_WAIT socket (`local` -> `remote`) with a RST from the server's
/// side, as RFC 1337 describes it (`tcp_rfc1337=0`, the default, lets it): a socket connecting
/// back from the server's address and port sends a SYN into TIME_WAIT, which answers with an
/// ACK of its own sequence; the connecting socket, finding that ACK wrong, sends a RST at
/// exactly the sequence TIME_WAIT expects. Returns once the TIME_WAIT socket is gone.
fn kill_by_rst(lab: &Lab, local: SocketAddr, remote: SocketAddr) {
    lab.sysctl(Side::Client, "net.ipv4.tcp_rfc1337", "0")
        .unwrap();
    let back = lab
        .ns(Side::Server)
        .run(move || {
            let s = Socket::new(Domain::for_address(local), Type::STREAM, None)?;
            s.set_reuse_address(true)?;
            s.bind(&remote.into())?;
            s.set_nonblocking(true)?;
            match s.connect(&local.into()) {
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(s),
                Err(e) => Err(e),
                Ok(()) => Ok(s),
            }
        })
        .unwrap();
    wait_until("the client's TIME_WAIT socket to go", WAIT, || {
        Ok(lab.timewait(Side::Client)?.is_empty())
    })
    .unwrap();
    drop(back);
}

#[test]
fn a_rst_into_time_wait_kills_it() {
    rst_into_time_wait(30, Family::V4, false);
}

#[test]
fn a_recorded_rst_into_time_wait_replays_to_the_same_facts() {
    rst_into_time_wait(20, Family::V4, true);
}

#[test]
fn ipv6_a_rst_into_time_wait_kills_it() {
    rst_into_time_wait(31, Family::V6, false);
}

// ---------------------------------------------------------------------------------------------
// One namespace on its loopback: a TIME_WAIT socket reused, an orphaned FIN_WAIT2 timing out.

fn loopback(family: Family) -> IpAddr {
    match family {
        Family::V4 => Ipv4Addr::LOCALHOST.into(),
        Family::V6 => Ipv6Addr::LOCALHOST.into(),
    }
}

/// Connects to `server` from `local` (port 0: any) with SO_REUSEADDR, inside `ns`.
fn connect_in(ns: &Netns, local: SocketAddr, server: SocketAddr) -> TcpStream {
    ns.run(move || {
        let s = Socket::new(Domain::for_address(server), Type::STREAM, None)?;
        s.set_reuse_address(true)?;
        s.bind(&local.into())?;
        s.connect_timeout(&server.into(), WAIT)?;
        let s: TcpStream = s.into();
        s.set_read_timeout(Some(WAIT))?;
        Ok::<_, std::io::Error>(s)
    })
    .unwrap()
}

/// The port the trace filters on: known before the namespace exists (a free one on the host
/// now; a new namespace has every port free).
fn free_port(ip: IpAddr) -> u16 {
    TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn time_wait_reused(family: Family) {
    if !gate::can_run(gate::KERNEL) {
        return;
    }
    let ip = loopback(family);
    let port = free_port(ip);
    let (child, said) = start(port, &[]);
    no_note_of_loss(&said);
    let ns = Netns::new("td-twk-reuse").unwrap();
    let listener = ns.run(move || TcpListener::bind((ip, port))).unwrap();
    let server = SocketAddr::new(ip, port);
    let mut client = connect_in(&ns, SocketAddr::new(ip, 0), server);
    let local = client.local_addr().unwrap();
    let (mut accepted, _) = listener.accept().unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let mut buf = Vec::new();
    accepted.read_to_end(&mut buf).unwrap();
    drop(accepted);
    client.read_to_end(&mut buf).unwrap();
    drop(client);
    // tcp_tw_reuse (2, the default: loopback) lets the 4-tuple be taken again once the
    // TIME_WAIT socket is older than a second: the sleep is the scenario.
    std::thread::sleep(Duration::from_millis(1500));
    let again = connect_in(&ns, local, server);
    let (accepted2, _) = listener.accept().unwrap();
    drop(again);
    drop(accepted2);
    drop(listener);
    drop(ns);
    let (out, lines) = stop(child);
    let facts = facts_of(&out, &lines, local, server);
    assert_eq!(
        kinds(&facts),
        ["entered TIME_WAIT", "left reused"],
        "{facts:#?}"
    );
}

#[test]
fn a_time_wait_socket_reused_by_a_new_connection() {
    time_wait_reused(Family::V4);
}

#[test]
fn ipv6_a_time_wait_socket_reused_by_a_new_connection() {
    time_wait_reused(Family::V6);
}

/// Two namespaces, not one: on a loopback the peer's ACK of the FIN may be handled while
/// `close()` still holds the socket, which then stays a full FIN_WAIT2 socket (and ends with a
/// RST); across the veth pair it comes after, and the orphan becomes a FIN_WAIT2 timewait socket.
fn fin_wait2_times_out(slot: u8, family: Family) {
    if !gate::can_run(gate::LAB) {
        return;
    }
    let port = lab::port_for(slot);
    let (child, said) = start(port, &[]);
    no_note_of_loss(&said);
    let lab = Lab::new(slot, family).unwrap();
    // The same sysctl for both families.
    lab.sysctl(Side::Client, "net.ipv4.tcp_fin_timeout", "1")
        .unwrap();
    let (c, mut s) = lab.pair().unwrap();
    let (local, remote) = (c.local_addr().unwrap(), c.peer_addr().unwrap());
    // The client closes and goes (an orphan); the server ACKs the FIN and never closes:
    // FIN_WAIT2 waits tcp_fin_timeout for a FIN that does not come.
    drop(c);
    assert!(read_to_eof(&mut s).unwrap().is_empty());
    ack_now(&s).unwrap();
    lab.wait_state(Side::Client, "FIN_WAIT2", WAIT).unwrap();
    // Bounded generously: a slow guest's timer may fire late.
    wait_until(
        "the FIN_WAIT2 timewait socket to expire",
        Duration::from_secs(20),
        || Ok(lab.timewait(Side::Client)?.is_empty()),
    )
    .unwrap();
    // The trace ends with the server still in CLOSE_WAIT: the peer never closed.
    let (out, lines) = stop(child);
    drop(s);
    drop(lab);
    let facts = facts_of(&out, &lines, local, remote);
    assert_eq!(
        kinds(&facts),
        ["entered FIN_WAIT2", "left expired"],
        "{facts:#?}\n{out}"
    );
    // Its verdict waited for that fate: step 3 never came, a FIN_WAIT2 timeout.
    let (verdict, first) = verdict_of(&lines, local, remote);
    assert!(first, "the connection is reported before its facts: {out}");
    assert_eq!(verdict["variant"], "fin_wait2_timeout", "{verdict:#}");
    assert_eq!(verdict["conformance"], "deviates", "{verdict:#}");
    assert_eq!(verdict["time_wait"], "timed_out", "{verdict:#}");
    assert_eq!(verdict["findings"][0]["code"], "no_peer_fin", "{verdict:#}");
}

#[test]
fn an_orphaned_fin_wait2_socket_times_out() {
    fin_wait2_times_out(18, Family::V4);
}

#[test]
fn ipv6_an_orphaned_fin_wait2_socket_times_out() {
    fin_wait2_times_out(19, Family::V6);
}

/// The peer's FIN reaches an orphan's FIN_WAIT2 timewait socket, which turns into TIME_WAIT.
/// With `fin_timeout` at 60 s (the default) the kernel re-arms its timer silently (the new
/// expiry falls in the same bucket of its timer wheel): known from the timer at its end. With a
/// short one, the re-arm moves it to another bucket: a cancel and a start, known at once.
fn peer_fin_reaches_fin_wait2(slot: u8, family: Family, fin_timeout: Option<&str>) {
    if !gate::can_run(gate::LAB) {
        return;
    }
    let port = lab::port_for(slot);
    let (child, said) = start(port, &[]);
    no_note_of_loss(&said);
    let lab = Lab::new(slot, family).unwrap();
    if let Some(secs) = fin_timeout {
        lab.sysctl(Side::Client, "net.ipv4.tcp_fin_timeout", secs)
            .unwrap();
    }
    let (c, mut s) = lab.pair().unwrap();
    let (local, remote) = (c.local_addr().unwrap(), c.peer_addr().unwrap());
    drop(c);
    assert!(read_to_eof(&mut s).unwrap().is_empty());
    ack_now(&s).unwrap();
    lab.wait_state(Side::Client, "FIN_WAIT2", WAIT).unwrap();
    // The server closes: its FIN reaches the timewait socket, now in TIME_WAIT.
    drop(s);
    lab.wait_state(Side::Client, "TIME_WAIT", WAIT).unwrap();
    lab.wait_gone(Side::Server, TcpState::LastAck, WAIT)
        .unwrap();
    kill_by_rst(&lab, local, remote);
    drop(lab);
    let (out, lines) = stop(child);
    let facts = facts_of(&out, &lines, local, remote);
    assert_eq!(
        kinds(&facts),
        ["entered FIN_WAIT2", "entered TIME_WAIT", "left killed"],
        "{facts:#?}"
    );
    // Its verdict waited for the peer's FIN: the documented close, TIME_WAIT seen.
    let (verdict, first) = verdict_of(&lines, local, remote);
    assert!(first, "the connection is reported before its facts: {out}");
    assert_eq!(verdict["conformance"], "conforms", "{verdict:#}");
    assert_eq!(
        verdict["time_wait"], "fin_wait2_timewait_then_time_wait",
        "{verdict:#}"
    );
    let notes = verdict["notes"].to_string();
    assert!(!notes.contains("time_wait_not_visible"), "{verdict:#}");
}

#[test]
fn the_peer_fin_turns_a_fin_wait2_socket_into_time_wait() {
    peer_fin_reaches_fin_wait2(22, Family::V4, None);
}

#[test]
fn the_peer_fin_turns_a_short_fin_wait2_socket_into_time_wait() {
    peer_fin_reaches_fin_wait2(24, Family::V4, Some("10"));
}

#[test]
fn ipv6_the_peer_fin_turns_a_fin_wait2_socket_into_time_wait() {
    peer_fin_reaches_fin_wait2(23, Family::V6, None);
}

// ---------------------------------------------------------------------------------------------
// Without the timer programs: sock_diag follows what it can see, and the trace says what not.

#[test]
fn without_the_timer_programs_sock_diag_follows_and_the_loss_is_said() {
    if !gate::can_run(gate::KERNEL) {
        return;
    }
    let ip = loopback(Family::V4);
    let port = free_port(ip);
    let ns = Netns::new("td-twk-sd").unwrap();
    let (child, said) = start(
        port,
        &[
            "--timewait-source",
            "sock-diag",
            "--timewait-poll",
            "100ms",
            "--timewait-netns",
            ns.name(),
        ],
    );
    let note = said
        .iter()
        .find(|l| l.contains(NOT_FROM_KERNEL))
        .unwrap_or_else(|| panic!("no note of what is lost: {said:?}"));
    assert!(
        note.contains("sock-diag") && note.contains("missed"),
        "the note names why and what it costs: {note}"
    );
    assert_eq!(
        said.iter().filter(|l| l.contains(NOT_FROM_KERNEL)).count(),
        1,
        "said once: {said:?}"
    );
    let listener = ns.run(move || TcpListener::bind((ip, port))).unwrap();
    let server = SocketAddr::new(ip, port);
    let mut client = connect_in(&ns, SocketAddr::new(ip, 0), server);
    let local = client.local_addr().unwrap();
    let (mut accepted, _) = listener.accept().unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let mut buf = Vec::new();
    accepted.read_to_end(&mut buf).unwrap();
    drop(accepted);
    client.read_to_end(&mut buf).unwrap();
    drop(client);
    // sock_diag shows the TIME_WAIT socket at its next poll (every 100 ms), once its
    // connection was reported (200 ms after its close). The output comes at the end: give the
    // polls ample time (TIME_WAIT lasts 60 s, so the socket is there all along).
    wait_until("the client's TIME_WAIT socket", WAIT, || {
        Ok(ns
            .run(teardown::sock_diag::snapshot)
            .map_err(|e| std::io::Error::other(e.to_string()))?
            .timewait
            .iter()
            .any(|t| t.tuple.local == local))
    })
    .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let (out, lines) = stop(child);
    let facts = facts_of(&out, &lines, local, server);
    assert_eq!(kinds(&facts), ["entered TIME_WAIT"], "{facts:#?}");
    drop(listener);
}
