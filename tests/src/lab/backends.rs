//! Backend "pods": a small TCP and UDP server in every pod namespace that answers with its pod
//! name and the client address it saw, plus the Pod objects a kubelet would write for them (the
//! lab's EndpointSlice controller, `endpoints.rs`, lists them for the Services that select them).

use k8s_openapi::api::core::v1::Pod as PodObject;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;

use super::Lab;
use super::netns::{self, LabError};

/// The pod name of the backend of `app` on a node.
pub fn pod_name(app: &str, node: &str) -> String {
    format!("{app}-{node}")
}

fn answer(pod: &str, peer: std::net::SocketAddr) -> String {
    // The sockets are dual-stack: show IPv4 clients as IPv4, not as ::ffff:a.b.c.d.
    let ip = match peer.ip() {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
        v4 => v4,
    };
    format!("pod={pod} client={ip}\n")
}

/// Writes `text`, then closes gently: our side first (FIN), then whatever the client sent (an HTTP
/// request from curl, say) is read until it closes too. Closing with unread data would answer
/// with a reset, which curl reports as an error after printing the answer.
async fn answer_and_close(mut s: tokio::net::TcpStream, text: String) {
    use tokio::io::AsyncReadExt;
    if s.write_all(text.as_bytes()).await.is_err() || s.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 1024];
    let drain = async { while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {} };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), drain).await;
}

fn kube_err(e: kube::Error) -> LabError {
    LabError::Io(std::io::Error::other(e.to_string()))
}

impl Lab {
    /// Starts a backend of `app` listening on `port` (TCP and UDP, both families) in every pod
    /// namespace, and writes its Pods in `default` — labelled `app: <app>`, Ready, with the
    /// container ports `echo` (TCP) and `echo-udp` (UDP) — so that any Service selecting them
    /// gets EndpointSlices.
    pub async fn start_backends(&self, app: &str, port: u16) -> Result<Vec<JoinHandle<()>>, LabError> {
        let mut tasks = Vec::new();
        for pod in &self.topology.pods {
            let name = pod_name(app, &pod.node);
            let tcp = netns::in_ns(&pod.namespace, || std::net::TcpListener::bind(("::", port)))??;
            let udp = netns::in_ns(&pod.namespace, || std::net::UdpSocket::bind(("::", port)))??;
            tcp.set_nonblocking(true)?;
            udp.set_nonblocking(true)?;
            let (tcp, udp) = (tokio::net::TcpListener::from_std(tcp)?, tokio::net::UdpSocket::from_std(udp)?);
            let n = name.clone();
            tasks.push(tokio::spawn(async move {
                while let Ok((s, peer)) = tcp.accept().await {
                    tokio::spawn(answer_and_close(s, answer(&n, peer)));
                }
            }));
            tasks.push(tokio::spawn(async move {
                let mut buf = [0u8; 1500];
                while let Ok((_, peer)) = udp.recv_from(&mut buf).await {
                    let _ = udp.send_to(answer(&name, peer).as_bytes(), peer).await;
                }
            }));
        }
        let client = self.client().await?;
        let pods: Api<PodObject> = Api::namespaced(client, "default");
        for pod in &self.topology.pods {
            let name = pod_name(app, &pod.node);
            let body = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": app}},
                "spec": {"nodeName": pod.node, "containers": [{"name": "backend", "image": "ferrolb-lab/backend", "ports": [
                    {"name": "echo", "containerPort": port, "protocol": "TCP"}, {"name": "echo-udp", "containerPort": port, "protocol": "UDP"}]}]}});
            pods.patch(&name, &PatchParams::apply("lab"), &Patch::Apply(body)).await.map_err(kube_err)?;
            let status = json!({"status": {"phase": "Running", "podIP": pod.ipv4.to_string(),
                "podIPs": [{"ip": pod.ipv4.to_string()}, {"ip": pod.ipv6.to_string()}],
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
            pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(status)).await.map_err(kube_err)?;
        }
        Ok(tasks)
    }

    /// Sets the Ready condition of `app`'s Pod on `node`, as its kubelet would when a readiness
    /// probe starts or stops passing (the lab's EndpointSlice controller follows it).
    pub async fn set_pod_ready(&self, app: &str, node: &str, ready: bool) -> Result<(), LabError> {
        let pods: Api<PodObject> = Api::namespaced(self.client().await?, "default");
        let status = json!({"status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" },
            "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
        pods.patch_status(&pod_name(app, node), &PatchParams::default(), &Patch::Merge(status))
            .await
            .map_err(kube_err)?;
        Ok(())
    }
}
