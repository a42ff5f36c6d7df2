//! The network-namespace lab: a small cluster on one Linux host (root), built from namespaces,
//! with sim-apiserver reachable from every node. Tests and `ferrolb-lab` share this code.

pub mod backends;
pub mod bgp;
pub mod demo;
pub mod endpoints;
pub mod failover;
pub mod netns;
pub mod probe;
pub mod processes;
pub mod replication;
pub mod router;
pub mod sctp;
pub mod streams;
pub mod topology;
pub mod tunnel;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use self::netns::LabError;
use self::topology::Topology;
use crate::apiserver::{SimApiServer, SimConfig, kubeconfig_for};

/// Where nodes find the API server, inside each node namespace.
pub const NODE_API: &str = "127.0.0.1:6443";

/// What scripts need to drive a lab (`ferrolb-lab up --state-file`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct State {
    /// The `ferrolb-lab up` process that serves the API (`down` stops it).
    pub pid: u32,
    /// A kubeconfig for the host (tests, kubectl).
    pub kubeconfig: PathBuf,
    /// A kubeconfig for processes inside node namespaces.
    pub node_kubeconfig: PathBuf,
    /// The network.
    #[serde(flatten)]
    pub topology: Topology,
}

/// A running lab: the network, the API server, the relays into the nodes and the lab's
/// EndpointSlice controller. Dropping it tears everything down.
pub struct Lab {
    /// The network.
    pub topology: Topology,
    /// The API server.
    pub api: SimApiServer,
    /// Files of this lab (kubeconfigs, logs).
    pub dir: PathBuf,
    /// The relays into the nodes and the EndpointSlice controller.
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Keep the files (logs) when dropped.
    keep: bool,
}

impl Lab {
    /// Builds a lab with `nodes` nodes (needs root, iproute2 and nftables).
    pub async fn up(nodes: usize) -> Result<Self, LabError> {
        Self::build(nodes, false).await
    }

    /// Builds a lab with `nodes` nodes and, when `routed`, the upstream router and the remote
    /// client (the router's BGP daemon is started by [`Lab::start_router`]).
    pub async fn build(nodes: usize, routed: bool) -> Result<Self, LabError> {
        let prefix = topology::fresh_prefix();
        let topo = tokio::task::spawn_blocking(move || topology::build(&prefix, nodes, routed))
            .await
            .map_err(|e| LabError::Io(std::io::Error::other(e)))??;
        let api = SimApiServer::start(SimConfig::default()).await.map_err(LabError::Io);
        let api = match api {
            Ok(a) => a,
            Err(e) => {
                topology::teardown(&topo);
                return Err(e);
            }
        };
        let dir = std::env::temp_dir().join(&topo.prefix);
        let mut lab = Lab { topology: topo, api, dir, tasks: Vec::new(), keep: false };
        lab.finish_setup()?;
        // What Kubernetes' EndpointSlice controller does for the lab's Pods.
        let client = lab.client().await?;
        lab.tasks.push(tokio::spawn(endpoints::run(client)));
        Ok(lab)
    }

    fn finish_setup(&mut self) -> Result<(), LabError> {
        std::fs::create_dir_all(&self.dir)?;
        self.api.write_kubeconfig(&self.kubeconfig())?;
        std::fs::write(self.node_kubeconfig(), kubeconfig_for(&format!("http://{NODE_API}")))?;
        let listen: SocketAddr = NODE_API.parse().expect("static address");
        for node in &self.topology.nodes {
            self.tasks.push(tunnel::expose(&node.namespace, listen, self.api.addr())?);
        }
        Ok(())
    }

    /// Keeps the lab's files (the processes' logs) when it is torn down, for a post-mortem.
    pub fn keep_files(&mut self) {
        self.keep = true;
    }

    /// The host's kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// The kubeconfig processes inside node namespaces use.
    pub fn node_kubeconfig(&self) -> PathBuf {
        self.dir.join("node-kubeconfig")
    }

    /// What scripts need, as written by `ferrolb-lab up --state-file`.
    pub fn state(&self) -> State {
        State {
            pid: std::process::id(),
            kubeconfig: self.kubeconfig(),
            node_kubeconfig: self.node_kubeconfig(),
            topology: self.topology.clone(),
        }
    }

    /// Writes [`Self::state`] as JSON, atomically: a reader sees no file or the whole of it.
    pub fn write_state(&self, path: &Path) -> Result<(), LabError> {
        let json = serde_json::to_string_pretty(&self.state()).map_err(|e| LabError::Io(std::io::Error::other(e)))?;
        let partial = path.with_extension("partial");
        std::fs::write(&partial, json)?;
        std::fs::rename(&partial, path)?;
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        topology::teardown(&self.topology);
        // FERROLB_LAB_KEEP=1 keeps the logs of the controller and speakers for a post-mortem.
        if self.keep || std::env::var_os("FERROLB_LAB_KEEP").is_some() {
            eprintln!("kept the lab's files in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Tears down the lab a state file describes (for `ferrolb-lab down --state-file`).
pub fn down(state_file: &Path) -> Result<(), LabError> {
    let text = std::fs::read_to_string(state_file)?;
    let state: State = serde_json::from_str(&text).map_err(|e| LabError::Io(std::io::Error::other(e)))?;
    // The `up` process tears its lab down itself on SIGTERM; make sure anyway.
    // SAFETY: kill with a pid from the state file; a stale pid only gets ESRCH.
    unsafe { libc::kill(state.pid as libc::pid_t, libc::SIGTERM) };
    topology::teardown(&state.topology);
    if let Some(dir) = state.kubeconfig.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(())
}
