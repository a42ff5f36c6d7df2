//! Reading multi-document YAML into JSON values (the way kubectl reads manifests).

use serde_json::Value;

/// Why a file could not be read as YAML.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: document {index}: {message}")]
pub struct YamlError {
    /// The file (or `-`).
    pub source_name: String,
    /// The 1-based document number.
    pub index: usize,
    /// The parser's message.
    pub message: String,
}

/// Every non-empty document of `text`; a `List` (as `kubectl get -o yaml` writes) is opened.
pub fn documents(source_name: &str, text: &str) -> Result<Vec<Value>, YamlError> {
    let mut out = Vec::new();
    for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let v: Value = serde::Deserialize::deserialize(doc).map_err(|e| YamlError {
            source_name: source_name.into(),
            index: i + 1,
            message: e.to_string(),
        })?;
        match v {
            Value::Null => {}
            Value::Object(ref o) if o.get("kind").and_then(Value::as_str) == Some("List") => {
                out.extend(o.get("items").and_then(Value::as_array).cloned().unwrap_or_default());
            }
            v => out.push(v),
        }
    }
    Ok(out)
}

/// `kind` of a document (empty if none).
pub fn kind(doc: &Value) -> &str {
    doc.get("kind").and_then(Value::as_str).unwrap_or_default()
}

/// `metadata.name` of a document (empty if none).
pub fn name(doc: &Value) -> &str {
    doc.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default()
}

/// YAML text of several documents.
pub fn to_yaml(docs: &[Value]) -> String {
    docs.iter().map(|d| serde_norway::to_string(d).unwrap_or_default()).collect::<Vec<_>>().join("---\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_and_lists_are_read_and_errors_say_where() {
        let docs = documents("x.yaml", "a: 1\n---\n---\nkind: List\nitems: [{b: 2}, {c: 3}]\n").unwrap();
        assert_eq!(docs.len(), 3);
        let e = documents("x.yaml", "a: 1\n---\nb: [\n").unwrap_err();
        assert_eq!(e.index, 2);
        assert!(e.to_string().starts_with("x.yaml: document 2:"), "{e}");
    }
}
