//! The `BGPPeer` custom resource (group `ferrolb.io`, version `v1alpha1`, cluster-scoped): a router
//! that the nodes' routing daemons open BGP sessions to.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A Go duration as Kubernetes writes them (`90s`, `1m30s`, `500ms`).
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

/// A router that nodes open BGP sessions to.
// Several printer columns share `type_ = "integer"`, which clippy mistakes for repeated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ferrolb.io",
    version = "v1alpha1",
    kind = "BGPPeer",
    plural = "bgppeers",
    singular = "bgppeer",
    shortname = "bgpp",
    category = "ferrolb",
    status = "BGPPeerStatus",
    derive = "PartialEq",
    doc = "A router that the nodes advertise LoadBalancer addresses to over BGP",
    printcolumn(name = "Address", type_ = "string", json_path = ".spec.peerAddress"),
    printcolumn(name = "ASN", type_ = "integer", json_path = ".spec.peerASN"),
    printcolumn(name = "Established", type_ = "integer", json_path = ".status.established"),
    printcolumn(name = "Selected", type_ = "integer", json_path = ".status.selected"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.holdTime) || !has(self.keepaliveTime) || duration(self.holdTime) == duration('0s') || duration(self.keepaliveTime) < duration(self.holdTime)",
    "message": "keepaliveTime must be shorter than holdTime"
}]))]
pub struct BGPPeerSpec {
    /// The router's address, IPv4 or IPv6.
    #[schemars(length(max = 45), extend("x-kubernetes-validations" = [{
        "rule": "isIP(self)", "message": "must be an IPv4 or IPv6 address"
    }]))]
    pub peer_address: String,

    /// The router's autonomous system number (1-4294967295).
    #[serde(rename = "peerASN")]
    #[schemars(range(min = 1, max = 4_294_967_295u32))]
    pub peer_asn: u32,

    /// The nodes' autonomous system number; equal to `peerASN` makes the session iBGP.
    #[serde(rename = "myASN")]
    #[schemars(range(min = 1, max = 4_294_967_295u32))]
    pub my_asn: u32,

    /// The router's BGP port.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,

    /// Which nodes peer with this router; every node when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,

    /// How long the session survives without a message (0s, or 3s to 65535s); the daemon's
    /// default (240s for BIRD) when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), regex(pattern = DURATION_PATTERN), extend("x-kubernetes-validations" = [{
        "rule": "duration(self) == duration('0s') || (duration(self) >= duration('3s') && duration(self) <= duration('65535s'))",
        "message": "must be 0s, or between 3s and 65535s"
    }]))]
    pub hold_time: Option<String>,

    /// How often keepalives are sent; a third of `holdTime` when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), regex(pattern = DURATION_PATTERN), extend("x-kubernetes-validations" = [{
        "rule": "duration(self) >= duration('1s') && duration(self) <= duration('65535s')",
        "message": "must be between 1s and 65535s"
    }]))]
    pub keepalive_time: Option<String>,

    /// The router is more than one hop away (eBGP multihop).
    #[serde(default)]
    pub ebgp_multi_hop: bool,

    /// TCP MD5 password, from a Secret in the speakers' namespace (never inline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret: Option<SecretKeyRef>,

    /// Bidirectional Forwarding Detection: a dead node's routes leave the router in
    /// `detectMultiplier` x `receiveIntervalMs` instead of the hold time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bfd: Option<Bfd>,

    /// Graceful restart (RFC 4724): the router keeps the routes while a node's daemon restarts.
    #[serde(default)]
    pub graceful_restart: bool,
}

impl BGPPeerSpec {
    /// What kube-apiserver refuses in this spec by the CRD's schema and rules, one line each with
    /// the field (empty: admitted). `ferrolb check` uses it offline; a lab test holds it to the CRD.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.peer_address.len() > 45 || self.peer_address.parse::<std::net::IpAddr>().is_err() {
            out.push(format!("spec.peerAddress {:?}: must be an IPv4 or IPv6 address", self.peer_address));
        }
        for (field, asn) in [("peerASN", self.peer_asn), ("myASN", self.my_asn)] {
            if asn == 0 {
                out.push(format!("spec.{field}: must be between 1 and 4294967295"));
            }
        }
        if self.port == 0 {
            out.push("spec.port: must be between 1 and 65535".into());
        }
        let secs =
            |field: &str, text: &Option<String>, ok: &dyn Fn(f64) -> bool, range: &str, out: &mut Vec<String>| {
                let t = text.as_deref()?;
                match duration(t) {
                    Some(d) if t.len() <= 32 && ok(d.as_secs_f64()) => Some(d),
                    Some(_) => {
                        out.push(format!("spec.{field} {t:?}: must be {range}"));
                        None
                    }
                    None => {
                        out.push(format!("spec.{field} {t:?}: not a duration (90s, 1m30s)"));
                        None
                    }
                }
            };
        let hold = secs(
            "holdTime",
            &self.hold_time,
            &|s| s == 0.0 || (3.0..=65535.0).contains(&s),
            "0s, or between 3s and 65535s",
            &mut out,
        );
        let keepalive = secs(
            "keepaliveTime",
            &self.keepalive_time,
            &|s| (1.0..=65535.0).contains(&s),
            "between 1s and 65535s",
            &mut out,
        );
        if let (Some(h), Some(k)) = (hold, keepalive)
            && !h.is_zero()
            && k >= h
        {
            out.push("spec: keepaliveTime must be shorter than holdTime".into());
        }
        if let Some(s) = &self.password_secret {
            for (field, v) in [("name", &s.name), ("key", &s.key)] {
                if v.is_empty() || v.len() > 253 {
                    out.push(format!("spec.passwordSecret.{field}: must be 1 to 253 characters"));
                }
            }
        }
        if let Some(b) = &self.bfd {
            for (field, ms) in
                [("receiveIntervalMs", b.receive_interval_ms), ("transmitIntervalMs", b.transmit_interval_ms)]
            {
                if !(10..=60000).contains(&ms) {
                    out.push(format!("spec.bfd.{field}: must be between 10 and 60000"));
                }
            }
            if b.detect_multiplier < 2 {
                out.push("spec.bfd.detectMultiplier: must be between 2 and 255".into());
            }
        }
        out
    }
}

/// A Go duration as the CRD admits it (`90s`, `1m30s`, `500ms`, `1.5h`); None when it is not one.
pub fn duration(text: &str) -> Option<std::time::Duration> {
    let mut total = std::time::Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit() && c != '.').filter(|&i| i > 0)?;
        let value: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (0.001, 2)
        } else {
            match rest.chars().next()? {
                's' => (1.0, 1),
                'm' => (60.0, 1),
                'h' => (3600.0, 1),
                _ => return None,
            }
        };
        rest = &rest[len..];
        total += std::time::Duration::try_from_secs_f64(value * unit).ok()?;
    }
    (!text.is_empty()).then_some(total)
}

fn default_port() -> u16 {
    179
}

/// A key of a Secret in the speakers' namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key holding the password.
    #[serde(default = "default_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_key() -> String {
    "password".into()
}

/// BFD settings of a peer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Bfd {
    /// Run BFD with this router.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Slowest rate at which we want its BFD packets (milliseconds).
    #[serde(default = "default_interval")]
    #[schemars(range(min = 10, max = 60000))]
    pub receive_interval_ms: u32,
    /// Fastest rate at which we send ours (milliseconds).
    #[serde(default = "default_interval")]
    #[schemars(range(min = 10, max = 60000))]
    pub transmit_interval_ms: u32,
    /// Packets missed before the session is down.
    #[serde(default = "default_multiplier")]
    #[schemars(range(min = 2, max = 255))]
    pub detect_multiplier: u8,
}

fn default_true() -> bool {
    true
}

fn default_interval() -> u32 {
    300
}

fn default_multiplier() -> u8 {
    3
}

/// What the nodes and the controller report about a peer.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BGPPeerStatus {
    /// One entry per node that peers with this router, each written by that node's speaker
    /// (server-side apply; a list keyed by node, so nodes never overwrite each other).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["node"]))]
    pub nodes: Vec<NodeSession>,
    /// Nodes selected to peer (controller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selected: Option<u32>,
    /// Selected nodes whose session is Established (controller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub established: Option<u32>,
    /// `Ready`: every selected node's session is Established; otherwise which are not, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// One node's session with the peer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeSession {
    /// The node.
    pub node: String,
    /// The BGP state: Idle, Connect, Active, OpenSent, OpenConfirm or Established.
    pub state: String,
    /// When the session entered this state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
    /// Why it is not Established, in the daemon's words (a wrong password, a wrong ASN, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The CRD as the YAML file the chart ships (`charts/ferrolb/crds/bgppeers.ferrolb.io.yaml`).
pub fn crd_yaml() -> Result<String, serde_norway::Error> {
    use kube::CustomResourceExt;
    let body = serde_norway::to_string(&BGPPeer::crd())?;
    Ok(format!("# Generated by `cargo run -p ferrolb-crds --bin crdgen`; do not edit.\n{body}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn durations_as_the_crd_admits_them() {
        assert_eq!(duration("90s"), Some(std::time::Duration::from_secs(90)));
        assert_eq!(duration("1m30s"), Some(std::time::Duration::from_secs(90)));
        assert_eq!(duration("500ms"), Some(std::time::Duration::from_millis(500)));
        assert_eq!(duration("1.5h"), Some(std::time::Duration::from_secs(5400)));
        for bad in ["", "s", "90", "9x", "-1s"] {
            assert_eq!(duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn problems_name_the_field_and_the_rule() {
        let spec = |extra: serde_json::Value| {
            let mut v = serde_json::json!({"peerAddress": "192.0.2.1", "peerASN": 64512, "myASN": 64513});
            v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            serde_json::from_value::<BGPPeerSpec>(v).unwrap().problems()
        };
        assert_eq!(
            spec(serde_json::json!({"holdTime": "90s", "keepaliveTime": "30s", "bfd": {}})),
            Vec::<String>::new()
        );
        assert_eq!(spec(serde_json::json!({"holdTime": "0s", "keepaliveTime": "30s"})), Vec::<String>::new());
        assert_eq!(
            spec(serde_json::json!({"peerAddress": "router"})),
            ["spec.peerAddress \"router\": must be an IPv4 or IPv6 address"]
        );
        assert_eq!(spec(serde_json::json!({"peerASN": 0})), ["spec.peerASN: must be between 1 and 4294967295"]);
        assert_eq!(
            spec(serde_json::json!({"holdTime": "2s"})),
            ["spec.holdTime \"2s\": must be 0s, or between 3s and 65535s"]
        );
        assert_eq!(
            spec(serde_json::json!({"holdTime": "ninety"})),
            ["spec.holdTime \"ninety\": not a duration (90s, 1m30s)"]
        );
        assert_eq!(
            spec(serde_json::json!({"holdTime": "9s", "keepaliveTime": "9s"})),
            ["spec: keepaliveTime must be shorter than holdTime"]
        );
        assert_eq!(spec(serde_json::json!({"bfd": {"detectMultiplier": 1, "receiveIntervalMs": 5}})).len(), 2);
        assert_eq!(
            spec(serde_json::json!({"passwordSecret": {"name": ""}})),
            ["spec.passwordSecret.name: must be 1 to 253 characters"]
        );
    }

    #[test]
    fn defaults_fill_in() {
        let spec: BGPPeerSpec = serde_json::from_value(serde_json::json!({
            "peerAddress": "192.0.2.1", "peerASN": 64512, "myASN": 64513,
            "bfd": {}, "passwordSecret": {"name": "md5"}
        }))
        .unwrap();
        assert_eq!(spec.port, 179);
        assert!(!spec.ebgp_multi_hop && !spec.graceful_restart);
        let bfd = spec.bfd.unwrap();
        assert!(bfd.enabled);
        assert_eq!((bfd.receive_interval_ms, bfd.transmit_interval_ms, bfd.detect_multiplier), (300, 300, 3));
        assert_eq!(spec.password_secret.unwrap().key, "password");
    }

    #[test]
    fn the_crd_validates_what_it_can_and_keys_node_entries() {
        let crd = serde_json::to_value(BGPPeer::crd()).unwrap();
        assert_eq!(crd["spec"]["scope"], "Cluster");
        let version = &crd["spec"]["versions"][0];
        let schema = &version["schema"]["openAPIV3Schema"]["properties"];
        let spec = &schema["spec"]["properties"];
        assert_eq!(spec["peerASN"]["minimum"], 1.0);
        assert_eq!(spec["peerASN"]["maximum"], 4_294_967_295.0);
        assert_eq!(spec["peerAddress"]["x-kubernetes-validations"][0]["rule"], "isIP(self)");
        assert!(spec["holdTime"]["pattern"].is_string());
        assert_eq!(spec["bfd"]["properties"]["detectMultiplier"]["minimum"], 2.0);
        assert!(schema["spec"]["x-kubernetes-validations"][0]["rule"].as_str().unwrap().contains("keepaliveTime"));
        let nodes = &schema["status"]["properties"]["nodes"];
        assert_eq!(nodes["x-kubernetes-list-type"], "map");
        assert_eq!(nodes["x-kubernetes-list-map-keys"][0], "node");
        // No field can hold a password itself.
        assert!(!serde_json::to_string(spec).unwrap().contains("\"password\":"));
        let columns: Vec<&str> = version["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(columns, ["Address", "ASN", "Established", "Selected", "Ready", "Age"]);
    }
}
