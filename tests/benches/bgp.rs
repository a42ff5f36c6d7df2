//! BGP mode in the routed lab (root, BIRD 2 on three nodes, FRR upstream): the time from a
//! Service's creation to its route at the router with every next hop (100 Services one after
//! another); 1,000 addresses at once (allocated, in one node's table, complete at the router);
//! and a node's death with BFD (100 ms x 3) over 10 runs, measured at the router's forwarding
//! table and at a client opening a connection every 10 ms; then once without BFD (hold time).
//! Also which connections of the remaining nodes the router's ECMP moves when a node leaves.
//! `--only ecmp` runs that part alone.
//!
//! `cargo build --release --workspace --bins && cargo bench -p ferrolb-tests --bench bgp`

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use ferrolb_tests::lab::router::{Router, RouterConfig};
use ferrolb_tests::lab::{Lab, netns};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, PostParams};
use serde_json::json;

const DEATHS: usize = 10;

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn service(name: &str) -> Service {
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"type": "LoadBalancer",
        "selector": {"app": "echo"}, "ports": [{"name": "web", "port": 80, "targetPort": "echo"}]}}))
    .unwrap()
}

/// The number of routes in the router's kernel for the pool's prefix with all `hops` next hops.
fn complete_at_router(router: &Router, hops: usize) -> usize {
    let Ok(out) = netns::ip_in(&router.namespace, &["-4", "route", "show", "proto", "bgp"]) else { return 0 };
    // One line per route; multipath routes continue on indented "nexthop" lines.
    let mut complete = 0;
    let mut current = 0;
    for line in out.lines() {
        if line.starts_with(char::is_whitespace) {
            current += usize::from(line.contains("nexthop"));
        } else {
            if current == hops {
                complete += 1;
            }
            current = usize::from(line.contains(" via "));
        }
    }
    complete + usize::from(current == hops)
}

async fn lab_with(
    cfg: &RouterConfig,
    peer_extra: serde_json::Value,
) -> (Lab, ferrolb_tests::lab::processes::Running, Router) {
    let lab = Lab::build(3, true).await.expect("lab up");
    let (running, router) = lab.start_bgp_cluster(cfg, peer_extra).await.expect("cluster");
    lab.apply_pool("fabric", json!({"addresses": ["203.0.112.0/22"], "bgp": {"enabled": true}})).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while router.neighbors().values().filter(|s| *s == "Established").count() < 6 {
        assert!(Instant::now() < deadline, "sessions did not come up: {:?}", router.neighbors());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (lab, running, router)
}

async fn route_latency() {
    let (lab, _running, router) = lab_with(&RouterConfig::default(), json!({})).await;
    let api: Api<Service> = Api::namespaced(lab.client().await.unwrap(), "default");
    let mut took = Vec::new();
    for i in 0..100 {
        let name = format!("svc-{i}");
        let start = Instant::now();
        api.create(&PostParams::default(), &service(&name)).await.unwrap();
        let ip = loop {
            if let Some(ip) = lab.service_ips(&name).await.first().copied() {
                break ip;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let prefix = format!("{ip}/32");
        while router.fib_next_hops(&prefix).len() < 3 {
            assert!(start.elapsed() < Duration::from_secs(30), "{prefix} never reached the router");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        took.push(start.elapsed());
    }
    println!(
        "| Service created -> route at the router with 3 next hops (100 Services) | p50 {:.0} ms | p99 {:.0} ms |",
        ms(percentile(&mut took, 0.5)),
        ms(percentile(&mut took, 0.99))
    );
}

async fn thousand() {
    let (lab, _running, router) = lab_with(&RouterConfig::default(), json!({})).await;
    let api: Api<Service> = Api::namespaced(lab.client().await.unwrap(), "default");
    let start = Instant::now();
    let creates = (0..1000).map(|i| {
        let api = api.clone();
        async move { api.create(&PostParams::default(), &service(&format!("svc-{i}"))).await.map(|_| ()) }
    });
    for r in futures::future::join_all(creates).await {
        r.unwrap();
    }
    let created = start.elapsed();
    let node = lab.topology.nodes[0].namespace.clone();
    let (mut table, mut at_router) = (None, None);
    while start.elapsed() < Duration::from_secs(300) && (table.is_none() || at_router.is_none()) {
        if table.is_none() {
            let out = netns::ip_in(&node, &["route", "show", "table", "179"]).unwrap_or_default();
            if out.lines().count() >= 1000 {
                table = Some(start.elapsed());
            }
        }
        if at_router.is_none() && complete_at_router(&router, 3) >= 1000 {
            at_router = Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let show = |d: Option<Duration>| d.map_or("not within 300 s".to_string(), |d| format!("{:.2} s", d.as_secs_f64()));
    println!(
        "| 1,000 Services at once (created in {:.2} s) | node-1's table has all 1,000: {} | the router has all 1,000 with 3 next hops: {} |",
        created.as_secs_f64(),
        show(table),
        show(at_router)
    );
}

/// Service `web`, once the router forwards its address to all three nodes.
async fn web(lab: &Lab, router: &Router) -> IpAddr {
    let api: Api<Service> = Api::namespaced(lab.client().await.unwrap(), "default");
    api.create(&PostParams::default(), &service("web")).await.unwrap();
    let ip: IpAddr = loop {
        if let Some(ip) = lab.service_ips("web").await.first().copied() {
            break ip;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    while router.fib_next_hops(&format!("{ip}/32")).len() < 3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ip
}

async fn deaths() {
    let bfd_cfg = RouterConfig { bfd: Some((100, 100, 3)), ..RouterConfig::default() };
    let bfd = json!({"bfd": {"receiveIntervalMs": 100, "transmitIntervalMs": 100, "detectMultiplier": 3}});
    let (mut router_drop, mut client) = (Vec::new(), Vec::new());
    let mut failed = 0;
    for run in 0..DEATHS {
        let (lab, mut running, router) = lab_with(&bfd_cfg, bfd.clone()).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        while router.bfd_up() < 6 {
            assert!(Instant::now() < deadline, "BFD did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let ip = web(&lab, &router).await;
        let d = lab.bgp_node_death(&mut running, &router, run % 3, SocketAddr::new(ip, 80)).await.expect("death");
        router_drop.push(d.router_dropped);
        client.push(d.client_recovered);
        failed += d.failed;
    }
    println!(
        "| node death with BFD 100 ms x 3, {DEATHS} runs: the router drops the next hop | p50 {:.0} ms | p90 {:.0} ms |",
        ms(percentile(&mut router_drop, 0.5)),
        ms(percentile(&mut router_drop, 0.9))
    );
    println!(
        "| ... new connections all succeed again (client, a connection every 10 ms; {failed} failed in all) | p50 {:.0} ms | p90 {:.0} ms |",
        ms(percentile(&mut client, 0.5)),
        ms(percentile(&mut client, 0.9))
    );
    // Without BFD the hold time decides (9 s here; BIRD's default is 240 s).
    let (lab, mut running, router) = lab_with(&RouterConfig::default(), json!({"holdTime": "9s"})).await;
    let ip = web(&lab, &router).await;
    let d = lab.bgp_node_death(&mut running, &router, 0, SocketAddr::new(ip, 80)).await.expect("death");
    println!(
        "| node death without BFD, holdTime 9s (1 run) | router {:.1} s | client {:.1} s ({} failed) |",
        d.router_dropped.as_secs_f64(),
        d.client_recovered.as_secs_f64(),
        d.failed
    );
}

/// Of `before`'s flows on next hops other than `gone`, how many `after` sends elsewhere.
fn moved(before: &[Option<IpAddr>], after: &[Option<IpAddr>], gone: IpAddr) -> (usize, usize) {
    let kept: Vec<_> = before.iter().zip(after).filter(|(b, _)| **b != Some(gone)).collect();
    (kept.iter().filter(|(b, a)| b != a).count(), kept.len())
}

const FLOWS: u16 = 3000;

/// When one node leaves, which flows of the others move: FRR's route (the kernel's hash-threshold
/// multipath) as each node in turn withdraws (SIGTERM of its speaker), and for comparison a
/// resilient next-hop group over the same nodes in the router's kernel.
async fn ecmp_rehash() {
    let (lab, mut running, router) = lab_with(&RouterConfig::default(), json!({})).await;
    let ip = web(&lab, &router).await;
    let prefix = format!("{ip}/32");
    let client: IpAddr = lab.topology.routed.as_ref().unwrap().remote.ipv4.into();
    let flows = || router.flow_next_hops(client, ip, "eth1", 40000..40000 + FLOWS);
    let mut cells = Vec::new();
    for dead in 0..3 {
        let before = flows();
        assert_eq!(before.iter().flatten().count(), FLOWS as usize, "{before:?}");
        let gone: IpAddr = lab.topology.nodes[dead].ipv4.into();
        tokio::task::block_in_place(|| running.speakers[dead].terminate()).unwrap();
        while router.fib_next_hops(&prefix).len() != 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (m, of) = moved(&before, &flows(), gone);
        cells.push(format!("node-{} leaves: {m} of {of} ({:.0} %)", dead + 1, 100.0 * m as f64 / of as f64));
        running.speakers[dead] = lab.start_bgp_speaker(dead, &[]).unwrap();
        while router.fib_next_hops(&prefix).len() != 3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    println!(
        "| ECMP at FRR's router, {FLOWS} flows: flows of the remaining nodes that move when one leaves | {} |",
        cells.join("; ")
    );
    // The same with a resilient group (kernel nexthop objects), on a prefix FRR does not own.
    let ns = router.namespace.clone();
    let probe: IpAddr = "203.0.113.250".parse().unwrap();
    let ids: Vec<String> = (0..3).map(|i| (900 + i).to_string()).collect();
    for (i, n) in lab.topology.nodes.iter().enumerate() {
        netns::ip_in(&ns, &["nexthop", "add", "id", &ids[i], "via", &n.ipv4.to_string(), "dev", "eth0"]).unwrap();
    }
    let flows = || router.flow_next_hops(client, probe, "eth1", 40000..40000 + FLOWS);
    let mut cells = Vec::new();
    for dead in 0..3 {
        let all = ids.join("/");
        let rest: Vec<&str> = ids.iter().enumerate().filter(|(i, _)| *i != dead).map(|(_, id)| id.as_str()).collect();
        let group = |members: &str| {
            [
                "nexthop",
                "replace",
                "id",
                "999",
                "group",
                members,
                "type",
                "resilient",
                "buckets",
                "128",
                "idle_timer",
                "0",
            ]
            .map(String::from)
        };
        netns::ip_in(&ns, &group(&all).each_ref().map(String::as_str)).unwrap();
        netns::ip_in(&ns, &["route", "replace", "203.0.113.250/32", "nhid", "999"]).unwrap();
        let before = flows();
        netns::ip_in(&ns, &group(&rest.join("/")).each_ref().map(String::as_str)).unwrap();
        let (m, of) = moved(&before, &flows(), lab.topology.nodes[dead].ipv4.into());
        cells.push(format!("node-{} leaves: {m} of {of}", dead + 1));
    }
    println!("| the same with a resilient next-hop group (128 buckets) | {} |", cells.join("; "));
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    println!("| what | measured | |\n|---|---|---|");
    if std::env::args().any(|a| a == "ecmp") {
        ecmp_rehash().await;
        return;
    }
    route_latency().await;
    thousand().await;
    ecmp_rehash().await;
    deaths().await;
}
