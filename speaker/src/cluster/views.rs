//! Plain views of the objects the speaker watches, read from their Kubernetes types. Pure.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ferrolb_crds::IPPool;
use ferrolb_crds::annotations::{ALLOCATED_FROM, EXCLUDE_FROM_LB_LABEL, SERVICE_NAME_LABEL};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// A Service with addresses handed out by ferrolb.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceView {
    /// `namespace/name`.
    pub key: String,
    /// Its addresses.
    pub ips: Vec<IpAddr>,
    /// The pool they came from.
    pub pool: String,
    /// `externalTrafficPolicy: Local`.
    pub local: bool,
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

/// The Service's view, if ferrolb gave it addresses (it carries our annotation and status).
pub fn service(svc: &Service) -> Option<ServiceView> {
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
    let key = format!(
        "{}/{}",
        svc.metadata.namespace.as_deref().unwrap_or_default(),
        svc.metadata.name.as_deref().unwrap_or_default()
    );
    Some(ServiceView { key, ips, pool, local: spec.external_traffic_policy.as_deref() == Some("Local") })
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

/// A pool's layer-2 settings (enabled, every node, every interface when `l2` is omitted).
pub fn pool(p: &IPPool) -> PoolL2 {
    match &p.spec.l2 {
        Some(l2) => {
            PoolL2 { enabled: l2.enabled, node_selector: l2.node_selector.clone(), interfaces: l2.interfaces.clone() }
        }
        None => PoolL2 { enabled: true, ..PoolL2::default() },
    }
}

/// The Service an EndpointSlice belongs to, and the nodes with a ready endpoint in it.
pub fn ready_nodes(slice: &EndpointSlice) -> Option<(String, BTreeSet<String>)> {
    let svc = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    let key = format!("{}/{}", slice.metadata.namespace.as_deref().unwrap_or_default(), svc);
    let nodes = slice
        .endpoints
        .iter()
        .flatten()
        // Kubernetes: a missing `ready` means ready.
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .filter_map(|e| e.node_name.clone())
        .collect();
    Some((key, nodes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_services_ferrolb_allocated_are_seen() {
        let s: Service = serde_json::from_value(
            json!({"metadata": {"name": "web", "namespace": "d", "annotations": {"ferrolb.io/allocated-from": "home"}},
            "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local"},
            "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.7"}]}}}),
        )
        .unwrap();
        let v = service(&s).unwrap();
        assert_eq!((v.key.as_str(), v.pool.as_str(), v.local), ("d/web", "home", true));
        let foreign: Service =
            serde_json::from_value(json!({"metadata": {"name": "x"}, "spec": {"type": "LoadBalancer"},
            "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.8"}]}}}))
            .unwrap();
        assert_eq!(service(&foreign), None);
    }

    #[test]
    fn node_usability_and_ready_endpoints() {
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
        let slice: EndpointSlice = serde_json::from_value(
            json!({"metadata": {"name": "web-abc", "namespace": "d", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "endpoints": [
                {"addresses": ["203.0.113.2"], "nodeName": "n1", "conditions": {"ready": true}},
                {"addresses": ["203.0.113.66"], "nodeName": "n2", "conditions": {"ready": false}},
                {"addresses": ["203.0.113.130"], "nodeName": "n3"}]}),
        )
        .unwrap();
        let (key, nodes) = ready_nodes(&slice).unwrap();
        assert_eq!(key, "d/web");
        assert_eq!(nodes, BTreeSet::from(["n1".to_string(), "n3".to_string()]));
    }
}
