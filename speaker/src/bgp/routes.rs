//! What this node advertises over BGP, pure: for every address of a pool with BGP enabled that
//! this node may serve (the shared eligibility rule: alive, usable, the pool's `bgp.nodeSelector`,
//! a ready local endpoint for `Local` Services), the prefix to advertise and its route class —
//! the communities, LOCAL_PREF and peers the pool gives it. The kernel routes carry the class as
//! their metric, so an address change only changes kernel routes and never the daemon's
//! configuration; only a change of the classes themselves does.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ferrolb_crds::selector;
use ipnetwork::IpNetwork;

use super::peers::PeerView;
use crate::election;
use crate::state::{PoolBgp, View};

/// The attributes a group of routes carries and the peers that receive them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RouteClass {
    /// Communities, as the pool writes them.
    pub communities: Vec<String>,
    /// LOCAL_PREF (iBGP sessions only).
    pub local_pref: Option<u32>,
    /// The peers (by name) that receive these routes.
    pub peers: BTreeSet<String>,
}

/// What this node advertises.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Each prefix with its class number (the kernel route's metric; classes count from 1).
    pub routes: BTreeMap<IpNetwork, u32>,
    /// The classes by number.
    pub classes: BTreeMap<u32, RouteClass>,
    /// For every address advertised by BGP (by any node), the nodes that advertise it.
    pub advertisers: BTreeMap<IpAddr, Vec<String>>,
}

/// The prefix of length `len` that holds `ip` (the host route when `len` is the full length).
pub fn prefix(ip: IpAddr, len: u8) -> IpNetwork {
    // The lengths are clamped when read, so the network is always valid.
    let net = IpNetwork::new(ip, len).unwrap_or_else(|_| IpNetwork::from(ip));
    IpNetwork::new(net.network(), net.prefix()).unwrap_or(net)
}

/// The class of `pool`'s routes of one family (`v4`), or None when no peer would receive them.
fn class_of(pool: &PoolBgp, v4: bool, peers: Option<&[PeerView]>) -> Option<RouteClass> {
    let receiving = peers.map(|peers| {
        peers
            .iter()
            .filter(|p| p.address.is_ipv4() == v4)
            .filter(|p| pool.peer_selector.as_ref().is_none_or(|s| selector::matches(s, &p.labels).unwrap_or(false)))
            .map(|p| p.name.clone())
            .collect::<BTreeSet<_>>()
    });
    if receiving.as_ref().is_some_and(BTreeSet::is_empty) {
        return None;
    }
    Some(RouteClass {
        communities: pool.communities.clone(),
        local_pref: pool.local_pref,
        peers: receiving.unwrap_or_default(),
    })
}

/// The plan of `me` given the view, the speakers alive and the peers `me` has sessions with
/// (None: an external daemon decides where routes go, so every class goes everywhere). The
/// classes come from the pools and peers alone, never from the addresses, so that BIRD's
/// configuration does not change when addresses come and go.
pub fn plan(view: &View, alive: &BTreeSet<String>, me: &str, peers: Option<&[PeerView]>) -> Plan {
    let every_class: BTreeSet<RouteClass> = view
        .bgp_pools
        .values()
        .flat_map(|pool| [true, false].into_iter().filter_map(|v4| class_of(pool, v4, peers)))
        .collect();
    let ids: BTreeMap<&RouteClass, u32> = every_class.iter().zip(1..).collect();
    let mut routes: BTreeMap<IpNetwork, u32> = BTreeMap::new();
    let mut advertisers = BTreeMap::new();
    for (ip, services) in view.by_address() {
        // Shared addresses come from one pool; the first Service's pool speaks for all.
        let Some(pool) = view.bgp_pools.get(&services[0].pool) else { continue };
        let eligible = election::eligible(view, &services, pool.node_selector.as_ref(), alive);
        let mine = eligible.contains(&me);
        advertisers.insert(ip, eligible.into_iter().map(String::from).collect());
        let Some(class) = class_of(pool, ip.is_ipv4(), peers).filter(|_| mine) else { continue };
        let len = if ip.is_ipv4() { pool.aggregation_v4 } else { pool.aggregation_v6 };
        // Two pools aggregating into one prefix: the smaller class wins, the same on every node.
        let id = ids[&class];
        let slot = routes.entry(prefix(ip, len)).or_insert(id);
        *slot = (*slot).min(id);
    }
    Plan { routes, classes: ids.into_iter().map(|(c, id)| (id, c.clone())).collect(), advertisers }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{NodeView, PoolBgp, PoolL2, ServiceView};
    use ferrolb_crds::ServiceKey;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use proptest::prelude::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn selector(pairs: &[(&str, &str)]) -> Option<LabelSelector> {
        Some(LabelSelector { match_labels: Some(labels(pairs)), match_expressions: None })
    }

    fn svc(key: &str, ips: &[&str], pool: &str, local: bool, ready: &[&str]) -> (ServiceKey, ServiceView) {
        ServiceView::example(key, ips, pool, local, ready)
    }

    fn peer(name: &str, address: &str, label: &str) -> PeerView {
        PeerView { labels: labels(&[("fabric", label)]), ..PeerView::example(name, address) }
    }

    fn view() -> View {
        let node = |n: &str, rack: &str| {
            (n.to_string(), NodeView { name: n.into(), labels: labels(&[("rack", rack)]), usable: true })
        };
        let bgp = |communities: &[&str], peer_selector| PoolBgp {
            communities: communities.iter().map(|c| c.to_string()).collect(),
            peer_selector,
            aggregation_v4: 32,
            aggregation_v6: 128,
            ..PoolBgp::default()
        };
        View {
            services: [
                svc("d/web", &["198.51.100.10", "2001:db8::10"], "fabric", false, &[]),
                svc("d/local", &["198.51.100.11"], "fabric", true, &["n2"]),
                svc("d/tagged", &["198.51.100.12"], "tagged", false, &[]),
                svc("d/l2", &["198.51.100.13"], "l2only", false, &[]),
                svc("d/agg", &["203.0.113.77"], "agg", false, &[]),
            ]
            .into_iter()
            .collect(),
            nodes: [node("n1", "a"), node("n2", "a"), node("n3", "b")].into_iter().collect(),
            pools: BTreeMap::from([("l2only".to_string(), PoolL2 { enabled: true, ..PoolL2::default() })]),
            bgp_pools: BTreeMap::from([
                ("fabric".to_string(), bgp(&[], None)),
                (
                    "tagged".to_string(),
                    PoolBgp { local_pref: Some(200), ..bgp(&["64512:100"], selector(&[("fabric", "edge")])) },
                ),
                (
                    "agg".to_string(),
                    PoolBgp { aggregation_v4: 24, node_selector: selector(&[("rack", "a")]), ..bgp(&[], None) },
                ),
            ]),
        }
    }

    fn all() -> BTreeSet<String> {
        ["n1", "n2", "n3"].iter().map(|s| s.to_string()).collect()
    }

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    #[test]
    fn every_eligible_node_advertises_host_routes_with_their_class() {
        let peers =
            [peer("core", "192.0.2.1", "main"), peer("edge", "192.0.2.2", "edge"), peer("v6", "2001:db8::1", "main")];
        let p = plan(&view(), &all(), "n1", Some(&peers));
        assert_eq!(
            p.routes.keys().copied().collect::<Vec<_>>(),
            [net("198.51.100.10/32"), net("198.51.100.12/32"), net("203.0.113.0/24"), net("2001:db8::10/128")]
        );
        let plain = &p.classes[&p.routes[&net("198.51.100.10/32")]];
        assert_eq!(plain.peers, ["core", "edge"].map(String::from).into_iter().collect());
        assert_eq!(p.classes[&p.routes[&net("2001:db8::10/128")]].peers, ["v6".to_string()].into_iter().collect());
        let tagged = &p.classes[&p.routes[&net("198.51.100.12/32")]];
        assert_eq!((tagged.communities.clone(), tagged.local_pref), (vec!["64512:100".to_string()], Some(200)));
        assert_eq!(tagged.peers, ["edge".to_string()].into_iter().collect(), "the pool's peerSelector");
        assert_eq!(p.advertisers[&"198.51.100.10".parse::<IpAddr>().unwrap()], ["n1", "n2", "n3"]);
        assert!(!p.advertisers.contains_key(&"198.51.100.13".parse::<IpAddr>().unwrap()), "L2-only pool");
    }

    #[test]
    fn local_services_only_from_nodes_with_a_ready_endpoint_and_selectors_apply() {
        let p2 = plan(&view(), &all(), "n2", None);
        assert!(p2.routes.contains_key(&net("198.51.100.11/32")));
        let p1 = plan(&view(), &all(), "n1", None);
        assert!(!p1.routes.contains_key(&net("198.51.100.11/32")));
        let p3 = plan(&view(), &all(), "n3", None);
        assert!(!p3.routes.contains_key(&net("203.0.113.0/24")), "rack b is not selected");
        // A node that is not alive is nobody's advertiser.
        let alive: BTreeSet<String> = ["n1", "n3"].iter().map(|s| s.to_string()).collect();
        assert!(plan(&view(), &alive, "n2", None).routes.is_empty());
    }

    #[test]
    fn no_route_when_no_peer_of_the_family_or_selection_receives_it() {
        let p = plan(&view(), &all(), "n1", Some(&[peer("core", "192.0.2.1", "main")]));
        assert!(!p.routes.contains_key(&net("2001:db8::10/128")));
        assert!(!p.routes.contains_key(&net("198.51.100.12/32")), "tagged goes to edge peers only");
    }

    proptest! {
        /// Numbering is a function of the pools and peers only: removing Services changes no
        /// class number and no class, and every route's class exists.
        #[test]
        fn classes_are_numbered_consistently(drop in proptest::collection::vec(any::<bool>(), 5)) {
            let mut v = view();
            let keys: Vec<ServiceKey> = v.services.keys().cloned().collect();
            for (k, d) in keys.iter().zip(drop) {
                if d {
                    v.services.remove(k);
                }
            }
            let p = plan(&v, &all(), "n2", None);
            for id in p.routes.values() {
                prop_assert!(p.classes.contains_key(id));
            }
            let ids: Vec<u32> = p.classes.keys().copied().collect();
            prop_assert_eq!(ids, (1..=p.classes.len() as u32).collect::<Vec<_>>());
            prop_assert_eq!(&p.classes, &plan(&view(), &all(), "n2", None).classes);
            prop_assert_eq!(plan(&v, &all(), "n2", None), p);
        }
    }
}
