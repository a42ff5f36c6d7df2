//! The shipped binaries start, parse the flags DESIGN.md names, connect to an API server with
//! kube, and serve /healthz, /readyz and /metrics. sim-apiserver's own binary writes a kubeconfig
//! that kube-rs can use.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn serves_health_and_metrics(child: &mut Reaped, health: SocketAddr, metrics: SocketAddr) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!("the binary exited early: {status}");
        }
        if let Some((code, _)) = common::http_get(health, "/healthz").await {
            break code;
        }
        assert!(tokio::time::Instant::now() < deadline, "/healthz never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(code, 200);
    assert_eq!(common::http_get(health, "/readyz").await.unwrap().0, 200);
    let (code, body) = common::http_get(metrics, "/metrics").await.unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("ferrolb_build_info"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_and_speaker_start_connect_and_serve_health() {
    let (server, _client) = common::start().await;
    let dir = std::env::temp_dir().join(format!("ferrolb-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap();
    let secret = dir.join("secret");
    std::fs::write(&secret, "s3cret\n").unwrap();

    let (health, metrics) = (common::free_addr(), common::free_addr());
    let mut controller = Reaped(
        Command::new(common::workspace_binary("ferrolb-controller"))
            .args([
                "--kubeconfig",
                kubeconfig.to_str().unwrap(),
                "--lb-class",
                "ferrolb.io/lb",
                "--namespace",
                "ferrolb-system",
            ])
            .args([
                "--metrics-addr",
                &metrics.to_string(),
                "--health-addr",
                &health.to_string(),
                "--log-format",
                "json",
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    serves_health_and_metrics(&mut controller, health, metrics).await;

    let (health, metrics) = (common::free_addr(), common::free_addr());
    let mut speaker = Reaped(
        Command::new(common::workspace_binary("ferrolb-speaker"))
            .args([
                "--kubeconfig",
                kubeconfig.to_str().unwrap(),
                "--node-name",
                "node-a",
                "--namespace",
                "ferrolb-system",
            ])
            .args(["--peer-port", "7946", "--peer-secret-file", secret.to_str().unwrap(), "--forwarding", "none"])
            .args(["--metrics-addr", &metrics.to_string(), "--health-addr", &health.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    serves_health_and_metrics(&mut speaker, health, metrics).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_flags_and_unreachable_servers_fail_with_a_reason() {
    let (ok, _, err) = common::run(Command::new(common::workspace_binary("ferrolb-speaker")).args([
        "--forwarding",
        "iptables",
        "--node-name",
        "n",
    ]));
    assert!(!ok && err.contains("invalid value 'iptables'"), "{err}");
    let dir = std::env::temp_dir().join(format!("ferrolb-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    // Nothing listens on port 9 of loopback: the connection is refused at once.
    std::fs::write(&kubeconfig, ferrolb_tests::apiserver::kubeconfig_for("http://127.0.0.1:9")).unwrap();
    let (ok, out, err) = common::run(Command::new(common::workspace_binary("ferrolb-controller")).args([
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--metrics-addr",
        "127.0.0.1:0",
        "--health-addr",
        "127.0.0.1:0",
    ]));
    assert!(!ok, "the controller must fail without an API server");
    assert!(format!("{out}{err}").contains("ferrolb-controller failed"), "{out}{err}");
    let (ok, _, _) = common::run(
        Command::new(common::workspace_binary("ferrolb-controller")).args(["--kubeconfig", "/nonexistent/kubeconfig"]),
    );
    assert!(!ok);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sim_apiserver_binary_writes_a_working_kubeconfig() {
    use std::io::{BufRead, BufReader};
    let dir = std::env::temp_dir().join(format!("ferrolb-simbin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    let mut child = Reaped(
        Command::new(env!("CARGO_BIN_EXE_sim-apiserver"))
            .args(["--listen", "127.0.0.1:0", "--kubeconfig-out", kubeconfig.to_str().unwrap()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    assert!(line.starts_with("listening on http://127.0.0.1:"), "{line}");
    let kc = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client);
    let names: Vec<String> =
        namespaces.list(&Default::default()).await.unwrap().items.into_iter().filter_map(|n| n.metadata.name).collect();
    assert!(names.contains(&"default".to_string()) && names.contains(&"kube-system".to_string()), "{names:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The controller image ships one executable under two names: `ferrolb`, called as
/// `ferrolb-controller`, is the controller.
#[test]
fn the_cli_called_as_ferrolb_controller_is_the_controller() {
    let dir = std::env::temp_dir().join(format!("ferrolb-multicall-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let link = dir.join("ferrolb-controller");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(common::workspace_binary("ferrolb"), &link).unwrap();
    let help =
        |bin: &std::path::Path| String::from_utf8(Command::new(bin).arg("--help").output().unwrap().stdout).unwrap();
    let as_controller = help(&link);
    let as_cli = help(&common::workspace_binary("ferrolb"));
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(as_controller, help(&common::workspace_binary("ferrolb-controller")));
    assert!(as_controller.contains("--leader-lease-seconds"), "{as_controller}");
    assert!(as_cli.contains("migrate"), "{as_cli}");
}
