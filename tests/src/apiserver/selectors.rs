//! Label selectors (`=`, `==`, `!=`, `in`, `notin`, exists, `!key`) and field selectors, as
//! kube-apiserver parses them from `labelSelector=` and `fieldSelector=`.

use serde_json::Value;

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelReq {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector; all requirements must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<LabelReq>);

/// A parsed field selector: `path=value` or `path!=value` terms, all of which must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

/// Splits on commas that are not inside parentheses.
fn split_terms(s: &str) -> Vec<&str> {
    let (mut depth, mut start, mut out) = (0i32, 0usize, Vec::new());
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter().map(str::trim).filter(|t| !t.is_empty()).collect()
}

fn valid_key(k: &str) -> bool {
    !k.is_empty() && k.len() <= 316 && k.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
}

impl LabelSelector {
    /// Parses the query-string form; the error says what is wrong.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for term in split_terms(s) {
            let req = if let Some(key) = term.strip_prefix('!') {
                LabelReq::NotExists(key.trim().to_string())
            } else if let Some((key, rest)) = split_set_op(term, " notin ") {
                LabelReq::NotIn(key, parse_set(&rest)?)
            } else if let Some((key, rest)) = split_set_op(term, " in ") {
                LabelReq::In(key, parse_set(&rest)?)
            } else if let Some((k, v)) = term.split_once("!=") {
                LabelReq::NotEq(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                LabelReq::Eq(k.trim().to_string(), v.trim().to_string())
            } else {
                LabelReq::Exists(term.to_string())
            };
            let key = match &req {
                LabelReq::Eq(k, _)
                | LabelReq::NotEq(k, _)
                | LabelReq::In(k, _)
                | LabelReq::NotIn(k, _)
                | LabelReq::Exists(k)
                | LabelReq::NotExists(k) => k,
            };
            if !valid_key(key) {
                return Err(format!("unable to parse requirement: invalid label key {key:?}"));
            }
            reqs.push(req);
        }
        Ok(Self(reqs))
    }

    /// Whether an object's `metadata.labels` satisfy every requirement.
    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|req| match req {
            LabelReq::Eq(k, v) => get(k) == Some(v.as_str()),
            LabelReq::NotEq(k, v) => get(k) != Some(v.as_str()),
            LabelReq::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelReq::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
            LabelReq::Exists(k) => get(k).is_some(),
            LabelReq::NotExists(k) => get(k).is_none(),
        })
    }
}

fn split_set_op(term: &str, op: &str) -> Option<(String, String)> {
    let (k, rest) = term.split_once(op)?;
    Some((k.trim().to_string(), rest.trim().to_string()))
}

fn parse_set(s: &str) -> Result<Vec<String>, String> {
    let inner = s
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| format!("unable to parse requirement: expected a set in parentheses, got {s:?}"))?;
    Ok(inner.split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect())
}

impl FieldSelector {
    /// Parses `a.b=c,d!=e`. Any dotted path is accepted (the real server accepts a fixed set per
    /// kind; accepting more only matters for clients that rely on being refused).
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut terms = Vec::new();
        for term in split_terms(s) {
            let (path, negate, value) = if let Some((p, v)) = term.split_once("!=") {
                (p, true, v)
            } else if let Some((p, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (p, false, v)
            } else {
                return Err(format!("invalid field selector term {term:?}: expected path=value"));
            };
            terms.push((path.trim().to_string(), negate, value.trim().to_string()));
        }
        Ok(Self(terms))
    }

    /// Whether the object's fields satisfy every term; a missing field compares as "".
    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(path, negate, want)| {
            let pointer = format!("/{}", path.replace('.', "/"));
            let have = match obj.pointer(&pointer) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            (have == *want) != *negate
        })
    }

    /// The value required for `path`, if the selector pins it (used to narrow a lookup).
    pub fn required(&self, path: &str) -> Option<&str> {
        self.0.iter().find(|(p, negate, _)| p == path && !negate).map(|(_, _, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"name": "a", "namespace": "ns", "labels": labels}, "spec": {"nodeName": "n1"}})
    }

    #[test]
    fn every_label_operator() {
        let o = obj(json!({"app": "web", "tier": "front"}));
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches(&o);
        assert!(m("app=web") && m("app==web") && m("app!=db") && m("missing!=x"));
        assert!(m("app in (web, db)") && !m("app in (db)"));
        assert!(m("app notin (db)") && !m("app notin (web,db)") && m("missing notin (x)"));
        assert!(m("tier") && !m("missing") && m("!missing") && !m("!tier"));
        assert!(m("app=web,tier in (front),!gone") && !m("app=web,tier=back"));
        assert!(m(""));
        assert!(LabelSelector::parse("app in web").is_err());
        assert!(LabelSelector::parse("a b=c").is_err());
    }

    #[test]
    fn field_selectors_on_any_path() {
        let o = obj(json!({}));
        let m = |s: &str| FieldSelector::parse(s).unwrap().matches(&o);
        assert!(m("metadata.name=a") && m("metadata.namespace==ns") && !m("metadata.name=b"));
        assert!(m("metadata.name!=b") && m("spec.nodeName=n1") && m("spec.missing="));
        assert_eq!(FieldSelector::parse("metadata.name=a").unwrap().required("metadata.name"), Some("a"));
        assert!(FieldSelector::parse("nonsense").is_err());
    }
}
