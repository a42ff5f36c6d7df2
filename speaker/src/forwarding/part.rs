//! What one Service adds to ferrolb's table: a chain per port and family that spreads new
//! connections over the endpoints, the elements of the fixed maps that lead there, and ClientIP
//! affinity sets. Pure.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::render::{ForwardedService, MASQ_MARK, Port, VIP_SNAT_MARK, group, nft_protocol};

/// What one Service adds to the table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Part {
    /// The Service it was built from (to reuse the part while the Service stays the same).
    pub(super) service: ForwardedService,
    /// Regular chains by name, each with its rules.
    pub(super) chains: BTreeMap<String, Vec<String>>,
    /// Elements of the fixed maps and sets by set name: key → value (empty for plain sets).
    pub(super) elements: BTreeMap<&'static str, BTreeMap<String, String>>,
    /// ClientIP affinity sets: name → declaration.
    pub(super) affinity_sets: BTreeMap<String, String>,
    /// Some keys were left out because an earlier Service holds them: rebuild every time.
    pub(super) shadowed: bool,
}

impl Part {
    /// The chains, elements and sets of one Service.
    pub(super) fn of(svc: &ForwardedService) -> Part {
        let mut part = Part { service: svc.clone(), ..Part::default() };
        for p in &svc.ports {
            for v6 in [false, true] {
                part.add_port(svc, p, v6);
            }
        }
        part
    }

    /// Adds one Service port of one family: its chains and its map elements.
    fn add_port(&mut self, svc: &ForwardedService, p: &Port, v6: bool) {
        let (family, saddr, vips_map, refused) =
            if v6 { ("v6", "ip6 saddr", "vips_v6", "refused_v6") } else { ("v4", "ip saddr", "vips_v4", "refused_v4") };
        let l4 = nft_protocol(p.proto);
        // Kubernetes names are DNS labels, so the Service key is a valid part of an nft identifier.
        let chain = format!("svc/{}/{l4}/{}/{family}", svc.key, p.port);
        let eps: Vec<&(IpAddr, u16)> = p.endpoints.iter().filter(|(ip, _)| ip.is_ipv6() == v6).collect();
        let guarded = svc.source_ranges.is_some();
        let mut insert = |set: &'static str, key: String, value: String| {
            // The API refuses a Service that lists a port twice; if one slipped through, its
            // first listing wins.
            let taken = self.elements.iter().any(|(s, e)| group(s) == group(set) && e.contains_key(&key));
            if !taken {
                self.elements.entry(set).or_default().insert(key, value);
            }
        };
        for vip in svc.vips.iter().filter(|ip| ip.is_ipv6() == v6) {
            let key = format!("{} . {l4} . {}", addr(vip), p.port);
            match (eps.is_empty(), guarded) {
                (true, _) => insert(refused, key, String::new()),
                (false, false) => insert(vips_map, key, format!("goto {chain}")),
                (false, true) => insert(vips_map, key, format!("goto {chain}/lb")),
            }
        }
        // NodePorts follow the IPv4 endpoints when there are any, else the IPv6 ones: one key for
        // both families.
        if let Some(np) = p.node_port {
            let has_v4 = p.endpoints.iter().any(|(ip, _)| ip.is_ipv4());
            let key = format!("{l4} . {np}");
            if p.endpoints.is_empty() {
                if !v6 {
                    insert("refused_nodeports", key, String::new());
                }
            } else if v6 != has_v4 {
                insert("nodeports", key, format!("goto {chain}"));
            }
        }
        if eps.is_empty() {
            return;
        }
        let mut rules = Vec::new();
        if svc.replicate {
            rules.push(format!("meta mark set meta mark | {VIP_SNAT_MARK:#x}"));
        } else if !svc.local {
            rules.push(format!("meta mark set meta mark | {MASQ_MARK:#x}"));
        }
        let mut actions: Vec<String> = eps
            .iter()
            .map(|(ip, port)| format!("meta l4proto {l4} dnat {} to {}", fam(ip), target(ip, *port)))
            .collect();
        if let Some(timeout) = svc.affinity.filter(|_| eps.len() > 1) {
            // ClientIP affinity: a client seen recently goes back to its endpoint, whose chain
            // refreshes the memory. The timeout is part of the set's name, so changing it makes a
            // new set rather than an update in place.
            let kind = if v6 { "ipv6_addr" } else { "ipv4_addr" };
            for (i, action) in actions.iter_mut().enumerate() {
                let set = format!("aff/{}/{l4}/{}/{family}/{i}/{timeout}", svc.key, p.port);
                let ep_chain = format!("{chain}/ep{i}");
                self.affinity_sets
                    .insert(set.clone(), format!("type {kind}; flags dynamic,timeout; timeout {timeout}s;"));
                rules.push(format!("{saddr} @{set} goto {ep_chain}"));
                self.chains.insert(ep_chain.clone(), vec![format!("update @{set} {{ {saddr} }}"), action.clone()]);
                *action = format!("goto {ep_chain}");
            }
        }
        // Endpoint i of n is taken with probability 1/(n-i) among those left: 1/n each.
        let n = actions.len();
        for (i, action) in actions.into_iter().enumerate() {
            if i + 1 < n {
                rules.push(format!("numgen random mod {} == 0 {action}", n - i));
            } else {
                rules.push(action);
            }
        }
        self.chains.insert(chain.clone(), rules);
        if guarded && svc.vips.iter().any(|ip| ip.is_ipv6() == v6) {
            // No range of this family: clients of this family are not allowed at all.
            let mut lb: Vec<String> = svc
                .source_ranges
                .iter()
                .flatten()
                .filter(|r| r.is_ipv6() == v6)
                .map(|r| format!("{saddr} {r} goto {chain}"))
                .collect();
            lb.push("drop".into());
            self.chains.insert(format!("{chain}/lb"), lb);
        }
    }
}

fn fam(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() { "ip" } else { "ip6" }
}

fn addr(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => a.to_string(),
    }
}

fn target(ip: &IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}
