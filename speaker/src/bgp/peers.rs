//! Reading `BGPPeer` objects (and the Secrets their passwords live in) into what the routing
//! daemon needs for this node, pure.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use ferrolb_crds::bgppeer::duration;
use ferrolb_crds::{BGPPeer, selector};
use k8s_openapi::api::core::v1::Secret;

/// One peer as this node's daemon sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerView {
    /// The BGPPeer's name.
    pub name: String,
    /// Its labels (pools select peers by them).
    pub labels: BTreeMap<String, String>,
    /// The router's address.
    pub address: IpAddr,
    /// The router's port.
    pub port: u16,
    /// The router's ASN.
    pub peer_asn: u32,
    /// Ours.
    pub my_asn: u32,
    /// Hold time, when set.
    pub hold: Option<Duration>,
    /// Keepalive interval, when set.
    pub keepalive: Option<Duration>,
    /// eBGP multihop.
    pub multihop: bool,
    /// The MD5 password, when one is configured and readable.
    pub password: Option<String>,
    /// BFD (receive ms, transmit ms, multiplier), when enabled.
    pub bfd: Option<(u32, u32, u8)>,
    /// Graceful restart.
    pub graceful_restart: bool,
}

impl PeerView {
    /// A plain eBGP peer (AS 64512, we 64513) without options, for tests.
    #[cfg(test)]
    pub fn example(name: &str, address: &str) -> Self {
        Self {
            name: name.into(),
            labels: BTreeMap::new(),
            address: address.parse().expect("an address"),
            port: 179,
            peer_asn: 64512,
            my_asn: 64513,
            hold: None,
            keepalive: None,
            multihop: false,
            password: None,
            bfd: None,
            graceful_restart: false,
        }
    }

    /// Whether the session is iBGP (LOCAL_PREF applies).
    pub fn internal(&self) -> bool {
        self.peer_asn == self.my_asn
    }
}

/// Why a peer this node should talk to cannot be configured; said in its status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// The address does not parse (the CRD's rule should have refused it).
    #[error("peerAddress {0:?} is not an IP address")]
    Address(String),
    /// A timer does not parse.
    #[error("{field} {value:?} is not a duration")]
    Duration {
        /// `holdTime` or `keepaliveTime`.
        field: &'static str,
        /// What it says.
        value: String,
    },
    /// The password's Secret or key is missing.
    #[error("password Secret {secret:?} has no key {key:?} (in the speakers' namespace)")]
    Password {
        /// The Secret's name.
        secret: String,
        /// The key.
        key: String,
    },
    /// The password cannot be written into the daemon's configuration.
    #[error("the password must be printable ASCII without quotes or backslashes")]
    PasswordChars,
}

/// The peers `node` (with `labels`) opens sessions to, each read or refused with the reason.
pub fn for_node<'a>(
    peers: impl IntoIterator<Item = &'a BGPPeer>,
    secrets: &BTreeMap<String, &'a Secret>,
    labels: &BTreeMap<String, String>,
) -> BTreeMap<String, Result<PeerView, PeerError>> {
    let mut out = BTreeMap::new();
    for p in peers {
        let selected = p.spec.node_selector.as_ref().is_none_or(|s| selector::matches(s, labels).unwrap_or(false));
        if selected {
            let name = p.metadata.name.clone().unwrap_or_default();
            out.insert(name, read(p, secrets));
        }
    }
    out
}

fn read(p: &BGPPeer, secrets: &BTreeMap<String, &Secret>) -> Result<PeerView, PeerError> {
    let s = &p.spec;
    let address = s.peer_address.trim().parse().map_err(|_| PeerError::Address(s.peer_address.clone()))?;
    let timer = |field, value: &Option<String>| match value {
        None => Ok(None),
        Some(v) => duration(v).map(Some).ok_or_else(|| PeerError::Duration { field, value: v.clone() }),
    };
    let password = match &s.password_secret {
        None => None,
        Some(r) => {
            let bytes = secrets
                .get(&r.name)
                .and_then(|secret| secret.data.as_ref()?.get(&r.key))
                .ok_or_else(|| PeerError::Password { secret: r.name.clone(), key: r.key.clone() })?;
            let text = String::from_utf8(bytes.0.clone()).map_err(|_| PeerError::PasswordChars)?;
            // BIRD's strings have no escapes: a quote or backslash would end or break it.
            if !text.chars().all(|c| c.is_ascii_graphic() || c == ' ') || text.contains(['"', '\\']) {
                return Err(PeerError::PasswordChars);
            }
            Some(text)
        }
    };
    Ok(PeerView {
        name: p.metadata.name.clone().unwrap_or_default(),
        labels: p.metadata.labels.clone().unwrap_or_default(),
        address,
        port: s.port,
        peer_asn: s.peer_asn,
        my_asn: s.my_asn,
        hold: timer("holdTime", &s.hold_time)?,
        keepalive: timer("keepaliveTime", &s.keepalive_time)?,
        multihop: s.ebgp_multi_hop,
        password,
        bfd: s
            .bfd
            .as_ref()
            .filter(|b| b.enabled)
            .map(|b| (b.receive_interval_ms, b.transmit_interval_ms, b.detect_multiplier)),
        graceful_restart: s.graceful_restart,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use serde_json::json;

    fn peer(extra: serde_json::Value) -> BGPPeer {
        let mut spec = json!({"peerAddress": "192.0.2.1", "peerASN": 64512, "myASN": 64513});
        spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        serde_json::from_value(json!({"apiVersion": "ferrolb.io/v1alpha1", "kind": "BGPPeer",
            "metadata": {"name": "tor-a", "labels": {"fabric": "main"}}, "spec": spec}))
        .unwrap()
    }

    fn secret(password: &[u8]) -> Secret {
        Secret {
            data: Some(BTreeMap::from([("password".to_string(), ByteString(password.to_vec()))])),
            ..Secret::default()
        }
    }

    #[test]
    fn a_peer_with_its_password_timers_and_bfd() {
        let p = peer(json!({"holdTime": "9s", "keepaliveTime": "3s", "passwordSecret": {"name": "md5"},
            "bfd": {"receiveIntervalMs": 100, "transmitIntervalMs": 100}, "gracefulRestart": true}));
        let s = secret(b"s3cret pass");
        let secrets = BTreeMap::from([("md5".to_string(), &s)]);
        let got = for_node([&p], &secrets, &BTreeMap::new());
        let v = got["tor-a"].as_ref().unwrap();
        assert_eq!(v.address, "192.0.2.1".parse::<IpAddr>().unwrap());
        assert_eq!((v.hold, v.keepalive), (Some(Duration::from_secs(9)), Some(Duration::from_secs(3))));
        assert_eq!(v.password.as_deref(), Some("s3cret pass"));
        assert_eq!(v.bfd, Some((100, 100, 3)));
        assert!(v.graceful_restart && !v.internal());
    }

    #[test]
    fn missing_or_unusable_passwords_are_refused_with_the_reason() {
        let p = peer(json!({"passwordSecret": {"name": "md5", "key": "pw"}}));
        let got = for_node([&p], &BTreeMap::new(), &BTreeMap::new());
        assert_eq!(got["tor-a"], Err(PeerError::Password { secret: "md5".into(), key: "pw".into() }));
        let p = peer(json!({"passwordSecret": {"name": "md5"}}));
        for bad in [&b"a\"b"[..], b"a\\b", b"line\nbreak", &[0xff, 0xfe]] {
            let s = secret(bad);
            let secrets = BTreeMap::from([("md5".to_string(), &s)]);
            assert_eq!(for_node([&p], &secrets, &BTreeMap::new())["tor-a"], Err(PeerError::PasswordChars));
        }
    }

    #[test]
    fn only_selected_nodes_peer() {
        let p = peer(json!({"nodeSelector": {"matchLabels": {"rack": "a"}}}));
        let rack_a = BTreeMap::from([("rack".to_string(), "a".to_string())]);
        assert_eq!(for_node([&p], &BTreeMap::new(), &rack_a).len(), 1);
        assert!(for_node([&p], &BTreeMap::new(), &BTreeMap::new()).is_empty());
    }
}
