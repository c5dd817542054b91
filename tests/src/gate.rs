//! The one gate of the tests that need root, the kernel or system tools.
//!
//! libtest has no run-time skip: a test that cannot run here returns early and libtest counts it
//! as passed. So that such a test is still counted, [`can_run`] says why it did not run on
//! stderr and appends a line `BINARY TEST<TAB>REASON` to the file named by [`NOT_RUN_FILE`]
//! (`cargo xtask test` sets it, a fresh file per run, and ends with the count grouped by reason).
//! In CI ([`in_ci`]) a test that cannot run is a failure: the gate panics instead, after
//! writing the same line.

use std::{io::Write, path::Path, process::Command};

/// The variable naming the file where tests that did not run are listed, one a line.
pub const NOT_RUN_FILE: &str = "TEARDOWN_TESTS_NOT_RUN";

/// Whether this run is CI, where every test must run.
///
/// `CI=true` is what `.ci/run` and the common CI services set. `CI=1` counts too: the variable
/// is only read to forbid skipping, so taking a machine for CI by mistake makes a test fail
/// loudly, while missing a CI that writes `1` would let its tests pass without running.
/// `xtask` (`cargo xtask test`) reads the variable with the same rule.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// What a test needs of the host. Every test behind the gate needs root.
#[derive(Clone, Copy, Debug)]
pub struct Need {
    /// The kernel's BTF (`/sys/kernel/btf/vmlinux`): the eBPF programs are loaded.
    btf: bool,
    /// Commands that must run (`ip`: network namespaces; `nft`: the lab's drop rules).
    tools: &'static [&'static str],
}

/// Network namespaces and sock_diag: root and iproute2 (`ip`, `ss`).
pub const NETNS: Need = Need {
    btf: false,
    tools: &["ip", "ss"],
};

/// The real eBPF programs: root and BTF; iproute2 for the tests that also build namespaces or
/// ask `ss`.
pub const KERNEL: Need = Need {
    btf: true,
    tools: &["ip", "ss"],
};

/// The scenario lab: what [`KERNEL`] needs, and `nft`.
pub const LAB: Need = Need {
    btf: true,
    tools: &["ip", "ss", "nft"],
};

/// Real containers: root, BTF (the trace names them), podman with runc, busybox for the image,
/// nsenter to ask `ss` inside a container.
pub const CONTAINERS: Need = Need {
    btf: true,
    tools: &["ip", "ss", "podman", "runc", "busybox", "nsenter"],
};

/// A real Prometheus server scraping the agent: what [`KERNEL`] needs, and `prometheus`.
pub const PROMETHEUS: Need = Need {
    btf: true,
    tools: &["ip", "ss", "prometheus"],
};

/// Debian's chromium, headless, opening the pages and drawings `teardown` writes (no kernel).
pub const CHROMIUM: Need = Need {
    btf: false,
    tools: &["chromium"],
};

/// The scenario lab's live traces opened in chromium: what the lab needs, and `chromium`.
pub const LAB_CHROMIUM: Need = Need {
    btf: true,
    tools: &["ip", "ss", "nft", "chromium"],
};

/// systemd's own check of a unit file (`systemd-analyze verify`, which works offline).
pub const SYSTEMD_ANALYZE: Need = Need {
    btf: false,
    tools: &["systemd-analyze"],
};

/// Commands run as an unprivileged user with chosen capabilities: the kernel programs, network
/// namespaces, `setpriv` and `unshare` (util-linux).
pub const PRIVILEGE: Need = Need {
    btf: true,
    tools: &["ip", "ss", "setpriv", "unshare"],
};

/// Why this host cannot give `need`, if it cannot: the first missing piece.
pub fn missing(need: Need) -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (run `cargo xtask test` as root, or with sudo)".into());
    }
    if need.btf && !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Some("the kernel has no BTF (/sys/kernel/btf/vmlinux)".into());
    }
    need.tools
        .iter()
        .find(|tool| !have(tool))
        .map(|tool| format!("`{tool}` is not installed (`cargo xtask test` installs it)"))
}

/// Whether `tool` runs: `ip -V`, `ss -V`, `nft -V` print their version, podman and runc
/// answer `--version` only, busybox `--help`.
fn have(tool: &str) -> bool {
    ["-V", "--version", "--help"].iter().any(|flag| {
        Command::new(tool)
            .arg(flag)
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// The running test's name: libtest runs each test on a thread named after it
/// (`ipv4::client_closes_first`).
fn current_test() -> String {
    std::thread::current()
        .name()
        .unwrap_or("(unnamed thread)")
        .to_owned()
}

/// True when the running test can go on. When it cannot: in CI a panic; elsewhere the reason on
/// stderr, the test listed in [`NOT_RUN_FILE`], and false (the test returns at once).
#[must_use]
pub fn can_run(need: Need) -> bool {
    can_run_as(&current_test(), need)
}

/// [`can_run`] for `test` (a scenario run by hand, outside libtest).
#[must_use]
pub fn can_run_as(test: &str, need: Need) -> bool {
    let Some(why) = missing(need) else {
        return true;
    };
    record_not_run(test, &why);
    if in_ci() {
        panic!("{test}: cannot run, and CI forbids skipping: {why}");
    }
    // Straight to the stderr file: libtest captures `eprintln!` of a passing test, and this
    // line is meant to be seen.
    let _ = writeln!(std::io::stderr(), "DID NOT RUN {test}: {why}");
    false
}

/// The test binary's name without cargo's hash (`lifecycle-0123abcd` -> `lifecycle`).
fn binary() -> String {
    let exe = std::env::current_exe().ok();
    let stem = exe
        .as_deref()
        .and_then(Path::file_stem)
        .map_or_else(|| "?".into(), |s| s.to_string_lossy().into_owned());
    match stem.rsplit_once('-') {
        Some((name, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => name.to_owned(),
        _ => stem,
    }
}

/// Appends `BINARY test<TAB>why` to the file of [`NOT_RUN_FILE`], when it is set. One `write` of an
/// `O_APPEND` file: lines of tests running at once (threads or processes) do not interleave.
fn record_not_run(test: &str, why: &str) {
    let Some(path) = std::env::var_os(NOT_RUN_FILE) else {
        return;
    };
    let line = format!("{} {test}\t{why}\n", binary());
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        // The count would be wrong: say so where the test's output is.
        eprintln!(
            "{test}: cannot list it in {}: {e}",
            Path::new(&path).display()
        );
    }
}
