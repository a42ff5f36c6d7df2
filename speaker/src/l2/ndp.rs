//! NDP (IPv6) frames: parse Neighbor Solicitations and Advertisements, build solicited and
//! unsolicited Advertisements, and decide whether a solicitation deserves an answer. Pure.
//!
//! Unlike MetalLB, a solicitation without a source link-layer option (a unicast reachability
//! probe, RFC 4861 §7.2.4) is answered too — to the frame's source MAC — so switches and routers
//! do not lose the neighbour.

use std::net::Ipv6Addr;

use pnet::packet::Packet;
use pnet::packet::ethernet::{EtherTypes, EthernetPacket, MutableEthernetPacket};
use pnet::packet::icmpv6::ndp::{NdpOptionTypes, NeighborAdvertPacket, NeighborSolicitPacket};
use pnet::packet::icmpv6::{self, Icmpv6Packet, Icmpv6Types};
use pnet::packet::ip::IpNextHeaderProtocols;
use pnet::packet::ipv6::{Ipv6Packet, MutableIpv6Packet};
use pnet::util::MacAddr;

use super::Mac;

/// All-nodes multicast, where unsolicited advertisements go.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// An NDP message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ndp {
    /// Who has `target`?
    Solicit {
        /// The Ethernet source.
        eth_src: Mac,
        /// The IPv6 source (unspecified for duplicate address detection).
        src: Ipv6Addr,
        /// The address asked about.
        target: Ipv6Addr,
        /// The source link-layer address option, when present.
        source_ll: Option<Mac>,
    },
    /// `target` is at `target_ll`.
    Advert {
        /// The Ethernet source.
        eth_src: Mac,
        /// The address advertised.
        target: Ipv6Addr,
        /// The target link-layer address option, when present.
        target_ll: Option<Mac>,
    },
}

/// The Ethernet multicast MAC of an IPv6 multicast address (33:33 + the last 32 bits).
pub fn multicast_mac(group: Ipv6Addr) -> Mac {
    let o = group.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

/// The solicited-node multicast group of an address (ff02::1:ffXX:XXXX), which the speaker joins
/// so that solicitations for its addresses reach it.
pub fn solicited_node(addr: Ipv6Addr) -> Ipv6Addr {
    let o = addr.octets();
    Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00 | u16::from(o[13]), u16::from_be_bytes([o[14], o[15]]))
}

fn ll_option(options: &[u8], kind: u8) -> Option<Mac> {
    // Options are type, length (in units of 8 bytes), data; walk them by hand so a malformed
    // length cannot loop or overrun.
    let mut rest = options;
    while rest.len() >= 8 {
        let len = usize::from(rest[1]) * 8;
        if len == 0 || len > rest.len() {
            return None;
        }
        if rest[0] == kind && len >= 8 {
            return Some([rest[2], rest[3], rest[4], rest[5], rest[6], rest[7]]);
        }
        rest = &rest[len..];
    }
    None
}

/// Whether every option has a non-zero length and they fill the rest of the message exactly.
fn options_valid(options: &[u8]) -> bool {
    let mut rest = options;
    while !rest.is_empty() {
        let len = rest.get(1).map_or(0, |l| usize::from(*l) * 8);
        if len == 0 || len > rest.len() {
            return false;
        }
        rest = &rest[len..];
    }
    true
}

/// Parses an Ethernet frame; None for anything that is not a valid NS or NA as RFC 4861 §7.1
/// says: hop limit 255, code 0, a correct ICMPv6 checksum, no multicast target or source, options
/// of non-zero length; a solicitation from the unspecified address (duplicate address detection)
/// goes to the target's solicited-node group and carries no source link-layer option; an
/// advertisement to a multicast group is not marked solicited.
pub fn parse(frame: &[u8]) -> Option<Ndp> {
    let eth = EthernetPacket::new(frame)?;
    if eth.get_ethertype() != EtherTypes::Ipv6 {
        return None;
    }
    let ip = Ipv6Packet::new(eth.payload())?;
    if ip.get_next_header() != IpNextHeaderProtocols::Icmpv6 || ip.get_hop_limit() != 255 {
        return None;
    }
    let payload_len = usize::from(ip.get_payload_length());
    let body = ip.payload().get(..payload_len)?;
    let icmp = Icmpv6Packet::new(body)?;
    if icmp.get_icmpv6_code().0 != 0
        || icmpv6::checksum(&icmp, &ip.get_source(), &ip.get_destination()) != icmp.get_checksum()
    {
        return None;
    }
    let eth_src = eth.get_source().octets();
    match icmp.get_icmpv6_type() {
        Icmpv6Types::NeighborSolicit => {
            let ns = NeighborSolicitPacket::new(body)?;
            let options = body.get(24..)?;
            let (src, target) = (ip.get_source(), ns.get_target_addr());
            let source_ll = ll_option(options, NdpOptionTypes::SourceLLAddr.0);
            let dad_ok =
                !src.is_unspecified() || (ip.get_destination() == solicited_node(target) && source_ll.is_none());
            if target.is_multicast() || src.is_multicast() || !options_valid(options) || !dad_ok {
                return None;
            }
            Some(Ndp::Solicit { eth_src, src, target, source_ll })
        }
        Icmpv6Types::NeighborAdvert => {
            let na = NeighborAdvertPacket::new(body)?;
            let options = body.get(24..)?;
            let solicited = na.get_flags() & 0x40 != 0;
            if na.get_target_addr().is_multicast()
                || !options_valid(options)
                || (solicited && ip.get_destination().is_multicast())
            {
                return None;
            }
            Some(Ndp::Advert {
                eth_src,
                target: na.get_target_addr(),
                target_ll: ll_option(options, NdpOptionTypes::TargetLLAddr.0),
            })
        }
        _ => None,
    }
}

/// An Ethernet frame carrying one ICMPv6 message: `icmp` is the message with its checksum field
/// zero; the checksum over the IPv6 pseudo-header is filled in here.
fn icmpv6_frame(eth_src: Mac, eth_dst: Mac, src: Ipv6Addr, dst: Ipv6Addr, icmp: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 54 + icmp.len()];
    {
        let mut eth = MutableEthernetPacket::new(&mut buf).expect("fits");
        eth.set_destination(MacAddr::from(eth_dst));
        eth.set_source(MacAddr::from(eth_src));
        eth.set_ethertype(EtherTypes::Ipv6);
    }
    {
        let mut ip = MutableIpv6Packet::new(&mut buf[14..]).expect("fits");
        ip.set_version(6);
        ip.set_payload_length(icmp.len() as u16);
        ip.set_next_header(IpNextHeaderProtocols::Icmpv6);
        // RFC 4861 requires 255 on every NDP message.
        ip.set_hop_limit(255);
        ip.set_source(src);
        ip.set_destination(dst);
    }
    buf[54..].copy_from_slice(icmp);
    let sum = icmpv6::checksum(&Icmpv6Packet::new(&buf[54..]).expect("fits"), &src, &dst);
    buf[56..58].copy_from_slice(&sum.to_be_bytes());
    buf
}

/// A Neighbor Advertisement for `target` at `our_mac`, from `target` to `to_ip` via `to_mac`.
/// Override is always set, so a takeover replaces the old entry at once.
pub fn advert(our_mac: Mac, target: Ipv6Addr, to_mac: Mac, to_ip: Ipv6Addr, solicited: bool) -> Vec<u8> {
    advert_for(our_mac, our_mac, target, to_mac, to_ip, solicited)
}

/// An advertisement that `target` is at `at`, sent from `our_mac` (a stand-in for a restarting
/// owner keeps its own MAC as the frame's source).
fn advert_for(our_mac: Mac, at: Mac, target: Ipv6Addr, to_mac: Mac, to_ip: Ipv6Addr, solicited: bool) -> Vec<u8> {
    let mut icmp = [0u8; 32];
    icmp[0] = Icmpv6Types::NeighborAdvert.0;
    // Flags: Router (0x80) no, Solicited (0x40) as asked, Override (0x20) yes.
    icmp[4] = if solicited { 0x60 } else { 0x20 };
    icmp[8..24].copy_from_slice(&target.octets());
    icmp[24] = NdpOptionTypes::TargetLLAddr.0;
    icmp[25] = 1;
    icmp[26..32].copy_from_slice(&at);
    icmpv6_frame(our_mac, to_mac, target, to_ip, &icmp)
}

/// An unsolicited advertisement to all nodes: the IPv6 counterpart of a gratuitous ARP.
pub fn unsolicited(our_mac: Mac, target: Ipv6Addr) -> Vec<u8> {
    advert(our_mac, target, multicast_mac(ALL_NODES), ALL_NODES, false)
}

/// The advertisement `frame` deserves, if it solicits an address `owned` says we answer for,
/// with the MAC `owned` gives (ours, or a restarting owner's).
pub fn answer(frame: &[u8], our_mac: Mac, owned: impl Fn(Ipv6Addr) -> Option<Mac>) -> Option<(Ipv6Addr, Vec<u8>)> {
    match parse(frame)? {
        Ndp::Solicit { eth_src, src, target, source_ll } if eth_src != our_mac => {
            let at = owned(target)?;
            if src.is_unspecified() {
                // Duplicate address detection: answer all nodes, not solicited (RFC 4861 §7.2.4).
                return Some((target, advert_for(our_mac, at, target, multicast_mac(ALL_NODES), ALL_NODES, false)));
            }
            // No source link-layer option: a unicast probe; reply to the MAC it came from.
            let to_mac = source_ll.unwrap_or(eth_src);
            Some((target, advert_for(our_mac, at, target, to_mac, src, true)))
        }
        _ => None,
    }
}

/// A Neighbor Solicitation (used by tests and the lab's client to ask like a host would).
pub fn solicit(
    our_mac: Mac,
    src: Ipv6Addr,
    target: Ipv6Addr,
    with_source_ll: bool,
    unicast_to: Option<Mac>,
) -> Vec<u8> {
    let (dst_ip, dst_mac) = match unicast_to {
        Some(mac) => (target, mac),
        None => (solicited_node(target), multicast_mac(solicited_node(target))),
    };
    let mut icmp = vec![0u8; if with_source_ll { 32 } else { 24 }];
    icmp[0] = Icmpv6Types::NeighborSolicit.0;
    icmp[8..24].copy_from_slice(&target.octets());
    if with_source_ll {
        icmp[24] = NdpOptionTypes::SourceLLAddr.0;
        icmp[25] = 1;
        icmp[26..32].copy_from_slice(&our_mac);
    }
    icmpv6_frame(our_mac, dst_mac, src, dst_ip, &icmp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const US: Mac = [0x02, 0, 0, 0, 0, 1];
    const THEM: Mac = [0x02, 0, 0, 0, 0, 2];

    fn ip(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn multicast_addresses() {
        assert_eq!(solicited_node(ip("2001:db8::1:2345")), ip("ff02::1:ff01:2345"));
        assert_eq!(multicast_mac(ip("ff02::1:ff01:2345")), [0x33, 0x33, 0xff, 0x01, 0x23, 0x45]);
    }

    #[test]
    fn solicitations_are_answered_with_or_without_source_link_layer() {
        let vip = ip("2001:db8::100");
        let client = ip("2001:db8::10");
        let owned = |a: Ipv6Addr| (a == vip).then_some(US);
        let ns = solicit(THEM, client, vip, true, None);
        assert_eq!(parse(&ns), Some(Ndp::Solicit { eth_src: THEM, src: client, target: vip, source_ll: Some(THEM) }));
        let (_, na) = answer(&ns, US, owned).unwrap();
        assert_eq!(parse(&na), Some(Ndp::Advert { eth_src: US, target: vip, target_ll: Some(US) }));
        assert_eq!(&na[0..6], &THEM);
        assert_eq!(na[54 + 4], 0x60, "solicited and override");
        // A unicast reachability probe without the option is answered to its Ethernet source.
        let probe = solicit(THEM, client, vip, false, Some(US));
        let (_, na) = answer(&probe, US, owned).expect("probes are answered");
        assert_eq!(&na[0..6], &THEM);
        // Duplicate address detection gets an all-nodes advertisement.
        let dad = solicit(THEM, Ipv6Addr::UNSPECIFIED, vip, false, None);
        let (_, na) = answer(&dad, US, owned).unwrap();
        assert_eq!(&na[0..6], &multicast_mac(ALL_NODES));
        // Not ours: silence.
        assert_eq!(answer(&solicit(THEM, client, ip("2001:db8::101"), true, None), US, owned), None);
        // Standing in for a restarting owner: its MAC in the option, ours as the frame's source.
        const OWNER: Mac = [0x02, 0, 0, 0, 0, 3];
        let (_, na) = answer(&ns, US, |_| Some(OWNER)).unwrap();
        assert_eq!(parse(&na), Some(Ndp::Advert { eth_src: US, target: vip, target_ll: Some(OWNER) }));
    }

    #[test]
    fn bad_checksums_and_hop_limits_are_ignored() {
        let vip = ip("2001:db8::100");
        let mut ns = solicit(THEM, ip("2001:db8::10"), vip, true, None);
        ns[54 + 2] ^= 0xff;
        assert_eq!(parse(&ns), None);
        let mut ns = solicit(THEM, ip("2001:db8::10"), vip, true, None);
        ns[14 + 7] = 64;
        assert_eq!(parse(&ns), None);
    }

    #[test]
    fn invalid_messages_are_ignored_as_rfc_4861_says() {
        let vip = ip("2001:db8::100");
        let client = ip("2001:db8::10");
        let owned = |a: Ipv6Addr| (a == vip || a.is_multicast()).then_some(US);
        let fixed = |mut f: Vec<u8>| {
            // Recompute the checksum after an edit, so only the edit is wrong.
            f[56] = 0;
            f[57] = 0;
            let src = Ipv6Addr::from(<[u8; 16]>::try_from(&f[22..38]).unwrap());
            let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&f[38..54]).unwrap());
            let sum = icmpv6::checksum(&Icmpv6Packet::new(&f[54..]).unwrap(), &src, &dst);
            f[56..58].copy_from_slice(&sum.to_be_bytes());
            f
        };
        assert!(answer(&solicit(THEM, client, vip, true, None), US, owned).is_some(), "the valid one");
        // A multicast target or source.
        assert_eq!(answer(&solicit(THEM, client, ip("ff02::1"), true, None), US, owned), None);
        assert_eq!(answer(&solicit(THEM, ip("ff02::1"), vip, true, None), US, owned), None);
        // An option of length zero.
        let mut zero = solicit(THEM, client, vip, true, None);
        zero[54 + 24 + 1] = 0;
        assert_eq!(answer(&fixed(zero), US, owned), None);
        // Code not zero.
        let mut coded = solicit(THEM, client, vip, true, None);
        coded[55] = 1;
        assert_eq!(answer(&fixed(coded), US, owned), None);
        // Duplicate address detection with a source link-layer option, or not to the solicited-node group.
        assert_eq!(answer(&solicit(THEM, Ipv6Addr::UNSPECIFIED, vip, true, None), US, owned), None);
        let mut unicast_dad = solicit(THEM, Ipv6Addr::UNSPECIFIED, vip, false, None);
        unicast_dad[38..54].copy_from_slice(&vip.octets());
        assert_eq!(answer(&fixed(unicast_dad), US, owned), None);
        // A solicited advertisement to a multicast group is no claim.
        let mut na = advert(THEM, vip, US, client, true);
        na[38..54].copy_from_slice(&ALL_NODES.octets());
        assert_eq!(parse(&fixed(na)), None);
    }

    #[test]
    fn unsolicited_adverts_override_for_all_nodes() {
        let na = unsolicited(US, ip("2001:db8::100"));
        assert_eq!(&na[0..6], &[0x33, 0x33, 0, 0, 0, 1]);
        assert_eq!(na[54 + 4], 0x20);
        assert_eq!(parse(&na), Some(Ndp::Advert { eth_src: US, target: ip("2001:db8::100"), target_ll: Some(US) }));
    }

    proptest! {
        #[test]
        fn malformed_frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = parse(&bytes);
            let _ = answer(&bytes, US, |_| Some(US));
        }

        #[test]
        fn ipv6_shaped_garbage_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..100), len: u16) {
            let mut frame = vec![0x33; 12];
            frame.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
            frame.extend_from_slice(&len.to_be_bytes());
            frame.extend_from_slice(&[58, 255]);
            frame.extend(tail);
            let _ = parse(&frame);
        }

        #[test]
        fn adverts_round_trip(t: u128, d: u128, m1: [u8; 6], m2: [u8; 6]) {
            prop_assume!(!Ipv6Addr::from(t).is_multicast() && !Ipv6Addr::from(d).is_multicast());
            let frame = advert(m1, t.into(), m2, d.into(), true);
            prop_assert_eq!(parse(&frame), Some(Ndp::Advert { eth_src: m1, target: t.into(), target_ll: Some(m1) }));
        }
    }
}
