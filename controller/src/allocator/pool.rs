//! One pool's addresses: its configuration, per-family free space, and counts.

use std::net::IpAddr;

use ferrolb_crds::addresses::{AddressRange, MAX_COUNT, saturating_count, to_u128};
use ferrolb_crds::{AddressCounts, Family};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::intervals::IntervalSet;

/// Which Services may use a pool (every given condition must hold).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selection {
    /// Namespaces listed; with `namespace_selector`, the namespace set is their union.
    pub namespaces: Vec<String>,
    /// Namespaces selected by label.
    pub namespace_selector: Option<LabelSelector>,
    /// Labels the Service must carry.
    pub service_selector: Option<LabelSelector>,
}

/// A pool's settings, as the allocator needs them.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// The usable ranges (entries that did not parse are left out and reported by the reconciler).
    pub ranges: Vec<AddressRange>,
    /// Used for Services that ask for no pool.
    pub auto_assign: bool,
    /// Skip x.y.z.0 and x.y.z.255.
    pub avoid_buggy_ips: bool,
    /// Lower is tried first; unset after every set one.
    pub priority: Option<i32>,
    /// No new allocations.
    pub disabled: bool,
    /// Services of different namespaces may share an address.
    pub share_across_namespaces: bool,
    /// Which Services may use it (`serviceAllocation`); a pool that has one is tried first for
    /// the Services it admits, even when it lists no condition.
    pub selection: Option<Selection>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            ranges: Vec::new(),
            auto_assign: true,
            avoid_buggy_ips: false,
            priority: None,
            disabled: false,
            share_across_namespaces: true,
            selection: None,
        }
    }
}

/// Whether an IPv4 address ends in .0 or .255; if so, the next candidate worth trying.
fn buggy_skip(x: u128) -> Option<u128> {
    match x % 256 {
        0 => Some(x + 1),
        255 => Some(x + 2),
        _ => None,
    }
}

/// How many members of `[s, e]` are ≡ 0 or 255 (mod 256).
fn buggy_in(s: u128, e: u128) -> u128 {
    let upto = |n: u128| -> u128 {
        // members of [0, n] that are ≡ 0 or ≡ 255 mod 256
        n / 256 + 1 + if n % 256 == 255 { n / 256 + 1 } else { n / 256 }
    };
    let before = if s == 0 { 0 } else { upto(s - 1) };
    upto(e) - before
}

/// A pool and its free space.
#[derive(Debug, Clone)]
pub struct Pool {
    /// Its settings.
    pub config: PoolConfig,
    /// All of its addresses, per family (index 0: IPv4, 1: IPv6).
    all: [IntervalSet; 2],
    /// Its addresses that nobody holds.
    free: [IntervalSet; 2],
}

fn idx(f: Family) -> usize {
    match f {
        Family::V4 => 0,
        Family::V6 => 1,
    }
}

/// The integer of an address and its family.
pub fn key(ip: &IpAddr) -> (Family, u128) {
    (Family::of(ip), to_u128(*ip))
}

/// The address of an integer in a family.
pub fn addr(f: Family, x: u128) -> IpAddr {
    match f {
        Family::V4 => IpAddr::V4(std::net::Ipv4Addr::from(u32::try_from(x).unwrap_or(u32::MAX))),
        Family::V6 => IpAddr::V6(std::net::Ipv6Addr::from(x)),
    }
}

impl Pool {
    /// A pool with every address free except those in `used`.
    pub fn new(config: PoolConfig, used: &[IpAddr]) -> Self {
        let mut all = [IntervalSet::new(), IntervalSet::new()];
        for r in &config.ranges {
            all[idx(r.family())].insert(to_u128(r.start()), to_u128(r.end()));
        }
        let mut free = all.clone();
        for ip in used {
            let (f, x) = key(ip);
            free[idx(f)].remove(x);
        }
        Self { config, all, free }
    }

    /// Whether the pool has `ip` (held or not), and it is not a skipped buggy address.
    pub fn contains(&self, ip: &IpAddr) -> bool {
        let (f, x) = key(ip);
        self.all[idx(f)].contains(x) && !self.is_buggy(ip)
    }

    /// Whether the pool skips `ip` because of avoidBuggyIPs.
    pub fn is_buggy(&self, ip: &IpAddr) -> bool {
        self.config.avoid_buggy_ips && ip.is_ipv4() && buggy_skip(to_u128(*ip)).is_some()
    }

    /// Whether `ip` is free here.
    pub fn is_free(&self, ip: &IpAddr) -> bool {
        let (f, x) = key(ip);
        self.free[idx(f)].contains(x) && !self.is_buggy(ip)
    }

    /// The lowest free address of `f`.
    pub fn lowest_free(&self, f: Family) -> Option<IpAddr> {
        let set = &self.free[idx(f)];
        let x = if self.config.avoid_buggy_ips && f == Family::V4 { set.first_where(buggy_skip) } else { set.first() };
        x.map(|x| addr(f, x))
    }

    /// Marks `ip` held (no-op when it is not ours).
    pub fn take(&mut self, ip: &IpAddr) {
        let (f, x) = key(ip);
        self.free[idx(f)].remove(x);
    }

    /// Marks `ip` free again, if it is ours.
    pub fn give_back(&mut self, ip: &IpAddr) {
        let (f, x) = key(ip);
        if self.all[idx(f)].contains(x) {
            self.free[idx(f)].insert(x, x);
        }
    }

    /// Whether the pool has any address of `f`.
    pub fn has_family(&self, f: Family) -> bool {
        !self.all[idx(f)].is_empty()
    }

    /// Whether this pool's addresses overlap `other`'s (pairwise, O(n·m): for tests and the
    /// benchmark's side-by-side; the allocator sweeps).
    pub fn overlaps(&self, other: &Pool) -> bool {
        (0..2).any(|i| self.all[i].spans().any(|(s, e)| other.all[i].spans().any(|(os, oe)| s <= oe && os <= e)))
    }

    /// All of its spans as (family index, first, last), in order.
    pub fn spans(&self) -> impl Iterator<Item = (usize, u128, u128)> + '_ {
        (0..2).flat_map(move |i| self.all[i].spans().map(move |(s, e)| (i, s, e)))
    }

    /// Total, used and available counts for `f` (None when the pool has no such addresses).
    /// Counts saturate at [`MAX_COUNT`].
    pub fn counts(&self, f: Family) -> Option<AddressCounts> {
        let i = idx(f);
        if self.all[i].is_empty() {
            return None;
        }
        let skip_buggy = self.config.avoid_buggy_ips && f == Family::V4;
        let usable = |set: &IntervalSet| -> u128 {
            set.spans().fold(0u128, |acc, (s, e)| {
                let n = (e - s).saturating_add(1);
                acc.saturating_add(if skip_buggy { n - buggy_in(s, e) } else { n })
            })
        };
        let total = usable(&self.all[i]);
        let available = usable(&self.free[i]);
        let used = total.saturating_sub(available);
        let used = if total == u128::MAX { used.min(MAX_COUNT as u128) } else { used };
        Some(AddressCounts {
            total: saturating_count(total),
            used: saturating_count(used),
            available: saturating_count(available),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrolb_crds::addresses::parse_entry;

    fn pool(entries: &[&str], avoid: bool) -> Pool {
        let ranges = entries.iter().map(|e| parse_entry(e).unwrap()).collect();
        Pool::new(PoolConfig { ranges, avoid_buggy_ips: avoid, ..PoolConfig::default() }, &[])
    }

    #[test]
    fn buggy_counting_matches_brute_force() {
        for (s, e) in [(0u128, 0u128), (0, 255), (250, 600), (255, 256), (1, 254), (1000, 5000)] {
            let brute = (s..=e).filter(|x| x % 256 == 0 || x % 256 == 255).count() as u128;
            assert_eq!(buggy_in(s, e), brute, "[{s}, {e}]");
        }
    }

    #[test]
    fn counts_and_buggy_addresses() {
        let mut p = pool(&["198.51.100.0/24"], true);
        assert_eq!(p.counts(Family::V4), Some(AddressCounts { total: 254, used: 0, available: 254 }));
        assert_eq!(p.lowest_free(Family::V4), Some("198.51.100.1".parse().unwrap()));
        p.take(&"198.51.100.1".parse().unwrap());
        assert_eq!(p.counts(Family::V4).unwrap().used, 1);
        assert!(!p.contains(&"198.51.100.255".parse().unwrap()));
        assert_eq!(p.counts(Family::V6), None);
        let huge = pool(&["2001:db8::/64", "::/0"], false);
        assert_eq!(huge.counts(Family::V6).unwrap().total, MAX_COUNT);
    }
}
