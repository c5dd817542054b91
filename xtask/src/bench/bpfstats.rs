//! Kernel program run time from the kernel's own statistics (`kernel.bpf_stats_enabled=1`):
//! the programs a process holds are found in its /proc/PID/fdinfo (`prog_id:` lines), and read
//! with the bpf syscall (BPF_PROG_GET_FD_BY_ID, then BPF_OBJ_GET_INFO_BY_FD), no bpftool needed.

use std::path::Path;

use anyhow::{Context as _, Result};
use serde::Serialize;

const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
/// Offsets in `struct bpf_prog_info` (linux/bpf.h, stable UAPI).
const INFO_NAME: usize = 64;
const INFO_RUN_TIME_NS: usize = 192;
const INFO_RUN_CNT: usize = 200;
const INFO_SIZE: usize = 232;

/// Turns the statistics on while alive, and back to what they were when dropped.
pub struct StatsGuard {
    before: Option<String>,
}

impl StatsGuard {
    pub fn enable() -> Result<StatsGuard> {
        let before =
            std::fs::read_to_string(SYSCTL).with_context(|| format!("cannot read {SYSCTL}"))?;
        if before.trim() != "1" {
            std::fs::write(SYSCTL, "1").with_context(|| format!("cannot write 1 to {SYSCTL}"))?;
        }
        Ok(StatsGuard {
            before: Some(before.trim().to_owned()),
        })
    }
}

impl Drop for StatsGuard {
    fn drop(&mut self) {
        if let Some(b) = self.before.take() {
            if b != "1" {
                let _ = std::fs::write(SYSCTL, b);
            }
        }
    }
}

/// One program's statistics.
#[derive(Clone, Debug, Serialize)]
pub struct ProgStat {
    pub id: u32,
    /// The kernel's name of it (at most 15 characters).
    pub name: String,
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// Program ids held open by process `pid`.
pub fn prog_ids_of(pid: i32) -> Vec<u32> {
    let mut ids = Vec::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return ids;
    };
    for e in dir.flatten().take(100_000) {
        let Ok(s) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        for l in s.lines() {
            if let Some(v) = l.strip_prefix("prog_id:") {
                if let Ok(id) = v.trim().parse::<u32>() {
                    if !ids.contains(&id) {
                        ids.push(id);
                    }
                }
            }
        }
    }
    ids.sort_unstable();
    ids
}

fn bpf(cmd: libc::c_long, attr: &mut [u8]) -> libc::c_long {
    // SAFETY: attr is a valid, writable buffer of the given size for the bpf(2) command.
    unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) }
}

pub fn prog_stat(id: u32) -> Result<ProgStat> {
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&id.to_ne_bytes());
    let fd = bpf(BPF_PROG_GET_FD_BY_ID, &mut attr);
    if fd < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("BPF_PROG_GET_FD_BY_ID {id}"));
    }
    let mut info = [0u8; INFO_SIZE];
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&(fd as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&(INFO_SIZE as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(info.as_mut_ptr() as u64).to_ne_bytes());
    let rc = bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr);
    let err = std::io::Error::last_os_error();
    // SAFETY: fd came from the kernel just above and is ours.
    unsafe { libc::close(fd as i32) };
    if rc < 0 {
        return Err(err).with_context(|| format!("BPF_OBJ_GET_INFO_BY_FD for program {id}"));
    }
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&info[o..o + 8]);
        u64::from_ne_bytes(b)
    };
    let name_bytes = &info[INFO_NAME..INFO_NAME + 16];
    let end = name_bytes.iter().position(|&b| b == 0).unwrap_or(16);
    Ok(ProgStat {
        id,
        name: String::from_utf8_lossy(&name_bytes[..end]).into_owned(),
        run_time_ns: u64_at(INFO_RUN_TIME_NS),
        run_cnt: u64_at(INFO_RUN_CNT),
    })
}

/// Statistics of every program process `pid` holds.
pub fn stats_of(pid: i32) -> Vec<ProgStat> {
    prog_ids_of(pid)
        .into_iter()
        .filter_map(|id| prog_stat(id).ok())
        .collect()
}

/// What each program of `after` did since `before` (a program absent from `before` counts from
/// zero): the span between two readings.
pub fn deltas(before: &[ProgStat], after: &[ProgStat]) -> Vec<ProgStat> {
    after
        .iter()
        .map(|a| {
            let b = before.iter().find(|b| b.id == a.id);
            ProgStat {
                id: a.id,
                name: a.name.clone(),
                run_time_ns: a.run_time_ns.saturating_sub(b.map_or(0, |b| b.run_time_ns)),
                run_cnt: a.run_cnt.saturating_sub(b.map_or(0, |b| b.run_cnt)),
            }
        })
        .collect()
}

/// Ours on the `inet_sock_set_state` tracepoint (BTF or classic variant): the kernel's name of
/// a program is cut to 15 characters, and both variants start so.
pub fn is_state_program(name: &str) -> bool {
    name.starts_with("inet_sock_set")
}

/// State changes as the kernel counts them over a span: the runs of the program on
/// `inet_sock_set_state`, which the kernel calls once per change whatever the program records.
/// `ours`: pick our program by name; else (a peer tool, whose only busy program is its own on
/// that tracepoint) every run counts.
pub fn state_changes(progs: &[ProgStat], ours: bool) -> Option<u64> {
    let mut it = progs
        .iter()
        .filter(|p| !ours || is_state_program(&p.name))
        .peekable();
    it.peek()?;
    Some(it.map(|p| p.run_cnt).sum())
}

/// Average ns per invocation over `progs` (None when they never ran).
pub fn avg_ns(progs: &[ProgStat]) -> Option<f64> {
    let t: u64 = progs.iter().map(|p| p.run_time_ns).sum();
    let n: u64 = progs.iter().map(|p| p.run_cnt).sum();
    (n > 0).then(|| t as f64 / n as f64)
}

pub fn available() -> bool {
    Path::new(SYSCTL).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(id: u32, name: &str, t: u64, n: u64) -> ProgStat {
        ProgStat {
            id,
            name: name.into(),
            run_time_ns: t,
            run_cnt: n,
        }
    }

    #[test]
    fn counts_state_changes_over_a_span() {
        let before = [
            stat(1, "inet_sock_set_s", 1_000, 10),
            stat(2, "tcp_retransmit_", 50, 1),
        ];
        let after = [
            stat(1, "inet_sock_set_s", 31_000, 110),
            stat(2, "tcp_retransmit_", 350, 4),
            stat(3, "tcp_send_reset_", 70, 1),
        ];
        let d = deltas(&before, &after);
        assert_eq!(state_changes(&d, true), Some(100));
        // A peer's programs all count.
        assert_eq!(state_changes(&d, false), Some(104));
        assert_eq!(avg_ns(&d), Some((30_000 + 300 + 70) as f64 / 104.0));
        assert_eq!(state_changes(&d[1..], true), None);
    }
}
