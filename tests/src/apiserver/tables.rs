//! `meta.k8s.io/v1` Table responses, so `kubectl get` shows the columns users expect
//! (EXTERNAL-IP for Services, a CRD's printer columns).

use serde_json::{Value, json};

use super::resources::{PrinterColumn, ResourceInfo};

/// Renders a human duration as kubectl does ("45s", "3m20s", "5h", "12d").
pub fn human_age(created: &str) -> String {
    let Ok(t) = created.parse::<jiff::Timestamp>() else { return "<unknown>".into() };
    let secs = (jiff::Timestamp::now().as_second() - t.as_second()).max(0);
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    match secs {
        s if s < 120 => format!("{s}s"),
        _ if m < 10 && secs % 60 != 0 => format!("{m}m{}s", secs % 60),
        _ if m < 180 => format!("{m}m"),
        _ if h < 8 && m % 60 != 0 => format!("{h}h{}m", m % 60),
        _ if h < 48 => format!("{h}h"),
        _ if d < 8 && h % 24 != 0 => format!("{d}d{}h", h % 24),
        _ => format!("{d}d"),
    }
}

/// Follows the JSONPath of printer columns: fields, indexes and the filter users write for
/// conditions (`.status.ipv4.used`, `.spec.ports[0].port`, `.status.conditions[?(@.type=="Ready")].status`);
/// a filter takes the first match, as kubectl shows one value.
pub fn json_path<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = obj;
    for part in segments(path.trim_start_matches('.')) {
        let (name, bracket) = match part.split_once('[') {
            Some((n, b)) => (n, Some(b.strip_suffix(']')?)),
            None => (part, None),
        };
        if !name.is_empty() {
            cur = cur.get(name)?;
        }
        match bracket {
            None => {}
            Some(b) if b.starts_with("?(@.") => {
                let (field, want) = b.strip_prefix("?(@.")?.strip_suffix(')')?.split_once("==")?;
                let want = want.trim().trim_matches(|c| c == '"' || c == '\'');
                cur = cur.as_array()?.iter().find(|e| e.get(field.trim()).and_then(Value::as_str) == Some(want))?;
            }
            Some(i) => cur = cur.get(i.parse::<usize>().ok()?)?,
        }
    }
    Some(cur)
}

/// The dot-separated segments of a path, keeping dots inside brackets (filters) with their segment.
fn segments(path: &str) -> Vec<&str> {
    let (mut out, mut start, mut depth) = (Vec::new(), 0, 0);
    for (i, c) in path.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            '.' if depth == 0 => {
                out.push(&path[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&path[start..]);
    out.into_iter().filter(|p| !p.is_empty()).collect()
}

fn column(name: &str, type_: &str, priority: i64, description: &str) -> Value {
    json!({"name": name, "type": type_, "format": if name == "Name" { "name" } else { "" }, "description": description, "priority": priority})
}

fn cell(col: &PrinterColumn, obj: &Value) -> Value {
    match json_path(obj, &col.json_path) {
        None | Some(Value::Null) => Value::Null,
        Some(Value::String(s)) if col.type_ == "date" => json!(human_age(s)),
        Some(v @ (Value::String(_) | Value::Number(_) | Value::Bool(_))) => v.clone(),
        Some(other) => json!(other.to_string()),
    }
}

fn service_row(obj: &Value) -> Vec<Value> {
    let spec = &obj["spec"];
    let ty = spec["type"].as_str().unwrap_or("ClusterIP");
    let ingress: Vec<&str> = obj
        .pointer("/status/loadBalancer/ingress")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|i| i["ip"].as_str().or_else(|| i["hostname"].as_str()))
        .collect();
    let mut external: Vec<String> = ingress.iter().map(|s| s.to_string()).collect();
    external.extend(spec["externalIPs"].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(String::from)));
    let external = match (ty, external.is_empty()) {
        ("LoadBalancer", true) => "<pending>".to_string(),
        ("ExternalName", _) => spec["externalName"].as_str().unwrap_or("<none>").to_string(),
        (_, true) => "<none>".to_string(),
        _ => external.join(","),
    };
    let ports: Vec<String> = spec["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let proto = p["protocol"].as_str().unwrap_or("TCP");
            match p["nodePort"].as_u64() {
                Some(np) if np != 0 => format!("{}:{np}/{proto}", p["port"]),
                _ => format!("{}/{proto}", p["port"]),
            }
        })
        .collect();
    let selector: Vec<String> = spec["selector"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    vec![
        json!(ty),
        json!(spec["clusterIP"].as_str().unwrap_or("<none>")),
        json!(external),
        json!(if ports.is_empty() { "<none>".to_string() } else { ports.join(",") }),
        json!(human_age(obj["metadata"]["creationTimestamp"].as_str().unwrap_or_default())),
        json!(if selector.is_empty() { "<none>".to_string() } else { selector.join(",") }),
    ]
}

fn node_status(obj: &Value) -> String {
    let ready = obj
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .map(|c| c["status"] == "True");
    match ready {
        Some(true) => "Ready".into(),
        _ => "NotReady".into(),
    }
}

/// A Table of `items` (already in the client's version).
pub fn table(info: &ResourceInfo, version: &str, items: &[Value], list_meta: Value, include_object: bool) -> Value {
    let age = || column("Age", "string", 0, "CreationTimestamp");
    let mut columns = vec![column("Name", "string", 0, "Name must be unique within a namespace.")];
    let crd_columns: Option<Vec<PrinterColumn>> =
        info.crd.as_ref().and_then(|v| v.get(version)).map(|v| v.columns.clone());
    match (info.group.as_str(), info.plural.as_str(), &crd_columns) {
        ("", "services", _) => {
            for (n, p) in [("Type", 0), ("Cluster-IP", 0), ("External-IP", 0), ("Port(s)", 0)] {
                columns.push(column(n, "string", p, ""));
            }
            columns.push(age());
            columns.push(column("Selector", "string", 1, ""));
        }
        ("", "nodes", _) => {
            columns.push(column("Status", "string", 0, ""));
            columns.push(age());
        }
        (_, _, Some(cols)) if !cols.is_empty() => {
            columns.extend(cols.iter().map(|c| column(&c.name, &c.type_, c.priority, &c.description)));
        }
        _ => columns.push(age()),
    }
    let rows: Vec<Value> = items
        .iter()
        .map(|obj| {
            let name = json!(obj["metadata"]["name"]);
            let created = obj["metadata"]["creationTimestamp"].as_str().unwrap_or_default();
            let mut cells = vec![name];
            match (info.group.as_str(), info.plural.as_str(), &crd_columns) {
                ("", "services", _) => cells.extend(service_row(obj)),
                ("", "nodes", _) => {
                    cells.push(json!(node_status(obj)));
                    cells.push(json!(human_age(created)));
                }
                (_, _, Some(cols)) if !cols.is_empty() => cells.extend(cols.iter().map(|c| cell(c, obj))),
                _ => cells.push(json!(human_age(created))),
            }
            let object = if include_object {
                obj.clone()
            } else {
                json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]})
            };
            json!({"cells": cells, "object": object})
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta, "columnDefinitions": columns, "rows": rows})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_ages() {
        let o = json!({"status": {"ipv4": {"used": 3}}, "spec": {"ports": [{"port": 80}]}});
        assert_eq!(json_path(&o, ".status.ipv4.used"), Some(&json!(3)));
        assert_eq!(json_path(&o, ".spec.ports[0].port"), Some(&json!(80)));
        assert_eq!(json_path(&o, ".status.ipv6.used"), None);
        // The filter printer columns use for conditions (ferrolb's Ready columns, cert-manager's).
        let c = json!({"status": {"conditions": [{"type": "Invalid", "status": "False"}, {"type": "Ready", "status": "True"}]}});
        assert_eq!(json_path(&c, r#".status.conditions[?(@.type=="Ready")].status"#), Some(&json!("True")));
        assert_eq!(json_path(&c, ".status.conditions[?(@.type=='Invalid')].status"), Some(&json!("False")));
        assert_eq!(json_path(&c, r#".status.conditions[?(@.type=="Gone")].status"#), None);
        let ten_min_ago = jiff::Timestamp::now().checked_sub(jiff::SignedDuration::from_secs(600)).unwrap();
        assert_eq!(human_age(&ten_min_ago.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()), "10m");
    }

    #[test]
    fn service_rows_show_external_ip_and_ports() {
        let svc = json!({"metadata": {"name": "web", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.10", "ports": [{"port": 80, "nodePort": 31000, "protocol": "TCP"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}]}}});
        let row = service_row(&svc);
        assert_eq!(row[0], "LoadBalancer");
        assert_eq!(row[2], "198.51.100.1");
        assert_eq!(row[3], "80:31000/TCP");
        let pending = json!({"metadata": {}, "spec": {"type": "LoadBalancer", "ports": []}});
        assert_eq!(service_row(&pending)[2], "<pending>");
    }
}
