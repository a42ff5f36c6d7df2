//! Real TCP and UDP through real nftables in the lab: from the client, `VIP:port` reaches the
//! backends — all of them with Cluster policy (masqueraded), only the announcing node's with
//! Local policy (the backend sees the client's own address); stopping the speakers removes the
//! table.

mod common;

use std::collections::BTreeSet;
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ferrolb_tests::lab::{Lab, netns};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

/// One TCP exchange with `addr` from `ns`: the backend's answer.
fn tcp_once(ns: &str, addr: SocketAddr) -> Option<String> {
    netns::in_ns(ns, || {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    })
    .ok()
    .flatten()
}

fn udp_once(ns: &str, addr: SocketAddr) -> Option<String> {
    netns::in_ns(ns, || {
        let s = std::net::UdpSocket::bind(if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.send_to(b"hi", addr).ok()?;
        let mut buf = [0u8; 200];
        let n = s.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
    .ok()
    .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vip_traffic_reaches_the_backends_with_cluster_and_local_policy() {
    if !common::lab_prerequisites() {
        return;
    }
    let lab = Lab::up(3).await.expect("lab up");
    let running = lab.start_cluster().await.unwrap();
    let client = lab.client().await.unwrap();
    let pool = json!({"apiVersion": "ferrolb.io/v1alpha1", "kind": "IPPool", "metadata": {"name": "lan"}, "spec": {"addresses": ["198.51.100.200-198.51.100.210"]}});
    Api::<ferrolb_crds::IPPool>::all(client.clone())
        .patch("lan", &PatchParams::apply("lab"), &Patch::Apply(pool))
        .await
        .unwrap();
    let svc: Service = serde_json::from_value(json!({"metadata": {"name": "echo"}, "spec": {"type": "LoadBalancer", "selector": {"app": "echo"},
        "ports": [{"name": "tcp", "port": 80, "targetPort": 8080}, {"name": "udp", "port": 80, "protocol": "UDP", "targetPort": 8080}]}})).unwrap();
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    api.create(&PostParams::default(), &svc).await.unwrap();
    let vip: IpAddr = common::eventually("echo to get an address", Duration::from_secs(20), || async {
        api.get("echo").await.ok()?.status?.load_balancer?.ingress?.first()?.ip.as_deref()?.parse().ok()
    })
    .await;
    let ns = lab.topology.client.namespace.clone();
    let target = SocketAddr::new(vip, 80);
    // Cluster: every pod is reached, and they see a node's address (masquerade).
    let seen: Vec<String> =
        common::eventually("connections to spread over all three pods", Duration::from_secs(30), || {
            let ns = ns.clone();
            async move {
                let answers: Vec<String> =
                    tokio::task::spawn_blocking(move || (0..60).filter_map(|_| tcp_once(&ns, target)).collect())
                        .await
                        .ok()?;
                let pods: BTreeSet<&str> = answers.iter().filter_map(|a| a.split_whitespace().next()).collect();
                (pods.len() == 3).then_some(answers)
            }
        })
        .await;
    // Masquerade: the backend sees the announcing node (its LAN address, or its pod-side gateway
    // for the local pod), never the client.
    let client_seen = format!("client={}\n", lab.topology.client.ipv4);
    assert!(seen.iter().all(|a| !a.ends_with(&client_seen)), "Cluster policy must masquerade: {seen:?}");
    let udp = tokio::task::spawn_blocking({
        let ns = ns.clone();
        move || udp_once(&ns, target)
    })
    .await
    .unwrap();
    assert!(udp.is_some_and(|a| a.starts_with("pod=echo-node-")), "UDP through the VIP");

    // Local: only the announcing node's pod, and it sees the client itself.
    api.patch("echo", &PatchParams::default(), &Patch::Merge(json!({"spec": {"externalTrafficPolicy": "Local"}})))
        .await
        .unwrap();
    let client_ip = lab.topology.client.ipv4.to_string();
    let answers = common::eventually("Local policy to keep the client address", Duration::from_secs(30), || {
        let (ns, client_ip) = (ns.clone(), client_ip.clone());
        async move {
            let answers: Vec<String> =
                tokio::task::spawn_blocking(move || (0..20).filter_map(|_| tcp_once(&ns, target)).collect())
                    .await
                    .ok()?;
            (answers.len() == 20 && answers.iter().all(|a| a.ends_with(&format!("client={client_ip}\n"))))
                .then_some(answers)
        }
    })
    .await;
    let pods: BTreeSet<&str> = answers.iter().filter_map(|a| a.split_whitespace().next()).collect();
    assert_eq!(pods.len(), 1, "Local policy reaches only the announcing node's pod: {answers:?}");

    // Stopping a speaker (SIGTERM, as Kubernetes does) removes its table.
    let mut running = running;
    let speakers = std::mem::take(&mut running.speakers);
    tokio::task::spawn_blocking(move || {
        for mut s in speakers {
            assert!(s.terminate().unwrap().success());
        }
    })
    .await
    .unwrap();
    for n in &lab.topology.nodes {
        let listed = netns::exec(&n.namespace, "nft", &["list", "tables"]).unwrap_or_default();
        assert!(!listed.contains("ferrolb"), "{} still has the table", n.name);
    }
}
