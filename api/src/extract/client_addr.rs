//! `ClientAddr`: the address a request comes from, whose budget of failed
//! authentications it spends (`crate::limits`). It is the TCP peer, or,
//! when the peer is one of `TRUSTED_PROXIES`, the last hop of
//! `X-Forwarded-For` that is not itself trusted: each trusted proxy
//! appends the address it received the request from, so the hops to the
//! right of the first untrusted one were written by our proxies, and
//! everything to its left by the client (who may write anything there).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use ipnet::IpNet;

use crate::error::ApiError;
use crate::state::AppState;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// Where a request has no peer address (an in-process router, as in a
/// test): all such requests share this one budget.
pub const UNKNOWN_PEER: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        if let Some(known) = parts.extensions.get::<ClientAddr>() {
            return Ok(*known);
        }
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        let addr = ClientAddr(resolve(peer, &parts.headers, &state.config.trusted_proxies));
        parts.extensions.insert(addr);
        Ok(addr)
    }
}

/// The client address of a request from `peer` with these headers.
pub fn resolve(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let Some(peer) = peer.map(|p| p.to_canonical()) else {
        return UNKNOWN_PEER;
    };
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    // Every X-Forwarded-For header, in order, is one list.
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut nearest = peer;
    for hop in hops.iter().rev() {
        let Some(ip) = parse_hop(hop) else {
            // A trusted proxy wrote something that is not an address: the
            // nearest address we know is the best we have.
            return nearest;
        };
        if !is_trusted(&ip) {
            return ip;
        }
        nearest = ip;
    }
    // Every hop is one of ours (an internal caller): the first of them.
    nearest
}

/// `203.0.113.7`, `2001:db8::1`, and the forms some proxies write with a
/// port (`203.0.113.7:5678`, `[2001:db8::1]:5678`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>().ok().or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip())).map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().expect("a CIDR")).collect()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().expect("a header value"));
        }
        h
    }

    #[test]
    fn the_forwarded_for_header_is_believed_only_from_a_trusted_peer() {
        let proxies = nets(&["10.0.0.0/8"]);
        let spoofed = xff(&["198.51.100.9"]);
        // An untrusted peer is the client, whatever it claims.
        assert_eq!(resolve(Some(ip("203.0.113.7")), &spoofed, &proxies), ip("203.0.113.7"));
        // No trusted proxies at all (the default): the peer.
        assert_eq!(resolve(Some(ip("10.0.0.2")), &spoofed, &[]), ip("10.0.0.2"));
        // Through our proxy: the hop it appended.
        assert_eq!(resolve(Some(ip("10.0.0.2")), &spoofed, &proxies), ip("198.51.100.9"));
    }

    #[test]
    fn the_client_is_the_last_hop_that_is_not_a_trusted_proxy() {
        let proxies = nets(&["10.0.0.0/8", "192.168.7.1/32"]);
        let peer = Some(ip("10.0.0.2"));
        // The client wrote a fake first hop; our two proxies appended the
        // real address and then each other.
        let h = xff(&["1.1.1.1, 203.0.113.7, 192.168.7.1"]);
        assert_eq!(resolve(peer, &h, &proxies), ip("203.0.113.7"));
        // The same list split over several headers.
        let h = xff(&["1.1.1.1", "203.0.113.7", "192.168.7.1"]);
        assert_eq!(resolve(peer, &h, &proxies), ip("203.0.113.7"));
        // Ports and IPv6 forms some proxies write.
        assert_eq!(resolve(peer, &xff(&["203.0.113.7:5678"]), &proxies), ip("203.0.113.7"));
        assert_eq!(resolve(peer, &xff(&["[2001:db8::1]:443"]), &proxies), ip("2001:db8::1"));
        assert_eq!(resolve(peer, &xff(&["::ffff:203.0.113.7"]), &proxies), ip("203.0.113.7"));
    }

    #[test]
    fn without_a_usable_hop_the_nearest_known_address_is_the_client() {
        let proxies = nets(&["10.0.0.0/8"]);
        let peer = Some(ip("10.0.0.2"));
        // No header: the proxy itself (an internal caller).
        assert_eq!(resolve(peer, &HeaderMap::new(), &proxies), ip("10.0.0.2"));
        // Only trusted hops: the first of them.
        assert_eq!(resolve(peer, &xff(&["10.1.1.1, 10.2.2.2"]), &proxies), ip("10.1.1.1"));
        // Garbage where our proxy should have written an address: the
        // nearest address known, never the garbage.
        assert_eq!(resolve(peer, &xff(&["203.0.113.7, garbage"]), &proxies), ip("10.0.0.2"));
        assert_eq!(resolve(peer, &xff(&["garbage, 10.3.3.3"]), &proxies), ip("10.3.3.3"));
        // No peer at all (an in-process router): one shared address.
        assert_eq!(resolve(None, &xff(&["203.0.113.7"]), &proxies), UNKNOWN_PEER);
    }
}
