//! The kernel module that answers sock_diag's TCP dumps.
//!
//! A kernel that builds `inet_diag` and `tcp_diag` as modules (Debian's cloud kernels do)
//! refuses TCP dumps with ENOENT until they are loaded. The kernel asks for them itself where it
//! can (`request_module`, which is what `ss` relies on); where it cannot, a refused dump makes
//! the poller run `modprobe tcp_diag` (it brings `inet_diag` along: `inet_diag` alone answers no
//! TCP dump) once per process, and dump again once. If that does not help, the error says what
//! to do.

use std::{
    process::{Command, Stdio},
    sync::OnceLock,
};

use super::DiagError;

/// The module the kernel needs for IPv4 and IPv6 TCP dumps (`CONFIG_INET_TCP_DIAG`).
pub const TCP_DIAG: &str = "tcp_diag";

const ENOENT: i32 = 2;

/// Loads a module at most once per process: modules are the host's, not a namespace's, so the
/// first poll that needs it runs `modprobe`, and every later one (on any thread) gets that
/// first outcome without running anything.
pub(crate) struct Loader {
    module: &'static str,
    run: fn(&str) -> Result<(), String>,
    outcome: OnceLock<Result<(), String>>,
}

impl Loader {
    pub(crate) const fn new(module: &'static str, run: fn(&str) -> Result<(), String>) -> Self {
        Loader {
            module,
            run,
            outcome: OnceLock::new(),
        }
    }

    /// Ok when the module is loaded (or was, the first time this was asked); else why not.
    pub(crate) fn load(&self) -> Result<(), String> {
        self.outcome
            .get_or_init(|| {
                let r = (self.run)(self.module);
                match &r {
                    Ok(()) => log::info!(
                        "loaded the kernel module {}, which sock_diag's TCP dumps need",
                        self.module
                    ),
                    Err(why) => log::debug!("modprobe {}: {why}", self.module),
                }
                r
            })
            .clone()
    }
}

/// The process's loader of [`TCP_DIAG`].
pub(crate) static TCP_DIAG_LOADER: Loader = Loader::new(TCP_DIAG, modprobe);

/// After the kernel refused a TCP dump with `errno`: Ok to dump once more (the module is now
/// loaded), or the error to report. `retried` says the refusal answers that second dump.
pub(crate) fn after_refusal(errno: i32, retried: bool, loader: &Loader) -> Result<(), DiagError> {
    if errno != ENOENT {
        return Err(DiagError::Kernel(errno));
    }
    if retried {
        return Err(DiagError::StillRefused);
    }
    loader.load().map_err(DiagError::NoTcpDiag)
}

/// `modprobe MODULE`, found on PATH or where kmod installs it (a root shell's PATH may lack the
/// sbin directories). Err says why it failed, in modprobe's own words when it has some.
fn modprobe(module: &str) -> Result<(), String> {
    for program in ["modprobe", "/usr/sbin/modprobe", "/sbin/modprobe"] {
        let out = match Command::new(program)
            .arg(module)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
        {
            Ok(out) => out,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("cannot run {program}: {e}")),
        };
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(stderr
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .map_or_else(|| format!("it ended with {}", out.status), str::to_owned));
    }
    Err("modprobe is not installed (kmod)".to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    use std::sync::atomic::{AtomicUsize, Ordering};

    static LOADED_RUNS: AtomicUsize = AtomicUsize::new(0);
    static FAILED_RUNS: AtomicUsize = AtomicUsize::new(0);

    fn loads(_: &str) -> Result<(), String> {
        LOADED_RUNS.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn fails(module: &str) -> Result<(), String> {
        FAILED_RUNS.fetch_add(1, Ordering::SeqCst);
        Err(format!(
            "modprobe: FATAL: Module {module} not found in directory /lib/modules/6.1.0-cloud"
        ))
    }

    #[test]
    fn other_errors_are_the_kernels_and_load_nothing() {
        static NEVER: Loader = Loader::new(TCP_DIAG, |_| panic!("modprobe run for EPERM"));
        let e = after_refusal(1, false, &NEVER).unwrap_err();
        assert_eq!(
            e.to_string(),
            "sock_diag dump refused by the kernel: errno 1"
        );
    }

    #[test]
    fn a_missing_module_is_loaded_once_and_the_dump_retried_once() {
        static LOADER: Loader = Loader::new(TCP_DIAG, loads);
        // First refusal: modprobe, then dump again.
        assert!(after_refusal(ENOENT, false, &LOADER).is_ok());
        // Refused again after the retry: an error, not another round.
        let e = after_refusal(ENOENT, true, &LOADER).unwrap_err();
        assert!(matches!(e, DiagError::StillRefused), "{e}");
        let text = e.to_string();
        assert!(
            text.contains("errno 2") && text.contains("modprobe tcp_diag"),
            "{text}"
        );
        // A later poll refused again retries once more, without running modprobe again.
        assert!(after_refusal(ENOENT, false, &LOADER).is_ok());
        assert_eq!(LOADED_RUNS.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_module_that_cannot_be_loaded_is_named_with_how_to_load_it() {
        static LOADER: Loader = Loader::new(TCP_DIAG, fails);
        let first = after_refusal(ENOENT, false, &LOADER)
            .unwrap_err()
            .to_string();
        assert_eq!(
            first,
            "sock_diag cannot list TCP sockets: the kernel refuses the dump with errno 2 \
             (ENOENT), as it does without its tcp_diag module, and `modprobe tcp_diag` failed \
             (modprobe: FATAL: Module tcp_diag not found in directory /lib/modules/6.1.0-cloud). \
             Load it as root with `modprobe tcp_diag` (inet_diag comes with it); a kernel built \
             without CONFIG_INET_TCP_DIAG cannot list them"
        );
        // Every later poll: the same answer, and modprobe is not run again.
        for _ in 0..3 {
            let again = after_refusal(ENOENT, false, &LOADER)
                .unwrap_err()
                .to_string();
            assert_eq!(again, first);
        }
        assert_eq!(FAILED_RUNS.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn concurrent_polls_run_modprobe_once() {
        static RUNS: AtomicUsize = AtomicUsize::new(0);
        static LOADER: Loader = Loader::new(TCP_DIAG, |_| {
            RUNS.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(20));
            Ok(())
        });
        let threads: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(|| LOADER.load()))
            .collect();
        for t in threads {
            assert_eq!(t.join().ok(), Some(Ok(())));
        }
        assert_eq!(RUNS.load(Ordering::SeqCst), 1);
    }
}
