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

/// A workspace binary built next to this test (`cargo build --workspace` builds them), or from
/// `FERROLB_BIN_DIR` when set (to run a suite against another build, e.g. to show a test fails on
/// an older one).
pub fn workspace_binary(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("FERROLB_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
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

/// [`run`] with `input` on standard input.
pub fn run_with_stdin(cmd: &mut Command, input: &str) -> (bool, String, String) {
    use std::io::Write;
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("command starts");
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).expect("write stdin");
    }
    let out = child.wait_with_output().expect("command ends");
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
    raw_request_as(addr, method, path, "application/json", body).await
}

/// [`raw_request`] with another Content-Type.
pub async fn raw_request_as(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status line");
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct Proc(pub std::process::Child);

impl Proc {
    /// Kills it at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.0.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        self.0.wait().expect("wait")
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free loopback TCP address.
pub fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// sim-apiserver with the IPPool and BGPPeer CRDs and the `ferrolb-system` namespace, as the chart
/// sets up.
pub async fn ferrolb_cluster() -> (SimApiServer, kube::Client, PathBuf) {
    use k8s_openapi::api::core::v1::Namespace;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Api, PostParams};
    let (server, client) = start().await;
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    for crd in [ippool_crd(), <ferrolb_crds::BGPPeer as kube::CustomResourceExt>::crd()] {
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": "ferrolb-system"}})).unwrap();
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.unwrap();
    let dir = std::env::temp_dir().join(format!("ferrolb-{}-{}", std::process::id(), uuid_like()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap();
    (server, client, kubeconfig)
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("{}", N.fetch_add(1, Ordering::SeqCst))
}

/// Starts `ferrolb-controller` against `kubeconfig` with short leader-election timings; /metrics,
/// /healthz and /readyz on `http`.
pub fn spawn_controller(
    kubeconfig: &std::path::Path,
    identity: &str,
    http: std::net::SocketAddr,
    extra: &[&str],
) -> Proc {
    let http = http.to_string();
    let child = Command::new(workspace_binary("ferrolb-controller"))
        .args(["--kubeconfig", kubeconfig.to_str().unwrap(), "--namespace", "ferrolb-system", "--identity", identity])
        .args(["--leader-lease-seconds", "3", "--leader-retry-ms", "300"])
        .args(["--metrics-addr", &http, "--health-addr", &http, "--log-level", "warn"])
        .args(extra)
        .stdout(if std::env::var_os("FERROLB_TEST_LOGS").is_some() {
            std::process::Stdio::inherit()
        } else {
            std::process::Stdio::null()
        })
        .spawn()
        .expect("ferrolb-controller starts");
    Proc(child)
}

/// GET `path` from a plain HTTP endpoint; None when nothing answers.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, out))
}

/// Whether the lab can run here; under CI=true it must (a missing prerequisite fails the test).
pub fn lab_prerequisites() -> bool {
    match ferrolb_tests::lab::netns::check_prerequisites() {
        Ok(()) => true,
        Err(e) if in_ci() => panic!("the lab cannot run under CI=true: {e}"),
        Err(e) => {
            eprintln!("SKIPPED: {e}");
            false
        }
    }
}

/// The chart's objects in release `ferrolb` in `namespace`, rendered by Helm's Go library through helm-python-sdk (as the chart
/// tests do); `None` when it is not installed outside CI.
pub fn rendered_chart(namespace: &str, values: &serde_json::Value) -> Option<Vec<serde_json::Value>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let script = "import helm_python as h, json, sys\n\
        out = h.Chart.load(sys.argv[1]).render(json.loads(sys.argv[3]), name='ferrolb', namespace=sys.argv[2])\n\
        print(json.dumps(out))";
    let out = std::process::Command::new("python3")
        .args(["-c", script, root.join("charts/ferrolb").to_str()?, namespace, &values.to_string()])
        .output();
    let out = match out {
        Ok(o) if o.status.success() => o,
        Ok(o) if !in_ci() => {
            eprintln!(
                "SKIPPED: helm-python-sdk is needed (pip install -r charts/tests/requirements.txt): {}",
                String::from_utf8_lossy(&o.stderr)
            );
            return None;
        }
        other => panic!("rendering the chart failed: {other:?}"),
    };
    let files: std::collections::BTreeMap<String, String> = serde_json::from_slice(&out.stdout).expect("helm's output");
    let mut docs = Vec::new();
    for (path, text) in files.iter().filter(|(p, _)| p.ends_with(".yaml")) {
        for doc in serde_norway::Deserializer::from_str(text) {
            let v: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap_or_else(|e| panic!("{path}: {e}"));
            if !v.is_null() {
                docs.push(v);
            }
        }
    }
    Some(docs)
}
