//! Leader election on a coordination Lease, as client-go's leaderelection does it: acquire when
//! the Lease is free or expired, renew while leading, step down when renewals stop succeeding
//! before the Lease could expire, and hand the Lease back on a clean exit.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};

/// How the election is run.
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (holderIdentity).
    pub identity: String,
    /// How long a Lease lasts without renewal.
    pub lease_duration: Duration,
    /// How often to try to acquire or renew.
    pub retry_period: Duration,
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

/// Whether the Lease is free for us: unheld, ours, or expired.
fn available(lease: &Lease, me: &str, now: Timestamp) -> bool {
    let Some(spec) = &lease.spec else { return true };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder.is_empty() || holder == me {
        return true;
    }
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    match &spec.renew_time {
        Some(MicroTime(t)) => t.as_second() + duration < now.as_second(),
        None => true,
    }
}

/// One attempt to acquire or renew; Ok(true) while we hold the Lease.
async fn try_hold(api: &Api<Lease>, cfg: &LeaderConfig) -> Result<bool, kube::Error> {
    let seconds = i32::try_from(cfg.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX);
    let existing = api.get_opt(&cfg.name).await?;
    let Some(mut lease) = existing else {
        let lease = Lease {
            metadata: ObjectMeta { name: Some(cfg.name.clone()), ..ObjectMeta::default() },
            spec: Some(LeaseSpec {
                holder_identity: Some(cfg.identity.clone()),
                lease_duration_seconds: Some(seconds),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    if !available(&lease, &cfg.identity, Timestamp::now()) {
        return Ok(false);
    }
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    if spec.holder_identity.as_deref() != Some(&cfg.identity) {
        spec.holder_identity = Some(cfg.identity.clone());
        spec.acquire_time = Some(now());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.lease_duration_seconds = Some(seconds);
    spec.renew_time = Some(now());
    // The resourceVersion in `lease` makes this a compare-and-swap: 409 means someone else won.
    match api.replace(&cfg.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// How long after the start of its last successful renewal a leader may act: two thirds of the
/// Lease (client-go's 10 s of 15), never less than one retry period. Measured from the start of the
/// request, which is no later than the renewTime it wrote, so the others' view of the Lease can
/// only expire after this; the rest of the Lease is the margin for their clocks.
pub fn renew_deadline(cfg: &LeaderConfig) -> Duration {
    (cfg.lease_duration * 2 / 3).max(cfg.retry_period)
}

/// Runs the election until `stop` fires; `leading` carries whether we lead. Leadership ends at the
/// renew deadline whatever the pending request does: a request to a hung API server (the client
/// has no read timeout for it) must not keep a replica leading after another could have taken the
/// Lease. On stop, a held Lease is handed back so that another replica takes over at once.
pub async fn run(
    client: kube::Client,
    cfg: LeaderConfig,
    leading: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    let deadline = renew_deadline(&cfg);
    let mut held_until: Option<Instant> = None;
    let set = |lead: bool| {
        if *leading.borrow() != lead {
            tracing::info!(identity = %cfg.identity, leading = lead, "leadership changed");
            leading.send_replace(lead);
        }
    };
    'run: loop {
        let started = Instant::now();
        // Bounded, so a hung request is given up and tried again.
        let attempt = tokio::time::timeout(cfg.lease_duration, try_hold(&api, &cfg));
        tokio::pin!(attempt);
        let outcome = loop {
            let step_down = held_until.filter(|_| *leading.borrow());
            tokio::select! {
                outcome = &mut attempt => break outcome,
                _ = sleep_until(step_down.unwrap_or(started)), if step_down.is_some() => {
                    tracing::warn!(lease = %cfg.name, "the Lease was not renewed in time; stepping down");
                    set(false);
                }
                _ = stop.changed() => break 'run,
            }
        };
        match outcome {
            Ok(Ok(true)) => held_until = Some(started + deadline),
            Ok(Ok(false)) => held_until = None,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, lease = %cfg.name, "leader election: the Lease could not be read or written")
            }
            Err(_) => tracing::warn!(lease = %cfg.name, "leader election: no answer about the Lease; trying again"),
        }
        set(held_until.is_some_and(|t| Instant::now() < t));
        tokio::select! {
            _ = tokio::time::sleep(cfg.retry_period) => {}
            _ = stop.changed() => break,
        }
    }
    if *leading.borrow() {
        leading.send_replace(false);
        let handed_back = tokio::time::timeout(cfg.retry_period, release(&api, &cfg)).await;
        if !matches!(handed_back, Ok(Ok(()))) {
            tracing::warn!("could not hand the Lease back; it expires by itself");
        }
    }
}

async fn release(api: &Api<Lease>, cfg: &LeaderConfig) -> Result<(), kube::Error> {
    let Some(mut lease) = api.get_opt(&cfg.name).await? else { return Ok(()) };
    let Some(spec) = lease.spec.as_mut() else { return Ok(()) };
    if spec.holder_identity.as_deref() != Some(&cfg.identity) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    api.replace(&cfg.name, &PostParams::default(), &lease).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>, renewed_secs_ago: i64, duration: i32) -> Lease {
        let t = Timestamp::now().checked_sub(jiff::SignedDuration::from_secs(renewed_secs_ago)).unwrap();
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: holder.map(String::from),
                lease_duration_seconds: Some(duration),
                renew_time: Some(MicroTime(t)),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn the_renew_deadline_leaves_a_third_of_the_lease_to_the_others_clocks() {
        let cfg = |lease_ms, retry_ms| LeaderConfig {
            namespace: "n".into(),
            name: "l".into(),
            identity: "a".into(),
            lease_duration: Duration::from_millis(lease_ms),
            retry_period: Duration::from_millis(retry_ms),
        };
        assert_eq!(renew_deadline(&cfg(15_000, 2_000)), Duration::from_secs(10));
        assert_eq!(renew_deadline(&cfg(3_000, 300)), Duration::from_secs(2));
        assert_eq!(renew_deadline(&cfg(1_000, 2_000)), Duration::from_secs(2), "never shorter than a retry");
    }

    #[test]
    fn availability() {
        let now = Timestamp::now();
        assert!(available(&lease(None, 0, 15), "a", now));
        assert!(available(&lease(Some("a"), 0, 15), "a", now));
        assert!(!available(&lease(Some("b"), 1, 15), "a", now));
        assert!(available(&lease(Some("b"), 20, 15), "a", now));
    }
}
