//! Service defaulting, validation and ClusterIP/NodePort allocation, as kube-apiserver does them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::ops::RangeInclusive;

use ipnetwork::IpNetwork;
use serde_json::{Value, json};

use super::error::Cause;
use super::store::{ObjectKey, object_key};

/// The cluster's Service address ranges and NodePort range, and what is taken from them.
#[derive(Debug, Clone)]
pub struct ServiceNetwork {
    /// ClusterIP ranges; the first one's family is the cluster's primary family.
    pub cidrs: Vec<IpNetwork>,
    /// The NodePort range (`--service-node-port-range`).
    pub node_ports: RangeInclusive<u16>,
    ips: BTreeMap<IpAddr, ObjectKey>,
    ports: BTreeMap<u16, ObjectKey>,
}

impl ServiceNetwork {
    /// The address of the `kubernetes` Service: the first of the primary range.
    pub fn kubernetes_ip(&self) -> Option<IpAddr> {
        match self.cidrs.first()? {
            IpNetwork::V4(n) => Some(IpAddr::V4((u32::from(n.network()) + 1).into())),
            IpNetwork::V6(n) => Some(IpAddr::V6((u128::from(n.network()) + 1).into())),
        }
    }

    /// A network with nothing allocated.
    pub fn new(cidrs: Vec<IpNetwork>, node_ports: RangeInclusive<u16>) -> Self {
        Self { cidrs, node_ports, ips: BTreeMap::new(), ports: BTreeMap::new() }
    }

    /// Frees what `svc` held.
    pub fn release(&mut self, svc: Option<&Value>) {
        let Some(svc) = svc else { return };
        for ip in cluster_ips(svc) {
            self.ips.remove(&ip);
        }
        for port in node_ports(svc) {
            self.ports.remove(&port);
        }
    }

    /// Records what `svc` holds.
    pub fn reserve(&mut self, svc: &Value) {
        let key = object_key(svc);
        for ip in cluster_ips(svc) {
            self.ips.insert(ip, key.clone());
        }
        for port in node_ports(svc) {
            self.ports.insert(port, key.clone());
        }
    }

    fn family_cidr(&self, family: &str) -> Option<IpNetwork> {
        self.cidrs.iter().copied().find(|c| family_of_net(c) == family)
    }

    fn families(&self) -> Vec<&'static str> {
        let mut out: Vec<&'static str> = Vec::new();
        for c in &self.cidrs {
            let f = family_of_net(c);
            if !out.contains(&f) {
                out.push(f);
            }
        }
        out
    }

    fn allocate_ip(&mut self, family: &str, taken: &BTreeSet<IpAddr>) -> Option<IpAddr> {
        let cidr = self.family_cidr(family)?;
        let (base, size) = match cidr {
            IpNetwork::V4(n) => (u128::from(u32::from(n.network())), 1u128 << (32 - u32::from(n.prefix()))),
            IpNetwork::V6(n) => {
                let bits = (128 - u32::from(n.prefix())).min(32);
                (u128::from(n.network()), 1u128 << bits)
            }
        };
        // Skip the network address (and, for IPv4, the broadcast address), as the real allocator
        // does; start at a random place and probe from there, as its bitmap allocator does, so
        // that a test never gets the addresses in order (which would hide collisions).
        let usable = size.saturating_sub(2).max(1);
        let start = random_below(usable);
        for i in 0..usable {
            let offset = 1 + (start + i) % usable;
            let ip = match cidr {
                IpNetwork::V4(_) => IpAddr::V4(u32::try_from(base + offset).ok()?.into()),
                IpNetwork::V6(_) => IpAddr::V6((base + offset).into()),
            };
            if !self.ips.contains_key(&ip) && !taken.contains(&ip) {
                return Some(ip);
            }
        }
        None
    }

    fn allocate_port(&self, taken: &BTreeSet<u16>) -> Option<u16> {
        let (first, count) = (u128::from(*self.node_ports.start()), self.node_ports.clone().count() as u128);
        let start = random_below(count.max(1));
        (0..count)
            .filter_map(|i| u16::try_from(first + (start + i) % count).ok())
            .find(|p| !self.ports.contains_key(p) && !taken.contains(p))
    }
}

/// A random number below `n` (> 0).
fn random_below(n: u128) -> u128 {
    uuid::Uuid::new_v4().as_u128() % n
}

fn family_of_net(c: &IpNetwork) -> &'static str {
    if c.is_ipv4() { "IPv4" } else { "IPv6" }
}

fn family_of(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() { "IPv4" } else { "IPv6" }
}

fn cluster_ips(svc: &Value) -> Vec<IpAddr> {
    let spec = &svc["spec"];
    let mut out: Vec<IpAddr> =
        spec["clusterIPs"].as_array().into_iter().flatten().filter_map(|v| v.as_str()?.parse().ok()).collect();
    if let Some(ip) = spec["clusterIP"].as_str().and_then(|s| s.parse().ok())
        && !out.contains(&ip)
    {
        out.push(ip);
    }
    out
}

fn node_ports(svc: &Value) -> BTreeSet<u16> {
    let spec = &svc["spec"];
    let mut out: BTreeSet<u16> = spec["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["nodePort"].as_u64().and_then(|n| u16::try_from(n).ok()))
        .filter(|n| *n != 0)
        .collect();
    if let Some(hc) = spec["healthCheckNodePort"].as_u64().and_then(|n| u16::try_from(n).ok())
        && hc != 0
    {
        out.insert(hc);
    }
    out
}

fn set_default(obj: &mut Value, key: &str, value: Value) {
    if obj.get(key).is_none_or(Value::is_null) {
        obj[key] = value;
    }
}

fn needs_node_ports(spec: &Value) -> bool {
    match spec["type"].as_str() {
        Some("NodePort") => true,
        Some("LoadBalancer") => spec["allocateLoadBalancerNodePorts"].as_bool() != Some(false),
        _ => false,
    }
}

/// Applies defaults, validates, and allocates ClusterIPs and NodePorts for a Service being
/// created (`old` is None) or updated. Nothing is reserved here; the store reserves on commit.
pub fn admit(svc: &mut Value, old: Option<&Value>, net: &mut ServiceNetwork) -> Result<(), Vec<Cause>> {
    let mut causes = Vec::new();
    if !svc["spec"].is_object() {
        svc["spec"] = json!({});
    }
    let old_spec = old.map(|o| o["spec"].clone()).unwrap_or(Value::Null);
    let me = object_key(svc);
    let ranges_annotation = svc["metadata"]["annotations"]["service.beta.kubernetes.io/load-balancer-source-ranges"]
        .as_str()
        .map(String::from);
    let spec = &mut svc["spec"];
    set_default(spec, "type", json!("ClusterIP"));
    let ty = spec["type"].as_str().unwrap_or_default().to_string();
    if !["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"].contains(&ty.as_str()) {
        causes.push(Cause::new("spec.type", format!("Unsupported value: {ty:?}: supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\"")));
        return Err(causes);
    }
    drop_type_dependent_fields(spec, &old_spec);
    set_default(spec, "sessionAffinity", json!("None"));
    if ty != "ExternalName" {
        set_default(spec, "internalTrafficPolicy", json!("Cluster"));
    }
    if ty == "NodePort" || ty == "LoadBalancer" {
        set_default(spec, "externalTrafficPolicy", json!("Cluster"));
    } else if spec.get("externalTrafficPolicy").is_some_and(|v| !v.is_null()) {
        causes.push(Cause::new(
            "spec.externalTrafficPolicy",
            "Invalid value: may only be set when `type` is 'NodePort' or 'LoadBalancer'",
        ));
    }
    if ty == "LoadBalancer" {
        set_default(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
    validate_lb_fields(spec, &old_spec, &ty, ranges_annotation.as_deref(), &mut causes);
    validate_ports(spec, &ty, net, &mut causes);
    if !causes.is_empty() {
        return Err(causes);
    }
    if ty != "ExternalName" {
        assign_cluster_ips(spec, &old_spec, net, &mut causes);
    }
    if !causes.is_empty() {
        return Err(causes);
    }
    assign_node_ports(spec, &old_spec, net, &me, &mut causes);
    if old.is_none() {
        // A new Service's status is the empty ServiceStatus, whatever the request carried.
        svc["status"] = json!({"loadBalancer": {}});
    }
    if causes.is_empty() { Ok(()) } else { Err(causes) }
}

/// When the type changes away from NodePort/LoadBalancer, fields that only make sense there are
/// dropped unless the same request changed them (as the real Service strategy does).
fn drop_type_dependent_fields(spec: &mut Value, old: &Value) {
    let (ty, old_ty) =
        (spec["type"].as_str().unwrap_or_default().to_string(), old["type"].as_str().unwrap_or_default());
    let unchanged = |spec: &Value, k: &str| spec.get(k) == old.get(k);
    if (old_ty == "NodePort" || old_ty == "LoadBalancer") && !needs_node_ports(spec) {
        let same_ports = spec["ports"].as_array().zip(old["ports"].as_array()).is_some_and(|(n, o)| {
            n.iter().all(|p| p["nodePort"].is_null() || o.iter().any(|q| q["nodePort"] == p["nodePort"]))
        });
        if same_ports && let Some(ports) = spec["ports"].as_array_mut() {
            for p in ports {
                if let Some(p) = p.as_object_mut() {
                    p.remove("nodePort");
                }
            }
        }
    }
    if ty != "NodePort" && ty != "LoadBalancer" {
        for k in ["externalTrafficPolicy", "healthCheckNodePort"] {
            if unchanged(spec, k)
                && let Some(o) = spec.as_object_mut()
            {
                o.remove(k);
            }
        }
    }
    if ty != "LoadBalancer" {
        for k in ["allocateLoadBalancerNodePorts", "loadBalancerClass"] {
            if unchanged(spec, k)
                && let Some(o) = spec.as_object_mut()
            {
                o.remove(k);
            }
        }
    }
    if spec["externalTrafficPolicy"] != json!("Local")
        && unchanged(spec, "healthCheckNodePort")
        && let Some(o) = spec.as_object_mut()
    {
        o.remove("healthCheckNodePort");
    }
}

fn validate_lb_fields(spec: &Value, old: &Value, ty: &str, ranges_annotation: Option<&str>, causes: &mut Vec<Cause>) {
    let class = &spec["loadBalancerClass"];
    if !class.is_null() && ty != "LoadBalancer" {
        causes.push(Cause::new("spec.loadBalancerClass", "Forbidden: may only be used when `type` is 'LoadBalancer'"));
    }
    if ty == "LoadBalancer" && old["type"] == json!("LoadBalancer") && old["loadBalancerClass"] != *class {
        causes.push(Cause::new("spec.loadBalancerClass", "Invalid value: may not change once set"));
    }
    if let Some(ip) = spec["loadBalancerIP"].as_str()
        && !ip.is_empty()
        && ip.parse::<IpAddr>().is_err()
    {
        causes.push(Cause::new("spec.loadBalancerIP", format!("Invalid value: {ip:?}: must be a valid IP address")));
    }
    // kube-apiserver reads these as netutils.ParseCIDRSloppy does: IPv4 octets may have leading
    // zeros, and entries may be space-padded.
    let sloppy = |s: &str| {
        let s = s.trim();
        let (ip, prefix) = s.split_once('/').unwrap_or((s, ""));
        let ip = if ip.contains(':') {
            ip.to_string()
        } else {
            ip.split('.')
                .map(|o| o.trim_start_matches('0'))
                .map(|o| if o.is_empty() { "0" } else { o })
                .collect::<Vec<_>>()
                .join(".")
        };
        format!("{ip}/{prefix}").parse::<IpNetwork>().is_ok()
    };
    let ranges = spec["loadBalancerSourceRanges"].as_array().filter(|r| !r.is_empty());
    for (i, r) in ranges.into_iter().flatten().enumerate() {
        if !r.as_str().is_some_and(sloppy) {
            causes.push(Cause::new(
                format!("spec.loadBalancerSourceRanges[{i}]"),
                format!("Invalid value: {r}: must be a valid CIDR"),
            ));
        }
    }
    if ranges.is_none()
        && ty == "LoadBalancer"
        && let Some(val) = ranges_annotation
    {
        for value in val.split(',').map(str::trim).filter(|v| !v.is_empty()) {
            if !sloppy(value) {
                causes.push(Cause::new(
                    "metadata.annotations[service.beta.kubernetes.io/load-balancer-source-ranges]",
                    format!("Invalid value: {value:?}: must be a CIDR"),
                ));
            }
        }
    }
    for (field, allowed) in [
        ("externalTrafficPolicy", &["Cluster", "Local"][..]),
        ("internalTrafficPolicy", &["Cluster", "Local"][..]),
        ("sessionAffinity", &["None", "ClientIP"][..]),
        ("ipFamilyPolicy", &["SingleStack", "PreferDualStack", "RequireDualStack"][..]),
    ] {
        if let Some(v) = spec[field].as_str()
            && !allowed.contains(&v)
        {
            causes.push(Cause::new(
                format!("spec.{field}"),
                format!("Unsupported value: {v:?}: supported values: {allowed:?}"),
            ));
        }
    }
}

fn validate_ports(spec: &mut Value, ty: &str, net: &ServiceNetwork, causes: &mut Vec<Cause>) {
    let headless = spec["clusterIP"] == json!("None");
    let ports = spec["ports"].as_array_mut();
    let Some(ports) = ports.filter(|p| !p.is_empty()) else {
        if ty != "ExternalName" && !headless {
            causes.push(Cause::new("spec.ports", "Required value"));
        }
        return;
    };
    let many = ports.len() > 1;
    let mut names = BTreeSet::new();
    let mut seen = BTreeSet::new();
    for (i, p) in ports.iter_mut().enumerate() {
        set_default(p, "protocol", json!("TCP"));
        if p.get("targetPort").is_none_or(Value::is_null) {
            p["targetPort"] = p["port"].clone();
        }
        let at = |f: &str| format!("spec.ports[{i}].{f}");
        let port = p["port"].as_u64().unwrap_or(0);
        if !(1..=65535).contains(&port) {
            causes.push(Cause::new(
                at("port"),
                format!("Invalid value: {}: must be between 1 and 65535, inclusive", p["port"]),
            ));
        }
        let proto = p["protocol"].as_str().unwrap_or_default().to_string();
        if !["TCP", "UDP", "SCTP"].contains(&proto.as_str()) {
            causes.push(Cause::new(
                at("protocol"),
                format!("Unsupported value: {proto:?}: supported values: \"SCTP\", \"TCP\", \"UDP\""),
            ));
        }
        let name = p["name"].as_str().unwrap_or_default().to_string();
        if many && name.is_empty() {
            causes.push(Cause::new(at("name"), "Required value"));
        } else if !name.is_empty() && !names.insert(name.clone()) {
            causes.push(Cause::new(at("name"), format!("Duplicate value: {name:?}")));
        }
        if !seen.insert((port, proto.clone())) {
            causes.push(Cause::new(format!("spec.ports[{i}]"), format!("Duplicate value: port {port}/{proto}")));
        }
        if let Some(np) = p["nodePort"].as_u64().filter(|n| *n != 0) {
            if ty == "ClusterIP" || ty == "ExternalName" {
                causes.push(Cause::new(at("nodePort"), format!("Forbidden: may not be used when `type` is '{ty}'")));
            } else if u16::try_from(np).map_or(true, |n| !net.node_ports.contains(&n)) {
                causes.push(Cause::new(
                    at("nodePort"),
                    format!(
                        "Invalid value: {np}: provided port is not in the valid range. The range of valid ports is {}-{}",
                        net.node_ports.start(),
                        net.node_ports.end()
                    ),
                ));
            }
        }
    }
}

fn assign_cluster_ips(spec: &mut Value, old: &Value, net: &mut ServiceNetwork, causes: &mut Vec<Cause>) {
    // Allocated values survive updates that omit them (kubectl apply, PUT without them).
    for k in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
        if spec.get(k).is_none_or(Value::is_null)
            && !old.get(k).is_none_or(Value::is_null)
            && old["type"] != json!("ExternalName")
        {
            spec[k] = old[k].clone();
        }
    }
    if !old.is_null() && !old["clusterIP"].is_null() && spec["clusterIP"] != old["clusterIP"] {
        causes.push(Cause::new("spec.clusterIPs[0]", "Invalid value: field is immutable"));
        return;
    }
    set_default(spec, "ipFamilyPolicy", json!("SingleStack"));
    let policy = spec["ipFamilyPolicy"].as_str().unwrap_or("SingleStack").to_string();
    let configured = net.families();
    let requested_ips: Vec<IpAddr> = match spec["clusterIPs"].as_array() {
        Some(ips) => ips.iter().filter_map(|v| v.as_str()?.parse().ok()).collect(),
        None => spec["clusterIP"].as_str().and_then(|s| s.parse().ok()).into_iter().collect(),
    };
    let mut families: Vec<String> = match spec["ipFamilies"].as_array() {
        Some(f) if !f.is_empty() => f.iter().filter_map(|v| v.as_str().map(String::from)).collect(),
        _ if !requested_ips.is_empty() => requested_ips.iter().map(|ip| family_of(ip).to_string()).collect(),
        _ => Vec::new(),
    };
    if families.is_empty() {
        families = match policy.as_str() {
            "SingleStack" => configured.iter().take(1).map(|f| f.to_string()).collect(),
            _ => configured.iter().map(|f| f.to_string()).collect(),
        };
    } else if policy != "SingleStack"
        && families.len() == 1
        && let Some(other) = configured.iter().find(|f| **f != families[0])
    {
        families.push(other.to_string());
    }
    for (i, f) in families.iter().enumerate() {
        if f != "IPv4" && f != "IPv6" {
            causes.push(Cause::new(
                format!("spec.ipFamilies[{i}]"),
                format!("Unsupported value: {f:?}: supported values: \"IPv4\", \"IPv6\""),
            ));
        } else if !configured.contains(&f.as_str()) {
            causes.push(Cause::new(
                format!("spec.ipFamilies[{i}]"),
                format!("Invalid value: {f:?}: not configured on this cluster"),
            ));
        }
    }
    if families.len() > 2 || (families.len() == 2 && families[0] == families[1]) {
        causes.push(Cause::new("spec.ipFamilies", "Invalid value: at most one of each family may be given"));
    }
    if policy == "SingleStack" && families.len() > 1 {
        causes.push(Cause::new(
            "spec.ipFamilyPolicy",
            "Invalid value: \"SingleStack\": must be dualStack ipFamilyPolicy when ipFamilies has two entries",
        ));
    }
    if policy == "RequireDualStack" && families.len() < 2 {
        causes.push(Cause::new(
            "spec.ipFamilyPolicy",
            "Invalid value: \"RequireDualStack\": this cluster is not configured for dual-stack services",
        ));
    }
    if !causes.is_empty() {
        return;
    }
    spec["ipFamilies"] = json!(families);
    if spec["clusterIP"] == json!("None") {
        spec["clusterIPs"] = json!(["None"]);
        return;
    }
    let mut ips: Vec<IpAddr> = Vec::new();
    let mut taken = BTreeSet::new();
    for (i, family) in families.iter().enumerate() {
        if let Some(ip) = requested_ips.iter().find(|ip| family_of(ip) == family) {
            let in_range = net.family_cidr(family).is_some_and(|c| c.contains(*ip));
            let owner = net.ips.get(ip);
            let mine =
                old["clusterIPs"].as_array().is_some_and(|a| a.iter().any(|v| v.as_str() == Some(&ip.to_string())));
            if !in_range {
                causes.push(Cause::new(
                    format!("spec.clusterIPs[{i}]"),
                    format!("Invalid value: {ip:?}: provided IP is not in the valid range"),
                ));
            } else if owner.is_some() && !mine {
                causes.push(Cause::new(
                    format!("spec.clusterIPs[{i}]"),
                    format!("Invalid value: {ip:?}: provided IP is already allocated"),
                ));
            }
            ips.push(*ip);
        } else if let Some(ip) = net.allocate_ip(family, &taken) {
            taken.insert(ip);
            ips.push(ip);
        } else {
            causes.push(Cause::new(
                format!("spec.clusterIPs[{i}]"),
                format!("Internal error: no {family} ClusterIP is free"),
            ));
        }
    }
    if causes.is_empty() {
        spec["clusterIP"] = json!(ips[0].to_string());
        spec["clusterIPs"] = json!(ips.iter().map(ToString::to_string).collect::<Vec<_>>());
    }
}

fn assign_node_ports(spec: &mut Value, old: &Value, net: &ServiceNetwork, me: &ObjectKey, causes: &mut Vec<Cause>) {
    let old_ports: Vec<Value> = old["ports"].as_array().cloned().unwrap_or_default();
    let mine = |n: u16| net.ports.get(&n).is_none_or(|owner| owner == me);
    let allocate = needs_node_ports(spec);
    let as_port = |v: &Value| v.as_u64().and_then(|n| u16::try_from(n).ok()).filter(|n| *n != 0);
    let Some(ports) = spec["ports"].as_array_mut() else { return };
    // First what the request names or the old object held, then fresh ports for the rest, so a
    // fresh port never collides with one named later in the list. One Service may repeat a port
    // for TCP and UDP of the same number, as Kubernetes allows.
    let mut chosen: Vec<Option<u16>> = Vec::with_capacity(ports.len());
    for (i, p) in ports.iter().enumerate() {
        let kept = || {
            old_ports
                .iter()
                .find(|o| o["port"] == p["port"] && o["protocol"] == p["protocol"])
                .and_then(|o| as_port(&o["nodePort"]))
                .filter(|_| allocate)
        };
        let n = as_port(&p["nodePort"]).or_else(kept);
        if let Some(n) = n.filter(|n| !mine(*n)) {
            causes.push(Cause::new(
                format!("spec.ports[{i}].nodePort"),
                format!("Invalid value: {n}: provided port is already allocated"),
            ));
        }
        chosen.push(n);
    }
    let mut taken: BTreeSet<u16> = chosen.iter().flatten().copied().collect();
    for (i, (p, n)) in ports.iter_mut().zip(chosen).enumerate() {
        let n = match n {
            Some(n) => n,
            None if allocate => match net.allocate_port(&taken) {
                Some(n) => n,
                None => {
                    causes.push(Cause::new(format!("spec.ports[{i}].nodePort"), "Internal error: no NodePort is free"));
                    continue;
                }
            },
            None => continue,
        };
        taken.insert(n);
        p["nodePort"] = json!(n);
    }
    let wants_hc = spec["type"] == json!("LoadBalancer") && spec["externalTrafficPolicy"] == json!("Local");
    if wants_hc {
        let hc = as_port(&spec["healthCheckNodePort"]).or_else(|| as_port(&old["healthCheckNodePort"]));
        match hc {
            Some(n) if !mine(n) || taken.contains(&n) => {
                causes.push(Cause::new(
                    "spec.healthCheckNodePort",
                    format!("Invalid value: {n}: provided port is already allocated"),
                ));
            }
            Some(n) => spec["healthCheckNodePort"] = json!(n),
            None => match net.allocate_port(&taken) {
                Some(n) => spec["healthCheckNodePort"] = json!(n),
                None => causes.push(Cause::new("spec.healthCheckNodePort", "Internal error: no NodePort is free")),
            },
        }
    }
}
