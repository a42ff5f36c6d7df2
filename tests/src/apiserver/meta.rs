//! Object metadata rules shared by every kind: names, labels, timestamps, generated names.

use serde_json::Value;

use super::error::Cause;
use super::resources::NameRule;

/// The current time as Kubernetes renders `metav1.Time`.
pub fn now() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A random 5-character suffix from the alphabet kube-apiserver uses for `generateName`.
pub fn name_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let bytes = *uuid::Uuid::new_v4().as_bytes();
    bytes[..5].iter().map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char).collect()
}

fn dns_label(s: &str, max: usize, first_alpha: bool) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= max
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && (if first_alpha { b[0].is_ascii_lowercase() } else { b[0].is_ascii_alphanumeric() })
        && b[b.len() - 1].is_ascii_alphanumeric()
}

fn dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(|l| dns_label(l, 63, false))
}

/// Checks `metadata.name` against the kind's naming rule.
pub fn validate_name(name: &str, rule: NameRule) -> Option<Cause> {
    let (ok, what) = match rule {
        NameRule::Subdomain => (
            dns_subdomain(name),
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
        ),
        NameRule::Label => (
            dns_label(name, 63, false),
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
        ),
        NameRule::Rfc1035 => (
            dns_label(name, 63, true),
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character",
        ),
    };
    (!ok).then(|| Cause::new("metadata.name", format!("Invalid value: {name:?}: {what}")))
}

/// A qualified name (`prefix/name` or `name`), as used by label keys and condition types.
pub fn qualified_name(s: &str) -> bool {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    name_ok && prefix.is_none_or(dns_subdomain)
}

/// Checks label keys and values.
pub fn validate_labels(meta: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    for (k, v) in meta["labels"].as_object().into_iter().flatten() {
        if !qualified_name(k) {
            causes.push(Cause::new(
                "metadata.labels",
                format!("Invalid value: {k:?}: name part must consist of alphanumeric characters, '-', '_' or '.'"),
            ));
        }
        let v = v.as_str().unwrap_or("\u{0}");
        let ok = v.is_empty() || (v.len() <= 63 && qualified_name(v) && !v.contains('/'));
        if !ok {
            causes.push(Cause::new("metadata.labels", format!("Invalid value: {v:?}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.'")));
        }
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("my-svc", NameRule::Rfc1035).is_none());
        assert!(validate_name("1svc", NameRule::Rfc1035).is_some());
        assert!(validate_name("ippools.ferrolb.io", NameRule::Subdomain).is_none());
        assert!(validate_name("Bad", NameRule::Subdomain).is_some());
        assert!(validate_name("a.b", NameRule::Label).is_some());
        assert!(qualified_name("ferrolb.io/Announced") && !qualified_name("bad/x/"));
        assert_eq!(name_suffix().len(), 5);
    }
}
