//! Keeps the kernel's table what the view says: renders a new ruleset when the view changes
//! (reusing every unchanged Service's part), applies each as its difference from the last one
//! applied (the latest wins, so bursts coalesce), reads the table back to notice changes made by
//! others and puts the whole table back then (`readback::verdict`), and looks for host firewalls
//! that would drop what it forwards.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use kube::{Client, Resource};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use ferrolb_process::events::Recorder;

use super::readback::{self, Verdict};
use super::render::Ruleset;
use super::{firewall, model, nft};
use crate::metrics::Metrics;
use crate::state::View;

/// The read-back's floor interval.
const CHECK_EVERY: Duration = Duration::from_secs(2);

/// The running driver: hand it views; it applies them in the background.
pub struct Driver {
    node: String,
    replicating: bool,
    rules: watch::Sender<Option<Arc<Ruleset>>>,
    task: JoinHandle<()>,
}

impl Driver {
    /// Starts applying for `node`; findings about host firewalls are reported on its Node.
    /// `replicating`: this node replicates connections (`--conntrack-sync`).
    pub fn start(client: Client, node: &str, replicating: bool, metrics: Metrics) -> Driver {
        let (rules, rx) = watch::channel(None::<Arc<Ruleset>>);
        let firewall = Firewall {
            client: client.clone(),
            node: node.to_string(),
            recorder: Recorder::new(client, "ferrolb-speaker", node),
        };
        Driver { node: node.to_string(), replicating, rules, task: tokio::spawn(apply(rx, metrics, firewall)) }
    }

    /// Forwards what `view` says from now on; Services that did not change keep their part of
    /// the table as it was.
    pub fn set_view(&self, view: &View) {
        let services = model::forwarded(view, &self.node, self.replicating);
        let ruleset = match self.rules.borrow().as_deref() {
            Some(old) => old.rebuilt(&services),
            None => Ruleset::of(&services),
        };
        self.rules.send_if_modified(|current| {
            if current.as_deref() == Some(&ruleset) {
                return false;
            }
            *current = Some(Arc::new(ruleset));
            true
        });
    }

    /// Stops applying and leaves the table in the kernel (a restart in place: the next run adopts
    /// it, and established connections keep their state meanwhile).
    pub fn detach(self) {
        self.task.abort();
    }

    /// Stops applying and removes the table.
    pub async fn stop(self) {
        self.task.abort();
        if let Err(e) = nft::remove().await {
            tracing::warn!(error = %e, "could not remove the nftables table");
        }
    }
}

/// Where firewall findings are reported.
struct Firewall {
    client: Client,
    node: String,
    recorder: Recorder,
}

impl Firewall {
    /// Looks for drop policies of other tables; reports a new finding once (log and Event on the
    /// Node), and keeps the metric current.
    async fn check(&self, metrics: &Metrics, reported: &mut Vec<String>) {
        let Ok(json) = nft::chains_json().await else { return };
        let found = firewall::blocking_chains(&json);
        metrics.firewall_blocking.set(found.len() as i64);
        if found.is_empty() || found == *reported {
            *reported = found;
            return;
        }
        let message = format!(
            "the host firewall may drop traffic ferrolb forwards to Service endpoints: {} (see docs/FORWARDING.md, \"Host firewalls\")",
            found.join("; ")
        );
        tracing::warn!(chains = ?found, "{message}");
        if let Ok(node) = Api::<Node>::all(self.client.clone()).get(&self.node).await {
            let _ = self.recorder.publish(&node.object_ref(&()), true, "ForwardingBlocked", "Forward", &message).await;
        }
        *reported = found;
    }
}

/// Applies every new ruleset as its difference from the last one applied, and puts the whole
/// table back at start, after a failure, and when someone else changed or deleted it.
async fn apply(mut rules: watch::Receiver<Option<Arc<Ruleset>>>, metrics: Metrics, firewall: Firewall) {
    // The ruleset the kernel holds, if the last transaction succeeded, and the content the
    // first read-back after it found (see `readback`).
    let mut applied: Option<Arc<Ruleset>> = None;
    let mut adopted: Option<BTreeMap<String, u64>> = None;
    let mut reported: Vec<String> = Vec::new();
    let mut next_check = tokio::time::Instant::now() + CHECK_EVERY;
    loop {
        tokio::select! {
            changed = rules.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep_until(next_check) => {
                firewall.check(&metrics, &mut reported).await;
                let started = tokio::time::Instant::now();
                // Nothing applied yet (or the last attempt failed): try again below.
                if let Some(expected) = &applied {
                    let listed = nft::current().await.ok().and_then(|json| readback::read(&json));
                    match readback::verdict(&expected.shape(), adopted.as_ref(), listed) {
                        Verdict::Intact { adopt } => {
                            if adopt.is_some() {
                                adopted = adopt;
                            }
                            metrics.nft_verified.inc();
                        }
                        Verdict::Repair => {
                            tracing::warn!("ferrolb's nftables table was changed by someone else; repairing it");
                            metrics.nft_repairs.inc();
                            applied = None;
                        }
                    }
                }
                // Reading back costs time with the table's size (~0.6 s at 10,000 Services): wait
                // twenty times as long as it took, so that it never takes more than 5% of a core.
                next_check = tokio::time::Instant::now() + CHECK_EVERY.max(started.elapsed() * 20);
            }
        }
        let Some(wanted) = rules.borrow_and_update().clone() else { continue };
        let text = match &applied {
            Some(old) if Arc::ptr_eq(old, &wanted) => continue,
            Some(old) => wanted.changes_from(old),
            None => wanted.full(),
        };
        if text.is_empty() {
            // The same table under another name: nothing to write, nothing to read back anew.
            applied = Some(wanted);
            continue;
        }
        match nft::apply(&text).await {
            Ok(()) => {
                metrics.nft_applies.inc();
                applied = Some(wanted);
                adopted = None;
            }
            Err(e) => {
                // The kernel refused the transaction as a whole; start over from a full table.
                tracing::error!(error = %e, "could not program nftables");
                applied = None;
            }
        }
    }
}
