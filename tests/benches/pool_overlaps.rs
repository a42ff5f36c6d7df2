//! Finding overlapping pools with many entries, side by side in one run: the pairwise comparison
//! the controller once ran on every pool-status write, and the sweep it now runs when a pool
//! changes. `cargo bench -p ferrolb-tests --bench pool_overlaps`.

use std::time::{Duration, Instant};

use ferrolb_controller::allocator::{Allocator, PoolConfig};
use ferrolb_crds::addresses::parse_entry;

const POOLS: usize = 60;
const ENTRIES: usize = 1024;

/// The j-th address of pool i: pools are disjoint /24-ish blocks.
fn address(i: usize, j: usize) -> String {
    format!("10.{}.{}.{}", 10 + i / 4, (i % 4) * 64 + j / 16, (j % 16) * 16 + 1)
}

/// Pool i: 1,024 single addresses; an odd pool's first one is its even neighbour's first.
fn config(i: usize) -> PoolConfig {
    let ranges = (0..ENTRIES)
        .map(|j| {
            let owner = if j == 0 && i % 2 == 1 { i - 1 } else { i };
            parse_entry(&address(owner, j)).expect("an address")
        })
        .collect();
    PoolConfig { ranges, ..PoolConfig::default() }
}

fn main() {
    let mut alloc = Allocator::new();
    let t = Instant::now();
    for i in 0..POOLS {
        alloc.set_pool(&format!("pool-{i:02}"), config(i));
    }
    let setup = t.elapsed();
    let changed = Instant::now();
    alloc.set_pool("pool-00", config(0));
    let one_change = changed.elapsed();
    let names: Vec<String> = alloc.pool_names().map(String::from).collect();
    let t = Instant::now();
    let mut pairwise = 0;
    for (n, x) in names.iter().enumerate() {
        for y in &names[n + 1..] {
            if alloc.pool(x).expect("pool").overlaps(alloc.pool(y).expect("pool")) {
                pairwise += 1;
            }
        }
    }
    let old = t.elapsed();
    let t = Instant::now();
    let swept = alloc.overlaps().values().map(Vec::len).sum::<usize>() / 2;
    let read = t.elapsed();
    assert_eq!(pairwise, swept, "both ways must find the same pairs");
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("{POOLS} pools × {ENTRIES} entries, {swept} overlapping pairs\n");
    println!("| measure | value |");
    println!("|---|---:|");
    println!("| pairwise comparison (before: on every pool-status write) | {:.1} ms |", ms(old));
    println!("| sweep after one pool changed (now: only then) | {:.2} ms |", ms(one_change));
    println!("| overlaps read at a pool-status write (now) | {:.4} ms |", ms(read));
    println!("| ratio pairwise / sweep | {:.0} |", old.as_secs_f64() / one_change.as_secs_f64());
    println!("| all {POOLS} pools added one by one (sweep each time) | {:.0} ms |", ms(setup));
}
