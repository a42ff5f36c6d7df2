//! Process plumbing shared by both binaries: logging, the kube connection, and the /metrics,
//! /healthz and /readyz endpoints.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::http::StatusCode;
use axum::http::header::USER_AGENT;
use axum::routing::get;
use kube::config::{KubeConfigOptions, Kubeconfig};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Why the process could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kubeconfig could not be read or used.
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    /// A flag's value cannot be used.
    #[error("configuration: {0}")]
    Config(String),
    /// The API server refused or could not be reached.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A listener or signal handler failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Log output format.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Completes on SIGTERM or Ctrl-C (SIGINT): how Kubernetes and a person stop a process.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Installs the global tracing subscriber; RUST_LOG overrides `level`.
pub fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// A client from `--kubeconfig`, else KUBECONFIG or the in-cluster configuration.
pub async fn connect(kubeconfig: Option<&Path>, agent: &str) -> Result<kube::Client, Error> {
    let mut config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|e| Error::Kubeconfig(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| Error::Kubeconfig(e.to_string()))?
        }
        None => kube::Config::infer().await.map_err(|e| Error::Kubeconfig(e.to_string()))?,
    };
    // Named requests show in the API server's audit log (and let the lab tell the binaries apart
    // when it checks the chart's RBAC against what each one calls).
    let agent = format!("{agent}/{}", env!("CARGO_PKG_VERSION"));
    let value = HeaderValue::from_str(&agent).map_err(|e| Error::Kubeconfig(e.to_string()))?;
    config.headers.push((USER_AGENT, value));
    Ok(kube::Client::try_from(config)?)
}

/// The metrics registry and the readiness flag behind the HTTP endpoints.
#[derive(Clone)]
pub struct Telemetry {
    registry: Arc<Registry>,
    ready: Arc<AtomicBool>,
}

impl Telemetry {
    /// A registry holding `ferrolb_build_info` plus whatever `register` adds.
    pub fn new(register: impl FnOnce(&mut Registry)) -> Self {
        let mut registry = Registry::default();
        let build_info = Family::<Vec<(String, String)>, Gauge>::default();
        build_info.get_or_create(&vec![("version".to_string(), env!("CARGO_PKG_VERSION").to_string())]).set(1);
        registry.register("ferrolb_build_info", "ferrolb build information", build_info);
        register(&mut registry);
        Self { registry: Arc::new(registry), ready: Arc::new(AtomicBool::new(false)) }
    }

    /// Marks the process ready (or not) for /readyz.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Serves /metrics on `metrics` and /healthz, /readyz on `health` (they may be equal).
    pub async fn serve(&self, metrics: SocketAddr, health: SocketAddr) -> Result<(), Error> {
        let health_routes = Router::new().route("/healthz", get(|| async { "ok" })).route("/readyz", get(readyz));
        let metrics_routes = Router::new().route("/metrics", get(render_metrics));
        let listeners = if metrics == health {
            vec![(metrics, health_routes.merge(metrics_routes))]
        } else {
            vec![(metrics, metrics_routes), (health, health_routes)]
        };
        for (addr, routes) in listeners {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            tracing::info!(addr = %listener.local_addr()?, "serving");
            let app = routes.with_state(self.clone());
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!(error = %e, "HTTP server stopped");
                }
            });
        }
        Ok(())
    }
}

async fn readyz(State(t): State<Telemetry>) -> (StatusCode, &'static str) {
    if t.ready.load(Ordering::SeqCst) { (StatusCode::OK, "ok") } else { (StatusCode::SERVICE_UNAVAILABLE, "not ready") }
}

async fn render_metrics(State(t): State<Telemetry>) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &t.registry) {
        Ok(()) => {
            (StatusCode::OK, [("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, [("content-type", "text/plain")], e.to_string()),
    }
}
