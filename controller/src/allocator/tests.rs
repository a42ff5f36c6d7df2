use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ferrolb_crds::Family;
use ferrolb_crds::addresses::parse_entry;
use proptest::prelude::*;

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn config(entries: &[&str]) -> PoolConfig {
    PoolConfig { ranges: entries.iter().map(|e| parse_entry(e).unwrap()).collect(), ..PoolConfig::default() }
}

fn req(key: &str) -> Request {
    Request {
        key: key.into(),
        namespace: key.split('/').next().unwrap().into(),
        labels: BTreeMap::new(),
        namespace_labels: BTreeMap::new(),
        families: vec![Family::V4],
        dual: DualStack::Single,
        pool: None,
        ips: Vec::new(),
        sharing_key: None,
        ports: BTreeSet::from([(Protocol::Tcp, 80)]),
        policy: TrafficPolicy::Cluster,
    }
}

fn ips_of(o: &Outcome) -> Vec<IpAddr> {
    o.assignment.as_ref().map(|a| a.ips.clone()).unwrap_or_default()
}

#[test]
fn lowest_free_address_of_the_best_pool() {
    let mut a = Allocator::new();
    a.set_pool("b", PoolConfig { priority: Some(0), ..config(&["198.51.100.10-198.51.100.12"]) });
    a.set_pool("a", PoolConfig { priority: Some(1), ..config(&["203.0.113.0/31"]) });
    a.set_pool("c", PoolConfig { priority: Some(0), ..config(&["198.51.100.20/32"]) });
    a.set_pool("0-unset", config(&["192.0.2.1/32"]));
    // Priority 0 before 1; among equals, by name: b before c; a pool without a priority last,
    // whatever its name.
    assert_eq!(ips_of(&a.assign(&req("n/1"), &[], None)), [ip("198.51.100.10")]);
    assert_eq!(ips_of(&a.assign(&req("n/2"), &[], None)), [ip("198.51.100.11")]);
    assert_eq!(ips_of(&a.assign(&req("n/3"), &[], None)), [ip("198.51.100.12")]);
    assert_eq!(ips_of(&a.assign(&req("n/4"), &[], None)), [ip("198.51.100.20")]);
    assert_eq!(ips_of(&a.assign(&req("n/5"), &[], None)), [ip("203.0.113.0")]);
    assert_eq!(ips_of(&a.assign(&req("n/7"), &[], None)), [ip("203.0.113.1")]);
    assert_eq!(ips_of(&a.assign(&req("n/8"), &[], None)), [ip("192.0.2.1")]);
    // Idempotent.
    assert_eq!(ips_of(&a.assign(&req("n/1"), &[], None)), [ip("198.51.100.10")]);
    // Release makes the lowest free again.
    assert_eq!(a.release("n/2"), [ip("198.51.100.11")]);
    assert_eq!(ips_of(&a.assign(&req("n/6"), &[], None)), [ip("198.51.100.11")]);
}

#[test]
fn auto_assign_disabled_and_selection() {
    let mut a = Allocator::new();
    a.set_pool("manual", PoolConfig { auto_assign: false, ..config(&["198.51.100.1/32"]) });
    a.set_pool("off", PoolConfig { disabled: true, ..config(&["198.51.100.2/32"]) });
    let media = Selection { namespaces: vec!["media".into()], ..Selection::default() };
    a.set_pool("media", PoolConfig { selection: Some(media), ..config(&["198.51.100.3/32"]) });
    let o = a.assign(&req("other/x"), &[], None);
    assert!(matches!(o.error, Some(AllocError::NoCompatiblePool(_))), "{o:?}");
    assert_eq!(ips_of(&a.assign(&req("media/x"), &[], None)), [ip("198.51.100.3")]);
    let named = Request { pool: Some("manual".into()), ..req("other/y") };
    assert_eq!(ips_of(&a.assign(&named, &[], None)), [ip("198.51.100.1")]);
    let by_ip = Request { ips: vec![ip("198.51.100.1")], ..req("other/z") };
    assert!(matches!(a.assign(&by_ip, &[], None).error, Some(AllocError::Taken { .. })));
    let off = Request { pool: Some("off".into()), ..req("other/w") };
    let o = a.assign(&off, &[], None);
    assert!(o.error.unwrap().to_string().contains("disabled"));
    let missing = Request { pool: Some("nope".into()), ..req("other/v") };
    assert_eq!(a.assign(&missing, &[], None).error, Some(AllocError::PoolNotFound("nope".into())));
}

#[test]
fn selecting_pools_first_then_priority_with_unset_last_then_name() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    let web = LabelSelector {
        match_labels: Some(BTreeMap::from([("expose".to_string(), "web".to_string())])),
        match_expressions: None,
    };
    let mut a = Allocator::new();
    a.set_pool("a-plain", config(&["198.51.100.1/32"]));
    a.set_pool("b-plain-prio", PoolConfig { priority: Some(7), ..config(&["198.51.100.2/32"]) });
    let web_only = Selection { service_selector: Some(web), ..Selection::default() };
    a.set_pool("y-web", PoolConfig { selection: Some(web_only.clone()), ..config(&["203.0.113.1/32"]) });
    a.set_pool(
        "z-web-prio",
        PoolConfig { priority: Some(50), selection: Some(web_only), ..config(&["203.0.113.2/32"]) },
    );
    let web_req = |k: &str| Request { labels: BTreeMap::from([("expose".to_string(), "web".to_string())]), ..req(k) };
    // Selecting pools before plain ones whatever their priorities; with a priority before
    // without; then plain pools in the same order.
    assert_eq!(ips_of(&a.assign(&web_req("d/w1"), &[], None)), [ip("203.0.113.2")]);
    assert_eq!(ips_of(&a.assign(&web_req("d/w2"), &[], None)), [ip("203.0.113.1")]);
    assert_eq!(ips_of(&a.assign(&web_req("d/w3"), &[], None)), [ip("198.51.100.2")]);
    assert_eq!(ips_of(&a.assign(&web_req("d/w4"), &[], None)), [ip("198.51.100.1")]);
    // A pool whose serviceAllocation does not select a Service is never used for it.
    let mut b = Allocator::new();
    b.set_pool(
        "web",
        PoolConfig {
            selection: Some(Selection {
                service_selector: Some(LabelSelector::default()),
                namespaces: vec!["x".into()],
                ..Selection::default()
            }),
            ..config(&["203.0.113.9/32"])
        },
    );
    assert!(b.assign(&req("d/plain"), &[], None).error.is_some());
    let asked = Request { pool: Some("web".into()), ..req("d/asked") };
    assert!(b.assign(&asked, &[], None).error.is_some(), "not even on request");
    // A serviceAllocation without conditions selects every Service: such a pool goes first.
    let mut c = Allocator::new();
    c.set_pool("a-plain", PoolConfig { priority: Some(1), ..config(&["198.51.100.1/32"]) });
    c.set_pool("z-all", PoolConfig { selection: Some(Selection::default()), ..config(&["198.51.100.9/32"]) });
    assert_eq!(ips_of(&c.assign(&req("d/x"), &[], None)), [ip("198.51.100.9")]);
}

#[test]
fn the_namespace_set_is_the_union_of_list_and_selector() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    let team = LabelSelector {
        match_labels: Some(BTreeMap::from([("team".to_string(), "media".to_string())])),
        match_expressions: None,
    };
    let mut a = Allocator::new();
    let sel = Selection { namespaces: vec!["media".into()], namespace_selector: Some(team), ..Selection::default() };
    a.set_pool("media", PoolConfig { selection: Some(sel), ..config(&["198.51.100.0/29"]) });
    let in_ns = |k: &str, labels: &[(&str, &str)]| Request {
        namespace_labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..req(k)
    };
    assert!(a.assign(&in_ns("media/listed", &[]), &[], None).error.is_none(), "listed, not labelled");
    assert!(a.assign(&in_ns("tv/labelled", &[("team", "media")]), &[], None).error.is_none(), "labelled, not listed");
    let o = a.assign(&in_ns("other/neither", &[("team", "ops")]), &[], None);
    assert!(o.error.is_some(), "{o:?}");
}

#[test]
fn label_selection() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    let sel = |k: &str, v: &str| LabelSelector {
        match_labels: Some(BTreeMap::from([(k.to_string(), v.to_string())])),
        match_expressions: None,
    };
    let mut a = Allocator::new();
    a.set_pool(
        "ns",
        PoolConfig {
            selection: Some(Selection { namespace_selector: Some(sel("lb", "home")), ..Default::default() }),
            ..config(&["198.51.100.1/32"])
        },
    );
    a.set_pool(
        "svc",
        PoolConfig {
            selection: Some(Selection { service_selector: Some(sel("expose", "lan")), ..Default::default() }),
            ..config(&["198.51.100.2/32"])
        },
    );
    let mut r = req("n/a");
    assert!(a.assign(&r, &[], None).error.is_some());
    r.namespace_labels.insert("lb".into(), "home".into());
    assert_eq!(ips_of(&a.assign(&r, &[], None)), [ip("198.51.100.1")]);
    let mut s = req("n/b");
    s.labels.insert("expose".into(), "lan".into());
    assert_eq!(ips_of(&a.assign(&s, &[], None)), [ip("198.51.100.2")]);
}

#[test]
fn requested_addresses() {
    let mut a = Allocator::new();
    a.set_pool("home", config(&["198.51.100.0/24"]));
    a.set_pool("lab", PoolConfig { avoid_buggy_ips: true, ..config(&["203.0.113.0/24"]) });
    let want = |k: &str, s: &str| Request { ips: vec![ip(s)], ..req(k) };
    assert_eq!(ips_of(&a.assign(&want("n/a", "198.51.100.77"), &[], None)), [ip("198.51.100.77")]);
    assert!(matches!(a.assign(&want("n/b", "192.0.2.1"), &[], None).error, Some(AllocError::NotInPool { .. })));
    assert!(matches!(a.assign(&want("n/c", "198.51.100.77"), &[], None).error, Some(AllocError::Taken { .. })));
    assert!(matches!(a.assign(&want("n/d", "203.0.113.255"), &[], None).error, Some(AllocError::Buggy { .. })));
    let other = Request { pool: Some("lab".into()), ..want("n/e", "198.51.100.8") };
    assert!(matches!(a.assign(&other, &[], None).error, Some(AllocError::InOtherPool { .. })));
    let v6 = want("n/f", "2001:db8::1");
    assert!(matches!(a.assign(&v6, &[], None).error, Some(AllocError::WrongFamily { .. })));
}

#[test]
fn sharing_needs_the_key_free_ports_and_the_same_policy() {
    let mut a = Allocator::new();
    a.set_pool("p", config(&["198.51.100.0/30"]));
    let shared = |k: &str, key: &str, port: u16| Request {
        sharing_key: Some(key.into()),
        ports: BTreeSet::from([(Protocol::Tcp, port)]),
        ..req(k)
    };
    let first = ips_of(&a.assign(&shared("n/a", "k", 80), &[], None));
    // Same key, other port: the same address, without asking for it.
    assert_eq!(ips_of(&a.assign(&shared("n/b", "k", 443), &[], None)), first);
    assert_eq!(a.users_of(&first[0]), ["n/a", "n/b"]);
    // Asking for it explicitly with a clash, another key, or another policy is refused.
    let clash = Request { ips: first.clone(), ..shared("n/c", "k", 80) };
    assert!(a.assign(&clash, &[], None).error.unwrap().to_string().contains("both use port 80/TCP"));
    let other_key = Request { ips: first.clone(), ..shared("n/d", "other", 8080) };
    assert!(a.assign(&other_key, &[], None).error.unwrap().to_string().contains("sharing key"));
    let local =
        Request { ips: first.clone(), policy: TrafficPolicy::Local(BTreeMap::new()), ..shared("n/e", "k", 9090) };
    assert!(a.assign(&local, &[], None).error.unwrap().to_string().contains("externalTrafficPolicy"));
    // A key change moves a Service that shares; the sole user may change its key in place.
    let moved = ips_of(&a.assign(&shared("n/b", "new", 443), &[], None));
    assert_ne!(moved, first);
    let solo = ips_of(&a.assign(&shared("n/b", "newer", 443), &[], None));
    assert_eq!(solo, moved);
}

#[test]
fn the_first_holder_keeps_a_shared_address_and_a_pool_may_keep_sharing_in_one_namespace() {
    let shared = |k: &str, key: &str, ports: &[u16]| Request {
        sharing_key: Some(key.into()),
        ports: ports.iter().map(|p| (Protocol::Tcp, *p)).collect(),
        ..req(k)
    };
    let mut a = Allocator::new();
    a.set_pool("p", config(&["198.51.100.0/30"]));
    let x = ips_of(&a.assign(&shared("team-a/web", "k", &[80]), &[], None));
    assert_eq!(
        ips_of(&a.assign(&shared("team-b/spy", "k", &[443]), &[], None)),
        x,
        "MetalLB's default: across namespaces"
    );
    // The owner adds the joiner's port: the owner keeps its address, the joiner is the one to move.
    assert_eq!(ips_of(&a.assign(&shared("team-a/web", "k", &[80, 443]), &[], None)), x);
    assert_eq!(a.displaced_by("team-a/web"), [ServiceKey::from("team-b/spy")]);
    let moved = ips_of(&a.assign(&shared("team-b/spy", "k", &[443]), &[], None));
    assert_ne!(moved, x);
    assert_eq!(a.users_of(&x[0]), [ServiceKey::from("team-a/web")]);
    assert!(a.displaced_by("team-a/web").is_empty());

    let mut b = Allocator::new();
    b.set_pool("q", PoolConfig { share_across_namespaces: false, ..config(&["203.0.113.0/30"]) });
    let y = ips_of(&b.assign(&shared("team-a/web", "k", &[80]), &[], None));
    assert_eq!(ips_of(&b.assign(&shared("team-a/api", "k", &[8080]), &[], None)), y, "one namespace shares");
    assert_ne!(ips_of(&b.assign(&shared("team-b/spy", "k", &[443]), &[], None)), y);
    let asked = Request { ips: y.clone(), ..shared("team-b/asks", "k", &[9090]) };
    let err = b.assign(&asked, &[], None).error.unwrap().to_string();
    assert!(err.contains("IPPool \"q\" shares addresses only within one namespace"), "{err}");
}

#[test]
fn dual_stack_policies_and_the_missing_family_added_later() {
    let mut a = Allocator::new();
    a.set_pool("v4", PoolConfig { priority: Some(0), ..config(&["198.51.100.1/32"]) });
    let dual = |k: &str, d: DualStack| Request { families: vec![Family::V4, Family::V6], dual: d, ..req(k) };
    // Prefer: only IPv4 exists, so it gets that.
    assert_eq!(ips_of(&a.assign(&dual("n/p", DualStack::Prefer), &[], None)), [ip("198.51.100.1")]);
    // Require: both or nothing.
    let o = a.assign(&dual("n/r", DualStack::Require), &[], None);
    assert!(matches!(o.error, Some(AllocError::DualStackUnavailable(_))) && o.assignment.is_none());
    // The pool gains IPv6: Prefer gets the missing family from the same pool on the next pass.
    a.set_pool("v4", PoolConfig { priority: Some(0), ..config(&["198.51.100.1/32", "2001:db8::/126"]) });
    assert_eq!(ips_of(&a.assign(&dual("n/p", DualStack::Prefer), &[], None)), [ip("198.51.100.1"), ip("2001:db8::")]);
    a.set_pool("both", PoolConfig { priority: Some(1), ..config(&["203.0.113.0/30", "2001:db8:1::/126"]) });
    assert_eq!(ips_of(&a.assign(&dual("n/r", DualStack::Require), &[], None)), [ip("203.0.113.0"), ip("2001:db8:1::")]);
    // Single stack of the secondary family follows ipFamilies' order.
    let v6only = Request { families: vec![Family::V6], ..req("n/s") };
    assert_eq!(ips_of(&a.assign(&v6only, &[], None)), [ip("2001:db8::1")]);
    // Going back to SingleStack drops the secondary.
    let o = a.assign(&Request { families: vec![Family::V4, Family::V6], ..req("n/p") }, &[], None);
    assert_eq!((ips_of(&o), o.released), (vec![ip("198.51.100.1")], vec![ip("2001:db8::")]));
}

#[test]
fn pool_changes_move_or_clear_holders_and_failed_changes_keep_valid_addresses() {
    let mut a = Allocator::new();
    a.set_pool("a", PoolConfig { priority: Some(0), ..config(&["198.51.100.1-198.51.100.3"]) });
    a.set_pool("b", PoolConfig { priority: Some(5), ..config(&["203.0.113.1/32"]) });
    for k in ["n/1", "n/2", "n/3"] {
        a.assign(&req(k), &[], None);
    }
    // Shrink: n/3 (198.51.100.3) is outside now and moves to b; the others stay.
    let affected = a.set_pool("a", PoolConfig { priority: Some(0), ..config(&["198.51.100.1-198.51.100.2"]) });
    assert_eq!(affected, ["n/1", "n/2", "n/3"]);
    assert_eq!(ips_of(&a.assign(&req("n/1"), &[], None)), [ip("198.51.100.1")]);
    let o = a.assign(&req("n/3"), &[], None);
    assert_eq!((ips_of(&o), o.released), (vec![ip("203.0.113.1")], vec![ip("198.51.100.3")]));
    // Delete a: nowhere to go, so they are cleared.
    a.remove_pool("a");
    let o = a.assign(&req("n/1"), &[], None);
    assert!(o.assignment.is_none() && o.error.is_some() && o.released == [ip("198.51.100.1")]);
    // Disabled keeps what is held.
    a.set_pool("b", PoolConfig { disabled: true, ..config(&["203.0.113.1/32"]) });
    assert_eq!(ips_of(&a.assign(&req("n/3"), &[], None)), [ip("203.0.113.1")]);
    // Asking for a taken address keeps the address the Service has, with the error.
    a.set_pool("c", config(&["192.0.2.0/30"]));
    let mine = ips_of(&a.assign(&req("m/1"), &[], None));
    a.assign(&req("m/2"), &[], None);
    let o = a.assign(&Request { ips: vec![ip("192.0.2.1")], ..req("m/1") }, &[], None);
    assert!(matches!(o.error, Some(AllocError::Taken { .. })));
    assert_eq!(ips_of(&o), mine);
}

#[test]
fn overlapping_pools_are_reported_and_never_hand_out_an_address_twice() {
    let mut a = Allocator::new();
    a.set_pool("x", config(&["198.51.100.0/30"]));
    a.set_pool("y", PoolConfig { priority: Some(1), ..config(&["198.51.100.2-198.51.100.5"]) });
    a.set_pool("z", config(&["203.0.113.0/30"]));
    let o = a.overlaps();
    assert_eq!(o["x"], ["y"]);
    assert_eq!(o["y"], ["x"]);
    assert!(!o.contains_key("z"));
    let mut seen = BTreeSet::new();
    for i in 0..10 {
        let r = Request { pool: Some(if i % 2 == 0 { "x" } else { "y" }.into()), ..req(&format!("n/{i}")) };
        for ipx in ips_of(&a.assign(&r, &[], None)) {
            assert!(seen.insert(ipx), "{ipx} handed out twice");
        }
    }
    assert_eq!(seen.len(), 6, "x and y together hold six addresses");
}

proptest! {
    /// The sweep finds exactly the pairs the pairwise comparison finds, and follows pool changes.
    #[test]
    fn overlaps_by_sweep_equal_pairwise(
        pools in proptest::collection::vec(proptest::collection::vec((0u8..200, 0u8..20, any::<bool>()), 1..6), 1..7),
        dropped in 0usize..7,
    ) {
        let mut a = Allocator::new();
        for (n, entries) in pools.iter().enumerate() {
            let ranges: Vec<String> = entries.iter().map(|(s, l, v6)| if *v6 {
                format!("2001:db8::{:x}-2001:db8::{:x}", s, u16::from(*s) + u16::from(*l))
            } else {
                format!("198.51.100.{s}-198.51.100.{}", s.saturating_add(*l))
            }).collect();
            let refs: Vec<&str> = ranges.iter().map(String::as_str).collect();
            a.set_pool(&format!("p{n}"), config(&refs));
        }
        a.remove_pool(&format!("p{dropped}"));
        let mut pairwise: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let names: Vec<&str> = a.pool_names().collect();
        for x in &names {
            for y in names.iter().filter(|y| *y != x) {
                if a.pool(x).unwrap().overlaps(a.pool(y).unwrap()) {
                    pairwise.entry(x.to_string()).or_default().push(y.to_string());
                }
            }
        }
        prop_assert_eq!(a.overlaps(), &pairwise);
    }
}

#[test]
fn counts_saturate_and_track_use() {
    let mut a = Allocator::new();
    a.set_pool("big", config(&["2001:db8::/48", "198.51.100.0/30"]));
    a.assign(&Request { families: vec![Family::V6], ..req("n/a") }, &[], None);
    let p = a.pool("big").unwrap();
    assert_eq!(p.counts(Family::V4).unwrap(), ferrolb_crds::AddressCounts { total: 4, used: 0, available: 4 });
    let v6 = p.counts(Family::V6).unwrap();
    assert_eq!((v6.total, v6.used), (ferrolb_crds::addresses::MAX_COUNT, 1));
}

#[test]
fn restoring_from_status_keeps_addresses_and_refuses_impossible_ones() {
    let mut a = Allocator::new();
    a.set_pool("p", config(&["198.51.100.0/29"]));
    assert_eq!(ips_of(&a.assign(&req("n/a"), &[ip("198.51.100.5")], None)), [ip("198.51.100.5")]);
    // Someone else's status claims the same address without a sharing key: not restored, and
    // the second pass gives it a new one.
    assert!(!a.restore(&req("n/b"), &[ip("198.51.100.5")], None));
    let o = a.assign(&req("n/b"), &[ip("198.51.100.5")], None);
    assert_eq!(ips_of(&o), [ip("198.51.100.0")]);
    assert!(a.restore(&req("n/d"), &[ip("198.51.100.6")], Some("p")));
    // An address outside every pool is replaced.
    assert_eq!(ips_of(&a.assign(&req("n/c"), &[ip("192.0.2.1")], None)), [ip("198.51.100.1")]);
}

// ----- property tests -----

#[derive(Debug, Clone)]
enum Op {
    Assign { svc: usize, family: u8, pool: Option<usize>, key: Option<u8>, port: u16, want: Option<u8> },
    Release(usize),
    SetPool { pool: usize, lo: u8, len: u8, disabled: bool },
    RemovePool(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0usize..12, 0u8..3, proptest::option::of(0usize..3), proptest::option::of(0u8..2), 1u16..4, proptest::option::of(0u8..24))
            .prop_map(|(svc, family, pool, key, port, want)| Op::Assign { svc, family, pool, key, port, want }),
        2 => (0usize..12).prop_map(Op::Release),
        2 => (0usize..3, 0u8..16, 0u8..8, any::<bool>()).prop_map(|(pool, lo, len, disabled)| Op::SetPool { pool, lo, len, disabled }),
        1 => (0usize..3).prop_map(Op::RemovePool),
    ]
}

fn pool_config(lo: u8, len: u8, disabled: bool) -> PoolConfig {
    let v4 = format!("198.51.100.{lo}-198.51.100.{}", lo + len);
    let v6 = format!("2001:db8::{lo:x}-2001:db8::{:x}", lo + len);
    PoolConfig { disabled, ..config(&[&v4, &v6]) }
}

fn request_for(svc: usize, family: u8, pool: Option<usize>, key: Option<u8>, port: u16, want: Option<u8>) -> Request {
    let (families, dual) = match family {
        0 => (vec![Family::V4], DualStack::Single),
        1 => (vec![Family::V6, Family::V4], DualStack::Prefer),
        _ => (vec![Family::V4, Family::V6], DualStack::Require),
    };
    let ips = match (want, family) {
        (Some(w), 0) => vec![ip(&format!("198.51.100.{w}"))],
        _ => Vec::new(),
    };
    Request {
        families,
        dual,
        pool: pool.map(|p| format!("p{p}")),
        sharing_key: key.map(|k| format!("k{k}")),
        ports: BTreeSet::from([(Protocol::Tcp, port)]),
        ips,
        ..req(&format!("n/s{svc}"))
    }
}

/// Checks the invariants; `reqs` is the last request of every Service that holds something.
fn check_invariants(a: &Allocator, reqs: &BTreeMap<ServiceKey, Request>) -> Result<(), TestCaseError> {
    let mut by_ip: BTreeMap<IpAddr, Vec<&ServiceKey>> = BTreeMap::new();
    for (k, asg) in a.assignments() {
        let r = &reqs[k];
        let pool = a.pool(&asg.pool);
        prop_assert!(pool.is_some(), "{} holds addresses of a missing pool", k);
        for ipx in &asg.ips {
            prop_assert!(pool.unwrap().contains(ipx), "{} holds {} outside {}", k, ipx, asg.pool);
            prop_assert!(r.wanted().contains(&Family::of(ipx)));
            by_ip.entry(*ipx).or_default().push(k);
        }
        if let Some(named) = &r.pool {
            let _ = named; // a failed change may keep an address of the previously named pool
        }
    }
    for (ipx, holders) in by_ip {
        if holders.len() > 1 {
            let keys: BTreeSet<_> = holders.iter().map(|k| reqs[*k].sharing_key.clone()).collect();
            prop_assert!(
                keys.len() == 1 && keys.iter().next().unwrap().is_some(),
                "{} shared without one key: {:?}",
                ipx,
                holders
            );
            let mut ports = BTreeSet::new();
            for k in &holders {
                for p in &reqs[*k].ports {
                    prop_assert!(ports.insert(*p), "{} shared with a port clash", ipx);
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn invariants_hold_and_rebuilding_from_status_reproduces_the_assignments(ops in proptest::collection::vec(op(), 1..60)) {
        run_ops(ops)?;
    }
}

fn note_unmet(unmet: &mut BTreeSet<ServiceKey>, key: &ServiceKey, o: &Outcome) {
    if o.error.is_some() {
        unmet.insert(key.clone());
    } else {
        unmet.remove(key);
    }
}

/// Applies `ops`, checking the invariants after each, then rebuilds from the statuses as a restarted
/// controller does and checks that nothing moves.
fn run_ops(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut a = Allocator::new();
    let mut pools: BTreeMap<String, PoolConfig> = BTreeMap::new();
    for p in 0..3 {
        let c = pool_config((p * 5) as u8, 6, false);
        a.set_pool(&format!("p{p}"), c.clone());
        pools.insert(format!("p{p}"), c);
    }
    let mut reqs: BTreeMap<ServiceKey, Request> = BTreeMap::new();
    let mut order: Vec<ServiceKey> = Vec::new();
    // Services whose last request was not fully met: the reconciler retries them, so a rebuild
    // may give them what they ask once it is free.
    let mut unmet: BTreeSet<ServiceKey> = BTreeSet::new();
    for op in ops {
        match op {
            Op::Assign { svc, family, pool, key, port, want } => {
                let r = request_for(svc, family, pool, key, port, want);
                let before = a.assignment(r.key.as_str()).cloned();
                let o = a.assign(&r, &[], None);
                note_unmet(&mut unmet, &r.key, &o);
                if o.assignment.is_some() {
                    reqs.insert(r.key.clone(), r.clone());
                    if before.is_none() {
                        order.push(r.key.clone());
                    }
                } else {
                    reqs.remove(&r.key);
                    order.retain(|k| *k != r.key);
                }
                // A failure with an address kept keeps (part of) what was held before.
                if o.error.is_some()
                    && let Some(kept) = &o.assignment
                {
                    let before = before.as_ref().expect("kept something held");
                    prop_assert_eq!(&kept.pool, &before.pool);
                    prop_assert!(kept.ips.iter().all(|x| before.ips.contains(x)));
                }
            }
            Op::Release(svc) => {
                let k = ServiceKey::from(format!("n/s{svc}").as_str());
                a.release(k.as_str());
                reqs.remove(&k);
                order.retain(|x| *x != k);
            }
            Op::SetPool { pool, lo, len, disabled } => {
                let c = pool_config(lo, len, disabled);
                a.set_pool(&format!("p{pool}"), c.clone());
                pools.insert(format!("p{pool}"), c);
            }
            Op::RemovePool(pool) => {
                a.remove_pool(&format!("p{pool}"));
                pools.remove(&format!("p{pool}"));
            }
        }
        // Pool changes leave holders for the reconciler to re-check, as it does.
        let holders: BTreeSet<ServiceKey> = a.assignments().map(|(k, _)| k.clone()).collect();
        for k in holders {
            let r = reqs[&k].clone();
            let o = a.assign(&r, &[], None);
            note_unmet(&mut unmet, &k, &o);
            if o.assignment.is_none() {
                reqs.remove(&k);
                order.retain(|x| *x != k);
            }
        }
        check_invariants(&a, &reqs)?;
    }
    // Rebuild from the statuses, oldest first, as a restarted controller does.
    let mut b = Allocator::new();
    for (n, c) in &pools {
        b.set_pool(n, c.clone());
    }
    for k in &order {
        let held = a.assignment(k.as_str()).unwrap().clone();
        prop_assert!(b.restore(&reqs[k], &held.ips, Some(&held.pool)), "{} lost its addresses on rebuild", k);
        prop_assert_eq!(b.assignment(k.as_str()), Some(&held), "{} moved on rebuild", k);
    }
    // The second pass (assign) keeps every restored holding of a Service whose request was met;
    // one that was not met may get what it asks for now, and then without an error.
    for k in &order {
        let o = b.assign(&reqs[k], &[], None);
        let before = a.assignment(k.as_str()).unwrap();
        let after = o.assignment.as_ref().unwrap();
        let kept = after.pool == before.pool && before.ips.iter().all(|x| after.ips.contains(x));
        prop_assert!(kept || (unmet.contains(k) && o.error.is_none()), "{} lost an address on the second pass", k);
    }
    // Release undoes allocate: with everything released, every pool is entirely free again.
    for k in &order {
        b.release(k.as_str());
    }
    for n in pools.keys() {
        for f in [Family::V4, Family::V6] {
            if let Some(c) = b.pool(n).unwrap().counts(f) {
                prop_assert_eq!(c.used, 0);
            }
        }
    }
    Ok(())
}

/// Found by CI's proptest run: a Service asking for an address another Service held kept its old
/// one (with an error); the holder then moved, so a rebuild's second pass rightly gave it the address
/// it asked for. The test had demanded the old one.
#[test]
fn a_rebuild_keeps_what_a_disabled_pool_still_holds() {
    use Op::*;
    let a = |svc, family, pool, key, port, want| Assign { svc, family, pool, key, port, want };
    run_ops(vec![
        a(1, 0, Some(1), None, 3, Some(16)),
        a(3, 1, Some(2), Some(1), 1, None),
        a(6, 0, None, Some(1), 3, None),
        SetPool { pool: 2, lo: 3, len: 6, disabled: false },
        a(7, 0, None, Some(0), 2, None),
        a(4, 1, Some(1), None, 2, Some(16)),
        SetPool { pool: 0, lo: 8, len: 3, disabled: true },
        a(3, 0, None, None, 3, Some(7)),
        SetPool { pool: 1, lo: 15, len: 4, disabled: true },
    ])
    .unwrap();
}

#[test]
fn what_the_cluster_holds_is_never_given_and_holders_move_off_it() {
    let mut a = Allocator::new();
    let node = Reserver::Node("n1".into());
    let cluster_ip = Reserver::ClusterIp("default/kubernetes".into());
    assert!(a.reserve(&node, &[ip("198.51.100.0")]).is_empty());
    a.set_pool("p", config(&["198.51.100.0/30"]));
    assert!(a.reserve(&cluster_ip, &[ip("198.51.100.1")]).is_empty());
    assert_eq!(ips_of(&a.assign(&req("n/1"), &[], None)), [ip("198.51.100.2")]);
    assert_eq!(a.pool("p").unwrap().counts(Family::V4).unwrap().available, 1);
    // Asked for by name: refused with what it is.
    let asked = Request { ips: vec![ip("198.51.100.1")], ..req("n/2") };
    let err = a.assign(&asked, &[], None).error.unwrap();
    assert_eq!(err.to_string(), "198.51.100.1 is never handed out: it is the ClusterIP of Service default/kubernetes");
    assert!(
        a.assign(&Request { ips: vec![ip("127.0.0.1")], ..req("n/2") }, &[], None)
            .error
            .unwrap()
            .to_string()
            .contains("loopback")
    );
    // A Node that takes a held address: the holder is returned, and moves on its next decision.
    assert_eq!(a.reserve(&node, &[ip("198.51.100.2")]), [ServiceKey::from("n/1")]);
    assert_eq!(ips_of(&a.assign(&req("n/1"), &[], None)), [ip("198.51.100.0")]);
    // A status showing a reserved address is not restored.
    let mut b = Allocator::new();
    b.set_pool("p", config(&["198.51.100.0/30"]));
    b.reserve(&node, &[ip("198.51.100.3")]);
    assert!(!b.restore(&req("n/9"), &[ip("198.51.100.3")], Some("p")));
    // Released: free again.
    assert!(a.reserve(&cluster_ip, &[]).is_empty());
    assert_eq!(ips_of(&a.assign(&req("n/3"), &[], None)), [ip("198.51.100.1")]);
    assert_eq!(a.reservers().count(), 1);
}
