//! `sim-apiserver`: an in-memory test double of kube-apiserver that speaks the real HTTP API, so
//! that kube-rs clients, kube-runtime watchers and kubectl run against it unmodified.
//!
//! What it models and where it simplifies is written down in docs/TESTING.md.

pub mod discovery;
pub mod error;
pub mod events;
pub mod fields;
pub mod http;
pub mod meta;
pub mod ops;
pub mod patch;
pub mod protobuf;
pub mod resources;
pub mod selectors;
pub mod services;
pub mod store;
pub mod tables;
pub mod validation;
pub mod watch;

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::Path;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ipnetwork::IpNetwork;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use self::services::ServiceNetwork;
use self::store::Store;

/// How the server is set up.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Where to listen (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// ClusterIP ranges; two of different families make the cluster dual-stack.
    pub service_cidrs: Vec<IpNetwork>,
    /// `--service-node-port-range`.
    pub node_ports: RangeInclusive<u16>,
    /// How many changes each collection remembers for resuming watches: 100 by default, the size
    /// of kube-apiserver's watch cache before it grew by time (`--default-watch-cache-size`), so
    /// that a test making more changes than that and resuming a watch meets 410 Gone as clients of
    /// a busy or restarted server do (docs/TESTING.md).
    pub history_limit: usize,
    /// How often idle watches get a BOOKMARK.
    pub bookmark_interval: Duration,
    /// How often the server acts as a restarted kube-apiserver does to its watches: every open
    /// watch ends and the history is forgotten, so every client resumes into 410 Gone and
    /// re-lists. 5 s by default, so that ordinary tests meet it (a relist bug shows in any test
    /// that runs a few seconds); None: never.
    pub cache_restart_every: Option<Duration>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            service_cidrs: vec![
                "10.96.0.0/16".parse().expect("static CIDR"),
                "fd00:10:96::/112".parse().expect("static CIDR"),
            ],
            node_ports: 30000..=32767,
            history_limit: 100,
            bookmark_interval: Duration::from_secs(5),
            cache_restart_every: Some(Duration::from_secs(5)),
        }
    }
}

/// Injected faults.
#[derive(Debug, Default)]
pub struct Faults {
    /// Writes still to fail.
    pub fail_writes: AtomicU32,
    /// The HTTP code they fail with (500 or 429).
    pub fail_code: AtomicU16,
    /// Only writes to this resource (`services`: all of its writes) or subresource
    /// (`services/status`) fail; all writes when None.
    pub fail_only: Mutex<Option<String>>,
    /// Delay added to every request.
    pub latency_ms: AtomicU64,
    /// While true, watch requests wait before they are answered: with the open watches dropped,
    /// the clients are cut off from changes, as while kube-apiserver restarts.
    pub watches_held: tokio::sync::watch::Sender<bool>,
    /// While set, every request whose path contains this text waits before it is answered (a
    /// hung connection to a busy or partitioned API server, as a client with no read timeout sees).
    pub requests_held: tokio::sync::watch::Sender<Option<String>>,
}

/// One request the server answered (for tests that check who wrote what, and RBAC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// HTTP method.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// The `fieldManager` query parameter, if any.
    pub field_manager: Option<String>,
    /// Whether it was a watch.
    pub watch: bool,
    /// The HTTP status code.
    pub code: u16,
    /// The client's `User-Agent` (ferrolb's binaries send their name).
    pub user_agent: Option<String>,
}

/// State shared by all requests.
#[derive(Debug)]
pub struct Shared {
    /// Every request answered, in order.
    pub requests: Mutex<Vec<RequestRecord>>,
    store: Mutex<Store>,
    /// Carries the latest resourceVersion; watches wake on it.
    pub changes: tokio::sync::watch::Sender<u64>,
    /// Bumped to end every open watch.
    pub drops: tokio::sync::watch::Sender<u64>,
    /// Injected faults.
    pub faults: Faults,
    /// How often idle watches get a BOOKMARK.
    pub bookmark_interval: Duration,
    /// Watches answered with 410 Gone (expired resourceVersion), in all.
    pub expired_watches: AtomicU64,
}

impl Shared {
    /// The store; a panic in another request does not poison it for the rest.
    pub fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ends every open watch (clients re-watch from their last resourceVersion).
    pub fn drop_watches(&self) {
        self.drops.send_modify(|n| *n += 1);
    }

    /// Holds (or lets through again) every new watch request; see [`Faults::watches_held`].
    pub fn hold_watches(&self, held: bool) {
        self.faults.watches_held.send_replace(held);
    }

    /// Holds every request whose path contains `path_part` until called with None; see
    /// [`Faults::requests_held`].
    pub fn hold_requests(&self, path_part: Option<&str>) {
        self.faults.requests_held.send_replace(path_part.map(String::from));
    }

    /// What a kube-apiserver restart does to watches: every open one ends, and the new watch
    /// cache starts at the current resourceVersion, so resuming from an older one gets 410.
    pub fn restart_watch_cache(&self) {
        self.compact();
        self.drop_watches();
    }

    /// Forgets all history: the next resume from an older resourceVersion gets 410 Expired.
    pub fn compact(&self) {
        self.lock().compact(None);
    }

    /// Forgets the history of one collection (core group = ""): kube-apiserver's watch cache keeps
    /// a window per resource, so a busy kind expires while a quiet one still resumes.
    pub fn compact_only(&self, group: &str, plural: &str) {
        self.lock().compact(Some(&(group.to_string(), plural.to_string())));
    }

    /// Fails the next `count` writes with `code` (500 or 429).
    pub fn fail_next_writes(&self, count: u32, code: u16) {
        self.aim_write_faults(None, count, code);
    }

    /// Fails the next `count` writes to `resource` (`services`, or a subresource such as
    /// `services/status`) with `code`: a test aims the fault at one component's writes without
    /// failing its own set-up.
    pub fn fail_next_writes_to(&self, resource: &str, count: u32, code: u16) {
        self.aim_write_faults(Some(resource.to_string()), count, code);
    }

    fn aim_write_faults(&self, only: Option<String>, count: u32, code: u16) {
        *self.faults.fail_only.lock().unwrap_or_else(|e| e.into_inner()) = only;
        self.faults.fail_code.store(code, Ordering::SeqCst);
        self.faults.fail_writes.store(count, Ordering::SeqCst);
    }

    /// A copy of the request log.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.requests.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Delays every request by `latency`.
    pub fn set_latency(&self, latency: Duration) {
        self.faults.latency_ms.store(u64::try_from(latency.as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

/// A running server.
#[derive(Debug)]
pub struct SimApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl SimApiServer {
    /// Starts serving; the namespaces `default`, `kube-system`, `kube-public` and
    /// `kube-node-lease` exist from the start, as in a fresh cluster.
    pub async fn start(config: SimConfig) -> std::io::Result<Self> {
        let network = ServiceNetwork::new(config.service_cidrs.clone(), config.node_ports.clone());
        let mut store = Store::new(resources::builtins(), config.history_limit, network);
        let ns_target = ops::Target {
            key: (String::new(), "namespaces".into()),
            info: store
                .collection(&(String::new(), "namespaces".into()))
                .map(|c| c.info.clone())
                .expect("namespaces are built in"),
            group: String::new(),
            version: "v1".into(),
            namespace: None,
            name: None,
            status: false,
        };
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            ops::create(&mut store, &ns_target, json!({"metadata": {"name": ns}}), &ops::Writer::server())
                .map_err(|e| std::io::Error::other(e.to_string()))?;
        }
        // The API server's own Service, on the first address of the range, as in every cluster.
        let svc_target = ops::Target {
            key: (String::new(), "services".into()),
            info: store
                .collection(&(String::new(), "services".into()))
                .map(|c| c.info.clone())
                .expect("services are built in"),
            namespace: Some("default".into()),
            ..ns_target.clone()
        };
        let kubernetes = json!({"metadata": {"name": "kubernetes", "namespace": "default",
                "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"type": "ClusterIP", "clusterIP": store.services.kubernetes_ip().map(|ip| ip.to_string()),
                "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]}});
        ops::create(&mut store, &svc_target, kubernetes, &ops::Writer::server())
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let rv = store.rv;
        let shared = Arc::new(Shared {
            requests: Mutex::new(Vec::new()),
            store: Mutex::new(store),
            changes: tokio::sync::watch::channel(rv).0,
            drops: tokio::sync::watch::channel(0).0,
            faults: Faults::default(),
            bookmark_interval: config.bookmark_interval,
            expired_watches: AtomicU64::new(0),
        });
        if let Some(every) = config.cache_restart_every {
            let weak = Arc::downgrade(&shared);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                loop {
                    tick.tick().await;
                    let Some(shared) = weak.upgrade() else { return };
                    shared.restart_watch_cache();
                }
            });
        }
        let listener = TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let app = axum::Router::new().fallback(http::handle).with_state(shared.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "sim-apiserver stopped");
            }
        });
        Ok(Self { addr, shared, task })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://host:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig that kube-rs and kubectl can use.
    pub fn kubeconfig_yaml(&self) -> String {
        kubeconfig_for(&self.url())
    }

    /// Writes [`Self::kubeconfig_yaml`] to `path`.
    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig_yaml())
    }

    /// The shared state, for fault injection.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Every stored object of `group`/`plural` (core group = ""), as stored.
    pub fn objects(&self, group: &str, plural: &str) -> Vec<Value> {
        let store = self.shared.lock();
        store
            .collection(&(group.to_string(), plural.to_string()))
            .map(|c| c.objects.values().map(|o| (**o).clone()).collect())
            .unwrap_or_default()
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }
}

impl Drop for SimApiServer {
    fn drop(&mut self) {
        self.shared.drop_watches();
        self.task.abort();
    }
}

/// A kubeconfig pointing at `server` over plain HTTP.
pub fn kubeconfig_for(server: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: sim\n  cluster:\n    server: {server}\n\
users:\n- name: sim\n  user: {{}}\ncontexts:\n- name: sim\n  context:\n    cluster: sim\n    user: sim\n    namespace: default\n\
current-context: sim\n"
    )
}
