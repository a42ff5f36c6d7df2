//! IP address management, pure: pools, what every Service holds, and the decisions to give,
//! keep, move or take back addresses. No I/O; the reconciler feeds it and carries out its results.
//!
//! Rules (docs/ALLOCATION.md has them in prose):
//! - A Service's addresses come from one pool; pools that select the Service by their
//!   serviceAllocation are tried first, then the others; within each, ascending priority (unset
//!   last), then name.
//! - An address is held by one Service, or shared by Services with the same non-empty sharing key,
//!   disjoint (protocol, port) pairs and compatible traffic policies.
//! - What a Service holds is kept while it is still valid; a failed change never costs a Service
//!   an address that is still valid in its pool.
//! - Special-purpose addresses and what the cluster itself holds (ClusterIPs, Node addresses) are
//!   never given (`reserved.rs`); a Service holding one that becomes the cluster's is moved.

mod choose;
mod error;
mod intervals;
mod pool;
mod request;
pub mod reserved;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use ferrolb_crds::Family;

pub use self::error::AllocError;
pub use self::intervals::IntervalSet;
pub use self::pool::{Pool, PoolConfig, Selection};
pub use self::request::{DualStack, Request, TrafficPolicy};
pub use self::reserved::Reserver;
pub use ferrolb_crds::{Protocol, ServiceKey};

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
    /// When it took its addresses (a sequence number): of two Services sharing an address that
    /// stop being compatible, the later one moves.
    since: u64,
}

/// All pools and all holdings.
#[derive(Debug, Clone, Default)]
pub struct Allocator {
    pools: BTreeMap<String, Pool>,
    holders: HashMap<ServiceKey, Holder>,
    /// Address → the Services holding it.
    users: HashMap<IpAddr, BTreeSet<ServiceKey>>,
    /// Addresses the cluster itself holds → who holds them.
    reserved: HashMap<IpAddr, BTreeSet<Reserver>>,
    /// Who → the addresses reserved for it.
    reserved_by: HashMap<Reserver, Vec<IpAddr>>,
    /// Pools that overlap others, with the others' names ([`Allocator::overlaps`]).
    overlaps: BTreeMap<String, Vec<String>>,
    /// The next [`Holder::since`].
    next_since: u64,
}

impl Allocator {
    /// An allocator with no pools.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or changes a pool; returns the Services holding addresses in it (to re-check).
    pub fn set_pool(&mut self, name: &str, config: PoolConfig) -> Vec<ServiceKey> {
        let used: Vec<IpAddr> = self.users.keys().chain(self.reserved.keys()).copied().collect();
        let pool = Pool::new(config, &used);
        self.pools.insert(name.to_string(), pool);
        self.overlaps = self.find_overlaps();
        self.holders_of(name)
    }

    /// Removes a pool; returns the Services that held addresses in it.
    pub fn remove_pool(&mut self, name: &str) -> Vec<ServiceKey> {
        let affected = self.holders_of(name);
        self.pools.remove(name);
        self.overlaps = self.find_overlaps();
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

    /// Sets the addresses `owner` (a ClusterIP, a Node) holds, replacing what it held; no Service
    /// is given them. Returns the Services holding one of them, to be moved.
    pub fn reserve(&mut self, owner: &Reserver, ips: &[IpAddr]) -> Vec<ServiceKey> {
        let before = if ips.is_empty() {
            self.reserved_by.remove(owner).unwrap_or_default()
        } else {
            self.reserved_by.insert(owner.clone(), ips.to_vec()).unwrap_or_default()
        };
        for ip in before.iter().filter(|ip| !ips.contains(ip)) {
            let gone = self.reserved.get_mut(ip).is_some_and(|o| {
                o.remove(owner);
                o.is_empty()
            });
            if gone {
                self.reserved.remove(ip);
                if !self.users.contains_key(ip) {
                    for p in self.pools.values_mut() {
                        p.give_back(ip);
                    }
                }
            }
        }
        let mut affected = BTreeSet::new();
        for ip in ips {
            self.reserved.entry(*ip).or_default().insert(owner.clone());
            for p in self.pools.values_mut() {
                p.take(ip);
            }
            affected.extend(self.users.get(ip).into_iter().flatten().cloned());
        }
        affected.into_iter().collect()
    }

    /// What `ip` is, when the cluster itself holds it or it is special-purpose.
    pub fn reserved_for(&self, ip: &IpAddr) -> Option<String> {
        match self.reserved.get(ip).and_then(|o| o.first()) {
            Some(owner) => Some(owner.to_string()),
            None => reserved::special_kind(ip),
        }
    }

    /// Everything that holds addresses of its own.
    pub fn reservers(&self) -> impl Iterator<Item = &Reserver> {
        self.reserved_by.keys()
    }

    /// Who holds `ip`.
    pub fn users_of(&self, ip: &IpAddr) -> Vec<ServiceKey> {
        self.users.get(ip).map(|u| u.iter().cloned().collect()).unwrap_or_default()
    }

    /// For every pool that overlaps others, the others' names. Kept up to date when pools change
    /// (not recomputed per status write: 60 pools of 1,024 entries cost 11.6 s of CPU that way).
    pub fn overlaps(&self) -> &BTreeMap<String, Vec<String>> {
        &self.overlaps
    }

    /// Every pair of overlapping pools, by one sweep over all spans in address order: O(n log n)
    /// for n spans, plus the pools still open at each span.
    fn find_overlaps(&self) -> BTreeMap<String, Vec<String>> {
        let names: Vec<&String> = self.pools.keys().collect();
        let mut spans: Vec<(usize, u128, u128, usize)> =
            self.pools.values().enumerate().flat_map(|(i, p)| p.spans().map(move |(f, s, e)| (f, s, e, i))).collect();
        spans.sort_unstable();
        let mut pairs: BTreeSet<(usize, usize)> = BTreeSet::new();
        // Spans that may still overlap what comes next: the furthest end seen per pool.
        let mut open: BTreeMap<usize, u128> = BTreeMap::new();
        let mut family = usize::MAX;
        for (f, s, e, i) in spans {
            if f != family {
                open.clear();
                family = f;
            }
            open.retain(|_, end| *end >= s);
            for &j in open.keys().filter(|j| **j != i) {
                pairs.insert((i.min(j), i.max(j)));
            }
            let end = open.entry(i).or_insert(e);
            *end = (*end).max(e);
        }
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (a, b) in pairs {
            out.entry(names[a].clone()).or_default().push(names[b].clone());
            out.entry(names[b].clone()).or_default().push(names[a].clone());
        }
        for v in out.values_mut() {
            v.sort();
        }
        out
    }

    /// Whether `a` is still valid in its pool for this Service, whatever the Service asks: the
    /// pool exists, has the addresses, and its selection admits the Service.
    fn still_valid(&self, a: &Assignment, req: &Request) -> bool {
        let Some(pool) = self.pools.get(&a.pool) else { return false };
        let unnamed = Request { pool: None, ..req.clone() };
        a.ips.iter().all(|ip| pool.contains(ip) && !self.reserved.contains_key(ip))
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
            self.unuse(req.key.as_str(), &previous.assignment.ips);
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
            (from != Some(n.as_str()), req.pool.as_ref() != Some(*n), choose::precedence(n, &p.config))
        });
        let (name, _) = names.first()?;
        let a = Assignment { pool: (*name).clone(), ips: current.to_vec() };
        current.iter().all(|ip| self.share_refusal(ip, req).is_none()).then_some(a)
    }

    fn record(&mut self, req: &Request, a: Assignment) {
        // Keeping an address keeps the Service's place in the order of arrival.
        let kept = match self.holders.remove(&req.key) {
            Some(old) => {
                self.unuse(req.key.as_str(), &old.assignment.ips);
                old.assignment.ips.iter().any(|ip| a.ips.contains(ip)).then_some(old.since)
            }
            None => None,
        };
        let since = kept.unwrap_or_else(|| {
            self.next_since += 1;
            self.next_since
        });
        let h = Holder {
            assignment: a,
            sharing_key: req.sharing_key.clone(),
            ports: req.ports.clone(),
            policy: req.policy.clone(),
            since,
        };
        self.install(&req.key, h);
    }

    fn install(&mut self, key: &ServiceKey, h: Holder) {
        for ip in &h.assignment.ips {
            self.users.entry(*ip).or_default().insert(key.clone());
            for p in self.pools.values_mut() {
                p.take(ip);
            }
        }
        self.holders.insert(key.clone(), h);
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

    /// The Services sharing an address with `key` that took it later and may no longer share it
    /// with `key` as it is now (it added their port, say): they must move, not `key`.
    pub fn displaced_by(&self, key: &str) -> Vec<ServiceKey> {
        let Some((key, h)) = self.holders.get_key_value(key) else { return Vec::new() };
        let mut out = BTreeSet::new();
        for ip in &h.assignment.ips {
            for other in self.users.get(ip).into_iter().flatten().filter(|o| *o != key) {
                let Some(o) = self.holders.get(other) else { continue };
                if o.since > h.since
                    && self.sharing_refused(ip, (other, &o.sharing_key, &o.ports, &o.policy), (key, h)).is_some()
                {
                    out.insert(other.clone());
                }
            }
        }
        out.into_iter().collect()
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
