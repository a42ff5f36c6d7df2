//! The classic BPF program on every responder's socket (pure): only untagged ARP and ICMPv6
//! frames reach the responder. The kernel hands a raw socket on the parent interface a VLAN-tagged
//! frame with its tag taken out (the tag travels beside the frame), so without this a request
//! asked on VLAN 100 of a trunk was answered untagged, into the wrong network; and the responder
//! no longer wakes for every other frame on the wire.

/// One instruction, as `struct sock_filter` holds it: opcode, jump offsets if true and if false,
/// and the constant.
pub type Insn = (u16, u8, u8, u32);

const LD_W_ABS: u16 = 0x20;
const LD_H_ABS: u16 = 0x28;
const LD_B_ABS: u16 = 0x30;
const JEQ_K: u16 = 0x15;
const RET_K: u16 = 0x06;
/// `SKF_AD_OFF + SKF_AD_VLAN_TAG_PRESENT`: the kernel's "this frame carried a VLAN tag".
const VLAN_TAG_PRESENT: u32 = 0xffff_f000 + 48;
const ETH_P_ARP: u32 = 0x0806;
const ETH_P_IPV6: u32 = 0x86dd;
const IPPROTO_ICMPV6: u32 = 58;
/// How much of an accepted frame is kept (all of it).
const KEEP: u32 = 0x4_0000;

/// The program: drop tagged frames; keep ARP, and IPv6 whose next header is ICMPv6; drop the rest.
pub fn program() -> Vec<Insn> {
    vec![
        (LD_W_ABS, 0, 0, VLAN_TAG_PRESENT),
        (JEQ_K, 0, 6, 0), // tagged → drop
        (LD_H_ABS, 0, 0, 12),
        (JEQ_K, 3, 0, ETH_P_ARP),  // → keep
        (JEQ_K, 0, 3, ETH_P_IPV6), // else → drop
        (LD_B_ABS, 0, 0, 20),
        (JEQ_K, 0, 1, IPPROTO_ICMPV6),
        (RET_K, 0, 0, KEEP),
        (RET_K, 0, 0, 0),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::l2::{arp, ndp};

    /// Runs the program the way the kernel would, for the opcodes it uses.
    fn run(prog: &[Insn], frame: &[u8], tagged: bool) -> u32 {
        let (mut pc, mut a) = (0usize, 0u32);
        loop {
            let (code, jt, jf, k) = prog[pc];
            let load = |n: usize| -> Option<u32> {
                let k = k as usize;
                frame.get(k..k + n).map(|b| b.iter().fold(0u32, |acc, x| (acc << 8) | u32::from(*x)))
            };
            match code {
                LD_W_ABS if k == VLAN_TAG_PRESENT => a = u32::from(tagged),
                LD_W_ABS => {
                    a = match load(4) {
                        Some(v) => v,
                        None => return 0,
                    }
                }
                LD_H_ABS => {
                    a = match load(2) {
                        Some(v) => v,
                        None => return 0,
                    }
                }
                LD_B_ABS => {
                    a = match load(1) {
                        Some(v) => v,
                        None => return 0,
                    }
                }
                JEQ_K => pc += usize::from(if a == k { jt } else { jf }),
                RET_K => return k,
                other => panic!("opcode {other:#x} not understood"),
            }
            pc += 1;
        }
    }

    #[test]
    fn untagged_arp_and_icmpv6_only() {
        let p = program();
        let mac = [2, 0, 0, 0, 0, 1];
        let arp = arp::gratuitous_request(mac, "198.51.100.7".parse().unwrap());
        let ns = ndp::solicit(mac, "2001:db8::1".parse().unwrap(), "2001:db8::7".parse().unwrap(), true, None);
        assert_eq!(run(&p, &arp, false), KEEP);
        assert_eq!(run(&p, &ns, false), KEEP);
        assert_eq!(run(&p, &arp, true), 0, "tagged: the tag was taken out of the frame, not of the skb");
        assert_eq!(run(&p, &ns, true), 0);
        let mut udp6 = ns.clone();
        udp6[20] = 17;
        assert_eq!(run(&p, &udp6, false), 0);
        let mut ipv4 = arp.clone();
        ipv4[12..14].copy_from_slice(&[0x08, 0x00]);
        assert_eq!(run(&p, &ipv4, false), 0);
        let mut in_frame_tag = arp[..12].to_vec();
        in_frame_tag.extend_from_slice(&[0x81, 0x00, 0x00, 0x64]);
        in_frame_tag.extend_from_slice(&arp[12..]);
        assert_eq!(run(&p, &in_frame_tag, false), 0);
        assert_eq!(run(&p, &[0u8; 10], false), 0, "short frames");
    }
}
