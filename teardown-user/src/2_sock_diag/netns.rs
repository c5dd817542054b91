//! Running the poller inside another network namespace.
//!
//! sock_diag and `/proc/sys/net` answer for the network namespace of the calling *thread*, so
//! observing a namespace means doing the work on a thread that entered it with `setns(2)`.
//! [`run_in`] does that on a scoped helper thread, leaving the caller's namespace alone.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::DiagError;
use crate::kernel::caps::{self, Capability};

/// The path of a namespace named by `ip netns add NAME`, or `name` itself if it is a path
/// (`/proc/PID/ns/net` works too).
pub fn path_for(name: &str) -> PathBuf {
    if name.contains('/') {
        PathBuf::from(name)
    } else {
        Path::new("/var/run/netns").join(name)
    }
}

/// Moves the calling thread into the network namespace at `path` (needs CAP_SYS_ADMIN).
pub fn enter(path: &Path) -> Result<(), DiagError> {
    let failed = |e: std::io::Error, needed: Capability| {
        let why = match e.kind() {
            std::io::ErrorKind::PermissionDenied => caps::lacking_note(needed),
            _ => None,
        };
        DiagError::Netns(
            path.display().to_string(),
            why.unwrap_or_else(|| e.to_string()),
        )
    };
    // Opening another user's /proc/PID/ns/net is a ptrace access; setns wants CAP_SYS_ADMIN.
    let f = File::open(path).map_err(|e| failed(e, Capability::SysPtrace))?;
    enter_file(&f).map_err(|e| failed(e, Capability::SysAdmin))
}

/// Moves the calling thread into the network namespace of an open nsfs file, such as one of
/// `/proc/thread-self/ns/net` kept to come back to.
pub fn enter_file(f: &File) -> std::io::Result<()> {
    // SAFETY: setns on a valid, open descriptor; it only changes this thread's namespace.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` on a helper thread that entered the namespace at `path`, and returns its result.
/// A panic in `f` is propagated to the caller.
pub fn run_in<F, T>(path: &Path, f: F) -> Result<T, DiagError>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            enter(path)?;
            Ok(f())
        });
        match h.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// A namespace inode of 0: not known (no BTF, or a recording made before namespaces were
/// traced). Such a field is left out of JSON.
pub(crate) fn is_unknown(netns: &u32) -> bool {
    *netns == 0
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths() {
        assert_eq!(path_for("x"), PathBuf::from("/var/run/netns/x"));
        assert_eq!(path_for("/proc/1/ns/net"), PathBuf::from("/proc/1/ns/net"));
    }

    #[test]
    fn missing_namespace_is_an_error() {
        let r = run_in(Path::new("/var/run/netns/does-not-exist-teardown"), || 1);
        assert!(matches!(r, Err(DiagError::Netns(_, _))));
    }
}
