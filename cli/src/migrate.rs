//! `ferrolb migrate`: MetalLB's IPAddressPool, L2Advertisement and BGP objects translated to
//! IPPools and BGPPeers, with a note for everything that does not translate exactly. Where MetalLB's meaning cannot be
//! kept, the translation errs towards fewer Services or nodes rather than more, and says so.

mod bgp;

use std::collections::BTreeMap;

use ferrolb_controller::allocator::reserved::{special, subnet_router_anycast, subtract};
use ferrolb_crds::addresses::parse_entry;
use ferrolb_crds::selector;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::{Value, json};

pub use self::bgp::PEER_LABEL;

/// The IPPools, the BGPPeers (with Secrets for inline passwords), and the notes on what could not
/// be translated as it was.
#[derive(Debug, Default)]
pub struct Migration {
    /// IPPool objects.
    pub pools: Vec<Value>,
    /// BGPPeer objects, each followed by the Secret made for its inline password, if any.
    pub peers: Vec<Value>,
    /// One line each.
    pub notes: Vec<String>,
}

fn selectors(v: &Value) -> Vec<LabelSelector> {
    v.as_array().into_iter().flatten().filter_map(|s| serde_json::from_value(s.clone()).ok()).collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(str::to_string)).collect()
}

/// The advertisements (L2 or BGP) that apply to a pool: by name, by the pool's labels, or all
/// pools when an advertisement names none.
fn advertising<'a>(ads: &[&'a Value], pool: &str, pool_labels: &BTreeMap<String, String>) -> Vec<&'a Value> {
    ads.iter()
        .copied()
        .filter(|ad| {
            let by_name = strings(&ad["spec"]["ipAddressPools"]);
            let by_label = selectors(&ad["spec"]["ipAddressPoolSelectors"]);
            (by_name.is_empty() && by_label.is_empty())
                || by_name.iter().any(|n| n == pool)
                || by_label.iter().any(|s| selector::matches(s, pool_labels).unwrap_or(false))
        })
        .collect()
}

fn labels(doc: &Value) -> BTreeMap<String, String> {
    doc.pointer("/metadata/labels").and_then(|l| serde_json::from_value(l.clone()).ok()).unwrap_or_default()
}

/// MetalLB ORs the selectors of a list; ferrolb takes one. Keep the first (fewer matches, never
/// more) and say so.
fn one_selector(list: Vec<LabelSelector>, what: &str, notes: &mut Vec<String>) -> Option<LabelSelector> {
    if list.len() > 1 {
        notes.push(format!(
            "{what}: MetalLB matches any of {} selectors, an IPPool takes one; only the first is kept, so what matched only the others no longer does",
            list.len()
        ));
    }
    list.into_iter().next()
}

/// Translates every MetalLB object among `docs`; Secrets made for inline BGP passwords go to
/// `namespace` (ferrolb's).
pub fn migrate(docs: &[Value], namespace: &str) -> Migration {
    let mut m = Migration::default();
    let of_kind = |k: &str| docs.iter().filter(|d| crate::yaml::kind(d) == k).collect::<Vec<_>>();
    let (pools, l2, bgp_ads) = (of_kind("IPAddressPool"), of_kind("L2Advertisement"), of_kind("BGPAdvertisement"));
    let aliases = bgp::aliases(&of_kind("Community"));
    m.peers = bgp::peers(&of_kind("BGPPeer"), &of_kind("BFDProfile"), namespace, &mut m.notes);
    for d in docs {
        let (kind, name) = (crate::yaml::kind(d), crate::yaml::name(d));
        match kind {
            "IPAddressPool" | "L2Advertisement" | "BGPAdvertisement" | "BGPPeer" | "BFDProfile" | "Community" => {}
            "ConfigMap" => m.notes.push(format!(
                "ConfigMap {name}: MetalLB's old ConfigMap configuration is not read; convert it to CRs with MetalLB's own tooling first"
            )),
            other => m.notes.push(format!("{other} {name}: not a MetalLB object; left out")),
        }
    }
    for pool in pools {
        let name = crate::yaml::name(pool).to_string();
        let spec = &pool["spec"];
        let sa = &spec["serviceAllocation"];
        let mut notes = Vec::new();
        let namespace_selector = one_selector(
            selectors(&sa["namespaceSelectors"]),
            &format!("IPAddressPool {name} namespaceSelectors"),
            &mut notes,
        );
        let service_selector = one_selector(
            selectors(&sa["serviceSelectors"]),
            &format!("IPAddressPool {name} serviceSelectors"),
            &mut notes,
        );
        let mut allocation = serde_json::Map::new();
        let namespaces = strings(&sa["namespaces"]);
        if !namespaces.is_empty() {
            allocation.insert("namespaces".into(), json!(namespaces));
        }
        if let Some(s) = namespace_selector {
            allocation.insert("namespaceSelector".into(), json!(s));
        }
        if let Some(s) = service_selector {
            allocation.insert("serviceSelector".into(), json!(s));
        }
        let addresses = strings(&spec["addresses"]);
        for entry in &addresses {
            if let Some(ip) = subnet_router_anycast(entry) {
                notes.push(format!(
                    "IPAddressPool {name}: ferrolb never hands out {ip}, the subnet-router anycast address of {entry}; MetalLB does"
                ));
            }
            if let Ok(range) = parse_entry(entry)
                && let (_, cut) = subtract(&[range], &special())
                && !cut.is_empty()
            {
                notes.push(format!("IPAddressPool {name}: ferrolb never hands out {} of {entry}", cut.join(", ")));
            }
        }
        let mut out = json!({
            "addresses": addresses,
            "autoAssign": spec["autoAssign"].as_bool().unwrap_or(true),
            "avoidBuggyIPs": spec["avoidBuggyIPs"].as_bool().unwrap_or(false),
        });
        // MetalLB: a lower priority number is tried first, as in ferrolb; 0 is MetalLB's "unset"
        // (an omitted Go int), which ferrolb writes by leaving the field out.
        match sa["priority"].as_i64() {
            Some(p) if p > 0 => out["priority"] = json!(p),
            Some(p) if p < 0 => notes.push(format!(
                "IPAddressPool {name}: serviceAllocation.priority {p} is negative; left unset (tried after every pool with a priority)"
            )),
            _ => {}
        }
        // A MetalLB pool with a serviceAllocation — even one with only a priority — is tried
        // before pools without one for the Services it admits; so is an IPPool with one.
        if sa.is_object() {
            out["serviceAllocation"] = Value::Object(allocation);
        }
        let bgp = bgp::pool_section(pool, &bgp_ads, &aliases, &mut notes);
        match advertising(&l2, &name, &labels(pool)).as_slice() {
            [] => {
                out["l2"] = json!({"enabled": false});
                if bgp.is_none() {
                    notes.push(format!(
                        "IPAddressPool {name}: no L2Advertisement or BGPAdvertisement announces it; its IPPool has l2.enabled: false"
                    ));
                }
            }
            [first, rest @ ..] => {
                if !rest.is_empty() {
                    notes.push(format!(
                        "IPAddressPool {name}: announced by {} L2Advertisements; an IPPool has one announcement setting, taken from {}",
                        rest.len() + 1,
                        crate::yaml::name(first)
                    ));
                }
                let mut settings = json!({"enabled": true});
                let what = format!("L2Advertisement {} nodeSelectors", crate::yaml::name(first));
                if let Some(s) = one_selector(selectors(&first["spec"]["nodeSelectors"]), &what, &mut notes) {
                    settings["nodeSelector"] = json!(s);
                }
                let interfaces = strings(&first["spec"]["interfaces"]);
                if !interfaces.is_empty() {
                    settings["interfaces"] = json!(interfaces);
                }
                out["l2"] = settings;
            }
        }
        if let Some(b) = bgp {
            out["bgp"] = b;
        }
        m.notes.extend(notes);
        m.pools.push(
            json!({"apiVersion": "ferrolb.io/v1alpha1", "kind": "IPPool", "metadata": {"name": name}, "spec": out}),
        );
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<Value> {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        crate::yaml::documents(name, &std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn spec<'a>(m: &'a Migration, name: &str) -> &'a Value {
        &m.pools.iter().find(|p| p["metadata"]["name"] == name).unwrap_or_else(|| panic!("{name}: {:?}", m.pools))["spec"]
    }

    #[test]
    fn metallbs_documented_pools_and_l2_advertisement() {
        let m = migrate(&fixture("metallb-l2.yaml"), "ferrolb-system");
        assert_eq!(spec(&m, "first-pool")["addresses"], json!(["192.168.10.0/24"]));
        assert_eq!(
            spec(&m, "second-pool")["addresses"],
            json!(["192.168.9.1-192.168.9.5", "fc00:f853:0ccd:e799::/124"])
        );
        // The advertisement names first-pool only: second-pool is not announced over L2.
        assert_eq!(spec(&m, "first-pool")["l2"], json!({"enabled": true}));
        assert_eq!(spec(&m, "second-pool")["l2"], json!({"enabled": false}));
        assert!(m.notes.iter().any(|n| n.contains("IPAddressPool second-pool: no L2Advertisement")), "{:?}", m.notes);
        // MetalLB hands out an IPv6 subnet's first address; ferrolb says it does not.
        assert!(noted(&m, "ferrolb never hands out fc00:f853:ccd:e799::, the subnet-router anycast"), "{:?}", m.notes);
        assert_eq!(m.notes.len(), 2, "{:?}", m.notes);
    }

    #[test]
    fn node_selectors_interfaces_allocation_and_pool_selectors() {
        let m = migrate(&fixture("metallb-advanced.yaml"), "ferrolb-system");
        let first = spec(&m, "first-pool");
        assert_eq!(first["l2"]["nodeSelector"], json!({"matchLabels": {"kubernetes.io/hostname": "NodeA"}}));
        assert!(m.notes.iter().any(|n| n.contains("matches any of 2 selectors")), "{:?}", m.notes);
        let second = spec(&m, "second-pool");
        assert_eq!(second["l2"]["interfaces"], json!(["eth0", "eth1"]));
        let labelled = spec(&m, "doc-example-l2-label");
        assert_eq!(labelled["l2"]["enabled"], true, "selected by its zone label");
        let sa = spec(&m, "ns-pool");
        assert_eq!(sa["priority"], 50);
        assert_eq!(sa["autoAssign"], false);
        assert_eq!(sa["avoidBuggyIPs"], true);
        assert_eq!(sa["serviceAllocation"]["namespaces"], json!(["namespace-a", "namespace-b"]));
        assert_eq!(sa["serviceAllocation"]["namespaceSelector"], json!({"matchLabels": {"foo": "bar"}}));
        assert_eq!(
            sa["serviceAllocation"]["serviceSelector"],
            json!({"matchExpressions": [{"key": "serviceType", "operator": "In", "values": ["web"]}]})
        );
        // first-pool is advertised over BGP too, to the one peer, whose fields carry over.
        assert_eq!(spec(&m, "first-pool")["bgp"], json!({"enabled": true}));
        assert_eq!(m.peers[0]["spec"], json!({"peerAddress": "10.0.0.1", "peerASN": 64501, "myASN": 64500}));
    }

    fn peer<'a>(m: &'a Migration, name: &str) -> &'a Value {
        m.peers
            .iter()
            .find(|p| p["kind"] == "BGPPeer" && p["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{name}: {:?}", m.peers))
    }

    fn noted(m: &Migration, text: &str) -> bool {
        m.notes.iter().any(|n| n.contains(text))
    }

    #[test]
    fn metallbs_bgp_peers_with_bfd_profiles_and_passwords() {
        let m = migrate(&fixture("metallb-bgp.yaml"), "lb");
        let a = peer(&m, "tor-a");
        assert_eq!(a["metadata"]["labels"], json!({PEER_LABEL: "tor-a"}));
        assert_eq!(
            a["spec"],
            json!({
                "peerAddress": "172.30.0.3", "peerASN": 64512, "myASN": 64512, "port": 180,
                "holdTime": "90s", "keepaliveTime": "30s", "gracefulRestart": true,
                "nodeSelector": {"matchLabels": {"rack": "frontend"}},
                "bfd": {"enabled": true, "receiveIntervalMs": 380, "transmitIntervalMs": 270, "detectMultiplier": 3},
                "passwordSecret": {"name": "bgp-tor-a", "key": "password"},
            })
        );
        // The inline password moves into a Secret in ferrolb's namespace, right after its peer.
        let secret = m.peers.iter().find(|d| d["kind"] == "Secret").unwrap();
        assert_eq!(secret["metadata"], json!({"name": "bgp-tor-a", "namespace": "lb"}));
        assert_eq!(secret["stringData"], json!({"password": "yourPassword"}));
        assert!(noted(&m, "inline password moved into Secret lb/bgp-tor-a"), "{:?}", m.notes);
        let b = peer(&m, "tor-b");
        assert_eq!(b["spec"]["passwordSecret"], json!({"name": "tor-b-password", "key": "password"}));
        assert_eq!(b["spec"]["ebgpMultiHop"], true);
        assert!(noted(&m, "Secret tor-b-password must be in ferrolb's namespace (lb)"), "{:?}", m.notes);
        assert!(noted(&m, "BGPPeer tor-b: sourceAddress is not translated"), "{:?}", m.notes);
        assert!(noted(&m, "BFDProfile fast: passiveMode is not translated"), "{:?}", m.notes);
        assert!(noted(&m, "BFDProfile fast: minimumTtl is not translated"), "{:?}", m.notes);
        assert!(!noted(&m, "not translated yet"), "{:?}", m.notes);
    }

    #[test]
    fn metallbs_bgp_advertisements_become_the_pools_bgp_sections() {
        let m = migrate(&fixture("metallb-bgp.yaml"), "lb");
        let bgp = &spec(&m, "bgp-pool")["bgp"];
        assert_eq!(
            *bgp,
            json!({
                "enabled": true,
                "nodeSelector": {"matchLabels": {"rack": "frontend"}},
                "peerSelector": {"matchExpressions": [{"key": PEER_LABEL, "operator": "In", "values": ["tor-a"]}]},
                // Aliases resolved, MetalLB's "large:" prefix dropped, the unknown alias left out.
                "communities": ["1234:1", "65535:65282", "64512:1:2"],
                "localPref": 100,
            })
        );
        assert!(noted(&m, "community \"no-such-alias\""), "{:?}", m.notes);
        assert!(
            noted(&m, "advertised by 2 BGPAdvertisements; an IPPool has one bgp section, taken from local"),
            "{:?}",
            m.notes
        );
        assert_eq!(spec(&m, "bgp-pool")["l2"], json!({"enabled": false}), "BGP only, as in MetalLB");
        assert!(!noted(&m, "IPAddressPool bgp-pool: no L2Advertisement"), "{:?}", m.notes);
        // L2 and BGP at once; the BGP advertisement found by the pool's label.
        let both = spec(&m, "both");
        assert_eq!(both["l2"], json!({"enabled": true}));
        assert_eq!(both["bgp"], json!({"enabled": true, "aggregationLengthV6": 124}));
    }

    #[test]
    fn every_translated_object_passes_check() {
        for f in ["metallb-l2.yaml", "metallb-advanced.yaml", "metallb-bgp.yaml"] {
            let m = migrate(&fixture(f), "ferrolb-system");
            let (reports, _) = crate::check::check(&[m.pools, m.peers].concat());
            for r in reports {
                assert_eq!(r.problems, Vec::<String>::new(), "{f}: {}", r.name);
            }
        }
    }
}
