//! The one place that reads Kubernetes objects into the allocator's inputs: a Service into a
//! [`Request`] (families, pool, addresses, sharing key, ports, policy), an IPPool into a
//! [`PoolConfig`]. Pure: it looks at the objects and a namespace's labels, nothing else.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ferrolb_crds::addresses::{AddressRange, parse_entry};
use ferrolb_crds::annotations::{ALLOCATED_FROM, IPS, POOL, SHARING_KEY};
use ferrolb_crds::{Family, IPPool, Protocol, ServiceKey, selector};
use k8s_openapi::api::core::v1::{Node, Service};

use crate::allocator::reserved::{self, Hole, subnet_router_anycast};
use crate::allocator::{DualStack, PoolConfig, Request, Selection, TrafficPolicy};

/// Whether the controller handles a Service: type LoadBalancer and a matching class.
pub fn is_handled(svc: &Service, lb_class: &str, class_only: bool) -> bool {
    let Some(spec) = &svc.spec else { return false };
    if spec.type_.as_deref() != Some("LoadBalancer") {
        return false;
    }
    match spec.load_balancer_class.as_deref() {
        Some(class) => class == lb_class,
        None => !class_only,
    }
}

/// The addresses a Service's status shows.
pub fn status_ips(svc: &Service) -> Vec<IpAddr> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .collect()
}

fn parse_family(s: &str) -> Result<Family, String> {
    match s {
        "IPv4" => Ok(Family::V4),
        "IPv6" => Ok(Family::V6),
        other => Err(format!("unknown ipFamily {other:?}")),
    }
}

/// Reads the request; an error says, in words, what is wrong with the Service's annotations.
pub fn parse(svc: &Service, namespace_labels: &BTreeMap<String, String>) -> Result<Request, String> {
    let empty = BTreeMap::new();
    let annotations = svc.metadata.annotations.as_ref().unwrap_or(&empty);
    let spec = svc.spec.clone().unwrap_or_default();
    let mut families: Vec<Family> =
        spec.ip_families.iter().flatten().map(|f| parse_family(f)).collect::<Result<_, _>>()?;
    let dual = match spec.ip_family_policy.as_deref() {
        None | Some("SingleStack") => DualStack::Single,
        Some("PreferDualStack") => DualStack::Prefer,
        Some("RequireDualStack") => DualStack::Require,
        Some(other) => return Err(format!("unknown ipFamilyPolicy {other:?}")),
    };
    let found = |a: &ferrolb_crds::annotations::Annotation| a.get(annotations).map_err(|e| e.to_string());
    let ips_annotation = found(&IPS)?;
    let lb_ip = spec.load_balancer_ip.as_deref().map(str::trim).filter(|s| !s.is_empty());
    let ips: Vec<IpAddr> = match (ips_annotation, lb_ip) {
        (Some(a), Some(_)) => {
            return Err(format!("both the {} annotation and spec.loadBalancerIP are set; use only one", a.key));
        }
        (Some(a), None) => a
            .value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<IpAddr>().map_err(|_| format!("{}: {s:?} is not an IP address", a.key)))
            .collect::<Result<_, _>>()?,
        (None, Some(ip)) => {
            vec![ip.parse::<IpAddr>().map_err(|_| format!("spec.loadBalancerIP: {ip:?} is not an IP address"))?]
        }
        (None, None) => Vec::new(),
    };
    let requested_families: BTreeSet<Family> = ips.iter().map(Family::of).collect();
    if requested_families.len() != ips.len() {
        return Err("at most one requested address per family may be given".into());
    }
    if families.is_empty() {
        // The API server always fills ipFamilies; fall back to the requested addresses' order.
        families = ips.iter().map(Family::of).collect();
        if families.is_empty() {
            families.push(Family::V4);
        }
    }
    let mut ports = BTreeSet::new();
    for p in spec.ports.iter().flatten() {
        let proto = Protocol::parse(p.protocol.as_deref())
            .ok_or_else(|| format!("unknown port protocol {:?}", p.protocol.as_deref().unwrap_or_default()))?;
        let port = u16::try_from(p.port).map_err(|_| format!("port {} is out of range", p.port))?;
        ports.insert((proto, port));
    }
    let policy = match spec.external_traffic_policy.as_deref() {
        Some("Local") => TrafficPolicy::Local(spec.selector.unwrap_or_default()),
        _ => TrafficPolicy::Cluster,
    };
    Ok(Request {
        key: ServiceKey::of(svc),
        namespace: svc.metadata.namespace.clone().unwrap_or_default(),
        labels: svc.metadata.labels.clone().unwrap_or_default(),
        namespace_labels: namespace_labels.clone(),
        families,
        dual,
        pool: found(&POOL)?.map(|f| f.value.to_string()),
        ips,
        sharing_key: found(&SHARING_KEY)?.map(|f| f.value.to_string()),
        ports,
        policy,
    })
}

/// A Service's ClusterIPs (none for a headless one).
pub fn cluster_ips(svc: &Service) -> Vec<IpAddr> {
    let spec = svc.spec.as_ref();
    let ips = spec.and_then(|s| s.cluster_ips.clone()).unwrap_or_default();
    let ips = if ips.is_empty() { spec.and_then(|s| s.cluster_ip.clone()).into_iter().collect() } else { ips };
    ips.iter().filter_map(|ip| ip.parse().ok()).collect()
}

/// A Node's addresses (InternalIP, ExternalIP, whatever parses as an address).
pub fn node_ips(node: &Node) -> Vec<IpAddr> {
    let addresses = node.status.as_ref().and_then(|s| s.addresses.as_ref());
    addresses.into_iter().flatten().filter_map(|a| a.address.parse().ok()).collect()
}

/// The pool the Service's `ferrolb.io/allocated-from` annotation names.
pub fn allocated_from(svc: &Service) -> Option<&str> {
    svc.metadata.annotations.as_ref()?.get(ALLOCATED_FROM).map(String::as_str)
}

/// The request, or — when the Service's annotations are bad — the request without them, so a
/// Service keeps what it has while its annotations are fixed; the error is returned beside it.
pub fn request_or_plain(svc: &Service, ns_labels: &BTreeMap<String, String>) -> (Option<Request>, Option<String>) {
    match parse(svc, ns_labels) {
        Ok(r) => (Some(r), None),
        Err(e) => {
            let mut plain = svc.clone();
            if let Some(a) = plain.metadata.annotations.as_mut() {
                for name in IPS.names().chain(POOL.names()).chain(SHARING_KEY.names()) {
                    a.remove(name);
                }
            }
            if let Some(spec) = plain.spec.as_mut() {
                spec.load_balancer_ip = None;
            }
            (parse(&plain, ns_labels).ok(), Some(e))
        }
    }
}

/// A pool's settings and what is wrong with its spec (entries that did not parse, special-purpose
/// addresses or the cluster's own ranges (`cluster`) in it, bad selectors). The ranges it returns
/// are only what may be handed out.
pub fn pool_config(pool: &IPPool, cluster: &[Hole]) -> (PoolConfig, Vec<String>) {
    let spec = &pool.spec;
    let mut errors = Vec::new();
    let ranges = spec
        .addresses
        .iter()
        .filter_map(|e| parse_entry(e).map_err(|err| errors.push(err.to_string())).ok())
        .collect::<Vec<_>>();
    // Each IPv6 subnet's anycast address goes without a word: a /64 pool is an ordinary thing.
    let anycast: Vec<Hole> = spec
        .addresses
        .iter()
        .filter_map(|e| subnet_router_anycast(e))
        .filter_map(|ip| Some(Hole { range: AddressRange::new(ip, ip)?, what: "subnet-router anycast".into() }))
        .collect();
    let (ranges, _) = reserved::subtract(&ranges, &anycast);
    let mut holes = reserved::special();
    holes.extend(cluster.iter().cloned());
    let (ranges, cut) = reserved::subtract(&ranges, &holes);
    if !cut.is_empty() {
        errors.push(format!("never handed out: {}", cut.join(", ")));
    }
    let sa = spec.service_allocation.clone();
    let given = sa.clone().unwrap_or_default();
    for (what, sel) in [("namespaceSelector", &given.namespace_selector), ("serviceSelector", &given.service_selector)]
    {
        if let Some(sel) = sel
            && let Err(e) = selector::matches(sel, &BTreeMap::new())
        {
            errors.push(format!("serviceAllocation.{what}: {e}"));
        }
    }
    if ranges.is_empty() && !spec.addresses.is_empty() || spec.addresses.is_empty() {
        errors.push("the pool has no usable addresses".into());
    }
    let config = PoolConfig {
        ranges,
        auto_assign: spec.auto_assign,
        avoid_buggy_ips: spec.avoid_buggy_ips,
        priority: spec.priority,
        disabled: spec.disabled,
        share_across_namespaces: spec.share_across_namespaces,
        selection: sa.map(|sa| Selection {
            namespaces: sa.namespaces,
            namespace_selector: sa.namespace_selector,
            service_selector: sa.service_selector,
        }),
    };
    (config, errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn handled_services() {
        let lb = |class: Option<&str>| {
            svc(
                json!({"metadata": {"name": "a", "namespace": "n"}, "spec": {"type": "LoadBalancer", "loadBalancerClass": class}}),
            )
        };
        assert!(is_handled(&lb(None), "ferrolb.io/lb", false));
        assert!(!is_handled(&lb(None), "ferrolb.io/lb", true));
        assert!(is_handled(&lb(Some("ferrolb.io/lb")), "ferrolb.io/lb", true));
        assert!(!is_handled(&lb(Some("other/lb")), "ferrolb.io/lb", false));
        let np = svc(json!({"metadata": {"name": "a"}, "spec": {"type": "NodePort"}}));
        assert!(!is_handled(&np, "ferrolb.io/lb", false));
    }

    #[test]
    fn reads_annotations_aliases_and_spec() {
        let s = svc(json!({"metadata": {"name": "a", "namespace": "n", "annotations": {
                "metallb.universe.tf/address-pool": "home", "metallb.io/loadBalancerIPs": "198.51.100.5, 2001:db8::5",
                "ferrolb.io/sharing-key": "k"}},
            "spec": {"type": "LoadBalancer", "ipFamilyPolicy": "PreferDualStack", "ipFamilies": ["IPv6", "IPv4"],
                "externalTrafficPolicy": "Local", "selector": {"app": "x"},
                "ports": [{"port": 80}, {"port": 53, "protocol": "UDP"}]}}));
        let r = parse(&s, &BTreeMap::new()).unwrap();
        assert_eq!(r.key, "n/a");
        assert_eq!(r.pool.as_deref(), Some("home"));
        assert_eq!(r.ips.len(), 2);
        assert_eq!(r.families, [Family::V6, Family::V4]);
        assert_eq!(r.dual, DualStack::Prefer);
        assert_eq!(r.sharing_key.as_deref(), Some("k"));
        assert!(r.ports.contains(&(Protocol::Udp, 53)));
        assert!(matches!(r.policy, TrafficPolicy::Local(_)));
    }

    #[test]
    fn pools_never_offer_special_or_cluster_addresses() {
        let pool = |addresses: serde_json::Value| {
            IPPool::new("p", serde_json::from_value(json!({"addresses": addresses})).unwrap())
        };
        let (config, errors) = pool_config(&pool(json!(["0.0.0.0/0", "::/0"])), &[]);
        let first = |f: Family| config.ranges.iter().find(|r| r.family() == f).unwrap().start();
        assert_eq!(first(Family::V4), "1.0.0.0".parse::<IpAddr>().unwrap());
        assert_eq!(first(Family::V6), "::2".parse::<IpAddr>().unwrap(), "neither :: (anycast, unspecified) nor ::1");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("never handed out: 0.0.0.0-0.255.255.255 (unspecified"), "{errors:?}");
        // An ordinary IPv6 subnet loses only its anycast address, without a word.
        let (config, errors) = pool_config(&pool(json!(["2001:db8::/126"])), &[]);
        assert_eq!(config.ranges[0].to_string(), "2001:db8::1-2001:db8::3");
        assert!(errors.is_empty());
        // The cluster's Service CIDR.
        let service_cidr = Hole::parse("10.96.0.0/12", "reserved by --reserved-cidrs").unwrap();
        let (config, errors) = pool_config(&pool(json!(["10.96.0.0/30", "10.255.0.1"])), &[service_cidr]);
        assert_eq!(config.ranges.len(), 1);
        assert!(errors[0].contains("10.96.0.0-10.111.255.255 (reserved by --reserved-cidrs)"), "{errors:?}");
        let (_, errors) = pool_config(&pool(json!(["127.0.0.1"])), &[]);
        assert!(errors.iter().any(|e| e.contains("no usable addresses")), "{errors:?}");
    }

    #[test]
    fn cluster_and_node_addresses() {
        let s = svc(
            json!({"metadata": {"name": "a"}, "spec": {"clusterIP": "10.96.0.5", "clusterIPs": ["10.96.0.5", "fd00::5"]}}),
        );
        assert_eq!(cluster_ips(&s).len(), 2);
        let headless = svc(json!({"metadata": {"name": "a"}, "spec": {"clusterIP": "None"}}));
        assert!(cluster_ips(&headless).is_empty());
        let node: Node = serde_json::from_value(json!({"metadata": {"name": "n"}, "status": {"addresses": [
            {"type": "InternalIP", "address": "198.51.100.7"}, {"type": "Hostname", "address": "n"}]}}))
        .unwrap();
        assert_eq!(node_ips(&node), ["198.51.100.7".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn bad_input_is_explained() {
        let with = |ann: serde_json::Value, lb_ip: Option<&str>| {
            parse(
                &svc(json!({"metadata": {"name": "a", "namespace": "n", "annotations": ann},
                    "spec": {"type": "LoadBalancer", "loadBalancerIP": lb_ip, "ipFamilies": ["IPv4"]}})),
                &BTreeMap::new(),
            )
            .unwrap_err()
        };
        assert!(with(json!({"ferrolb.io/ips": "garbage"}), None).contains("not an IP address"));
        assert!(with(json!({"ferrolb.io/ips": "198.51.100.1"}), Some("198.51.100.2")).contains("use only one"));
        assert!(
            with(json!({"ferrolb.io/ips": "198.51.100.1,198.51.100.2"}), None)
                .contains("one requested address per family")
        );
        assert!(with(json!({}), Some("nope")).contains("spec.loadBalancerIP"));
        assert!(with(json!({"ferrolb.io/pool": "a", "metallb.io/address-pool": "b"}), None).contains("disagree"));
    }
}
