//! The scenario lab: every teardown variant reproduced on a real kernel (docs/close-sequence.md, §4).
//!
//! A [`Lab`] is two network namespaces, `client` and `server`, joined by a veth pair with IPv4
//! and IPv6 addresses (built on [`crate::netns`]); both go away when the value is dropped, also
//! when the test panics. Sysctls and route options (`rto_min`) are set inside the namespaces
//! only, segments are dropped with nftables rules inside them ([`nft`]), and client and server
//! sockets are created in their namespace by a thread that entered it (a socket stays in the
//! namespace it was created in, whichever thread uses it later).
//!
//! Each lab has a *slot*: its addresses (`10.201.SLOT.1`, `fd00:201:SLOT::1`, ...) and its port
//! are distinct from those of every other scenario, so scenarios run in parallel and the global
//! tracer's connections are told apart by port. The scenarios themselves are in [`scenarios`].

pub mod nft;
pub mod scenarios;

use std::{
    io::{self, Read},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    process::Command,
    time::Duration,
};

use socket2::{Domain, SockRef, Socket, Type};
use teardown::sock_diag::{self, Snapshot, TcpState, TwSubstate};

use crate::netns::{run_cmd, veth_pair, Netns};
pub use crate::wait::wait_until;

pub use nft::{Nft, Rule};

/// Which address family a scenario's connection uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// One end of the lab.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

/// Two namespaces joined by a veth pair, for one scenario.
pub struct Lab {
    pub family: Family,
    /// The port the server listens on; unique to this scenario (and process).
    pub port: u16,
    pub client_ip: IpAddr,
    pub server_ip: IpAddr,
    client_dev: String,
    server_dev: String,
    slot: u8,
    // Dropped last: the namespaces take the veth pair and the nftables tables with them.
    client: Netns,
    server: Netns,
}

/// How long the lab waits for anything the kernel does at once (bounded waits).
pub const WAIT: Duration = Duration::from_secs(5);

/// The port of `slot` in this process: below `ip_local_port_range` (32768-) so that it never
/// collides with an ephemeral port, and different between processes running the lab at once.
pub fn port_for(slot: u8) -> u16 {
    let spread = u16::try_from(std::process::id() % 380).unwrap_or(0);
    20000 + spread * 32 + u16::from(slot % 32)
}

impl Lab {
    /// Creates the namespaces `tdlab<SLOT>c-PID-N` and `tdlab<SLOT>s-PID-N`, the veth pair and
    /// the addresses of `slot` (1..=250).
    pub fn new(slot: u8, family: Family) -> io::Result<Lab> {
        let client = Netns::new(&format!("tdlab{slot}c"))?;
        let server = Netns::new(&format!("tdlab{slot}s"))?;
        let (client_dev, server_dev) = veth_pair(
            &client,
            &format!("10.201.{slot}.1/24"),
            &server,
            &format!("10.201.{slot}.2/24"),
        )?;
        // IPv6 without duplicate address detection, so the addresses are usable at once.
        for (ns, dev, host) in [(&client, &client_dev, 1), (&server, &server_dev, 2)] {
            run_cmd(Command::new("ip").args([
                "-n",
                ns.name(),
                "-6",
                "addr",
                "add",
                &format!("fd00:201:{slot:x}::{host}/64"),
                "dev",
                dev,
                "nodad",
            ]))?;
        }
        let (client_ip, server_ip) = match family {
            Family::V4 => (
                IpAddr::V4(Ipv4Addr::new(10, 201, slot, 1)),
                IpAddr::V4(Ipv4Addr::new(10, 201, slot, 2)),
            ),
            Family::V6 => (
                IpAddr::V6(Ipv6Addr::new(0xfd00, 0x201, u16::from(slot), 0, 0, 0, 0, 1)),
                IpAddr::V6(Ipv6Addr::new(0xfd00, 0x201, u16::from(slot), 0, 0, 0, 0, 2)),
            ),
        };
        Ok(Lab {
            family,
            port: port_for(slot),
            client_ip,
            server_ip,
            client_dev,
            server_dev,
            slot,
            client,
            server,
        })
    }

    pub fn ns(&self, side: Side) -> &Netns {
        match side {
            Side::Client => &self.client,
            Side::Server => &self.server,
        }
    }

    pub fn ip(&self, side: Side) -> IpAddr {
        match side {
            Side::Client => self.client_ip,
            Side::Server => self.server_ip,
        }
    }

    pub fn server_addr(&self) -> SocketAddr {
        SocketAddr::new(self.server_ip, self.port)
    }

    /// Sets a sysctl inside one namespace (`net.ipv4.tcp_fin_timeout`).
    pub fn sysctl(&self, side: Side, key: &str, value: &str) -> io::Result<()> {
        self.ns(side).set_sysctl(key, value)
    }

    /// Sets `rto_min` on the route toward the other end (both families), inside one namespace:
    /// the retransmission timeout of every connection over it starts from this floor.
    pub fn rto_min(&self, side: Side, ms: u32) -> io::Result<()> {
        let dev = match side {
            Side::Client => &self.client_dev,
            Side::Server => &self.server_dev,
        };
        let rto = format!("{ms}ms");
        // The connected routes as the kernel made them (IPv6: metric 256, not ip's default).
        for (fam, prefix, metric) in [
            ("-4", format!("10.201.{}.0/24", self.slot), "0"),
            ("-6", format!("fd00:201:{:x}::/64", self.slot), "256"),
        ] {
            run_cmd(Command::new("ip").args([
                "-n",
                self.ns(side).name(),
                fam,
                "route",
                "change",
                &prefix,
                "dev",
                dev,
                "proto",
                "kernel",
                "metric",
                metric,
                "rto_min",
                &rto,
            ]))?;
        }
        Ok(())
    }

    /// The nftables table of one namespace (created on first use).
    pub fn nft(&self, side: Side) -> io::Result<Nft<'_>> {
        Nft::new(self.ns(side))
    }

    /// A listener on the server's address and port, created inside the server namespace.
    pub fn listen(&self) -> io::Result<TcpListener> {
        let addr = self.server_addr();
        self.server.run(move || {
            let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
            s.set_reuse_address(true)?;
            s.bind(&addr.into())?;
            s.listen(16)?;
            Ok(s.into())
        })
    }

    /// Connects from the client namespace (from `source_port` when given, with SO_REUSEADDR).
    pub fn connect_from(&self, source_port: Option<u16>) -> io::Result<TcpStream> {
        let to = self.server_addr();
        let from = source_port.map(|p| SocketAddr::new(self.client_ip, p));
        self.client.run(move || {
            let s = Socket::new(Domain::for_address(to), Type::STREAM, None)?;
            if let Some(from) = from {
                s.set_reuse_address(true)?;
                s.bind(&from.into())?;
            }
            s.connect_timeout(&to.into(), WAIT)?;
            let s: TcpStream = s.into();
            s.set_read_timeout(Some(WAIT))?;
            Ok(s)
        })
    }

    /// A connected pair: (client end, server end). The listener is closed again.
    pub fn pair(&self) -> io::Result<(TcpStream, TcpStream)> {
        let listener = self.listen()?;
        let client = self.connect_from(None)?;
        let (server, _) = listener.accept()?;
        server.set_read_timeout(Some(WAIT))?;
        Ok((client, server))
    }

    /// One sock_diag snapshot inside a namespace.
    pub fn snapshot(&self, side: Side) -> io::Result<Snapshot> {
        self.ns(side)
            .run(sock_diag::snapshot)
            .map_err(|e| io::Error::other(e.to_string()))
    }

    /// This scenario's timewait sockets in one namespace.
    pub fn timewait(&self, side: Side) -> io::Result<Vec<sock_diag::TimewaitSocket>> {
        let port = self.port;
        Ok(self
            .snapshot(side)?
            .timewait
            .into_iter()
            .filter(|t| t.tuple.local.port() == port || t.tuple.remote.port() == port)
            .collect())
    }

    /// This scenario's full sockets in a closing state in one namespace.
    pub fn closing(&self, side: Side) -> io::Result<Vec<sock_diag::FullSocket>> {
        let port = self.port;
        Ok(self
            .snapshot(side)?
            .closing
            .into_iter()
            .filter(|t| t.tuple.local.port() == port || t.tuple.remote.port() == port)
            .collect())
    }

    /// Waits (bounded by `limit`) until one namespace holds a socket of this scenario in
    /// `state`: a timewait socket in that sub-state (FIN_WAIT2 / TIME_WAIT) or a full socket.
    pub fn wait_state(&self, side: Side, state: &str, limit: Duration) -> io::Result<()> {
        wait_until(&format!("{side:?} socket in {state}"), limit, || {
            let snap = self.snapshot(side)?;
            let port = self.port;
            let ours = |t: &sock_diag::FourTuple| t.local.port() == port || t.remote.port() == port;
            Ok(snap
                .timewait
                .iter()
                .any(|t| ours(&t.tuple) && t.substate.name() == state)
                || snap
                    .closing
                    .iter()
                    .any(|s| ours(&s.tuple) && s.state.name() == state)
                || snap
                    .open
                    .iter()
                    .any(|s| ours(&s.tuple) && s.state.name() == state))
        })
    }

    /// Waits (bounded) until one namespace holds no socket of this scenario in `state`.
    pub fn wait_gone(&self, side: Side, state: TcpState, limit: Duration) -> io::Result<()> {
        wait_until(&format!("{side:?} socket to leave {state}"), limit, || {
            Ok(!self.closing(side)?.iter().any(|s| s.state == state))
        })
    }

    /// The entry time (ms since the epoch) of this scenario's timewait socket in TIME_WAIT in
    /// one namespace: now + remaining - 60 s (docs/close-sequence.md, fact 6). A later value means a restarted timer.
    pub fn time_wait_entry_ms(&self, side: Side) -> io::Result<Option<u64>> {
        let snap = self.snapshot(side)?;
        let port = self.port;
        Ok(snap
            .timewait
            .iter()
            .find(|t| {
                t.substate == TwSubstate::TimeWait
                    && (t.tuple.local.port() == port || t.tuple.remote.port() == port)
            })
            .map(|t| (snap.taken_at_ms + t.remaining_ms).saturating_sub(60_000)))
    }
}

/// Reads until the peer's FIN (bounded by the stream's read timeout); returns the bytes.
pub fn read_to_eof(s: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut v = Vec::new();
    s.read_to_end(&mut v)?;
    Ok(v)
}

/// Sends the ACK that the kernel is holding back (delayed ACK) at once, and leaves quickack
/// mode on for the next segments: the peer's FIN is then ACKed alone (a four-way close).
pub fn ack_now(s: &TcpStream) -> io::Result<()> {
    SockRef::from(s).set_tcp_quickack(true)
}
