//! What kube-apiserver does to every client when it restarts: the open watches are cut, objects
//! change while the clients cannot watch, and every watch resumed from its old resourceVersion is
//! answered 410 Expired and re-lists. An object deleted in the gap is simply missing from the new
//! list — no delete event is ever sent — so the controller and the speaker must judge their state
//! against the re-listed caches, not the event stream. sim-apiserver reproduces the gap: new
//! watches are held, open ones dropped, the deletions made, the history compacted, and the
//! watches let through again.

mod common;

use std::time::Duration;

use common::{eventually, ferrolb_cluster, free_addr, spawn_controller};
use ferrolb_crds::IPPool;
use ferrolb_tests::apiserver::SimApiServer;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

async fn pool(client: &Client, name: &str, spec: Value) {
    let api: Api<IPPool> = Api::all(client.clone());
    let body = json!({"apiVersion": "ferrolb.io/v1alpha1", "kind": "IPPool", "metadata": {"name": name}, "spec": spec});
    api.patch(name, &PatchParams::apply("test").force(), &Patch::Apply(body)).await.unwrap();
}

async fn service(client: &Client, name: &str) {
    let svc: Service = serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default"},
        "spec": {"type": "LoadBalancer", "selector": {"app": name}, "ports": [{"port": 80}]}}))
    .unwrap();
    Api::<Service>::namespaced(client.clone(), "default").create(&PostParams::default(), &svc).await.unwrap();
}

async fn ips(client: &Client, name: &str) -> Vec<String> {
    let svc = Api::<Service>::namespaced(client.clone(), "default").get(name).await.unwrap();
    svc.status
        .and_then(|s| s.load_balancer)
        .and_then(|l| l.ingress)
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip)
        .collect()
}

async fn wait_ips(client: &Client, name: &str, want: &[&str]) {
    eventually(&format!("{name} to hold {want:?}"), WAIT, || async { (ips(client, name).await == want).then_some(()) })
        .await;
}

/// The gap: watches are held and cut, `during` runs, the history of `expired` (group, plural) is
/// compacted, watches resume (and those get 410). Returns once a watch request has been answered
/// after the gap. Only the kinds named expire, so that no other kind's re-list happens to repair
/// what a test looks at.
async fn watch_gap<F: std::future::Future<Output = ()>>(server: &SimApiServer, expired: (&str, &str), during: F) {
    let shared = server.shared();
    shared.hold_watches(true);
    shared.drop_watches();
    during.await;
    shared.compact_only(expired.0, expired.1);
    let answered_before = shared.requests().iter().filter(|r| r.watch).count();
    shared.hold_watches(false);
    eventually("the watches to resume after the gap", WAIT, || async {
        (shared.requests().iter().filter(|r| r.watch).count() > answered_before).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_deleted_while_the_controller_could_not_watch_frees_its_address() {
    let (server, client, kubeconfig) = ferrolb_cluster().await;
    pool(&client, "one", json!({"addresses": ["198.51.100.10/32"]})).await;
    let _c = spawn_controller(&kubeconfig, "c1", free_addr(), &[]);
    service(&client, "first").await;
    wait_ips(&client, "first", &["198.51.100.10"]).await;

    watch_gap(&server, ("", "services"), async {
        Api::<Service>::namespaced(client.clone(), "default").delete("first", &DeleteParams::default()).await.unwrap();
    })
    .await;

    // The only address was freed by a deletion the controller never saw as an event.
    service(&client, "second").await;
    wait_ips(&client, "second", &["198.51.100.10"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_deleted_while_the_controller_could_not_watch_hands_out_nothing() {
    let (server, client, kubeconfig) = ferrolb_cluster().await;
    pool(&client, "doomed", json!({"addresses": ["203.0.113.0/30"], "priority": 1})).await;
    pool(&client, "kept", json!({"addresses": ["198.51.100.20/32"], "priority": 2})).await;
    let _c = spawn_controller(&kubeconfig, "c1", free_addr(), &[]);
    service(&client, "holder").await;
    wait_ips(&client, "holder", &["203.0.113.0"]).await;

    watch_gap(&server, ("ferrolb.io", "ippools"), async {
        Api::<IPPool>::all(client.clone()).delete("doomed", &DeleteParams::default()).await.unwrap();
    })
    .await;

    // The holder moves to the pool that is left, and nothing is handed out of the deleted one.
    wait_ips(&client, "holder", &["198.51.100.20"]).await;
    service(&client, "newcomer").await;
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    eventually("newcomer's AllocationFailed", WAIT, || async {
        let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), "default")
            .list(&Default::default())
            .await
            .ok()?;
        events
            .items
            .iter()
            .any(|e| {
                e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("newcomer")
                    && e.reason.as_deref() == Some("AllocationFailed")
            })
            .then_some(())
    })
    .await;
    let newcomer = api.get("newcomer").await.unwrap();
    assert!(ips(&client, "newcomer").await.is_empty(), "{} got an address of a deleted pool", newcomer.name_any());
    assert_eq!(ips(&client, "holder").await, ["198.51.100.20"]);
}

/// The speaker's view after the same gap: a Service and a pool deleted while it could not watch
/// leave the view (so their address is neither announced nor forwarded), exactly as if their
/// delete events had arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_speakers_view_forgets_what_was_deleted_in_the_gap() {
    use ferrolb_speaker::election;
    use ferrolb_speaker::state::watch::Caches;
    use k8s_openapi::api::core::v1::Node;
    use std::collections::BTreeSet;

    let (server, client, _kubeconfig) = ferrolb_cluster().await;
    pool(&client, "lan", json!({"addresses": ["198.51.100.30/31"]})).await;
    pool(&client, "lab", json!({"addresses": ["203.0.113.30/32"]})).await;
    let node: Node = serde_json::from_value(json!({"metadata": {"name": "node-1"},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]}}))
    .unwrap();
    Api::<Node>::all(client.clone()).create(&PostParams::default(), &node).await.unwrap();
    // Services as the controller leaves them: an address in status, the pool in an annotation.
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    for (name, pool, ip) in
        [("kept", "lan", "198.51.100.30"), ("gone", "lan", "198.51.100.31"), ("orphan", "lab", "203.0.113.30")]
    {
        service(&client, name).await;
        let annotate = json!({"metadata": {"annotations": {"ferrolb.io/allocated-from": pool}}});
        services.patch(name, &PatchParams::default(), &Patch::Merge(annotate)).await.unwrap();
        let status = json!({"status": {"loadBalancer": {"ingress": [{"ip": ip}]}}});
        services.patch_status(name, &PatchParams::default(), &Patch::Merge(status)).await.unwrap();
    }

    let mut tasks = tokio::task::JoinSet::new();
    let caches = Caches::start(&mut tasks, &client, "ferrolb-system", false);
    caches.ready().await.unwrap();
    // As the speaker's loop does: the view is rebuilt when the caches say they changed.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(caches.view()));
    tasks.spawn({
        let (caches, seen) = (caches.clone(), seen.clone());
        async move {
            loop {
                caches.changed.notified().await;
                *seen.lock().unwrap() = caches.view();
            }
        }
    });
    let alive = ferrolb_speaker::membership::liveness::Members {
        alive: BTreeSet::from(["node-1".to_string()]),
        ..Default::default()
    };
    let announced = |seen: &std::sync::Mutex<ferrolb_speaker::state::View>| -> BTreeSet<String> {
        election::announcements(&seen.lock().unwrap(), &alive)
            .into_iter()
            .filter(|(_, a)| a.winner.is_some())
            .map(|(ip, _)| ip.to_string())
            .collect()
    };
    eventually("all three addresses in the view", WAIT, || async { (announced(&seen).len() == 3).then_some(()) }).await;

    watch_gap(&server, ("", "services"), async {
        services.delete("gone", &DeleteParams::default()).await.unwrap();
    })
    .await;
    watch_gap(&server, ("ferrolb.io", "ippools"), async {
        Api::<IPPool>::all(client.clone()).delete("lab", &DeleteParams::default()).await.unwrap();
    })
    .await;
    eventually("the view to forget the deleted Service and pool", WAIT, || async {
        let now = announced(&seen);
        (now == BTreeSet::from(["198.51.100.30".to_string()])).then_some(())
    })
    .await;
    let view = seen.lock().unwrap().clone();
    assert!(!view.services.contains_key("default/gone"));
    assert!(!view.pools.contains_key("lab"));
}
