//! Untrusted text reaches the operator's terminal escaped: a process that named itself with
//! escape sequences and a newline (prctl PR_SET_NAME) and made a connection is shown with its
//! name's control characters written out, in `trace`'s text output and in `top --batch`.

// A failed unwrap in a test is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::Read,
    net::{TcpListener, TcpStream},
    time::Duration,
};

use socket2::SockRef;
use teardown_integration_tests::{cli, gate, netns::Netns};

/// Sets the terminal's title, clears the screen, breaks the line: 15 bytes, as many as the
/// kernel keeps of a task's name.
const NAME: &[u8] = b"\x1b]0;PWN\x07\x1b[2J\n\"x";
/// How the outputs must show it.
const SHOWN: &str = "\\x1b]0;PWN\\x07\\x1b[2J\\n\"x";

/// Names the calling thread; returns the name the kernel kept.
fn name_this_thread(name: &[u8]) -> Vec<u8> {
    let mut c = name.to_vec();
    c.push(0);
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of which it keeps 15 bytes.
    assert_eq!(unsafe { libc::prctl(libc::PR_SET_NAME, c.as_ptr()) }, 0);
    let mut got = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes, NUL included, into the buffer.
    let rc = unsafe { libc::prctl(libc::PR_GET_NAME, got.as_mut_ptr()) };
    assert_eq!(rc, 0);
    let end = got.iter().position(|&b| b == 0).unwrap_or(got.len());
    got[..end].to_vec()
}

/// No byte that a terminal acts on: ESC, BEL, nor any other C0 control but the newline, nor
/// a C1 control (U+0080..U+009F).
fn assert_inert(what: &str, out: &str) {
    let bad: Vec<char> = out
        .chars()
        .filter(|&c| c.is_control() && c != '\n')
        .collect();
    assert!(
        bad.is_empty(),
        "{what} holds control characters {bad:?}:\n{out}"
    );
}

#[test]
fn a_hostile_process_name_is_shown_escaped() {
    if !gate::can_run(gate::KERNEL) {
        return;
    }
    let ns = Netns::new("td-esc").unwrap();
    let listener = ns.run(|| TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let port = addr.port().to_string();

    // `top --batch` (host-wide: its tracer sees every namespace) and a text trace of the port.
    let (mut top, top_lines) =
        cli::start_top_batch(&["--interval", "0.2", "--no-owners", "--duration", "120s"]).unwrap();
    let first = top_lines.recv_timeout(Duration::from_secs(30)).unwrap();
    assert!(
        !first.starts_with('#'),
        "top's tracer did not attach: {first}"
    );
    let (mut trace, _) = cli::start_tracing_saying(&["trace", "--port", &port]).unwrap();

    // The named thread connects, inside the namespace, and aborts (SO_LINGER 0): a teardown
    // that deviates, so that `top` shows it too.
    let kept = ns.run(|| {
        let kept = name_this_thread(NAME);
        let client = TcpStream::connect(addr).unwrap();
        let (server, _) = listener.accept().unwrap();
        SockRef::from(&client)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(client);
        drop(server);
        kept
    });
    assert_eq!(kept, NAME, "the kernel kept another name");

    // top: the two ends' lines, within a settle time (bounded: 200 lines, 30 s each at most).
    let ours = format!(":{port} ");
    let mut top_out = Vec::new();
    for _ in 0..200 {
        let Ok(l) = top_lines.recv_timeout(Duration::from_secs(30)) else {
            break;
        };
        if l.starts_with("teardown ") && l.contains(&ours) {
            top_out.push(l);
            if top_out.len() == 2 {
                break;
            }
        }
    }
    cli::signal(top.id(), libc::SIGTERM).unwrap();
    assert!(top.wait().unwrap().success());
    let top_text = top_out.join("\n");
    assert_inert("top --batch", &top_text);
    assert!(
        top_out.iter().any(|l| l.contains(&format!(" {SHOWN}("))),
        "no escaped name in top's lines:\n{top_text}"
    );

    // trace: once both ends are written (they settle within seconds), stopped by SIGTERM.
    std::thread::sleep(Duration::from_secs(2));
    cli::signal(trace.id(), libc::SIGTERM).unwrap();
    let mut out = Vec::new();
    trace.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    assert!(trace.wait().unwrap().success());
    assert!(
        !out.iter().any(|&b| b == 0x1b || b == 0x07),
        "ESC or BEL written raw:\n{}",
        String::from_utf8_lossy(&out)
    );
    let out = String::from_utf8(out).unwrap();
    assert_inert("trace", &out);
    // The client's record: its first line names the process, escaped, whole on one line.
    let header = out
        .lines()
        .find(|l| l.contains(&format!("({SHOWN})")))
        .unwrap_or_else(|| panic!("no escaped name in the trace:\n{out}"));
    assert!(header.starts_with('#'), "{header}");
    assert!(header.contains(&format!(" ({SHOWN})  ")), "{header}");
    // No line is the rest of a name cut by its newline.
    assert!(
        !out.lines().any(|l| l.starts_with("\"x")),
        "a record split in two:\n{out}"
    );
}

/// A child process (forked, so that its own /proc/PID/comm carries the name) that names itself
/// and then only waits, holding the descriptors it inherited; killed when dropped.
struct NamedChild(libc::pid_t);

impl NamedChild {
    fn spawn(name: &[u8]) -> NamedChild {
        let mut c = name.to_vec();
        c.push(0);
        // SAFETY: the child calls only prctl and pause, both async-signal-safe, as a child of a
        // multi-threaded process must; it never returns into Rust code.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            // SAFETY: in the child; see above.
            unsafe {
                libc::prctl(libc::PR_SET_NAME, c.as_ptr());
                loop {
                    libc::pause();
                }
            }
        }
        NamedChild(pid)
    }
}

impl Drop for NamedChild {
    fn drop(&mut self) {
        // SAFETY: kill and waitpid on the child forked above, with a valid status pointer.
        unsafe {
            libc::kill(self.0, libc::SIGKILL);
            let mut status = 0;
            libc::waitpid(self.0, &mut status, 0);
        }
    }
}

/// `timewait`'s text report names the owners of leaking CLOSE_WAIT sockets from /proc: a
/// process with a hostile name is shown escaped there too.
#[test]
fn a_hostile_owner_name_is_shown_escaped_by_timewait() {
    if !gate::can_run(gate::KERNEL) {
        return;
    }
    let ns = Netns::new("td-esc-tw").unwrap();
    // A socket left in CLOSE_WAIT (the client closed, the server did not), held by the child.
    let (server, child) = ns.run(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        // Closed before the fork: the child inherits the server's end only.
        drop(client);
        drop(listener);
        let child = NamedChild::spawn(NAME);
        (server, child)
    });
    // Once the child has named itself (the kernel keeps the whole name: 15 bytes).
    let comm = format!("/proc/{}/comm", child.0);
    teardown_integration_tests::wait::wait_until(
        "the child named",
        Duration::from_secs(10),
        || {
            let name = std::fs::read(&comm)?;
            Ok(name.strip_suffix(b"\n").unwrap_or(&name) == NAME)
        },
    )
    .unwrap();
    let mut out = String::new();
    teardown_integration_tests::wait::wait_until(
        "the leak reported with its owners",
        Duration::from_secs(10),
        || {
            let run = std::process::Command::new(cli::teardown_bin()?)
                .args([
                    "timewait",
                    "--netns",
                    ns.name(),
                    "--close-wait-threshold",
                    "0",
                ])
                .output()?;
            assert!(run.status.success(), "{run:?}");
            out = String::from_utf8(run.stdout).unwrap();
            Ok(out.contains(&format!("{}/", child.0)))
        },
    )
    .unwrap_or_else(|e| panic!("{e}:\n{out}"));
    drop(server);
    assert_inert("timewait", &out);
    assert!(
        out.contains(&format!("{}/{SHOWN} (fd ", child.0)),
        "no escaped owner name:\n{out}"
    );
    assert!(
        !out.lines().any(|l| l.starts_with("\"x")),
        "a line split in two:\n{out}"
    );
}
