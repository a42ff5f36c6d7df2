//! What a host on the LAN sees: ARP and NDP answers, asked for from the client's namespace with
//! raw frames, as `arping` and `ndisc6` would.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

// The speaker's own frame code builds the questions, so the lab asks exactly as hosts do.
use ferrolb_speaker::l2::{arp, ndp};
use pnet::datalink::{self, Channel};

use super::netns::{self, LabError};

fn parse_mac(text: &str) -> [u8; 6] {
    let mut mac = [0u8; 6];
    for (i, part) in text.split(':').enumerate().take(6) {
        mac[i] = u8::from_str_radix(part, 16).unwrap_or(0);
    }
    mac
}

/// Sends `request` on `iface` inside `ns` and collects, for `window`, the MACs that `pick`
/// finds in the frames that come back.
/// The two ends of a raw Ethernet channel.
type Ethernet = (Box<dyn datalink::DataLinkSender>, Box<dyn datalink::DataLinkReceiver>);

/// A raw Ethernet channel on `iface` of the calling thread's namespace, reads waiting at most
/// `read_timeout`.
fn ethernet(iface: &str, read_timeout: Option<Duration>) -> Result<Ethernet, LabError> {
    let nic = datalink::interfaces()
        .into_iter()
        .find(|i| i.name == iface)
        .ok_or_else(|| LabError::Io(std::io::Error::other("no such interface")))?;
    match datalink::channel(&nic, datalink::Config { read_timeout, ..Default::default() })? {
        Channel::Ethernet(tx, rx) => Ok((tx, rx)),
        _ => Err(LabError::Io(std::io::Error::other("not Ethernet"))),
    }
}

fn ask(
    ns: &str,
    iface: &str,
    request: Vec<u8>,
    window: Duration,
    pick: impl Fn(&[u8]) -> Option<[u8; 6]> + Send,
) -> Result<BTreeSet<[u8; 6]>, LabError> {
    netns::in_ns(ns, move || -> Result<BTreeSet<[u8; 6]>, LabError> {
        let (mut tx, mut rx) = ethernet(iface, Some(Duration::from_millis(20)))?;
        tx.send_to(&request, None);
        let deadline = Instant::now() + window;
        let mut macs = BTreeSet::new();
        while Instant::now() < deadline {
            if let Ok(frame) = rx.next()
                && let Some(mac) = pick(frame)
            {
                macs.insert(mac);
            }
        }
        Ok(macs)
    })?
}

/// The client's ARP request for `target`: a gratuitous request's shape with its own sender address.
fn arp_request(client_mac: &str, client_ip: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut request = arp::gratuitous_request(parse_mac(client_mac), target);
    request[28..32].copy_from_slice(&client_ip.octets());
    request
}

/// The MACs that answer an ARP request for `target` from the client.
pub fn arp_who_has(
    ns: &str,
    iface: &str,
    client_mac: &str,
    client_ip: Ipv4Addr,
    target: Ipv4Addr,
) -> Result<BTreeSet<[u8; 6]>, LabError> {
    let request = arp_request(client_mac, client_ip, target);
    ask(ns, iface, request, Duration::from_millis(400), move |f| match arp::parse(f)? {
        arp::Arp::Reply { sender_mac, sender_ip, target_ip, .. } if sender_ip == target && target_ip == client_ip => {
            Some(sender_mac)
        }
        _ => None,
    })
}

/// The MACs that answer an ARP request for `target` sent tagged for VLAN `vlan` (802.1Q), as a
/// host on that VLAN asks through a trunk.
pub fn arp_who_has_on_vlan(
    ns: &str,
    iface: &str,
    client_mac: &str,
    client_ip: Ipv4Addr,
    target: Ipv4Addr,
    vlan: u16,
) -> Result<BTreeSet<[u8; 6]>, LabError> {
    let request = arp_request(client_mac, client_ip, target);
    let mut tagged = request[..12].to_vec();
    tagged.extend_from_slice(&[0x81, 0x00]);
    tagged.extend_from_slice(&(vlan & 0x0fff).to_be_bytes());
    tagged.extend_from_slice(&request[12..]);
    ask(ns, iface, tagged, Duration::from_millis(400), move |f| {
        // An answer in any shape: untagged (parsed as is) or tagged (the tag taken out).
        let untagged: Vec<u8> = if f.get(12..14) == Some(&[0x81, 0x00][..]) {
            f[..12].iter().chain(&f[16..]).copied().collect()
        } else {
            f.to_vec()
        };
        match arp::parse(&untagged)? {
            arp::Arp::Reply { sender_mac, sender_ip, .. } if sender_ip == target => Some(sender_mac),
            _ => None,
        }
    })
}

/// The MACs that answer a Neighbor Solicitation for `target` from the client.
pub fn ndp_who_has(
    ns: &str,
    iface: &str,
    client_mac: &str,
    client_ip: Ipv6Addr,
    target: Ipv6Addr,
) -> Result<BTreeSet<[u8; 6]>, LabError> {
    let me = parse_mac(client_mac);
    let request = ndp::solicit(me, client_ip, target, true, None);
    ask(ns, iface, request, Duration::from_millis(400), move |f| match ndp::parse(f)? {
        ndp::Ndp::Advert { target: t, target_ll, eth_src } if t == target => Some(target_ll.unwrap_or(eth_src)),
        _ => None,
    })
}

/// The client kernel's neighbour entry for `ip` (its MAC), if any.
pub fn neighbour(ns: &str, ip: &str) -> Option<String> {
    let out = netns::ip_in(ns, &["neigh", "show", ip]).ok()?;
    let mut words = out.split_whitespace();
    while let Some(w) = words.next() {
        if w == "lladdr" {
            return words.next().map(String::from);
        }
    }
    None
}

/// Makes the client's kernel resolve `ip` (a short TCP connection attempt to it).
pub fn resolve(ns: &str, ip: std::net::IpAddr) {
    let _ = netns::in_ns(ns, || {
        std::net::TcpStream::connect_timeout(&std::net::SocketAddr::new(ip, 9), Duration::from_millis(300))
    });
}

/// Formats a MAC as `ip` prints it.
pub fn mac_text(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Sends raw frames on `iface` inside `ns` (a foreign host claiming an address, say).
pub fn send_frames(ns: &str, iface: &str, frames: Vec<Vec<u8>>) -> Result<(), LabError> {
    netns::in_ns(ns, move || -> Result<(), LabError> {
        let (mut tx, _rx) = ethernet(iface, None)?;
        for f in frames {
            tx.send_to(&f, None);
        }
        Ok(())
    })?
}

/// A client's MAC in bytes.
pub fn mac_bytes(text: &str) -> [u8; 6] {
    parse_mac(text)
}

/// GETs `path` from `addr` inside `ns` (a speaker's /metrics, say).
pub fn http_get_in(ns: &str, addr: std::net::SocketAddr, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    netns::in_ns(ns, || {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    })
    .ok()
    .flatten()
}

/// Round-trip times of `count` ARP requests for `target`, one after the other, from the client:
/// each is the time from sending the request to reading its reply.
pub fn arp_rtts(
    ns: &str,
    iface: &str,
    client_mac: &str,
    client_ip: Ipv4Addr,
    target: Ipv4Addr,
    count: usize,
) -> Result<Vec<Duration>, LabError> {
    let me = parse_mac(client_mac);
    let iface = iface.to_string();
    netns::in_ns(ns, move || -> Result<Vec<Duration>, LabError> {
        let (mut tx, mut rx) = ethernet(&iface, Some(Duration::from_millis(5)))?;
        let mut request = arp::gratuitous_request(me, target);
        request[28..32].copy_from_slice(&client_ip.octets());
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            let sent = Instant::now();
            tx.send_to(&request, None);
            while sent.elapsed() < Duration::from_millis(500) {
                if let Ok(frame) = rx.next()
                    && matches!(arp::parse(frame), Some(arp::Arp::Reply { sender_ip, target_ip, .. }) if sender_ip == target && target_ip == client_ip)
                {
                    out.push(sent.elapsed());
                    break;
                }
            }
        }
        Ok(out)
    })?
}

/// One TCP exchange with `addr` from `ns`: the backend's whole answer.
pub fn tcp_once(ns: &str, addr: std::net::SocketAddr) -> Option<String> {
    use std::io::Read as _;
    netns::in_ns(ns, || {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    })
    .ok()
    .flatten()
}

/// Where the lab's speakers serve /metrics, inside their node's namespace.
pub const SPEAKER_METRICS: &str = "127.0.0.1:7474";

/// The /metrics text of the speaker in node namespace `ns` (the request runs off the runtime).
pub async fn speaker_metrics(ns: &str) -> Option<String> {
    let ns = ns.to_string();
    tokio::task::spawn_blocking(move || http_get_in(&ns, SPEAKER_METRICS.parse().ok()?, "/metrics")).await.ok()?
}

/// The value of the sample `name` (for counters with their `_total`) in /metrics text.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The handle of the first rule of `chain` in ferrolb's table whose text contains `needle`.
pub fn rule_handle(ns: &str, chain: &str, needle: &str) -> Option<String> {
    let listed = netns::exec(ns, "nft", &["-a", "list", "chain", "inet", "ferrolb", chain]).ok()?;
    listed.lines().filter(|l| l.contains(needle)).find_map(|l| Some(l.split("# handle ").nth(1)?.trim().to_string()))
}
