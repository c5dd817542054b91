//! `teardown top`'s full-screen view, run on a pseudo-terminal as on an operator's: whether it
//! ends by a signal or by a panic, it gives the terminal back as it found it (the alternate
//! screen left, the cursor shown, raw mode off).

// A failed unwrap in a test is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::Read,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    os::unix::process::{CommandExt, ExitStatusExt},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use teardown_integration_tests::{cli, gate, wait::wait_until};

/// What the view writes to enter and leave the alternate screen, and to show the cursor.
const ENTER_ALTERNATE: &str = "\x1b[?1049h";
const LEAVE_ALTERNATE: &str = "\x1b[?1049l";
const SHOW_CURSOR: &str = "\x1b[?25h";

/// A pseudo-terminal of 120 x 36: (master, slave), both close-on-exec (the child gets the
/// slave as its standard streams, which clears that flag on them).
fn open_pty() -> (OwnedFd, OwnedFd) {
    let (mut master, mut slave) = (-1, -1);
    let size = libc::winsize {
        ws_row: 36,
        ws_col: 120,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: two ints for the fds, no name buffer, default termios, a valid winsize.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    for fd in [master, slave] {
        // SAFETY: fd was just opened by openpty; F_SETFD only sets its flags.
        let rc = unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        assert_eq!(rc, 0);
    }
    // SAFETY: both fds were just opened by openpty and are owned here.
    unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

/// The terminal's line discipline flags (of the pair, read through the master).
fn local_flags(master: &OwnedFd) -> libc::tcflag_t {
    // SAFETY: termios is plain data, for which all zeroes is a valid value.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: a valid fd and a termios for tcgetattr to fill.
    assert_eq!(unsafe { libc::tcgetattr(master.as_raw_fd(), &mut t) }, 0);
    t.c_lflag
}

/// `teardown top` on a pseudo-terminal of its own (its controlling terminal), `env` added to
/// its environment; everything written to the terminal is collected, stderr is piped.
struct OnTerminal {
    child: cli::Running,
    master: OwnedFd,
    screen: Arc<Mutex<Vec<u8>>>,
    reader: std::thread::JoinHandle<()>,
}

impl OnTerminal {
    fn start(env: &[(&str, &str)]) -> OnTerminal {
        let (master, slave) = open_pty();
        let mut cmd = Command::new(cli::teardown_bin().unwrap());
        cmd.args([
            "top",
            "--interval",
            "0.2",
            "--no-owners",
            "--duration",
            "120s",
        ])
        .env("TERM", "xterm")
        .envs(env.iter().copied())
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(Stdio::piped());
        // SAFETY: between fork and exec only async-signal-safe calls: setsid, and ioctl to make
        // the terminal on stdin the new session's controlling terminal.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cli::Running::new(cmd.spawn().unwrap());
        // Only the child holds the slave now: once it exits, reading the master ends (EIO).
        drop(slave);
        let screen = Arc::new(Mutex::new(Vec::new()));
        let reader = {
            let screen = Arc::clone(&screen);
            let mut m = std::fs::File::from(master.try_clone().unwrap());
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = m.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    screen.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            })
        };
        OnTerminal {
            child,
            master,
            screen,
            reader,
        }
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.screen.lock().unwrap()).into_owned()
    }

    /// Waits for the view to be drawn (the tracer loads first: seconds).
    fn wait_for_the_view(&self) {
        wait_until("the view drawn", Duration::from_secs(60), || {
            let s = self.screen();
            Ok(s.contains(ENTER_ALTERNATE) && s.contains("teardown top"))
        })
        .unwrap_or_else(|e| panic!("{e}: {:?}", self.screen()));
    }

    /// Waits (60 s at most) for the exit; returns the status, the terminal's output and
    /// stderr.
    fn wait(mut self) -> (std::process::ExitStatus, String, String, OwnedFd) {
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "top did not exit within 60 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut stderr = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        let OnTerminal {
            master,
            screen,
            reader,
            ..
        } = self;
        reader.join().unwrap();
        let screen = String::from_utf8_lossy(&screen.lock().unwrap()).into_owned();
        (status, screen, stderr, master)
    }
}

/// After the view was entered, it was left and the cursor shown again; raw mode is off.
fn assert_restored(screen: &str, master: &OwnedFd) {
    let entered = screen
        .rfind(ENTER_ALTERNATE)
        .unwrap_or_else(|| panic!("the view never opened: {screen:?}"));
    let after = &screen[entered..];
    let left = after
        .find(LEAVE_ALTERNATE)
        .unwrap_or_else(|| panic!("the alternate screen was not left: {:?}", tail(after)));
    assert!(
        after[left..].contains(SHOW_CURSOR),
        "the cursor was not shown again: {:?}",
        tail(after)
    );
    let flags = local_flags(master);
    assert!(
        flags & libc::ICANON != 0 && flags & libc::ECHO != 0,
        "the terminal was left in raw mode (c_lflag {flags:#o})"
    );
}

fn tail(s: &str) -> &str {
    let mut at = s.len().saturating_sub(400);
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    &s[at..]
}

fn stops_cleanly_on(signal: libc::c_int) {
    let view = OnTerminal::start(&[]);
    view.wait_for_the_view();
    // Raw mode is on while the view is open.
    assert_eq!(
        local_flags(&view.master) & libc::ICANON,
        0,
        "not in raw mode"
    );
    cli::signal(view.child.id(), signal).unwrap();
    let (status, screen, stderr, master) = view.wait();
    assert!(status.success(), "exit status {status:?}: {stderr}");
    assert_restored(&screen, &master);
}

#[test]
fn sigterm_while_the_view_is_open_restores_the_terminal() {
    if gate::can_run(gate::KERNEL) {
        stops_cleanly_on(libc::SIGTERM);
    }
}

#[test]
fn sigint_while_the_view_is_open_restores_the_terminal() {
    if gate::can_run(gate::KERNEL) {
        stops_cleanly_on(libc::SIGINT);
    }
}

/// A panic in the view (made on purpose by the variable for tests) restores the terminal
/// before its message is printed on stderr.
#[test]
fn a_panic_in_the_view_restores_the_terminal() {
    if !gate::can_run(gate::KERNEL) {
        return;
    }
    let view = OnTerminal::start(&[("TEARDOWN_TEST_VIEW_PANIC", "1")]);
    let (status, screen, stderr, master) = view.wait();
    // Rust's exit status for a panic in the main thread.
    assert_eq!(
        status.code(),
        Some(101),
        "{status:?} (signal {:?}): {stderr}",
        status.signal()
    );
    assert!(
        stderr.contains("panicked") && stderr.contains("TEARDOWN_TEST_VIEW_PANIC"),
        "{stderr}"
    );
    assert_restored(&screen, &master);
}
