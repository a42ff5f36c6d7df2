//! Reading ferrolb's table back from the kernel to notice what someone else changed: the shape
//! of `nft -j list table inet ferrolb` (rules per chain, elements per map or set) against the
//! shape of the table the speaker applied ([`Ruleset::shape`](super::render::Ruleset::shape)).
//! Comparing shapes rather than listings means the speaker needs no listing of its own after
//! each change, which at 10,000 Services costs more than the change.

use std::collections::BTreeMap;

use serde_json::Value;

/// The shape of a listing (`None` if it is not nft's JSON). Affinity sets count 0: their
/// elements are clients, not configuration.
pub fn shape(nft_json: &str) -> Option<BTreeMap<String, usize>> {
    let v: Value = serde_json::from_str(nft_json).ok()?;
    let mut shape = BTreeMap::new();
    for item in v["nftables"].as_array()? {
        if let Some(rule) = item.get("rule") {
            *shape.entry(format!("chain {}", rule["chain"].as_str()?)).or_insert(0) += 1;
        } else if let Some(chain) = item.get("chain") {
            shape.entry(format!("chain {}", chain["name"].as_str()?)).or_insert(0);
        } else if let Some(set) = item.get("set").or_else(|| item.get("map")) {
            let name = set["name"].as_str()?;
            let count = if name.starts_with("aff/") { 0 } else { set["elem"].as_array().map_or(0, Vec::len) };
            shape.insert(format!("set {name}"), count);
        }
    }
    Some(shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_rules_elements_and_empty_chains() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"table": {"family": "inet", "name": "ferrolb"}},
            {"map": {"family": "inet", "name": "vips_v4", "table": "ferrolb", "elem": [[1, 2], [3, 4]]}},
            {"set": {"family": "inet", "name": "refused_v4", "table": "ferrolb"}},
            {"set": {"family": "inet", "name": "aff/d/web/tcp/80/v4/0/60", "table": "ferrolb", "elem": ["198.51.100.9"]}},
            {"chain": {"family": "inet", "table": "ferrolb", "name": "nat_prerouting"}},
            {"chain": {"family": "inet", "table": "ferrolb", "name": "svc/d/web/tcp/80/v4"}},
            {"rule": {"family": "inet", "table": "ferrolb", "chain": "nat_prerouting", "expr": []}},
            {"rule": {"family": "inet", "table": "ferrolb", "chain": "nat_prerouting", "expr": []}}]}"#;
        let shape = shape(json).unwrap();
        assert_eq!(shape["set vips_v4"], 2);
        assert_eq!(shape["set refused_v4"], 0);
        assert_eq!(shape["set aff/d/web/tcp/80/v4/0/60"], 0, "affinity members are not configuration");
        assert_eq!(shape["chain nat_prerouting"], 2);
        assert_eq!(shape["chain svc/d/web/tcp/80/v4"], 0, "a flushed chain still shows");
        assert_eq!(super::shape("not json"), None);
    }
}
