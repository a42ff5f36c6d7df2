//! What the cluster looks like to this speaker: Services, EndpointSlices, Nodes and pools read
//! once, when they change, into one view per Service (`read` is the pure reading; `watch` keeps
//! the caches). Every announcing protocol and the forwarding take this view.

pub mod read;
pub mod source_ranges;
pub mod watch;

use std::collections::BTreeMap;
use std::net::IpAddr;

use ferrolb_crds::{IPPool, ServiceKey};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

pub use self::read::{Backend, NodeView, PoolBgp, PoolL2, PortView, ServiceView};

/// The whole view, derived from the watch caches alone.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct View {
    /// Services holding addresses from ferrolb, by key.
    pub services: BTreeMap<ServiceKey, ServiceView>,
    /// Nodes by name.
    pub nodes: BTreeMap<String, NodeView>,
    /// Pools' layer-2 settings by name.
    pub pools: BTreeMap<String, PoolL2>,
    /// BGP settings of the pools advertised over BGP, by name.
    pub bgp_pools: BTreeMap<String, PoolBgp>,
}

impl View {
    /// The view of these objects.
    pub fn of<'a>(
        services: impl IntoIterator<Item = &'a Service>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
        nodes: impl IntoIterator<Item = &'a Node>,
        pools: impl IntoIterator<Item = &'a IPPool>,
    ) -> View {
        let mut by_service: BTreeMap<ServiceKey, Vec<&EndpointSlice>> = BTreeMap::new();
        for s in slices {
            if let Some(key) = read::slice_owner(s) {
                by_service.entry(key).or_default().push(s);
            }
        }
        let services = services
            .into_iter()
            .filter_map(|s| {
                let slices = by_service.get(&ServiceKey::of(s)).map(Vec::as_slice).unwrap_or_default();
                read::service(s, slices)
            })
            .map(|v| (v.key.clone(), v))
            .collect();
        let pools: Vec<&IPPool> = pools.into_iter().collect();
        let name = |p: &IPPool| p.metadata.name.clone().unwrap_or_default();
        View {
            services,
            nodes: nodes.into_iter().map(read::node).map(|n| (n.name.clone(), n)).collect(),
            pools: pools.iter().map(|p| (name(p), read::pool(p))).collect(),
            bgp_pools: pools.iter().filter_map(|p| Some((name(p), read::pool_bgp(p)?))).collect(),
        }
    }

    /// The Services of every address, in key order (several when the address is shared).
    pub fn by_address(&self) -> BTreeMap<IpAddr, Vec<&ServiceView>> {
        let mut out: BTreeMap<IpAddr, Vec<&ServiceView>> = BTreeMap::new();
        for s in self.services.values() {
            for ip in &s.ips {
                out.entry(*ip).or_default().push(s);
            }
        }
        out
    }
}
