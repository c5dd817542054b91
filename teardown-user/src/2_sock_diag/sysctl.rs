//! The kernel settings and counters the build-up figures are measured against, read from
//! `/proc/sys` and `/proc/thread-self/net/netstat` — both per network namespace, and both
//! resolved for the calling thread, so a thread that entered another namespace reads that
//! namespace's values (`/proc/net` would follow the process's main thread instead).

use std::collections::HashMap;
use std::path::Path;

use serde::Serialize;

use crate::kernel::files;

/// A setting that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read {0}: {1}")]
    Read(String, std::io::Error),
    #[error("unexpected value of {0}: {1:?}")]
    Parse(String, String),
}

/// Linux holds a TIME_WAIT socket for this long (`TCP_TIMEWAIT_LEN`), whatever the sysctls say.
pub const TIMEWAIT_LEN_MS: u64 = 60_000;

/// The settings that decide how much TIME_WAIT a namespace can hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KernelSettings {
    /// `net.ipv4.ip_local_port_range`: the ephemeral ports `connect()` picks from.
    pub port_range: (u16, u16),
    /// `net.ipv4.tcp_tw_reuse`: 0 off, 1 on, 2 on for loopback only.
    pub tw_reuse: u8,
    /// `net.ipv4.tcp_tw_reuse_delay` (ms; 1000 where the sysctl does not exist): a TIME_WAIT
    /// socket can be reused only once it is this old.
    pub tw_reuse_delay_ms: u64,
    /// `net.ipv4.tcp_timestamps`: reuse needs timestamps.
    pub timestamps: u8,
    /// `net.ipv4.tcp_max_tw_buckets`: beyond it, closing sockets skip TIME_WAIT.
    pub max_tw_buckets: u64,
    /// `net.ipv4.tcp_fin_timeout` (s): lifetime of an orphaned FIN_WAIT2 socket.
    pub fin_timeout_s: u64,
    /// `TcpExt: TCPTimeWaitOverflow`: timewait sockets not created because the table was full.
    pub tw_overflow: Option<u64>,
}

impl KernelSettings {
    /// The defaults of the kernel (Linux 6.x), for tests and when `/proc/sys` is unreadable.
    pub fn linux_defaults() -> Self {
        Self {
            port_range: (32768, 60999),
            tw_reuse: 2,
            tw_reuse_delay_ms: 1000,
            timestamps: 1,
            max_tw_buckets: 131_072,
            fin_timeout_s: 60,
            tw_overflow: Some(0),
        }
    }

    /// Reads the settings of the calling thread's network namespace.
    pub fn read() -> Result<Self, SettingsError> {
        Self::read_from(
            Path::new("/proc/sys/net/ipv4"),
            Path::new("/proc/thread-self/net/netstat"),
        )
    }

    /// Reads from other paths (for tests).
    pub fn read_from(ipv4_sysctl_dir: &Path, netstat: &Path) -> Result<Self, SettingsError> {
        let read = |name: &str| -> Result<String, SettingsError> {
            let p = ipv4_sysctl_dir.join(name);
            files::read_to_string(&p, files::SMALL)
                .map_err(|e| SettingsError::Read(p.display().to_string(), e))
        };
        let num = |name: &str| -> Result<u64, SettingsError> {
            let s = read(name)?;
            s.trim()
                .parse()
                .map_err(|_| SettingsError::Parse(name.to_string(), s.trim().to_string()))
        };
        let range_text = read("ip_local_port_range")?;
        let port_range = parse_port_range(&range_text).ok_or_else(|| {
            SettingsError::Parse("ip_local_port_range".into(), range_text.clone())
        })?;
        let tw_overflow = files::read_to_string(netstat, files::SMALL)
            .ok()
            .and_then(|t| parse_netstat(&t).get("TcpExt.TCPTimeWaitOverflow").copied());
        Ok(Self {
            port_range,
            tw_reuse: u8::try_from(num("tcp_tw_reuse")?).unwrap_or(u8::MAX),
            tw_reuse_delay_ms: num("tcp_tw_reuse_delay").unwrap_or(1000),
            timestamps: u8::try_from(num("tcp_timestamps").unwrap_or(1)).unwrap_or(1),
            max_tw_buckets: num("tcp_max_tw_buckets")?,
            fin_timeout_s: num("tcp_fin_timeout")?,
            tw_overflow,
        })
    }

    /// Number of ephemeral ports (`hi - lo + 1`).
    pub fn port_range_size(&self) -> u32 {
        let (lo, hi) = self.port_range;
        u32::from(hi.saturating_sub(lo)) + 1
    }

    /// Whether `port` is an ephemeral port (so a timewait socket on it holds one).
    pub fn is_ephemeral(&self, port: u16) -> bool {
        port >= self.port_range.0 && port <= self.port_range.1
    }
}

/// Parses `ip_local_port_range` ("32768\t60999").
pub fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let mut it = text.split_whitespace().map(str::parse::<u16>);
    let lo = it.next()?.ok()?;
    let hi = it.next()?.ok()?;
    (lo <= hi).then_some((lo, hi))
}

/// Parses `/proc/net/netstat` (pairs of header and value lines) into `"TcpExt.Name" -> value`.
pub fn parse_netstat(text: &str) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        let mut n = names.split_whitespace();
        let mut v = values.split_whitespace();
        let (Some(prefix), Some(_)) = (n.next(), v.next()) else {
            continue;
        };
        let prefix = prefix.trim_end_matches(':');
        for (name, value) in n.zip(v) {
            if let Ok(value) = value.parse() {
                out.insert(format!("{prefix}.{name}"), value);
            }
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_port_range() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_port_range("5 4"), None);
        assert_eq!(parse_port_range("x"), None);
    }

    #[test]
    fn parses_netstat_pairs() {
        let t = "TcpExt: SyncookiesSent TCPTimeWaitOverflow\nTcpExt: 3 17\nIpExt: InNoRoutes\nIpExt: 9\n";
        let m = parse_netstat(t);
        assert_eq!(m["TcpExt.TCPTimeWaitOverflow"], 17);
        assert_eq!(m["TcpExt.SyncookiesSent"], 3);
        assert_eq!(m["IpExt.InNoRoutes"], 9);
    }

    #[test]
    fn reads_this_namespace() {
        let s = KernelSettings::read().unwrap();
        assert!(s.port_range_size() >= 1);
        assert!(s.max_tw_buckets > 0);
        assert!(s.tw_overflow.is_some());
    }

    #[test]
    fn range_size_and_membership() {
        let mut s = KernelSettings::linux_defaults();
        s.port_range = (40000, 40009);
        assert_eq!(s.port_range_size(), 10);
        assert!(s.is_ephemeral(40009));
        assert!(!s.is_ephemeral(5000));
    }
}
