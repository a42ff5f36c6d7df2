//! Any Service annotations and address fields, as a user may write them: the controller's reading
//! of the request and the speaker's reading of the Service never panic, and a request that reads
//! holds at most one address per family, each of a family the Service asks for or may get.
//!
//! Input: lines `N=value`; N picks the field (an annotation under ferrolb's name or one of
//! MetalLB's, or `spec.loadBalancerIP`, `ipFamilies`, `ipFamilyPolicy`).
#![no_main]

use std::collections::BTreeMap;

use ferrolb_controller::reconcile::read;
use k8s_openapi::api::core::v1::Service;
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};

const ANNOTATIONS: [&str; 9] = [
    "ferrolb.io/pool",
    "ferrolb.io/ips",
    "ferrolb.io/sharing-key",
    "metallb.io/address-pool",
    "metallb.io/loadBalancerIPs",
    "metallb.io/allow-shared-ip",
    "metallb.universe.tf/address-pool",
    "metallb.universe.tf/loadBalancerIPs",
    "ferrolb.io/allocated-from",
];

fuzz_target!(|text: &str| {
    let mut annotations = Map::new();
    let mut spec = json!({"type": "LoadBalancer", "ports": [{"port": 80}]});
    for line in text.lines() {
        let Some((n, value)) = line.split_once('=') else { continue };
        let Ok(n) = n.parse::<usize>() else { continue };
        match n {
            n if n < ANNOTATIONS.len() => {
                annotations.insert(ANNOTATIONS[n].to_string(), json!(value));
            }
            9 => spec["loadBalancerIP"] = json!(value),
            10 => spec["ipFamilies"] = json!(value.split(',').collect::<Vec<_>>()),
            11 => spec["ipFamilyPolicy"] = json!(value),
            _ => {}
        }
    }
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "s", "namespace": "n", "annotations": Value::Object(annotations)},
        "spec": spec,
    }))
    .expect("a Service of strings");
    if let Ok(req) = read::parse(&svc, &BTreeMap::new()) {
        let families: std::collections::BTreeSet<_> = req.ips.iter().map(ferrolb_crds::Family::of).collect();
        assert_eq!(families.len(), req.ips.len(), "two requested addresses of one family: {:?}", req.ips);
        assert!(!req.families.is_empty());
    }
    let _ = read::request_or_plain(&svc, &BTreeMap::new());
    let _ = ferrolb_speaker::state::read::service(&svc, &[]);
});
