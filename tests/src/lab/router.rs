//! The routed lab's upstream router: FRR (Debian's `frr`: zebra, bgpd, bfdd) in the router's
//! namespace, a BGP implementation other than the nodes' BIRD, peering with every node, with
//! ECMP over them. FRR runs as its `frr` user with this router's own socket and pid files, so
//! several labs can run side by side.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use super::netns::{self, LabError};
use super::topology::Topology;

/// The router's autonomous system.
pub const ROUTER_ASN: u32 = 64512;
/// The nodes' autonomous system (eBGP to the router).
pub const NODE_ASN: u32 = 64513;

/// How the router peers with the nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterConfig {
    /// The router's ASN.
    pub asn: u32,
    /// The ASN it expects of the nodes (its own for iBGP).
    pub node_asn: u32,
    /// TCP MD5 password of every session.
    pub password: Option<String>,
    /// BFD with every node: (receive ms, transmit ms, multiplier).
    pub bfd: Option<(u32, u32, u8)>,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self { asn: ROUTER_ASN, node_asn: NODE_ASN, password: None, bfd: None }
    }
}

/// FRR running in a namespace (the router's, or a node's with `--bgp external`); stopped when
/// dropped.
pub struct Router {
    /// Its namespace.
    pub namespace: String,
    dir: PathBuf,
}

const DAEMONS: [&str; 3] = ["zebra", "bfdd", "bgpd"];

/// FRR's configuration for `t`'s nodes.
pub fn render(t: &Topology, c: &RouterConfig) -> String {
    let mut out = format!(
        "frr defaults datacenter\nhostname router\nlog stdout informational\n!\n{}router bgp {}\n bgp router-id 198.51.100.1\n no bgp ebgp-requires-policy\n no bgp default ipv4-unicast\n bgp bestpath as-path multipath-relax\n",
        match c.bfd {
            Some((rx, tx, m)) => format!(
                "bfd\n profile nodes\n  receive-interval {rx}\n  transmit-interval {tx}\n  detect-multiplier {m}\n !\n!\n"
            ),
            None => String::new(),
        },
        c.asn
    );
    let neighbors: Vec<String> = t.nodes.iter().flat_map(|n| [n.ipv4.to_string(), n.ipv6.to_string()]).collect();
    for n in &neighbors {
        out.push_str(&format!(" neighbor {n} remote-as {}\n", c.node_asn));
        if let Some(p) = &c.password {
            out.push_str(&format!(" neighbor {n} password {p}\n"));
        }
        if c.bfd.is_some() {
            out.push_str(&format!(" neighbor {n} bfd profile nodes\n"));
        }
    }
    for (family, v4) in [("ipv4", true), ("ipv6", false)] {
        out.push_str(&format!(" address-family {family} unicast\n  maximum-paths 16\n  maximum-paths ibgp 16\n"));
        for n in neighbors.iter().filter(|n| n.contains('.') == v4) {
            out.push_str(&format!("  neighbor {n} activate\n"));
        }
        out.push_str(" exit-address-family\n");
    }
    out.push_str("!\n");
    out
}

impl Router {
    /// Starts FRR for the routed lab `t` with files in `dir`.
    pub fn start(t: &Topology, dir: &std::path::Path, c: &RouterConfig) -> Result<Self, LabError> {
        let routed = t.routed.as_ref().ok_or_else(|| LabError::Io(std::io::Error::other("the lab has no router")))?;
        Self::start_in(&routed.router.namespace, &dir.join("frr"), &render(t, c))
    }

    /// Starts FRR in `namespace` with `config` (FRR's integrated configuration) and its files in
    /// `dir`: the router's, or a node's own FRR.
    pub fn start_in(namespace: &str, dir: &std::path::Path, config: &str) -> Result<Self, LabError> {
        // A socket left by an FRR that died would stop the new one.
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)?;
        let conf = dir.join("frr.conf");
        std::fs::write(&conf, config)?;
        netns::run("chown", &["-R", "frr:frr", &dir.to_string_lossy()])?;
        let router = Self { namespace: namespace.to_string(), dir: dir.to_path_buf() };
        let path = |name: &str| router.dir.join(name).to_string_lossy().into_owned();
        for d in DAEMONS {
            let log = std::fs::File::create(router.dir.join(format!("{d}.log")))?;
            let mut args = vec![
                format!("/usr/lib/frr/{d}"),
                "-d".into(),
                "-f".into(),
                conf.to_string_lossy().into_owned(),
                "-i".into(),
                path(&format!("{d}.pid")),
                "-z".into(),
                path("zserv.api"),
                "--vty_socket".into(),
                path(""),
                "-u".into(),
                "frr".into(),
                "-g".into(),
                "frr".into(),
            ];
            if d == "bfdd" {
                // bfdd's own control socket, per instance.
                args.extend(["--bfdctl".into(), path("bfdd.sock")]);
            }
            let status = Command::new("ip")
                .args(["netns", "exec", &router.namespace])
                .args(&args)
                .stdout(log.try_clone()?)
                .stderr(log)
                .status()?;
            if !status.success() {
                return Err(LabError::Io(std::io::Error::other(format!("{d} did not start: {status}"))));
            }
        }
        Ok(router)
    }

    /// The directory of its vty sockets (`vtysh --vty_socket DIR`).
    pub fn vty_dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Runs `vtysh -c` commands against this router.
    pub fn vtysh(&self, commands: &[&str]) -> Result<String, LabError> {
        let mut args = vec!["--vty_socket".to_string(), self.dir.to_string_lossy().into_owned()];
        for c in commands {
            args.push("-c".into());
            args.push(c.to_string());
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        netns::run("vtysh", &refs)
    }

    /// The next hops of `prefix` in the router's forwarding table (what zebra installed).
    pub fn fib_next_hops(&self, prefix: &str) -> Vec<IpAddr> {
        let family = if prefix.contains(':') { "ipv6" } else { "ip" };
        let Ok(text) = self.vtysh(&[&format!("show {family} route {prefix} json")]) else { return Vec::new() };
        let Ok(json) = serde_json::from_str::<Value>(&text) else { return Vec::new() };
        let mut out: Vec<IpAddr> = json[prefix]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["installed"].as_bool() == Some(true))
            .flat_map(|r| r["nexthops"].as_array().cloned().unwrap_or_default())
            .filter(|h| h["fib"].as_bool() == Some(true))
            .filter_map(|h| h["ip"].as_str()?.parse().ok())
            .collect();
        out.sort();
        out
    }

    /// The next hop the router's kernel picks for each TCP flow from `src` (arriving on `iif`) to
    /// `dst`:80, one flow per source port in `sports` (None where it has no route): what its
    /// ECMP hashing does with each connection.
    pub fn flow_next_hops(
        &self,
        src: IpAddr,
        dst: IpAddr,
        iif: &str,
        sports: std::ops::Range<u16>,
    ) -> Vec<Option<IpAddr>> {
        let family = if dst.is_ipv4() { "-4" } else { "-6" };
        let script: String =
            sports.map(|p| format!("route get {dst} from {src} iif {iif} ipproto tcp sport {p} dport 80\n")).collect();
        // A file, not a pipe: ip answers while it reads, and a pipe both ways would deadlock.
        let file = self.dir.join("flows.batch");
        if std::fs::write(&file, script).is_err() {
            return Vec::new();
        }
        let out =
            netns::run("ip", &["-n", &self.namespace, family, "-batch", &file.to_string_lossy()]).unwrap_or_default();
        out.lines()
            .filter(|l| !l.starts_with(char::is_whitespace))
            .map(|l| l.split(" via ").nth(1).and_then(|r| r.split_whitespace().next()).and_then(|h| h.parse().ok()))
            .collect()
    }

    /// The BGP paths of `prefix` as FRR's JSON shows them (communities, local-pref, ...).
    pub fn bgp_paths(&self, prefix: &str) -> Vec<Value> {
        let family = if prefix.contains(':') { "ipv6" } else { "ipv4" };
        let Ok(text) = self.vtysh(&[&format!("show bgp {family} unicast {prefix} json")]) else { return Vec::new() };
        serde_json::from_str::<Value>(&text).ok().and_then(|j| j["paths"].as_array().cloned()).unwrap_or_default()
    }

    /// How many BFD sessions are up.
    pub fn bfd_up(&self) -> usize {
        let Ok(text) = self.vtysh(&["show bfd peers json"]) else { return 0 };
        serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|j| j.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter(|p| p["status"] == "up")
            .count()
    }

    /// How many times each Established neighbor's session came up, by address: unchanged while
    /// the session is never reset.
    pub fn establishments(&self) -> std::collections::BTreeMap<String, i64> {
        let Ok(text) = self.vtysh(&["show bgp neighbors json"]) else { return Default::default() };
        let Ok(json) = serde_json::from_str::<Value>(&text) else { return Default::default() };
        json.as_object()
            .into_iter()
            .flatten()
            .filter(|(_, n)| n["bgpState"] == "Established")
            .filter_map(|(addr, n)| Some((addr.clone(), n["connectionsEstablished"].as_i64()?)))
            .collect()
    }

    /// The state of every BGP neighbor, by address.
    pub fn neighbors(&self) -> std::collections::BTreeMap<String, String> {
        let Ok(text) = self.vtysh(&["show bgp neighbors json"]) else { return Default::default() };
        let Ok(json) = serde_json::from_str::<Value>(&text) else { return Default::default() };
        json.as_object()
            .into_iter()
            .flatten()
            .map(|(addr, n)| (addr.clone(), n["bgpState"].as_str().unwrap_or_default().to_string()))
            .collect()
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        for d in DAEMONS {
            if let Ok(pid) = std::fs::read_to_string(self.dir.join(format!("{d}.pid")))
                && let Ok(pid) = pid.trim().parse::<i32>()
            {
                // SAFETY: signalling a daemon this router started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}
