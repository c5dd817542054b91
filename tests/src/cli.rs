//! The `teardown` binary, run as a user would, for tests of the command line's behaviour.

use std::{
    io::{self, BufRead, BufReader},
    ops::{Deref, DerefMut},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

/// The variable that names the `teardown` binary to run instead of the one cargo built: the
/// kernel matrix runs these tests in virtual machines against the release binary.
pub const TEARDOWN_BIN: &str = "TEARDOWN_BIN";

/// The `teardown` binary to run: the one [`TEARDOWN_BIN`] names, else the one cargo built next to
/// the running test. `cargo test --workspace` (what `cargo xtask test` runs) builds it; a test
/// run of this package alone does not.
pub fn teardown_bin() -> io::Result<PathBuf> {
    if let Some(bin) = std::env::var_os(TEARDOWN_BIN).filter(|b| !b.is_empty()) {
        let bin = PathBuf::from(bin);
        if !bin.exists() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{TEARDOWN_BIN}={} does not exist", bin.display()),
            ));
        }
        return Ok(bin);
    }
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("teardown"))
        .ok_or_else(|| io::Error::other("no directory above the test binary"))?;
    if !bin.exists() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "{} is not built: run `cargo xtask test`, or `cargo build -p teardown-user` first",
                bin.display()
            ),
        ));
    }
    Ok(bin)
}

/// A running `teardown`, killed (and reaped) when dropped unless it has ended: a test that
/// fails half-way leaves no root tracer behind.
pub struct Running(Child);

impl Running {
    pub fn new(child: Child) -> Running {
        Running(child)
    }

    /// Waits for a `--format jsonl` run to end by itself (its `--duration`), and returns its
    /// stdout and the parsed lines; an error if it failed or wrote anything but JSON.
    pub fn jsonl_output(mut self) -> io::Result<(String, Vec<serde_json::Value>)> {
        let mut out = String::new();
        if let Some(mut stdout) = self.0.stdout.take() {
            io::Read::read_to_string(&mut stdout, &mut out)?;
        }
        let status = self.0.wait()?;
        if !status.success() {
            return Err(io::Error::other(format!(
                "teardown ended with {status}: {out}"
            )));
        }
        let lines = out
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()
            .map_err(|e| io::Error::other(format!("not JSON Lines ({e}): {out}")))?;
        Ok((out, lines))
    }
}

/// Starts `teardown top --batch` with `args` and its output lines as a channel, read on a
/// thread (the channel closes when teardown does).
pub fn start_top_batch(args: &[&str]) -> io::Result<(Running, mpsc::Receiver<String>)> {
    let mut child = Running::new(
        Command::new(teardown_bin()?)
            .args(["top", "--batch"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| io::Error::other("no stdout"))?;
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    Ok((child, lines))
}

impl Deref for Running {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// How long teardown may take to load and attach.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// `teardown trace --format jsonl --port PORT` and `extra` arguments, started as
/// [`start_tracing_saying`] starts it.
pub fn start_trace_jsonl(port: u16, extra: &[&str]) -> io::Result<(Running, Vec<String>)> {
    let port = port.to_string();
    let mut args = vec!["trace", "--format", "jsonl", "--port", &port];
    args.extend_from_slice(extra);
    start_tracing_saying(&args)
}

/// Starts `teardown` with `args` and returns once it says it is tracing (within 30 s), with the
/// lines it wrote on stderr before that one. Its stdout is piped; its stderr is read on a
/// thread, up to that line and then drained, so that the agent can still write its summary
/// there.
pub fn start_tracing_saying(args: &[&str]) -> io::Result<(Running, Vec<String>)> {
    let mut child = Running::new(
        Command::new(teardown_bin()?)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?,
    );
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| io::Error::other("no stderr"))?;
    let (tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            // Once the test stopped listening, the rest is only drained.
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + START_TIMEOUT;
    let mut before = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.starts_with("tracing") => return Ok((child, before)),
            Ok(line) => before.push(line),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(io::Error::other(format!(
                    "teardown exited before tracing: {}",
                    before.join(" | ")
                )))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(io::Error::other(format!(
                    "teardown did not start tracing in {START_TIMEOUT:?}: {}",
                    before.join(" | ")
                )))
            }
        }
    }
}

/// Sends `signal` to the process `pid` (a child the test started).
pub fn signal(pid: u32, signal: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(io::Error::other)?;
    // SAFETY: kill takes any pid and signal number and only reports errors through its result.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The connection ends a running agent's metrics endpoint at `addr` (`host:port`) counted so
/// far: the sum of `teardown_connections_total`.
pub fn connections_counted(addr: &str) -> io::Result<f64> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("teardown_connections_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}
