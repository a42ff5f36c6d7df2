//! The process plumbing both of ferrolb's binaries (and its CLI) share: logging, the connection to
//! the API server, the /metrics, /healthz and /readyz endpoints, the shutdown signal, and the
//! Kubernetes Event recorder, retrying what must succeed. Nothing here knows about IP pools or
//! announcing.

pub mod connect;
pub mod events;
pub mod liveness;
pub mod logging;
pub mod retry;
pub mod signal;
pub mod telemetry;

pub use connect::connect;
pub use liveness::{Beat, Loops};
pub use logging::{LogFormat, init_logging};
pub use signal::shutdown_signal;
pub use telemetry::Telemetry;

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
