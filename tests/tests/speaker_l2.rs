//! Real ARP and NDP in the lab: exactly one node answers for each address, the elected one;
//! nobody answers for an address that is not allocated; when the announcing speaker is killed,
//! another node takes over and the client's neighbour entry follows the gratuitous frames.

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ferrolb_speaker::election;
use ferrolb_tests::lab::{Lab, netns, probe};
use k8s_openapi::api::core::v1::{Event, Service};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

fn mac_of(lab: &Lab, node: &str) -> String {
    lab.topology.nodes.iter().find(|n| n.name == node).unwrap().mac.clone()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_answers_and_another_takes_over_when_it_dies() {
    if !common::lab_prerequisites() {
        return;
    }
    let lab = Lab::up(3).await.expect("lab up");
    lab.register_cluster().await.unwrap();
    let client = lab.client().await.unwrap();
    lab.apply_pool(
        "lan",
        json!({"addresses": ["198.51.100.200-198.51.100.210", "2001:db8:100::200-2001:db8:100::210"]}),
    )
    .await
    .unwrap();
    let _controller = lab.start_controller().unwrap();
    let mut speakers: Vec<_> = (0..3).map(|i| lab.start_speaker(i, &[]).unwrap()).collect();
    let svc: Service = serde_json::from_value(json!({"metadata": {"name": "web"},
        "spec": {"type": "LoadBalancer", "ipFamilyPolicy": "PreferDualStack", "selector": {"app": "web"}, "ports": [{"port": 80}]}})).unwrap();
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    api.create(&PostParams::default(), &svc).await.unwrap();
    let ips: Vec<IpAddr> = common::eventually("web to get two addresses", Duration::from_secs(20), || async {
        let s = api.get("web").await.ok()?;
        let ips: Vec<IpAddr> =
            s.status?.load_balancer?.ingress?.iter().filter_map(|i| i.ip.as_deref()?.parse().ok()).collect();
        (ips.len() == 2).then_some(ips)
    })
    .await;
    let (v4, v6) = match (ips[0], ips[1]) {
        (IpAddr::V4(a), IpAddr::V6(b)) => (a, b),
        other => panic!("unexpected families {other:?}"),
    };
    let names: Vec<String> = lab.topology.nodes.iter().map(|n| n.name.clone()).collect();
    let winner = election::winner(names.iter().map(String::as_str), &IpAddr::V4(v4)).unwrap().to_string();
    let winner6 = election::winner(names.iter().map(String::as_str), &IpAddr::V6(v6)).unwrap().to_string();
    let c = lab.topology.client.clone();

    // Exactly one MAC answers, the elected node's, for both families.
    let one_mac = |ip4: Option<std::net::Ipv4Addr>, ip6: Option<std::net::Ipv6Addr>| {
        let c = c.clone();
        async move {
            blocking(move || match (ip4, ip6) {
                (Some(a), _) => probe::arp_who_has(&c.namespace, &c.interface, &c.mac, c.ipv4, a).unwrap(),
                (_, Some(b)) => probe::ndp_who_has(&c.namespace, &c.interface, &c.mac, c.ipv6, b).unwrap(),
                _ => unreachable!(),
            })
            .await
        }
    };
    let want4 = mac_of(&lab, &winner);
    common::eventually("the elected node to answer ARP", Duration::from_secs(20), || async {
        let macs = one_mac(Some(v4), None).await;
        (macs.len() == 1 && probe::mac_text(macs.iter().next().unwrap()) == want4).then_some(())
    })
    .await;
    let want6 = mac_of(&lab, &winner6);
    common::eventually("the elected node to answer NDP", Duration::from_secs(10), || async {
        let macs = one_mac(None, Some(v6)).await;
        (macs.len() == 1 && probe::mac_text(macs.iter().next().unwrap()) == want6).then_some(())
    })
    .await;
    // The Service says who announces it: a condition and an Event.
    let announced = common::eventually("the Announced condition", Duration::from_secs(10), || async {
        let svc = api.get("web").await.ok()?;
        let c = svc.status?.conditions?.into_iter().find(|c| c.type_ == "ferrolb.io/Announced")?;
        (c.status == "True" && c.message.contains(&format!("node {winner6}"))
            || c.message.contains(&format!("node {winner}")))
        .then_some(c.message)
    })
    .await;
    // Only where clients are: the LAN interface, not the pod's veth (excluded by default).
    assert!(announced.ends_with(" on eth0"), "{announced}");
    // Several probes in a row: never a second answer.
    for _ in 0..3 {
        let macs = one_mac(Some(v4), None).await;
        assert_eq!(macs.len(), 1, "more than one MAC answered: {macs:?}");
    }
    // The announcing node counts what it did, per address.
    let ns_w = lab.topology.nodes.iter().find(|n| n.name == winner).unwrap().namespace.clone();
    let metrics = probe::speaker_metrics(&ns_w).await.unwrap_or_default();
    let value = |name: &str| probe::metric(&metrics, name).unwrap_or(-1.0);
    assert!(value(&format!("ferrolb_speaker_requests_total{{address=\"{v4}\"}}")) >= 3.0, "{metrics}");
    assert!(value(&format!("ferrolb_speaker_replies_total{{address=\"{v4}\"}}")) >= 3.0, "{metrics}");
    assert_eq!(value("ferrolb_speaker_live_peers"), 3.0, "{metrics}");
    assert!(value("ferrolb_speaker_gratuitous_total") >= 2.0, "{metrics}");
    assert!(value("ferrolb_speaker_announced_addresses") >= 1.0, "{metrics}");
    // Nobody answers for an address that is not allocated.
    let free: std::net::Ipv4Addr = "198.51.100.209".parse().unwrap();
    assert!(one_mac(Some(free), None).await.is_empty(), "someone answered for an unallocated address");

    // Kill -9 the announcing speaker: the runner-up takes over, and the client's neighbour entry
    // follows its gratuitous ARP without the client asking again.
    let (ns, vip) = (c.namespace.clone(), IpAddr::V4(v4));
    blocking(move || probe::resolve(&ns, vip)).await;
    let ns = c.namespace.clone();
    assert_eq!(
        probe::neighbour(&ns, &v4.to_string()).as_deref(),
        Some(want4.as_str()),
        "the client resolved the elected node first"
    );
    let next = election::rank(names.iter().map(String::as_str), &IpAddr::V4(v4))[1].to_string();
    let idx = names.iter().position(|n| *n == winner).unwrap();
    // The node dies: speaker killed, link down (a speaker that only crashes is restarted in place
    // and keeps its address: tests/tests/restart.rs).
    let killed = Instant::now();
    speakers[idx].kill();
    netns::ip_in(&lab.topology.nodes[idx].namespace, &["link", "set", "eth0", "down"]).unwrap();
    let want_next = mac_of(&lab, &next);
    let took = common::eventually(
        "the client's neighbour entry to move to the next node",
        Duration::from_secs(10),
        || async {
            (probe::neighbour(&ns, &v4.to_string()).as_deref() == Some(want_next.as_str())).then(|| killed.elapsed())
        },
    )
    .await;
    eprintln!("failover after the node died: {took:?}");
    let macs = one_mac(Some(v4), None).await;
    assert_eq!(macs.len(), 1);
    assert_eq!(probe::mac_text(macs.iter().next().unwrap()), want_next);
}

/// Builds a lab with ferrolb on three nodes (speakers with `speaker_flags`), a pool on the LAN and
/// one IPv4 Service; returns the lab, the speakers, the Service's address and its elected node.
async fn lab_with_service(
    speaker_flags: &[&str],
) -> (Lab, Vec<ferrolb_tests::lab::processes::Proc>, ferrolb_tests::lab::processes::Proc, std::net::Ipv4Addr, String) {
    let lab = Lab::up(3).await.expect("lab up");
    lab.register_cluster().await.unwrap();
    let client = lab.client().await.unwrap();
    lab.apply_pool("lan", json!({"addresses": ["198.51.100.200-198.51.100.210"]})).await.unwrap();
    let controller = lab.start_controller().unwrap();
    let speakers: Vec<_> = (0..3).map(|i| lab.start_speaker(i, speaker_flags).unwrap()).collect();
    let svc: Service = serde_json::from_value(json!({"metadata": {"name": "web"},
        "spec": {"type": "LoadBalancer", "selector": {"app": "web"}, "ports": [{"port": 80}]}}))
    .unwrap();
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    api.create(&PostParams::default(), &svc).await.unwrap();
    let vip: std::net::Ipv4Addr = common::eventually("web to get an address", Duration::from_secs(20), || async {
        match lab.service_ips("web").await.first()? {
            IpAddr::V4(a) => Some(*a),
            IpAddr::V6(_) => None,
        }
    })
    .await;
    let names: Vec<String> = lab.topology.nodes.iter().map(|n| n.name.clone()).collect();
    let winner = election::winner(names.iter().map(String::as_str), &IpAddr::V4(vip)).unwrap().to_string();
    let want = mac_of(&lab, &winner);
    let c = lab.topology.client.clone();
    common::eventually("the elected node to answer", Duration::from_secs(20), || {
        let (c, want) = (c.clone(), want.clone());
        async move {
            let macs =
                blocking(move || probe::arp_who_has(&c.namespace, &c.interface, &c.mac, c.ipv4, vip).unwrap()).await;
            (macs.len() == 1 && probe::mac_text(macs.iter().next().unwrap()) == want).then_some(())
        }
    })
    .await;
    (lab, speakers, controller, vip, winner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_a_cordoned_node_hands_over_without_a_gap_and_removes_the_table() {
    if !common::lab_prerequisites() {
        return;
    }
    let (lab, mut speakers, _controller, vip, winner) = lab_with_service(&[]).await;
    let names: Vec<String> = lab.topology.nodes.iter().map(|n| n.name.clone()).collect();
    let next = election::rank(names.iter().map(String::as_str), &IpAddr::V4(vip))[1].to_string();
    let idx = names.iter().position(|n| *n == winner).unwrap();
    // Drained: its node goes away, so its speaker hands over (a node that stays restarts in place).
    lab.cordon(&winner).await.unwrap();
    let mut old = speakers.remove(idx);
    let stopping = tokio::task::spawn_blocking(move || {
        let status = old.terminate().unwrap();
        (status, Instant::now())
    });
    // Ask continuously while the old speaker leaves: some node answers every time.
    let c = lab.topology.client.clone();
    let mut answers = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        let c = c.clone();
        let macs = blocking(move || probe::arp_who_has(&c.namespace, &c.interface, &c.mac, c.ipv4, vip).unwrap()).await;
        answers.push(macs);
    }
    let (status, _) = stopping.await.unwrap();
    assert!(status.success(), "the speaker exits cleanly on SIGTERM: {status}");
    assert!(answers.iter().all(|a| !a.is_empty()), "a probe went unanswered during the hand-over: {answers:?}");
    let last = answers.last().unwrap();
    assert_eq!(last.len(), 1);
    assert_eq!(
        probe::mac_text(last.iter().next().unwrap()),
        mac_of(&lab, &next),
        "the runner-up announces after the hand-over"
    );
    let ns = &lab.topology.nodes[idx].namespace;
    let listed = netns::exec(ns, "nft", &["list", "tables"]).unwrap_or_default();
    assert!(!listed.contains("ferrolb"), "a speaker leaving for good removes its table");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_heartbeats_are_ignored_and_a_foreign_answer_raises_a_conflict_event() {
    use ferrolb_speaker::membership::heartbeat::{Heartbeat, encode};
    if !common::lab_prerequisites() {
        return;
    }
    let secret = std::env::temp_dir().join(format!("ferrolb-secret-{}", std::process::id()));
    std::fs::write(&secret, "the-real-key\n").unwrap();
    let secret_arg = secret.to_string_lossy().into_owned();
    let (lab, _speakers, _controller, vip, winner) = lab_with_service(&["--peer-secret-file", &secret_arg]).await;
    let c = lab.topology.client.clone();
    // From the client: "the winner is leaving", signed with the wrong key, to every other node.
    let forged = Heartbeat {
        node: winner.clone(),
        incarnation: u64::MAX,
        sequence: u64::MAX,
        sent_at_ms: ferrolb_speaker::membership::udp::now_ms(),
        leaving: true,
        restarting: false,
        settling: false,
        claims: Default::default(),
    };
    let bytes = encode(&forged, Some(b"not-the-key"));
    let targets: Vec<std::net::SocketAddr> = lab
        .topology
        .nodes
        .iter()
        .filter(|n| n.name != winner)
        .map(|n| std::net::SocketAddr::new(IpAddr::V4(n.ipv4), 7946))
        .collect();
    let ns = c.namespace.clone();
    blocking(move || {
        netns::in_ns(&ns, || {
            let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            for _ in 0..5 {
                for t in &targets {
                    s.send_to(&bytes, t).unwrap();
                }
            }
        })
        .unwrap()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let c2 = c.clone();
    let macs = blocking(move || probe::arp_who_has(&c2.namespace, &c2.interface, &c2.mac, c2.ipv4, vip).unwrap()).await;
    assert_eq!(macs.len(), 1);
    assert_eq!(probe::mac_text(macs.iter().next().unwrap()), mac_of(&lab, &winner), "a forged leave moved the address");
    let other = lab.topology.nodes.iter().find(|n| n.name != winner).unwrap().namespace.clone();
    let metrics = probe::speaker_metrics(&other).await.unwrap_or_default();
    let refused = probe::metric(&metrics, "ferrolb_speaker_heartbeats_refused_total").unwrap_or(0.0);
    assert!(refused >= 5.0, "forged heartbeats were not counted: {metrics}");

    // A foreign host keeps claiming the address (as a misconfigured host answering ARP does):
    // the announcing speaker reports it on the Service, once its own takeover has settled.
    let client = lab.client().await.unwrap();
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client, "default");
    let message = common::eventually("an AddressConflict Warning on web", Duration::from_secs(15), || {
        let (events, c) = (events.clone(), c.clone());
        async move {
            let claim = ferrolb_speaker::l2::arp::gratuitous_reply(probe::mac_bytes(&c.mac), vip);
            let (ns, iface) = (c.namespace.clone(), c.interface.clone());
            blocking(move || probe::send_frames(&ns, &iface, vec![claim]).unwrap()).await;
            let lp = kube::api::ListParams::default().fields("involvedObject.name=web");
            let found = events
                .list(&lp)
                .await
                .ok()?
                .items
                .into_iter()
                .filter(|e| e.reason.as_deref() == Some("AddressConflict"));
            let message = found.filter_map(|e| e.message).find(|m| m.contains(&c.mac));
            if message.is_none() {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            message
        }
    })
    .await;
    assert!(message.contains(&vip.to_string()), "{message}");

    // A flood of spoofed gratuitous ARP requests for the address, each from a new MAC: claims,
    // counted, not answered, and still one Event a minute; the speaker keeps announcing.
    let winner_ns = lab.topology.nodes.iter().find(|n| n.name == winner).unwrap().namespace.clone();
    let conflicts = || async {
        probe::metric(&probe::speaker_metrics(&winner_ns).await.unwrap_or_default(), "ferrolb_speaker_conflicts_total")
    };
    let before = conflicts().await.unwrap_or(0.0);
    let flood: Vec<Vec<u8>> = (0..5_000u32)
        .map(|i| {
            let b = i.to_be_bytes();
            ferrolb_speaker::l2::arp::gratuitous_request([0x02, 0x42, b[0], b[1], b[2], b[3]], vip)
        })
        .collect();
    let (ns, iface) = (c.namespace.clone(), c.interface.clone());
    blocking(move || probe::send_frames(&ns, &iface, flood).unwrap()).await;
    common::eventually("the flood to be counted", Duration::from_secs(15), || async {
        (conflicts().await? >= before + 1_000.0).then_some(())
    })
    .await;
    let lp = kube::api::ListParams::default().fields("involvedObject.name=web");
    let reports: Vec<_> = events
        .list(&lp)
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("AddressConflict"))
        .collect();
    assert_eq!(
        reports.len(),
        1,
        "one Event a minute per address: {:?}",
        reports.iter().map(|e| &e.message).collect::<Vec<_>>()
    );
    let macs = blocking(move || probe::arp_who_has(&c.namespace, &c.interface, &c.mac, c.ipv4, vip).unwrap()).await;
    assert_eq!(macs.len(), 1);
    assert_eq!(probe::mac_text(macs.iter().next().unwrap()), mac_of(&lab, &winner));
    let _ = std::fs::remove_file(&secret);

    // A request tagged for VLAN 100 reaches the nodes' untagged interface (the kernel hands the
    // raw socket the frame without its tag): nobody may answer it there, untagged, into the
    // wrong network. The same request untagged is answered (the control).
    let c = lab.topology.client.clone();
    let tagged =
        blocking(move || probe::arp_who_has_on_vlan(&c.namespace, &c.interface, &c.mac, c.ipv4, vip, 100).unwrap())
            .await;
    assert!(tagged.is_empty(), "a VLAN-tagged request was answered: {tagged:?}");
    assert_eq!(answerers(&lab, vip).await.len(), 1);
}

/// Which nodes answer ARP for `vip` from the client, by name.
async fn answerers(lab: &Lab, vip: std::net::Ipv4Addr) -> std::collections::BTreeSet<String> {
    let c = lab.topology.client.clone();
    let macs = blocking(move || probe::arp_who_has(&c.namespace, &c.interface, &c.mac, c.ipv4, vip).unwrap()).await;
    macs.iter()
        .map(|m| {
            let text = probe::mac_text(m);
            lab.topology.nodes.iter().find(|n| n.mac == text).map(|n| n.name.clone()).unwrap_or(text)
        })
        .collect()
}

async fn wait_answerers(lab: &Lab, vip: std::net::Ipv4Addr, want: &[&str]) {
    let want: std::collections::BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
    let what = format!("{vip} to be answered by {want:?}");
    common::eventually(&what, Duration::from_secs(15), || async { (answerers(lab, vip).await == want).then_some(()) })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_policy_node_selector_interfaces_exclusion_and_sharing() {
    if !common::lab_prerequisites() {
        return;
    }
    let lab = Lab::up(3).await.expect("lab up");
    lab.register_cluster().await.unwrap();
    let client = lab.client().await.unwrap();
    let pools: Api<ferrolb_crds::IPPool> = Api::all(client.clone());
    for (name, spec) in [
        ("lan", json!({"addresses": ["198.51.100.200-198.51.100.210"]})),
        (
            "sel",
            json!({"addresses": ["198.51.100.220/32"], "autoAssign": false, "l2": {"nodeSelector": {"matchLabels": {"lb": "true"}}}}),
        ),
        ("ifs", json!({"addresses": ["198.51.100.230/32"], "autoAssign": false, "l2": {"interfaces": ["nomatch*"]}})),
    ] {
        lab.apply_pool(name, spec).await.unwrap();
    }
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    nodes
        .patch("node-2", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"lb": "true"}}})))
        .await
        .unwrap();
    let _controller = lab.start_controller().unwrap();
    let _speakers: Vec<_> = (0..3).map(|i| lab.start_speaker(i, &[]).unwrap()).collect();
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    let make = |name: &str, extra: serde_json::Value| {
        let mut v = json!({"metadata": {"name": name}, "spec": {"type": "LoadBalancer", "selector": {"app": name}, "ports": [{"name": "p", "port": 80}]}});
        json_patch::merge(&mut v, &extra);
        serde_json::from_value::<Service>(v).unwrap()
    };
    let vip_of = |name: &'static str| {
        let api = api.clone();
        async move {
            common::eventually(&format!("{name} to get an address"), Duration::from_secs(20), || async {
                api.get(name)
                    .await
                    .ok()?
                    .status?
                    .load_balancer?
                    .ingress?
                    .first()?
                    .ip
                    .as_deref()?
                    .parse::<std::net::Ipv4Addr>()
                    .ok()
            })
            .await
        }
    };

    // nodeSelector: only node-2 may announce.
    api.create(&PostParams::default(), &make("sel", json!({"metadata": {"annotations": {"ferrolb.io/pool": "sel"}}})))
        .await
        .unwrap();
    let sel = vip_of("sel").await;
    wait_answerers(&lab, sel, &["node-2"]).await;

    // interfaces: no interface matches, so nobody answers; once eth0 is allowed, one node does.
    api.create(&PostParams::default(), &make("ifs", json!({"metadata": {"annotations": {"ferrolb.io/pool": "ifs"}}})))
        .await
        .unwrap();
    let ifs = vip_of("ifs").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(answerers(&lab, ifs).await.is_empty(), "announced on an interface the pool excludes");
    pools
        .patch("ifs", &PatchParams::default(), &Patch::Merge(json!({"spec": {"l2": {"interfaces": ["eth*"]}}})))
        .await
        .unwrap();
    common::eventually("ifs to be announced on eth0", Duration::from_secs(15), || async {
        (answerers(&lab, ifs).await.len() == 1).then_some(())
    })
    .await;

    // Local: only a node with a ready endpoint, and the announcement follows the endpoint.
    api.create(&PostParams::default(), &make("local", json!({"spec": {"externalTrafficPolicy": "Local"}})))
        .await
        .unwrap();
    let local = vip_of("local").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(answerers(&lab, local).await.is_empty(), "a Local Service without ready endpoints was announced");
    let slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice> = Api::namespaced(client.clone(), "default");
    let slice = |node: &str, ip: &str| {
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {"name": "local-1", "labels": {"kubernetes.io/service-name": "local"}},
            "addressType": "IPv4", "ports": [{"name": "p", "port": 80, "protocol": "TCP"}],
            "endpoints": [{"addresses": [ip], "nodeName": node, "conditions": {"ready": true}}]})
    };
    slices.patch("local-1", &PatchParams::apply("lab"), &Patch::Apply(slice("node-3", "203.0.113.130"))).await.unwrap();
    wait_answerers(&lab, local, &["node-3"]).await;
    slices
        .patch("local-1", &PatchParams::apply("lab").force(), &Patch::Apply(slice("node-1", "203.0.113.2")))
        .await
        .unwrap();
    wait_answerers(&lab, local, &["node-1"]).await;

    // Excluded from load balancers: the announcement leaves that node.
    api.create(&PostParams::default(), &make("plain", json!({}))).await.unwrap();
    let plain = vip_of("plain").await;
    let names = ["node-1", "node-2", "node-3"];
    let first = election::winner(names, &IpAddr::V4(plain)).unwrap();
    wait_answerers(&lab, plain, &[first]).await;
    nodes
        .patch(
            first,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"labels": {"node.kubernetes.io/exclude-from-external-load-balancers": ""}}}),
            ),
        )
        .await
        .unwrap();
    let rest: Vec<&str> = names.iter().copied().filter(|n| *n != first).collect();
    let second = election::winner(rest, &IpAddr::V4(plain)).unwrap();
    wait_answerers(&lab, plain, &[second]).await;

    // Shared: two Services, one address, one node.
    let key = json!({"metadata": {"annotations": {"ferrolb.io/sharing-key": "s"}}});
    api.create(&PostParams::default(), &make("share-a", key.clone())).await.unwrap();
    let mut b = key.clone();
    json_patch::merge(&mut b, &json!({"spec": {"ports": [{"name": "p", "port": 443}]}}));
    api.create(&PostParams::default(), &make("share-b", b)).await.unwrap();
    let (sa, sb) = (vip_of("share-a").await, vip_of("share-b").await);
    assert_eq!(sa, sb);
    common::eventually("the shared address to be announced by one node", Duration::from_secs(15), || async {
        (answerers(&lab, sa).await.len() == 1).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_hundreds_of_interfaces_answers_on_a_bounded_number_with_one_thread_each() {
    if !common::lab_prerequisites() {
        return;
    }
    let (lab, speakers, _controller, _vip, winner) = lab_with_service(&[]).await;
    let idx = lab.topology.nodes.iter().position(|n| n.name == winner).unwrap();
    let ns = lab.topology.nodes[idx].namespace.clone();
    // 80 veth pairs on the announcing node (pod veths, say), and a pool that answers on every
    // interface: 161 candidates.
    let batch: String = (0..80)
        .map(|i| {
            format!("link add many{i}a type veth peer name many{i}b\nlink set many{i}a up\nlink set many{i}b up\n")
        })
        .collect();
    let file = std::env::temp_dir().join(format!("ferrolb-many-{}", std::process::id()));
    std::fs::write(&file, batch).unwrap();
    netns::ip_in(&ns, &["-batch", file.to_str().unwrap()]).unwrap();
    let _ = std::fs::remove_file(&file);
    lab.apply_pool("lan", json!({"addresses": ["198.51.100.200-198.51.100.210"], "l2": {"interfaces": ["*"]}}))
        .await
        .unwrap();
    let client = lab.client().await.unwrap();
    let api: Api<Service> = Api::namespaced(client, "default");
    let limit = ferrolb_speaker::l2::announcer::MAX_RESPONDERS;
    let named =
        common::eventually("the condition to name as many interfaces as allowed", Duration::from_secs(30), || async {
            let svc = api.get("web").await.ok()?;
            let c = svc.status?.conditions?.into_iter().find(|c| c.type_ == "ferrolb.io/Announced")?;
            let n = c.message.split(" on ").nth(1)?.split(", ").count();
            (n >= limit).then_some(n)
        })
        .await;
    assert_eq!(named, limit, "answered on more interfaces than allowed");
    let pid = speakers[idx].child.id();
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().count();
    // One receiving thread per responder (two each before: 300+ here), plus the runtime's own.
    assert!(threads < limit + 40, "{threads} threads for {limit} responders");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mismatched_heartbeat_keys_never_make_two_nodes_answer_are_reported_and_a_fixed_key_is_taken_up() {
    if !common::lab_prerequisites() {
        return;
    }
    let dir = std::env::temp_dir();
    let (right, wrong) = (
        dir.join(format!("ferrolb-key-a-{}", std::process::id())),
        dir.join(format!("ferrolb-key-b-{}", std::process::id())),
    );
    std::fs::write(&right, "the-key\n").unwrap();
    std::fs::write(&wrong, "another-key\n").unwrap();
    let lab = Lab::up(3).await.expect("lab up");
    lab.register_cluster().await.unwrap();
    let client = lab.client().await.unwrap();
    lab.apply_pool("lan", json!({"addresses": ["198.51.100.200-198.51.100.210"]})).await.unwrap();
    let _controller = lab.start_controller().unwrap();
    // node-3 was rendered with another key (as two `helm template` runs give).
    let _speakers: Vec<_> = (0..3)
        .map(|i| {
            let key = if i == 2 { &wrong } else { &right };
            lab.start_speaker(i, &["--peer-secret-file", key.to_str().unwrap()]).unwrap()
        })
        .collect();
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    for i in 0..6 {
        let svc: Service = serde_json::from_value(json!({"metadata": {"name": format!("web{i}")},
            "spec": {"type": "LoadBalancer", "selector": {"app": "web"}, "ports": [{"port": 80}]}}))
        .unwrap();
        api.create(&PostParams::default(), &svc).await.unwrap();
    }
    let vips: Vec<std::net::Ipv4Addr> = common::eventually("six addresses", Duration::from_secs(20), || async {
        let mut v = Vec::new();
        for i in 0..6 {
            match lab.service_ips(&format!("web{i}")).await.first()? {
                IpAddr::V4(a) => v.push(*a),
                IpAddr::V6(_) => return None,
            }
        }
        Some(v)
    })
    .await;
    // Every address answered, by exactly one node, again and again.
    common::eventually("every address answered once", Duration::from_secs(20), || async {
        for v in &vips {
            if answerers(&lab, *v).await.len() != 1 {
                return None;
            }
        }
        Some(())
    })
    .await;
    for _ in 0..3 {
        for v in &vips {
            let who = answerers(&lab, *v).await;
            assert_eq!(who.len(), 1, "{v} answered by {who:?}");
        }
    }
    // Said loudly: each node counts the peers whose heartbeats it cannot authenticate.
    for (i, want) in [(0, 1.0), (2, 2.0)] {
        let ns = lab.topology.nodes[i].namespace.clone();
        let got = probe::metric(&probe::speaker_metrics(&ns).await.unwrap(), "ferrolb_speaker_misconfigured_peers");
        assert_eq!(got, Some(want), "node {i}");
    }
    // And as Warnings on the Nodes (`kubectl describe node`): node-1 about node-3, node-3 about both.
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    for (node, peers) in [("node-1", &["node-3"][..]), ("node-3", &["node-1", "node-2"][..])] {
        common::eventually(&format!("{node}'s HeartbeatKeyMismatch Events"), Duration::from_secs(20), || async {
            let lp = ListParams::default().fields(&format!("involvedObject.name={node},involvedObject.kind=Node"));
            let list = events.list(&lp).await.ok()?;
            let about: Vec<String> = list
                .items
                .iter()
                .filter(|e| {
                    e.reason.as_deref() == Some("HeartbeatKeyMismatch") && e.type_.as_deref() == Some("Warning")
                })
                .filter_map(|e| e.message.clone())
                .collect();
            peers.iter().all(|p| about.iter().any(|m| m.contains(&format!("node {p} ")))).then_some(())
        })
        .await;
    }
    // The key is put right in node-3's file (as the kubelet rewrites a mounted Secret): taken up
    // without a restart, and the peers authenticate each other again.
    std::fs::write(&wrong, "the-key\n").unwrap();
    for i in 0..3 {
        let ns = lab.topology.nodes[i].namespace.clone();
        common::eventually(&format!("node {i} to authenticate every peer"), Duration::from_secs(20), || {
            let ns = ns.clone();
            async move {
                let text = probe::speaker_metrics(&ns).await?;
                let ok = probe::metric(&text, "ferrolb_speaker_misconfigured_peers") == Some(0.0)
                    && probe::metric(&text, "ferrolb_speaker_live_peers") == Some(3.0);
                ok.then_some(())
            }
        })
        .await;
    }
    let _ = std::fs::remove_file(&right);
    let _ = std::fs::remove_file(&wrong);
}

/// A speaker started while the API server fails its writes keeps trying, registers and announces:
/// a transient error at start is not a crash (the chaos soak found a restarting speaker exiting on
/// one 500 from its Lease write; under a crash loop's back-off it would outlast its restart grace).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_speaker_started_while_the_api_fails_writes_registers_and_announces() {
    if !common::lab_prerequisites() {
        return;
    }
    let lab = Lab::up(1).await.expect("lab up");
    lab.register_cluster().await.unwrap();
    lab.api.shared().fail_next_writes_to("leases", 4, 500);
    let mut speaker = lab.start_speaker(0, &[]).unwrap();
    let client = lab.client().await.unwrap();
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(client.clone(), "ferrolb-system");
    common::eventually("the speaker's Lease", Duration::from_secs(30), || async {
        leases.get_opt("speaker-node-1").await.ok().flatten()
    })
    .await;
    assert!(speaker.child.try_wait().unwrap().is_none(), "the speaker exited");
    let refused = lab.api.shared().requests().iter().filter(|r| r.path.contains("/leases") && r.code == 500).count();
    assert_eq!(refused, 4, "the speaker met every injected failure");
    let _controller = lab.start_controller().unwrap();
    lab.apply_pool("lan", json!({"addresses": ["198.51.100.200-198.51.100.210"]})).await.unwrap();
    let api: Api<Service> = Api::namespaced(client, "default");
    let svc: Service = serde_json::from_value(json!({"metadata": {"name": "web"},
        "spec": {"type": "LoadBalancer", "selector": {"app": "web"}, "ports": [{"port": 80}]}}))
    .unwrap();
    api.create(&PostParams::default(), &svc).await.unwrap();
    let vip = common::eventually("an address", Duration::from_secs(20), || async {
        match lab.service_ips("web").await.first()? {
            IpAddr::V4(a) => Some(*a),
            IpAddr::V6(_) => None,
        }
    })
    .await;
    common::eventually("node-1 to answer", Duration::from_secs(20), || async {
        (answerers(&lab, vip).await == ["node-1".to_string()].into()).then_some(())
    })
    .await;
    assert!(speaker.child.try_wait().unwrap().is_none(), "the speaker exited");
}
