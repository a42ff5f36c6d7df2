//! The /metrics, /healthz and /readyz endpoints, and the registry behind them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::Error;
use crate::liveness::Loops;

/// The metrics registry and the readiness flag behind the HTTP endpoints.
#[derive(Clone)]
pub struct Telemetry {
    registry: Arc<Registry>,
    ready: Arc<AtomicBool>,
    /// The loops /healthz watches.
    pub loops: Loops,
}

impl Telemetry {
    /// A registry holding `ferrolb_build_info` plus whatever `register` adds.
    pub fn new(register: impl FnOnce(&mut Registry)) -> Self {
        let mut registry = Registry::default();
        let build_info = Family::<Vec<(String, String)>, Gauge>::default();
        build_info.get_or_create(&vec![("version".to_string(), env!("CARGO_PKG_VERSION").to_string())]).set(1);
        registry.register("ferrolb_build_info", "ferrolb build information", build_info);
        register(&mut registry);
        Self { registry: Arc::new(registry), ready: Arc::new(AtomicBool::new(false)), loops: Loops::default() }
    }

    /// The registry in the OpenMetrics text format, as /metrics serves it.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut body = String::new();
        prometheus_client::encoding::text::encode(&mut body, &self.registry)?;
        Ok(body)
    }

    /// Marks the process ready (or not) for /readyz.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Serves /metrics on `metrics` and /healthz, /readyz on `health` (they may be equal).
    pub async fn serve(&self, metrics: SocketAddr, health: SocketAddr) -> Result<(), Error> {
        let health_routes = Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz));
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

/// 200 "ok" while every watched loop runs; 503 naming the stuck one otherwise. Nothing else is
/// said: the speaker's health port is on the host network.
async fn healthz(State(t): State<Telemetry>) -> (StatusCode, String) {
    match t.loops.stuck() {
        None => (StatusCode::OK, "ok".into()),
        Some((name, since)) => {
            tracing::error!(r#loop = name, stuck_for = ?since, "a loop has stopped running; /healthz fails");
            (StatusCode::SERVICE_UNAVAILABLE, format!("the {name} loop has not run for {} s", since.as_secs()))
        }
    }
}

async fn readyz(State(t): State<Telemetry>) -> (StatusCode, &'static str) {
    if t.ready.load(Ordering::SeqCst) { (StatusCode::OK, "ok") } else { (StatusCode::SERVICE_UNAVAILABLE, "not ready") }
}

async fn render_metrics(State(t): State<Telemetry>) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    match t.encode() {
        Ok(body) => {
            (StatusCode::OK, [("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, [("content-type", "text/plain")], e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn healthz_fails_while_a_watched_loop_is_stuck() {
        let t = Telemetry::new(|_| {});
        let main = t.loops.watch("main", Duration::from_millis(20));
        assert_eq!(healthz(State(t.clone())).await, (StatusCode::OK, "ok".to_string()));
        main.beat();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (code, body) = healthz(State(t.clone())).await;
        assert_eq!((code, body.as_str()), (StatusCode::SERVICE_UNAVAILABLE, "the main loop has not run for 0 s"));
        main.beat();
        assert_eq!(healthz(State(t)).await.0, StatusCode::OK);
    }
}
