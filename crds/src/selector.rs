//! Kubernetes `LabelSelector` matching (matchLabels and matchExpressions), used for pool
//! `serviceAllocation` and `l2.nodeSelector`.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Why a selector cannot be evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid label selector: {0}")]
pub struct SelectorError(pub String);

/// Whether `labels` satisfy `selector`. An empty selector matches everything, as in Kubernetes.
pub fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> Result<bool, SelectorError> {
    for (k, v) in selector.match_labels.iter().flatten() {
        if labels.get(k) != Some(v) {
            return Ok(false);
        }
    }
    for expr in selector.match_expressions.iter().flatten() {
        let have = labels.get(&expr.key);
        let values = expr.values.as_deref().unwrap_or_default();
        let ok = match expr.operator.as_str() {
            "In" if !values.is_empty() => have.is_some_and(|h| values.contains(h)),
            "NotIn" if !values.is_empty() => have.is_none_or(|h| !values.contains(h)),
            "Exists" if values.is_empty() => have.is_some(),
            "DoesNotExist" if values.is_empty() => have.is_none(),
            op => {
                return Err(SelectorError(format!(
                    "operator {op:?} on key {:?} with {} values is not valid",
                    expr.key,
                    values.len()
                )));
            }
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    #[test]
    fn match_labels_and_expressions() {
        let l = labels(&[("lb", "home"), ("tier", "front")]);
        let sel = |ml: &[(&str, &str)], me: Vec<LabelSelectorRequirement>| LabelSelector {
            match_labels: (!ml.is_empty()).then(|| labels(ml)),
            match_expressions: (!me.is_empty()).then_some(me),
        };
        assert!(matches(&LabelSelector::default(), &l).unwrap());
        assert!(matches(&sel(&[("lb", "home")], vec![]), &l).unwrap());
        assert!(!matches(&sel(&[("lb", "work")], vec![]), &l).unwrap());
        assert!(matches(&sel(&[], vec![expr("tier", "In", &["front", "back"])]), &l).unwrap());
        assert!(!matches(&sel(&[], vec![expr("tier", "NotIn", &["front"])]), &l).unwrap());
        assert!(matches(&sel(&[], vec![expr("gone", "DoesNotExist", &[])]), &l).unwrap());
        assert!(!matches(&sel(&[], vec![expr("gone", "Exists", &[])]), &l).unwrap());
        assert!(matches(&sel(&[], vec![expr("x", "Bogus", &[])]), &l).is_err());
        assert!(matches(&sel(&[], vec![expr("x", "In", &[])]), &l).is_err());
    }
}
