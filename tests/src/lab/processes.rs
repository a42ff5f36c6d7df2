//! The cluster inside the lab: Node objects matching the namespaces (what kubelets would write),
//! the controller on the host, and one speaker per node inside its namespace.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use ferrolb_crds::IPPool;
use k8s_openapi::api::core::v1::{Namespace, Node};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use super::Lab;
use super::netns::LabError;
use super::probe::SPEAKER_METRICS;

/// A binary built next to the running one (`cargo build --workspace` builds them all), or in
/// `FERROLB_BIN_DIR` when set (benches run another build side by side this way).
pub fn binary(name: &str) -> Result<PathBuf, LabError> {
    let exe = std::env::current_exe()?;
    let mut dirs = vec![];
    if let Some(dir) = std::env::var_os("FERROLB_BIN_DIR") {
        dirs.push(PathBuf::from(dir));
    }
    if let Some(d) = exe.parent() {
        dirs.push(d.to_path_buf());
        if let Some(p) = d.parent() {
            dirs.push(p.to_path_buf());
        }
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file()).ok_or_else(|| {
        LabError::Io(std::io::Error::other(format!("{name} is not built: run `cargo build --workspace`")))
    })
}

/// A process the lab started; killed when dropped.
pub struct Proc {
    /// The child.
    pub child: Child,
    /// Where it serves /metrics (in its own network namespace).
    pub metrics: SocketAddr,
}

impl Proc {
    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and wait for the exit.
    pub fn terminate(&mut self) -> std::io::Result<std::process::ExitStatus> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        self.child.wait()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn kube_err(e: kube::Error) -> LabError {
    LabError::Io(std::io::Error::other(e.to_string()))
}

impl Lab {
    /// A kube client for the host side.
    pub async fn client(&self) -> Result<kube::Client, LabError> {
        let kc = kube::config::Kubeconfig::read_from(self.kubeconfig())
            .map_err(|e| LabError::Io(std::io::Error::other(e.to_string())))?;
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .map_err(|e| LabError::Io(std::io::Error::other(e.to_string())))?;
        kube::Client::try_from(config).map_err(kube_err)
    }

    /// Writes what a fresh cluster with ferrolb installed has: the CRDs, the namespace, and a
    /// Ready Node per node namespace with its LAN addresses.
    pub async fn register_cluster(&self) -> Result<(), LabError> {
        let client = self.client().await?;
        for crd in [IPPool::crd(), ferrolb_crds::BGPPeer::crd()] {
            Api::<CustomResourceDefinition>::all(client.clone())
                .create(&PostParams::default(), &crd)
                .await
                .map_err(kube_err)?;
        }
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "ferrolb-system"}}))
            .map_err(|e| LabError::Io(e.into()))?;
        Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.map_err(kube_err)?;
        let nodes: Api<Node> = Api::all(client);
        for n in &self.topology.nodes {
            let node: Node = serde_json::from_value(json!({
                "metadata": {"name": n.name, "labels": {"kubernetes.io/hostname": n.name}},
                "status": {
                    "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
                    "addresses": [{"type": "InternalIP", "address": n.ipv4.to_string()}, {"type": "InternalIP", "address": n.ipv6.to_string()}, {"type": "Hostname", "address": n.name}]
                }
            }))
            .map_err(|e| LabError::Io(e.into()))?;
            nodes.create(&PostParams::default(), &node).await.map_err(kube_err)?;
        }
        Ok(())
    }

    /// Creates or replaces IPPool `name` with `spec` (server-side apply).
    pub async fn apply_pool(&self, name: &str, spec: serde_json::Value) -> Result<(), LabError> {
        let body =
            json!({"apiVersion": "ferrolb.io/v1alpha1", "kind": "IPPool", "metadata": {"name": name}, "spec": spec});
        let pools: Api<IPPool> = Api::all(self.client().await?);
        pools.patch(name, &PatchParams::apply("lab"), &Patch::Apply(body)).await.map_err(kube_err)?;
        Ok(())
    }

    /// The addresses in the status of Service `default/name` (empty while it has none).
    pub async fn service_ips(&self, name: &str) -> Vec<std::net::IpAddr> {
        let Ok(client) = self.client().await else { return Vec::new() };
        let Ok(svc) = Api::<k8s_openapi::api::core::v1::Service>::namespaced(client, "default").get(name).await else {
            return Vec::new();
        };
        svc.status
            .and_then(|s| s.load_balancer)
            .and_then(|l| l.ingress)
            .into_iter()
            .flatten()
            .filter_map(|i| i.ip?.parse().ok())
            .collect()
    }

    /// Starts the controller on the host.
    pub fn start_controller(&self) -> Result<Proc, LabError> {
        self.start_controller_as("lab")
    }

    /// Starts a controller replica on the host with its own leader-election `identity` (its log,
    /// `controller-<identity>.log` unless it is `lab`, is appended to across restarts).
    pub fn start_controller_as(&self, identity: &str) -> Result<Proc, LabError> {
        let file = if identity == "lab" { "controller.log".to_string() } else { format!("controller-{identity}.log") };
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join(file))?;
        // A port free now: labs run side by side on the host, so no fixed port will do.
        let metrics = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let child = Command::new(binary("ferrolb-controller")?)
            .args([
                "--kubeconfig",
                &self.kubeconfig().to_string_lossy(),
                "--namespace",
                "ferrolb-system",
                "--identity",
                identity,
                // As the chart runs it: the speakers' heartbeat key is made in the cluster (the
                // lab's speakers do not read it; the RBAC test sees the calls).
                "--peer-secret",
                "ferrolb-peer-secret",
            ])
            .args(["--metrics-addr", &metrics.to_string(), "--health-addr", "127.0.0.1:0"])
            .stdout(Stdio::from(log))
            .spawn()?;
        Ok(Proc { child, metrics })
    }

    /// Cordons Node `name` (`kubectl cordon`, the first step of a drain): its speaker then leaves
    /// for good on SIGTERM instead of restarting in place.
    pub async fn cordon(&self, name: &str) -> Result<(), LabError> {
        let nodes: Api<Node> = Api::all(self.client().await?);
        nodes
            .patch(name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"unschedulable": true}})))
            .await
            .map_err(kube_err)?;
        Ok(())
    }

    /// Starts the speaker of node `i` (0-based) inside its namespace, with `extra` flags
    /// (forwarding is the product default, nftables, unless `extra` says `--forwarding none`).
    pub fn start_speaker(&self, i: usize, extra: &[&str]) -> Result<Proc, LabError> {
        self.start_speaker_from(&binary("ferrolb-speaker")?, i, extra)
    }

    /// [`Lab::start_speaker`] with the speaker binary `bin` (benches compare builds this way).
    pub fn start_speaker_from(&self, bin: &std::path::Path, i: usize, extra: &[&str]) -> Result<Proc, LabError> {
        let node = &self.topology.nodes[i];
        // Appended to: a speaker restarted in place writes its second run after its first.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("speaker-{}.log", node.name)))?;
        // Each node's own host directory, as /run/ferrolb is on a real node.
        let state = self.dir.join(format!("state-{}", node.name));
        let child = Command::new("ip")
            .args(["netns", "exec", &node.namespace])
            .arg(bin)
            .args(["--kubeconfig", &self.node_kubeconfig().to_string_lossy(), "--node-name", &node.name])
            .args(["--namespace", "ferrolb-system", "--peer-port", "7946"])
            .args(["--state-dir", &state.to_string_lossy()])
            .args(["--metrics-addr", SPEAKER_METRICS, "--health-addr", SPEAKER_METRICS])
            .args(extra)
            .stdout(Stdio::from(log))
            .spawn()?;
        Ok(Proc { child, metrics: SPEAKER_METRICS.parse().expect("a socket address") })
    }
}

/// Everything `ferrolb-lab up` runs on top of the network.
pub struct Running {
    /// The controller.
    pub controller: Proc,
    /// One speaker per node.
    pub speakers: Vec<Proc>,
    /// The backend servers.
    pub backends: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for b in &self.backends {
            b.abort();
        }
    }
}

impl Lab {
    /// The whole cluster: Node objects, the controller, a speaker per node, and an `echo` backend
    /// (TCP and UDP port 8080) in every pod with its Pods and EndpointSlices.
    pub async fn start_cluster(&self) -> Result<Running, LabError> {
        self.register_cluster().await?;
        let controller = self.start_controller()?;
        let speakers =
            (0..self.topology.nodes.len()).map(|i| self.start_speaker(i, &[])).collect::<Result<Vec<_>, _>>()?;
        let backends = self.start_backends("echo", 8080).await?;
        Ok(Running { controller, speakers, backends })
    }
}
