//! The seeded chaos soak (`ferrolb_tests::chaos`): Services, pools, processes, links, endpoints
//! and API faults at random from a seed, with the invariants checked after every step and at
//! quiet points. CI runs the fixed seeds below for a minute each; `FERROLB_CHAOS_SEEDS` (comma
//! list, decimal or 0x-hex) and `FERROLB_CHAOS_SECS` replay a failing seed or run longer
//! (`ferrolb-lab chaos` prints the counts of a long run).

mod common;

use std::time::Duration;

use ferrolb_tests::chaos::driver::{Config, soak};
use ferrolb_tests::chaos::rng::parse_seed;

const CI_SEEDS: [u64; 3] = [0x5eed_0001, 0x5eed_0002, 0x5eed_0003];

fn seeds() -> Vec<u64> {
    match std::env::var("FERROLB_CHAOS_SEEDS") {
        Ok(list) => {
            list.split(',').map(|s| parse_seed(s).unwrap_or_else(|e| panic!("FERROLB_CHAOS_SEEDS: {e}"))).collect()
        }
        Err(_) => CI_SEEDS.to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_invariants_hold_under_a_seeded_chaos_soak() {
    if !common::lab_prerequisites() {
        return;
    }
    let secs = std::env::var("FERROLB_CHAOS_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    for seed in seeds() {
        let report =
            match soak(Config::new(seed, Duration::from_secs(secs)), |l| eprintln!("seed {seed:#x}: {l}")).await {
                Ok(r) => r,
                Err(failure) => panic!("{failure}"),
            };
        eprintln!("seed {seed:#x}: {report:?}");
        // The soak did something and judged it: actions of many kinds, quiet points reached.
        assert!(report.total_actions() >= 20, "{report:?}");
        assert!(report.actions.len() >= 8, "too few kinds of action: {report:?}");
        assert!(report.quiet_points >= 2 && report.quiet_checks > 0, "{report:?}");
    }
}
