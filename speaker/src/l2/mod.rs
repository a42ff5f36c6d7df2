//! Layer 2: ARP and NDP frames (pure: `arp`, `ndp`), interfaces, and the responders (I/O).

pub mod arp;
pub mod interfaces;
pub mod ndp;
pub mod responder;

/// A MAC address.
pub type Mac = [u8; 6];

/// The broadcast MAC address.
pub const BROADCAST: Mac = [0xff; 6];
