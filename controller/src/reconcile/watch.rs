//! The watches feeding the loop: one reflector (store) per kind, and a trigger for every change.
//!
//! The loop derives its state from the stores, never from the events alone: after a re-list (a
//! watch resumed from a version the API server no longer has answers 410, as after every restart
//! of kube-apiserver) an object deleted in the gap is simply absent from the new list and no
//! delete event is ever sent. So the end of every (re-)list is a trigger of its own, on which the
//! loop compares what it holds with the store.

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, NodeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use ferrolb_crds::ServiceKey;

/// A kind the loop watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Services.
    Service,
    /// IPPools.
    Pool,
    /// Namespaces (their labels select pools).
    Namespace,
    /// Nodes (their addresses are never handed out).
    Node,
}

/// Something changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// A Service was added, changed or deleted.
    Service(ServiceKey),
    /// An IPPool was added, changed or deleted.
    Pool(String),
    /// A Namespace was added, changed or deleted.
    Namespace(String),
    /// A Node was added, changed or deleted.
    Node(String),
    /// A (re-)list of the kind replaced its store: compare everything with it.
    Listed(Kind),
}

fn trigger_of<K: Resource>(kind: Kind, o: &K) -> Trigger {
    let name = o.meta().name.clone().unwrap_or_default();
    match kind {
        Kind::Service => Trigger::Service(ServiceKey::new(o.meta().namespace.as_deref().unwrap_or_default(), &name)),
        Kind::Pool => Trigger::Pool(name),
        Kind::Namespace => Trigger::Namespace(name),
        Kind::Node => Trigger::Node(name),
    }
}

/// Starts a reflector for `api` in `tasks` and returns its store; every change becomes a trigger.
/// `slim` drops what the loop never reads before it is stored.
pub fn spawn<K>(
    tasks: &mut JoinSet<()>,
    api: Api<K>,
    kind: Kind,
    tx: mpsc::UnboundedSender<Trigger>,
    slim: fn(&mut K),
) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    // What we never read is not kept: managed fields and kubectl's copy of the whole object.
    let slim = watcher(api, watcher::Config::default()).default_backoff().modify(move |o: &mut K| {
        slim(o);
        let meta = o.meta_mut();
        meta.managed_fields = None;
        if let Some(a) = meta.annotations.as_mut() {
            a.remove("kubectl.kubernetes.io/last-applied-configuration");
        }
    });
    let stream = reflector::reflector(writer, slim);
    tasks.spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            let trigger = match ev {
                Ok(watcher::Event::Apply(o) | watcher::Event::Delete(o)) => trigger_of(kind, &o),
                // The store is replaced only when the list is complete: judge it then.
                Ok(watcher::Event::InitDone) => Trigger::Listed(kind),
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, ?kind, "watch failed; retrying");
                    continue;
                }
            };
            if tx.send(trigger).is_err() {
                return;
            }
        }
    });
    reader
}

/// Keeps everything.
pub fn whole<K>(_: &mut K) {}

/// Keeps a Node's name and addresses only (its image list alone can be tens of kilobytes).
pub fn node_addresses(node: &mut Node) {
    let addresses = node.status.take().and_then(|s| s.addresses);
    *node = Node {
        metadata: ObjectMeta { name: node.metadata.name.take(), ..ObjectMeta::default() },
        status: Some(NodeStatus { addresses, ..NodeStatus::default() }),
        ..Node::default()
    };
}
