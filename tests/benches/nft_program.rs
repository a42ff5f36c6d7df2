//! Programming cost of the forwarding table (root), in a namespace of its own: the whole table
//! for 10 / 1,000 / 10,000 Services from scratch, then one endpoint change with all of them
//! present, applied as the difference through libnftables (what the speaker does), beside the
//! same change through a new `nft` process and as a whole-table replacement.
//!
//! `cargo bench -p ferrolb-tests --bench nft_program`

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ferrolb_crds::Protocol;
use ferrolb_speaker::forwarding::libnft::Nftables;
use ferrolb_speaker::forwarding::render::{ForwardedService, Port, Ruleset};
use ferrolb_tests::lab::netns;

/// `n` Services of two endpoints each; `bump` moves one endpoint of Service `bump`.
fn services(n: usize, bump: Option<usize>) -> Vec<ForwardedService> {
    (0..n)
        .map(|i| {
            // RFC 2544's benchmarking range for VIPs, documentation addresses for endpoints: data
            // in a namespace that has no traffic.
            let vip: IpAddr = std::net::Ipv4Addr::from(0xc612_0000u32 + i as u32).into();
            let last = if bump == Some(i) { 99 } else { 3 };
            ForwardedService {
                key: format!("bench/svc-{i}"),
                vips: vec![vip],
                ports: vec![Port {
                    proto: Protocol::Tcp,
                    port: 80,
                    node_port: Some(20000 + (i % 12000) as u16),
                    endpoints: vec![
                        ("203.0.113.2".parse().unwrap(), 8080),
                        (format!("203.0.113.{last}").parse().unwrap(), 8080),
                    ],
                }],
                local: false,
                source_ranges: None,
                affinity: None,
                replicate: false,
            }
        })
        .collect()
}

/// Runs `nft -f -` on `text` (the speaker's fallback when libnftables does not load), and times
/// it. Called from inside the namespace.
fn nft_command(text: &str) -> Duration {
    use std::io::Write as _;
    let t = Instant::now();
    let mut nft = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("nft runs");
    nft.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("nft reads");
    assert!(nft.wait().expect("nft ends").success(), "nft applies");
    t.elapsed()
}

/// Runs `text` through the speaker's libnftables context, and times it.
fn library(nft: &mut Nftables, text: &str) -> Duration {
    let t = Instant::now();
    nft.run(text).expect("nft applies");
    t.elapsed()
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    if let Err(e) = netns::check_prerequisites() {
        eprintln!("the nft bench needs root and nftables: {e}");
        std::process::exit(2);
    }
    let ns = format!("flb{}xbench", std::process::id());
    netns::add(&ns).unwrap();
    println!(
        "| Services | build + render | apply from scratch | one endpoint changed: rebuild + difference + apply | same change, `nft` command | same change as a whole-table replacement |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    netns::in_ns(&ns, || {
        // Made inside the namespace, like the speaker's inside its node's.
        let mut nft = Nftables::open().expect("libnftables loads");
        for n in [10, 1_000, 10_000] {
            let t = Instant::now();
            let before = Ruleset::of(&services(n, None));
            let text = before.full();
            let rendered = t.elapsed();
            // Start from an empty namespace each time.
            let _ = nft
                .run("destroy table inet ferrolb\n")
                .or_else(|_| nft.run("table inet ferrolb {}\ndelete table inet ferrolb\n"));
            let scratch = library(&mut nft, &text);
            // Warm the context's cache the way a running speaker's is: by its previous change.
            library(&mut nft, &Ruleset::of(&services(n, Some(n / 3))).changes_from(&before));
            library(&mut nft, &before.changes_from(&Ruleset::of(&services(n, Some(n / 3)))));
            let changed_services = services(n, Some(n / 2));
            let t = Instant::now();
            let after = before.rebuilt(&changed_services);
            let built = t.elapsed();
            let diff = after.changes_from(&before);
            let computed = t.elapsed();
            let applied = library(&mut nft, &diff);
            let chain = format!("svc/bench/svc-{}/tcp/80/v4", n / 2);
            let listed =
                std::process::Command::new("nft").args(["list", "chain", "inet", "ferrolb", &chain]).output().unwrap();
            assert!(
                String::from_utf8_lossy(&listed.stdout).contains("203.0.113.99:8080"),
                "the change is in the kernel"
            );
            let by_command = nft_command(&before.changes_from(&after));
            let whole = library(&mut nft, &before.full());
            println!(
                "| {n} | {} | {} | {} ({} rebuild, {} difference, {} nft) | {} | {} |",
                ms(rendered),
                ms(scratch),
                ms(computed + applied),
                ms(built),
                ms(computed - built),
                ms(applied),
                ms(by_command),
                ms(whole)
            );
        }
    })
    .expect("the namespace exists");
    netns::delete(&ns);
}
