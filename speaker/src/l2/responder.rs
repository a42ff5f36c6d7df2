//! Answers ARP requests and NDP solicitations for the addresses this node announces (and, standing
//! in for a restarting owner, for its addresses with its MAC), on one interface, from a blocking
//! thread with a raw (AF_PACKET) channel; sends gratuitous frames when asked; reports other hosts
//! claiming our addresses.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use pnet::datalink::{self, Channel};
use tokio::sync::{Notify, mpsc};

use super::interfaces::Interface;
use super::{Mac, arp, filter, ndp};

/// Something the responder saw that the speaker should know about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Another MAC claimed one of our addresses.
    Conflict {
        /// The address.
        ip: IpAddr,
        /// Who claimed it.
        mac: Mac,
        /// On which interface.
        interface: String,
    },
}

/// Counters of one responder.
#[derive(Debug, Default)]
pub struct Counters {
    /// Per address: requests/solicitations received and replies/advertisements sent.
    pub per_address: std::sync::Mutex<std::collections::HashMap<IpAddr, (u64, u64)>>,
    /// Gratuitous frames sent.
    pub gratuitous: AtomicU64,
}

/// A running responder on one interface.
pub struct Responder {
    /// The interface.
    pub interface: Interface,
    owned: Arc<RwLock<BTreeMap<IpAddr, Mac>>>,
    /// The raw socket's sending half, shared by the receiving thread (replies) and the loop
    /// (gratuitous frames): one thread per interface, not two.
    tx: Sender,
    stop: Arc<AtomicBool>,
    /// Its counters.
    pub counters: Arc<Counters>,
    groups: std::net::UdpSocket,
    joined: BTreeSet<Ipv6Addr>,
}

/// An AF_PACKET socket that receives nothing until pnet binds it to the interface (protocol 0),
/// with [`filter::program`] attached first, so no unfiltered frame is ever queued on it.
fn filtered_socket() -> std::io::Result<i32> {
    // SAFETY: plain system calls on a descriptor we own; the program outlives the setsockopt
    // call, which copies it into the kernel.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut insns: Vec<libc::sock_filter> =
            filter::program().into_iter().map(|(code, jt, jf, k)| libc::sock_filter { code, jt, jf, k }).collect();
        let prog = libc::sock_fprog { len: u16::try_from(insns.len()).unwrap_or(u16::MAX), filter: insns.as_mut_ptr() };
        let set = libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            std::ptr::from_ref(&prog).cast(),
            u32::try_from(std::mem::size_of::<libc::sock_fprog>()).unwrap_or(u32::MAX),
        );
        if set != 0 {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            return Err(e);
        }
        Ok(fd)
    }
}

impl Responder {
    /// Opens the interface and starts answering for whatever [`Responder::set_answered`] says.
    /// What it sees goes to `seen`, and `wake` is notified so the announcer looks at it.
    pub fn start(interface: Interface, seen: mpsc::Sender<Seen>, wake: Arc<Notify>) -> std::io::Result<Self> {
        let config = datalink::Config {
            read_timeout: Some(Duration::from_millis(100)),
            promiscuous: false,
            socket_fd: Some(filtered_socket()?),
            ..Default::default()
        };
        let iface = datalink::interfaces()
            .into_iter()
            .find(|i| i.index == interface.index)
            .ok_or_else(|| std::io::Error::other(format!("interface {} is gone", interface.name)))?;
        let (tx, mut rx) = match datalink::channel(&iface, config)? {
            Channel::Ethernet(tx, rx) => (Arc::new(std::sync::Mutex::new(tx)), rx),
            _ => return Err(std::io::Error::other("not an Ethernet channel")),
        };
        let owned: Arc<RwLock<BTreeMap<IpAddr, Mac>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let mac = interface.mac;
        let name = interface.name.clone();
        {
            let (owned, stop, counters, tx) = (owned.clone(), stop.clone(), counters.clone(), tx.clone());
            std::thread::Builder::new().name(format!("l2-rx-{name}")).spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(frame) = rx.next() else { continue };
                    let ours = |ip: IpAddr| owned.read().ok().and_then(|o| o.get(&ip).copied());
                    let reply =
                        arp::answer(frame, mac, |a| ours(IpAddr::V4(a))).map(|(ip, f)| (IpAddr::V4(ip), f)).or_else(
                            || ndp::answer(frame, mac, |a| ours(IpAddr::V6(a))).map(|(ip, f)| (IpAddr::V6(ip), f)),
                        );
                    if let Some((ip, f)) = reply {
                        let sent = send(&tx, &f);
                        let mut per = counters.per_address.lock().unwrap_or_else(|e| e.into_inner());
                        let entry = per.entry(ip).or_default();
                        entry.0 += 1;
                        entry.1 += u64::from(sent);
                        continue;
                    }
                    let claim =
                        arp::parse(frame).and_then(|a| a.claim()).map(|(ip, m)| (IpAddr::V4(ip), m)).or_else(|| {
                            match ndp::parse(frame) {
                                Some(ndp::Ndp::Advert { eth_src, target, target_ll }) => {
                                    Some((IpAddr::V6(target), target_ll.unwrap_or(eth_src)))
                                }
                                _ => None,
                            }
                        });
                    // Only addresses answered with our own MAC can conflict: a restarting owner
                    // announcing what we stand in for is expected.
                    if let Some((ip, m)) = claim
                        && m != mac
                        && ours(ip) == Some(mac)
                    {
                        // Full: the loop has plenty to judge already; this one adds nothing.
                        let _ = seen.try_send(Seen::Conflict { ip, mac: m, interface: name.clone() });
                        wake.notify_one();
                    }
                }
            })?;
        }
        let groups = std::net::UdpSocket::bind("[::]:0").or_else(|_| std::net::UdpSocket::bind("0.0.0.0:0"))?;
        Ok(Self { interface, owned, tx, stop, counters, groups, joined: BTreeSet::new() })
    }

    /// Sets the addresses to answer for, each with the MAC to answer with (joining their
    /// solicited-node groups); returns those answered with our own MAC that were not before.
    pub fn set_answered(&mut self, now: &BTreeMap<IpAddr, Mac>) -> Vec<IpAddr> {
        let mac = self.interface.mac;
        let new: Vec<IpAddr> = {
            let mut o = self.owned.write().unwrap_or_else(|e| e.into_inner());
            let new = now.iter().filter(|(ip, m)| **m == mac && o.get(ip) != Some(&mac)).map(|(ip, _)| *ip).collect();
            *o = now.clone();
            new
        };
        let wanted: BTreeSet<Ipv6Addr> = now
            .keys()
            .filter_map(|ip| match ip {
                IpAddr::V6(v6) => Some(ndp::solicited_node(*v6)),
                IpAddr::V4(_) => None,
            })
            .collect();
        for g in wanted.difference(&self.joined.clone()) {
            if self.groups.join_multicast_v6(g, self.interface.index).is_ok() {
                self.joined.insert(*g);
            }
        }
        for g in self.joined.clone().difference(&wanted) {
            let _ = self.groups.leave_multicast_v6(g, self.interface.index);
            self.joined.remove(g);
        }
        new
    }

    /// Sends gratuitous ARP (request and reply) or an unsolicited NA for `ip`.
    pub fn announce(&self, ip: IpAddr) {
        let frames = match ip {
            IpAddr::V4(v4) => {
                vec![arp::gratuitous_request(self.interface.mac, v4), arp::gratuitous_reply(self.interface.mac, v4)]
            }
            IpAddr::V6(v6) => vec![ndp::unsolicited(self.interface.mac, v6)],
        };
        for f in frames {
            if send(&self.tx, &f) {
                self.counters.gratuitous.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        // The receiving thread sees it within its read timeout and ends, closing the socket.
        self.stop.store(true, Ordering::Relaxed);
    }
}

type Sender = Arc<std::sync::Mutex<Box<dyn datalink::DataLinkSender>>>;

/// Sends one frame (a send on a raw socket does not block for long); whether it went out.
fn send(tx: &Sender, frame: &[u8]) -> bool {
    let mut tx = tx.lock().unwrap_or_else(|e| e.into_inner());
    matches!(tx.send_to(frame, None), Some(Ok(())))
}
