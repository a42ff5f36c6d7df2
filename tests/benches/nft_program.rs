//! Programming cost of the forwarding table (root): render and apply 10,000 Services from
//! scratch, then one endpoint change with 10,000 present, in a namespace of its own.
//!
//! `cargo bench -p ferrolb-tests --bench nft_program`

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ferrolb_speaker::forwarding::render::{Port, Proto, Service, render};
use ferrolb_tests::lab::netns;

fn services(n: usize, bump: Option<usize>) -> Vec<Service> {
    (0..n)
        .map(|i| {
            // RFC 2544's benchmarking range for VIPs, documentation addresses for endpoints: data
            // in a namespace that has no traffic.
            let vip: IpAddr = std::net::Ipv4Addr::from(0xc612_0000u32 + i as u32).into();
            let last = if bump == Some(i) { 99 } else { 3 };
            Service {
                key: format!("bench/svc-{i}"),
                vips: vec![vip],
                ports: vec![Port {
                    proto: Proto::Tcp,
                    port: 80,
                    node_port: Some(20000 + (i % 12000) as u16),
                    endpoints: vec![
                        ("203.0.113.2".parse().unwrap(), 8080),
                        (format!("203.0.113.{last}").parse().unwrap(), 8080),
                    ],
                }],
                local: false,
                source_ranges: vec![],
                affinity: None,
            }
        })
        .collect()
}

fn apply(ns: &str, text: &str) -> Duration {
    let file = std::env::temp_dir().join(format!("{ns}.nft"));
    std::fs::write(&file, text).unwrap();
    let t = Instant::now();
    netns::exec(ns, "nft", &["-f", file.to_str().unwrap()]).expect("nft applies");
    let d = t.elapsed();
    let _ = std::fs::remove_file(&file);
    d
}

fn main() {
    if let Err(e) = netns::check_prerequisites() {
        eprintln!("the nft bench needs root and nftables: {e}");
        std::process::exit(2);
    }
    let ns = format!("flb{}xbench", std::process::id());
    netns::add(&ns).unwrap();
    println!("| Services | render | nft apply (from scratch) | one endpoint changed: render + apply |");
    println!("|---:|---:|---:|---:|");
    for n in [10, 1_000, 10_000] {
        let t = Instant::now();
        let text = render(&services(n, None));
        let rendered = t.elapsed();
        // Start from an empty namespace each time.
        let _ = netns::exec(&ns, "nft", &["delete", "table", "inet", "ferrolb"]);
        let scratch = apply(&ns, &text);
        let t = Instant::now();
        let changed = render(&services(n, Some(n / 2)));
        let changed_apply = apply(&ns, &changed) + t.elapsed();
        println!(
            "| {n} | {:.1} ms | {:.1} ms | {:.1} ms |",
            rendered.as_secs_f64() * 1e3,
            scratch.as_secs_f64() * 1e3,
            changed_apply.as_secs_f64() * 1e3
        );
    }
    netns::delete(&ns);
}
