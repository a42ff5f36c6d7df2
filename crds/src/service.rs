//! How both binaries name a Service (`namespace/name`) and the protocol of its ports, so that keys
//! are built and split in one place.

use std::borrow::Borrow;
use std::fmt;

use k8s_openapi::api::core::v1::Service;

/// A Service's `namespace/name`. Kubernetes forbids `/` in both parts, so the text splits back
/// unambiguously; it is kept joined so that maps keyed by it can be looked up with a `&str`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ServiceKey(String);

impl ServiceKey {
    /// The key of `namespace`/`name`.
    pub fn new(namespace: &str, name: &str) -> Self {
        Self(format!("{namespace}/{name}"))
    }

    /// The key of a Service object.
    pub fn of(svc: &Service) -> Self {
        Self::new(
            svc.metadata.namespace.as_deref().unwrap_or_default(),
            svc.metadata.name.as_deref().unwrap_or_default(),
        )
    }

    /// The Service's namespace.
    pub fn namespace(&self) -> &str {
        self.0.split_once('/').map_or("", |(ns, _)| ns)
    }

    /// The Service's name.
    pub fn name(&self) -> &str {
        self.0.split_once('/').map_or(self.0.as_str(), |(_, n)| n)
    }

    /// `namespace/name`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Borrow<str> for ServiceKey {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for ServiceKey {
    /// From `namespace/name` text (as written in logs, tests and by users).
    fn from(s: &str) -> Self {
        Self(s.to_string())
    }
}

impl PartialEq<str> for ServiceKey {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for ServiceKey {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// The transport protocol of a Service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// Reads `ports[].protocol` (unset means TCP, as the API server defaults it); None for a
    /// protocol Kubernetes does not have.
    pub fn parse(protocol: Option<&str>) -> Option<Self> {
        match protocol.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_back_and_look_up_by_text() {
        let k = ServiceKey::new("media", "jellyfin");
        assert_eq!((k.namespace(), k.name(), k.as_str()), ("media", "jellyfin", "media/jellyfin"));
        let mut m = std::collections::BTreeMap::new();
        m.insert(k.clone(), 1);
        assert_eq!(m.get("media/jellyfin"), Some(&1));
        assert_eq!(ServiceKey::from("media/jellyfin"), k);
    }

    #[test]
    fn protocols_default_to_tcp() {
        assert_eq!(Protocol::parse(None), Some(Protocol::Tcp));
        assert_eq!(Protocol::parse(Some("SCTP")), Some(Protocol::Sctp));
        assert_eq!(Protocol::parse(Some("ICMP")), None);
        assert_eq!(Protocol::Udp.to_string(), "UDP");
    }
}
