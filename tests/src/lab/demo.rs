//! `ferrolb-lab demo`: the whole story in one command — a pool and a Service, the EXTERNAL-IP and
//! who announces it, the announcing node's speaker killed, and how long the client took to follow.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, PostParams};
use serde_json::json;

use super::netns::LabError;
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
    say("creating IPPool lan (198.51.100.200-198.51.100.210) and Service demo/web (type LoadBalancer) ...");
    lab.apply_pool("lan", json!({"addresses": ["198.51.100.200-198.51.100.210"]})).await?;
    let svc: Service = serde_json::from_value(json!({"metadata": {"name": "web"},
        "spec": {"type": "LoadBalancer", "selector": {"app": "web"}, "ports": [{"port": 80}]}}))
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
    let ns = c.namespace.clone();
    tokio::task::spawn_blocking(move || probe::resolve(&ns, vip)).await.map_err(|e| fail(e.to_string()))?;
    let idx = lab.topology.nodes.iter().position(|n| n.name == first_node).ok_or_else(|| fail("no such node"))?;
    say(&format!("kill -9 the speaker on {first_node} ..."));
    let killed = Instant::now();
    speakers[idx].kill();
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
    say("cleaning up ...");
    let prefix = lab.topology.prefix.clone();
    drop(speakers);
    drop(lab);
    Ok(Outcome { vip, first: first_node, second: second_node, failover, prefix })
}
