//! Heartbeats over UDP: send ours to every peer, take in theirs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::net::UdpSocket;

use super::heartbeat::{self, Heartbeat, Refusal, Replay};
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
    secret: Option<Vec<u8>>,
    liveness: Arc<Mutex<Liveness>>,
    refused: Arc<Refused>,
    changed: Arc<tokio::sync::Notify>,
) {
    let mut replay = Replay::new(30_000);
    let mut buf = [0u8; 512];
    while let Ok((n, from)) = socket.recv_from(&mut buf).await {
        match heartbeat::decode(&buf[..n], secret.as_deref()).and_then(|hb| replay.check(&hb, now_ms()).map(|()| hb)) {
            Ok(hb) if hb.node != me => {
                let was_leaving = hb.leaving;
                liveness.lock().unwrap_or_else(|e| e.into_inner()).heard(&hb.node, hb.leaving, Instant::now());
                if was_leaving {
                    changed.notify_one();
                }
            }
            Ok(_) => {}
            Err(r) => {
                tracing::debug!(%from, reason = %r, "heartbeat refused");
                refused.count(r);
            }
        }
    }
}

/// Our side of the heartbeats: one incarnation per process, a sequence number per heartbeat.
#[derive(Debug)]
pub struct Sender {
    node: String,
    secret: Option<Vec<u8>>,
    incarnation: u64,
    sequence: u64,
}

impl Sender {
    /// Heartbeats of `node`, signed with `secret` when there is one.
    pub fn new(node: &str, secret: Option<Vec<u8>>) -> Self {
        Self { node: node.to_string(), secret, incarnation: now_ms(), sequence: 0 }
    }

    /// Sends the next heartbeat to every peer.
    pub async fn send(&mut self, socket: &UdpSocket, peers: &BTreeMap<String, Option<SocketAddr>>, leaving: bool) {
        self.sequence += 1;
        let hb = Heartbeat {
            node: self.node.clone(),
            incarnation: self.incarnation,
            sequence: self.sequence,
            sent_at_ms: now_ms(),
            leaving,
        };
        send_all(socket, &hb, self.secret.as_deref(), peers).await;
    }
}

/// Builds and sends one heartbeat to every peer address.
pub async fn send_all(
    socket: &UdpSocket,
    hb: &Heartbeat,
    secret: Option<&[u8]>,
    peers: &BTreeMap<String, Option<SocketAddr>>,
) {
    let bytes = heartbeat::encode(hb, secret);
    for (node, addr) in peers {
        if *node == hb.node {
            continue;
        }
        if let Some(addr) = addr {
            let _ = socket.send_to(&bytes, addr).await;
        }
    }
}
