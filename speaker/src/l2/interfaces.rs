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
