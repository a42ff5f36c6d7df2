//! Noticing a host firewall that would drop ferrolb's forwarded traffic — the classic reason
//! NodePorts "don't work": a FORWARD policy of drop (as Docker sets) or an INPUT policy of drop.
//! ferrolb never rewrites rules it does not own; it says so (log, metric, Warning Event).

use serde_json::Value;

use super::render::TABLE;

/// Base chains of other tables whose policy drops what ferrolb forwards, as readable names
/// (`ip filter FORWARD: hook forward, policy drop`), from `nft -j list chains`.
pub fn blocking_chains(nft_json: &str) -> Vec<String> {
    let Ok(v) = serde_json::from_str::<Value>(nft_json) else { return Vec::new() };
    let mut out: Vec<String> = v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item.get("chain"))
        .filter(|c| {
            c["table"] != TABLE && c["policy"] == "drop" && matches!(c["hook"].as_str(), Some("forward" | "input"))
        })
        .map(|c| {
            format!(
                "{} {} {}: hook {}, policy drop",
                c["family"].as_str().unwrap_or_default(),
                c["table"].as_str().unwrap_or_default(),
                c["name"].as_str().unwrap_or_default(),
                c["hook"].as_str().unwrap_or_default()
            )
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_policies_of_other_tables_are_found() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "hook": "forward", "prio": 0, "policy": "drop"}},
            {"chain": {"family": "ip", "table": "filter", "name": "OUTPUT", "hook": "output", "prio": 0, "policy": "drop"}},
            {"chain": {"family": "inet", "table": "ferrolb", "name": "x", "hook": "forward", "prio": -10, "policy": "drop"}},
            {"chain": {"family": "ip", "table": "filter", "name": "INPUT", "hook": "input", "prio": 0, "policy": "accept"}},
            {"chain": {"family": "ip", "table": "filter", "name": "DOCKER-USER"}}]}"#;
        assert_eq!(blocking_chains(json), ["ip filter FORWARD: hook forward, policy drop"]);
        assert!(blocking_chains("not json").is_empty());
    }
}
