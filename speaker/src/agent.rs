//! Wiring only: the watch caches, membership (Lease and heartbeats), the announcing protocols, the
//! reporter and the forwarding driver, and the loop that feeds them — the view when the caches
//! change, liveness on every heartbeat tick. On shutdown the speaker either restarts in place
//! (its node stays: table, addresses and Lease are left as they are, the peers hold them) or
//! hands its addresses over first (its node goes away).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::Api;
use tokio::net::UdpSocket;
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::announce::Announcer;
use crate::bgp::announcer::{BgpAnnouncer, Daemon};
use crate::bgp::driver;
use crate::conntrack::{Replicator, SyncError};
use crate::forwarding::driver::Driver;
use crate::l2::Mac;
use crate::l2::announcer::L2Announcer;
use crate::l2::interfaces::Choice;
use crate::membership::key::Key;
use crate::membership::liveness::{Liveness, Timings};
use crate::membership::restart::{self, Exit};
use crate::membership::{lease, udp};
use crate::metrics::Metrics;
use crate::report::{REWRITE_EVERY, Reporter};
use crate::state::read;
use crate::state::watch::Caches;

/// How often the heartbeat key's file is read again.
const KEY_REREAD: Duration = Duration::from_secs(5);

/// How the speaker runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node.
    pub node: String,
    /// The main loop's sign of life for /healthz.
    pub beat: ferrolb_process::Beat,
    /// Namespace of the speakers' Leases.
    pub namespace: String,
    /// UDP port for heartbeats.
    pub peer_port: u16,
    /// HMAC key for heartbeats.
    pub secret: Key,
    /// Heartbeat timings.
    pub timings: Timings,
    /// How long a speaker Lease lasts without renewal.
    pub lease_duration: Duration,
    /// Program nftables forwarding (`--forwarding nftables`).
    pub forwarding: bool,
    /// Interfaces never announced on unless a pool names them (`--exclude-interfaces`).
    pub exclude_interfaces: Vec<String>,
    /// BGP mode, when on (`--bgp bird|external`).
    pub bgp: Option<BgpConfig>,
    /// Where the claims are kept between runs (`--state-dir`).
    pub state_dir: std::path::PathBuf,
    /// Replicate the connections of Services that ask for it (`--conntrack-sync conntrackd`).
    pub conntrack_sync: bool,
}

/// BGP mode's settings.
#[derive(Debug, Clone)]
pub struct BgpConfig {
    /// The kernel table the routes go to.
    pub table: u32,
    /// BIRD's directory with `--bgp bird`; None with an external daemon.
    pub bird_dir: Option<std::path::PathBuf>,
}

/// How long a leaving speaker waits for others to take its addresses over.
const HAND_OVER_DEADLINE: Duration = Duration::from_secs(3);

fn io(e: impl std::error::Error + Send + Sync + 'static) -> kube::Error {
    kube::Error::Service(Box::new(e))
}

/// Repeats an API call until it succeeds: a transient error at start (a 500, a 429, a conflict)
/// must not end the process — a crash loop's back-off would outlast the peers' restart grace.
async fn until_ok<T, F, Fut>(what: &str, call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    ferrolb_process::retry::until_ok(what, Duration::from_millis(200), Duration::from_secs(5), call).await
}

/// Our heartbeat address: the Node's InternalIP (what other nodes can reach), once it has one.
async fn node_ip(client: &Client, node: &str) -> IpAddr {
    let nodes: Api<Node> = Api::all(client.clone());
    loop {
        let found = until_ok("reading this Node", || nodes.get_opt(node)).await;
        let ip = found.and_then(|n| {
            n.status?.addresses?.into_iter().find(|a| a.type_ == "InternalIP").and_then(|a| a.address.parse().ok())
        });
        if let Some(ip) = ip {
            return ip;
        }
        tracing::warn!(%node, "the Node has no InternalIP yet; waiting");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn peers(leases: &kube::runtime::reflector::Store<Lease>) -> std::collections::BTreeMap<String, Option<SocketAddr>> {
    lease::peers(leases.state().iter().map(|l| &**l), jiff::Timestamp::now())
}

/// The BGP announcer and its driver (the kernel table, BIRD when we run it).
fn bgp_announcer(
    client: &Client,
    node: &str,
    my_ip: IpAddr,
    bgp: &BgpConfig,
    caches: &Caches,
    metrics: &Metrics,
) -> std::io::Result<BgpAnnouncer> {
    let setup = driver::Setup { node: node.to_string(), table: bgp.table, bird_dir: bgp.bird_dir.clone() };
    let handle = driver::start(client.clone(), caches.bgp.as_ref().map(|b| b.peers.clone()), setup, metrics.clone())?;
    let daemon = match &caches.bgp {
        Some(b) => Daemon::Bird {
            peers: b.peers.clone(),
            secrets: b.secrets.clone(),
            router_id: match my_ip {
                IpAddr::V4(v4) => v4,
                IpAddr::V6(_) => crate::bgp::bird::router_id_for(node),
            },
            table: bgp.table,
        },
        None => Daemon::External,
    };
    Ok(BgpAnnouncer::new(node, daemon, handle))
}

/// conntrackd on the interface that holds our heartbeat address.
fn replicator(my_ip: IpAddr, dir: &std::path::Path) -> Result<Replicator, SyncError> {
    let interface = pnet::datalink::interfaces()
        .into_iter()
        .find(|i| i.ips.iter().any(|n| n.ip() == my_ip))
        .map(|i| i.name)
        .ok_or_else(|| SyncError::Refused("finding the interface".into(), format!("no interface holds {my_ip}")))?;
    Replicator::start(&crate::conntrack::config::Node { ip: my_ip, interface: &interface, dir })
}

/// Runs until `shutdown` completes, then hands over and returns.
pub async fn run(
    client: Client,
    cfg: Config,
    metrics: Metrics,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), kube::Error> {
    let my_ip = node_ip(&client, &cfg.node).await;
    let peer_addr = SocketAddr::new(my_ip, cfg.peer_port);
    let mut tasks = JoinSet::new();
    let caches =
        Caches::start(&mut tasks, &client, &cfg.namespace, cfg.bgp.as_ref().is_some_and(|b| b.bird_dir.is_some()));
    caches.ready().await.map_err(io)?;
    let leases_api: Api<Lease> = Api::namespaced(client.clone(), &cfg.namespace);
    until_ok("registering this speaker's Lease", || {
        lease::renew(&leases_api, &cfg.node, peer_addr, cfg.lease_duration)
    })
    .await;
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

    let any: IpAddr = if my_ip.is_ipv4() { [0, 0, 0, 0].into() } else { std::net::Ipv6Addr::UNSPECIFIED.into() };
    let socket = Arc::new(UdpSocket::bind(SocketAddr::new(any, cfg.peer_port)).await.map_err(io)?);
    // Woken by news in a peer's heartbeat and by what the announcers see on the wire.
    let wake = Arc::new(Notify::new());
    let liveness = Arc::new(Mutex::new(Liveness::default()));
    let refused = Arc::new(udp::Refused::default());
    tasks.spawn(udp::receive(
        socket.clone(),
        cfg.node.clone(),
        cfg.secret.clone(),
        liveness.clone(),
        refused.clone(),
        wake.clone(),
    ));
    let mut heartbeats = udp::Sender::new(&cfg.node, cfg.secret.clone());
    // What this node announced in its previous run, if it was restarted in place: held for it by
    // its peers until it has heard them and knows which are still its own.
    let mut claims: BTreeMap<IpAddr, Mac> = restart::load(&cfg.state_dir);
    if !claims.is_empty() {
        tracing::info!(addresses = claims.len(), "restarted in place: resuming the previous run's addresses");
    }

    let mut l2 =
        L2Announcer::new(&cfg.node, Choice::new(cfg.exclude_interfaces.clone()), metrics.clone(), wake.clone());
    if cfg.conntrack_sync {
        l2 = l2.with_replicator(replicator(my_ip, &cfg.state_dir).map_err(io)?, claims.keys().copied().collect());
    }
    let mut announcers: Vec<Box<dyn Announcer>> = vec![Box::new(l2)];
    if let Some(bgp) = &cfg.bgp {
        announcers.push(Box::new(bgp_announcer(&client, &cfg.node, my_ip, bgp, &caches, &metrics).map_err(io)?));
    }
    let mut reporter = Reporter::new(client.clone(), &cfg.node, caches.services.clone());
    let driver = cfg.forwarding.then(|| Driver::start(client.clone(), &cfg.node, cfg.conntrack_sync, metrics.clone()));

    let mut tick = tokio::time::interval(cfg.timings.interval);
    let started = Instant::now();
    let mut settled = false;
    let mut view = caches.view();
    let mut view_changed = true;
    let mut conditions_checked: Option<Instant> = None;
    let mut last_announced: BTreeMap<IpAddr, String> = BTreeMap::new();
    let mut misconfigured: BTreeSet<String> = BTreeSet::new();
    let mut key_read = Instant::now();
    tokio::pin!(shutdown);
    loop {
        cfg.beat.beat();
        let mut ticked = false;
        tokio::select! {
            _ = tick.tick() => ticked = true,
            _ = caches.changed.notified() => {
                view = caches.view();
                view_changed = true;
            }
            _ = wake.notified() => {}
            _ = &mut shutdown => break,
        }
        let peers = peers(&caches.leases);
        metrics.registered.set(i64::try_from(peers.len()).unwrap_or(i64::MAX));
        let kernel_answered = if ticked {
            let status = udp::Status { settling: !settled, ..udp::Status::default() };
            heartbeats.send(&peers, status, &claims).await
        } else {
            Vec::new()
        };
        crate::metrics::raise_to(&metrics.refused, refused.total());
        let now = Instant::now();
        // A mounted Secret is rewritten in place: a corrected or rotated key is taken up here.
        if now.saturating_duration_since(key_read) >= KEY_REREAD {
            key_read = now;
            match cfg.secret.reload() {
                Ok(true) => tracing::info!("the heartbeat key changed; heartbeats use the new one"),
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "cannot read the heartbeat key again; keeping the one we have"),
            }
        }
        let members = {
            let mut l = liveness.lock().unwrap_or_else(|e| e.into_inner());
            l.set_addresses(peers.iter().filter_map(|(n, a)| Some((n.clone(), a.as_ref()?.ip()))));
            l.set_registered(peers.into_keys(), now);
            kernel_answered.iter().for_each(|p| l.kernel_answered(p, now));
            // Announce nothing until the peers are heard (or the grace is over), so a starting
            // speaker never takes an address a live peer holds. Decided once, at start.
            if !settled {
                let nodes = caches.nodes.state();
                let usable = nodes.iter().map(|n| read::node(n)).filter(|n| n.usable).map(|n| n.name);
                let expects: Vec<String> = usable.collect();
                settled = l.settled(&cfg.node, expects.iter().map(String::as_str), started.elapsed(), &cfg.timings);
                if settled {
                    // Of the previous run's addresses, keep those no other node has taken since.
                    let others = l.members(&cfg.node, true, &BTreeMap::new(), &cfg.timings, now).claims;
                    claims.retain(|ip, _| !others.values().any(|c| c.contains_key(ip)));
                }
            }
            l.members(&cfg.node, false, &claims, &cfg.timings, now)
        };
        metrics.peers.set(members.alive.len() as i64);
        metrics.misconfigured.set(members.misconfigured.len() as i64);
        if members.misconfigured != misconfigured {
            for peer in members.misconfigured.difference(&misconfigured) {
                tracing::error!(%peer, "{}", crate::report::key_mismatch_message(peer));
                reporter.key_mismatch(peer);
            }
            misconfigured = members.misconfigured.clone();
        }
        if !settled {
            continue;
        }
        let new_view = std::mem::take(&mut view_changed);
        if new_view {
            reporter.set_view(&view);
            if let Some(d) = &driver {
                d.set_view(&view);
            }
        }
        // Conditions are looked at when the Services or the announcements change, and otherwise
        // once per rewrite interval (a rewrite is never due more often).
        let recheck = new_view || conditions_checked.is_none_or(|t| now.saturating_duration_since(t) >= REWRITE_EVERY);
        for a in announcers.iter_mut() {
            a.tick(now);
            a.update(&view, &members, now);
            reporter.publish(a.take_notices());
        }
        let now_claimed: BTreeMap<IpAddr, Mac> = announcers.iter().flat_map(|a| a.claims()).collect();
        if now_claimed != claims {
            claims = now_claimed;
            if let Err(e) = restart::save(&cfg.state_dir, &claims) {
                tracing::warn!(error = %e, dir = %cfg.state_dir.display(), "cannot keep the claims for a restart in place");
            }
        }
        // One condition per address: what every protocol says of it, joined.
        let mut announced: BTreeMap<IpAddr, String> = BTreeMap::new();
        for (ip, at) in announcers.iter().flat_map(|a| a.announced()) {
            announced.entry(*ip).and_modify(|all| *all = format!("{all}; {at}")).or_insert_with(|| at.clone());
        }
        if recheck || announced != last_announced {
            reporter.ensure_conditions(&announced, now);
            last_announced = announced;
        }
        if recheck {
            conditions_checked = Some(now);
        }
    }
    // Shutting down is not being stuck.
    cfg.beat.rest();

    // Asked of the API server, not the cache: a cordon just before SIGTERM (a drain) must count.
    let asked = tokio::time::timeout(Duration::from_secs(2), Api::<Node>::all(client.clone()).get_opt(&cfg.node)).await;
    let node = match asked {
        Ok(Ok(node)) => node,
        _ => caches.nodes.get(&kube::runtime::reflector::ObjectRef::new(&cfg.node)).map(|n| (*n).clone()),
    };
    let exit = restart::exit(node.as_ref(), !cfg.timings.hold.is_zero());
    let status = match &exit {
        Exit::Restart => {
            // Our node stays: leave the table, the addresses and the Lease as they are; the peers
            // hold our claims (and answer for them) until the next run is back. Only what cannot
            // outlive this process (BGP sessions of the BIRD we run) is handed over.
            tracing::info!(addresses = claims.len(), grace = ?cfg.timings.hold, "restarting in place: addresses stay on this node");
            if let Err(e) = restart::save(&cfg.state_dir, &claims) {
                tracing::warn!(error = %e, "cannot keep the claims: the next run starts afresh");
            }
            announcers.retain(|a| !a.survives_restart());
            udp::Status { restarting: true, ..udp::Status::default() }
        }
        Exit::Leave(reason) => {
            tracing::info!(%reason, "leaving for good: handing addresses over");
            restart::forget(&cfg.state_dir);
            claims.clear();
            let _ = lease::unregister(&leases_api, &cfg.node).await;
            udp::Status { leaving: true, ..udp::Status::default() }
        }
    };
    hand_over(&cfg, announcers, &mut heartbeats, status, &claims, &caches, &wake).await;
    tasks.shutdown().await;
    if exit == Exit::Restart {
        // Registered for the whole grace (the renewals stopped with the tasks): peers count only
        // the holders of unexpired Leases. A speaker that crashes cannot do this, so its hold
        // ends with its Lease (--lease-seconds) if that comes first.
        let hold = cfg.lease_duration.max(cfg.timings.hold);
        if let Err(e) = lease::renew(&leases_api, &cfg.node, peer_addr, hold).await {
            tracing::warn!(error = %e, "could not extend the speaker Lease over the restart");
        }
    }
    if let Some(d) = driver {
        match exit {
            Exit::Restart => d.detach(),
            Exit::Leave(_) => d.stop().await,
        }
    }
    Ok(())
}

/// Tells the peers how we end (`status`, with our `claims`) and keeps answering until another
/// node has taken over what `announcers` hold (or the deadline passed).
async fn hand_over(
    cfg: &Config,
    mut announcers: Vec<Box<dyn Announcer>>,
    heartbeats: &mut udp::Sender,
    status: udp::Status,
    claims: &BTreeMap<IpAddr, Mac>,
    caches: &Caches,
    wake: &Notify,
) {
    let mut pending: BTreeSet<IpAddr> = announcers.iter_mut().flat_map(|a| a.not_yet_taken_over()).collect();
    let deadline = tokio::time::Instant::now() + HAND_OVER_DEADLINE;
    for _ in 0..3 {
        heartbeats.send(&peers(&caches.leases), status, claims).await;
    }
    while !pending.is_empty() {
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(cfg.timings.interval) => {
                heartbeats.send(&peers(&caches.leases), status, claims).await;
            }
            _ = tokio::time::sleep_until(deadline) => break,
        }
        pending = announcers.iter_mut().flat_map(|a| a.not_yet_taken_over()).collect();
    }
    if !pending.is_empty() {
        tracing::warn!(addresses = ?pending, "no other node took these over before the deadline");
    }
}
