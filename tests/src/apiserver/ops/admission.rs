//! Per-kind admission: defaults and validation a write must pass before it is stored.

use std::sync::Arc;

use serde_json::{Value, json};

use super::crds::*;
use super::*;
use crate::apiserver::error::{ApiError, ApiResult, Cause};
use crate::apiserver::meta;
use crate::apiserver::services;
use crate::apiserver::store::Store;
use crate::apiserver::validation;

/// Per-kind admission: defaulting and validation beyond the object metadata.
pub(super) fn admit(store: &mut Store, t: &Target, obj: &mut Value, old: Option<&Arc<Value>>) -> ApiResult<()> {
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
        ("", "secrets") => merge_string_data(obj),
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

/// A Secret's `stringData` is a write-only convenience: kube-apiserver stores it base64-encoded
/// in `data` (overriding keys of the same name) and never returns it.
fn merge_string_data(obj: &mut Value) {
    use base64::Engine as _;
    let Some(Value::Object(plain)) = obj.as_object_mut().and_then(|o| o.remove("stringData")) else { return };
    if !obj["data"].is_object() {
        obj["data"] = json!({});
    }
    for (k, v) in plain {
        let text = v.as_str().unwrap_or_default();
        obj["data"][k] = json!(base64::engine::general_purpose::STANDARD.encode(text));
    }
}

pub(super) fn validate_service_status(status: &Value) -> Result<(), Vec<Cause>> {
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
