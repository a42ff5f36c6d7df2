//! Writing: create, update, patch and delete with kube-apiserver's object semantics.

use std::sync::Arc;

use serde_json::{Value, json};

use super::admission::*;
use super::namespaces::*;
use super::*;
use crate::apiserver::error::{ApiError, ApiResult, Cause};
use crate::apiserver::fields::{self, Entry, FieldSet};
use crate::apiserver::meta;
use crate::apiserver::patch::{self, PatchType};
use crate::apiserver::store::{ObjectKey, Store};

/// POST: create an object (201).
pub fn create(store: &mut Store, t: &Target, body: Value, w: &Writer) -> ApiResult<Value> {
    create_as(store, t, body, w, "Update")
}

/// A create recorded in `managedFields` as `operation` (`Apply` when server-side apply creates).
fn create_as(store: &mut Store, t: &Target, body: Value, w: &Writer, operation: &str) -> ApiResult<Value> {
    let mut obj = t.to_storage(body);
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    let meta = &mut obj["metadata"];
    let has_name = meta["name"].as_str().is_some_and(|n| !n.is_empty());
    if !has_name {
        match meta["generateName"].as_str().filter(|g| !g.is_empty()) {
            Some(prefix) => meta["name"] = json!(format!("{prefix}{}", meta::name_suffix())),
            None => {
                return Err(ApiError::invalid(
                    &t.info.kind_group(),
                    "",
                    vec![Cause::new("metadata.name", "Required value: name or generateName is required")],
                ));
            }
        }
    }
    let name = meta["name"].as_str().unwrap_or_default().to_string();
    if t.info.namespaced {
        let ns = t.namespace.clone().unwrap_or_default();
        match meta["namespace"].as_str() {
            Some(n) if !n.is_empty() && n != ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => meta["namespace"] = json!(ns),
        }
        check_namespace_open(store, &ns)?;
    } else if let Some(m) = meta.as_object_mut() {
        m.remove("namespace");
    }
    let key = (meta["namespace"].as_str().unwrap_or_default().to_string(), name.clone());
    if collection(store, t)?.objects.contains_key(&key) {
        return Err(ApiError::already_exists(&t.info.qualified(), &name));
    }
    if let Some(m) = meta.as_object_mut() {
        for k in ["resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "managedFields", "selfLink"] {
            m.remove(k);
        }
    }
    meta["uid"] = json!(uuid::Uuid::new_v4().to_string());
    meta["creationTimestamp"] = json!(meta::now());
    meta["generation"] = json!(1);
    if t.info.has_status(&t.version)
        && !t.info.status_on_create
        && let Some(o) = obj.as_object_mut()
    {
        o.remove("status");
    }
    admit(store, t, &mut obj, None)?;
    let kinds = list_kinds(t);
    let owned = fields::within(fields::leaves(&obj, &kinds), false, false);
    let mut entries = Vec::new();
    fields::record(&mut entries, entry(t, w, operation), &owned, &FieldSet::new(), true);
    fields::write_entries(&mut obj, &entries);
    if w.dry_run {
        return Ok(t.to_wire(&obj));
    }
    let stored = store.put(&t.key, obj);
    after_commit(store, t, Some(&stored), None)?;
    Ok(t.to_wire(&stored))
}

pub(super) fn check_namespace_open(store: &Store, ns: &str) -> ApiResult<()> {
    let namespaces = store.collection(&(String::new(), "namespaces".into()));
    match namespaces.and_then(|c| c.objects.get(&(String::new(), ns.to_string()))) {
        None => Err(ApiError::not_found("namespaces", ns)),
        Some(n) if !n["metadata"]["deletionTimestamp"].is_null() => Err(ApiError {
            code: 403,
            reason: "Forbidden",
            message: format!("unable to create new content in namespace {ns} because it is being terminated"),
            details: None,
        }),
        Some(_) => Ok(()),
    }
}

/// PUT: replace an object (or its status).
pub fn update(store: &mut Store, t: &Target, body: Value, w: &Writer) -> ApiResult<Value> {
    let old = collection(store, t)?.objects.get(&t.object_key()).cloned().ok_or_else(|| t.not_found())?;
    let new = t.to_storage(body);
    let out = write_update(store, t, &old, new, w, None)?;
    Ok(t.to_wire(&out))
}

/// The CRD's list maps of the target's version (server-side apply merges their items by key).
fn list_maps(t: &Target) -> patch::ListMapKeys {
    t.info
        .crd
        .as_ref()
        .and_then(|versions| versions.get(&t.version))
        .and_then(|v| v.schema.as_ref())
        .map(patch::list_map_keys)
        .unwrap_or_default()
}

/// How the target's lists are told apart, for field ownership.
fn list_kinds(t: &Target) -> impl Fn(&str, &str, &Value) -> fields::ListKind {
    let maps = list_maps(t);
    move |dotted: &str, field: &str, list: &Value| patch::list_kind(&maps, dotted, field, list)
}

/// The `managedFields` entry a write by `w` goes to.
fn entry(t: &Target, w: &Writer, operation: &str) -> Entry {
    Entry {
        manager: w.manager.clone(),
        operation: operation.into(),
        subresource: t.status.then(|| "status".to_string()),
        api_version: t.api_version(),
        time: meta::now(),
        fields: FieldSet::new(),
    }
}

/// PATCH of any of the four kinds; server-side apply creates a missing object, refuses to change
/// fields other managers own (409, unless forced) and removes the fields its manager stopped
/// applying that nobody else owns.
pub fn patch(store: &mut Store, t: &Target, kind: PatchType, patch: &Value, w: &Writer) -> ApiResult<(u16, Value)> {
    let existing = collection(store, t)?.objects.get(&t.object_key()).cloned();
    let Some(old) = existing else {
        if kind != PatchType::Apply || t.status {
            return Err(t.not_found());
        }
        let mut body = patch.clone();
        body["metadata"]["name"] = json!(t.name);
        return Ok((201, create_as(store, t, body, w, "Apply")?));
    };
    let mut doc = t.to_wire(&old);
    let applied = (kind == PatchType::Apply).then(|| {
        let kinds = list_kinds(t);
        fields::within(fields::leaves(patch, &kinds), t.status, t.info.has_status(&t.version))
    });
    if let Some(applied) = &applied {
        let entries = fields::read_entries(&old);
        let conflicts = fields::conflicts(&entries, &w.manager, applied, patch, &doc);
        if !conflicts.is_empty() && !w.force {
            return Err(apply_conflict(&conflicts, &t.api_version()));
        }
        patch::apply_patch(kind, &mut doc, patch, &list_maps(t))?;
        // What this manager applied before and no longer does, and nobody else owns, goes.
        let mine = entries.iter().filter(|e| {
            e.manager == w.manager && e.operation == "Apply" && e.subresource.as_deref() == t.status.then_some("status")
        });
        let others: FieldSet =
            entries.iter().filter(|e| e.manager != w.manager).flat_map(|e| e.fields.clone()).collect();
        for stale in mine.flat_map(|e| e.fields.iter()).filter(|p| !applied.contains(*p) && !others.contains(*p)) {
            fields::remove_at(&mut doc, stale);
        }
        doc["metadata"]["resourceVersion"] = json!(rv_of(&old));
    } else {
        patch::apply_patch(kind, &mut doc, patch, &list_maps(t))?;
        // A patch that carries no resourceVersion applies to whatever is current.
        if doc.pointer("/metadata/resourceVersion").is_none_or(Value::is_null) {
            doc["metadata"]["resourceVersion"] = json!(rv_of(&old));
        }
    }
    let out = write_update(store, t, &old, t.to_storage(doc), w, applied.as_ref())?;
    Ok((200, t.to_wire(&out)))
}

/// kube-apiserver's 409 for an apply that would change other managers' fields.
fn apply_conflict(conflicts: &[(String, fields::Path)], api_version: &str) -> ApiError {
    let n = conflicts.len();
    let lines: Vec<String> = conflicts
        .iter()
        .map(|(m, p)| format!("conflict with \"{m}\" using {api_version}: {}", fields::display(p)))
        .collect();
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|(m, p)| {
            json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{m}\" using {api_version}"),
                "field": fields::display(p)})
        })
        .collect();
    let plural = if n == 1 { "" } else { "s" };
    ApiError {
        code: 409,
        reason: "Conflict",
        message: format!("Apply failed with {n} conflict{plural}: {}", lines.join("\n")),
        details: Some(json!({"causes": causes})),
    }
}

/// Records who owns what after a write of `old` into `new`: an apply owns exactly what it applied
/// (taking it from the others when forced), an update owns what it changed (taking it from the
/// others); nobody owns what is gone.
fn own(t: &Target, w: &Writer, old: &Value, new: &mut Value, applied: Option<&FieldSet>) {
    let kinds = list_kinds(t);
    let has_status = t.info.has_status(&t.version);
    let (set, gone) = fields::changed(old, new, &kinds);
    let (set, gone) = (fields::within(set, t.status, has_status), fields::within(gone, t.status, has_status));
    let mut entries = fields::read_entries(old);
    match applied {
        Some(applied) => {
            let mine = entry(t, w, "Apply");
            entries.retain(|e| {
                !(e.manager == mine.manager && e.operation == "Apply" && e.subresource == mine.subresource)
            });
            fields::record(&mut entries, mine, applied, &gone, w.force);
        }
        None if set.is_empty() && gone.is_empty() => {}
        None => fields::record(&mut entries, entry(t, w, "Update"), &set, &gone, true),
    }
    fields::write_entries(new, &entries);
}

pub(super) fn write_update(
    store: &mut Store,
    t: &Target,
    old: &Arc<Value>,
    mut new: Value,
    w: &Writer,
    applied: Option<&FieldSet>,
) -> ApiResult<Arc<Value>> {
    let qualified = t.info.qualified();
    let name = t.name.clone().unwrap_or_default();
    if !new.is_object() || !new["metadata"].is_object() {
        return Err(ApiError::bad_request("the body must be an object with metadata"));
    }
    let body_rv = rv_of(&new).to_string();
    if !body_rv.is_empty() && body_rv != rv_of(old) {
        return Err(ApiError::conflict(
            &qualified,
            &name,
            "the object has been modified; please apply your changes to the latest version and try again",
        ));
    }
    if new["metadata"]["name"].as_str().is_some_and(|n| n != name) {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            new["metadata"]["name"]
        )));
    }
    let old_uid = &old["metadata"]["uid"];
    if new["metadata"]["uid"].as_str().is_some_and(|u| !u.is_empty()) && new["metadata"]["uid"] != *old_uid {
        return Err(ApiError::conflict(
            &qualified,
            &name,
            &format!(
                "Precondition failed: UID in precondition: {}, UID in object meta: {}",
                new["metadata"]["uid"], old_uid
            ),
        ));
    }
    if t.status {
        // The status subresource changes nothing but status.
        let status = new.get("status").cloned();
        new = (**old).clone();
        match status {
            Some(s) => new["status"] = s,
            None => {
                if let Some(o) = new.as_object_mut() {
                    o.remove("status");
                }
            }
        }
    } else if t.info.has_status(&t.version) {
        match old.get("status") {
            Some(s) => new["status"] = s.clone(),
            None => {
                if let Some(o) = new.as_object_mut() {
                    o.remove("status");
                }
            }
        }
    }
    let meta = &mut new["metadata"];
    for k in ["uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation", "namespace"]
    {
        match old["metadata"].get(k) {
            Some(v) => meta[k] = v.clone(),
            None => {
                if let Some(m) = meta.as_object_mut() {
                    m.remove(k);
                }
            }
        }
    }
    if let Some(m) = meta.as_object_mut() {
        m.remove("managedFields");
        m.remove("selfLink");
    }
    meta["resourceVersion"] = json!(rv_of(old));
    admit(store, t, &mut new, Some(old))?;
    if spec_changed(old, &new) {
        let generation = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
        new["metadata"]["generation"] = json!(generation);
    }
    // A write that changes nothing keeps the object as it is (ownership included).
    let mut unchanged = new.clone();
    if let Some(m) = old["metadata"].get("managedFields") {
        unchanged["metadata"]["managedFields"] = m.clone();
    }
    if unchanged == **old
        && applied.is_none_or(|a| {
            fields::read_entries(old).iter().any(|e| e.manager == w.manager && e.operation == "Apply" && e.fields == *a)
        })
    {
        return Ok(old.clone());
    }
    own(t, w, old, &mut new, applied);
    if new == **old {
        return Ok(old.clone());
    }
    let finished = !new["metadata"]["deletionTimestamp"].is_null()
        && new["metadata"]["finalizers"].as_array().is_none_or(Vec::is_empty);
    if w.dry_run {
        return Ok(Arc::new(new));
    }
    if finished {
        let gone = store.remove(&t.key, &t.object_key()).unwrap_or_else(|| old.clone());
        after_commit(store, t, None, Some(&gone))?;
        return Ok(gone);
    }
    let stored = store.put(&t.key, new);
    after_commit(store, t, Some(&stored), Some(old))?;
    Ok(stored)
}

/// Whether anything but metadata and status changed (what bumps `metadata.generation`).
pub(super) fn spec_changed(old: &Value, new: &Value) -> bool {
    let strip = |v: &Value| {
        let mut m = v.as_object().cloned().unwrap_or_default();
        for k in ["metadata", "status", "apiVersion", "kind"] {
            m.remove(k);
        }
        m
    };
    strip(old) != strip(new)
}

/// DELETE of one object: with finalizers it only gets a deletionTimestamp.
pub fn delete(store: &mut Store, t: &Target, options: &Value, dry_run: bool) -> ApiResult<Value> {
    let old = collection(store, t)?.objects.get(&t.object_key()).cloned().ok_or_else(|| t.not_found())?;
    let name = t.name.clone().unwrap_or_default();
    let pre = &options["preconditions"];
    if let Some(uid) = pre["uid"].as_str()
        && Some(uid) != old["metadata"]["uid"].as_str()
    {
        return Err(ApiError::conflict(
            &t.info.qualified(),
            &name,
            &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {}", old["metadata"]["uid"]),
        ));
    }
    if let Some(rv) = pre["resourceVersion"].as_str()
        && rv != rv_of(&old)
    {
        return Err(ApiError::conflict(
            &t.info.qualified(),
            &name,
            &format!(
                "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                rv_of(&old)
            ),
        ));
    }
    if dry_run {
        return Ok(t.to_wire(&old));
    }
    let has_finalizers = old["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty());
    if has_finalizers || t.key.1 == "namespaces" && t.key.0.is_empty() {
        if !old["metadata"]["deletionTimestamp"].is_null() {
            return Ok(t.to_wire(&old));
        }
        let mut marked = (*old).clone();
        marked["metadata"]["deletionTimestamp"] = json!(meta::now());
        marked["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        if t.key.1 == "namespaces" {
            marked["status"]["phase"] = json!("Terminating");
        }
        let stored = store.put(&t.key, marked);
        after_commit(store, t, Some(&stored), Some(&old))?;
        return Ok(t.to_wire(store.collection(&t.key).and_then(|c| c.objects.get(&t.object_key())).unwrap_or(&stored)));
    }
    let gone = store.remove(&t.key, &t.object_key()).ok_or_else(|| t.not_found())?;
    after_commit(store, t, None, Some(&gone))?;
    Ok(t.to_wire(&gone))
}

/// DELETE of a collection (with selectors).
pub fn delete_collection(store: &mut Store, t: &Target, q: &ListQuery, dry_run: bool) -> ApiResult<Value> {
    let names: Vec<ObjectKey> = collection(store, t)?
        .objects
        .iter()
        .filter(|(k, o)| t.namespace.as_ref().is_none_or(|n| *n == k.0) && q.matches(o))
        .map(|(k, _)| k.clone())
        .collect();
    let mut items = Vec::new();
    for (ns, name) in names {
        let one = Target { namespace: Some(ns).filter(|n| !n.is_empty()), name: Some(name), ..t.clone() };
        items.push(delete(store, &one, &Value::Null, dry_run)?);
    }
    Ok(
        json!({"apiVersion": t.api_version(), "kind": format!("{}List", t.info.kind), "metadata": {"resourceVersion": store.rv.to_string()}, "items": items}),
    )
}
