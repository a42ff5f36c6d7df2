//! Custom resources checked against their CRD's `openAPIV3Schema` the way kube-apiserver does it:
//! nulls of non-nullable fields dropped, defaults applied, unknown fields pruned, types, formats of
//! value validation (pattern, enum, bounds, lengths, required), then the CEL rules
//! (`x-kubernetes-validations`, evaluated by kube-cel with Kubernetes' extension functions).
//!
//! Not evaluated faithfully (documented in docs/TESTING.md): CEL cost budgets, `format` beyond
//! int32/int64, `x-kubernetes-list-type`/`map-keys` uniqueness, and ratcheting of unchanged
//! invalid values on update.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use regex::Regex;
use serde_json::{Map, Value};

use super::error::Cause;

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn type_matches(want: &str, v: &Value) -> bool {
    match (want, v) {
        ("object", Value::Object(_)) | ("array", Value::Array(_)) | ("string", Value::String(_)) => true,
        ("boolean", Value::Bool(_)) => true,
        ("number", Value::Number(_)) => true,
        ("integer", Value::Number(n)) => n.is_i64() || n.is_u64(),
        _ => false,
    }
}

/// A short rendering of a value for messages, as Go's `%v`/`%q` would show it.
fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Object(_) => "\"object\"".into(),
        Value::Array(a) => a.len().to_string(),
        other => other.to_string(),
    }
}

fn regex(pattern: &str) -> Option<Regex> {
    static CACHE: OnceLock<Mutex<HashMap<String, Option<Regex>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    cache.entry(pattern.to_string()).or_insert_with(|| Regex::new(pattern).ok()).clone()
}

/// Applies defaults, prunes and checks `object` against `schema`; the root's apiVersion, kind and
/// metadata are left to the server, as the real one does.
pub fn structural(schema: &Value, object: &mut Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let Some(obj) = object.as_object_mut() else {
        causes.push(Cause::new("", "Invalid value: the object must be a JSON object"));
        return causes;
    };
    let mut rest: Map<String, Value> = std::mem::take(obj);
    let mut kept = Map::new();
    for k in ["apiVersion", "kind", "metadata"] {
        if let Some(v) = rest.remove(k) {
            kept.insert(k.to_string(), v);
        }
    }
    let mut body = Value::Object(rest);
    let mut root_schema = schema.clone();
    if let Some(props) = root_schema.get_mut("properties").and_then(Value::as_object_mut) {
        for k in ["apiVersion", "kind", "metadata"] {
            props.remove(k);
        }
    }
    if let Some(req) = root_schema.get_mut("required").and_then(Value::as_array_mut) {
        req.retain(|r| !matches!(r.as_str(), Some("apiVersion" | "kind" | "metadata")));
    }
    walk(&root_schema, &mut body, "", &mut causes);
    let mut out = kept;
    if let Value::Object(b) = body {
        out.extend(b);
    }
    *object = Value::Object(out);
    causes
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

fn walk(schema: &Value, value: &mut Value, path: &str, causes: &mut Vec<Cause>) {
    let int_or_string = schema["x-kubernetes-int-or-string"] == Value::Bool(true);
    if let Some(want) = schema["type"].as_str() {
        let ok = type_matches(want, value) || (int_or_string && (value.is_string() || type_matches("integer", value)));
        if !ok {
            causes.push(Cause::new(
                path,
                format!(
                    "Invalid value: {}: {path} in body must be of type {want}: {:?}",
                    shown(value),
                    type_name(value)
                ),
            ));
            return;
        }
    }
    value_checks(schema, value, path, causes);
    match value {
        Value::Object(map) => walk_object(schema, map, path, causes),
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    walk(item_schema, item, &format!("{path}[{i}]"), causes);
                }
            }
        }
        _ => {}
    }
}

fn walk_object(schema: &Value, map: &mut Map<String, Value>, path: &str, causes: &mut Vec<Cause>) {
    let props = schema["properties"].as_object();
    let additional = schema.get("additionalProperties").filter(|a| a.is_object());
    let preserve = schema["x-kubernetes-preserve-unknown-fields"] == Value::Bool(true)
        || schema.get("additionalProperties") == Some(&Value::Bool(true));
    // Nulls of non-nullable fields are dropped before defaulting, as the real server does.
    map.retain(|k, v| {
        let sub = props.and_then(|p| p.get(k)).or(additional);
        !(v.is_null() && sub.is_some_and(|s| s["nullable"] != Value::Bool(true)))
    });
    if let Some(props) = props {
        for (k, sub) in props {
            if !map.contains_key(k)
                && let Some(d) = sub.get("default")
            {
                map.insert(k.clone(), d.clone());
            }
        }
    }
    let keys: Vec<String> = map.keys().cloned().collect();
    for k in keys {
        let sub = props.and_then(|p| p.get(&k)).or(additional);
        match sub {
            Some(sub) => {
                if let Some(v) = map.get_mut(&k)
                    && !v.is_null()
                {
                    walk(sub, v, &child(path, &k), causes);
                }
            }
            None if preserve || (props.is_none() && additional.is_none() && schema.get("type").is_none()) => {}
            None => {
                map.remove(&k);
            }
        }
    }
    for r in schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        if !map.contains_key(r) {
            causes.push(Cause::new(child(path, r), "Required value"));
        }
    }
}

fn value_checks(schema: &Value, value: &Value, path: &str, causes: &mut Vec<Cause>) {
    let invalid = |msg: String| Cause::new(path, format!("Invalid value: {}: {msg}", shown(value)));
    if let Some(options) = schema["enum"].as_array()
        && !options.contains(value)
    {
        let list: Vec<String> = options.iter().map(|o| o.to_string()).collect();
        causes.push(Cause::new(
            path,
            format!("Unsupported value: {}: supported values: {}", shown(value), list.join(", ")),
        ));
    }
    match value {
        Value::String(s) => {
            if let Some(p) = schema["pattern"].as_str() {
                match regex(p) {
                    Some(re) if re.is_match(s) => {}
                    Some(_) => causes.push(invalid(format!("{path} in body should match '{p}'"))),
                    None => causes.push(invalid(format!("the schema's pattern '{p}' does not compile"))),
                }
            }
            let len = s.len() as u64;
            if let Some(max) = schema["maxLength"].as_u64()
                && len > max
            {
                causes.push(Cause::new(path, format!("Too long: may not be more than {max} bytes")));
            }
            if let Some(min) = schema["minLength"].as_u64()
                && len < min
            {
                causes.push(invalid(format!("{path} in body should be at least {min} chars long")));
            }
        }
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(0.0);
            let excl_min = schema["exclusiveMinimum"] == Value::Bool(true);
            let excl_max = schema["exclusiveMaximum"] == Value::Bool(true);
            if let Some(min) = schema["minimum"].as_f64()
                && (x < min || (excl_min && x == min))
            {
                let rel = if excl_min { "greater than" } else { "greater than or equal to" };
                causes.push(invalid(format!("{path} in body should be {rel} {min}")));
            }
            if let Some(max) = schema["maximum"].as_f64()
                && (x > max || (excl_max && x == max))
            {
                let rel = if excl_max { "less than" } else { "less than or equal to" };
                causes.push(invalid(format!("{path} in body should be {rel} {max}")));
            }
            let bits = match schema["format"].as_str() {
                Some("int32") => Some(i64::from(i32::MIN)..=i64::from(i32::MAX)),
                Some("int64") => Some(i64::MIN..=i64::MAX),
                _ => None,
            };
            if let Some(range) = bits
                && n.as_i64().is_none_or(|i| !range.contains(&i))
                && !(n.is_u64() && schema["format"] == "int64" && n.as_u64() <= Some(i64::MAX as u64))
            {
                causes.push(invalid(format!(
                    "{path} in body must be of type {}",
                    schema["format"].as_str().unwrap_or_default()
                )));
            }
        }
        Value::Array(items) => {
            let len = items.len() as u64;
            if let Some(min) = schema["minItems"].as_u64()
                && len < min
            {
                causes.push(invalid(format!("{path} in body should have at least {min} items")));
            }
            if let Some(max) = schema["maxItems"].as_u64()
                && len > max
            {
                causes.push(Cause::new(path, format!("Too many: {len}: must have at most {max} items")));
            }
        }
        Value::Object(map) => {
            let len = map.len() as u64;
            if let Some(max) = schema["maxProperties"].as_u64()
                && len > max
            {
                causes.push(Cause::new(path, format!("Too many: {len}: must have at most {max} items")));
            }
        }
        _ => {}
    }
    for sub in schema["allOf"].as_array().into_iter().flatten() {
        value_checks(sub, value, path, causes);
    }
    if let Some(any) = schema["anyOf"].as_array() {
        let ok = any.iter().any(|s| {
            let mut c = Vec::new();
            walk(s, &mut value.clone(), path, &mut c);
            c.is_empty()
        });
        if !ok {
            causes.push(Cause::new(
                path,
                format!("Invalid value: {}: {path} in body must match at least one schema in anyOf", shown(value)),
            ));
        }
    }
    if let Some(one) = schema["oneOf"].as_array() {
        let n = one
            .iter()
            .filter(|s| {
                let mut c = Vec::new();
                walk(s, &mut value.clone(), path, &mut c);
                c.is_empty()
            })
            .count();
        if n != 1 {
            causes.push(Cause::new(
                path,
                format!("Invalid value: {}: {path} in body must match exactly one schema in oneOf", shown(value)),
            ));
        }
    }
    if let Some(not) = schema.get("not") {
        let mut c = Vec::new();
        walk(not, &mut value.clone(), path, &mut c);
        if c.is_empty() {
            causes.push(Cause::new(
                path,
                format!("Invalid value: {}: {path} in body must not match the schema in not", shown(value)),
            ));
        }
    }
}

/// Fields of `object` that the schema does not declare (what pruning would drop), as dotted paths.
pub fn unknown_fields(schema: &Value, object: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Value::Object(map) = object {
        for (k, v) in map {
            if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            unknown_in(schema["properties"].get(k), v, k, &mut out, schema);
        }
    }
    out
}

fn unknown_in(schema: Option<&Value>, value: &Value, path: &str, out: &mut Vec<String>, parent: &Value) {
    let Some(schema) = schema else {
        if parent["x-kubernetes-preserve-unknown-fields"] != Value::Bool(true) {
            out.push(path.to_string());
        }
        return;
    };
    if schema["x-kubernetes-preserve-unknown-fields"] == Value::Bool(true) {
        return;
    }
    match value {
        Value::Object(map) => {
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (k, v) in map {
                let sub = schema["properties"].get(k).or(additional);
                if sub.is_none() && (schema.get("properties").is_none() && additional.is_none()) {
                    continue;
                }
                unknown_in(sub, v, &format!("{path}.{k}"), out, schema);
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    unknown_in(Some(item_schema), item, &format!("{path}[{i}]"), out, schema);
                }
            }
        }
        _ => {}
    }
}

/// Evaluates the schema's CEL rules on an object that passed [`structural`].
pub fn cel(
    compiled: &kube_cel::CompiledSchema,
    object: &Value,
    old: Option<&Value>,
    api_version: &str,
    group: &str,
    kind: &str,
) -> Vec<Cause> {
    let root = kube_cel::RootContext {
        api_version: api_version.to_string(),
        api_group: group.to_string(),
        kind: kind.to_string(),
    };
    let validator = kube_cel::Validator::new();
    match validator.validate_compiled_with_context(compiled, object, old, Some(&root)) {
        Ok(()) => Vec::new(),
        Err(errors) => errors
            .iter()
            .map(|e| {
                let at = pointer_of(&e.field_path);
                let got = object.pointer(&at).map(type_name).unwrap_or("object");
                let msg = match e.kind {
                    kube_cel::ErrorKind::ValidationFailure => format!("Invalid value: {got:?}: {}", e.message),
                    _ => format!("Internal error: rule {:?} could not be evaluated: {}", e.rule, e.message),
                };
                Cause::new(e.field_path.clone(), msg)
            })
            .collect(),
    }
}

/// `spec.addresses[0]` → `/spec/addresses/0`.
fn pointer_of(path: &str) -> String {
    let mut out = String::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let mut pieces = part.split('[');
        if let Some(name) = pieces.next() {
            out.push('/');
            out.push_str(name);
        }
        for idx in pieces {
            out.push('/');
            out.push_str(idx.trim_end_matches(']'));
        }
    }
    out
}

/// The CEL rules of a CRD version that do not compile, as 422 causes on the CRD.
pub fn compile(schema: &Value) -> (kube_cel::CompiledSchema, Vec<String>) {
    let compiled = kube_cel::compile_schema(schema);
    let errors = collect_errors(&compiled);
    (compiled, errors)
}

fn collect_errors(c: &kube_cel::CompiledSchema) -> Vec<String> {
    let mut out: Vec<String> = c.compilation_errors().iter().map(|e| e.to_string()).collect();
    for sub in c.properties.values() {
        out.extend(collect_errors(sub));
    }
    for sub in c.items.iter().chain(c.additional_properties.iter()) {
        out.extend(collect_errors(sub));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["addresses"],
                    "properties": {
                        "addresses": {"type": "array", "minItems": 1, "items": {"type": "string", "pattern": "^[0-9./]+$", "maxLength": 8}},
                        "priority": {"type": "integer", "minimum": 0, "default": 0, "format": "int32"},
                        "mode": {"type": "string", "enum": ["a", "b"]},
                        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "opt": {"type": "string", "nullable": true}
                    }
                }
            }
        })
    }

    #[test]
    fn defaults_pruning_and_nulls() {
        let mut o = json!({"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "n", "extra": 1},
            "spec": {"addresses": ["1.2.3.4"], "unknown": 1, "free": {"any": {"thing": 1}}, "labels": {"a": "b"}, "mode": null, "opt": null},
            "junk": true});
        assert!(structural(&schema(), &mut o).is_empty());
        assert_eq!(o["spec"]["priority"], 0);
        assert!(o["spec"].get("unknown").is_none() && o.get("junk").is_none());
        assert_eq!(o["spec"]["free"]["any"]["thing"], 1);
        assert_eq!(o["metadata"]["extra"], 1, "metadata is not pruned by the schema");
        assert!(o["spec"].get("mode").is_none(), "null of a non-nullable field is dropped");
        assert!(o["spec"]["opt"].is_null() && o["spec"].get("opt").is_some());
    }

    #[test]
    fn every_check_reports_its_field() {
        let mut o =
            json!({"spec": {"addresses": ["abc", "1.2.3.4.5.6.7"], "priority": -1, "mode": "c", "labels": {"a": 1}}});
        let causes = structural(&schema(), &mut o);
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            ["spec.addresses[0]", "spec.addresses[1]", "spec.labels.a", "spec.mode", "spec.priority"],
            "{causes:?}"
        );
        assert!(causes[0].message.contains("should match '^[0-9./]+$'"));
        assert!(causes[1].message.contains("Too long"));
        assert!(causes[4].message.contains("greater than or equal to 0"));
        let mut missing = json!({"spec": {"addresses": []}});
        let causes = structural(&schema(), &mut missing);
        assert!(causes[0].message.contains("at least 1 items"), "{causes:?}");
        let mut none = json!({"spec": {}});
        assert_eq!(structural(&schema(), &mut none)[0].field, "spec.addresses");
        let mut wrong = json!({"spec": {"addresses": "x"}});
        assert!(structural(&schema(), &mut wrong)[0].message.contains("must be of type array"));
    }

    #[test]
    fn cel_rules_with_kubernetes_ip_functions() {
        let s = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "addresses": {"type": "array", "items": {"type": "string",
                "x-kubernetes-validations": [{"rule": "isCIDR(self) || isIP(self)", "message": "must be an address"}]}}}}}});
        let (compiled, errors) = compile(&s);
        assert!(errors.is_empty(), "{errors:?}");
        let good = json!({"spec": {"addresses": ["198.51.100.0/24", "2001:db8::1"]}});
        assert!(cel(&compiled, &good, None, "x/v1", "x", "K").is_empty());
        let bad = json!({"spec": {"addresses": ["198.51.100.0/24", "999.1.1.1"]}});
        let causes = cel(&compiled, &bad, None, "x/v1", "x", "K");
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].field, "spec.addresses[1]");
        assert_eq!(causes[0].message, "Invalid value: \"string\": must be an address");
        let (_, errors) = compile(&json!({"type": "object", "x-kubernetes-validations": [{"rule": "self.a ==="}]}));
        assert_eq!(errors.len(), 1);
    }

    #[test]
    fn pointers_from_field_paths() {
        assert_eq!(pointer_of("spec.addresses[3]"), "/spec/addresses/3");
        assert_eq!(pointer_of(""), "");
    }

    /// `ferrolb check` judges BGPPeers with `BGPPeerSpec::problems`; the API server with the CRD's
    /// schema and CEL rules. Over every combination of edge values, both agree.
    #[test]
    fn bgppeer_problems_agree_with_the_crd() {
        use kube::CustomResourceExt;
        let crd = serde_json::to_value(ferrolb_crds::BGPPeer::crd()).unwrap();
        let schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone();
        let (compiled, errors) = compile(&schema);
        assert!(errors.is_empty(), "{errors:?}");
        let durations =
            [None, Some("0s"), Some("2s"), Some("3s"), Some("30s"), Some("1m30s"), Some("65536s"), Some("x")];
        let mut checked = 0;
        for address in ["198.51.100.1", "2001:db8::1", "198.51.100.300", "router"] {
            for asn in [0u64, 1, 4_294_967_295] {
                for hold in durations {
                    for keepalive in durations {
                        for (interval, multiplier) in [
                            (None, None),
                            (Some(9), Some(3)),
                            (Some(10), Some(2)),
                            (Some(60000), Some(1)),
                            (Some(60001), Some(255)),
                        ] {
                            let mut spec = json!({"peerAddress": address, "peerASN": asn, "myASN": 64512});
                            if let Some(h) = hold {
                                spec["holdTime"] = json!(h);
                            }
                            if let Some(k) = keepalive {
                                spec["keepaliveTime"] = json!(k);
                            }
                            if let (Some(i), Some(m)) = (interval, multiplier) {
                                spec["bfd"] =
                                    json!({"receiveIntervalMs": i, "transmitIntervalMs": 300, "detectMultiplier": m});
                            }
                            let mut object = json!({"apiVersion": "ferrolb.io/v1alpha1", "kind": "BGPPeer",
                                "metadata": {"name": "p"}, "spec": spec.clone()});
                            let mut causes = structural(&schema, &mut object);
                            if causes.is_empty() {
                                causes = cel(&compiled, &object, None, "ferrolb.io/v1alpha1", "ferrolb.io", "BGPPeer");
                            }
                            let problems = serde_json::from_value::<ferrolb_crds::bgppeer::BGPPeerSpec>(spec.clone())
                                .map(|s| s.problems())
                                .unwrap_or_else(|e| vec![e.to_string()]);
                            assert_eq!(
                                causes.is_empty(),
                                problems.is_empty(),
                                "{spec}: the CRD says {causes:?}, check says {problems:?}"
                            );
                            checked += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(checked, 4 * 3 * 8 * 8 * 5);
    }
}
