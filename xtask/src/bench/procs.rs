//! Child processes of the benchmark: started, measured (CPU time and peak RSS from `wait4`'s
//! rusage, live figures from /proc) and always reaped, on every path: a `Proc` that is dropped
//! unreaped is killed.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

/// How a child ended.
#[derive(Clone, Copy, Debug, Default)]
pub struct Exit {
    /// Raw wait status.
    pub status: i32,
    /// User + system CPU seconds of the child.
    pub cpu_s: f64,
    /// Peak resident set size (KiB), ru_maxrss.
    pub maxrss_kib: u64,
}

impl Exit {
    pub fn success(&self) -> bool {
        libc::WIFEXITED(self.status) && libc::WEXITSTATUS(self.status) == 0
    }
    pub fn describe(&self) -> String {
        if libc::WIFEXITED(self.status) {
            format!("exit status {}", libc::WEXITSTATUS(self.status))
        } else if libc::WIFSIGNALED(self.status) {
            format!("killed by signal {}", libc::WTERMSIG(self.status))
        } else {
            format!("wait status {:#x}", self.status)
        }
    }
}

pub struct Proc {
    child: Child,
    pub name: String,
    done: Option<Exit>,
}

fn tv_s(tv: libc::timeval) -> f64 {
    tv.tv_sec as f64 + tv.tv_usec as f64 * 1e-6
}

impl Proc {
    pub fn spawn(cmd: &mut Command, name: &str) -> Result<Proc> {
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name} ({cmd:?})"))?;
        Ok(Proc {
            child,
            name: name.to_owned(),
            done: None,
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    fn wait4(&mut self, flags: libc::c_int) -> Result<Option<Exit>> {
        if let Some(e) = self.done {
            return Ok(Some(e));
        }
        let mut status = 0;
        // SAFETY: rusage is plain old data; wait4 fills it.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: waits for our own child; pointers are to locals.
        let rc = unsafe { libc::wait4(self.pid(), &mut status, flags, &mut ru) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("wait4 for {}", self.name));
        }
        if rc == 0 {
            return Ok(None);
        }
        let e = Exit {
            status,
            cpu_s: tv_s(ru.ru_utime) + tv_s(ru.ru_stime),
            maxrss_kib: ru.ru_maxrss.max(0) as u64,
        };
        self.done = Some(e);
        Ok(Some(e))
    }

    /// Reaped already, or exited now?
    pub fn try_exit(&mut self) -> Result<Option<Exit>> {
        self.wait4(libc::WNOHANG)
    }

    pub fn signal(&self, sig: libc::c_int) {
        if self.done.is_none() {
            // SAFETY: kill(2) on our own, not yet reaped, child.
            unsafe { libc::kill(self.pid(), sig) };
        }
    }

    /// Waits up to `timeout` for the child to end; then kills it. Always reaps.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Exit> {
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            if let Some(e) = self.try_exit()? {
                return Ok(e);
            }
            thread::sleep(Duration::from_millis(10));
        }
        eprintln!(
            "bench: {} did not stop within {:.0} s: killing it",
            self.name,
            timeout.as_secs_f64()
        );
        self.signal(libc::SIGKILL);
        self.wait4(0)?
            .with_context(|| format!("{} could not be reaped", self.name))
    }

    /// Sends `sig`, then waits (bounded) for the end.
    pub fn stop(&mut self, sig: libc::c_int, timeout: Duration) -> Result<Exit> {
        self.signal(sig);
        self.wait_timeout(timeout)
    }

    /// User + system CPU seconds so far, from /proc/PID/stat (clock-tick resolution).
    pub fn cpu_now(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).ok()?;
        // Fields after the command name (which may hold spaces) start after the last ')'.
        let rest = stat.rsplit_once(')')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        // rest[0] is field 3 (state); utime is field 14, stime 15.
        let utime: f64 = f.get(11)?.parse().ok()?;
        let stime: f64 = f.get(12)?.parse().ok()?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        Some((utime + stime) / hz)
    }

    /// A `kB` figure of /proc/PID/status (VmRSS, VmHWM, RssAnon...).
    pub fn status_kib(&self, field: &str) -> Option<u64> {
        status_kib(self.pid(), field)
    }
}

pub fn status_kib(pid: i32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.done.is_none() {
            self.signal(libc::SIGKILL);
            let _ = self.wait4(0);
        }
    }
}

/// Waits (bounded) until the file at `path` contains `needle`; fails early if `p` exits.
/// Waits until `path` holds `needle`; when the process ends first, the error quotes the end of
/// its `stderr` file.
pub fn wait_for_text(
    p: &mut Proc,
    path: &Path,
    stderr: &Path,
    needle: &str,
    timeout: Duration,
) -> Result<()> {
    let until = Instant::now() + timeout;
    while Instant::now() < until {
        if std::fs::read_to_string(path).is_ok_and(|s| s.contains(needle)) {
            return Ok(());
        }
        if let Some(e) = p.try_exit()? {
            let tail = std::fs::read_to_string(stderr).unwrap_or_default();
            bail!(
                "{} ended before it was ready ({}): {}",
                p.name,
                e.describe(),
                last_lines(&tail, 5)
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
    bail!(
        "{} was not ready after {:.0} s (no {needle:?} in {})",
        p.name,
        timeout.as_secs_f64(),
        path.display()
    )
}

pub fn last_lines(s: &str, n: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(n)..].join(" | ")
}

/// The churn generator (`xtask churn --handshake --json`), spoken to line by line.
pub struct Churner {
    pub proc: Proc,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Churner {
    pub fn start(exe: &Path, args: &[String]) -> Result<Churner> {
        let mut cmd = Command::new(exe);
        cmd.args(["churn", "--handshake", "--json"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut proc = Proc::spawn(&mut cmd, "the churn generator")?;
        let stdin = proc.child_mut().stdin.take();
        let out = proc
            .child_mut()
            .stdout
            .take()
            .context("no stdout of the churn generator")?;
        let (tx, rx) = mpsc::channel();
        thread::Builder::new()
            .name("churn-stdout".into())
            .spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })
            .context("cannot start a reader thread")?;
        Ok(Churner {
            proc,
            stdin,
            lines: rx,
        })
    }

    /// The next JSON line, waiting at most `timeout`.
    pub fn next(&mut self, timeout: Duration) -> Result<serde_json::Value> {
        let line = self.lines.recv_timeout(timeout).map_err(|_| {
            anyhow::anyhow!(
                "the churn generator said nothing for {:.0} s, or stopped",
                timeout.as_secs_f64()
            )
        })?;
        serde_json::from_str(&line).with_context(|| format!("the churn generator printed {line:?}"))
    }

    /// The next JSON line if one comes within `timeout`; None if none came yet. An error when
    /// the generator stopped without one.
    pub fn try_next(&mut self, timeout: Duration) -> Result<Option<serde_json::Value>> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => serde_json::from_str(&line)
                .map(Some)
                .with_context(|| format!("the churn generator printed {line:?}")),
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(None),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                bail!("the churn generator stopped without a result")
            }
        }
    }

    pub fn go(&mut self) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .context("the churn generator's stdin is closed")?;
        stdin.write_all(b"go\n")?;
        stdin.flush()?;
        Ok(())
    }

    /// Waits for the end (it exits by itself after its result); kills it after `timeout`.
    pub fn finish(&mut self, timeout: Duration) -> Result<Exit> {
        self.stdin.take();
        self.proc.wait_timeout(timeout)
    }
}

/// A `kB` figure of /proc/meminfo.
pub fn meminfo_kib(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Bytes free to an unprivileged writer on the filesystem holding `path`.
pub fn disk_avail_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs is plain old data; zeroed is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a NUL-terminated path; st is ours to fill.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// A counter of the `Tcp:` lines of /proc/PID/net/snmp: the figures of that process's network
/// namespace (`ActiveOpens`: connect()s that got to SYN_SENT).
pub fn tcp_counter(pid: i32, name: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/net/snmp")).ok()?;
    snmp_counter(&s, "Tcp:", name)
}

/// In /proc/net/snmp's text: the value under `name` in the `group` (a header line of names,
/// then one of values).
pub fn snmp_counter(text: &str, group: &str, name: &str) -> Option<u64> {
    let mut lines = text.lines().filter(|l| l.starts_with(group));
    let names = lines.next()?;
    let values = lines.next()?;
    let i = names.split_whitespace().position(|w| w == name)?;
    values.split_whitespace().nth(i)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_an_snmp_counter() {
        let t = "Ip: Forwarding DefaultTTL\nIp: 1 64\nTcp: RtoAlgorithm RtoMin ActiveOpens \
                 PassiveOpens\nTcp: 1 200 17326 17219\nUdp: InDatagrams\nUdp: 5\n";
        assert_eq!(snmp_counter(t, "Tcp:", "ActiveOpens"), Some(17326));
        assert_eq!(snmp_counter(t, "Tcp:", "PassiveOpens"), Some(17219));
        assert_eq!(snmp_counter(t, "Tcp:", "MaxConn"), None);
        assert_eq!(snmp_counter(t, "Icmp:", "InMsgs"), None);
    }
}
