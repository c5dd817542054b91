//! Gate for tests that need root and the kernel: under `CI=true` they must run, so a missing
//! privilege or BTF is a failure there; elsewhere the test is skipped with a clear message.

use std::path::Path;

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Why this host cannot run the kernel tests, if it cannot.
fn missing() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root (run `cargo xtask test` as root, or with sudo)".into());
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Some("the kernel has no BTF (/sys/kernel/btf/vmlinux)".into());
    }
    None
}

/// Returns true when the test may go on. Panics under CI when it cannot.
#[must_use]
pub fn available(test: &str) -> bool {
    match missing() {
        None => true,
        Some(why) if in_ci() => panic!("{test}: kernel test cannot run under CI=true: {why}"),
        Some(why) => {
            eprintln!("SKIPPED {test}: {why}");
            false
        }
    }
}
