//! The controller's part of a BGPPeer's status: how many nodes are selected to peer with it, how
//! many of those report an Established session, and the `Ready` condition naming the ones that do
//! not and why. The speakers write the per-node entries; the leader sums them up here.

use std::collections::BTreeMap;
use std::time::Duration;

use ferrolb_crds::{BGPPeer, selector};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::Notify;
use tokio::task::JoinSet;

use super::pool_status::condition;

/// The summary the controller writes: (selected, established, Ready condition).
pub fn summary(
    peer: &BGPPeer,
    nodes: &BTreeMap<String, BTreeMap<String, String>>,
) -> (u32, u32, k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition) {
    let selected: Vec<&String> = nodes
        .iter()
        .filter(|(_, labels)| {
            peer.spec.node_selector.as_ref().is_none_or(|s| selector::matches(s, labels).unwrap_or(false))
        })
        .map(|(name, _)| name)
        .collect();
    let entries: BTreeMap<&str, _> = peer.status.iter().flat_map(|s| &s.nodes).map(|e| (e.node.as_str(), e)).collect();
    let mut down = Vec::new();
    for n in &selected {
        match entries.get(n.as_str()) {
            Some(e) if e.state == "Established" => {}
            Some(e) => down.push(match &e.message {
                Some(m) => format!("{n} ({}: {m})", e.state),
                None => format!("{n} ({})", e.state),
            }),
            None => down.push(format!("{n} (no report from its speaker)")),
        }
    }
    let established = (selected.len() - down.len()) as u32;
    let previous = peer.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
    let generation = peer.metadata.generation;
    let ready = if selected.is_empty() {
        condition(
            "Ready",
            false,
            "NoNodes",
            "no node is selected to peer with this router".into(),
            &previous,
            generation,
        )
    } else if down.is_empty() {
        let msg = format!("every selected node ({}) has an Established session", selected.len());
        condition("Ready", true, "Established", msg, &previous, generation)
    } else {
        let msg = format!("not Established: {}", down.join(", "));
        condition("Ready", false, "SessionsDown", msg, &previous, generation)
    };
    (selected.len() as u32, established, ready)
}

/// Keeps every BGPPeer's summary current while this replica leads; ends when dropped.
pub async fn run(client: Client, field_manager: String) {
    let changed = std::sync::Arc::new(Notify::new());
    // The watches end with this task (a JoinSet aborts its tasks when dropped).
    let mut tasks = JoinSet::new();
    let peers = store::<BGPPeer>(&mut tasks, Api::all(client.clone()), changed.clone());
    let nodes = store::<Node>(&mut tasks, Api::all(client.clone()), changed.clone());
    let api: Api<BGPPeer> = Api::all(client);
    loop {
        changed.notified().await;
        // Changes come in bursts (every node's speaker reports at once): sum them up together.
        tokio::time::sleep(Duration::from_millis(100)).await;
        write_all(&api, &field_manager, &peers, &nodes).await;
    }
}

async fn write_all(api: &Api<BGPPeer>, field_manager: &str, peers: &Store<BGPPeer>, nodes: &Store<Node>) {
    let labels: BTreeMap<String, BTreeMap<String, String>> =
        nodes.state().iter().map(|n| (n.name_any(), n.labels().clone())).collect();
    for peer in peers.state() {
        let (selected, established, ready) = summary(&peer, &labels);
        let status = peer.status.clone().unwrap_or_default();
        let same = status.selected == Some(selected)
            && status.established == Some(established)
            && status.conditions.iter().any(|c| {
                c.type_ == ready.type_
                    && c.status == ready.status
                    && c.reason == ready.reason
                    && c.message == ready.message
            });
        if same {
            continue;
        }
        let body = json!({"status": {"selected": selected, "established": established, "conditions": [ready]}});
        let params = PatchParams { field_manager: Some(field_manager.to_string()), ..PatchParams::default() };
        if let Err(e) = api.patch_status(&peer.name_any(), &params, &Patch::Merge(&body)).await {
            tracing::warn!(peer = %peer.name_any(), error = %e, "could not write the BGPPeer status");
        }
    }
}

fn store<K>(tasks: &mut JoinSet<()>, api: Api<K>, changed: std::sync::Arc<Notify>) -> Store<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()).default_backoff());
    tasks.spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => continue,
                Ok(_) => changed.notify_one(),
                Err(e) => tracing::warn!(error = %e, "watch failed; retrying"),
            }
        }
    });
    reader
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(selector: serde_json::Value, entries: serde_json::Value) -> BGPPeer {
        serde_json::from_value(
            json!({"apiVersion": "ferrolb.io/v1alpha1", "kind": "BGPPeer", "metadata": {"name": "tor"},
            "spec": {"peerAddress": "192.0.2.1", "peerASN": 1, "myASN": 2, "nodeSelector": selector},
            "status": {"nodes": entries}}),
        )
        .unwrap()
    }

    fn nodes() -> BTreeMap<String, BTreeMap<String, String>> {
        let rack = |r: &str| BTreeMap::from([("rack".to_string(), r.to_string())]);
        BTreeMap::from([("n1".into(), rack("a")), ("n2".into(), rack("a")), ("n3".into(), rack("b"))])
    }

    #[test]
    fn ready_when_every_selected_node_is_established() {
        let p = peer(
            json!({"matchLabels": {"rack": "a"}}),
            json!([
            {"node": "n1", "state": "Established"}, {"node": "n2", "state": "Established"},
            {"node": "n3", "state": "Active"}]),
        );
        let (selected, established, ready) = summary(&p, &nodes());
        assert_eq!((selected, established, ready.status.as_str()), (2, 2, "True"), "n3 is not selected");
    }

    #[test]
    fn names_the_nodes_that_are_not_and_why() {
        let p = peer(
            json!(null),
            json!([
            {"node": "n1", "state": "Established"}, {"node": "n2", "state": "Idle", "message": "BGP Error: Bad peer AS"}]),
        );
        let (selected, established, ready) = summary(&p, &nodes());
        assert_eq!((selected, established), (3, 1));
        assert_eq!(ready.status, "False");
        assert_eq!(
            ready.message,
            "not Established: n2 (Idle: BGP Error: Bad peer AS), n3 (no report from its speaker)"
        );
        let none = peer(json!({"matchLabels": {"rack": "z"}}), json!([]));
        assert_eq!(summary(&none, &nodes()).2.reason, "NoNodes");
    }
}
