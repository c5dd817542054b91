//! Commands run as an unprivileged user holding exactly chosen capabilities, for the tests of
//! least privilege.
//!
//! The user (`nobody`) is given its capabilities by `setpriv` (util-linux): inheritable, ambient
//! and the bounding set all hold exactly the set, so nothing else can be gained on exec.

use std::{
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use crate::cli;

/// The value, or a panic that says what failed: these run at a test's set-up.
fn must<T, E: std::fmt::Display>(what: &str, r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// The unprivileged user the commands run as.
pub const NOBODY: &str = "65534";

/// What tracing uses: loading and attaching (required), the timewait timers' address in
/// /proc/kallsyms and a raised priority (each left out with a note when lacking), and the
/// containers' names (other users' /proc entries, the engines' root-only records).
pub const TRACE: &[&str] = &[
    "bpf",
    "perfmon",
    "syslog",
    "sys_nice",
    "sys_ptrace",
    "dac_read_search",
];
/// What the monitor uses: other users' processes (their namespaces), entering namespaces, and
/// the container engines' root-only records (the containers' names).
pub const TIMEWAIT: &[&str] = &["sys_ptrace", "sys_admin", "dac_read_search"];

/// What `top` uses: CAP_SYS_ADMIN enters the other namespaces, and also grants what CAP_BPF
/// and CAP_PERFMON would for its tracer; the rest as for [`TRACE`] and [`TIMEWAIT`].
pub const TOP: &[&str] = &[
    "sys_admin",
    "sys_ptrace",
    "syslog",
    "sys_nice",
    "dac_read_search",
];

/// What `serve` uses, and what its systemd unit and Kubernetes manifest grant (the deploy
/// tests check both against this): `top`'s set, for the same reasons, since it both traces and
/// polls every namespace.
pub const SERVE: &[&str] = TOP;

/// A directory every user can read, with a copy of the binary in it (the one cargo built may
/// sit under a directory `nobody` cannot enter) and one that `nobody` owns for the files the
/// commands write; removed when dropped.
pub struct Nobody {
    dir: PathBuf,
}

impl Nobody {
    pub fn new() -> Nobody {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("teardown-nobody-{}-{n}", std::process::id()));
        must(
            "creating the shared directory",
            std::fs::create_dir_all(&dir),
        );
        let nobody = Nobody { dir };
        let open = std::fs::Permissions::from_mode(0o755);
        must(
            "opening it",
            std::fs::set_permissions(&nobody.dir, open.clone()),
        );
        let bin = nobody.dir.join("teardown");
        let built = must("the teardown binary", cli::teardown_bin());
        must("copying the binary", std::fs::copy(built, &bin));
        must("opening the binary", std::fs::set_permissions(&bin, open));
        let out = nobody.out();
        must("creating nobody's directory", std::fs::create_dir_all(&out));
        let uid: u32 = must("nobody's uid", NOBODY.parse());
        must(
            "giving it to nobody",
            std::os::unix::fs::chown(&out, Some(uid), Some(uid)),
        );
        nobody
    }

    /// Readable by every user, writable by root.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Owned by `nobody`.
    pub fn out(&self) -> PathBuf {
        self.dir.join("out")
    }

    /// `teardown ARGS` as `nobody` with exactly `caps` (names as `setpriv` takes them, without
    /// `cap_`), in [`Nobody::dir`], under umask 000 (so a file created without an explicit mode
    /// would come out world-writable).
    pub fn run(&self, caps: &[&str], args: &[&str]) -> Command {
        let set: String = std::iter::once("-all".to_owned())
            .chain(caps.iter().map(|c| format!("+{c}")))
            .collect::<Vec<_>>()
            .join(",");
        let mut cmd = Command::new("setpriv");
        cmd.args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            &format!("--inh-caps={set}"),
            &format!("--ambient-caps={set}"),
            &format!("--bounding-set={set}"),
        ])
        .arg(self.dir.join("teardown"))
        .args(args)
        .current_dir(&self.dir)
        .env("HOME", &self.dir);
        // SAFETY: umask is async-signal-safe and only changes the child's file creation mask.
        unsafe {
            cmd.pre_exec(|| {
                libc::umask(0);
                Ok(())
            });
        }
        cmd
    }
}

impl Default for Nobody {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Nobody {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn without<'a>(set: &[&'a str], dropped: &str) -> Vec<&'a str> {
    set.iter().copied().filter(|c| *c != dropped).collect()
}
