//! Which interfaces the speaker announces on: up, broadcast-capable, ARP-capable, not a member of
//! a bridge or bond, with a MAC, and matching the pool's names or globs when it gives any.

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
    fn interface_globs() {
        assert!(matches("eth0", "eth0"));
        assert!(matches("enp*", "enp3s0"));
        assert!(matches("eth?", "eth1"));
        assert!(!matches("eth?", "eth10"));
        assert!(!matches("enp*", "eth0"));
        assert!(matches("*", "anything"));
    }
}
