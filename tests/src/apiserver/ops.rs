//! The verbs on the store (get, list, create, update, patch, delete), with the object semantics
//! of kube-apiserver: uid and timestamps, generation, optimistic concurrency, the status
//! subresource, finalizers and per-kind admission.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine as _;
use serde_json::{Value, json};

use super::error::{ApiError, ApiResult, Cause};
use super::events;
use super::meta;
use super::patch::{self, PatchType};
use super::resources::{CrdVersion, NameRule, PrinterColumn, ResourceInfo};
use super::selectors::{FieldSelector, LabelSelector};
use super::services;
use super::store::{CollectionKey, ObjectKey, Store};
use super::validation;

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
}

impl ListQuery {
    /// Whether an object passes the selectors.
    pub fn matches(&self, obj: &Value) -> bool {
        self.labels.as_ref().is_none_or(|l| l.matches(obj)) && self.fields.as_ref().is_none_or(|f| f.matches(obj))
    }
}

fn rv_of(obj: &Value) -> &str {
    obj.pointer("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or_default()
}

fn collection<'a>(store: &'a Store, t: &Target) -> ApiResult<&'a super::store::Collection> {
    store.collection(&t.key).ok_or_else(|| ApiError::no_route(&t.info.qualified()))
}

/// GET of one object.
pub fn get(store: &Store, t: &Target) -> ApiResult<Value> {
    let c = collection(store, t)?;
    c.objects.get(&t.object_key()).map(|o| t.to_wire(o)).ok_or_else(|| t.not_found())
}

/// LIST, with selectors and `limit`/`continue` paging.
pub fn list(store: &Store, t: &Target, q: &ListQuery) -> ApiResult<Value> {
    let c = collection(store, t)?;
    let (list_rv, start) = match &q.continue_token {
        Some(tok) => decode_continue(tok)?,
        None => (store.rv, None),
    };
    let ns = t.namespace.clone();
    let mut items = Vec::new();
    let mut next: Option<ObjectKey> = None;
    let mut remaining = 0usize;
    for (k, obj) in &c.objects {
        if ns.as_ref().is_some_and(|n| *n != k.0) || start.as_ref().is_some_and(|s| k <= s) || !q.matches(obj) {
            continue;
        }
        if q.limit > 0 && items.len() == q.limit {
            remaining += 1;
            continue;
        }
        items.push(t.to_wire(obj));
        if q.limit > 0 && items.len() == q.limit {
            next = Some(k.clone());
        }
    }
    let mut metadata = json!({"resourceVersion": list_rv.to_string()});
    if remaining > 0
        && let Some(last) = next
    {
        metadata["continue"] = json!(encode_continue(list_rv, &last));
        metadata["remainingItemCount"] = json!(remaining);
    }
    Ok(json!({
        "apiVersion": t.api_version(),
        "kind": format!("{}List", t.info.kind),
        "metadata": metadata,
        "items": items,
    }))
}

fn encode_continue(rv: u64, last: &ObjectKey) -> String {
    let raw = json!({"rv": rv, "ns": last.0, "name": last.1}).to_string();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn decode_continue(tok: &str) -> ApiResult<(u64, Option<ObjectKey>)> {
    let bad = || ApiError::bad_request(format!("invalid continue token {tok:?}"));
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(tok).map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let s = |k: &str| v[k].as_str().map(String::from).ok_or_else(bad);
    Ok((v["rv"].as_u64().ok_or_else(bad)?, Some((s("ns")?, s("name")?))))
}

/// POST: create an object (201).
pub fn create(store: &mut Store, t: &Target, body: Value, dry_run: bool) -> ApiResult<Value> {
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
    if dry_run {
        return Ok(t.to_wire(&obj));
    }
    let stored = store.put(&t.key, obj);
    after_commit(store, t, Some(&stored), None)?;
    Ok(t.to_wire(&stored))
}

fn check_namespace_open(store: &Store, ns: &str) -> ApiResult<()> {
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
pub fn update(store: &mut Store, t: &Target, body: Value, dry_run: bool) -> ApiResult<Value> {
    let old = collection(store, t)?.objects.get(&t.object_key()).cloned().ok_or_else(|| t.not_found())?;
    let new = t.to_storage(body);
    let out = write_update(store, t, &old, new, dry_run)?;
    Ok(t.to_wire(&out))
}

/// PATCH of any of the four kinds; server-side apply creates a missing object.
pub fn patch(store: &mut Store, t: &Target, kind: PatchType, patch: &Value, dry_run: bool) -> ApiResult<(u16, Value)> {
    let existing = collection(store, t)?.objects.get(&t.object_key()).cloned();
    let Some(old) = existing else {
        if kind != PatchType::Apply || t.status {
            return Err(t.not_found());
        }
        let mut body = patch.clone();
        body["metadata"]["name"] = json!(t.name);
        return Ok((201, create(store, t, body, dry_run)?));
    };
    let mut doc = t.to_wire(&old);
    patch::apply_patch(kind, &mut doc, patch)?;
    // A patch that carries no resourceVersion applies to whatever is current.
    if kind == PatchType::Apply || doc.pointer("/metadata/resourceVersion").is_none_or(Value::is_null) {
        doc["metadata"]["resourceVersion"] = json!(rv_of(&old));
    }
    let out = write_update(store, t, &old, t.to_storage(doc), dry_run)?;
    Ok((200, t.to_wire(&out)))
}

fn write_update(
    store: &mut Store,
    t: &Target,
    old: &Arc<Value>,
    mut new: Value,
    dry_run: bool,
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
    if new == **old {
        return Ok(old.clone());
    }
    let finished = !new["metadata"]["deletionTimestamp"].is_null()
        && new["metadata"]["finalizers"].as_array().is_none_or(Vec::is_empty);
    if dry_run {
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
fn spec_changed(old: &Value, new: &Value) -> bool {
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

/// Per-kind admission: defaulting and validation beyond the object metadata.
fn admit(store: &mut Store, t: &Target, obj: &mut Value, old: Option<&Arc<Value>>) -> ApiResult<()> {
    let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let kind_group = t.info.kind_group();
    let invalid = |causes: Vec<Cause>| ApiError::invalid(&kind_group, &name, causes);
    let mut causes = Vec::new();
    if old.is_none()
        && let Some(c) = meta::validate_name(&name, t.info.name_rule)
    {
        causes.push(c);
    }
    causes.extend(meta::validate_labels(&obj["metadata"]));
    if !causes.is_empty() {
        return Err(invalid(causes));
    }
    let old_obj = old.map(|o| &**o);
    match (t.key.0.as_str(), t.key.1.as_str()) {
        ("", "services") if t.status => validate_service_status(&obj["status"]).map_err(invalid)?,
        ("", "services") => services::admit(obj, old_obj, &mut store.services).map_err(invalid)?,
        ("", "namespaces") if old.is_none() => obj["status"] = json!({"phase": "Active"}),
        ("", "pods") if old.is_none() && obj["status"].is_null() => obj["status"] = json!({"phase": "Pending"}),
        ("apiextensions.k8s.io", "customresourcedefinitions") => admit_crd(obj, old_obj).map_err(invalid)?,
        _ => {}
    }
    if let Some(versions) = &t.info.crd
        && let Some(v) = versions.get(&t.version)
    {
        let mut causes = v.schema.as_ref().map(|s| validation::structural(s, obj)).unwrap_or_default();
        // Like the real server, CEL rules run beside the schema checks and both are reported;
        // only a value of the wrong type keeps the rules from running.
        let wrong_type = causes.iter().any(|c| c.message.contains("must be of type"));
        if let Some(compiled) = v.compiled.as_ref().filter(|_| !wrong_type) {
            let old_wire = old.map(|o| t.to_wire(o));
            causes.extend(validation::cel(
                compiled,
                &t.to_wire(obj),
                old_wire.as_ref(),
                &t.api_version(),
                &t.info.group,
                &t.info.kind,
            ));
        }
        if !causes.is_empty() {
            return Err(invalid(causes));
        }
    }
    Ok(())
}

fn validate_service_status(status: &Value) -> Result<(), Vec<Cause>> {
    let mut causes = Vec::new();
    for (i, ing) in status.pointer("/loadBalancer/ingress").and_then(Value::as_array).into_iter().flatten().enumerate()
    {
        let at = format!("status.loadBalancer.ingress[{i}]");
        if let Some(ip) = ing["ip"].as_str()
            && ip.parse::<std::net::IpAddr>().is_err()
        {
            causes.push(Cause::new(format!("{at}.ip"), format!("Invalid value: {ip:?}: must be a valid IP address")));
        }
        match ing["ipMode"].as_str() {
            None => {}
            Some("VIP" | "Proxy") if ing["ip"].is_string() => {}
            Some("VIP" | "Proxy") => {
                causes.push(Cause::new(format!("{at}.ipMode"), "Forbidden: may not be specified when `ip` is not set"))
            }
            Some(m) => causes.push(Cause::new(
                format!("{at}.ipMode"),
                format!("Unsupported value: {m:?}: supported values: \"Proxy\", \"VIP\""),
            )),
        }
    }
    causes.extend(validate_conditions(&status["conditions"], "status.conditions"));
    if causes.is_empty() { Ok(()) } else { Err(causes) }
}

/// `metav1.Condition` rules, which the real server enforces on Service status.
pub fn validate_conditions(conditions: &Value, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    let reason_re = regex::Regex::new(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$").expect("static regex");
    let mut seen = std::collections::BTreeSet::new();
    for (i, c) in conditions.as_array().into_iter().flatten().enumerate() {
        let at = |f: &str| format!("{path}[{i}].{f}");
        let ty = c["type"].as_str().unwrap_or_default();
        if !meta::qualified_name(ty) {
            causes.push(Cause::new(at("type"), format!("Invalid value: {ty:?}: must be a qualified name")));
        }
        if !seen.insert(ty.to_string()) {
            causes.push(Cause::new(at("type"), format!("Duplicate value: {ty:?}")));
        }
        if !matches!(c["status"].as_str(), Some("True" | "False" | "Unknown")) {
            causes.push(Cause::new(
                at("status"),
                format!("Unsupported value: {}: supported values: \"False\", \"True\", \"Unknown\"", c["status"]),
            ));
        }
        if c["lastTransitionTime"].as_str().is_none_or(str::is_empty) {
            causes.push(Cause::new(at("lastTransitionTime"), "Required value: must be set"));
        }
        if c["reason"].as_str().is_none_or(|r| !reason_re.is_match(r)) {
            causes.push(Cause::new(at("reason"), format!("Invalid value: {}: a condition reason must start with alphabetic character, optionally followed by a string of alphanumeric characters or '_,:', and must end with an alphanumeric character or '_'", c["reason"])));
        }
        if c["message"].as_str().is_some_and(|m| m.len() > 32768) {
            causes.push(Cause::new(at("message"), "Too long: may not be more than 32768 bytes"));
        }
    }
    causes
}

fn admit_crd(crd: &mut Value, old: Option<&Value>) -> Result<(), Vec<Cause>> {
    let mut causes = Vec::new();
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap_or_default();
    let plural = spec["names"]["plural"].as_str().unwrap_or_default();
    if group.is_empty() || !group.contains('.') {
        causes.push(Cause::new(
            "spec.group",
            format!("Invalid value: {group:?}: should be a domain with at least one dot"),
        ));
    }
    if plural.is_empty() {
        causes.push(Cause::new("spec.names.plural", "Required value"));
    }
    if spec["names"]["kind"].as_str().is_none_or(str::is_empty) {
        causes.push(Cause::new("spec.names.kind", "Required value"));
    }
    if !matches!(spec["scope"].as_str(), Some("Namespaced" | "Cluster")) {
        causes.push(Cause::new(
            "spec.scope",
            format!("Unsupported value: {}: supported values: \"Cluster\", \"Namespaced\"", spec["scope"]),
        ));
    }
    if crd["metadata"]["name"].as_str() != Some(&format!("{plural}.{group}")) {
        causes.push(Cause::new(
            "metadata.name",
            format!("Invalid value: {}: must be spec.names.plural+\".\"+spec.group", crd["metadata"]["name"]),
        ));
    }
    if let Some(old) = old {
        for f in ["group", "scope"] {
            if old["spec"][f] != spec[f] {
                causes.push(Cause::new(format!("spec.{f}"), "Invalid value: field is immutable"));
            }
        }
    }
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    if versions.is_empty() {
        causes.push(Cause::new(
            "spec.versions",
            "Required value: must have exactly one version marked as storage version",
        ));
    }
    if versions.iter().filter(|v| v["storage"] == json!(true)).count() != 1 && !versions.is_empty() {
        causes.push(Cause::new(
            "spec.versions",
            "Invalid value: must have exactly one version marked as storage version",
        ));
    }
    for (i, v) in versions.iter().enumerate() {
        if let Some(schema) = v.pointer("/schema/openAPIV3Schema") {
            let (_, errors) = validation::compile(schema);
            for e in errors {
                causes.push(Cause::new(
                    format!("spec.versions[{i}].schema.openAPIV3Schema"),
                    format!("Invalid value: compilation failed: {e}"),
                ));
            }
        }
    }
    if !causes.is_empty() {
        return Err(causes);
    }
    let storage: Vec<Value> =
        versions.iter().filter(|v| v["storage"] == json!(true)).map(|v| v["name"].clone()).collect();
    let now = meta::now();
    crd["status"] = json!({
        "acceptedNames": spec["names"],
        "storedVersions": storage,
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now},
        ],
    });
    Ok(())
}

/// The served type a CRD defines.
pub fn crd_resource(crd: &Value) -> ResourceInfo {
    let spec = &crd["spec"];
    let names = &spec["names"];
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let strings =
        |v: &Value| v.as_array().into_iter().flatten().filter_map(|x| x.as_str().map(String::from)).collect::<Vec<_>>();
    let mut versions: Vec<&Value> =
        spec["versions"].as_array().into_iter().flatten().filter(|v| v["served"] != json!(false)).collect();
    versions.sort_by_key(|v| v["storage"] != json!(true));
    let mut crd_versions = BTreeMap::new();
    for v in &versions {
        let schema = v.pointer("/schema/openAPIV3Schema").cloned();
        let compiled = schema.as_ref().map(|s| Arc::new(validation::compile(s).0));
        let columns = v["additionalPrinterColumns"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| PrinterColumn {
                name: s(&c["name"]),
                type_: s(&c["type"]),
                json_path: s(&c["jsonPath"]),
                priority: c["priority"].as_i64().unwrap_or(0),
                description: s(&c["description"]),
            })
            .collect();
        let status = v.pointer("/subresources/status").is_some_and(Value::is_object);
        crd_versions.insert(s(&v["name"]), CrdVersion { schema, compiled, columns, status });
    }
    let plural = s(&names["plural"]);
    let singular = names["singular"].as_str().map(String::from).unwrap_or_else(|| s(&names["kind"]).to_lowercase());
    ResourceInfo {
        group: s(&spec["group"]),
        versions: versions.iter().map(|v| s(&v["name"])).collect(),
        kind: s(&names["kind"]),
        plural,
        singular,
        namespaced: spec["scope"] == json!("Namespaced"),
        short_names: strings(&names["shortNames"]),
        categories: strings(&names["categories"]),
        status_subresource: false,
        status_on_create: false,
        name_rule: NameRule::Subdomain,
        crd: Some(crd_versions),
    }
}

/// Effects of a committed change on the rest of the server: CRDs (un)register their types,
/// namespaces take their contents with them.
fn after_commit(store: &mut Store, t: &Target, new: Option<&Arc<Value>>, old: Option<&Arc<Value>>) -> ApiResult<()> {
    match (t.key.0.as_str(), t.key.1.as_str(), new) {
        ("apiextensions.k8s.io", "customresourcedefinitions", Some(crd)) => store.register(crd_resource(crd)),
        ("apiextensions.k8s.io", "customresourcedefinitions", None) => {
            if let Some(old) = old {
                let info = crd_resource(old);
                store.unregister(&(info.group, info.plural));
            }
        }
        ("", "namespaces", Some(ns)) if !ns["metadata"]["deletionTimestamp"].is_null() => {
            let name = ns["metadata"]["name"].as_str().unwrap_or_default().to_string();
            empty_namespace(store, &name);
        }
        _ => {}
    }
    // Deleting the last object of a terminating namespace finishes the namespace.
    if new.is_none()
        && let Some(ns) = old.and_then(|o| o["metadata"]["namespace"].as_str())
    {
        finish_namespace(store, ns);
    }
    Ok(())
}

fn empty_namespace(store: &mut Store, ns: &str) {
    let keys: Vec<(CollectionKey, ObjectKey)> = store
        .collections
        .iter()
        .filter(|(_, c)| c.info.namespaced)
        .flat_map(|(ck, c)| c.objects.keys().filter(|k| k.0 == ns).map(move |k| (ck.clone(), k.clone())))
        .collect();
    for (ck, ok) in keys {
        let Some(obj) = store.collection(&ck).and_then(|c| c.objects.get(&ok)).cloned() else { continue };
        if obj["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty()) {
            if obj["metadata"]["deletionTimestamp"].is_null() {
                let mut marked = (*obj).clone();
                marked["metadata"]["deletionTimestamp"] = json!(meta::now());
                store.put(&ck, marked);
            }
        } else {
            store.remove(&ck, &ok);
        }
    }
    finish_namespace(store, ns);
}

fn finish_namespace(store: &mut Store, ns: &str) {
    let nskey: CollectionKey = (String::new(), "namespaces".into());
    let terminating = store
        .collection(&nskey)
        .and_then(|c| c.objects.get(&(String::new(), ns.to_string())))
        .is_some_and(|n| !n["metadata"]["deletionTimestamp"].is_null());
    let empty = store.collections.values().filter(|c| c.info.namespaced).all(|c| c.objects.keys().all(|k| k.0 != ns));
    if terminating && empty {
        store.remove(&nskey, &(String::new(), ns.to_string()));
    }
}
