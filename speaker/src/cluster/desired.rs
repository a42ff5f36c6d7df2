//! Per address, which node announces it and on which interfaces — the whole decision, pure.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ferrolb_crds::selector;

use super::views::{NodeView, PoolL2, ServiceView};
use crate::election;

/// What the cluster looks like to the speakers.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    /// Services holding addresses from ferrolb.
    pub services: Vec<ServiceView>,
    /// Nodes by name.
    pub nodes: BTreeMap<String, NodeView>,
    /// Pools' layer-2 settings by name.
    pub pools: BTreeMap<String, PoolL2>,
    /// Per Service key, the nodes with a ready endpoint.
    pub ready_nodes: BTreeMap<String, BTreeSet<String>>,
}

/// The decision for one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The announcing node, if any node is eligible.
    pub winner: Option<String>,
    /// The Services using the address.
    pub services: Vec<String>,
    /// Interface names or globs to announce on (empty: every suitable one).
    pub interfaces: Vec<String>,
}

/// Who announces every address, given the speakers alive now. Every speaker computes the same
/// answer from the same inputs, so exactly one node answers for each address.
pub fn decide(cluster: &Cluster, alive: &BTreeSet<String>) -> BTreeMap<IpAddr, Decision> {
    let mut by_ip: BTreeMap<IpAddr, Vec<&ServiceView>> = BTreeMap::new();
    for s in &cluster.services {
        for ip in &s.ips {
            by_ip.entry(*ip).or_default().push(s);
        }
    }
    let mut out = BTreeMap::new();
    for (ip, services) in by_ip {
        // Shared addresses come from one pool; the first Service's pool speaks for all.
        let pool = cluster.pools.get(&services[0].pool);
        let eligible: Vec<&str> = match pool {
            Some(p) if p.enabled => alive
                .iter()
                .filter_map(|n| cluster.nodes.get(n))
                .filter(|n| n.usable)
                .filter(|n| p.node_selector.as_ref().is_none_or(|s| selector::matches(s, &n.labels).unwrap_or(false)))
                .filter(|n| {
                    services
                        .iter()
                        .filter(|s| s.local)
                        .all(|s| cluster.ready_nodes.get(&s.key).is_some_and(|r| r.contains(&n.name)))
                })
                .map(|n| n.name.as_str())
                .collect(),
            _ => Vec::new(),
        };
        out.insert(
            ip,
            Decision {
                winner: election::winner(eligible, &ip).map(String::from),
                services: services.iter().map(|s| s.key.clone()).collect(),
                interfaces: pool.map(|p| p.interfaces.clone()).unwrap_or_default(),
            },
        );
    }
    out
}

/// Whether an interface name matches a name or glob (`*` any run, `?` one character).
pub fn interface_matches(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cluster() -> Cluster {
        let node = |name: &str, lb: bool| {
            let mut labels = BTreeMap::new();
            if lb {
                labels.insert("lb".to_string(), "true".to_string());
            }
            (name.to_string(), NodeView { name: name.into(), labels, usable: true })
        };
        Cluster {
            services: vec![
                ServiceView { key: "d/a".into(), ips: vec![ip("198.51.100.1")], pool: "p".into(), local: false },
                ServiceView { key: "d/b".into(), ips: vec![ip("198.51.100.1")], pool: "p".into(), local: false },
                ServiceView { key: "d/local".into(), ips: vec![ip("198.51.100.2")], pool: "p".into(), local: true },
                ServiceView { key: "d/sel".into(), ips: vec![ip("198.51.100.3")], pool: "sel".into(), local: false },
                ServiceView { key: "d/off".into(), ips: vec![ip("198.51.100.4")], pool: "off".into(), local: false },
            ],
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
            ready_nodes: BTreeMap::from([("d/local".to_string(), BTreeSet::from(["n2".to_string()]))]),
        }
    }

    fn all() -> BTreeSet<String> {
        ["n1", "n2", "n3"].iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn shared_local_selected_and_disabled_addresses() {
        let d = decide(&cluster(), &all());
        let shared = &d[&ip("198.51.100.1")];
        assert_eq!(shared.services, ["d/a", "d/b"], "one decision for a shared address");
        assert!(shared.winner.is_some());
        assert_eq!(d[&ip("198.51.100.2")].winner.as_deref(), Some("n2"), "Local: only the node with a ready endpoint");
        assert_eq!(d[&ip("198.51.100.3")].winner.as_deref(), Some("n1"), "nodeSelector");
        assert_eq!(d[&ip("198.51.100.3")].interfaces, ["eth*"]);
        assert_eq!(d[&ip("198.51.100.4")].winner, None, "l2 disabled: nobody announces");
    }

    #[test]
    fn the_announcement_moves_with_the_endpoint_and_with_liveness() {
        let mut c = cluster();
        c.ready_nodes.insert("d/local".into(), BTreeSet::from(["n3".to_string()]));
        assert_eq!(decide(&c, &all())[&ip("198.51.100.2")].winner.as_deref(), Some("n3"));
        c.ready_nodes.insert("d/local".into(), BTreeSet::new());
        assert_eq!(decide(&c, &all())[&ip("198.51.100.2")].winner, None, "no ready endpoint, no announcement");
        let first = decide(&c, &all())[&ip("198.51.100.1")].winner.clone().unwrap();
        let survivors: BTreeSet<String> = all().into_iter().filter(|n| *n != first).collect();
        let second = decide(&c, &survivors)[&ip("198.51.100.1")].winner.clone().unwrap();
        assert_ne!(first, second, "the address moves when its node dies");
        c.nodes.get_mut(&second).unwrap().usable = false;
        let third = decide(&c, &survivors)[&ip("198.51.100.1")].winner.clone().unwrap();
        assert!(third != first && third != second, "an unusable node does not announce");
    }

    #[test]
    fn interface_globs() {
        assert!(interface_matches("eth0", "eth0"));
        assert!(interface_matches("enp*", "enp3s0"));
        assert!(interface_matches("eth?", "eth1"));
        assert!(!interface_matches("eth?", "eth10"));
        assert!(!interface_matches("enp*", "eth0"));
        assert!(interface_matches("*", "anything"));
    }
}
