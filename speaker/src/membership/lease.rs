//! Registration: every speaker holds a coordination Lease `speaker-<node>` with its peer address
//! in an annotation; the holders of unexpired Leases are the peers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};

/// The annotation carrying a speaker's heartbeat address.
pub const PEER_ADDRESS: &str = "ferrolb.io/peer-address";

/// The Lease name of a node's speaker.
pub fn lease_name(node: &str) -> String {
    format!("speaker-{node}")
}

/// Creates or renews this speaker's Lease.
pub async fn renew(api: &Api<Lease>, node: &str, peer: SocketAddr, duration: Duration) -> Result<(), kube::Error> {
    let name = lease_name(node);
    let seconds = i32::try_from(duration.as_secs().max(1)).unwrap_or(i32::MAX);
    let now = MicroTime(Timestamp::now());
    let mut lease = api.get_opt(&name).await?.unwrap_or_else(|| Lease {
        metadata: ObjectMeta { name: Some(name.clone()), ..ObjectMeta::default() },
        spec: Some(LeaseSpec { acquire_time: Some(now.clone()), ..LeaseSpec::default() }),
    });
    lease.metadata.annotations.get_or_insert_with(BTreeMap::new).insert(PEER_ADDRESS.into(), peer.to_string());
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    spec.holder_identity = Some(node.to_string());
    spec.lease_duration_seconds = Some(seconds);
    spec.renew_time = Some(now);
    if lease.metadata.resource_version.is_some() {
        api.replace(&name, &PostParams::default(), &lease).await?;
    } else {
        api.create(&PostParams::default(), &lease).await?;
    }
    Ok(())
}

/// Deletes this speaker's Lease (clean exit).
pub async fn unregister(api: &Api<Lease>, node: &str) -> Result<(), kube::Error> {
    match api.delete(&lease_name(node), &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// The peers: holders of unexpired speaker Leases, with their heartbeat addresses.
pub fn peers<'a>(leases: impl IntoIterator<Item = &'a Lease>, now: Timestamp) -> BTreeMap<String, Option<SocketAddr>> {
    let mut out = BTreeMap::new();
    for l in leases {
        if !l.metadata.name.as_deref().is_some_and(|n| n.starts_with("speaker-")) {
            continue;
        }
        let Some(spec) = &l.spec else { continue };
        let Some(holder) = spec.holder_identity.clone().filter(|h| !h.is_empty()) else { continue };
        let duration = i64::from(spec.lease_duration_seconds.unwrap_or(10));
        let fresh = spec.renew_time.as_ref().is_some_and(|t| t.0.as_second() + duration >= now.as_second());
        if fresh {
            let addr = l.metadata.annotations.as_ref().and_then(|a| a.get(PEER_ADDRESS)).and_then(|a| a.parse().ok());
            out.insert(holder, addr);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(name: &str, holder: &str, ago: i64) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(name.into()),
                annotations: Some(BTreeMap::from([(PEER_ADDRESS.to_string(), "198.51.100.11:7946".to_string())])),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                lease_duration_seconds: Some(10),
                renew_time: Some(MicroTime(
                    Timestamp::now().checked_sub(jiff::SignedDuration::from_secs(ago)).unwrap(),
                )),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn unexpired_speaker_leases_are_the_peers() {
        let ls = [lease("speaker-a", "a", 1), lease("speaker-b", "b", 30), lease("ferrolb-controller", "c", 0)];
        let p = peers(ls.iter(), Timestamp::now());
        assert_eq!(p.len(), 1);
        assert_eq!(p["a"], Some("198.51.100.11:7946".parse().unwrap()));
    }
}
