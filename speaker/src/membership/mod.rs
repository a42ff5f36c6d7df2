//! Membership: which speakers are alive, and how one ends (restarted in place or leaving). Pure:
//! heartbeat messages, liveness bookkeeping, reading Leases, the exit decision. I/O: the Lease
//! registration, the UDP heartbeats, the claims file.

pub mod heartbeat;
pub mod key;
pub mod lease;
pub mod liveness;
pub mod restart;
pub mod udp;
