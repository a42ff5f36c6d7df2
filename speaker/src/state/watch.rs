//! The speaker's watches: one reflector (cache) per kind, and a notification whenever any cache
//! changes, a re-list included. The view is rebuilt from the caches on such a notification, so an
//! object deleted while the speaker could not watch (absent from the re-list after a 410, with no
//! delete event) leaves the view as surely as one whose delete event arrived.

use std::sync::Arc;

use ferrolb_crds::{BGPPeer, IPPool};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use super::View;

/// The watch caches of everything the speaker reads.
#[derive(Clone)]
pub struct Caches {
    /// Services.
    pub services: Store<Service>,
    /// EndpointSlices.
    pub slices: Store<EndpointSlice>,
    /// Nodes.
    pub nodes: Store<Node>,
    /// IPPools.
    pub pools: Store<IPPool>,
    /// The speakers' Leases in the speakers' namespace.
    pub leases: Store<Lease>,
    /// BGPPeers and peer-password Secrets, when the speaker configures BIRD.
    pub bgp: Option<BgpCaches>,
    /// Notified on every change of a cache that the view is made of (not the Leases, which are
    /// read on every heartbeat tick).
    pub changed: Arc<Notify>,
}

/// The caches BIRD's configuration is made from.
#[derive(Clone)]
pub struct BgpCaches {
    /// BGPPeers.
    pub peers: Store<BGPPeer>,
    /// Secrets of the speakers' namespace (the peers' passwords).
    pub secrets: Store<Secret>,
}

fn spawn<K>(tasks: &mut JoinSet<()>, api: Api<K>, changed: Option<Arc<Notify>>) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()).default_backoff());
    tasks.spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                // The store changes at InitDone, not before: a re-list is judged once complete.
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => continue,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "watch failed; retrying");
                    continue;
                }
            }
            if let Some(c) = &changed {
                c.notify_one();
            }
        }
    });
    reader
}

impl Caches {
    /// Starts every watch in `tasks` (the Leases of `namespace`; BGPPeers and that namespace's
    /// Secrets too when `bgp_peers`).
    pub fn start(tasks: &mut JoinSet<()>, client: &Client, namespace: &str, bgp_peers: bool) -> Caches {
        let changed = Arc::new(Notify::new());
        let on_change = || Some(changed.clone());
        Caches {
            bgp: bgp_peers.then(|| BgpCaches {
                peers: spawn(tasks, Api::all(client.clone()), on_change()),
                secrets: spawn(tasks, Api::namespaced(client.clone(), namespace), on_change()),
            }),
            services: spawn(tasks, Api::all(client.clone()), on_change()),
            slices: spawn(tasks, Api::all(client.clone()), on_change()),
            nodes: spawn(tasks, Api::all(client.clone()), on_change()),
            pools: spawn(tasks, Api::all(client.clone()), on_change()),
            leases: spawn(tasks, Api::namespaced(client.clone(), namespace), None),
            changed,
        }
    }

    /// Waits until every cache holds its first list.
    pub async fn ready(&self) -> Result<(), reflector::store::WriterDropped> {
        self.services.wait_until_ready().await?;
        self.slices.wait_until_ready().await?;
        self.nodes.wait_until_ready().await?;
        self.pools.wait_until_ready().await?;
        if let Some(b) = &self.bgp {
            b.peers.wait_until_ready().await?;
            b.secrets.wait_until_ready().await?;
        }
        self.leases.wait_until_ready().await
    }

    /// The view of what the caches hold now.
    pub fn view(&self) -> View {
        let (services, slices, nodes, pools) =
            (self.services.state(), self.slices.state(), self.nodes.state(), self.pools.state());
        View::of(
            services.iter().map(|s| &**s),
            slices.iter().map(|s| &**s),
            nodes.iter().map(|n| &**n),
            pools.iter().map(|p| &**p),
        )
    }
}
