//! Reading the watched objects into the speaker's view, pure: a Service ferrolb gave addresses to
//! (with its ports and ready endpoints), a Node, a pool's announcing settings. The one readiness
//! rule of the speaker lives here ([`endpoint_ready`]); the election and the forwarding both read
//! endpoints through it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::source_ranges::{self, SourceRanges};
use ferrolb_crds::annotations::{ALLOCATED_FROM, EXCLUDE_FROM_LB_LABEL, REPLICATE_CONNECTIONS, SERVICE_NAME_LABEL};
use ferrolb_crds::{IPPool, Protocol, ServiceKey};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// A ready endpoint of one Service port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Backend {
    /// The endpoint's address.
    pub address: IpAddr,
    /// The port it listens on.
    pub port: u16,
    /// The node it runs on, if the slice says.
    pub node: Option<String>,
}

/// One port of a Service and its ready endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortView {
    /// Protocol.
    pub protocol: Protocol,
    /// The Service port (on the addresses).
    pub port: u16,
    /// The NodePort, if any.
    pub node_port: Option<u16>,
    /// Ready endpoints, sorted.
    pub backends: Vec<Backend>,
}

/// A Service with addresses handed out by ferrolb: everything announcing and forwarding need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceView {
    /// Its key.
    pub key: ServiceKey,
    /// Its addresses.
    pub ips: Vec<IpAddr>,
    /// The pool they came from.
    pub pool: String,
    /// `externalTrafficPolicy: Local`.
    pub local: bool,
    /// Its ports with their ready endpoints.
    pub ports: Vec<PortView>,
    /// Nodes with a ready endpoint of the Service (any port).
    pub ready_nodes: BTreeSet<String>,
    /// Who may reach its addresses, and the entries that did not parse.
    pub source_ranges: SourceRanges,
    /// `sessionAffinity: ClientIP` with its timeout in seconds.
    pub affinity: Option<u32>,
    /// Its connections are to be replicated to the other nodes (the annotation, Cluster policy).
    pub replicate: bool,
}

impl ServiceView {
    /// A Service of `pool` on `ips` without ports, for tests: `local` policy, ready endpoints on
    /// the `ready` nodes.
    #[cfg(test)]
    pub fn example(key: &str, ips: &[&str], pool: &str, local: bool, ready: &[&str]) -> (ServiceKey, Self) {
        let v = Self {
            key: ServiceKey::from(key),
            ips: ips.iter().map(|i| i.parse().expect("an address")).collect(),
            pool: pool.into(),
            local,
            ports: Vec::new(),
            ready_nodes: ready.iter().map(|s| s.to_string()).collect(),
            source_ranges: SourceRanges::default(),
            affinity: None,
            replicate: false,
        };
        (v.key.clone(), v)
    }
}

/// A Node as far as announcing goes.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    /// Its name.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Ready, network available, and not excluded from load balancers.
    pub usable: bool,
}

/// A pool's layer-2 settings.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PoolL2 {
    /// Announce at all.
    pub enabled: bool,
    /// Nodes allowed to announce.
    pub node_selector: Option<LabelSelector>,
    /// Interface names or globs; empty = every suitable interface.
    pub interfaces: Vec<String>,
}

/// A pool's BGP settings.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PoolBgp {
    /// Nodes allowed to advertise.
    pub node_selector: Option<LabelSelector>,
    /// Peers (by their labels) that receive the routes; all when None.
    pub peer_selector: Option<LabelSelector>,
    /// Communities attached to the routes.
    pub communities: Vec<String>,
    /// LOCAL_PREF (iBGP).
    pub local_pref: Option<u32>,
    /// Prefix length advertised for IPv4 addresses (32: the host route).
    pub aggregation_v4: u8,
    /// Prefix length advertised for IPv6 addresses (128: the host route).
    pub aggregation_v6: u8,
}

/// Kubernetes: an endpoint whose `ready` condition is missing is ready.
pub fn endpoint_ready(e: &Endpoint) -> bool {
    e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true)
}

/// The Service an EndpointSlice belongs to.
pub fn slice_owner(slice: &EndpointSlice) -> Option<ServiceKey> {
    let svc = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some(ServiceKey::new(slice.metadata.namespace.as_deref().unwrap_or_default(), svc))
}

/// The Service's view, if ferrolb gave it addresses (it carries our annotation and status);
/// `slices` are its EndpointSlices.
pub fn service(svc: &Service, slices: &[&EndpointSlice]) -> Option<ServiceView> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() != Some("LoadBalancer") {
        return None;
    }
    let pool = svc.metadata.annotations.as_ref()?.get(ALLOCATED_FROM)?.clone();
    let ips: Vec<IpAddr> = svc
        .status
        .as_ref()?
        .load_balancer
        .as_ref()?
        .ingress
        .as_ref()?
        .iter()
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .collect();
    if ips.is_empty() {
        return None;
    }
    let ready = || slices.iter().flat_map(|s| s.endpoints.iter().flatten()).filter(|e| endpoint_ready(e));
    let ready_nodes = ready().filter_map(|e| e.node_name.clone()).collect();
    let single = spec.ports.as_ref().is_some_and(|p| p.len() == 1);
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            let protocol = Protocol::parse(p.protocol.as_deref())?;
            let mut backends: Vec<Backend> = Vec::new();
            for slice in slices {
                // A slice port belongs to this Service port by name; a single unnamed port pairs
                // with a single slice port.
                let sp = slice.ports.iter().flatten().find(|sp| {
                    Protocol::parse(sp.protocol.as_deref()) == Some(protocol)
                        && (sp.name == p.name
                            || (single && sp.name.as_deref().unwrap_or_default().is_empty())
                            || (single && slice.ports.as_ref().is_some_and(|v| v.len() == 1)))
                });
                let Some(target) = sp.and_then(|sp| sp.port).and_then(|n| u16::try_from(n).ok()) else { continue };
                for e in slice.endpoints.iter().flatten().filter(|e| endpoint_ready(e)) {
                    backends.extend(
                        e.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()).map(|address| Backend {
                            address,
                            port: target,
                            node: e.node_name.clone(),
                        }),
                    );
                }
            }
            backends.sort();
            backends.dedup();
            Some(PortView {
                protocol,
                port: u16::try_from(p.port).ok()?,
                node_port: p.node_port.and_then(|n| u16::try_from(n).ok()),
                backends,
            })
        })
        .collect();
    let source_ranges = source_ranges::read(svc);
    let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        let t =
            spec.session_affinity_config.as_ref().and_then(|c| c.client_ip.as_ref()).and_then(|c| c.timeout_seconds);
        t.and_then(|t| u32::try_from(t).ok()).unwrap_or(10_800)
    });
    let local = spec.external_traffic_policy.as_deref() == Some("Local");
    // Local policy keeps the client's address and its own pods: a flow cannot move anyway.
    let replicate = !local
        && svc.metadata.annotations.as_ref().is_some_and(
            |a| matches!(REPLICATE_CONNECTIONS.get(a), Ok(Some(f)) if f.value.eq_ignore_ascii_case("true")),
        );
    Some(ServiceView {
        key: ServiceKey::of(svc),
        ips,
        pool,
        local,
        ports,
        ready_nodes,
        source_ranges,
        affinity,
        replicate,
    })
}

/// The Node's view.
pub fn node(n: &Node) -> NodeView {
    let labels = n.metadata.labels.clone().unwrap_or_default();
    let conditions = n.status.as_ref().and_then(|s| s.conditions.as_ref());
    let status_of = |t: &str| conditions.and_then(|c| c.iter().find(|c| c.type_ == t)).map(|c| c.status.as_str());
    let usable = status_of("Ready") == Some("True")
        && status_of("NetworkUnavailable") != Some("True")
        && !labels.contains_key(EXCLUDE_FROM_LB_LABEL);
    NodeView { name: n.metadata.name.clone().unwrap_or_default(), labels, usable }
}

/// A pool's layer-2 settings (every node, every interface when `l2` is omitted; on unless only
/// BGP is enabled).
pub fn pool(p: &IPPool) -> PoolL2 {
    let enabled = p.spec.l2_enabled();
    match &p.spec.l2 {
        Some(l2) => PoolL2 { enabled, node_selector: l2.node_selector.clone(), interfaces: l2.interfaces.clone() },
        None => PoolL2 { enabled, ..PoolL2::default() },
    }
}

/// A pool's BGP settings, when the pool is advertised over BGP.
pub fn pool_bgp(p: &IPPool) -> Option<PoolBgp> {
    let b = p.spec.bgp.as_ref().filter(|b| b.enabled)?;
    Some(PoolBgp {
        node_selector: b.node_selector.clone(),
        peer_selector: b.peer_selector.clone(),
        communities: b.communities.clone(),
        local_pref: b.local_pref,
        aggregation_v4: b.aggregation_length.unwrap_or(32).min(32),
        aggregation_v6: b.aggregation_length_v6.unwrap_or(128).min(128),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn web(policy: &str) -> Service {
        serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "d", "annotations": {"ferrolb.io/allocated-from": "p"}},
            "spec": {"type": "LoadBalancer", "externalTrafficPolicy": policy, "loadBalancerSourceRanges": ["198.51.100.0/24"],
                "ports": [{"name": "http", "port": 80, "nodePort": 30080}, {"name": "dns", "port": 53, "protocol": "UDP"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.200"}]}}}))
        .unwrap()
    }

    fn slice() -> EndpointSlice {
        serde_json::from_value(json!({"metadata": {"name": "web-a", "namespace": "d", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "dns", "port": 5353, "protocol": "UDP"}],
            "endpoints": [
                {"addresses": ["203.0.113.2"], "nodeName": "node-1", "conditions": {"ready": true}},
                {"addresses": ["203.0.113.66"], "nodeName": "node-2"},
                {"addresses": ["203.0.113.3"], "nodeName": "node-3", "conditions": {"ready": false}}]}))
        .unwrap()
    }

    #[test]
    fn one_readiness_rule_for_ports_and_nodes() {
        let s = slice();
        let v = service(&web("Local"), &[&s]).unwrap();
        assert_eq!((v.key.as_str(), v.pool.as_str(), v.local), ("d/web", "p", true));
        assert_eq!(slice_owner(&s), Some(ServiceKey::new("d", "web")));
        // A missing `ready` means ready; `ready: false` is left out — of the ports and the nodes.
        let http: Vec<(String, u16)> = v.ports[0].backends.iter().map(|b| (b.address.to_string(), b.port)).collect();
        assert_eq!(http, [("203.0.113.2".to_string(), 8080), ("203.0.113.66".to_string(), 8080)]);
        assert_eq!(v.ports[1].backends.len(), 2);
        assert_eq!(v.ports[1].backends[0].port, 5353);
        assert_eq!(v.ready_nodes, BTreeSet::from(["node-1".to_string(), "node-2".to_string()]));
        assert_eq!((v.ports[0].node_port, v.source_ranges.allowed.map(|r| r.len())), (Some(30080), Some(1)));
    }

    #[test]
    fn only_services_ferrolb_allocated_are_seen() {
        let foreign: Service =
            serde_json::from_value(json!({"metadata": {"name": "x"}, "spec": {"type": "LoadBalancer"},
            "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.8"}]}}}))
            .unwrap();
        assert_eq!(service(&foreign, &[]), None);
    }

    #[test]
    fn node_usability() {
        let n: Node = serde_json::from_value(json!({"metadata": {"name": "n1"}, "status": {"conditions": [
            {"type": "Ready", "status": "True"}, {"type": "NetworkUnavailable", "status": "False"}]}}))
        .unwrap();
        assert!(node(&n).usable);
        let excluded: Node =
            serde_json::from_value(json!({"metadata": {"name": "n2", "labels": {EXCLUDE_FROM_LB_LABEL: ""}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}}))
            .unwrap();
        assert!(!node(&excluded).usable);
        let not_ready: Node = serde_json::from_value(
            json!({"metadata": {"name": "n3"}, "status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
        )
        .unwrap();
        assert!(!node(&not_ready).usable);
    }
}
