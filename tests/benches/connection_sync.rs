//! Connection replication (root, `--conntrack-sync conntrackd`):
//! 1. the hard failover seen by long-lived streams, in ten fresh labs: node-1 dies (speaker
//!    killed, link down) with a replicated stream whose pod is on the node that takes the address
//!    over, one whose pod is on the third node, and a control that is not replicated — the
//!    longest stall of each replicated stream, with medians, and what became of the control;
//! 2. the cost, in one lab, side by side: new connections per second through a VIP of node-1
//!    with and without replication (interleaved rounds), and per new connection the CPU time of
//!    conntrackd on the sending node and on a receiving one, and the bytes node-1 sends to the
//!    replication group.
//!
//! `cargo build --release --workspace --bins && cargo bench -p ferrolb-tests --bench connection_sync`

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ferrolb_tests::lab::streams::connect_back_to_back;
use ferrolb_tests::lab::{Lab, netns};
use serde_json::json;

const RUNS: usize = 10;
const ROUNDS: usize = 6;
const ROUND: Duration = Duration::from_secs(3);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n.is_multiple_of(2) { (v[n / 2 - 1] + v[n / 2]) / 2.0 } else { v[n / 2] }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// conntrackd's CPU time (user + system, seconds) in the lab's node `node`.
fn conntrackd_cpu(lab: &Lab, node: &str) -> f64 {
    let conf = lab.dir.join(format!("state-{node}/conntrackd.conf"));
    let conf = conf.to_string_lossy();
    let pid = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(conf.as_ref()))
                .unwrap_or(false)
        })
        .expect("node's conntrackd runs");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("its stat");
    let fields: Vec<&str> = stat.rsplit_once(')').expect("comm").1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 (the 12th and 13th after the command name).
    let ticks: f64 = fields[11].parse::<f64>().unwrap_or(0.0) + fields[12].parse::<f64>().unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Bytes node `ns` sent to the replication group, by a counter set up by `count_sync_bytes`.
fn sync_bytes(ns: &str) -> f64 {
    let text = netns::exec(ns, "nft", &["list", "table", "inet", "bench"]).unwrap_or_default();
    text.split("bytes ").nth(1).and_then(|b| b.split_whitespace().next()?.parse().ok()).unwrap_or(0.0)
}

fn count_sync_bytes(ns: &str) {
    let rules = "table inet bench { chain out { type filter hook output priority 0; udp dport 3780 counter; }; }";
    netns::exec(ns, "nft", &[rules]).expect("the counter");
}

async fn failovers() {
    let (mut near, mut far) = (Vec::new(), Vec::new());
    let mut controls = Vec::new();
    for run in 0..RUNS {
        let lab = Lab::build(3, false).await.expect("lab up");
        let mut running = lab.start_replicating_cluster().await.expect("cluster starts");
        let seen = lab.replicated_failover(&mut running).await.expect("the failover runs");
        assert_eq!((seen.near.cut.as_deref(), seen.far.cut.as_deref()), (None, None), "run {run}: {seen:?}");
        eprintln!(
            "run {}: near {:.0} ms, far {:.0} ms, control {:?}",
            run + 1,
            ms(seen.near.longest_stall),
            ms(seen.far.longest_stall),
            seen.plain.cut
        );
        near.push(ms(seen.near.longest_stall));
        far.push(ms(seen.far.longest_stall));
        controls.push(seen.plain.cut.is_some());
    }
    let cut = controls.iter().filter(|c| **c).count();
    println!("| hard failover ({RUNS} runs): longest stall of a replicated stream | p50 | min | max |");
    println!("|---|---:|---:|---:|");
    for (what, v) in [("its pod on the new owner", &near), ("its pod on a third node", &far)] {
        let (lo, hi) = (v.iter().copied().fold(f64::MAX, f64::min), v.iter().copied().fold(0.0, f64::max));
        println!("| {what}: {RUNS} of {RUNS} kept | {:.0} ms | {lo:.0} ms | {hi:.0} ms |", median(v.clone()));
    }
    println!("| control, not replicated: cut | {cut} of {RUNS} | | |\n");
}

async fn cost() {
    let lab = Lab::build(3, false).await.expect("lab up");
    let _running = lab.start_replicating_cluster().await.expect("cluster starts");
    lab.apply_pool("lan", json!({"addresses": ["198.51.100.200-198.51.100.254"]})).await.expect("pool");
    let vips = lab.addresses_won_by(0, 2);
    lab.line_service("kept", "echo", vips[0], true).await.expect("service");
    lab.line_service("plain", "echo", vips[1], false).await.expect("service");
    for vip in &vips {
        lab.wait_for_owner(*vip, 0).await.expect("node-1 answers");
    }
    let ns = lab.topology.client.namespace.clone();
    let (n1, n2) = (lab.topology.nodes[0].name.clone(), lab.topology.nodes[1].name.clone());
    count_sync_bytes(&lab.topology.nodes[0].namespace);
    let (mut with, mut without) = (Vec::new(), Vec::new());
    let (mut cpu_send, mut cpu_receive, mut bytes) = (Vec::new(), Vec::new(), Vec::new());
    let mut unreplicated_bytes = Vec::new();
    // Warm both paths once.
    for vip in &vips {
        let _ = connect_back_to_back(&ns, SocketAddr::new(IpAddr::V4(*vip), 80), Duration::from_millis(500));
    }
    for round in 0..ROUNDS {
        // Alternate which goes first, so that neither profits from the other's warm-up.
        for replicated in if round % 2 == 0 { [false, true] } else { [true, false] } {
            let vip = vips[usize::from(!replicated)];
            let counters =
                || (conntrackd_cpu(&lab, &n1), conntrackd_cpu(&lab, &n2), sync_bytes(&lab.topology.nodes[0].namespace));
            let before = counters();
            let (ok, failed) = connect_back_to_back(&ns, SocketAddr::new(IpAddr::V4(vip), 80), ROUND);
            assert_eq!(failed, 0);
            // The last updates (the closes) go out within a moment.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let after = counters();
            let rate = ok as f64 / ROUND.as_secs_f64();
            if replicated {
                with.push(rate);
                cpu_send.push((after.0 - before.0) / ok as f64 * 1e6);
                cpu_receive.push((after.1 - before.1) / ok as f64 * 1e6);
                bytes.push((after.2 - before.2) / ok as f64);
            } else {
                without.push(rate);
                // What replication costs when a Service does not ask for it: nothing is sent.
                unreplicated_bytes.push((after.2 - before.2) / ok as f64);
            }
        }
    }
    let (w, wo) = (median(with.clone()), median(without.clone()));
    println!("| replication's cost ({ROUNDS} interleaved rounds of {} s, medians) | value |", ROUND.as_secs());
    println!("|---|---:|");
    println!("| new connections/s through the VIP, not replicated | {wo:.0} |");
    println!("| new connections/s through the VIP, replicated | {w:.0} |");
    println!("| ratio replicated / not | {:.2} |", w / wo);
    println!("| conntrackd CPU per new connection, owner (sends) | {:.0} µs |", median(cpu_send));
    println!("| conntrackd CPU per new connection, another node (receives) | {:.0} µs |", median(cpu_receive));
    println!("| bytes the owner sends to the group per new connection | {:.0} |", median(bytes));
    println!("| … per new connection of a Service not replicated | {:.0} |", median(unreplicated_bytes));
    println!(
        "\nrounds, connections/s: not replicated {:?}; replicated {:?}",
        without.iter().map(|v| v.round()).collect::<Vec<_>>(),
        with.iter().map(|v| v.round()).collect::<Vec<_>>()
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if let Err(e) = netns::check_prerequisites() {
        eprintln!("the connection replication bench needs the lab: {e}");
        std::process::exit(2);
    }
    let only = std::env::args().skip_while(|a| a != "--only").nth(1);
    if only.as_deref().is_none_or(|o| o == "cost") {
        cost().await;
    }
    if only.as_deref().is_none_or(|o| o == "failover") {
        failovers().await;
    }
}
