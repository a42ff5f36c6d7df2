//! The speaker's CPU while nothing changes (root; the lab): three nodes, a controller, `SERVICES`
//! LoadBalancer Services with endpoints on every node (sharing `SERVICES / PER_ADDRESS`
//! addresses, as many Services on few addresses do), and three speakers that announce them. The
//! speakers run with `--forwarding none`: what is measured is their loop; the nftables read-back
//! has a budget of its own (at most 5% of a core, docs/FORWARDING.md) that would drown it. After the speakers settle and no Service or Event has been written for 5 s (the
//! conditions and Events of a start are done), each one's CPU time (utime + stime from /proc) is read over an
//! idle window. With `FERROLB_BASELINE_BIN_DIR` set to another build's binaries, its
//! speakers run in the same lab, alternating round by round with this build's, so both see the
//! same noise and the ratio is side by side.
//!
//! `cargo build --release --workspace --bins && cargo bench -p ferrolb-tests --bench speaker_idle`

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ferrolb_tests::lab::Lab;
use ferrolb_tests::lab::processes::{Proc, binary};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, PostParams};
use serde_json::json;

const SERVICES: usize = 2_000;
const PER_ADDRESS: usize = 20;
const ROUNDS: usize = 3;
const SETTLE: Duration = Duration::from_secs(8);
const QUIET: Duration = Duration::from_secs(5);
const SETTLE_MAX: Duration = Duration::from_secs(90);
const WINDOW: Duration = Duration::from_secs(20);

/// Clock ticks per second of /proc's utime and stime (USER_HZ).
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let (utime, stime): (f64, f64) = (f[11].parse().unwrap_or(0.0), f[12].parse().unwrap_or(0.0));
    (utime + stime) / ticks_per_second()
}

/// Waits until no Service or Event has been written for `QUIET` (the speakers' conditions and
/// Events after a start are done; Lease renewals go on), at most `SETTLE_MAX`.
async fn wait_quiet(lab: &Lab) {
    let started = Instant::now();
    let writes = || {
        let log = lab.api.shared().requests();
        log.iter().filter(|r| r.method != "GET" && (r.path.contains("/services") || r.path.contains("/events"))).count()
    };
    let mut last = (writes(), Instant::now());
    while started.elapsed() < SETTLE_MAX {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = writes();
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() >= QUIET {
            return;
        }
    }
    eprintln!("the API did not go quiet within {SETTLE_MAX:?}; measuring anyway");
}

/// Mean CPU share (percent of one core) of `speakers` over `WINDOW`.
async fn idle_cpu(speakers: &[Proc]) -> f64 {
    let pids: Vec<u32> = speakers.iter().map(|p| p.child.id()).collect();
    let before: Vec<f64> = pids.iter().map(|p| cpu_seconds(*p)).collect();
    let started = Instant::now();
    tokio::time::sleep(WINDOW).await;
    let wall = started.elapsed().as_secs_f64();
    let after: Vec<f64> = pids.iter().map(|p| cpu_seconds(*p)).collect();
    let used: f64 = after.iter().zip(&before).map(|(a, b)| a - b).sum();
    100.0 * used / wall / pids.len() as f64
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("speaker_idle needs root (network namespaces)");
        std::process::exit(2);
    }
    let current = binary("ferrolb-speaker").expect("build the speaker first");
    let baseline = std::env::var_os("FERROLB_BASELINE_BIN_DIR").map(|d| PathBuf::from(d).join("ferrolb-speaker"));
    let lab = Lab::up(3).await.expect("lab");
    lab.register_cluster().await.expect("cluster");
    let _controller = lab.start_controller().expect("controller");
    let _backends = lab.start_backends("echo", 8080).await.expect("backends");
    lab.apply_pool("bench", json!({"addresses": ["198.51.100.128/25"]})).await.expect("pool");
    let client = lab.client().await.expect("client");
    let api: Api<Service> = Api::namespaced(client, "default");
    for i in 0..SERVICES {
        let (key, port) = (i / PER_ADDRESS, 8000 + i % PER_ADDRESS);
        let svc: Service = serde_json::from_value(json!({"metadata": {"name": format!("idle-{i:04}"),
                "annotations": {"ferrolb.io/sharing-key": format!("k{key}")}},
            "spec": {"type": "LoadBalancer", "selector": {"app": "echo"},
                "ports": [{"name": "tcp", "port": port, "targetPort": 8080}]}}))
        .expect("service");
        api.create(&PostParams::default(), &svc).await.expect("create");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while lab.service_ips(&format!("idle-{:04}", SERVICES - 1)).await.is_empty() {
        assert!(Instant::now() < deadline, "the Services got no addresses");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut builds = vec![("this build", current)];
    if let Some(b) = baseline {
        builds.insert(0, ("baseline", b));
    }
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); builds.len()];
    for round in 0..ROUNDS {
        // Alternate which build goes first, so neither always follows the other.
        let order: Vec<usize> =
            if round % 2 == 0 { (0..builds.len()).collect() } else { (0..builds.len()).rev().collect() };
        for b in order {
            let mut speakers: Vec<Proc> = (0..lab.topology.nodes.len())
                .map(|i| lab.start_speaker_from(&builds[b].1, i, &["--forwarding", "none"]).expect("speaker"))
                .collect();
            tokio::time::sleep(SETTLE).await;
            wait_quiet(&lab).await;
            let cpu = idle_cpu(&speakers).await;
            println!("round {round}: {:<10} {cpu:.2} % of a core per speaker", builds[b].0);
            results[b].push(cpu);
            for s in &mut speakers {
                let _ = s.terminate();
            }
        }
    }
    println!("\n{SERVICES} Services, 3 speakers, {}s idle windows, {ROUNDS} rounds", WINDOW.as_secs());
    println!("| build | mean CPU per speaker (% of a core) | rounds |");
    println!("|---|---:|---|");
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    for (b, (name, _)) in builds.iter().enumerate() {
        let rounds: Vec<String> = results[b].iter().map(|c| format!("{c:.2}")).collect();
        println!("| {name} | {:.2} | {} |", mean(&results[b]), rounds.join(", "));
    }
    if builds.len() == 2 {
        println!("ratio this build / baseline: {:.2}", mean(&results[1]) / mean(&results[0]));
    }
}
