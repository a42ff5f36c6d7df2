//! MetalLB's BGP objects: BGPPeer (with its BFDProfile and password) becomes ferrolb's BGPPeer,
//! and the BGPAdvertisements (with Community aliases) of a pool become its `bgp` section.
//! MetalLB picks peers for an advertisement by name; ferrolb by label, so every translated
//! BGPPeer carries [`PEER_LABEL`] with its MetalLB name.

use std::collections::BTreeMap;

use ferrolb_crds::ippool::COMMUNITY_PATTERN;
use serde_json::{Value, json};

use super::{labels, one_selector, selectors, strings};

/// The label that carries a translated BGPPeer's MetalLB name, for pools' `peerSelector`.
pub const PEER_LABEL: &str = "ferrolb.io/metallb-peer";

/// MetalLB's BFD defaults (its BFDProfile fields left out).
const BFD_DEFAULT_MS: u64 = 300;
const BFD_DEFAULT_MULTIPLIER: u64 = 3;

/// ferrolb BGPPeers (and Secrets for inline passwords, in `namespace`) for MetalLB's BGPPeers.
pub fn peers(docs: &[&Value], profiles: &[&Value], namespace: &str, notes: &mut Vec<String>) -> Vec<Value> {
    let mut out = Vec::new();
    for peer in docs {
        let name = crate::yaml::name(peer).to_string();
        let s = &peer["spec"];
        let what = format!("BGPPeer {name}");
        let (Some(address), Some(peer_asn), Some(my_asn)) =
            (s["peerAddress"].as_str(), s["peerASN"].as_u64(), s["myASN"].as_u64())
        else {
            notes.push(format!(
                "{what}: without peerAddress, peerASN and myASN (dynamicASN is not supported) it is left out"
            ));
            continue;
        };
        let mut spec = json!({"peerAddress": address, "peerASN": peer_asn, "myASN": my_asn});
        if let Some(port) = s["peerPort"].as_u64().filter(|p| *p != 179) {
            spec["port"] = json!(port);
        }
        for key in ["holdTime", "keepaliveTime"] {
            if let Some(t) = s[key].as_str() {
                spec[key] = json!(t);
            }
        }
        if s["ebgpMultiHop"].as_bool() == Some(true) {
            spec["ebgpMultiHop"] = json!(true);
        }
        if s["enableGracefulRestart"].as_bool() == Some(true) {
            spec["gracefulRestart"] = json!(true);
        }
        if let Some(sel) = one_selector(selectors(&s["nodeSelectors"]), &format!("{what} nodeSelectors"), notes) {
            spec["nodeSelector"] = json!(sel);
        }
        if let Some(profile) = s["bfdProfile"].as_str() {
            match profiles.iter().find(|p| crate::yaml::name(p) == profile) {
                Some(p) => spec["bfd"] = bfd(&p["spec"], profile, notes),
                None => notes.push(format!("{what}: BFDProfile {profile} not found among the input; no BFD")),
            }
        }
        let mut secrets = Vec::new();
        if let Some(ref_) = s["passwordSecret"].as_object() {
            let secret = ref_.get("name").and_then(Value::as_str).unwrap_or_default();
            // MetalLB reads the key "password" of a kubernetes.io/basic-auth Secret.
            spec["passwordSecret"] = json!({"name": secret, "key": "password"});
            notes.push(format!(
                "{what}: its password Secret {secret} must be in ferrolb's namespace ({namespace}); copy it there from MetalLB's"
            ));
        } else if let Some(password) = s["password"].as_str().filter(|p| !p.is_empty()) {
            let secret = format!("bgp-{name}");
            secrets.push(json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": secret, "namespace": namespace},
                "stringData": {"password": password},
            }));
            spec["passwordSecret"] = json!({"name": secret, "key": "password"});
            notes.push(format!(
                "{what}: its inline password moved into Secret {namespace}/{secret} (ferrolb reads passwords only from Secrets)"
            ));
        }
        for (key, why) in [
            ("sourceAddress", "the daemon picks the source address by route"),
            ("routerID", "the node's address is the router ID"),
            ("vrf", "VRFs are not supported"),
            ("connectTime", "the daemon's retry timers apply"),
            ("disableMP", "each family has its own session in ferrolb"),
            ("dynamicASN", "dynamic ASNs are not supported"),
        ] {
            if !s[key].is_null() && s[key] != json!(false) && s[key] != json!("") {
                notes.push(format!("{what}: {key} is not translated ({why})"));
            }
        }
        out.push(json!({
            "apiVersion": "ferrolb.io/v1alpha1", "kind": "BGPPeer",
            "metadata": {"name": name, "labels": {PEER_LABEL: name}},
            "spec": spec,
        }));
        out.extend(secrets);
    }
    out
}

/// ferrolb's `bfd` from a MetalLB BFDProfile's spec.
fn bfd(p: &Value, profile: &str, notes: &mut Vec<String>) -> Value {
    for key in ["echoMode", "passiveMode"] {
        if p[key].as_bool() == Some(true) {
            notes.push(format!("BFDProfile {profile}: {key} is not translated (BIRD runs BFD in asynchronous mode)"));
        }
    }
    for key in ["echoInterval", "minimumTtl"] {
        if !p[key].is_null() {
            notes.push(format!("BFDProfile {profile}: {key} is not translated"));
        }
    }
    json!({
        "enabled": true,
        "receiveIntervalMs": p["receiveInterval"].as_u64().unwrap_or(BFD_DEFAULT_MS),
        "transmitIntervalMs": p["transmitInterval"].as_u64().unwrap_or(BFD_DEFAULT_MS),
        "detectMultiplier": p["detectMultiplier"].as_u64().unwrap_or(BFD_DEFAULT_MULTIPLIER),
    })
}

/// Community aliases of MetalLB's Community objects: name → value.
pub fn aliases(docs: &[&Value]) -> BTreeMap<String, String> {
    docs.iter()
        .flat_map(|d| d["spec"]["communities"].as_array().cloned().unwrap_or_default())
        .filter_map(|c| Some((c["name"].as_str()?.to_string(), c["value"].as_str()?.to_string())))
        .collect()
}

/// A pool's `bgp` section from the BGPAdvertisements that apply to it (None: none does).
pub fn pool_section(
    pool: &Value,
    ads: &[&Value],
    aliases: &BTreeMap<String, String>,
    notes: &mut Vec<String>,
) -> Option<Value> {
    let name = crate::yaml::name(pool).to_string();
    let applies = super::advertising(ads, &name, &labels(pool));
    let (first, rest) = applies.split_first()?;
    let ad_name = crate::yaml::name(first);
    if !rest.is_empty() {
        notes.push(format!(
            "IPAddressPool {name}: advertised by {} BGPAdvertisements; an IPPool has one bgp section, taken from {ad_name}",
            applies.len()
        ));
    }
    let s = &first["spec"];
    let what = format!("BGPAdvertisement {ad_name}");
    let mut bgp = json!({"enabled": true});
    if let Some(sel) = one_selector(selectors(&s["nodeSelectors"]), &format!("{what} nodeSelectors"), notes) {
        bgp["nodeSelector"] = json!(sel);
    }
    let peers = strings(&s["peers"]);
    if !peers.is_empty() {
        bgp["peerSelector"] = json!({"matchExpressions": [{"key": PEER_LABEL, "operator": "In", "values": peers}]});
    }
    // The CRD's own pattern, so that what migrate writes is what the API server admits.
    let pattern = regex::Regex::new(COMMUNITY_PATTERN).expect("a valid constant pattern");
    let mut communities = Vec::new();
    for c in strings(&s["communities"]) {
        let value = aliases.get(&c).cloned().unwrap_or(c.clone());
        // MetalLB writes large communities as "large:A:B:C"; ferrolb as "A:B:C".
        let value = value.strip_prefix("large:").map(str::to_string).unwrap_or(value);
        if pattern.is_match(&value) {
            communities.push(value);
        } else {
            notes.push(format!("{what}: community {c:?} is neither a community nor a known alias; left out"));
        }
    }
    if !communities.is_empty() {
        bgp["communities"] = json!(communities);
    }
    if let Some(lp) = s["localPref"].as_u64() {
        bgp["localPref"] = json!(lp);
    }
    if let Some(l) = s["aggregationLength"].as_u64().filter(|l| *l != 32) {
        bgp["aggregationLength"] = json!(l);
    }
    if let Some(l) = s["aggregationLengthV6"].as_u64().filter(|l| *l != 128) {
        bgp["aggregationLengthV6"] = json!(l);
    }
    Some(bgp)
}
