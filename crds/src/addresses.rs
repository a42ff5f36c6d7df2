//! Parsing `IPPool.spec.addresses` into typed, inclusive address ranges.
//!
//! Accepted forms: a CIDR (`192.168.2.0/28`; host bits are masked off, as MetalLB does), a single
//! address (`198.51.100.7`, meaning /32 or /128), or an inclusive range `start-end` whose ends are
//! of one family. Spaces around the dash are allowed.

use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

/// The largest count the API reports. Counts are JSON int64, so anything larger (an IPv6 /64 has
/// 2^64 addresses) saturates here; see [`saturating_count`].
pub const MAX_COUNT: u64 = i64::MAX as u64;

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The family of an address.
    pub fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The name Kubernetes uses in `spec.ipFamilies`.
    pub fn k8s_name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.k8s_name())
    }
}

/// Why an address entry could not be parsed. The messages are shown to users in pool conditions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// `spec.addresses` has no entries.
    #[error("spec.addresses is empty: a pool needs at least one CIDR or range")]
    Empty,
    /// The entry looks like a CIDR but is not one.
    #[error("{entry:?} is not a valid CIDR: {reason}")]
    BadCidr {
        /// The entry as written.
        entry: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The entry looks like a range but one of its ends is not an address.
    #[error("{entry:?} is not a valid range start-end: {reason}")]
    BadRange {
        /// The entry as written.
        entry: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A range whose start is after its end.
    #[error("range {entry:?} starts after it ends")]
    StartAfterEnd {
        /// The entry as written.
        entry: String,
    },
    /// A range whose ends are of different families.
    #[error("range {entry:?} mixes an IPv4 and an IPv6 address")]
    MixedFamilies {
        /// The entry as written.
        entry: String,
    },
}

/// An inclusive range of addresses of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AddressRange {
    start: IpAddr,
    end: IpAddr,
}

impl AddressRange {
    /// A range from `start` to `end`, both included; they must be of one family and in order.
    pub fn new(start: IpAddr, end: IpAddr) -> Option<Self> {
        (Family::of(&start) == Family::of(&end) && start <= end).then_some(Self { start, end })
    }

    /// The first address.
    pub fn start(&self) -> IpAddr {
        self.start
    }

    /// The last address.
    pub fn end(&self) -> IpAddr {
        self.end
    }

    /// The family of both ends.
    pub fn family(&self) -> Family {
        Family::of(&self.start)
    }

    /// Whether `ip` lies inside.
    pub fn contains(&self, ip: &IpAddr) -> bool {
        Family::of(ip) == self.family() && self.start <= *ip && *ip <= self.end
    }

    /// How many addresses the range holds; `::/0` (2^128) saturates at `u128::MAX`.
    pub fn len(&self) -> u128 {
        (to_u128(self.end) - to_u128(self.start)).saturating_add(1)
    }

    /// Always false: a range holds at least one address.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl fmt::Display for AddressRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end { write!(f, "{}", self.start) } else { write!(f, "{}-{}", self.start, self.end) }
    }
}

/// An address as an integer, so that ranges can be measured and walked.
pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// Clamps a 128-bit count to what the API can carry ([`MAX_COUNT`]).
pub fn saturating_count(n: u128) -> u64 {
    u64::try_from(n).map_or(MAX_COUNT, |n| n.min(MAX_COUNT))
}

/// Parses one entry of `spec.addresses`.
pub fn parse_entry(entry: &str) -> Result<AddressRange, AddressError> {
    let trimmed = entry.trim();
    if let Some((start, end)) = trimmed.split_once('-') {
        let parse_end = |s: &str| {
            s.trim().parse::<IpAddr>().map_err(|e| AddressError::BadRange {
                entry: entry.to_string(),
                reason: format!("{:?}: {e}", s.trim()),
            })
        };
        let (start, end) = (parse_end(start)?, parse_end(end)?);
        if Family::of(&start) != Family::of(&end) {
            return Err(AddressError::MixedFamilies { entry: entry.to_string() });
        }
        return AddressRange::new(start, end).ok_or_else(|| AddressError::StartAfterEnd { entry: entry.to_string() });
    }
    let net: IpNetwork = trimmed.parse().map_err(|e: ipnetwork::IpNetworkError| AddressError::BadCidr {
        entry: entry.to_string(),
        reason: e.to_string(),
    })?;
    let range = match net {
        IpNetwork::V4(n) => AddressRange { start: n.network().into(), end: n.broadcast().into() },
        IpNetwork::V6(n) => {
            let prefix = u32::from(n.prefix());
            let host_mask = u128::MAX.checked_shr(prefix).unwrap_or(0);
            let start = u128::from(n.network());
            AddressRange { start: IpAddr::V6(start.into()), end: IpAddr::V6((start | host_mask).into()) }
        }
    };
    Ok(range)
}

/// Parses a whole `spec.addresses` list; the first bad entry is reported.
pub fn parse_addresses<S: AsRef<str>>(entries: &[S]) -> Result<Vec<AddressRange>, AddressError> {
    if entries.is_empty() {
        return Err(AddressError::Empty);
    }
    entries.iter().map(|e| parse_entry(e.as_ref())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_ranges_and_single_addresses() {
        let r = parse_entry("192.168.2.0/28").unwrap();
        assert_eq!((r.start(), r.end(), r.len()), (ip("192.168.2.0"), ip("192.168.2.15"), 16));
        let r = parse_entry("192.168.2.7/28").unwrap();
        assert_eq!(r.start(), ip("192.168.2.0"), "host bits are masked");
        let r = parse_entry(" 192.168.1.240 - 192.168.1.250 ").unwrap();
        assert_eq!((r.start(), r.end(), r.len()), (ip("192.168.1.240"), ip("192.168.1.250"), 11));
        let r = parse_entry("fd00:10::/120").unwrap();
        assert_eq!((r.end(), r.len()), (ip("fd00:10::ff"), 256));
        let r = parse_entry("198.51.100.7").unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r.to_string(), "198.51.100.7");
        assert_eq!(parse_entry("2001:db8::1-2001:db8::3").unwrap().len(), 3);
    }

    #[test]
    fn huge_ranges_saturate() {
        assert_eq!(parse_entry("::/0").unwrap().len(), u128::MAX);
        assert_eq!(parse_entry("2001:db8::/64").unwrap().len(), 1 << 64);
        assert_eq!(saturating_count(1 << 64), MAX_COUNT);
        assert_eq!(saturating_count(u128::MAX), MAX_COUNT);
        assert_eq!(saturating_count(27), 27);
        assert_eq!(parse_entry("0.0.0.0/0").unwrap().len(), 1 << 32);
    }

    #[test]
    fn precise_errors() {
        assert_eq!(parse_addresses::<&str>(&[]), Err(AddressError::Empty));
        assert!(matches!(parse_entry("not-an-ip"), Err(AddressError::BadRange { .. })));
        assert!(matches!(parse_entry("192.168.1.0/33"), Err(AddressError::BadCidr { .. })));
        assert!(matches!(parse_entry("300.1.1.1/24"), Err(AddressError::BadCidr { .. })));
        assert!(matches!(parse_entry("192.168.1.10-192.168.1.x"), Err(AddressError::BadRange { .. })));
        assert_eq!(
            parse_entry("192.168.1.250-192.168.1.240"),
            Err(AddressError::StartAfterEnd { entry: "192.168.1.250-192.168.1.240".into() })
        );
        assert_eq!(
            parse_entry("192.168.1.1-2001:db8::1"),
            Err(AddressError::MixedFamilies { entry: "192.168.1.1-2001:db8::1".into() })
        );
        let err = parse_addresses(&["198.51.100.0/30", "nope/24"]).unwrap_err();
        assert!(err.to_string().contains("\"nope/24\" is not a valid CIDR"), "{err}");
    }

    proptest! {
        #[test]
        fn ranges_round_trip_through_text(a: u32, b: u32) {
            let (lo, hi) = (a.min(b), a.max(b));
            let text = format!("{}-{}", std::net::Ipv4Addr::from(lo), std::net::Ipv4Addr::from(hi));
            let r = parse_entry(&text).unwrap();
            prop_assert_eq!(r.len(), u128::from(hi - lo) + 1);
            prop_assert_eq!(parse_entry(&r.to_string()).unwrap(), r);
        }

        #[test]
        fn v6_cidrs_cover_exactly_their_prefix(addr: u128, prefix in 0u8..=128) {
            let text = format!("{}/{prefix}", std::net::Ipv6Addr::from(addr));
            let r = parse_entry(&text).unwrap();
            prop_assert!(r.contains(&IpAddr::V6(addr.into())));
            let expected = if prefix == 0 { u128::MAX } else { 1u128 << (128 - u32::from(prefix)) };
            prop_assert_eq!(r.len(), expected);
        }

        #[test]
        fn arbitrary_text_never_panics(s in ".{0,40}") {
            let _ = parse_entry(&s);
        }
    }
}
