//! What the soak believes the cluster should be: the Services and pools it wrote, the processes,
//! links and Pods it broke, and the API faults in force. Pure; the driver keeps it in step with
//! what it does, and the checks compare the cluster with it.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ferrolb_crds::annotations::{IPS, POOL, SHARING_KEY};
use serde_json::{Value, json};

/// Nodes (each with a speaker and a backend Pod) and controller replicas in the soak's lab.
pub const NODES: usize = 3;
/// Controller replicas (one leads).
pub const CONTROLLERS: usize = 2;
/// At most this many Services exist at once (so that `base` always has room for all of them).
pub const MAX_SERVICES: usize = 10;
/// Sharing keys Services choose from: few, so that sharers meet.
pub const KEYS: [&str; 2] = ["k1", "k2"];

/// A Service port's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    /// As Kubernetes spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        }
    }
}

/// A Service as the soak wrote it (in `default`, selecting the `echo` Pods, target port 8080).
#[derive(Debug, Clone, PartialEq)]
pub struct Svc {
    /// Its name.
    pub name: String,
    /// Its ports; the first is TCP (the connection check uses it).
    pub ports: Vec<(Proto, u16)>,
    /// `externalTrafficPolicy: Local`.
    pub local: bool,
    /// `RequireDualStack` (IPv4 first); SingleStack IPv4 otherwise.
    pub dual: bool,
    /// An address asked for with `ferrolb.io/ips` (always from the `fixed` pool).
    pub requested: Option<Ipv4Addr>,
    /// A pool asked for with `ferrolb.io/pool`.
    pub pool: Option<&'static str>,
    /// `ferrolb.io/sharing-key`.
    pub key: Option<&'static str>,
}

impl Svc {
    /// Whether the two may share an address (DESIGN.md's rule; every Service has the same
    /// selector, so two Local ones are compatible).
    pub fn compatible(&self, other: &Svc) -> bool {
        self.key.is_some()
            && self.key == other.key
            && self.local == other.local
            && !self.ports.iter().any(|p| other.ports.contains(p))
    }

    /// The Service object (for create, or merged into the current one for an update).
    pub fn manifest(&self) -> Value {
        let mut annotations = serde_json::Map::new();
        if let Some(ip) = self.requested {
            annotations.insert(IPS.name.into(), json!(ip.to_string()));
        }
        if let Some(pool) = self.pool {
            annotations.insert(POOL.name.into(), json!(pool));
        }
        if let Some(key) = self.key {
            annotations.insert(SHARING_KEY.name.into(), json!(key));
        }
        let ports: Vec<Value> = self
            .ports
            .iter()
            .map(|(proto, port)| {
                json!({"name": format!("{}-{port}", proto.as_str().to_lowercase()), "protocol": proto.as_str(),
                    "port": port, "targetPort": 8080})
            })
            .collect();
        let (policy, families) =
            if self.dual { ("RequireDualStack", json!(["IPv4", "IPv6"])) } else { ("SingleStack", json!(["IPv4"])) };
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": self.name, "namespace": "default", "annotations": annotations},
            "spec": {"type": "LoadBalancer", "selector": {"app": "echo"}, "ports": ports,
                "externalTrafficPolicy": if self.local { "Local" } else { "Cluster" },
                "ipFamilyPolicy": policy, "ipFamilies": families}
        })
    }
}

/// A pool as the soak wrote it: one IPv4 range and optionally one IPv6 range.
#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    /// Its name.
    pub name: &'static str,
    /// First and last IPv4 address.
    pub v4: (Ipv4Addr, Ipv4Addr),
    /// First and last IPv6 address.
    pub v6: Option<(Ipv6Addr, Ipv6Addr)>,
    /// `autoAssign`.
    pub auto: bool,
    /// `priority`.
    pub priority: Option<i32>,
    /// `disabled`.
    pub disabled: bool,
}

impl Pool {
    /// Whether `ip` is one of its addresses.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => (self.v4.0..=self.v4.1).contains(&v4),
            IpAddr::V6(v6) => self.v6.is_some_and(|(a, b)| (a..=b).contains(&v6)),
        }
    }

    /// How many addresses of each family it has (the status' `total`: the soak's ranges hold no
    /// special or reserved address).
    pub fn totals(&self) -> (u64, u64) {
        let v4 = u64::from(u32::from(self.v4.1) - u32::from(self.v4.0)) + 1;
        let v6 = self.v6.map_or(0, |(a, b)| (u128::from(b) - u128::from(a)) as u64 + 1);
        (v4, v6)
    }

    /// Every address, IPv4 first.
    pub fn addresses(&self) -> Vec<IpAddr> {
        let v4 = (u32::from(self.v4.0)..=u32::from(self.v4.1)).map(|a| IpAddr::V4(a.into()));
        let v6 = self.v6.into_iter().flat_map(|(a, b)| (u128::from(a)..=u128::from(b)).map(|x| IpAddr::V6(x.into())));
        v4.chain(v6).collect()
    }

    /// Its `spec`, complete (an update replaces the whole spec: a field left out is unset).
    pub fn spec(&self) -> Value {
        let mut addresses = vec![format!("{}-{}", self.v4.0, self.v4.1)];
        if let Some((a, b)) = self.v6 {
            addresses.push(format!("{a}-{b}"));
        }
        let mut spec = json!({"addresses": addresses, "autoAssign": self.auto, "disabled": self.disabled});
        if let Some(p) = self.priority {
            spec["priority"] = json!(p);
        }
        spec
    }
}

/// The pool every Service without other wishes can always be addressed from.
pub fn base_pool() -> Pool {
    Pool {
        name: "base",
        v4: (Ipv4Addr::new(198, 51, 100, 20), Ipv4Addr::new(198, 51, 100, 49)),
        v6: Some(("2001:db8:100::200".parse().expect("static"), "2001:db8:100::23f".parse().expect("static"))),
        auto: true,
        priority: None,
        disabled: false,
    }
}

/// The pool requested addresses come from: never assigned automatically, so a request is never
/// refused because an automatic allocation took the address first.
pub fn fixed_pool() -> Pool {
    Pool {
        name: "fixed",
        v4: (Ipv4Addr::new(198, 51, 100, 130), Ipv4Addr::new(198, 51, 100, 139)),
        v6: None,
        auto: false,
        priority: None,
        disabled: false,
    }
}

/// The pool the soak adds, shrinks, grows, reprioritises, disables and deletes: `size` addresses
/// of each family from 198.51.100.160 and 2001:db8:100::160.
pub fn extra_pool(size: u8, priority: Option<i32>, disabled: bool) -> Pool {
    let size = size.clamp(1, 16);
    let v6: Ipv6Addr = "2001:db8:100::160".parse().expect("static");
    Pool {
        name: "extra",
        v4: (Ipv4Addr::new(198, 51, 100, 160), Ipv4Addr::new(198, 51, 100, 160 + size - 1)),
        v6: Some((v6, (u128::from(v6) + u128::from(size) - 1).into())),
        auto: true,
        priority,
        disabled,
    }
}

/// The soak's picture of the cluster.
#[derive(Debug, Clone)]
pub struct World {
    /// Services by name.
    pub services: BTreeMap<String, Svc>,
    /// Pools by name: `base` and `fixed` always, `extra` at times.
    pub pools: BTreeMap<&'static str, Pool>,
    /// Which controller replicas run.
    pub controllers: [bool; CONTROLLERS],
    /// Which speakers run.
    pub speakers: [bool; NODES],
    /// Which nodes' LAN links are up.
    pub links: [bool; NODES],
    /// Which nodes' `echo` Pods are Ready (at least one always is).
    pub ready: [bool; NODES],
    /// API latency in force.
    pub latency_ms: u64,
    /// Whether the controllers' Lease requests are held.
    pub leases_held: bool,
    /// The number the next new Service is named after.
    pub next_service: u32,
}

impl Default for World {
    fn default() -> Self {
        Self {
            services: BTreeMap::new(),
            pools: [base_pool(), fixed_pool()].into_iter().map(|p| (p.name, p)).collect(),
            controllers: [true; CONTROLLERS],
            speakers: [true; NODES],
            links: [true; NODES],
            ready: [true; NODES],
            latency_ms: 0,
            leases_held: false,
            next_service: 0,
        }
    }
}

impl World {
    /// Whether the soak expects Service `s` to be addressed at a quiet point (when it does not,
    /// the answer depends on who came first, and only "no incompatible sharing" is checked).
    pub fn must_fit(&self, s: &Svc) -> bool {
        let others = || self.services.values().filter(move |o| o.name != s.name);
        if s.pool.is_some_and(|p| p != "base") {
            // `extra` may be full, disabled or gone: its Services fit or not by timing.
            return false;
        }
        match s.requested {
            // Asked-for addresses clash with other askers and, through sharing, with any Service
            // of the same key that sits on them.
            Some(ip) => {
                others().all(|o| (o.requested != Some(ip) && o.key.is_none_or(|k| s.key != Some(k))) || s.compatible(o))
            }
            None => true,
        }
    }

    /// Where Service `s`'s addresses may come from.
    pub fn allowed_pools(&self, s: &Svc) -> Vec<&Pool> {
        let wanted: &[&str] = match (s.requested, s.pool) {
            (Some(_), _) => &["fixed"],
            (None, Some("base")) => &["base"],
            (None, Some(_)) => &["extra"],
            (None, None) => &["base", "extra"],
        };
        wanted.iter().filter_map(|n| self.pools.get(n)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, ports: &[u16], key: Option<&'static str>, requested: Option<u8>) -> Svc {
        Svc {
            name: name.into(),
            ports: ports.iter().map(|p| (Proto::Tcp, *p)).collect(),
            local: false,
            dual: false,
            requested: requested.map(|o| Ipv4Addr::new(198, 51, 100, o)),
            pool: None,
            key,
        }
    }

    #[test]
    fn sharing_needs_one_key_disjoint_ports_and_one_policy() {
        let a = svc("a", &[80], Some("k1"), None);
        assert!(a.compatible(&svc("b", &[443], Some("k1"), None)));
        assert!(!a.compatible(&svc("b", &[80], Some("k1"), None)), "a port in common");
        assert!(!a.compatible(&svc("b", &[443], Some("k2"), None)), "another key");
        assert!(!svc("a", &[80], None, None).compatible(&svc("b", &[443], None, None)), "no key");
        let mut local = svc("b", &[443], Some("k1"), None);
        local.local = true;
        assert!(!a.compatible(&local), "Cluster and Local");
    }

    #[test]
    fn a_request_must_fit_only_when_nobody_can_stand_in_its_way() {
        let mut w = World::default();
        let lone = svc("a", &[80], None, Some(130));
        w.services.insert("a".into(), lone.clone());
        assert!(w.must_fit(&lone));
        w.services.insert("b".into(), svc("b", &[80], None, Some(130)));
        assert!(!w.must_fit(&lone), "two unkeyed Services ask for one address");
        let keyed = svc("a", &[80], Some("k1"), Some(130));
        w.services.insert("a".into(), keyed.clone());
        w.services.insert("b".into(), svc("b", &[443], Some("k1"), Some(130)));
        assert!(w.must_fit(&keyed), "compatible sharers");
        w.services.insert("c".into(), svc("c", &[80], Some("k1"), None));
        assert!(!w.must_fit(&keyed), "a same-key Service with port 80 may sit on the address first");
        let mut in_extra = svc("d", &[80], None, None);
        in_extra.pool = Some("extra");
        assert!(!w.must_fit(&in_extra));
        assert!(w.must_fit(&svc("e", &[80], Some("k1"), None)), "automatic allocation always has room");
    }

    #[test]
    fn pools_render_whole_specs_and_know_their_addresses() {
        let p = extra_pool(3, Some(5), true);
        assert_eq!(
            p.spec(),
            json!({"addresses": ["198.51.100.160-198.51.100.162", "2001:db8:100::160-2001:db8:100::162"],
                "autoAssign": true, "disabled": true, "priority": 5})
        );
        assert_eq!(p.totals(), (3, 3));
        assert_eq!(p.addresses().len(), 6);
        assert!(p.contains("2001:db8:100::162".parse().unwrap()) && !p.contains("198.51.100.163".parse().unwrap()));
        assert_eq!(extra_pool(4, None, false).spec().get("priority"), None);
        assert_eq!(base_pool().totals(), (30, 64));
    }
}
