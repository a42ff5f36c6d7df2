//! The lab itself: namespaces, LAN, routed pod subnets, the API relay into every node, the state
//! file, and a clean teardown. Needs root; under CI=true it must run.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use ferrolb_tests::lab::{Lab, netns, probe};

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
    if !common::lab_prerequisites() {
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
    if !common::lab_prerequisites() {
        return;
    }
    let outcome = ferrolb_tests::lab::demo::run(|line| eprintln!("{line}")).await.expect("the demo passes");
    assert_ne!(outcome.first, outcome.second);
    assert!(outcome.failover < Duration::from_secs(5), "{outcome:?}");
    // The client's curl through the EXTERNAL-IP is answered by a pod before and after (Cluster
    // policy: the pod sees a node's address, not the client's).
    for answer in [&outcome.answers.0, &outcome.answers.1] {
        assert!(answer.starts_with("pod=web-node-") && answer.contains(" client="), "{outcome:?}");
    }
    let left: Vec<String> = netns::list().unwrap().into_iter().filter(|n| n.starts_with(&outcome.prefix)).collect();
    assert!(left.is_empty(), "the demo left namespaces behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_answer_with_their_pod_name_and_the_client_address_and_are_registered() {
    if !common::lab_prerequisites() {
        return;
    }
    let lab = Lab::up(2).await.expect("lab up");
    lab.register_cluster().await.unwrap();
    let _backends = lab.start_backends("web", 8080).await.unwrap();
    let (n1, pod2) = (lab.topology.nodes[0].clone(), lab.topology.pods[1].clone());
    // TCP over the routed pod network, from node-1 to the pod behind node-2.
    let got = tokio::task::spawn_blocking(move || {
        netns::in_ns(&n1.namespace, || {
            let mut s = std::net::TcpStream::connect_timeout(
                &std::net::SocketAddr::new(pod2.ipv4.into(), 8080),
                Duration::from_secs(3),
            )
            .ok()?;
            let mut out = String::new();
            s.read_to_string(&mut out).ok()?;
            Some(out)
        })
        .unwrap()
    })
    .await
    .unwrap()
    .expect("the backend answers over TCP");
    assert_eq!(got, format!("pod=web-node-2 client={}\n", lab.topology.nodes[0].ipv4));
    // UDP over IPv6.
    let (n1, pod2) = (lab.topology.nodes[0].clone(), lab.topology.pods[1].clone());
    let got = tokio::task::spawn_blocking(move || {
        netns::in_ns(&n1.namespace, || {
            let s = std::net::UdpSocket::bind("[::]:0").ok()?;
            s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
            s.send_to(b"hi", std::net::SocketAddr::new(pod2.ipv6.into(), 8080)).ok()?;
            let mut buf = [0u8; 200];
            let n = s.recv(&mut buf).ok()?;
            Some(String::from_utf8_lossy(&buf[..n]).into_owned())
        })
        .unwrap()
    })
    .await
    .unwrap()
    .expect("the backend answers over UDP");
    assert_eq!(got, format!("pod=web-node-2 client={}\n", lab.topology.nodes[0].ipv6));
    // The API has what a kubelet and the endpoint controller would write.
    let client = lab.client().await.unwrap();
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(client.clone(), "default");
    let p = pods.get("web-node-1").await.unwrap();
    assert_eq!(p.spec.unwrap().node_name.as_deref(), Some("node-1"));
    assert_eq!(p.status.unwrap().pod_ip.as_deref(), Some(lab.topology.pods[0].ipv4.to_string().as_str()));
    // A Service that selects them gets EndpointSlices from the lab's controller.
    let svc: k8s_openapi::api::core::v1::Service =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "any", "port": 80, "targetPort": "echo"}]}}))
        .unwrap();
    kube::Api::namespaced(client.clone(), "default").create(&Default::default(), &svc).await.unwrap();
    let slices: kube::Api<k8s_openapi::api::discovery::v1::EndpointSlice> = kube::Api::namespaced(client, "default");
    let s = common::eventually("web's EndpointSlice", Duration::from_secs(10), || async {
        slices.get("web-lab-ipv4-0").await.ok()
    })
    .await;
    assert_eq!(s.endpoints.map(|e| e.len()), Some(2));
    assert_eq!(s.ports.unwrap()[0].port, Some(8080), "the named targetPort resolved through the Pods");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferrolb_lab_up_and_down_through_the_state_file() {
    if !common::lab_prerequisites() {
        return;
    }
    up_first_step_and_down(false).await;
}

/// `ferrolb-lab up --bgp`: the routed lab with FRR, and the BGP first step as printed — the pool and
/// Service applied with kubectl, the sessions in `kubectl get bgppeers`, the route with a next hop
/// per node in the printed vtysh command, the printed curl from behind the router.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferrolb_lab_up_bgp_and_its_first_step() {
    if !common::lab_prerequisites() {
        return;
    }
    up_first_step_and_down(true).await;
}

/// Runs `ferrolb-lab down` for a state file that still exists.
struct DownOnDrop(std::path::PathBuf);

impl Drop for DownOnDrop {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = std::process::Command::new(env!("CARGO_BIN_EXE_ferrolb-lab"))
                .args(["down", "--state-file"])
                .arg(&self.0)
                .status();
        }
    }
}

async fn up_first_step_and_down(bgp: bool) {
    let state = std::env::temp_dir().join(format!("ferrolb-lab-state-{}-{bgp}.json", std::process::id()));
    let printed = state.with_extension("out");
    let mut args = vec!["up", "--nodes", "2", "--state-file", state.to_str().unwrap()];
    if bgp {
        args.push("--bgp");
    }
    let mut up = common::Proc(
        std::process::Command::new(env!("CARGO_BIN_EXE_ferrolb-lab"))
            .args(&args)
            .stdout(std::fs::File::create(&printed).unwrap())
            .spawn()
            .unwrap(),
    );
    // Dropped before `up`: if the test fails, the lab is taken down properly rather than left
    // running with `up` killed (its processes would hold the test's output open).
    let _down = DownOnDrop(state.clone());
    let text = common::eventually("the state file", Duration::from_secs(30), || async {
        std::fs::read_to_string(&state).ok()
    })
    .await;
    let s: serde_json::Value = serde_json::from_str(&text).unwrap();
    let prefix = s["prefix"].as_str().unwrap().to_string();
    assert_eq!(s["nodes"].as_array().unwrap().len(), 2);
    for key in ["name", "namespace", "interface", "ipv4", "ipv6", "mac"] {
        assert!(s["nodes"][0][key].is_string(), "node {key} missing: {text}");
        assert!(s["client"][key].is_string(), "client {key} missing: {text}");
    }
    assert!(s["pods"][1]["ipv4"].is_string());
    let kc = kube::config::Kubeconfig::read_from(s["kubeconfig"].as_str().unwrap()).unwrap();
    let client =
        kube::Client::try_from(kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap()).unwrap();
    let kube_client = client.clone();
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client.clone());
    assert_eq!(nodes.list(&Default::default()).await.unwrap().items.len(), 2);
    let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> = kube::Api::namespaced(client, "ferrolb-system");
    common::eventually("both speakers and the controller to hold Leases", Duration::from_secs(20), || async {
        (leases.list(&Default::default()).await.ok()?.items.len() == 3).then_some(())
    })
    .await;
    // The first step it prints works as printed: kubectl apply, the EXTERNAL-IP, curl.
    let out = common::eventually("the first step to be printed", Duration::from_secs(10), || async {
        std::fs::read_to_string(&printed).ok().filter(|o| o.contains("\n  ip netns exec"))
    })
    .await;
    let step = out.split_once("first step:").expect("a first step").1;
    let yaml: String = step
        .split_once("<<'EOF'\n")
        .and_then(|(_, rest)| rest.split_once("EOF\n"))
        .map(|(y, _)| y.lines().map(|l| format!("{}\n", l.strip_prefix("  ").unwrap_or(l))).collect())
        .expect("the YAML to apply");
    let export = step.lines().find_map(|l| l.trim().strip_prefix("export KUBECONFIG=")).expect("KUBECONFIG");
    if let Some(kubectl) = common::kubectl() {
        let mut apply = std::process::Command::new(kubectl);
        apply.args(["apply", "-f", "-"]).env("KUBECONFIG", export).env("HOME", std::env::temp_dir());
        let (ok, _, err) = common::run_with_stdin(&mut apply, &yaml);
        assert!(ok, "kubectl apply of the printed first step: {err}");
        let services: kube::Api<k8s_openapi::api::core::v1::Service> =
            kube::Api::namespaced(kube_client.clone(), "default");
        let ip = common::eventually("hello's EXTERNAL-IP", Duration::from_secs(20), || async {
            services.get("hello").await.ok()?.status?.load_balancer?.ingress?.first()?.ip.clone()
        })
        .await;
        if bgp {
            let mut get = std::process::Command::new(common::kubectl().unwrap());
            get.args(["get", "bgppeers"]).env("KUBECONFIG", export).env("HOME", std::env::temp_dir());
            let table =
                common::eventually("kubectl get bgppeers: 2 of 2 Established, Ready", Duration::from_secs(30), || {
                    let (ok, out, _) = common::run(&mut get);
                    let line: Vec<&str> =
                        out.lines().find(|l| l.starts_with("router ")).unwrap_or_default().split_whitespace().collect();
                    std::future::ready((ok && line.get(3..6) == Some(&["2", "2", "True"][..])).then_some(out))
                })
                .await;
            assert!(table.contains("router-v6"), "{table}");
            let vtysh = step.lines().map(str::trim).find(|l| l.starts_with("vtysh ")).expect("the vtysh line");
            let vtysh = vtysh.split("   #").next().unwrap().replace("203.0.113.224", &ip);
            let route = common::eventually("a next hop per node at the router", Duration::from_secs(20), || {
                let (ok, out, _) = common::run(std::process::Command::new("sh").args(["-c", &vtysh]));
                std::future::ready(
                    (ok && out.contains("198.51.100.11") && out.contains("198.51.100.12")).then_some(out),
                )
            })
            .await;
            assert!(route.contains("bgp"), "{route}");
        }
        let curl = step.lines().map(str::trim).find(|l| l.contains(" curl ")).expect("the curl line");
        let answer = common::eventually("the printed curl to be answered by a pod", Duration::from_secs(20), || {
            let line = curl.replace("<EXTERNAL-IP>", &ip);
            async move {
                let (ok, out, _) = common::run(std::process::Command::new("sh").args(["-c", &line]));
                (ok && out.starts_with("pod=echo-node-")).then_some(out)
            }
        })
        .await;
        assert!(answer.contains("client="), "{answer}");
    }
    let (ok, _, err) = common::run(std::process::Command::new(env!("CARGO_BIN_EXE_ferrolb-lab")).args([
        "down",
        "--state-file",
        state.to_str().unwrap(),
    ]));
    assert!(ok, "{err}");
    let exited = tokio::task::spawn_blocking(move || up.0.wait().unwrap()).await.unwrap();
    assert!(exited.success(), "ferrolb-lab up did not stop cleanly: {exited}");
    let left: Vec<String> = netns::list().unwrap().into_iter().filter(|n| n.starts_with(&prefix)).collect();
    assert!(left.is_empty(), "{left:?}");
}

/// What a newcomer types: a Service with its own port name, a named targetPort and any selector
/// of the lab's Pods reaches every pod through its EXTERNAL-IP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_with_any_port_name_and_a_named_target_port_reaches_every_pod() {
    if !common::lab_prerequisites() {
        return;
    }
    let lab = Lab::up(3).await.expect("lab up");
    let _running = lab.start_cluster().await.unwrap();
    lab.apply_pool("lan", serde_json::json!({"addresses": ["198.51.100.220-198.51.100.230"]})).await.unwrap();
    let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "my-app"},
        "spec": {"type": "LoadBalancer", "selector": {"app": "echo"},
            "ports": [{"name": "web", "port": 8000, "targetPort": "echo"}]}}))
    .unwrap();
    let client = lab.client().await.unwrap();
    kube::Api::namespaced(client, "default").create(&Default::default(), &svc).await.unwrap();
    let vip = common::eventually("my-app to get an address", Duration::from_secs(20), || async {
        lab.service_ips("my-app").await.first().copied()
    })
    .await;
    let ns = lab.topology.client.namespace.clone();
    let pods: std::collections::BTreeSet<String> =
        common::eventually("connections to reach all three pods", Duration::from_secs(20), || {
            let ns = ns.clone();
            async move {
                let answers: Vec<String> = tokio::task::spawn_blocking(move || {
                    (0..60).filter_map(|_| probe::tcp_once(&ns, std::net::SocketAddr::new(vip, 8000))).collect()
                })
                .await
                .ok()?;
                let pods: std::collections::BTreeSet<String> =
                    answers.iter().filter_map(|a| a.split_whitespace().next().map(str::to_string)).collect();
                (pods.len() == 3).then_some(pods)
            }
        })
        .await;
    assert_eq!(pods, ["pod=echo-node-1", "pod=echo-node-2", "pod=echo-node-3"].map(String::from).into_iter().collect());
}
