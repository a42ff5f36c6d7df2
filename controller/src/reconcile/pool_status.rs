//! From the allocator back to a pool's status: counts per family and the Ready, Invalid and
//! Conflicting conditions.

use std::collections::BTreeMap;

use ferrolb_crds::{Family, IPPool, IPPoolStatus};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::allocator::Allocator;

pub(crate) fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    previous: &[Condition],
    generation: Option<i64>,
) -> Condition {
    let status = if ok { "True" } else { "False" }.to_string();
    // The transition time moves only when the status does.
    let last = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(Timestamp::now()));
    Condition {
        type_: type_.into(),
        status,
        reason: reason.into(),
        message,
        last_transition_time: last,
        observed_generation: generation,
    }
}

/// The status a pool should show.
pub fn desired_status(
    pool: &IPPool,
    alloc: &Allocator,
    errors: &[String],
    overlaps: &BTreeMap<String, Vec<String>>,
) -> IPPoolStatus {
    let name = pool.metadata.name.clone().unwrap_or_default();
    let previous = pool.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
    let generation = pool.metadata.generation;
    let p = alloc.pool(&name);
    let counts = |f| p.and_then(|p| p.counts(f));
    let invalid = !errors.is_empty();
    let others = overlaps.get(&name).cloned().unwrap_or_default();
    let usable = p.is_some_and(|p| p.has_family(Family::V4) || p.has_family(Family::V6));
    let (ready, reason, message) = if !usable {
        (false, "NoAddresses", "the pool has no usable addresses".to_string())
    } else if pool.spec.disabled {
        (false, "Disabled", "disabled: existing allocations are kept, no new ones are made".to_string())
    } else {
        (true, "Ready", "addresses are handed out from this pool".to_string())
    };
    let conditions = vec![
        condition("Ready", ready, reason, message, &previous, generation),
        if invalid {
            condition("Invalid", true, "InvalidSpec", errors.join("; "), &previous, generation)
        } else {
            condition("Invalid", false, "Valid", "every entry parses".into(), &previous, generation)
        },
        if others.is_empty() {
            condition(
                "Conflicting",
                false,
                "NoOverlap",
                "no other IPPool has these addresses".into(),
                &previous,
                generation,
            )
        } else {
            let msg = format!(
                "addresses overlap IPPool {}; each address is still handed out only once",
                others.iter().map(|o| format!("{o:?}")).collect::<Vec<_>>().join(", ")
            );
            condition("Conflicting", true, "Overlap", msg, &previous, generation)
        },
    ];
    IPPoolStatus { ipv4: counts(Family::V4), ipv6: counts(Family::V6), conditions }
}

/// Whether two statuses differ in anything but transition times.
pub fn differs(a: Option<&IPPoolStatus>, b: &IPPoolStatus) -> bool {
    let Some(a) = a else { return true };
    let strip = |s: &IPPoolStatus| {
        let mut s = s.clone();
        for c in &mut s.conditions {
            c.last_transition_time = Time(Timestamp::UNIX_EPOCH);
        }
        s
    };
    strip(a) != strip(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::read::pool_config;
    use ferrolb_crds::IPPoolSpec;

    fn pool(name: &str, addresses: &[&str]) -> IPPool {
        let spec: IPPoolSpec = serde_json::from_value(serde_json::json!({"addresses": addresses})).unwrap();
        IPPool::new(name, spec)
    }

    #[test]
    fn bad_entries_are_reported_and_good_ones_kept() {
        let (config, errors) = pool_config(&pool("p", &["198.51.100.9-198.51.100.1", "203.0.113.0/30"]), &[]);
        assert_eq!(config.ranges.len(), 1);
        assert!(errors[0].contains("starts after it ends"), "{errors:?}");
        let (_, errors) = pool_config(&pool("q", &["198.51.100.9-198.51.100.1"]), &[]);
        assert!(errors.iter().any(|e| e.contains("no usable addresses")));
    }

    #[test]
    fn status_has_counts_and_conditions() {
        let p = pool("p", &["198.51.100.0/30", "2001:db8::/126"]);
        let (config, errors) = pool_config(&p, &[]);
        let mut a = Allocator::new();
        a.set_pool("p", config);
        let overlaps = BTreeMap::from([("p".to_string(), vec!["q".to_string()])]);
        let s = desired_status(&p, &a, &errors, &overlaps);
        assert_eq!(s.ipv4.unwrap().total, 4);
        assert_eq!(s.ipv6.unwrap().available, 3, "the /126 without its subnet-router anycast address");
        let by_type: BTreeMap<&str, &Condition> = s.conditions.iter().map(|c| (c.type_.as_str(), c)).collect();
        assert_eq!(by_type["Ready"].status, "True");
        assert_eq!(by_type["Invalid"].status, "False");
        assert_eq!(by_type["Conflicting"].status, "True");
        assert!(by_type["Conflicting"].message.contains("\"q\""));
        assert!(!differs(Some(&s), &desired_status(&p, &a, &errors, &overlaps)));
    }
}
