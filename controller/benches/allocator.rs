//! Allocation cost as a pool fills: ferrolb's interval allocator against a reference first-free
//! linear scan (how MetalLB searches a pool), measured side by side in one run.
//!
//! `cargo bench -p ferrolb-controller --bench allocator` prints a Markdown table.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::hint::black_box;
use std::time::{Duration, Instant};

use ferrolb_controller::allocator::{Allocator, DualStack, PoolConfig, Protocol, Request, TrafficPolicy};
use ferrolb_crds::Family;
use ferrolb_crds::addresses::{parse_entry, to_u128};

fn request(i: usize, family: Family) -> Request {
    Request {
        key: format!("bench/svc-{i}").as_str().into(),
        namespace: "bench".into(),
        labels: BTreeMap::new(),
        namespace_labels: BTreeMap::new(),
        families: vec![family],
        dual: DualStack::Single,
        pool: None,
        ips: Vec::new(),
        sharing_key: None,
        ports: BTreeSet::from([(Protocol::Tcp, 80)]),
        policy: TrafficPolicy::Cluster,
    }
}

/// The reference: walk the pool from its start and take the first address not in `used`.
struct LinearScan {
    start: u128,
    size: u128,
    used: HashSet<u128>,
}

impl LinearScan {
    fn allocate(&mut self) -> Option<u128> {
        let x = (0..self.size).map(|o| self.start + o).find(|x| !self.used.contains(x))?;
        self.used.insert(x);
        Some(x)
    }
}

/// Mean time of one allocation at `used` addresses in use: allocate, time it, give it back.
fn ferrolb(cidr: &str, family: Family, used: usize, rounds: usize) -> Duration {
    let mut a = Allocator::new();
    a.set_pool("bench", PoolConfig { ranges: vec![parse_entry(cidr).unwrap()], ..PoolConfig::default() });
    for i in 0..used {
        a.assign(&request(i, family), &[], None);
    }
    let mut total = Duration::ZERO;
    for r in 0..rounds {
        let req = request(used + r, family);
        let t = Instant::now();
        let o = black_box(a.assign(&req, &[], None));
        total += t.elapsed();
        assert!(o.assignment.is_some());
        a.release(req.key.as_str());
    }
    total / rounds as u32
}

fn linear(cidr: &str, used: usize, rounds: usize) -> Duration {
    let r = parse_entry(cidr).unwrap();
    let start = to_u128(r.start());
    let mut scan = LinearScan { start, size: r.len(), used: HashSet::new() };
    for _ in 0..used {
        scan.allocate();
    }
    let mut total = Duration::ZERO;
    for _ in 0..rounds {
        let t = Instant::now();
        let x = black_box(scan.allocate()).unwrap();
        total += t.elapsed();
        scan.used.remove(&x);
    }
    total / rounds as u32
}

fn ns(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}

fn main() {
    // RFC 2544's benchmarking range and the IPv6 documentation prefix: data only, never traffic.
    let cases: [(&str, &str, Family, usize); 5] = [
        ("IPv4 /16", "198.18.0.0/16", Family::V4, 1_000),
        ("IPv4 /16", "198.18.0.0/16", Family::V4, 10_000),
        ("IPv4 /16", "198.18.0.0/16", Family::V4, 60_000),
        ("IPv6 /64", "2001:db8::/64", Family::V6, 1_000),
        ("IPv6 /64", "2001:db8::/64", Family::V6, 100_000),
    ];
    println!("| pool | used | ferrolb (ns/alloc) | linear scan (ns/alloc) | speed-up |");
    println!("|---|---:|---:|---:|---:|");
    for (label, cidr, family, used) in cases {
        let ours = ferrolb(cidr, family, used, 2_000);
        let scan = linear(cidr, used, 200);
        println!("| {label} | {used} | {:.0} | {:.0} | {:.0}x |", ns(ours), ns(scan), ns(scan) / ns(ours));
    }
}
