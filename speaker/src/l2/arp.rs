//! ARP (IPv4) frames: parse what arrives, build replies and gratuitous announcements, and decide
//! whether a request deserves an answer. Pure: bytes in, bytes out.

use std::net::Ipv4Addr;

use pnet::packet::Packet;
use pnet::packet::arp::{ArpHardwareTypes, ArpOperations, ArpPacket, MutableArpPacket};
use pnet::packet::ethernet::{EtherTypes, EthernetPacket, MutableEthernetPacket};
use pnet::util::MacAddr;

use super::{BROADCAST, Mac};

/// Length of an Ethernet frame carrying ARP for IPv4 (without padding).
pub const FRAME_LEN: usize = 14 + 28;

/// An ARP message for IPv4 over Ethernet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arp {
    /// Who has `target_ip`? Tell `sender_ip`.
    Request {
        /// The asker's MAC (from the ARP body).
        sender_mac: Mac,
        /// The asker's address (0.0.0.0 for a probe).
        sender_ip: Ipv4Addr,
        /// The address asked about.
        target_ip: Ipv4Addr,
    },
    /// `sender_ip` is at `sender_mac`.
    Reply {
        /// The answering MAC.
        sender_mac: Mac,
        /// The address it claims.
        sender_ip: Ipv4Addr,
        /// Who it answers.
        target_mac: Mac,
        /// Their address.
        target_ip: Ipv4Addr,
    },
}

impl Arp {
    /// The address the sender claims to have, and its MAC (for conflict detection). Probes
    /// (sender 0.0.0.0) claim nothing.
    pub fn claim(&self) -> Option<(Ipv4Addr, Mac)> {
        let (ip, mac) = match *self {
            Arp::Request { sender_mac, sender_ip, .. } | Arp::Reply { sender_mac, sender_ip, .. } => {
                (sender_ip, sender_mac)
            }
        };
        (!ip.is_unspecified()).then_some((ip, mac))
    }
}

/// Parses an Ethernet frame; None for anything that is not well-formed ARP for IPv4.
pub fn parse(frame: &[u8]) -> Option<Arp> {
    let eth = EthernetPacket::new(frame)?;
    if eth.get_ethertype() != EtherTypes::Arp {
        return None;
    }
    let arp = ArpPacket::new(eth.payload())?;
    if arp.get_hardware_type() != ArpHardwareTypes::Ethernet
        || arp.get_protocol_type() != EtherTypes::Ipv4
        || arp.get_hw_addr_len() != 6
        || arp.get_proto_addr_len() != 4
    {
        return None;
    }
    let sender_mac = arp.get_sender_hw_addr().octets();
    let sender_ip = arp.get_sender_proto_addr();
    let target_ip = arp.get_target_proto_addr();
    match arp.get_operation() {
        ArpOperations::Request => Some(Arp::Request { sender_mac, sender_ip, target_ip }),
        ArpOperations::Reply => {
            Some(Arp::Reply { sender_mac, sender_ip, target_mac: arp.get_target_hw_addr().octets(), target_ip })
        }
        _ => None,
    }
}

#[allow(clippy::too_many_arguments)]
fn build(eth_dst: Mac, eth_src: Mac, reply: bool, sha: Mac, spa: Ipv4Addr, tha: Mac, tpa: Ipv4Addr) -> Vec<u8> {
    let mut buf = vec![0u8; FRAME_LEN];
    {
        let mut eth = MutableEthernetPacket::new(&mut buf).expect("buffer fits an Ethernet header");
        eth.set_destination(MacAddr::from(eth_dst));
        eth.set_source(MacAddr::from(eth_src));
        eth.set_ethertype(EtherTypes::Arp);
    }
    let mut arp = MutableArpPacket::new(&mut buf[14..]).expect("buffer fits an ARP body");
    arp.set_hardware_type(ArpHardwareTypes::Ethernet);
    arp.set_protocol_type(EtherTypes::Ipv4);
    arp.set_hw_addr_len(6);
    arp.set_proto_addr_len(4);
    arp.set_operation(if reply { ArpOperations::Reply } else { ArpOperations::Request });
    arp.set_sender_hw_addr(MacAddr::from(sha));
    arp.set_sender_proto_addr(spa);
    arp.set_target_hw_addr(MacAddr::from(tha));
    arp.set_target_proto_addr(tpa);
    buf
}

/// "`vip` is at `our_mac`", sent to whoever asked.
pub fn reply(our_mac: Mac, vip: Ipv4Addr, to_mac: Mac, to_ip: Ipv4Addr) -> Vec<u8> {
    build(to_mac, our_mac, true, our_mac, vip, to_mac, to_ip)
}

/// "`vip` is at `at`", sent from `our_mac` (a stand-in answering for a restarting owner keeps its
/// own MAC as the frame's source, so switches do not learn the owner's MAC on its port).
fn reply_for(our_mac: Mac, at: Mac, vip: Ipv4Addr, to_mac: Mac, to_ip: Ipv4Addr) -> Vec<u8> {
    build(to_mac, our_mac, true, at, vip, to_mac, to_ip)
}

/// A gratuitous ARP request (an announcement, RFC 5227): broadcast, sender and target both `vip`.
pub fn gratuitous_request(our_mac: Mac, vip: Ipv4Addr) -> Vec<u8> {
    build(BROADCAST, our_mac, false, our_mac, vip, [0; 6], vip)
}

/// A gratuitous ARP reply: broadcast, sender and target both `vip`. Some hosts only update their
/// cache from replies, so takeovers send both kinds.
pub fn gratuitous_reply(our_mac: Mac, vip: Ipv4Addr) -> Vec<u8> {
    build(BROADCAST, our_mac, true, our_mac, vip, BROADCAST, vip)
}

/// Whether `mac` may be a requester's: unicast and not zero (RFC 826 answers go to the sender).
pub fn unicast(mac: &Mac) -> bool {
    mac[0] & 1 == 0 && *mac != [0; 6]
}

/// The reply `frame` deserves, if it asks for an address `owned` says we answer for, with the
/// MAC `owned` gives (ours, or a restarting owner's). A gratuitous request (its sender claims the
/// address it asks about) is a claim, not a question: it is judged as a conflict, not answered.
pub fn answer(frame: &[u8], our_mac: Mac, owned: impl Fn(Ipv4Addr) -> Option<Mac>) -> Option<(Ipv4Addr, Vec<u8>)> {
    match parse(frame)? {
        Arp::Request { sender_mac, sender_ip, target_ip }
            if sender_mac != our_mac && sender_ip != target_ip && unicast(&sender_mac) =>
        {
            let at = owned(target_ip)?;
            Some((target_ip, reply_for(our_mac, at, target_ip, sender_mac, sender_ip)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const US: Mac = [0x02, 0, 0, 0, 0, 1];
    const THEM: Mac = [0x02, 0, 0, 0, 0, 2];

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn requests_for_owned_addresses_are_answered_and_others_are_not() {
        let request = build(BROADCAST, THEM, false, THEM, ip("198.51.100.10"), [0; 6], ip("198.51.100.200"));
        let owned = |a: Ipv4Addr| (a == ip("198.51.100.200")).then_some(US);
        let (vip, frame) = answer(&request, US, owned).unwrap();
        assert_eq!(vip, ip("198.51.100.200"));
        assert_eq!(
            parse(&frame),
            Some(Arp::Reply { sender_mac: US, sender_ip: vip, target_mac: THEM, target_ip: ip("198.51.100.10") })
        );
        assert_eq!(&frame[0..6], &THEM, "unicast to the asker");
        let other = build(BROADCAST, THEM, false, THEM, ip("198.51.100.10"), [0; 6], ip("198.51.100.201"));
        assert_eq!(answer(&other, US, owned), None);
        // Our own announcements looping back are not answered.
        assert_eq!(answer(&gratuitous_request(US, ip("198.51.100.200")), US, owned), None);
        // Nor a foreign host's announcement: it is a claim (a conflict), not a question.
        let foreign = gratuitous_request(THEM, ip("198.51.100.200"));
        assert_eq!(answer(&foreign, US, owned), None);
        assert_eq!(parse(&foreign).and_then(|a| a.claim()), Some((ip("198.51.100.200"), THEM)));
        // Requests from broadcast, multicast or zero sender MACs get no answer (RFC 826 answers
        // the sender).
        for bad in [BROADCAST, [0; 6], [0x01, 0, 0x5e, 0, 0, 1]] {
            let r = build(BROADCAST, THEM, false, bad, ip("198.51.100.10"), [0; 6], ip("198.51.100.200"));
            assert_eq!(answer(&r, US, owned), None, "{bad:?}");
        }
        // Standing in for a restarting owner: its MAC in the answer, ours as the frame's source.
        const OWNER: Mac = [0x02, 0, 0, 0, 0, 3];
        let (_, frame) = answer(&request, US, |_| Some(OWNER)).unwrap();
        assert_eq!(parse(&frame).and_then(|a| a.claim()), Some((ip("198.51.100.200"), OWNER)));
        assert_eq!(&frame[6..12], &US);
    }

    #[test]
    fn gratuitous_frames_claim_the_address_for_everyone() {
        let vip = ip("198.51.100.200");
        for frame in [gratuitous_request(US, vip), gratuitous_reply(US, vip)] {
            assert_eq!(&frame[0..6], &BROADCAST);
            let arp = parse(&frame).unwrap();
            assert_eq!(arp.claim(), Some((vip, US)));
        }
        let probe = build(BROADCAST, THEM, false, THEM, Ipv4Addr::UNSPECIFIED, [0; 6], vip);
        assert_eq!(parse(&probe).unwrap().claim(), None, "a probe claims nothing");
    }

    proptest! {
        #[test]
        fn malformed_frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = parse(&bytes);
            let _ = answer(&bytes, US, |_| Some(US));
        }

        #[test]
        fn arp_shaped_garbage_never_panics(body in proptest::collection::vec(any::<u8>(), 0..40)) {
            let mut frame = vec![0xff; 12];
            frame.extend_from_slice(&[0x08, 0x06]);
            frame.extend(body);
            let _ = parse(&frame);
        }

        #[test]
        fn replies_round_trip(a: u32, b: u32, m1: [u8; 6], m2: [u8; 6]) {
            let frame = reply(m1, a.into(), m2, b.into());
            prop_assert_eq!(parse(&frame), Some(Arp::Reply { sender_mac: m1, sender_ip: a.into(), target_mac: m2, target_ip: b.into() }));
        }
    }
}
