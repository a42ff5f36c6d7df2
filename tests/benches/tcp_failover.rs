//! Failover seen by TCP (root): ten fresh labs, each with a client opening a connection every
//! 10 ms to a VIP while the announcing node dies (speaker killed, link down); the longest gap
//! between successful connections of each run, with its median.
//!
//! `cargo build --release --workspace --bins && cargo bench -p ferrolb-tests --bench tcp_failover`

use std::time::Duration;

use ferrolb_tests::lab::{Lab, netns};

const RUNS: usize = 10;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if let Err(e) = netns::check_prerequisites() {
        eprintln!("the TCP failover bench needs the lab: {e}");
        std::process::exit(2);
    }
    let mut gaps: Vec<Duration> = Vec::new();
    for run in 0..RUNS {
        let lab = Lab::up(3).await.expect("lab up");
        let mut running = lab.start_cluster().await.expect("cluster starts");
        let result = lab.tcp_failover(&mut running).await.expect("the failover runs");
        assert!(result.resumed, "run {run}: connections did not resume");
        eprintln!("run {}: longest gap {:?} ({} connections)", run + 1, result.longest_gap, result.connections);
        gaps.push(result.longest_gap);
        drop(running);
        drop(lab);
    }
    let mut sorted = gaps.clone();
    sorted.sort();
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1e3);
    println!("| TCP failover ({RUNS} runs): longest gap between connections | p50 | min | max |");
    println!("|---|---:|---:|---:|");
    println!(
        "| announcing node killed (speaker kill -9 + link down), a connection every 10 ms | {} | {} | {} |",
        ms((sorted[RUNS / 2 - 1] + sorted[RUNS / 2]) / 2),
        ms(sorted[0]),
        ms(sorted[RUNS - 1])
    );
    println!("\nall runs: {}", gaps.iter().map(|g| ms(*g)).collect::<Vec<_>>().join(", "));
}
