//! Layer 2: ARP and NDP frames (pure: `arp`, `ndp`), interfaces, the responders (I/O), and the
//! announcer that drives them (with its pure rules: `conflict`, `gratuitous`).

pub mod announcer;
pub mod arp;
pub mod conflict;
pub mod filter;
pub mod gratuitous;
pub mod interfaces;
pub mod ndp;
pub mod responder;

/// A MAC address.
pub type Mac = [u8; 6];

/// The broadcast MAC address.
pub const BROADCAST: Mac = [0xff; 6];
