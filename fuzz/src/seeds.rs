//! Writes the seed corpus (`fuzz/corpus/<target>/`): well-formed inputs built with the product's
//! own builders, so the fuzzer starts from frames and messages the speaker really sees.
//! `cargo run --bin seeds` (in `fuzz/`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use ferrolb_speaker::l2::{arp, ndp};
use ferrolb_speaker::membership::heartbeat::{self, Heartbeat};

const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 7];

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    std::fs::create_dir_all(&dir).expect("corpus directory");
    std::fs::write(dir.join(name), bytes).expect("seed written");
}

fn main() {
    let vip = Ipv4Addr::new(198, 51, 100, 200);
    let client = Ipv4Addr::new(198, 51, 100, 100);
    // A request as a client sends it: a reply to our request builder's frame, read back.
    let request = {
        let mut f = arp::gratuitous_request(MAC, client);
        // Target the VIP (the last four bytes of the ARP body).
        let n = f.len();
        f[n - 4..].copy_from_slice(&vip.octets());
        f
    };
    write("arp", "request", &request);
    write("arp", "reply", &arp::reply(MAC, vip, [0x02, 0, 0, 0, 0, 8], client));
    write("arp", "gratuitous", &arp::gratuitous_reply(MAC, vip));
    let v6: Ipv6Addr = "2001:db8:100::200".parse().expect("static");
    let from: Ipv6Addr = "2001:db8:100::100".parse().expect("static");
    write("ndp", "solicit", &ndp::solicit(MAC, from, v6, true, None));
    write("ndp", "solicit-unicast", &ndp::solicit(MAC, from, v6, false, Some([0x02, 0, 0, 0, 0, 8])));
    write("ndp", "dad", &ndp::solicit(MAC, Ipv6Addr::UNSPECIFIED, v6, false, None));
    write("ndp", "unsolicited", &ndp::unsolicited(MAC, v6));
    let hb = Heartbeat {
        node: "node-1".into(),
        incarnation: 7,
        sequence: 42,
        sent_at_ms: 1_764_000_000_000,
        leaving: false,
        restarting: false,
        settling: false,
        claims: [(IpAddr::V4(vip), MAC), (IpAddr::V6(v6), MAC)].into_iter().collect(),
    };
    write("heartbeat", "plain", &heartbeat::encode(&hb, None));
    write("heartbeat", "signed", &heartbeat::encode(&hb, Some(b"fuzzing-secret")));
    write("heartbeat", "restarting", &heartbeat::encode(&Heartbeat { restarting: true, ..hb.clone() }, None));
    write("heartbeat", "leaving", &heartbeat::encode(&Heartbeat { leaving: true, ..hb }, None));
    for (i, entry) in [
        "198.51.100.0/24",
        "198.51.100.10-198.51.100.20",
        "203.0.113.7",
        "2001:db8::/120",
        "2001:db8::1-2001:db8::ff",
        "10.0.0.0/8",
    ]
    .iter()
    .enumerate()
    {
        write("address", &format!("entry-{i}"), entry.as_bytes());
    }
    for (i, text) in [
        "0=lan\n1=198.51.100.7\n2=web",
        "1=198.51.100.7,2001:db8::7\n10=IPv4,IPv6\n11=RequireDualStack",
        "3=lan\n4=198.51.100.7\n5=web",
        "9=198.51.100.9\n11=PreferDualStack",
        "0=lan\n3=other",
    ]
    .iter()
    .enumerate()
    {
        write("annotations", &format!("service-{i}"), text.as_bytes());
    }
}
