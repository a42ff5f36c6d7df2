//! What this node forwards, read from Services and EndpointSlices (pure): every Service ferrolb
//! gave addresses to, its ports, and the ready endpoints this node may send to (all of them for
//! Cluster policy, the local ones for Local).

use std::collections::BTreeMap;
use std::net::IpAddr;

use ferrolb_crds::annotations::SERVICE_NAME_LABEL;
use k8s_openapi::api::core::v1::Service as K8sService;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::render::{Port, Proto, Service};
use crate::cluster::views;

fn proto(p: Option<&str>) -> Option<Proto> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(Proto::Tcp),
        "UDP" => Some(Proto::Udp),
        "SCTP" => Some(Proto::Sctp),
        _ => None,
    }
}

/// The forwarding of every ferrolb Service, as node `me` does it.
pub fn build<'a>(
    services: impl IntoIterator<Item = &'a K8sService>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    me: &str,
) -> Vec<Service> {
    let mut by_service: BTreeMap<String, Vec<&EndpointSlice>> = BTreeMap::new();
    for s in slices {
        if let Some(name) = s.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) {
            by_service
                .entry(format!("{}/{name}", s.metadata.namespace.as_deref().unwrap_or_default()))
                .or_default()
                .push(s);
        }
    }
    let mut out = Vec::new();
    for svc in services {
        let Some(view) = views::service(svc) else { continue };
        let spec = svc.spec.clone().unwrap_or_default();
        let slices = by_service.get(&view.key).cloned().unwrap_or_default();
        let single = spec.ports.as_ref().is_some_and(|p| p.len() == 1);
        let ports = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                let pr = proto(p.protocol.as_deref())?;
                let mut endpoints: Vec<(IpAddr, u16)> = Vec::new();
                for slice in &slices {
                    let sp = slice.ports.iter().flatten().find(|sp| {
                        proto(sp.protocol.as_deref()) == Some(pr)
                            && (sp.name == p.name
                                || (single && sp.name.as_deref().unwrap_or_default().is_empty())
                                || (single && slice.ports.as_ref().is_some_and(|v| v.len() == 1)))
                    });
                    let Some(target) = sp.and_then(|sp| sp.port).and_then(|n| u16::try_from(n).ok()) else { continue };
                    for e in slice.endpoints.iter().flatten() {
                        let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                        let local_ok = !view.local || e.node_name.as_deref() == Some(me);
                        if !ready || !local_ok {
                            continue;
                        }
                        endpoints
                            .extend(e.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()).map(|a| (a, target)));
                    }
                }
                endpoints.sort();
                endpoints.dedup();
                Some(Port {
                    proto: pr,
                    port: u16::try_from(p.port).ok()?,
                    node_port: p.node_port.and_then(|n| u16::try_from(n).ok()),
                    endpoints,
                })
            })
            .collect();
        let source_ranges =
            spec.load_balancer_source_ranges.iter().flatten().filter_map(|r| r.trim().parse().ok()).collect();
        let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            let t = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            t.and_then(|t| u32::try_from(t).ok()).unwrap_or(10_800)
        });
        out.push(Service { key: view.key, vips: view.ips, ports, local: view.local, source_ranges, affinity });
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ready_endpoints_by_port_name_and_local_filtering() {
        let svc: K8sService = serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "d", "annotations": {"ferrolb.io/allocated-from": "p"}},
            "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local", "loadBalancerSourceRanges": ["198.51.100.0/24"],
                "ports": [{"name": "http", "port": 80, "nodePort": 30080}, {"name": "dns", "port": 53, "protocol": "UDP"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.200"}]}}})).unwrap();
        let slice: EndpointSlice = serde_json::from_value(json!({"metadata": {"name": "web-a", "namespace": "d", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "dns", "port": 5353, "protocol": "UDP"}],
            "endpoints": [
                {"addresses": ["203.0.113.2"], "nodeName": "node-1", "conditions": {"ready": true}},
                {"addresses": ["203.0.113.66"], "nodeName": "node-2", "conditions": {"ready": true}},
                {"addresses": ["203.0.113.3"], "nodeName": "node-1", "conditions": {"ready": false}}]})).unwrap();
        let built = build([&svc], [&slice], "node-1");
        assert_eq!(built.len(), 1);
        let s = &built[0];
        assert!(s.local);
        assert_eq!(
            s.ports[0].endpoints,
            vec![("203.0.113.2".parse().unwrap(), 8080)],
            "Local: ready local endpoints only"
        );
        assert_eq!(s.ports[0].node_port, Some(30080));
        assert_eq!(s.ports[1].endpoints, vec![("203.0.113.2".parse().unwrap(), 5353)]);
        assert_eq!(s.source_ranges.len(), 1);
        let mut cluster = svc.clone();
        cluster.spec.as_mut().unwrap().external_traffic_policy = Some("Cluster".into());
        assert_eq!(
            build([&cluster], [&slice], "node-1")[0].ports[0].endpoints.len(),
            2,
            "Cluster: every ready endpoint"
        );
    }
}
