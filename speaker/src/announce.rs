//! The boundary every announcing protocol implements (L2 today; BGP plugs in beside it). Each
//! takes the same view and the live speakers, applies the shared eligibility rule
//! (`election::eligible`), and differs only in how it makes an address reachable. The loop drives
//! them all alike and never looks inside.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Instant;

use crate::l2::Mac;
use crate::membership::liveness::Members;
use crate::state::View;

/// An Event for the Services of an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// The address whose Services it concerns.
    pub ip: IpAddr,
    /// Warning rather than Normal.
    pub warning: bool,
    /// `Announced`, `AddressConflict`, ...
    pub reason: &'static str,
    /// The words.
    pub message: String,
}

/// An announcing protocol.
pub trait Announcer: Send {
    /// Brings what this node announces in line with `view` and the speakers alive now.
    fn update(&mut self, view: &View, members: &Members, now: Instant);

    /// Time-driven work (repeats, rescans, what the wire reported), on every heartbeat tick and
    /// whenever the announcer woke the loop.
    fn tick(&mut self, now: Instant);

    /// The addresses this node announces now, each with where (e.g. "on eth0"), for the
    /// `ferrolb.io/Announced` condition.
    fn announced(&self) -> &BTreeMap<IpAddr, String>;

    /// The addresses this node owns, each with the MAC it answers with, for its heartbeats (only
    /// protocols with a single owner per address claim anything).
    fn claims(&self) -> BTreeMap<IpAddr, Mac> {
        BTreeMap::new()
    }

    /// Events to write, gathered since the last call.
    fn take_notices(&mut self) -> Vec<Notice>;

    /// Whether what it announces stays when the speaker restarts in place (L2: the addresses stay
    /// on the node, its peers hold them); otherwise it is handed over on every exit.
    fn survives_restart(&self) -> bool {
        false
    }

    /// The node is leaving: from now on, report which of its addresses no other node has taken
    /// over yet (the loop waits for them, within a deadline, before it exits).
    fn not_yet_taken_over(&mut self) -> BTreeSet<IpAddr>;
}
