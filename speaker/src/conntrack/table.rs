//! The nftables table `ferrolb_sync` that decides which flows a node tracks and reports (pure),
//! when connections are replicated:
//! - A node tracks the flows of a replicated address only while it owns the address. Elsewhere the
//!   packets of such a flow that pass through (a pod's replies on their way to the owner, the
//!   owner's packets to a pod on this node) are not tracked: a conntrack entry of this node for
//!   them would clash with the replicated one it commits when it takes the address over.
//! - The kernel reports (conntrack events) only the flows of replicated addresses, so conntrackd
//!   replicates nothing else: the event mask of every other new flow is cleared once its entry
//!   exists, before it is confirmed (measured: before this, a Service not replicated cost as many
//!   bytes on the wire per connection as a replicated one).
//!
//! Clients' packets to a replicated address and port are always tracked (a node forwards what it
//! receives, as for any Service); a pod's reply whose destination port happens to be that port is
//! taken for a client's packet.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;

use ferrolb_crds::Protocol;

use crate::forwarding::render::nft_protocol;

/// The table's name (family `inet`).
pub const TABLE: &str = "ferrolb_sync";

/// What the table is made of.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replicated {
    /// The addresses of Services whose connections are replicated, with their ports.
    pub ports: BTreeSet<(IpAddr, Protocol, u16)>,
    /// Those of the addresses this node owns now.
    pub owned: BTreeSet<IpAddr>,
}

impl Replicated {
    /// The replicated addresses.
    pub fn addresses(&self) -> BTreeSet<IpAddr> {
        self.ports.iter().map(|(ip, _, _)| *ip).collect()
    }
}

fn elements<T: std::fmt::Display>(items: impl Iterator<Item = T>) -> String {
    let list: Vec<String> = items.map(|i| i.to_string()).collect();
    if list.is_empty() { String::new() } else { format!(" elements = {{ {} }};", list.join(", ")) }
}

/// The whole table as one `nft -f` transaction replacing what was there.
pub fn render(r: &Replicated) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "table inet {TABLE} {{}}\ndelete table inet {TABLE}\ntable inet {TABLE} {{");
    for (v, kind) in [(4, "ipv4_addr"), (6, "ipv6_addr")] {
        let of_family = |ip: &IpAddr| ip.is_ipv4() == (v == 4);
        let addrs = r.addresses();
        let _ = writeln!(
            out,
            "\tset replicated_v{v} {{ type {kind};{} }}",
            elements(addrs.iter().filter(|i| of_family(i)))
        );
        let _ =
            writeln!(out, "\tset owned_v{v} {{ type {kind};{} }}", elements(r.owned.iter().filter(|i| of_family(i))));
        let ports = r
            .ports
            .iter()
            .filter(|(ip, _, _)| of_family(ip))
            .map(|(ip, p, port)| format!("{ip} . {} . {port}", nft_protocol(*p)));
        let _ = writeln!(out, "\tset ports_v{v} {{ type {kind} . inet_proto . inet_service;{} }}", elements(ports));
    }
    out.push_str("\tchain untracked {\n\t\tnotrack\n\t}\n");
    // Before connection tracking (raw, -300): what is not tracked never gets an entry.
    out.push_str("\tchain raw {\n\t\ttype filter hook prerouting priority -300; policy accept;\n");
    for (v, fam) in [(4, "ip"), (6, "ip6")] {
        let _ = writeln!(out, "\t\t{fam} daddr . meta l4proto . th dport @ports_v{v} return");
    }
    for (v, fam) in [(4, "ip"), (6, "ip6")] {
        let _ = writeln!(out, "\t\t{fam} daddr @replicated_v{v} {fam} daddr != @owned_v{v} goto untracked");
        let _ = writeln!(out, "\t\t{fam} saddr @replicated_v{v} {fam} saddr != @owned_v{v} goto untracked");
    }
    out.push_str("\t}\n");
    // After the entry exists (-200) but before it is confirmed and reported, and before any DNAT
    // (-110): every new flow that is not to a replicated address and port is not reported to
    // conntrackd. (In the raw hook there is no entry yet to set the mask on.)
    out.push_str("\tchain events {\n\t\ttype filter hook prerouting priority -150; policy accept;\n");
    for (v, fam) in [(4, "ip"), (6, "ip6")] {
        let _ = writeln!(out, "\t\tct state new {fam} daddr . meta l4proto . th dport @ports_v{v} return");
    }
    out.push_str("\t\tct state new ct event set 0\n\t}\n}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_owned_replicated_addresses_are_tracked_and_only_their_flows_reported() {
        let vip: IpAddr = "198.51.100.200".parse().unwrap();
        let other: IpAddr = "198.51.100.201".parse().unwrap();
        let r = Replicated {
            ports: [(vip, Protocol::Tcp, 9000), (other, Protocol::Tcp, 80)].into_iter().collect(),
            owned: [vip].into_iter().collect(),
        };
        let t = render(&r);
        assert!(t.contains("set owned_v4 { type ipv4_addr; elements = { 198.51.100.200 }; }"), "{t}");
        assert!(t.contains("elements = { 198.51.100.200 . tcp . 9000, 198.51.100.201 . tcp . 80 }"), "{t}");
        assert!(t.contains("set owned_v6 { type ipv6_addr; }"), "{t}");
        let raw = &t[t.find("chain raw").unwrap()..];
        let order: Vec<usize> = ["@ports_v4 return", "daddr @replicated_v4", "saddr @replicated_v4", "ct event set 0"]
            .iter()
            .map(|m| raw.find(m).unwrap())
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "clients first, then untracked, then events off:\n{raw}");
        assert_eq!(t.matches('{').count(), t.matches('}').count());
    }
}
