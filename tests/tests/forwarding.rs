//! Real TCP and UDP through real nftables in the lab: from the client, `VIP:port` reaches the
//! backends — all of them with Cluster policy (masqueraded), only the announcing node's with
//! Local policy (the backend sees the client's own address); stopping the speakers removes the
//! table.

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ferrolb_tests::lab::probe::{self, tcp_once};
use ferrolb_tests::lab::{Lab, netns, sctp};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

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
    lab.apply_pool("lan", json!({"addresses": ["198.51.100.200-198.51.100.210"]})).await.unwrap();
    let svc: Service = serde_json::from_value(json!({"metadata": {"name": "echo"}, "spec": {"type": "LoadBalancer", "selector": {"app": "echo"},
        "ports": [{"name": "tcp", "port": 80, "targetPort": 8080}, {"name": "udp", "port": 80, "protocol": "UDP", "targetPort": 8080}]}})).unwrap();
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    api.create(&PostParams::default(), &svc).await.unwrap();
    let vip: IpAddr = common::eventually("echo to get an address", Duration::from_secs(20), || async {
        lab.service_ips("echo").await.first().copied()
    })
    .await;
    let ns = lab.topology.client.namespace.clone();
    let target = SocketAddr::new(vip, 80);
    // Cluster: 300 connections reach every pod, and they see a node's address (masquerade).
    let seen: Vec<String> =
        common::eventually("300 connections to spread over all three pods", Duration::from_secs(30), || {
            let ns = ns.clone();
            async move {
                let answers: Vec<String> =
                    tokio::task::spawn_blocking(move || (0..300).filter_map(|_| tcp_once(&ns, target)).collect())
                        .await
                        .ok()?;
                let pods: BTreeSet<&str> = answers.iter().filter_map(|a| a.split_whitespace().next()).collect();
                (answers.len() == 300 && pods.len() == 3).then_some(answers)
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

    // An endpoint that turns unready gets no new connections.
    lab.set_pod_ready("echo", "node-3", false).await.unwrap();
    common::eventually("node-3's pod to stop getting connections", Duration::from_secs(20), || {
        let ns = ns.clone();
        async move {
            let answers: Vec<String> =
                tokio::task::spawn_blocking(move || (0..30).filter_map(|_| tcp_once(&ns, target)).collect())
                    .await
                    .ok()?;
            (answers.len() == 30 && answers.iter().all(|a| !a.starts_with("pod=echo-node-3 "))).then_some(())
        }
    })
    .await;

    // A second Service shares the VIP on another port and reaches its own backends.
    let _other = lab.start_backends("other", 9090).await.unwrap();
    api.patch(
        "echo",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"ferrolb.io/sharing-key": "shared"}}})),
    )
    .await
    .unwrap();
    let other: Service = serde_json::from_value(json!({"metadata": {"name": "other", "annotations": {"ferrolb.io/sharing-key": "shared"}},
        "spec": {"type": "LoadBalancer", "selector": {"app": "other"}, "ports": [{"name": "tcp", "port": 81, "targetPort": 9090}]}})).unwrap();
    api.create(&PostParams::default(), &other).await.unwrap();
    let other_vip: IpAddr = common::eventually("other to get an address", Duration::from_secs(20), || async {
        lab.service_ips("other").await.first().copied()
    })
    .await;
    assert_eq!(other_vip, vip, "the sharing key gives the same address");
    let got = common::eventually("port 81 to reach the other backends", Duration::from_secs(20), || {
        let ns = ns.clone();
        async move { tokio::task::spawn_blocking(move || tcp_once(&ns, SocketAddr::new(vip, 81))).await.ok()? }
    })
    .await;
    assert!(got.starts_with("pod=other-node-"), "{got}");
    let got = tokio::task::spawn_blocking({
        let ns = ns.clone();
        move || tcp_once(&ns, target)
    })
    .await
    .unwrap()
    .unwrap();
    assert!(got.starts_with("pod=echo-node-"), "{got}");
    // Sharing needs the same traffic policy; end it before echo turns Local.
    api.delete("other", &Default::default()).await.unwrap();
    common::eventually("other's rules to go", Duration::from_secs(20), || {
        let ns = ns.clone();
        async move {
            tokio::task::spawn_blocking(move || tcp_once(&ns, SocketAddr::new(vip, 81)))
                .await
                .ok()?
                .is_none()
                .then_some(())
        }
    })
    .await;

    // sessionAffinity ClientIP: every connection of the client goes to one pod.
    api.patch("echo", &PatchParams::default(), &Patch::Merge(json!({"spec": {"sessionAffinity": "ClientIP"}})))
        .await
        .unwrap();
    common::eventually("ClientIP affinity to pin the client to one pod", Duration::from_secs(20), || {
        let ns = ns.clone();
        async move {
            let answers: Vec<String> =
                tokio::task::spawn_blocking(move || (0..20).filter_map(|_| tcp_once(&ns, target)).collect())
                    .await
                    .ok()?;
            let pods: BTreeSet<&str> = answers.iter().filter_map(|a| a.split_whitespace().next()).collect();
            (answers.len() == 20 && pods.len() == 1).then_some(())
        }
    })
    .await;
    api.patch("echo", &PatchParams::default(), &Patch::Merge(json!({"spec": {"sessionAffinity": "None"}})))
        .await
        .unwrap();

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

    // Stopping a speaker whose node goes away (cordoned, then SIGTERM) removes its table.
    for n in &lab.topology.nodes {
        lab.cordon(&n.name).await.unwrap();
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_ports_ipv6_refusal_source_ranges_deletion_and_repair() {
    if !common::lab_prerequisites() {
        return;
    }
    let lab = Lab::up(3).await.expect("lab up");
    let _running = lab.start_cluster().await.unwrap();
    let client = lab.client().await.unwrap();
    lab.apply_pool(
        "lan",
        json!({"addresses": ["198.51.100.200-198.51.100.210", "2001:db8:100::200-2001:db8:100::210"]}),
    )
    .await
    .unwrap();
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    let svc: Service = serde_json::from_value(json!({"metadata": {"name": "echo"}, "spec": {"type": "LoadBalancer", "ipFamilyPolicy": "RequireDualStack",
        "selector": {"app": "echo"}, "ports": [{"name": "tcp", "port": 80, "targetPort": 8080}, {"name": "udp", "port": 80, "protocol": "UDP", "targetPort": 8080}]}})).unwrap();
    api.create(&PostParams::default(), &svc).await.unwrap();
    let (v4, v6): (IpAddr, IpAddr) =
        common::eventually("echo to get both addresses", Duration::from_secs(20), || async {
            let ips: Vec<IpAddr> = api
                .get("echo")
                .await
                .ok()?
                .status?
                .load_balancer?
                .ingress?
                .iter()
                .filter_map(|i| i.ip.as_deref()?.parse().ok())
                .collect();
            (ips.len() == 2).then(|| (ips[0], ips[1]))
        })
        .await;
    let ns = lab.topology.client.namespace.clone();
    let reach = |addr: SocketAddr| {
        let ns = ns.clone();
        async move { tokio::task::spawn_blocking(move || tcp_once(&ns, addr)).await.unwrap() }
    };
    // IPv6 VIP.
    let got = common::eventually("the IPv6 VIP to answer", Duration::from_secs(30), || async {
        reach(SocketAddr::new(v6, 80)).await
    })
    .await;
    assert!(got.starts_with("pod=echo-node-"), "{got}");
    // nodeIP:nodePort directly, on a node that does not announce the VIP.
    let node_port = api.get("echo").await.unwrap().spec.unwrap().ports.unwrap()[0].node_port.unwrap();
    let node3 = SocketAddr::new(lab.topology.nodes[2].ipv4.into(), u16::try_from(node_port).unwrap());
    let got =
        common::eventually("the NodePort to answer", Duration::from_secs(20), || async { reach(node3).await }).await;
    assert!(got.starts_with("pod=echo-node-"), "{got}");

    // A Service without endpoints is refused at once, not black-holed.
    let empty: Service = serde_json::from_value(json!({"metadata": {"name": "empty"}, "spec": {"type": "LoadBalancer", "selector": {"app": "none"}, "ports": [{"name": "tcp", "port": 80}]}})).unwrap();
    api.create(&PostParams::default(), &empty).await.unwrap();
    let empty_vip: IpAddr = common::eventually("empty to get an address", Duration::from_secs(20), || async {
        lab.service_ips("empty").await.first().copied()
    })
    .await;
    let refused = common::eventually(
        "a connection to a Service without endpoints to be refused",
        Duration::from_secs(20),
        || {
            let ns = ns.clone();
            async move {
                tokio::task::spawn_blocking(move || {
                    netns::in_ns(&ns, || {
                        let t = std::time::Instant::now();
                        let r = std::net::TcpStream::connect_timeout(
                            &SocketAddr::new(empty_vip, 80),
                            Duration::from_secs(2),
                        );
                        matches!(r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused).then(|| t.elapsed())
                    })
                    .ok()
                    .flatten()
                })
                .await
                .unwrap()
            }
        },
    )
    .await;
    // Once the address is announced and the rules are in, a refusal takes no retransmission.
    let _ = refused;
    let ns2 = ns.clone();
    let again = tokio::task::spawn_blocking(move || {
        netns::in_ns(&ns2, || {
            let t = std::time::Instant::now();
            let r = std::net::TcpStream::connect_timeout(&SocketAddr::new(empty_vip, 80), Duration::from_secs(2));
            (matches!(r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused), t.elapsed())
        })
        .unwrap()
    })
    .await
    .unwrap();
    assert!(again.0 && again.1 < Duration::from_millis(500), "refused: {}, after {:?}", again.0, again.1);

    // loadBalancerSourceRanges: a range without the client blocks it; with it, it works again.
    api.patch(
        "echo",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"loadBalancerSourceRanges": ["192.0.2.0/24"]}})),
    )
    .await
    .unwrap();
    common::eventually("the client to be blocked", Duration::from_secs(20), || async {
        reach(SocketAddr::new(v4, 80)).await.is_none().then_some(())
    })
    .await;
    api.patch(
        "echo",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"loadBalancerSourceRanges": ["198.51.100.0/24", "2001:db8:100::/64"]}})),
    )
    .await
    .unwrap();
    common::eventually("the client to be let in", Duration::from_secs(20), || async {
        reach(SocketAddr::new(v4, 80)).await
    })
    .await;
    // Read as Kubernetes reads them: leading zeros are decimal ("192.000.002.000/24" is
    // 192.0.2.0/24, without the client), and the legacy annotation counts when the field is empty.
    let ranges = |spec: Value, annotation: Value| {
        json!({"metadata": {"annotations": {"service.beta.kubernetes.io/load-balancer-source-ranges": annotation}},
            "spec": {"loadBalancerSourceRanges": spec}})
    };
    for (step, patch, admitted) in [
        ("leading zeros", ranges(json!(["192.000.002.000/24"]), Value::Null), false),
        (
            "leading zeros with the client",
            ranges(json!(["198.051.100.000/24", "2001:db8:100::/64"]), Value::Null),
            true,
        ),
        ("the legacy annotation", ranges(Value::Null, json!("192.0.2.0/24")), false),
        ("no range at all", ranges(Value::Null, Value::Null), true),
    ] {
        api.patch("echo", &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
        common::eventually(&format!("{step}: the client admitted = {admitted}"), Duration::from_secs(20), || async {
            (reach(SocketAddr::new(v4, 80)).await.is_some() == admitted).then_some(())
        })
        .await;
    }

    // A chain flushed by hand is put back.
    let announcer = lab.topology.nodes.iter().map(|n| n.namespace.clone()).find(|n| {
        netns::exec(n, "nft", &["list", "map", "inet", "ferrolb", "vips_v4"]).is_ok_and(|m| m.contains(&v4.to_string()))
    });
    let any_node = announcer.unwrap_or_else(|| lab.topology.nodes[0].namespace.clone());
    netns::exec(&any_node, "nft", &["flush", "chain", "inet", "ferrolb", "nat_prerouting"]).unwrap();
    common::eventually("the flushed chain to be repaired", Duration::from_secs(10), || async {
        let chain = netns::exec(&any_node, "nft", &["list", "chain", "inet", "ferrolb", "nat_prerouting"]).ok()?;
        chain.contains("vmap @vips_v4").then_some(())
    })
    .await;
    let counter = |name: &'static str| {
        let ns = any_node.clone();
        async move { probe::metric(&probe::speaker_metrics(&ns).await?, &format!("{name}_total")) }
    };
    let repairs = counter("ferrolb_speaker_nft_repairs").await.unwrap_or(0.0);
    assert!(repairs >= 1.0, "the repair was not counted");

    // A rule replaced in place by another (the same number of rules) is put back too, once the
    // speaker has read the repaired table back and taken its content as the reference.
    let verified = counter("ferrolb_speaker_nft_verified").await.unwrap_or(0.0);
    common::eventually("a read-back after the repair", Duration::from_secs(10), || async {
        (counter("ferrolb_speaker_nft_verified").await? > verified).then_some(())
    })
    .await;
    let handle = probe::rule_handle(&any_node, "nat_prerouting", "vmap @vips_v4").expect("the VIP rule's handle");
    let replace = ["replace", "rule", "inet", "ferrolb", "nat_prerouting", "handle", &handle, "accept"];
    netns::exec(&any_node, "nft", &replace).unwrap();
    common::eventually("the replaced rule to be repaired", Duration::from_secs(10), || async {
        let chain = netns::exec(&any_node, "nft", &["list", "chain", "inet", "ferrolb", "nat_prerouting"]).ok()?;
        chain.contains("vmap @vips_v4").then_some(())
    })
    .await;
    assert!(counter("ferrolb_speaker_nft_repairs").await.unwrap_or(0.0) > repairs, "the second repair was counted");

    // A FORWARD policy of drop (as Docker sets) on a node is noticed and reported, never changed.
    let n1 = lab.topology.nodes[0].namespace.clone();
    netns::exec(&n1, "nft", &["add", "table", "ip", "filter"]).unwrap();
    netns::exec(
        &n1,
        "nft",
        &["add", "chain", "ip", "filter", "FORWARD", "{ type filter hook forward priority 0; policy drop; }"],
    )
    .unwrap();
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), "default");
    let message = common::eventually("a ForwardingBlocked Warning on node-1", Duration::from_secs(15), || async {
        let lp = kube::api::ListParams::default().fields("involvedObject.name=node-1,involvedObject.kind=Node");
        events
            .list(&lp)
            .await
            .ok()?
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("ForwardingBlocked"))?
            .message
    })
    .await;
    assert!(message.contains("ip filter FORWARD: hook forward, policy drop"), "{message}");
    let listed = netns::exec(&n1, "nft", &["list", "chain", "ip", "filter", "FORWARD"]).unwrap();
    assert!(listed.contains("policy drop"), "ferrolb must not rewrite rules it does not own");
    let metrics = probe::speaker_metrics(&n1).await.unwrap_or_default();
    assert_eq!(probe::metric(&metrics, "ferrolb_speaker_firewall_blocking_chains"), Some(1.0), "{metrics}");
    netns::exec(&n1, "nft", &["delete", "table", "ip", "filter"]).unwrap();

    // Deleting a Service removes its rules everywhere.
    api.delete("echo", &Default::default()).await.unwrap();
    common::eventually("echo's rules to go", Duration::from_secs(20), || async {
        lab.topology
            .nodes
            .iter()
            .all(|n| {
                netns::exec(&n.namespace, "nft", &["list", "table", "inet", "ferrolb"])
                    .is_ok_and(|t| !t.contains(&v4.to_string()))
            })
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_continue_through_a_failover() {
    if !common::lab_prerequisites() {
        return;
    }
    let lab = Lab::up(3).await.expect("lab up");
    let mut running = lab.start_cluster().await.unwrap();
    let run = lab.tcp_failover(&mut running).await.unwrap();
    eprintln!(
        "longest gap between successful connections through the failover: {:?} ({} connections)",
        run.longest_gap, run.connections
    );
    assert!(run.resumed, "connections did not resume after the failover");
    assert!(run.longest_gap < Duration::from_secs(3), "longest gap {:?}", run.longest_gap);
}

/// SCTP: the lab's kernel has SCTP conntrack and NAT but no SCTP sockets, so a real INIT chunk
/// goes out of a raw socket on the client and the pods catch what arrives (see `lab::sctp`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sctp_associations_reach_the_pods() {
    if !common::lab_prerequisites() {
        return;
    }
    let lab = Lab::up(3).await.expect("lab up");
    let _running = lab.start_cluster().await.unwrap();
    let client = lab.client().await.unwrap();
    lab.apply_pool("lan", json!({"addresses": ["198.51.100.200-198.51.100.210"]})).await.unwrap();
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    let svc: Service = serde_json::from_value(json!({"metadata": {"name": "assoc"}, "spec": {"type": "LoadBalancer",
        "ports": [{"name": "sctp", "port": 9000, "protocol": "SCTP", "targetPort": 9900}]}}))
    .unwrap();
    api.create(&PostParams::default(), &svc).await.unwrap();
    let endpoints: Vec<serde_json::Value> = lab
        .topology
        .pods
        .iter()
        .map(|p| json!({"addresses": [p.ipv4.to_string()], "nodeName": p.node, "conditions": {"ready": true}}))
        .collect();
    let slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice> = Api::namespaced(client, "default");
    let slice = serde_json::from_value(
        json!({"metadata": {"name": "assoc-ipv4", "labels": {"kubernetes.io/service-name": "assoc"}},
        "addressType": "IPv4", "ports": [{"name": "sctp", "port": 9900, "protocol": "SCTP"}], "endpoints": endpoints}),
    )
    .unwrap();
    slices.create(&PostParams::default(), &slice).await.unwrap();
    let vip = common::eventually("assoc to get an address", Duration::from_secs(20), || async {
        lab.service_ips("assoc").await.into_iter().find_map(|ip| match ip {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })
    })
    .await;
    let catchers: Vec<(std::net::Ipv4Addr, sctp::Catcher)> =
        lab.topology.pods.iter().map(|p| (p.ipv4, sctp::Catcher::open(&p.namespace).unwrap())).collect();
    let ns = lab.topology.client.namespace.clone();
    // Every INIT from a new source port is a new association: with three endpoints, 30 of them
    // reach every pod, each addressed to that pod's own target port.
    let caught = common::eventually("SCTP INITs to reach all three pods", Duration::from_secs(30), || {
        let ns = ns.clone();
        let catchers = &catchers;
        async move {
            for port in 0..30u16 {
                sctp::send_init(&ns, std::net::SocketAddrV4::new(vip, 9000), 40_000 + port).ok()?;
            }
            let caught: Vec<(std::net::Ipv4Addr, Vec<sctp::Caught>)> =
                catchers.iter().map(|(ip, c)| (*ip, c.inits(Duration::from_millis(300)))).collect();
            caught.iter().all(|(_, got)| !got.is_empty()).then_some(caught)
        }
    })
    .await;
    let client_ip = lab.topology.client.ipv4;
    for (pod, got) in caught {
        for c in got {
            assert_eq!(c.to, std::net::SocketAddrV4::new(pod, 9900), "DNAT to the pod's target port");
            assert_ne!(c.from, client_ip, "Cluster policy masquerades");
        }
    }
}
