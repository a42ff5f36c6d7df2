//! The chart's ValidatingAdmissionPolicies (what RBAC cannot narrow), evaluated with kube-cel for
//! the writes ferrolb's binaries make — built with the product's own names and messages, so that a
//! change on either side shows here — and for the writes a compromised or buggy speaker or
//! controller must not make. Each policy has a Deny binding.

mod common;

use ferrolb_tests::admission_policy::{Request, Verdict, evaluate};
use serde_json::{Value, json};

const NAMESPACE: &str = "ferrolb-system";
const SPEAKER: &str = "system:serviceaccount:ferrolb-system:ferrolb-speaker";
const CONTROLLER: &str = "system:serviceaccount:ferrolb-system:ferrolb-controller";

fn policies() -> Option<Vec<Value>> {
    let docs = common::rendered_chart(NAMESPACE, &json!({"speaker": {"bgp": {"mode": "bird"}}}))?;
    let policies: Vec<Value> = docs.iter().filter(|d| d["kind"] == "ValidatingAdmissionPolicy").cloned().collect();
    for p in &policies {
        let name = &p["metadata"]["name"];
        let binding = docs
            .iter()
            .find(|d| d["kind"] == "ValidatingAdmissionPolicyBinding" && d["spec"]["policyName"] == *name)
            .unwrap_or_else(|| panic!("no binding for {name}"));
        assert_eq!(binding["spec"]["validationActions"], json!(["Deny"]), "{name}");
        assert_eq!(p["spec"]["failurePolicy"], "Fail", "{name}");
    }
    let without = common::rendered_chart(NAMESPACE, &json!({"admissionPolicies": {"enabled": false}}))?;
    assert!(!without.iter().any(|d| d["kind"].as_str().is_some_and(|k| k.starts_with("ValidatingAdmissionPolicy"))));
    Some(policies)
}

/// Every policy's verdict on `req`: the request is denied when one denies it.
fn judge(policies: &[Value], req: &Request) -> Result<(), String> {
    for p in policies {
        match evaluate(p, req).unwrap_or_else(|e| panic!("{}: {e}", p["metadata"]["name"])) {
            Verdict::Denied(why) => return Err(why),
            Verdict::NotMatched | Verdict::Allowed => {}
        }
    }
    Ok(())
}

fn lease(node: &str) -> Value {
    json!({"metadata": {"name": ferrolb_speaker::membership::lease::lease_name(node), "namespace": NAMESPACE},
        "spec": {"holderIdentity": node}})
}

fn speaker(node: Option<&str>, operation: &'static str, group: &'static str, resource: &'static str) -> Request {
    Request { operation, user: SPEAKER.into(), node: node.map(String::from), group, resource, old: None, object: None }
}

#[test]
fn a_speaker_writes_only_its_own_lease() {
    let Some(p) = policies() else { return };
    let on = |node, op, name: &str| {
        let mut r = speaker(node, op, "coordination.k8s.io", "leases");
        if op != "CREATE" {
            r.old = Some(lease(name));
        }
        if op != "DELETE" {
            r.object = Some(lease(name));
        }
        judge(&p, &r)
    };
    for op in ["CREATE", "UPDATE", "DELETE"] {
        assert_eq!(on(Some("node-1"), op, "node-1"), Ok(()), "{op} of its own Lease");
        let denied = on(Some("node-1"), op, "node-2").expect_err(op);
        assert!(denied.contains("speaker-node-1"), "{denied}");
    }
    // A token without the node's name cannot be judged by node (Kubernetes before 1.30).
    assert_eq!(on(None, "UPDATE", "node-2"), Ok(()));
    // Other users (the controller's own Lease) are not this policy's business.
    let mut controller = speaker(Some("node-1"), "UPDATE", "coordination.k8s.io", "leases");
    controller.user = CONTROLLER.into();
    (controller.old, controller.object) = (Some(lease("x")), Some(lease("x")));
    assert_eq!(judge(&p, &controller), Ok(()));
}

fn service(conditions: Value, ingress: &[&str]) -> Value {
    let ingress: Vec<Value> = ingress.iter().map(|ip| json!({"ip": ip, "ipMode": "VIP"})).collect();
    json!({"metadata": {"name": "web", "namespace": "default", "annotations": {"ferrolb.io/sharing-key": "k"}},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]},
        "status": {"loadBalancer": {"ingress": ingress}, "conditions": conditions}})
}

fn announced(node: &str) -> Value {
    let message = ferrolb_speaker::report::announced_message(&"198.51.100.7".parse().unwrap(), node, "on eth0");
    json!({"type": "ferrolb.io/Announced", "status": "True", "reason": "Announced", "message": message,
        "lastTransitionTime": "2026-12-01T00:00:00Z"})
}

#[test]
fn a_speaker_sets_only_its_own_nodes_announced_condition() {
    let Some(p) = policies() else { return };
    let other = json!({"type": "example.com/Ready", "status": "True", "reason": "R", "message": "m", "lastTransitionTime": "2026-12-01T00:00:00Z"});
    let write = |node: Option<&str>, before: Value, after: Value| {
        let mut r = speaker(node, "UPDATE", "", "services/status");
        (r.old, r.object) = (Some(before), Some(after));
        judge(&p, &r)
    };
    let ips = ["198.51.100.7"];
    let before = service(json!([other]), &ips);
    assert_eq!(write(Some("node-1"), before.clone(), service(json!([other, announced("node-1")]), &ips)), Ok(()));
    let taken_over = service(json!([other, announced("node-2")]), &ips);
    assert_eq!(write(Some("node-2"), service(json!([other, announced("node-1")]), &ips), taken_over.clone()), Ok(()));
    let lie = write(Some("node-1"), before.clone(), taken_over).expect_err("naming another node");
    assert!(lie.contains("node-1"), "{lie}");
    let addresses = write(Some("node-1"), before.clone(), service(json!([other]), &["198.51.100.8"]));
    assert!(addresses.expect_err("changing the addresses").contains("load-balancer addresses"));
    let theirs = write(Some("node-1"), before.clone(), service(json!([announced("node-1")]), &ips));
    assert!(theirs.expect_err("removing another condition").contains("only the ferrolb.io/Announced"));
    // Without the node's name only the node-independent rules hold.
    assert_eq!(write(None, before.clone(), service(json!([other, announced("node-2")]), &ips)), Ok(()));
    assert!(write(None, before, service(json!([other]), &[])).is_err());
}

#[test]
fn the_controller_changes_only_the_allocated_from_annotation() {
    let Some(p) = policies() else { return };
    let write = |before: &Value, after: Value| {
        let r = Request {
            operation: "UPDATE",
            user: CONTROLLER.into(),
            node: None,
            group: "",
            resource: "services",
            old: Some(before.clone()),
            object: Some(after),
        };
        judge(&p, &r)
    };
    let before = service(json!([]), &[]);
    let mut allocated = before.clone();
    allocated["metadata"]["annotations"]["ferrolb.io/allocated-from"] = json!("lan");
    assert_eq!(write(&before, allocated.clone()), Ok(()), "recording the pool");
    assert_eq!(write(&allocated, before.clone()), Ok(()), "removing the record");
    let mut spec = allocated.clone();
    spec["spec"]["ports"][0]["port"] = json!(8080);
    assert!(write(&allocated, spec).expect_err("a spec change").contains("spec"));
    let mut key = allocated.clone();
    key["metadata"]["annotations"]["ferrolb.io/sharing-key"] = json!("other");
    assert!(write(&allocated, key).is_err(), "another annotation");
    let mut gone = allocated.clone();
    gone["metadata"]["annotations"].as_object_mut().unwrap().remove("ferrolb.io/sharing-key");
    assert!(write(&allocated, gone).is_err(), "removing another annotation");
    let mut labels = allocated.clone();
    labels["metadata"]["labels"] = json!({"a": "b"});
    assert!(write(&allocated, labels).is_err(), "labels");
    // Its status writes are its job (the status subresource is not this policy's).
    let status = Request {
        operation: "UPDATE",
        user: CONTROLLER.into(),
        node: None,
        group: "",
        resource: "services/status",
        old: Some(before.clone()),
        object: Some(service(json!([]), &["198.51.100.7"])),
    };
    assert_eq!(judge(&p, &status), Ok(()));
}

fn peer(nodes: Value, established: u32) -> Value {
    json!({"metadata": {"name": "tor"}, "spec": {"peerAddress": "192.0.2.1", "peerASN": 64512, "myASN": 64513},
        "status": {"nodes": nodes, "selected": 2, "established": established, "conditions": []}})
}

fn session(node: &str, state: &str) -> Value {
    json!({"node": node, "state": state, "since": "2026-12-01T00:00:00Z"})
}

#[test]
fn a_speaker_writes_only_its_own_bgp_session_entry() {
    let Some(p) = policies() else { return };
    let write = |before: Value, after: Value| {
        let mut r = speaker(Some("node-1"), "UPDATE", "ferrolb.io", "bgppeers/status");
        (r.old, r.object) = (Some(before), Some(after));
        judge(&p, &r)
    };
    let before = peer(json!([session("node-1", "Connect"), session("node-2", "Established")]), 1);
    let mine = peer(json!([session("node-1", "Established"), session("node-2", "Established")]), 1);
    assert_eq!(write(before.clone(), mine), Ok(()));
    let first = json!({"metadata": {"name": "tor"}, "status": {"nodes": [session("node-1", "Established")]}});
    assert_eq!(write(json!({"metadata": {"name": "tor"}}), first), Ok(()), "the first entry of a fresh peer");
    let theirs = peer(json!([session("node-1", "Connect"), session("node-2", "Idle")]), 1);
    assert!(write(before.clone(), theirs).expect_err("another node's entry").contains("own session"));
    let summary = peer(json!([session("node-1", "Connect"), session("node-2", "Established")]), 2);
    assert!(write(before, summary).expect_err("the controller's summary").contains("established"));
}
