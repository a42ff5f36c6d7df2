//! `ferrolb status`: pools with their usage, BGP peers with every node's session, and every
//! Service ferrolb handles, with its addresses, pool and the nodes announcing it — laid out from
//! objects read from the API (pure).

use ferrolb_crds::annotations::{ALLOCATED_FROM, ANNOUNCED_CONDITION};
use ferrolb_crds::{BGPPeer, IPPool};
use k8s_openapi::api::core::v1::Service;

/// Columns padded to their widest cell.
fn table(rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> =
        (0..rows[0].len()).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(cells.join("   ").trim_end());
        out.push('\n');
    }
    out
}

/// Who announces a Service, from its `ferrolb.io/Announced` message: the node (`… announced by
/// node N on eth0`), or over BGP every advertising node (`… by node N by BGP (also from M, O)`).
fn announcer(svc: &Service) -> Option<String> {
    let c = svc.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == ANNOUNCED_CONDITION)?;
    if c.status != "True" {
        return None;
    }
    let rest = c.message.split("announced by node ").nth(1)?;
    let node = rest.split_whitespace().next()?.to_string();
    if !rest.contains(" by BGP") {
        return Some(node);
    }
    let others = rest.split("(also from ").nth(1).map(|o| o.trim_end_matches(')')).filter(|o| !o.is_empty());
    Some(match others {
        Some(o) => format!("BGP from {node}, {o}"),
        None => format!("BGP from {node}"),
    })
}

/// One row per BGPPeer: its address and ASN, the Established count, and every node's session.
fn peer_rows(peers: &[BGPPeer]) -> Vec<Vec<String>> {
    let mut rows = vec![["BGP PEER", "ADDRESS", "ASN", "ESTABLISHED", "SESSIONS"].map(String::from).to_vec()];
    for p in peers {
        let mut status = p.status.clone().unwrap_or_default();
        status.nodes.sort_by(|a, b| a.node.cmp(&b.node));
        let sessions: Vec<String> = status
            .nodes
            .iter()
            .map(|n| match &n.message {
                Some(m) if n.state != "Established" => format!("{} {} ({m})", n.node, n.state),
                _ => format!("{} {}", n.node, n.state),
            })
            .collect();
        let count = |c: Option<u32>| c.map_or("?".into(), |c| c.to_string());
        rows.push(vec![
            p.metadata.name.clone().unwrap_or_default(),
            p.spec.peer_address.clone(),
            p.spec.peer_asn.to_string(),
            format!("{}/{}", count(status.established), count(status.selected)),
            if sessions.is_empty() { "-".into() } else { sessions.join(", ") },
        ]);
    }
    rows
}

/// Whether ferrolb handles `svc` (its class is unset or `class`, its type LoadBalancer).
pub fn handled(svc: &Service, class: &str) -> bool {
    let Some(spec) = &svc.spec else { return false };
    spec.type_.as_deref() == Some("LoadBalancer") && spec.load_balancer_class.as_deref().is_none_or(|c| c == class)
}

/// The status text; the BGP section only when there are BGPPeers.
pub fn render(pools: &[IPPool], peers: &[BGPPeer], services: &[Service], class: &str) -> String {
    let mut rows = vec![["POOL", "IPV4 USED/TOTAL", "IPV6 USED/TOTAL", "READY", "PROBLEMS"].map(String::from).to_vec()];
    for p in pools {
        let status = p.status.clone().unwrap_or_default();
        let usage = |c: &Option<ferrolb_crds::AddressCounts>| {
            c.as_ref().map_or("-".into(), |c| format!("{}/{}", c.used, c.total))
        };
        let cond = |t: &str| status.conditions.iter().find(|c| c.type_ == t);
        let problems: Vec<String> = ["Invalid", "Conflicting"]
            .iter()
            .filter_map(|t| cond(t).filter(|c| c.status == "True").map(|c| format!("{t}: {}", c.message)))
            .collect();
        rows.push(vec![
            p.metadata.name.clone().unwrap_or_default(),
            usage(&status.ipv4),
            usage(&status.ipv6),
            cond("Ready").map_or("Unknown".into(), |c| c.status.clone()),
            if problems.is_empty() { "-".into() } else { problems.join("; ") },
        ]);
    }
    let mut out = table(&rows);
    out.push('\n');
    if !peers.is_empty() {
        out.push_str(&table(&peer_rows(peers)));
        out.push('\n');
    }
    let mut rows = vec![["SERVICE", "ADDRESSES", "POOL", "ANNOUNCED BY"].map(String::from).to_vec()];
    let mut handled: Vec<&Service> = services.iter().filter(|s| handled(s, class)).collect();
    handled.sort_by_key(|s| (s.metadata.namespace.clone(), s.metadata.name.clone()));
    for s in handled {
        let ips: Vec<String> = s
            .status
            .as_ref()
            .and_then(|st| st.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|i| i.ip.clone())
            .collect();
        let pool = s.metadata.annotations.as_ref().and_then(|a| a.get(ALLOCATED_FROM)).cloned();
        rows.push(vec![
            format!(
                "{}/{}",
                s.metadata.namespace.as_deref().unwrap_or("default"),
                s.metadata.name.as_deref().unwrap_or_default()
            ),
            if ips.is_empty() { "<pending>".into() } else { ips.join(",") },
            pool.unwrap_or_else(|| "-".into()),
            announcer(s).unwrap_or_else(|| "-".into()),
        ]);
    }
    out.push_str(&table(&rows));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pools_and_services_line_up() {
        let pool: IPPool = serde_json::from_value(json!({"apiVersion": "ferrolb.io/v1alpha1", "kind": "IPPool", "metadata": {"name": "home"},
            "spec": {"addresses": ["192.168.1.240-192.168.1.250"]},
            "status": {"ipv4": {"total": 11, "used": 1, "available": 10}, "conditions": [
                {"type": "Ready", "status": "True", "reason": "Ready", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})).unwrap();
        let web: Service = serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "media", "annotations": {"ferrolb.io/allocated-from": "home"}},
            "spec": {"type": "LoadBalancer"},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.168.1.240"}]}, "conditions": [
                {"type": "ferrolb.io/Announced", "status": "True", "reason": "Announced", "message": "192.168.1.240 announced by node n2 on eth0", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})).unwrap();
        let other: Service = serde_json::from_value(json!({"metadata": {"name": "cloud", "namespace": "x"},
            "spec": {"type": "LoadBalancer", "loadBalancerClass": "example.com/other"}}))
        .unwrap();
        let pending: Service = serde_json::from_value(
            json!({"metadata": {"name": "new", "namespace": "a"}, "spec": {"type": "LoadBalancer"}}),
        )
        .unwrap();
        let text = render(&[pool], &[], &[web, other, pending], "ferrolb.io/lb");
        assert!(text.contains("home   1/11              -                 True    -"), "{text}");
        assert!(text.contains("media/web   192.168.1.240   home   n2"), "{text}");
        assert!(text.contains("a/new       <pending>       -      -"), "{text}");
        assert!(!text.contains("cloud"), "another class is not ferrolb's: {text}");
        assert!(!text.contains("BGP PEER"), "no peers, no BGP section: {text}");
    }

    #[test]
    fn bgp_sessions_and_advertising_nodes() {
        let peer: BGPPeer = serde_json::from_value(
            json!({"apiVersion": "ferrolb.io/v1alpha1", "kind": "BGPPeer", "metadata": {"name": "tor"},
            "spec": {"peerAddress": "198.51.100.1", "peerASN": 64512, "myASN": 64513},
            "status": {"selected": 2, "established": 1, "nodes": [
                {"node": "n1", "state": "Established"},
                {"node": "n2", "state": "Active", "message": "BGP Error: Bad peer AS"}]}}),
        )
        .unwrap();
        let svc: Service = serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "a", "annotations": {"ferrolb.io/allocated-from": "fabric"}},
            "spec": {"type": "LoadBalancer"},
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.224"}]}, "conditions": [
                {"type": "ferrolb.io/Announced", "status": "True", "reason": "Announced", "message": "203.0.113.224 announced by node n1 by BGP (also from n2, n3)", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})).unwrap();
        let text = render(&[], &[peer], &[svc], "ferrolb.io/lb");
        assert!(
            text.contains(
                "tor        198.51.100.1   64512   1/2           n1 Established, n2 Active (BGP Error: Bad peer AS)"
            ),
            "{text}"
        );
        assert!(text.contains("a/web     203.0.113.224   fabric   BGP from n1, n2, n3"), "{text}");
    }
}
