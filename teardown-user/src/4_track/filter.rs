//! Which connections are reported: the user's filters on a whole connection, once its owner
//! and namespace are known.

use std::net::IpAddr;

use super::Connection;
use crate::decode::filter::tuple_matches;

/// Which connections to report. A connection matches when every given filter matches.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Local or remote port.
    pub ports: Vec<u16>,
    /// Local or remote address.
    pub addrs: Vec<IpAddr>,
    /// Owning process (from a process-context event).
    pub pids: Vec<u32>,
    /// Network namespace, by inode number.
    pub netns: Vec<u32>,
    /// Report listening sockets too.
    pub listeners: bool,
}

impl Filter {
    pub fn matches(&self, c: &Connection) -> bool {
        if !self.listeners && c.is_listener() {
            return false;
        }
        let pid_ok = self.pids.is_empty() || c.process.is_some_and(|t| self.pids.contains(&t.pid));
        let netns_ok = self.netns.is_empty() || self.netns.contains(&c.netns);
        tuple_matches(&self.ports, &self.addrs, &c.local, &c.remote) && pid_ok && netns_ok
    }
}
