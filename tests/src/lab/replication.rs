//! Connection replication in the lab (`--conntrack-sync conntrackd`): a cluster whose speakers
//! replicate, and the hard failover seen by long-lived streams — one whose pod runs on the node
//! that takes the address over, one whose pod runs on a third node, and a control through a
//! Service that does not ask for replication. Shared by the lab test and the bench.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, PostParams};
use serde_json::json;

use super::failover::{failed, until};
use super::netns::{self, LabError};
use super::processes::Running;
use super::streams::{Stream, StreamReport};
use super::{Lab, probe};

/// The speaker flags of connection replication.
pub const SYNC: &[&str] = &["--conntrack-sync", "conntrackd"];

/// What three streams saw when node-1 died.
#[derive(Debug, Clone)]
pub struct ReplicatedFailover {
    /// Replicated, its pod on the node that took the address over.
    pub near: StreamReport,
    /// Replicated, its pod on the third node.
    pub far: StreamReport,
    /// Not replicated (the control).
    pub plain: StreamReport,
    /// The flows node-2's conntrackd held for the others just before node-1 died
    /// (`conntrackd -e`).
    pub external: String,
}

fn kube_err(e: kube::Error) -> LabError {
    LabError::Io(std::io::Error::other(e.to_string()))
}

impl Lab {
    /// The cluster with speakers that replicate connections, `echo` backends on 8080 and line
    /// echo servers on port 9000 in every pod.
    pub async fn start_replicating_cluster(&self) -> Result<Running, LabError> {
        self.register_cluster().await?;
        let controller = self.start_controller()?;
        let speakers = (0..self.topology.nodes.len()).map(|i| self.start_speaker(i, SYNC)).collect::<Result<_, _>>()?;
        let mut backends = self.start_backends("echo", 8080).await?;
        backends.extend(self.start_line_echo(9000)?);
        Ok(Running { controller, speakers, backends })
    }

    /// Service `name` on `vip` selecting `app` (port 80: the pod's name; 9000: the line echo),
    /// replicated or not.
    pub async fn line_service(&self, name: &str, app: &str, vip: Ipv4Addr, replicate: bool) -> Result<(), LabError> {
        let annotations =
            json!({"ferrolb.io/ips": vip.to_string(), "ferrolb.io/replicate-connections": replicate.to_string()});
        let svc: Service = serde_json::from_value(json!({"metadata": {"name": name, "annotations": annotations},
            "spec": {"type": "LoadBalancer", "selector": {"app": app}, "ports": [
                {"name": "tcp", "port": 80, "targetPort": 8080}, {"name": "stream", "port": 9000, "targetPort": 9000}]}}))
        .map_err(|e| LabError::Io(e.into()))?;
        let api: Api<Service> = Api::namespaced(self.client().await?, "default");
        api.create(&PostParams::default(), &svc).await.map_err(kube_err)?;
        Ok(())
    }

    /// Waits until `vip` is answered by node `i` alone.
    pub async fn wait_for_owner(&self, vip: Ipv4Addr, i: usize) -> Result<(), LabError> {
        let c = self.topology.client.clone();
        let want = probe::mac_bytes(&self.topology.nodes[i].mac);
        until("the address's owner to answer", Duration::from_secs(30), move || {
            let macs = probe::arp_who_has(&c.namespace, &c.interface, &c.mac, c.ipv4, vip).ok()?;
            (macs == [want].into()).then_some(())
        })
        .await
    }

    /// On a lab whose replicating cluster runs and that has no pool or Service yet: three
    /// Services on addresses node-1 owns, a stream through each, then node-1 dies (speaker
    /// killed, link down); the streams two seconds after every address has moved.
    pub async fn replicated_failover(&self, running: &mut Running) -> Result<ReplicatedFailover, LabError> {
        self.apply_pool("lan", json!({"addresses": ["198.51.100.200-198.51.100.254"]})).await?;
        running.backends.extend(self.start_backends("far", 8081).await?);
        running.backends.extend(self.start_backends("plain", 8082).await?);
        let vips = self.addresses_won_by(0, 3);
        let names: Vec<String> = self.topology.nodes.iter().map(|n| n.name.clone()).collect();
        let next = |vip: Ipv4Addr| {
            let ranked = ferrolb_speaker::election::rank(names[1..].iter().map(String::as_str), &IpAddr::V4(vip));
            names.iter().position(|n| n == ranked[0]).unwrap_or(1)
        };
        // "echo": its only ready pod on the node that takes vips[0] over; "far": on the node
        // that does not take vips[1] over; "plain": on every node but node-1.
        let near_node = next(vips[0]);
        let far_node = if next(vips[1]) == 1 { 2 } else { 1 };
        for (i, n) in names.iter().enumerate() {
            self.set_pod_ready("echo", n, i == near_node).await?;
            self.set_pod_ready("far", n, i == far_node).await?;
            self.set_pod_ready("plain", n, i != 0).await?;
        }
        self.line_service("near", "echo", vips[0], true).await?;
        self.line_service("far", "far", vips[1], true).await?;
        self.line_service("plain", "plain", vips[2], false).await?;
        let ns = self.topology.client.namespace.clone();
        let pods_of = [vec![names[near_node].clone()], vec![names[far_node].clone()], names[1..].to_vec()];
        for (vip, pods) in vips.iter().zip(pods_of) {
            self.wait_for_owner(*vip, 0).await?;
            let (ns, target) = (ns.clone(), SocketAddr::new(IpAddr::V4(*vip), 80));
            until("the Services' endpoints to be the chosen pods", Duration::from_secs(30), move || {
                // "pod=echo-node-2 client=…": the node of the pod that answered.
                let at: BTreeSet<String> = (0..10)
                    .filter_map(|_| probe::tcp_once(&ns, target))
                    .filter_map(|a| Some(a.split_whitespace().next()?.split_once("-node-")?.1.to_string()))
                    .map(|n| format!("node-{n}"))
                    .collect();
                (!at.is_empty() && at.iter().all(|n| pods.contains(n))).then_some(())
            })
            .await?;
        }
        let open = |vip: Ipv4Addr| Stream::open(&ns, SocketAddr::new(IpAddr::V4(vip), 9000));
        let (near, far, plain) = (open(vips[0]), open(vips[1]), open(vips[2]));
        // Long enough for conntrackd to have sent the flows to the others.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let external = self.conntrackd(1, "-e")?;
        running.speakers[0].kill();
        netns::ip_in(&self.topology.nodes[0].namespace, &["link", "set", "eth0", "down"])?;
        for vip in &vips {
            self.wait_for_owner(*vip, next(*vip)).await?;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let reports = tokio::task::spawn_blocking(move || (near.stop(), far.stop(), plain.stop()))
            .await
            .map_err(|_| failed("the streams to stop"))?;
        Ok(ReplicatedFailover { near: reports.0, far: reports.1, plain: reports.2, external })
    }

    /// Asks node `i`'s conntrackd (`-e`: its external cache, the flows of the others; `-i`: its
    /// own).
    pub fn conntrackd(&self, i: usize, flag: &str) -> Result<String, LabError> {
        let node = &self.topology.nodes[i];
        let conf = self.dir.join(format!("state-{}/conntrackd.conf", node.name));
        netns::exec(&node.namespace, "conntrackd", &["-C", &conf.to_string_lossy(), flag])
    }
}
