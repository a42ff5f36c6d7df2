//! Server-side apply's field ownership (pure), as kube-apiserver keeps it: the fields an object or
//! an apply configuration sets, as paths in FieldsV1's notation (`f:spec`, `k:{"port":80,...}`,
//! `v:"x"`, `.`); `metadata.managedFields` read and written; what an apply conflicts with; what
//! a manager stopped applying. Lists are told apart as the server does: list maps by their keys
//! (a CRD's `x-kubernetes-list-map-keys`, the built-in kinds' merge keys), `finalizers` as a set,
//! every other list atomic (owned whole).

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

/// One path element, as FieldsV1 writes it.
pub type Element = String;
/// A field: the elements from the object's root.
pub type Path = Vec<Element>;
/// The fields a manager owns.
pub type FieldSet = BTreeSet<Path>;

/// How the items of a list are identified: by these keys (a list map), as a set of scalars, or
/// not at all (atomic).
#[derive(Debug, Clone, PartialEq)]
pub enum ListKind {
    /// Items told apart by these fields together.
    Map(Vec<String>),
    /// Scalar items, each owned on its own (`finalizers`).
    Set,
    /// The list is one value.
    Atomic,
}

/// Decides the kind of the list at a dotted path (`spec.ports`) whose field is `field`.
pub type ListKinds<'a> = &'a dyn Fn(&str, &str, &Value) -> ListKind;

/// Fields nobody owns: identity and bookkeeping the server sets.
fn ignored(path: &[Element]) -> bool {
    match path {
        [one] => matches!(one.as_str(), "f:apiVersion" | "f:kind"),
        [m, f] if m == "f:metadata" => matches!(
            f.as_str(),
            "f:name"
                | "f:namespace"
                | "f:uid"
                | "f:resourceVersion"
                | "f:generation"
                | "f:creationTimestamp"
                | "f:managedFields"
                | "f:selfLink"
                | "f:deletionTimestamp"
                | "f:deletionGracePeriodSeconds"
        ),
        _ => false,
    }
}

fn key_element(item: &Value, keys: &[String]) -> Element {
    let mut m = Map::new();
    for k in keys {
        m.insert(k.clone(), item.get(k).cloned().unwrap_or(Value::Null));
    }
    format!("k:{}", Value::Object(m))
}

/// Every field `obj` sets, as leaf paths (an object's own path is implied by its fields; an empty
/// object is a leaf; a list-map item is owned as `.` besides its fields).
pub fn leaves(obj: &Value, kinds: ListKinds) -> FieldSet {
    let mut out = FieldSet::new();
    walk(obj, &mut Vec::new(), "", kinds, &mut out);
    out
}

fn walk(v: &Value, path: &mut Path, dotted: &str, kinds: ListKinds, out: &mut FieldSet) {
    let Value::Object(m) = v else {
        out.insert(path.clone());
        return;
    };
    if m.is_empty() && !path.is_empty() {
        out.insert(path.clone());
    }
    for (k, child) in m {
        path.push(format!("f:{k}"));
        let here = if dotted.is_empty() { k.clone() } else { format!("{dotted}.{k}") };
        if !ignored(path) && !child.is_null() {
            match child {
                Value::Array(items) => match kinds(&here, k, child) {
                    ListKind::Map(keys) => {
                        for item in items {
                            path.push(key_element(item, &keys));
                            let mut dot = path.clone();
                            dot.push(".".into());
                            out.insert(dot);
                            if item.as_object().is_some_and(|m| !m.is_empty()) {
                                walk(item, path, &here, kinds, out);
                            }
                            path.pop();
                        }
                    }
                    ListKind::Set => {
                        for item in items {
                            path.push(format!("v:{item}"));
                            out.insert(path.clone());
                            path.pop();
                        }
                    }
                    ListKind::Atomic => {
                        out.insert(path.clone());
                    }
                },
                _ => walk(child, path, &here, kinds, out),
            }
        }
        path.pop();
    }
}

/// The value at `path` in `obj` (for `.`, the list item itself).
pub fn value_at<'a>(obj: &'a Value, path: &[Element]) -> Option<&'a Value> {
    let Some((first, rest)) = path.split_first() else { return Some(obj) };
    if first == "." {
        return Some(obj);
    }
    if let Some(f) = first.strip_prefix("f:") {
        return value_at(obj.get(f)?, rest);
    }
    let items = obj.as_array()?;
    if let Some(k) = first.strip_prefix("k:") {
        let keys: Map<String, Value> = serde_json::from_str(k).ok()?;
        let item = items.iter().find(|i| keys.iter().all(|(kk, kv)| i.get(kk).unwrap_or(&Value::Null) == kv))?;
        return value_at(item, rest);
    }
    let v: Value = serde_json::from_str(first.strip_prefix("v:")?).ok()?;
    items.iter().find(|i| **i == v)
}

/// Removes the field at `path` from `obj` (for `.` or `v:`, the list item).
pub fn remove_at(obj: &mut Value, path: &[Element]) {
    match path {
        [] => {}
        [last] => {
            if let Some(f) = last.strip_prefix("f:") {
                if let Some(m) = obj.as_object_mut() {
                    m.remove(f);
                }
            } else if let (Some(v), Some(items)) = (last.strip_prefix("v:"), obj.as_array_mut())
                && let Ok(v) = serde_json::from_str::<Value>(v)
            {
                items.retain(|i| *i != v);
            }
        }
        [key, dot] if dot == "." && key.starts_with("k:") => {
            if let (Some(items), Ok(keys)) = (obj.as_array_mut(), serde_json::from_str::<Map<String, Value>>(&key[2..]))
            {
                items.retain(|i| !keys.iter().all(|(kk, kv)| i.get(kk).unwrap_or(&Value::Null) == kv));
            }
        }
        [first, rest @ ..] => {
            let next = if let Some(f) = first.strip_prefix("f:") {
                obj.get_mut(f)
            } else if let (Some(k), Some(items)) = (first.strip_prefix("k:"), obj.as_array_mut()) {
                let keys: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
                items.iter_mut().find(|i| keys.iter().all(|(kk, kv)| i.get(kk).unwrap_or(&Value::Null) == kv))
            } else {
                None
            };
            if let Some(n) = next {
                remove_at(n, rest);
            }
        }
    }
}

/// A FieldSet in FieldsV1's nested form.
pub fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut node = &mut root;
        for e in path {
            node = node.entry(e.clone()).or_insert_with(|| json!({})).as_object_mut().expect("objects only");
        }
    }
    Value::Object(root)
}

/// A FieldSet from FieldsV1's nested form.
pub fn from_fields_v1(v: &Value) -> FieldSet {
    fn go(v: &Value, path: &mut Path, out: &mut FieldSet) {
        let Some(m) = v.as_object() else { return };
        if m.is_empty() {
            out.insert(path.clone());
        }
        for (k, child) in m {
            path.push(k.clone());
            go(child, path, out);
            path.pop();
        }
    }
    let mut out = FieldSet::new();
    if v.as_object().is_some_and(|m| !m.is_empty()) {
        go(v, &mut Vec::new(), &mut out);
    }
    out
}

/// A path as kube-apiserver names it in a conflict: `.spec.ports[port=80,protocol="TCP"].name`.
pub fn display(path: &[Element]) -> String {
    let mut s = String::new();
    for e in path {
        if let Some(f) = e.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if let Some(k) = e.strip_prefix("k:") {
            let keys: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
            let inner: Vec<String> = keys.iter().map(|(k, v)| format!("{k}={v}")).collect();
            s.push_str(&format!("[{}]", inner.join(",")));
        } else if let Some(v) = e.strip_prefix("v:") {
            s.push_str(&format!("[={v}]"));
        }
    }
    s
}

/// One entry of `metadata.managedFields`.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The manager.
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    /// `status` for writes through the status subresource.
    pub subresource: Option<String>,
    /// The API version it wrote.
    pub api_version: String,
    /// When it last wrote.
    pub time: String,
    /// What it owns.
    pub fields: FieldSet,
}

/// The entries of an object's `metadata.managedFields`.
pub fn read_entries(obj: &Value) -> Vec<Entry> {
    obj["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| Entry {
            manager: e["manager"].as_str().unwrap_or_default().into(),
            operation: e["operation"].as_str().unwrap_or_default().into(),
            subresource: e["subresource"].as_str().map(String::from),
            api_version: e["apiVersion"].as_str().unwrap_or_default().into(),
            time: e["time"].as_str().unwrap_or_default().into(),
            fields: from_fields_v1(&e["fieldsV1"]),
        })
        .collect()
}

/// Writes `entries` (the empty ones left out) as `metadata.managedFields`.
pub fn write_entries(obj: &mut Value, entries: &[Entry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut v = json!({"manager": e.manager, "operation": e.operation, "apiVersion": e.api_version,
                "time": e.time, "fieldsType": "FieldsV1", "fieldsV1": to_fields_v1(&e.fields)});
            if let Some(s) = &e.subresource {
                v["subresource"] = json!(s);
            }
            v
        })
        .collect();
    if let Some(m) = obj["metadata"].as_object_mut() {
        if list.is_empty() {
            m.remove("managedFields");
        } else {
            m.insert("managedFields".into(), Value::Array(list));
        }
    }
}

/// Fields of `applied` that another manager owns and that the apply would change in `live`:
/// (manager, path), the conflicts kube-apiserver answers 409 with unless the apply is forced.
pub fn conflicts(entries: &[Entry], me: &str, applied: &FieldSet, config: &Value, live: &Value) -> Vec<(String, Path)> {
    let mut out = Vec::new();
    for e in entries.iter().filter(|e| e.manager != me) {
        for p in applied.intersection(&e.fields) {
            if p.last().is_some_and(|l| l == ".") {
                continue;
            }
            if value_at(config, p) != value_at(live, p) {
                out.push((e.manager.clone(), p.clone()));
            }
        }
    }
    out
}

/// Fields whose value differs between `old` and `new` (set or changed in `new`), and fields of
/// `old` that `new` no longer has.
pub fn changed(old: &Value, new: &Value, kinds: ListKinds) -> (FieldSet, FieldSet) {
    let (before, after) = (leaves(old, kinds), leaves(new, kinds));
    let set: FieldSet = after.iter().filter(|p| value_at(old, p) != value_at(new, p)).cloned().collect();
    let gone: FieldSet = before.difference(&after).cloned().collect();
    (set, gone)
}

/// The fields of the object's part a request may touch: only `status` through the status
/// subresource, everything but `status` otherwise (when the kind has one).
pub fn within(set: FieldSet, status_subresource: bool, has_status: bool) -> FieldSet {
    let is_status = |p: &Path| p.first().is_some_and(|f| f == "f:status");
    set.into_iter().filter(|p| if status_subresource { is_status(p) } else { !has_status || !is_status(p) }).collect()
}

/// Records a write by `manager` that set `set` and removed `gone`: it owns `set` (in its entry for
/// this operation and subresource), nobody else does, and nobody owns what is gone.
pub fn record(entries: &mut Vec<Entry>, mine: Entry, set: &FieldSet, gone: &FieldSet, exclusive: bool) {
    for e in entries.iter_mut() {
        e.fields.retain(|p| !(gone.contains(p) || (exclusive && set.contains(p))));
    }
    let same =
        |e: &Entry| e.manager == mine.manager && e.operation == mine.operation && e.subresource == mine.subresource;
    match entries.iter_mut().find(|e| same(e)) {
        Some(e) => {
            e.fields.extend(set.iter().cloned());
            e.time = mine.time;
            e.api_version = mine.api_version;
        }
        None => {
            let mut mine = mine;
            mine.fields = set.clone();
            entries.push(mine);
        }
    }
    entries.retain(|e| !e.fields.is_empty());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(_dotted: &str, field: &str, v: &Value) -> ListKind {
        match field {
            "ports" if v.get(0).is_some_and(|i| i.get("containerPort").is_none()) => {
                ListKind::Map(vec!["port".into(), "protocol".into()])
            }
            "conditions" => ListKind::Map(vec!["type".into()]),
            "finalizers" => ListKind::Set,
            _ => ListKind::Atomic,
        }
    }

    fn svc(ports: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a", "labels": {"app": "x"}, "finalizers": ["f"]},
            "spec": {"ports": ports, "selector": {"app": "x"}, "ipFamilies": ["IPv4"]}})
    }

    #[test]
    fn leaves_follow_fields_v1() {
        let s = svc(json!([{"port": 80, "protocol": "TCP", "name": "http"}]));
        let set = leaves(&s, &kinds);
        let v1 = to_fields_v1(&set);
        assert_eq!(
            v1,
            json!({"f:metadata": {"f:labels": {"f:app": {}}, "f:finalizers": {"v:\"f\"": {}}},
                "f:spec": {"f:ports": {"k:{\"port\":80,\"protocol\":\"TCP\"}": {".": {}, "f:name": {}, "f:port": {}, "f:protocol": {}}},
                    "f:selector": {"f:app": {}}, "f:ipFamilies": {}}})
        );
        assert_eq!(from_fields_v1(&v1), set, "round trip");
        let port = set.iter().find(|p| p.last().is_some_and(|l| l == "f:name")).unwrap();
        assert_eq!(value_at(&s, port), Some(&json!("http")));
        assert_eq!(display(port), ".spec.ports[port=80,protocol=\"TCP\"].name");
    }

    #[test]
    fn removing_a_list_map_item_a_set_member_and_a_field() {
        let mut s = svc(json!([{"port": 80, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}]));
        let item: Path =
            vec!["f:spec".into(), "f:ports".into(), "k:{\"port\":80,\"protocol\":\"TCP\"}".into(), ".".into()];
        remove_at(&mut s, &item);
        assert_eq!(s["spec"]["ports"], json!([{"port": 53, "protocol": "UDP"}]));
        remove_at(&mut s, &["f:metadata".into(), "f:finalizers".into(), "v:\"f\"".into()]);
        assert_eq!(s["metadata"]["finalizers"], json!([]));
        remove_at(&mut s, &["f:spec".into(), "f:selector".into(), "f:app".into()]);
        assert_eq!(s["spec"]["selector"], json!({}));
    }

    #[test]
    fn an_apply_conflicts_only_where_another_owner_holds_a_different_value() {
        let live = svc(json!([{"port": 80, "protocol": "TCP", "name": "http"}]));
        let other = Entry {
            manager: "kubectl".into(),
            operation: "Update".into(),
            subresource: None,
            api_version: "v1".into(),
            time: String::new(),
            fields: leaves(&live, &kinds),
        };
        let same = json!({"spec": {"selector": {"app": "x"}}});
        assert!(conflicts(std::slice::from_ref(&other), "me", &leaves(&same, &kinds), &same, &live).is_empty());
        let differs = json!({"spec": {"selector": {"app": "y"}, "type": "LoadBalancer"}});
        let c = conflicts(std::slice::from_ref(&other), "me", &leaves(&differs, &kinds), &differs, &live);
        assert_eq!(c.len(), 1);
        assert_eq!(display(&c[0].1), ".spec.selector.app");
        assert!(
            conflicts(std::slice::from_ref(&other), "kubectl", &leaves(&differs, &kinds), &differs, &live).is_empty()
        );
    }

    #[test]
    fn writes_move_ownership_and_forget_what_is_gone() {
        let a = svc(json!([{"port": 80, "protocol": "TCP"}]));
        let mut entries = Vec::new();
        let entry = |m: &str| Entry {
            manager: m.into(),
            operation: "Update".into(),
            subresource: None,
            api_version: "v1".into(),
            time: "t".into(),
            fields: FieldSet::new(),
        };
        record(&mut entries, entry("first"), &leaves(&a, &kinds), &FieldSet::new(), true);
        let mut b = a.clone();
        b["spec"]["selector"]["app"] = json!("y");
        b["metadata"]["labels"] = json!({});
        let (set, gone) = changed(&a, &b, &kinds);
        record(&mut entries, entry("second"), &set, &gone, true);
        let sel: Path = vec!["f:spec".into(), "f:selector".into(), "f:app".into()];
        let owners =
            |p: &Path| entries.iter().filter(|e| e.fields.contains(p)).map(|e| e.manager.clone()).collect::<Vec<_>>();
        assert_eq!(owners(&sel), vec!["second".to_string()]);
        let label: Path = vec!["f:metadata".into(), "f:labels".into(), "f:app".into()];
        assert!(owners(&label).is_empty());
        let mut obj = b.clone();
        write_entries(&mut obj, &entries);
        assert_eq!(read_entries(&obj), entries);
        assert_eq!(within(leaves(&b, &kinds), true, true), FieldSet::new(), "no status in a Service spec write");
    }
}
