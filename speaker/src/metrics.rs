//! The speaker's Prometheus metrics, registered under `ferrolb_speaker_`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels naming an address.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AddressLabel {
    /// The address.
    pub address: String,
}

/// The speaker's metrics.
#[derive(Clone, Default)]
pub struct Metrics {
    /// Addresses this node announces.
    pub announced: Gauge,
    /// Live peers (this node included).
    pub peers: Gauge,
    /// Requests for our addresses received, per address.
    pub requests: Family<AddressLabel, Gauge>,
    /// Replies sent, per address.
    pub replies: Family<AddressLabel, Gauge>,
    /// Gratuitous frames sent.
    pub gratuitous: Gauge,
    /// Changes of what this node announces.
    pub election_changes: Counter,
    /// Other hosts answering for our addresses.
    pub conflicts: Counter,
    /// Heartbeats refused (forged, replayed, stale, malformed).
    pub refused: Gauge,
    /// nftables transactions applied.
    pub nft_applies: Counter,
    /// Times the table was found changed by someone else and put back.
    pub nft_repairs: Counter,
    /// Read-backs that found the table as applied.
    pub nft_verified: Counter,
    /// Base chains of other tables that drop forwarded or NodePort traffic.
    pub firewall_blocking: Gauge,
}

impl Metrics {
    /// Registers every metric under `ferrolb_speaker_`.
    pub fn register(&self, r: &mut Registry) {
        r.register("ferrolb_speaker_announced_addresses", "Addresses this node announces", self.announced.clone());
        r.register("ferrolb_speaker_live_peers", "Live speakers, this one included", self.peers.clone());
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
    }
}
