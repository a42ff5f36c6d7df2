//! CustomResourceDefinitions: their admission, and the served type each one defines.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::apiserver::error::Cause;
use crate::apiserver::meta;
use crate::apiserver::resources::{CrdVersion, NameRule, PrinterColumn, ResourceInfo};
use crate::apiserver::validation;

pub(super) fn admit_crd(crd: &mut Value, old: Option<&Value>) -> Result<(), Vec<Cause>> {
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
