//! What this node forwards, taken from the view (pure): every Service ferrolb gave addresses to,
//! its ports, and the ready endpoints this node may send to (all of them for Cluster policy, the
//! local ones for Local).

use crate::state::View;

use super::render::{ForwardedService, Port};

/// The forwarding of every ferrolb Service, as node `me` does it, in key order; `replicating`
/// when this node replicates connections (`--conntrack-sync`).
pub fn forwarded(view: &View, me: &str, replicating: bool) -> Vec<ForwardedService> {
    view.services
        .values()
        .map(|s| ForwardedService {
            key: s.key.to_string(),
            vips: s.ips.clone(),
            ports: s
                .ports
                .iter()
                .map(|p| Port {
                    proto: p.protocol,
                    port: p.port,
                    node_port: p.node_port,
                    endpoints: p
                        .backends
                        .iter()
                        .filter(|b| !s.local || b.node.as_deref() == Some(me))
                        .map(|b| (b.address, b.port))
                        .collect(),
                })
                .collect(),
            local: s.local,
            source_ranges: s.source_ranges.allowed.clone(),
            affinity: s.affinity,
            replicate: replicating && s.replicate,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use serde_json::json;

    #[test]
    fn local_policy_keeps_local_endpoints_only() {
        let svc: Service = serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "d", "annotations": {"ferrolb.io/allocated-from": "p"}},
            "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local", "ports": [{"name": "http", "port": 80, "nodePort": 30080}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.200"}]}}})).unwrap();
        let slice: EndpointSlice = serde_json::from_value(
            json!({"metadata": {"name": "web-a", "namespace": "d", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["203.0.113.2"], "nodeName": "node-1", "conditions": {"ready": true}},
                {"addresses": ["203.0.113.66"], "nodeName": "node-2", "conditions": {"ready": true}},
                {"addresses": ["203.0.113.3"], "nodeName": "node-1", "conditions": {"ready": false}}]}),
        )
        .unwrap();
        let view = View::of([&svc], [&slice], [], []);
        let built = forwarded(&view, "node-1", false);
        assert_eq!(built.len(), 1);
        assert!(built[0].local);
        assert_eq!(
            built[0].ports[0].endpoints,
            vec![("203.0.113.2".parse().unwrap(), 8080)],
            "Local: ready local endpoints only"
        );
        assert_eq!(built[0].ports[0].node_port, Some(30080));
        let mut cluster = svc.clone();
        cluster.spec.as_mut().unwrap().external_traffic_policy = Some("Cluster".into());
        let view = View::of([&cluster], [&slice], [], []);
        assert_eq!(forwarded(&view, "node-1", false)[0].ports[0].endpoints.len(), 2, "Cluster: every ready endpoint");
    }
}
