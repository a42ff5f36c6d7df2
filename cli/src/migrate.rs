//! `ferrolb migrate`: MetalLB's IPAddressPool and L2Advertisement objects translated to IPPools,
//! with a note for everything that does not translate exactly. Where MetalLB's meaning cannot be
//! kept, the translation errs towards fewer Services or nodes rather than more, and says so.

use std::collections::BTreeMap;

use ferrolb_crds::selector;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::{Value, json};

/// The IPPools, and the notes on what could not be translated as it was.
#[derive(Debug, Default)]
pub struct Migration {
    /// IPPool objects.
    pub pools: Vec<Value>,
    /// One line each.
    pub notes: Vec<String>,
}

fn selectors(v: &Value) -> Vec<LabelSelector> {
    v.as_array().into_iter().flatten().filter_map(|s| serde_json::from_value(s.clone()).ok()).collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(str::to_string)).collect()
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

/// Translates every MetalLB object among `docs`.
pub fn migrate(docs: &[Value]) -> Migration {
    let mut m = Migration::default();
    let pools: Vec<&Value> = docs.iter().filter(|d| crate::yaml::kind(d) == "IPAddressPool").collect();
    let l2: Vec<&Value> = docs.iter().filter(|d| crate::yaml::kind(d) == "L2Advertisement").collect();
    for d in docs {
        let (kind, name) = (crate::yaml::kind(d), crate::yaml::name(d));
        match kind {
            "IPAddressPool" | "L2Advertisement" => {}
            "BGPAdvertisement" | "BGPPeer" | "BFDProfile" | "Community" => m.notes.push(format!(
                "{kind} {name}: not translated yet — write ferrolb's BGPPeer or the pool's bgp section by hand (docs/MIGRATING-FROM-METALLB.md)"
            )),
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
        let mut out = json!({
            "addresses": strings(&spec["addresses"]),
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
        // Which L2Advertisements announce this pool: by name, by the pool's labels, or all pools
        // when an advertisement names none.
        let pool_labels = labels(pool);
        let applies: Vec<&&Value> = l2
            .iter()
            .filter(|ad| {
                let by_name = strings(&ad["spec"]["ipAddressPools"]);
                let by_label = selectors(&ad["spec"]["ipAddressPoolSelectors"]);
                (by_name.is_empty() && by_label.is_empty())
                    || by_name.contains(&name)
                    || by_label.iter().any(|s| selector::matches(s, &pool_labels).unwrap_or(false))
            })
            .collect();
        match applies.as_slice() {
            [] => {
                out["l2"] = json!({"enabled": false});
                notes.push(format!(
                    "IPAddressPool {name}: no L2Advertisement announces it (in MetalLB it is BGP-only or unannounced); its IPPool has l2.enabled: false"
                ));
            }
            [first, rest @ ..] => {
                if !rest.is_empty() {
                    notes.push(format!(
                        "IPAddressPool {name}: announced by {} L2Advertisements; an IPPool has one announcement setting, taken from {}",
                        applies.len(),
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
        let m = migrate(&fixture("metallb-l2.yaml"));
        assert_eq!(spec(&m, "first-pool")["addresses"], json!(["192.168.10.0/24"]));
        assert_eq!(
            spec(&m, "second-pool")["addresses"],
            json!(["192.168.9.1-192.168.9.5", "fc00:f853:0ccd:e799::/124"])
        );
        // The advertisement names first-pool only: second-pool is not announced over L2.
        assert_eq!(spec(&m, "first-pool")["l2"], json!({"enabled": true}));
        assert_eq!(spec(&m, "second-pool")["l2"], json!({"enabled": false}));
        assert!(m.notes.iter().any(|n| n.contains("IPAddressPool second-pool: no L2Advertisement")), "{:?}", m.notes);
    }

    #[test]
    fn node_selectors_interfaces_allocation_and_pool_selectors() {
        let m = migrate(&fixture("metallb-advanced.yaml"));
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
        assert!(m.notes.iter().any(|n| n.starts_with("BGPAdvertisement")), "{:?}", m.notes);
        assert!(m.notes.iter().any(|n| n.starts_with("BGPPeer")), "{:?}", m.notes);
    }

    #[test]
    fn every_translated_pool_passes_check() {
        for f in ["metallb-l2.yaml", "metallb-advanced.yaml"] {
            let m = migrate(&fixture(f));
            let (reports, _) = crate::check::check(&m.pools);
            for r in reports {
                assert_eq!(r.problems, Vec::<String>::new(), "{f}: {}", r.name);
            }
        }
    }
}
