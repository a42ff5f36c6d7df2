//! Who may reach a Service's addresses: `spec.loadBalancerSourceRanges`, or when that is empty the
//! legacy annotation `service.beta.kubernetes.io/load-balancer-source-ranges`, as kube-proxy
//! reads them (pure). Fails closed: an entry that does not parse admits nobody, so a typo never
//! opens a guarded Service to everyone.

use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::Service;

/// The legacy annotation (comma-separated CIDRs), still honoured by kube-proxy and cloud providers.
pub const SOURCE_RANGES_ANNOTATION: &str = "service.beta.kubernetes.io/load-balancer-source-ranges";

/// A Service's source ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceRanges {
    /// The ranges admitted; None: everyone (no range given at all).
    pub allowed: Option<Vec<IpNetwork>>,
    /// Entries that did not parse (their clients are refused).
    pub refused: Vec<String>,
}

/// Reads them: the spec field first, the annotation only when the field is empty.
pub fn read(svc: &Service) -> SourceRanges {
    let spec: Vec<String> = svc.spec.as_ref().and_then(|s| s.load_balancer_source_ranges.clone()).unwrap_or_default();
    let annotation = svc.metadata.annotations.as_ref().and_then(|a| a.get(SOURCE_RANGES_ANNOTATION));
    let entries: Vec<String> = if spec.iter().any(|e| !e.trim().is_empty()) {
        spec
    } else {
        annotation.map(|a| a.split(',').map(str::to_string).collect()).unwrap_or_default()
    };
    let entries: Vec<&str> = entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()).collect();
    if entries.is_empty() {
        return SourceRanges::default();
    }
    let (mut allowed, mut refused) = (Vec::new(), Vec::new());
    for e in entries {
        match parse_cidr_sloppy(e) {
            Some(net) => allowed.push(net),
            None => refused.push(e.to_string()),
        }
    }
    SourceRanges { allowed: Some(allowed), refused }
}

/// A CIDR as Kubernetes reads it (`netutils.ParseCIDRSloppy`): IPv4 octets may carry leading zeros
/// and are decimal ("010.0.0.0/8" is 10.0.0.0/8); host bits are masked off.
pub fn parse_cidr_sloppy(s: &str) -> Option<IpNetwork> {
    let (ip, prefix) = s.trim().split_once('/')?;
    let prefix: u8 = prefix.parse().ok()?;
    let ip: IpAddr = if ip.contains(':') {
        ip.parse().ok()?
    } else {
        let octets: Vec<u8> =
            ip.split('.').map(|o| if o.len() <= 3 { o.parse().ok() } else { None }).collect::<Option<_>>()?;
        let [a, b, c, d] = octets[..] else { return None };
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    };
    let net = IpNetwork::new(ip, prefix).ok()?;
    IpNetwork::new(net.network(), prefix).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).unwrap()
    }

    fn nets(s: &[&str]) -> Option<Vec<IpNetwork>> {
        Some(s.iter().map(|s| s.parse().unwrap()).collect())
    }

    #[test]
    fn spec_first_then_the_legacy_annotation() {
        let both = svc(json!({"metadata": {"annotations": {SOURCE_RANGES_ANNOTATION: "192.0.2.0/24"}},
            "spec": {"loadBalancerSourceRanges": ["198.51.100.0/24"]}}));
        assert_eq!(read(&both).allowed, nets(&["198.51.100.0/24"]));
        let legacy =
            svc(json!({"metadata": {"annotations": {SOURCE_RANGES_ANNOTATION: " 192.0.2.0/24, 2001:db8::/64 "}}}));
        assert_eq!(read(&legacy).allowed, nets(&["192.0.2.0/24", "2001:db8::/64"]));
        assert_eq!(read(&svc(json!({"metadata": {"name": "open"}}))), SourceRanges::default());
    }

    #[test]
    fn kubernetes_sloppy_cidrs() {
        assert_eq!(parse_cidr_sloppy("010.001.000.000/16"), "10.1.0.0/16".parse().ok());
        assert_eq!(parse_cidr_sloppy("198.51.100.7/24"), "198.51.100.0/24".parse().ok());
        assert_eq!(parse_cidr_sloppy("2001:db8::1/64"), "2001:db8::/64".parse().ok());
        for bad in ["198.51.100.0", "198.51.100.0/33", "1.2.3/8", "0001.2.3.4/8", "256.0.0.0/8", "x/8"] {
            assert_eq!(parse_cidr_sloppy(bad), None, "{bad}");
        }
    }

    #[test]
    fn what_does_not_parse_admits_nobody() {
        let one_bad = svc(json!({"spec": {"loadBalancerSourceRanges": ["198.51.100.0/24", "198.51.100.300/24"]}}));
        let r = read(&one_bad);
        assert_eq!((r.allowed, r.refused), (nets(&["198.51.100.0/24"]), vec!["198.51.100.300/24".to_string()]));
        // Nothing parses: guarded, and nobody is admitted (not everyone).
        let all_bad = svc(json!({"metadata": {"annotations": {SOURCE_RANGES_ANNOTATION: "office"}}}));
        assert_eq!(read(&all_bad), SourceRanges { allowed: Some(vec![]), refused: vec!["office".into()] });
    }
}
