//! Which events to keep, before any connection is assembled: the user's port and address
//! filters applied to whole socket lives. The kernel programs apply the same rule to `--port`
//! ([`teardown_common::tcp::filter_step`]); this one serves recordings and replays.

use std::{collections::HashSet, net::IpAddr, net::SocketAddr};

use teardown_common::{
    addr::canonical_ip,
    tcp::{filter_step, FilterStep},
};

use super::Event;

/// Either end has one of `ports` (or there are none), and either end one of `addrs` (or none).
/// An IPv4-mapped address and its IPv4 form are the same address here, on either side: a
/// dual-stack socket shows its IPv4 peer mapped.
pub fn tuple_matches(
    ports: &[u16],
    addrs: &[IpAddr],
    local: &SocketAddr,
    remote: &SocketAddr,
) -> bool {
    let port_ok = ports.is_empty()
        || ports
            .iter()
            .any(|&p| p == local.port() || p == remote.port());
    let addr_ok = addrs.is_empty() || {
        let (l, r) = (canonical_ip(local.ip()), canonical_ip(remote.ip()));
        addrs.iter().any(|&a| {
            let a = canonical_ip(a);
            a == l || a == r
        })
    };
    port_ok && addr_ok
}

/// Keeps the events of sockets whose 4-tuple matched the user's port and address filters at
/// some point of their life: the last events of a connection carry no local port (the socket
/// was unhashed), so matching event by event would cut timelines short.
#[derive(Debug, Default)]
pub struct EventFilter {
    ports: Vec<u16>,
    addrs: Vec<IpAddr>,
    matched: HashSet<u64>,
}

impl EventFilter {
    /// None when there is nothing to filter on.
    pub fn new(ports: Vec<u16>, addrs: Vec<IpAddr>) -> Option<EventFilter> {
        (!ports.is_empty() || !addrs.is_empty()).then(|| EventFilter {
            ports,
            addrs,
            matched: HashSet::new(),
        })
    }

    /// For facts about a 4-tuple (no socket address): whether the tuple matches.
    pub fn keep_tuple(&self, local: &SocketAddr, remote: &SocketAddr) -> bool {
        tuple_matches(&self.ports, &self.addrs, local, remote)
    }

    pub fn keep(&mut self, ev: &Event) -> bool {
        // Either port is enough: connect() changes state before the local port is chosen.
        let hit = self.keep_tuple(&ev.local, &ev.remote);
        match filter_step(hit, ev.starts_connection()) {
            FilterStep::Match => {
                self.matched.insert(ev.sk);
                true
            }
            FilterStep::Forget => {
                self.matched.remove(&ev.sk);
                false
            }
            FilterStep::AsBefore => self.matched.contains(&ev.sk),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::TcpState;

    #[test]
    fn filter_keeps_whole_timelines_of_matching_sockets() {
        use TcpState::*;
        let mk = |sk, old, new, l: &str, r: &str| crate::decode::testing::ev(1, sk, old, new, l, r);
        let mut f = EventFilter::new(vec![8080], vec![]).unwrap();
        // The last transition has no local port: it is kept because its socket matched before.
        assert!(f.keep(&mk(1, Close, SynSent, "127.0.0.1:40000", "127.0.0.1:8080")));
        assert!(f.keep(&mk(1, FinWait2, Close, "0.0.0.0:0", "127.0.0.1:8080")));
        assert!(!f.keep(&mk(2, LastAck, Close, "0.0.0.0:0", "0.0.0.0:0")));
        // connect(): the destination port is known before the local one.
        assert!(f.keep(&mk(3, Close, SynSent, "127.0.0.1:0", "127.0.0.1:8080")));
        // Another connection on the same socket address, to another port: dropped.
        assert!(!f.keep(&mk(1, Close, SynSent, "127.0.0.1:40001", "127.0.0.1:9090")));
        assert!(!f.keep(&mk(1, SynSent, Close, "0.0.0.0:0", "0.0.0.0:0")));
        assert!(EventFilter::new(vec![], vec![]).is_none());
    }

    #[test]
    fn mapped_and_ipv4_addresses_match_each_other() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
        // A dual-stack server's end of an IPv4 connection, and the IPv4 client's end.
        let (mapped_l, mapped_r) = (sa("[::ffff:10.0.0.1]:9000"), sa("[::ffff:10.0.0.2]:34888"));
        let (v4_l, v4_r) = (sa("10.0.0.2:34888"), sa("10.0.0.1:9000"));
        for a in ["10.0.0.1", "::ffff:10.0.0.1", "10.0.0.2", "::ffff:10.0.0.2"] {
            let addrs = [ip(a)];
            assert!(tuple_matches(&[], &addrs, &mapped_l, &mapped_r), "{a}");
            assert!(tuple_matches(&[], &addrs, &v4_l, &v4_r), "{a}");
        }
        for a in ["10.0.0.3", "::ffff:10.0.0.3", "::1", "::10.0.0.1"] {
            let addrs = [ip(a)];
            assert!(!tuple_matches(&[], &addrs, &mapped_l, &mapped_r), "{a}");
            assert!(!tuple_matches(&[], &addrs, &v4_l, &v4_r), "{a}");
        }
        // Plain IPv6 is left alone.
        let (l6, r6) = (sa("[2001:db8::1]:80"), sa("[2001:db8::2]:40000"));
        assert!(tuple_matches(&[], &[ip("2001:db8::2")], &l6, &r6));
        assert!(!tuple_matches(&[], &[ip("2001:db8::3")], &l6, &r6));
        // The event filter keeps a mapped socket's life for an IPv4 --addr.
        use TcpState::*;
        let mut f = EventFilter::new(vec![], vec![ip("127.0.0.1")]).unwrap();
        let e = crate::decode::testing::ev(
            1,
            7,
            Listen,
            SynRecv,
            "[::ffff:127.0.0.1]:9000",
            "[::ffff:127.0.0.1]:34888",
        );
        assert!(f.keep(&e));
    }
}
