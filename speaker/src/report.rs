//! Telling users who announces: the `ferrolb.io/Announced` condition on every Service of an
//! address this node announces, and the Events the announcers ask for. Everything is read from the
//! local cache (the Service's uid for the Event, its conditions and resourceVersion for the
//! patch), so reporting costs no reads of the API server.

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ferrolb_crds::ServiceKey;
use ferrolb_crds::annotations::ANNOUNCED_CONDITION;
use ferrolb_process::events::Recorder;
use k8s_openapi::api::core::v1::{Node, Service};
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

/// API writes in flight at once. A node taking thousands of Services over must not open
/// thousands of connections at once: each is a file descriptor, and a responder's raw socket must
/// stay below FD_SETSIZE (pnet waits on it with select). What does not fit waits for the next tick.
pub const MAX_WRITES: usize = 16;

/// Events waiting for a write slot; beyond this the oldest are dropped (with a log line).
pub const MAX_PENDING_EVENTS: usize = 1024;

/// The last write of a Service's condition: when, and against which resourceVersion of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// When it was made.
    pub at: Instant,
    /// The resourceVersion the cached copy had then.
    pub version: String,
}

/// Whether the condition must be written: it does not say `True` with `message` (a late write of
/// a previous owner, say), the last attempt is at least [`REWRITE_EVERY`] old, and the cache has
/// seen a `version` of the Service since — a busy API server's watch may lag behind our own write,
/// and writing against the version we already wrote against would only conflict or repeat it.
pub fn condition_due(
    current: Option<(&str, &str)>,
    message: &str,
    version: &str,
    last: Option<&Attempt>,
    now: Instant,
) -> bool {
    current != Some(("True", message))
        && last.is_none_or(|a| now.saturating_duration_since(a.at) >= REWRITE_EVERY && a.version != version)
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
    attempts: BTreeMap<ServiceKey, Attempt>,
    writes: JoinSet<()>,
    /// Events waiting for a write slot.
    pending: VecDeque<(ServiceKey, Notice)>,
    /// Source-range entries that do not parse, per Service of the view.
    refused_ranges: BTreeMap<ServiceKey, Vec<String>>,
    /// What was last reported of them, per Service.
    reported_ranges: BTreeMap<ServiceKey, Vec<String>>,
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
            pending: VecDeque::new(),
            refused_ranges: BTreeMap::new(),
            reported_ranges: BTreeMap::new(),
        }
    }

    /// Takes the Services of every address from a new view.
    pub fn set_view(&mut self, view: &View) {
        self.by_ip =
            view.by_address().into_iter().map(|(ip, s)| (ip, s.iter().map(|s| s.key.clone()).collect())).collect();
        self.attempts.retain(|k, _| view.services.contains_key(k));
        self.refused_ranges = view
            .services
            .iter()
            .filter(|(_, s)| !s.source_ranges.refused.is_empty())
            .map(|(k, s)| (k.clone(), s.source_ranges.refused.clone()))
            .collect();
        self.reported_ranges.retain(|k, _| view.services.contains_key(k));
    }

    fn cached(&self, key: &ServiceKey) -> Option<std::sync::Arc<Service>> {
        self.services.get(&ObjectRef::new(key.name()).within(key.namespace()))
    }

    /// Writes `notices` as Events on the Services of their addresses, at most [`MAX_WRITES`] at
    /// a time.
    pub fn publish(&mut self, notices: Vec<Notice>) {
        for n in notices {
            for key in self.by_ip.get(&n.ip).cloned().unwrap_or_default() {
                self.pending.push_back((key, n.clone()));
            }
        }
        self.write_events();
    }

    fn write_events(&mut self) {
        if self.pending.len() > MAX_PENDING_EVENTS {
            let dropped = self.pending.len() - MAX_PENDING_EVENTS;
            self.pending.drain(..dropped);
            tracing::warn!(dropped, "too many Events waiting to be written; dropped the oldest");
        }
        while self.writes.try_join_next().is_some() {}
        while self.writes.len() < MAX_WRITES {
            let Some((key, n)) = self.pending.pop_front() else { break };
            let Some(svc) = self.cached(&key) else { continue };
            let (recorder, reference) = (self.recorder.clone(), svc.object_ref(&()));
            self.writes.spawn(async move {
                if let Err(e) = recorder.publish(&reference, n.warning, n.reason, "Announce", &n.message).await {
                    tracing::warn!(service = %key, error = %e, "could not record an Event");
                }
            });
        }
    }

    /// Reports on this node that every heartbeat of the registered speaker `peer` fails
    /// authentication: a Warning Event `HeartbeatKeyMismatch` on the Node (`kubectl describe node`).
    pub fn key_mismatch(&mut self, peer: &str) {
        let (client, recorder, node) = (self.client.clone(), self.recorder.clone(), self.node.clone());
        let message = key_mismatch_message(peer);
        self.writes.spawn(async move {
            let Ok(object) = Api::<Node>::all(client).get(&node).await else { return };
            if let Err(e) =
                recorder.publish(&object.object_ref(&()), true, "HeartbeatKeyMismatch", "Heartbeat", &message).await
            {
                tracing::warn!(error = %e, "could not record an Event");
            }
        });
    }

    /// Rewrites the condition of every Service of an address in `announced` that does not name
    /// this node as it should.
    pub fn ensure_conditions(&mut self, announced: &BTreeMap<IpAddr, String>, now: Instant) {
        while self.writes.try_join_next().is_some() {}
        self.report_refused_ranges(announced);
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
                let version = svc.metadata.resource_version.clone().unwrap_or_default();
                if !condition_due(current, &message, &version, self.attempts.get(key), now) {
                    continue;
                }
                if self.writes.len() >= MAX_WRITES {
                    return;
                }
                self.attempts.insert(key.clone(), Attempt { at: now, version });
                let (client, key, message) = (self.client.clone(), key.clone(), message.clone());
                self.writes.spawn(async move {
                    if let Err(e) = set_announced(&client, &svc, &message).await {
                        tracing::warn!(service = %key, error = %e, "could not set the Announced condition");
                    }
                });
            }
        }
    }

    /// A Warning, from the node that announces the Service, when its source ranges have entries
    /// that do not parse (their clients are refused); once per list of such entries.
    fn report_refused_ranges(&mut self, announced: &BTreeMap<IpAddr, String>) {
        let mut due = Vec::new();
        for key in announced.keys().flat_map(|ip| self.by_ip.get(ip).into_iter().flatten()) {
            if let Some(refused) = self.refused_ranges.get(key)
                && self.reported_ranges.get(key) != Some(refused)
            {
                self.reported_ranges.insert(key.clone(), refused.clone());
                due.push((key.clone(), refused_ranges_notice(refused)));
            }
        }
        if !due.is_empty() {
            self.pending.extend(due);
            self.write_events();
        }
    }
}

/// The Warning for source-range entries that do not parse.
pub fn refused_ranges_notice(refused: &[String]) -> Notice {
    let list = refused.iter().map(|e| format!("{e:?}")).collect::<Vec<_>>().join(", ");
    Notice {
        ip: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        warning: true,
        reason: "InvalidSourceRanges",
        message: format!(
            "loadBalancerSourceRanges entries that are not CIDRs: {list}; nobody is admitted through them (the others still are)"
        ),
    }
}

/// What a node says when a registered peer's heartbeats all fail authentication.
pub fn key_mismatch_message(peer: &str) -> String {
    format!(
        "every heartbeat of the registered speaker of node {peer} fails authentication: the heartbeat keys differ (the Secret of speaker.peerSecret); addresses are placed by rank alone until they match"
    )
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
    fn the_condition_is_rewritten_when_wrong_at_most_once_a_second_and_once_a_version() {
        let now = Instant::now();
        let msg = "198.51.100.7 announced by node n1 on eth0";
        assert!(!condition_due(Some(("True", msg)), msg, "7", None, now), "already right");
        assert!(condition_due(None, msg, "7", None, now), "missing");
        let stale = "198.51.100.7 announced by node n2 on eth0";
        assert!(condition_due(Some(("True", stale)), msg, "7", None, now), "names another node");
        assert!(condition_due(Some(("False", msg)), msg, "7", None, now));
        let tried = Attempt { at: now, version: "7".into() };
        assert!(
            !condition_due(Some(("True", stale)), msg, "8", Some(&tried), now + REWRITE_EVERY / 2),
            "tried just now"
        );
        assert!(condition_due(Some(("True", stale)), msg, "8", Some(&tried), now + REWRITE_EVERY));
        assert!(
            !condition_due(Some(("True", stale)), msg, "7", Some(&tried), now + REWRITE_EVERY * 10),
            "the cache still shows the version we wrote against: our write is not seen yet"
        );
    }

    #[test]
    fn the_message_names_node_and_place() {
        assert_eq!(
            announced_message(&"198.51.100.7".parse().unwrap(), "node-1", "on eth0, eth1"),
            "198.51.100.7 announced by node node-1 on eth0, eth1"
        );
    }

    /// A client of an API server that accepts connections and never answers (keep the listener):
    /// every write stays in flight.
    fn unanswering_client() -> (Client, std::net::TcpListener) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap()).parse().unwrap();
        (Client::try_from(kube::Config::new(url)).unwrap(), listener)
    }

    /// A cached Service `d/<name>` and its view on `ip`.
    fn cached<'v>(
        writer: &mut kube::runtime::reflector::store::Writer<Service>,
        view: &'v mut View,
        name: &str,
        ip: &str,
    ) -> &'v mut crate::state::ServiceView {
        let svc: Service = serde_json::from_value(
            serde_json::json!({"metadata": {"name": name, "namespace": "d", "resourceVersion": "1"}}),
        )
        .unwrap();
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(svc));
        let (key, v) = crate::state::ServiceView::example(&format!("d/{name}"), &[ip], "p", false, &[]);
        view.services.entry(key).or_insert(v)
    }

    #[tokio::test]
    async fn no_more_than_max_writes_in_flight_whatever_is_due() {
        let (client, _listener) = unanswering_client();
        let (store, mut writer) = kube::runtime::reflector::store::<Service>();
        let mut view = View::default();
        let mut announced = BTreeMap::new();
        for i in 0..100u8 {
            let ip: IpAddr = std::net::Ipv4Addr::new(198, 51, 100, i).into();
            cached(&mut writer, &mut view, &format!("s{i}"), &ip.to_string());
            announced.insert(ip, "on eth0".to_string());
        }
        let mut r = Reporter::new(client, "n1", store);
        r.set_view(&view);
        r.ensure_conditions(&announced, Instant::now());
        assert_eq!(r.writes.len(), MAX_WRITES);
        r.publish(
            announced
                .keys()
                .map(|ip| Notice { ip: *ip, warning: false, reason: "Announced", message: "m".into() })
                .collect(),
        );
        assert_eq!(r.writes.len(), MAX_WRITES, "Events wait for a slot too");
        assert_eq!(r.pending.len(), 100);
    }

    #[tokio::test]
    async fn refused_source_ranges_are_reported_once_by_the_announcing_node() {
        let (client, _listener) = unanswering_client();
        let (store, mut writer) = kube::runtime::reflector::store::<Service>();
        let mut view = View::default();
        for (name, ip) in [("bad", "198.51.100.1"), ("elsewhere", "198.51.100.2")] {
            cached(&mut writer, &mut view, name, ip).source_ranges.refused = vec!["office".into()];
        }
        let mut r = Reporter::new(client, "n1", store);
        r.set_view(&view);
        let announced = BTreeMap::from([("198.51.100.1".parse().unwrap(), "on eth0".to_string())]);
        r.ensure_conditions(&announced, Instant::now());
        assert_eq!(r.reported_ranges.keys().map(ServiceKey::as_str).collect::<Vec<_>>(), ["d/bad"]);
        assert_eq!(r.writes.len(), 2, "the Warning and the condition");
        r.ensure_conditions(&announced, Instant::now());
        assert_eq!(r.writes.len(), 2, "reported once");
        let notice = refused_ranges_notice(&["office".into()]);
        assert!(notice.warning && notice.message.contains("\"office\"; nobody is admitted"), "{}", notice.message);
    }
}
