//! `ferrolb-lab demo`: the whole story in one command — a pool and a Service, the EXTERNAL-IP and
//! who announces it, the client's `curl` answered by a pod, the announcing node's death (its speaker
//! killed, its link down), how long the client took to follow, and `curl` answered again. Also the first step that
//! `ferrolb-lab up` prints for a newcomer to copy.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, PostParams};
use serde_json::json;

use super::netns::{self, LabError};
use super::{Lab, probe};

fn fail(what: impl Into<String>) -> LabError {
    LabError::Io(std::io::Error::other(what.into()))
}

async fn until<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<T, LabError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(fail(format!("timed out waiting for {what}")));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A pool and a Service for the lab, as a newcomer would apply them (`ferrolb-lab up` prints it).
pub const FIRST_STEP_YAML: &str = "apiVersion: ferrolb.io/v1alpha1
kind: IPPool
metadata: {name: lan}
spec: {addresses: [198.51.100.200-198.51.100.210]}
---
apiVersion: v1
kind: Service
metadata: {name: hello}
spec:
  type: LoadBalancer
  selector: {app: echo}
  ports: [{name: web, port: 80, targetPort: echo}]
";

/// The first step of a BGP lab (`ferrolb-lab up --bgp`): a pool advertised over BGP.
pub const FIRST_STEP_BGP_YAML: &str = "apiVersion: ferrolb.io/v1alpha1
kind: IPPool
metadata: {name: fabric}
spec:
  addresses: [203.0.113.224/28]
  bgp: {enabled: true}
---
apiVersion: v1
kind: Service
metadata: {name: hello}
spec:
  type: LoadBalancer
  selector: {app: echo}
  ports: [{name: web, port: 80, targetPort: echo}]
";

/// What `ferrolb-lab up --bgp` prints to try BGP mode: the pool and Service, the router's view,
/// and `curl` from the client behind the router.
pub fn first_step_bgp(lab: &Lab, router_vty: &std::path::Path) -> String {
    let remote = lab.topology.routed.as_ref().map(|r| r.remote.namespace.clone()).unwrap_or_default();
    let curl = curl_command(&remote, "203.0.113.224".parse().expect("static address"));
    format!(
        "first step: a pool advertised over BGP and a Service, then call it from the client behind the router\n  export KUBECONFIG={}\n  kubectl apply -f - <<'EOF'\n{}EOF\n  kubectl get svc hello          # EXTERNAL-IP, 203.0.113.224 on a fresh lab\n  kubectl get bgppeers           # every node Established\n  vtysh --vty_socket {} -c 'show ip route 203.0.113.224/32'   # one next hop per node\n  {}\n",
        lab.kubeconfig().display(),
        FIRST_STEP_BGP_YAML.lines().map(|l| format!("  {l}\n")).collect::<String>(),
        router_vty.display(),
        curl.join(" ").replace("http://203.0.113.224/", "http://<EXTERNAL-IP>/")
    )
}

/// The curl command that calls `ip` from the client namespace `ns` (the lab's backends answer
/// with one line and close, which curl reads as HTTP/0.9).
pub fn curl_command(ns: &str, ip: IpAddr) -> Vec<String> {
    let url = match ip {
        IpAddr::V4(v4) => format!("http://{v4}/"),
        IpAddr::V6(v6) => format!("http://[{v6}]/"),
    };
    ["ip", "netns", "exec", ns, "curl", "--http0.9", "-sS", "--max-time", "3", &url].map(String::from).to_vec()
}

/// The first step `ferrolb-lab up` prints: apply a pool and a Service, read the EXTERNAL-IP, call it.
pub fn first_step(lab: &Lab) -> String {
    let kubeconfig = lab.kubeconfig();
    let curl = curl_command(&lab.topology.client.namespace, "198.51.100.200".parse().expect("static address"));
    format!(
        "first step: a pool and a Service, then call it from the client\n  export KUBECONFIG={}\n  kubectl apply -f - <<'EOF'\n{}EOF\n  kubectl get svc hello          # EXTERNAL-IP, 198.51.100.200 on a fresh lab\n  {}\n",
        kubeconfig.display(),
        FIRST_STEP_YAML.lines().map(|l| format!("  {l}\n")).collect::<String>(),
        curl.join(" ").replace("http://198.51.100.200/", "http://<EXTERNAL-IP>/")
    )
}

/// Runs `curl` from the client to `ip`; the body it printed.
pub async fn curl(lab: &Lab, ip: IpAddr) -> Result<String, LabError> {
    let cmd = curl_command(&lab.topology.client.namespace, ip);
    let out = tokio::process::Command::new(&cmd[0]).args(&cmd[1..]).output().await?;
    if !out.status.success() {
        return Err(fail(format!("{}: {}", cmd.join(" "), String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// What the demo measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The Service's address.
    pub vip: IpAddr,
    /// The node that announced it first.
    pub first: String,
    /// The node that took over.
    pub second: String,
    /// From kill -9 to the client's neighbour entry pointing at the new node.
    pub failover: Duration,
    /// What the client's curl got before and after the failover.
    pub answers: (String, String),
    /// The prefix of the lab's namespaces (all gone when `run` returns).
    pub prefix: String,
}

/// Runs the demo on a fresh lab, printing each step; every resource is removed at the end.
pub async fn run(say: impl Fn(&str)) -> Result<Outcome, LabError> {
    say("building a lab: 3 nodes, a client and a LAN in network namespaces ...");
    let lab = Lab::up(3).await?;
    lab.register_cluster().await?;
    let client = lab.client().await?;
    let _controller = lab.start_controller()?;
    let mut speakers = (0..3).map(|i| lab.start_speaker(i, &[])).collect::<Result<Vec<_>, _>>()?;
    let _backends = lab.start_backends("web", 8080).await?;
    say("creating IPPool lan (198.51.100.200-198.51.100.210) and Service default/web (type LoadBalancer, app=web) ...");
    lab.apply_pool("lan", json!({"addresses": ["198.51.100.200-198.51.100.210"]})).await?;
    let svc: Service = serde_json::from_value(json!({"metadata": {"name": "web"},
        "spec": {"type": "LoadBalancer", "selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "echo"}]}}))
    .map_err(|e| fail(e.to_string()))?;
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    api.create(&PostParams::default(), &svc).await.map_err(|e| fail(e.to_string()))?;
    let vip: IpAddr =
        until("an EXTERNAL-IP", Duration::from_secs(30), || async { lab.service_ips("web").await.first().copied() })
            .await?;
    say(&format!("EXTERNAL-IP: {vip}"));
    let node_of_mac = |mac: &str| lab.topology.nodes.iter().find(|n| n.mac == mac).map(|n| n.name.clone());
    let c = lab.topology.client.clone();
    let IpAddr::V4(v4) = vip else { return Err(fail("expected an IPv4 address")) };
    // The condition is written a moment after the first answer: wait until the one node
    // answering ARP and the node the Announced condition names are the same.
    let (first, first_node, announced) =
        until("one node to answer ARP and the Announced condition to name it", Duration::from_secs(30), || {
            let (c, api) = (c.clone(), api.clone());
            async move {
                let macs = tokio::task::spawn_blocking(move || {
                    probe::arp_who_has(&c.namespace, &c.interface, &c.mac, c.ipv4, v4).ok()
                })
                .await
                .ok()??;
                let mac = probe::mac_text(macs.iter().next().filter(|_| macs.len() == 1)?);
                let node = node_of_mac(&mac)?;
                let cond = api.get("web").await.ok()?.status?.conditions?;
                let message = cond.into_iter().find(|c| c.type_ == "ferrolb.io/Announced")?.message;
                message.contains(&format!("node {node} ")).then_some((mac, node, message))
            }
        })
        .await?;
    say(&format!("the client's ARP for {vip} is answered by {first} ({first_node}) only"));
    say(&format!("ferrolb.io/Announced: {announced}"));
    let before = until("a pod to answer the client's curl", Duration::from_secs(20), || async {
        curl(&lab, vip).await.ok().filter(|a| a.starts_with("pod="))
    })
    .await?;
    say(&format!("$ {}\n{before}", curl_command(&c.namespace, vip).join(" ")));
    let ns = c.namespace.clone();
    tokio::task::spawn_blocking(move || probe::resolve(&ns, vip)).await.map_err(|e| fail(e.to_string()))?;
    let idx = lab.topology.nodes.iter().position(|n| n.name == first_node).ok_or_else(|| fail("no such node"))?;
    // A node dies (a speaker that only crashes on a live node is restarted in place: its address
    // stays, docs/SPEAKER.md).
    say(&format!("{first_node} dies: kill -9 its speaker, take its link down ..."));
    let killed = Instant::now();
    speakers[idx].kill();
    netns::ip_in(&lab.topology.nodes[idx].namespace, &["link", "set", "eth0", "down"])?;
    let ns = c.namespace.clone();
    let (second, failover) = until("another node to take over", Duration::from_secs(20), || async {
        let mac = probe::neighbour(&ns, &vip.to_string())?;
        (mac != first).then(|| (mac, killed.elapsed()))
    })
    .await?;
    let second_node = node_of_mac(&second).ok_or_else(|| fail("an unknown MAC took over"))?;
    say(&format!(
        "{second_node} ({second}) took over; the client's neighbour entry followed its gratuitous ARP after {} ms",
        failover.as_millis()
    ));
    let after = until("a pod to answer again", Duration::from_secs(20), || async {
        curl(&lab, vip).await.ok().filter(|a| a.starts_with("pod="))
    })
    .await?;
    say(&format!("$ {}\n{after}", curl_command(&c.namespace, vip).join(" ")));
    say("cleaning up ...");
    let prefix = lab.topology.prefix.clone();
    drop(speakers);
    drop(lab);
    Ok(Outcome { vip, first: first_node, second: second_node, failover, answers: (before, after), prefix })
}
