//! Which node announces an address: deterministic and stateless rendezvous hashing. Every speaker
//! ranks the eligible nodes for an address by a hash of (node, address) and the first one
//! announces. Removing a node that is not the winner moves nothing; removing the winner moves only
//! its addresses, spread over the others.

use std::net::IpAddr;

/// FNV-1a 64 followed by a SplitMix64 finaliser: stable across processes, versions and platforms,
/// well spread, no dependency.
fn score(node: &str, address: &IpAddr) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |b: u8| {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    node.bytes().for_each(&mut feed);
    feed(0);
    match address {
        IpAddr::V4(a) => a.octets().into_iter().for_each(&mut feed),
        IpAddr::V6(a) => a.octets().into_iter().for_each(&mut feed),
    }
    let mut z = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The eligible nodes in the order they would take `address` over: the first one announces.
/// Ties (practically impossible) are broken by name, so the order is total.
pub fn rank<'a, I>(eligible: I, address: &IpAddr) -> Vec<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let mut nodes: Vec<(u64, &'a str)> = eligible.into_iter().map(|n| (score(n, address), n)).collect();
    nodes.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    nodes.dedup_by(|a, b| a.1 == b.1);
    nodes.into_iter().map(|(_, n)| n).collect()
}

/// The node that announces `address`, if any node is eligible.
pub fn winner<'a, I>(eligible: I, address: &IpAddr) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    eligible.into_iter().map(|n| (score(n, address), n)).max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(a.1))).map(|(_, n)| n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn deterministic_and_order_independent() {
        let a = ip("198.51.100.7");
        let w1 = winner(["node-a", "node-b", "node-c"], &a);
        let w2 = winner(["node-c", "node-a", "node-b"], &a);
        assert_eq!(w1, w2);
        assert_eq!(rank(["node-c", "node-a", "node-b"], &a)[0], w1.unwrap());
        assert_eq!(winner(std::iter::empty(), &a), None);
        // Pinned values: the hash must never change between versions, or a rolling upgrade would
        // move addresses.
        assert_eq!(score("node-a", &a), score("node-a", &ip("198.51.100.7")));
        assert_eq!(format!("{:016x}", score("node-a", &ip("198.51.100.7"))), PINNED);
    }

    /// Computed independently, in Python, from the same definition (FNV-1a 64 + SplitMix64).
    const PINNED: &str = "84e2e9b44f9473ff";

    #[test]
    fn addresses_spread_over_nodes() {
        let nodes = ["a", "b", "c", "d"];
        let mut counts = [0usize; 4];
        for i in 0..4000u32 {
            let addr = IpAddr::V4(std::net::Ipv4Addr::from(0xc612_0000 + i));
            let w = winner(nodes, &addr).unwrap();
            counts[nodes.iter().position(|n| *n == w).unwrap()] += 1;
        }
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
    }

    proptest! {
        #[test]
        fn removing_a_non_winner_moves_nothing(nodes in proptest::collection::btree_set("[a-z]{1,8}", 2..8), addr: u32, pick: usize) {
            let nodes: Vec<&str> = nodes.iter().map(String::as_str).collect();
            let a = IpAddr::V4(addr.into());
            let w = winner(nodes.iter().copied(), &a).unwrap();
            let others: Vec<&str> = nodes.iter().copied().filter(|n| *n != w).collect();
            let gone = others[pick % others.len()];
            let rest: Vec<&str> = nodes.iter().copied().filter(|n| *n != gone).collect();
            prop_assert_eq!(winner(rest.iter().copied(), &a), Some(w));
            // Removing the winner hands the address to the runner-up.
            let ranked = rank(nodes.iter().copied(), &a);
            let without: Vec<&str> = nodes.iter().copied().filter(|n| *n != w).collect();
            prop_assert_eq!(winner(without.iter().copied(), &a), Some(ranked[1]));
        }
    }
}
