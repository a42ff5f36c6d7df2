//! Addresses no Service is ever given, whatever a pool says (pure).
//!
//! - Special-purpose ranges that cannot work as a load-balancer address: unspecified, loopback
//!   (with kube-proxy's `route_localnet=1` a VIP of 127.0.0.1 would let a tenant's pod take a
//!   node's loopback port), link-local, multicast, limited broadcast, IPv4-mapped IPv6.
//! - The subnet-router anycast address (RFC 4291 2.6.1) of every IPv6 CIDR entry shorter than /127:
//!   routers on that subnet answer it.
//! - The cluster's own ranges given to the controller (`--reserved-cidrs`: its Service CIDRs).
//!
//! Single addresses held by the cluster itself (ClusterIPs, Node addresses) change at run time and
//! are kept by the allocator ([`super::Allocator::reserve`]).

use std::fmt;
use std::net::IpAddr;

use ferrolb_crds::addresses::{AddressRange, parse_entry, to_u128};
use ferrolb_crds::{Family, ServiceKey};

use super::pool::addr;

/// Something in the cluster that holds addresses of its own, which no Service is given.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reserver {
    /// A Service's ClusterIPs.
    ClusterIp(ServiceKey),
    /// A Node's addresses.
    Node(String),
}

impl fmt::Display for Reserver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reserver::ClusterIp(k) => write!(f, "the ClusterIP of Service {k}"),
            Reserver::Node(n) => write!(f, "an address of Node {n}"),
        }
    }
}

/// A range that is never handed out, and what it is (as users read it in a pool's status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hole {
    /// The addresses.
    pub range: AddressRange,
    /// What they are.
    pub what: String,
}

impl Hole {
    /// A hole from an entry written like a pool's (`"127.0.0.0/8"`); None if it does not parse.
    pub fn parse(entry: &str, what: &str) -> Option<Hole> {
        parse_entry(entry).ok().map(|range| Hole { range, what: what.to_string() })
    }
}

const SPECIAL: [(&str, &str); 10] = [
    ("0.0.0.0/8", "unspecified (\"this network\")"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255", "limited broadcast"),
    ("::", "unspecified"),
    ("::1", "loopback"),
    ("::ffff:0:0/96", "IPv4-mapped"),
    ("fe80::/10", "link-local"),
    ("ff00::/8", "multicast"),
];

/// The special-purpose ranges.
pub fn special() -> Vec<Hole> {
    SPECIAL.iter().filter_map(|(entry, what)| Hole::parse(entry, what)).collect()
}

/// What a special-purpose address is, if it is one.
pub fn special_kind(ip: &IpAddr) -> Option<String> {
    special().into_iter().find(|h| h.range.contains(ip)).map(|h| h.what)
}

/// The subnet-router anycast address of a pool entry, when it is an IPv6 CIDR shorter than /127.
pub fn subnet_router_anycast(entry: &str) -> Option<IpAddr> {
    let (_, prefix) = entry.trim().split_once('/')?;
    let range = parse_entry(entry).ok()?;
    (range.family() == Family::V6 && prefix.trim().parse::<u8>().ok()? < 127).then(|| range.start())
}

/// `ranges` without the holes, and the holes that took something out, each once, as
/// `"<hole> (<what>)"`.
pub fn subtract(ranges: &[AddressRange], holes: &[Hole]) -> (Vec<AddressRange>, Vec<String>) {
    let mut out = Vec::new();
    let mut cut: Vec<String> = Vec::new();
    for r in ranges {
        let f = r.family();
        let mut pieces = vec![(to_u128(r.start()), to_u128(r.end()))];
        for h in holes.iter().filter(|h| h.range.family() == f) {
            let (hs, he) = (to_u128(h.range.start()), to_u128(h.range.end()));
            let mut next = Vec::with_capacity(pieces.len() + 1);
            for (s, e) in pieces {
                if he < s || e < hs {
                    next.push((s, e));
                    continue;
                }
                let note = format!("{} ({})", h.range, h.what);
                if !cut.contains(&note) {
                    cut.push(note);
                }
                if s < hs {
                    next.push((s, hs - 1));
                }
                if he < e {
                    next.push((he + 1, e));
                }
            }
            pieces = next;
        }
        out.extend(pieces.into_iter().filter_map(|(s, e)| AddressRange::new(addr(f, s), addr(f, e))));
    }
    (out, cut)
}

/// Whether the family has any address left in `ranges`.
pub fn has_family(ranges: &[AddressRange], f: Family) -> bool {
    ranges.iter().any(|r| r.family() == f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn range(s: &str) -> AddressRange {
        parse_entry(s).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn everything_special_is_cut_out_of_the_whole_internet() {
        let (left, cut) = subtract(&[range("0.0.0.0/0"), range("::/0")], &special());
        for bad in ["0.0.0.0", "127.0.0.1", "169.254.1.1", "224.0.0.1", "239.255.255.255", "255.255.255.255"] {
            assert!(!left.iter().any(|r| r.contains(&ip(bad))), "{bad} left in {left:?}");
        }
        for bad in ["::", "::1", "::ffff:10.0.0.1", "fe80::1", "ff02::1"] {
            assert!(!left.iter().any(|r| r.contains(&ip(bad))), "{bad} left");
        }
        for good in ["1.0.0.0", "198.51.100.1", "255.255.255.254", "2001:db8::1", "::2"] {
            assert!(left.iter().any(|r| r.contains(&ip(good))), "{good} lost");
        }
        assert_eq!(cut.len(), 10, "{cut:?}");
        assert!(cut.iter().any(|c| c == "127.0.0.0-127.255.255.255 (loopback)"), "{cut:?}");
    }

    #[test]
    fn ordinary_pools_lose_nothing() {
        let pools = [range("198.51.100.0/24"), range("2001:db8::/64"), range("192.168.1.240-192.168.1.250")];
        let (left, cut) = subtract(&pools, &special());
        assert_eq!(left, pools);
        assert!(cut.is_empty());
        assert_eq!(special_kind(&ip("198.51.100.1")), None);
        assert_eq!(special_kind(&ip("127.0.0.53")).as_deref(), Some("loopback"));
    }

    #[test]
    fn the_anycast_address_of_ipv6_cidrs_only() {
        assert_eq!(subnet_router_anycast("2001:db8::/64"), Some(ip("2001:db8::")));
        assert_eq!(subnet_router_anycast(" 2001:db8::8/120"), Some(ip("2001:db8::")));
        assert_eq!(subnet_router_anycast("2001:db8::/127"), None);
        assert_eq!(subnet_router_anycast("2001:db8::1-2001:db8::9"), None);
        assert_eq!(subnet_router_anycast("198.51.100.0/24"), None);
    }

    proptest! {
        /// Subtraction keeps exactly the addresses outside every hole.
        #[test]
        fn subtraction_is_exact(a: u16, len in 0u16..2000, hs in proptest::collection::vec((0u16..u16::MAX, 0u16..300), 0..5), off in 0u32..2100) {
            let v4 = |x: u32| IpAddr::V4(std::net::Ipv4Addr::from(x));
            let r = AddressRange::new(v4(u32::from(a)), v4(u32::from(a) + u32::from(len))).unwrap();
            let holes: Vec<Hole> = hs.iter().map(|(s, l)| Hole {
                range: AddressRange::new(v4(u32::from(*s)), v4(u32::from(*s) + u32::from(*l))).unwrap(),
                what: "x".into(),
            }).collect();
            let (left, _) = subtract(&[r], &holes);
            let p = v4((u32::from(a) + off).saturating_sub(50));
            let expect = r.contains(&p) && !holes.iter().any(|h| h.range.contains(&p));
            prop_assert_eq!(left.iter().any(|x| x.contains(&p)), expect);
        }
    }
}
