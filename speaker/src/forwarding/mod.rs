//! Forwarding (`--forwarding nftables`): the ruleset that feeds `VIP:port` and
//! `node address:nodePort` into a Service's endpoints. `model` and `render` are pure; `nft`
//! applies the result.

pub mod firewall;
pub mod model;
pub mod nft;
pub mod render;
