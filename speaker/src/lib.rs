//! ferrolb's speaker: the view of the cluster (`state`), membership, the election, the announcing
//! protocols (`announce`, `l2`), the report of who announces, and nftables forwarding. Pure parts
//! are modules of their own; `agent` wires them together.

pub mod agent;
pub mod announce;
pub mod bgp;
pub mod child;
pub mod conntrack;
pub mod election;
pub mod forwarding;
pub mod l2;
pub mod membership;
pub mod metrics;
pub mod report;
pub mod state;
