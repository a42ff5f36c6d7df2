//! The verbs on the store (get, list, create, update, patch, delete), with the object semantics
//! of kube-apiserver, one concern a file: `read` (get, list, continue tokens), `write` (create,
//! update, patch, delete: uid and timestamps, generation, optimistic concurrency, the status
//! subresource, finalizers), `admission` (per-kind checks), `crds` (CustomResourceDefinitions
//! becoming served types), `namespaces` (what a write does to the namespace lifecycle).

mod admission;
mod crds;
mod namespaces;
mod read;
mod write;

use std::sync::Arc;

use serde_json::{Value, json};

use super::error::{ApiError, ApiResult};
use super::events;
use super::resources::ResourceInfo;
use super::selectors::{FieldSelector, LabelSelector};
use super::store::{CollectionKey, ObjectKey, Store};

pub use self::admission::validate_conditions;
pub use self::crds::crd_resource;
pub use self::read::{get, list};
pub use self::write::{create, delete, delete_collection, patch, update};

/// Who writes, and how: what server-side apply's field ownership needs besides the target.
#[derive(Debug, Clone)]
pub struct Writer {
    /// `dryRun=All`: checked, not stored.
    pub dry_run: bool,
    /// The field manager: `fieldManager`, else the User-Agent's product (before the `/`), as
    /// kube-apiserver derives it.
    pub manager: String,
    /// `force=true` on an apply: take the fields over from their other owners.
    pub force: bool,
}

impl Writer {
    /// The server's own writes (the namespaces and the `kubernetes` Service of a fresh cluster).
    pub fn server() -> Self {
        Self { dry_run: false, manager: "kube-apiserver".into(), force: false }
    }
}

/// What a request addresses.
#[derive(Debug, Clone)]
pub struct Target {
    /// Where the objects live.
    pub key: CollectionKey,
    /// Their type.
    pub info: Arc<ResourceInfo>,
    /// The group the client asked through (events.k8s.io shares core Events' storage).
    pub group: String,
    /// The version the client asked for; objects are shown in it.
    pub version: String,
    /// The namespace in the path, if any.
    pub namespace: Option<String>,
    /// The name in the path, if any.
    pub name: Option<String>,
    /// Whether the path ends in `/status`.
    pub status: bool,
}

impl Target {
    fn events_v1(&self) -> bool {
        self.group == "events.k8s.io"
    }

    /// `apiVersion` as the client asked for it.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.clone() } else { format!("{}/{}", self.group, self.version) }
    }

    /// The stored object as the client sees it.
    pub fn to_wire(&self, obj: &Value) -> Value {
        if self.events_v1() {
            return events::to_events_v1(obj);
        }
        let mut out = obj.clone();
        out["apiVersion"] = json!(self.api_version());
        out["kind"] = json!(self.info.kind);
        out
    }

    fn to_storage(&self, obj: Value) -> Value {
        let mut out = if self.events_v1() { events::to_core(&obj) } else { obj };
        if !out.is_object() {
            return out;
        }
        out["apiVersion"] = json!(self.info.api_version(&self.info.versions[0]));
        out["kind"] = json!(self.info.kind);
        out
    }

    fn object_key(&self) -> ObjectKey {
        (self.namespace.clone().unwrap_or_default(), self.name.clone().unwrap_or_default())
    }

    fn not_found(&self) -> ApiError {
        ApiError::not_found(&self.info.qualified(), self.name.as_deref().unwrap_or_default())
    }
}

/// Query parameters of a list or watch.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// `labelSelector`.
    pub labels: Option<LabelSelector>,
    /// `fieldSelector`.
    pub fields: Option<FieldSelector>,
    /// `limit` (0 = no limit).
    pub limit: usize,
    /// `continue`.
    pub continue_token: Option<String>,
    /// `resourceVersion` (0: any).
    pub resource_version: Option<u64>,
    /// `resourceVersionMatch=Exact`: the list as it was at `resource_version`.
    pub exact: bool,
}

impl ListQuery {
    /// Whether an object passes the selectors.
    pub fn matches(&self, obj: &Value) -> bool {
        self.labels.as_ref().is_none_or(|l| l.matches(obj)) && self.fields.as_ref().is_none_or(|f| f.matches(obj))
    }
}

pub(super) fn rv_of(obj: &Value) -> &str {
    obj.pointer("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or_default()
}

pub(super) fn collection<'a>(store: &'a Store, t: &Target) -> ApiResult<&'a super::store::Collection> {
    store.collection(&t.key).ok_or_else(|| ApiError::no_route(&t.info.qualified()))
}
