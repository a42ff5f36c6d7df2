//! ferrolb's controller: IP address management for LoadBalancer Services.

pub mod allocator;
pub mod command;
pub mod leader;
pub mod metrics;
pub mod peer_secret;
pub mod reconcile;
