//! Reading ferrolb's table back from the kernel to notice what someone else changed.
//!
//! Two checks on `nft -j list table inet ferrolb`. Its **shape** (rules per chain, elements per
//! map or set) must be the shape of the table the speaker applied
//! ([`Ruleset::shape`](super::render::Ruleset::shape)): that needs no listing of the speaker's own
//! after each change, which at 10,000 Services costs more than the change. Its **content** (a
//! digest of every chain's rules and every set's elements, in nft's own words) is adopted from the
//! first read-back whose shape matches after a change, and must stay the same until the next
//! change: that notices a rule replaced in place by another.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use serde_json::Value;

/// What a read-back found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// Rules per chain (`chain <name>`) and elements per set (`set <name>`); affinity sets count
    /// 0, their elements are clients, not configuration.
    pub shape: BTreeMap<String, usize>,
    /// A digest of each chain's rules and each fixed set's elements.
    pub content: BTreeMap<String, u64>,
}

fn digest(parts: &mut Vec<String>) -> u64 {
    parts.sort();
    // SipHash with fixed keys: the same content gives the same digest within and across runs.
    let mut h = DefaultHasher::new();
    parts.hash(&mut h);
    h.finish()
}

/// Reads nft's JSON listing (`None` if it is not one).
pub fn read(nft_json: &str) -> Option<Listing> {
    let v: Value = serde_json::from_str(nft_json).ok()?;
    let mut shape = BTreeMap::new();
    let mut rules: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut content = BTreeMap::new();
    for item in v["nftables"].as_array()? {
        if let Some(rule) = item.get("rule") {
            let key = format!("chain {}", rule["chain"].as_str()?);
            *shape.entry(key.clone()).or_insert(0) += 1;
            // Rules keep their order: number them so sorting does not hide a reordering.
            let list = rules.entry(key).or_default();
            list.push(format!("{:06} {}", list.len(), rule["expr"]));
        } else if let Some(chain) = item.get("chain") {
            let key = format!("chain {}", chain["name"].as_str()?);
            shape.entry(key.clone()).or_insert(0);
            rules.entry(key).or_default();
        } else if let Some(set) = item.get("set").or_else(|| item.get("map")) {
            let name = set["name"].as_str()?;
            let elements = set["elem"].as_array();
            if name.starts_with("aff/") {
                shape.insert(format!("set {name}"), 0);
                continue;
            }
            shape.insert(format!("set {name}"), elements.map_or(0, Vec::len));
            let mut parts: Vec<String> = elements.into_iter().flatten().map(ToString::to_string).collect();
            content.insert(format!("set {name}"), digest(&mut parts));
        }
    }
    for (key, mut list) in rules {
        content.insert(key, digest(&mut list));
    }
    Some(Listing { shape, content })
}

/// What a read-back says about the table the speaker applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// As applied; `adopt` is the content to hold it to from now on (the first read-back after a
    /// change), if there is a new one.
    Intact {
        /// Content to adopt as the reference.
        adopt: Option<BTreeMap<String, u64>>,
    },
    /// Changed or deleted by someone else (or unreadable): put the whole table back.
    Repair,
}

/// Judges a read-back: the `listed` table must have the `expected` shape and, once a content was
/// `adopted`, that content.
pub fn verdict(
    expected: &BTreeMap<String, usize>,
    adopted: Option<&BTreeMap<String, u64>>,
    listed: Option<Listing>,
) -> Verdict {
    match listed {
        Some(l) if l.shape == *expected => match adopted {
            None => Verdict::Intact { adopt: Some(l.content) },
            Some(c) if *c == l.content => Verdict::Intact { adopt: None },
            Some(_) => Verdict::Repair,
        },
        _ => Verdict::Repair,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"table": {"family": "inet", "name": "ferrolb"}},
        {"map": {"family": "inet", "name": "vips_v4", "table": "ferrolb", "elem": [[1, 2], [3, 4]]}},
        {"set": {"family": "inet", "name": "refused_v4", "table": "ferrolb"}},
        {"set": {"family": "inet", "name": "aff/d/web/tcp/80/v4/0/60", "table": "ferrolb", "elem": ["198.51.100.9"]}},
        {"chain": {"family": "inet", "table": "ferrolb", "name": "nat_prerouting"}},
        {"chain": {"family": "inet", "table": "ferrolb", "name": "svc/d/web/tcp/80/v4"}},
        {"rule": {"family": "inet", "table": "ferrolb", "chain": "nat_prerouting", "expr": [{"accept": null}]}},
        {"rule": {"family": "inet", "table": "ferrolb", "chain": "nat_prerouting", "expr": [{"drop": null}]}}]}"#;

    #[test]
    fn counts_rules_elements_and_empty_chains() {
        let l = read(LISTING).unwrap();
        assert_eq!(l.shape["set vips_v4"], 2);
        assert_eq!(l.shape["set refused_v4"], 0);
        assert_eq!(l.shape["set aff/d/web/tcp/80/v4/0/60"], 0, "affinity members are not configuration");
        assert_eq!(l.shape["chain nat_prerouting"], 2);
        assert_eq!(l.shape["chain svc/d/web/tcp/80/v4"], 0, "a flushed chain still shows");
        assert_eq!(read("not json"), None);
    }

    #[test]
    fn content_changes_with_a_rule_replaced_or_reordered_not_with_clients() {
        let l = read(LISTING).unwrap();
        assert_eq!(read(LISTING).unwrap().content, l.content, "stable");
        let replaced = read(&LISTING.replace(r#"[{"drop": null}]"#, r#"[{"reject": null}]"#)).unwrap();
        assert_eq!(replaced.shape, l.shape);
        assert_ne!(replaced.content["chain nat_prerouting"], l.content["chain nat_prerouting"]);
        let swapped = LISTING
            .replace(r#"[{"accept": null}]"#, "X")
            .replace(r#"[{"drop": null}]"#, r#"[{"accept": null}]"#)
            .replace("X", r#"[{"drop": null}]"#);
        assert_ne!(read(&swapped).unwrap().content, l.content, "order matters");
        let element = read(&LISTING.replace("[3, 4]", "[3, 5]")).unwrap();
        assert_ne!(element.content["set vips_v4"], l.content["set vips_v4"]);
        let client = read(&LISTING.replace("198.51.100.9", "198.51.100.10")).unwrap();
        assert_eq!(client.content, l.content, "affinity members come and go");
    }

    #[test]
    fn the_repair_verdict() {
        let l = read(LISTING).unwrap();
        let shape = l.shape.clone();
        // The first read-back after a change adopts the content it finds.
        assert_eq!(verdict(&shape, None, Some(l.clone())), Verdict::Intact { adopt: Some(l.content.clone()) });
        assert_eq!(verdict(&shape, Some(&l.content), Some(l.clone())), Verdict::Intact { adopt: None });
        // A rule replaced in place: same shape, other content.
        let replaced = read(&LISTING.replace(r#"{"drop": null}"#, r#"{"accept": null}"#)).unwrap();
        assert_eq!(verdict(&shape, Some(&l.content), Some(replaced)), Verdict::Repair);
        // A rule deleted, the table gone, or nft's answer unreadable.
        let mut fewer = shape.clone();
        *fewer.get_mut("chain nat_prerouting").unwrap() = 1;
        assert_eq!(verdict(&fewer, None, Some(l)), Verdict::Repair);
        assert_eq!(verdict(&shape, None, None), Verdict::Repair);
    }
}
