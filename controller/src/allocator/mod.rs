//! IP address management, pure: pools, what every Service holds, and the decisions to give,
//! keep, move or take back addresses. No I/O; the reconciler feeds it and carries out its results.
//!
//! Rules (docs/ALLOCATION.md has them in prose):
//! - A Service's addresses come from one pool; pools are tried by ascending priority, then name.
//! - An address is held by one Service, or shared by Services with the same non-empty sharing key,
//!   disjoint (protocol, port) pairs and compatible traffic policies.
//! - What a Service holds is kept while it is still valid; a failed change never costs a Service
//!   an address that is still valid in its pool.

mod intervals;
mod pool;
pub mod request;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;

use ferrolb_crds::Family;
use ferrolb_crds::selector;

pub use self::intervals::IntervalSet;
pub use self::pool::{Pool, PoolConfig, Selection};

/// A Service, as `namespace/name`.
pub type ServiceKey = String;

/// A transport protocol of a Service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

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
            AllocError::Taken { .. } => "address_taken",
            AllocError::WrongFamily { .. } | AllocError::BadRequest(_) => "bad_request",
        }
    }
}

/// What a Service holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// The pool the addresses come from.
    pub pool: String,
    /// The addresses, in the Service's family order.
    pub ips: Vec<IpAddr>,
}

/// The result of [`Allocator::assign`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// What the Service holds now (None: nothing).
    pub assignment: Option<Assignment>,
    /// Addresses it gave up in this step.
    pub released: Vec<IpAddr>,
    /// Why the request could not be (fully) met, if it could not.
    pub error: Option<AllocError>,
}

#[derive(Debug, Clone)]
struct Holder {
    assignment: Assignment,
    sharing_key: Option<String>,
    ports: BTreeSet<(Protocol, u16)>,
    policy: TrafficPolicy,
}

/// All pools and all holdings.
#[derive(Debug, Clone, Default)]
pub struct Allocator {
    pools: BTreeMap<String, Pool>,
    holders: HashMap<ServiceKey, Holder>,
    /// Address → the Services holding it.
    users: HashMap<IpAddr, BTreeSet<ServiceKey>>,
}

fn family_list(fs: &[Family]) -> String {
    fs.iter().map(|f| f.to_string()).collect::<Vec<_>>().join(", ")
}

impl Allocator {
    /// An allocator with no pools.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or changes a pool; returns the Services holding addresses in it (to re-check).
    pub fn set_pool(&mut self, name: &str, config: PoolConfig) -> Vec<ServiceKey> {
        let used: Vec<IpAddr> = self.users.keys().copied().collect();
        let pool = Pool::new(config, &used);
        self.pools.insert(name.to_string(), pool);
        self.holders_of(name)
    }

    /// Removes a pool; returns the Services that held addresses in it.
    pub fn remove_pool(&mut self, name: &str) -> Vec<ServiceKey> {
        let affected = self.holders_of(name);
        self.pools.remove(name);
        affected
    }

    /// The pool names, in order.
    pub fn pool_names(&self) -> impl Iterator<Item = &str> {
        self.pools.keys().map(String::as_str)
    }

    /// A pool by name.
    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.get(name)
    }

    fn holders_of(&self, pool: &str) -> Vec<ServiceKey> {
        let mut v: Vec<ServiceKey> =
            self.holders.iter().filter(|(_, h)| h.assignment.pool == pool).map(|(k, _)| k.clone()).collect();
        v.sort();
        v
    }

    /// What a Service holds.
    pub fn assignment(&self, key: &str) -> Option<&Assignment> {
        self.holders.get(key).map(|h| &h.assignment)
    }

    /// Every holding, by Service.
    pub fn assignments(&self) -> impl Iterator<Item = (&ServiceKey, &Assignment)> {
        self.holders.iter().map(|(k, h)| (k, &h.assignment))
    }

    /// Who holds `ip`.
    pub fn users_of(&self, ip: &IpAddr) -> Vec<ServiceKey> {
        self.users.get(ip).map(|u| u.iter().cloned().collect()).unwrap_or_default()
    }

    /// For every pool that overlaps others, the others' names.
    pub fn overlaps(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let pools: Vec<(&String, &Pool)> = self.pools.iter().collect();
        for (i, (a, pa)) in pools.iter().enumerate() {
            for (b, pb) in pools.iter().skip(i + 1) {
                if pa.overlaps(pb) {
                    out.entry((*a).clone()).or_default().push((*b).clone());
                    out.entry((*b).clone()).or_default().push((*a).clone());
                }
            }
        }
        out
    }

    /// Whether `pool` may serve `req` at all (selection and name), ignoring disabled/autoAssign.
    fn selection_allows(&self, name: &str, pool: &Pool, req: &Request) -> Result<(), String> {
        let sel = &pool.config.selection;
        if !sel.namespaces.is_empty() && !sel.namespaces.contains(&req.namespace) {
            return Err(format!("namespace {:?} is not in its serviceAllocation.namespaces", req.namespace));
        }
        let check = |s: &Option<_>, labels, what: &str| match s {
            Some(s) => match selector::matches(s, labels) {
                Ok(true) => Ok(()),
                Ok(false) => Err(format!("the {what} labels do not match its {what}Selector")),
                Err(e) => Err(format!("its {what}Selector is invalid: {e}")),
            },
            None => Ok(()),
        };
        check(&sel.namespace_selector, &req.namespace_labels, "namespace")?;
        check(&sel.service_selector, &req.labels, "service")?;
        if let Some(named) = &req.pool
            && named != name
        {
            return Err(format!("the Service asks for IPPool {named:?}"));
        }
        Ok(())
    }

    /// Why `req` may not share `ip` (held by others), or None when it may.
    fn share_refusal(&self, ip: &IpAddr, req: &Request) -> Option<(ServiceKey, String)> {
        let users = self.users.get(ip)?;
        for other in users.iter().filter(|u| **u != req.key) {
            let Some(h) = self.holders.get(other) else { continue };
            let why = match (&h.sharing_key, &req.sharing_key) {
                (None, _) | (_, None) => {
                    Some("sharing needs the same ferrolb.io/sharing-key on both Services".to_string())
                }
                (Some(a), Some(b)) if a != b => Some(format!("its sharing key is {a:?}, this Service's is {b:?}")),
                _ => {
                    if let Some((p, n)) = h.ports.intersection(&req.ports).next() {
                        Some(format!("both use port {n}/{p}"))
                    } else if h.policy != req.policy {
                        Some(
                            "externalTrafficPolicy differs (both Cluster, or both Local with the same selector)"
                                .to_string(),
                        )
                    } else {
                        None
                    }
                }
            };
            if let Some(why) = why {
                return Some((other.clone(), why));
            }
        }
        None
    }

    /// Pools that may serve new allocations for `req`, in order, with the reasons others may not.
    fn candidates(&self, req: &Request) -> Result<Vec<&str>, AllocError> {
        if let Some(named) = &req.pool {
            let (named, pool) =
                self.pools.get_key_value(named).ok_or_else(|| AllocError::PoolNotFound(named.clone()))?;
            self.selection_allows(named, pool, req)
                .map_err(|why| AllocError::PoolNotAllowed { pool: named.clone(), why })?;
            if pool.config.disabled {
                return Err(AllocError::PoolNotAllowed { pool: named.clone(), why: "it is disabled".into() });
            }
            return Ok(vec![named.as_str()]);
        }
        let mut ordered: Vec<(&String, &Pool)> = self
            .pools
            .iter()
            .filter(|(n, p)| p.config.auto_assign && !p.config.disabled && self.selection_allows(n, p, req).is_ok())
            .collect();
        ordered.sort_by_key(|(n, p)| (p.config.priority, (*n).clone()));
        if ordered.is_empty() {
            let why = if self.pools.is_empty() {
                "there are no IPPools".to_string()
            } else {
                "every IPPool is disabled, not autoAssign, or its serviceAllocation excludes this Service".to_string()
            };
            return Err(AllocError::NoCompatiblePool(why));
        }
        Ok(ordered.into_iter().map(|(n, _)| n.as_str()).collect())
    }

    /// An address of `f` in `pool` that `req` may use: one it already shares by key, else the
    /// lowest free one.
    fn pick(&self, pool_name: &str, f: Family, req: &Request) -> Option<IpAddr> {
        let pool = self.pools.get(pool_name)?;
        if req.sharing_key.is_some() {
            let mut shared: Vec<&IpAddr> = self
                .users
                .keys()
                .filter(|ip| Family::of(ip) == f && pool.contains(ip) && self.share_refusal(ip, req).is_none())
                .filter(|ip| self.users.get(*ip).is_some_and(|u| u.iter().any(|k| *k != req.key)))
                .collect();
            shared.sort();
            if let Some(ip) = shared.first() {
                return Some(**ip);
            }
        }
        pool.lowest_free(f)
    }

    /// Plans a fresh assignment for `req` (ignoring what it holds now).
    fn plan(&self, req: &Request) -> Result<Assignment, AllocError> {
        if !req.ips.is_empty() {
            return self.plan_requested(req);
        }
        let pools = self.candidates(req)?;
        let tried = pools.join(", ");
        let wanted = req.wanted();
        let primary = *wanted.first().ok_or_else(|| AllocError::BadRequest("the Service has no ipFamilies".into()))?;
        // Dual-stack: the first pool that can give every wanted family.
        if wanted.len() == 2 {
            for name in &pools {
                let ips: Vec<IpAddr> = wanted.iter().filter_map(|f| self.pick(name, *f, req)).collect();
                if ips.len() == 2 {
                    return Ok(Assignment { pool: name.to_string(), ips });
                }
            }
            if req.dual == DualStack::Require {
                return Err(AllocError::DualStackUnavailable(tried));
            }
        }
        for name in &pools {
            if let Some(ip) = self.pick(name, primary, req) {
                return Ok(Assignment { pool: name.to_string(), ips: vec![ip] });
            }
        }
        Err(AllocError::NoFreeAddress { family: primary, tried })
    }

    fn plan_requested(&self, req: &Request) -> Result<Assignment, AllocError> {
        let wanted = req.wanted();
        for ip in &req.ips {
            if !wanted.contains(&Family::of(ip)) {
                return Err(AllocError::WrongFamily { ip: *ip, family: Family::of(ip), families: family_list(wanted) });
            }
        }
        if req.dual == DualStack::Require && req.ips.len() < 2 {
            return Err(AllocError::BadRequest(
                "RequireDualStack: the requested addresses must include one of each family".into(),
            ));
        }
        // Every requested address must come from one pool that may serve the Service.
        let mut chosen: Option<&str> = None;
        for ip in &req.ips {
            let holding: Vec<&String> =
                self.pools.iter().filter(|(_, p)| p.contains(ip) || p.is_buggy(ip)).map(|(n, _)| n).collect();
            if holding.is_empty() {
                return Err(AllocError::NotInPool { ip: *ip });
            }
            let usable: Vec<&String> = holding
                .iter()
                .copied()
                .filter(|n| {
                    let p = &self.pools[*n];
                    self.selection_allows(n, p, req).is_ok() && !p.config.disabled && chosen.is_none_or(|c| c == *n)
                })
                .collect();
            let Some(name) = usable.first().copied() else {
                if let Some(named) = &req.pool
                    && !holding.contains(&named)
                {
                    return Err(AllocError::InOtherPool { ip: *ip, actual: holding[0].clone(), named: named.clone() });
                }
                let p = &self.pools[holding[0]];
                let why = match self.selection_allows(holding[0], p, req) {
                    Err(why) => why,
                    Ok(()) if p.config.disabled => "it is disabled".into(),
                    Ok(()) => "the requested addresses lie in different IPPools".into(),
                };
                return Err(AllocError::PoolNotAllowed { pool: holding[0].clone(), why });
            };
            if self.pools[name].is_buggy(ip) {
                return Err(AllocError::Buggy { ip: *ip, pool: name.clone() });
            }
            if let Some((holder, why)) = self.share_refusal(ip, req) {
                return Err(AllocError::Taken { ip: *ip, holder, why });
            }
            chosen = Some(name);
        }
        let pool = chosen.ok_or_else(|| AllocError::BadRequest("no address requested".into()))?.to_string();
        let mut ips = req.ips.clone();
        ips.sort_by_key(|ip| wanted.iter().position(|f| *f == Family::of(ip)));
        Ok(Assignment { pool, ips })
    }

    /// Whether `a` is still valid in its pool for this Service, whatever the Service asks: the
    /// pool exists, has the addresses, and its selection admits the Service.
    fn still_valid(&self, a: &Assignment, req: &Request) -> bool {
        let Some(pool) = self.pools.get(&a.pool) else { return false };
        let unnamed = Request { pool: None, ..req.clone() };
        a.ips.iter().all(|ip| pool.contains(ip))
            && self.selection_allows(&a.pool, pool, &unnamed).is_ok()
            && a.ips.iter().all(|ip| self.share_refusal(ip, req).is_none())
    }

    /// `a` without addresses of families the Service no longer wants (one per family).
    fn trim(a: &Assignment, req: &Request) -> Assignment {
        let wanted = req.wanted();
        let mut ips: Vec<IpAddr> = a.ips.iter().copied().filter(|ip| wanted.contains(&Family::of(ip))).collect();
        ips.sort_by_key(|ip| wanted.iter().position(|f| *f == Family::of(ip)));
        ips.dedup_by_key(|ip| Family::of(ip));
        Assignment { pool: a.pool.clone(), ips }
    }

    /// Whether `a` (trimmed to the wanted families) meets everything `req` asks.
    fn fits(&self, a: &Assignment, req: &Request) -> Option<Assignment> {
        let trimmed = Self::trim(a, req);
        let same_set = |x: &[IpAddr], y: &[IpAddr]| {
            let (mut x, mut y) = (x.to_vec(), y.to_vec());
            x.sort();
            y.sort();
            x == y
        };
        let ok = !trimmed.ips.is_empty()
            && self.still_valid(&trimmed, req)
            && req.pool.as_ref().is_none_or(|p| *p == a.pool)
            && (req.ips.is_empty() || same_set(&req.ips, &trimmed.ips));
        ok.then_some(trimmed)
    }

    /// Decides what `req` holds. `current` is what the Service's status shows and `from` the pool
    /// its `ferrolb.io/allocated-from` annotation names (used when the allocator does not know the
    /// Service yet, as after a restart, and to tell overlapping pools apart). Keeps what is valid,
    /// adds a missing dual-stack family from the same pool, moves or clears what is not.
    pub fn assign(&mut self, req: &Request, current: &[IpAddr], from: Option<&str>) -> Outcome {
        let held = match self.holders.get(&req.key) {
            Some(h) => Some(h.assignment.clone()),
            None if !current.is_empty() => self.adopt(req, current, from),
            None => None,
        };
        if let Some(a) = &held
            && let Some(mut kept) = self.fits(a, req)
        {
            let released: Vec<IpAddr> = a.ips.iter().copied().filter(|ip| !kept.ips.contains(ip)).collect();
            if req.ips.is_empty() && kept.ips.len() < req.wanted().len() {
                for f in req.wanted() {
                    if !kept.ips.iter().any(|ip| Family::of(ip) == *f)
                        && let Some(ip) = self.pick(&kept.pool, *f, req)
                    {
                        kept.ips.push(ip);
                    }
                }
                kept.ips.sort_by_key(|ip| req.wanted().iter().position(|f| *f == Family::of(ip)));
            }
            let error = (req.dual == DualStack::Require && kept.ips.len() < 2)
                .then(|| AllocError::DualStackUnavailable(kept.pool.clone()));
            if error.is_none() {
                self.record(req, kept.clone());
                return Outcome { assignment: Some(kept), released, error: None };
            }
        }
        // What it holds does not fit: plan afresh as if it held nothing, then swap.
        if let Some(previous) = self.holders.remove(&req.key) {
            self.unuse(&req.key, &previous.assignment.ips);
        }
        match self.plan(req) {
            Ok(a) => {
                let released: Vec<IpAddr> =
                    held.iter().flat_map(|h| h.ips.iter().copied()).filter(|ip| !a.ips.contains(ip)).collect();
                self.record(req, a.clone());
                Outcome { assignment: Some(a), released, error: None }
            }
            Err(e) => {
                // A change that cannot be met keeps what the Service has, if that is still valid.
                let kept =
                    held.as_ref().map(|h| Self::trim(h, req)).filter(|k| !k.ips.is_empty() && self.still_valid(k, req));
                let released: Vec<IpAddr> = held
                    .iter()
                    .flat_map(|h| h.ips.iter().copied())
                    .filter(|ip| kept.as_ref().is_none_or(|k| !k.ips.contains(ip)))
                    .collect();
                if let Some(k) = &kept {
                    // still_valid() checked sharing under the new request, so it is what we record.
                    self.record(req, k.clone());
                }
                Outcome { assignment: kept, released, error: Some(e) }
            }
        }
    }

    /// Takes over what a Service's status shows, without allocating anything new: the first pass
    /// of a restarted or newly elected controller, so that every Service keeps its addresses before
    /// any other Service is given one. Returns whether it holds something now.
    pub fn restore(&mut self, req: &Request, current: &[IpAddr], from: Option<&str>) -> bool {
        if self.holders.contains_key(&req.key) || current.is_empty() {
            return self.holders.contains_key(&req.key);
        }
        // Valid in its pool is enough here; whether it meets the request is the second pass's job,
        // exactly as for a Service the allocator already knows.
        let kept = self
            .adopt(req, current, from)
            .map(|a| Self::trim(&a, req))
            .filter(|a| !a.ips.is_empty() && self.still_valid(a, req));
        match kept {
            Some(a) => {
                self.record(req, a);
                true
            }
            None => false,
        }
    }

    /// Takes over addresses found in a Service's status, if a pool has them and nobody
    /// incompatible holds them.
    fn adopt(&self, req: &Request, current: &[IpAddr], from: Option<&str>) -> Option<Assignment> {
        let unnamed = Request { pool: None, ..req.clone() };
        let mut names: Vec<(&String, &Pool)> = self
            .pools
            .iter()
            .filter(|(n, p)| current.iter().all(|ip| p.contains(ip)) && self.selection_allows(n, p, &unnamed).is_ok())
            .collect();
        names.sort_by_key(|(n, p)| {
            (from != Some(n.as_str()), req.pool.as_ref() != Some(*n), p.config.priority, (*n).clone())
        });
        let (name, _) = names.first()?;
        let a = Assignment { pool: (*name).clone(), ips: current.to_vec() };
        current.iter().all(|ip| self.share_refusal(ip, req).is_none()).then_some(a)
    }

    fn record(&mut self, req: &Request, a: Assignment) {
        if let Some(old) = self.holders.remove(&req.key) {
            self.unuse(&req.key, &old.assignment.ips);
        }
        let h = Holder {
            assignment: a,
            sharing_key: req.sharing_key.clone(),
            ports: req.ports.clone(),
            policy: req.policy.clone(),
        };
        self.install(&req.key, h);
    }

    fn install(&mut self, key: &str, h: Holder) {
        for ip in &h.assignment.ips {
            self.users.entry(*ip).or_default().insert(key.to_string());
            for p in self.pools.values_mut() {
                p.take(ip);
            }
        }
        self.holders.insert(key.to_string(), h);
    }

    fn unuse(&mut self, key: &str, ips: &[IpAddr]) {
        for ip in ips {
            let empty = self.users.get_mut(ip).is_some_and(|u| {
                u.remove(key);
                u.is_empty()
            });
            if empty {
                self.users.remove(ip);
                for p in self.pools.values_mut() {
                    p.give_back(ip);
                }
            }
        }
    }

    /// Forgets a Service; returns the addresses it held.
    pub fn release(&mut self, key: &str) -> Vec<IpAddr> {
        match self.holders.remove(key) {
            Some(h) => {
                self.unuse(key, &h.assignment.ips);
                h.assignment.ips
            }
            None => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests;
