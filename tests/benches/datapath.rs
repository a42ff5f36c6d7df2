//! Per-packet cost of ferrolb's forwarding (root), measured side by side in one run on one path:
//! client → node → pod, three namespaces joined by veths, the node forwarding with ferrolb's
//! table applied through libnftables as the speaker applies it.
//!
//! - new TCP connections per second and bulk throughput to `VIP:80` against the pod directly
//!   (the client routes both the VIP and the pod network via the node);
//! - connections per second to the VIP with 10 and with 10,000 Services in ferrolb's maps, and
//!   through an iptables-style reference table that matches one rule per Service in turn, with
//!   the target Service last, at 10 and at 10,000.
//!
//! Configurations take turns (rounds) so that the machine's noise falls on all of them; the
//! table gives medians, and ratios both of the medians and as the median of the ratios within
//! each round. `cargo bench -p ferrolb-tests --bench datapath`

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferrolb_crds::Protocol;
use ferrolb_speaker::forwarding::libnft::Nftables;
use ferrolb_speaker::forwarding::render::{ForwardedService, Port, Ruleset};
use ferrolb_tests::lab::netns;

const VIP: &str = "198.51.100.200";
const POD: &str = "203.0.113.2";
const ROUNDS: usize = 9;
const WINDOW: Duration = Duration::from_millis(1000);
const WORKERS: usize = 4;

/// `n` Services; the last one is the measured one (VIP:80 → pod:8080, VIP:81 → pod:8081), the others have VIPs in the
/// benchmarking range 198.18.0.0/15 and endpoints nobody uses.
fn services(n: usize) -> Vec<ForwardedService> {
    (0..n)
        .map(|i| {
            let last = i + 1 == n;
            let vip = if last { VIP.parse().unwrap() } else { Ipv4Addr::from(0xc612_0000u32 + i as u32).into() };
            let ep = if last { POD.parse().unwrap() } else { "203.0.113.99".parse().unwrap() };
            ForwardedService {
                key: format!("bench/svc-{i}"),
                vips: vec![vip],
                ports: vec![
                    Port { proto: Protocol::Tcp, port: 80, node_port: None, endpoints: vec![(ep, 8080)] },
                    Port { proto: Protocol::Tcp, port: 81, node_port: None, endpoints: vec![(ep, 8081)] },
                ],
                ..ForwardedService::default()
            }
        })
        .collect()
}

/// The iptables way: one rule per Service, walked in order, the measured Service last.
fn linear(n: usize) -> String {
    let mut out = String::from(
        "table ip linear {}\ndelete table ip linear\ntable ip linear {\n\tchain pre {\n\t\ttype nat hook prerouting priority -110; policy accept;\n",
    );
    for i in 0..n - 1 {
        let vip = Ipv4Addr::from(0xc612_0000u32 + i as u32);
        out.push_str(&format!("\t\tip daddr {vip} tcp dport 80 meta mark set 0x4000 dnat to 203.0.113.99:8080\n"));
    }
    out.push_str(&format!("\t\tip daddr {VIP} tcp dport 80 meta mark set 0x4000 dnat to {POD}:8080\n\t}}\n"));
    out.push_str("\tchain post {\n\t\ttype nat hook postrouting priority 90; policy accept;\n\t\tmeta mark 0x4000 masquerade\n\t}\n}\n");
    out
}

/// What the node's tables hold during a measurement.
#[derive(Clone, Copy, PartialEq)]
enum Table {
    Ferrolb(usize),
    Linear(usize),
}

fn program(nft: &mut Nftables, table: Table) {
    let _ = nft.run("table ip linear {}\ndelete table ip linear\ntable inet ferrolb {}\ndelete table inet ferrolb\n");
    match table {
        Table::Ferrolb(n) => nft.run(&Ruleset::of(&services(n)).full()),
        Table::Linear(n) => nft.run(&linear(n)),
    }
    .expect("the table applies");
}

fn setup(tag: &str) -> [String; 3] {
    let [client, node, pod] = ["c", "n", "p"].map(|r| format!("flb{}x{tag}{r}", std::process::id()));
    for ns in [&client, &node, &pod] {
        netns::add(ns).unwrap();
    }
    netns::veth(&client, "eth0", &node, "to-client").unwrap();
    netns::veth(&pod, "eth0", &node, "to-pod").unwrap();
    let ip = |ns: &str, args: &[&str]| netns::ip_in(ns, args).unwrap();
    ip(&client, &["addr", "add", "192.0.2.10/24", "dev", "eth0"]);
    ip(&node, &["addr", "add", "192.0.2.1/24", "dev", "to-client"]);
    ip(&node, &["addr", "add", "203.0.113.1/24", "dev", "to-pod"]);
    ip(&pod, &["addr", "add", &format!("{POD}/24"), "dev", "eth0"]);
    ip(&pod, &["route", "add", "default", "via", "203.0.113.1"]);
    // The client reaches the VIPs and the pod network through the node, as a LAN client given a
    // route to the pods would.
    ip(&client, &["route", "add", "198.51.100.0/24", "via", "192.0.2.1"]);
    ip(&client, &["route", "add", "203.0.113.0/24", "via", "192.0.2.1"]);
    netns::sysctl(&node, "net.ipv4.ip_forward", "1").unwrap();
    // Tens of thousands of connections a second would otherwise fill the node's conntrack table
    // with TIME_WAIT entries and slow the later configurations down.
    netns::sysctl(&node, "net.netfilter.nf_conntrack_tcp_timeout_time_wait", "1").unwrap();
    netns::sysctl(&client, "net.ipv4.ip_local_port_range", "10000 65000").unwrap();
    netns::sysctl(&client, "net.ipv4.tcp_tw_reuse", "1").unwrap();
    [client, node, pod]
}

/// The pod's servers: on 8080 each connection gets one byte and is closed (so TIME_WAIT stays on
/// the pod's side); on 8081 whatever arrives is read and dropped. They run until the process ends.
fn serve(pod: &str) {
    let answer = netns::in_ns(pod, || TcpListener::bind(("0.0.0.0", 8080))).unwrap().unwrap();
    let sink = netns::in_ns(pod, || TcpListener::bind(("0.0.0.0", 8081))).unwrap().unwrap();
    for _ in 0..2 {
        let answer = answer.try_clone().unwrap();
        std::thread::spawn(move || {
            for mut s in answer.incoming().flatten() {
                let _ = s.write_all(b"x");
            }
        });
    }
    std::thread::spawn(move || {
        for mut s in sink.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 20];
                while s.read(&mut buf).is_ok_and(|n| n > 0) {}
            });
        }
    });
}

/// New connections per second to `to` from the client, over `WINDOW`.
fn connections_per_second(client: &str, to: SocketAddr) -> f64 {
    let done = AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..WORKERS {
            s.spawn(|| {
                netns::in_ns(client, || {
                    while started.elapsed() < WINDOW {
                        let Ok(mut c) = TcpStream::connect_timeout(&to, Duration::from_secs(1)) else { continue };
                        let mut b = [0u8; 1];
                        if c.read_exact(&mut b).is_ok() {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
                .unwrap();
            });
        }
    });
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// Bulk throughput of one connection to `to`, in Gbit/s.
fn throughput(client: &str, to: SocketAddr) -> f64 {
    netns::in_ns(client, || {
        let mut c = TcpStream::connect_timeout(&to, Duration::from_secs(1)).expect("connects");
        let buf = vec![7u8; 1 << 20];
        let started = Instant::now();
        let mut sent = 0u64;
        while started.elapsed() < WINDOW {
            c.write_all(&buf).unwrap();
            sent += buf.len() as u64;
        }
        sent as f64 * 8.0 / started.elapsed().as_secs_f64() / 1e9
    })
    .unwrap()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if let Err(e) = netns::check_prerequisites() {
        eprintln!("the datapath bench needs root and nftables: {e}");
        std::process::exit(2);
    }
    let [client, node, pod] = setup("dp");
    serve(&pod);
    let vip: SocketAddr = format!("{VIP}:80").parse().unwrap();
    let direct: SocketAddr = format!("{POD}:8080").parse().unwrap();
    let configs: [(&str, Table, SocketAddr); 5] = [
        ("pod directly (ferrolb, 10 Services programmed)", Table::Ferrolb(10), direct),
        ("VIP, ferrolb, 10 Services", Table::Ferrolb(10), vip),
        ("VIP, ferrolb, 10,000 Services", Table::Ferrolb(10_000), vip),
        ("VIP, iptables-style reference, 10 rules", Table::Linear(10), vip),
        ("VIP, iptables-style reference, 10,000 rules", Table::Linear(10_000), vip),
    ];
    let mut rates = vec![Vec::new(); configs.len()];
    let mut gbits = vec![Vec::new(); 2];
    netns::in_ns(&node, || {
        let mut nft = Nftables::open().expect("libnftables loads");
        for round in 0..ROUNDS {
            // Each round starts with another configuration, so none is always measured first.
            for i in (0..configs.len()).map(|k| (k + round) % configs.len()) {
                let (_, table, to) = &configs[i];
                program(&mut nft, *table);
                rates[i].push(connections_per_second(&client, *to));
            }
        }
        // Throughput on its own, after the churn of the connection rounds has settled: pod and
        // VIP in turns, the order swapped every round.
        program(&mut nft, Table::Ferrolb(10));
        for round in 0..ROUNDS {
            for i in [round % 2, 1 - round % 2] {
                std::thread::sleep(Duration::from_millis(300));
                let to = configs[i].2;
                gbits[i].push(throughput(&client, SocketAddr::new(to.ip(), to.port() + 1)));
            }
        }
        program(&mut nft, Table::Ferrolb(0));
    })
    .unwrap();
    for ns in [&client, &node, &pod] {
        netns::delete(ns);
    }
    // Two ratios: of the medians, and the median of the ratios within each round (configurations
    // measured next to each other, so slow drifts of the shared machine cancel out).
    let both = |v: &[Vec<f64>], i: usize, base: usize| {
        let of_medians = median(v[i].clone()) / median(v[base].clone());
        let paired = median((0..v[i].len()).map(|r| v[i][r] / v[base][r]).collect());
        format!("{of_medians:.3} / {paired:.3}")
    };
    println!(
        "| path | new connections/s (median of {ROUNDS}) | ratio (of medians / paired) | throughput, 1 connection | ratio (of medians / paired) |"
    );
    println!("|---|---:|---:|---:|---:|");
    for (i, (name, _, _)) in configs.iter().enumerate() {
        let base = match i {
            0 | 1 => 0,
            2 => 1,
            _ => 3,
        };
        let (tput, tratio) = match gbits.get(i) {
            Some(g) => (format!("{:.2} Gbit/s", median(g.clone())), both(&gbits, i, 0)),
            None => ("–".to_string(), "–".to_string()),
        };
        println!("| {name} | {:.0} | {} | {tput} | {tratio} |", median(rates[i].clone()), both(&rates, i, base));
    }
    println!("\nratios: VIP against the pod directly; 10,000 against 10 of the same kind.");
}
