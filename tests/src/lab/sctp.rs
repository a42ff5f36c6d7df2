//! SCTP through the lab without an SCTP stack: the lab's kernel has conntrack and NAT for SCTP
//! but not SCTP sockets (`CONFIG_IP_SCTP` is off), so the client sends a real SCTP INIT on a raw
//! socket and the pods catch what arrives on raw sockets. That is enough to see nftables route
//! and rewrite an association's first packet, which is all forwarding decides.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use super::netns::{self, LabError};

const IPPROTO_SCTP: i32 = 132;

/// CRC32c (Castagnoli), the SCTP checksum (RFC 9260, appendix A).
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for b in data {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0x82f6_3b78 } else { crc >> 1 };
        }
    }
    !crc
}

/// An SCTP packet holding one INIT chunk from `src_port` to `dst_port`, checksummed.
pub fn init_packet(src_port: u16, dst_port: u16, tag: u32) -> Vec<u8> {
    let mut p = Vec::with_capacity(32);
    p.extend_from_slice(&src_port.to_be_bytes());
    p.extend_from_slice(&dst_port.to_be_bytes());
    p.extend_from_slice(&0u32.to_be_bytes()); // verification tag: 0 in an INIT
    p.extend_from_slice(&0u32.to_be_bytes()); // checksum, filled below
    p.extend_from_slice(&[1, 0]); // chunk type INIT, flags
    p.extend_from_slice(&20u16.to_be_bytes()); // chunk length
    p.extend_from_slice(&tag.to_be_bytes()); // initiate tag
    p.extend_from_slice(&65_535u32.to_be_bytes()); // advertised receiver window
    p.extend_from_slice(&1u16.to_be_bytes()); // outbound streams
    p.extend_from_slice(&1u16.to_be_bytes()); // inbound streams
    p.extend_from_slice(&tag.to_be_bytes()); // initial TSN
    // The checksum goes on the wire least significant byte first (as Linux's
    // sctp_compute_cksum stores it).
    let sum = crc32c(&p);
    p[8..12].copy_from_slice(&sum.to_le_bytes());
    p
}

fn raw_socket() -> Result<OwnedFd, LabError> {
    // SAFETY: plain socket(2); the result is checked and owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, IPPROTO_SCTP) };
    if fd < 0 {
        return Err(LabError::Io(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends an SCTP INIT from namespace `ns` to `to`.
pub fn send_init(ns: &str, to: SocketAddrV4, src_port: u16) -> Result<(), LabError> {
    netns::in_ns(ns, || {
        let fd = raw_socket()?;
        let packet = init_packet(src_port, to.port(), 0x5eed_0001);
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: u32::from(*to.ip()).to_be() },
            sin_zero: [0; 8],
        };
        // SAFETY: the buffer and address are valid for the lengths given.
        let n = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if n < 0 { Err(LabError::Io(std::io::Error::last_os_error())) } else { Ok(()) }
    })?
}

/// What a pod saw: the packet's source and destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caught {
    /// Source address (the client's, or a node's when masqueraded).
    pub from: Ipv4Addr,
    /// Destination address and SCTP port after forwarding.
    pub to: SocketAddrV4,
}

/// A raw SCTP socket in a pod's namespace.
pub struct Catcher(OwnedFd);

impl Catcher {
    /// Starts catching SCTP packets arriving in namespace `ns`.
    pub fn open(ns: &str) -> Result<Catcher, LabError> {
        let fd = netns::in_ns(ns, raw_socket)??;
        let timeout = libc::timeval { tv_sec: 0, tv_usec: 200_000 };
        // SAFETY: a valid option value of the right size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
        }
        Ok(Catcher(fd))
    }

    /// The INIT chunks that arrived within `wait`.
    pub fn inits(&self, wait: Duration) -> Vec<Caught> {
        let deadline = std::time::Instant::now() + wait;
        let mut out = Vec::new();
        let mut buf = [0u8; 2048];
        while std::time::Instant::now() < deadline {
            // SAFETY: the buffer is valid for its length.
            let n = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            let Ok(n) = usize::try_from(n) else { continue };
            let ihl = usize::from(buf[0] & 0x0f) * 4;
            if n < ihl + 13 || buf[ihl + 12] != 1 {
                continue;
            }
            let from = Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]);
            let to = Ipv4Addr::new(buf[16], buf[17], buf[18], buf[19]);
            let port = u16::from_be_bytes([buf[ihl + 2], buf[ihl + 3]]);
            out.push(Caught { from, to: SocketAddrV4::new(to, port) });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_rfc_check_value() {
        // RFC 3720 B.4 / the common CRC-32C check value of "123456789".
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
    }

    #[test]
    fn init_is_checksummed_over_itself() {
        let p = init_packet(40000, 9000, 7);
        assert_eq!(p.len(), 32);
        let mut zeroed = p.clone();
        zeroed[8..12].fill(0);
        assert_eq!(u32::from_le_bytes([p[8], p[9], p[10], p[11]]), crc32c(&zeroed));
        assert_eq!(&p[2..4], &9000u16.to_be_bytes());
    }
}
