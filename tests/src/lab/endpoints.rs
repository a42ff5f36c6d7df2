//! The lab's EndpointSlice controller, doing what Kubernetes' does for the lab's Pods: every
//! Service with a selector gets EndpointSlices (one per address family) listing the Pods it
//! selects, with the Service's own port names and protocols and each port's target resolved —
//! a number as it is, a name through the Pods' container ports — and readiness following the
//! Pods' Ready condition. `slices_for` is pure; `run` keeps the slices current from watches.

use std::collections::BTreeMap;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};

/// The `endpointslice.kubernetes.io/managed-by` value of the lab's slices.
pub const MANAGED_BY: &str = "lab.ferrolb.io";

/// A slice port as resolved for one Pod: (name, protocol, port).
type SlicePort = (Option<String>, String, i32);

fn selects(selector: &BTreeMap<String, String>, pod: &Pod) -> bool {
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn ready(pod: &Pod) -> bool {
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions.is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The port a Service port reaches on `pod`: a number as given (the Service port when unset), a
/// name through the Pod's container ports of the same protocol; None when the name is not there.
fn target_port(port: &k8s_openapi::api::core::v1::ServicePort, pod: &Pod) -> Option<i32> {
    let protocol = port.protocol.as_deref().unwrap_or("TCP");
    match &port.target_port {
        None => Some(port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => pod
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(name) && p.protocol.as_deref().unwrap_or("TCP") == protocol)
            .map(|p| p.container_port),
    }
}

/// The EndpointSlices of `svc` for `pods` (those of its namespace), as JSON objects: one per
/// address family and set of resolved ports (Pods whose named ports resolve differently get
/// slices of their own, as in Kubernetes). None of them when the Service has no selector.
pub fn slices_for(svc: &Service, pods: &[&Pod]) -> Vec<Value> {
    let (Some(name), Some(spec)) = (svc.metadata.name.as_deref(), svc.spec.as_ref()) else { return Vec::new() };
    let Some(selector) = spec.selector.as_ref() else { return Vec::new() };
    let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
    let ports = spec.ports.clone().unwrap_or_default();
    // (family, resolved ports) → endpoints
    let mut groups: BTreeMap<(&str, Vec<SlicePort>), Vec<Value>> = BTreeMap::new();
    for pod in pods.iter().filter(|p| selects(selector, p)) {
        let resolved: Vec<SlicePort> = ports
            .iter()
            .filter_map(|p| {
                let target = target_port(p, pod)?;
                Some((p.name.clone(), p.protocol.clone().unwrap_or_else(|| "TCP".into()), target))
            })
            .collect();
        let ips = pod.status.as_ref().and_then(|s| s.pod_ips.clone()).unwrap_or_default();
        for ip in ips.iter().filter_map(|i| i.ip.parse::<std::net::IpAddr>().ok()) {
            let family = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
            let ready = ready(pod);
            groups.entry((family, resolved.clone())).or_default().push(json!({
                "addresses": [ip.to_string()],
                "nodeName": pod.spec.as_ref().and_then(|s| s.node_name.clone()),
                "conditions": {"ready": ready, "serving": ready, "terminating": false},
                "targetRef": {"kind": "Pod", "namespace": ns, "name": pod.metadata.name},
            }));
        }
    }
    groups
        .into_iter()
        .enumerate()
        .map(|(i, ((family, resolved), endpoints))| {
            let ports: Vec<Value> =
                resolved.iter().map(|(n, proto, port)| json!({"name": n.clone().unwrap_or_default(), "protocol": proto, "port": port})).collect();
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": format!("{name}-lab-{}-{i}", family.to_lowercase()), "namespace": ns,
                    "labels": {"kubernetes.io/service-name": name, "endpointslice.kubernetes.io/managed-by": MANAGED_BY}},
                "addressType": family, "ports": ports, "endpoints": endpoints})
        })
        .collect()
}

fn store<K>(client: &kube::Client) -> (Store<K>, impl futures::Stream<Item = ()>)
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(Api::<K>::all(client.clone()), watcher::Config::default()).default_backoff(),
    )
    .filter_map(|e| async move { e.ok().map(|_| ()) });
    (reader, stream)
}

/// Keeps every selector Service's EndpointSlices current until the task is aborted: after any
/// change of Services or Pods, each Service's slices are computed again from the caches, written
/// where they differ from what was last written, and the ones it wrote that no Service wants any
/// more are deleted.
pub async fn run(client: kube::Client) {
    let (services, svc_events) = store::<Service>(&client);
    let (pods, pod_events) = store::<Pod>(&client);
    let mut changes = std::pin::pin!(futures::stream::select(svc_events, pod_events));
    let mut written: BTreeMap<(String, String), Value> = BTreeMap::new();
    while changes.next().await.is_some() {
        // Take whatever else is already there before working.
        while let Some(Some(())) = futures::FutureExt::now_or_never(changes.next()) {}
        let all_pods = pods.state();
        let mut wanted: BTreeMap<(String, String), Value> = BTreeMap::new();
        for svc in services.state() {
            let ns = svc.metadata.namespace.clone().unwrap_or_default();
            let in_ns: Vec<&Pod> =
                all_pods.iter().map(|p| &**p).filter(|p| p.metadata.namespace.as_deref() == Some(&ns)).collect();
            for slice in slices_for(&svc, &in_ns) {
                let name = slice["metadata"]["name"].as_str().unwrap_or_default().to_string();
                wanted.insert((ns.clone(), name), slice);
            }
        }
        for ((ns, name), slice) in &wanted {
            if written.get(&(ns.clone(), name.clone())) == Some(slice) {
                continue;
            }
            let api: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
            if api.patch(name, &PatchParams::apply(MANAGED_BY).force(), &Patch::Apply(slice)).await.is_ok() {
                written.insert((ns.clone(), name.clone()), slice.clone());
            }
        }
        // A lab starts empty, so every slice it manages is one it wrote: what it wrote and no
        // Service wants any more is what to delete.
        let stale: Vec<(String, String)> = written.keys().filter(|k| !wanted.contains_key(*k)).cloned().collect();
        for (ns, name) in stale {
            let api: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
            let gone = match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => true,
                Err(kube::Error::Api(s)) => s.code == 404,
                Err(_) => false,
            };
            if gone {
                written.remove(&(ns, name));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, node: &str, ready: bool, ports: Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "ports": ports}]},
            "status": {"podIPs": [{"ip": "203.0.113.2"}, {"ip": "2001:db8:1:1::2"}],
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}}))
        .unwrap()
    }

    #[test]
    fn named_target_ports_resolve_through_the_pods_and_readiness_follows_them() {
        let svc: Service = serde_json::from_value(json!({"metadata": {"name": "site", "namespace": "default"},
            "spec": {"selector": {"app": "web"}, "ports": [
                {"name": "www", "port": 80, "targetPort": "http"},
                {"name": "metrics", "port": 9100, "targetPort": 9100},
                {"name": "dns", "port": 53, "protocol": "UDP"}]}}))
        .unwrap();
        let a = pod("a", "node-1", true, json!([{"name": "http", "containerPort": 8080}]));
        let b = pod("b", "node-2", false, json!([{"name": "http", "containerPort": 8080}]));
        let slices = slices_for(&svc, &[&a, &b]);
        assert_eq!(slices.len(), 2, "one slice per family: {slices:#?}");
        let v4 = &slices[0];
        assert_eq!(v4["addressType"], "IPv4");
        assert_eq!(v4["metadata"]["labels"]["kubernetes.io/service-name"], "site");
        assert_eq!(
            v4["ports"],
            json!([{"name": "www", "protocol": "TCP", "port": 8080}, {"name": "metrics", "protocol": "TCP", "port": 9100},
                {"name": "dns", "protocol": "UDP", "port": 53}])
        );
        let readiness: Vec<bool> =
            v4["endpoints"].as_array().unwrap().iter().map(|e| e["conditions"]["ready"].as_bool().unwrap()).collect();
        assert_eq!(readiness, [true, false]);
        assert_eq!(v4["endpoints"][0]["nodeName"], "node-1");
    }

    #[test]
    fn pods_whose_names_resolve_differently_get_slices_of_their_own() {
        let svc: Service = serde_json::from_value(json!({"metadata": {"name": "site", "namespace": "default"},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "www", "port": 80, "targetPort": "http"}]}}))
        .unwrap();
        let a = pod("a", "node-1", true, json!([{"name": "http", "containerPort": 8080}]));
        let b = pod("b", "node-2", true, json!([{"name": "http", "containerPort": 8081}]));
        let c = pod("c", "node-3", true, json!([]));
        let slices = slices_for(&svc, &[&a, &b, &c]);
        let v4: Vec<&Value> = slices.iter().filter(|s| s["addressType"] == "IPv4").collect();
        let ports: Vec<&Value> = v4.iter().map(|s| &s["ports"]).collect();
        assert!(ports.contains(&&json!([{"name": "www", "protocol": "TCP", "port": 8080}])));
        assert!(ports.contains(&&json!([{"name": "www", "protocol": "TCP", "port": 8081}])));
        assert!(ports.contains(&&json!([])), "a Pod without the named port is listed without it");
        let without_selector: Service =
            serde_json::from_value(json!({"metadata": {"name": "x"}, "spec": {"ports": [{"port": 80}]}})).unwrap();
        assert!(slices_for(&without_selector, &[&a]).is_empty());
    }
}
