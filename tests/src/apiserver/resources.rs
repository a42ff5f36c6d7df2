//! What the server serves: the built-in resource types and those that CRDs add.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

/// How object names of a type are validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// RFC 1123 subdomain (most types).
    Subdomain,
    /// RFC 1123 label (namespaces).
    Label,
    /// RFC 1035 label (services).
    Rfc1035,
}

/// A printer column of a CRD version.
#[derive(Debug, Clone, PartialEq)]
pub struct PrinterColumn {
    /// Header.
    pub name: String,
    /// `string`, `integer`, `number`, `boolean` or `date`.
    pub type_: String,
    /// Simple JSONPath such as `.status.ipv4.used`.
    pub json_path: String,
    /// 0 for normal output, >0 for `-o wide`.
    pub priority: i64,
    /// Column description.
    pub description: String,
}

/// The parts of one CRD version that the server needs.
#[derive(Debug, Clone)]
pub struct CrdVersion {
    /// `openAPIV3Schema`, if any.
    pub schema: Option<Value>,
    /// The schema compiled for CEL evaluation.
    pub compiled: Option<Arc<kube_cel::CompiledSchema>>,
    /// Printer columns.
    pub columns: Vec<PrinterColumn>,
    /// Whether the status subresource is enabled.
    pub status: bool,
}

/// One type of resource the server serves.
#[derive(Debug, Clone)]
pub struct ResourceInfo {
    /// API group; empty for the core group.
    pub group: String,
    /// Served versions, the storage (preferred) one first.
    pub versions: Vec<String>,
    /// Kind.
    pub kind: String,
    /// Lower-case plural used in paths.
    pub plural: String,
    /// Lower-case singular.
    pub singular: String,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// kubectl short names.
    pub short_names: Vec<String>,
    /// kubectl categories (`all`).
    pub categories: Vec<String>,
    /// Whether `.status` is written only through `/status`.
    pub status_subresource: bool,
    /// Whether create keeps `.status` (Nodes; every other kind resets it).
    pub status_on_create: bool,
    /// How names are validated.
    pub name_rule: NameRule,
    /// Per-version data of a CRD-defined type.
    pub crd: Option<BTreeMap<String, CrdVersion>>,
}

impl ResourceInfo {
    fn builtin(group: &str, version: &str, kind: &str, plural: &str, namespaced: bool) -> Self {
        Self {
            group: group.into(),
            versions: vec![version.into()],
            kind: kind.into(),
            plural: plural.into(),
            singular: kind.to_lowercase(),
            namespaced,
            short_names: Vec::new(),
            categories: Vec::new(),
            status_subresource: false,
            status_on_create: false,
            name_rule: NameRule::Subdomain,
            crd: None,
        }
    }

    fn status(mut self) -> Self {
        self.status_subresource = true;
        self
    }

    fn short(mut self, names: &[&str]) -> Self {
        self.short_names = names.iter().map(|s| s.to_string()).collect();
        self
    }

    fn all(mut self) -> Self {
        self.categories = vec!["all".into()];
        self
    }

    /// `plural` or `plural.group`, as used in error messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() { self.plural.clone() } else { format!("{}.{}", self.plural, self.group) }
    }

    /// `Kind` or `Kind.group`, as used in 422 messages.
    pub fn kind_group(&self) -> String {
        if self.group.is_empty() { self.kind.clone() } else { format!("{}.{}", self.kind, self.group) }
    }

    /// `v1` or `group/version`.
    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() { version.to_string() } else { format!("{}/{version}", self.group) }
    }

    /// Whether the status subresource exists for `version`.
    pub fn has_status(&self, version: &str) -> bool {
        match &self.crd {
            Some(versions) => versions.get(version).is_some_and(|v| v.status),
            None => self.status_subresource,
        }
    }
}

/// The built-in types: what our components, kubectl and the Helm chart use.
pub fn builtins() -> Vec<ResourceInfo> {
    let mut namespaces = ResourceInfo::builtin("", "v1", "Namespace", "namespaces", false).status().short(&["ns"]);
    namespaces.name_rule = NameRule::Label;
    let mut services = ResourceInfo::builtin("", "v1", "Service", "services", true).status().short(&["svc"]).all();
    services.name_rule = NameRule::Rfc1035;
    let mut nodes = ResourceInfo::builtin("", "v1", "Node", "nodes", false).status().short(&["no"]);
    nodes.status_on_create = true;
    vec![
        namespaces,
        services,
        nodes,
        ResourceInfo::builtin("", "v1", "Pod", "pods", true).status().short(&["po"]).all(),
        ResourceInfo::builtin("", "v1", "ConfigMap", "configmaps", true).short(&["cm"]),
        ResourceInfo::builtin("", "v1", "Secret", "secrets", true),
        ResourceInfo::builtin("", "v1", "ServiceAccount", "serviceaccounts", true).short(&["sa"]),
        ResourceInfo::builtin("", "v1", "Endpoints", "endpoints", true).short(&["ep"]),
        ResourceInfo::builtin("", "v1", "Event", "events", true).short(&["ev"]),
        ResourceInfo::builtin("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", true),
        ResourceInfo::builtin("coordination.k8s.io", "v1", "Lease", "leases", true),
        ResourceInfo::builtin("events.k8s.io", "v1", "Event", "events", true).short(&["ev"]),
        ResourceInfo::builtin("apps", "v1", "Deployment", "deployments", true).status().short(&["deploy"]).all(),
        ResourceInfo::builtin("apps", "v1", "DaemonSet", "daemonsets", true).status().short(&["ds"]).all(),
        ResourceInfo::builtin("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", false),
        ResourceInfo::builtin("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", false),
        ResourceInfo::builtin("rbac.authorization.k8s.io", "v1", "Role", "roles", true),
        ResourceInfo::builtin("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", true),
        // Stored and served, not enforced (docs/TESTING.md).
        ResourceInfo::builtin(
            "admissionregistration.k8s.io",
            "v1",
            "ValidatingAdmissionPolicy",
            "validatingadmissionpolicies",
            false,
        )
        .status(),
        ResourceInfo::builtin(
            "admissionregistration.k8s.io",
            "v1",
            "ValidatingAdmissionPolicyBinding",
            "validatingadmissionpolicybindings",
            false,
        ),
        ResourceInfo::builtin("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets", true)
            .status()
            .short(&["pdb"]),
        ResourceInfo::builtin(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            false,
        )
        .status()
        .short(&["crd", "crds"]),
    ]
}

/// Where both event APIs keep their objects: one store, two shapes (see `events.rs`).
pub const EVENTS_STORAGE_GROUP: &str = "";
