//! Heartbeats over UDP: send ours to every peer, take in theirs. Ours go out of one connected
//! socket per peer, so that a peer whose speaker is gone but whose kernel is up answers with
//! "port unreachable", which the next send reports (see `liveness`).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::net::UdpSocket;

use super::heartbeat::{self, Heartbeat, Refusal, Replay};
use super::key::Key;
use super::liveness::Liveness;

/// Counts of refused messages, by reason.
#[derive(Debug, Default)]
pub struct Refused {
    /// Not a heartbeat.
    pub malformed: AtomicU64,
    /// Wrong or missing signature.
    pub bad_signature: AtomicU64,
    /// Replayed.
    pub replayed: AtomicU64,
    /// Too old or from the future.
    pub stale: AtomicU64,
}

impl Refused {
    /// All refused so far.
    pub fn total(&self) -> u64 {
        [&self.malformed, &self.bad_signature, &self.replayed, &self.stale]
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    fn count(&self, r: Refusal) {
        let c = match r {
            Refusal::Malformed => &self.malformed,
            Refusal::BadSignature => &self.bad_signature,
            Refusal::Replayed => &self.replayed,
            Refusal::Stale => &self.stale,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Receives heartbeats until the socket fails; accepted ones update `liveness`.
pub async fn receive(
    socket: Arc<UdpSocket>,
    me: String,
    secret: Key,
    liveness: Arc<Mutex<Liveness>>,
    refused: Arc<Refused>,
    changed: Arc<tokio::sync::Notify>,
) {
    let mut replay = Replay::new(30_000, secret.is_some());
    let mut buf = [0u8; 512];
    while let Ok((n, from)) = socket.recv_from(&mut buf).await {
        match heartbeat::decode(&buf[..n], secret.get().as_deref())
            .and_then(|hb| replay.check(&hb, now_ms()).map(|()| hb))
        {
            Ok(hb) if hb.node != me => {
                let news = liveness.lock().unwrap_or_else(|e| e.into_inner()).heard(&hb, Instant::now());
                if news {
                    changed.notify_one();
                }
            }
            Ok(_) => {}
            Err(r) => {
                tracing::debug!(%from, reason = %r, "heartbeat refused");
                refused.count(r);
                if r == Refusal::BadSignature {
                    liveness.lock().unwrap_or_else(|e| e.into_inner()).unauthenticated(from.ip(), Instant::now());
                }
            }
        }
    }
}

/// Our side of the heartbeats: one incarnation per process, a sequence number per heartbeat.
#[derive(Debug)]
pub struct Sender {
    node: String,
    secret: Key,
    incarnation: u64,
    sequence: u64,
    sockets: BTreeMap<SocketAddr, UdpSocket>,
    warned_full: bool,
}

/// What our heartbeat says besides "alive".
#[derive(Debug, Clone, Copy, Default)]
pub struct Status {
    /// Shutting down for good: take our addresses over now.
    pub leaving: bool,
    /// Restarting in place: hold our addresses.
    pub restarting: bool,
    /// Just started, peers not heard yet: keep what we claimed before.
    pub settling: bool,
}

impl Sender {
    /// Heartbeats of `node`, signed with `secret` when there is one.
    pub fn new(node: &str, secret: Key) -> Self {
        Self {
            node: node.to_string(),
            secret,
            incarnation: now_ms(),
            sequence: 0,
            sockets: BTreeMap::new(),
            warned_full: false,
        }
    }

    /// Sends the next heartbeat, with our `claims`, to every peer; returns the peers whose
    /// kernel answered an earlier one with "port unreachable" (their speaker is not running).
    pub async fn send(
        &mut self,
        peers: &BTreeMap<String, Option<SocketAddr>>,
        status: Status,
        claims: &BTreeMap<IpAddr, crate::l2::Mac>,
    ) -> Vec<String> {
        self.sequence += 1;
        let hb = Heartbeat {
            node: self.node.clone(),
            incarnation: self.incarnation,
            sequence: self.sequence,
            sent_at_ms: now_ms(),
            leaving: status.leaving,
            restarting: status.restarting,
            settling: status.settling,
            claims: claims.clone(),
        };
        let bytes = heartbeat::encode(&hb, self.secret.get().as_deref());
        if !self.warned_full && bytes.len() + 64 > heartbeat::MAX_LEN && !heartbeat::claims_fit(&hb) {
            self.warned_full = true;
            tracing::warn!(
                claims = claims.len(),
                "too many addresses to list in one heartbeat; peers see only the first ones"
            );
        }
        let addrs: BTreeMap<SocketAddr, &str> = peers
            .iter()
            .filter(|(node, _)| **node != self.node)
            .filter_map(|(node, a)| a.map(|a| (a, node.as_str())))
            .collect();
        self.sockets.retain(|a, _| addrs.contains_key(a));
        let mut kernel_answered = Vec::new();
        for (addr, node) in addrs {
            let socket = match self.sockets.entry(addr) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    let any: SocketAddr = if addr.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
                    let Ok(s) = UdpSocket::bind(any).await else { continue };
                    if s.connect(addr).await.is_err() {
                        continue;
                    }
                    e.insert(s)
                }
            };
            if let Err(e) = socket.send(&bytes).await
                && e.kind() == std::io::ErrorKind::ConnectionRefused
            {
                kernel_answered.push(node.to_string());
                // This heartbeat was not sent: the error was the earlier one's answer.
                let _ = socket.send(&bytes).await;
            }
        }
        kernel_answered
    }
}
