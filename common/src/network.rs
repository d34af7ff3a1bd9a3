//! IP networks in CIDR notation, and which addresses a UA may ask to be woken at: only its
//! own, or one inside a network the operator allows, so that the server can't be made to
//! send datagrams to third parties.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An IP network: an address and a prefix length, such as `10.0.0.0/8` or `fd00::/8`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not a network in CIDR notation (such as 10.0.0.0/8 or fd00::/8)")]
pub struct BadNetwork(String);

impl FromStr for Network {
    type Err = BadNetwork;

    fn from_str(s: &str) -> Result<Network, BadNetwork> {
        let bad = || BadNetwork(s.to_owned());
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(Network { addr, prefix })
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Network {
    /// Whether `ip` is inside the network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => same_prefix(
                u128::from(u32::from(net)),
                u128::from(u32::from(ip)),
                32,
                self.prefix,
            ),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                same_prefix(u128::from(net), u128::from(ip), 128, self.prefix)
            }
            _ => false,
        }
    }
}

fn same_prefix(a: u128, b: u128, bits: u8, prefix: u8) -> bool {
    let shift = u32::from(bits - prefix);
    // A shift by the whole width is a zero-length prefix: every address matches.
    a.checked_shr(shift).unwrap_or(0) == b.checked_shr(shift).unwrap_or(0)
}

/// Whether a UA connected from `peer` may be woken at `ip`: its own address, or inside one
/// of the `allowed` networks.
pub fn interface_allowed(ip: IpAddr, peer: Option<IpAddr>, allowed: &[Network]) -> bool {
    peer.is_some_and(|peer| peer.to_canonical() == ip.to_canonical())
        || allowed.iter().any(|n| n.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Network {
        s.parse().expect("a network")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    #[test]
    fn networks_parse_and_contain() {
        assert!(net("10.0.0.0/8").contains(ip("10.255.1.2")));
        assert!(!net("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(net("192.168.1.7").contains(ip("192.168.1.7")));
        assert!(!net("192.168.1.7").contains(ip("192.168.1.8")));
        assert!(net("0.0.0.0/0").contains(ip("8.8.8.8")));
        assert!(!net("0.0.0.0/0").contains(ip("::1")));
        assert!(net("fd00::/8").contains(ip("fd12::1")));
        assert!(net("::/0").contains(ip("2001:db8::1")));
        assert!(
            net("10.0.0.0/8").contains(ip("::ffff:10.1.2.3")),
            "mapped IPv4"
        );
        assert_eq!(net("10.0.0.0/8").to_string(), "10.0.0.0/8");
        for bad in [
            "",
            "10.0.0.0/33",
            "fd00::/129",
            "x/8",
            "10.0.0.0/-1",
            "10.0.0/8",
        ] {
            assert!(bad.parse::<Network>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_ua_is_woken_only_at_its_own_address_or_an_allowed_network() {
        let peer = Some(ip("203.0.113.9"));
        assert!(interface_allowed(ip("203.0.113.9"), peer, &[]));
        assert!(interface_allowed(ip("::ffff:203.0.113.9"), peer, &[]));
        assert!(!interface_allowed(ip("8.8.8.8"), peer, &[]), "reflection");
        assert!(!interface_allowed(ip("8.8.8.8"), None, &[]));
        let lan = [net("10.0.0.0/8")];
        assert!(interface_allowed(ip("10.1.1.1"), peer, &lan));
        assert!(!interface_allowed(ip("8.8.8.8"), peer, &lan));
    }
}
