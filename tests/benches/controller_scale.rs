//! End to end: 5,000 LoadBalancer Services created at once against sim-apiserver, served by the
//! release build of `ferrolb-controller`. Prints the time until all have addresses, the
//! create-to-address latency (p50/p99), and the controller's peak RSS.
//!
//! `cargo build --release -p ferrolb-controller && cargo bench -p ferrolb-tests --bench controller_scale`

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrolb_crds::IPPool;
use ferrolb_tests::apiserver::{SimApiServer, SimConfig};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{CustomResourceExt, ResourceExt};
use serde_json::json;

const SERVICES: usize = 5_000;
const CREATE_CONCURRENCY: usize = 32;

/// The release controller next to the bench, or in `FERROLB_BIN_DIR` (another build, to compare).
fn controller_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("bench path");
    let dir = match std::env::var_os("FERROLB_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => exe.parent().and_then(|d| d.parent()).expect("target/release").to_path_buf(),
    };
    let bin = dir.join("ferrolb-controller");
    if !bin.is_file() {
        eprintln!("{} is missing: run `cargo build --release -p ferrolb-controller` first", bin.display());
        std::process::exit(2);
    }
    bin
}

/// The controller process, killed even when the bench panics.
struct Reaped(std::process::Child);

impl Reaped {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        self.kill();
    }
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let bin = controller_binary();
    // 5,000 LoadBalancers need more NodePorts than the default range holds, so the cluster widens
    // it, as large clusters do with --service-node-port-range.
    let config = SimConfig { history_limit: 50_000, node_ports: 20000..=32767, ..SimConfig::default() };
    let server = SimApiServer::start(config).await.unwrap();
    let kc = Kubeconfig::from_yaml(&server.kubeconfig_yaml()).unwrap();
    let client =
        kube::Client::try_from(kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.unwrap())
            .unwrap();
    Api::<CustomResourceDefinition>::all(client.clone()).create(&PostParams::default(), &IPPool::crd()).await.unwrap();
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "ferrolb-system"}})).unwrap();
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.unwrap();
    // RFC 2544's benchmarking range: API data only, never traffic.
    let pool = json!({"apiVersion": "ferrolb.io/v1alpha1", "kind": "IPPool", "metadata": {"name": "bench"}, "spec": {"addresses": ["198.18.0.0/16"]}});
    Api::<IPPool>::all(client.clone()).patch("bench", &PatchParams::apply("bench"), &Patch::Apply(pool)).await.unwrap();

    let dir = std::env::temp_dir().join(format!("ferrolb-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap();
    let mut controller = Reaped(
        Command::new(bin)
            .args([
                "--kubeconfig",
                kubeconfig.to_str().unwrap(),
                "--namespace",
                "ferrolb-system",
                "--identity",
                "bench",
            ])
            .args(["--metrics-addr", "127.0.0.1:0", "--health-addr", "127.0.0.1:0", "--log-level", "warn"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = controller.0.id();
    // Wait until it leads and has synced (it writes the pool's status then).
    let pools: Api<IPPool> = Api::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    while pools.get("bench").await.unwrap().status.is_none() {
        assert!(Instant::now() < deadline, "the controller never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Observe addresses as they appear.
    let seen: Arc<Mutex<HashMap<String, (Instant, String)>>> = Arc::default();
    let observer = {
        let seen = seen.clone();
        let api: Api<Service> = Api::namespaced(client.clone(), "default");
        tokio::spawn(async move {
            let mut stream = watcher(api, watcher::Config::default()).applied_objects().boxed();
            while let Ok(Some(svc)) = stream.try_next().await {
                let ip = svc
                    .status
                    .as_ref()
                    .and_then(|s| s.load_balancer.as_ref())
                    .and_then(|l| l.ingress.as_ref())
                    .and_then(|i| i.first())
                    .and_then(|i| i.ip.clone());
                if let Some(ip) = ip {
                    seen.lock().unwrap().entry(svc.name_any()).or_insert((Instant::now(), ip));
                }
            }
        })
    };

    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let started = Instant::now();
    let created: Vec<(String, Instant)> = futures::stream::iter(0..SERVICES)
        .map(|i| {
            let svcs = svcs.clone();
            async move {
                let name = format!("svc-{i:05}");
                let svc: Service = serde_json::from_value(json!({"metadata": {"name": name},
                    "spec": {"type": "LoadBalancer", "selector": {"app": "x"}, "ports": [{"port": 80}]}}))
                .unwrap();
                svcs.create(&PostParams::default(), &svc).await.unwrap();
                (name, Instant::now())
            }
        })
        .buffer_unordered(CREATE_CONCURRENCY)
        .collect()
        .await;
    let created_all = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.lock().unwrap().len() < SERVICES {
        assert!(Instant::now() < deadline, "only {} of {SERVICES} got addresses", seen.lock().unwrap().len());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rss = peak_rss_kib(pid);
    let seen = seen.lock().unwrap().clone();
    let done = seen.values().map(|(t, _)| *t).max().unwrap();
    let all = done.duration_since(started);
    let created_at: BTreeMap<&str, Instant> = created.iter().map(|(n, t)| (n.as_str(), *t)).collect();
    let mut latency: Vec<Duration> =
        seen.iter().map(|(n, (t, _))| t.saturating_duration_since(created_at[n.as_str()])).collect();
    latency.sort();
    let distinct: HashSet<&String> = seen.values().map(|(_, ip)| ip).collect();
    assert_eq!(distinct.len(), SERVICES, "an address was handed out twice");
    observer.abort();
    controller.kill();
    let _ = std::fs::remove_dir_all(&dir);

    println!("| measure | value | target |");
    println!("|---|---:|---|");
    println!("| Services | {SERVICES} | |");
    println!("| all created (client, {CREATE_CONCURRENCY} at a time) | {:.2} s | |", created_all.as_secs_f64());
    println!("| all have addresses | {:.2} s | < 10 s |", all.as_secs_f64());
    println!("| create → address p50 | {:.0} ms | |", percentile(&latency, 0.5).as_secs_f64() * 1e3);
    println!("| create → address p99 | {:.0} ms | |", percentile(&latency, 0.99).as_secs_f64() * 1e3);
    println!("| controller peak RSS | {:.1} MB | < 50 MB |", rss as f64 / 1024.0);
}
