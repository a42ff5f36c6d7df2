//! Established connections across a failover: with `--conntrack-sync conntrackd`, the flows of a
//! Service annotated `ferrolb.io/replicate-connections: "true"` are replicated to every node, and
//! when the announcing node dies (link down, speaker killed) a long-lived TCP stream through its
//! address continues through the new owner — whether its pod runs on the new owner (whose kernel
//! saw the flow pass before) or on a third node. A stream through a Service on the same node
//! without the annotation is the control: it is cut, as it is with every other L2
//! implementation.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use ferrolb_speaker::election;
use ferrolb_tests::lab::streams::{Stream, StreamReport};
use ferrolb_tests::lab::{Lab, netns, probe, processes::Running};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, PostParams};
use serde_json::json;

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// A cluster whose speakers replicate connections, with line echo servers on port 9000.
async fn replicating_cluster(lab: &Lab) -> Running {
    lab.register_cluster().await.unwrap();
    let controller = lab.start_controller().unwrap();
    let speakers = (0..3).map(|i| lab.start_speaker(i, &["--conntrack-sync", "conntrackd"]).unwrap()).collect();
    let mut backends = lab.start_backends("echo", 8080).await.unwrap();
    backends.extend(lab.start_line_echo(9000).unwrap());
    Running { controller, speakers, backends }
}

async fn service(lab: &Lab, name: &str, app: &str, vip: Ipv4Addr, replicate: bool) {
    let mut annotations = json!({"ferrolb.io/ips": vip.to_string()});
    if replicate {
        annotations["ferrolb.io/replicate-connections"] = json!("true");
    }
    let svc: Service = serde_json::from_value(json!({"metadata": {"name": name, "annotations": annotations},
        "spec": {"type": "LoadBalancer", "selector": {"app": app}, "ports": [
            {"name": "tcp", "port": 80, "targetPort": 8080}, {"name": "stream", "port": 9000, "targetPort": 9000}]}}))
    .unwrap();
    let api: Api<Service> = Api::namespaced(lab.client().await.unwrap(), "default");
    api.create(&PostParams::default(), &svc).await.unwrap();
}

async fn arp(lab: &Lab, vip: Ipv4Addr) -> std::collections::BTreeSet<[u8; 6]> {
    let c = lab.topology.client.clone();
    blocking(move || probe::arp_who_has(&c.namespace, &c.interface, &c.mac, c.ipv4, vip).unwrap_or_default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicated_stream_survives_the_death_of_its_node_and_a_plain_one_does_not() {
    if !common::lab_prerequisites() {
        return;
    }
    let lab = Lab::build(3, false).await.expect("lab up");
    let mut running = replicating_cluster(&lab).await;
    lab.apply_pool("lan", json!({"addresses": ["198.51.100.200-198.51.100.254"]})).await.unwrap();
    running.backends.extend(lab.start_backends("far", 8081).await.unwrap());
    running.backends.extend(lab.start_backends("plain", 8082).await.unwrap());
    let vips = lab.addresses_won_by(0, 3);
    let names: Vec<String> = lab.topology.nodes.iter().map(|n| n.name.clone()).collect();
    let next = |vip: Ipv4Addr| election::rank(names[1..].iter().map(String::as_str), &IpAddr::V4(vip))[0].to_string();
    // "echo": its only ready pod on the node that takes vips[0] over; "far": on the node that
    // does not take vips[1] over; "plain": on node-2 and node-3.
    let (near_node, far_node) = (next(vips[0]), names[1..].iter().find(|n| **n != next(vips[1])).unwrap().clone());
    for n in &names {
        lab.set_pod_ready("echo", n, *n == near_node).await.unwrap();
        lab.set_pod_ready("far", n, *n == far_node).await.unwrap();
        lab.set_pod_ready("plain", n, *n != names[0]).await.unwrap();
    }
    service(&lab, "near", "echo", vips[0], true).await;
    service(&lab, "far", "far", vips[1], true).await;
    service(&lab, "plain", "plain", vips[2], false).await;
    let owner = probe::mac_bytes(&lab.topology.nodes[0].mac);
    let ns = lab.topology.client.namespace.clone();
    let wanted =
        [(vips[0], vec![near_node.clone()]), (vips[1], vec![far_node.clone()]), (vips[2], names[1..].to_vec())];
    for (vip, pods) in &wanted {
        let target = SocketAddr::new(IpAddr::V4(*vip), 9000);
        let lab = &lab;
        common::eventually("node-1 to answer and the pods to be as chosen", Duration::from_secs(30), || {
            let ns = ns.clone();
            async move {
                if arp(lab, *vip).await != [owner].into() {
                    return None;
                }
                let seen: std::collections::BTreeSet<String> = blocking(move || {
                    (0..10).filter_map(|_| probe::tcp_once(&ns, SocketAddr::new(target.ip(), 80))).collect()
                })
                .await;
                let want: std::collections::BTreeSet<&str> = pods.iter().map(String::as_str).collect();
                // "pod=echo-node-2 client=…": the node of the pod that answered.
                let at: std::collections::BTreeSet<&str> =
                    seen.iter().filter_map(|a| a.split_whitespace().next()?.find("node-").map(|i| &a[i..])).collect();
                let at: std::collections::BTreeSet<&str> =
                    at.iter().filter_map(|a| a.split_whitespace().next()).collect();
                (!seen.is_empty() && at.is_subset(&want)).then_some(())
            }
        })
        .await;
    }
    let near = Stream::open(&ns, SocketAddr::new(IpAddr::V4(vips[0]), 9000));
    let far = Stream::open(&ns, SocketAddr::new(IpAddr::V4(vips[1]), 9000));
    let plain = Stream::open(&ns, SocketAddr::new(IpAddr::V4(vips[2]), 9000));
    // Long enough for conntrackd to have sent the flow to the others.
    tokio::time::sleep(Duration::from_secs(1)).await;
    running.speakers[0].kill();
    netns::ip_in(&lab.topology.nodes[0].namespace, &["link", "set", "eth0", "down"]).unwrap();
    let next_mac = |vip: Ipv4Addr| {
        let n = next(vip);
        probe::mac_bytes(&lab.topology.nodes.iter().find(|x| x.name == n).unwrap().mac)
    };
    for vip in &vips {
        let want = next_mac(*vip);
        common::eventually("the runner-up to take the address over", Duration::from_secs(10), || async {
            (arp(&lab, *vip).await == [want].into()).then_some(())
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let reports: Vec<StreamReport> = blocking(move || vec![near.stop(), far.stop(), plain.stop()]).await;
    for (what, r) in [("its pod on the new owner", &reports[0]), ("its pod on a third node", &reports[1])] {
        assert_eq!(r.cut, None, "the replicated stream ({what}) was cut: {r:?}");
        assert_eq!(r.echoed, r.sent, "{what}: {r:?}");
    }
    let plain = &reports[2];
    assert!(plain.cut.is_some(), "the control stream survived without replication: the test proves nothing: {plain:?}");
    println!(
        "failover with replication: streams kept, longest stalls {:?} (pod on the new owner), {:?} (pod on a third node); without: {:?}",
        reports[0].longest_stall, reports[1].longest_stall, plain.cut
    );
}
