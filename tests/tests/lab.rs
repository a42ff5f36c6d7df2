//! The lab itself: namespaces, LAN, routed pod subnets, the API relay into every node, the state
//! file, and a clean teardown. Needs root; under CI=true it must run.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use ferrolb_tests::lab::{Lab, netns};

fn prerequisites() -> bool {
    match netns::check_prerequisites() {
        Ok(()) => true,
        Err(e) if common::in_ci() => panic!("the lab cannot run under CI=true: {e}"),
        Err(e) => {
            eprintln!("SKIPPED: {e}");
            false
        }
    }
}

/// A TCP listener in `server_ns` answering one connection from `client_ns`.
fn tcp_reaches(server_ns: &str, listen: &str, client_ns: &str) -> bool {
    let addr: std::net::SocketAddr = listen.parse().unwrap();
    let listener = netns::in_ns(server_ns, || std::net::TcpListener::bind(addr)).unwrap().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().ok()?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).ok()?;
        Some(buf)
    });
    let sent = netns::in_ns(client_ns, || {
        let mut c = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        c.write_all(b"ping")
    })
    .unwrap();
    sent.is_ok() && server.join().unwrap() == Some(*b"ping")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lab_builds_a_routed_cluster_reaches_the_api_and_cleans_up() {
    if !prerequisites() {
        return;
    }
    let lab = Lab::up(3).await.expect("lab up");
    let t = lab.topology.clone();
    assert_eq!(t.nodes.len(), 3);
    let (n1, n2) = (&t.nodes[0], &t.nodes[1]);
    // Client to node over the LAN, both families; node to a pod behind another node.
    let checks = [
        (n1.namespace.clone(), format!("{}:7000", n1.ipv4), t.client.namespace.clone()),
        (n1.namespace.clone(), format!("[{}]:7001", n1.ipv6), t.client.namespace.clone()),
        (t.pods[1].namespace.clone(), format!("{}:7002", t.pods[1].ipv4), n1.namespace.clone()),
        (t.pods[1].namespace.clone(), format!("[{}]:7003", t.pods[1].ipv6), n1.namespace.clone()),
    ];
    for (server, addr, client) in checks {
        let ok = tokio::task::spawn_blocking({
            let (server, addr, client) = (server.clone(), addr.clone(), client.clone());
            move || tcp_reaches(&server, &addr, &client)
        })
        .await
        .unwrap();
        assert!(ok, "{client} could not reach {addr} in {server}");
    }
    // Processes in a node reach the API at 127.0.0.1:6443, as a kubelet would.
    if let Some(kubectl) = common::kubectl() {
        let cache = lab.dir.join("kubectl-cache");
        let (ok, out, err) = tokio::task::spawn_blocking({
            let (ns, kc) = (n2.namespace.clone(), lab.node_kubeconfig());
            move || {
                common::run(
                    std::process::Command::new("ip")
                        .args(["netns", "exec", &ns])
                        .arg(kubectl)
                        .arg("--kubeconfig")
                        .arg(kc)
                        .arg("--cache-dir")
                        .arg(cache)
                        .args(["get", "ns", "-o", "name"]),
                )
            }
        })
        .await
        .unwrap();
        assert!(ok && out.contains("namespace/default"), "{out}{err}");
    }
    // The state file describes the lab.
    let state_path = lab.dir.join("state.json");
    lab.write_state(&state_path).unwrap();
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&state_path).unwrap()).unwrap();
    assert_eq!(state["nodes"][0]["name"], "node-1");
    assert_eq!(state["nodes"][0]["interface"], "eth0");
    assert_eq!(state["client"]["ipv4"], "198.51.100.100");
    assert!(state["kubeconfig"].as_str().unwrap().ends_with("kubeconfig"));
    let prefix = t.prefix.clone();
    drop(lab);
    let left: Vec<String> = netns::list().unwrap().into_iter().filter(|n| n.starts_with(&prefix)).collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
}

#[test]
fn the_cli_refuses_clearly_without_its_prerequisites_or_with_bad_arguments() {
    let bin = env!("CARGO_BIN_EXE_ferrolb-lab");
    let (ok, _, err) =
        common::run(std::process::Command::new(bin).args(["down", "--state-file", "/nonexistent/state.json"]));
    assert!(!ok && err.contains("ferrolb-lab:"), "{err}");
    let (ok, _, err) = common::run(std::process::Command::new(bin).arg("sideways"));
    assert!(!ok && err.contains("unrecognized subcommand"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_passes_and_cleans_up() {
    if !prerequisites() {
        return;
    }
    let outcome = ferrolb_tests::lab::demo::run(|line| eprintln!("{line}")).await.expect("the demo passes");
    assert_ne!(outcome.first, outcome.second);
    assert!(outcome.failover < Duration::from_secs(5), "{outcome:?}");
    let left: Vec<String> = netns::list().unwrap().into_iter().filter(|n| n.starts_with(&outcome.prefix)).collect();
    assert!(left.is_empty(), "the demo left namespaces behind: {left:?}");
}
