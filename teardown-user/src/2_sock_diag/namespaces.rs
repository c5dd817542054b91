//! Every network namespace of the host, found the way `lsns -t net` and container tools do.
//!
//! A network namespace lives as long as something refers to it: a process inside it (seen as
//! the link `/proc/PID/ns/net` -> `net:[INODE]`) or a bind mount of its nsfs file (what
//! `ip netns add` makes under /run/netns, and what container engines make for pods); such
//! mounts are listed in `/proc/self/mountinfo` with the file system type `nsfs`. Both are read
//! and merged by inode, so a namespace with no process left (a pause-less pod, an `ip netns`
//! namespace) is found too, and each is entered through a path that stays valid: its mount if
//! it has one, else one of its processes.
//!
//! A namespace whose processes all belong to no container is the host's or a plain `ip netns`
//! one; the owner of the others is named by [`super::containers`].

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use crate::kernel::files;

use super::containers::{container_of_pid, Container, ContainerNames};

/// Bounds on one scan of `/proc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NamespaceLimits {
    /// Process ids kept per namespace (to name its owner and to enter it).
    pub pids_per_namespace: usize,
    /// Stop after this many namespaces (the rest counted in [`NamespaceScan::left_out`]).
    pub max_namespaces: usize,
}

impl Default for NamespaceLimits {
    fn default() -> Self {
        Self {
            pids_per_namespace: 4,
            max_namespaces: 4096,
        }
    }
}

/// One network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    /// The nsfs inode: the number `trace` prints as `netns`, `ip netns identify`'s key.
    pub inode: u32,
    /// nsfs bind mounts of it, such as `/run/netns/blue`.
    pub mounts: Vec<PathBuf>,
    /// Processes inside it, lowest pid first, at most [`NamespaceLimits::pids_per_namespace`].
    pub pids: Vec<u32>,
    /// How many processes are inside it (all of them, not only those in `pids`).
    pub processes: usize,
    /// The namespace of the process doing the scan.
    pub own: bool,
}

impl Namespace {
    /// The names `ip netns` knows it by: its mounts under /run/netns or /var/run/netns.
    pub fn ip_netns_names(&self) -> impl Iterator<Item = &str> {
        self.mounts.iter().filter_map(|m| {
            let parent = m.parent()?;
            (parent == Path::new("/run/netns") || parent == Path::new("/var/run/netns"))
                .then(|| m.file_name()?.to_str())
                .flatten()
        })
    }

    /// Paths through which it can be entered, the most stable first.
    pub fn entry_paths(&self, proc_root: &Path) -> Vec<PathBuf> {
        let by_pid = self
            .pids
            .iter()
            .map(|p| proc_root.join(p.to_string()).join("ns/net"));
        self.mounts.iter().cloned().chain(by_pid).collect()
    }
}

/// The result of [`list_namespaces`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceScan {
    /// By inode, ascending.
    pub namespaces: Vec<Namespace>,
    /// Namespaces beyond [`NamespaceLimits::max_namespaces`], not listed.
    pub left_out: usize,
    /// Processes whose namespace link could not be read (other users' processes, without
    /// CAP_SYS_PTRACE): a namespace only they are in is not listed, and counts of processes
    /// are of the readable ones.
    pub unreadable: usize,
}

/// Parses an nsfs link target or mount root, `net:[4026531840]`.
pub fn parse_net_link(target: &str) -> Option<u32> {
    target
        .strip_prefix("net:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The nsfs mounts of network namespaces in a `mountinfo` text: (inode, mount point).
///
/// A line reads `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE ...`;
/// for nsfs the root is the namespace, `net:[INODE]`. Mount points escape space, tab,
/// newline and backslash as octal (`\040`).
pub fn nsfs_mounts(mountinfo: &str) -> Vec<(u32, PathBuf)> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (head, tail) = line.split_once(" - ")?;
            if tail.split(' ').next()? != "nsfs" {
                return None;
            }
            let mut f = head.split(' ');
            let root = f.nth(3)?;
            let point = f.next()?;
            Some((parse_net_link(root)?, PathBuf::from(unescape_octal(point))))
        })
        .collect()
}

/// Undoes the kernel's `\ooo` escaping of mount points.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).and_then(|d| {
            let d = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(d, 8).ok()
        });
        match (b[i], octal) {
            (b'\\', Some(c)) => {
                out.push(c);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every network namespace under `proc_root` (normally `/proc`): from each process's
/// `ns/net` link and from the nsfs mounts this process sees. Processes that vanish or whose
/// links cannot be read (no CAP_SYS_PTRACE over them) are skipped: their namespace is still
/// found if anything else refers to it.
pub fn list_namespaces(proc_root: &Path, limits: NamespaceLimits) -> NamespaceScan {
    let own = std::fs::read_link(proc_root.join("thread-self/ns/net"))
        .or_else(|_| std::fs::read_link(proc_root.join("self/ns/net")))
        .ok()
        .and_then(|t| parse_net_link(&t.to_string_lossy()));
    let mut by_inode: BTreeMap<u32, Namespace> = BTreeMap::new();
    let fresh = |inode: u32| Namespace {
        inode,
        mounts: Vec::new(),
        pids: Vec::new(),
        processes: 0,
        own: Some(inode) == own,
    };

    let mut pids: Vec<u32> = std::fs::read_dir(proc_root)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    let mut unreadable = 0;
    for pid in pids {
        let target = match std::fs::read_link(proc_root.join(pid.to_string()).join("ns/net")) {
            Ok(t) => t,
            Err(e) => {
                // Gone since the listing is not worth a word; denied is.
                unreadable += usize::from(e.kind() == std::io::ErrorKind::PermissionDenied);
                continue;
            }
        };
        let Some(inode) = parse_net_link(&target.to_string_lossy()) else {
            continue;
        };
        let ns = by_inode.entry(inode).or_insert_with(|| fresh(inode));
        ns.processes += 1;
        if ns.pids.len() < limits.pids_per_namespace {
            ns.pids.push(pid);
        }
    }

    let mountinfo =
        files::read_to_string(proc_root.join("self/mountinfo"), files::TABLE).unwrap_or_default();
    for (inode, point) in nsfs_mounts(&mountinfo) {
        let ns = by_inode.entry(inode).or_insert_with(|| fresh(inode));
        if !ns.mounts.contains(&point) {
            ns.mounts.push(point);
        }
    }
    if let Some(inode) = own {
        by_inode.entry(inode).or_insert_with(|| fresh(inode));
    }

    let total = by_inode.len();
    let namespaces: Vec<Namespace> = by_inode.into_values().take(limits.max_namespaces).collect();
    NamespaceScan {
        left_out: total - namespaces.len(),
        namespaces,
        unreadable,
    }
}

/// The container behind each network namespace, for the trace: kept up to date by a thread of
/// its own, so that naming a connection's container is a map lookup.
///
/// The thread rescans every [`ContainerDirectory::EVERY`], and sooner when asked about a
/// namespace it has not seen (a container started since). It ends when the last handle is
/// dropped.
#[derive(Clone, Debug)]
pub struct ContainerDirectory {
    inner: Arc<Directory>,
}

#[derive(Debug, Default)]
struct Directory {
    /// Every namespace seen in the latest scans: its container, or None for none.
    by_netns: RwLock<HashMap<u32, Option<Arc<Container>>>>,
    /// Asked about a namespace the scans have not seen.
    missed: AtomicBool,
}

impl ContainerDirectory {
    /// How often the namespaces are scanned again without being asked.
    pub const EVERY: Duration = Duration::from_secs(5);
    /// The shortest time between two scans.
    const AT_MOST_EVERY: Duration = Duration::from_millis(250);
    /// Namespaces remembered: those of the latest scan, and as many of those gone since as fit.
    const KEPT: usize = 8192;

    /// Scans once now, then keeps scanning on a thread named `containers`.
    pub fn start() -> std::io::Result<ContainerDirectory> {
        let inner = Arc::new(Directory::default());
        let mut names = ContainerNames::default();
        scan_into(&inner, &mut names);
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("containers".into())
            .spawn(move || keep_scanning(&weak, names))?;
        Ok(ContainerDirectory { inner })
    }

    /// The container whose network namespace is `netns`, if one is known.
    pub fn get(&self, netns: u32) -> Option<Arc<Container>> {
        let found = self.inner.by_netns.read().ok()?.get(&netns).cloned();
        match found {
            Some(c) => c,
            None => {
                self.inner.missed.store(true, Ordering::Relaxed);
                None
            }
        }
    }
}

fn keep_scanning(dir: &Weak<Directory>, mut names: ContainerNames) {
    let mut last = Instant::now();
    loop {
        std::thread::sleep(ContainerDirectory::AT_MOST_EVERY);
        let Some(dir) = dir.upgrade() else {
            return;
        };
        if dir.missed.swap(false, Ordering::Relaxed) || last.elapsed() >= ContainerDirectory::EVERY
        {
            scan_into(&dir, &mut names);
            last = Instant::now();
        }
    }
}

fn scan_into(dir: &Directory, names: &mut ContainerNames) {
    let scan = list_namespaces(&names.paths().proc_root.clone(), NamespaceLimits::default());
    let Ok(known) = dir.by_netns.read().map(|m| m.clone()) else {
        return;
    };
    let mut fresh: HashMap<u32, Option<Arc<Container>>> = HashMap::new();
    for ns in &scan.namespaces {
        // A namespace keeps its container: only new ones (or ones without, so far) are looked up.
        let c = match known.get(&ns.inode) {
            Some(Some(c)) => Some(Arc::clone(c)),
            _ => ns
                .pids
                .iter()
                .find_map(|&pid| container_of_pid(pid, names))
                .map(Arc::new),
        };
        fresh.insert(ns.inode, c);
    }
    // Namespaces gone since are kept (a connection of theirs may still be reported), up to the
    // bound.
    for (inode, c) in known {
        if fresh.len() >= ContainerDirectory::KEPT {
            break;
        }
        fresh.entry(inode).or_insert(c);
    }
    if let Ok(mut m) = dir.by_netns.write() {
        *m = fresh;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn links_parse() {
        assert_eq!(parse_net_link("net:[4026531840]"), Some(4026531840));
        assert_eq!(parse_net_link("mnt:[4026531840]"), None);
        assert_eq!(parse_net_link("net:[x]"), None);
    }

    #[test]
    fn nsfs_mounts_are_found_and_unescaped() {
        let text = "\
22 1 0:21 / /proc rw,nosuid - proc proc rw
612 25 0:4 net:[4026532315] /run/netns/blue rw shared:5 - nsfs nsfs rw
613 25 0:4 net:[4026532400] /run/netns/with\\040space rw - nsfs nsfs rw
614 25 0:4 mnt:[4026532500] /run/mntns/x rw - nsfs nsfs rw
";
        assert_eq!(
            nsfs_mounts(text),
            vec![
                (4026532315, PathBuf::from("/run/netns/blue")),
                (4026532400, PathBuf::from("/run/netns/with space")),
            ]
        );
    }

    #[test]
    fn ip_netns_names_come_from_run_netns_only() {
        let ns = Namespace {
            inode: 1,
            mounts: vec![
                PathBuf::from("/run/netns/blue"),
                PathBuf::from("/var/run/netns/green"),
                PathBuf::from("/run/user/0/netns/cni-1"),
            ],
            pids: vec![7],
            processes: 1,
            own: false,
        };
        assert_eq!(ns.ip_netns_names().collect::<Vec<_>>(), ["blue", "green"]);
        assert_eq!(
            ns.entry_paths(Path::new("/proc")),
            [
                PathBuf::from("/run/netns/blue"),
                PathBuf::from("/var/run/netns/green"),
                PathBuf::from("/run/user/0/netns/cni-1"),
                PathBuf::from("/proc/7/ns/net"),
            ]
        );
    }

    #[test]
    fn this_process_namespace_is_listed_as_own() {
        let scan = list_namespaces(Path::new("/proc"), NamespaceLimits::default());
        let own: Vec<_> = scan.namespaces.iter().filter(|n| n.own).collect();
        assert_eq!(own.len(), 1, "{scan:?}");
        assert!(own[0].processes >= 1, "{scan:?}");
    }

    #[test]
    fn limits_bound_the_lists() {
        let limits = NamespaceLimits {
            pids_per_namespace: 1,
            max_namespaces: 1,
        };
        let scan = list_namespaces(Path::new("/proc"), limits);
        assert_eq!(scan.namespaces.len(), 1);
        assert!(scan.namespaces[0].pids.len() <= 1);
    }
}
