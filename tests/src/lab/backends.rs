//! Backend "pods": a small TCP and UDP server in every pod namespace that answers with its pod
//! name and the client address it saw, plus the Pod and EndpointSlice objects a kubelet and the
//! endpoint controller would write for them.

use k8s_openapi::api::core::v1::Pod as PodObject;
use k8s_openapi::api::discovery::v1::EndpointSlice;
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

fn kube_err(e: kube::Error) -> LabError {
    LabError::Io(std::io::Error::other(e.to_string()))
}

impl Lab {
    /// Starts a backend of `app` listening on `port` (TCP and UDP, both families) in every pod
    /// namespace, and writes its Pods and a ready EndpointSlice for Service `app` in `default`.
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
                while let Ok((mut s, peer)) = tcp.accept().await {
                    let _ = s.write_all(answer(&n, peer).as_bytes()).await;
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
        let pods: Api<PodObject> = Api::namespaced(client.clone(), "default");
        let mut endpoints = Vec::new();
        for pod in &self.topology.pods {
            let name = pod_name(app, &pod.node);
            let body = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": app}},
                "spec": {"nodeName": pod.node, "containers": [{"name": "backend", "image": "ferrolb-lab/backend", "ports": [{"containerPort": port}]}]}});
            pods.patch(&name, &PatchParams::apply("lab"), &Patch::Apply(body)).await.map_err(kube_err)?;
            let status = json!({"status": {"phase": "Running", "podIP": pod.ipv4.to_string(),
                "podIPs": [{"ip": pod.ipv4.to_string()}, {"ip": pod.ipv6.to_string()}],
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
            pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(status)).await.map_err(kube_err)?;
            endpoints.push((pod.node.clone(), name, pod.ipv4.to_string(), pod.ipv6.to_string()));
        }
        let slices: Api<EndpointSlice> = Api::namespaced(client, "default");
        for (family, pick) in [("IPv4", 0usize), ("IPv6", 1usize)] {
            let eps: Vec<serde_json::Value> = endpoints
                .iter()
                .map(|(node, pod, v4, v6)| {
                    json!({"addresses": [if pick == 0 { v4 } else { v6 }], "nodeName": node, "conditions": {"ready": true, "serving": true, "terminating": false},
                        "targetRef": {"kind": "Pod", "namespace": "default", "name": pod}})
                })
                .collect();
            let name = format!("{app}-{}", family.to_lowercase());
            let body = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": name, "labels": {"kubernetes.io/service-name": app}},
                "addressType": family, "ports": [{"name": "tcp", "port": port, "protocol": "TCP"}, {"name": "udp", "port": port, "protocol": "UDP"}],
                "endpoints": eps});
            slices.patch(&name, &PatchParams::apply("lab"), &Patch::Apply(body)).await.map_err(kube_err)?;
        }
        Ok(tasks)
    }
}
