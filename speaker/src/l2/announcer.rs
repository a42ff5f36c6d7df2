//! The L2 announcing protocol (shaped like MetalLB's `layer2/announcer.go`): from the election's
//! answer, the addresses this node owns and those it stands in for (a restarting owner's, answered
//! with the owner's MAC); a responder per suitable interface answering ARP/NDP for them; a
//! gratuitous announcement on every takeover, repeated; and other hosts' claims judged as
//! conflicts (or, while leaving, as the hand-over completing).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc};

use super::Mac;
use super::conflict::{Conflicts, Verdict};
use super::gratuitous::Repeats;
use super::interfaces::{self, Choice, Interface};
use super::responder::{Responder, Seen};
use crate::announce::{Announcer, Notice};
use crate::conntrack::Replicator;
use crate::conntrack::table::Replicated;
use crate::election;
use crate::membership::liveness::Members;
use crate::metrics::{self, AddressLabel, Metrics};
use crate::report;
use crate::state::View;

/// How many reports from the wire wait for the loop at most; more are dropped.
const SEEN_BACKLOG: usize = 1024;

/// How often the interfaces are looked at again (they come and go with pods and cables).
const RESCAN_EVERY: Duration = Duration::from_secs(2);

/// Interfaces answered on at most (a responder is a raw socket and a thread each): a pool that
/// names `*` on a node with hundreds of pod veths must not cost hundreds of threads.
pub const MAX_RESPONDERS: usize = 64;

/// The L2 announcer of one node.
pub struct L2Announcer {
    node: String,
    metrics: Metrics,
    wake: Arc<Notify>,
    seen_tx: mpsc::Sender<Seen>,
    seen_rx: mpsc::Receiver<Seen>,
    responders: BTreeMap<String, Responder>,
    /// Interfaces left without a responder because [`MAX_RESPONDERS`] were open (said once each).
    beyond_limit: BTreeSet<String>,
    interfaces: Vec<Interface>,
    choice: Choice,
    scanned: Option<Instant>,
    /// The addresses this node announces, with the interface patterns of their pools.
    mine: BTreeMap<IpAddr, Vec<String>>,
    /// The addresses this node answers for on behalf of a restarting owner: its MAC, the patterns.
    standing_in: BTreeMap<IpAddr, (Mac, Vec<String>)>,
    /// Each owned address with the MAC of the first interface answering for it.
    claims: BTreeMap<IpAddr, Mac>,
    /// When this node took each of its addresses over.
    owned_since: BTreeMap<IpAddr, Instant>,
    /// Where each announced address is answered ("on eth0, eth1").
    announced: BTreeMap<IpAddr, String>,
    repeats: Repeats,
    conflicts: Conflicts,
    notices: Vec<Notice>,
    /// While leaving: addresses another node has announced since.
    taken_over: Option<BTreeSet<IpAddr>>,
    /// Connection replication, when on.
    replicator: Option<Replicator>,
    /// The replicated addresses the replication last knew this node to own.
    replicated_owned: BTreeSet<IpAddr>,
}

impl L2Announcer {
    /// An announcer for `node` on the interfaces `choice` allows; `wake` is notified when the
    /// wire has news (a claim seen).
    pub fn new(node: &str, choice: Choice, metrics: Metrics, wake: Arc<Notify>) -> Self {
        // Bounded: what the wire reports is repetitive, and a flood must not grow memory.
        let (seen_tx, seen_rx) = mpsc::channel(SEEN_BACKLOG);
        Self {
            node: node.to_string(),
            metrics,
            wake,
            seen_tx,
            seen_rx,
            responders: BTreeMap::new(),
            beyond_limit: BTreeSet::new(),
            interfaces: Vec::new(),
            choice,
            scanned: None,
            mine: BTreeMap::new(),
            standing_in: BTreeMap::new(),
            claims: BTreeMap::new(),
            owned_since: BTreeMap::new(),
            announced: BTreeMap::new(),
            repeats: Repeats::default(),
            conflicts: Conflicts::default(),
            notices: Vec::new(),
            taken_over: None,
            replicator: None,
            replicated_owned: BTreeSet::new(),
        }
    }

    /// Replicates connections with `replicator`: replicated flows are committed before this node
    /// answers for an address it takes over. `resumed`: the addresses a previous run on this node
    /// announced (a restart in place) — still this node's own flows, not a takeover.
    pub fn with_replicator(mut self, replicator: Replicator, resumed: BTreeSet<IpAddr>) -> Self {
        self.replicator = Some(replicator);
        self.replicated_owned = resumed;
        self
    }

    /// Tells the replication what is replicated and what this node owns now; commits the others'
    /// flows first when it takes replicated addresses over.
    fn replicate(&mut self, view: &View, mine: &BTreeMap<IpAddr, Vec<String>>) {
        let Some(rep) = &mut self.replicator else { return };
        let ports = view
            .services
            .values()
            .filter(|s| s.replicate)
            .flat_map(|s| s.ips.iter().flat_map(move |ip| s.ports.iter().map(move |p| (*ip, p.protocol, p.port))))
            .collect();
        let mut r = Replicated { ports, owned: BTreeSet::new() };
        let replicated = r.addresses();
        r.owned = mine.keys().filter(|ip| replicated.contains(ip)).copied().collect();
        let taken: BTreeSet<IpAddr> = r.owned.difference(&self.replicated_owned).copied().collect();
        let done =
            if taken.is_empty() { rep.set(&r) } else { tokio::task::block_in_place(|| rep.take_over(&taken, &r)) };
        self.replicated_owned = r.owned.clone();
        if let Err(e) = done {
            tracing::warn!(error = %e, "connection replication");
        }
    }

    fn seen(&mut self, seen: Seen, now: Instant) {
        let Seen::Conflict { ip, mac, interface } = seen;
        if let Some(taken) = &mut self.taken_over {
            // Leaving: another node announcing our address is the hand-over we wait for.
            taken.insert(ip);
            return;
        }
        let verdict = self.conflicts.judge(ip, self.owned_since.get(&ip).copied(), now);
        if verdict == Verdict::Ignore {
            return;
        }
        self.metrics.conflicts.inc();
        let text = mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
        tracing::warn!(%ip, mac = %text, %interface, "another host answers for an address this node announces");
        if verdict == Verdict::Report {
            let message = format!(
                "another host ({text}) answers ARP/NDP for {ip} on {interface}, which node {} announces: two hosts claim the address",
                self.node
            );
            self.notices.push(Notice { ip, warning: true, reason: "AddressConflict", message });
        }
    }

    /// Opens and closes responders for the interfaces, sets what each answers for, announces
    /// new addresses, and refreshes the per-address counters.
    fn drive(&mut self, now: Instant) {
        if self.scanned.is_none_or(|t| now.saturating_duration_since(t) > RESCAN_EVERY) {
            self.interfaces = interfaces::suitable();
            self.scanned = Some(now);
        }
        let names: BTreeSet<&str> = self.interfaces.iter().map(|i| i.name.as_str()).collect();
        self.responders.retain(|n, _| names.contains(n.as_str()));
        if self.responders.len() < MAX_RESPONDERS {
            self.beyond_limit.clear();
        }
        let mut per_address: BTreeMap<IpAddr, (u64, u64)> = BTreeMap::new();
        let mut gratuitous = 0;
        let mut on: BTreeMap<IpAddr, Vec<String>> = BTreeMap::new();
        let mut fresh: BTreeMap<IpAddr, Vec<String>> = BTreeMap::new();
        let mut claims: BTreeMap<IpAddr, Mac> = self.mine.keys().map(|ip| (*ip, [0; 6])).collect();
        for iface in &self.interfaces {
            let answers_on = |patterns: &Vec<String>| self.choice.answers_on(patterns, &iface.name);
            let mut owned: BTreeMap<IpAddr, Mac> =
                self.standing_in.iter().filter(|(_, (_, p))| answers_on(p)).map(|(ip, (mac, _))| (*ip, *mac)).collect();
            owned.extend(self.mine.iter().filter(|(_, p)| answers_on(p)).map(|(ip, _)| (*ip, iface.mac)));
            if !self.responders.contains_key(&iface.name) {
                if owned.is_empty() {
                    continue;
                }
                if self.responders.len() >= MAX_RESPONDERS {
                    if self.beyond_limit.insert(iface.name.clone()) {
                        tracing::error!(interface = %iface.name, limit = MAX_RESPONDERS,
                            "not answering on this interface: as many interfaces as allowed are answered on already; narrow the pool's l2.interfaces or --exclude-interfaces");
                    }
                    continue;
                }
                match Responder::start(iface.clone(), self.seen_tx.clone(), self.wake.clone()) {
                    Ok(r) => {
                        self.responders.insert(iface.name.clone(), r);
                    }
                    Err(e) => {
                        tracing::warn!(interface = %iface.name, error = %e, "cannot open the interface");
                        continue;
                    }
                }
            }
            let Some(r) = self.responders.get_mut(&iface.name) else { continue };
            for ip in owned.iter().filter(|(_, m)| **m == iface.mac).map(|(ip, _)| ip) {
                on.entry(*ip).or_default().push(iface.name.clone());
                claims.entry(*ip).and_modify(|m| {
                    if *m == [0; 6] {
                        *m = iface.mac;
                    }
                });
            }
            for ip in r.set_answered(&owned) {
                r.announce(ip);
                fresh.entry(ip).or_default().push(iface.name.clone());
                self.repeats.schedule(&iface.name, ip, now);
            }
            let c = &r.counters;
            for (ip, (req, rep)) in c.per_address.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                let e = per_address.entry(*ip).or_default();
                e.0 += req;
                e.1 += rep;
            }
            gratuitous += c.gratuitous.load(std::sync::atomic::Ordering::Relaxed);
        }
        for (ip, (req, rep)) in per_address {
            let label = AddressLabel { address: ip.to_string() };
            metrics::raise_to(&self.metrics.requests.get_or_create(&label), req);
            metrics::raise_to(&self.metrics.replies.get_or_create(&label), rep);
        }
        metrics::raise_to(&self.metrics.gratuitous, gratuitous);
        let place = |ifaces: Vec<String>| format!("on {}", ifaces.join(", "));
        for (ip, ifaces) in fresh {
            let message = report::announced_message(&ip, &self.node, &place(ifaces));
            self.notices.push(Notice { ip, warning: false, reason: "Announced", message });
        }
        self.announced = on.into_iter().map(|(ip, ifaces)| (ip, place(ifaces))).collect();
        self.claims = claims;
    }
}

impl Announcer for L2Announcer {
    fn update(&mut self, view: &View, members: &Members, now: Instant) {
        let all = election::announcements(view, members);
        let me = Some(self.node.as_str());
        let mine: BTreeMap<IpAddr, Vec<String>> =
            all.iter().filter(|(_, a)| a.winner.as_deref() == me).map(|(ip, a)| (*ip, a.interfaces.clone())).collect();
        let standing_in: BTreeMap<IpAddr, (Mac, Vec<String>)> = all
            .into_iter()
            .filter_map(|(ip, a)| match a.stand_in {
                Some((node, mac)) if node == self.node && mac != [0; 6] => Some((ip, (mac, a.interfaces))),
                _ => None,
            })
            .collect();
        if standing_in.keys().ne(self.standing_in.keys()) && !standing_in.is_empty() {
            tracing::info!(addresses = ?standing_in.keys().collect::<Vec<_>>(), "answering for a restarting node");
        }
        self.standing_in = standing_in;
        self.replicate(view, &mine);
        if mine.keys().ne(self.mine.keys()) {
            self.metrics.election_changes.inc();
            tracing::info!(addresses = ?mine.keys().collect::<Vec<_>>(), "announcing");
        }
        self.owned_since.retain(|ip, _| mine.contains_key(ip));
        for ip in mine.keys() {
            self.owned_since.entry(*ip).or_insert(now);
        }
        self.mine = mine;
        self.metrics.announced.set(self.mine.len() as i64);
        self.drive(now);
    }

    fn tick(&mut self, now: Instant) {
        while let Ok(seen) = self.seen_rx.try_recv() {
            self.seen(seen, now);
        }
        for (iface, ip) in self.repeats.due(now) {
            if self.mine.contains_key(&ip)
                && let Some(r) = self.responders.get(&iface)
            {
                r.announce(ip);
            }
        }
    }

    fn announced(&self) -> &BTreeMap<IpAddr, String> {
        &self.announced
    }

    fn claims(&self) -> BTreeMap<IpAddr, Mac> {
        self.claims.clone()
    }

    fn survives_restart(&self) -> bool {
        true
    }

    fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.notices)
    }

    fn not_yet_taken_over(&mut self) -> BTreeSet<IpAddr> {
        if self.taken_over.is_none()
            && let Some(rep) = &mut self.replicator
        {
            // Leaving for good: this node tracks nothing of anyone's any more.
            rep.remove();
        }
        let taken = self.taken_over.get_or_insert_with(BTreeSet::new);
        while let Ok(Seen::Conflict { ip, .. }) = self.seen_rx.try_recv() {
            taken.insert(ip);
        }
        self.mine.keys().filter(|ip| !taken.contains(ip)).copied().collect()
    }
}
