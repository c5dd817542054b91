//! A network-namespace harness for root scenario tests.
//!
//! [`Netns::new`] creates a uniquely named namespace with `ip netns add` and brings `lo` up; it
//! is deleted when the value is dropped, also when the test panics. Work runs inside it on a
//! helper thread that entered it with `setns(CLONE_NEWNET)` ([`Netns::run`]), so sockets,
//! sock_diag and `/proc/sys/net` all see that namespace while the test thread stays where it
//! is. Sysctls are set inside the namespace only ([`Netns::set_sysctl`]). [`veth_pair`] links
//! two namespaces.

use std::io;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Runs a command, failing with its stderr; returns its stdout.
pub(crate) fn run_cmd(cmd: &mut Command) -> io::Result<String> {
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{:?} failed: {}",
            cmd,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A network namespace that exists as long as this value does.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `PREFIX-PID-N` with `lo` up.
    pub fn new(prefix: &str) -> io::Result<Self> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}-{}-{n}", std::process::id());
        run_cmd(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Self { name };
        run_cmd(Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "up"]))?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The inode of the namespace (what `trace` prints as `netns`).
    pub fn inode(&self) -> u32 {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(self.path())
            .unwrap_or_else(|e| panic!("namespace {}: {e}", self.name));
        match u32::try_from(meta.ino()) {
            Ok(inode) => inode,
            Err(_) => panic!(
                "namespace {}: inode {} beyond 32 bits",
                self.name,
                meta.ino()
            ),
        }
    }

    /// `/var/run/netns/NAME`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// Runs `f` on a thread inside the namespace and returns its result (a panic in `f` is
    /// propagated).
    pub fn run<F, T>(&self, f: F) -> T
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        match teardown::sock_diag::netns::run_in(&self.path(), f) {
            Ok(v) => v,
            Err(e) => panic!("entering {}: {e}", self.name),
        }
    }

    /// Spawns a long-running thread inside the namespace.
    pub fn spawn<F, T>(&self, f: F) -> std::thread::JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let path = self.path();
        std::thread::spawn(move || {
            if let Err(e) = teardown::sock_diag::netns::enter(&path) {
                panic!("entering {}: {e}", path.display());
            }
            f()
        })
    }

    /// Sets a sysctl (`net.ipv4.ip_local_port_range`) inside the namespace only.
    pub fn set_sysctl(&self, key: &str, value: &str) -> io::Result<()> {
        let path = sysctl_path(key);
        self.run(|| std::fs::write(&path, value))
    }

    /// Reads a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str) -> io::Result<String> {
        let path = sysctl_path(key);
        self.run(|| std::fs::read_to_string(&path).map(|s| s.trim().to_string()))
    }

    /// Runs a command inside the namespace (`ip netns exec NAME ...`) and returns its stdout.
    pub fn exec(&self, args: &[&str]) -> io::Result<String> {
        run_cmd(
            Command::new("ip")
                .args(["netns", "exec", &self.name])
                .args(args),
        )
    }

    /// `ss ARGS` inside the namespace, header line removed.
    pub fn ss(&self, args: &[&str]) -> io::Result<Vec<String>> {
        let mut a = vec!["ss", "-H"];
        a.extend_from_slice(args);
        Ok(self
            .exec(&a)?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn sysctl_path(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(key.replace('.', "/"))
}

/// Creates a veth pair between two namespaces, with addresses (`10.200.0.1/24`) and links up.
/// Returns the interface names (in `a`, in `b`). The pair goes away with either namespace.
pub fn veth_pair(a: &Netns, a_addr: &str, b: &Netns, b_addr: &str) -> io::Result<(String, String)> {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let (ia, ib) = (format!("vta{n}"), format!("vtb{n}"));
    run_cmd(Command::new("ip").args([
        "link",
        "add",
        &ia,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        &ib,
        "netns",
        b.name(),
    ]))?;
    for (ns, dev, addr) in [(a, &ia, a_addr), (b, &ib, b_addr)] {
        run_cmd(Command::new("ip").args(["-n", ns.name(), "addr", "add", addr, "dev", dev]))?;
        run_cmd(Command::new("ip").args(["-n", ns.name(), "link", "set", dev, "up"]))?;
    }
    Ok((ia, ib))
}
