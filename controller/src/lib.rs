//! ferrolb's controller: IP address management for LoadBalancer Services.

pub mod allocator;
