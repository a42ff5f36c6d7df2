//! BIRD 2's configuration for this node, and what its `show protocols all` says, pure.
//!
//! BIRD learns the routes to advertise from the speaker's kernel table (protocol kernel, `learn`,
//! only routes of ferrolb's route protocol number) and exports each to the peers of its class,
//! with the class's communities and LOCAL_PREF, chosen by the route's metric. So the file changes
//! only when peers or route classes change, never when an address does.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use super::peers::PeerView;
use super::routes::RouteClass;
use super::table::ROUTE_PROTOCOL;

/// Everything the configuration is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config<'a> {
    /// The node, named in a comment.
    pub node: &'a str,
    /// BGP router id (the node's IPv4 address, or one derived from its name).
    pub router_id: Ipv4Addr,
    /// The kernel table the speaker writes.
    pub table: u32,
    /// The peers this node has sessions with.
    pub peers: &'a [PeerView],
    /// The route classes by number.
    pub classes: &'a BTreeMap<u32, RouteClass>,
}

/// BIRD's name of a peer's protocol: a symbol made of the BGPPeer's name (dots and dashes turn
/// to underscores) and a hash of it, so that two names that read alike stay apart and a name
/// keeps its protocol, hence its session, across reconfigurations.
pub fn protocol_name(peer: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in peer.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    let readable: String = peer.chars().take(40).map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    format!("peer_{readable}_{:06x}", h & 0xff_ffff)
}

/// A community in BIRD's filter language: the statement that adds it, or None for text the
/// CRD's pattern let through but that does not fit (a part above 65535).
pub fn community(text: &str) -> Option<String> {
    let well_known = |v: u32| Some(format!("bgp_community.add((65535, {v}));"));
    match text {
        "no-export" => return well_known(65281),
        "no-advertise" => return well_known(65282),
        "no-export-subconfed" => return well_known(65283),
        "no-peer" => return well_known(65284),
        "blackhole" => return well_known(666),
        "graceful-shutdown" => return well_known(0),
        _ => {}
    }
    let parts: Vec<u64> = text.split(':').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    match parts[..] {
        [a, b] if a <= 0xffff && b <= 0xffff => Some(format!("bgp_community.add(({a}, {b}));")),
        [a, b, c] if [a, b, c].iter().all(|p| *p <= u64::from(u32::MAX)) => {
            Some(format!("bgp_large_community.add(({a}, {b}, {c}));"))
        }
        _ => None,
    }
}

/// Derives a router id for a node without an IPv4 address (stable, from its name).
pub fn router_id_for(name: &str) -> Ipv4Addr {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    Ipv4Addr::from(h | 0x0100_0000)
}

/// The configuration file.
pub fn render(c: &Config<'_>) -> String {
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "# BIRD 2 configuration of node {}, written by ferrolb-speaker; do not edit.", c.node);
    let _ = writeln!(
        w,
        "# Routes come from kernel table {} (proto {ROUTE_PROTOCOL}); the metric is the route class.",
        c.table
    );
    let _ = writeln!(w, "router id {};", c.router_id);
    let _ = writeln!(w, "log stderr {{ info, remote, warning, error, auth, fatal, bug }};");
    // A BIRD started to recover (a speaker restarted in place, `bird -R`) holds its end-of-RIB
    // until its routes are exported, but no longer than this: well within the routers' 120 s.
    let _ = writeln!(w, "graceful restart wait 20;");
    let _ = writeln!(w, "protocol device {{ scan time 10; }}");
    for (family, v) in [("ipv4", 4), ("ipv6", 6)] {
        let _ = writeln!(w, "{family} table ferrolb{v};");
        let _ = writeln!(
            w,
            "protocol kernel ferrolb_kernel{v} {{\n  kernel table {};\n  learn;\n  scan time 10;\n  {family} {{ table ferrolb{v}; import where krt_source = {ROUTE_PROTOCOL}; export none; }};\n}}",
            c.table
        );
    }
    if c.peers.iter().any(|p| p.bfd.is_some()) {
        let _ = writeln!(w, "protocol bfd ferrolb_bfd {{}}");
    }
    for p in c.peers {
        let name = protocol_name(&p.name);
        let family = if p.address.is_ipv4() { "ipv4" } else { "ipv6" };
        let _ = writeln!(w, "filter export_{name} {{");
        for (id, class) in c.classes.iter().filter(|(_, class)| class.peers.contains(&p.name)) {
            let _ = write!(w, "  if krt_metric = {id} then {{");
            for stmt in class.communities.iter().filter_map(|t| community(t)) {
                let _ = write!(w, " {stmt}");
            }
            if let Some(pref) = class.local_pref.filter(|_| p.internal()) {
                let _ = write!(w, " bgp_local_pref = {pref};");
            }
            let _ = writeln!(w, " accept; }}");
        }
        let _ = writeln!(w, "  reject;\n}}");
        let _ = writeln!(w, "protocol bgp {name} {{");
        let _ = writeln!(w, "  description \"BGPPeer {}\";", p.name);
        let _ = writeln!(w, "  local as {};", p.my_asn);
        let _ = writeln!(w, "  neighbor {} port {} as {};", p.address, p.port, p.peer_asn);
        // After an error (a BFD down among them) try again in 2 s, backing off to 60 s; BIRD's
        // own 60 s first wait would keep a recovered node out for a minute.
        let _ = writeln!(w, "  error wait time 2, 60;");
        if p.multihop {
            let _ = writeln!(w, "  multihop;");
        }
        if let Some(hold) = p.hold {
            let _ = writeln!(w, "  hold time {};", hold.as_secs());
            if p.keepalive.is_none() && hold.as_secs() >= 3 {
                let _ = writeln!(w, "  keepalive time {};", hold.as_secs() / 3);
            }
        }
        if let Some(keepalive) = p.keepalive {
            let _ = writeln!(w, "  keepalive time {};", keepalive.as_secs().max(1));
        }
        if let Some(password) = &p.password {
            let _ = writeln!(w, "  password \"{password}\";");
        }
        if let Some((rx, tx, multiplier)) = p.bfd {
            let _ =
                writeln!(w, "  bfd {{ min rx interval {rx} ms; min tx interval {tx} ms; multiplier {multiplier}; }};");
        }
        if p.graceful_restart {
            let _ = writeln!(w, "  graceful restart on;");
        }
        let v = if p.address.is_ipv4() { 4 } else { 6 };
        let _ = writeln!(
            w,
            "  {family} {{ table ferrolb{v}; import none; export filter export_{name}; next hop self; }};\n}}"
        );
    }
    out
}

/// One BGP protocol's state as `birdc show protocols all` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Session {
    /// `Idle`, `Connect`, `Active`, `OpenSent`, `OpenConfirm`, `Established` (or `Down` when the
    /// protocol is down).
    pub state: String,
    /// The last error BIRD recorded, if any.
    pub last_error: Option<String>,
    /// Routes exported (advertised) to the peer.
    pub exported: Option<u64>,
}

/// The BGP protocols in `birdc show protocols all` output, by protocol name.
pub fn parse_protocols(text: &str) -> BTreeMap<String, Session> {
    let mut out = BTreeMap::new();
    let mut current: Option<(String, Session)> = None;
    for line in text.lines() {
        let indented = line.starts_with(char::is_whitespace);
        if !indented {
            if let Some((name, s)) = current.take() {
                out.insert(name, s);
            }
            let cols: Vec<&str> = line.split_whitespace().collect();
            if let [name, "BGP", _table, state, ..] = cols[..] {
                let state = if state == "up" { "Established" } else { "Idle" };
                current = Some((name.to_string(), Session { state: state.into(), ..Session::default() }));
            }
            continue;
        }
        let Some((_, s)) = current.as_mut() else { continue };
        let Some((key, value)) = line.trim().split_once(':') else { continue };
        let value = value.trim();
        match key {
            "BGP state" => s.state = value.to_string(),
            "Last error" if !value.is_empty() => s.last_error = Some(value.to_string()),
            "Routes" => {
                // "1 imported, 2 exported, 0 preferred"
                s.exported =
                    value.split(',').find_map(|part| part.trim().strip_suffix(" exported")?.trim().parse().ok());
            }
            _ => {}
        }
    }
    if let Some((name, s)) = current {
        out.insert(name, s);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::time::Duration;

    fn peer(name: &str, address: &str, asn: u32) -> PeerView {
        PeerView { peer_asn: asn, ..PeerView::example(name, address) }
    }

    fn classes() -> BTreeMap<u32, RouteClass> {
        let set = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        BTreeMap::from([
            (1, RouteClass { communities: vec![], local_pref: None, peers: set(&["tor-a", "tor-v6"]) }),
            (
                2,
                RouteClass {
                    communities: vec!["64512:100".into(), "no-export".into(), "4200000000:1:2".into()],
                    local_pref: Some(200),
                    peers: set(&["tor-a", "rr"]),
                },
            ),
        ])
    }

    /// A golden file: every option at once. A change of wording here is a change of what BIRD runs.
    #[test]
    fn renders_every_option() {
        let mut tor_a = peer("tor-a", "192.0.2.1", 64512);
        tor_a.hold = Some(Duration::from_secs(9));
        tor_a.password = Some("s3cret".into());
        tor_a.bfd = Some((100, 100, 3));
        tor_a.graceful_restart = true;
        let mut rr = peer("rr", "192.0.2.9", 64513);
        rr.multihop = true;
        rr.keepalive = Some(Duration::from_secs(5));
        let v6 = peer("tor-v6", "2001:db8::1", 64512);
        let peers = [tor_a, rr, v6];
        let classes = classes();
        let text = render(&Config {
            node: "node-1",
            router_id: "198.51.100.11".parse().unwrap(),
            table: 179,
            peers: &peers,
            classes: &classes,
        });
        let tor_a = protocol_name("tor-a");
        let rr = protocol_name("rr");
        let v6 = protocol_name("tor-v6");
        let expected = format!(
            r#"# BIRD 2 configuration of node node-1, written by ferrolb-speaker; do not edit.
# Routes come from kernel table 179 (proto 245); the metric is the route class.
router id 198.51.100.11;
log stderr {{ info, remote, warning, error, auth, fatal, bug }};
graceful restart wait 20;
protocol device {{ scan time 10; }}
ipv4 table ferrolb4;
protocol kernel ferrolb_kernel4 {{
  kernel table 179;
  learn;
  scan time 10;
  ipv4 {{ table ferrolb4; import where krt_source = 245; export none; }};
}}
ipv6 table ferrolb6;
protocol kernel ferrolb_kernel6 {{
  kernel table 179;
  learn;
  scan time 10;
  ipv6 {{ table ferrolb6; import where krt_source = 245; export none; }};
}}
protocol bfd ferrolb_bfd {{}}
filter export_{tor_a} {{
  if krt_metric = 1 then {{ accept; }}
  if krt_metric = 2 then {{ bgp_community.add((64512, 100)); bgp_community.add((65535, 65281)); bgp_large_community.add((4200000000, 1, 2)); accept; }}
  reject;
}}
protocol bgp {tor_a} {{
  description "BGPPeer tor-a";
  local as 64513;
  neighbor 192.0.2.1 port 179 as 64512;
  error wait time 2, 60;
  hold time 9;
  keepalive time 3;
  password "s3cret";
  bfd {{ min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }};
  graceful restart on;
  ipv4 {{ table ferrolb4; import none; export filter export_{tor_a}; next hop self; }};
}}
filter export_{rr} {{
  if krt_metric = 2 then {{ bgp_community.add((64512, 100)); bgp_community.add((65535, 65281)); bgp_large_community.add((4200000000, 1, 2)); bgp_local_pref = 200; accept; }}
  reject;
}}
protocol bgp {rr} {{
  description "BGPPeer rr";
  local as 64513;
  neighbor 192.0.2.9 port 179 as 64513;
  error wait time 2, 60;
  multihop;
  keepalive time 5;
  ipv4 {{ table ferrolb4; import none; export filter export_{rr}; next hop self; }};
}}
filter export_{v6} {{
  if krt_metric = 1 then {{ accept; }}
  reject;
}}
protocol bgp {v6} {{
  description "BGPPeer tor-v6";
  local as 64513;
  neighbor 2001:db8::1 port 179 as 64512;
  error wait time 2, 60;
  ipv6 {{ table ferrolb6; import none; export filter export_{v6}; next hop self; }};
}}
"#
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn protocol_names_are_symbols_that_keep_names_apart() {
        let a = protocol_name("tor-a.example");
        assert!(a.starts_with("peer_tor_a_example_") && a.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        assert_ne!(protocol_name("a-b"), protocol_name("a.b"));
        assert_eq!(protocol_name("tor-a"), protocol_name("tor-a"));
        assert!(protocol_name(&"x".repeat(253)).len() < 64);
    }

    #[test]
    fn communities_that_do_not_fit_are_dropped() {
        assert_eq!(community("64512:100").as_deref(), Some("bgp_community.add((64512, 100));"));
        assert_eq!(community("99999:1"), None);
        assert_eq!(community("1:2:99999999999"), None);
        assert_eq!(community("blackhole").as_deref(), Some("bgp_community.add((65535, 666));"));
    }

    #[test]
    fn parses_show_protocols_all() {
        let text = "BIRD 2.0.12 ready.
Name       Proto      Table      State  Since         Info
device1    Device     ---        up     18:11:33.858
peer_tor_a_1a2b3c BGP        ---        up     18:12:10.101  Established
  Description:    BGPPeer tor-a
  BGP state:          Established
    Neighbor address: 203.0.113.1
  Channel ipv4
    State:          UP
    Routes:         0 imported, 2 exported, 0 preferred
peer_rr_000001 BGP        ---        start  18:12:10.101  Active        Socket: Connection refused
  BGP state:          Active
    Neighbor address: 192.0.2.9
    Last error:       Socket: Connection refused
peer_off_000002 BGP        ---        down   18:12:10.101
";
        let got = parse_protocols(text);
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(
            got["peer_tor_a_1a2b3c"],
            Session { state: "Established".into(), last_error: None, exported: Some(2) }
        );
        assert_eq!(got["peer_rr_000001"].state, "Active");
        assert_eq!(got["peer_rr_000001"].last_error.as_deref(), Some("Socket: Connection refused"));
        assert_eq!(got["peer_off_000002"].state, "Idle");
    }
}
