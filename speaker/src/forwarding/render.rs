//! Renders ferrolb's nftables table from what the node must forward, and the transaction that
//! turns one such table into another. Pure: the same input always gives the same text, which
//! golden tests pin and the kernel checks (`tests/tests/forwarding_render.rs`).
//!
//! Shape: verdict maps keyed by (address, protocol, port) — and (protocol, port) for NodePorts on
//! any local address — jump to one chain per Service port and family, so the per-packet cost does
//! not grow with the number of Services. A Service chain spreads new connections over its
//! endpoints with one `numgen` rule per endpoint and no set of its own: the kernel's cost of
//! binding thousands of small sets (anonymous vmaps) grows with their number squared, and a
//! Service made of plain rules can be rewritten alone. Cluster policy marks the packet for
//! masquerade, Local does not (the backend sees the client). A port with no ready endpoint is
//! rejected in the filter hooks (`reject` is not allowed in NAT chains), so clients are refused at
//! once.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;

use ipnetwork::IpNetwork;

/// The table's name (family `inet`).
pub const TABLE: &str = "ferrolb";

/// The packet mark that asks for masquerading.
pub const MASQ_MARK: u32 = 0x4000;

/// A transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Proto {
    fn nft(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }
}

/// One port of a Service and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// Protocol.
    pub proto: Proto,
    /// The Service port (on the VIPs).
    pub port: u16,
    /// The NodePort, if any.
    pub node_port: Option<u16>,
    /// Ready endpoints this node may send to (Local policy: only the local ones), as
    /// (address, target port).
    pub endpoints: Vec<(IpAddr, u16)>,
}

/// A Service as the forwarding sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Service {
    /// `namespace/name`, for comments.
    pub key: String,
    /// Its load-balancer addresses.
    pub vips: Vec<IpAddr>,
    /// Its ports.
    pub ports: Vec<Port>,
    /// `externalTrafficPolicy: Local` (no SNAT).
    pub local: bool,
    /// `loadBalancerSourceRanges` (empty: everyone).
    pub source_ranges: Vec<IpNetwork>,
    /// `sessionAffinity: ClientIP` with its timeout in seconds.
    pub affinity: Option<u32>,
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

/// ferrolb's table as one part per Service, so that a change is applied as the difference
/// between two tables, and a Service that did not change is neither rendered nor compared again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    parts: BTreeMap<String, Arc<Part>>,
}

/// What one Service adds to the table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Part {
    /// The Service it was built from (to reuse the part while the Service stays the same).
    service: Service,
    /// Regular chains by name, each with its rules.
    chains: BTreeMap<String, Vec<String>>,
    /// Elements of the fixed maps and sets by set name: key → value (empty for plain sets).
    elements: BTreeMap<&'static str, BTreeMap<String, String>>,
    /// ClientIP affinity sets: name → declaration.
    affinity_sets: BTreeMap<String, String>,
    /// Some keys were left out because an earlier Service holds them: rebuild every time.
    shadowed: bool,
}

/// The fixed maps and sets: name, declaration.
const SETS: [(&str, &str); 6] = [
    ("vips_v4", "type ipv4_addr . inet_proto . inet_service : verdict"),
    ("vips_v6", "type ipv6_addr . inet_proto . inet_service : verdict"),
    ("nodeports", "type inet_proto . inet_service : verdict"),
    ("refused_v4", "type ipv4_addr . inet_proto . inet_service"),
    ("refused_v6", "type ipv6_addr . inet_proto . inet_service"),
    ("refused_nodeports", "type inet_proto . inet_service"),
];

/// Sets that share keys: a key is in at most one set of a group.
fn group(set: &str) -> u8 {
    match set {
        "vips_v4" | "refused_v4" => 4,
        "vips_v6" | "refused_v6" => 6,
        _ => 0,
    }
}

/// The whole table as an `nft -f` script that replaces what was there (one atomic transaction).
pub fn render(services: &[Service]) -> String {
    build(services).full()
}

/// The table that forwards `services`.
pub fn build(services: &[Service]) -> Ruleset {
    Ruleset::default().rebuilt(services)
}

impl Ruleset {
    /// The table for `services`, reusing the parts of Services that did not change.
    pub fn rebuilt(&self, services: &[Service]) -> Ruleset {
        let mut claimed: HashSet<(u8, &str)> = HashSet::new();
        let mut built: Vec<(String, Arc<Part>)> = Vec::with_capacity(services.len());
        for svc in services {
            let reuse = self.parts.get(&svc.key).filter(|p| p.service == *svc && !p.shadowed).cloned();
            let part = reuse.unwrap_or_else(|| Arc::new(Part::build(svc)));
            built.push((svc.key.clone(), part));
        }
        // A key claimed twice (which the controller prevents) keeps its first owner rather than
        // failing every transaction.
        for (_, part) in &mut built {
            let taken: Vec<(&'static str, String)> = part
                .elements
                .iter()
                .flat_map(|(set, e)| e.keys().map(move |k| (*set, k.clone())))
                .filter(|(set, k)| claimed.contains(&(group(set), k.as_str())))
                .collect();
            if !taken.is_empty() {
                let p = Arc::make_mut(part);
                for (set, k) in taken {
                    p.elements.entry(set).or_default().remove(&k);
                }
                p.shadowed = true;
            }
            for (set, e) in &part.elements {
                claimed.extend(e.keys().map(|k| (group(set), k.as_str())));
            }
        }
        Ruleset { parts: built.into_iter().collect() }
    }

    /// Every chain of the table with its rules.
    pub fn chains(&self) -> BTreeMap<&str, &[String]> {
        self.parts.values().flat_map(|p| p.chains.iter().map(|(n, r)| (n.as_str(), r.as_slice()))).collect()
    }

    /// Every ClientIP affinity set with its declaration.
    pub fn affinity_sets(&self) -> BTreeMap<&str, &str> {
        self.parts.values().flat_map(|p| p.affinity_sets.iter().map(|(n, d)| (n.as_str(), d.as_str()))).collect()
    }

    /// The elements of the fixed map or set `set`: key → value (empty for plain sets).
    pub fn elements(&self, set: &str) -> BTreeMap<&str, &str> {
        self.parts
            .values()
            .filter_map(|p| p.elements.get(set))
            .flat_map(|e| e.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .collect()
    }

    /// What the kernel's listing of this table must show, in a form cheap to compare: for every
    /// chain its number of rules, for every fixed map and set its number of elements, and every
    /// affinity set (whose elements come and go with clients).
    pub fn shape(&self) -> BTreeMap<String, usize> {
        let mut shape: BTreeMap<String, usize> =
            base_chains().into_iter().map(|(name, _, rules)| (format!("chain {name}"), rules.len())).collect();
        shape.extend(self.chains().into_iter().map(|(name, rules)| (format!("chain {name}"), rules.len())));
        shape.extend(SETS.iter().map(|(set, _)| (format!("set {set}"), self.elements(set).len())));
        shape.extend(self.affinity_sets().into_keys().map(|name| (format!("set {name}"), 0)));
        shape
    }

    /// An `nft -f` script that replaces whatever table is there with this one (start-up, repair).
    pub fn full(&self) -> String {
        let mut out = String::new();
        // Create-then-delete makes the first run and every later one the same transaction.
        let _ = writeln!(out, "table inet {TABLE} {{}}\ndelete table inet {TABLE}\ntable inet {TABLE} {{");
        for (name, decl) in SETS {
            let _ = write!(out, "\t{} {name} {{\n\t\t{decl}\n", if decl.contains(':') { "map" } else { "set" });
            let list = element_list(self.elements(name).into_iter());
            if !list.is_empty() {
                let _ = writeln!(out, "\t\telements = {{ {list} }}");
            }
            out.push_str("\t}\n");
        }
        for (name, decl) in self.parts.values().flat_map(|p| &p.affinity_sets) {
            let _ = writeln!(out, "\tset {name} {{ {decl} }}");
        }
        for (name, hook, rules) in base_chains() {
            let _ = writeln!(out, "\tchain {name} {{\n\t\t{hook}");
            for r in rules {
                let _ = writeln!(out, "\t\t{r}");
            }
            out.push_str("\t}\n");
        }
        for (name, rules) in self.chains() {
            let _ = writeln!(out, "\tchain {name} {{");
            for r in rules {
                let _ = writeln!(out, "\t\t{r}");
            }
            out.push_str("\t}\n");
        }
        out.push_str("}\n");
        out
    }

    /// An `nft -f` script that turns the table `old` into this one in one transaction, touching
    /// only the Services that differ (empty when none does).
    pub fn changes_from(&self, old: &Ruleset) -> String {
        let mut changes = Changes::default();
        let empty = Part::default();
        let mut olds = old.parts.iter().peekable();
        let mut news = self.parts.iter().peekable();
        // Both maps are sorted by Service key: walk them side by side.
        loop {
            let (was, now) = match (olds.peek(), news.peek()) {
                (None, None) => break,
                (Some((ok, _)), Some((nk, _))) if ok == nk => (olds.next().map(|x| x.1), news.next().map(|x| x.1)),
                (Some((ok, _)), Some((nk, _))) if ok < nk => (olds.next().map(|x| x.1), None),
                (Some(_), None) => (olds.next().map(|x| x.1), None),
                _ => (None, news.next().map(|x| x.1)),
            };
            if let (Some(a), Some(b)) = (was, now)
                && (Arc::ptr_eq(a, b) || a == b)
            {
                continue;
            }
            changes.add(was.map_or(&empty, |a| a), now.map_or(&empty, |b| b));
        }
        changes.script()
    }
}

impl Part {
    /// The chains, elements and sets of one Service.
    fn build(svc: &Service) -> Part {
        let mut part = Part { service: svc.clone(), ..Part::default() };
        for p in &svc.ports {
            for v6 in [false, true] {
                part.add_port(svc, p, v6);
            }
        }
        part
    }

    /// Adds one Service port of one family: its chains and its map elements.
    fn add_port(&mut self, svc: &Service, p: &Port, v6: bool) {
        let (family, saddr, vips_map, refused) =
            if v6 { ("v6", "ip6 saddr", "vips_v6", "refused_v6") } else { ("v4", "ip saddr", "vips_v4", "refused_v4") };
        let l4 = p.proto.nft();
        // Kubernetes names are DNS labels, so the Service key is a valid part of an nft identifier.
        let chain = format!("svc/{}/{l4}/{}/{family}", svc.key, p.port);
        let eps: Vec<&(IpAddr, u16)> = p.endpoints.iter().filter(|(ip, _)| ip.is_ipv6() == v6).collect();
        let guarded = !svc.source_ranges.is_empty();
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
        if !svc.local {
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
                .filter(|r| r.is_ipv6() == v6)
                .map(|r| format!("{saddr} {r} goto {chain}"))
                .collect();
            lb.push("drop".into());
            self.chains.insert(format!("{chain}/lb"), lb);
        }
    }
}

/// One transaction's commands, gathered by kind and written in an order in which everything
/// exists before it is referred to and is referred to no more when it is deleted.
#[derive(Default)]
struct Changes {
    new_sets: Vec<String>,
    new_chains: Vec<String>,
    rules: Vec<String>,
    deleted_elements: BTreeMap<&'static str, Vec<String>>,
    added_elements: BTreeMap<&'static str, Vec<String>>,
    removed_chains: Vec<String>,
    removed_sets: Vec<String>,
}

impl Changes {
    /// Adds what turns Service part `was` into `now` (either may be empty).
    fn add(&mut self, was: &Part, now: &Part) {
        let t = format!("inet {TABLE}");
        for (name, decl) in now.affinity_sets.iter().filter(|(n, _)| !was.affinity_sets.contains_key(*n)) {
            self.new_sets.push(format!("add set {t} {name} {{ {decl} }}"));
        }
        for (name, rules) in &now.chains {
            match was.chains.get(name) {
                Some(old) if old == rules => continue,
                Some(_) => self.rules.push(format!("flush chain {t} {name}")),
                None => self.new_chains.push(format!("add chain {t} {name}")),
            }
            self.rules.extend(rules.iter().map(|r| format!("add rule {t} {name} {r}")));
        }
        let empty = BTreeMap::new();
        for (set, _) in SETS {
            let (n, w) = (now.elements.get(set).unwrap_or(&empty), was.elements.get(set).unwrap_or(&empty));
            let gone = w.iter().filter(|(k, v)| n.get(*k) != Some(*v)).map(|(k, _)| k.clone());
            self.deleted_elements.entry(set).or_default().extend(gone);
            let added = n.iter().filter(|(k, v)| w.get(*k) != Some(*v));
            self.added_elements.entry(set).or_default().extend(added.map(|(k, v)| element(k, v)));
        }
        self.removed_chains.extend(was.chains.keys().filter(|n| !now.chains.contains_key(*n)).cloned());
        self.removed_sets.extend(was.affinity_sets.keys().filter(|n| !now.affinity_sets.contains_key(*n)).cloned());
    }

    fn script(self) -> String {
        let t = format!("inet {TABLE}");
        let mut out: Vec<String> = self.new_sets;
        out.extend(self.new_chains);
        out.extend(self.rules);
        for (set, keys) in self.deleted_elements.iter().filter(|(_, k)| !k.is_empty()) {
            out.push(format!("delete element {t} {set} {{ {} }}", keys.join(", ")));
        }
        for (set, elements) in self.added_elements.iter().filter(|(_, e)| !e.is_empty()) {
            out.push(format!("add element {t} {set} {{ {} }}", elements.join(", ")));
        }
        // Chains are emptied before any is deleted, as one may jump to another.
        out.extend(self.removed_chains.iter().map(|n| format!("flush chain {t} {n}")));
        out.extend(self.removed_chains.iter().map(|n| format!("delete chain {t} {n}")));
        out.extend(self.removed_sets.iter().map(|n| format!("delete set {t} {n}")));
        let mut text = out.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        text
    }
}

/// `key : value`, or `key` for plain sets.
fn element(k: &str, v: &str) -> String {
    if v.is_empty() { k.to_string() } else { format!("{k} : {v}") }
}

/// Elements, comma-separated.
fn element_list<'a>(elements: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    elements.map(|(k, v)| element(k, v)).collect::<Vec<_>>().join(", ")
}

/// The base chains: name, hook declaration, rules. They look packets up in the maps and sets,
/// the same for every Service.
fn base_chains() -> Vec<(&'static str, String, Vec<String>)> {
    let mut out = Vec::new();
    // -110: before kube-proxy's DNAT (dstnat, -100) so its rules cannot swallow ours; numeric
    // because the named priority `dstnat` is not allowed in the output hook.
    for (name, hook) in [("nat_prerouting", "prerouting"), ("nat_output", "output")] {
        out.push((
            name,
            format!("type nat hook {hook} priority -110; policy accept;"),
            vec![
                "ip daddr . meta l4proto . th dport vmap @vips_v4".to_string(),
                "ip6 daddr . meta l4proto . th dport vmap @vips_v6".to_string(),
                "fib daddr type local meta l4proto . th dport vmap @nodeports".to_string(),
            ],
        ));
    }
    out.push((
        "nat_postrouting",
        "type nat hook postrouting priority 90; policy accept;".to_string(),
        vec![format!("meta mark & {MASQ_MARK:#x} == {MASQ_MARK:#x} masquerade")],
    ));
    for (name, hook) in [("filter_input", "input"), ("filter_forward", "forward"), ("filter_output", "output")] {
        let mut matches =
            vec!["ip daddr . meta l4proto . th dport @refused_v4", "ip6 daddr . meta l4proto . th dport @refused_v6"];
        if hook == "input" {
            matches.push("fib daddr type local meta l4proto . th dport @refused_nodeports");
        }
        // TCP gets a reset (not rate-limited, unlike ICMP errors); the rest port-unreachable.
        let rules = matches
            .iter()
            .flat_map(|m| {
                [format!("ct state new {m} meta l4proto tcp reject with tcp reset"), format!("ct state new {m} reject")]
            })
            .collect();
        out.push((name, format!("type filter hook {hook} priority -10; policy accept;"), rules));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn web() -> Service {
        Service {
            key: "default/web".into(),
            vips: vec![ip("198.51.100.200"), ip("2001:db8:100::200")],
            ports: vec![Port {
                proto: Proto::Tcp,
                port: 80,
                node_port: Some(30080),
                endpoints: vec![(ip("203.0.113.2"), 8080), (ip("203.0.113.66"), 8080), (ip("2001:db8:1:1::2"), 8080)],
            }],
            local: false,
            source_ranges: vec![],
            affinity: None,
        }
    }

    const CHAIN: &str = "svc/default/web/tcp/80";

    #[test]
    fn cluster_policy_spreads_and_masquerades() {
        let text = render(&[web()]);
        assert!(text.contains(&format!("198.51.100.200 . tcp . 80 : goto {CHAIN}/v4")), "{text}");
        assert!(text.contains(&format!("2001:db8:100::200 . tcp . 80 : goto {CHAIN}/v6")), "{text}");
        assert!(text.contains(&format!("tcp . 30080 : goto {CHAIN}/v4")), "{text}");
        assert!(
            text.contains(&format!(
                "\tchain {CHAIN}/v4 {{\n\t\tmeta mark set meta mark | 0x4000\n\t\tnumgen random mod 2 == 0 meta l4proto tcp dnat ip to 203.0.113.2:8080\n\t\tmeta l4proto tcp dnat ip to 203.0.113.66:8080\n\t}}"
            )),
            "{text}"
        );
        assert!(text.contains("meta l4proto tcp dnat ip6 to [2001:db8:1:1::2]:8080"), "{text}");
        assert_eq!(render(&[web()]), text, "rendering is deterministic");
    }

    #[test]
    fn three_endpoints_get_a_third_each() {
        let mut three = web();
        three.ports[0].endpoints.insert(1, (ip("203.0.113.3"), 8080));
        let rs = build(&[three]);
        let rules = &rs.chains()[format!("{CHAIN}/v4").as_str()];
        assert_eq!(rules[1], "numgen random mod 3 == 0 meta l4proto tcp dnat ip to 203.0.113.2:8080");
        assert_eq!(rules[2], "numgen random mod 2 == 0 meta l4proto tcp dnat ip to 203.0.113.3:8080");
        assert_eq!(rules[3], "meta l4proto tcp dnat ip to 203.0.113.66:8080");
    }

    #[test]
    fn local_policy_keeps_the_source_and_empty_services_are_refused() {
        let mut local = web();
        local.local = true;
        local.ports[0].endpoints.truncate(1);
        let text = render(&[local]);
        assert!(!text.contains("meta mark set"), "{text}");
        assert!(
            text.contains(&format!("\tchain {CHAIN}/v4 {{\n\t\tmeta l4proto tcp dnat ip to 203.0.113.2:8080\n\t}}")),
            "{text}"
        );
        assert!(
            text.contains("set refused_v6 {\n\t\ttype ipv6_addr . inet_proto . inet_service\n\t\telements = { 2001:db8:100::200 . tcp . 80 }"),
            "{text}"
        );
        let mut empty = web();
        empty.ports[0].endpoints.clear();
        let text = render(&[empty]);
        assert!(text.contains("elements = { 198.51.100.200 . tcp . 80 }"), "{text}");
        assert!(text.contains("elements = { tcp . 30080 }"), "{text}");
        assert!(!text.contains("chain svc/"), "{text}");
    }

    #[test]
    fn sctp_and_udp_ports_get_their_protocol() {
        let mut multi = web();
        multi.ports[0].proto = Proto::Sctp;
        multi.ports.push(Port {
            proto: Proto::Udp,
            port: 53,
            node_port: None,
            endpoints: vec![(ip("203.0.113.2"), 5353)],
        });
        let rs = build(&[multi]);
        assert_eq!(rs.elements("vips_v4")["198.51.100.200 . sctp . 80"], "goto svc/default/web/sctp/80/v4");
        assert_eq!(rs.elements("nodeports")["sctp . 30080"], "goto svc/default/web/sctp/80/v4");
        assert_eq!(
            rs.chains()["svc/default/web/udp/53/v4"].last().unwrap(),
            "meta l4proto udp dnat ip to 203.0.113.2:5353"
        );
        assert_eq!(rs.elements("refused_v6").into_keys().collect::<Vec<_>>(), ["2001:db8:100::200 . udp . 53"]);
    }

    #[test]
    fn client_ip_affinity_remembers_the_endpoint() {
        let mut sticky = web();
        sticky.affinity = Some(10800);
        let text = render(&[sticky]);
        let set = "aff/default/web/tcp/80/v4/1/10800";
        assert!(
            text.contains(&format!("\tset {set} {{ type ipv4_addr; flags dynamic,timeout; timeout 10800s; }}")),
            "{text}"
        );
        assert!(text.contains(&format!("ip saddr @aff/default/web/tcp/80/v4/0/10800 goto {CHAIN}/v4/ep0")), "{text}");
        assert!(text.contains(&format!("numgen random mod 2 == 0 goto {CHAIN}/v4/ep0")), "{text}");
        assert!(text.contains(&format!("\tchain {CHAIN}/v4/ep1 {{\n\t\tupdate @{set} {{ ip saddr }}\n\t\tmeta l4proto tcp dnat ip to 203.0.113.66:8080")), "{text}");
    }

    #[test]
    fn source_ranges_guard_the_vips_only() {
        let mut guarded = web();
        guarded.source_ranges = vec!["198.51.100.0/24".parse().unwrap()];
        let rs = build(&[guarded]);
        assert_eq!(rs.elements("vips_v4")["198.51.100.200 . tcp . 80"], format!("goto {CHAIN}/v4/lb"));
        assert_eq!(
            rs.chains()[format!("{CHAIN}/v4/lb").as_str()],
            [format!("ip saddr 198.51.100.0/24 goto {CHAIN}/v4"), "drop".into()]
        );
        assert_eq!(rs.elements("nodeports")["tcp . 30080"], format!("goto {CHAIN}/v4"));
        // No IPv6 range given: IPv6 clients are not allowed at all.
        assert_eq!(rs.chains()[format!("{CHAIN}/v6/lb").as_str()], ["drop"]);
    }

    #[test]
    fn an_endpoint_change_rewrites_one_chain_only() {
        let other = Service { key: "default/other".into(), vips: vec![ip("198.51.100.201")], ..web() };
        let before = build(&[web(), other.clone()]);
        let mut changed = web();
        changed.ports[0].endpoints[1].0 = ip("203.0.113.67");
        let after = build(&[changed, other]);
        assert_eq!(
            after.changes_from(&before),
            format!(
                "flush chain inet ferrolb {CHAIN}/v4\nadd rule inet ferrolb {CHAIN}/v4 meta mark set meta mark | 0x4000\nadd rule inet ferrolb {CHAIN}/v4 numgen random mod 2 == 0 meta l4proto tcp dnat ip to 203.0.113.2:8080\nadd rule inet ferrolb {CHAIN}/v4 meta l4proto tcp dnat ip to 203.0.113.67:8080\n"
            )
        );
        assert_eq!(after.changes_from(&after), "", "nothing to do when nothing changed");
    }

    #[test]
    fn a_removed_service_goes_after_its_references() {
        let mut sticky = web();
        sticky.affinity = Some(60);
        let before = build(&[sticky]);
        let after = build(&[]);
        let text = after.changes_from(&before);
        let at = |needle: &str| text.find(needle).unwrap_or_else(|| panic!("{needle} missing from {text}"));
        assert!(
            at("delete element inet ferrolb vips_v4 { 198.51.100.200 . tcp . 80 }")
                < at("flush chain inet ferrolb svc/")
        );
        assert!(
            at(&format!("flush chain inet ferrolb {CHAIN}/v4/ep1"))
                < at(&format!("delete chain inet ferrolb {CHAIN}/v4\n"))
        );
        assert!(at(&format!("delete chain inet ferrolb {CHAIN}/v4/ep1")) < at("delete set inet ferrolb aff/"));
        // Going back creates before it refers.
        let back = before.changes_from(&after);
        assert!(back.find("add set").unwrap() < back.find("add chain").unwrap());
        assert!(
            back.find(&format!("add chain inet ferrolb {CHAIN}/v4\n")).unwrap() < back.find("add element").unwrap()
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn service() -> impl Strategy<Value = Service> {
            (
                0u8..6,
                proptest::collection::vec(
                    (0u8..3, 1u16..4, proptest::collection::vec((any::<bool>(), 0u8..5), 0..4)),
                    1..3,
                ),
                any::<bool>(),
                proptest::option::of(1u32..100),
                any::<bool>(),
            )
                .prop_map(|(n, ports, local, affinity, guarded)| Service {
                    key: format!("ns/svc{n}"),
                    vips: vec![ip(&format!("198.51.100.{n}")), ip(&format!("2001:db8::{n}"))],
                    ports: ports
                        .into_iter()
                        .map(|(proto, port, eps)| Port {
                            proto: [Proto::Tcp, Proto::Udp, Proto::Sctp][usize::from(proto)],
                            port,
                            node_port: Some(30000 + u16::from(n) * 10 + port),
                            endpoints: eps
                                .into_iter()
                                .map(|(v6, e)| {
                                    (ip(&if v6 { format!("2001:db8:1::{e}") } else { format!("203.0.113.{e}") }), 80)
                                })
                                .collect(),
                        })
                        .collect(),
                    local,
                    source_ranges: if guarded { vec!["198.51.100.0/24".parse().unwrap()] } else { vec![] },
                    affinity,
                })
        }

        /// One Service per key, as the API guarantees.
        fn dedup(mut services: Vec<Service>) -> Vec<Service> {
            services.sort_by(|x, y| x.key.cmp(&y.key));
            services.dedup_by(|x, y| x.key == y.key);
            services
        }

        fn targets(rs: &Ruleset) -> Vec<String> {
            let values: Vec<String> =
                SETS.iter().flat_map(|(set, _)| rs.elements(set).into_values().map(str::to_string)).collect();
            let rules = rs.chains().into_values().flatten().cloned();
            values.into_iter().chain(rules).filter_map(|r| r.split("goto ").nth(1).map(str::to_string)).collect()
        }

        proptest! {
            /// Every jump lands on a chain of the table and every set a rule names is declared:
            /// a table that refers to something missing would be refused whole by the kernel.
            #[test]
            fn nothing_dangles(services in proptest::collection::vec(service(), 0..5)) {
                let rs = build(&dedup(services));
                for t in targets(&rs) {
                    prop_assert!(rs.chains().contains_key(t.as_str()), "goto {} has no chain", t);
                }
                for r in rs.chains().into_values().flatten() {
                    if let Some(set) = r.split('@').nth(1).and_then(|s| s.split(' ').next()) {
                        prop_assert!(rs.affinity_sets().contains_key(set), "@{} not declared", set);
                    }
                }
            }

            /// A key is either forwarded or refused, never both.
            #[test]
            fn forwarded_or_refused(services in proptest::collection::vec(service(), 0..5)) {
                let rs = build(&dedup(services));
                for (map, refused) in [("vips_v4", "refused_v4"), ("vips_v6", "refused_v6"), ("nodeports", "refused_nodeports")] {
                    for k in rs.elements(map).keys() {
                        prop_assert!(!rs.elements(refused).contains_key(k), "{} in {} and {}", k, map, refused);
                    }
                }
            }

            /// A table rebuilt from an older one (reusing unchanged Services) is the table built
            /// from scratch.
            #[test]
            fn rebuilding_equals_building(
                a in proptest::collection::vec(service(), 0..4),
                b in proptest::collection::vec(service(), 0..4),
            ) {
                let (a, b) = (dedup(a), dedup(b));
                let old = build(&a);
                prop_assert_eq!(old.rebuilt(&b).full(), build(&b).full());
            }

            /// The difference touches exactly what changed: nothing for equal tables, and every
            /// chain that differs is rewritten or removed.
            #[test]
            fn changes_cover_the_difference(
                a in proptest::collection::vec(service(), 0..4),
                b in proptest::collection::vec(service(), 0..4),
            ) {
                let (a, b) = (build(&dedup(a)), build(&dedup(b)));
                prop_assert_eq!(a.changes_from(&a), "");
                let text = b.changes_from(&a);
                let (a_chains, b_chains) = (a.chains(), b.chains());
                for (name, rules) in &b_chains {
                    if a_chains.get(name) != Some(rules) {
                        prop_assert!(text.contains(&format!("add rule inet ferrolb {name} ")), "{} not written", name);
                    } else {
                        prop_assert!(!text.contains(&format!("chain inet ferrolb {name}\n")), "{} rewritten", name);
                    }
                }
                for name in a_chains.keys().filter(|n| !b_chains.contains_key(*n)) {
                    prop_assert!(text.contains(&format!("delete chain inet ferrolb {name}\n")), "{} kept", name);
                }
            }
        }
    }
}
