//! BGP mode in the routed lab: FRR on the router, BGPPeers for it (IPv4 and IPv6 sessions), and
//! every speaker running BIRD (`--bgp bird`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::Lab;
use super::netns::{self, LabError};
use super::probe::tcp_once;
use super::processes::{Proc, Running};
use super::router::{Router, RouterConfig};
use super::topology::ROUTER_LAN;

/// The BGPPeers the lab creates for its router.
pub const PEERS: [&str; 2] = ["router", "router-v6"];

fn kube_err(e: kube::Error) -> LabError {
    LabError::Io(std::io::Error::other(e.to_string()))
}

impl Lab {
    /// Where node `i`'s BIRD keeps its files.
    pub fn bird_dir(&self, i: usize) -> std::path::PathBuf {
        self.dir.join(format!("bird-{}", self.topology.nodes[i].name))
    }

    /// The speaker flags of BGP mode for node `i`.
    pub fn bgp_flags(&self, i: usize) -> Vec<String> {
        vec!["--bgp".into(), "bird".into(), "--bgp-dir".into(), self.bird_dir(i).to_string_lossy().into_owned()]
    }

    /// Starts speaker `i` in BGP mode, with `extra` flags too.
    pub fn start_bgp_speaker(&self, i: usize, extra: &[&str]) -> Result<Proc, LabError> {
        let flags = self.bgp_flags(i);
        let mut all: Vec<&str> = flags.iter().map(String::as_str).collect();
        all.extend(extra);
        self.start_speaker(i, &all)
    }

    /// Creates or replaces BGPPeer `name` with `spec`.
    pub async fn apply_peer(&self, name: &str, spec: serde_json::Value) -> Result<(), LabError> {
        let body =
            json!({"apiVersion": "ferrolb.io/v1alpha1", "kind": "BGPPeer", "metadata": {"name": name}, "spec": spec});
        let peers: Api<ferrolb_crds::BGPPeer> = Api::all(self.client().await?);
        peers.patch(name, &PatchParams::apply("lab"), &Patch::Apply(body)).await.map_err(kube_err)?;
        Ok(())
    }

    /// The BGPPeers of the lab's router as `c` configures it: `extra` merged into both specs
    /// (a password Secret, BFD, another ASN...).
    pub async fn apply_router_peers(&self, c: &RouterConfig, extra: serde_json::Value) -> Result<(), LabError> {
        for (name, address) in [(PEERS[0], ROUTER_LAN.0.to_string()), (PEERS[1], ROUTER_LAN.1.to_string())] {
            let mut spec = json!({"peerAddress": address, "peerASN": c.asn, "myASN": c.node_asn});
            if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
                s.extend(e.clone());
            }
            self.apply_peer(name, spec).await?;
        }
        Ok(())
    }

    /// Starts FRR on the router.
    pub fn start_router(&self, c: &RouterConfig) -> Result<Router, LabError> {
        Router::start(&self.topology, &self.dir, c)
    }

    /// The whole cluster in BGP mode: Node objects, the router's BGPPeers (`peer_extra` merged
    /// into their specs), FRR on the router, the controller, a speaker with BIRD per node, and
    /// the `echo` backends.
    pub async fn start_bgp_cluster(
        &self,
        c: &RouterConfig,
        peer_extra: serde_json::Value,
    ) -> Result<(Running, Router), LabError> {
        self.register_cluster().await?;
        self.apply_router_peers(c, peer_extra).await?;
        let router = self.start_router(c)?;
        let controller = self.start_controller()?;
        let speakers =
            (0..self.topology.nodes.len()).map(|i| self.start_bgp_speaker(i, &[])).collect::<Result<Vec<_>, _>>()?;
        let backends = self.start_backends("echo", 8080).await?;
        Ok((Running { controller, speakers, backends }, router))
    }
}

/// What a node's death looked like from the router and from a client behind it.
#[derive(Debug, Clone, Copy)]
pub struct Death {
    /// From the death to the router's forwarding table without the node.
    pub router_dropped: Duration,
    /// From the death until new connections all succeed at once again: the start of the first
    /// connection after the last one that failed or needed a SYN retransmission (over 200 ms).
    pub client_recovered: Duration,
    /// Connections that failed.
    pub failed: usize,
    /// Connections that succeeded.
    pub succeeded: usize,
}

impl Lab {
    /// Kills node `idx` (its speaker, and so its BIRD, with -9; its LAN link down) while the
    /// remote client opens a connection to `target` every 10 ms, and times what follows. The
    /// node's own pod leaves the endpoints first (as when a node is drained), so that what is
    /// measured is the route moving, not connections to a pod that died with its node, which
    /// Kubernetes itself removes only after its node-monitor grace period.
    pub async fn bgp_node_death(
        &self,
        running: &mut Running,
        router: &Router,
        idx: usize,
        target: std::net::SocketAddr,
    ) -> Result<Death, LabError> {
        let node = &self.topology.nodes[idx];
        let hop: std::net::IpAddr = if target.is_ipv4() { node.ipv4.into() } else { node.ipv6.into() };
        let prefix = if target.is_ipv4() { format!("{}/32", target.ip()) } else { format!("{}/128", target.ip()) };
        let remote = self.topology.routed.as_ref().map(|r| r.remote.namespace.clone()).unwrap_or_default();
        self.set_pod_ready("echo", &node.name, false).await?;
        let dead_pod = format!("pod=echo-{} ", node.name);
        let drained = {
            let remote = remote.clone();
            tokio::task::spawn_blocking(move || {
                let deadline = Instant::now() + Duration::from_secs(20);
                while Instant::now() < deadline {
                    let answers: Vec<String> = (0..20).filter_map(|_| tcp_once(&remote, target)).collect();
                    if answers.len() == 20 && answers.iter().all(|a| !a.starts_with(&dead_pod)) {
                        return true;
                    }
                }
                false
            })
        };
        if !drained.await.unwrap_or(false) {
            return Err(LabError::Io(std::io::Error::other("the dying node's pod was not drained")));
        }
        let start = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        // A new connection every 10 ms, each in a thread of its own: one waiting for a SYN
        // retransmission does not hold back the next.
        let prober = {
            let stop = stop.clone();
            tokio::task::spawn_blocking(move || {
                let mut attempts = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let remote = remote.clone();
                    attempts.push(std::thread::spawn(move || {
                        let began = start.elapsed();
                        let ok = tcp_once(&remote, target).is_some();
                        (began, start.elapsed(), ok)
                    }));
                    std::thread::sleep(Duration::from_millis(10));
                }
                attempts.into_iter().filter_map(|a| a.join().ok()).collect::<Vec<_>>()
            })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        let died = start.elapsed();
        // The link first: a process killed on a live link has its kernel close the BGP
        // connection, which tells the router at once; a dead node tells nobody.
        netns::ip_in(&node.namespace, &["link", "set", "eth0", "down"])?;
        running.speakers[idx].kill();
        let mut router_dropped = None;
        while start.elapsed() < died + Duration::from_secs(120) {
            if !router.fib_next_hops(&prefix).contains(&hop) && !link_local_hop(router, &prefix, &node.namespace) {
                router_dropped = Some(start.elapsed() - died);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.store(true, Ordering::Relaxed);
        let results = prober.await.map_err(|e| LabError::Io(std::io::Error::other(e.to_string())))?;
        let failed = results.iter().filter(|(_, _, ok)| !ok).count();
        let bad =
            |(began, ended, ok): &&(Duration, Duration, bool)| !ok || *ended - *began > Duration::from_millis(200);
        let last_bad = results.iter().filter(|r| r.1 > died).filter(bad).map(|r| r.0).max();
        let recovered = last_bad.and_then(|t| results.iter().map(|r| r.0).find(|s| *s > t));
        Ok(Death {
            router_dropped: router_dropped
                .ok_or_else(|| LabError::Io(std::io::Error::other("the router kept the dead node's route")))?,
            client_recovered: recovered.map(|t| t.saturating_sub(died)).unwrap_or_default(),
            failed,
            succeeded: results.len() - failed,
        })
    }
}

/// Whether the router's next hops of `prefix` include a link-local address of the node in `ns`.
fn link_local_hop(router: &Router, prefix: &str, ns: &str) -> bool {
    if !prefix.contains(':') {
        return false;
    }
    let Ok(out) = netns::ip_in(ns, &["-6", "-o", "addr", "show", "dev", "eth0", "scope", "link"]) else { return false };
    router.fib_next_hops(prefix).iter().any(|h| out.contains(&format!("{h}/")))
}
