//! Who is alive: the holders of unexpired speaker Leases, narrowed to those heard from recently
//! over UDP. The Lease says "this speaker exists"; the heartbeats give the sub-second signal.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Timings of the liveness decision.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    /// How often each speaker sends a heartbeat.
    pub interval: Duration,
    /// A peer not heard from for this long is dead.
    pub timeout: Duration,
    /// At start, how long to wait to hear every registered peer before announcing anything
    /// (so a starting speaker never claims an address a live peer holds).
    pub grace: Duration,
}

impl Default for Timings {
    /// 100 ms heartbeats, dead after 500 ms of silence: failover well under a second.
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(500),
            grace: Duration::from_secs(2),
        }
    }
}

/// What we know of each peer.
#[derive(Debug, Clone, Default)]
pub struct Liveness {
    /// Peers with an unexpired Lease, and when we first learned of them.
    registered: BTreeMap<String, Instant>,
    /// When each peer was last heard.
    heard: BTreeMap<String, Instant>,
    /// Peers that said they are leaving (until their Lease is gone or they speak again).
    leaving: BTreeSet<String>,
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
        self.leaving.retain(|p| self.registered.contains_key(p));
    }

    /// Records a heartbeat.
    pub fn heard(&mut self, peer: &str, leaving: bool, now: Instant) {
        self.heard.insert(peer.to_string(), now);
        if leaving {
            self.leaving.insert(peer.to_string());
        } else {
            self.leaving.remove(peer);
        }
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

    /// The peers alive now: registered, not leaving, and heard within the timeout. A peer never
    /// heard is not alive: a new speaker takes addresses over only once the others hear it.
    /// `me` is always alive to itself unless `me_leaving`.
    pub fn alive(&self, me: &str, me_leaving: bool, t: &Timings, now: Instant) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for (peer, since) in &self.registered {
            if peer == me {
                if !me_leaving {
                    out.insert(peer.clone());
                }
                continue;
            }
            if self.leaving.contains(peer) {
                continue;
            }
            let _ = since;
            if self.heard.get(peer).is_some_and(|at| now.duration_since(*at) <= t.timeout) {
                out.insert(peer.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_leaving_and_leases_decide() {
        let t = Timings::default();
        let t0 = Instant::now();
        let mut l = Liveness::default();
        l.set_registered(["a".to_string(), "b".to_string(), "c".to_string()], t0);
        // Peers never heard are not alive yet.
        assert_eq!(l.alive("a", false, &t, t0), BTreeSet::from(["a".to_string()]));
        assert!(!l.settled("a", ["a"], Duration::ZERO, &t));
        l.heard("b", false, t0 + Duration::from_millis(100));
        assert_eq!(l.alive("a", false, &t, t0 + Duration::from_millis(150)).len(), 2);
        let later = t0 + Duration::from_secs(3);
        // c never spoke and its grace is over; b went silent.
        assert_eq!(l.alive("a", false, &t, later), BTreeSet::from(["a".to_string()]));
        l.heard("b", false, later);
        l.heard("c", true, later);
        assert_eq!(l.alive("a", false, &t, later), BTreeSet::from(["a".to_string(), "b".to_string()]));
        assert!(!l.alive("a", true, &t, later).contains("a"), "a leaving node does not count itself");
        // A Lease gone means the peer is gone, whatever it says.
        l.set_registered(["a".to_string()], later);
        l.heard("b", false, later);
        assert_eq!(l.alive("a", false, &t, later), BTreeSet::from(["a".to_string()]));
    }

    #[test]
    fn a_starting_speaker_waits_for_registered_and_expected_peers_or_the_grace() {
        let t = Timings::default();
        let t0 = Instant::now();
        let early = Duration::from_millis(300);
        let mut l = Liveness::default();
        l.set_registered(["a".to_string(), "b".to_string()], t0);
        assert!(!l.settled("a", ["a", "b"], early, &t), "b is registered but not heard");
        l.heard("b", false, t0);
        assert!(l.settled("a", ["a", "b"], early, &t));
        // c is a usable Node whose speaker has not registered yet (booting together).
        assert!(!l.settled("a", ["a", "b", "c"], early, &t));
        l.heard("c", false, t0);
        l.set_registered(["a".to_string(), "b".to_string()], t0);
        assert!(!l.settled("a", ["a", "b", "c"], early, &t), "heard before its Lease: forgotten");
        l.set_registered(["a".to_string(), "b".to_string(), "c".to_string()], t0);
        l.heard("c", false, t0);
        assert!(l.settled("a", ["a", "b", "c"], early, &t));
        // A Node without a speaker delays the start by the grace, no more.
        assert!(!l.settled("a", ["a", "b", "c", "d"], early, &t));
        assert!(l.settled("a", ["a", "b", "c", "d"], t.grace, &t));
    }
}
