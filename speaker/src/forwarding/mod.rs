//! Forwarding (`--forwarding nftables`): the ruleset that feeds `VIP:port` and
//! `node address:nodePort` into a Service's endpoints. `render` is pure; applying it is issue #5's
//! next step.

pub mod render;
