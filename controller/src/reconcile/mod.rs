//! The leader's work loop: watches on Services, IPPools and Namespaces feed one queue; each
//! Service is decided in turn (the allocator is one sequential state) and the writes run
//! concurrently, with optimistic concurrency on status and retries with backoff.

pub mod pool_status;
pub mod service;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrolb_crds::IPPool;
use ferrolb_crds::annotations::ALLOCATED_FROM;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use self::service::{Decision, Handling};
use crate::allocator::{Allocator, request};
use crate::metrics::{Metrics, PoolLabel, PoolLabels, ReasonLabel};
use ferrolb_crds::events::Recorder;

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
}

/// Something changed.
#[derive(Debug)]
enum Trigger {
    Service(String),
    Pool(String),
    Namespace(String),
}

/// A finished write.
struct Done {
    key: String,
    result: Result<(), kube::Error>,
}

struct Stores {
    services: Store<Service>,
    pools: Store<IPPool>,
    namespaces: Store<Namespace>,
}

fn spawn_reflector<K, F>(
    tasks: &mut JoinSet<()>,
    api: Api<K>,
    tx: mpsc::UnboundedSender<Trigger>,
    to_trigger: F,
) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    F: Fn(&K) -> Trigger + Send + 'static,
{
    let (reader, writer) = reflector::store();
    // What we never read is not kept: managed fields and kubectl's copy of the whole object.
    let slim = watcher(api, watcher::Config::default()).default_backoff().modify(|o: &mut K| {
        let meta = o.meta_mut();
        meta.managed_fields = None;
        if let Some(a) = meta.annotations.as_mut() {
            a.remove("kubectl.kubernetes.io/last-applied-configuration");
        }
    });
    let stream = reflector::reflector(writer, slim);
    tasks.spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o) | watcher::Event::Delete(o)) => {
                    if tx.send(to_trigger(&o)).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "watch failed; retrying"),
            }
        }
    });
    reader
}

fn ns_labels(stores: &Stores, ns: &str) -> BTreeMap<String, String> {
    stores.namespaces.get(&ObjectRef::new(ns)).and_then(|n| n.metadata.labels.clone()).unwrap_or_default()
}

fn service_of(stores: &Stores, key: &str) -> Option<Arc<Service>> {
    let (ns, name) = key.split_once('/')?;
    stores.services.get(&ObjectRef::new(name).within(ns))
}

/// The state of one term as leader.
struct Leader {
    ctx: Context,
    stores: Stores,
    alloc: Allocator,
    pool_errors: HashMap<String, Vec<String>>,
    last_error: BTreeMap<String, String>,
    waiting: BTreeSet<String>,
    inflight: BTreeSet<String>,
    redo: BTreeSet<String>,
    queue: VecDeque<String>,
    queued: HashSet<String>,
    attempts: HashMap<String, u32>,
    /// What we last wrote per Service, and the resourceVersion we wrote against.
    written: HashMap<String, (String, Vec<IpAddr>)>,
    pools_dirty: bool,
    recorder: Recorder,
    done_tx: mpsc::UnboundedSender<Done>,
    retry_tx: mpsc::UnboundedSender<Trigger>,
    /// Every write, timer and status update of this term: dropped (aborted) with the term, so a
    /// replica that stops leading stops writing at once.
    tasks: JoinSet<()>,
}

/// Runs the controller for as long as this replica leads; `ready` is called once the allocator
/// has been rebuilt from every Service's status.
pub async fn run(ctx: Context, ready: impl FnOnce()) {
    let (tx, mut triggers) = mpsc::unbounded_channel();
    let client = ctx.client.clone();
    // Dropped with this function, which ends (or is aborted) when the term ends.
    let mut watches = JoinSet::new();
    let services = spawn_reflector(&mut watches, Api::<Service>::all(client.clone()), tx.clone(), |s| {
        Trigger::Service(request::key_of(s))
    });
    let pools =
        spawn_reflector(&mut watches, Api::<IPPool>::all(client.clone()), tx.clone(), |p| Trigger::Pool(p.name_any()));
    let namespaces = spawn_reflector(&mut watches, Api::<Namespace>::all(client.clone()), tx.clone(), |n| {
        Trigger::Namespace(n.name_any())
    });
    let stores = Stores { services, pools, namespaces };
    for ready in [
        stores.services.wait_until_ready().await,
        stores.pools.wait_until_ready().await,
        stores.namespaces.wait_until_ready().await,
    ] {
        if ready.is_err() {
            tracing::error!("a watch ended before it synced");
            return;
        }
    }
    let (done_tx, mut done) = mpsc::unbounded_channel();
    let recorder = Recorder::new(client.clone(), "ferrolb-controller", &ctx.field_manager);
    let mut leader = Leader {
        ctx,
        stores,
        alloc: Allocator::new(),
        pool_errors: HashMap::new(),
        last_error: BTreeMap::new(),
        waiting: BTreeSet::new(),
        inflight: BTreeSet::new(),
        redo: BTreeSet::new(),
        queue: VecDeque::new(),
        queued: HashSet::new(),
        attempts: HashMap::new(),
        written: HashMap::new(),
        pools_dirty: true,
        recorder,
        done_tx,
        retry_tx: tx,
        tasks: JoinSet::new(),
    };
    leader.rebuild();
    leader.pump();
    ready();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            Some(t) = triggers.recv() => {
                leader.handle(t);
                // Drain what is already queued before looking at timers, so bursts are decided
                // back to back.
                while let Ok(t) = triggers.try_recv() {
                    leader.handle(t);
                }
            }
            Some(d) = done.recv() => leader.finished(d),
            _ = tick.tick() => leader.flush_pool_status(),
            else => break,
        }
        leader.pump();
    }
}

impl Leader {
    /// Pools first, then every Service that holds addresses (oldest first), then everything else.
    fn rebuild(&mut self) {
        for pool in self.stores.pools.state() {
            self.sync_pool(&pool.name_any());
        }
        let mut services = self.stores.services.state();
        services.sort_by(|a, b| {
            (a.metadata.creation_timestamp.as_ref().map(|t| t.0), request::key_of(a))
                .cmp(&(b.metadata.creation_timestamp.as_ref().map(|t| t.0), request::key_of(b)))
        });
        let mut restored = 0;
        for svc in &services {
            let labels = ns_labels(&self.stores, svc.metadata.namespace.as_deref().unwrap_or_default());
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
            self.enqueue(&request::key_of(svc));
        }
    }

    fn sync_pool(&mut self, name: &str) -> Vec<String> {
        self.pools_dirty = true;
        match self.stores.pools.get(&ObjectRef::new(name)) {
            Some(pool) => {
                let (config, errors) = pool_status::pool_config(&pool);
                if !errors.is_empty() {
                    tracing::warn!(pool = name, errors = ?errors, "IPPool has invalid entries");
                }
                self.pool_errors.insert(name.to_string(), errors);
                self.alloc.set_pool(name, config)
            }
            None => {
                self.pool_errors.remove(name);
                self.ctx.metrics.addresses.clear();
                self.alloc.remove_pool(name)
            }
        }
    }

    fn handle(&mut self, t: Trigger) {
        match t {
            Trigger::Service(key) => self.enqueue(&key),
            Trigger::Pool(name) => {
                let mut affected = self.sync_pool(&name);
                affected.extend(self.waiting.iter().cloned());
                for key in affected {
                    self.enqueue(&key);
                }
            }
            Trigger::Namespace(ns) => {
                let keys: Vec<String> = self
                    .stores
                    .services
                    .state()
                    .iter()
                    .filter(|s| s.metadata.namespace.as_deref() == Some(&ns))
                    .map(|s| request::key_of(s))
                    .collect();
                for key in keys {
                    self.enqueue(&key);
                }
            }
        }
    }

    /// Marks a Service for reconciliation; repeated marks before it runs coalesce.
    fn enqueue(&mut self, key: &str) {
        if self.queued.insert(key.to_string()) {
            self.queue.push_back(key.to_string());
        }
    }

    /// Reconciles queued Services while there is room for their writes, so that a burst is held
    /// as a queue of names rather than thousands of pending writes.
    fn pump(&mut self) {
        while self.inflight.len() < self.ctx.concurrency.max(1) {
            let Some(key) = self.queue.pop_front() else { break };
            self.queued.remove(&key);
            self.reconcile(&key);
        }
    }

    fn reconcile(&mut self, key: &str) {
        if self.inflight.contains(key) {
            self.redo.insert(key.to_string());
            return;
        }
        let started = Instant::now();
        let svc = service_of(&self.stores, key);
        let labels = svc
            .as_ref()
            .map(|s| ns_labels(&self.stores, s.metadata.namespace.as_deref().unwrap_or_default()))
            .unwrap_or_default();
        let mut d =
            service::decide(&mut self.alloc, key, svc.as_deref(), &labels, &self.ctx.handling, &mut self.last_error);
        self.ctx.metrics.reconcile_duration.observe(started.elapsed().as_secs_f64());
        if d.waiting
            && svc
                .as_ref()
                .is_some_and(|s| request::is_handled(s, &self.ctx.handling.lb_class, self.ctx.handling.class_only))
        {
            self.waiting.insert(key.to_string());
        } else {
            self.waiting.remove(key);
        }
        if let Some(reason) = d.failure {
            self.ctx.metrics.failures.get_or_create(&ReasonLabel { reason: reason.into() }).inc();
        }
        if let Some(pool) = &d.allocated_from {
            self.ctx.metrics.allocations.get_or_create(&PoolLabel { pool: pool.clone() }).inc();
        }
        if d.status.is_some() || d.freed || d.allocated_from.is_some() {
            self.pools_dirty = true;
        }
        let Some(svc) = svc else {
            self.written.remove(key);
            if d.freed {
                self.retry_waiting(key);
            }
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
        if d.freed {
            self.retry_waiting(key);
        }
        if d.status.is_none() && d.annotation.is_none() && d.notes.is_empty() {
            return;
        }
        if let Some(ips) = &d.status {
            self.written.insert(key.to_string(), (rv.clone(), ips.clone()));
        }
        self.inflight.insert(key.to_string());
        let (client, recorder, done) = (self.ctx.client.clone(), self.recorder.clone(), self.done_tx.clone());
        let key = key.to_string();
        let manager = self.ctx.field_manager.clone();
        self.tasks.spawn(async move {
            let result = write(&client, &recorder, &manager, &svc, &rv, d).await;
            let _ = done.send(Done { key, result });
        });
    }

    fn retry_waiting(&mut self, except: &str) {
        let waiting: Vec<String> = self.waiting.iter().filter(|k| *k != except).cloned().collect();
        for key in waiting {
            self.enqueue(&key);
        }
    }

    fn finished(&mut self, d: Done) {
        while self.tasks.try_join_next().is_some() {}
        self.inflight.remove(&d.key);
        match d.result {
            Ok(()) => {
                self.attempts.remove(&d.key);
                if self.redo.remove(&d.key) {
                    self.enqueue(&d.key);
                }
            }
            Err(e) => {
                self.redo.remove(&d.key);
                self.written.remove(&d.key);
                let n = self.attempts.entry(d.key.clone()).or_insert(0);
                *n += 1;
                let conflict = matches!(&e, kube::Error::Api(s) if s.code == 409);
                // A conflict means our copy is stale; the watch brings the new one at once.
                let delay = if conflict {
                    Duration::from_millis(50)
                } else {
                    Duration::from_millis(100 * 2u64.pow((*n).min(7)))
                };
                tracing::debug!(service = %d.key, error = %e, ?delay, "write failed; retrying");
                let tx = self.retry_tx.clone();
                self.tasks.spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = tx.send(Trigger::Service(d.key));
                });
            }
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
            let status = pool_status::desired_status(&pool, &self.alloc, &errors, &overlaps);
            for (family, counts) in [("ipv4", status.ipv4), ("ipv6", status.ipv6)] {
                let Some(c) = counts else { continue };
                for (state, n) in [("total", c.total), ("used", c.used), ("available", c.available)] {
                    let labels = PoolLabels { pool: name.clone(), family: family.into(), state: state.into() };
                    self.ctx.metrics.addresses.get_or_create(&labels).set(i64::try_from(n).unwrap_or(i64::MAX));
                }
            }
            if !pool_status::differs(pool.status.as_ref(), &status) {
                continue;
            }
            let api: Api<IPPool> = Api::all(self.ctx.client.clone());
            let pp = PatchParams { field_manager: Some(self.ctx.field_manager.clone()), ..PatchParams::default() };
            self.tasks.spawn(async move {
                let patch = json!({"status": status});
                if let Err(e) = api.patch_status(&name, &pp, &Patch::Merge(patch)).await {
                    tracing::warn!(pool = %name, error = %e, "could not write IPPool status");
                }
            });
        }
    }
}

/// Carries out a decision: status (guarded by the resourceVersion it was decided on), the
/// allocated-from annotation, then the Events.
async fn write(
    client: &Client,
    recorder: &Recorder,
    manager: &str,
    svc: &Service,
    rv: &str,
    d: Decision,
) -> Result<(), kube::Error> {
    let ns = svc.metadata.namespace.clone().unwrap_or_default();
    let name = svc.name_any();
    let api: Api<Service> = Api::namespaced(client.clone(), &ns);
    let pp = PatchParams { field_manager: Some(manager.to_string()), ..PatchParams::default() };
    if let Some(ips) = &d.status {
        let ingress: Vec<serde_json::Value> =
            ips.iter().map(|ip| json!({"ip": ip.to_string(), "ipMode": "VIP"})).collect();
        let ingress = if ingress.is_empty() { serde_json::Value::Null } else { json!(ingress) };
        let patch = json!({"metadata": {"resourceVersion": rv}, "status": {"loadBalancer": {"ingress": ingress}}});
        api.patch_status(&name, &pp, &Patch::Merge(patch)).await?;
    }
    if let Some(pool) = &d.annotation {
        let patch = json!({"metadata": {"annotations": {ALLOCATED_FROM: pool}}});
        api.patch(&name, &pp, &Patch::Merge(patch)).await?;
    }
    let reference = svc.object_ref(&());
    for note in d.notes {
        if let Err(e) = recorder.publish(&reference, note.warning, note.reason, "Allocate", &note.message).await {
            tracing::warn!(service = %format!("{ns}/{name}"), error = %e, "could not record an Event");
        }
    }
    Ok(())
}
