//! Linux capabilities: the ones this process holds, and the ones each step of ours needs, so
//! that a refusal names the capability that is lacking instead of saying "needs root".
//!
//! Which step needs which was found by running each command as an unprivileged user with
//! exactly these capabilities, then with each one dropped (the privilege tests do so again on
//! every run); the README's table lists them per command.

use std::fmt;

/// The capabilities a step of ours may need (numbers from include/uapi/linux/capability.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capability {
    /// Reading a root-only directory: tracefs mounted with mode 0700.
    DacReadSearch,
    /// Reading other users' /proc entries: their namespaces (`/proc/PID/ns/net`) and sockets
    /// (`/proc/PID/fd`).
    SysPtrace,
    /// Entering another network namespace (`setns`), mounting tracefs; before Linux 5.8 also
    /// what CAP_BPF and CAP_PERFMON now grant.
    SysAdmin,
    /// Raising the agent's own priority (a negative nice value).
    SysNice,
    /// Reading kernel addresses in /proc/kallsyms (where `kernel.perf_event_paranoid` > 1).
    Syslog,
    /// Attaching tracing programs and reading kernel memory from them.
    Perfmon,
    /// Loading BPF programs and creating their maps.
    Bpf,
}

impl Capability {
    pub const fn number(self) -> u32 {
        match self {
            Capability::DacReadSearch => 2,
            Capability::SysPtrace => 19,
            Capability::SysAdmin => 21,
            Capability::SysNice => 23,
            Capability::Syslog => 34,
            Capability::Perfmon => 38,
            Capability::Bpf => 39,
        }
    }

    /// The kernel's name, as `capsh` and the man pages write it.
    pub const fn name(self) -> &'static str {
        match self {
            Capability::DacReadSearch => "CAP_DAC_READ_SEARCH",
            Capability::SysPtrace => "CAP_SYS_PTRACE",
            Capability::SysAdmin => "CAP_SYS_ADMIN",
            Capability::SysNice => "CAP_SYS_NICE",
            Capability::Syslog => "CAP_SYSLOG",
            Capability::Perfmon => "CAP_PERFMON",
            Capability::Bpf => "CAP_BPF",
        }
    }

    /// Whether this thread holds it now (effective set).
    pub fn held(self) -> bool {
        CapSet::effective().has(self)
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The capabilities tracing needs: loading the programs and attaching them.
pub const TRACING: [Capability; 2] = [Capability::Bpf, Capability::Perfmon];

/// What the tracing commands use besides [`TRACING`]: the timewait timer programs' address
/// (CAP_SYSLOG) and a raised priority (CAP_SYS_NICE); without them they say what is left out.
pub const TRACING_FULL: [Capability; 4] = [
    Capability::Bpf,
    Capability::Perfmon,
    Capability::Syslog,
    Capability::SysNice,
];

/// "run it as root, or grant them once: `sudo setcap cap_a,cap_b+ep $(which teardown)`".
pub fn grant_hint(caps: &[Capability]) -> String {
    let names: Vec<String> = caps.iter().map(|c| c.name().to_lowercase()).collect();
    format!(
        "run it as root, or grant the capabilities once: `sudo setcap {}+ep $(which teardown)`",
        names.join(",")
    )
}

/// A set of capabilities, as the kernel's bit mask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapSet(u64);

impl CapSet {
    /// This thread's effective set. Unreadable (no /proc): assumed empty, so that a message
    /// names what may be lacking rather than nothing.
    pub fn effective() -> CapSet {
        super::files::read_to_string("/proc/thread-self/status", super::files::SMALL)
            .ok()
            .and_then(|s| CapSet::from_status(&s))
            .unwrap_or(CapSet(0))
    }

    /// The `CapEff:` line of a /proc status file.
    fn from_status(status: &str) -> Option<CapSet> {
        let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
        u64::from_str_radix(hex.trim(), 16).ok().map(CapSet)
    }

    pub fn has(self, c: Capability) -> bool {
        self.0 & (1u64 << c.number()) != 0
    }

    /// Those of `needed` this set lacks, in their order.
    pub fn lacking(self, needed: &[Capability]) -> Vec<Capability> {
        needed.iter().copied().filter(|&c| !self.has(c)).collect()
    }
}

/// "CAP_A", "CAP_A and CAP_B", "CAP_A, CAP_B and CAP_C".
pub fn list(caps: &[Capability]) -> String {
    let names: Vec<&str> = caps.iter().map(|c| c.name()).collect();
    match names.split_last() {
        None => String::new(),
        Some((last, [])) => (*last).to_owned(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
    }
}

/// Why a step needing `c` may have failed: "CAP_X is lacking", when this thread lacks it.
pub fn lacking_note(c: Capability) -> Option<String> {
    (!c.held()).then(|| format!("{c} is lacking"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_effective_set_is_read_from_the_status_line() {
        // CAP_BPF (39) and CAP_SYS_ADMIN (21).
        let s = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t0000008000200000\n";
        let set = CapSet::from_status(s).unwrap();
        assert!(set.has(Capability::Bpf));
        assert!(set.has(Capability::SysAdmin));
        assert!(!set.has(Capability::Perfmon));
        assert_eq!(set.lacking(&TRACING), vec![Capability::Perfmon]);
        assert_eq!(CapSet::from_status("Name:\tx\n"), None);
    }

    #[test]
    fn lists_read_as_a_sentence() {
        assert_eq!(list(&[]), "");
        assert_eq!(list(&[Capability::Bpf]), "CAP_BPF");
        assert_eq!(list(&TRACING), "CAP_BPF and CAP_PERFMON");
        assert_eq!(
            list(&[Capability::Bpf, Capability::Perfmon, Capability::Syslog]),
            "CAP_BPF, CAP_PERFMON and CAP_SYSLOG"
        );
        assert_eq!(
            grant_hint(&TRACING),
            "run it as root, or grant the capabilities once: `sudo setcap cap_bpf,cap_perfmon+ep \
             $(which teardown)`"
        );
    }
}
