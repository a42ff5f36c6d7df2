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

use ferrolb_crds::Protocol;
use ipnetwork::IpNetwork;

use super::diff::{Changes, element};
use super::part::Part;

/// The table's name (family `inet`).
pub const TABLE: &str = "ferrolb";

/// The packet mark that asks for masquerading.
pub const MASQ_MARK: u32 = 0x4000;

/// The packet mark that asks for source NAT to the address the client connected to (the VIP), so
/// that replies find whichever node owns it now: for Services whose connections are replicated.
/// Not 0x8000: that is kube-proxy's (and older kubelets') drop mark.
pub const VIP_SNAT_MARK: u32 = 0x2000;

/// The protocol's name in nftables.
pub(crate) fn nft_protocol(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

/// One port of a Service and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// Protocol.
    pub proto: Protocol,
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
pub struct ForwardedService {
    /// `namespace/name`, for comments.
    pub key: String,
    /// Its load-balancer addresses.
    pub vips: Vec<IpAddr>,
    /// Its ports.
    pub ports: Vec<Port>,
    /// `externalTrafficPolicy: Local` (no SNAT).
    pub local: bool,
    /// `loadBalancerSourceRanges` (None: everyone; empty: nobody).
    pub source_ranges: Option<Vec<IpNetwork>>,
    /// `sessionAffinity: ClientIP` with its timeout in seconds.
    pub affinity: Option<u32>,
    /// Connections are replicated to the other nodes: source NAT to the VIP, not the node.
    pub replicate: bool,
}

/// ferrolb's table as one part per Service, so that a change is applied as the difference
/// between two tables, and a Service that did not change is neither rendered nor compared again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    parts: BTreeMap<String, Arc<Part>>,
}

/// The fixed maps and sets: name, declaration.
pub(super) const SETS: [(&str, &str); 6] = [
    ("vips_v4", "type ipv4_addr . inet_proto . inet_service : verdict"),
    ("vips_v6", "type ipv6_addr . inet_proto . inet_service : verdict"),
    ("nodeports", "type inet_proto . inet_service : verdict"),
    ("refused_v4", "type ipv4_addr . inet_proto . inet_service"),
    ("refused_v6", "type ipv6_addr . inet_proto . inet_service"),
    ("refused_nodeports", "type inet_proto . inet_service"),
];

/// Sets that share keys: a key is in at most one set of a group.
pub(super) fn group(set: &str) -> u8 {
    match set {
        "vips_v4" | "refused_v4" => 4,
        "vips_v6" | "refused_v6" => 6,
        _ => 0,
    }
}

/// The whole table as an `nft -f` script that replaces what was there (one atomic transaction).
pub fn render(services: &[ForwardedService]) -> String {
    Ruleset::of(services).full()
}

impl Ruleset {
    /// The table that forwards `services`.
    pub fn of(services: &[ForwardedService]) -> Ruleset {
        Ruleset::default().rebuilt(services)
    }

    /// The table for `services`, reusing the parts of Services that did not change.
    pub fn rebuilt(&self, services: &[ForwardedService]) -> Ruleset {
        let mut claimed: HashSet<(u8, &str)> = HashSet::new();
        let mut built: Vec<(String, Arc<Part>)> = Vec::with_capacity(services.len());
        for svc in services {
            let reuse = self.parts.get(&svc.key).filter(|p| p.service == *svc && !p.shadowed).cloned();
            let part = reuse.unwrap_or_else(|| Arc::new(Part::of(svc)));
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
        vec![
            format!("meta mark & {MASQ_MARK:#x} == {MASQ_MARK:#x} masquerade"),
            format!("meta mark & {VIP_SNAT_MARK:#x} == {VIP_SNAT_MARK:#x} meta nfproto ipv4 snat ip to ct original ip daddr"),
            format!(
                "meta mark & {VIP_SNAT_MARK:#x} == {VIP_SNAT_MARK:#x} meta nfproto ipv6 snat ip6 to ct original ip6 daddr"
            ),
        ],
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

    fn web() -> ForwardedService {
        ForwardedService {
            key: "default/web".into(),
            vips: vec![ip("198.51.100.200"), ip("2001:db8:100::200")],
            ports: vec![Port {
                proto: Protocol::Tcp,
                port: 80,
                node_port: Some(30080),
                endpoints: vec![(ip("203.0.113.2"), 8080), (ip("203.0.113.66"), 8080), (ip("2001:db8:1:1::2"), 8080)],
            }],
            local: false,
            source_ranges: None,
            affinity: None,
            replicate: false,
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
    fn replicated_connections_are_source_natted_to_the_vip() {
        let text = render(&[ForwardedService { replicate: true, ..web() }]);
        assert!(text.contains(&format!("\tchain {CHAIN}/v4 {{\n\t\tmeta mark set meta mark | 0x2000\n")), "{text}");
        assert!(
            text.contains("meta mark & 0x2000 == 0x2000 meta nfproto ipv4 snat ip to ct original ip daddr"),
            "{text}"
        );
        assert!(
            text.contains("meta mark & 0x2000 == 0x2000 meta nfproto ipv6 snat ip6 to ct original ip6 daddr"),
            "{text}"
        );
    }

    #[test]
    fn three_endpoints_get_a_third_each() {
        let mut three = web();
        three.ports[0].endpoints.insert(1, (ip("203.0.113.3"), 8080));
        let rs = Ruleset::of(&[three]);
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
        multi.ports[0].proto = Protocol::Sctp;
        multi.ports.push(Port {
            proto: Protocol::Udp,
            port: 53,
            node_port: None,
            endpoints: vec![(ip("203.0.113.2"), 5353)],
        });
        let rs = Ruleset::of(&[multi]);
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
        guarded.source_ranges = Some(vec!["198.51.100.0/24".parse().unwrap()]);
        let rs = Ruleset::of(&[guarded]);
        assert_eq!(rs.elements("vips_v4")["198.51.100.200 . tcp . 80"], format!("goto {CHAIN}/v4/lb"));
        assert_eq!(
            rs.chains()[format!("{CHAIN}/v4/lb").as_str()],
            [format!("ip saddr 198.51.100.0/24 goto {CHAIN}/v4"), "drop".into()]
        );
        assert_eq!(rs.elements("nodeports")["tcp . 30080"], format!("goto {CHAIN}/v4"));
        // No IPv6 range given: IPv6 clients are not allowed at all.
        assert_eq!(rs.chains()[format!("{CHAIN}/v6/lb").as_str()], ["drop"]);
        // Ranges given of which none parsed: nobody, not everyone.
        let mut closed = web();
        closed.source_ranges = Some(vec![]);
        let rs = Ruleset::of(&[closed]);
        assert_eq!(rs.elements("vips_v4")["198.51.100.200 . tcp . 80"], format!("goto {CHAIN}/v4/lb"));
        assert_eq!(rs.chains()[format!("{CHAIN}/v4/lb").as_str()], ["drop"]);
    }

    #[test]
    fn an_endpoint_change_rewrites_one_chain_only() {
        let other = ForwardedService { key: "default/other".into(), vips: vec![ip("198.51.100.201")], ..web() };
        let before = Ruleset::of(&[web(), other.clone()]);
        let mut changed = web();
        changed.ports[0].endpoints[1].0 = ip("203.0.113.67");
        let after = Ruleset::of(&[changed, other]);
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
        let before = Ruleset::of(&[sticky]);
        let after = Ruleset::of(&[]);
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

        fn service() -> impl Strategy<Value = ForwardedService> {
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
                .prop_map(|(n, ports, local, affinity, guarded)| ForwardedService {
                    key: format!("ns/svc{n}"),
                    vips: vec![ip(&format!("198.51.100.{n}")), ip(&format!("2001:db8::{n}"))],
                    ports: ports
                        .into_iter()
                        .map(|(proto, port, eps)| Port {
                            proto: [Protocol::Tcp, Protocol::Udp, Protocol::Sctp][usize::from(proto)],
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
                    source_ranges: guarded.then(|| vec!["198.51.100.0/24".parse().unwrap()]),
                    affinity,
                    replicate: n == 1 && !local,
                })
        }

        /// One Service per key, as the API guarantees.
        fn dedup(mut services: Vec<ForwardedService>) -> Vec<ForwardedService> {
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
                let rs = Ruleset::of(&dedup(services));
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
                let rs = Ruleset::of(&dedup(services));
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
                let old = Ruleset::of(&a);
                prop_assert_eq!(old.rebuilt(&b).full(), Ruleset::of(&b).full());
            }

            /// The difference touches exactly what changed: nothing for equal tables, and every
            /// chain that differs is rewritten or removed.
            #[test]
            fn changes_cover_the_difference(
                a in proptest::collection::vec(service(), 0..4),
                b in proptest::collection::vec(service(), 0..4),
            ) {
                let (a, b) = (Ruleset::of(&dedup(a)), Ruleset::of(&dedup(b)));
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
