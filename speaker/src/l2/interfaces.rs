//! Which interfaces the speaker announces on: up, broadcast-capable, ARP-capable, not a member of
//! a bridge or bond, with a MAC; then those matching the pool's names or globs when it gives any,
//! else every one not excluded — by default the virtual interfaces of CNIs, container engines and
//! kube-proxy, where no client is.

use std::path::Path;

use super::Mac;

/// An interface the speaker may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Its name.
    pub name: String,
    /// Its index.
    pub index: u32,
    /// Its MAC.
    pub mac: Mac,
}

const IFF_NOARP: u32 = 0x80;

/// Every suitable interface on this host (this network namespace).
pub fn suitable() -> Vec<Interface> {
    pnet::datalink::interfaces()
        .into_iter()
        .filter(|i| i.is_up() && i.is_broadcast() && !i.is_loopback() && i.flags & IFF_NOARP == 0)
        // A bridge or bond member's frames belong to its master.
        .filter(|i| !Path::new(&format!("/sys/class/net/{}/master", i.name)).exists())
        .filter_map(|i| {
            let mac = i.mac?.octets();
            (mac != [0; 6]).then(|| Interface { name: i.name.clone(), index: i.index, mac })
        })
        .collect()
}

/// The interfaces of CNIs, container engines and kube-proxy (`--exclude-interfaces`' default):
/// pod veths (`veth*`, Calico's `cali*`, Cilium's `lxc*`, Weave's `vethwe*`), bridges and
/// overlays (`cni*`, `flannel*`, `cilium_*`, `vxlan*`, `genev_sys_*`, `weave`, `kube-bridge`,
/// `tunl*`, `docker*`, `br-*`, `podman*`, `virbr*`), kube-proxy's `kube-ipvs*` and NodeLocal DNS.
pub const DEFAULT_EXCLUDED: &[&str] = &[
    "veth*",
    "cali*",
    "lxc*",
    "cni*",
    "flannel*",
    "cilium_*",
    "vxlan*",
    "genev_sys_*",
    "weave",
    "kube-bridge",
    "tunl*",
    "docker*",
    "br-*",
    "podman*",
    "virbr*",
    "kube-ipvs*",
    "nodelocaldns",
];

/// Which interfaces an address is answered on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    excluded: Vec<String>,
}

impl Choice {
    /// Every suitable interface but those matching `excluded` (names or globs).
    pub fn new(excluded: Vec<String>) -> Self {
        Self { excluded }
    }

    /// Whether `name` answers for an address of a pool listing `patterns`: a pool's own list
    /// decides alone (it may name an interface the default excludes); without one, every
    /// interface not excluded.
    pub fn answers_on(&self, patterns: &[String], name: &str) -> bool {
        if patterns.is_empty() {
            !self.excluded.iter().any(|p| matches(p, name))
        } else {
            patterns.iter().any(|p| matches(p, name))
        }
    }
}

impl Default for Choice {
    fn default() -> Self {
        Self::new(DEFAULT_EXCLUDED.iter().map(|s| s.to_string()).collect())
    }
}

/// Whether an interface name matches a name or glob (`*` any run, `?` one character).
pub fn matches(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_interfaces_are_left_out_unless_a_pool_names_them() {
        let c = Choice::default();
        for virt in [
            "veth1a2b3c",
            "cali0123456789a",
            "lxc12ab",
            "cni0",
            "flannel.1",
            "cilium_host",
            "vxlan.calico",
            "tunl0",
            "docker0",
            "br-0f1e2d",
            "kube-ipvs0",
            "nodelocaldns",
        ] {
            assert!(!c.answers_on(&[], virt), "{virt} is excluded by default");
        }
        for lan in ["eth0", "enp3s0", "eno1", "bond0", "br0", "wlan0", "eth0.100"] {
            assert!(c.answers_on(&[], lan), "{lan} is where clients are");
        }
        assert!(c.answers_on(&["cni0".into()], "cni0"), "a pool's own list overrides the exclusions");
        assert!(!c.answers_on(&["enp*".into()], "eth0"), "and decides alone");
        let none = Choice::new(Vec::new());
        assert!(none.answers_on(&[], "veth1a2b3c"), "an empty list excludes nothing");
    }

    #[test]
    fn interface_globs() {
        assert!(matches("eth0", "eth0"));
        assert!(matches("enp*", "enp3s0"));
        assert!(matches("eth?", "eth1"));
        assert!(!matches("eth?", "eth10"));
        assert!(!matches("enp*", "eth0"));
        assert!(matches("*", "anything"));
    }
}
