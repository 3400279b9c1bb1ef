//! Who the client really is: the socket peer, or — behind trusted proxies — the right-most
//! address in `X-Forwarded-For` / `Forwarded` that no trusted proxy wrote.
//!
//! Only hops a trusted proxy appended can be believed: everything to their left came from the
//! client and may be forged. So the chain `header hops..., peer` is walked from the right,
//! skipping trusted proxies, and the first untrusted address is the client. A forwarded header
//! from an untrusted peer is ignored outright.
//!
//! Which header the proxy writes is a setting ([`ForwardedHeader`]). In `auto` mode a request
//! carrying both is not guessed at: a client could have forged either one, so it is keyed on the
//! last trusted hop (the proxy itself) and a warning tells the operator to choose a header.
//!
//! IPv6 clients are keyed by their /64: one subscriber usually owns a whole /64 and could
//! otherwise rotate through 2^64 addresses to dodge every per-client limit.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use axum::extract::{ConnectInfo, Request};
use axum::http::HeaderMap;
use forwarded_header_value::ForwardedHeaderValue;
use ipnet::IpNet;

use super::header_names::{X_FORWARDED_FOR, X_REQUEST_ID};
pub use crate::domain::ClientAddr;
use crate::domain::ValidationError;

/// Peers whose forwarded headers are believed (`FLASHGATE_TRUSTED_PROXIES`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Comma-separated CIDRs (`10.0.0.0/8, 2001:db8::/32`); a bare address is its own /32 or
    /// /128. Empty: trust nobody.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        raw.split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .map(|part| {
                IpNet::from_str(part)
                    .or_else(|_| IpAddr::from_str(part).map(IpNet::from))
                    .map(|net| net.trunc())
                    .map_err(|_| {
                        ValidationError::new(
                            "trusted_proxies",
                            format!("{part:?} is not an IP address or CIDR such as 10.0.0.0/8"),
                        )
                    })
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(super) fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }
}

/// Which forwarded header the trusted proxies write (`FLASHGATE_FORWARDED_HEADER`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ForwardedHeader {
    /// Whichever one is present; a request with both is keyed on the proxy.
    #[default]
    Auto,
    /// `X-Forwarded-For` only.
    XForwardedFor,
    /// `Forwarded` (RFC 7239) only.
    Forwarded,
}

/// How the client address is found.
#[derive(Debug, Clone, Default)]
pub struct ClientAddrPolicy {
    pub trusted: TrustedProxies,
    pub header: ForwardedHeader,
}

/// One hop of a forwarded chain, left to right.
#[derive(Debug, PartialEq)]
enum Hop {
    Ip(IpAddr),
    /// `unknown`, an obfuscated node, or garbage: a hop that cannot be keyed.
    Opaque,
}

fn x_forwarded_for_hops(headers: &HeaderMap) -> Option<Vec<Hop>> {
    let mut hops = Vec::new();
    for value in headers.get_all(&X_FORWARDED_FOR) {
        for part in value.to_str().unwrap_or("?").split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            hops.push(
                IpAddr::from_str(part)
                    .or_else(|_| SocketAddr::from_str(part).map(|s| s.ip()))
                    .map_or(Hop::Opaque, Hop::Ip),
            );
        }
    }
    (!hops.is_empty()).then_some(hops)
}

fn forwarded_hops(headers: &HeaderMap) -> Option<Vec<Hop>> {
    let mut hops = Vec::new();
    for value in headers.get_all(axum::http::header::FORWARDED) {
        match value
            .to_str()
            .ok()
            .map(ForwardedHeaderValue::from_forwarded)
        {
            Some(Ok(parsed)) => hops.extend(
                parsed
                    .iter()
                    .map(|stanza| stanza.forwarded_for_ip().map_or(Hop::Opaque, Hop::Ip)),
            ),
            // An unparsable line still stands for at least one hop nobody can vouch for.
            _ => hops.push(Hop::Opaque),
        }
    }
    (!hops.is_empty()).then_some(hops)
}

impl ClientAddrPolicy {
    /// The client of a request that arrived from `peer` with `headers`.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> ClientAddr {
        let peer = peer.to_canonical();
        if self.trusted.is_empty() || !self.trusted.trusts(peer) {
            return ClientAddr::of(peer);
        }
        let hops = match self.header {
            ForwardedHeader::XForwardedFor => x_forwarded_for_hops(headers),
            ForwardedHeader::Forwarded => forwarded_hops(headers),
            ForwardedHeader::Auto => {
                match (x_forwarded_for_hops(headers), forwarded_hops(headers)) {
                    (Some(_), Some(_)) => {
                        tracing::warn!(
                            %peer,
                            "a trusted proxy sent both X-Forwarded-For and Forwarded; keying the \
                             request on the proxy (set FLASHGATE_FORWARDED_HEADER to the one it writes)"
                        );
                        None
                    }
                    (xff, fwd) => xff.or(fwd),
                }
            }
        };
        let mut client = peer;
        for hop in hops.into_iter().flatten().rev() {
            match hop {
                Hop::Ip(ip) => {
                    let ip = ip.to_canonical();
                    client = ip;
                    if !self.trusted.trusts(ip) {
                        break;
                    }
                }
                // The trusted hop to its right received this request from it: charge that hop.
                Hop::Opaque => break,
            }
        }
        ClientAddr::of(client)
    }
}

/// The edge's first step, before the request id is set: a request's `x-request-id` is kept
/// only from a trusted proxy and only when it is 1–64 of `A-Z a-z 0-9 -`; otherwise it is
/// dropped and a fresh one is made. Every log line of the request carries the id, so a client
/// must not choose it (8,000 characters, or text made to look like another log line). Then the
/// request gets its [`ClientAddr`], resolved through the trusted proxies.
pub fn vet(policy: &ClientAddrPolicy, mut request: Request) -> Request {
    let Some(ConnectInfo(peer)) = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .copied()
    else {
        request.headers_mut().remove(&X_REQUEST_ID);
        return request;
    };
    if let Some(value) = request.headers().get(&X_REQUEST_ID) {
        let from_proxy = policy.trusted.trusts(peer.ip().to_canonical());
        let bytes = value.as_bytes();
        let well_formed = (1..=64).contains(&bytes.len())
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-');
        if !(from_proxy && well_formed) {
            request.headers_mut().remove(&X_REQUEST_ID);
        }
    }
    let client = policy.client(peer.ip(), request.headers());
    request.extensions_mut().insert(client);
    request
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn policy(trusted: &str, header: ForwardedHeader) -> ClientAddrPolicy {
        ClientAddrPolicy {
            trusted: TrustedProxies::parse(trusted).expect("proxies"),
            header,
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).expect("value"));
        }
        map
    }

    #[test]
    fn parses_cidrs_and_bare_addresses() {
        let proxies =
            TrustedProxies::parse(" 10.0.0.0/8, 192.168.1.7 ,::1, 2001:db8::/32").expect("proxies");
        assert!(proxies.trusts(ip("10.200.3.4")));
        assert!(proxies.trusts(ip("192.168.1.7")));
        assert!(!proxies.trusts(ip("192.168.1.8")));
        assert!(proxies.trusts(ip("::1")));
        assert!(proxies.trusts(ip("2001:db8:ffff::1")));
        assert!(TrustedProxies::parse("").expect("empty").is_empty());
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
        assert!(TrustedProxies::parse("proxy.internal").is_err());
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let p = policy("10.0.0.0/8", ForwardedHeader::Auto);
        let h = headers(&[("x-forwarded-for", "1.2.3.4")]);
        assert_eq!(
            p.client(ip("203.0.113.9"), &h),
            ClientAddr::of(ip("203.0.113.9"))
        );
        let nobody = policy("", ForwardedHeader::Auto);
        assert_eq!(
            nobody.client(ip("10.0.0.1"), &h),
            ClientAddr::of(ip("10.0.0.1"))
        );
    }

    #[test]
    fn behind_trusted_proxies_the_client_is_the_rightmost_untrusted_hop() {
        let p = policy("10.0.0.0/8", ForwardedHeader::Auto);
        // The client forged "6.6.6.6"; the first proxy appended the real 198.51.100.7, the
        // second proxy appended the first (10.1.1.1), and the peer is the second proxy.
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.1.1.1")]);
        assert_eq!(
            p.client(ip("10.0.0.2"), &h),
            ClientAddr::of(ip("198.51.100.7"))
        );
        // Several header lines are one list, in order.
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "198.51.100.7"),
        ]);
        assert_eq!(
            p.client(ip("10.0.0.2"), &h),
            ClientAddr::of(ip("198.51.100.7"))
        );
    }

    #[test]
    fn forwarded_is_read_like_x_forwarded_for() {
        let p = policy("10.0.0.0/8", ForwardedHeader::Auto);
        let h = headers(&[(
            "forwarded",
            "for=6.6.6.6, for=\"[2001:db8:1:2::77]:4711\";proto=https, for=10.1.1.1",
        )]);
        assert_eq!(
            p.client(ip("10.0.0.2"), &h),
            ClientAddr::of(ip("2001:db8:1:2::"))
        );
    }

    #[test]
    fn no_header_or_an_all_trusted_chain_keys_the_leftmost_trusted_hop() {
        let p = policy("10.0.0.0/8", ForwardedHeader::Auto);
        assert_eq!(
            p.client(ip("10.0.0.2"), &HeaderMap::new()),
            ClientAddr::of(ip("10.0.0.2"))
        );
        let h = headers(&[("x-forwarded-for", "10.9.9.9, 10.1.1.1")]);
        assert_eq!(p.client(ip("10.0.0.2"), &h), ClientAddr::of(ip("10.9.9.9")));
    }

    #[test]
    fn garbage_stops_the_walk_at_the_proxy_that_received_it() {
        let p = policy("10.0.0.0/8", ForwardedHeader::Auto);
        let h = headers(&[("x-forwarded-for", "1.2.3.4, not-an-ip, 10.1.1.1")]);
        assert_eq!(p.client(ip("10.0.0.2"), &h), ClientAddr::of(ip("10.1.1.1")));
        let h = headers(&[("forwarded", "for=unknown")]);
        assert_eq!(p.client(ip("10.0.0.2"), &h), ClientAddr::of(ip("10.0.0.2")));
    }

    #[test]
    fn both_headers_in_auto_mode_key_the_proxy_and_a_chosen_header_wins() {
        let h = headers(&[
            ("x-forwarded-for", "198.51.100.7"),
            ("forwarded", "for=6.6.6.6"),
        ]);
        let auto = policy("10.0.0.0/8", ForwardedHeader::Auto);
        assert_eq!(
            auto.client(ip("10.0.0.2"), &h),
            ClientAddr::of(ip("10.0.0.2"))
        );
        let xff = policy("10.0.0.0/8", ForwardedHeader::XForwardedFor);
        assert_eq!(
            xff.client(ip("10.0.0.2"), &h),
            ClientAddr::of(ip("198.51.100.7"))
        );
        let fwd = policy("10.0.0.0/8", ForwardedHeader::Forwarded);
        assert_eq!(
            fwd.client(ip("10.0.0.2"), &h),
            ClientAddr::of(ip("6.6.6.6"))
        );
    }
}
