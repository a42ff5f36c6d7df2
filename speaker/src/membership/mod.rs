//! Membership: which speakers are alive. Pure parts: heartbeat messages; liveness bookkeeping.

pub mod heartbeat;
pub mod liveness;
