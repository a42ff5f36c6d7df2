//! Why a Service got no (or no new) address, in the words users read in Events.

use std::net::IpAddr;

use ferrolb_crds::{Family, ServiceKey};

/// Why a Service got no (or no new) address. The text is what users read in Events.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// The named pool does not exist.
    #[error("IPPool {0:?} does not exist")]
    PoolNotFound(String),
    /// The named pool exists but may not serve this Service.
    #[error("IPPool {pool:?} may not be used by this Service: {why}")]
    PoolNotAllowed {
        /// The pool.
        pool: String,
        /// Why not.
        why: String,
    },
    /// No pool may serve this Service.
    #[error("no IPPool may be used by this Service ({0})")]
    NoCompatiblePool(String),
    /// Every compatible pool is full for a family.
    #[error("no free {family} address in any IPPool this Service may use (tried {tried})")]
    NoFreeAddress {
        /// The family.
        family: Family,
        /// The pools tried, in order.
        tried: String,
    },
    /// RequireDualStack cannot be met.
    #[error("RequireDualStack: no IPPool this Service may use has both an IPv4 and an IPv6 address free (tried {0})")]
    DualStackUnavailable(String),
    /// A requested address is outside every usable pool.
    #[error("{ip} is not in any IPPool this Service may use")]
    NotInPool {
        /// The address.
        ip: IpAddr,
    },
    /// A requested address is one no Service is given: special-purpose or the cluster's own.
    #[error("{ip} is never handed out: it is {what}")]
    Reserved {
        /// The address.
        ip: IpAddr,
        /// What it is.
        what: String,
    },
    /// A requested address is in a pool other than the one named.
    #[error("{ip} is in IPPool {actual:?}, but the Service asks for IPPool {named:?}")]
    InOtherPool {
        /// The address.
        ip: IpAddr,
        /// Where it is.
        actual: String,
        /// What was named.
        named: String,
    },
    /// A requested address ends in .0 or .255 and its pool avoids those.
    #[error("{ip} ends in .0 or .255 and IPPool {pool:?} sets avoidBuggyIPs")]
    Buggy {
        /// The address.
        ip: IpAddr,
        /// The pool.
        pool: String,
    },
    /// A requested address is held by a Service it may not be shared with.
    #[error("{ip} is in use by {holder}: {why}")]
    Taken {
        /// The address.
        ip: IpAddr,
        /// Who holds it.
        holder: ServiceKey,
        /// Why it cannot be shared.
        why: String,
    },
    /// A requested address is of a family the Service does not use.
    #[error("{ip} is {family}, but the Service's ipFamilies are {families}")]
    WrongFamily {
        /// The address.
        ip: IpAddr,
        /// Its family.
        family: Family,
        /// The Service's families.
        families: String,
    },
    /// The Service's request itself is malformed.
    #[error("{0}")]
    BadRequest(String),
}

impl AllocError {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            AllocError::PoolNotFound(_) => "pool_not_found",
            AllocError::PoolNotAllowed { .. } => "pool_not_allowed",
            AllocError::NoCompatiblePool(_) => "no_compatible_pool",
            AllocError::NoFreeAddress { .. } => "pool_full",
            AllocError::DualStackUnavailable(_) => "dual_stack_unavailable",
            AllocError::NotInPool { .. } | AllocError::InOtherPool { .. } => "address_not_in_pool",
            AllocError::Buggy { .. } => "buggy_address",
            AllocError::Reserved { .. } => "reserved_address",
            AllocError::Taken { .. } => "address_taken",
            AllocError::WrongFamily { .. } | AllocError::BadRequest(_) => "bad_request",
        }
    }
}
