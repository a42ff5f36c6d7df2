//! ferrolb's API: the `IPPool` and `BGPPeer` custom resources, the parser for its address ranges, and the
//! annotation, label and condition names that the controller, the speaker and users share, and how
//! both name a Service and its ports' protocol.

pub mod addresses;
pub mod annotations;
pub mod bgppeer;
pub mod ippool;
pub mod selector;
pub mod service;

pub use addresses::{AddressError, AddressRange, Family};
pub use bgppeer::{BGPPeer, BGPPeerSpec, BGPPeerStatus, Bfd, NodeSession, SecretKeyRef};
pub use ippool::{AddressCounts, BgpSettings, IPPool, IPPoolSpec, IPPoolStatus, L2Settings, ServiceAllocation};
pub use service::{Protocol, ServiceKey};
