//! The processes that hold a socket, found the way `ss -p` does: every `/proc/PID/fd/N` that
//! links to `socket:[INODE]`.
//!
//! Scanning every descriptor of every process is the expensive part of `ss -p`, so it is done only
//! for the inodes asked for (the CLOSE_WAIT sockets worth reporting), it stops as soon as all of
//! them are found, and [`ScanLimits`] caps the number of descriptors read.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde::Serialize;

use crate::kernel::files;

/// A process holding a socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Owner {
    pub pid: u32,
    /// `/proc/PID/comm`: the command name, at most 15 bytes.
    pub comm: String,
    pub fd: u32,
}

/// Bounds on the cost of one scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanLimits {
    /// Stop after reading this many descriptor links in total.
    pub max_fds: usize,
    /// Keep at most this many owners per socket (a socket shared after fork has several).
    pub max_owners_per_socket: usize,
}

impl Default for ScanLimits {
    fn default() -> Self {
        Self {
            max_fds: 500_000,
            max_owners_per_socket: 4,
        }
    }
}

/// The result of a scan.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OwnerScan {
    /// Owners per socket inode, in pid order.
    pub owners: HashMap<u64, Vec<Owner>>,
    /// Descriptor links read.
    pub fds_read: usize,
    /// True when the scan stopped at [`ScanLimits::max_fds`] before looking at every process.
    pub truncated: bool,
}

/// Parses a descriptor link target `socket:[12345]`.
pub fn parse_socket_link(target: &str) -> Option<u64> {
    target
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Finds the processes that hold the given socket inodes under `/proc`.
pub fn find_owners(inodes: &HashSet<u64>, limits: ScanLimits) -> OwnerScan {
    find_owners_in(Path::new("/proc"), inodes, limits)
}

/// As [`find_owners`], under another procfs root (for tests).
pub fn find_owners_in(proc_root: &Path, inodes: &HashSet<u64>, limits: ScanLimits) -> OwnerScan {
    let mut scan = OwnerScan::default();
    if inodes.is_empty() {
        return scan;
    }
    let Ok(dir) = std::fs::read_dir(proc_root) else {
        return scan;
    };
    let mut pids: Vec<u32> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .collect();
    pids.sort_unstable();
    let mut complete: HashSet<u64> = HashSet::new();
    'pids: for pid in pids {
        let pid_dir = proc_root.join(pid.to_string());
        let Ok(fds) = std::fs::read_dir(pid_dir.join("fd")) else {
            continue; // gone, or not ours to read
        };
        let mut comm: Option<String> = None;
        for fd in fds.filter_map(|e| e.ok()) {
            if scan.fds_read >= limits.max_fds {
                scan.truncated = true;
                break 'pids;
            }
            scan.fds_read += 1;
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let Some(inode) = target.to_str().and_then(parse_socket_link) else {
                continue;
            };
            if !inodes.contains(&inode) {
                continue;
            }
            let Some(fd_num) = fd.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            let comm = comm
                .get_or_insert_with(|| {
                    files::read_to_string(pid_dir.join("comm"), files::WORD)
                        .map(|s| s.trim_end().to_string())
                        .unwrap_or_default()
                })
                .clone();
            let list = scan.owners.entry(inode).or_default();
            if list.len() < limits.max_owners_per_socket {
                list.push(Owner {
                    pid,
                    comm,
                    fd: fd_num,
                });
            }
            if list.len() >= limits.max_owners_per_socket {
                complete.insert(inode);
            }
        }
        // Every asked-for socket has all the owners we keep: stop.
        if complete.len() >= inodes.len() {
            break;
        }
    }
    scan
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::io::AsRawFd;

    #[test]
    fn parses_socket_links() {
        assert_eq!(parse_socket_link("socket:[12345]"), Some(12345));
        assert_eq!(parse_socket_link("pipe:[12345]"), None);
        assert_eq!(parse_socket_link("/dev/null"), None);
    }

    #[test]
    fn finds_our_own_socket() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let link = std::fs::read_link(format!("/proc/self/fd/{}", l.as_raw_fd())).unwrap();
        let inode = parse_socket_link(link.to_str().unwrap()).unwrap();
        let scan = find_owners(&HashSet::from([inode]), ScanLimits::default());
        let owners = &scan.owners[&inode];
        assert_eq!(owners[0].pid, std::process::id());
        assert_eq!(owners[0].fd as i32, l.as_raw_fd());
        assert!(!owners[0].comm.is_empty());
    }

    #[test]
    fn scan_is_bounded() {
        let scan = find_owners(
            &HashSet::from([u64::MAX]),
            ScanLimits {
                max_fds: 3,
                max_owners_per_socket: 1,
            },
        );
        assert!(scan.truncated);
        assert_eq!(scan.fds_read, 3);
        assert!(scan.owners.is_empty());
    }
}
