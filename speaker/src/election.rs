//! Which nodes may announce an address (the eligibility rule every announcing protocol shares),
//! and which one of them does in L2 mode. Every speaker ranks the eligible nodes for an address by
//! a hash of (node, address) — rendezvous hashing — and, from the same inputs, reaches the same
//! answer:
//! - an eligible node that already announces the address (its heartbeats claim it) keeps it, so
//!   an address never moves back to a node that returns (no flap-back); of several claimants
//!   (after a partition heals) the highest-ranked keeps it and the others drop their claims;
//! - an address nobody eligible claims goes to the highest-ranked eligible node that is speaking
//!   or has just started (settling: the address waits the moment it takes to hear its peers,
//!   rather than sticking to whichever node started first);
//! - an owner that is held (its speaker restarting in place, its node up) keeps its addresses, and
//!   the highest-ranked speaking node stands in: it answers ARP/NDP for them with the owner's MAC,
//!   so clients keep sending to the owner's node, which still forwards.
//!
//! Removing a node that is not the owner moves nothing; removing the owner moves only its
//! addresses, spread over the others. Pure.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ferrolb_crds::{ServiceKey, selector};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::l2::Mac;
use crate::membership::liveness::Members;
use crate::state::{ServiceView, View};

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

/// The live nodes that may make an address reachable: alive, usable (ready, network available,
/// not excluded from load balancers), selected by the protocol's `node_selector`, and — when any
/// Service on the address has `externalTrafficPolicy: Local` — holding a ready endpoint of each
/// such Service.
pub fn eligible<'a>(
    view: &'a View,
    services: &[&ServiceView],
    node_selector: Option<&LabelSelector>,
    alive: &'a BTreeSet<String>,
) -> Vec<&'a str> {
    alive
        .iter()
        .filter_map(|n| view.nodes.get(n))
        .filter(|n| n.usable)
        .filter(|n| node_selector.is_none_or(|s| selector::matches(s, &n.labels).unwrap_or(false)))
        .filter(|n| services.iter().filter(|s| s.local).all(|s| s.ready_nodes.contains(&n.name)))
        .map(|n| n.name.as_str())
        .collect()
}

/// The owner of `address` among the `eligible` nodes: the highest-ranked one that `claims` it,
/// else the highest-ranked one that may take a new address (`fresh`: speaking or settling, not
/// restarting).
pub fn owner<'a>(
    eligible: &[&'a str],
    address: &IpAddr,
    claims: impl Fn(&str) -> bool,
    fresh: impl Fn(&str) -> bool,
) -> Option<&'a str> {
    let ranked = rank(eligible.iter().copied(), address);
    ranked.iter().copied().find(|n| claims(n)).or_else(|| ranked.iter().copied().find(|n| fresh(n)))
}

/// Who announces one address in L2 mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    /// The owning node, if any node is eligible.
    pub winner: Option<String>,
    /// While the owner is held (restarting in place): the node answering for it, and the owner's
    /// MAC it answers with.
    pub stand_in: Option<(String, Mac)>,
    /// The Services using the address.
    pub services: Vec<ServiceKey>,
    /// Interface names or globs to announce on (empty: every suitable one).
    pub interfaces: Vec<String>,
}

/// Who announces every address in L2 mode, given the speakers alive now and what they claim.
/// Every speaker computes the same answer from the same inputs, so exactly one node answers for
/// each address.
pub fn announcements(view: &View, members: &Members) -> BTreeMap<IpAddr, Announcement> {
    let mut out = BTreeMap::new();
    for (ip, services) in view.by_address() {
        // Shared addresses come from one pool; the first Service's pool speaks for all.
        let pool = view.pools.get(&services[0].pool);
        let eligible = match pool {
            Some(p) if p.enabled => eligible(view, &services, p.node_selector.as_ref(), &members.alive),
            _ => Vec::new(),
        };
        let mac_of = |n: &str| members.claims.get(n).and_then(|c| c.get(&ip)).copied();
        let speaking = |n: &str| !members.held.contains(n);
        let fresh = |n: &str| speaking(n) || members.settling.contains(n);
        let winner = owner(&eligible, &ip, |n| mac_of(n).is_some(), fresh);
        let stand_in = winner.filter(|w| !speaking(w)).and_then(|w| {
            let mac = mac_of(w)?;
            let ranked = rank(eligible.iter().copied(), &ip);
            ranked.into_iter().find(|n| speaking(n)).map(|n| (n.to_string(), mac))
        });
        out.insert(
            ip,
            Announcement {
                winner: winner.map(String::from),
                stand_in,
                services: services.iter().map(|s| s.key.clone()).collect(),
                interfaces: pool.map(|p| p.interfaces.clone()).unwrap_or_default(),
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::PoolL2;
    use crate::state::read::NodeView;
    use proptest::prelude::*;

    fn svc(key: &str, ip: &str, pool: &str, local: bool, ready: &[&str]) -> (ServiceKey, ServiceView) {
        ServiceView::example(key, &[ip], pool, local, ready)
    }

    fn view() -> View {
        let node = |name: &str, lb: bool| {
            let mut labels = BTreeMap::new();
            if lb {
                labels.insert("lb".to_string(), "true".to_string());
            }
            (name.to_string(), NodeView { name: name.into(), labels, usable: true })
        };
        View {
            services: [
                svc("d/a", "198.51.100.1", "p", false, &[]),
                svc("d/b", "198.51.100.1", "p", false, &[]),
                svc("d/local", "198.51.100.2", "p", true, &["n2"]),
                svc("d/sel", "198.51.100.3", "sel", false, &[]),
                svc("d/off", "198.51.100.4", "off", false, &[]),
            ]
            .into_iter()
            .collect(),
            nodes: [node("n1", true), node("n2", false), node("n3", false)].into_iter().collect(),
            pools: BTreeMap::from([
                ("p".to_string(), PoolL2 { enabled: true, ..PoolL2::default() }),
                (
                    "sel".to_string(),
                    PoolL2 {
                        enabled: true,
                        node_selector: Some(LabelSelector {
                            match_labels: Some(BTreeMap::from([("lb".to_string(), "true".to_string())])),
                            match_expressions: None,
                        }),
                        interfaces: vec!["eth*".into()],
                    },
                ),
                ("off".to_string(), PoolL2 { enabled: false, ..PoolL2::default() }),
            ]),
            bgp_pools: BTreeMap::new(),
        }
    }

    fn alive(names: impl IntoIterator<Item = String>) -> Members {
        Members { alive: names.into_iter().collect(), ..Members::default() }
    }

    fn all() -> Members {
        alive(["n1", "n2", "n3"].iter().map(|s| s.to_string()))
    }

    #[test]
    fn shared_local_selected_and_disabled_addresses() {
        let d = announcements(&view(), &all());
        let shared = &d[&ip("198.51.100.1")];
        assert_eq!(
            shared.services,
            [ServiceKey::from("d/a"), ServiceKey::from("d/b")],
            "one decision for a shared address"
        );
        assert!(shared.winner.is_some());
        assert_eq!(d[&ip("198.51.100.2")].winner.as_deref(), Some("n2"), "Local: only the node with a ready endpoint");
        assert_eq!(d[&ip("198.51.100.3")].winner.as_deref(), Some("n1"), "nodeSelector");
        assert_eq!(d[&ip("198.51.100.3")].interfaces, ["eth*"]);
        assert_eq!(d[&ip("198.51.100.4")].winner, None, "l2 disabled: nobody announces");
    }

    #[test]
    fn the_announcement_moves_with_the_endpoint_and_with_liveness() {
        let mut v = view();
        let local = ServiceKey::from("d/local");
        v.services.get_mut(&local).unwrap().ready_nodes = BTreeSet::from(["n3".to_string()]);
        assert_eq!(announcements(&v, &all())[&ip("198.51.100.2")].winner.as_deref(), Some("n3"));
        v.services.get_mut(&local).unwrap().ready_nodes.clear();
        assert_eq!(announcements(&v, &all())[&ip("198.51.100.2")].winner, None, "no ready endpoint, no announcement");
        let first = announcements(&v, &all())[&ip("198.51.100.1")].winner.clone().unwrap();
        let survivors = alive(all().alive.into_iter().filter(|n| *n != first));
        let second = announcements(&v, &survivors)[&ip("198.51.100.1")].winner.clone().unwrap();
        assert_ne!(first, second, "the address moves when its node dies");
        v.nodes.get_mut(&second).unwrap().usable = false;
        let third = announcements(&v, &survivors)[&ip("198.51.100.1")].winner.clone().unwrap();
        assert!(third != first && third != second, "an unusable node does not announce");
    }

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

    #[test]
    fn a_claimed_address_stays_and_a_held_owner_gets_a_stand_in() {
        let v = view();
        let a = ip("198.51.100.1");
        let ranked = rank(["n1", "n2", "n3"], &a);
        let (top, last) = (ranked[0].to_string(), ranked[2].to_string());
        // The lowest-ranked node holds the address (it took it while the others were away).
        let mut m = all();
        m.claims.insert(last.clone(), BTreeMap::from([(a, [2, 0, 0, 0, 0, 3])]));
        let d = announcements(&v, &m);
        assert_eq!(d[&a].winner.as_deref(), Some(last.as_str()), "the returning higher-ranked nodes take nothing");
        assert_eq!(d[&a].stand_in, None);
        // Its speaker restarts in place: it keeps the address; the top speaking node stands in.
        m.held.insert(last.clone());
        let d = announcements(&v, &m);
        assert_eq!(d[&a].winner.as_deref(), Some(last.as_str()));
        assert_eq!(d[&a].stand_in, Some((top.clone(), [2, 0, 0, 0, 0, 3])));
        // A restarting node takes nothing new: the unclaimed 198.51.100.3 goes to nobody (only n1
        // is selected, and it is held); a settling one is waited for.
        let mut m = all();
        m.held.insert("n1".into());
        assert_eq!(announcements(&v, &m)[&ip("198.51.100.3")].winner, None);
        m.settling.insert("n1".into());
        assert_eq!(announcements(&v, &m)[&ip("198.51.100.3")].winner.as_deref(), Some("n1"));
        assert_eq!(announcements(&v, &m)[&ip("198.51.100.3")].stand_in, None, "nobody answers with no MAC");
        // Two claimants (a partition healed): the higher-ranked one keeps it.
        let mut m = all();
        for n in [&top, &last] {
            m.claims.insert(n.clone(), BTreeMap::from([(a, [2, 0, 0, 0, 0, 9])]));
        }
        assert_eq!(announcements(&v, &m)[&a].winner.as_deref(), Some(top.as_str()));
    }

    proptest! {
        /// A node that returns (not claiming) never takes a live, eligible owner's address.
        #[test]
        fn no_flap_back(nodes in proptest::collection::btree_set("[a-z]{1,6}", 2..7), addr: u32, pick: usize, back: usize) {
            let nodes: Vec<&str> = nodes.iter().map(String::as_str).collect();
            let a = IpAddr::V4(addr.into());
            let owner_now = nodes[pick % nodes.len()];
            let returning = nodes[back % nodes.len()];
            let without: Vec<&str> = nodes.iter().copied().filter(|n| *n != returning || *n == owner_now).collect();
            for eligible in [&without, &nodes] {
                prop_assert_eq!(owner(eligible, &a, |n| n == owner_now, |_| true), Some(owner_now));
            }
        }

        /// From any claims at all (after a partition heals), every node computes the same owner;
        /// once the others drop their claims the owner stays: two owners never persist.
        #[test]
        fn two_owners_never_persist(
            nodes in proptest::collection::btree_set("[a-z]{1,6}", 1..7),
            claiming in proptest::collection::vec(any::<bool>(), 7),
            held in proptest::collection::vec(any::<bool>(), 7),
            addr: u32,
        ) {
            let nodes: Vec<&str> = nodes.iter().map(String::as_str).collect();
            let a = IpAddr::V4(addr.into());
            let claims = |n: &str| nodes.iter().position(|x| *x == n).is_some_and(|i| claiming[i]);
            let fresh = |n: &str| nodes.iter().position(|x| *x == n).is_some_and(|i| !held[i]);
            let mut shuffled = nodes.clone();
            shuffled.reverse();
            let first = owner(&nodes, &a, claims, fresh);
            prop_assert_eq!(first, owner(&shuffled, &a, claims, fresh), "order of the inputs matters");
            if let Some(w) = first {
                // The next round: only the owner claims it.
                prop_assert_eq!(owner(&nodes, &a, |n| n == w, fresh), Some(w));
                prop_assert!(claims(w) || fresh(w), "a held node took an address it did not claim");
            } else {
                prop_assert!(nodes.iter().all(|n| !claims(n) && !fresh(n)));
            }
        }

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
