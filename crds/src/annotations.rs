//! Names of annotations, labels, conditions and defaults, with the MetalLB aliases we accept.
//!
//! Every name a user or another component may type lives here, so the controller, the speaker and
//! the docs cannot drift apart.

use std::collections::BTreeMap;

/// The API group of ferrolb's own resources and annotations.
pub const GROUP: &str = "ferrolb.io";

/// The `spec.loadBalancerClass` the controller handles unless `--lb-class` says otherwise.
pub const DEFAULT_LB_CLASS: &str = "ferrolb.io/lb";

/// A user-facing annotation together with the older names that mean the same thing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Annotation {
    /// ferrolb's own name; it wins when set.
    pub name: &'static str,
    /// Names accepted for painless migration from MetalLB (both of its prefixes).
    pub aliases: &'static [&'static str],
}

/// Which IPPool a Service wants its address from.
pub const POOL: Annotation =
    Annotation { name: "ferrolb.io/pool", aliases: &["metallb.io/address-pool", "metallb.universe.tf/address-pool"] };

/// Specific addresses a Service asks for: a comma list, at most one per family.
pub const IPS: Annotation = Annotation {
    name: "ferrolb.io/ips",
    aliases: &["metallb.io/loadBalancerIPs", "metallb.universe.tf/loadBalancerIPs"],
};

/// Services with the same non-empty key may share an address.
pub const SHARING_KEY: Annotation = Annotation {
    name: "ferrolb.io/sharing-key",
    aliases: &["metallb.io/allow-shared-ip", "metallb.universe.tf/allow-shared-ip"],
};

/// `"true"`: the Service's established connections are replicated between nodes and survive a
/// failover (Cluster policy, speakers with `--conntrack-sync conntrackd`).
pub const REPLICATE_CONNECTIONS: Annotation = Annotation { name: "ferrolb.io/replicate-connections", aliases: &[] };

/// Written by the controller: the pool a Service's addresses came from.
pub const ALLOCATED_FROM: &str = "ferrolb.io/allocated-from";

/// Nodes with this label never announce load-balancer addresses (a Kubernetes convention).
pub const EXCLUDE_FROM_LB_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The Service condition the announcing speaker sets (message: node and interface).
pub const ANNOUNCED_CONDITION: &str = "ferrolb.io/Announced";

/// Event reasons written by the controller.
pub mod reasons {
    /// An address was given to the Service.
    pub const IP_ALLOCATED: &str = "IPAllocated";
    /// No address could be given; the message says why.
    pub const ALLOCATION_FAILED: &str = "AllocationFailed";
    /// The Service's address was returned to its pool.
    pub const IP_RELEASED: &str = "IPReleased";
}

/// Two names of one annotation carry different values, so we refuse to guess.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotations {first} ({first_value:?}) and {second} ({second_value:?}) disagree; set only one")]
pub struct AliasConflict {
    /// The first name found.
    pub first: &'static str,
    /// Its value.
    pub first_value: String,
    /// The second name found.
    pub second: &'static str,
    /// Its value.
    pub second_value: String,
}

/// A value found under one of an annotation's names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found<'a> {
    /// The name it was found under.
    pub key: &'static str,
    /// The value, trimmed.
    pub value: &'a str,
}

impl Annotation {
    /// Every name, ours first.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        std::iter::once(self.name).chain(self.aliases.iter().copied())
    }

    /// Looks the annotation up under all its names; agreeing duplicates are fine, differing ones are
    /// an error. Empty values count as unset.
    pub fn get<'a>(&self, annotations: &'a BTreeMap<String, String>) -> Result<Option<Found<'a>>, AliasConflict> {
        let mut found: Option<Found<'a>> = None;
        for key in self.names() {
            let Some(value) = annotations.get(key).map(|v| v.trim()) else {
                continue;
            };
            if value.is_empty() {
                continue;
            }
            match &found {
                None => found = Some(Found { key, value }),
                Some(first) if first.value != value => {
                    return Err(AliasConflict {
                        first: first.key,
                        first_value: first.value.to_string(),
                        second: key,
                        second_value: value.to_string(),
                    });
                }
                Some(_) => {}
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn ours_and_aliases_are_found() {
        let ours = map(&[("ferrolb.io/pool", "home")]);
        assert_eq!(POOL.get(&ours).unwrap().unwrap().value, "home");
        let metallb = map(&[("metallb.universe.tf/address-pool", " lan ")]);
        let found = POOL.get(&metallb).unwrap().unwrap();
        assert_eq!((found.key, found.value), ("metallb.universe.tf/address-pool", "lan"));
        assert_eq!(POOL.get(&map(&[])).unwrap(), None);
        assert_eq!(POOL.get(&map(&[("ferrolb.io/pool", "  ")])).unwrap(), None);
    }

    #[test]
    fn agreeing_names_are_fine_and_disagreeing_ones_are_refused() {
        let same = map(&[("ferrolb.io/sharing-key", "k"), ("metallb.io/allow-shared-ip", "k")]);
        assert_eq!(SHARING_KEY.get(&same).unwrap().unwrap().key, "ferrolb.io/sharing-key");
        let differ = map(&[("ferrolb.io/ips", "198.51.100.1"), ("metallb.io/loadBalancerIPs", "198.51.100.2")]);
        let err = IPS.get(&differ).unwrap_err();
        assert!(err.to_string().contains("disagree"), "{err}");
    }
}
