//! No false failover (#15): with the announcing node's speaker in a cgroup capped at one CPU that
//! `stress-ng` saturates (4 workers), and 5% of the frames every LAN interface sends dropped
//! (an nftables `netdev` egress rule `numgen random mod 100 < 5 drop` — this kernel has no
//! `netem`, so delay and jitter cannot be emulated), the address must not move for the whole
//! window; then the node dies (speaker killed, link down) and the time until the client's
//! neighbour entry names another node is measured, still under loss.
//!
//! `cargo build --release --workspace --bins && cargo bench -p ferrolb-tests --bench false_failover`
//! (FERROLB_BENCH_SECONDS: the window, default 600).

use std::net::{IpAddr, Ipv4Addr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferrolb_tests::lab::{Lab, netns, probe};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, PostParams};
use serde_json::json;

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// A cgroup (v1 `cpu`) capped at one CPU, removed on drop.
struct Capped {
    dir: std::path::PathBuf,
    stress: Child,
}

impl Capped {
    fn new(pid: u32) -> Self {
        let dir = std::path::PathBuf::from(format!("/sys/fs/cgroup/cpu/ferrolb-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a cpu cgroup (cgroup v1 here)");
        std::fs::write(dir.join("cpu.cfs_period_us"), "100000").unwrap();
        std::fs::write(dir.join("cpu.cfs_quota_us"), "100000").unwrap();
        std::fs::write(dir.join("cgroup.procs"), pid.to_string()).unwrap();
        // Into the cgroup before it starts, so that every worker it forks is in it too.
        let procs = dir.join("cgroup.procs");
        let stress = Command::new("sh")
            .args(["-c", &format!("echo $$ > {} && exec stress-ng --cpu 4 --timeout 0", procs.display())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("stress-ng (Debian's package)");
        Self { dir, stress }
    }
}

impl Drop for Capped {
    fn drop(&mut self) {
        // stress-ng and its workers (renamed, forked after the move) are all in the cgroup.
        let pids = std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
        for pid in pids.lines() {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                // SAFETY: a signal to a process of ours.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = self.stress.wait();
        std::thread::sleep(Duration::from_millis(200));
        for pid in std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default().lines() {
            let _ = std::fs::write("/sys/fs/cgroup/cpu/cgroup.procs", pid);
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// 5% of the frames `iface` in `ns` sends dropped, whoever sends them: on egress, because a raw
/// socket (the responder, the client's probe) sees a frame before the ingress hook could drop it.
fn lossy(ns: &str, iface: &str) {
    let rules = format!(
        "table netdev ferrolb_loss {{\n chain out {{\n  type filter hook egress device \"{iface}\" priority -500;\n  numgen random mod 100 < 5 drop\n }}\n}}\n"
    );
    netns::exec_stdin(ns, "nft", &["-f", "-"], &rules).expect("the loss rule");
}

fn gratuitous(text: &str) -> f64 {
    probe::metric(text, "ferrolb_speaker_gratuitous_total").unwrap_or(0.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if let Err(e) = netns::check_prerequisites() {
        eprintln!("the bench needs the lab: {e}");
        std::process::exit(2);
    }
    let window =
        Duration::from_secs(std::env::var("FERROLB_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(600));
    let lab = Lab::up(3).await.expect("lab up");
    let mut running = lab.start_cluster().await.unwrap();
    let client = lab.client().await.unwrap();
    lab.apply_pool("lan", json!({"addresses": ["198.51.100.200/32"]})).await.unwrap();
    let svc: Service = serde_json::from_value(json!({"metadata": {"name": "echo"}, "spec": {"type": "LoadBalancer",
        "selector": {"app": "echo"}, "ports": [{"name": "tcp", "port": 80, "targetPort": 8080}]}}))
    .unwrap();
    Api::<Service>::namespaced(client, "default").create(&PostParams::default(), &svc).await.unwrap();
    let vip: Ipv4Addr = "198.51.100.200".parse().unwrap();
    let names: Vec<String> = lab.topology.nodes.iter().map(|n| n.name.clone()).collect();
    let owner_name =
        ferrolb_speaker::election::winner(names.iter().map(String::as_str), &IpAddr::V4(vip)).unwrap().to_string();
    let owner = names.iter().position(|n| *n == owner_name).unwrap();
    let owner_mac = probe::mac_bytes(&lab.topology.nodes[owner].mac);
    let c = lab.topology.client.clone();
    let ask = move || {
        let c = c.clone();
        async move { blocking(move || probe::arp_who_has(&c.namespace, &c.interface, &c.mac, c.ipv4, vip).ok()).await }
    };
    let started = Instant::now();
    while ask().await.is_none_or(|m| m != std::collections::BTreeSet::from([owner_mac])) {
        assert!(started.elapsed() < Duration::from_secs(60), "the owner never answered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let before: Vec<f64> = {
        let mut v = Vec::new();
        for n in &lab.topology.nodes {
            v.push(gratuitous(&probe::speaker_metrics(&n.namespace).await.unwrap_or_default()));
        }
        v
    };
    for n in &lab.topology.nodes {
        lossy(&n.namespace, "eth0");
    }
    lossy(&lab.topology.client.namespace, &lab.topology.client.interface);
    let capped = Capped::new(running.speakers[owner].child.id());

    let (mut probes, mut by_owner, mut by_other, mut silent, mut two) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let t = Instant::now();
    while t.elapsed() < window {
        probes += 1;
        match ask().await {
            Some(m) if m.is_empty() => silent += 1,
            Some(m) if m.len() > 1 => two += 1,
            Some(m) if m.contains(&owner_mac) => by_owner += 1,
            Some(_) => by_other += 1,
            None => silent += 1,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut takeovers = 0.0;
    for (i, n) in lab.topology.nodes.iter().enumerate() {
        if i != owner {
            takeovers += gratuitous(&probe::speaker_metrics(&n.namespace).await.unwrap_or_default()) - before[i];
        }
    }

    // Nodes die, one after the other, each while it announces, saturated and lossy.
    let deaths: usize = std::env::var("FERROLB_BENCH_DEATHS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let mut detected = Vec::new();
    let mut owner = owner;
    for round in 0..deaths {
        if round > 0 {
            // The new owner (the address does not move back to a returning node).
            let t = Instant::now();
            owner = loop {
                if let Some(m) = ask().await
                    && m.len() == 1
                    && let Some(i) =
                        lab.topology.nodes.iter().position(|n| probe::mac_bytes(&n.mac) == *m.iter().next().unwrap())
                {
                    break i;
                }
                assert!(t.elapsed() < Duration::from_secs(30), "no single owner after a death");
            };
            std::fs::write(capped.dir.join("cgroup.procs"), running.speakers[owner].child.id().to_string()).unwrap();
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        let ns = lab.topology.client.namespace.clone();
        blocking(move || probe::resolve(&ns, IpAddr::V4(vip))).await;
        let owner_text = lab.topology.nodes[owner].mac.clone();
        let node_ns = lab.topology.nodes[owner].namespace.clone();
        let cut = Instant::now();
        running.speakers[owner].kill();
        let _ = netns::ip_in(&node_ns, &["link", "set", "eth0", "down"]);
        detected.push(loop {
            if let Some(mac) = probe::neighbour(&lab.topology.client.namespace, &vip.to_string())
                && mac != owner_text
            {
                break cut.elapsed();
            }
            assert!(cut.elapsed() < Duration::from_secs(30), "no takeover after the node died");
            tokio::time::sleep(Duration::from_millis(2)).await;
        });
        // The node comes back (its loss rule stays on the device).
        netns::ip_in(&node_ns, &["link", "set", "eth0", "up"]).unwrap();
        running.speakers[owner] = lab.start_speaker(owner, &[]).unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    detected.sort();
    drop(capped);

    println!(
        "announcing node's speaker in a 1-CPU cgroup with 4 stress-ng workers; 5% of every LAN interface's frames dropped\n"
    );
    println!("| measure | value |");
    println!("|---|---:|");
    println!("| window | {} s |", window.as_secs());
    println!("| ARP probes from the client | {probes} |");
    println!("| answered by the owner only | {by_owner} |");
    println!("| answered by another node | {by_other} |");
    println!("| answered by two nodes | {two} |");
    println!("| no answer (the request or the reply lost) | {silent} |");
    println!("| takeovers by the other nodes (gratuitous announcements) | {takeovers} |");
    let ms = |d: &Duration| format!("{:.0}", d.as_secs_f64() * 1e3);
    println!(
        "| node death → client's neighbour entry on a new node, {} deaths: min / p50 / max | {} / {} / {} ms |",
        detected.len(),
        ms(&detected[0]),
        ms(&detected[detected.len() / 2]),
        ms(&detected[detected.len() - 1])
    );
}
