//! Choosing for a request: which pools may serve it, which address of a pool it gets, and whether
//! it may share an address with its holders. Read-only over the allocator's state.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ferrolb_crds::{Family, Protocol, ServiceKey, selector};

use super::{AllocError, Allocator, Assignment, DualStack, Pool, Request, TrafficPolicy};

fn family_list(fs: &[Family]) -> String {
    fs.iter().map(|f| f.to_string()).collect::<Vec<_>>().join(", ")
}

/// The order pools are tried in (MetalLB's rule, so that a migrated cluster hands out the same
/// addresses): pools whose serviceAllocation selects the Service before pools without one; within
/// each group ascending priority, pools without a priority after those with one; then by name.
/// Only pools that may serve the Service are ordered, so a serviceAllocation here selects it.
pub(super) fn precedence(name: &str, config: &super::PoolConfig) -> (bool, bool, i32, String) {
    (config.selection.is_none(), config.priority.is_none(), config.priority.unwrap_or(0), name.to_string())
}

impl Allocator {
    /// Whether `pool` may serve `req` at all (selection and name), ignoring disabled/autoAssign.
    pub(super) fn selection_allows(&self, name: &str, pool: &Pool, req: &Request) -> Result<(), String> {
        if let Some(named) = &req.pool
            && named != name
        {
            return Err(format!("the Service asks for IPPool {named:?}"));
        }
        let Some(sel) = &pool.config.selection else { return Ok(()) };
        let check = |s: &Option<_>, labels, what: &str| match s {
            Some(s) => match selector::matches(s, labels) {
                Ok(true) => Ok(()),
                Ok(false) => Err(format!("the {what} labels do not match its {what}Selector")),
                Err(e) => Err(format!("its {what}Selector is invalid: {e}")),
            },
            None => Ok(()),
        };
        // The namespace set is the union of the list and the selector (MetalLB's reading).
        let listed = sel.namespaces.contains(&req.namespace);
        match (sel.namespaces.is_empty(), &sel.namespace_selector) {
            (true, _) => check(&sel.namespace_selector, &req.namespace_labels, "namespace")?,
            (false, None) if !listed => {
                return Err(format!("namespace {:?} is not in its serviceAllocation.namespaces", req.namespace));
            }
            (false, Some(_)) if !listed => {
                check(&sel.namespace_selector, &req.namespace_labels, "namespace").map_err(|why| {
                    format!("namespace {:?} is not in its serviceAllocation.namespaces and {why}", req.namespace)
                })?
            }
            _ => {}
        }
        check(&sel.service_selector, &req.labels, "service")
    }

    /// Why `req` may not share `ip` (held by others), or None when it may. Holders that took `ip`
    /// after `req` did are not asked: when they stop being compatible they move ([`Self::displaced_by`]).
    pub(super) fn share_refusal(&self, ip: &IpAddr, req: &Request) -> Option<(ServiceKey, String)> {
        let users = self.users.get(ip)?;
        let mine = self.holders.get(&req.key).filter(|h| h.assignment.ips.contains(ip)).map(|h| h.since);
        let me = (&req.key, &req.sharing_key, &req.ports, &req.policy);
        for other in users.iter().filter(|u| **u != req.key) {
            let Some(h) = self.holders.get(other) else { continue };
            if mine.is_some_and(|m| h.since > m) {
                continue;
            }
            if let Some(why) = self.sharing_refused(ip, me, (other, h)) {
                return Some((other.clone(), why));
            }
        }
        None
    }

    /// Why a Service (`key`, sharing key, ports, policy) may not share `ip` with the holder `h`.
    pub(super) fn sharing_refused(
        &self,
        ip: &IpAddr,
        (key, sharing_key, ports, policy): (&ServiceKey, &Option<String>, &BTreeSet<(Protocol, u16)>, &TrafficPolicy),
        (other, h): (&ServiceKey, &super::Holder),
    ) -> Option<String> {
        let pool = self.pools.get(&h.assignment.pool).or_else(|| self.pools.values().find(|p| p.contains(ip)));
        match (&h.sharing_key, sharing_key) {
            (None, _) | (_, None) => Some("sharing needs the same ferrolb.io/sharing-key on both Services".to_string()),
            (Some(a), Some(b)) if a != b => Some(format!("its sharing key is {a:?}, this Service's is {b:?}")),
            _ if key.namespace() != other.namespace() && pool.is_some_and(|p| !p.config.share_across_namespaces) => {
                Some(format!("IPPool {:?} shares addresses only within one namespace", h.assignment.pool))
            }
            _ => {
                if let Some((p, n)) = h.ports.intersection(ports).next() {
                    Some(format!("both use port {n}/{p}"))
                } else if h.policy != *policy {
                    Some(
                        "externalTrafficPolicy differs (both Cluster, or both Local with the same selector)"
                            .to_string(),
                    )
                } else {
                    None
                }
            }
        }
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
        ordered.sort_by_key(|(n, p)| precedence(n, &p.config));
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
    pub(super) fn pick(&self, pool_name: &str, f: Family, req: &Request) -> Option<IpAddr> {
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
    pub(super) fn plan(&self, req: &Request) -> Result<Assignment, AllocError> {
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
            if let Some(what) = self.reserved_for(ip) {
                return Err(AllocError::Reserved { ip: *ip, what });
            }
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
}
