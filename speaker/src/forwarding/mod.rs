//! Forwarding (`--forwarding nftables`): the ruleset that feeds `VIP:port` and
//! `node address:nodePort` into a Service's endpoints. `model`, `render` (with `part` and `diff`),
//! `readback` and `firewall` are pure; `nft` and `libnft` talk to the kernel; `driver` keeps the
//! kernel's table what the view says.

pub mod diff;
pub mod driver;
pub mod firewall;
pub mod libnft;
pub mod model;
pub mod nft;
pub mod part;
pub mod readback;
pub mod render;
