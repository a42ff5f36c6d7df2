//! `events.k8s.io/v1` and core `v1` Events are one resource in two shapes, as in kube-apiserver:
//! an Event posted by kube-runtime's Recorder (events.k8s.io) shows in `kubectl describe` (core).
//! Objects are stored in the core shape and converted at the edge.

use serde_json::{Map, Value};

/// (events.k8s.io/v1 field, core/v1 field) pairs that only differ in name.
const RENAMED: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

fn rename(obj: &Value, pairs: impl Iterator<Item = (&'static str, &'static str)>, api_version: &str) -> Value {
    let mut out: Map<String, Value> = obj.as_object().cloned().unwrap_or_default();
    for (from, to) in pairs {
        if let Some(v) = out.remove(from) {
            out.insert(to.to_string(), v);
        }
    }
    out.insert("apiVersion".into(), Value::String(api_version.into()));
    out.insert("kind".into(), Value::String("Event".into()));
    Value::Object(out)
}

/// events.k8s.io/v1 → stored (core) shape.
pub fn to_core(obj: &Value) -> Value {
    rename(obj, RENAMED.iter().copied(), "v1")
}

/// Stored (core) shape → events.k8s.io/v1.
pub fn to_events_v1(obj: &Value) -> Value {
    rename(obj, RENAMED.iter().map(|(a, b)| (*b, *a)), "events.k8s.io/v1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trip() {
        let e = json!({"metadata": {"name": "e"}, "regarding": {"kind": "Service", "name": "s"}, "note": "hi",
            "reason": "IPAllocated", "reportingController": "ferrolb", "series": {"count": 2}});
        let core = to_core(&e);
        assert_eq!(core["involvedObject"]["name"], "s");
        assert_eq!(core["message"], "hi");
        assert_eq!(core["apiVersion"], "v1");
        let back = to_events_v1(&core);
        assert_eq!(back["note"], "hi");
        assert_eq!(back["apiVersion"], "events.k8s.io/v1");
        assert_eq!(back["series"]["count"], 2);
    }
}
