//! BGP mode in the routed lab: BIRD on every node (driven by the speaker), FRR on the upstream
//! router, real sessions, real ECMP, real TCP from a client behind the router. Needs root, BIRD 2
//! and FRR; under CI=true it must run.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ferrolb_crds::BGPPeer;
use ferrolb_tests::lab::router::{Router, RouterConfig};
use ferrolb_tests::lab::streams::{Prober, Stream, StreamReport};
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
    all_established_on(lab, peer, lab.topology.nodes.len()).await;
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
    // The controller sums the nodes up: `kubectl get bgppeers` shows 3/3 and Ready.
    let peers: Api<BGPPeer> = Api::all(lab.client().await.unwrap());
    common::eventually("the BGPPeer's summary", Duration::from_secs(10), || async {
        let s = peers.get("router").await.ok()?.status?;
        let ready = s.conditions.iter().find(|c| c.type_ == "Ready")?;
        (s.selected == Some(3) && s.established == Some(3) && ready.status == "True").then_some(())
    })
    .await;
    // `ferrolb status` shows the sessions of every node and the nodes advertising the Service.
    let out = std::process::Command::new(ferrolb_tests::lab::processes::binary("ferrolb").unwrap())
        .args(["status", "--kubeconfig"])
        .arg(lab.kubeconfig())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let router_line = text.lines().find(|l| l.starts_with("router ")).unwrap_or_default();
    assert!(
        router_line.contains("3/3")
            && router_line.contains("node-1 Established, node-2 Established, node-3 Established"),
        "{text}"
    );
    let web_line = text.lines().find(|l| l.starts_with("default/web")).unwrap_or_default();
    assert!(web_line.contains("BGP from node-") && web_line.matches("node-").count() == 3, "{text}");
}

/// `externalTrafficPolicy: Local`: only nodes with a ready endpoint advertise, and the routes
/// follow the endpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_service_is_advertised_only_from_nodes_with_a_ready_endpoint() {
    if !daemons() {
        return;
    }
    let lab = Lab::build(3, true).await.expect("lab up");
    let (_running, router) = lab.start_bgp_cluster(&RouterConfig::default(), json!({})).await.unwrap();
    bgp_pool(&lab, json!({})).await;
    let ip = service(&lab, "local", json!({"externalTrafficPolicy": "Local"})).await[0];
    next_hops_become(&lab, &router, ip, &[0, 1, 2], Duration::from_secs(30)).await;
    lab.set_pod_ready("echo", "node-2", false).await.unwrap();
    next_hops_become(&lab, &router, ip, &[0, 2], Duration::from_secs(10)).await;
    // Every connection is answered by a pod on the node it came in through (the client address
    // is kept, so the pod sees the remote client).
    let remote = lab.topology.routed.as_ref().unwrap().remote.clone();
    let answers: Vec<String> = tokio::task::spawn_blocking(move || {
        (0..40).filter_map(|_| probe::tcp_once(&remote.namespace, SocketAddr::new(ip, 80))).collect()
    })
    .await
    .unwrap();
    assert_eq!(answers.len(), 40);
    assert!(answers.iter().all(|a| a.contains("client=192.0.2.100") && !a.contains("pod=echo-node-2")), "{answers:?}");
    lab.set_pod_ready("echo", "node-2", true).await.unwrap();
    next_hops_become(&lab, &router, ip, &[0, 1, 2], Duration::from_secs(10)).await;
}

/// A wrong ASN or a wrong password keeps the session down, and the BGPPeer's status, an Event and
/// the metric say why; fixing it brings the session up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_asn_or_password_keeps_the_session_down_and_says_why() {
    if !daemons() {
        return;
    }
    let lab = Lab::build(2, true).await.expect("lab up");
    let router_cfg = RouterConfig { password: Some("right-one".into()), ..RouterConfig::default() };
    let client = lab.client().await.unwrap();
    lab.register_cluster().await.unwrap();
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), "ferrolb-system");
    let secret = |pw: &str| -> k8s_openapi::api::core::v1::Secret {
        serde_json::from_value(json!({"metadata": {"name": "router-md5"}, "stringData": {"password": pw}})).unwrap()
    };
    secrets.create(&Default::default(), &secret("right-one")).await.unwrap();
    let peer = |asn: u32| json!({"peerAddress": "198.51.100.1", "peerASN": asn, "myASN": 64513, "passwordSecret": {"name": "router-md5"}});
    // The router's ASN mistyped.
    lab.apply_peer("router", peer(64599)).await.unwrap();
    let _router = lab.start_router(&router_cfg).unwrap();
    let _controller = lab.start_controller().unwrap();
    let _speakers: Vec<_> = (0..2).map(|i| lab.start_bgp_speaker(i, &[]).unwrap()).collect();
    let down_because = |needle: &'static str| {
        let lab = &lab;
        async move {
            common::eventually(&format!("both nodes down saying {needle:?}"), Duration::from_secs(30), || async {
                let e = node_entries(lab, "router").await;
                let said = |m: &Option<String>| m.as_deref().is_some_and(|m| m.contains(needle));
                (e.len() == 2 && e.values().all(|(s, m)| s != "Established" && said(m))).then_some(e)
            })
            .await
        }
    };
    eprintln!("wrong ASN: {:?}", down_because("Bad peer AS").await);
    let peers: Api<BGPPeer> = Api::all(client.clone());
    let ready = common::eventually("Ready=False naming both nodes", Duration::from_secs(10), || async {
        let s = peers.get("router").await.ok()?.status?;
        let ready = s.conditions.into_iter().find(|c| c.type_ == "Ready")?;
        (ready.status == "False" && ready.message.contains("node-1 (Idle: BGP Error: Bad peer AS)")).then_some(ready)
    })
    .await;
    assert!(ready.message.contains("node-2"), "{}", ready.message);
    let m = probe::speaker_metrics(&lab.topology.nodes[0].namespace).await.unwrap_or_default();
    assert_eq!(probe::metric(&m, "ferrolb_speaker_bgp_session_up{peer=\"router\"}"), Some(0.0), "{m}");
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::all(client.clone());
    let down = common::eventually("a SessionDown Event", Duration::from_secs(10), || async {
        let list = events.list(&Default::default()).await.ok()?;
        list.items.into_iter().find(|e| {
            e.reason.as_deref() == Some("SessionDown")
                && e.message.as_deref().is_some_and(|m| m.contains("Bad peer AS"))
        })
    })
    .await;
    assert_eq!((down.type_.as_deref(), down.involved_object.name.as_deref()), (Some("Warning"), Some("router")));
    // The right ASN, the wrong password: the router drops every packet; still down, and said so.
    secrets.replace("router-md5", &Default::default(), &secret("wrong-one")).await.unwrap();
    lab.apply_peer("router", peer(64512)).await.unwrap();
    eprintln!("wrong password: {:?}", down_because("differs from the router's").await);
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(node_entries(&lab, "router").await.values().all(|(s, _)| s != "Established"));
    }
    // A missing Secret is refused with its name.
    secrets.delete("router-md5", &Default::default()).await.unwrap();
    eprintln!("no Secret: {:?}", down_because("password Secret \"router-md5\" has no key").await);
    // Fixed: up.
    secrets.create(&Default::default(), &secret("right-one")).await.unwrap();
    all_established_on(&lab, "router", 2).await;
}

async fn all_established_on(lab: &Lab, peer: &str, nodes: usize) {
    let names: BTreeSet<String> = lab.topology.nodes.iter().take(nodes).map(|n| n.name.clone()).collect();
    common::eventually(&format!("nodes Established with {peer}"), Duration::from_secs(30), || async {
        let up: BTreeSet<String> = node_entries(lab, peer)
            .await
            .into_iter()
            .filter(|(_, (s, _))| s == "Established")
            .map(|(n, _)| n)
            .collect();
        (up == names).then_some(())
    })
    .await;
}

/// Communities from the pool arrive at the router (eBGP); LOCAL_PREF over an iBGP session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn communities_and_local_pref_reach_the_router() {
    if !daemons() {
        return;
    }
    let lab = Lab::build(2, true).await.expect("lab up");
    let ibgp = RouterConfig { asn: 64512, node_asn: 64512, ..RouterConfig::default() };
    let (_running, router) = lab.start_bgp_cluster(&ibgp, json!({})).await.unwrap();
    bgp_pool(&lab, json!({"communities": ["64512:100", "no-export", "4200000000:7:9"], "localPref": 250})).await;
    let ip = service(&lab, "tagged", json!({})).await[0];
    next_hops_become(&lab, &router, ip, &[0, 1], Duration::from_secs(30)).await;
    let paths = router.bgp_paths(&host(ip));
    assert_eq!(paths.len(), 2, "{paths:?}");
    for p in &paths {
        assert_eq!(p["locPrf"], 250, "{p}");
        let communities = p["community"]["string"].as_str().unwrap_or_default();
        assert!(communities.contains("64512:100") && communities.contains("no-export"), "{p}");
        assert!(p["largeCommunity"]["string"].as_str().unwrap_or_default().contains("4200000000:7:9"), "{p}");
    }
}

/// A node dies (speaker and BIRD killed, link down): with BFD the router drops its next hop at
/// once and new connections all succeed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_bfd_a_dead_nodes_next_hop_leaves_the_router_at_once() {
    if !daemons() {
        return;
    }
    let lab = Lab::build(3, true).await.expect("lab up");
    let cfg = RouterConfig { bfd: Some((100, 100, 3)), ..RouterConfig::default() };
    let bfd = json!({"bfd": {"receiveIntervalMs": 100, "transmitIntervalMs": 100, "detectMultiplier": 3}});
    let (mut running, router) = lab.start_bgp_cluster(&cfg, bfd).await.unwrap();
    bgp_pool(&lab, json!({})).await;
    all_established(&lab, "router").await;
    common::eventually("BFD up with every node (both families)", Duration::from_secs(30), || async {
        (router.bfd_up() == 6).then_some(())
    })
    .await;
    let ip = service(&lab, "web", json!({})).await[0];
    next_hops_become(&lab, &router, ip, &[0, 1, 2], Duration::from_secs(20)).await;
    let death = lab.bgp_node_death(&mut running, &router, 0, SocketAddr::new(ip, 80)).await.unwrap();
    eprintln!("{death:?}");
    assert!(death.router_dropped < Duration::from_secs(3), "BFD did not act: {death:?}");
    assert!(death.client_recovered < Duration::from_secs(3), "{death:?}");
    next_hops_become(&lab, &router, ip, &[1, 2], Duration::from_secs(1)).await;
    let all_ok = by_ingress_node(&lab, SocketAddr::new(ip, 80), 60).await;
    assert_eq!(all_ok.values().sum::<usize>(), 60, "{all_ok:?}");
    assert!(!all_ok.contains_key("node-1"), "{all_ok:?}");
}

/// SIGTERM of a node's speaker (the node goes away: cordoned first, as a drain does): its routes
/// are withdrawn first, and no new connection fails meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_withdraws_first_and_no_connection_fails() {
    if !daemons() {
        return;
    }
    let lab = Lab::build(3, true).await.expect("lab up");
    let (mut running, router) = lab.start_bgp_cluster(&RouterConfig::default(), json!({})).await.unwrap();
    bgp_pool(&lab, json!({})).await;
    let ip = service(&lab, "web", json!({})).await[0];
    next_hops_become(&lab, &router, ip, &[0, 1, 2], Duration::from_secs(30)).await;
    let remote = lab.topology.routed.as_ref().unwrap().remote.namespace.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prober = {
        let stop = stop.clone();
        tokio::task::spawn_blocking(move || {
            let (mut ok, mut failed) = (0, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match probe::tcp_once(&remote, SocketAddr::new(ip, 80)) {
                    Some(_) => ok += 1,
                    None => failed += 1,
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            (ok, failed)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    lab.cordon(&lab.topology.nodes[0].name).await.unwrap();
    let exited = tokio::task::block_in_place(|| running.speakers[0].terminate()).unwrap();
    assert!(exited.success(), "{exited}");
    // Gone from the router by the time the speaker has exited.
    let hops = router.fib_next_hops(&host(ip));
    assert!(node_of_any(&lab, &hops, 0).is_none(), "node-1 still a next hop after its speaker exited: {hops:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = prober.await.unwrap();
    assert_eq!(failed, 0, "{failed} of {} connections failed", ok + failed);
    assert!(ok > 50, "{ok}");
}

/// A rolling restart of every speaker (SIGTERM, a new one a second later) with peers that have
/// graceful restart: BIRD dies with each speaker, the router keeps that node's routes (stale)
/// until the new BIRD (started to recover, `-R`: it sends its end-of-RIB only after its routes)
/// is back, every node stays a next hop, the router's hashing moves no flow, and neither a
/// long-lived stream nor a new connection through the router fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_with_graceful_restart_keeps_every_route_and_connection() {
    if !daemons() {
        return;
    }
    let lab = Lab::build(3, true).await.expect("lab up");
    let (mut running, router) =
        lab.start_bgp_cluster(&RouterConfig::default(), json!({"gracefulRestart": true})).await.unwrap();
    running.backends.extend(lab.start_line_echo(9000).unwrap());
    bgp_pool(&lab, json!({})).await;
    let vip: std::net::Ipv4Addr = "203.0.113.230".parse().unwrap();
    lab.line_service("stream", "echo", vip, false).await.unwrap();
    let ip = IpAddr::V4(vip);
    next_hops_become(&lab, &router, ip, &[0, 1, 2], Duration::from_secs(30)).await;
    let remote = lab.topology.routed.as_ref().unwrap().remote.namespace.clone();
    let streams: Vec<Stream> = (0..6).map(|_| Stream::open(&remote, SocketAddr::new(ip, 9000))).collect();
    let prober = Prober::start(&remote, vec![SocketAddr::new(ip, 80)]);
    let client: IpAddr = lab.topology.routed.as_ref().unwrap().remote.ipv4.into();
    let flows = || router.flow_next_hops(client, ip, "eth1", 40000..40300);
    for i in 0..3 {
        let before = flows();
        let mut old = running.speakers.remove(i);
        let exited = tokio::task::block_in_place(|| old.terminate()).unwrap();
        assert!(exited.success(), "{exited}");
        let hops = router.fib_next_hops(&host(ip));
        assert!(node_of_any(&lab, &hops, i).is_some(), "node-{} left the router while restarting: {hops:?}", i + 1);
        tokio::time::sleep(Duration::from_secs(1)).await;
        running.speakers.insert(i, lab.start_bgp_speaker(i, &[]).unwrap());
        let ns = lab.topology.nodes[i].namespace.clone();
        common::eventually("the new speaker's session to be up", Duration::from_secs(30), || async {
            let text = probe::speaker_metrics(&ns).await?;
            text.lines().any(|l| l.starts_with("ferrolb_speaker_bgp_session_up{") && l.ends_with(" 1")).then_some(())
        })
        .await;
        next_hops_become(&lab, &router, ip, &[0, 1, 2], Duration::from_secs(5)).await;
        let moved = before.iter().zip(flows()).filter(|(b, a)| **b != *a).count();
        assert_eq!(moved, 0, "the router moved {moved} of 300 flows when node-{} restarted", i + 1);
    }
    let (ok, failed) = tokio::task::block_in_place(|| prober.stop());
    assert!(failed.is_empty(), "{} of {} connections failed: {failed:?}", failed.len(), ok + failed.len() as u64);
    let reports: Vec<StreamReport> = tokio::task::block_in_place(|| streams.into_iter().map(Stream::stop).collect());
    for r in &reports {
        assert_eq!(r.cut, None, "a stream was cut: {r:?}");
        assert_eq!(r.echoed, r.sent, "{r:?}");
    }
}

fn node_of_any(lab: &Lab, hops: &[IpAddr], idx: usize) -> Option<IpAddr> {
    hops.iter().copied().find(|h| node_of(lab, *h) == Some(idx))
}

/// An address change only changes kernel routes (BIRD's configuration stays as it is); adding
/// a peer reconfigures BIRD without resetting the sessions it already has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_never_reconfigure_bird_and_a_new_peer_resets_no_session() {
    if !daemons() {
        return;
    }
    let lab = Lab::build(2, true).await.expect("lab up");
    let (_running, router) = lab.start_bgp_cluster(&RouterConfig::default(), json!({})).await.unwrap();
    bgp_pool(&lab, json!({})).await;
    let conf = |i: usize| std::fs::read_to_string(lab.bird_dir(i).join("bird.conf")).unwrap_or_default();
    // The pool's route class is in the file before any address exists.
    common::eventually("BIRD configured for the pool", Duration::from_secs(30), || async {
        (conf(0).contains("krt_metric = 1") && conf(1).contains("krt_metric = 1")).then_some(())
    })
    .await;
    all_established_on(&lab, "router", 2).await;
    let before = (conf(0), conf(1));
    let up = router.establishments();
    assert_eq!(up.len(), 4, "two nodes, two families: {up:?}");
    for name in ["first", "second", "third"] {
        let ip = service(&lab, name, json!({})).await[0];
        next_hops_become(&lab, &router, ip, &[0, 1], Duration::from_secs(10)).await;
    }
    assert_eq!((conf(0), conf(1)), before, "a new address changed BIRD's configuration");
    // A peer that answers nobody: BIRD is reconfigured, and the router's sessions stay as they were.
    lab.apply_peer("far", json!({"peerAddress": "198.51.100.250", "peerASN": 64600, "myASN": 64513})).await.unwrap();
    common::eventually("BIRD to have the new peer", Duration::from_secs(10), || async {
        (conf(0).contains("BGPPeer far") && conf(1).contains("BGPPeer far")).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(router.establishments(), up, "a session was reset");
    let e = node_entries(&lab, "far").await;
    assert!(
        e.values().all(|(s, m)| s != "Established" && m.as_deref().is_some_and(|m| m.contains("198.51.100.250:179"))),
        "{e:?}"
    );
}

/// `--bgp external`: node-1 runs FRR with docs/examples/frr-external.conf as written there (its
/// placeholders filled in) beside a speaker that only writes the kernel table; the other nodes
/// run BIRD. The router gets node-1's next hop with the others', connections through node-1 reach
/// the pods, and a deleted Service is withdrawn through FRR too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_frr_exports_the_speakers_table() {
    use ferrolb_tests::lab::router::{NODE_ASN, ROUTER_ASN};
    use ferrolb_tests::lab::topology::ROUTER_LAN;
    if !daemons() {
        return;
    }
    let lab = Lab::build(3, true).await.expect("lab up");
    let c = RouterConfig::default();
    lab.register_cluster().await.unwrap();
    lab.apply_router_peers(&c, json!({})).await.unwrap();
    let router = lab.start_router(&c).unwrap();
    let node = &lab.topology.nodes[0];
    let config = include_str!("../../docs/examples/frr-external.conf")
        .replace("<NODE_ASN>", &NODE_ASN.to_string())
        .replace("<NODE_ADDRESS>", &node.ipv4.to_string())
        .replace("<ROUTER_ADDRESS>", &ROUTER_LAN.0.to_string())
        .replace("<ROUTER_ASN>", &ROUTER_ASN.to_string());
    assert!(!config.lines().any(|l| !l.starts_with('!') && l.contains('<')), "a placeholder left: {config}");
    let _node_frr = Router::start_in(&node.namespace, &lab.dir.join("frr-node-1"), &config).unwrap();
    let _controller = lab.start_controller().unwrap();
    let _external = lab.start_speaker(0, &["--bgp", "external"]).unwrap();
    let _bird = (1..3).map(|i| lab.start_bgp_speaker(i, &[]).unwrap()).collect::<Vec<_>>();
    let _backends = lab.start_backends("echo", 8080).await.unwrap();
    bgp_pool(&lab, json!({})).await;
    let ip = service(&lab, "web", json!({})).await[0];
    next_hops_become(&lab, &router, ip, &[0, 1, 2], Duration::from_secs(30)).await;
    let counts = by_ingress_node(&lab, SocketAddr::new(ip, 80), 60).await;
    assert_eq!(counts.values().sum::<usize>(), 60, "{counts:?}");
    assert!(counts.contains_key(&node.name), "no connection came in through {}: {counts:?}", node.name);
    // The speaker with an external daemon reports no sessions of its own.
    let entries = node_entries(&lab, "router").await;
    assert!(!entries.contains_key(&node.name), "{entries:?}");
    let api: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(lab.client().await.unwrap(), "default");
    api.delete("web", &Default::default()).await.unwrap();
    next_hops_become(&lab, &router, ip, &[], Duration::from_secs(20)).await;
}
