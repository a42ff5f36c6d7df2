//! Heartbeat messages between speakers: encoding, HMAC-SHA256 authentication, and replay
//! protection. Pure: bytes and clocks in, verdicts out.
//!
//! Wire format (big-endian): magic "FLB1" | flags u8 (bit 0: leaving) | sender incarnation u64 |
//! sequence u64 | sent-at milliseconds u64 | node-name length u8 | node name | [HMAC-SHA256, 32
//! bytes, over everything before it, when a secret is configured].

use std::collections::HashMap;

use hmac::{Hmac, Mac};
use sha2::Sha256;

const MAGIC: &[u8; 4] = b"FLB1";
const TAG_LEN: usize = 32;
const HEADER_LEN: usize = 4 + 1 + 8 + 8 + 8 + 1;

/// One heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// The sending node.
    pub node: String,
    /// Changes every time the sender starts, so a restarted peer's sequence may start over.
    pub incarnation: u64,
    /// Increases with every message of one incarnation.
    pub sequence: u64,
    /// The sender's clock (Unix milliseconds) when it sent the message.
    pub sent_at_ms: u64,
    /// The sender is shutting down: take its addresses over now.
    pub leaving: bool,
}

/// Why a message was refused (each one is counted in a metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not a heartbeat at all.
    #[error("malformed")]
    Malformed,
    /// The HMAC is missing or wrong.
    #[error("bad signature")]
    BadSignature,
    /// Seen before (or older than what we have seen from that sender).
    #[error("replayed")]
    Replayed,
    /// Sent too long ago (or too far in the future) to be trusted.
    #[error("stale")]
    Stale,
}

fn tag(secret: &[u8], body: &[u8]) -> [u8; TAG_LEN] {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// Encodes a heartbeat, signed when `secret` is given.
pub fn encode(hb: &Heartbeat, secret: Option<&[u8]>) -> Vec<u8> {
    let name = hb.node.as_bytes();
    let name = &name[..name.len().min(255)];
    let mut out = Vec::with_capacity(HEADER_LEN + name.len() + TAG_LEN);
    out.extend_from_slice(MAGIC);
    out.push(u8::from(hb.leaving));
    out.extend_from_slice(&hb.incarnation.to_be_bytes());
    out.extend_from_slice(&hb.sequence.to_be_bytes());
    out.extend_from_slice(&hb.sent_at_ms.to_be_bytes());
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    if let Some(secret) = secret {
        let t = tag(secret, &out);
        out.extend_from_slice(&t);
    }
    out
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// Decodes and authenticates a message (without replay checks; see [`Replay`]).
pub fn decode(bytes: &[u8], secret: Option<&[u8]>) -> Result<Heartbeat, Refusal> {
    if bytes.len() < HEADER_LEN || &bytes[..4] != MAGIC {
        return Err(Refusal::Malformed);
    }
    let name_len = usize::from(bytes[HEADER_LEN - 1]);
    let body_len = HEADER_LEN + name_len;
    let expected = body_len + if secret.is_some() { TAG_LEN } else { 0 };
    if bytes.len() != expected {
        return Err(if secret.is_some() && bytes.len() == body_len {
            Refusal::BadSignature
        } else {
            Refusal::Malformed
        });
    }
    if let Some(secret) = secret {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
        mac.update(&bytes[..body_len]);
        mac.verify_slice(&bytes[body_len..]).map_err(|_| Refusal::BadSignature)?;
    }
    let node = std::str::from_utf8(&bytes[HEADER_LEN..body_len]).map_err(|_| Refusal::Malformed)?.to_string();
    if node.is_empty() {
        return Err(Refusal::Malformed);
    }
    Ok(Heartbeat {
        node,
        incarnation: u64_at(bytes, 5),
        sequence: u64_at(bytes, 13),
        sent_at_ms: u64_at(bytes, 21),
        leaving: bytes[4] & 1 == 1,
    })
}

/// Remembers the newest (incarnation, sequence) per sender and refuses anything not newer, or
/// sent outside the allowed clock window.
#[derive(Debug, Clone)]
pub struct Replay {
    newest: HashMap<String, (u64, u64)>,
    window_ms: u64,
}

impl Replay {
    /// A guard accepting messages sent within `window_ms` of our clock.
    pub fn new(window_ms: u64) -> Self {
        Self { newest: HashMap::new(), window_ms }
    }

    /// Accepts `hb` if it is fresh and newer than anything seen from its sender.
    pub fn check(&mut self, hb: &Heartbeat, now_ms: u64) -> Result<(), Refusal> {
        if hb.sent_at_ms.abs_diff(now_ms) > self.window_ms {
            return Err(Refusal::Stale);
        }
        let key = (hb.incarnation, hb.sequence);
        match self.newest.get(&hb.node) {
            Some(seen) if key <= *seen => Err(Refusal::Replayed),
            _ => {
                self.newest.insert(hb.node.clone(), key);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hb(seq: u64) -> Heartbeat {
        Heartbeat { node: "node-a".into(), incarnation: 7, sequence: seq, sent_at_ms: 1_000_000, leaving: false }
    }

    #[test]
    fn signed_messages_round_trip_and_forgeries_are_refused() {
        let secret = b"s3cret";
        let bytes = encode(&hb(1), Some(secret));
        assert_eq!(decode(&bytes, Some(secret)), Ok(hb(1)));
        assert_eq!(decode(&bytes, Some(b"other")), Err(Refusal::BadSignature));
        let unsigned = encode(&hb(1), None);
        assert_eq!(decode(&unsigned, Some(secret)), Err(Refusal::BadSignature));
        assert_eq!(decode(&unsigned, None), Ok(hb(1)));
        let mut tampered = bytes.clone();
        tampered[20] ^= 1;
        assert_eq!(decode(&tampered, Some(secret)), Err(Refusal::BadSignature));
        let leaving = Heartbeat { leaving: true, ..hb(2) };
        assert_eq!(decode(&encode(&leaving, Some(secret)), Some(secret)), Ok(leaving));
    }

    #[test]
    fn replays_and_stale_messages_are_refused() {
        let mut r = Replay::new(5_000);
        assert_eq!(r.check(&hb(1), 1_000_100), Ok(()));
        assert_eq!(r.check(&hb(1), 1_000_100), Err(Refusal::Replayed));
        assert_eq!(r.check(&hb(0), 1_000_100), Err(Refusal::Replayed));
        assert_eq!(r.check(&hb(2), 1_000_100), Ok(()));
        assert_eq!(r.check(&hb(3), 1_010_000), Err(Refusal::Stale));
        // A restart (new incarnation) starts its sequence over.
        let restarted = Heartbeat { incarnation: 8, sequence: 0, ..hb(0) };
        assert_eq!(r.check(&restarted, 1_000_100), Ok(()));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = decode(&bytes, Some(b"k"));
            let _ = decode(&bytes, None);
        }

        #[test]
        fn every_heartbeat_round_trips(node in "[a-z0-9.-]{1,60}", inc: u64, seq: u64, at: u64, leaving: bool) {
            let h = Heartbeat { node, incarnation: inc, sequence: seq, sent_at_ms: at, leaving };
            prop_assert_eq!(decode(&encode(&h, Some(b"key")), Some(b"key")), Ok(h));
        }
    }
}
