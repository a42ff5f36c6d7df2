//! The four patch types: JSON merge patch (RFC 7386), JSON patch (RFC 6902, with `test`),
//! strategic merge patch (what kubectl's client-side apply sends for built-in kinds), and a
//! simplified server-side apply.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::error::{ApiError, ApiResult};

/// A patch type, from the request's Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/merge-patch+json`.
    Merge,
    /// `application/json-patch+json`.
    Json,
    /// `application/strategic-merge-patch+json`.
    Strategic,
    /// `application/apply-patch+yaml` (server-side apply).
    Apply,
}

impl PatchType {
    /// The patch type for a Content-Type header.
    pub fn from_content_type(ct: &str) -> ApiResult<Self> {
        let essence = ct.split(';').next().unwrap_or_default().trim();
        match essence {
            "application/merge-patch+json" => Ok(Self::Merge),
            "application/json-patch+json" => Ok(Self::Json),
            "application/strategic-merge-patch+json" => Ok(Self::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Ok(Self::Apply),
            other => Err(ApiError::unsupported_media_type(format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {other:?})"
            ))),
        }
    }
}

/// Parses a patch body: JSON, or YAML for server-side apply.
pub fn parse_body(kind: PatchType, body: &[u8]) -> ApiResult<Value> {
    match serde_json::from_slice(body) {
        Ok(v) => Ok(v),
        Err(_) if kind == PatchType::Apply => {
            serde_norway::from_slice(body).map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
        }
        Err(e) => Err(ApiError::bad_request(format!("error decoding patch: {e}"))),
    }
}

/// Applies `patch` of `kind` to `target`.
/// The keys of every list that a CRD's schema declares `x-kubernetes-list-type: map`, by the
/// list's field path (`status.nodes`); server-side apply merges those lists item by item.
pub type ListMapKeys = BTreeMap<String, Vec<String>>;

/// The list maps a CRD's `openAPIV3Schema` declares.
pub fn list_map_keys(schema: &Value) -> ListMapKeys {
    fn walk(schema: &Value, path: &str, out: &mut ListMapKeys) {
        if let Some(props) = schema["properties"].as_object() {
            for (name, s) in props {
                let p = if path.is_empty() { name.clone() } else { format!("{path}.{name}") };
                walk(s, &p, out);
            }
        }
        if schema["x-kubernetes-list-type"] == "map"
            && let Some(keys) = schema["x-kubernetes-list-map-keys"].as_array()
        {
            out.insert(path.to_string(), keys.iter().filter_map(|k| k.as_str().map(String::from)).collect());
        }
        if schema["items"].is_object() {
            walk(&schema["items"], path, out);
        }
    }
    let mut out = ListMapKeys::new();
    walk(schema, "", &mut out);
    out
}

/// Applies `patch` to `target`; `list_maps` names the list maps of a custom resource's schema
/// (server-side apply merges their items by key, as kube-apiserver does).
pub fn apply_patch(kind: PatchType, target: &mut Value, patch: &Value, list_maps: &ListMapKeys) -> ApiResult<()> {
    match kind {
        PatchType::Merge => {
            if !patch.is_object() {
                return Err(ApiError::bad_request("a merge patch must be a JSON object"));
            }
            json_patch::merge(target, patch);
            Ok(())
        }
        PatchType::Json => {
            let ops: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| ApiError::bad_request(format!("the JSON patch is malformed: {e}")))?;
            json_patch::patch(target, &ops).map_err(|e| {
                ApiError::unprocessable(format!("the server rejected our request due to an error in our request: {e}"))
            })
        }
        PatchType::Strategic => {
            let Value::Object(p) = patch else {
                return Err(ApiError::bad_request("a strategic merge patch must be a JSON object"));
            };
            strategic_object(target, p, &Merge { directives: true, list_maps, path: String::new() });
            Ok(())
        }
        PatchType::Apply => {
            let Value::Object(p) = patch else {
                return Err(ApiError::bad_request("an apply configuration must be an object"));
            };
            strategic_object(target, p, &Merge { directives: false, list_maps, path: String::new() });
            Ok(())
        }
    }
}

/// How a merge goes: strategic-merge directives honoured or not, the schema's list maps, and
/// where in the object it is.
struct Merge<'a> {
    directives: bool,
    list_maps: &'a ListMapKeys,
    path: String,
}

impl Merge<'_> {
    fn at(&self, field: &str) -> Merge<'_> {
        let path = if self.path.is_empty() { field.to_string() } else { format!("{}.{field}", self.path) };
        Merge { directives: self.directives, list_maps: self.list_maps, path }
    }
}

/// The key that identifies items of a built-in kind's list field in a strategic merge, by field
/// name (the patchMergeKey tags of Kubernetes' Go types). An EndpointSlice's top-level `ports` (and
/// `endpoints`) have none: they are atomic lists, replaced whole (two slice ports may share a
/// number, one per Service port that targets it).
fn merge_key(path: &str, field: &str, item: &Map<String, Value>) -> Option<&'static str> {
    if path == "ports" {
        return None;
    }
    match field {
        "containers" | "initContainers" | "ephemeralContainers" | "volumes" | "env" | "imagePullSecrets" => {
            Some("name")
        }
        "volumeMounts" => Some("mountPath"),
        "conditions" => Some("type"),
        "ports" if item.contains_key("containerPort") => Some("containerPort"),
        "ports" => Some("port"),
        "ownerReferences" => Some("uid"),
        _ => None,
    }
}

/// How field ownership tells the items of the list at `dotted` (field `field`) apart: a CRD's list
/// map by its keys, a built-in kind's list by its merge key (Service ports by port and protocol, as
/// their list-map keys say), `finalizers` as a set; every other list is atomic.
pub fn list_kind(
    list_maps: &ListMapKeys,
    dotted: &str,
    field: &str,
    list: &Value,
) -> crate::apiserver::fields::ListKind {
    use crate::apiserver::fields::ListKind;
    if let Some(keys) = list_maps.get(dotted) {
        return ListKind::Map(keys.clone());
    }
    if is_merged_scalar_list(field) {
        return ListKind::Set;
    }
    let first = list.as_array().and_then(|a| a.iter().find_map(Value::as_object));
    let Some(key) = first.and_then(|item| merge_key(dotted, field, item)) else { return ListKind::Atomic };
    match key {
        "port" | "containerPort" => ListKind::Map(vec![key.to_string(), "protocol".to_string()]),
        k => ListKind::Map(vec![k.to_string()]),
    }
}

/// Lists of scalars that a strategic merge unions instead of replacing.
fn is_merged_scalar_list(field: &str) -> bool {
    field == "finalizers"
}

fn strategic_object(target: &mut Value, patch: &Map<String, Value>, m: &Merge<'_>) {
    let directives = m.directives;
    if directives && patch.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut p = patch.clone();
        p.remove("$patch");
        *target = Value::Object(p);
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else { return };
    let retain: Option<Vec<String>> = patch
        .get("$retainKeys")
        .and_then(Value::as_array)
        .filter(|_| directives)
        .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect());
    for (k, pv) in patch {
        if directives && k.starts_with('$') {
            if let Some(list) = k.strip_prefix("$deleteFromPrimitiveList/")
                && let (Some(Value::Array(items)), Some(gone)) = (t.get_mut(list), pv.as_array())
            {
                items.retain(|i| !gone.contains(i));
            }
            continue;
        }
        match pv {
            Value::Null => {
                t.remove(k);
            }
            Value::Object(po) if directives && po.get("$patch").and_then(Value::as_str) == Some("delete") => {
                t.remove(k);
            }
            Value::Object(po) => strategic_object(t.entry(k.clone()).or_insert(Value::Null), po, &m.at(k)),
            Value::Array(items) => {
                let existing = t.remove(k);
                t.insert(k.clone(), merge_list(k, existing, items, &m.at(k)));
            }
            other => {
                t.insert(k.clone(), other.clone());
            }
        }
    }
    if let Some(keep) = retain {
        t.retain(|k, _| keep.contains(k));
    }
}

fn merge_list(field: &str, existing: Option<Value>, patch: &[Value], m: &Merge<'_>) -> Value {
    let directives = m.directives;
    let mut current = match existing {
        Some(Value::Array(a)) => a,
        _ => Vec::new(),
    };
    if let Some(keys) = m.list_maps.get(&m.path) {
        // A custom resource's list map: items are told apart by every key together.
        for item in patch {
            let Some(obj) = item.as_object() else { continue };
            let same = |c: &Value| keys.iter().all(|k| c.get(k) == obj.get(k));
            match current.iter().position(same) {
                Some(i) => strategic_object(&mut current[i], obj, m),
                None => current.push(item.clone()),
            }
        }
        return Value::Array(current);
    }
    if is_merged_scalar_list(field) {
        for v in patch {
            if !current.contains(v) {
                current.push(v.clone());
            }
        }
        return Value::Array(current);
    }
    let key = patch.iter().find_map(|i| i.as_object()).and_then(|o| merge_key(&m.path, field, o));
    let Some(key) = key else {
        let replaced: Vec<Value> =
            patch.iter().filter(|i| !(directives && i.get("$patch").is_some())).cloned().collect();
        return Value::Array(replaced);
    };
    for item in patch {
        let Some(obj) = item.as_object() else { continue };
        let id = obj.get(key);
        // Ports are told apart by port AND protocol (kube-apiserver's list-map keys for Service
        // ports): a TCP and a UDP port of one number are two entries, not one.
        let protocol_of = |o: Option<&Value>| o.and_then(Value::as_str).unwrap_or("TCP").to_string();
        let protocol = protocol_of(obj.get("protocol"));
        let same = |c: &Value| {
            c.get(key) == id && id.is_some() && (field != "ports" || protocol_of(c.get("protocol")) == protocol)
        };
        let pos = current.iter().position(same);
        match (obj.get("$patch").and_then(Value::as_str), pos) {
            (Some("delete"), Some(i)) if directives => {
                current.remove(i);
            }
            (Some("delete"), None) if directives => {}
            (_, Some(i)) => strategic_object(&mut current[i], obj, m),
            (_, None) => {
                let mut fresh = Value::Object(Map::new());
                strategic_object(&mut fresh, obj, m);
                current.push(fresh);
            }
        }
    }
    Value::Array(current)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_endpoint_slices_ports_are_replaced_whole() {
        // Two Service ports targeting one container port: two slice ports of one number.
        let mut slice = json!({"ports": [{"name": "a", "port": 8080, "protocol": "TCP"}]});
        let patch = json!({"ports": [{"name": "a", "port": 8080, "protocol": "TCP"}, {"name": "b", "port": 8080, "protocol": "TCP"}]});
        apply_patch(PatchType::Apply, &mut slice, &patch, &ListMapKeys::new()).unwrap();
        assert_eq!(slice, patch);
        apply_patch(
            PatchType::Strategic,
            &mut slice,
            &json!({"ports": [{"name": "c", "port": 80}]}),
            &ListMapKeys::new(),
        )
        .unwrap();
        assert_eq!(slice, json!({"ports": [{"name": "c", "port": 80}]}));
    }

    #[test]
    fn ports_of_one_number_and_two_protocols_stay_two() {
        let mut t = json!({"ports": [{"name": "tcp", "port": 8080, "protocol": "TCP"}, {"name": "udp", "port": 8080, "protocol": "UDP"}]});
        let patch = json!({"ports": [{"name": "tcp", "port": 8080, "protocol": "TCP"}, {"name": "udp", "port": 8080, "protocol": "UDP"}]});
        apply_patch(PatchType::Apply, &mut t, &patch, &ListMapKeys::new()).unwrap();
        assert_eq!(t, patch);
    }

    #[test]
    fn apply_merges_a_crds_list_map_item_by_item() {
        let schema = json!({"properties": {"status": {"properties": {"nodes": {
            "type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["node"],
            "items": {"properties": {"node": {"type": "string"}, "state": {"type": "string"}}}}}}}});
        let keys = list_map_keys(&schema);
        assert_eq!(keys["status.nodes"], ["node"]);
        let mut t = json!({"status": {"nodes": [{"node": "a", "state": "Idle"}, {"node": "b", "state": "Active"}]}});
        let patch =
            json!({"status": {"nodes": [{"node": "b", "state": "Established"}, {"node": "c", "state": "Connect"}]}});
        apply_patch(PatchType::Apply, &mut t, &patch, &keys).unwrap();
        assert_eq!(
            t["status"]["nodes"],
            json!([{"node": "a", "state": "Idle"}, {"node": "b", "state": "Established"}, {"node": "c", "state": "Connect"}])
        );
        // Without the schema's word the list is atomic, as kube-apiserver treats such lists.
        apply_patch(PatchType::Apply, &mut t, &json!({"status": {"nodes": [{"node": "z"}]}}), &ListMapKeys::new())
            .unwrap();
        assert_eq!(t["status"]["nodes"], json!([{"node": "z"}]));
    }

    #[test]
    fn merge_patch_removes_with_null() {
        let mut t = json!({"metadata": {"labels": {"a": "1", "b": "2"}}});
        apply_patch(
            PatchType::Merge,
            &mut t,
            &json!({"metadata": {"labels": {"a": null, "c": "3"}}}),
            &ListMapKeys::new(),
        )
        .unwrap();
        assert_eq!(t, json!({"metadata": {"labels": {"b": "2", "c": "3"}}}));
    }

    #[test]
    fn json_patch_test_op_guards() {
        let mut t = json!({"metadata": {"finalizers": ["a"]}});
        let ok = json!([{"op": "test", "path": "/metadata/finalizers", "value": ["a"]}, {"op": "remove", "path": "/metadata/finalizers/0"}]);
        apply_patch(PatchType::Json, &mut t, &ok, &ListMapKeys::new()).unwrap();
        assert_eq!(t, json!({"metadata": {"finalizers": []}}));
        let stale = json!([{"op": "test", "path": "/metadata/finalizers", "value": ["a"]}]);
        let err = apply_patch(PatchType::Json, &mut t, &stale, &ListMapKeys::new()).unwrap_err();
        assert_eq!(err.code, 422);
    }

    #[test]
    fn strategic_merge_keys_ports_by_port_and_honours_directives() {
        let mut svc = json!({"spec": {"ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}, {"port": 443, "nodePort": 30443}],
            "selector": {"app": "a", "old": "x"}}, "metadata": {"finalizers": ["f1"]}});
        let patch = json!({"spec": {"$setElementOrder/ports": [{"port": 80}, {"port": 8080}],
            "ports": [{"port": 80, "name": "http"}, {"port": 8080}, {"port": 443, "$patch": "delete"}],
            "selector": {"old": null}}, "metadata": {"finalizers": ["f2"]}});
        apply_patch(PatchType::Strategic, &mut svc, &patch, &ListMapKeys::new()).unwrap();
        assert_eq!(
            svc["spec"]["ports"],
            json!([{"port": 80, "nodePort": 30080, "protocol": "TCP", "name": "http"}, {"port": 8080}])
        );
        assert_eq!(svc["spec"]["selector"], json!({"app": "a"}));
        assert_eq!(svc["metadata"]["finalizers"], json!(["f1", "f2"]));
        let mut t = json!({"spec": {"a": 1, "b": 2}});
        apply_patch(
            PatchType::Strategic,
            &mut t,
            &json!({"spec": {"$retainKeys": ["a", "c"], "c": 3}}),
            &ListMapKeys::new(),
        )
        .unwrap();
        assert_eq!(t, json!({"spec": {"a": 1, "c": 3}}));
    }

    #[test]
    fn content_types_and_bodies() {
        assert_eq!(
            PatchType::from_content_type("application/apply-patch+yaml; charset=utf-8").unwrap(),
            PatchType::Apply
        );
        assert_eq!(PatchType::from_content_type("text/plain").unwrap_err().code, 415);
        assert_eq!(parse_body(PatchType::Apply, b"a: 1\nb: [x]\n").unwrap(), json!({"a": 1, "b": ["x"]}));
        assert_eq!(parse_body(PatchType::Merge, b"a: 1").unwrap_err().code, 400);
    }
}
