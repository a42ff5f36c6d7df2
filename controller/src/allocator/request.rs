//! What a Service asks the allocator for, as plain data (`reconcile::read` makes it from the
//! Service object).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ferrolb_crds::{Family, Protocol, ServiceKey};

/// `externalTrafficPolicy`, with the selector that Local sharing must agree on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrafficPolicy {
    /// Any node forwards.
    Cluster,
    /// Only nodes with local endpoints; sharing needs the same pod selector.
    Local(BTreeMap<String, String>),
}

/// `ipFamilyPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DualStack {
    /// One address, of the primary family.
    Single,
    /// Both families when one pool has both, else the primary; the other is added later.
    Prefer,
    /// Both families or nothing.
    Require,
}

/// What a Service asks for (parsed from the Service by [`request`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// `namespace/name`.
    pub key: ServiceKey,
    /// Its namespace.
    pub namespace: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its namespace's labels.
    pub namespace_labels: BTreeMap<String, String>,
    /// `spec.ipFamilies`, primary first.
    pub families: Vec<Family>,
    /// `spec.ipFamilyPolicy`.
    pub dual: DualStack,
    /// The pool asked for by name.
    pub pool: Option<String>,
    /// Addresses asked for, at most one per family.
    pub ips: Vec<IpAddr>,
    /// The sharing key, if any.
    pub sharing_key: Option<String>,
    /// Its (protocol, port) pairs.
    pub ports: BTreeSet<(Protocol, u16)>,
    /// Its traffic policy.
    pub policy: TrafficPolicy,
}

impl Request {
    /// The families this Service should get addresses of, primary first.
    pub fn wanted(&self) -> &[Family] {
        match self.dual {
            DualStack::Single => &self.families[..self.families.len().min(1)],
            _ => &self.families,
        }
    }
}
