//! Telling users who announces: the `ferrolb.io/Announced` condition on every Service of an
//! address this node announces, and the Events the announcers ask for. Everything is read from the
//! local cache (the Service's uid for the Event, its conditions and resourceVersion for the
//! patch), so reporting costs no reads of the API server.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ferrolb_crds::ServiceKey;
use ferrolb_crds::annotations::ANNOUNCED_CONDITION;
use ferrolb_process::events::Recorder;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource};
use tokio::task::JoinSet;

use crate::announce::Notice;
use crate::state::View;

/// A Service's condition is rewritten at most this often (a write in flight, or lost to a
/// conflict, is tried again after it).
pub const REWRITE_EVERY: Duration = Duration::from_secs(1);

/// Whether the condition must be written: it does not say `True` with `message` (a late write of
/// a previous owner, say), and the last attempt is at least [`REWRITE_EVERY`] old.
pub fn condition_due(
    current: Option<(&str, &str)>,
    message: &str,
    last_attempt: Option<Instant>,
    now: Instant,
) -> bool {
    current != Some(("True", message)) && last_attempt.is_none_or(|t| now.saturating_duration_since(t) >= REWRITE_EVERY)
}

/// The condition's message for an address announced from `node`, `at` where (e.g. "on eth0").
pub fn announced_message(ip: &IpAddr, node: &str, at: &str) -> String {
    format!("{ip} announced by node {node} {at}")
}

/// Writes conditions and Events for this node.
pub struct Reporter {
    client: Client,
    recorder: Recorder,
    node: String,
    services: Store<Service>,
    by_ip: BTreeMap<IpAddr, Vec<ServiceKey>>,
    attempts: BTreeMap<ServiceKey, Instant>,
    writes: JoinSet<()>,
}

impl Reporter {
    /// A reporter for `node`, reading Services from `services`.
    pub fn new(client: Client, node: &str, services: Store<Service>) -> Self {
        Self {
            recorder: Recorder::new(client.clone(), "ferrolb-speaker", node),
            client,
            node: node.to_string(),
            services,
            by_ip: BTreeMap::new(),
            attempts: BTreeMap::new(),
            writes: JoinSet::new(),
        }
    }

    /// Takes the Services of every address from a new view.
    pub fn set_view(&mut self, view: &View) {
        self.by_ip =
            view.by_address().into_iter().map(|(ip, s)| (ip, s.iter().map(|s| s.key.clone()).collect())).collect();
        self.attempts.retain(|k, _| view.services.contains_key(k));
    }

    fn cached(&self, key: &ServiceKey) -> Option<std::sync::Arc<Service>> {
        self.services.get(&ObjectRef::new(key.name()).within(key.namespace()))
    }

    /// Writes `notices` as Events on the Services of their addresses.
    pub fn publish(&mut self, notices: Vec<Notice>) {
        for n in notices {
            for key in self.by_ip.get(&n.ip).cloned().unwrap_or_default() {
                let Some(svc) = self.cached(&key) else { continue };
                let (recorder, reference, message) = (self.recorder.clone(), svc.object_ref(&()), n.message.clone());
                let (warning, reason) = (n.warning, n.reason);
                self.writes.spawn(async move {
                    if let Err(e) = recorder.publish(&reference, warning, reason, "Announce", &message).await {
                        tracing::warn!(service = %key, error = %e, "could not record an Event");
                    }
                });
            }
        }
        while self.writes.try_join_next().is_some() {}
    }

    /// Rewrites the condition of every Service of an address in `announced` that does not name
    /// this node as it should.
    pub fn ensure_conditions(&mut self, announced: &BTreeMap<IpAddr, String>, now: Instant) {
        for (ip, at) in announced {
            let message = announced_message(ip, &self.node, at);
            for key in self.by_ip.get(ip).into_iter().flatten() {
                let Some(svc) = self.cached(key) else { continue };
                let current = svc
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .and_then(|c| c.iter().find(|c| c.type_ == ANNOUNCED_CONDITION))
                    .map(|c| (c.status.as_str(), c.message.as_str()));
                if !condition_due(current, &message, self.attempts.get(key).copied(), now) {
                    continue;
                }
                self.attempts.insert(key.clone(), now);
                let (client, key, message) = (self.client.clone(), key.clone(), message.clone());
                self.writes.spawn(async move {
                    if let Err(e) = set_announced(&client, &svc, &message).await {
                        tracing::warn!(service = %key, error = %e, "could not set the Announced condition");
                    }
                });
            }
        }
        while self.writes.try_join_next().is_some() {}
    }
}

/// Sets `ferrolb.io/Announced` on the cached Service `svc`, keeping its other conditions; the
/// resourceVersion guards against overwriting conditions the cache has not seen yet.
async fn set_announced(client: &Client, svc: &Service, message: &str) -> Result<(), kube::Error> {
    let (Some(ns), Some(name)) = (svc.metadata.namespace.as_deref(), svc.metadata.name.as_deref()) else {
        return Ok(());
    };
    let mut conditions: Vec<Condition> = svc.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
    let previous = conditions.iter().find(|c| c.type_ == ANNOUNCED_CONDITION).cloned();
    conditions.retain(|c| c.type_ != ANNOUNCED_CONDITION);
    let since =
        previous.filter(|c| c.status == "True").map(|c| c.last_transition_time).unwrap_or(Time(jiff::Timestamp::now()));
    conditions.push(Condition {
        type_: ANNOUNCED_CONDITION.into(),
        status: "True".into(),
        reason: "Announced".into(),
        message: message.into(),
        last_transition_time: since,
        observed_generation: svc.metadata.generation,
    });
    let patch = serde_json::json!({"metadata": {"resourceVersion": svc.metadata.resource_version}, "status": {"conditions": conditions}});
    let api: Api<Service> = Api::namespaced(client.clone(), ns);
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(patch)).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_condition_is_rewritten_when_wrong_at_most_once_a_second() {
        let now = Instant::now();
        let msg = "198.51.100.7 announced by node n1 on eth0";
        assert!(!condition_due(Some(("True", msg)), msg, None, now), "already right");
        assert!(condition_due(None, msg, None, now), "missing");
        let stale = "198.51.100.7 announced by node n2 on eth0";
        assert!(condition_due(Some(("True", stale)), msg, None, now), "names another node");
        assert!(condition_due(Some(("False", msg)), msg, None, now));
        assert!(!condition_due(Some(("True", stale)), msg, Some(now), now + REWRITE_EVERY / 2), "tried just now");
        assert!(condition_due(Some(("True", stale)), msg, Some(now), now + REWRITE_EVERY));
    }

    #[test]
    fn the_message_names_node_and_place() {
        assert_eq!(
            announced_message(&"198.51.100.7".parse().unwrap(), "node-1", "on eth0, eth1"),
            "198.51.100.7 announced by node node-1 on eth0, eth1"
        );
    }
}
