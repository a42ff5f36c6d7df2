//! conntrackd's configuration for a node (pure): FTFW replication over one multicast group on the
//! node's LAN interface, so every node holds every other node's replicated flows in its external
//! cache, ready to be committed when it takes an address over. Only flows the kernel reports are
//! replicated, and the node's own traffic (its addresses, loopback) is filtered out.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;

/// The multicast group (and UDP port) the speakers' conntrackd instances share.
pub const GROUP: &str = "225.0.0.50";
/// conntrackd's "Group": the UDP port of the multicast channel.
pub const PORT: u16 = 3780;

/// What a node's conntrackd needs to know.
#[derive(Debug, Clone)]
pub struct Node<'a> {
    /// The node's address on the LAN (its InternalIP): the multicast source.
    pub ip: IpAddr,
    /// The interface holding it.
    pub interface: &'a str,
    /// Where the lock file and the control socket live.
    pub dir: &'a Path,
}

/// The control socket's path.
pub fn socket(dir: &Path) -> std::path::PathBuf {
    dir.join("conntrackd.ctl")
}

/// The lock file's path.
pub fn lock(dir: &Path) -> std::path::PathBuf {
    dir.join("conntrackd.lock")
}

/// conntrackd.conf for `node`. IPv4 LANs only: conntrackd's multicast channel is IPv4 here (the
/// flows it carries may be of either family).
pub fn render(node: &Node) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Written by ferrolb-speaker: connection replication (docs/SPEAKER.md).");
    let _ = writeln!(out, "Sync {{\n\tMode FTFW {{\n\t\tDisableExternalCache Off\n\t\tStartupResync on\n\t}}");
    let _ = writeln!(out, "\tMulticast {{\n\t\tIPv4_address {GROUP}\n\t\tGroup {PORT}");
    let _ = writeln!(out, "\t\tIPv4_interface {}\n\t\tInterface {}", node.ip, node.interface);
    let _ = writeln!(out, "\t\tSndSocketBuffer 1249280\n\t\tRcvSocketBuffer 1249280\n\t\tChecksum on\n\t}}\n}}");
    let _ = writeln!(out, "General {{\n\tHashSize 32768\n\tHashLimit 131072\n\tLogFile off\n\tSyslog off");
    let _ = writeln!(out, "\tLockFile {}", lock(node.dir).display());
    let _ = writeln!(out, "\tUNIX {{\n\t\tPath {}\n\t}}", socket(node.dir).display());
    let _ = writeln!(out, "\tNetlinkBufferSize 2097152\n\tNetlinkBufferSizeMaxGrowth 8388608");
    let _ =
        writeln!(out, "\tFilter From Userspace {{\n\t\tProtocol Accept {{\n\t\t\tTCP\n\t\t\tUDP\n\t\t\tSCTP\n\t\t}}");
    let _ = writeln!(out, "\t\tAddress Ignore {{\n\t\t\tIPv4_address 127.0.0.1\n\t\t\tIPv6_address ::1");
    let family = if node.ip.is_ipv4() { "IPv4_address" } else { "IPv6_address" };
    let _ = writeln!(out, "\t\t\t{family} {}\n\t\t}}\n\t}}\n}}", node.ip);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_replicates_over_the_group_on_its_lan_interface_and_ignores_its_own_traffic() {
        let dir = Path::new("/run/ferrolb");
        let conf = render(&Node { ip: "198.51.100.11".parse().unwrap(), interface: "eth0", dir });
        for line in [
            "Mode FTFW {",
            "IPv4_address 225.0.0.50",
            "Group 3780",
            "IPv4_interface 198.51.100.11",
            "Interface eth0",
            "LockFile /run/ferrolb/conntrackd.lock",
            "Path /run/ferrolb/conntrackd.ctl",
            "IPv4_address 198.51.100.11",
        ] {
            assert!(conf.lines().any(|l| l.trim() == line), "{line} missing:\n{conf}");
        }
        assert_eq!(conf.matches('{').count(), conf.matches('}').count(), "{conf}");
    }
}
