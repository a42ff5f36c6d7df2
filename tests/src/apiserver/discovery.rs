//! Legacy discovery (`/api`, `/apis`, `/api/v1`, `/apis/<g>/<v>`), `/version`, and the minimal
//! OpenAPI v3 documents kubectl reads to learn that the server validates fields itself.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::store::Store;

const VERBS: [&str; 8] = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

/// `/version`.
pub fn version() -> Value {
    json!({
        "major": "1", "minor": "32", "gitVersion": "v1.32.0-ferrolb-sim", "gitCommit": "sim",
        "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.23",
        "compiler": "gc", "platform": "linux/amd64"
    })
}

/// `/api`.
pub fn core_versions() -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})
}

/// Served groups and their versions, preferred version first.
fn groups(store: &Store) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for c in store.collections.values() {
        if c.info.group.is_empty() {
            continue;
        }
        let versions = out.entry(c.info.group.clone()).or_default();
        for v in &c.info.versions {
            if !versions.contains(v) {
                versions.push(v.clone());
            }
        }
    }
    out
}

/// `/apis`.
pub fn group_list(store: &Store) -> Value {
    let groups: Vec<Value> = groups(store)
        .into_iter()
        .map(|(g, versions)| {
            let vs: Vec<Value> =
                versions.iter().map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v})).collect();
            json!({"name": g, "versions": vs, "preferredVersion": vs[0]})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/<group>` for one group.
pub fn group(store: &Store, group: &str) -> Option<Value> {
    let versions = groups(store).remove(group)?;
    let vs: Vec<Value> =
        versions.iter().map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v})).collect();
    Some(json!({"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": vs, "preferredVersion": vs[0]}))
}

/// `/api/v1` or `/apis/<group>/<version>`; None when nothing is served there.
pub fn resource_list(store: &Store, group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for c in
        store.collections.values().filter(|c| c.info.group == group && c.info.versions.iter().any(|v| v == version))
    {
        let i = &c.info;
        resources.push(json!({
            "name": i.plural, "singularName": i.singular, "namespaced": i.namespaced, "kind": i.kind,
            "verbs": VERBS, "shortNames": i.short_names, "categories": i.categories,
        }));
        if i.has_status(version) {
            resources.push(json!({"name": format!("{}/status", i.plural), "singularName": "", "namespaced": i.namespaced, "kind": i.kind, "verbs": ["get", "patch", "update"]}));
        }
    }
    if resources.is_empty() {
        return None;
    }
    let gv = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}))
}

/// Built-in (non-CRD) group-versions, as OpenAPI v3 index paths (`api/v1`, `apis/apps/v1`).
fn builtin_group_versions(store: &Store) -> Vec<(String, String, String)> {
    let mut out: Vec<(String, String, String)> = Vec::new();
    for c in store.collections.values().filter(|c| c.info.crd.is_none()) {
        for v in &c.info.versions {
            let path = if c.info.group.is_empty() { format!("api/{v}") } else { format!("apis/{}/{v}", c.info.group) };
            if !out.iter().any(|(p, _, _)| *p == path) {
                out.push((path, c.info.group.clone(), v.clone()));
            }
        }
    }
    out
}

/// `/openapi/v3`: the built-in group-versions only. For a custom resource kubectl finds its group
/// missing here, sees the CRD, and then asks whether the core Namespace PATCH accepts
/// `fieldValidation`; it does, so kubectl leaves validation to the server, which enforces it.
pub fn openapi_index(store: &Store) -> Value {
    let paths: serde_json::Map<String, Value> = builtin_group_versions(store)
        .into_iter()
        .map(|(p, _, _)| {
            let url = format!("/openapi/v3/{p}?hash=ferrolb-sim");
            (p, json!({"serverRelativeURL": url}))
        })
        .collect();
    json!({"paths": paths})
}

/// `/openapi/v3/<path>`: PATCH operations of the built-in kinds there, each declaring
/// `fieldValidation`; None for paths we do not document.
pub fn openapi_group(store: &Store, path: &str) -> Option<Value> {
    let (_, group, version) = builtin_group_versions(store).into_iter().find(|(p, _, _)| p == path)?;
    let mut paths = serde_json::Map::new();
    for c in store.collections.values().filter(|c| c.info.crd.is_none() && c.info.group == group) {
        let i = &c.info;
        let prefix = if group.is_empty() { format!("/api/{version}") } else { format!("/apis/{group}/{version}") };
        let path = if i.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", i.plural)
        } else {
            format!("{prefix}/{}/{{name}}", i.plural)
        };
        paths.insert(
            path,
            json!({"patch": {
                "operationId": format!("patch{}", i.kind),
                "parameters": [
                    {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                    {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                    {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}}
                ],
                "requestBody": {"content": {"application/merge-patch+json": {"schema": {"type": "object"}}}},
                "responses": {"200": {"description": "OK"}},
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": i.kind}
            }}),
        );
    }
    Some(
        json!({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.32.0"}, "paths": paths, "components": {"schemas": {}}}),
    )
}
