//! Checks made before loading, so that a missing privilege or an old kernel gets a sentence that
//! says what to do instead of an errno from deep inside the loader.

use super::files;

use super::caps::{self, CapSet, Capability};

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "tracing needs {} (Linux 5.8+; or CAP_SYS_ADMIN, which covers both), and this process \
         lacks {}: {}",
        caps::list(&caps::TRACING),
        caps::list(lacking),
        caps::grant_hint(&caps::TRACING_FULL)
    )]
    NotPrivileged { lacking: Vec<Capability> },
    #[error(
        "this kernel ({release}) is too old: teardown needs Linux 5.8 or newer (BPF ring buffer). \
         `teardown timewait` still works from sock_diag"
    )]
    KernelTooOld { release: String },
}

/// CAP_BPF with CAP_PERFMON, or CAP_SYS_ADMIN (which covers both, and is what kernels before
/// 5.8 want).
pub fn check_privileges() -> Result<(), PreflightError> {
    let held = CapSet::effective();
    let lacking = held.lacking(&caps::TRACING);
    if held.has(Capability::SysAdmin) || lacking.is_empty() {
        Ok(())
    } else {
        Err(PreflightError::NotPrivileged { lacking })
    }
}

/// Parses "6.18.44-foo" into (6, 18).
fn major_minor(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

pub fn check_kernel_version() -> Result<(), PreflightError> {
    let release =
        files::read_to_string("/proc/sys/kernel/osrelease", files::WORD).unwrap_or_default();
    let release = release.trim().to_owned();
    match major_minor(&release) {
        Some(v) if v < (5, 8) => Err(PreflightError::KernelTooOld { release }),
        // An unreadable version is not a reason to refuse: the loader will say what fails.
        _ => Ok(()),
    }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; a 16 MiB ring buffer needs more than
/// the usual default. Best effort: newer kernels ignore the limit.
pub fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid pointer to an initialised rlimit.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
    if rc != 0 {
        log::debug!(
            "could not raise RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_releases() {
        assert_eq!(major_minor("6.18.44-fc-v657"), Some((6, 18)));
        assert_eq!(major_minor("5.4.0-150-generic"), Some((5, 4)));
        assert_eq!(major_minor("garbage"), None);
    }
}
