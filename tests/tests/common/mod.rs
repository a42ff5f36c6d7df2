//! Helpers shared by the end-to-end suites.
#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use ferrolb_tests::apiserver::{SimApiServer, SimConfig};
use kube::config::{KubeConfigOptions, Kubeconfig};

/// Starts a sim-apiserver with default settings and a kube client for it.
pub async fn start() -> (SimApiServer, kube::Client) {
    start_with(SimConfig::default()).await
}

/// Starts a sim-apiserver with `config` and a kube client for it.
pub async fn start_with(config: SimConfig) -> (SimApiServer, kube::Client) {
    let server = SimApiServer::start(config).await.expect("sim-apiserver starts");
    let client = client_for(&server).await;
    (server, client)
}

/// A kube client that talks to `server` over HTTP, built from the kubeconfig it writes.
pub async fn client_for(server: &SimApiServer) -> kube::Client {
    let kc = Kubeconfig::from_yaml(&server.kubeconfig_yaml()).expect("kubeconfig parses");
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.expect("config");
    kube::Client::try_from(config).expect("client")
}

/// Polls `check` until it returns Some or `timeout` passes; panics with `what` on timeout.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether we run under CI, where missing prerequisites fail instead of skipping.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// kubectl, or None (with a note) when it is missing outside CI; under CI=true a missing kubectl
/// fails the test.
pub fn kubectl() -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|p| p.join("kubectl")).find(|p| p.is_file()));
    match found {
        Some(p) => Some(p),
        None if in_ci() => panic!("kubectl is not on PATH, and CI=true requires these tests to run"),
        None => {
            eprintln!("SKIPPED: kubectl is not on PATH (set CI=true to make this a failure)");
            None
        }
    }
}

/// A workspace binary built next to this test (`cargo build --workspace` builds them).
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let path = dir.join(name);
    assert!(path.is_file(), "{} is missing: run `cargo build --workspace` before the tests", path.display());
    path
}

/// Runs a command to completion and returns (success, stdout, stderr).
pub fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().expect("command starts");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The IPPool CRD exactly as the chart ships it.
pub fn ippool_crd() -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    use kube::CustomResourceExt;
    ferrolb_crds::IPPool::crd()
}

/// One plain HTTP/1.1 request (no client-side retries): returns the status code and the body.
pub async fn raw_request(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status line");
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}
