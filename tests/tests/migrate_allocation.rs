//! A cluster moved from MetalLB hands out the addresses MetalLB would: MetalLB's documented
//! samples and a mixed configuration (selecting pools with and without priorities, a plain pool
//! that sorts first by name, a namespace list joined with a namespace selector, a Service
//! selector) go through `ferrolb migrate`, the IPPools it writes are applied, and with the real
//! controller running every Service must get the address MetalLB's rule gives: pools whose
//! serviceAllocation selects the Service first, then the others; within each, ascending priority
//! with unset last; then by name.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{eventually, ferrolb_cluster, free_addr, run, spawn_controller, workspace_binary};
use ferrolb_crds::{BGPPeer, IPPool};
use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

const MIXED: &str = r#"
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: aaa-plain, namespace: metallb-system}
spec:
  addresses: [198.51.100.0/30]
---
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: media-pool, namespace: metallb-system}
spec:
  addresses: [203.0.113.0/30]
  serviceAllocation:
    priority: 50
    namespaces: [media]
    namespaceSelectors:
      - matchLabels: {team: media}
---
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: web-pool, namespace: metallb-system}
spec:
  addresses: [203.0.113.8/30]
  serviceAllocation:
    priority: 10
    serviceSelectors:
      - matchLabels: {expose: web}
---
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: zz-everyone, namespace: metallb-system}
spec:
  addresses: [192.0.2.0/31]
  serviceAllocation:
    priority: 5
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata: {name: all, namespace: metallb-system}
"#;

async fn namespace(client: &Client, name: &str, labels: Value) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap();
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.unwrap();
}

async fn service_gets(client: &Client, ns: &str, name: &str, labels: Value, want: &str) {
    let svc: Service = serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}}))
    .unwrap();
    let api: Api<Service> = Api::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), &svc).await.unwrap();
    let got = eventually(&format!("{ns}/{name} to get an address"), WAIT, || async {
        let s = api.get(name).await.ok()?;
        s.status?.load_balancer?.ingress?.first()?.ip.clone()
    })
    .await;
    assert_eq!(got, want, "{ns}/{name}: MetalLB's rule gives {want}");
}

/// Runs `ferrolb migrate` on `yaml` (written to a file named after `case`) and applies the
/// IPPools it writes; returns its notes.
async fn migrate_and_apply(client: &Client, case: &str, yaml: &str) -> String {
    let dir = std::env::temp_dir().join(format!("ferrolb-migrate-{}-{case}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("metallb.yaml");
    std::fs::write(&file, yaml).unwrap();
    let (ok, stdout, stderr) = run(Command::new(workspace_binary("ferrolb")).arg("migrate").arg(&file));
    assert!(ok, "ferrolb migrate failed: {stderr}");
    // Applied as kubectl would: the API server's own validation of every translated object.
    let pp = PatchParams::apply("migrate").force();
    for doc in serde_norway::Deserializer::from_str(&stdout) {
        let obj: Value = serde::Deserialize::deserialize(doc).unwrap();
        let name = obj["metadata"]["name"].as_str().unwrap().to_string();
        let patch = Patch::Apply(obj.clone());
        let applied = match obj["kind"].as_str() {
            Some("IPPool") => Api::<IPPool>::all(client.clone()).patch(&name, &pp, &patch).await.map(drop),
            Some("BGPPeer") => Api::<BGPPeer>::all(client.clone()).patch(&name, &pp, &patch).await.map(drop),
            Some("Secret") => {
                let ns = obj["metadata"]["namespace"].as_str().unwrap();
                Api::<Secret>::namespaced(client.clone(), ns).patch(&name, &pp, &patch).await.map(drop)
            }
            other => panic!("migrate wrote a {other:?}"),
        };
        applied.unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migrated_mixed_configuration_allocates_as_metallb_does() {
    let (_server, client, kubeconfig) = ferrolb_cluster().await;
    let notes = migrate_and_apply(&client, "mixed", MIXED).await;
    assert!(notes.trim().is_empty(), "this configuration translates exactly, yet: {notes}");
    namespace(&client, "media", json!({})).await;
    namespace(&client, "tv", json!({"team": "media"})).await;
    namespace(&client, "other", json!({})).await;
    let _c = spawn_controller(&kubeconfig, "c1", free_addr(), &[]);
    // zz-everyone selects every Service (a serviceAllocation with only a priority): first, until
    // it is full — although aaa-plain sorts first by name.
    service_gets(&client, "default", "p1", json!({}), "192.0.2.0").await;
    service_gets(&client, "default", "p2", json!({}), "192.0.2.1").await;
    // Then plain pools.
    service_gets(&client, "default", "p3", json!({}), "198.51.100.0").await;
    // media-pool selects namespace media by its list and tv by label: the union of both.
    service_gets(&client, "media", "m1", json!({}), "203.0.113.0").await;
    service_gets(&client, "tv", "t1", json!({}), "203.0.113.1").await;
    // web-pool (priority 10) before media-pool (50) for a web Service in media.
    service_gets(&client, "media", "w1", json!({"expose": "web"}), "203.0.113.8").await;
    service_gets(&client, "default", "w2", json!({"expose": "web"}), "203.0.113.9").await;
    // Selected by nothing: the plain pool.
    service_gets(&client, "other", "x", json!({}), "198.51.100.1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metallbs_documented_samples_allocate_as_metallb_does() {
    let (_server, client, kubeconfig) = ferrolb_cluster().await;
    let sample =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../cli/tests/fixtures/metallb-advanced.yaml"))
            .unwrap();
    let notes = migrate_and_apply(&client, "samples", &sample).await;
    // What does not translate exactly is said (ORed node selectors), not hidden.
    assert!(notes.contains("matches any of 2 selectors"), "{notes}");
    namespace(&client, "namespace-a", json!({})).await;
    namespace(&client, "labelled", json!({"foo": "bar"})).await;
    let _c = spawn_controller(&kubeconfig, "c1", free_addr(), &[]);
    // Plain pools by name: doc-example-l2-label (one address), first-pool, second-pool.
    service_gets(&client, "default", "a", json!({}), "172.31.249.87").await;
    service_gets(&client, "default", "b", json!({}), "192.168.10.0").await;
    // ns-pool is autoAssign: false: used only when asked, and then only for the Services its
    // serviceAllocation admits — namespace-a by the list, `labelled` by the selector (the union),
    // each with serviceType=web; avoidBuggyIPs skips .0.
    let asks = json!({"metallb.universe.tf/address-pool": "ns-pool"});
    for (ns, name) in [("namespace-a", "web-a"), ("labelled", "web-l")] {
        let svc: Service = serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns,
            "labels": {"serviceType": "web"}, "annotations": asks},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}}))
        .unwrap();
        Api::<Service>::namespaced(client.clone(), ns).create(&PostParams::default(), &svc).await.unwrap();
    }
    for (ns, name, want) in [("namespace-a", "web-a", "192.168.30.1"), ("labelled", "web-l", "192.168.30.2")] {
        let api: Api<Service> = Api::namespaced(client.clone(), ns);
        let got = eventually(&format!("{ns}/{name}"), WAIT, || async {
            api.get(name).await.ok()?.status?.load_balancer?.ingress?.first()?.ip.clone()
        })
        .await;
        assert_eq!(got, want);
    }
}

/// MetalLB's documented BGP configuration: every translated object (IPPools with bgp sections,
/// BGPPeers, the Secret of an inline password) is admitted by the CRDs' schemas and rules, the
/// peers read back as written, and Services get addresses from the BGP pools.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metallbs_bgp_samples_are_admitted_and_allocate() {
    let (_server, client, kubeconfig) = ferrolb_cluster().await;
    let sample =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../cli/tests/fixtures/metallb-bgp.yaml"))
            .unwrap();
    let notes = migrate_and_apply(&client, "bgp", &sample).await;
    assert!(notes.contains("inline password moved into Secret ferrolb-system/bgp-tor-a"), "{notes}");
    let peer = Api::<BGPPeer>::all(client.clone()).get("tor-a").await.unwrap();
    assert_eq!(peer.spec.bfd.map(|b| (b.receive_interval_ms, b.transmit_interval_ms)), Some((380, 270)));
    assert_eq!(
        peer.metadata.labels.unwrap_or_default().get("ferrolb.io/metallb-peer").map(String::as_str),
        Some("tor-a")
    );
    let secret = Api::<Secret>::namespaced(client.clone(), "ferrolb-system").get("bgp-tor-a").await.unwrap();
    assert_eq!(secret.data.unwrap()["password"].0, b"yourPassword");
    let pool = Api::<IPPool>::all(client.clone()).get("bgp-pool").await.unwrap();
    assert_eq!(pool.spec.bgp.as_ref().map(|b| b.communities.len()), Some(3));
    let _c = spawn_controller(&kubeconfig, "c1", free_addr(), &[]);
    // Plain pools by name: bgp-pool before both.
    service_gets(&client, "default", "a", json!({}), "198.51.100.0").await;
}
