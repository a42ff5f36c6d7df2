//! Layer 2: building and parsing ARP and NDP frames (pure).

pub mod arp;
pub mod ndp;

/// A MAC address.
pub type Mac = [u8; 6];

/// The broadcast MAC address.
pub const BROADCAST: Mac = [0xff; 6];
