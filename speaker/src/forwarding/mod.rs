//! Forwarding (`--forwarding nftables`): the ruleset that feeds `VIP:port` and
//! `node address:nodePort` into a Service's endpoints. `model`, `render` and `readback` are
//! pure; `nft` applies the result.

pub mod firewall;
pub mod libnft;
pub mod model;
pub mod nft;
pub mod readback;
pub mod render;
