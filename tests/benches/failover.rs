//! Failover and ARP latency in the lab (root): the time from killing the announcing node — its
//! speaker with kill -9, and separately its link going down — until the client's neighbour entry
//! points at the new node, over 20 runs each; and the speaker's ARP reply latency beside the
//! kernel's own for a node address, measured interleaved.
//!
//! `cargo build --release --workspace --bins && cargo bench -p ferrolb-tests --bench failover`

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use ferrolb_tests::lab::{Lab, netns, probe};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, PostParams};
use serde_json::json;

const RUNS: usize = 20;

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// The node answering for `vip` now (exactly one must).
async fn announcer(lab: &Lab, vip: Ipv4Addr) -> Option<usize> {
    let c = lab.topology.client.clone();
    let macs = blocking(move || probe::arp_who_has(&c.namespace, &c.interface, &c.mac, c.ipv4, vip).ok()).await?;
    if macs.len() != 1 {
        return None;
    }
    let mac = probe::mac_text(macs.iter().next()?);
    lab.topology.nodes.iter().position(|n| n.mac == mac)
}

async fn settle(lab: &Lab, vip: Ipv4Addr) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // Stable: the same single announcer twice, a little apart.
        if let Some(a) = announcer(lab, vip).await {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if announcer(lab, vip).await == Some(a) {
                return a;
            }
        }
        assert!(Instant::now() < deadline, "the lab did not settle");
    }
}

/// From `cut` to the client's neighbour entry for `vip` naming another MAC.
async fn measure(lab: &Lab, vip: Ipv4Addr, owner: usize, cut: impl FnOnce()) -> Duration {
    let c = lab.topology.client.clone();
    let ns = c.namespace.clone();
    blocking(move || probe::resolve(&ns, IpAddr::V4(vip))).await;
    let old = lab.topology.nodes[owner].mac.clone();
    let t = Instant::now();
    cut();
    loop {
        if let Some(mac) = probe::neighbour(&c.namespace, &vip.to_string())
            && mac != old
        {
            return t.elapsed();
        }
        assert!(t.elapsed() < Duration::from_secs(30), "no takeover");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if let Err(e) = netns::check_prerequisites() {
        eprintln!("the failover bench needs the lab: {e}");
        std::process::exit(2);
    }
    let lab = Lab::up(3).await.expect("lab up");
    lab.register_cluster().await.unwrap();
    let client = lab.client().await.unwrap();
    lab.apply_pool("lan", json!({"addresses": ["198.51.100.200/32"]})).await.unwrap();
    let _controller = lab.start_controller().unwrap();
    let mut speakers: Vec<_> = (0..3).map(|i| lab.start_speaker(i, &[]).unwrap()).collect();
    let svc: Service = serde_json::from_value(json!({"metadata": {"name": "web"}, "spec": {"type": "LoadBalancer", "selector": {"app": "web"}, "ports": [{"port": 80}]}})).unwrap();
    Api::<Service>::namespaced(client, "default").create(&PostParams::default(), &svc).await.unwrap();
    let vip: Ipv4Addr = "198.51.100.200".parse().unwrap();

    let mut kill = Vec::new();
    for _ in 0..RUNS {
        let owner = settle(&lab, vip).await;
        // A dead node: its speaker killed and its link down (a speaker that only crashes on a live
        // node is restarted in place and keeps its addresses).
        let ns = lab.topology.nodes[owner].namespace.clone();
        let took = measure(&lab, vip, owner, || {
            speakers[owner].kill();
            let _ = netns::ip_in(&ns, &["link", "set", "eth0", "down"]);
        })
        .await;
        let _ = netns::ip_in(&ns, &["link", "set", "eth0", "up"]);
        kill.push(took);
        speakers[owner] = lab.start_speaker(owner, &[]).unwrap();
    }
    let mut link = Vec::new();
    for _ in 0..RUNS {
        let owner = settle(&lab, vip).await;
        let ns = lab.topology.nodes[owner].namespace.clone();
        let took = measure(&lab, vip, owner, || {
            netns::ip_in(&ns, &["link", "set", "eth0", "down"]).unwrap();
        })
        .await;
        link.push(took);
        netns::ip_in(&ns, &["link", "set", "eth0", "up"]).unwrap();
    }

    // ARP reply latency: the speaker (user space) for the VIP against the kernel of the same
    // node for its own LAN address, interleaved in rounds so both see the same noise.
    let owner = settle(&lab, vip).await;
    let node_ip = lab.topology.nodes[owner].ipv4;
    let c = lab.topology.client.clone();
    let (mut ours, mut kernel) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        let c1 = c.clone();
        ours.extend(
            blocking(move || probe::arp_rtts(&c1.namespace, &c1.interface, &c1.mac, c1.ipv4, vip, 25).unwrap()).await,
        );
        let c2 = c.clone();
        kernel.extend(
            blocking(move || probe::arp_rtts(&c2.namespace, &c2.interface, &c2.mac, c2.ipv4, node_ip, 25).unwrap())
                .await,
        );
    }
    drop(speakers);
    drop(lab);

    println!("| failover ({RUNS} runs) | p50 | p90 | max |");
    println!("|---|---:|---:|---:|");
    for (label, v) in [("kill -9 of the announcing speaker", &mut kill), ("announcing node's link down", &mut link)] {
        let max = *v.iter().max().unwrap();
        println!(
            "| {label} | {:.0} ms | {:.0} ms | {:.0} ms |",
            ms(percentile(v, 0.5)),
            ms(percentile(v, 0.9)),
            ms(max)
        );
    }
    println!();
    println!("| ARP reply ({} each) | p50 | p99 |", ours.len());
    println!("|---|---:|---:|");
    let (o50, o99) = (percentile(&mut ours, 0.5), percentile(&mut ours, 0.99));
    let (k50, k99) = (percentile(&mut kernel, 0.5), percentile(&mut kernel, 0.99));
    println!("| ferrolb speaker (VIP) | {:.0} µs | {:.0} µs |", o50.as_secs_f64() * 1e6, o99.as_secs_f64() * 1e6);
    println!("| node kernel (node address) | {:.0} µs | {:.0} µs |", k50.as_secs_f64() * 1e6, k99.as_secs_f64() * 1e6);
    println!(
        "| ratio speaker / kernel | {:.2} | {:.2} |",
        o50.as_secs_f64() / k50.as_secs_f64(),
        o99.as_secs_f64() / k99.as_secs_f64()
    );
}
