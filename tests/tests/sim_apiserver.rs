//! sim-apiserver behaves as kube-apiserver does for what kube-rs, kube-runtime and our binaries
//! use: watches that resume and relist, optimistic concurrency, the status subresource,
//! finalizers, patches, selectors, paging, Service defaulting, CRDs with validation, Events and
//! fault injection.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{eventually, start, start_with};
use ferrolb_tests::apiserver::SimConfig;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Event as CoreEvent, Namespace, Pod, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, CustomResourceExt, ResourceExt};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

fn cm(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"k": name}})).unwrap()
}

fn api_error(e: kube::Error) -> (u16, String, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason.clone(), s.message.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

async fn names(api: &Api<ConfigMap>) -> Vec<String> {
    let mut n: Vec<String> =
        api.list(&ListParams::default()).await.unwrap().items.iter().map(|c| c.name_any()).collect();
    n.sort();
    n
}

#[tokio::test]
async fn watcher_and_reflector_stay_in_sync_across_a_dropped_watch_and_a_410() {
    // Its own restarts of the watch cache, not the periodic ones: it counts relists.
    let config =
        SimConfig { bookmark_interval: Duration::from_secs(3600), cache_restart_every: None, ..SimConfig::default() };
    let (server, client) = start_with(config).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let (reader, writer) = reflector::store();
    let inits = Arc::new(Mutex::new(0usize));
    let counted = inits.clone();
    let stream = watcher(api.clone(), watcher::Config::default()).map(move |ev| {
        if matches!(ev, Ok(watcher::Event::Init)) {
            *counted.lock().unwrap() += 1;
        }
        ev
    });
    let task = tokio::spawn(reflector(writer, stream).applied_objects().for_each(|_| async {}));
    reader.wait_until_ready().await.unwrap();
    for n in ["a", "b", "c"] {
        api.create(&PostParams::default(), &cm(n)).await.unwrap();
    }
    let in_sync = |want: Vec<String>| {
        let reader = reader.clone();
        move || {
            let reader = reader.clone();
            let want = want.clone();
            async move {
                let mut have: Vec<String> = reader.state().iter().map(|c| c.name_any()).collect();
                have.sort();
                (have == want).then_some(())
            }
        }
    };
    eventually("the reflector to see a, b, c", WAIT, in_sync(names(&api).await)).await;
    assert_eq!(*inits.lock().unwrap(), 1);

    // A dropped watch resumes from its resourceVersion: no relist, nothing missed.
    server.shared().drop_watches();
    api.create(&PostParams::default(), &cm("d")).await.unwrap();
    api.delete("a", &DeleteParams::default()).await.unwrap();
    eventually("the reflector to catch up after a dropped watch", WAIT, in_sync(names(&api).await)).await;
    assert_eq!(*inits.lock().unwrap(), 1, "a resumed watch must not relist");

    // A change elsewhere moves the global resourceVersion past the watcher's last event (no
    // bookmarks in this test), compaction forgets it, and the resume gets an in-band 410: the
    // watcher relists, then follows changes again.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), "default");
    secrets
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "s"}})).unwrap())
        .await
        .unwrap();
    server.shared().compact();
    server.shared().drop_watches();
    eventually("a second Init after 410", WAIT, || async { (*inits.lock().unwrap() >= 2).then_some(()) }).await;
    api.patch("b", &PatchParams::default(), &Patch::Merge(json!({"data": {"k": "changed"}}))).await.unwrap();
    api.create(&PostParams::default(), &cm("e")).await.unwrap();
    eventually("the reflector to follow changes after relisting", WAIT, in_sync(names(&api).await)).await;
    eventually("b's new data to reach the reflector", WAIT, || {
        let reader = reader.clone();
        async move {
            let b = reader.state().into_iter().find(|c| c.name_any() == "b")?;
            (b.data.as_ref()?.get("k")? == "changed").then_some(())
        }
    })
    .await;
    task.abort();
}
/// By default the server restarts its watch cache every 5 s, as a kube-apiserver restart does to
/// watches: every client resumes into 410 and re-lists. A reflector stays exact across several.
#[tokio::test]
async fn ordinary_clients_meet_410_every_few_seconds_and_stay_in_sync() {
    assert_eq!(SimConfig::default().cache_restart_every, Some(Duration::from_secs(5)));
    let config = SimConfig { cache_restart_every: Some(Duration::from_millis(300)), ..SimConfig::default() };
    let (server, client) = start_with(config).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let (reader, writer) = reflector::store();
    let task = tokio::spawn(
        reflector(writer, watcher(api.clone(), watcher::Config::default())).applied_objects().for_each(|_| async {}),
    );
    reader.wait_until_ready().await.unwrap();
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), "default");
    let start = std::time::Instant::now();
    let mut i = 0;
    // Changes all through several restarts: creates, and deletes of older ones; and changes of
    // another kind (as Leases and Events are in a cluster), which move the resourceVersion past
    // the ConfigMap watcher's, so that its resume after a restart is too old.
    while start.elapsed() < Duration::from_millis(1500) {
        api.create(&PostParams::default(), &cm(&format!("c{i}"))).await.unwrap();
        let secret = serde_json::from_value(json!({"metadata": {"name": format!("s{i}")}})).unwrap();
        secrets.create(&PostParams::default(), &secret).await.unwrap();
        if i % 3 == 0 && i > 0 {
            api.delete(&format!("c{}", i - 1), &DeleteParams::default()).await.unwrap();
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let want = names(&api).await;
    eventually("the reflector to hold exactly what the server has", WAIT, || {
        let (reader, want) = (reader.clone(), want.clone());
        async move {
            let mut have: Vec<String> = reader.state().iter().map(|c| c.name_any()).collect();
            have.sort();
            (have == want).then_some(())
        }
    })
    .await;
    let expired = server.shared().expired_watches.load(std::sync::atomic::Ordering::Relaxed);
    assert!(expired >= 2, "the watcher resumed into 410 {expired} times");
    task.abort();
}

#[tokio::test]
async fn a_stale_update_gets_409_and_a_duplicate_create_409_already_exists() {
    let (_server, client) = start().await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let created = api.create(&PostParams::default(), &cm("x")).await.unwrap();
    let mut fresh = created.clone();
    fresh.data = Some(BTreeMap::from([("k".into(), "v2".into())]));
    let updated = api.replace("x", &PostParams::default(), &fresh).await.unwrap();
    assert_ne!(updated.resource_version(), created.resource_version());
    let (code, reason, message) = api_error(api.replace("x", &PostParams::default(), &created).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    assert!(message.contains("the object has been modified"), "{message}");
    let (code, reason, _) = api_error(api.create(&PostParams::default(), &cm("x")).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (409, "AlreadyExists"));
    // A write that changes nothing does not bump the resourceVersion.
    let same = api.replace("x", &PostParams::default(), &updated).await.unwrap();
    assert_eq!(same.resource_version(), updated.resource_version());
    let (code, _, _) = api_error(api.get("missing").await.unwrap_err());
    assert_eq!(code, 404);
}

fn lb_service(name: &str) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"type": "LoadBalancer", "selector": {"app": name}, "ports": [{"name": "http", "port": 80}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.99"}]}}
    }))
    .unwrap()
}

fn ingress_ips(svc: &Service) -> Vec<String> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref())
        .map(|i| i.iter().filter_map(|x| x.ip.clone()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn status_is_written_only_through_its_subresource_and_generation_tracks_spec() {
    let (_server, client) = start().await;
    let api: Api<Service> = Api::namespaced(client, "default");
    let svc = api.create(&PostParams::default(), &lb_service("web")).await.unwrap();
    assert!(ingress_ips(&svc).is_empty(), "create drops status");
    assert_eq!(svc.metadata.generation, Some(1));

    // Through the main resource, status is ignored.
    let patched = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}]}}})),
        )
        .await
        .unwrap();
    assert!(ingress_ips(&patched).is_empty());

    // Through /status it is written, and spec or labels sent there are ignored.
    let status = json!({"metadata": {"labels": {"sneaky": "yes"}}, "spec": {"selector": {"app": "other"}},
        "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.1", "ipMode": "VIP"}]}}});
    let written = api.patch_status("web", &PatchParams::default(), &Patch::Merge(status)).await.unwrap();
    assert_eq!(ingress_ips(&written), ["198.51.100.1"]);
    assert_eq!(written.spec.as_ref().unwrap().selector.as_ref().unwrap()["app"], "web");
    assert!(written.labels().get("sneaky").is_none());
    assert_eq!(written.metadata.generation, Some(1), "status does not bump generation");

    // A bad status is refused with 422 and changes nothing.
    let bad = json!({"status": {"loadBalancer": {"ingress": [{"ip": "not-an-ip"}]}, "conditions": [{"type": "ferrolb.io/Announced", "status": "Maybe", "reason": "bad reason", "message": ""}]}});
    let (code, _, message) =
        api_error(api.patch_status("web", &PatchParams::default(), &Patch::Merge(bad)).await.unwrap_err());
    assert_eq!(code, 422);
    for field in [
        "status.loadBalancer.ingress[0].ip",
        "status.conditions[0].status",
        "status.conditions[0].reason",
        "status.conditions[0].lastTransitionTime",
    ] {
        assert!(message.contains(field), "{field} missing from {message}");
    }
    assert_eq!(ingress_ips(&api.get("web").await.unwrap()), ["198.51.100.1"]);

    let labelled = api
        .patch("web", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})))
        .await
        .unwrap();
    assert_eq!(labelled.metadata.generation, Some(1), "metadata does not bump generation");
    let respec = api
        .patch("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"selector": {"app": "v2"}}})))
        .await
        .unwrap();
    assert_eq!(respec.metadata.generation, Some(2));
    assert_eq!(ingress_ips(&respec), ["198.51.100.1"], "a spec write keeps status");
}

#[tokio::test]
async fn a_finalizer_holds_a_delete_until_it_is_removed() {
    let (_server, client) = start().await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let mut held = cm("held");
    held.metadata.finalizers = Some(vec!["ferrolb.io/test".into()]);
    api.create(&PostParams::default(), &held).await.unwrap();
    api.delete("held", &DeleteParams::default()).await.unwrap();
    let still = api.get("held").await.unwrap();
    assert!(still.metadata.deletion_timestamp.is_some());
    // kube-runtime's finalizer() removes finalizers with a JSON patch guarded by `test`.
    let stale = json!([{"op": "test", "path": "/metadata/finalizers", "value": ["other"]}, {"op": "remove", "path": "/metadata/finalizers/0"}]);
    let (code, _, _) = api_error(
        api.patch("held", &PatchParams::default(), &Patch::Json::<()>(serde_json::from_value(stale).unwrap()))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 422);
    assert!(api.get("held").await.is_ok());
    let ok = json!([{"op": "test", "path": "/metadata/finalizers", "value": ["ferrolb.io/test"]}, {"op": "remove", "path": "/metadata/finalizers/0"}]);
    api.patch("held", &PatchParams::default(), &Patch::Json::<()>(serde_json::from_value(ok).unwrap())).await.unwrap();
    let (code, _, _) = api_error(api.get("held").await.unwrap_err());
    assert_eq!(code, 404);
}

#[tokio::test]
async fn merge_json_strategic_and_server_side_apply_patches() {
    let (_server, client) = start().await;
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    api.create(&PostParams::default(), &lb_service("svc")).await.unwrap();
    let before = api.get("svc").await.unwrap();
    let node_port = before.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].node_port;
    // Strategic merge: ports merge by `port`, so the allocated nodePort survives.
    let smp =
        json!({"spec": {"ports": [{"port": 80, "name": "http", "targetPort": 8080}, {"port": 443, "name": "https"}]}});
    let after = api.patch("svc", &PatchParams::default(), &Patch::Strategic(smp)).await.unwrap();
    let ports = after.spec.unwrap().ports.unwrap();
    assert_eq!(ports.len(), 2);
    assert_eq!(ports[0].node_port, node_port);
    // Server-side apply creates, then merges what the manager applies and drops what it no longer
    // applies (the field-ownership test below goes further).
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let pp = PatchParams::apply("test-manager").force();
    cms.patch(
        "applied",
        &pp,
        &Patch::Apply(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied"}, "data": {"a": "1"}}),
        ),
    )
    .await
    .unwrap();
    let merged = cms.patch("applied", &pp, &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied", "labels": {"l": "x"}}, "data": {"b": "2"}}))).await.unwrap();
    let data = merged.data.clone().unwrap();
    assert_eq!((data.get("a").map(String::as_str), data.get("b").map(String::as_str)), (None, Some("2")));
    assert_eq!(merged.labels()["l"], "x");
}

/// Server-side apply's field ownership as kube-apiserver keeps it: `managedFields` per manager
/// and operation; an apply that would change another manager's field is refused with 409 naming
/// the manager and the field, unless forced; a field a manager stops applying is removed unless
/// someone else owns it; managers applying their own items of one list map (a BGPPeer's
/// `status.nodes`, one per speaker) never touch each other's, and each can take back its own.
#[tokio::test]
async fn server_side_apply_keeps_field_ownership_and_conflicts() {
    let (_server, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let cm = |data: serde_json::Value| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owned"}, "data": data});
    cms.patch("owned", &PatchParams::apply("alice"), &Patch::Apply(cm(json!({"a": "1", "shared": "s"}))))
        .await
        .unwrap();
    cms.patch("owned", &PatchParams::apply("bob"), &Patch::Apply(cm(json!({"b": "2", "shared": "s"})))).await.unwrap();
    let got = cms.get("owned").await.unwrap();
    let managers: Vec<(String, String)> = got
        .metadata
        .managed_fields
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|m| (m.manager.unwrap_or_default(), m.operation.unwrap_or_default()))
        .collect();
    assert_eq!(managers, vec![("alice".to_string(), "Apply".to_string()), ("bob".to_string(), "Apply".to_string())]);
    let alice = &got.metadata.managed_fields.as_ref().unwrap()[0];
    assert_eq!(
        serde_json::to_value(&alice.fields_v1).unwrap(),
        json!({"f:data": {"f:a": {}, "f:shared": {}}}),
        "FieldsV1 as kube-apiserver writes it"
    );
    // bob may not change alice's field...
    let refused = cms.patch("owned", &PatchParams::apply("bob"), &Patch::Apply(cm(json!({"b": "2", "a": "9"})))).await;
    let (code, _, message) = api_error(refused.unwrap_err());
    assert_eq!(code, 409);
    assert!(
        message.contains("Apply failed with 1 conflict: conflict with \"alice\"") && message.contains(".data.a"),
        "{message}"
    );
    assert_eq!(cms.get("owned").await.unwrap().data.unwrap()["a"], "1", "nothing written");
    // ... unless forced: then it is his.
    cms.patch(
        "owned",
        &PatchParams::apply("bob").force(),
        &Patch::Apply(cm(json!({"b": "2", "a": "9", "shared": "s"}))),
    )
    .await
    .unwrap();
    // alice stops applying `a` (bob's now: stays) and `shared` (bob's too: stays); bob stops
    // applying `b` (his alone: goes).
    cms.patch("owned", &PatchParams::apply("alice"), &Patch::Apply(cm(json!({})))).await.unwrap();
    cms.patch("owned", &PatchParams::apply("bob"), &Patch::Apply(cm(json!({"a": "9", "shared": "s"})))).await.unwrap();
    let data = cms.get("owned").await.unwrap().data.unwrap();
    assert_eq!(data.get("a").map(String::as_str), Some("9"));
    assert_eq!(data.get("shared").map(String::as_str), Some("s"));
    assert_eq!(data.get("b"), None);
    // A plain update takes the fields it changes from their owners (no conflict for updates).
    cms.patch("owned", &PatchParams::default(), &Patch::Merge(json!({"data": {"a": "10"}}))).await.unwrap();
    let got = cms.get("owned").await.unwrap();
    let updater =
        got.metadata.managed_fields.unwrap().into_iter().find(|m| m.operation.as_deref() == Some("Update")).unwrap();
    assert_eq!(serde_json::to_value(&updater.fields_v1).unwrap(), json!({"f:data": {"f:a": {}}}));
    let refused =
        cms.patch("owned", &PatchParams::apply("bob"), &Patch::Apply(cm(json!({"a": "9", "shared": "s"})))).await;
    assert_eq!(api_error(refused.unwrap_err()).0, 409, "`a` changed owner");

    // One list map, one item per manager, applied through the status subresource.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &ferrolb_crds::BGPPeer::crd()).await.unwrap();
    let peers: Api<ferrolb_crds::BGPPeer> = Api::all(client);
    let peer: ferrolb_crds::BGPPeer = serde_json::from_value(json!({"metadata": {"name": "tor"},
        "spec": {"peerAddress": "192.0.2.1", "peerASN": 64512, "myASN": 64513}}))
    .unwrap();
    peers.create(&PostParams::default(), &peer).await.unwrap();
    let entry = |node: &str, state: &str| {
        json!({"apiVersion": "ferrolb.io/v1alpha1", "kind": "BGPPeer", "metadata": {"name": "tor"},
        "status": {"nodes": [{"node": node, "state": state, "since": "2026-12-01T00:00:00Z"}]}})
    };
    let empty = json!({"apiVersion": "ferrolb.io/v1alpha1", "kind": "BGPPeer", "metadata": {"name": "tor"}, "status": {"nodes": []}});
    for (node, state) in [("node-1", "Established"), ("node-2", "Connect"), ("node-1", "Idle")] {
        let pp = PatchParams::apply(&format!("ferrolb-speaker.{node}")).force();
        peers.patch_status("tor", &pp, &Patch::Apply(entry(node, state))).await.unwrap();
    }
    let nodes = |p: ferrolb_crds::BGPPeer| -> Vec<(String, String)> {
        p.status.unwrap_or_default().nodes.into_iter().map(|n| (n.node, n.state)).collect()
    };
    assert_eq!(
        nodes(peers.get_status("tor").await.unwrap()),
        vec![("node-1".to_string(), "Idle".to_string()), ("node-2".to_string(), "Connect".to_string())]
    );
    peers
        .patch_status("tor", &PatchParams::apply("ferrolb-speaker.node-2").force(), &Patch::Apply(empty))
        .await
        .unwrap();
    assert_eq!(nodes(peers.get_status("tor").await.unwrap()), vec![("node-1".to_string(), "Idle".to_string())]);
    let statuses = peers.get_status("tor").await.unwrap().metadata.managed_fields.unwrap();
    assert!(
        statuses
            .iter()
            .all(|m| m.subresource.as_deref() == Some("status")
                || m.manager.as_deref() != Some("ferrolb-speaker.node-1"))
    );
}

#[tokio::test]
async fn label_and_field_selectors_and_paging() {
    let (_server, client) = start().await;
    let api: Api<Pod> = Api::namespaced(client, "default");
    for i in 0..7 {
        let tier = if i % 2 == 0 { "front" } else { "back" };
        let mut labels = json!({"tier": tier});
        if i == 3 {
            labels["canary"] = json!("true");
        }
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": format!("p{i}"), "labels": labels},
            "spec": {"containers": [{"name": "c", "image": "x"}], "nodeName": format!("n{}", i % 3)}}))
        .unwrap();
        api.create(&PostParams::default(), &pod).await.unwrap();
    }
    let count = |lp: ListParams| {
        let api = api.clone();
        async move { api.list(&lp).await.unwrap().items.len() }
    };
    assert_eq!(count(ListParams::default().labels("tier=front")).await, 4);
    assert_eq!(count(ListParams::default().labels("tier in (front,back),!canary")).await, 6);
    assert_eq!(count(ListParams::default().labels("tier notin (front)")).await, 3);
    assert_eq!(count(ListParams::default().labels("canary")).await, 1);
    assert_eq!(count(ListParams::default().fields("metadata.name=p5")).await, 1);
    assert_eq!(count(ListParams::default().fields("spec.nodeName=n0")).await, 3);
    let mut seen = Vec::new();
    let mut lp = ListParams::default().limit(3);
    loop {
        let page = api.list(&lp).await.unwrap();
        assert!(page.items.len() <= 3);
        seen.extend(page.items.iter().map(|p| p.name_any()));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(c) => lp = lp.continue_token(&c),
            None => break,
        }
    }
    assert_eq!(seen, (0..7).map(|i| format!("p{i}")).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_filtered_watch_sees_objects_enter_and_leave_its_selector() {
    let (_server, client) = start().await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let wp = kube::api::WatchParams::default().labels("app=x");
    let list = api.list(&ListParams::default()).await.unwrap();
    let rv = list.metadata.resource_version.unwrap();
    let mut stream = api.watch(&wp, &rv).await.unwrap().boxed();
    api.create(&PostParams::default(), &cm("w")).await.unwrap();
    api.patch("w", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"app": "x"}}})))
        .await
        .unwrap();
    api.patch("w", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"app": "y"}}})))
        .await
        .unwrap();
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        match tokio::time::timeout(WAIT, stream.next()).await.expect("an event").expect("stream open").unwrap() {
            kube::api::WatchEvent::Added(_) => kinds.push("ADDED"),
            kube::api::WatchEvent::Deleted(_) => kinds.push("DELETED"),
            kube::api::WatchEvent::Modified(_) => kinds.push("MODIFIED"),
            _ => {}
        }
    }
    assert_eq!(kinds, ["ADDED", "DELETED"]);
}

fn svc_json(spec: serde_json::Value) -> Service {
    serde_json::from_value(json!({"metadata": {"name": "s"}, "spec": spec})).unwrap()
}

#[tokio::test]
async fn services_get_cluster_ips_and_node_ports_as_kube_apiserver_gives_them() {
    let (_server, client) = start().await;
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    let a = api.create(&PostParams::default(), &lb_service("a")).await.unwrap();
    let spec = a.spec.unwrap();
    assert!(spec.cluster_ip.as_deref().unwrap().starts_with("10.96."));
    assert_eq!(spec.ip_families.as_deref(), Some(&["IPv4".to_string()][..]));
    assert_eq!(spec.external_traffic_policy.as_deref(), Some("Cluster"));
    let np = spec.ports.unwrap()[0].node_port.unwrap();
    assert!((30000..=32767).contains(&np));
    let taken = api
        .create(&PostParams::default(), &svc_json(json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": np}]})))
        .await
        .unwrap_err();
    let (code, _, message) = api_error(taken);
    assert_eq!(code, 422);
    assert!(message.contains("provided port is already allocated"), "{message}");
    let (code, _, message) = api_error(
        api.create(
            &PostParams::default(),
            &svc_json(json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 20000}]})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(code, 422);
    assert!(message.contains("30000-32767"), "{message}");
    let chosen = api
        .create(
            &PostParams::default(),
            &svc_json(json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 31999}]})),
        )
        .await
        .unwrap();
    assert_eq!(chosen.spec.unwrap().ports.unwrap()[0].node_port, Some(31999));
    api.delete("s", &DeleteParams::default()).await.unwrap();
    let no_np = api
        .create(
            &PostParams::default(),
            &svc_json(json!({"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false, "ports": [{"port": 80}]})),
        )
        .await
        .unwrap();
    assert_eq!(no_np.spec.unwrap().ports.unwrap()[0].node_port, None);
    api.delete("s", &DeleteParams::default()).await.unwrap();
    let dual = api
        .create(&PostParams::default(), &svc_json(json!({"type": "LoadBalancer", "ipFamilyPolicy": "PreferDualStack", "externalTrafficPolicy": "Local", "ports": [{"port": 80}]})))
        .await
        .unwrap();
    let spec = dual.spec.unwrap();
    assert_eq!(spec.ip_families.unwrap(), ["IPv4", "IPv6"]);
    assert_eq!(spec.cluster_ips.unwrap().len(), 2);
    assert!(spec.health_check_node_port.is_some(), "Local LoadBalancers get a health-check port");
    // The class is immutable while the type stays LoadBalancer; changing the type drops NodePorts.
    let (code, _, _) = api_error(
        api.patch("s", &PatchParams::default(), &Patch::Merge(json!({"spec": {"loadBalancerClass": "other.io/lb"}})))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 422);
    let cip =
        api.patch("s", &PatchParams::default(), &Patch::Merge(json!({"spec": {"type": "ClusterIP"}}))).await.unwrap();
    let spec = cip.spec.unwrap();
    assert_eq!(spec.ports.unwrap()[0].node_port, None);
    assert_eq!(spec.external_traffic_policy, None);
    assert_eq!(spec.health_check_node_port, None);
}

#[tokio::test]
async fn a_wider_node_port_range_and_a_single_stack_cluster() {
    let config = SimConfig {
        node_ports: 20000..=40000,
        service_cidrs: vec!["10.96.0.0/24".parse().unwrap()],
        ..SimConfig::default()
    };
    let (_server, client) = start_with(config).await;
    let api: Api<Service> = Api::namespaced(client, "default");
    let s = api
        .create(
            &PostParams::default(),
            &svc_json(json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 20001}]})),
        )
        .await
        .unwrap();
    assert_eq!(s.spec.unwrap().ports.unwrap()[0].node_port, Some(20001));
    api.delete("s", &DeleteParams::default()).await.unwrap();
    let (code, _, message) = api_error(
        api.create(
            &PostParams::default(),
            &svc_json(json!({"type": "LoadBalancer", "ipFamilyPolicy": "RequireDualStack", "ports": [{"port": 80}]})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(code, 422);
    assert!(message.contains("not configured for dual-stack"), "{message}");
    let prefer = api
        .create(
            &PostParams::default(),
            &svc_json(json!({"type": "LoadBalancer", "ipFamilyPolicy": "PreferDualStack", "ports": [{"port": 80}]})),
        )
        .await
        .unwrap();
    assert_eq!(prefer.spec.unwrap().ip_families.unwrap(), ["IPv4"]);
}

async fn install_ippool_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &common::ippool_crd()).await.unwrap();
}

#[tokio::test]
async fn ippools_are_served_as_soon_as_the_crd_exists_and_validated_by_schema_and_cel() {
    use ferrolb_crds::IPPool;
    let (server, client) = start().await;
    let pools: Api<IPPool> = Api::all(client.clone());
    assert_eq!(api_error(pools.list(&ListParams::default()).await.unwrap_err()).0, 404);
    install_ippool_crd(&client).await;
    let discovery = kube::Discovery::new(client.clone()).run().await.unwrap();
    assert!(discovery.groups().any(|g| g.name() == "ferrolb.io"));

    let pool = |name: &str, spec: serde_json::Value| -> IPPool {
        serde_json::from_value(
            json!({"apiVersion": "ferrolb.io/v1alpha1", "kind": "IPPool", "metadata": {"name": name}, "spec": spec}),
        )
        .unwrap()
    };
    let created = pools
        .create(&PostParams::default(), &pool("home", json!({"addresses": ["198.51.100.240-198.51.100.250", "203.0.113.0/28", "2001:db8::/120", "198.51.100.7"]})))
        .await
        .unwrap();
    assert!(created.spec.auto_assign, "defaults come from the schema");
    let raw = server.objects("ferrolb.io", "ippools");
    assert_eq!(raw[0]["spec"]["autoAssign"], true, "defaults are stored");

    let refused = |spec: serde_json::Value, needle: &'static str, field: &'static str| {
        let pools = pools.clone();
        async move {
            let (code, reason, message) =
                api_error(pools.create(&PostParams::default(), &pool("bad", spec)).await.unwrap_err());
            assert_eq!((code, reason.as_str()), (422, "Invalid"), "{message}");
            assert!(message.contains(needle) && message.contains(field), "expected {needle:?} at {field} in {message}");
        }
    };
    refused(json!({"addresses": ["not-an-ip"]}), "should match", "spec.addresses[0]").await;
    refused(json!({"addresses": ["198.51.100.0/24", "999.1.1.1/24"]}), "must be a CIDR", "spec.addresses[1]").await;
    refused(json!({"addresses": ["198.51.100.1-2001:db8::1"]}), "of one family", "spec.addresses[0]").await;
    refused(json!({"addresses": []}), "at least 1 items", "spec.addresses").await;
    refused(json!({"addresses": ["198.51.100.0/24"], "priority": -1}), "greater than or equal to 0", "spec.priority")
        .await;
    // A range whose start is after its end is well-formed to the API; the controller reports it.
    pools
        .create(&PostParams::default(), &pool("backwards", json!({"addresses": ["198.51.100.9-198.51.100.1"]})))
        .await
        .unwrap();

    // The status subresource of a custom resource.
    let status = json!({"status": {"ipv4": {"total": 27, "used": 1, "available": 26}}});
    let with_status = pools.patch_status("home", &PatchParams::default(), &Patch::Merge(status)).await.unwrap();
    assert_eq!(with_status.status.unwrap().ipv4.unwrap().available, 26);
    let ignored = pools
        .patch("home", &PatchParams::default(), &Patch::Merge(json!({"status": {"ipv4": {"used": 9}}})))
        .await
        .unwrap();
    assert_eq!(ignored.status.unwrap().ipv4.unwrap().used, 1);

    // Deleting the CRD takes its objects with it.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.delete("ippools.ferrolb.io", &DeleteParams::default()).await.unwrap();
    assert!(server.objects("ferrolb.io", "ippools").is_empty());
    assert_eq!(api_error(pools.list(&ListParams::default()).await.unwrap_err()).0, 404);
}

#[tokio::test]
async fn events_from_kube_runtime_show_as_core_events() {
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    let (_server, client) = start().await;
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let svc = svcs.create(&PostParams::default(), &lb_service("web")).await.unwrap();
    let recorder = Recorder::new(client.clone(), Reporter { controller: "ferrolb-controller".into(), instance: None });
    let reference = kube::Resource::object_ref(&svc, &());
    let event = Event {
        type_: EventType::Normal,
        reason: "IPAllocated".into(),
        note: Some("assigned 198.51.100.1 from pool home".into()),
        action: "Allocate".into(),
        secondary: None,
    };
    recorder.publish(&event, &reference).await.unwrap();
    recorder.publish(&event, &reference).await.unwrap();
    let core: Api<CoreEvent> = Api::namespaced(client, "default");
    let listed =
        core.list(&ListParams::default().fields("involvedObject.name=web,involvedObject.kind=Service")).await.unwrap();
    assert_eq!(listed.items.len(), 1, "a repeated event is one object");
    let e = &listed.items[0];
    assert_eq!(e.reason.as_deref(), Some("IPAllocated"));
    assert_eq!(e.message.as_deref(), Some("assigned 198.51.100.1 from pool home"));
    assert_eq!(e.reporting_component.as_deref(), Some("ferrolb-controller"));
}

#[tokio::test]
async fn injected_faults_fail_writes_and_delay_requests() {
    let (server, client) = start().await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    server.shared().fail_next_writes(2, 500);
    assert_eq!(api_error(api.create(&PostParams::default(), &cm("f1")).await.unwrap_err()).0, 500);
    assert_eq!(api.list(&ListParams::default()).await.unwrap().items.len(), 0, "reads are not failed");
    assert_eq!(api_error(api.create(&PostParams::default(), &cm("f1")).await.unwrap_err()).0, 500);
    api.create(&PostParams::default(), &cm("f1")).await.unwrap();
    // kube-client retries 429 by itself, so look at the wire.
    server.shared().fail_next_writes(1, 429);
    let (status, body) = common::raw_request(
        server.addr(),
        "POST",
        "/api/v1/namespaces/default/configmaps",
        r#"{"metadata":{"name":"f2"}}"#,
    )
    .await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("TooManyRequests"), "{body}");
    let (status, _) = common::raw_request(
        server.addr(),
        "POST",
        "/api/v1/namespaces/default/configmaps",
        r#"{"metadata":{"name":"f2"}}"#,
    )
    .await;
    assert_eq!(status, 201);
    server.shared().set_latency(Duration::from_millis(300));
    let t = std::time::Instant::now();
    api.get("f1").await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(300), "latency is added");
    server.shared().set_latency(Duration::ZERO);
}

#[tokio::test]
async fn an_expired_resource_version_is_answered_in_band_with_410() {
    let (server, _client) = start().await;
    server.shared().compact();
    let (status, body) = common::raw_request(
        server.addr(),
        "GET",
        "/api/v1/namespaces/default/configmaps?watch=true&resourceVersion=1&timeoutSeconds=1",
        "",
    )
    .await;
    assert_eq!(status, 200, "expiry is not an HTTP error");
    assert!(body.contains(r#""type":"ERROR""#) && body.contains(r#""code":410"#) && body.contains("Expired"), "{body}");
}

#[tokio::test]
async fn namespaces_exist_before_content_and_take_it_with_them() {
    let (server, client) = start().await;
    let missing: Api<ConfigMap> = Api::namespaced(client.clone(), "nowhere");
    let (code, _, message) = api_error(missing.create(&PostParams::default(), &cm("x")).await.unwrap_err());
    assert_eq!(code, 404);
    assert!(message.contains("namespaces \"nowhere\" not found"), "{message}");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "media"}})).unwrap())
        .await
        .unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "media");
    api.create(&PostParams::default(), &cm("plain")).await.unwrap();
    let mut held = cm("held");
    held.metadata.finalizers = Some(vec!["x/y".into()]);
    api.create(&PostParams::default(), &held).await.unwrap();
    namespaces.delete("media", &DeleteParams::default()).await.unwrap();
    assert_eq!(api.list(&ListParams::default()).await.unwrap().items.len(), 1, "only the finalized object stays");
    let ns = namespaces.get("media").await.unwrap();
    assert_eq!(ns.status.unwrap().phase.as_deref(), Some("Terminating"));
    let (code, _, _) = api_error(api.create(&PostParams::default(), &cm("late")).await.unwrap_err());
    assert_eq!(code, 403);
    api.patch("held", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}}))).await.unwrap();
    assert!(
        server.objects("", "namespaces").iter().all(|n| n["metadata"]["name"] != "media"),
        "the namespace goes once empty"
    );
}

#[tokio::test]
async fn generate_name_and_bad_names() {
    let (_server, client) = start().await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let generated: ConfigMap = serde_json::from_value(json!({"metadata": {"generateName": "gen-"}})).unwrap();
    let a = api.create(&PostParams::default(), &generated).await.unwrap();
    let b = api.create(&PostParams::default(), &generated).await.unwrap();
    assert!(a.name_any().starts_with("gen-") && a.name_any().len() == 9);
    assert_ne!(a.name_any(), b.name_any());
    assert_ne!(a.uid(), b.uid());
    let (code, _, message) = api_error(api.create(&PostParams::default(), &cm("Not_Valid")).await.unwrap_err());
    assert_eq!(code, 422);
    assert!(message.contains("RFC 1123"), "{message}");
    let svcs: Api<Service> = Api::namespaced(client, "default");
    let (code, _, _) = api_error(svcs.create(&PostParams::default(), &lb_service("1web")).await.unwrap_err());
    assert_eq!(code, 422, "Service names are DNS-1035 labels");
}

#[tokio::test]
async fn a_fresh_cluster_and_a_fresh_service_look_as_kube_apiserver_makes_them() {
    let (server, client) = start().await;
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    // The API server's own Service, on the first address of the range.
    let k = api.get("kubernetes").await.unwrap();
    let spec = k.spec.unwrap();
    assert_eq!((spec.type_.as_deref(), spec.cluster_ip.as_deref()), (Some("ClusterIP"), Some("10.96.0.1")));
    assert_eq!(spec.ports.unwrap()[0].port, 443);
    // A new Service's status is `{loadBalancer: {}}`, whatever the request carried.
    let body = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "fresh"},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}]}}});
    let (code, text) =
        common::raw_request(server.addr(), "POST", "/api/v1/namespaces/default/services", &body.to_string()).await;
    assert_eq!(code, 201, "{text}");
    let created: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(created["status"], json!({"loadBalancer": {}}));
}

#[tokio::test]
async fn cluster_ips_and_node_ports_are_allocated_at_random_not_in_order() {
    let (_server, client) = start().await;
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    let mut ips = Vec::new();
    let mut ports = Vec::new();
    for i in 0..12 {
        let s = api.create(&PostParams::default(), &lb_service(&format!("r{i}"))).await.unwrap().spec.unwrap();
        ips.push(s.cluster_ip.unwrap().parse::<std::net::Ipv4Addr>().unwrap());
        ports.push(s.ports.unwrap()[0].node_port.unwrap());
    }
    let (mut sorted_ips, mut sorted_ports) = (ips.clone(), ports.clone());
    sorted_ips.sort();
    sorted_ports.sort();
    // In order, 12 allocations from a /16 and from 2,768 ports would be a 1 in 12! chance each.
    assert_ne!(ips, sorted_ips, "cluster IPs handed out in order: {ips:?}");
    assert_ne!(ports, sorted_ports, "node ports handed out in order: {ports:?}");
    assert!(ips.iter().all(|ip| ip.octets()[..2] == [10, 96]));
    sorted_ips.dedup();
    sorted_ports.dedup();
    assert_eq!((sorted_ips.len(), sorted_ports.len()), (12, 12), "never one twice");
}

#[tokio::test]
async fn bodies_are_read_by_their_media_type() {
    let (server, _client) = start().await;
    let path = "/api/v1/namespaces/default/configmaps";
    let yaml = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-yaml\ndata:\n  a: b\n";
    let (code, text) = common::raw_request_as(server.addr(), "POST", path, "application/yaml", yaml).await;
    assert_eq!(code, 201, "YAML is read: {text}");
    // A type it cannot read: 415, as kube-apiserver answers — not a 400 that blames the JSON.
    let (code, text) = common::raw_request_as(server.addr(), "POST", path, "text/plain", "a").await;
    assert_eq!(code, 415, "{text}");
    assert!(text.contains("UnsupportedMediaType") && text.contains("application/vnd.kubernetes.protobuf"), "{text}");
    // Protobuf is read (kubectl's `create` and Helm's release records, tests/tests/kubectl.rs);
    // a body that is not Kubernetes' protobuf is a 400.
    let (code, text) =
        common::raw_request_as(server.addr(), "POST", path, "application/vnd.kubernetes.protobuf", "\u{1}k8s").await;
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("not valid protobuf"), "{text}");
}

#[tokio::test]
async fn invalid_objects_get_kube_apiservers_422_details() {
    let (server, client) = start().await;
    install_ippool_crd(&client).await;
    let pool = json!({"apiVersion": "ferrolb.io/v1alpha1", "kind": "IPPool", "metadata": {"name": "bad"},
        "spec": {"addresses": ["198.51.100.0/24"], "priority": -1}});
    let (code, text) =
        common::raw_request(server.addr(), "POST", "/apis/ferrolb.io/v1alpha1/ippools", &pool.to_string()).await;
    assert_eq!(code, 422, "{text}");
    let status: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(status["reason"], "Invalid");
    assert_eq!(
        (&status["details"]["name"], &status["details"]["group"], &status["details"]["kind"]),
        (&json!("bad"), &json!("ferrolb.io"), &json!("IPPool"))
    );
    assert_eq!(status["details"]["causes"][0]["field"], "spec.priority");
    assert!(status["message"].as_str().unwrap().starts_with("IPPool.ferrolb.io \"bad\" is invalid: spec.priority"));
    // A core kind: no group.
    let svc = json!({"metadata": {"name": "bad-svc"}, "spec": {"type": "Nope", "ports": [{"port": 80}]}});
    let (code, text) =
        common::raw_request(server.addr(), "POST", "/api/v1/namespaces/default/services", &svc.to_string()).await;
    assert_eq!(code, 422, "{text}");
    let status: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(status["details"]["kind"], "Service");
    assert!(status["details"].get("group").is_none(), "{status}");
    assert_eq!(status["details"]["causes"][0]["field"], "spec.type");
}

#[tokio::test]
async fn lists_by_resource_version_as_kube_apiserver_serves_them() {
    let (server, client) = start().await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let cm = |name: &str| -> ConfigMap { serde_json::from_value(json!({"metadata": {"name": name}})).unwrap() };
    api.create(&PostParams::default(), &cm("a")).await.unwrap();
    let at: u64 = server.resource_version();
    api.create(&PostParams::default(), &cm("b")).await.unwrap();
    api.delete("a", &DeleteParams::default()).await.unwrap();
    // Exact: the list as it was then.
    let path = |rv: u64, exact: bool| {
        format!(
            "/api/v1/namespaces/default/configmaps?resourceVersion={rv}{}",
            if exact { "&resourceVersionMatch=Exact" } else { "" }
        )
    };
    let (code, text) = common::raw_request(server.addr(), "GET", &path(at, true), "").await;
    assert_eq!(code, 200, "{text}");
    let list: serde_json::Value = serde_json::from_str(&text).unwrap();
    let names: Vec<&str> =
        list["items"].as_array().unwrap().iter().map(|i| i["metadata"]["name"].as_str().unwrap()).collect();
    assert_eq!((names, list["metadata"]["resourceVersion"].as_str()), (vec!["a"], Some(at.to_string().as_str())));
    // Compacted away: 410.
    server.shared().compact();
    let (code, text) = common::raw_request(server.addr(), "GET", &path(at, true), "").await;
    assert_eq!(code, 410, "{text}");
    assert!(text.contains("too old"), "{text}");
    // A version the server has not reached: it waits, then 504 Too large resource version.
    let future = server.resource_version() + 1000;
    let started = std::time::Instant::now();
    let (code, text) = common::raw_request(server.addr(), "GET", &path(future, false), "").await;
    assert_eq!(code, 504, "{text}");
    assert!(text.contains("Too large resource version"), "{text}");
    assert!(started.elapsed() >= Duration::from_secs(2), "it waited for the version first");
    // One that arrives while it waits is served.
    let soon = server.resource_version() + 1;
    let waiting = tokio::spawn({
        let addr = server.addr();
        async move { common::raw_request(addr, "GET", &path(soon, false), "").await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    api.create(&PostParams::default(), &cm("c")).await.unwrap();
    let (code, text) = waiting.await.unwrap();
    assert_eq!(code, 200, "{text}");
}
