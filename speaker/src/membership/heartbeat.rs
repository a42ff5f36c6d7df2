//! Heartbeat messages between speakers: encoding, HMAC-SHA256 authentication, and replay
//! protection. Pure: bytes and clocks in, verdicts out.
//!
//! Wire format (big-endian): magic "FLB2" | flags u8 (bit 0: leaving, bit 1: restarting, bit 2:
//! settling) | sender
//! incarnation u64 | sequence u64 | sent-at milliseconds u64 | node-name length u8 | node name |
//! claims: group count u16, each group a MAC (6 bytes) | IPv4 count u16 | IPv4 addresses | IPv6
//! count u16 | IPv6 addresses | [HMAC-SHA256, 32 bytes, over everything before it, when a secret is
//! configured].
//!
//! The claims are the addresses the sender announces with the MAC it answers with: they keep an
//! address where it is (no flap-back) and let a peer answer for a restarting owner with the
//! owner's MAC (docs/SPEAKER.md, "Restarts").

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::l2::Mac;

use hmac::{Hmac, Mac as _};
use sha2::Sha256;

const MAGIC: &[u8; 4] = b"FLB2";
const TAG_LEN: usize = 32;
const HEADER_LEN: usize = 4 + 1 + 8 + 8 + 8 + 1;
/// The largest UDP payload; claims beyond it are left out (and the sender logs it).
pub const MAX_LEN: usize = 65_507;

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
    /// The sender is restarting in place: hold its addresses for it.
    pub restarting: bool,
    /// The sender has just started and not yet heard its peers: its claims are not yet final, so
    /// keep what it claimed before (and answer for it) until it has.
    pub settling: bool,
    /// The addresses the sender announces, each with the MAC it answers with.
    pub claims: BTreeMap<IpAddr, Mac>,
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

/// The claims grouped by MAC, each group's addresses by family, in a fixed order.
fn groups(claims: &BTreeMap<IpAddr, Mac>) -> BTreeMap<Mac, (Vec<Ipv4Addr>, Vec<Ipv6Addr>)> {
    let mut out: BTreeMap<Mac, (Vec<Ipv4Addr>, Vec<Ipv6Addr>)> = BTreeMap::new();
    for (ip, mac) in claims {
        let g = out.entry(*mac).or_default();
        match ip {
            IpAddr::V4(v4) => g.0.push(*v4),
            IpAddr::V6(v6) => g.1.push(*v6),
        }
    }
    out
}

/// Encodes a heartbeat, signed when `secret` is given. Claims that would not fit in one datagram
/// are left out, the last ones first; `claims_fit` says whether all fitted.
pub fn encode(hb: &Heartbeat, secret: Option<&[u8]>) -> Vec<u8> {
    let name = hb.node.as_bytes();
    let name = &name[..name.len().min(255)];
    let mut out = Vec::with_capacity(HEADER_LEN + name.len() + TAG_LEN + 16 * hb.claims.len());
    out.extend_from_slice(MAGIC);
    out.push(u8::from(hb.leaving) | (u8::from(hb.restarting) << 1) | (u8::from(hb.settling) << 2));
    out.extend_from_slice(&hb.incarnation.to_be_bytes());
    out.extend_from_slice(&hb.sequence.to_be_bytes());
    out.extend_from_slice(&hb.sent_at_ms.to_be_bytes());
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    let budget = MAX_LEN - TAG_LEN;
    let groups = groups(&hb.claims);
    let count_at = out.len();
    out.extend_from_slice(&0u16.to_be_bytes());
    let mut count: u16 = 0;
    for (mac, (v4, v6)) in groups.iter().take(usize::from(u16::MAX)) {
        // A group costs 10 bytes plus its addresses; keep what fits.
        if out.len() + 10 > budget {
            break;
        }
        out.extend_from_slice(mac);
        let room4 = ((budget - out.len() - 4) / 4).min(v4.len()).min(usize::from(u16::MAX));
        out.extend_from_slice(&(room4 as u16).to_be_bytes());
        v4[..room4].iter().for_each(|a| out.extend_from_slice(&a.octets()));
        let room6 = ((budget - out.len() - 2) / 16).min(v6.len()).min(usize::from(u16::MAX));
        out.extend_from_slice(&(room6 as u16).to_be_bytes());
        v6[..room6].iter().for_each(|a| out.extend_from_slice(&a.octets()));
        count += 1;
    }
    out[count_at..count_at + 2].copy_from_slice(&count.to_be_bytes());
    if let Some(secret) = secret {
        let t = tag(secret, &out);
        out.extend_from_slice(&t);
    }
    out
}

/// Whether every claim of `hb` fits in one datagram.
pub fn claims_fit(hb: &Heartbeat) -> bool {
    let encoded = encode(hb, None);
    decode(&encoded, None).is_ok_and(|d| d.claims.len() == hb.claims.len())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// Reads the claims section; None when it is cut short.
fn read_claims(b: &[u8]) -> Option<(BTreeMap<IpAddr, Mac>, usize)> {
    let take = |at: &mut usize, n: usize| -> Option<&[u8]> {
        let s = b.get(*at..at.checked_add(n)?)?;
        *at += n;
        Some(s)
    };
    let count = |at: &mut usize| take(at, 2).map(|c| usize::from(u16::from_be_bytes([c[0], c[1]])));
    let mut at = 0;
    let mut claims = BTreeMap::new();
    for _ in 0..count(&mut at)? {
        let mac: Mac = take(&mut at, 6)?.try_into().ok()?;
        for _ in 0..count(&mut at)? {
            let o: [u8; 4] = take(&mut at, 4)?.try_into().ok()?;
            claims.insert(IpAddr::V4(o.into()), mac);
        }
        for _ in 0..count(&mut at)? {
            let o: [u8; 16] = take(&mut at, 16)?.try_into().ok()?;
            claims.insert(IpAddr::V6(o.into()), mac);
        }
    }
    Some((claims, at))
}

/// Decodes and authenticates a message (without replay checks; see [`Replay`]).
pub fn decode(bytes: &[u8], secret: Option<&[u8]>) -> Result<Heartbeat, Refusal> {
    if bytes.len() < HEADER_LEN || &bytes[..4] != MAGIC {
        return Err(Refusal::Malformed);
    }
    let name_len = usize::from(bytes[HEADER_LEN - 1]);
    let name_end = HEADER_LEN + name_len;
    let claims_len = bytes.get(name_end..).and_then(read_claims).ok_or(Refusal::Malformed)?.1;
    let body_len = name_end + claims_len;
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
    let node = std::str::from_utf8(&bytes[HEADER_LEN..name_end]).map_err(|_| Refusal::Malformed)?.to_string();
    if node.is_empty() {
        return Err(Refusal::Malformed);
    }
    Ok(Heartbeat {
        node,
        incarnation: u64_at(bytes, 5),
        sequence: u64_at(bytes, 13),
        sent_at_ms: u64_at(bytes, 21),
        leaving: bytes[4] & 1 == 1,
        restarting: bytes[4] & 2 == 2,
        settling: bytes[4] & 4 == 4,
        claims: read_claims(&bytes[name_end..]).map(|c| c.0).unwrap_or_default(),
    })
}

/// How many senders the replay guard remembers at most; new names beyond it are refused (a
/// cluster has far fewer speakers; a flood of forged names must not grow memory).
pub const MAX_SENDERS: usize = 4096;

/// Without a secret, how long a sender's newest message blocks older incarnations: one forged
/// datagram with a huge incarnation silences the real sender for this long, not until it restarts.
pub const UNSIGNED_FORGET_MS: u64 = 2_000;

/// Remembers the newest (incarnation, sequence) per sender and refuses anything not newer, or
/// sent outside the allowed clock window. An incarnation is the sender's start time, so it is
/// never later than the message's own send time.
#[derive(Debug, Clone)]
pub struct Replay {
    /// Per sender: the newest (incarnation, sequence) and our clock when it was accepted.
    newest: HashMap<String, ((u64, u64), u64)>,
    window_ms: u64,
    forget_ms: Option<u64>,
}

impl Replay {
    /// A guard accepting messages sent within `window_ms` of our clock; `signed` when messages
    /// are authenticated (then nobody but a peer can advance a sender's incarnation, and a
    /// sender's newest message is never forgotten).
    pub fn new(window_ms: u64, signed: bool) -> Self {
        Self { newest: HashMap::new(), window_ms, forget_ms: (!signed).then_some(UNSIGNED_FORGET_MS) }
    }

    /// Accepts `hb` if it is fresh and newer than anything seen from its sender.
    pub fn check(&mut self, hb: &Heartbeat, now_ms: u64) -> Result<(), Refusal> {
        if hb.sent_at_ms.abs_diff(now_ms) > self.window_ms || hb.incarnation > hb.sent_at_ms {
            return Err(Refusal::Stale);
        }
        let key = (hb.incarnation, hb.sequence);
        match self.newest.get(&hb.node) {
            Some((seen, at)) if key <= *seen && self.forget_ms.is_none_or(|f| now_ms.saturating_sub(*at) < f) => {
                return Err(Refusal::Replayed);
            }
            Some(_) => {}
            None => {
                if self.newest.len() >= MAX_SENDERS {
                    // Senders silent for longer than the window can be forgotten: anything older
                    // from them is stale anyway.
                    let window = self.window_ms;
                    self.newest.retain(|_, (_, at)| now_ms.saturating_sub(*at) <= window);
                }
                if self.newest.len() >= MAX_SENDERS {
                    return Err(Refusal::Replayed);
                }
            }
        }
        self.newest.insert(hb.node.clone(), (key, now_ms));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hb(seq: u64) -> Heartbeat {
        Heartbeat {
            node: "node-a".into(),
            incarnation: 7,
            sequence: seq,
            sent_at_ms: 1_000_000,
            leaving: false,
            restarting: false,
            settling: false,
            claims: BTreeMap::new(),
        }
    }

    #[test]
    fn claims_and_flags_round_trip_and_a_cut_claim_list_is_refused() {
        let claims: BTreeMap<IpAddr, Mac> = [
            ("198.51.100.1", [2, 0, 0, 0, 0, 1]),
            ("2001:db8::1", [2, 0, 0, 0, 0, 1]),
            ("198.51.100.2", [2, 0, 0, 0, 0, 2]),
        ]
        .into_iter()
        .map(|(ip, mac)| (ip.parse().unwrap(), mac))
        .collect();
        let h = Heartbeat { restarting: true, settling: true, claims, ..hb(3) };
        let bytes = encode(&h, Some(b"k"));
        assert_eq!(decode(&bytes, Some(b"k")), Ok(h.clone()));
        assert!(claims_fit(&h));
        let unsigned = encode(&h, None);
        assert_eq!(decode(&unsigned[..unsigned.len() - 1], None), Err(Refusal::Malformed));
        let mut longer = unsigned.clone();
        longer.push(0);
        assert_eq!(decode(&longer, None), Err(Refusal::Malformed));
    }

    #[test]
    fn claims_that_do_not_fit_one_datagram_are_left_out() {
        let claims: BTreeMap<IpAddr, Mac> =
            (0..20_000u32).map(|i| (IpAddr::V4((0xc633_0000 + i).into()), [2, 0, 0, 0, 0, 1])).collect();
        let h = Heartbeat { claims, ..hb(1) };
        let bytes = encode(&h, Some(b"k"));
        assert!(bytes.len() <= MAX_LEN, "{}", bytes.len());
        let decoded = decode(&bytes, Some(b"k")).unwrap();
        assert!(decoded.claims.len() > 15_000 && decoded.claims.len() < 20_000, "{}", decoded.claims.len());
        assert!(!claims_fit(&h));
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
        let mut r = Replay::new(5_000, true);
        assert_eq!(r.check(&hb(1), 1_000_100), Ok(()));
        assert_eq!(r.check(&hb(1), 1_000_100), Err(Refusal::Replayed));
        assert_eq!(r.check(&hb(0), 1_000_100), Err(Refusal::Replayed));
        assert_eq!(r.check(&hb(2), 1_000_100), Ok(()));
        assert_eq!(r.check(&hb(3), 1_010_000), Err(Refusal::Stale));
        // A restart (new incarnation) starts its sequence over.
        let restarted = Heartbeat { incarnation: 8, sequence: 0, ..hb(0) };
        assert_eq!(r.check(&restarted, 1_000_100), Ok(()));
        // An incarnation (a start time) later than the message's own send time is a forgery.
        let future = Heartbeat { incarnation: 1_000_001, sequence: 0, ..hb(0) };
        assert_eq!(r.check(&future, 1_000_100), Err(Refusal::Stale));
    }

    #[test]
    fn one_forged_datagram_silences_a_sender_for_two_seconds_at_most() {
        let now = 1_000_000;
        let forged = Heartbeat { incarnation: now + 4_000, sequence: u64::MAX, sent_at_ms: now + 4_000, ..hb(0) };
        let real = |seq: u64, at: u64| Heartbeat { incarnation: 7, sequence: seq, sent_at_ms: at, ..hb(0) };
        let mut unsigned = Replay::new(5_000, false);
        assert_eq!(unsigned.check(&forged, now), Ok(()));
        assert_eq!(unsigned.check(&real(1, now + 100), now + 100), Err(Refusal::Replayed));
        assert_eq!(unsigned.check(&real(21, now + 2_100), now + 2_100), Ok(()), "the forgery is forgotten");
        assert_eq!(
            unsigned.check(&real(21, now + 2_100), now + 2_150),
            Err(Refusal::Replayed),
            "replays still are not"
        );
        // Signed, nobody else can advance the incarnation: the newest is never forgotten, so an
        // old heartbeat replayed after its sender died stays refused.
        let mut signed = Replay::new(5_000, true);
        assert_eq!(signed.check(&real(5, now), now), Ok(()));
        assert_eq!(signed.check(&real(4, now), now + 3_000), Err(Refusal::Replayed));
    }

    #[test]
    fn a_flood_of_forged_names_is_bounded() {
        let mut r = Replay::new(5_000, false);
        let accepted = (0..(MAX_SENDERS as u64 + 1_000))
            .filter(|i| r.check(&Heartbeat { node: format!("forged-{i}"), ..hb(1) }, 1_000_000).is_ok())
            .count();
        assert_eq!(accepted, MAX_SENDERS);
        assert_eq!(r.newest.len(), MAX_SENDERS);
        // Once they fall silent for the window, room is made for real peers.
        assert_eq!(r.check(&Heartbeat { node: "node-b".into(), ..hb(1) }, 1_000_100), Err(Refusal::Replayed), "full");
        let late = Heartbeat { node: "node-b".into(), sent_at_ms: 1_006_000, ..hb(1) };
        assert_eq!(r.check(&late, 1_006_000), Ok(()));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = decode(&bytes, Some(b"k"));
            let _ = decode(&bytes, None);
        }

        #[test]
        fn every_heartbeat_round_trips(
            node in "[a-z0-9.-]{1,60}", inc: u64, seq: u64, at: u64, leaving: bool, restarting: bool, settling: bool,
            claims in proptest::collection::btree_map(any::<IpAddr>(), any::<[u8; 6]>(), 0..40),
        ) {
            let h = Heartbeat { node, incarnation: inc, sequence: seq, sent_at_ms: at, leaving, restarting, settling, claims };
            prop_assert_eq!(decode(&encode(&h, Some(b"key")), Some(b"key")), Ok(h));
        }
    }
}
