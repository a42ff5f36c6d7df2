//! `ferrolb check`: IPPool and BGPPeer YAML validated offline. Pools with the controller's own
//! code — the same parser, the same status (address counts, Invalid and Conflicting conditions)
//! the controller would write; peers with the CRD's rules ([`BGPPeerSpec::problems`]); both with
//! what the API server would refuse besides (unknown fields, a wrong version).

use std::collections::BTreeMap;

use ferrolb_controller::allocator::Allocator;
use ferrolb_controller::reconcile::pool_status::desired_status;
use ferrolb_controller::reconcile::read::pool_config;
use ferrolb_crds::bgppeer::BGPPeerSpec;
use ferrolb_crds::{BGPPeer, IPPool};
use serde_json::Value;

/// What `check` found about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// `IPPool` or `BGPPeer`.
    pub kind: &'static str,
    /// The object's name.
    pub name: String,
    /// Problems that make it invalid (or a pool conflicting); empty when it is fine.
    pub problems: Vec<String>,
    /// What it holds: addresses per family as the pool's status would show them (`IPv4 11`), or
    /// the peer's address and ASNs.
    pub summary: Vec<String>,
}

/// Problems every ferrolb object can have: the version and the name.
fn common_problems(doc: &Value, name: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if doc.get("apiVersion").and_then(Value::as_str) != Some("ferrolb.io/v1alpha1") {
        problems.push(format!("apiVersion must be ferrolb.io/v1alpha1, not {}", doc["apiVersion"]));
    }
    if name.is_empty() {
        problems.push("metadata.name is missing".into());
    }
    problems
}

/// The report of one BGPPeer.
fn check_peer(doc: &Value) -> Report {
    let name = crate::yaml::name(doc).to_string();
    let mut problems = common_problems(doc, &name);
    let mut summary = Vec::new();
    match serde_json::from_value::<BGPPeer>(doc.clone()) {
        Ok(peer) => {
            let known = serde_json::to_value(&peer.spec).unwrap_or(Value::Null);
            unknown_fields("spec", &doc["spec"], &known, &mut problems);
            if doc["spec"].get("password").is_some() {
                problems.push("spec.password: passwords come only from a Secret (spec.passwordSecret)".into());
            }
            problems.extend(peer.spec.problems());
            summary.push(peer_summary(&peer.spec));
        }
        Err(e) => problems.push(format!("not a BGPPeer: {e}")),
    }
    Report { kind: "BGPPeer", name, problems, summary }
}

fn peer_summary(s: &BGPPeerSpec) -> String {
    let session = if s.peer_asn == s.my_asn { "iBGP" } else { "eBGP" };
    let mut out = format!("{} AS {} ({session} from AS {})", s.peer_address, s.peer_asn, s.my_asn);
    if s.bfd.as_ref().is_some_and(|b| b.enabled) {
        out.push_str(", BFD");
    }
    if s.password_secret.is_some() {
        out.push_str(", MD5");
    }
    out
}

/// The report for every IPPool and BGPPeer among `docs`, and the other documents (by kind and
/// name), which `check` does not judge.
pub fn check(docs: &[Value]) -> (Vec<Report>, Vec<String>) {
    let mut reports = Vec::new();
    let mut others = Vec::new();
    let mut pools = Vec::new();
    for doc in docs {
        match crate::yaml::kind(doc) {
            "IPPool" => {}
            "BGPPeer" => {
                reports.push(check_peer(doc));
                continue;
            }
            kind => {
                others.push(format!("{kind} {}", crate::yaml::name(doc)));
                continue;
            }
        }
        let name = crate::yaml::name(doc).to_string();
        let mut problems = common_problems(doc, &name);
        match serde_json::from_value::<IPPool>(doc.clone()) {
            Ok(pool) => {
                let known = serde_json::to_value(&pool.spec).unwrap_or(Value::Null);
                unknown_fields("spec", &doc["spec"], &known, &mut problems);
                if pool.spec.priority.is_some_and(|p| p < 0) {
                    problems.push("spec.priority must not be negative".into());
                }
                pools.push((name.clone(), pool, problems.len()));
            }
            Err(e) => problems.push(format!("not an IPPool: {e}")),
        }
        reports.push(Report { kind: "IPPool", name, problems, summary: Vec::new() });
    }
    // The controller's view: the pools in one allocator, which finds overlaps between them.
    let mut alloc = Allocator::new();
    let mut errors: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, pool, _) in &pools {
        let (config, errs) = pool_config(pool, &[]);
        alloc.set_pool(name, config);
        errors.insert(name.clone(), errs);
    }
    let overlaps = alloc.overlaps();
    for (name, pool, _) in &pools {
        let status = desired_status(pool, &alloc, &errors[name], overlaps);
        let Some(report) = reports.iter_mut().find(|r| r.kind == "IPPool" && r.name == *name) else { continue };
        for c in status.conditions.iter().filter(|c| c.type_ != "Ready" && c.status == "True") {
            report.problems.push(format!("{}: {}", c.type_, c.message));
        }
        for (family, counts) in [("IPv4", &status.ipv4), ("IPv6", &status.ipv6)] {
            if let Some(c) = counts {
                report.summary.push(format!("{family} {}", c.total));
            }
        }
    }
    (reports, others)
}

/// Adds a problem for every key of `given` that the typed spec did not keep (`known`), the way
/// the API server's strict field validation refuses them.
fn unknown_fields(path: &str, given: &Value, known: &Value, problems: &mut Vec<String>) {
    let (Some(given), Some(known)) = (given.as_object(), known.as_object()) else { return };
    for (k, v) in given {
        match known.get(k) {
            None => problems.push(format!("unknown field {path}.{k}")),
            Some(kv) if kv.is_object() && !path.ends_with("Selector") && !k.ends_with("Selector") => {
                unknown_fields(&format!("{path}.{k}"), v, kv, problems);
            }
            Some(_) => {}
        }
    }
}

/// The report as text, one line an object (or a problem); whether every object passed.
pub fn render(reports: &[Report], others: &[String]) -> (String, bool) {
    let mut out = String::new();
    for r in reports {
        if r.problems.is_empty() {
            out.push_str(&format!("ok       {} {}: {}\n", r.kind, r.name, r.summary.join(", ")));
        } else {
            for p in &r.problems {
                out.push_str(&format!("invalid  {} {}: {p}\n", r.kind, r.name));
            }
        }
    }
    for o in others {
        out.push_str(&format!("skipped  {o}: neither an IPPool nor a BGPPeer\n"));
    }
    (out, reports.iter().all(|r| r.problems.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(yaml: &str) -> Vec<Report> {
        check(&crate::yaml::documents("t", yaml).unwrap()).0
    }

    #[test]
    fn a_good_pool_shows_its_counts() {
        let r = run(
            "apiVersion: ferrolb.io/v1alpha1\nkind: IPPool\nmetadata: {name: home}\nspec:\n  addresses: [192.168.1.240-192.168.1.250, fd00:10::/120]\n",
        );
        assert_eq!(r[0].problems, Vec::<String>::new());
        // The /120's first address is its subnet-router anycast address, never handed out.
        assert_eq!(r[0].summary, ["IPv4 11", "IPv6 255"]);
        let r = run(
            "apiVersion: ferrolb.io/v1alpha1\nkind: IPPool\nmetadata: {name: lo}\nspec:\n  addresses: [127.0.0.0/30, 198.51.100.0/30]\n",
        );
        assert!(
            r[0].problems[0].contains("never handed out: 127.0.0.0-127.255.255.255 (loopback)"),
            "{:?}",
            r[0].problems
        );
    }

    #[test]
    fn bad_entries_unknown_fields_and_overlaps_are_named() {
        let r = run(
            "apiVersion: ferrolb.io/v1alpha1\nkind: IPPool\nmetadata: {name: a}\nspec:\n  addresses: [192.168.1.0/24, 192.168.300.1]\n  autoAsign: false\n  l2: {interface: [eth0]}\n---\napiVersion: ferrolb.io/v1alpha1\nkind: IPPool\nmetadata: {name: b}\nspec: {addresses: [192.168.1.128/25]}\n",
        );
        let a = r[0].problems.join("\n");
        assert!(a.contains("192.168.300.1"), "{a}");
        assert!(a.contains("unknown field spec.autoAsign"), "{a}");
        assert!(a.contains("unknown field spec.l2.interface"), "{a}");
        assert!(a.contains("Conflicting: addresses overlap IPPool \"b\""), "{a}");
        assert!(r[1].problems.iter().any(|p| p.contains("overlap IPPool \"a\"")), "{:?}", r[1]);
    }

    #[test]
    fn a_pool_without_addresses_or_of_another_version_is_invalid() {
        let r = run("apiVersion: ferrolb.io/v1\nkind: IPPool\nmetadata: {name: x}\nspec: {addresses: []}\n");
        let p = r[0].problems.join("\n");
        assert!(p.contains("apiVersion must be ferrolb.io/v1alpha1"), "{p}");
        assert!(p.contains("no usable addresses"), "{p}");
        let (text, ok) = render(&r, &["Service web".into()]);
        assert!(!ok);
        assert!(text.contains("skipped  Service web"), "{text}");
    }

    #[test]
    fn bgppeers_are_checked_by_the_crds_rules() {
        let r = run(
            "apiVersion: ferrolb.io/v1alpha1\nkind: BGPPeer\nmetadata: {name: tor}\nspec: {peerAddress: 198.51.100.1, peerASN: 64512, myASN: 64513, bfd: {}, passwordSecret: {name: md5}}\n---\napiVersion: ferrolb.io/v1alpha1\nkind: BGPPeer\nmetadata: {name: bad}\nspec: {peerAddress: 198.51.100.300, peerASN: 64512, myASN: 0, holdTime: 9s, keepaliveTime: 10s, password: s3cret, peerPort: 180}\n",
        );
        assert_eq!((r[0].kind, r[0].problems.len()), ("BGPPeer", 0), "{:?}", r[0]);
        assert_eq!(r[0].summary, ["198.51.100.1 AS 64512 (eBGP from AS 64513), BFD, MD5"]);
        let bad = r[1].problems.join("\n");
        for expected in [
            "unknown field spec.password",
            "passwords come only from a Secret",
            "unknown field spec.peerPort",
            "spec.peerAddress \"198.51.100.300\"",
            "spec.myASN: must be between 1 and 4294967295",
            "keepaliveTime must be shorter than holdTime",
        ] {
            assert!(bad.contains(expected), "{expected}: {bad}");
        }
        let (text, ok) = render(&r, &[]);
        assert!(!ok);
        assert!(text.contains("ok       BGPPeer tor: 198.51.100.1 AS 64512"), "{text}");
        assert!(text.contains("invalid  BGPPeer bad: spec.myASN"), "{text}");
        // A required field missing is said as serde says it.
        let missing = run(
            "apiVersion: ferrolb.io/v1alpha1\nkind: BGPPeer\nmetadata: {name: m}\nspec: {peerAddress: 198.51.100.1}\n",
        );
        assert!(missing[0].problems[0].contains("missing field `peerASN`"), "{:?}", missing[0]);
    }
}
