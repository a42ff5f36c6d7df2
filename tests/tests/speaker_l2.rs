//! Real ARP and NDP in the lab: exactly one node answers for each address, the elected one;
//! nobody answers for an address that is not allocated; when the announcing speaker is killed,
//! another node takes over and the client's neighbour entry follows the gratuitous frames.

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ferrolb_speaker::election;
use ferrolb_tests::lab::{Lab, netns, probe};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

fn prerequisites() -> bool {
    match netns::check_prerequisites() {
        Ok(()) => true,
        Err(e) if common::in_ci() => panic!("the lab cannot run under CI=true: {e}"),
        Err(e) => {
            eprintln!("SKIPPED: {e}");
            false
        }
    }
}

fn mac_of(lab: &Lab, node: &str) -> String {
    lab.topology.nodes.iter().find(|n| n.name == node).unwrap().mac.clone()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_answers_and_another_takes_over_when_it_dies() {
    if !prerequisites() {
        return;
    }
    let lab = Lab::up(3).await.expect("lab up");
    lab.register_cluster().await.unwrap();
    let client = lab.client().await.unwrap();
    let pool = json!({"apiVersion": "ferrolb.io/v1alpha1", "kind": "IPPool", "metadata": {"name": "lan"},
        "spec": {"addresses": ["198.51.100.200-198.51.100.210", "2001:db8:100::200-2001:db8:100::210"]}});
    Api::<ferrolb_crds::IPPool>::all(client.clone())
        .patch("lan", &PatchParams::apply("lab"), &Patch::Apply(pool))
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
    // Several probes in a row: never a second answer.
    for _ in 0..3 {
        let macs = one_mac(Some(v4), None).await;
        assert_eq!(macs.len(), 1, "more than one MAC answered: {macs:?}");
    }
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
    let killed = Instant::now();
    speakers[idx].kill();
    let want_next = mac_of(&lab, &next);
    let took = common::eventually(
        "the client's neighbour entry to move to the next node",
        Duration::from_secs(10),
        || async {
            (probe::neighbour(&ns, &v4.to_string()).as_deref() == Some(want_next.as_str())).then(|| killed.elapsed())
        },
    )
    .await;
    eprintln!("failover after kill -9: {took:?}");
    let macs = one_mac(Some(v4), None).await;
    assert_eq!(macs.len(), 1);
    assert_eq!(probe::mac_text(macs.iter().next().unwrap()), want_next);
}
