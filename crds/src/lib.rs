//! ferrolb's API: the `IPPool` custom resource, the parser for its address ranges, and the
//! annotation, label and condition names that the controller, the speaker and users share; with
//! the `runtime` feature, the process plumbing both binaries share (logging, kube connection,
//! metrics and health endpoints).

pub mod addresses;
pub mod annotations;
#[cfg(feature = "runtime")]
pub mod events;
pub mod ippool;
#[cfg(feature = "runtime")]
pub mod runtime;
pub mod selector;

pub use addresses::{AddressError, AddressRange, Family};
pub use ippool::{AddressCounts, IPPool, IPPoolSpec, IPPoolStatus, L2Settings, ServiceAllocation};
