//! The chart's RBAC against what the binaries really call: the lab runs the controller and the
//! speakers through what they do in a cluster — allocation, pool status, announcements over ARP
//! and BGP (BIRD, a peer with a password Secret), a repeated Warning, a host-firewall report that
//! comes back, a speaker leaving — and every request sim-apiserver saw is mapped to the permission
//! it needs. The chart (rendered by Helm's own engine, in BGP mode) must grant each one, and must
//! grant nothing that was not used; without BGP mode it grants exactly that minus what only BGP
//! mode needs.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ferrolb_tests::lab::processes::Running;
use ferrolb_tests::lab::router::RouterConfig;
use ferrolb_tests::lab::{Lab, netns, probe};
use ferrolb_tests::rbac::{self, Grant, Permission};
use k8s_openapi::api::core::v1::{Event, Service};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const NAMESPACE: &str = "ferrolb-system";

/// What the chart grants the ServiceAccount `name`: cluster-wide, and in the release namespace.
fn grants(docs: &[Value], name: &str) -> (BTreeSet<Grant>, BTreeSet<Grant>) {
    let find = |kind: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .map(|d| rbac::granted(&d["rules"]))
            .unwrap_or_default()
    };
    for binding in ["ClusterRoleBinding", "RoleBinding"] {
        let b = docs.iter().find(|d| d["kind"] == binding && d["metadata"]["name"] == name).expect(binding);
        assert_eq!(b["subjects"][0]["name"], name, "{binding} {name} binds its own ServiceAccount");
    }
    (find("ClusterRole"), find("Role"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_charts_rbac_is_exactly_what_the_binaries_use() {
    if !common::lab_prerequisites() {
        return;
    }
    let Some(chart) = common::rendered_chart(NAMESPACE, &json!({"speaker": {"bgp": {"mode": "bird"}}})) else { return };
    let Some(l2_only) = common::rendered_chart(NAMESPACE, &json!({})) else { return };
    if !["bird", "vtysh"].iter().all(|t| std::process::Command::new(t).arg("--version").output().is_ok()) {
        assert!(!common::in_ci(), "BIRD and FRR are needed under CI=true (apt install bird2 frr)");
        eprintln!("SKIPPED: BIRD or FRR missing");
        return;
    }
    let lab = Lab::build(2, true).await.expect("lab up");
    let client = lab.client().await.unwrap();
    lab.register_cluster().await.unwrap();
    let router_cfg = RouterConfig { password: Some("pw".into()), ..RouterConfig::default() };
    let secret: k8s_openapi::api::core::v1::Secret =
        serde_json::from_value(json!({"metadata": {"name": "md5"}, "stringData": {"password": "pw"}})).unwrap();
    Api::namespaced(client.clone(), NAMESPACE).create(&PostParams::default(), &secret).await.unwrap();
    lab.apply_router_peers(&router_cfg, json!({"passwordSecret": {"name": "md5"}})).await.unwrap();
    let _router = lab.start_router(&router_cfg).unwrap();
    let controller = lab.start_controller().unwrap();
    let speakers = (0..2).map(|i| lab.start_bgp_speaker(i, &[]).unwrap()).collect();
    let backends = lab.start_backends("echo", 8080).await.unwrap();
    let mut running = Running { controller, speakers, backends };
    lab.apply_pool("lan", json!({"addresses": ["198.51.100.200-198.51.100.210"], "l2": {}, "bgp": {"enabled": true}}))
        .await
        .unwrap();
    let peers: Api<ferrolb_crds::BGPPeer> = Api::all(client.clone());
    common::eventually("the controller's BGPPeer summary", Duration::from_secs(30), || async {
        (peers.get("router").await.ok()?.status?.established == Some(2)).then_some(())
    })
    .await;
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let echo: Service = serde_json::from_value(json!({"metadata": {"name": "echo"}, "spec": {"type": "LoadBalancer",
        "selector": {"app": "echo"}, "ports": [{"name": "tcp", "port": 80, "targetPort": 8080}]}}))
    .unwrap();
    services.create(&PostParams::default(), &echo).await.unwrap();
    common::eventually("echo to be announced", Duration::from_secs(30), || async {
        let svc = services.get("echo").await.ok()?;
        svc.status?.conditions?.iter().any(|c| c.type_ == "ferrolb.io/Announced" && c.status == "True").then_some(())
    })
    .await;

    // The same Warning twice in a row on one Service: the second is a patch of the first Event's
    // series. The pool asked for changes away and back, so the controller reports each change.
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let odd: Service =
        serde_json::from_value(json!({"metadata": {"name": "odd", "annotations": {"ferrolb.io/pool": "nope-1"}},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}}))
        .unwrap();
    services.create(&PostParams::default(), &odd).await.unwrap();
    let warnings = |pool: &'static str| {
        let events = events.clone();
        async move {
            let lp = ListParams::default().fields("involvedObject.name=odd");
            let list = events.list(&lp).await.ok()?;
            let e = list.items.into_iter().find(|e| e.message.as_deref().is_some_and(|m| m.contains(pool)))?;
            Some(e.series.and_then(|s| s.count).unwrap_or(1))
        }
    };
    common::eventually("a Warning about nope-1", Duration::from_secs(20), || warnings("nope-1")).await;
    for pool in ["nope-2", "nope-1"] {
        let patch = json!({"metadata": {"annotations": {"ferrolb.io/pool": pool}}});
        services.patch("odd", &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
        common::eventually("the Warning about the new pool", Duration::from_secs(20), || async {
            let count = warnings(pool).await?;
            (pool == "nope-2" || count == 2).then_some(())
        })
        .await;
    }

    // A host firewall that is reported, goes away, and comes back: the speaker's report repeats.
    let n1 = lab.topology.nodes[0].namespace.clone();
    let drop_forward = || {
        netns::exec(&n1, "nft", &["add", "table", "ip", "filter"]).unwrap();
        let chain = "{ type filter hook forward priority 0; policy drop; }";
        netns::exec(&n1, "nft", &["add", "chain", "ip", "filter", "FORWARD", chain]).unwrap();
    };
    let blocked = || {
        let node_events: Api<Event> = Api::namespaced(client.clone(), "default");
        async move {
            let lp = ListParams::default().fields("involvedObject.name=node-1,involvedObject.kind=Node");
            let list = node_events.list(&lp).await.ok()?;
            let e = list.items.into_iter().find(|e| e.reason.as_deref() == Some("ForwardingBlocked"))?;
            Some(e.series.and_then(|s| s.count).unwrap_or(1))
        }
    };
    drop_forward();
    common::eventually("a ForwardingBlocked Warning", Duration::from_secs(20), blocked).await;
    netns::exec(&n1, "nft", &["delete", "table", "ip", "filter"]).unwrap();
    common::eventually("the speaker to see the firewall gone", Duration::from_secs(20), || async {
        let metrics = probe::speaker_metrics(&n1).await?;
        (probe::metric(&metrics, "ferrolb_speaker_firewall_blocking_chains")? == 0.0).then_some(())
    })
    .await;
    drop_forward();
    common::eventually("the report to repeat", Duration::from_secs(20), || async {
        (blocked().await? == 2).then_some(())
    })
    .await;
    netns::exec(&n1, "nft", &["delete", "table", "ip", "filter"]).unwrap();

    // A speaker leaving (its node cordoned, then SIGTERM) unregisters; a controller leaving
    // releases its Lease.
    for n in &lab.topology.nodes {
        lab.cordon(&n.name).await.unwrap();
    }
    let speakers = std::mem::take(&mut running.speakers);
    tokio::task::spawn_blocking(move || {
        for mut p in speakers {
            assert!(p.terminate().unwrap().success());
        }
    })
    .await
    .unwrap();
    assert!(running.controller.terminate().unwrap().success());

    // Every request, by binary, as the permission it needs.
    let mut used: BTreeMap<&str, (BTreeSet<Grant>, BTreeSet<Grant>)> = BTreeMap::new();
    for r in lab.api.shared().requests() {
        let Some(agent) = r.user_agent.as_deref() else { continue };
        let Some(binary) =
            ["ferrolb-controller", "ferrolb-speaker"].into_iter().find(|b| agent.starts_with(&format!("{b}/")))
        else {
            continue;
        };
        let Some((namespace, permission)) = rbac::needed(&r.method, &r.path, r.watch) else { continue };
        let (cluster, own) = used.entry(binary).or_default();
        // A namespaced request in the release's namespace may be granted by the Role; anything
        // else needs the ClusterRole.
        if namespace.as_deref() == Some(NAMESPACE)
            && (permission.permission.group == "coordination.k8s.io" || permission.permission.resource == "secrets")
        {
            own.insert(permission);
        } else {
            cluster.insert(permission);
        }
    }
    let mut problems = Vec::new();
    for binary in ["ferrolb-controller", "ferrolb-speaker"] {
        let (granted_cluster, granted_ns) = grants(&chart, binary);
        let (used_cluster, used_ns) = used.get(binary).cloned().unwrap_or_default();
        for (scope, granted, used) in
            [("ClusterRole", &granted_cluster, &used_cluster), ("Role", &granted_ns, &used_ns)]
        {
            for p in rbac::missing(used, granted) {
                problems.push(format!("{binary} {scope}: missing {p}"));
            }
            for p in rbac::unused(used, granted) {
                problems.push(format!("{binary} {scope}: unused {p}"));
            }
        }
    }
    assert!(problems.is_empty(), "the chart's RBAC and the lab disagree:\n{}", problems.join("\n"));

    // Without BGP mode: the same, less what only the speaker's BIRD side calls.
    let bgp_only: BTreeSet<Grant> = [
        ("ferrolb.io", "bgppeers", "list"),
        ("ferrolb.io", "bgppeers", "watch"),
        ("ferrolb.io", "bgppeers/status", "patch"),
        ("", "secrets", "list"),
        ("", "secrets", "watch"),
    ]
    .into_iter()
    .map(|(g, r, v)| Grant {
        permission: Permission { group: g.into(), resource: r.into(), verb: v.into() },
        name: None,
    })
    .collect();
    let (bgp_cluster, bgp_ns) = grants(&chart, "ferrolb-speaker");
    let (l2_cluster, l2_ns) = grants(&l2_only, "ferrolb-speaker");
    assert_eq!(l2_cluster, bgp_cluster.difference(&bgp_only).cloned().collect());
    assert_eq!(l2_ns, bgp_ns.difference(&bgp_only).cloned().collect());
    assert_eq!(grants(&l2_only, "ferrolb-controller"), grants(&chart, "ferrolb-controller"));
}
