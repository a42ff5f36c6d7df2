//! The controller binary against sim-apiserver over HTTP: address selection, requests, sharing,
//! dual-stack, releases, pool changes and their status, restarts, two replicas, and bad input.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{eventually, ferrolb_cluster, free_addr, spawn_controller};
use ferrolb_crds::IPPool;
use k8s_openapi::api::core::v1::{Event as CoreEvent, Namespace, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

async fn pool(client: &Client, name: &str, spec: Value) {
    let api: Api<IPPool> = Api::all(client.clone());
    let body = json!({"apiVersion": "ferrolb.io/v1alpha1", "kind": "IPPool", "metadata": {"name": name}, "spec": spec});
    api.patch(name, &PatchParams::apply("test").force(), &Patch::Apply(body)).await.unwrap();
}

async fn namespace(client: &Client, name: &str, labels: Value) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap();
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.unwrap();
}

/// Creates a LoadBalancer Service; `extra` is merged into it.
async fn service(client: &Client, ns: &str, name: &str, extra: Value) {
    let mut v = json!({"metadata": {"name": name, "namespace": ns},
        "spec": {"type": "LoadBalancer", "selector": {"app": name}, "ports": [{"name": "http", "port": 80}]}});
    json_merge(&mut v, &extra);
    let svc: Service = serde_json::from_value(v).unwrap();
    Api::<Service>::namespaced(client.clone(), ns).create(&PostParams::default(), &svc).await.unwrap();
}

fn json_merge(a: &mut Value, b: &Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                json_merge(a.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b.clone(),
    }
}

fn ingress(svc: &Service) -> Vec<String> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.clone())
        .collect()
}

async fn ips(client: &Client, ns: &str, name: &str) -> Vec<String> {
    ingress(&Api::<Service>::namespaced(client.clone(), ns).get(name).await.unwrap())
}

async fn wait_ips(client: &Client, ns: &str, name: &str, want: &[&str]) {
    let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    let what = format!("{ns}/{name} to get {want:?}");
    eventually(&what, WAIT, || {
        let want = want.clone();
        async move { (ips(client, ns, name).await == want).then_some(()) }
    })
    .await;
}

async fn events(client: &Client, ns: &str, name: &str) -> Vec<(String, String)> {
    let api: Api<CoreEvent> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().fields(&format!("involvedObject.name={name},involvedObject.kind=Service"));
    api.list(&lp)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect()
}

async fn wait_event(client: &Client, ns: &str, name: &str, reason: &str, needle: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let seen = events(client, ns, name).await;
        if seen.iter().any(|(r, m)| r == reason && m.contains(needle)) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {reason} event containing {needle:?} on {ns}/{name}; saw {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_counts(client: &Client, pool: &str, v6: bool, want: (u64, u64, u64)) {
    let what = format!("IPPool {pool} to count {want:?}");
    eventually(&what, WAIT, || async {
        let st = pool_status(client, pool).await;
        let c = if v6 { st.ipv6 } else { st.ipv4 }?;
        ((c.total, c.used, c.available) == want).then_some(())
    })
    .await;
}

async fn pool_status(client: &Client, name: &str) -> ferrolb_crds::IPPoolStatus {
    Api::<IPPool>::all(client.clone()).get(name).await.unwrap().status.unwrap_or_default()
}

async fn wait_condition(client: &Client, pool: &str, type_: &str, status: &str, needle: &str) {
    let what = format!("IPPool {pool} condition {type_}={status} mentioning {needle:?}");
    eventually(&what, WAIT, || async {
        pool_status(client, pool)
            .await
            .conditions
            .iter()
            .any(|c| c.type_ == type_ && c.status == status && c.message.contains(needle))
            .then_some(())
    })
    .await;
}

/// Every address held by two Services must be shared under one key; returns all addresses held.
async fn assert_no_duplicates(client: &Client) -> BTreeMap<String, Vec<String>> {
    let all = Api::<Service>::all(client.clone()).list(&ListParams::default()).await.unwrap();
    let mut by_ip: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for s in &all.items {
        for ip in ingress(s) {
            by_ip.entry(ip).or_default().push(format!("{}/{}", s.namespace().unwrap_or_default(), s.name_any()));
        }
    }
    for (ip, holders) in &by_ip {
        let keys: BTreeSet<Option<String>> = holders
            .iter()
            .map(|h| {
                let (ns, n) = h.split_once('/').unwrap();
                let s = all.items.iter().find(|s| s.namespace().as_deref() == Some(ns) && s.name_any() == n).unwrap();
                s.annotations().get("ferrolb.io/sharing-key").cloned()
            })
            .collect();
        assert!(holders.len() == 1 || (keys.len() == 1 && !keys.contains(&None)), "{ip} held by {holders:?}");
    }
    by_ip
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selection_by_priority_name_auto_assign_and_service_allocation() {
    let (_server, client, kubeconfig) = ferrolb_cluster().await;
    pool(&client, "b", json!({"addresses": ["198.51.100.10-198.51.100.11"]})).await;
    pool(&client, "a", json!({"addresses": ["203.0.113.10/32"], "priority": 1})).await;
    pool(&client, "c", json!({"addresses": ["198.51.100.20"]})).await;
    pool(&client, "manual", json!({"addresses": ["192.0.2.50/32"], "autoAssign": false})).await;
    pool(&client, "media", json!({"addresses": ["192.0.2.60/32"], "serviceAllocation": {"namespaces": ["media"]}}))
        .await;
    pool(&client, "labelled", json!({"addresses": ["192.0.2.70/32"], "serviceAllocation": {"namespaceSelector": {"matchLabels": {"lb": "home"}}}})).await;
    pool(&client, "svcsel", json!({"addresses": ["192.0.2.80/32"], "serviceAllocation": {"serviceSelector": {"matchLabels": {"expose": "lan"}}}})).await;
    namespace(&client, "media", json!({})).await;
    namespace(&client, "home", json!({"lb": "home"})).await;
    let _c = spawn_controller(&kubeconfig, "c1", free_addr(), &[]);

    // Pools with a priority before pools without one; then by name.
    for (name, want) in
        [("s1", "203.0.113.10"), ("s2", "198.51.100.10"), ("s3", "198.51.100.11"), ("s4", "198.51.100.20")]
    {
        service(&client, "default", name, json!({})).await;
        wait_ips(&client, "default", name, &[want]).await;
    }
    wait_event(&client, "default", "s2", "IPAllocated", "Assigned 198.51.100.10 from IPPool b").await;
    service(&client, "default", "s5", json!({})).await;
    wait_event(&client, "default", "s5", "AllocationFailed", "no free IPv4 address").await;
    assert!(ips(&client, "default", "s5").await.is_empty(), "autoAssign: false pools are not used unasked");
    service(&client, "default", "byname", json!({"metadata": {"annotations": {"ferrolb.io/pool": "manual"}}})).await;
    wait_ips(&client, "default", "byname", &["192.0.2.50"]).await;
    service(&client, "media", "m1", json!({})).await;
    wait_ips(&client, "media", "m1", &["192.0.2.60"]).await;
    service(&client, "home", "h1", json!({})).await;
    wait_ips(&client, "home", "h1", &["192.0.2.70"]).await;
    service(&client, "default", "lan", json!({"metadata": {"labels": {"expose": "lan"}}})).await;
    wait_ips(&client, "default", "lan", &["192.0.2.80"]).await;
    let svc = Api::<Service>::namespaced(client.clone(), "default").get("s2").await.unwrap();
    assert_eq!(svc.annotations()["ferrolb.io/allocated-from"], "b");
    wait_counts(&client, "b", false, (2, 2, 0)).await;
    assert!(ingress(&svc).len() == 1);
    assert_eq!(
        svc.status.unwrap().load_balancer.unwrap().ingress.unwrap()[0].ip_mode.as_deref(),
        Some("VIP"),
        "ipMode VIP is written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requested_addresses_and_metallb_aliases() {
    let (_server, client, kubeconfig) = ferrolb_cluster().await;
    pool(&client, "home", json!({"addresses": ["198.51.100.0/28"]})).await;
    pool(&client, "other", json!({"addresses": ["203.0.113.0/28"], "autoAssign": false})).await;
    let _c = spawn_controller(&kubeconfig, "c1", free_addr(), &[]);
    let ann = |k: &str, v: &str| json!({"metadata": {"annotations": {k: v}}});
    service(&client, "default", "r1", ann("ferrolb.io/ips", "198.51.100.7")).await;
    wait_ips(&client, "default", "r1", &["198.51.100.7"]).await;
    service(&client, "default", "r2", json!({"spec": {"loadBalancerIP": "198.51.100.8"}})).await;
    wait_ips(&client, "default", "r2", &["198.51.100.8"]).await;
    service(&client, "default", "r3", ann("ferrolb.io/ips", "192.0.2.1")).await;
    wait_event(&client, "default", "r3", "AllocationFailed", "192.0.2.1 is not in any IPPool").await;
    service(&client, "default", "r4", ann("ferrolb.io/ips", "198.51.100.7")).await;
    wait_event(&client, "default", "r4", "AllocationFailed", "198.51.100.7 is in use by default/r1").await;
    service(&client, "default", "r5", json!({"metadata": {"annotations": {"ferrolb.io/ips": "198.51.100.9"}}, "spec": {"loadBalancerIP": "198.51.100.9"}})).await;
    wait_event(&client, "default", "r5", "AllocationFailed", "use only one").await;
    service(&client, "default", "r6", ann("metallb.universe.tf/loadBalancerIPs", "198.51.100.9")).await;
    wait_ips(&client, "default", "r6", &["198.51.100.9"]).await;
    service(&client, "default", "r7", ann("metallb.io/address-pool", "other")).await;
    wait_ips(&client, "default", "r7", &["203.0.113.0"]).await;
    service(
        &client,
        "default",
        "r8",
        json!({"metadata": {"annotations": {"ferrolb.io/pool": "home", "ferrolb.io/ips": "203.0.113.5"}}}),
    )
    .await;
    wait_event(
        &client,
        "default",
        "r8",
        "AllocationFailed",
        "is in IPPool \"other\", but the Service asks for IPPool \"home\"",
    )
    .await;
    for refused in ["r3", "r4", "r5", "r8"] {
        assert!(ips(&client, "default", refused).await.is_empty(), "{refused} got an address");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharing_is_granted_with_one_key_and_refused_otherwise() {
    let (_server, client, kubeconfig) = ferrolb_cluster().await;
    pool(&client, "p", json!({"addresses": ["198.51.100.0/28"]})).await;
    let _c = spawn_controller(&kubeconfig, "c1", free_addr(), &[]);
    let shared = |key: &str, port: u16, extra: Value| {
        let mut v = json!({"metadata": {"annotations": {"ferrolb.io/sharing-key": key}}, "spec": {"ports": [{"name": "p", "port": port}]}});
        json_merge(&mut v, &extra);
        v
    };
    service(&client, "default", "a", shared("k", 80, json!({}))).await;
    wait_ips(&client, "default", "a", &["198.51.100.0"]).await;
    service(&client, "default", "b", shared("k", 443, json!({}))).await;
    wait_ips(&client, "default", "b", &["198.51.100.0"]).await;
    let want0 = json!({"metadata": {"annotations": {"ferrolb.io/ips": "198.51.100.0"}}});
    service(&client, "default", "clash", shared("k", 80, want0.clone())).await;
    wait_event(&client, "default", "clash", "AllocationFailed", "both use port 80/TCP").await;
    service(&client, "default", "otherkey", shared("x", 8080, want0.clone())).await;
    wait_event(&client, "default", "otherkey", "AllocationFailed", "sharing key").await;
    let mut local = want0.clone();
    json_merge(&mut local, &json!({"spec": {"externalTrafficPolicy": "Local"}}));
    service(&client, "default", "local", shared("k", 9090, local)).await;
    wait_event(&client, "default", "local", "AllocationFailed", "externalTrafficPolicy differs").await;
    service(&client, "default", "nokey", want0).await;
    wait_event(&client, "default", "nokey", "AllocationFailed", "sharing needs the same ferrolb.io/sharing-key").await;
    assert_no_duplicates(&client).await;
    // Two Services share one address: one used.
    wait_counts(&client, "p", false, (16, 1, 15)).await;

    // Another namespace joins a's address with the same key; when a later takes the joiner's
    // port, a (there first) keeps its address and the joiner moves.
    namespace(&client, "other", json!({})).await;
    service(&client, "other", "joiner", shared("k", 8443, json!({}))).await;
    wait_ips(&client, "other", "joiner", &["198.51.100.0"]).await;
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    let ports = json!({"spec": {"ports": [{"name": "p", "port": 80}, {"name": "q", "port": 8443}]}});
    api.patch("a", &PatchParams::default(), &Patch::Merge(ports)).await.unwrap();
    wait_ips(&client, "other", "joiner", &["198.51.100.1"]).await;
    wait_ips(&client, "default", "a", &["198.51.100.0"]).await;
    assert_no_duplicates(&client).await;
    // A pool that keeps shared addresses within one namespace.
    pool(&client, "p", json!({"addresses": ["198.51.100.0/28"], "shareAcrossNamespaces": false})).await;
    service(
        &client,
        "other",
        "tenant",
        shared("k", 9443, json!({"metadata": {"annotations": {"ferrolb.io/ips": "198.51.100.0"}}})),
    )
    .await;
    wait_event(&client, "other", "tenant", "AllocationFailed", "shares addresses only within one namespace").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_policies_and_the_missing_family_added_later() {
    let (_server, client, kubeconfig) = ferrolb_cluster().await;
    pool(&client, "p", json!({"addresses": ["198.51.100.0/30"]})).await;
    let _c = spawn_controller(&kubeconfig, "c1", free_addr(), &[]);
    service(&client, "default", "single", json!({})).await;
    wait_ips(&client, "default", "single", &["198.51.100.0"]).await;
    service(&client, "default", "prefer", json!({"spec": {"ipFamilyPolicy": "PreferDualStack"}})).await;
    wait_ips(&client, "default", "prefer", &["198.51.100.1"]).await;
    service(&client, "default", "require", json!({"spec": {"ipFamilyPolicy": "RequireDualStack"}})).await;
    wait_event(&client, "default", "require", "AllocationFailed", "RequireDualStack").await;
    service(&client, "default", "six", json!({"spec": {"ipFamilies": ["IPv6"], "ipFamilyPolicy": "SingleStack"}}))
        .await;
    wait_event(&client, "default", "six", "AllocationFailed", "no free IPv6 address").await;
    // The pool gains IPv6: the waiting ones get theirs, PreferDualStack gets its second family.
    pool(&client, "p", json!({"addresses": ["198.51.100.0/30", "2001:db8::/125"]})).await;
    // 2001:db8:: is the subnet-router anycast address of the /125: never handed out.
    wait_ips(&client, "default", "prefer", &["198.51.100.1", "2001:db8::1"]).await;
    wait_ips(&client, "default", "require", &["198.51.100.2", "2001:db8::2"]).await;
    wait_ips(&client, "default", "six", &["2001:db8::3"]).await;
    wait_ips(&client, "default", "single", &["198.51.100.0"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_type_change_and_class_change_release_to_a_waiting_service() {
    let (server, client, kubeconfig) = ferrolb_cluster().await;
    pool(&client, "one", json!({"addresses": ["198.51.100.1/32"]})).await;
    let _c = spawn_controller(&kubeconfig, "c1", free_addr(), &[]);
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    service(&client, "default", "s1", json!({})).await;
    wait_ips(&client, "default", "s1", &["198.51.100.1"]).await;
    service(&client, "default", "s2", json!({})).await;
    wait_event(&client, "default", "s2", "AllocationFailed", "no free").await;
    api.delete("s1", &DeleteParams::default()).await.unwrap();
    wait_ips(&client, "default", "s2", &["198.51.100.1"]).await;

    service(&client, "default", "s3", json!({})).await;
    wait_event(&client, "default", "s3", "AllocationFailed", "no free").await;
    api.patch("s2", &PatchParams::default(), &Patch::Merge(json!({"spec": {"type": "ClusterIP"}}))).await.unwrap();
    wait_ips(&client, "default", "s3", &["198.51.100.1"]).await;
    wait_ips(&client, "default", "s2", &[]).await;
    wait_event(&client, "default", "s2", "IPReleased", "198.51.100.1").await;
    let s2 = api.get("s2").await.unwrap();
    assert!(!s2.annotations().contains_key("ferrolb.io/allocated-from"));

    // A class change (only possible through a type change) releases too.
    service(&client, "default", "s4", json!({})).await;
    wait_event(&client, "default", "s4", "AllocationFailed", "no free").await;
    api.patch("s3", &PatchParams::default(), &Patch::Merge(json!({"spec": {"type": "ClusterIP"}}))).await.unwrap();
    wait_ips(&client, "default", "s4", &["198.51.100.1"]).await;
    api.patch(
        "s3",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"type": "LoadBalancer", "loadBalancerClass": "other.io/lb"}})),
    )
    .await
    .unwrap();
    // Services of a foreign class are never written to, not even one that carries our annotation
    // (copied from a manifest) and an address another implementation gave it.
    let foreign = json!({"metadata": {"annotations": {"ferrolb.io/allocated-from": "one"}},
        "spec": {"loadBalancerClass": "other.io/lb"}});
    service(&client, "default", "foreign", foreign).await;
    let theirs = json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.7"}]}}});
    api.patch_status("foreign", &PatchParams::default(), &Patch::Merge(theirs)).await.unwrap();
    let before = server.shared().requests().len();
    api.delete("s4", &DeleteParams::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await; // give a misbehaving controller the chance to write
    assert!(ips(&client, "default", "s3").await.is_empty(), "s3 got an address");
    assert_eq!(ips(&client, "default", "foreign").await, ["192.0.2.7"], "the foreign Service's status was changed");
    let touched = server.shared().requests()[before..].iter().any(|r| {
        r.method != "GET" && (r.path.ends_with("/services/foreign") || r.path.ends_with("/services/foreign/status"))
    });
    let writes: Vec<String> = server.shared().requests()[before..]
        .iter()
        .filter(|r| r.method != "GET" && r.path.contains("/services/foreign"))
        .map(|r| format!("{} {} {:?}", r.method, r.path, r.user_agent))
        .collect();
    assert!(!touched, "the foreign-class Service was written to: {writes:?}");
    assert!(events(&client, "default", "foreign").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_shrunk_deleted_disabled_overlapping_and_invalid() {
    let (_server, client, kubeconfig) = ferrolb_cluster().await;
    pool(&client, "p1", json!({"addresses": ["198.51.100.0/30"], "priority": 1})).await;
    pool(&client, "p2", json!({"addresses": ["203.0.113.0/30"], "priority": 5})).await;
    let _c = spawn_controller(&kubeconfig, "c1", free_addr(), &[]);
    for (n, ip) in [("a", "198.51.100.0"), ("b", "198.51.100.1"), ("c", "198.51.100.2")] {
        service(&client, "default", n, json!({})).await;
        wait_ips(&client, "default", n, &[ip]).await;
    }
    wait_condition(&client, "p1", "Ready", "True", "").await;
    // Shrunk: c's address is gone from p1, so c moves to p2; a and b stay.
    pool(&client, "p1", json!({"addresses": ["198.51.100.0/31"], "priority": 1})).await;
    wait_ips(&client, "default", "c", &["203.0.113.0"]).await;
    wait_event(&client, "default", "c", "IPAllocated", "from IPPool p2").await;
    wait_ips(&client, "default", "a", &["198.51.100.0"]).await;
    wait_ips(&client, "default", "b", &["198.51.100.1"]).await;
    // Disabled: existing allocations stay, new Services go elsewhere.
    pool(&client, "p1", json!({"addresses": ["198.51.100.0/30"], "priority": 1, "disabled": true})).await;
    wait_condition(&client, "p1", "Ready", "False", "disabled").await;
    service(&client, "default", "d", json!({})).await;
    wait_ips(&client, "default", "d", &["203.0.113.1"]).await;
    wait_ips(&client, "default", "a", &["198.51.100.0"]).await;
    // Overlapping: reported on both, never handed out twice.
    pool(&client, "p3", json!({"addresses": ["198.51.100.1-198.51.100.5"], "priority": 9})).await;
    wait_condition(&client, "p1", "Conflicting", "True", "\"p3\"").await;
    wait_condition(&client, "p3", "Conflicting", "True", "\"p1\"").await;
    // b's address counts as used in p3 too.
    wait_counts(&client, "p3", false, (5, 1, 4)).await;
    // Deleted: p2's Services move to the next pool that may serve them (p3).
    Api::<IPPool>::all(client.clone()).delete("p2", &DeleteParams::default()).await.unwrap();
    wait_ips(&client, "default", "c", &["198.51.100.2"]).await;
    wait_ips(&client, "default", "d", &["198.51.100.3"]).await;
    // Invalid: the API accepts a backwards range, the controller reports it and moves nothing.
    pool(&client, "p4", json!({"addresses": ["198.51.100.9-198.51.100.1"]})).await;
    wait_condition(&client, "p4", "Invalid", "True", "starts after it ends").await;
    wait_condition(&client, "p4", "Ready", "False", "no usable addresses").await;
    assert_no_duplicates(&client).await;
    wait_ips(&client, "default", "a", &["198.51.100.0"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_reported_and_changes_nothing_else() {
    let (_server, client, kubeconfig) = ferrolb_cluster().await;
    pool(&client, "p", json!({"addresses": ["198.51.100.0/30"]})).await;
    pool(&client, "huge", json!({"addresses": ["2001:db8::/32"], "autoAssign": false})).await;
    pool(&client, "empty", json!({"addresses": ["198.51.100.20-198.51.100.10"]})).await;
    let http = free_addr();
    let mut c = spawn_controller(&kubeconfig, "c1", http, &[]);
    service(&client, "default", "ok", json!({})).await;
    wait_ips(&client, "default", "ok", &["198.51.100.0"]).await;
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    // Garbage annotations on a Service that holds an address: a Warning, the address stays.
    api.patch(
        "ok",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"ferrolb.io/ips": "garbage"}}})),
    )
    .await
    .unwrap();
    wait_event(&client, "default", "ok", "AllocationFailed", "\"garbage\" is not an IP address").await;
    wait_ips(&client, "default", "ok", &["198.51.100.0"]).await;
    service(
        &client,
        "default",
        "alias",
        json!({"metadata": {"annotations": {"ferrolb.io/pool": "p", "metallb.io/address-pool": "huge"}}}),
    )
    .await;
    wait_event(&client, "default", "alias", "AllocationFailed", "disagree").await;
    service(&client, "default", "nopool", json!({"metadata": {"annotations": {"ferrolb.io/pool": "nonexistent"}}}))
        .await;
    wait_event(&client, "default", "nopool", "AllocationFailed", "IPPool \"nonexistent\" does not exist").await;
    service(
        &client,
        "default",
        "v6",
        json!({"metadata": {"annotations": {"ferrolb.io/pool": "huge"}}, "spec": {"ipFamilies": ["IPv6"]}}),
    )
    .await;
    wait_ips(&client, "default", "v6", &["2001:db8::1"]).await;
    wait_condition(&client, "empty", "Invalid", "True", "no usable addresses").await;
    let max = ferrolb_crds::addresses::MAX_COUNT;
    wait_counts(&client, "huge", true, (max, 1, max)).await;
    // Nothing else moved, and the controller is alive and reports it all.
    wait_ips(&client, "default", "ok", &["198.51.100.0"]).await;
    assert!(c.running(), "the controller crashed");
    let (code, metrics) = common::http_get(http, "/metrics").await.unwrap();
    assert_eq!(code, 200);
    for needle in [
        "ferrolb_controller_leader 1",
        "ferrolb_pool_addresses{pool=\"p\",family=\"ipv4\",state=\"used\"} 1",
        "ferrolb_allocations_total{pool=\"p\"}",
        "ferrolb_allocation_failures_total{reason=\"pool_not_found\"}",
        "ferrolb_reconcile_duration_seconds_count",
    ] {
        assert!(metrics.contains(needle), "{needle} missing from /metrics:\n{metrics}");
    }
    assert_eq!(common::http_get(http, "/readyz").await.unwrap().0, 200);
}

async fn all_allocated(client: &Client, names: &[String]) -> Option<BTreeMap<String, String>> {
    let list = Api::<Service>::namespaced(client.clone(), "default").list(&ListParams::default()).await.ok()?;
    let got: BTreeMap<String, String> =
        list.items.iter().filter_map(|s| Some((s.name_any(), ingress(s).first()?.clone()))).collect();
    names.iter().all(|n| got.contains_key(n)).then_some(got)
}

async fn create_many(client: &Client, range: std::ops::Range<usize>) -> Vec<String> {
    let mut names = Vec::new();
    for i in range {
        let name = format!("svc-{i:04}");
        service(client, "default", &name, json!({})).await;
        names.push(name);
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_in_the_middle_of_a_burst_moves_nothing_and_finishes_the_work() {
    let (server, client, kubeconfig) = ferrolb_cluster().await;
    pool(&client, "doc", json!({"addresses": ["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"]})).await;
    let mut c = spawn_controller(&kubeconfig, "c1", free_addr(), &[]);
    let first = create_many(&client, 0..300).await;
    let before = eventually("300 Services allocated", Duration::from_secs(60), || all_allocated(&client, &first)).await;
    // A burst of 300 more; kill -9 while it is under way.
    let burst = tokio::spawn({
        let client = client.clone();
        async move { create_many(&client, 300..600).await }
    });
    eventually("the burst to be half allocated", Duration::from_secs(60), || async {
        let n = all_allocated(&client, &[]).await.map(|m| m.len()).unwrap_or(0);
        (n >= 450).then_some(())
    })
    .await;
    c.kill();
    let all: Vec<String> = first.iter().cloned().chain(burst.await.unwrap()).collect();
    let _c2 = spawn_controller(&kubeconfig, "c1", free_addr(), &[]);
    let after = eventually("all 600 allocated", Duration::from_secs(60), || all_allocated(&client, &all)).await;
    for (name, ip) in &before {
        assert_eq!(after.get(name), Some(ip), "{name} moved across the restart");
    }
    let by_ip = assert_no_duplicates(&client).await;
    assert_eq!(by_ip.len(), 600);
    // Pool status follows promptly but is written in batches, not once per Service.
    wait_counts(&client, "doc", false, (768, 600, 168)).await;
    let status_writes = server
        .shared()
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH" && r.path.ends_with("/ippools/doc/status"))
        .count();
    assert!(status_writes < 100, "{status_writes} pool status writes for 600 Services");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_label_changes_are_watched() {
    let (_server, client, kubeconfig) = ferrolb_cluster().await;
    pool(&client, "labelled", json!({"addresses": ["198.51.100.70/32"], "serviceAllocation": {"namespaceSelector": {"matchLabels": {"lb": "home"}}}})).await;
    namespace(&client, "later", json!({})).await;
    let _c = spawn_controller(&kubeconfig, "c1", free_addr(), &[]);
    service(&client, "later", "w", json!({})).await;
    wait_event(&client, "later", "w", "AllocationFailed", "serviceAllocation excludes").await;
    Api::<Namespace>::all(client.clone())
        .patch("later", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"lb": "home"}}})))
        .await
        .unwrap();
    wait_ips(&client, "later", "w", &["198.51.100.70"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_only_the_leader_writes_and_the_other_takes_over() {
    let (server, client, kubeconfig) = ferrolb_cluster().await;
    pool(&client, "doc", json!({"addresses": ["198.51.100.0/24"]})).await;
    let mut a = spawn_controller(&kubeconfig, "replica-a", free_addr(), &[]);
    eventually("replica-a to lead", WAIT, || async {
        let lease = Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(client.clone(), "ferrolb-system")
            .get("ferrolb-controller")
            .await
            .ok()?;
        (lease.spec?.holder_identity.as_deref() == Some("replica-a")).then_some(())
    })
    .await;
    let _b = spawn_controller(&kubeconfig, "replica-b", free_addr(), &[]);
    let first = create_many(&client, 0..40).await;
    let before = eventually("40 Services allocated", WAIT, || all_allocated(&client, &first)).await;
    let writers = |from: usize| -> BTreeSet<String> {
        server.shared().requests()[from..]
            .iter()
            .filter(|r| r.method == "PATCH" && r.path.contains("/services/"))
            .filter_map(|r| r.field_manager.clone())
            .collect()
    };
    assert_eq!(writers(0), BTreeSet::from(["replica-a".to_string()]), "only the leader writes");
    a.kill();
    let mark = server.shared().requests().len();
    let more = create_many(&client, 40..80).await;
    let all: Vec<String> = first.iter().cloned().chain(more).collect();
    let after = eventually("the other replica to finish the work", WAIT, || all_allocated(&client, &all)).await;
    assert_eq!(writers(mark), BTreeSet::from(["replica-b".to_string()]));
    for (name, ip) in &before {
        assert_eq!(after.get(name), Some(ip), "{name} moved on takeover");
    }
    assert_eq!(assert_no_duplicates(&client).await.len(), 80);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_lease_requests_hang_stops_writing_before_its_lease_could_expire() {
    let (server, client, kubeconfig) = ferrolb_cluster().await;
    pool(&client, "doc", json!({"addresses": ["198.51.100.0/24"]})).await;
    let http = free_addr();
    // Lease 3 s, retry 300 ms (spawn_controller): leadership ends 2 s after the last renewal began.
    let _a = spawn_controller(&kubeconfig, "replica-a", http, &[]);
    service(&client, "default", "before", json!({})).await;
    wait_ips(&client, "default", "before", &["198.51.100.0"]).await;
    // The API server stops answering about the Lease (and only about it): every renewal hangs.
    server.shared().hold_requests(Some("/leases/ferrolb-controller"));
    let leading = || async {
        let (_, metrics) = common::http_get(http, "/metrics").await?;
        metrics.lines().find(|l| l.starts_with("ferrolb_controller_leader "))?.ends_with(" 1").then_some(())
    };
    eventually("replica-a to step down", WAIT, || async { leading().await.is_none().then_some(()) }).await;
    // Past the Lease's whole duration another replica may lead: this one must not write.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mark = server.shared().requests().len();
    service(&client, "default", "after", json!({})).await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // give a misbehaving leader the chance to write
    let writes: Vec<String> = server.shared().requests()[mark..]
        .iter()
        .filter(|r| r.method != "GET" && r.field_manager.as_deref() == Some("replica-a"))
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(writes.is_empty(), "a replica without a renewed Lease wrote: {writes:?}");
    assert!(ips(&client, "default", "after").await.is_empty());
    // The API server answers again: it leads again and catches up.
    server.shared().hold_requests(None);
    wait_ips(&client, "default", "after", &["198.51.100.1"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_the_lease_over_at_once() {
    let (_server, client, kubeconfig) = ferrolb_cluster().await;
    let mut a = spawn_controller(&kubeconfig, "replica-a", free_addr(), &[]);
    let leases = Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(client.clone(), "ferrolb-system");
    let holder = |want: &'static str| {
        let leases = leases.clone();
        move || {
            let leases = leases.clone();
            async move {
                let l = leases.get("ferrolb-controller").await.ok()?;
                (l.spec?.holder_identity.unwrap_or_default() == want).then_some(())
            }
        }
    };
    eventually("replica-a to lead", WAIT, holder("replica-a")).await;
    assert!(a.terminate().success(), "a clean exit on SIGTERM");
    eventually("the Lease to be handed back", Duration::from_secs(2), holder("")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_writes_are_retried_and_nothing_is_lost_or_given_twice() {
    let (server, client, kubeconfig) = ferrolb_cluster().await;
    pool(&client, "doc", json!({"addresses": ["198.51.100.40/30"]})).await;
    let _c = spawn_controller(&kubeconfig, "c1", free_addr(), &[]);
    // Each Service's first status write fails (once with 500, once with 429); the queue retries
    // them with backoff.
    server.shared().fail_next_writes_to("services/status", 1, 500);
    service(&client, "default", "a", json!({})).await;
    wait_ips(&client, "default", "a", &["198.51.100.40"]).await;
    server.shared().fail_next_writes_to("services/status", 1, 429);
    service(&client, "default", "b", json!({})).await;
    wait_ips(&client, "default", "a", &["198.51.100.40"]).await;
    wait_ips(&client, "default", "b", &["198.51.100.41"]).await;
    let log = server.shared().requests();
    for name in ["a", "b"] {
        let codes: Vec<u16> = log
            .iter()
            .filter(|r| r.method == "PATCH" && r.path.ends_with(&format!("/services/{name}/status")))
            .map(|r| r.code)
            .collect();
        assert!(codes.first().is_some_and(|c| *c >= 429), "{name}'s first status write was to fail: {codes:?}");
        assert_eq!(codes.last(), Some(&200), "{name}: {codes:?}");
    }
    assert_no_duplicates(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn special_addresses_clusterips_node_addresses_and_reserved_cidrs_are_never_handed_out() {
    let (_server, client, kubeconfig) = ferrolb_cluster().await;
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let node = |address: &str| {
        serde_json::from_value::<k8s_openapi::api::core::v1::Node>(json!({"metadata": {"name": "n1"},
            "status": {"addresses": [{"type": "InternalIP", "address": address}, {"type": "Hostname", "address": "n1"}]}}))
        .unwrap()
    };
    nodes.create(&PostParams::default(), &node("198.51.100.0")).await.unwrap();
    // 10.96.0.1 is the kubernetes Service's ClusterIP; 10.97.0.0/31 lies in --reserved-cidrs.
    let entries = ["127.0.0.0/30", "10.96.0.1", "10.97.0.0/31", "198.51.100.0/30"];
    pool(&client, "p", json!({"addresses": entries})).await;
    let _c = spawn_controller(&kubeconfig, "c1", free_addr(), &["--reserved-cidrs", "10.97.0.0/16,fd00:97::/64"]);
    wait_condition(&client, "p", "Invalid", "True", "127.0.0.0-127.255.255.255 (loopback)").await;
    wait_condition(&client, "p", "Invalid", "True", "10.97.0.0-10.97.255.255 (reserved by --reserved-cidrs)").await;
    // Lowest first, yet neither the ClusterIP nor the Node's address.
    for (name, want) in [("s1", "198.51.100.1"), ("s2", "198.51.100.2"), ("s3", "198.51.100.3")] {
        service(&client, "default", name, json!({})).await;
        wait_ips(&client, "default", name, &[want]).await;
    }
    // What the cluster holds counts as used.
    wait_counts(&client, "p", false, (5, 5, 0)).await;
    service(&client, "default", "s4", json!({})).await;
    wait_event(&client, "default", "s4", "AllocationFailed", "no free IPv4 address").await;
    service(&client, "default", "lo", json!({"spec": {"loadBalancerIP": "127.0.0.1"}})).await;
    wait_event(&client, "default", "lo", "AllocationFailed", "127.0.0.1 is never handed out: it is loopback").await;
    service(&client, "default", "api", json!({"metadata": {"annotations": {"ferrolb.io/ips": "10.96.0.1"}}})).await;
    wait_event(&client, "default", "api", "AllocationFailed", "it is the ClusterIP of Service default/kubernetes")
        .await;
    // The Node takes s2's address: s2 moves to the one the Node gave up.
    let moved = json!({"status": {"addresses": [{"type": "InternalIP", "address": "198.51.100.2"}]}});
    nodes.patch_status("n1", &PatchParams::default(), &Patch::Merge(moved)).await.unwrap();
    wait_ips(&client, "default", "s2", &["198.51.100.0"]).await;
    // The Node goes away: its address serves the waiting Service.
    nodes.delete("n1", &DeleteParams::default()).await.unwrap();
    wait_ips(&client, "default", "s4", &["198.51.100.2"]).await;
    assert_no_duplicates(&client).await;
}
