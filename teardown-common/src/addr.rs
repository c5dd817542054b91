//! Endpoints as the TCP connection knows them, whatever the family of the socket that reports
//! them: a dual-stack socket (IPv6, `IPV6_V6ONLY` off) that talks to an IPv4 peer shows both
//! addresses IPv4-mapped (`::ffff:127.0.0.1`), while the peer's own IPv4 socket shows them
//! plain (`127.0.0.1`). Both name the same endpoints: the connection travels as IPv4. Keys and
//! comparisons go through [`canonical`]; what is shown keeps the form the kernel reported.

use core::net::{IpAddr, SocketAddr};

/// An IPv4-mapped IPv6 address as the IPv4 address it stands for; any other address as it is.
#[inline]
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// [`canonical_ip`] of an endpoint, its port kept. A non-mapped IPv6 endpoint is returned
/// untouched (its scope id too).
#[inline]
pub fn canonical(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => a,
        },
        SocketAddr::V4(_) => a,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|_| panic!("{s}"))
    }

    #[test]
    fn mapped_addresses_are_their_ipv4_form() {
        assert_eq!(
            canonical(sa("[::ffff:127.0.0.1]:9000")),
            sa("127.0.0.1:9000")
        );
        assert_eq!(canonical(sa("[::ffff:10.1.2.3]:0")), sa("10.1.2.3:0"));
        assert_eq!(
            canonical_ip(sa("[::ffff:192.0.2.7]:1").ip()),
            sa("192.0.2.7:1").ip()
        );
    }

    #[test]
    fn other_addresses_are_kept() {
        for s in ["127.0.0.1:80", "[::1]:80", "[::]:80", "[2001:db8::1]:443"] {
            assert_eq!(canonical(sa(s)), sa(s));
        }
        // IPv4-compatible (deprecated, `::a.b.c.d`) is not IPv4-mapped: a real IPv6 address.
        assert_eq!(canonical(sa("[::10.1.2.3]:80")), sa("[::10.1.2.3]:80"));
        let scoped = sa("[fe80::1%2]:22");
        assert_eq!(canonical(scoped), scoped);
    }
}
