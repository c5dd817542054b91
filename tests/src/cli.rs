//! The `teardown` binary, run as a user would, for tests of the command line's behaviour.

use std::{
    io::{self, BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// The `teardown` binary cargo built next to the running test. `cargo test --workspace` (what
/// `cargo xtask test` runs) builds it; a test run of this package alone does not.
pub fn teardown_bin() -> io::Result<PathBuf> {
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

/// Starts `teardown` with `args` and returns once it says it is tracing (within 30 s).
/// Its stdout is piped; its stderr is read up to that line, then drained on a thread so that
/// the agent can still write its summary there.
pub fn start_tracing(args: &[&str]) -> io::Result<Child> {
    start_tracing_saying(args).map(|(child, _)| child)
}

/// [`start_tracing`], and the lines teardown wrote on stderr before the "tracing" one.
pub fn start_tracing_saying(args: &[&str]) -> io::Result<(Child, Vec<String>)> {
    let mut child = Command::new(teardown_bin()?)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| io::Error::other("no stderr"))?;
    let mut stderr = BufReader::new(stderr);
    let mut line = String::new();
    let mut before = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        line.clear();
        if stderr.read_line(&mut line)? == 0 {
            return Err(io::Error::other(format!(
                "teardown exited before tracing: {}",
                before.join(" | ")
            )));
        }
        if line.starts_with("tracing") {
            break;
        }
        before.push(line.trim_end().to_owned());
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err(io::Error::other("teardown did not start tracing in 30 s"));
        }
    }
    std::thread::spawn(move || io::copy(&mut stderr, &mut io::sink()));
    Ok((child, before))
}
