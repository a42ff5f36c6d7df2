//! The leader's work loop: watches on Services, IPPools and Namespaces feed one queue; each
//! Service is decided in turn (the allocator is one sequential state) and the writes run
//! concurrently, with optimistic concurrency on status and retries with backoff. Everything it
//! holds besides the queue is derived from the watch caches (see `watch.rs` on re-lists).

pub mod peer_status;
pub mod pool_status;
pub mod queue;
pub mod read;
pub mod service;
pub mod watch;
pub mod write;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrolb_crds::{IPPool, ServiceKey};
use ferrolb_process::events::Recorder;
use k8s_openapi::api::core::v1::{Namespace, Node, Service};
use kube::api::Api;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use self::queue::{Queue, WriteResult};
use self::service::Handling;
use self::watch::{Kind, Trigger};
use crate::allocator::reserved::Hole;
use crate::allocator::{Allocator, Reserver};
use crate::metrics::{ConditionLabels, Metrics, PoolLabel, PoolLabels, ReasonLabel};

/// What the leader needs.
#[derive(Clone)]
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Which Services are ours.
    pub handling: Handling,
    /// Metrics.
    pub metrics: Metrics,
    /// How many Service writes run at once.
    pub concurrency: usize,
    /// The field manager our writes carry (this replica's identity).
    pub field_manager: String,
    /// The cluster's own ranges (`--reserved-cidrs`).
    pub reserved_cidrs: Vec<Hole>,
    /// The leader's loop's sign of life for /healthz (watched only while leading).
    pub beat: ferrolb_process::Beat,
}

/// Stops /healthz watching the loop when a term ends, however it ends (it is aborted).
struct Resting(ferrolb_process::Beat);

impl Drop for Resting {
    fn drop(&mut self) {
        self.0.rest();
    }
}

/// A finished write.
struct Done {
    key: ServiceKey,
    result: WriteResult,
    error: Option<kube::Error>,
}

struct Stores {
    services: Store<Service>,
    pools: Store<IPPool>,
    namespaces: Store<Namespace>,
    nodes: Store<Node>,
}

impl Stores {
    fn ns_labels(&self, ns: &str) -> BTreeMap<String, String> {
        self.namespaces.get(&ObjectRef::new(ns)).and_then(|n| n.metadata.labels.clone()).unwrap_or_default()
    }

    fn service(&self, key: &ServiceKey) -> Option<Arc<Service>> {
        self.services.get(&ObjectRef::new(key.name()).within(key.namespace()))
    }
}

/// The state of one term as leader.
struct Reconciler {
    ctx: Context,
    stores: Stores,
    alloc: Allocator,
    pool_errors: HashMap<String, Vec<String>>,
    /// The failure last announced per Service, so that a repeat is not announced again.
    last_error: HashMap<ServiceKey, String>,
    /// Handled Services that hold nothing: they try again when addresses are freed.
    waiting: BTreeSet<ServiceKey>,
    queue: Queue,
    /// What we last wrote per Service, and the resourceVersion we wrote against.
    written: HashMap<ServiceKey, (String, Vec<IpAddr>)>,
    pools_dirty: bool,
    recorder: Recorder,
    done_tx: mpsc::UnboundedSender<Done>,
    /// Every write and status update of this term: dropped (aborted) with the term, so a replica
    /// that stops leading stops writing at once.
    tasks: JoinSet<()>,
}

/// Runs the controller for as long as this replica leads; `ready` is called once the allocator
/// has been rebuilt from every Service's status.
pub async fn run(ctx: Context, ready: impl FnOnce()) {
    let (tx, mut triggers) = mpsc::unbounded_channel();
    let client = ctx.client.clone();
    // Dropped with this function, which ends (or is aborted) when the term ends.
    let mut watches = JoinSet::new();
    let stores = Stores {
        services: watch::spawn(
            &mut watches,
            Api::<Service>::all(client.clone()),
            Kind::Service,
            tx.clone(),
            watch::whole,
        ),
        pools: watch::spawn(&mut watches, Api::<IPPool>::all(client.clone()), Kind::Pool, tx.clone(), watch::whole),
        namespaces: watch::spawn(
            &mut watches,
            Api::<Namespace>::all(client.clone()),
            Kind::Namespace,
            tx.clone(),
            watch::whole,
        ),
        nodes: watch::spawn(&mut watches, Api::<Node>::all(client.clone()), Kind::Node, tx, watch::node_addresses),
    };
    for ready in [
        stores.services.wait_until_ready().await,
        stores.pools.wait_until_ready().await,
        stores.namespaces.wait_until_ready().await,
        stores.nodes.wait_until_ready().await,
    ] {
        if ready.is_err() {
            tracing::error!("a watch ended before it synced");
            return;
        }
    }
    let (done_tx, mut done) = mpsc::unbounded_channel();
    let recorder = Recorder::new(client.clone(), "ferrolb-controller", &ctx.field_manager);
    let mut r = Reconciler {
        queue: Queue::new(ctx.concurrency),
        ctx,
        stores,
        alloc: Allocator::new(),
        pool_errors: HashMap::new(),
        last_error: HashMap::new(),
        waiting: BTreeSet::new(),
        written: HashMap::new(),
        pools_dirty: true,
        recorder,
        done_tx,
        tasks: JoinSet::new(),
    };
    r.rebuild();
    r.pump();
    ready();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let _resting = Resting(r.ctx.beat.clone());
    loop {
        r.ctx.beat.beat();
        let retry = r.queue.next_retry();
        tokio::select! {
            Some(t) = triggers.recv() => {
                r.handle(t);
                // Drain what is already queued before looking at timers, so bursts are decided
                // back to back.
                while let Ok(t) = triggers.try_recv() {
                    r.handle(t);
                }
            }
            Some(d) = done.recv() => r.finished(d),
            _ = tick.tick() => r.flush_pool_status(),
            _ = tokio::time::sleep_until(retry.unwrap_or_else(Instant::now).into()), if retry.is_some() => {}
            else => break,
        }
        r.pump();
    }
}

impl Reconciler {
    /// What the cluster holds first (ClusterIPs, Node addresses), pools, then every Service that
    /// holds addresses (oldest first), then everything else.
    fn rebuild(&mut self) {
        self.reserve_all(Kind::Service);
        self.reserve_all(Kind::Node);
        for pool in self.stores.pools.state() {
            self.sync_pool(&pool.name_any());
        }
        let mut services = self.stores.services.state();
        services.sort_by_key(|s| (s.metadata.creation_timestamp.as_ref().map(|t| t.0), ServiceKey::of(s)));
        let mut restored = 0;
        for svc in &services {
            let labels = self.stores.ns_labels(svc.metadata.namespace.as_deref().unwrap_or_default());
            if service::restore(&mut self.alloc, svc, &labels, &self.ctx.handling) {
                restored += 1;
            }
        }
        tracing::info!(
            services = services.len(),
            restored,
            pools = self.alloc.pool_names().count(),
            "rebuilt allocations from Service status"
        );
        for svc in &services {
            self.queue.add(&ServiceKey::of(svc));
        }
    }

    /// Brings the allocator's pool `name` in line with the store; returns the Services holding
    /// addresses in it.
    fn sync_pool(&mut self, name: &str) -> Vec<ServiceKey> {
        self.pools_dirty = true;
        match self.stores.pools.get(&ObjectRef::new(name)) {
            Some(pool) => {
                let (config, errors) = read::pool_config(&pool, &self.ctx.reserved_cidrs);
                if !errors.is_empty() {
                    tracing::warn!(pool = name, errors = ?errors, "IPPool has invalid entries");
                }
                self.pool_errors.insert(name.to_string(), errors);
                self.alloc.set_pool(name, config)
            }
            None => {
                self.pool_errors.remove(name);
                self.ctx.metrics.addresses.clear();
                self.ctx.metrics.pool_conditions.clear();
                self.alloc.remove_pool(name)
            }
        }
    }

    /// Brings what `owner` holds in the allocator in line with the stores; the Services moved off
    /// those addresses are queued.
    fn reserve(&mut self, owner: Reserver) {
        let ips = match &owner {
            Reserver::ClusterIp(key) => self.stores.service(key).map(|s| read::cluster_ips(&s)),
            Reserver::Node(name) => self.stores.nodes.get(&ObjectRef::new(name)).map(|n| read::node_ips(&n)),
        };
        for key in self.alloc.reserve(&owner, &ips.unwrap_or_default()) {
            self.queue.add(&key);
        }
    }

    /// [`Self::reserve`] for everything of a kind, the ones the store no longer has included.
    fn reserve_all(&mut self, kind: Kind) {
        let mut owners: BTreeSet<Reserver> = match kind {
            Kind::Service => {
                self.stores.services.state().iter().map(|s| Reserver::ClusterIp(ServiceKey::of(s))).collect()
            }
            Kind::Node => self.stores.nodes.state().iter().map(|n| Reserver::Node(n.name_any())).collect(),
            Kind::Pool | Kind::Namespace => return,
        };
        let same_kind = |r: &&Reserver| {
            matches!((r, kind), (Reserver::ClusterIp(_), Kind::Service) | (Reserver::Node(_), Kind::Node))
        };
        owners.extend(self.alloc.reservers().filter(same_kind).cloned());
        for owner in owners {
            self.reserve(owner);
        }
    }

    fn handle(&mut self, t: Trigger) {
        match t {
            Trigger::Service(key) => {
                self.reserve(Reserver::ClusterIp(key.clone()));
                self.queue.add(&key);
            }
            Trigger::Node(name) => self.reserve(Reserver::Node(name)),
            Trigger::Pool(name) => {
                let mut affected = self.sync_pool(&name);
                affected.extend(self.waiting.iter().cloned());
                for key in affected {
                    self.queue.add(&key);
                }
            }
            Trigger::Namespace(ns) => {
                for svc in self.stores.services.state().iter().filter(|s| s.metadata.namespace.as_deref() == Some(&ns))
                {
                    self.queue.add(&ServiceKey::of(svc));
                }
            }
            Trigger::Listed(kind) => self.relisted(kind),
        }
    }

    /// A (re-)list replaced a store: whatever the loop holds for an object the store no longer
    /// has is handled as that object's deletion, and everything listed is looked at again (the
    /// list may carry changes no event announced).
    fn relisted(&mut self, kind: Kind) {
        self.reserve_all(kind);
        match kind {
            Kind::Node => {}
            Kind::Service => {
                let mut keys: BTreeSet<ServiceKey> =
                    self.stores.services.state().iter().map(|s| ServiceKey::of(s)).collect();
                keys.extend(self.alloc.assignments().map(|(k, _)| k.clone()));
                keys.extend(self.waiting.iter().cloned());
                for key in keys {
                    self.queue.add(&key);
                }
            }
            Kind::Pool => {
                let mut names: BTreeSet<String> = self.stores.pools.state().iter().map(|p| p.name_any()).collect();
                names.extend(self.alloc.pool_names().map(String::from));
                for name in names {
                    self.handle(Trigger::Pool(name));
                }
            }
            Kind::Namespace => {
                for svc in self.stores.services.state() {
                    self.queue.add(&ServiceKey::of(&svc));
                }
            }
        }
    }

    /// Reconciles queued Services while there is room for their writes, so that a burst is held
    /// as a queue of names rather than thousands of pending writes.
    fn pump(&mut self) {
        while let Some(key) = self.queue.next(Instant::now()) {
            self.reconcile(&key);
        }
    }

    fn reconcile(&mut self, key: &ServiceKey) {
        let started = Instant::now();
        let svc = self.stores.service(key);
        let labels = svc
            .as_ref()
            .map(|s| self.stores.ns_labels(s.metadata.namespace.as_deref().unwrap_or_default()))
            .unwrap_or_default();
        let mut d = service::update(&mut self.alloc, key.as_str(), svc.as_deref(), &labels, &self.ctx.handling);
        // Whoever joined its address later and may no longer share it moves.
        for later in self.alloc.displaced_by(key.as_str()) {
            self.queue.add(&later);
        }
        self.ctx.metrics.reconcile_duration.observe(started.elapsed().as_secs_f64());
        let handled = svc
            .as_ref()
            .is_some_and(|s| read::is_handled(s, &self.ctx.handling.lb_class, self.ctx.handling.class_only));
        if d.waiting && handled {
            self.waiting.insert(key.clone());
        } else {
            self.waiting.remove(key);
        }
        self.ctx.metrics.pending.set(i64::try_from(self.waiting.len()).unwrap_or(i64::MAX));
        match &d.failure {
            Some(f) => {
                self.ctx.metrics.failures.get_or_create(&ReasonLabel { reason: f.reason.into() }).inc();
                if let Some(note) = service::failure_note(self.last_error.get(key).map(String::as_str), f) {
                    d.notes.push(note);
                    self.last_error.insert(key.clone(), f.error.clone());
                }
            }
            None => {
                self.last_error.remove(key);
            }
        }
        if let Some(pool) = &d.allocated_from {
            self.ctx.metrics.allocations.get_or_create(&PoolLabel { pool: pool.clone() }).inc();
        }
        if d.status.is_some() || d.freed || d.allocated_from.is_some() {
            self.pools_dirty = true;
        }
        if d.freed {
            self.retry_waiting(key);
        }
        let Some(svc) = svc else {
            self.written.remove(key);
            self.last_error.remove(key);
            return;
        };
        // Skip a status write we already made against this very version of the Service.
        let rv = svc.resource_version().unwrap_or_default();
        if let (Some(ips), Some((at, wrote))) = (&d.status, self.written.get(key))
            && *at == rv
            && wrote == ips
        {
            d.status = None;
        }
        if d.status.is_none() && d.annotation.is_none() && d.notes.is_empty() {
            return;
        }
        if let Some(ips) = &d.status {
            self.written.insert(key.clone(), (rv.clone(), ips.clone()));
        }
        self.queue.started(key);
        let (client, recorder, done) = (self.ctx.client.clone(), self.recorder.clone(), self.done_tx.clone());
        let (key, manager) = (key.clone(), self.ctx.field_manager.clone());
        self.tasks.spawn(async move {
            let outcome = write::service(&client, &recorder, &manager, &svc, &rv, d).await;
            let _ = done.send(Done { key, result: write::result_of(&outcome), error: outcome.err() });
        });
    }

    fn retry_waiting(&mut self, except: &ServiceKey) {
        let waiting: Vec<ServiceKey> = self.waiting.iter().filter(|k| *k != except).cloned().collect();
        for key in waiting {
            self.queue.add(&key);
        }
    }

    fn finished(&mut self, d: Done) {
        while self.tasks.try_join_next().is_some() {}
        if d.result != WriteResult::Done {
            self.written.remove(&d.key);
        }
        let delay = self.queue.finished(&d.key, d.result, Instant::now());
        if let (Some(delay), Some(e)) = (delay, d.error) {
            tracing::debug!(service = %d.key, error = %e, ?delay, "write failed; retrying");
        }
    }

    fn flush_pool_status(&mut self) {
        if !self.pools_dirty {
            return;
        }
        self.pools_dirty = false;
        let overlaps = self.alloc.overlaps();
        for pool in self.stores.pools.state() {
            let name = pool.name_any();
            let errors = self.pool_errors.get(&name).cloned().unwrap_or_default();
            let status = pool_status::desired_status(&pool, &self.alloc, &errors, overlaps);
            for (family, counts) in [("ipv4", status.ipv4), ("ipv6", status.ipv6)] {
                let Some(c) = counts else { continue };
                for (state, n) in [("total", c.total), ("used", c.used), ("available", c.available)] {
                    let labels = PoolLabels { pool: name.clone(), family: family.into(), state: state.into() };
                    self.ctx.metrics.addresses.get_or_create(&labels).set(i64::try_from(n).unwrap_or(i64::MAX));
                }
            }
            for c in &status.conditions {
                let labels = ConditionLabels { pool: name.clone(), condition: c.type_.clone() };
                self.ctx.metrics.pool_conditions.get_or_create(&labels).set(i64::from(c.status == "True"));
            }
            if pool_status::differs(pool.status.as_ref(), &status) {
                let (client, manager) = (self.ctx.client.clone(), self.ctx.field_manager.clone());
                self.tasks.spawn(write::pool_status(client, manager, name, status));
            }
        }
    }
}
