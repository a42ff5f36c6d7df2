//! The soak's invariants as plain functions of what the API shows (and, at quiet points, of what
//! the soak wrote): no address on two incompatible Services, every Service that fits addressed from
//! its pools, pool status equal to the truth.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ferrolb_crds::IPPool;
use ferrolb_crds::annotations::SHARING_KEY;
use k8s_openapi::api::core::v1::Service;

use super::world::World;

/// A Service as read from the API, reduced to what the checks need.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    /// `namespace/name`.
    pub name: String,
    /// The addresses in its status.
    pub ips: Vec<IpAddr>,
    /// Its (protocol, port) pairs.
    pub ports: BTreeSet<(String, i32)>,
    /// Its sharing key (ours or MetalLB's annotation).
    pub key: Option<String>,
    /// Its `externalTrafficPolicy` is Local.
    pub local: bool,
    /// Its selector.
    pub selector: BTreeMap<String, String>,
}

impl Seen {
    /// Reads a Service object.
    pub fn from_service(s: &Service) -> Self {
        let spec = s.spec.clone().unwrap_or_default();
        let annotations = s.metadata.annotations.clone().unwrap_or_default();
        let key = SHARING_KEY.names().find_map(|k| annotations.get(k).filter(|v| !v.is_empty()).cloned());
        Seen {
            name: format!(
                "{}/{}",
                s.metadata.namespace.as_deref().unwrap_or(""),
                s.metadata.name.as_deref().unwrap_or("")
            ),
            ips: s
                .status
                .as_ref()
                .and_then(|st| st.load_balancer.as_ref()?.ingress.clone())
                .into_iter()
                .flatten()
                .filter_map(|i| i.ip?.parse().ok())
                .collect(),
            ports: spec
                .ports
                .unwrap_or_default()
                .into_iter()
                .map(|p| (p.protocol.unwrap_or_else(|| "TCP".into()), p.port))
                .collect(),
            key,
            local: spec.external_traffic_policy.as_deref() == Some("Local"),
            selector: spec.selector.unwrap_or_default(),
        }
    }

    /// The short name (without `default/`).
    pub fn short(&self) -> &str {
        self.name.rsplit('/').next().unwrap_or(&self.name)
    }

    /// Whether the two may share an address: same non-empty key, no (protocol, port) in common,
    /// the same policy and, for Local, the same selector (DESIGN.md, "Sharing"). Namespaces are
    /// not compared: the soak's Services all live in `default`.
    pub fn compatible(&self, other: &Seen) -> bool {
        self.key.is_some()
            && self.key == other.key
            && self.local == other.local
            && (!self.local || self.selector == other.selector)
            && self.ports.is_disjoint(&other.ports)
    }
}

/// Two Services holding one address: (address, first name, second name), names in order.
pub type Pair = (IpAddr, String, String);

/// Every pair of Services that hold one address, with whether they may.
pub fn shared_pairs(seen: &[Seen]) -> BTreeMap<Pair, bool> {
    let mut by_ip: BTreeMap<IpAddr, Vec<&Seen>> = BTreeMap::new();
    for s in seen {
        for ip in &s.ips {
            by_ip.entry(*ip).or_default().push(s);
        }
    }
    let mut pairs = BTreeMap::new();
    for (ip, holders) in by_ip {
        for (i, a) in holders.iter().enumerate() {
            for b in &holders[i + 1..] {
                let (x, y) = if a.name < b.name { (a, b) } else { (b, a) };
                pairs.insert((ip, x.name.clone(), y.name.clone()), a.compatible(b));
            }
        }
    }
    pairs
}

/// Incompatible sharing that the controller made: a pair that is incompatible now and was not
/// already sharing at the previous look, unless the step between changed one of the two (a user
/// who edits a sharer into a clash makes the pair incompatible, and the controller must then move
/// one — the quiet-point check demands that it did).
pub fn new_incompatible(
    before: &BTreeMap<Pair, bool>,
    now: &BTreeMap<Pair, bool>,
    edited: Option<&str>,
) -> Vec<String> {
    now.iter()
        .filter(|(pair, compatible)| !**compatible && !before.contains_key(*pair))
        .filter(|((_, a, b), _)| edited.is_none_or(|e| a != e && b != e))
        .map(|((ip, a, b), _)| format!("{ip} was given to {a} and {b}, which may not share it"))
        .collect()
}

/// Every incompatible pair, whatever its history (at quiet points there must be none).
pub fn incompatible(now: &BTreeMap<Pair, bool>) -> Vec<String> {
    now.iter()
        .filter(|(_, compatible)| !**compatible)
        .map(|((ip, a, b), _)| format!("{ip} is held by {a} and {b}, which may not share it"))
        .collect()
}

/// What a quiet point expects of every Service the soak wrote: one address per family it asked
/// for, the requested one when it asked, each from a pool it may be given addresses from — or
/// kept: an address it held at an earlier step (`earlier`) stays valid while a pool still holds it
/// and the Service names no other pool and asks for no address (docs/ALLOCATION.md; `autoAssign`
/// only governs new allocations, as in MetalLB). An address for every Service that
/// [`World::must_fit`]; one whose last change cannot be met may instead keep what it held.
pub fn unmet(world: &World, seen: &[Seen], earlier: &BTreeMap<String, BTreeSet<IpAddr>>) -> Vec<String> {
    let by_name: BTreeMap<&str, &Seen> = seen.iter().map(|s| (s.name.as_str(), s)).collect();
    let mut out = Vec::new();
    for s in world.services.values() {
        let Some(got) = by_name.get(format!("default/{}", s.name).as_str()) else {
            out.push(format!("{} is missing from the API", s.name));
            continue;
        };
        let held_before = |ip: &IpAddr| earlier.get(&got.name).is_some_and(|h| h.contains(ip));
        let in_a_pool = |ip: &IpAddr| world.pools.values().any(|p| p.contains(*ip));
        let pools = world.allowed_pools(s);
        let kept = |ip: &IpAddr| {
            held_before(ip)
                && s.requested.is_none()
                && s.pool.is_none_or(|n| world.pools.get(n).is_some_and(|p| p.contains(*ip)))
                && in_a_pool(ip)
        };
        let mut wrong = Vec::new();
        for ip in &got.ips {
            if !pools.iter().any(|p| p.contains(*ip)) && !kept(ip) {
                let names: Vec<&str> = pools.iter().map(|p| p.name).collect();
                wrong.push(format!("{} holds {ip}, outside the pools it may use {names:?}", s.name));
            }
        }
        let families: BTreeSet<bool> = got.ips.iter().map(IpAddr::is_ipv4).collect();
        let wanted: BTreeSet<bool> = if s.dual { [true, false].into() } else { [true].into() };
        if !got.ips.is_empty() && (families != wanted || got.ips.len() != wanted.len()) {
            wrong.push(format!("{} holds {:?}, not one address per family it asked for", s.name, got.ips));
        }
        if let Some(r) = s.requested
            && !got.ips.is_empty()
            && got.ips != [IpAddr::V4(r)]
        {
            wrong.push(format!("{} asked for {r} and holds {:?}", s.name, got.ips));
        }
        // An address asked for that another Service, which may not share it, holds now (one it
        // asked for earlier and kept): the first holder keeps it.
        let taken = s.requested.is_some_and(|r| {
            seen.iter().any(|o| o.name != got.name && o.ips.contains(&IpAddr::V4(r)) && !o.compatible(got))
        });
        if world.must_fit(s) && !taken {
            out.extend(wrong);
            if got.ips.is_empty() {
                out.push(format!("{} fits and has no address", s.name));
            }
        } else if !wrong.is_empty() && !got.ips.iter().all(|ip| held_before(ip) && in_a_pool(ip)) {
            // A change that cannot be met keeps what the Service had, and only that.
            out.extend(wrong);
        }
    }
    out
}

/// Pools whose status disagrees with the Services: `used` must count the distinct addresses in
/// the pool held by Services, `total` its addresses, `available` the difference.
pub fn pool_status(world: &World, pools: &[IPPool], seen: &[Seen]) -> Vec<String> {
    let held: BTreeSet<IpAddr> = seen.iter().flat_map(|s| s.ips.iter().copied()).collect();
    let mut out = Vec::new();
    for model in world.pools.values() {
        let Some(pool) = pools.iter().find(|p| p.metadata.name.as_deref() == Some(model.name)) else {
            out.push(format!("pool {} is missing from the API", model.name));
            continue;
        };
        let status = pool.status.clone().unwrap_or_default();
        let (total4, total6) = model.totals();
        for (family, counts, total, v4) in [("ipv4", status.ipv4, total4, true), ("ipv6", status.ipv6, total6, false)] {
            let used = held.iter().filter(|ip| ip.is_ipv4() == v4 && model.contains(**ip)).count() as u64;
            let (t, u, a) = counts.map_or((0, 0, 0), |c| (c.total, c.used, c.available));
            if (t, u, a) != (total, used, total - used) {
                out.push(format!(
                    "pool {} says {family} total {t} used {u} available {a}; the truth is {total}/{used}/{}",
                    model.name,
                    total - used
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::world::{Proto, Svc};
    use serde_json::json;

    fn seen(name: &str, ips: &[&str], ports: &[i32], key: Option<&str>) -> Seen {
        Seen {
            name: format!("default/{name}"),
            ips: ips.iter().map(|i| i.parse().unwrap()).collect(),
            ports: ports.iter().map(|p| ("TCP".to_string(), *p)).collect(),
            key: key.map(String::from),
            local: false,
            selector: [("app".to_string(), "echo".to_string())].into(),
        }
    }

    #[test]
    fn reads_a_service_object() {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "a", "namespace": "default", "annotations": {"metallb.io/allow-shared-ip": "k"}},
            "spec": {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 80}], "externalTrafficPolicy": "Local", "selector": {"app": "x"}},
            "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.7"}]}}
        }))
        .unwrap();
        let s = Seen::from_service(&svc);
        assert_eq!(s.short(), "a");
        assert_eq!(s.key.as_deref(), Some("k"));
        assert!(s.local);
        assert_eq!(s.ips, vec!["198.51.100.7".parse::<IpAddr>().unwrap()]);
        assert!(s.ports.contains(&("UDP".into(), 53)) && s.ports.contains(&("TCP".into(), 80)));
    }

    #[test]
    fn a_new_incompatible_pair_is_caught_unless_an_edit_made_it() {
        let ip = "198.51.100.7";
        let quiet = shared_pairs(&[seen("a", &[ip], &[80], Some("k")), seen("b", &[], &[80], Some("k"))]);
        let clash = shared_pairs(&[seen("a", &[ip], &[80], Some("k")), seen("b", &[ip], &[80], Some("k"))]);
        assert_eq!(new_incompatible(&quiet, &clash, None).len(), 1, "the controller handed out a taken address");
        assert_eq!(new_incompatible(&quiet, &clash, Some("default/b")).len(), 0, "b was edited in this step");
        assert_eq!(new_incompatible(&clash, &clash, None).len(), 0, "an old pair is judged at quiet points");
        assert_eq!(incompatible(&clash).len(), 1);
        let fine = shared_pairs(&[seen("a", &[ip], &[80], Some("k")), seen("b", &[ip], &[443], Some("k"))]);
        assert!(incompatible(&fine).is_empty());
        let unkeyed = shared_pairs(&[seen("a", &[ip], &[80], None), seen("b", &[ip], &[443], None)]);
        assert_eq!(incompatible(&unkeyed).len(), 1);
    }

    fn model(name: &str, requested: Option<&str>, pool: Option<&'static str>, dual: bool) -> Svc {
        Svc {
            name: name.into(),
            ports: vec![(Proto::Tcp, 80)],
            local: false,
            dual,
            requested: requested.map(|r| r.parse().unwrap()),
            pool,
            key: None,
        }
    }

    #[test]
    fn quiet_points_want_every_fitting_service_addressed_from_its_pools() {
        let mut w = World::default();
        for s in [
            model("auto", None, None, true),
            model("asked", Some("198.51.100.131"), None, false),
            model("extra", None, Some("extra"), false),
        ] {
            w.services.insert(s.name.clone(), s);
        }
        let good = [
            seen("auto", &["198.51.100.20", "2001:db8:100::200"], &[80], None),
            seen("asked", &["198.51.100.131"], &[80], None),
            seen("extra", &[], &[80], None),
        ];
        let none = BTreeMap::new();
        assert_eq!(unmet(&w, &good, &none), Vec::<String>::new());
        let bad = [
            seen("auto", &["198.51.100.20"], &[80], None),
            seen("asked", &["198.51.100.132"], &[80], None),
            seen("extra", &["198.51.100.21"], &[80], None),
        ];
        let problems = unmet(&w, &bad, &none);
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(unmet(&w, &good[..2], &none).iter().any(|p| p.contains("missing")));
        let unaddressed = [seen("auto", &[], &[80], None), good[1].clone(), good[2].clone()];
        assert!(unmet(&w, &unaddressed, &none)[0].contains("fits and has no address"));
        // A change to a full `extra` that could not be met keeps the address held before; a
        // Service that must fit gets no such excuse.
        let before: BTreeMap<String, BTreeSet<IpAddr>> = [
            ("default/extra".to_string(), ["198.51.100.21".parse().unwrap()].into()),
            ("default/auto".to_string(), ["198.51.100.20".parse().unwrap()].into()),
        ]
        .into();
        let problems = unmet(&w, &bad, &before);
        assert_eq!(problems.len(), 2, "{problems:#?}");
        assert!(!problems.iter().any(|p| p.starts_with("extra")), "{problems:#?}");
        let moved = [seen("extra", &["198.51.100.22"], &[80], None)];
        assert!(unmet(&w, &moved, &before).iter().any(|p| p.starts_with("extra")), "never held before");
        // An address from `fixed` (no autoAssign) that a Service asked for and no longer does is
        // kept (valid where it is); one it never held is a new allocation from `fixed`: wrong.
        let mut unasked = World::default();
        unasked.services.insert("was-asked".into(), model("was-asked", None, None, false));
        let in_fixed = [seen("was-asked", &["198.51.100.131"], &[80], None)];
        let held: BTreeMap<String, BTreeSet<IpAddr>> =
            [("default/was-asked".to_string(), ["198.51.100.131".parse().unwrap()].into())].into();
        assert_eq!(unmet(&unasked, &in_fixed, &held), Vec::<String>::new());
        assert_eq!(unmet(&unasked, &in_fixed, &BTreeMap::new()).len(), 1);
        // Naming another pool ends the keeping.
        unasked.services.insert("was-asked".into(), model("was-asked", None, Some("base"), false));
        assert_eq!(unmet(&unasked, &in_fixed, &held).len(), 1);
        // Asking for the address a Service kept: it stays the keeper's, the asker waits.
        let mut w = World::default();
        w.services.insert("keeper".into(), model("keeper", None, None, false));
        w.services.insert("asker".into(), model("asker", Some("198.51.100.131"), None, false));
        let kept = [seen("keeper", &["198.51.100.131"], &[80], None), seen("asker", &[], &[80], None)];
        let held: BTreeMap<String, BTreeSet<IpAddr>> =
            [("default/keeper".to_string(), ["198.51.100.131".parse().unwrap()].into())].into();
        assert_eq!(unmet(&w, &kept, &held), Vec::<String>::new());
        let free = [seen("keeper", &["198.51.100.20"], &[80], None), seen("asker", &[], &[80], None)];
        assert_eq!(unmet(&w, &free, &held).len(), 1, "nobody holds it: the asker must get it");
    }

    #[test]
    fn pool_status_must_count_what_services_hold() {
        let w = World::default();
        let pool = |used4: u64| -> IPPool {
            serde_json::from_value(json!({"metadata": {"name": "base"}, "spec": {"addresses": []}, "status": {
                "ipv4": {"total": 30, "used": used4, "available": 30 - used4},
                "ipv6": {"total": 64, "used": 1, "available": 63}}}))
            .unwrap()
        };
        let fixed: IPPool = serde_json::from_value(json!({"metadata": {"name": "fixed"}, "spec": {"addresses": []},
            "status": {"ipv4": {"total": 10, "used": 0, "available": 10}}}))
        .unwrap();
        // Two Services sharing one address count it once.
        let held = [
            seen("a", &["198.51.100.20", "2001:db8:100::200"], &[80], Some("k")),
            seen("b", &["198.51.100.20"], &[443], Some("k")),
        ];
        assert_eq!(pool_status(&w, &[pool(1), fixed.clone()], &held), Vec::<String>::new());
        assert_eq!(pool_status(&w, &[pool(2), fixed.clone()], &held).len(), 1);
        assert_eq!(pool_status(&w, &[pool(1)], &held).len(), 1, "fixed is missing");
    }
}
