//! Renders ferrolb's whole nftables table from what the node must forward. Pure: the same input
//! always gives the same text, which golden tests pin and `nft -c` checks.
//!
//! Shape: verdict maps keyed by (address, protocol, port) — and (protocol, port) for NodePorts on
//! any local address — jump to one chain per Service and family, so the per-packet cost does not
//! grow with the number of Services. A Service chain spreads new connections over its endpoints
//! with `numgen random`; Cluster policy marks the packet for masquerade, Local does not (the
//! backend sees the client). A port with no ready endpoint is rejected in the filter hooks
//! (`reject` is not allowed in NAT chains), so clients are refused at once.

use std::fmt::Write as _;
use std::net::IpAddr;

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
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// The whole table as an `nft -f` script that replaces what was there (one atomic transaction).
pub fn render(services: &[Service]) -> String {
    let mut vip = [Vec::new(), Vec::new()];
    let mut nodeports = Vec::new();
    let mut refused = [Vec::new(), Vec::new()];
    let mut refused_np = Vec::new();
    let mut chains = String::new();
    let mut affinity_sets = String::new();
    for (si, svc) in services.iter().enumerate() {
        for (pi, p) in svc.ports.iter().enumerate() {
            for f in [false, true] {
                let eps: Vec<&(IpAddr, u16)> = p.endpoints.iter().filter(|(ip, _)| ip.is_ipv6() == f).collect();
                let vips: Vec<&IpAddr> = svc.vips.iter().filter(|ip| ip.is_ipv6() == f).collect();
                let fi = usize::from(f);
                let chain = format!("svc{si}_p{pi}_{}", if f { "v6" } else { "v4" });
                let ranges: Vec<String> =
                    svc.source_ranges.iter().filter(|r| r.is_ipv6() == f).map(ToString::to_string).collect();
                for v in &vips {
                    let key = format!("{} . {} . {}", addr(v), p.proto.nft(), p.port);
                    if eps.is_empty() {
                        refused[fi].push(key);
                    } else if ranges.is_empty() && svc.source_ranges.is_empty() {
                        vip[fi].push(format!("{key} : goto {chain}"));
                    } else {
                        vip[fi].push(format!("{key} : goto {chain}_lb"));
                    }
                }
                if let Some(np) = p.node_port
                    && !f
                {
                    let key = format!("{} . {np}", p.proto.nft());
                    // NodePorts follow the primary (IPv4) endpoints; IPv6 NodePorts share the key.
                    if p.endpoints.is_empty() {
                        refused_np.push(key);
                    } else {
                        let v4 = !p.endpoints.iter().any(|(ip, _)| ip.is_ipv6())
                            || p.endpoints.iter().any(|(ip, _)| ip.is_ipv4());
                        let c = if v4 { format!("svc{si}_p{pi}_v4") } else { format!("svc{si}_p{pi}_v6") };
                        nodeports.push(format!("{key} : goto {c}"));
                    }
                }
                if eps.is_empty() {
                    continue;
                }
                let _ = writeln!(chains, "\tchain {chain} {{");
                let _ = writeln!(chains, "\t\tcomment \"{} {}/{}\"", svc.key, p.port, p.proto.nft());
                if !svc.local {
                    let _ = writeln!(chains, "\t\tmeta mark set meta mark | {MASQ_MARK:#x}");
                }
                let l4 = p.proto.nft();
                let sticky = svc.affinity.filter(|_| eps.len() > 1);
                let saddr = if f { "ip6 saddr" } else { "ip saddr" };
                if let Some(timeout) = sticky {
                    // ClientIP affinity: a client seen recently goes back to its endpoint.
                    let t = if f { "ipv6_addr" } else { "ipv4_addr" };
                    for i in 0..eps.len() {
                        let _ = writeln!(
                            affinity_sets,
                            "\tset {chain}_ep{i}_aff {{\n\t\ttype {t}\n\t\tflags dynamic,timeout\n\t\ttimeout {timeout}s\n\t}}"
                        );
                        let _ = writeln!(chains, "\t\t{saddr} @{chain}_ep{i}_aff goto {chain}_ep{i}");
                    }
                }
                if eps.len() == 1 {
                    let _ = writeln!(
                        chains,
                        "\t\tmeta l4proto {l4} dnat {} to {}",
                        fam(&eps[0].0),
                        target(&eps[0].0, eps[0].1)
                    );
                } else {
                    let arms: Vec<String> =
                        eps.iter().enumerate().map(|(i, _)| format!("{i} : goto {chain}_ep{i}")).collect();
                    let _ = writeln!(chains, "\t\tnumgen random mod {} vmap {{ {} }}", eps.len(), arms.join(", "));
                }
                let _ = writeln!(chains, "\t}}");
                if eps.len() > 1 {
                    for (i, (ip, port)) in eps.iter().enumerate() {
                        let remember = match sticky {
                            Some(_) => format!("\t\tupdate @{chain}_ep{i}_aff {{ {saddr} }}\n"),
                            None => String::new(),
                        };
                        let _ = writeln!(
                            chains,
                            "\tchain {chain}_ep{i} {{\n{remember}\t\tmeta l4proto {l4} dnat {} to {}\n\t}}",
                            fam(ip),
                            target(ip, *port)
                        );
                    }
                }
                if !svc.source_ranges.is_empty() && !vips.is_empty() {
                    let _ = writeln!(chains, "\tchain {chain}_lb {{");
                    if ranges.is_empty() {
                        let _ = writeln!(chains, "\t\tdrop");
                    } else {
                        let _ = writeln!(
                            chains,
                            "\t\t{} saddr != {{ {} }} drop",
                            if f { "ip6" } else { "ip" },
                            ranges.join(", ")
                        );
                        let _ = writeln!(chains, "\t\tgoto {chain}");
                    }
                    let _ = writeln!(chains, "\t}}");
                }
            }
        }
    }
    let elements =
        |v: &Vec<String>| if v.is_empty() { String::new() } else { format!("\n\t\telements = {{ {} }}", v.join(", ")) };
    let mut out = String::new();
    // Create-then-delete makes the first run and every later one the same transaction.
    let _ = writeln!(out, "table inet {TABLE} {{}}\ndelete table inet {TABLE}\ntable inet {TABLE} {{");
    let _ = writeln!(
        out,
        "\tmap vips_v4 {{\n\t\ttype ipv4_addr . inet_proto . inet_service : verdict{}\n\t}}",
        elements(&vip[0])
    );
    let _ = writeln!(
        out,
        "\tmap vips_v6 {{\n\t\ttype ipv6_addr . inet_proto . inet_service : verdict{}\n\t}}",
        elements(&vip[1])
    );
    let _ =
        writeln!(out, "\tmap nodeports {{\n\t\ttype inet_proto . inet_service : verdict{}\n\t}}", elements(&nodeports));
    let _ = writeln!(
        out,
        "\tset refused_v4 {{\n\t\ttype ipv4_addr . inet_proto . inet_service{}\n\t}}",
        elements(&refused[0])
    );
    let _ = writeln!(
        out,
        "\tset refused_v6 {{\n\t\ttype ipv6_addr . inet_proto . inet_service{}\n\t}}",
        elements(&refused[1])
    );
    let _ =
        writeln!(out, "\tset refused_nodeports {{\n\t\ttype inet_proto . inet_service{}\n\t}}", elements(&refused_np));
    // -110: before kube-proxy's DNAT (dstnat, -100) so its rules cannot swallow ours; numeric
    // because the named priority `dstnat` is not allowed in the output hook.
    for (name, hook) in [("nat_prerouting", "prerouting"), ("nat_output", "output")] {
        let _ = writeln!(out, "\tchain {name} {{\n\t\ttype nat hook {hook} priority -110; policy accept;");
        let _ = writeln!(out, "\t\tip daddr . meta l4proto . th dport vmap @vips_v4");
        let _ = writeln!(out, "\t\tip6 daddr . meta l4proto . th dport vmap @vips_v6");
        let _ = writeln!(out, "\t\tfib daddr type local meta l4proto . th dport vmap @nodeports\n\t}}");
    }
    let _ = writeln!(
        out,
        "\tchain nat_postrouting {{\n\t\ttype nat hook postrouting priority 90; policy accept;\n\t\tmeta mark & {MASQ_MARK:#x} == {MASQ_MARK:#x} masquerade\n\t}}"
    );
    for (name, hook) in [("filter_input", "input"), ("filter_forward", "forward"), ("filter_output", "output")] {
        let _ = writeln!(out, "\tchain {name} {{\n\t\ttype filter hook {hook} priority -10; policy accept;");
        // TCP gets a reset (not rate-limited, unlike ICMP errors); the rest port-unreachable.
        let mut matches =
            vec!["ip daddr . meta l4proto . th dport @refused_v4", "ip6 daddr . meta l4proto . th dport @refused_v6"];
        if hook == "input" {
            matches.push("fib daddr type local meta l4proto . th dport @refused_nodeports");
        }
        for m in matches {
            let _ = writeln!(out, "\t\tct state new {m} meta l4proto tcp reject with tcp reset");
            let _ = writeln!(out, "\t\tct state new {m} reject");
        }
        let _ = writeln!(out, "\t}}");
    }
    out.push_str(&affinity_sets);
    out.push_str(&chains);
    out.push_str("}\n");
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

    #[test]
    fn cluster_policy_spreads_and_masquerades() {
        let text = render(&[web()]);
        assert!(text.contains("198.51.100.200 . tcp . 80 : goto svc0_p0_v4"), "{text}");
        assert!(text.contains("2001:db8:100::200 . tcp . 80 : goto svc0_p0_v6"), "{text}");
        assert!(text.contains("tcp . 30080 : goto svc0_p0_v4"), "{text}");
        assert!(
            text.contains("numgen random mod 2 vmap { 0 : goto svc0_p0_v4_ep0, 1 : goto svc0_p0_v4_ep1 }"),
            "{text}"
        );
        assert!(text.contains("meta l4proto tcp dnat ip to 203.0.113.66:8080"), "{text}");
        assert!(text.contains("meta l4proto tcp dnat ip6 to [2001:db8:1:1::2]:8080"), "{text}");
        assert!(text.contains("meta mark set meta mark | 0x4000"), "{text}");
        assert_eq!(render(&[web()]), text, "rendering is deterministic");
    }

    #[test]
    fn local_policy_keeps_the_source_and_empty_services_are_refused() {
        let mut local = web();
        local.local = true;
        local.ports[0].endpoints.truncate(1);
        let text = render(&[local]);
        assert!(!text.contains("meta mark set"), "{text}");
        assert!(text.contains("meta l4proto tcp dnat ip to 203.0.113.2:8080"), "{text}");
        assert!(text.contains("set refused_v6 {\n\t\ttype ipv6_addr . inet_proto . inet_service\n\t\telements = { 2001:db8:100::200 . tcp . 80 }"), "{text}");
        let mut empty = web();
        empty.ports[0].endpoints.clear();
        let text = render(&[empty]);
        assert!(text.contains("elements = { 198.51.100.200 . tcp . 80 }"), "{text}");
        assert!(text.contains("elements = { tcp . 30080 }"), "{text}");
        assert!(!text.contains("chain svc0"), "{text}");
    }

    #[test]
    fn client_ip_affinity_remembers_the_endpoint() {
        let mut sticky = web();
        sticky.affinity = Some(10800);
        let text = render(&[sticky]);
        assert!(
            text.contains(
                "set svc0_p0_v4_ep1_aff {\n\t\ttype ipv4_addr\n\t\tflags dynamic,timeout\n\t\ttimeout 10800s"
            ),
            "{text}"
        );
        assert!(text.contains("ip saddr @svc0_p0_v4_ep0_aff goto svc0_p0_v4_ep0"), "{text}");
        assert!(text.contains("update @svc0_p0_v4_ep1_aff { ip saddr }"), "{text}");
    }

    #[test]
    fn source_ranges_guard_the_vips_only() {
        let mut guarded = web();
        guarded.source_ranges = vec!["198.51.100.0/24".parse().unwrap()];
        let text = render(&[guarded]);
        assert!(text.contains("198.51.100.200 . tcp . 80 : goto svc0_p0_v4_lb"), "{text}");
        assert!(text.contains("ip saddr != { 198.51.100.0/24 } drop\n\t\tgoto svc0_p0_v4"), "{text}");
        assert!(
            text.contains("tcp . 30080 : goto svc0_p0_v4\n") || text.contains("tcp . 30080 : goto svc0_p0_v4 }"),
            "{text}"
        );
        // No IPv6 range given: IPv6 clients are not allowed at all.
        assert!(text.contains("chain svc0_p0_v6_lb {\n\t\tdrop"), "{text}");
    }
}
