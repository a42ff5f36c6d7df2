//! ferrolb's speaker: per-address election of the announcing node, ARP/NDP answers and
//! announcements, and (later) nftables forwarding. Pure parts are modules of their own.

pub mod agent;
pub mod cluster;
pub mod election;
pub mod forwarding;
pub mod l2;
pub mod membership;
