//! This node's entry in each BGPPeer's status, written with server-side apply: `status.nodes` is
//! a list keyed by node, so every speaker owns its own entry and none overwrites another's. A
//! change of state is also an Event on the BGPPeer.

use ferrolb_crds::BGPPeer;
use ferrolb_process::events::Recorder;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Resource};
use serde_json::json;

/// One node's session with one peer, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The BGP state.
    pub state: String,
    /// When it entered the state.
    pub since: jiff::Timestamp,
    /// Why it is not Established, if known.
    pub message: Option<String>,
}

/// The field manager of `node`'s entries.
pub fn manager(node: &str) -> String {
    format!("ferrolb-speaker.{node}")
}

/// Applies `node`'s entry of `peer` and records the change as an Event on the peer.
pub async fn write(
    client: &Client,
    recorder: &Recorder,
    node: &str,
    peer: &BGPPeer,
    entry: &Entry,
) -> Result<(), kube::Error> {
    let name = peer.metadata.name.clone().unwrap_or_default();
    let api: Api<BGPPeer> = Api::all(client.clone());
    let mut item = json!({"node": node, "state": entry.state, "since": Time(entry.since)});
    if let Some(m) = &entry.message {
        item["message"] = json!(m);
    }
    let body = json!({
        "apiVersion": "ferrolb.io/v1alpha1", "kind": "BGPPeer", "metadata": {"name": name},
        "status": {"nodes": [item]}
    });
    let params = PatchParams::apply(&manager(node)).force();
    api.patch_status(&name, &params, &Patch::Apply(&body)).await?;
    let established = entry.state == "Established";
    let note = match &entry.message {
        Some(m) if !established => format!("node {node}: session {} ({m})", entry.state),
        _ => format!("node {node}: session {}", entry.state),
    };
    let reason = if established { "SessionEstablished" } else { "SessionDown" };
    if let Err(e) = recorder.publish(&peer.object_ref(&()), !established, reason, "Peer", &note).await {
        tracing::warn!(peer = %name, error = %e, "could not record an Event");
    }
    Ok(())
}
