//! How a speaker ends: restarted in place (a DaemonSet update: its node stays, so it leaves its
//! forwarding table and its addresses where they are, and its peers hold them for it), or leaving
//! for good (its node goes away: it hands its addresses over first). And the node-local file that
//! carries its claims from one run to the next. The decision is pure.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Node;

use crate::l2::Mac;

/// Taints that say the node is going away.
const GOING_AWAY_TAINTS: [&str; 2] = ["node.kubernetes.io/out-of-service", "ToBeDeletedByClusterAutoscaler"];

/// How this speaker ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// Its node stays: keep the table and the addresses; peers hold them for the restart grace.
    Restart,
    /// Its node goes away (the reason): hand the addresses over and remove the table.
    Leave(String),
}

/// Decides how to end, given our Node as the cache has it and whether restarts in place are on.
pub fn exit(node: Option<&Node>, restarts_in_place: bool) -> Exit {
    if !restarts_in_place {
        return Exit::Leave("restarts in place are off (--restart-grace-ms 0)".into());
    }
    let Some(node) = node else { return Exit::Leave("the Node is gone".into()) };
    if node.metadata.deletion_timestamp.is_some() {
        return Exit::Leave("the Node is being deleted".into());
    }
    let spec = node.spec.as_ref();
    if spec.and_then(|s| s.unschedulable).unwrap_or(false) {
        return Exit::Leave("the Node is cordoned".into());
    }
    let taints = spec.and_then(|s| s.taints.as_ref()).into_iter().flatten();
    if let Some(t) = taints.into_iter().find(|t| GOING_AWAY_TAINTS.contains(&t.key.as_str())) {
        return Exit::Leave(format!("the Node has the taint {}", t.key));
    }
    Exit::Restart
}

/// The file holding this node's claims between runs (`--state-dir`, a host directory that does
/// not outlive a reboot, as the kernel's table does not).
pub fn claims_file(dir: &Path) -> PathBuf {
    dir.join("claims")
}

/// Claims as text: one "address mac" per line.
pub fn render_claims(claims: &BTreeMap<IpAddr, Mac>) -> String {
    claims
        .iter()
        .map(|(ip, m)| format!("{ip} {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}\n", m[0], m[1], m[2], m[3], m[4], m[5]))
        .collect()
}

/// Claims read back; lines that do not parse are skipped (the file is ours, but a crash may cut
/// it short).
pub fn parse_claims(text: &str) -> BTreeMap<IpAddr, Mac> {
    text.lines()
        .filter_map(|line| {
            let (ip, mac) = line.split_once(' ')?;
            let bytes: Vec<u8> = mac.split(':').map(|b| u8::from_str_radix(b, 16)).collect::<Result<_, _>>().ok()?;
            Some((ip.parse().ok()?, bytes.try_into().ok()?))
        })
        .collect()
}

/// Reads the claims of the previous run (none when there is no file).
pub fn load(dir: &Path) -> BTreeMap<IpAddr, Mac> {
    std::fs::read_to_string(claims_file(dir)).map(|t| parse_claims(&t)).unwrap_or_default()
}

/// Writes the claims (write and rename, so a crash never leaves half a file).
pub fn save(dir: &Path, claims: &BTreeMap<IpAddr, Mac>) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join("claims.tmp");
    std::fs::write(&tmp, render_claims(claims))?;
    std::fs::rename(tmp, claims_file(dir))
}

/// Removes the file (when leaving for good).
pub fn forget(dir: &Path) {
    let _ = std::fs::remove_file(claims_file(dir));
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn node(v: serde_json::Value) -> Node {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_node_that_stays_restarts_in_place_one_that_goes_away_hands_over() {
        let plain = node(json!({"metadata": {"name": "n1"}}));
        assert_eq!(exit(Some(&plain), true), Exit::Restart);
        assert!(matches!(exit(Some(&plain), false), Exit::Leave(_)));
        assert!(matches!(exit(None, true), Exit::Leave(r) if r.contains("gone")));
        let deleting = node(json!({"metadata": {"name": "n1", "deletionTimestamp": "2026-11-30T00:00:00Z"}}));
        assert!(matches!(exit(Some(&deleting), true), Exit::Leave(r) if r.contains("deleted")));
        let cordoned = node(json!({"metadata": {"name": "n1"}, "spec": {"unschedulable": true}}));
        assert!(matches!(exit(Some(&cordoned), true), Exit::Leave(r) if r.contains("cordoned")));
        let oos = node(json!({"metadata": {"name": "n1"}, "spec": {"taints": [
            {"key": "node.kubernetes.io/out-of-service", "effect": "NoExecute"}]}}));
        assert!(matches!(exit(Some(&oos), true), Exit::Leave(r) if r.contains("out-of-service")));
        let other = node(json!({"metadata": {"name": "n1"}, "spec": {"taints": [
            {"key": "dedicated", "effect": "NoSchedule"}]}}));
        assert_eq!(exit(Some(&other), true), Exit::Restart);
    }

    #[test]
    fn the_claims_file_survives_a_run_and_a_cut_line() {
        let dir = std::env::temp_dir().join(format!("ferrolb-claims-{}", std::process::id()));
        let claims = BTreeMap::from([
            ("198.51.100.1".parse().unwrap(), [2, 0, 0, 0, 0, 0xab]),
            ("2001:db8::1".parse().unwrap(), [2, 0, 0, 0, 0, 1]),
        ]);
        assert!(load(&dir).is_empty());
        save(&dir, &claims).unwrap();
        assert_eq!(load(&dir), claims);
        std::fs::write(claims_file(&dir), "198.51.100.1 02:00:00:00:00:ab\n2001:db8::1 02:00").unwrap();
        assert_eq!(load(&dir).len(), 1);
        forget(&dir);
        assert!(load(&dir).is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }

    proptest! {
        #[test]
        fn claims_round_trip(claims in proptest::collection::btree_map(any::<IpAddr>(), any::<[u8; 6]>(), 0..20)) {
            prop_assert_eq!(parse_claims(&render_claims(&claims)), claims);
        }
    }
}
