//! BGP mode in the routed lab: FRR on the router, BGPPeers for it (IPv4 and IPv6 sessions), and
//! every speaker running BIRD (`--bgp bird`).

use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::Lab;
use super::netns::LabError;
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
