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

/// Whether an interface name matches a name or glob (`*` any run, `?` one character). Greedy with
/// one backtrack point (the last `*`), so its cost is at most the product of the two lengths —
/// a recursive matcher is exponential in the number of `*`s, and a pool is written by users.
pub fn matches(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    // The last `*` seen, and where in the name its run would end next.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            // Let the last `*` take one more character and try again from there.
            star = Some((sp, sn + 1));
            pi = sp + 1;
            ni = sn + 1;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == b'*')
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

    /// The exponential matcher this one replaced, as an oracle for small inputs.
    fn recursive(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => recursive(&p[1..], n) || (!n.is_empty() && recursive(p, &n[1..])),
            (Some(b'?'), Some(_)) => recursive(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => recursive(&p[1..], &n[1..]),
            _ => false,
        }
    }

    #[test]
    fn a_pathological_pattern_is_answered() {
        // 254 characters of `*a`: the recursive matcher never finished on this (12.6 s at 41).
        let pattern = "*a".repeat(127);
        assert!(!matches(&pattern, "enp0s31f6"));
        assert!(matches(&format!("{}*", "*a".repeat(3)), "aaab"));
    }

    proptest::proptest! {
        #[test]
        fn agrees_with_the_recursive_definition(p in "[ab*?]{0,8}", n in "[ab]{0,8}") {
            proptest::prop_assert_eq!(matches(&p, &n), recursive(p.as_bytes(), n.as_bytes()));
        }
    }
}
