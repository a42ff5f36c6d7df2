//! The `IPPool` custom resource (group `ferrolb.io`, version `v1alpha1`, cluster-scoped).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use crate::addresses::{self, AddressError, AddressRange};

/// Longest address entry we accept; bounds the cost of the CEL rule on each entry.
pub const MAX_ENTRY_LEN: u64 = 100;
/// Most entries a pool may list; bounds the cost of validation and of the allocator.
pub const MAX_ENTRIES: u64 = 1024;

/// A pool of addresses that LoadBalancer Services are given EXTERNAL-IPs from.
// Several printer columns share `type_ = "integer"`, which clippy mistakes for repeated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ferrolb.io",
    version = "v1alpha1",
    kind = "IPPool",
    plural = "ippools",
    singular = "ippool",
    shortname = "ipp",
    category = "ferrolb",
    status = "IPPoolStatus",
    derive = "PartialEq",
    doc = "A pool of addresses that ferrolb hands out to LoadBalancer Services",
    printcolumn(name = "Addresses", type_ = "string", json_path = ".spec.addresses"),
    printcolumn(name = "Auto-Assign", type_ = "boolean", json_path = ".spec.autoAssign"),
    printcolumn(name = "IPv4 Used", type_ = "integer", json_path = ".status.ipv4.used"),
    printcolumn(name = "IPv4 Available", type_ = "integer", json_path = ".status.ipv4.available"),
    printcolumn(name = "IPv6 Used", type_ = "integer", json_path = ".status.ipv6.used"),
    printcolumn(name = "IPv6 Available", type_ = "integer", json_path = ".status.ipv6.available"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct IPPoolSpec {
    /// CIDRs (`192.168.2.0/28`), single addresses, or ranges `start-end`; IPv4 and IPv6 may mix.
    #[schemars(schema_with = "addresses_schema")]
    pub addresses: Vec<String>,

    /// When false, the pool is used only by Services that ask for it by name or address.
    #[serde(default = "default_true")]
    pub auto_assign: bool,

    /// Skip every address ending in .0 or .255 (some old devices drop traffic to them).
    #[serde(default, rename = "avoidBuggyIPs")]
    pub avoid_buggy_ips: bool,

    /// Order among pools (MetalLB's rule): pools whose serviceAllocation selects the Service
    /// first, then within each group ascending priority, pools without one after those with one,
    /// then by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub priority: Option<i32>,

    /// Keep existing allocations but make no new ones (to drain a pool).
    #[serde(default)]
    pub disabled: bool,

    /// Whether Services of different namespaces may share one of its addresses (with one sharing
    /// key, as MetalLB allows); false keeps every shared address within one namespace.
    #[serde(default = "default_true")]
    pub share_across_namespaces: bool,

    /// Which Services may use this pool; a pool that has one is tried first for the Services it
    /// selects, and never used for the others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_allocation: Option<ServiceAllocation>,

    /// Layer-2 (ARP/NDP) announcement from one elected node; on when neither `l2` nor an
    /// enabled `bgp` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l2: Option<L2Settings>,

    /// BGP advertisement from every eligible node (ECMP at the router); off unless enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp: Option<BgpSettings>,
}

fn default_true() -> bool {
    true
}

/// Which Services may take addresses from a pool, as MetalLB reads it: the Service's namespace
/// must be listed in `namespaces` OR selected by `namespaceSelector` (either, when both are
/// given), AND the Service must match `serviceSelector` when one is given.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAllocation {
    /// Namespaces whose Services may use the pool (joined with `namespaceSelector`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Labels of namespaces whose Services may use the pool (joined with `namespaces`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Labels the Service must carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_selector: Option<LabelSelector>,
}

/// Layer-2 (ARP/NDP) announcement settings of a pool.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct L2Settings {
    /// Announce this pool's addresses over ARP/NDP.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Only nodes with these labels announce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    /// Interface names or globs (`enp*`) to announce on; empty means every suitable interface.
    /// At most 32 patterns of at most 64 characters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 64)))]
    pub interfaces: Vec<String>,
}

impl Default for L2Settings {
    fn default() -> Self {
        Self { enabled: true, node_selector: None, interfaces: Vec::new() }
    }
}

/// A BGP community: `ASN:value` (two 16-bit numbers), a large community `a:b:c` (three 32-bit
/// numbers), or a well-known name.
pub const COMMUNITY_PATTERN: &str = r"^([0-9]{1,5}:[0-9]{1,5}|[0-9]{1,10}:[0-9]{1,10}:[0-9]{1,10}|no-export|no-advertise|no-export-subconfed|no-peer|blackhole|graceful-shutdown)$";

/// BGP advertisement settings of a pool.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BgpSettings {
    /// Advertise this pool's addresses over BGP.
    #[serde(default)]
    pub enabled: bool,
    /// Only nodes with these labels advertise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    /// Which BGPPeers receive the routes (by their labels); every peer when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_selector: Option<LabelSelector>,
    /// Communities attached to the routes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(regex(pattern = COMMUNITY_PATTERN)))]
    pub communities: Vec<String>,
    /// LOCAL_PREF of the routes (iBGP sessions only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_pref: Option<u32>,
    /// Advertise the prefix of this length that holds each IPv4 address instead of the /32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 32))]
    pub aggregation_length: Option<u8>,
    /// Advertise the prefix of this length that holds each IPv6 address instead of the /128.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 128))]
    pub aggregation_length_v6: Option<u8>,
}

impl IPPoolSpec {
    /// Whether the pool is announced over ARP/NDP: as `l2` says, or, when `l2` is omitted, unless
    /// BGP is enabled.
    pub fn l2_enabled(&self) -> bool {
        match &self.l2 {
            Some(l2) => l2.enabled,
            None => !self.bgp_enabled(),
        }
    }

    /// Whether the pool is advertised over BGP.
    pub fn bgp_enabled(&self) -> bool {
        self.bgp.as_ref().is_some_and(|b| b.enabled)
    }
}

/// What the controller reports about a pool.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IPPoolStatus {
    /// IPv4 address counts, when the pool has IPv4 addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<AddressCounts>,
    /// IPv6 address counts, when the pool has IPv6 addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<AddressCounts>,
    /// `Ready`, `Invalid` (with the parse error) and `Conflicting` (naming the overlapping pool).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Address counts of one family. Counts saturate at 2^63-1 (JSON int64): an IPv6 /64 holds more.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct AddressCounts {
    /// Addresses in the pool (saturating).
    #[schemars(range(min = 0))]
    pub total: u64,
    /// Addresses held by Services.
    #[schemars(range(min = 0))]
    pub used: u64,
    /// Addresses that can still be handed out (saturating).
    #[schemars(range(min = 0))]
    pub available: u64,
}

/// The CEL rule for one entry. The schema pattern only rejects characters that cannot appear in
/// an address; this rule checks each form with Kubernetes' IP and CIDR functions. What neither can
/// say (a range whose start is after its end) the controller reports as a pool condition.
pub const ENTRY_RULE: &str = "self.contains('-') ? \
(self.split('-').size() == 2 && isIP(self.split('-')[0].trim()) && isIP(self.split('-')[1].trim()) \
&& ip(self.split('-')[0].trim()).family() == ip(self.split('-')[1].trim()).family()) \
: (isCIDR(self.trim()) || isIP(self.trim()))";

/// The message shown when [`ENTRY_RULE`] fails.
pub const ENTRY_MESSAGE: &str = "must be a CIDR (192.168.1.0/24), an address, or a range start-end \
of one family (192.168.1.240-192.168.1.250)";

/// Characters an entry may contain at all: hex digits, dots, colons, a prefix and one dash.
pub const ENTRY_PATTERN: &str = r"^\s*[0-9A-Fa-f.:]+\s*(/[0-9]{1,3}|-\s*[0-9A-Fa-f.:]+)?\s*$";

fn addresses_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "description": "CIDRs, single addresses, or ranges start-end; IPv4 and IPv6 may mix",
        "minItems": 1,
        "maxItems": MAX_ENTRIES,
        "items": {
            "type": "string",
            "maxLength": MAX_ENTRY_LEN,
            "pattern": ENTRY_PATTERN,
            "x-kubernetes-validations": [{ "rule": ENTRY_RULE, "message": ENTRY_MESSAGE }]
        }
    })
}

impl IPPoolSpec {
    /// The pool's addresses as typed ranges, or the first entry that does not parse.
    pub fn ranges(&self) -> Result<Vec<AddressRange>, AddressError> {
        addresses::parse_addresses(&self.addresses)
    }
}

/// The CRD as the YAML file the chart ships (`charts/ferrolb/crds/ippools.ferrolb.io.yaml`).
pub fn crd_yaml() -> Result<String, serde_norway::Error> {
    use kube::CustomResourceExt;
    let body = serde_norway::to_string(&IPPool::crd())?;
    Ok(format!("# Generated by `cargo run -p ferrolb-crds --bin crdgen`; do not edit.\n{body}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn defaults_fill_in_when_fields_are_omitted() {
        let spec: IPPoolSpec = serde_json::from_value(serde_json::json!({
            "addresses": ["198.51.100.0/28"]
        }))
        .unwrap();
        assert!(spec.auto_assign);
        assert!(!spec.avoid_buggy_ips && !spec.disabled);
        assert_eq!(spec.priority, None, "unset: after every pool that sets one");
        let l2: L2Settings = serde_json::from_value(serde_json::json!({})).unwrap();
        assert!(l2.enabled);
        assert!(spec.l2_enabled() && !spec.bgp_enabled(), "L2 alone by default");
    }

    #[test]
    fn bgp_alone_or_beside_l2() {
        let spec = |extra: serde_json::Value| -> IPPoolSpec {
            let mut v = serde_json::json!({"addresses": ["198.51.100.0/28"]});
            v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            serde_json::from_value(v).unwrap()
        };
        let bgp = spec(serde_json::json!({"bgp": {"enabled": true}}));
        assert!(bgp.bgp_enabled() && !bgp.l2_enabled(), "BGP alone when only bgp is given");
        let both = spec(serde_json::json!({"bgp": {"enabled": true}, "l2": {}}));
        assert!(both.bgp_enabled() && both.l2_enabled());
        let off = spec(serde_json::json!({"bgp": {}}));
        assert!(!off.bgp_enabled() && off.l2_enabled(), "bgp without enabled is off");
        let re = regex::Regex::new(COMMUNITY_PATTERN).unwrap();
        for ok in ["64512:100", "no-export", "4200000000:1:2"] {
            assert!(re.is_match(ok), "{ok}");
        }
        for bad in ["64512", "a:b", "1:2:3:4", "no_export"] {
            assert!(!re.is_match(bad), "{bad}");
        }
    }

    #[test]
    fn the_crd_is_cluster_scoped_with_status_and_columns() {
        let crd = serde_json::to_value(IPPool::crd()).unwrap();
        assert_eq!(crd["spec"]["scope"], "Cluster");
        assert_eq!(crd["spec"]["names"]["shortNames"][0], "ipp");
        let version = &crd["spec"]["versions"][0];
        assert!(version["subresources"]["status"].is_object());
        let columns: Vec<&str> = version["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            columns,
            ["Addresses", "Auto-Assign", "IPv4 Used", "IPv4 Available", "IPv6 Used", "IPv6 Available", "Age"]
        );
        let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
        assert_eq!(spec["addresses"]["items"]["x-kubernetes-validations"][0]["rule"], ENTRY_RULE);
        assert_eq!(spec["priority"]["minimum"], 0.0);
        assert_eq!(spec["avoidBuggyIPs"]["default"], false);
        assert_eq!(spec["autoAssign"]["default"], true);
        // A user's glob is bounded before any speaker matches it.
        let interfaces = &spec["l2"]["properties"]["interfaces"];
        assert_eq!((interfaces["maxItems"].as_u64(), interfaces["items"]["maxLength"].as_u64()), (Some(32), Some(64)));
    }

    #[test]
    fn the_pattern_admits_every_valid_form() {
        let re = regex::Regex::new(ENTRY_PATTERN).unwrap();
        for ok in ["192.168.1.0/24", "fd00:10::/120", "198.51.100.1 - 198.51.100.9", "2001:db8::1"] {
            assert!(re.is_match(ok), "{ok}");
        }
        for bad in ["not-an-ip", "", "1.2.3.4/24/5", "a b", "10.0.0.1-10.0.0.2-10.0.0.3"] {
            assert!(!re.is_match(bad), "{bad}");
        }
    }
}
