//! BGP mode in the routed lab: BIRD on every node (driven by the speaker), FRR on the upstream
//! router, real sessions, real ECMP, real TCP from a client behind the router. Needs root, BIRD 2
//! and FRR; under CI=true it must run.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ferrolb_crds::BGPPeer;
use ferrolb_tests::lab::router::{Router, RouterConfig};
use ferrolb_tests::lab::{Lab, probe};
use kube::Api;
use serde_json::json;

/// Whether BIRD and FRR are here (fails under CI=true when not).
fn daemons() -> bool {
    if !common::lab_prerequisites() {
        return false;
    }
    let missing: Vec<&str> =
        ["bird", "birdc", "vtysh", "/usr/lib/frr/bgpd"].into_iter().filter(|t| which(t).is_none()).collect();
    match missing.as_slice() {
        [] => true,
        m if common::in_ci() => panic!("BGP tests cannot run under CI=true: missing {m:?} (apt install bird2 frr)"),
        m => {
            eprintln!("SKIPPED: missing {m:?} (apt install bird2 frr)");
            false
        }
    }
}

fn which(tool: &str) -> Option<std::path::PathBuf> {
    if tool.starts_with('/') {
        return std::path::Path::new(tool).exists().then(|| tool.into());
    }
    std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).map(|p| p.join(tool)).find(|p| p.is_file()))
}

const POOL: &str = "fabric";

async fn bgp_pool(lab: &Lab, extra: serde_json::Value) {
    let mut bgp = json!({"enabled": true});
    bgp.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    lab.apply_pool(POOL, json!({"addresses": ["203.0.113.224/28", "2001:db8:300::/120"], "bgp": bgp})).await.unwrap();
}

async fn service(lab: &Lab, name: &str, spec: serde_json::Value) -> Vec<IpAddr> {
    let mut s = json!({"type": "LoadBalancer", "selector": {"app": "echo"}, "ports": [{"name": "web", "port": 80, "targetPort": "echo"}]});
    s.as_object_mut().unwrap().extend(spec.as_object().unwrap().clone());
    let svc: k8s_openapi::api::core::v1::Service =
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": s})).unwrap();
    Api::namespaced(lab.client().await.unwrap(), "default").create(&Default::default(), &svc).await.unwrap();
    let want = svc.spec.as_ref().and_then(|s| s.ip_families.as_ref()).map_or(1, Vec::len);
    common::eventually("the Service's addresses", Duration::from_secs(20), || async {
        let ips = lab.service_ips(name).await;
        (ips.len() == want).then_some(ips)
    })
    .await
}

fn host(ip: IpAddr) -> String {
    if ip.is_ipv4() { format!("{ip}/32") } else { format!("{ip}/128") }
}

/// The node an address of the router's next hops belongs to (IPv6 next hops are link-local).
fn node_of(lab: &Lab, hop: IpAddr) -> Option<usize> {
    lab.topology.nodes.iter().position(|n| {
        IpAddr::V4(n.ipv4) == hop
            || IpAddr::V6(n.ipv6) == hop
            || ferrolb_tests::lab::netns::ip_in(
                &n.namespace,
                &["-6", "-o", "addr", "show", "dev", "eth0", "scope", "link"],
            )
            .is_ok_and(|out| out.contains(&format!("{hop}/")))
    })
}

/// Waits until the router forwards `ip` to exactly `nodes`.
async fn next_hops_become(lab: &Lab, router: &Router, ip: IpAddr, nodes: &[usize], within: Duration) {
    let want: BTreeSet<usize> = nodes.iter().copied().collect();
    let prefix = host(ip);
    let mut last = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        last = router.fib_next_hops(&prefix);
        let got: Option<BTreeSet<usize>> = last.iter().map(|h| node_of(lab, *h)).collect();
        if got.as_ref() == Some(&want) && last.len() == want.len() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{prefix}: the router forwards to {last:?}, not to nodes {want:?}");
}

/// Opens `n` connections from the remote client to `addr`; the node each came in through (the
/// address the pod saw, masqueraded by that node) counted.
async fn by_ingress_node(lab: &Lab, addr: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let remote = lab.topology.routed.as_ref().unwrap().remote.namespace.clone();
    let answers: Vec<String> =
        tokio::task::spawn_blocking(move || (0..n).filter_map(|_| probe::tcp_once(&remote, addr)).collect())
            .await
            .unwrap();
    let mut counts = BTreeMap::new();
    for a in answers {
        let client = a.split_whitespace().find_map(|w| w.strip_prefix("client=")).unwrap_or_default();
        let client: IpAddr = client
            .parse()
            .or_else(|_| client.parse::<SocketAddr>().map(|s| s.ip()))
            .unwrap_or_else(|_| panic!("{a:?}"));
        // A pod on the ingress node sees the node's pod-side gateway, others its LAN address.
        let node = lab.topology.nodes.iter().enumerate().find(|(i, n)| {
            IpAddr::V4(n.ipv4) == client
                || IpAddr::V6(n.ipv6) == client
                || client == IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 64 * *i as u8 + 1))
                || client.to_string() == format!("2001:db8:1:{}::1", i + 1)
        });
        *counts.entry(node.map_or(format!("? {client}"), |(_, n)| n.name.clone())).or_default() += 1;
    }
    counts
}

async fn node_entries(lab: &Lab, peer: &str) -> BTreeMap<String, (String, Option<String>)> {
    let peers: Api<BGPPeer> = Api::all(lab.client().await.unwrap());
    let Ok(p) = peers.get(peer).await else { return BTreeMap::new() };
    p.status.map(|s| s.nodes.into_iter().map(|n| (n.node, (n.state, n.message))).collect()).unwrap_or_default()
}

async fn all_established(lab: &Lab, peer: &str) {
    let nodes: BTreeSet<String> = lab.topology.nodes.iter().map(|n| n.name.clone()).collect();
    common::eventually(&format!("every node Established with {peer}"), Duration::from_secs(30), || async {
        let entries = node_entries(lab, peer).await;
        let up: BTreeSet<String> =
            entries.iter().filter(|(_, (s, _))| s == "Established").map(|(n, _)| n.clone()).collect();
        (up == nodes).then_some(())
    })
    .await;
}

/// Sessions come up from every node, a Cluster Service's address reaches the router with one next
/// hop per node, and 300 connections from behind the router spread over the nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_service_is_advertised_by_every_node_and_spread_by_ecmp() {
    if !daemons() {
        return;
    }
    let lab = Lab::build(3, true).await.expect("lab up");
    let (_running, router) = lab.start_bgp_cluster(&RouterConfig::default(), json!({})).await.unwrap();
    bgp_pool(&lab, json!({})).await;
    all_established(&lab, "router").await;
    all_established(&lab, "router-v6").await;
    let ips = service(&lab, "web", json!({"ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv4", "IPv6"]})).await;
    for ip in &ips {
        next_hops_become(&lab, &router, *ip, &[0, 1, 2], Duration::from_secs(20)).await;
    }
    let v4 = ips.iter().copied().find(IpAddr::is_ipv4).unwrap();
    let counts = by_ingress_node(&lab, SocketAddr::new(v4, 80), 300).await;
    eprintln!("connections per ingress node: {counts:?}");
    let total: usize = counts.values().sum();
    assert_eq!(total, 300, "{counts:?}");
    assert_eq!(counts.len(), 3, "every node carries connections: {counts:?}");
    let (min, max) = (counts.values().min().unwrap(), counts.values().max().unwrap());
    assert!(*max as f64 <= 1.5 * *min as f64, "busiest {max} > 1.5 x least busy {min}: {counts:?}");
    // IPv6 through the IPv6 sessions, end to end.
    let v6 = ips.iter().copied().find(IpAddr::is_ipv6).unwrap();
    let counts6 = by_ingress_node(&lab, SocketAddr::new(v6, 80), 30).await;
    assert_eq!(counts6.values().sum::<usize>(), 30, "{counts6:?}");
    // The speakers say so: metrics, and the Service's condition.
    let m = probe::speaker_metrics(&lab.topology.nodes[0].namespace).await.unwrap_or_default();
    assert_eq!(probe::metric(&m, "ferrolb_speaker_bgp_session_up{peer=\"router\"}"), Some(1.0), "{m}");
    assert_eq!(probe::metric(&m, "ferrolb_speaker_bgp_routes"), Some(2.0), "{m}");
    let api: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(lab.client().await.unwrap(), "default");
    let message = common::eventually("the Announced condition", Duration::from_secs(10), || async {
        let svc = api.get("web").await.ok()?;
        let c = svc.status?.conditions?.into_iter().find(|c| c.type_ == "ferrolb.io/Announced")?;
        c.message.contains("by BGP").then_some(c.message)
    })
    .await;
    assert!(message.contains("also from"), "{message}");
}
