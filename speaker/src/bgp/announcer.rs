//! BGP as an announcing protocol: from the view, the live speakers and the BGPPeers this node
//! peers with, what to advertise (`routes::plan`) and BIRD's configuration (`bird::render`), sent
//! to the driver; and who tells the Services about it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use ferrolb_crds::BGPPeer;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::Store;

use super::driver::{Desired, Handle, PeerProtocols, PeerRun};
use super::peers::{self, PeerView};
use super::{bird, routes};
use crate::announce::{Announcer, Notice};
use crate::election;
use crate::membership::liveness::Members;
use crate::state::View;

/// After the routes are gone from the table, how long the daemon is given to send the
/// withdrawals (BIRD sends them at once; this covers its scheduling).
const WITHDRAW_SETTLE: Duration = Duration::from_millis(300);

/// Who runs the sessions.
pub enum Daemon {
    /// BIRD, configured by us, with the peers and Secrets it is configured from.
    Bird {
        /// BGPPeers.
        peers: Store<BGPPeer>,
        /// Secrets of the speakers' namespace (peer passwords).
        secrets: Store<Secret>,
        /// Router id (the node's IPv4 address, or one derived from its name).
        router_id: Ipv4Addr,
        /// The kernel table.
        table: u32,
    },
    /// A daemon the user runs, reading the table.
    External,
}

/// The BGP announcer of one node.
pub struct BgpAnnouncer {
    node: String,
    daemon: Daemon,
    driver: Handle,
    announced: BTreeMap<IpAddr, String>,
    notices: Vec<Notice>,
    /// Addresses advertised from this node (for the hand-over).
    advertised: BTreeSet<IpAddr>,
    /// Set when the node leaves: when the routes were seen gone from the table.
    leaving: Option<Option<Instant>>,
    /// Whether what it advertises stays through a restart in place: with an external daemon, or
    /// when every peer of this node has graceful restart.
    survives_restart: bool,
}

impl BgpAnnouncer {
    /// An announcer for `node` that drives `driver`.
    pub fn new(node: &str, daemon: Daemon, driver: Handle) -> Self {
        Self {
            node: node.to_string(),
            daemon,
            driver,
            announced: BTreeMap::new(),
            notices: Vec::new(),
            advertised: BTreeSet::new(),
            leaving: None,
            survives_restart: true,
        }
    }

    /// The peers of this node and BIRD's configuration, or none with an external daemon.
    fn peers(&self, view: &View) -> (Option<Vec<PeerView>>, PeerProtocols) {
        let Daemon::Bird { peers, secrets, .. } = &self.daemon else { return (None, BTreeMap::new()) };
        let labels = view.nodes.get(&self.node).map(|n| n.labels.clone()).unwrap_or_default();
        let secrets_state = secrets.state();
        let by_name: BTreeMap<String, &Secret> =
            secrets_state.iter().filter_map(|s| Some((s.metadata.name.clone()?, &**s))).collect();
        let state = peers.state();
        let read = peers::for_node(state.iter().map(|p| &**p), &by_name, &labels);
        let mut usable = Vec::new();
        let mut named = BTreeMap::new();
        for (name, r) in read {
            match r {
                Ok(p) => {
                    let mut silent = format!("no answer from {}", SocketAddr::new(p.address, p.port));
                    if p.password.is_some() {
                        silent.push_str(" (a TCP MD5 password that differs from the router's looks like this)");
                    }
                    named.insert(name, Ok(PeerRun { protocol: bird::protocol_name(&p.name), silent }));
                    usable.push(p);
                }
                Err(e) => {
                    named.insert(name, Err(e.to_string()));
                }
            }
        }
        (Some(usable), named)
    }
}

/// Where an address is advertised from, for the condition: "by BGP", with the other nodes.
fn place(me: &str, advertisers: &[String]) -> String {
    let others: Vec<&str> = advertisers.iter().map(String::as_str).filter(|n| *n != me).collect();
    if others.is_empty() { "by BGP".to_string() } else { format!("by BGP (also from {})", others.join(", ")) }
}

impl Announcer for BgpAnnouncer {
    fn update(&mut self, view: &View, members: &Members, _now: Instant) {
        let alive = &members.alive;
        let (peers, named) = self.peers(view);
        // An external daemon outlives the speaker; the BIRD it runs does not, and its routers keep
        // the routes through a restart only with graceful restart.
        self.survives_restart = peers.as_ref().is_none_or(|ps| ps.iter().all(|p| p.graceful_restart));
        let plan = if self.leaving.is_some() {
            routes::Plan::default()
        } else {
            routes::plan(view, alive, &self.node, peers.as_deref())
        };
        let config = match (&self.daemon, &peers) {
            (Daemon::Bird { router_id, table, .. }, Some(peers)) => Some(bird::render(&bird::Config {
                node: &self.node,
                router_id: *router_id,
                table: *table,
                peers,
                classes: &plan.classes,
            })),
            _ => None,
        };
        self.advertised = plan.routes.keys().map(|n| n.ip()).collect();
        let desired = Desired { routes: plan.routes.clone(), config, peers: named };
        self.driver.desired.send_if_modified(|d| {
            let changed = *d != desired;
            *d = desired;
            changed
        });

        // One node tells the Services: the L2 winner where the pool also uses L2 (its message
        // then has both parts), else the first advertiser in the election's order.
        let l2 = election::announcements(view, members);
        let mut announced = BTreeMap::new();
        for (ip, advertisers) in &plan.advertisers {
            if advertisers.is_empty() || !plan.routes.keys().any(|n| n.contains(*ip)) {
                continue;
            }
            let reporter = match l2.get(ip).and_then(|a| a.winner.clone()) {
                Some(winner) => Some(winner),
                None => election::rank(advertisers.iter().map(String::as_str), ip).first().map(|n| n.to_string()),
            };
            if reporter.as_deref() == Some(self.node.as_str()) {
                announced.insert(*ip, place(&self.node, advertisers));
            }
        }
        for (ip, at) in &announced {
            if !self.announced.contains_key(ip) {
                let message = crate::report::announced_message(ip, &self.node, at);
                self.notices.push(Notice { ip: *ip, warning: false, reason: "Announced", message });
            }
        }
        self.announced = announced;
    }

    fn tick(&mut self, _now: Instant) {}

    fn survives_restart(&self) -> bool {
        self.survives_restart
    }

    fn announced(&self) -> &BTreeMap<IpAddr, String> {
        &self.announced
    }

    fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.notices)
    }

    /// Leaving withdraws every route first; the addresses count as handed over once the table
    /// is empty and the daemon has had a moment to send the withdrawals.
    fn not_yet_taken_over(&mut self) -> BTreeSet<IpAddr> {
        let pending: BTreeSet<IpAddr> = std::mem::take(&mut self.advertised);
        if self.leaving.is_none() {
            self.leaving = Some(None);
            self.driver.desired.send_modify(|d| d.routes.clear());
        }
        let empty = self.driver.observed.lock().map(|o| o.routes.is_empty()).unwrap_or(false);
        match self.leaving {
            Some(None) if empty => self.leaving = Some(Some(Instant::now())),
            Some(Some(at)) if at.elapsed() >= WITHDRAW_SETTLE => return BTreeSet::new(),
            _ => {}
        }
        self.advertised = pending.clone();
        pending
    }
}
