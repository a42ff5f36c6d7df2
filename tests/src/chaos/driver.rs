//! Runs a soak against a real lab: draws actions from the seed, does them (kube-rs writes,
//! signals, links, sim-apiserver faults), checks after every step that no address was handed to
//! two incompatible Services and that nothing crashed or grew, and at quiet points heals
//! everything and waits (up to [`Config::settle`]) for the whole truth: every fitting Service
//! addressed from its pools, pool status right, exactly one node MAC answering for each address
//! and none for free ones, and a new connection through every VIP answered by a pod.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use ferrolb_crds::IPPool;
use ferrolb_crds::annotations::{IPS, POOL, SHARING_KEY};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::Value;

use super::action::{Action, choose};
use super::checks::{self, Pair, Seen};
use super::rng::Rng;
use super::world::{CONTROLLERS, NODES, Pool, Svc, World};
use crate::lab::netns::LabError;
use crate::lab::processes::Proc;
use crate::lab::{Lab, probe, topology};

/// How a soak runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The seed: the same seed draws the same actions.
    pub seed: u64,
    /// How long to draw actions (a last quiet point follows).
    pub duration: Duration,
    /// A quiet point after this many actions.
    pub quiet_every: usize,
    /// How long a quiet point waits for the truth after healing.
    pub settle: Duration,
    /// A process using more resident memory than this fails the soak.
    pub max_rss_kib: u64,
}

impl Config {
    /// The defaults for `seed` and `duration`: a quiet point every 15 actions; 75 s to settle (the
    /// controller's Lease is 15 s, a held speaker's restart grace 30 s); 256 MiB per process (the
    /// chart's memory limit).
    pub fn new(seed: u64, duration: Duration) -> Self {
        Self { seed, duration, quiet_every: 15, settle: Duration::from_secs(75), max_rss_kib: 256 * 1024 }
    }
}

/// What a soak did and checked.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Actions applied, by kind.
    pub actions: BTreeMap<String, u64>,
    /// Step checks passed (Service list read and judged, processes alive, memory in bounds).
    pub step_checks: u64,
    /// Quiet points reached with everything true.
    pub quiet_points: u64,
    /// Individual facts confirmed at quiet points (a Service addressed right, a pool's status, an
    /// address answered by one MAC, a free one by none, a connection answered by a pod).
    pub quiet_checks: u64,
    /// The longest a quiet point waited for the truth after healing.
    pub longest_settle: Duration,
    /// The largest resident memory seen, controller and speaker (KiB).
    pub max_rss_kib: (u64, u64),
    /// How long it ran.
    pub elapsed: Duration,
}

impl Report {
    /// All actions applied.
    pub fn total_actions(&self) -> u64 {
        self.actions.values().sum()
    }
}

/// Why a soak failed, with what is needed to replay it.
#[derive(Debug)]
pub struct Failure {
    /// The seed (replays the same actions).
    pub seed: u64,
    /// The step at which it failed.
    pub step: u64,
    /// What was wrong.
    pub problems: Vec<String>,
    /// The last actions before it.
    pub recent: Vec<String>,
    /// Where the lab's logs are (kept on failure).
    pub logs: std::path::PathBuf,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "chaos seed {:#x} failed at step {}:", self.seed, self.step)?;
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        writeln!(f, "last actions:")?;
        for a in &self.recent {
            writeln!(f, "  {a}")?;
        }
        writeln!(f, "logs: {}", self.logs.display())?;
        write!(
            f,
            "replay: FERROLB_CHAOS_SEEDS={0:#x} cargo test -p ferrolb-tests --test chaos -- --nocapture\n    or: ferrolb-lab chaos --seed {0:#x}",
            self.seed
        )
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "| seed | {:#x} |", self.seed)?;
        writeln!(f, "|---|---|")?;
        writeln!(f, "| ran for | {:.0} s |", self.elapsed.as_secs_f64())?;
        writeln!(f, "| actions applied | {} |", self.total_actions())?;
        for (kind, n) in &self.actions {
            writeln!(f, "| &nbsp; {kind} | {n} |")?;
        }
        writeln!(f, "| step checks passed | {} |", self.step_checks)?;
        writeln!(f, "| quiet points passed | {} |", self.quiet_points)?;
        writeln!(f, "| facts confirmed at quiet points | {} |", self.quiet_checks)?;
        writeln!(f, "| longest settle after healing | {:.1} s |", self.longest_settle.as_secs_f64())?;
        writeln!(
            f,
            "| peak RSS controller / speaker | {:.1} / {:.1} MiB |",
            self.max_rss_kib.0 as f64 / 1024.0,
            self.max_rss_kib.1 as f64 / 1024.0
        )
    }
}

const CONTROLLER_IDS: [&str; CONTROLLERS] = ["lab-a", "lab-b"];
const TARGET_PORT: u16 = 8080;

/// The soak's cluster: the lab and the processes it may stop and start.
struct Cluster {
    lab: Lab,
    controllers: Vec<Option<Proc>>,
    speakers: Vec<Option<Proc>>,
    backends: Vec<tokio::task::JoinHandle<()>>,
    services: Api<Service>,
    pools: Api<IPPool>,
}

fn io(e: impl std::fmt::Display) -> LabError {
    LabError::Io(std::io::Error::other(e.to_string()))
}

/// Runs one soak; `say` gets a line per quiet point.
pub async fn soak(cfg: Config, say: impl Fn(&str)) -> Result<Report, Box<Failure>> {
    let fail = |step, problems: Vec<String>, recent: &[String], logs: std::path::PathBuf| {
        Box::new(Failure { seed: cfg.seed, step, problems, recent: recent.to_vec(), logs })
    };
    let mut cluster = match Cluster::start().await {
        Ok(c) => c,
        Err(e) => return Err(fail(0, vec![format!("the lab did not start: {e}")], &[], Default::default())),
    };
    let logs = cluster.lab.dir.clone();
    let result = run(&mut cluster, &cfg, &say).await;
    if result.is_err() {
        cluster.post_mortem().await;
        cluster.lab.keep_files();
    }
    result.map_err(|(step, problems, recent)| fail(step, problems, &recent, logs))
}

type Failed = (u64, Vec<String>, Vec<String>);

async fn run(c: &mut Cluster, cfg: &Config, say: &impl Fn(&str)) -> Result<Report, Failed> {
    let started = Instant::now();
    let mut rng = Rng::new(cfg.seed);
    let mut world = World::default();
    let mut report = Report { seed: cfg.seed, ..Default::default() };
    let mut recent: Vec<String> = Vec::new();
    let mut before: BTreeMap<Pair, bool> = BTreeMap::new();
    // Every address each Service has held at any step (what a Service may keep when a change it
    // asks for cannot be met).
    let mut held: BTreeMap<String, BTreeSet<IpAddr>> = BTreeMap::new();
    let mut step = 0u64;
    let failed = |step, problems, recent: &Vec<String>| (step, problems, recent.clone());
    while started.elapsed() < cfg.duration {
        step += 1;
        let action = choose(&mut rng, &world);
        recent.push(format!("{step}: {action:?}"));
        if recent.len() > 25 {
            recent.remove(0);
        }
        c.act(&action).await.map_err(|e| failed(step, vec![format!("{action:?} failed: {e}")], &recent))?;
        world.apply(&action);
        *report.actions.entry(kind(&action)).or_default() += 1;
        let edited = match &action {
            Action::ChangeService(s) => Some(format!("default/{}", s.name)),
            _ => None,
        };
        let seen = c.seen().await.map_err(|e| failed(step, vec![e.to_string()], &recent))?;
        for s in &seen {
            held.entry(s.name.clone()).or_default().extend(s.ips.iter().copied());
        }
        let now = checks::shared_pairs(&seen);
        let mut problems = checks::new_incompatible(&before, &now, edited.as_deref());
        problems.extend(c.health(cfg, &mut report));
        if !problems.is_empty() {
            return Err(failed(step, problems, &recent));
        }
        before = now;
        report.step_checks += 1;
        tokio::time::sleep(Duration::from_millis(rng.between(100, 1500))).await;
        if step.is_multiple_of(cfg.quiet_every as u64) {
            quiet(c, cfg, &mut world, &held, &mut report, say).await.map_err(|p| failed(step, p, &recent))?;
            before = checks::shared_pairs(&c.seen().await.map_err(|e| failed(step, vec![e.to_string()], &recent))?);
        }
    }
    quiet(c, cfg, &mut world, &held, &mut report, say).await.map_err(|p| failed(step, p, &recent))?;
    report.elapsed = started.elapsed();
    Ok(report)
}

/// The name of an action's kind (for the counts).
fn kind(a: &Action) -> String {
    format!("{a:?}").split([' ', '(', '{']).next().unwrap_or_default().to_string()
}

/// Heals everything, then waits until the whole truth holds.
async fn quiet(
    c: &mut Cluster,
    cfg: &Config,
    world: &mut World,
    held: &BTreeMap<String, BTreeSet<IpAddr>>,
    report: &mut Report,
    say: &impl Fn(&str),
) -> Result<(), Vec<String>> {
    let mut heal = vec![Action::HoldLeases(false), Action::Latency(0)];
    heal.extend((0..NODES).filter(|i| !world.links[*i]).map(|i| Action::Link { i, up: true }));
    heal.extend((0..CONTROLLERS).filter(|i| !world.controllers[*i]).map(Action::StartController));
    heal.extend((0..NODES).filter(|i| !world.speakers[*i]).map(Action::StartSpeaker));
    for a in heal {
        c.act(&a).await.map_err(|e| vec![format!("healing with {a:?} failed: {e}")])?;
        world.apply(&a);
    }
    let healed = Instant::now();
    loop {
        let problems = match truth(c, world, held).await {
            Ok(confirmed) => {
                report.quiet_points += 1;
                report.quiet_checks += confirmed;
                report.longest_settle = report.longest_settle.max(healed.elapsed());
                say(&format!(
                    "quiet point {}: {} Services, {} facts confirmed after {:.1} s",
                    report.quiet_points,
                    world.services.len(),
                    confirmed,
                    healed.elapsed().as_secs_f64()
                ));
                return Ok(());
            }
            Err(p) => p,
        };
        if healed.elapsed() > cfg.settle {
            let mut problems = problems;
            problems.insert(0, format!("not settled {} s after healing:", cfg.settle.as_secs()));
            return Err(problems);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Everything a quiet point demands; the number of facts confirmed, or what is wrong.
async fn truth(c: &Cluster, world: &World, earlier: &BTreeMap<String, BTreeSet<IpAddr>>) -> Result<u64, Vec<String>> {
    let seen = c.seen().await.map_err(|e| vec![e.to_string()])?;
    let pools = c.pools.list(&ListParams::default()).await.map_err(|e| vec![e.to_string()])?.items;
    let mut problems = checks::incompatible(&checks::shared_pairs(&seen));
    problems.extend(checks::unmet(world, &seen, earlier));
    problems.extend(checks::pool_status(world, &pools, &seen));
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut confirmed = (world.services.len() + world.pools.len()) as u64;
    let held: BTreeSet<IpAddr> = seen.iter().flat_map(|s| s.ips.iter().copied()).collect();
    // Free addresses: the first two of each pool that nobody holds.
    let free: Vec<IpAddr> =
        world.pools.values().flat_map(|p| p.addresses().into_iter().filter(|a| !held.contains(a)).take(2)).collect();
    let t = &c.lab.topology;
    let node_of: BTreeMap<[u8; 6], usize> =
        t.nodes.iter().enumerate().map(|(i, n)| (probe::mac_bytes(&n.mac), i)).collect();
    let local: BTreeSet<IpAddr> = seen.iter().filter(|s| s.local).flat_map(|s| s.ips.iter().copied()).collect();
    let asks = held.iter().chain(&free).map(|ip| {
        let (client, ip) = (t.client.clone(), *ip);
        tokio::task::spawn_blocking(move || {
            let macs = match ip {
                IpAddr::V4(v4) => {
                    probe::arp_who_has(&client.namespace, &client.interface, &client.mac, client.ipv4, v4)
                }
                IpAddr::V6(v6) => {
                    probe::ndp_who_has(&client.namespace, &client.interface, &client.mac, client.ipv6, v6)
                }
            };
            (ip, macs.unwrap_or_default())
        })
    });
    let connects = seen.iter().filter(|s| !s.ips.is_empty()).flat_map(|s| {
        let port = s.ports.iter().find(|(p, _)| p == "TCP").map_or(0, |(_, n)| *n as u16);
        s.ips.iter().map(move |ip| (s.short().to_string(), SocketAddr::new(*ip, port)))
    });
    let connects: Vec<_> = connects
        .map(|(name, addr)| {
            let ns = t.client.namespace.clone();
            tokio::task::spawn_blocking(move || (name, addr, probe::tcp_once(&ns, addr)))
        })
        .collect();
    for ask in futures::future::join_all(asks).await {
        let (ip, macs) = ask.map_err(|e| vec![e.to_string()])?;
        let nodes: Vec<Option<usize>> = macs.iter().map(|m| node_of.get(m).copied()).collect();
        let wanted = usize::from(held.contains(&ip));
        if macs.len() != wanted || nodes.contains(&None) {
            let shown: Vec<String> = macs.iter().map(probe::mac_text).collect();
            problems.push(format!("{ip} is answered by {shown:?}; expected {wanted} node MAC"));
        } else if let [Some(n)] = nodes[..]
            && local.contains(&ip)
            && !world.ready[n]
        {
            problems.push(format!("{ip} (Local) is announced by node {} without a Ready endpoint", n + 1));
        }
    }
    for connect in futures::future::join_all(connects).await {
        let (name, addr, answer) = connect.map_err(|e| vec![e.to_string()])?;
        if !answer.as_deref().is_some_and(|a| a.starts_with("pod=")) {
            problems.push(format!("a new connection to {name} at {addr} got {answer:?}"));
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    confirmed += (held.len() + free.len()) as u64;
    confirmed += seen.iter().map(|s| s.ips.len() as u64).sum::<u64>();
    Ok(confirmed)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok())
}

impl Cluster {
    async fn start() -> Result<Self, LabError> {
        let lab = Lab::build(NODES, false).await?;
        lab.register_cluster().await?;
        let controllers =
            CONTROLLER_IDS.iter().map(|id| lab.start_controller_as(id).map(Some)).collect::<Result<Vec<_>, _>>()?;
        let speakers = (0..NODES).map(|i| lab.start_speaker(i, &[]).map(Some)).collect::<Result<Vec<_>, _>>()?;
        let backends = lab.start_backends("echo", TARGET_PORT).await?;
        let client = lab.client().await?;
        let cluster = Cluster {
            services: Api::namespaced(client.clone(), "default"),
            pools: Api::all(client),
            lab,
            controllers,
            speakers,
            backends,
        };
        let world = World::default();
        for p in world.pools.values() {
            cluster.put_pool(p).await?;
        }
        Ok(cluster)
    }

    /// Writes what a failure needs explained into the lab's directory (kept): every node's
    /// nftables ruleset, addresses and neighbours, and the API's Services, EndpointSlices, pools
    /// and Events.
    async fn post_mortem(&self) {
        let dir = &self.lab.dir;
        for n in &self.lab.topology.nodes {
            let mut text = String::new();
            for (program, args) in [("nft", &["list", "ruleset"][..]), ("ip", &["addr"][..]), ("ip", &["neigh"][..])] {
                let out = crate::lab::netns::exec(&n.namespace, program, args).unwrap_or_else(|e| e.to_string());
                text.push_str(&format!("### {program} {}\n{out}\n", args.join(" ")));
            }
            let _ = std::fs::write(dir.join(format!("post-mortem-{}.txt", n.name)), text);
        }
        for (group, plural) in
            [("", "services"), ("discovery.k8s.io", "endpointslices"), ("ferrolb.io", "ippools"), ("", "events")]
        {
            let objects = self.lab.api.objects(group, plural);
            let text = serde_json::to_string_pretty(&objects).unwrap_or_default();
            let _ = std::fs::write(dir.join(format!("post-mortem-{plural}.json")), text);
        }
    }

    /// The Services in `default`, read from the API (retried through injected faults).
    async fn seen(&self) -> Result<Vec<Seen>, LabError> {
        let mut last = None;
        for _ in 0..50 {
            match self.services.list(&ListParams::default()).await {
                Ok(list) => return Ok(list.items.iter().map(Seen::from_service).collect()),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(io(format!("listing Services kept failing: {last:?}")))
    }

    /// Processes that exited by themselves, or grew past the bound; records the largest RSS.
    fn health(&mut self, cfg: &Config, report: &mut Report) -> Vec<String> {
        let mut problems = Vec::new();
        let controllers = self.controllers.iter_mut().zip(CONTROLLER_IDS.map(|i| format!("controller {i}")));
        let speakers = self.speakers.iter_mut().enumerate().map(|(i, p)| (p, format!("speaker of node-{}", i + 1)));
        for (slot, name) in controllers.chain(speakers) {
            let Some(p) = slot else { continue };
            if let Ok(Some(status)) = p.child.try_wait() {
                problems.push(format!("{name} exited by itself ({status})"));
                continue;
            }
            let rss = rss_kib(p.child.id()).unwrap_or(0);
            let max =
                if name.starts_with("controller") { &mut report.max_rss_kib.0 } else { &mut report.max_rss_kib.1 };
            *max = (*max).max(rss);
            if rss > cfg.max_rss_kib {
                problems.push(format!("{name} uses {rss} KiB, over {} KiB", cfg.max_rss_kib));
            }
        }
        problems
    }

    async fn act(&mut self, a: &Action) -> Result<(), LabError> {
        let shared = self.lab.api.shared().clone();
        match a {
            Action::CreateService(s) | Action::ChangeService(s) => self.put_service(s).await?,
            Action::DeleteService(name) => {
                retry(|| async {
                    match self.services.delete(name, &DeleteParams::default()).await {
                        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                        r => r.map(|_| ()),
                    }
                })
                .await?
            }
            Action::ApplyPool(p) => self.put_pool(p).await?,
            Action::DeletePool => {
                retry(|| async {
                    match self.pools.delete("extra", &DeleteParams::default()).await {
                        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                        r => r.map(|_| ()),
                    }
                })
                .await?
            }
            Action::StopController { i, hard } => stop(&mut self.controllers[*i], *hard),
            Action::StartController(i) => {
                self.controllers[*i] = Some(self.lab.start_controller_as(CONTROLLER_IDS[*i])?)
            }
            Action::StopSpeaker { i, hard } => stop(&mut self.speakers[*i], *hard),
            Action::StartSpeaker(i) => self.speakers[*i] = Some(self.lab.start_speaker(*i, &[])?),
            Action::Link { i, up } => topology::set_link(&self.lab.topology, *i, *up)?,
            Action::PodReady { i, ready } => {
                let node = self.lab.topology.nodes[*i].name.clone();
                retry(|| self.lab.set_pod_ready("echo", &node, *ready)).await?
            }
            Action::DropWatches => shared.drop_watches(),
            Action::Compact => shared.compact(),
            Action::RestartWatchCache => shared.restart_watch_cache(),
            Action::FailWrites { count, code } => shared.fail_next_writes(*count, *code),
            Action::Latency(ms) => shared.set_latency(Duration::from_millis(*ms)),
            Action::HoldLeases(held) => shared.hold_requests(held.then_some("leases/ferrolb-controller")),
        }
        Ok(())
    }

    /// Creates the Service or replaces its spec and the soak's annotations, keeping what others
    /// wrote (the controller's annotation, allocated cluster IPs), as `kubectl edit` does.
    async fn put_service(&self, s: &Svc) -> Result<(), LabError> {
        let manifest = s.manifest();
        retry(|| async {
            let Some(current) = self.services.get_opt(&s.name).await? else {
                let new: Service = serde_json::from_value(manifest.clone()).map_err(kube::Error::SerdeError)?;
                return self.services.create(&PostParams::default(), &new).await.map(|_| ());
            };
            let mut obj = serde_json::to_value(&current).map_err(kube::Error::SerdeError)?;
            let annotations = obj["metadata"]["annotations"].as_object_mut();
            let mut merged = annotations.map(std::mem::take).unwrap_or_default();
            for k in [IPS.name, POOL.name, SHARING_KEY.name] {
                merged.remove(k);
            }
            merged.extend(manifest["metadata"]["annotations"].as_object().cloned().unwrap_or_default());
            obj["metadata"]["annotations"] = Value::Object(merged);
            for k in ["ports", "externalTrafficPolicy", "ipFamilyPolicy", "ipFamilies"] {
                obj["spec"][k] = manifest["spec"][k].clone();
            }
            if !s.dual
                && let Some(ips) = obj["spec"]["clusterIPs"].as_array_mut()
            {
                // Back to single-stack: the secondary cluster IP goes, as `kubectl edit` must do.
                ips.truncate(1);
            }
            if let Some(spec) = obj["spec"].as_object_mut()
                && !s.local
            {
                spec.remove("healthCheckNodePort");
            }
            let svc: Service = serde_json::from_value(obj).map_err(kube::Error::SerdeError)?;
            self.services.replace(&s.name, &PostParams::default(), &svc).await.map(|_| ())
        })
        .await
    }

    /// Creates pool `p` or replaces its whole spec.
    async fn put_pool(&self, p: &Pool) -> Result<(), LabError> {
        retry(|| async {
            let body = serde_json::json!({"apiVersion": "ferrolb.io/v1alpha1", "kind": "IPPool",
                "metadata": {"name": p.name}, "spec": p.spec()});
            let mut pool: IPPool = serde_json::from_value(body).map_err(kube::Error::SerdeError)?;
            match self.pools.get_opt(p.name).await? {
                None => self.pools.create(&PostParams::default(), &pool).await.map(|_| ()),
                Some(current) => {
                    pool.metadata.resource_version = current.metadata.resource_version;
                    self.pools.replace(p.name, &PostParams::default(), &pool).await.map(|_| ())
                }
            }
        })
        .await
    }
}

fn stop(slot: &mut Option<Proc>, hard: bool) {
    if let Some(mut p) = slot.take() {
        if hard {
            p.kill();
        } else {
            let _ = p.terminate();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for b in &self.backends {
            b.abort();
        }
    }
}

/// Retries a write through conflicts and injected 500s/429s (the soak's own writes meet the
/// faults it injects), for up to 10 s.
async fn retry<F, Fut, E>(mut f: F) -> Result<(), LabError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match f().await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(io(e)),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
