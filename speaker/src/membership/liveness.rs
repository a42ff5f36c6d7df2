//! Who is alive: the holders of unexpired speaker Leases, narrowed to those heard from recently
//! over UDP. The Lease says "this speaker exists"; the heartbeats give the sub-second signal.
//!
//! A peer that went silent is not always gone: when its node's kernel still answers (our
//! heartbeats to its closed port come back as ICMP "port unreachable"), only its speaker stopped —
//! a restart in place. Such a peer is *held*: it keeps its claims, for at most the restart grace,
//! so its addresses do not move while its node forwards their traffic (docs/SPEAKER.md). A speaker
//! that has just started and not yet heard its peers (settling) is held too, with the claims of its
//! previous run: it learns what is still its own before it claims anything.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::heartbeat::Heartbeat;
use crate::l2::Mac;

/// Timings of the liveness decision.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    /// How often each speaker sends a heartbeat.
    pub interval: Duration,
    /// A peer not heard from for this long is dead, unless its kernel still answers.
    pub timeout: Duration,
    /// At start, how long to wait to hear every registered peer before announcing anything
    /// (so a starting speaker never claims an address a live peer holds).
    pub grace: Duration,
    /// How long a silent peer whose kernel still answers keeps its addresses (the restart grace).
    pub hold: Duration,
}

/// How recent the kernel's last answer must be for a silent peer to be held. Kernels rate-limit
/// "port unreachable" to about one a second per host (after a burst of six), and we ask ten
/// times a second.
pub const KERNEL_WINDOW: Duration = Duration::from_millis(1_500);

impl Default for Timings {
    /// 100 ms heartbeats, dead after 500 ms of silence: failover well under a second; a speaker
    /// restarted in place keeps its addresses for 30 s.
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(500),
            grace: Duration::from_secs(2),
            hold: Duration::from_secs(30),
        }
    }
}

/// The speakers the election counts, as this node sees them now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Members {
    /// Alive: speaking, or held.
    pub alive: BTreeSet<String>,
    /// Alive but not answering: restarting in place, or just started and settling (a subset of
    /// `alive`).
    pub held: BTreeSet<String>,
    /// Just started and settling (a subset of `held`): it answers for nothing yet, but addresses
    /// that are its by rank wait for it rather than stick to another node.
    pub settling: BTreeSet<String>,
    /// What each alive node announces, with the MAC it answers with.
    pub claims: BTreeMap<String, BTreeMap<IpAddr, Mac>>,
    /// Alive by their Lease and their heartbeats' arrival, but every heartbeat fails
    /// authentication (a subset of `alive`): a key mismatch. Their claims cannot be read, so while
    /// there is one, nobody's claims count and the election is by rank alone — the one rule both
    /// sides of a mismatch compute alike, so no address gets two announcers.
    pub misconfigured: BTreeSet<String>,
}

/// What we last heard from one peer.
#[derive(Debug, Clone)]
struct Peer {
    at: Instant,
    leaving: bool,
    restarting: bool,
    settling: bool,
    claims: BTreeMap<IpAddr, Mac>,
}

/// What we know of each peer.
#[derive(Debug, Clone, Default)]
pub struct Liveness {
    /// Peers with an unexpired Lease, and when we first learned of them.
    registered: BTreeMap<String, Instant>,
    /// The last heartbeat of each peer.
    heard: BTreeMap<String, Peer>,
    /// When each peer's kernel last answered for its closed heartbeat port.
    kernel: BTreeMap<String, Instant>,
    /// Registered peers by the address their Lease gives.
    addresses: BTreeMap<IpAddr, String>,
    /// When a heartbeat from each registered peer's address last failed authentication.
    unauthenticated: BTreeMap<String, Instant>,
}

impl Liveness {
    /// Sets the peers registered through Leases (this node included); others are forgotten.
    pub fn set_registered(&mut self, peers: impl IntoIterator<Item = String>, now: Instant) {
        let peers: BTreeSet<String> = peers.into_iter().collect();
        self.registered.retain(|p, _| peers.contains(p));
        for p in peers {
            self.registered.entry(p).or_insert(now);
        }
        self.heard.retain(|p, _| self.registered.contains_key(p));
        self.kernel.retain(|p, _| self.registered.contains_key(p));
        self.unauthenticated.retain(|p, _| self.registered.contains_key(p));
    }

    /// Sets the address each registered peer's Lease gives (its heartbeats come from there).
    pub fn set_addresses(&mut self, addresses: impl IntoIterator<Item = (String, IpAddr)>) {
        self.addresses = addresses.into_iter().map(|(n, ip)| (ip, n)).collect();
    }

    /// Records a heartbeat from `from` that failed authentication; only a registered peer's
    /// address counts (whatever else arrives is noise, and is not kept).
    pub fn unauthenticated(&mut self, from: IpAddr, now: Instant) {
        if let Some(peer) = self.addresses.get(&from) {
            self.unauthenticated.insert(peer.clone(), now);
        }
    }

    /// Records a heartbeat; true when it says something new about the peer's presence (it
    /// leaves, restarts, settles, or its claims changed), so the election should run now.
    pub fn heard(&mut self, hb: &Heartbeat, now: Instant) -> bool {
        let before = self.heard.get(&hb.node);
        // A settling peer's claims are not final: keep those of its previous run.
        let claims = match before {
            Some(p) if hb.settling => p.claims.clone(),
            _ if hb.settling => BTreeMap::new(),
            _ => hb.claims.clone(),
        };
        let news = before.is_none_or(|p| {
            (p.leaving, p.restarting, p.settling) != (hb.leaving, hb.restarting, hb.settling) || p.claims != claims
        });
        let peer = Peer { at: now, leaving: hb.leaving, restarting: hb.restarting, settling: hb.settling, claims };
        self.heard.insert(hb.node.clone(), peer);
        news
    }

    /// Records that `peer`'s kernel answered our heartbeat with "port unreachable": the node is
    /// up, its speaker is not.
    pub fn kernel_answered(&mut self, peer: &str, now: Instant) {
        self.kernel.insert(peer.to_string(), now);
    }

    /// Whether a speaker started `since_start` ago may announce: it has heard every registered
    /// peer and every peer it `expects` (the speakers of usable Nodes, whose Leases may not show
    /// yet when nodes boot together), or the grace is over.
    pub fn settled<'a>(
        &self,
        me: &str,
        expects: impl IntoIterator<Item = &'a str>,
        since_start: Duration,
        t: &Timings,
    ) -> bool {
        let heard = |p: &str| p == me || self.heard.contains_key(p);
        since_start >= t.grace || (self.registered.keys().all(|p| heard(p)) && expects.into_iter().all(heard))
    }

    /// The peers alive now: registered, not leaving, and heard within the timeout — or silent for
    /// less than the restart grace while their kernel answers (held). A peer never heard is not
    /// alive: a new speaker takes addresses over only once the others hear it. `me` is always
    /// alive to itself, with `my_claims`, unless `me_leaving`. A dead peer's claims are forgotten,
    /// so that when it returns it takes back nothing that has moved. A peer whose heartbeats keep
    /// arriving but fail authentication is alive and misconfigured, and then no claims count.
    pub fn members(
        &mut self,
        me: &str,
        me_leaving: bool,
        my_claims: &BTreeMap<IpAddr, Mac>,
        t: &Timings,
        now: Instant,
    ) -> Members {
        let mut out = Members::default();
        for peer in self.registered.keys() {
            if peer == me {
                if !me_leaving {
                    out.alive.insert(peer.clone());
                    out.claims.insert(peer.clone(), my_claims.clone());
                }
                continue;
            }
            let speaking = self.heard.get(peer).is_some_and(|p| now.saturating_duration_since(p.at) <= t.timeout);
            let garbled =
                self.unauthenticated.get(peer).is_some_and(|u| now.saturating_duration_since(*u) <= t.timeout);
            if garbled && !speaking {
                out.alive.insert(peer.clone());
                out.misconfigured.insert(peer.clone());
                continue;
            }
            let Some(p) = self.heard.get_mut(peer).filter(|p| !p.leaving) else { continue };
            let silent = now.saturating_duration_since(p.at);
            if p.settling && silent <= t.timeout {
                out.held.insert(peer.clone());
                out.settling.insert(peer.clone());
            } else if silent > t.timeout {
                let kernel_up =
                    self.kernel.get(peer).is_some_and(|k| now.saturating_duration_since(*k) <= KERNEL_WINDOW);
                if !(kernel_up && silent <= t.hold) {
                    p.claims.clear();
                    continue;
                }
                out.held.insert(peer.clone());
            }
            out.alive.insert(peer.clone());
            out.claims.insert(peer.clone(), p.claims.clone());
        }
        if !out.misconfigured.is_empty() {
            out.claims.values_mut().for_each(BTreeMap::clear);
        }
        out
    }

    /// The peers that said their speaker is restarting in place (for the logs).
    pub fn restarting(&self) -> impl Iterator<Item = &str> {
        self.heard.iter().filter(|(_, p)| p.restarting).map(|(n, _)| n.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(ns: &[&str]) -> BTreeSet<String> {
        ns.iter().map(|s| s.to_string()).collect()
    }

    fn alive(l: &mut Liveness, me: &str, leaving: bool, t: &Timings, now: Instant) -> BTreeSet<String> {
        l.members(me, leaving, &BTreeMap::new(), t, now).alive
    }

    fn hb(peer: &str, leaving: bool, restarting: bool, settling: bool, claims: &BTreeMap<IpAddr, Mac>) -> Heartbeat {
        Heartbeat {
            node: peer.into(),
            incarnation: 1,
            sequence: 1,
            sent_at_ms: 0,
            leaving,
            restarting,
            settling,
            claims: claims.clone(),
        }
    }

    fn hear(l: &mut Liveness, peer: &str, leaving: bool, now: Instant) {
        l.heard(&hb(peer, leaving, false, false, &BTreeMap::new()), now);
    }

    #[test]
    fn a_peer_whose_heartbeats_fail_authentication_is_alive_and_claims_stop_counting() {
        let t = Timings::default();
        let t0 = Instant::now();
        let mut l = Liveness::default();
        l.set_registered(["a".to_string(), "b".to_string(), "c".to_string()], t0);
        l.set_addresses([
            ("b".to_string(), "198.51.100.2".parse().unwrap()),
            ("c".to_string(), "198.51.100.3".parse().unwrap()),
        ]);
        let claim: BTreeMap<IpAddr, Mac> = BTreeMap::from([("198.51.100.200".parse().unwrap(), [2, 0, 0, 0, 0, 3])]);
        l.heard(&hb("c", false, false, false, &claim), t0);
        // b's key differs: its heartbeats arrive from its Lease's address and fail.
        l.unauthenticated("198.51.100.2".parse().unwrap(), t0);
        // Noise from elsewhere is not kept.
        l.unauthenticated("192.0.2.99".parse().unwrap(), t0);
        let mine: BTreeMap<IpAddr, Mac> = BTreeMap::from([("198.51.100.201".parse().unwrap(), [2, 0, 0, 0, 0, 1])]);
        let m = l.members("a", false, &mine, &t, t0 + Duration::from_millis(100));
        assert_eq!(m.alive, names(&["a", "b", "c"]));
        assert_eq!(m.misconfigured, names(&["b"]));
        assert!(m.claims.values().all(BTreeMap::is_empty), "rank alone while keys differ: {:?}", m.claims);
        // The keys match again: b speaks, claims count again.
        l.heard(&hb("b", false, false, false, &BTreeMap::new()), t0 + Duration::from_millis(200));
        l.heard(&hb("c", false, false, false, &claim), t0 + Duration::from_millis(200));
        let m = l.members("a", false, &mine, &t, t0 + Duration::from_millis(300));
        assert!(m.misconfigured.is_empty());
        assert_eq!(m.claims["c"], claim);
        // A dead node is not kept alive by old failures: they age out like heartbeats.
        let m = l.members("a", false, &mine, &t, t0 + Duration::from_secs(2));
        assert_eq!(m.alive, names(&["a"]));
    }

    #[test]
    fn silence_leaving_and_leases_decide() {
        let t = Timings::default();
        let t0 = Instant::now();
        let mut l = Liveness::default();
        l.set_registered(["a".to_string(), "b".to_string(), "c".to_string()], t0);
        // Peers never heard are not alive yet.
        assert_eq!(alive(&mut l, "a", false, &t, t0), names(&["a"]));
        assert!(!l.settled("a", ["a"], Duration::ZERO, &t));
        hear(&mut l, "b", false, t0 + Duration::from_millis(100));
        assert_eq!(alive(&mut l, "a", false, &t, t0 + Duration::from_millis(150)).len(), 2);
        let later = t0 + Duration::from_secs(3);
        // c never spoke and its grace is over; b went silent.
        assert_eq!(alive(&mut l, "a", false, &t, later), names(&["a"]));
        hear(&mut l, "b", false, later);
        hear(&mut l, "c", true, later);
        assert_eq!(alive(&mut l, "a", false, &t, later), names(&["a", "b"]));
        assert!(!alive(&mut l, "a", true, &t, later).contains("a"), "a leaving node does not count itself");
        // A Lease gone means the peer is gone, whatever it says.
        l.set_registered(["a".to_string()], later);
        hear(&mut l, "b", false, later);
        assert_eq!(alive(&mut l, "a", false, &t, later), names(&["a"]));
    }

    #[test]
    fn a_silent_peer_whose_kernel_answers_is_held_for_the_restart_grace_only() {
        let t = Timings::default();
        let t0 = Instant::now();
        let mut l = Liveness::default();
        l.set_registered(names(&["a", "b"]), t0);
        let claims = BTreeMap::from([("198.51.100.1".parse().unwrap(), [2, 0, 0, 0, 0, 2])]);
        assert!(l.heard(&hb("b", false, true, false, &claims), t0), "first news");
        assert!(!l.heard(&hb("b", false, true, false, &claims), t0), "the same again is no news");
        assert_eq!(l.restarting().collect::<Vec<_>>(), ["b"]);
        let silent = t0 + Duration::from_secs(1);
        // Its kernel answered our heartbeat after its speaker stopped: held, with its claims.
        l.kernel_answered("b", t0 + Duration::from_millis(200));
        let m = l.members("a", false, &BTreeMap::new(), &t, silent);
        assert_eq!(m.alive, names(&["a", "b"]));
        assert_eq!(m.held, names(&["b"]));
        assert_eq!(m.claims["b"], claims, "a held peer keeps its claims");
        // Silent and no word from its kernel: dead (the node itself may be gone).
        let mut other = Liveness::default();
        other.set_registered(names(&["a", "b"]), t0);
        other.heard(&hb("b", false, false, false, &claims), t0);
        assert_eq!(other.members("a", false, &BTreeMap::new(), &t, silent).alive, names(&["a"]));
        l.kernel_answered("b", silent);
        // The kernel's word gets old: the node may have died since. Dead, its claims are forgotten:
        // when it returns (settling) it holds nothing.
        assert!(l.members("a", false, &BTreeMap::new(), &t, silent + KERNEL_WINDOW * 2).held.is_empty());
        // Past the restart grace, however alive its kernel: dead.
        let late = t0 + t.hold + Duration::from_millis(1);
        l.kernel_answered("b", late);
        assert!(!l.members("a", false, &BTreeMap::new(), &t, late).alive.contains("b"));
        // It returns, settling: it holds nothing (its claims were forgotten when it died).
        l.heard(&hb("b", false, false, true, &claims), late);
        let m = l.members("a", false, &BTreeMap::new(), &t, late);
        assert!(m.settling.contains("b") && m.claims["b"].is_empty(), "{m:?}");
        // Speaking again: alive and no longer held.
        l.heard(&hb("b", false, false, false, &BTreeMap::new()), late);
        let m = l.members("a", false, &BTreeMap::new(), &t, late);
        assert!(m.alive.contains("b") && m.held.is_empty());
        // A leaving peer is never held.
        l.heard(&hb("b", true, false, false, &BTreeMap::new()), late);
        l.kernel_answered("b", late + Duration::from_secs(1));
        assert!(!l.members("a", false, &BTreeMap::new(), &t, late + Duration::from_secs(1)).alive.contains("b"));
    }

    #[test]
    fn a_settling_peer_is_held_with_the_claims_of_its_previous_run() {
        let t = Timings::default();
        let t0 = Instant::now();
        let mut l = Liveness::default();
        l.set_registered(names(&["a", "b", "c"]), t0);
        let old = BTreeMap::from([("198.51.100.1".parse().unwrap(), [2, 0, 0, 0, 0, 2])]);
        l.heard(&hb("b", false, true, false, &old), t0);
        // Its new run says it is settling, with whatever it thinks it had: the old claims stand.
        let guess = BTreeMap::from([("198.51.100.9".parse().unwrap(), [2, 0, 0, 0, 0, 2])]);
        assert!(l.heard(&hb("b", false, false, true, &guess), t0 + Duration::from_secs(1)));
        let m = l.members("a", false, &BTreeMap::new(), &t, t0 + Duration::from_secs(1));
        assert_eq!((m.held.clone(), m.claims["b"].clone()), (names(&["b"]), old.clone()));
        // Settled: its claims are its own again, and it answers for them itself.
        l.heard(&hb("b", false, false, false, &guess), t0 + Duration::from_secs(2));
        let m = l.members("a", false, &BTreeMap::new(), &t, t0 + Duration::from_secs(2));
        assert!(m.held.is_empty());
        assert_eq!(m.claims["b"], guess);
        // A fresh speaker settling claims nothing, and a held node takes nothing new.
        l.heard(&hb("c", false, false, true, &guess), t0);
        let m = l.members("a", false, &BTreeMap::new(), &t, t0);
        assert!(m.held.contains("c") && m.settling.contains("c") && m.claims["c"].is_empty());
        // Settling but then silent, with no word from its kernel: dead.
        assert!(!l.members("a", false, &BTreeMap::new(), &t, t0 + Duration::from_secs(1)).alive.contains("c"));
    }

    #[test]
    fn a_starting_speaker_waits_for_registered_and_expected_peers_or_the_grace() {
        let t = Timings::default();
        let t0 = Instant::now();
        let early = Duration::from_millis(300);
        let mut l = Liveness::default();
        l.set_registered(["a".to_string(), "b".to_string()], t0);
        assert!(!l.settled("a", ["a", "b"], early, &t), "b is registered but not heard");
        hear(&mut l, "b", false, t0);
        assert!(l.settled("a", ["a", "b"], early, &t));
        // c is a usable Node whose speaker has not registered yet (booting together).
        assert!(!l.settled("a", ["a", "b", "c"], early, &t));
        hear(&mut l, "c", false, t0);
        l.set_registered(["a".to_string(), "b".to_string()], t0);
        assert!(!l.settled("a", ["a", "b", "c"], early, &t), "heard before its Lease: forgotten");
        l.set_registered(["a".to_string(), "b".to_string(), "c".to_string()], t0);
        hear(&mut l, "c", false, t0);
        assert!(l.settled("a", ["a", "b", "c"], early, &t));
        // A Node without a speaker delays the start by the grace, no more.
        assert!(!l.settled("a", ["a", "b", "c", "d"], early, &t));
        assert!(l.settled("a", ["a", "b", "c", "d"], t.grace, &t));
    }
}
