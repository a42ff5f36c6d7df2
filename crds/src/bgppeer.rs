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
