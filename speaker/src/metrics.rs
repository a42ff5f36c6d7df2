//! The speaker's Prometheus metrics, registered under `ferrolb_speaker_`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels naming an address.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AddressLabel {
    /// The address.
    pub address: String,
}

/// Labels naming a BGPPeer.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    /// The BGPPeer's name.
    pub peer: String,
}

/// The speaker's metrics.
#[derive(Clone, Default)]
pub struct Metrics {
    /// Addresses this node announces.
    pub announced: Gauge,
    /// Live peers (this node included).
    pub peers: Gauge,
    /// Speakers with a fresh Lease (this node included): what `peers` should reach.
    pub registered: Gauge,
    /// Registered peers whose heartbeats all fail authentication (a heartbeat-key mismatch).
    pub misconfigured: Gauge,
    /// Requests for our addresses received, per address.
    pub requests: Family<AddressLabel, Counter>,
    /// Replies sent, per address.
    pub replies: Family<AddressLabel, Counter>,
    /// Gratuitous frames sent.
    pub gratuitous: Counter,
    /// Changes of what this node announces.
    pub election_changes: Counter,
    /// Other hosts answering for our addresses.
    pub conflicts: Counter,
    /// Heartbeats refused (forged, replayed, stale, malformed).
    pub refused: Counter,
    /// nftables transactions applied.
    pub nft_applies: Counter,
    /// Times the table was found changed by someone else and put back.
    pub nft_repairs: Counter,
    /// Read-backs that found the table as applied.
    pub nft_verified: Counter,
    /// Base chains of other tables that drop forwarded or NodePort traffic.
    pub firewall_blocking: Gauge,
    /// 1 while this node's BGP session with a peer is Established, else 0.
    pub bgp_sessions: Family<PeerLabel, Gauge>,
    /// Prefixes in the speaker's BGP route table.
    pub bgp_routes: Gauge,
}

/// Raises `counter` to `total`, a count kept elsewhere (a responder thread's, the replay
/// guard's); a total that fell (a closed responder took its counts along) adds nothing.
pub fn raise_to(counter: &Counter, total: u64) {
    let now = counter.get();
    if total > now {
        counter.inc_by(total - now);
    }
}

impl Metrics {
    /// Registers every metric under `ferrolb_speaker_`.
    pub fn register(&self, r: &mut Registry) {
        r.register("ferrolb_speaker_announced_addresses", "Addresses this node announces", self.announced.clone());
        r.register("ferrolb_speaker_live_peers", "Live speakers, this one included", self.peers.clone());
        r.register(
            "ferrolb_speaker_registered_peers",
            "Speakers with a fresh Lease, this one included; live_peers below it means one is not heard",
            self.registered.clone(),
        );
        r.register(
            "ferrolb_speaker_misconfigured_peers",
            "Registered speakers whose heartbeats all fail authentication: a heartbeat-key mismatch (addresses are then placed by rank alone)",
            self.misconfigured.clone(),
        );
        r.register("ferrolb_speaker_requests", "ARP/NDP requests received, per address", self.requests.clone());
        r.register("ferrolb_speaker_replies", "ARP/NDP replies sent, per address", self.replies.clone());
        r.register(
            "ferrolb_speaker_gratuitous",
            "Gratuitous ARP / unsolicited NA frames sent",
            self.gratuitous.clone(),
        );
        r.register(
            "ferrolb_speaker_election_changes",
            "Changes of what this node announces",
            self.election_changes.clone(),
        );
        r.register(
            "ferrolb_speaker_conflicts",
            "Other hosts answering for addresses this node owns",
            self.conflicts.clone(),
        );
        r.register(
            "ferrolb_speaker_heartbeats_refused",
            "Heartbeats refused (forged, replayed, stale)",
            self.refused.clone(),
        );
        r.register("ferrolb_speaker_nft_applies", "nftables transactions applied", self.nft_applies.clone());
        r.register(
            "ferrolb_speaker_nft_repairs",
            "Times ferrolb's nftables table was changed by others and repaired",
            self.nft_repairs.clone(),
        );
        r.register(
            "ferrolb_speaker_nft_verified",
            "Read-backs that found ferrolb's nftables table as it was applied",
            self.nft_verified.clone(),
        );
        r.register(
            "ferrolb_speaker_firewall_blocking_chains",
            "Chains of other tables whose drop policy blocks forwarded or NodePort traffic",
            self.firewall_blocking.clone(),
        );
        r.register(
            "ferrolb_speaker_bgp_session_up",
            "1 while this node's BGP session with a peer is Established, else 0",
            self.bgp_sessions.clone(),
        );
        r.register(
            "ferrolb_speaker_bgp_routes",
            "Prefixes in the speaker's BGP route table (advertised by the routing daemon)",
            self.bgp_routes.clone(),
        );
    }

    /// Metrics with one series of empty label values per family, so that the generated
    /// reference (docs/CONFIGURATION.md) shows every family's labels.
    pub fn with_every_label() -> Self {
        let m = Self::default();
        let _ = m.requests.get_or_create(&AddressLabel::default());
        let _ = m.replies.get_or_create(&AddressLabel::default());
        let _ = m.bgp_sessions.get_or_create(&PeerLabel::default());
        m
    }
}
