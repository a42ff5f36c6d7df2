//! The lab's network: a LAN bridge (in a namespace of its own), nodes on it, a pod namespace
//! behind each node with its own subnet (routed between nodes), and a client on the LAN. With
//! `routed`, also an upstream router on the LAN (198.51.100.1, 2001:db8:100::1) and a remote
//! client behind it on a subnet of its own (192.0.2.0/24, 2001:db8:200::/64), for BGP mode. Only
//! documentation ranges are used: LAN 198.51.100.0/24 and 2001:db8:100::/64, pods 203.0.113.0/26
//! per node and 2001:db8:1:N::/64.

use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use super::netns::{self, LabError};

/// A host on the LAN (a node or the client).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Host {
    /// Its name (the Node name for nodes).
    pub name: String,
    /// Its network namespace.
    pub namespace: String,
    /// Its LAN interface.
    pub interface: String,
    /// Its LAN IPv4 address.
    pub ipv4: Ipv4Addr,
    /// Its LAN IPv6 address.
    pub ipv6: Ipv6Addr,
    /// Its LAN MAC.
    pub mac: String,
}

/// A pod namespace behind a node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Pod {
    /// The node it runs on.
    pub node: String,
    /// Its network namespace.
    pub namespace: String,
    /// Its IPv4 address.
    pub ipv4: Ipv4Addr,
    /// Its IPv6 address.
    pub ipv6: Ipv6Addr,
}

/// What the lab built.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Topology {
    /// The prefix of every namespace it made.
    pub prefix: String,
    /// The namespace holding the LAN bridge.
    pub lan_namespace: String,
    /// The nodes.
    pub nodes: Vec<Host>,
    /// The client.
    pub client: Host,
    /// One pod per node.
    pub pods: Vec<Pod>,
    /// The router and the client behind it, in a routed lab.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routed: Option<Routed>,
}

/// The routed part of a lab: an upstream router on the LAN and a client on a subnet behind it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Routed {
    /// The router, as a host on the LAN (its other side faces the remote client).
    pub router: Host,
    /// The client behind the router.
    pub remote: Host,
}

/// The router's LAN addresses.
pub const ROUTER_LAN: (Ipv4Addr, &str) = (Ipv4Addr::new(198, 51, 100, 1), "2001:db8:100::1");
/// The remote subnet behind the router.
pub const REMOTE_NET: (&str, &str) = ("192.0.2.0/24", "2001:db8:200::/64");

impl Topology {
    /// Every namespace, the LAN last (deleting it last keeps the others' links until they go).
    pub fn namespaces(&self) -> Vec<String> {
        let mut out: Vec<String> = self.pods.iter().map(|p| p.namespace.clone()).collect();
        out.extend(self.nodes.iter().map(|n| n.namespace.clone()));
        out.push(self.client.namespace.clone());
        if let Some(r) = &self.routed {
            out.push(r.remote.namespace.clone());
            out.push(r.router.namespace.clone());
        }
        out.push(self.lan_namespace.clone());
        out
    }
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// A prefix unique to this process and call, so parallel labs never collide.
pub fn fresh_prefix() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    format!("flb{}x{n}", std::process::id())
}

/// Deletes namespaces left behind by labs whose process is gone (a killed test run).
pub fn remove_stale() {
    let Ok(all) = netns::list() else { return };
    for ns in all {
        let Some(rest) = ns.strip_prefix("flb") else { continue };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if !pid.is_empty() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            netns::delete(&ns);
        }
    }
}

/// Builds the network for `nodes` nodes (with the router and the remote client when `routed`);
/// on any error, what was built is removed again.
pub fn build(prefix: &str, nodes: usize, routed: bool) -> Result<Topology, LabError> {
    netns::check_prerequisites()?;
    remove_stale();
    let mut made: Vec<String> = Vec::new();
    let result = build_inner(prefix, nodes, &mut made).and_then(|mut t| {
        if routed {
            t.routed = Some(build_routed(&t, &mut made)?);
        }
        Ok(t)
    });
    if result.is_err() {
        for ns in made.iter().rev() {
            netns::delete(ns);
        }
    }
    result
}

fn add(ns: &str, made: &mut Vec<String>) -> Result<(), LabError> {
    netns::add(ns)?;
    made.push(ns.to_string());
    // Addresses are usable at once: no duplicate address detection delay.
    for key in ["net.ipv6.conf.all.accept_dad", "net.ipv6.conf.default.accept_dad"] {
        netns::sysctl(ns, key, "0")?;
    }
    Ok(())
}

fn build_inner(prefix: &str, count: usize, made: &mut Vec<String>) -> Result<Topology, LabError> {
    let lan = format!("{prefix}-lan");
    add(&lan, made)?;
    netns::ip_in(&lan, &["link", "add", "br0", "type", "bridge"])?;
    netns::ip_in(&lan, &["link", "set", "br0", "up"])?;
    let mut hosts = Vec::new();
    let mut pods = Vec::new();
    let attach = |ns: &str, port: &str| -> Result<(), LabError> {
        netns::veth(ns, "eth0", &lan, port)?;
        netns::ip_in(&lan, &["link", "set", port, "master", "br0"]).map(|_| ())
    };
    for i in 1..=count {
        let name = format!("node-{i}");
        let ns = format!("{prefix}-{name}");
        add(&ns, made)?;
        attach(&ns, &format!("n{i}"))?;
        let (v4, v6) = (
            Ipv4Addr::new(198, 51, 100, 10 + i as u8),
            format!("2001:db8:100::{}", 10 + i).parse::<Ipv6Addr>().expect("static"),
        );
        netns::ip_in(&ns, &["addr", "add", &format!("{v4}/24"), "dev", "eth0"])?;
        netns::ip_in(&ns, &["addr", "add", &format!("{v6}/64"), "dev", "eth0", "nodad"])?;
        netns::sysctl(&ns, "net.ipv4.ip_forward", "1")?;
        netns::sysctl(&ns, "net.ipv6.conf.all.forwarding", "1")?;
        // The pod behind the node: 203.0.113.(64(i-1))/26 and 2001:db8:1:i::/64.
        let pod_ns = format!("{ns}-pod");
        add(&pod_ns, made)?;
        netns::veth(&ns, "vethpod0", &pod_ns, "eth0")?;
        let base = 64 * (i as u8 - 1);
        let (gw4, pod4) = (Ipv4Addr::new(203, 0, 113, base + 1), Ipv4Addr::new(203, 0, 113, base + 2));
        let (gw6, pod6): (Ipv6Addr, Ipv6Addr) = (
            format!("2001:db8:1:{i}::1").parse().expect("static"),
            format!("2001:db8:1:{i}::2").parse().expect("static"),
        );
        netns::ip_in(&ns, &["addr", "add", &format!("{gw4}/26"), "dev", "vethpod0"])?;
        netns::ip_in(&ns, &["addr", "add", &format!("{gw6}/64"), "dev", "vethpod0", "nodad"])?;
        netns::ip_in(&pod_ns, &["addr", "add", &format!("{pod4}/26"), "dev", "eth0"])?;
        netns::ip_in(&pod_ns, &["addr", "add", &format!("{pod6}/64"), "dev", "eth0", "nodad"])?;
        netns::ip_in(&pod_ns, &["route", "add", "default", "via", &gw4.to_string()])?;
        netns::ip_in(&pod_ns, &["-6", "route", "add", "default", "via", &gw6.to_string()])?;
        let mac = mac_text(netns::mac(&ns, "eth0")?);
        hosts.push(Host { name, namespace: ns, interface: "eth0".into(), ipv4: v4, ipv6: v6, mac });
        pods.push(Pod { node: format!("node-{i}"), namespace: pod_ns, ipv4: pod4, ipv6: pod6 });
    }
    for i in 0..hosts.len() {
        route_pods(&hosts, i)?;
    }
    let client_ns = format!("{prefix}-client");
    add(&client_ns, made)?;
    attach(&client_ns, "cl")?;
    let (c4, c6): (Ipv4Addr, Ipv6Addr) =
        (Ipv4Addr::new(198, 51, 100, 100), "2001:db8:100::100".parse().expect("static"));
    netns::ip_in(&client_ns, &["addr", "add", &format!("{c4}/24"), "dev", "eth0"])?;
    netns::ip_in(&client_ns, &["addr", "add", &format!("{c6}/64"), "dev", "eth0", "nodad"])?;
    let client = Host {
        name: "client".into(),
        namespace: client_ns.clone(),
        interface: "eth0".into(),
        ipv4: c4,
        ipv6: c6,
        mac: mac_text(netns::mac(&client_ns, "eth0")?),
    };
    Ok(Topology { prefix: prefix.to_string(), lan_namespace: lan, nodes: hosts, client, pods, routed: None })
}

fn build_routed(t: &Topology, made: &mut Vec<String>) -> Result<Routed, LabError> {
    let router_ns = format!("{}-router", t.prefix);
    add(&router_ns, made)?;
    netns::veth(&router_ns, "eth0", &t.lan_namespace, "rt")?;
    netns::ip_in(&t.lan_namespace, &["link", "set", "rt", "master", "br0"])?;
    let (r4, r6) = (ROUTER_LAN.0, ROUTER_LAN.1.parse::<Ipv6Addr>().expect("static"));
    netns::ip_in(&router_ns, &["addr", "add", &format!("{r4}/24"), "dev", "eth0"])?;
    netns::ip_in(&router_ns, &["addr", "add", &format!("{r6}/64"), "dev", "eth0", "nodad"])?;
    for (key, value) in [
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv6.conf.all.forwarding", "1"),
        // Per-connection ECMP that stays put on veths: hash the 5-tuple (policy 3, fields
        // source/destination address, protocol, ports); policy 1 scattered one connection.
        ("net.ipv4.fib_multipath_hash_policy", "3"),
        ("net.ipv4.fib_multipath_hash_fields", "0x0037"),
        ("net.ipv6.fib_multipath_hash_policy", "3"),
        ("net.ipv6.fib_multipath_hash_fields", "0x0037"),
    ] {
        netns::sysctl(&router_ns, key, value)?;
    }
    let remote_ns = format!("{}-remote", t.prefix);
    add(&remote_ns, made)?;
    netns::veth(&router_ns, "eth1", &remote_ns, "eth0")?;
    netns::ip_in(&router_ns, &["addr", "add", "192.0.2.1/24", "dev", "eth1"])?;
    netns::ip_in(&router_ns, &["addr", "add", "2001:db8:200::1/64", "dev", "eth1", "nodad"])?;
    let (c4, c6): (Ipv4Addr, Ipv6Addr) = (Ipv4Addr::new(192, 0, 2, 100), "2001:db8:200::100".parse().expect("static"));
    netns::ip_in(&remote_ns, &["addr", "add", &format!("{c4}/24"), "dev", "eth0"])?;
    netns::ip_in(&remote_ns, &["addr", "add", &format!("{c6}/64"), "dev", "eth0", "nodad"])?;
    netns::ip_in(&remote_ns, &["route", "add", "default", "via", "192.0.2.1"])?;
    netns::ip_in(&remote_ns, &["-6", "route", "add", "default", "via", "2001:db8:200::1"])?;
    // The nodes answer the remote client through the router.
    for n in &t.nodes {
        netns::ip_in(&n.namespace, &["route", "add", REMOTE_NET.0, "via", &r4.to_string()])?;
        netns::ip_in(&n.namespace, &["-6", "route", "add", REMOTE_NET.1, "via", &r6.to_string()])?;
    }
    let host = |name: &str, ns: &str, v4, v6| -> Result<Host, LabError> {
        Ok(Host {
            name: name.into(),
            namespace: ns.to_string(),
            interface: "eth0".into(),
            ipv4: v4,
            ipv6: v6,
            mac: mac_text(netns::mac(ns, "eth0")?),
        })
    };
    Ok(Routed { router: host("router", &router_ns, r4, r6)?, remote: host("remote", &remote_ns, c4, c6)? })
}

/// Routes the other nodes' pod subnets through them, as a CNI would (`replace`: again after a
/// link flap removed them).
fn route_pods(hosts: &[Host], i: usize) -> Result<(), LabError> {
    let h = &hosts[i];
    for (j, other) in hosts.iter().enumerate().filter(|(j, _)| *j != i) {
        let base = 64 * j as u8;
        netns::ip_in(
            &h.namespace,
            &["route", "replace", &format!("203.0.113.{base}/26"), "via", &other.ipv4.to_string()],
        )?;
        let v6 = format!("2001:db8:1:{}::/64", j + 1);
        netns::ip_in(&h.namespace, &["-6", "route", "replace", &v6, "via", &other.ipv6.to_string()])?;
    }
    Ok(())
}

/// Sets node `i`'s LAN link down or up. Up also restores what the kernel removed with the carrier
/// (the IPv6 address, routes through the link), as a node's network configuration does.
pub fn set_link(t: &Topology, i: usize, up: bool) -> Result<(), LabError> {
    let n = &t.nodes[i];
    netns::ip_in(&n.namespace, &["link", "set", &n.interface, if up { "up" } else { "down" }])?;
    if up {
        netns::ip_in(&n.namespace, &["addr", "replace", &format!("{}/64", n.ipv6), "dev", &n.interface, "nodad"])?;
        route_pods(&t.nodes, i)?;
    }
    Ok(())
}

/// Removes every namespace of the lab (and so every interface and route in them).
pub fn teardown(t: &Topology) {
    for ns in t.namespaces() {
        netns::delete(&ns);
    }
}
