//! RBAC as sets of permissions (pure): what a request to the API needs, and what RBAC rules
//! grant, so that the chart's roles can be compared with what the binaries do in the lab.

use std::collections::BTreeSet;

use serde_json::Value;

/// One permission: API group ("" for the core group), resource (with `/subresource`), verb.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Permission {
    /// API group.
    pub group: String,
    /// Resource, `services` or `services/status`.
    pub resource: String,
    /// Verb as RBAC names it (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, …).
    pub verb: String,
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.group.is_empty() { "core" } else { &self.group };
        write!(f, "{} {group}/{}", self.verb, self.resource)
    }
}

/// The permission a request needs, and the namespace it is in; `None` for paths that are not
/// resources (discovery, `/version`), which RBAC does not guard with resource rules.
pub fn needed(method: &str, path: &str, watch: bool) -> Option<(Option<String>, Permission)> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", "v1", rest @ ..] => (String::new(), rest),
        ["apis", group, _version, rest @ ..] => ((*group).to_string(), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_string()), rest),
        rest => (None, rest),
    };
    let (resource, named) = match rest {
        [resource] => ((*resource).to_string(), false),
        [resource, _name] => ((*resource).to_string(), true),
        [resource, _name, sub] => (format!("{resource}/{sub}"), true),
        _ => return None,
    };
    let verb = match (method, named, watch) {
        (_, _, true) => "watch",
        ("GET", true, _) => "get",
        ("GET", false, _) => "list",
        ("POST", _, _) => "create",
        ("PUT", _, _) => "update",
        ("PATCH", _, _) => "patch",
        ("DELETE", true, _) => "delete",
        ("DELETE", false, _) => "deletecollection",
        _ => return None,
    };
    Some((namespace, Permission { group, resource, verb: verb.into() }))
}

/// Everything the `rules` of a Role or ClusterRole grant (no wildcards are expected in ours; a
/// `*` is kept as is and matches nothing, so it shows as unused).
pub fn granted(rules: &Value) -> BTreeSet<Permission> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(str::to_string)).collect()
    };
    let mut out = BTreeSet::new();
    for rule in rules.as_array().into_iter().flatten() {
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for verb in strings(&rule["verbs"]) {
                    out.insert(Permission { group: group.clone(), resource: resource.clone(), verb });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(group: &str, resource: &str, verb: &str) -> Permission {
        Permission { group: group.into(), resource: resource.into(), verb: verb.into() }
    }

    #[test]
    fn requests_map_to_rbac_verbs() {
        assert_eq!(needed("GET", "/api/v1/services", true), Some((None, p("", "services", "watch"))));
        assert_eq!(needed("GET", "/api/v1/services", false), Some((None, p("", "services", "list"))));
        assert_eq!(
            needed("PATCH", "/api/v1/namespaces/default/services/web/status", false),
            Some((Some("default".into()), p("", "services/status", "patch")))
        );
        assert_eq!(
            needed("PUT", "/apis/coordination.k8s.io/v1/namespaces/ferrolb-system/leases/x", false),
            Some((Some("ferrolb-system".into()), p("coordination.k8s.io", "leases", "update")))
        );
        assert_eq!(needed("GET", "/api/v1/nodes/node-1", false), Some((None, p("", "nodes", "get"))));
        assert_eq!(
            needed("GET", "/api/v1/namespaces/default", false),
            Some((None, p("", "namespaces", "get"))),
            "a namespace object itself is cluster-scoped"
        );
        assert_eq!(
            needed("GET", "/apis/ferrolb.io/v1alpha1/ippools", true),
            Some((None, p("ferrolb.io", "ippools", "watch")))
        );
        assert_eq!(needed("GET", "/version", false), None);
        assert_eq!(needed("GET", "/apis", false), None);
    }

    #[test]
    fn rules_expand_to_permissions() {
        let rules = serde_json::json!([{"apiGroups": [""], "resources": ["services", "services/status"], "verbs": ["get", "patch"]}]);
        let got = granted(&rules);
        assert_eq!(got.len(), 4);
        assert!(got.contains(&p("", "services/status", "patch")));
    }
}
