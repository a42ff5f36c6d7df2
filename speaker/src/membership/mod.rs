//! Membership: which speakers are alive. Pure: heartbeat messages, liveness bookkeeping, reading
//! Leases. I/O: the Lease registration and the UDP heartbeats.

pub mod heartbeat;
pub mod lease;
pub mod liveness;
pub mod udp;
