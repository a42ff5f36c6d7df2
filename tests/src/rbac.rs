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

/// A permission, for one object name when a rule's `resourceNames` narrows it (`name`: None
/// grants every name; on a request, the object it names).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Grant {
    /// What may be done.
    pub permission: Permission,
    /// To which object (None: any).
    pub name: Option<String>,
}

impl std::fmt::Display for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.name {
            Some(n) => write!(f, "{} named {n}", self.permission),
            None => write!(f, "{}", self.permission),
        }
    }
}

impl Grant {
    /// Whether this grant allows the request `used`.
    pub fn allows(&self, used: &Grant) -> bool {
        self.permission == used.permission && self.name.as_ref().is_none_or(|n| used.name.as_ref() == Some(n))
    }
}

/// Requests no grant allows.
pub fn missing<'a>(used: &'a BTreeSet<Grant>, granted: &BTreeSet<Grant>) -> Vec<&'a Grant> {
    used.iter().filter(|u| !granted.iter().any(|g| g.allows(u))).collect()
}

/// Grants no request needed.
pub fn unused<'a>(used: &BTreeSet<Grant>, granted: &'a BTreeSet<Grant>) -> Vec<&'a Grant> {
    granted.iter().filter(|g| !used.iter().any(|u| g.allows(u))).collect()
}

/// What a request needs (with the object it names, if any), and the namespace it is in; `None`
/// for paths that are not resources (discovery, `/version`), which RBAC does not guard with
/// resource rules.
pub fn needed(method: &str, path: &str, watch: bool) -> Option<(Option<String>, Grant)> {
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
    let (resource, name) = match rest {
        [resource] => ((*resource).to_string(), None),
        [resource, name] => ((*resource).to_string(), Some((*name).to_string())),
        [resource, name, sub] => (format!("{resource}/{sub}"), Some((*name).to_string())),
        _ => return None,
    };
    let named = name.is_some();
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
    // RBAC sees no name on a create (the object is in the body), nor on lists and watches.
    let name = name.filter(|_| !matches!(verb, "create" | "list" | "watch" | "deletecollection"));
    Some((namespace, Grant { permission: Permission { group, resource, verb: verb.into() }, name }))
}

/// Everything the `rules` of a Role or ClusterRole grant, one grant per `resourceNames` entry (no
/// wildcards are expected in ours; a `*` is kept as is and matches nothing, so it shows as unused).
pub fn granted(rules: &Value) -> BTreeSet<Grant> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(str::to_string)).collect()
    };
    let mut out = BTreeSet::new();
    for rule in rules.as_array().into_iter().flatten() {
        let names: Vec<Option<String>> = match strings(&rule["resourceNames"]) {
            n if n.is_empty() => vec![None],
            n => n.into_iter().map(Some).collect(),
        };
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for verb in strings(&rule["verbs"]) {
                    for name in &names {
                        let permission =
                            Permission { group: group.clone(), resource: resource.clone(), verb: verb.clone() };
                        out.insert(Grant { permission, name: name.clone() });
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(group: &str, resource: &str, verb: &str) -> Grant {
        Grant {
            permission: Permission { group: group.into(), resource: resource.into(), verb: verb.into() },
            name: None,
        }
    }

    fn named(g: Grant, name: &str) -> Grant {
        Grant { name: Some(name.into()), ..g }
    }

    #[test]
    fn requests_map_to_rbac_verbs() {
        assert_eq!(needed("GET", "/api/v1/services", true), Some((None, p("", "services", "watch"))));
        assert_eq!(needed("GET", "/api/v1/services", false), Some((None, p("", "services", "list"))));
        assert_eq!(
            needed("PATCH", "/api/v1/namespaces/default/services/web/status", false),
            Some((Some("default".into()), named(p("", "services/status", "patch"), "web")))
        );
        assert_eq!(
            needed("PUT", "/apis/coordination.k8s.io/v1/namespaces/ferrolb-system/leases/x", false),
            Some((Some("ferrolb-system".into()), named(p("coordination.k8s.io", "leases", "update"), "x")))
        );
        assert_eq!(
            needed("POST", "/api/v1/namespaces/ferrolb-system/secrets", false),
            Some((Some("ferrolb-system".into()), p("", "secrets", "create")))
        );
        assert_eq!(needed("GET", "/api/v1/nodes/node-1", false), Some((None, named(p("", "nodes", "get"), "node-1"))));
        assert_eq!(
            needed("GET", "/api/v1/namespaces/default", false),
            Some((None, named(p("", "namespaces", "get"), "default"))),
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

    #[test]
    fn resource_names_narrow_a_grant_to_those_objects() {
        let rules = serde_json::json!([{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
            "resourceNames": ["mine"], "verbs": ["update"]}]);
        let granted = granted(&rules);
        let update = p("coordination.k8s.io", "leases", "update");
        let used: BTreeSet<Grant> = [named(update.clone(), "mine"), named(update.clone(), "theirs")].into();
        assert_eq!(missing(&used, &granted), vec![&named(update.clone(), "theirs")]);
        assert!(unused(&used, &granted).is_empty());
        assert_eq!(unused(&BTreeSet::new(), &granted).len(), 1);
        let broad: BTreeSet<Grant> = [update.clone()].into();
        assert!(missing(&used, &broad).is_empty(), "a rule without names allows every name");
    }
}
