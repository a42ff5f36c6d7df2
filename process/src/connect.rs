//! The connection to the API server, named by a User-Agent.

use std::path::Path;

use axum::http::HeaderValue;
use axum::http::header::USER_AGENT;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::Error;

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
