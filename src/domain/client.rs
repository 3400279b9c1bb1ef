//! The client a request is charged to, and the tiers its holds are counted at.

use std::net::{IpAddr, Ipv6Addr};

/// The client a request is charged to: an IPv4 address or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddr(IpAddr);

impl ClientAddr {
    /// Keys `ip` by its client: IPv4 as is (IPv4-mapped IPv6 included), IPv6 by its /64.
    pub fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Self(IpAddr::V4(v4)),
            IpAddr::V6(v6) => {
                let bits = u128::from(v6) & (u128::MAX << 64);
                Self(IpAddr::V6(Ipv6Addr::from(bits)))
            }
        }
    }

    pub fn ip(self) -> IpAddr {
        self.0
    }

    /// The tiers the client's holds are counted at (`FLASHGATE_HOLDS_PER_CLIENT*`), narrowest
    /// first and space-separated: an IPv4 address alone, an IPv6 client's /64, /56 and /48.
    pub fn tiers(self) -> String {
        match self.0 {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => {
                let prefix =
                    |bits: u32| Ipv6Addr::from(u128::from(v6) & (u128::MAX << (128 - bits)));
                format!("{self} {}/56 {}/48", prefix(56), prefix(48))
            }
        }
    }
}

impl std::fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64() {
        let a = ClientAddr::of(ip("2001:db8:1:2:aaaa::1"));
        let b = ClientAddr::of(ip("2001:db8:1:2:bbbb::9"));
        let other = ClientAddr::of(ip("2001:db8:1:3::1"));
        assert_eq!(a, b);
        assert_ne!(a, other);
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
        assert_eq!(
            ClientAddr::of(ip("2001:db8:1:2ff:5::9")).tiers(),
            "2001:db8:1:2ff::/64 2001:db8:1:200::/56 2001:db8:1::/48"
        );
        assert_eq!(ClientAddr::of(ip("203.0.113.9")).tiers(), "203.0.113.9");
        assert_eq!(ClientAddr::of(ip("::ffff:1.2.3.4")).to_string(), "1.2.3.4");
    }
}
