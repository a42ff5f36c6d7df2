//! Carrying decisions out: a Service's status (guarded by the resourceVersion it was decided on),
//! its `ferrolb.io/allocated-from` annotation and its Events; a pool's status.

use ferrolb_crds::IPPool;
use ferrolb_crds::annotations::ALLOCATED_FROM;
use ferrolb_process::events::Recorder;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use super::queue::WriteResult;
use super::service::Update;

/// How a write's error counts for the queue.
pub fn result_of(r: &Result<(), kube::Error>) -> WriteResult {
    match r {
        Ok(()) => WriteResult::Done,
        Err(kube::Error::Api(s)) if s.code == 409 => WriteResult::Conflict,
        Err(_) => WriteResult::Failed,
    }
}

/// Writes what `d` says for `svc`, decided against its version `rv`.
pub async fn service(
    client: &Client,
    recorder: &Recorder,
    manager: &str,
    svc: &Service,
    rv: &str,
    d: Update,
) -> Result<(), kube::Error> {
    let ns = svc.metadata.namespace.clone().unwrap_or_default();
    let name = svc.name_any();
    let api: Api<Service> = Api::namespaced(client.clone(), &ns);
    let pp = PatchParams { field_manager: Some(manager.to_string()), ..PatchParams::default() };
    if let Some(ips) = &d.status {
        let ingress: Vec<serde_json::Value> =
            ips.iter().map(|ip| json!({"ip": ip.to_string(), "ipMode": "VIP"})).collect();
        let ingress = if ingress.is_empty() { serde_json::Value::Null } else { json!(ingress) };
        let patch = json!({"metadata": {"resourceVersion": rv}, "status": {"loadBalancer": {"ingress": ingress}}});
        api.patch_status(&name, &pp, &Patch::Merge(patch)).await?;
    }
    if let Some(pool) = &d.annotation {
        let patch = json!({"metadata": {"annotations": {ALLOCATED_FROM: pool}}});
        api.patch(&name, &pp, &Patch::Merge(patch)).await?;
    }
    let reference = svc.object_ref(&());
    for note in d.notes {
        if let Err(e) = recorder.publish(&reference, note.warning, note.reason, "Allocate", &note.message).await {
            tracing::warn!(service = %format!("{ns}/{name}"), error = %e, "could not record an Event");
        }
    }
    Ok(())
}

/// Writes a pool's status.
pub async fn pool_status(client: Client, manager: String, name: String, status: ferrolb_crds::IPPoolStatus) {
    let api: Api<IPPool> = Api::all(client);
    let pp = PatchParams { field_manager: Some(manager), ..PatchParams::default() };
    if let Err(e) = api.patch_status(&name, &pp, &Patch::Merge(json!({"status": status}))).await {
        tracing::warn!(pool = %name, error = %e, "could not write IPPool status");
    }
}
