//! The speaker's work loop: keep the Lease, exchange heartbeats, decide from the watched objects
//! which addresses this node announces, and drive the responders; on shutdown, hand over.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrolb_crds::IPPool;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::UdpSocket;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;

use ferrolb_crds::annotations::ANNOUNCED_CONDITION;
use ferrolb_process::events::Recorder;

use crate::cluster::desired::{self, Cluster};
use crate::cluster::views;
use crate::forwarding;
use crate::forwarding::readback;
use crate::forwarding::render::Ruleset;
use crate::l2::interfaces::{self, Interface};
use crate::l2::responder::{Responder, Seen};
use crate::membership::heartbeat::Heartbeat;
use crate::membership::liveness::{Liveness, Timings};
use crate::membership::{lease, udp};

/// How the speaker runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node.
    pub node: String,
    /// Namespace of the speakers' Leases.
    pub namespace: String,
    /// UDP port for heartbeats.
    pub peer_port: u16,
    /// HMAC key for heartbeats.
    pub secret: Option<Vec<u8>>,
    /// Heartbeat timings.
    pub timings: Timings,
    /// How long a speaker Lease lasts without renewal.
    pub lease_duration: Duration,
    /// Program nftables forwarding (`--forwarding nftables`).
    pub forwarding: bool,
}

/// Labels naming an address.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AddressLabel {
    /// The address.
    pub address: String,
}

/// The speaker's metrics.
#[derive(Clone, Default)]
pub struct Metrics {
    /// Addresses this node announces.
    pub announced: Gauge,
    /// Live peers (this node included).
    pub peers: Gauge,
    /// Requests for our addresses received, per address.
    pub requests: Family<AddressLabel, Gauge>,
    /// Replies sent, per address.
    pub replies: Family<AddressLabel, Gauge>,
    /// Gratuitous frames sent.
    pub gratuitous: Gauge,
    /// Changes of what this node announces.
    pub election_changes: Counter,
    /// Other hosts answering for our addresses.
    pub conflicts: Counter,
    /// Heartbeats refused (forged, replayed, stale, malformed).
    pub refused: Gauge,
    /// nftables transactions applied.
    pub nft_applies: Counter,
    /// Times the table was found changed by someone else and put back.
    pub nft_repairs: Counter,
    /// Read-backs that found the table as applied.
    pub nft_verified: Counter,
    /// Base chains of other tables that drop forwarded or NodePort traffic.
    pub firewall_blocking: Gauge,
}

impl Metrics {
    /// Registers every metric under `ferrolb_speaker_`.
    pub fn register(&self, r: &mut Registry) {
        r.register("ferrolb_speaker_announced_addresses", "Addresses this node announces", self.announced.clone());
        r.register("ferrolb_speaker_live_peers", "Live speakers, this one included", self.peers.clone());
        r.register("ferrolb_speaker_requests", "ARP/NDP requests received, per address", self.requests.clone());
        r.register("ferrolb_speaker_replies", "ARP/NDP replies sent, per address", self.replies.clone());
        r.register(
            "ferrolb_speaker_gratuitous",
            "Gratuitous ARP / unsolicited NA frames sent",
            self.gratuitous.clone(),
        );
        r.register(
            "ferrolb_speaker_election_changes",
            "Changes of what this node announces",
            self.election_changes.clone(),
        );
        r.register(
            "ferrolb_speaker_conflicts",
            "Other hosts answering for addresses this node owns",
            self.conflicts.clone(),
        );
        r.register(
            "ferrolb_speaker_heartbeats_refused",
            "Heartbeats refused (forged, replayed, stale)",
            self.refused.clone(),
        );
        r.register("ferrolb_speaker_nft_applies", "nftables transactions applied", self.nft_applies.clone());
        r.register(
            "ferrolb_speaker_nft_repairs",
            "Times ferrolb's nftables table was changed by others and repaired",
            self.nft_repairs.clone(),
        );
        r.register(
            "ferrolb_speaker_nft_verified",
            "Read-backs that found ferrolb's nftables table as it was applied",
            self.nft_verified.clone(),
        );
        r.register(
            "ferrolb_speaker_firewall_blocking_chains",
            "Chains of other tables whose drop policy blocks forwarded or NodePort traffic",
            self.firewall_blocking.clone(),
        );
    }
}

fn spawn_store<K>(tasks: &mut JoinSet<()>, api: Api<K>, changed: Arc<Notify>) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()).default_backoff());
    tasks.spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            if let Err(e) = ev {
                tracing::warn!(error = %e, "watch failed; retrying");
            }
            changed.notify_one();
        }
    });
    reader
}

/// How long after taking an address over claims by others are not reported as conflicts.
const TAKEOVER_QUIET: Duration = Duration::from_secs(4);

/// When repeats of a takeover's announcement go out, after the first.
const REPEATS: [Duration; 4] =
    [Duration::from_millis(250), Duration::from_millis(750), Duration::from_millis(1500), Duration::from_secs(3)];

/// Runs until `shutdown` completes, then hands over and returns.
pub async fn run(
    client: Client,
    cfg: Config,
    metrics: Metrics,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), kube::Error> {
    let nodes_api: Api<Node> = Api::all(client.clone());
    // Our heartbeat address is the Node's InternalIP (what other nodes can reach).
    let my_ip: IpAddr = loop {
        let ip = nodes_api.get_opt(&cfg.node).await?.and_then(|n| {
            n.status?.addresses?.into_iter().find(|a| a.type_ == "InternalIP").and_then(|a| a.address.parse().ok())
        });
        if let Some(ip) = ip {
            break ip;
        }
        tracing::warn!(node = %cfg.node, "the Node has no InternalIP yet; waiting");
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let peer_addr = SocketAddr::new(my_ip, cfg.peer_port);
    let changed = Arc::new(Notify::new());
    let mut tasks = JoinSet::new();
    let services = spawn_store(&mut tasks, Api::<Service>::all(client.clone()), changed.clone());
    let slices = spawn_store(&mut tasks, Api::<EndpointSlice>::all(client.clone()), changed.clone());
    let nodes = spawn_store(&mut tasks, nodes_api, changed.clone());
    let pools = spawn_store(&mut tasks, Api::<IPPool>::all(client.clone()), changed.clone());
    let leases_api: Api<Lease> = Api::namespaced(client.clone(), &cfg.namespace);
    let leases = spawn_store(&mut tasks, leases_api.clone(), changed.clone());
    for ready in [services.wait_until_ready().await, slices.wait_until_ready().await, nodes.wait_until_ready().await] {
        ready.map_err(|e| kube::Error::Service(Box::new(e)))?;
    }
    let _ = pools.wait_until_ready().await;
    let _ = leases.wait_until_ready().await;
    lease::renew(&leases_api, &cfg.node, peer_addr, cfg.lease_duration).await?;

    let socket = Arc::new(
        UdpSocket::bind(SocketAddr::new(
            if my_ip.is_ipv4() { [0, 0, 0, 0].into() } else { std::net::Ipv6Addr::UNSPECIFIED.into() },
            cfg.peer_port,
        ))
        .await
        .map_err(|e| kube::Error::Service(Box::new(e)))?,
    );
    let liveness = Arc::new(Mutex::new(Liveness::default()));
    let refused = Arc::new(udp::Refused::default());
    tasks.spawn(udp::receive(
        socket.clone(),
        cfg.node.clone(),
        cfg.secret.clone(),
        liveness.clone(),
        refused.clone(),
        changed.clone(),
    ));
    {
        let (api, node, every) = (leases_api.clone(), cfg.node.clone(), cfg.lease_duration / 3);
        tasks.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = lease::renew(&api, &node, peer_addr, every * 3).await {
                    tracing::warn!(error = %e, "could not renew the speaker Lease");
                }
            }
        });
    }

    let (rules_tx, rules_rx) = tokio::sync::watch::channel(None::<Arc<Ruleset>>);
    let firewall = Firewall {
        client: client.clone(),
        node: cfg.node.clone(),
        recorder: Recorder::new(client.clone(), "ferrolb-speaker", &cfg.node),
    };
    let forwarder = cfg.forwarding.then(|| tokio::spawn(forward(rules_rx, metrics.clone(), firewall)));
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    let mut state = State {
        cfg: cfg.clone(),
        recorder: Recorder::new(client.clone(), "ferrolb-speaker", &cfg.node),
        client: client.clone(),
        services_by_ip: BTreeMap::new(),
        reported: BTreeMap::new(),
        owned_since: BTreeMap::new(),
        announced_on: BTreeMap::new(),
        condition_attempts: BTreeMap::new(),
        writes: JoinSet::new(),
        metrics,
        responders: BTreeMap::new(),
        mine: BTreeMap::new(),
        repeats: Vec::new(),
        seen_tx,
        incarnation: udp::now_ms(),
        sequence: 0,
        interfaces_checked: None,
        interfaces: Vec::new(),
    };
    let mut tick = tokio::time::interval(cfg.timings.interval);
    let started = Instant::now();
    let mut settled = false;
    // The forwarding depends on watched objects only, not on liveness: rebuild it when they
    // change, not on every heartbeat tick.
    let mut objects_changed = true;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = tick.tick() => state.heartbeat(&socket, &leases, false).await,
            _ = changed.notified() => objects_changed = true,
            Some(seen) = seen_rx.recv() => state.seen(seen),
            _ = &mut shutdown => break,
        }
        state.metrics.refused.set(
            [&refused.malformed, &refused.bad_signature, &refused.replayed, &refused.stale]
                .iter()
                .map(|c| c.load(std::sync::atomic::Ordering::Relaxed) as i64)
                .sum(),
        );
        let alive = {
            let mut l = liveness.lock().unwrap_or_else(|e| e.into_inner());
            l.set_registered(
                lease::peers(leases.state().iter().map(|l| &**l), jiff::Timestamp::now()).into_keys(),
                Instant::now(),
            );
            // Announce nothing until the peers are heard (or the grace is over), so a starting
            // speaker never takes an address a live peer holds. Decided once, at start.
            if !settled {
                let nodes = nodes.state();
                let expects = nodes.iter().filter(|n| views::node(n).usable).filter_map(|n| n.metadata.name.as_deref());
                settled = l.settled(&cfg.node, expects, started.elapsed(), &cfg.timings);
            }
            l.alive(&cfg.node, false, &cfg.timings, Instant::now())
        };
        state.metrics.peers.set(alive.len() as i64);
        if !settled {
            continue;
        }
        let cluster = snapshot(&services, &slices, &nodes, &pools);
        state.apply(&desired::decide(&cluster, &alive));
        state.ensure_conditions(&services);
        if cfg.forwarding && objects_changed {
            objects_changed = false;
            let model = forwarding::model::build(
                services.state().iter().map(|s| &**s),
                slices.state().iter().map(|s| &**s),
                &cfg.node,
            );
            // Services that did not change keep their part of the table as it was.
            let ruleset = match rules_tx.borrow().as_deref() {
                Some(old) => old.rebuilt(&model),
                None => forwarding::render::build(&model),
            };
            rules_tx.send_if_modified(|current| {
                if current.as_deref() == Some(&ruleset) {
                    return false;
                }
                *current = Some(Arc::new(ruleset));
                true
            });
        }
    }

    // Hand over: tell the peers we are leaving, keep answering until another node has announced
    // every address we hold (we see its gratuitous frames), then stop.
    tracing::info!(addresses = state.mine.len(), "leaving: handing addresses over");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut pending: BTreeSet<IpAddr> = state.mine.keys().copied().collect();
    for _ in 0..3 {
        state.heartbeat(&socket, &leases, true).await;
    }
    let _ = lease::unregister(&leases_api, &cfg.node).await;
    while !pending.is_empty() {
        tokio::select! {
            Some(Seen::Conflict { ip, .. }) = seen_rx.recv() => { pending.remove(&ip); }
            _ = tokio::time::sleep(cfg.timings.interval) => state.heartbeat(&socket, &leases, true).await,
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    if !pending.is_empty() {
        tracing::warn!(addresses = ?pending, "no other node took these over before the deadline");
    }
    drop(state);
    tasks.shutdown().await;
    if let Some(f) = forwarder {
        f.abort();
        if let Err(e) = forwarding::nft::remove().await {
            tracing::warn!(error = %e, "could not remove the nftables table");
        }
    }
    Ok(())
}

/// Where firewall findings are reported.
struct Firewall {
    client: Client,
    node: String,
    recorder: Recorder,
}

impl Firewall {
    /// Looks for drop policies of other tables; reports a new finding once (log and Event on the
    /// Node), and keeps the metric current.
    async fn check(&self, metrics: &Metrics, reported: &mut Vec<String>) {
        let Ok(json) = forwarding::nft::chains_json().await else { return };
        let found = forwarding::firewall::blocking_chains(&json);
        metrics.firewall_blocking.set(found.len() as i64);
        if found.is_empty() || found == *reported {
            *reported = found;
            return;
        }
        let message = format!(
            "the host firewall may drop traffic ferrolb forwards to Service endpoints: {} (see docs/FORWARDING.md, \"Host firewalls\")",
            found.join("; ")
        );
        tracing::warn!(chains = ?found, "{message}");
        if let Ok(node) = Api::<Node>::all(self.client.clone()).get(&self.node).await {
            let _ = self.recorder.publish(&node.object_ref(&()), true, "ForwardingBlocked", "Forward", &message).await;
        }
        *reported = found;
    }
}

/// Applies every new ruleset (the latest wins, so bursts coalesce) as its difference from the
/// last one applied, and puts the whole table back at start, after a failure, and when someone
/// else changed or deleted it.
async fn forward(mut rules: tokio::sync::watch::Receiver<Option<Arc<Ruleset>>>, metrics: Metrics, firewall: Firewall) {
    const CHECK_EVERY: Duration = Duration::from_secs(2);
    // The ruleset the kernel holds, if the last transaction succeeded, and the content the
    // first read-back after it found (see `readback`).
    let mut applied: Option<Arc<Ruleset>> = None;
    let mut adopted: Option<std::collections::BTreeMap<String, u64>> = None;
    let mut reported: Vec<String> = Vec::new();
    let mut next_check = tokio::time::Instant::now() + CHECK_EVERY;
    loop {
        tokio::select! {
            changed = rules.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep_until(next_check) => {
                firewall.check(&metrics, &mut reported).await;
                let started = tokio::time::Instant::now();
                // Nothing applied yet (or the last attempt failed): try again below.
                if let Some(expected) = &applied {
                    let listed = forwarding::nft::current().await.ok().and_then(|json| readback::read(&json));
                    let intact = listed.as_ref().is_some_and(|l| {
                        l.shape == expected.shape() && adopted.as_ref().is_none_or(|c| *c == l.content)
                    });
                    if intact {
                        if adopted.is_none() {
                            adopted = listed.map(|l| l.content);
                        }
                        metrics.nft_verified.inc();
                    } else {
                        tracing::warn!("ferrolb's nftables table was changed by someone else; repairing it");
                        metrics.nft_repairs.inc();
                        applied = None;
                    }
                }
                // Reading back costs time with the table's size (~0.6 s at 10,000 Services): wait
                // twenty times as long as it took, so that it never takes more than 5% of a core.
                next_check = tokio::time::Instant::now() + CHECK_EVERY.max(started.elapsed() * 20);
            }
        }
        let Some(wanted) = rules.borrow_and_update().clone() else { continue };
        let text = match &applied {
            Some(old) if Arc::ptr_eq(old, &wanted) => continue,
            Some(old) => wanted.changes_from(old),
            None => wanted.full(),
        };
        if text.is_empty() {
            // The same table under another name: nothing to write, nothing to read back anew.
            applied = Some(wanted);
            continue;
        }
        match forwarding::nft::apply(&text).await {
            Ok(()) => {
                metrics.nft_applies.inc();
                applied = Some(wanted);
                adopted = None;
            }
            Err(e) => {
                // The kernel refused the transaction as a whole; start over from a full table.
                tracing::error!(error = %e, "could not program nftables");
                applied = None;
            }
        }
    }
}

fn snapshot(
    services: &Store<Service>,
    slices: &Store<EndpointSlice>,
    nodes: &Store<Node>,
    pools: &Store<IPPool>,
) -> Cluster {
    let mut ready_nodes: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in slices.state() {
        if let Some((key, n)) = views::ready_nodes(&s) {
            ready_nodes.entry(key).or_default().extend(n);
        }
    }
    Cluster {
        services: services.state().iter().filter_map(|s| views::service(s)).collect(),
        nodes: nodes.state().iter().map(|n| views::node(n)).map(|n| (n.name.clone(), n)).collect(),
        pools: pools.state().iter().map(|p| (p.metadata.name.clone().unwrap_or_default(), views::pool(p))).collect(),
        ready_nodes,
    }
}

struct State {
    cfg: Config,
    client: Client,
    recorder: Recorder,
    /// Service keys per address, from the last decision.
    services_by_ip: BTreeMap<IpAddr, Vec<String>>,
    /// Conflicts already reported, and when.
    reported: BTreeMap<(IpAddr, [u8; 6]), Instant>,
    /// When this node took each of its addresses over.
    owned_since: BTreeMap<IpAddr, Instant>,
    /// The interfaces each announced address is answered on.
    announced_on: BTreeMap<IpAddr, Vec<String>>,
    /// When the Announced condition of each Service was last written.
    condition_attempts: BTreeMap<String, Instant>,
    writes: JoinSet<()>,
    metrics: Metrics,
    responders: BTreeMap<String, Responder>,
    /// The addresses this node announces, with the interface patterns of their pools.
    mine: BTreeMap<IpAddr, Vec<String>>,
    repeats: Vec<(Instant, String, IpAddr)>,
    seen_tx: mpsc::UnboundedSender<Seen>,
    incarnation: u64,
    sequence: u64,
    interfaces_checked: Option<Instant>,
    interfaces: Vec<Interface>,
}

impl State {
    async fn heartbeat(&mut self, socket: &UdpSocket, leases: &Store<Lease>, leaving: bool) {
        self.sequence += 1;
        let hb = Heartbeat {
            node: self.cfg.node.clone(),
            incarnation: self.incarnation,
            sequence: self.sequence,
            sent_at_ms: udp::now_ms(),
            leaving,
        };
        let peers = lease::peers(leases.state().iter().map(|l| &**l), jiff::Timestamp::now());
        udp::send_all(socket, &hb, self.cfg.secret.as_deref(), &peers).await;
        self.send_due_repeats();
    }

    fn seen(&mut self, seen: Seen) {
        let Seen::Conflict { ip, mac, interface } = seen;
        if !self.mine.contains_key(&ip) {
            return;
        }
        // Right after a takeover the previous owner may still be finishing its announcements;
        // that is the election converging, not a foreign host.
        if self.owned_since.get(&ip).is_some_and(|t| t.elapsed() < TAKEOVER_QUIET) {
            return;
        }
        self.metrics.conflicts.inc();
        let text = mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
        tracing::warn!(%ip, mac = %text, %interface, "another host answers for an address this node announces");
        // One Warning Event per (address, foreign MAC) a minute is enough to be seen.
        let now = Instant::now();
        if self.reported.get(&(ip, mac)).is_some_and(|t| now.duration_since(*t) < Duration::from_secs(60)) {
            return;
        }
        self.reported.insert((ip, mac), now);
        let message = format!(
            "another host ({text}) answers ARP/NDP for {ip} on {interface}, which node {} announces: two hosts claim the address",
            self.cfg.node
        );
        for key in self.services_by_ip.get(&ip).cloned().unwrap_or_default() {
            let (client, recorder, message) = (self.client.clone(), self.recorder.clone(), message.clone());
            self.writes.spawn(async move {
                if let Some(reference) = reference_of(&client, &key).await {
                    let _ = recorder.publish(&reference, true, "AddressConflict", "Announce", &message).await;
                }
            });
        }
    }

    /// Tells the Services of a newly announced address who announces it, with an Event (the
    /// condition is kept right by `ensure_conditions`).
    fn report_announced(&mut self, ip: IpAddr, interfaces: &[String]) {
        let message = format!("{ip} announced by node {} on {}", self.cfg.node, interfaces.join(", "));
        for key in self.services_by_ip.get(&ip).cloned().unwrap_or_default() {
            let (client, recorder, message) = (self.client.clone(), self.recorder.clone(), message.clone());
            self.writes.spawn(async move {
                if let Some(reference) = reference_of(&client, &key).await {
                    let _ = recorder.publish(&reference, false, "Announced", "Announce", &message).await;
                }
            });
        }
    }

    fn send_due_repeats(&mut self) {
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = self.repeats.drain(..).partition(|(t, _, _)| *t <= now);
        self.repeats = later;
        for (_, iface, ip) in due {
            if self.mine.contains_key(&ip)
                && let Some(r) = self.responders.get(&iface)
            {
                r.announce(ip);
            }
        }
    }

    fn apply(&mut self, decisions: &BTreeMap<IpAddr, desired::Decision>) {
        let mine: BTreeMap<IpAddr, Vec<String>> = decisions
            .iter()
            .filter(|(_, d)| d.winner.as_deref() == Some(self.cfg.node.as_str()))
            .map(|(ip, d)| (*ip, d.interfaces.clone()))
            .collect();
        if mine.keys().ne(self.mine.keys()) {
            self.metrics.election_changes.inc();
            tracing::info!(addresses = ?mine.keys().collect::<Vec<_>>(), "announcing");
        }
        let now = Instant::now();
        self.owned_since.retain(|ip, _| mine.contains_key(ip));
        for ip in mine.keys() {
            self.owned_since.entry(*ip).or_insert(now);
        }
        self.mine = mine;
        self.services_by_ip = decisions.iter().map(|(ip, d)| (*ip, d.services.clone())).collect();
        self.metrics.announced.set(self.mine.len() as i64);
        let mut announced: BTreeMap<IpAddr, Vec<String>> = BTreeMap::new();
        if self.interfaces_checked.is_none_or(|t| t.elapsed() > Duration::from_secs(2)) {
            self.interfaces = interfaces::suitable();
            self.interfaces_checked = Some(Instant::now());
        }
        let names: BTreeSet<&str> = self.interfaces.iter().map(|i| i.name.as_str()).collect();
        self.responders.retain(|n, _| names.contains(n.as_str()));
        let mut per_address: BTreeMap<IpAddr, (u64, u64)> = BTreeMap::new();
        let mut gratuitous = 0;
        let mut on: BTreeMap<IpAddr, Vec<String>> = BTreeMap::new();
        for iface in &self.interfaces {
            let owned: BTreeSet<IpAddr> = self
                .mine
                .iter()
                .filter(|(_, patterns)| {
                    patterns.is_empty() || patterns.iter().any(|p| desired::interface_matches(p, &iface.name))
                })
                .map(|(ip, _)| *ip)
                .collect();
            if !self.responders.contains_key(&iface.name) {
                if owned.is_empty() {
                    continue;
                }
                match Responder::start(iface.clone(), self.seen_tx.clone()) {
                    Ok(r) => {
                        self.responders.insert(iface.name.clone(), r);
                    }
                    Err(e) => {
                        tracing::warn!(interface = %iface.name, error = %e, "cannot open the interface");
                        continue;
                    }
                }
            }
            let Some(r) = self.responders.get_mut(&iface.name) else { continue };
            for ip in &owned {
                on.entry(*ip).or_default().push(iface.name.clone());
            }
            for ip in r.set_owned(&owned) {
                r.announce(ip);
                announced.entry(ip).or_default().push(iface.name.clone());
                let now = Instant::now();
                self.repeats.extend(REPEATS.iter().map(|d| (now + *d, iface.name.clone(), ip)));
            }
            let c = &r.counters;
            for (ip, (req, rep)) in c.per_address.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                let e = per_address.entry(*ip).or_default();
                e.0 += req;
                e.1 += rep;
            }
            gratuitous += c.gratuitous.load(std::sync::atomic::Ordering::Relaxed);
        }
        for (ip, (req, rep)) in per_address {
            let label = AddressLabel { address: ip.to_string() };
            self.metrics.requests.get_or_create(&label).set(req as i64);
            self.metrics.replies.get_or_create(&label).set(rep as i64);
        }
        self.metrics.gratuitous.set(gratuitous as i64);
        while self.writes.try_join_next().is_some() {}
        for (ip, ifaces) in announced {
            self.report_announced(ip, &ifaces);
        }
        self.announced_on = on;
    }

    /// The message of the `ferrolb.io/Announced` condition for an address this node announces.
    fn announced_message(&self, ip: &IpAddr) -> Option<String> {
        let ifaces = self.announced_on.get(ip)?;
        Some(format!("{ip} announced by node {} on {}", self.cfg.node, ifaces.join(", ")))
    }

    /// Rewrites the condition of any Service whose condition does not name this node for an
    /// address it announces (a late write of a previous owner, say), at most once a second each.
    fn ensure_conditions(&mut self, services: &Store<Service>) {
        let now = Instant::now();
        let mut todo = Vec::new();
        for ip in self.mine.keys() {
            let Some(message) = self.announced_message(ip) else { continue };
            for key in self.services_by_ip.get(ip).into_iter().flatten() {
                let Some((ns, name)) = key.split_once('/') else { continue };
                let Some(svc) = services.get(&reflector::ObjectRef::new(name).within(ns)) else { continue };
                let current = svc
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .and_then(|c| c.iter().find(|c| c.type_ == ANNOUNCED_CONDITION))
                    .map(|c| (c.status.clone(), c.message.clone()));
                if current == Some(("True".to_string(), message.clone())) {
                    continue;
                }
                if self.condition_attempts.get(key).is_some_and(|t| now.duration_since(*t) < Duration::from_secs(1)) {
                    continue;
                }
                todo.push((key.clone(), message.clone()));
            }
        }
        for (key, message) in todo {
            self.condition_attempts.insert(key.clone(), now);
            let client = self.client.clone();
            self.writes.spawn(async move {
                if let Err(e) = set_announced(&client, &key, &message).await {
                    tracing::warn!(service = %key, error = %e, "could not set the Announced condition");
                }
            });
        }
    }
}

async fn reference_of(client: &Client, key: &str) -> Option<k8s_openapi::api::core::v1::ObjectReference> {
    let (ns, name) = key.split_once('/')?;
    let svc = Api::<Service>::namespaced(client.clone(), ns).get(name).await.ok()?;
    Some(svc.object_ref(&()))
}

/// Sets `ferrolb.io/Announced` on the Service, keeping its other conditions; retried on conflicts.
async fn set_announced(client: &Client, key: &str, message: &str) -> Result<(), kube::Error> {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    let Some((ns, name)) = key.split_once('/') else { return Ok(()) };
    let api: Api<Service> = Api::namespaced(client.clone(), ns);
    for _ in 0..5 {
        let svc = api.get(name).await?;
        let mut conditions: Vec<Condition> = svc.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
        let previous = conditions.iter().find(|c| c.type_ == ANNOUNCED_CONDITION).cloned();
        if previous.as_ref().is_some_and(|c| c.status == "True" && c.message == message) {
            return Ok(());
        }
        conditions.retain(|c| c.type_ != ANNOUNCED_CONDITION);
        let since = previous
            .filter(|c| c.status == "True")
            .map(|c| c.last_transition_time)
            .unwrap_or(Time(jiff::Timestamp::now()));
        conditions.push(Condition {
            type_: ANNOUNCED_CONDITION.into(),
            status: "True".into(),
            reason: "Announced".into(),
            message: message.into(),
            last_transition_time: since,
            observed_generation: svc.metadata.generation,
        });
        let patch = serde_json::json!({"metadata": {"resourceVersion": svc.metadata.resource_version}, "status": {"conditions": conditions}});
        match api.patch_status(name, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(patch)).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
