//! The end-to-end failover seen by TCP: a client opens connection after connection to a VIP
//! while the announcing node dies (its speaker killed, its LAN link down). Shared by the lab test
//! and the benchmark that repeats it.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, PostParams};
use serde_json::json;

use super::netns::{self, LabError};
use super::probe::tcp_once;
use super::{Lab, processes::Running};

/// What the client saw.
#[derive(Debug, Clone, Copy)]
pub struct TcpFailover {
    /// The longest time between two successful connections.
    pub longest_gap: Duration,
    /// Successful connections in the 6 s window.
    pub connections: usize,
    /// Whether connections succeeded again after the node died.
    pub resumed: bool,
}

pub(super) fn failed(what: &str) -> LabError {
    LabError::Io(std::io::Error::other(format!("timed out waiting for {what}")))
}

/// Polls `check` every 20 ms until it gives a value, for at most `timeout`.
pub(super) async fn until<T, F: FnMut() -> Option<T> + Clone + Send + 'static>(
    what: &str,
    timeout: Duration,
    check: F,
) -> Result<T, LabError>
where
    T: Send + 'static,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(v)) = tokio::task::spawn_blocking(check.clone()).await {
            return Ok(v);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(failed(what))
}

fn kube_err(e: kube::Error) -> LabError {
    LabError::Io(std::io::Error::other(e.to_string()))
}

impl Lab {
    /// The first `n` addresses from 198.51.100.200 on that node `i` wins the election for among
    /// all the lab's nodes (so a test knows which node announces what).
    pub fn addresses_won_by(&self, i: usize, n: usize) -> Vec<std::net::Ipv4Addr> {
        let names: Vec<&str> = self.topology.nodes.iter().map(|n| n.name.as_str()).collect();
        (200..=254u8)
            .map(|last| std::net::Ipv4Addr::new(198, 51, 100, last))
            .filter(|a| ferrolb_speaker::election::winner(names.iter().copied(), &IpAddr::V4(*a)) == Some(names[i]))
            .take(n)
            .collect()
    }

    /// Runs the failover once on a lab whose cluster runs (`start_cluster`) and that has no
    /// pool or Service yet: Service `echo` on the lab's only VIP 198.51.100.200, its announcing
    /// node drained of its pod, then killed while the client connects every 10 ms for 6 s.
    pub async fn tcp_failover(&self, running: &mut Running) -> Result<TcpFailover, LabError> {
        let client = self.client().await?;
        self.apply_pool("lan", json!({"addresses": ["198.51.100.200/32"]})).await?;
        let svc: Service =
            serde_json::from_value(json!({"metadata": {"name": "echo"}, "spec": {"type": "LoadBalancer",
            "selector": {"app": "echo"}, "ports": [{"name": "tcp", "port": 80, "targetPort": 8080}]}}))
            .map_err(|e| LabError::Io(e.into()))?;
        let api: Api<Service> = Api::namespaced(client.clone(), "default");
        api.create(&PostParams::default(), &svc).await.map_err(kube_err)?;
        let vip: IpAddr = "198.51.100.200".parse().expect("an address");
        let ns = self.topology.client.namespace.clone();
        let target = SocketAddr::new(vip, 80);
        until("the VIP to answer", Duration::from_secs(30), {
            let ns = ns.clone();
            move || tcp_once(&ns, target)
        })
        .await?;
        let names: Vec<String> = self.topology.nodes.iter().map(|n| n.name.clone()).collect();
        let winner = ferrolb_speaker::election::winner(names.iter().map(String::as_str), &vip)
            .ok_or_else(|| failed("an election winner"))?
            .to_string();
        let idx = names.iter().position(|n| *n == winner).ok_or_else(|| failed("the winner's node"))?;
        // Its own pod leaves the endpoints first (as when a node is drained), so that what is
        // measured is the announcement moving, not connections to a pod that died with its node.
        self.set_pod_ready("echo", &winner, false).await?;
        let dead_pod = format!("pod=echo-{winner} ");
        until("the announcing node's pod to be drained", Duration::from_secs(20), {
            let ns = ns.clone();
            move || {
                let answers: Vec<String> = (0..20).filter_map(|_| tcp_once(&ns, target)).collect();
                (answers.len() == 20 && answers.iter().all(|a| !a.starts_with(&dead_pod))).then_some(())
            }
        })
        .await?;
        let prober = tokio::task::spawn_blocking(move || {
            let start = Instant::now();
            let mut ok = Vec::new();
            while start.elapsed() < Duration::from_secs(6) {
                if tcp_once(&ns, target).is_some() {
                    ok.push(start.elapsed());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            ok
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        running.speakers[idx].kill();
        netns::ip_in(&self.topology.nodes[idx].namespace, &["link", "set", "eth0", "down"])?;
        let ok = prober.await.map_err(|e| LabError::Io(std::io::Error::other(e.to_string())))?;
        Ok(TcpFailover {
            longest_gap: ok.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default(),
            connections: ok.len(),
            resumed: ok.iter().any(|t| *t > Duration::from_secs(3)),
        })
    }
}
