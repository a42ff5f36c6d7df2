//! The effects of BGP mode, in a task of their own: the kernel table follows the plan, BIRD runs
//! the rendered configuration, and what BIRD says of each session becomes this node's entry in
//! the BGPPeer's status, an Event, and a metric. The announcer only sends what it wants.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferrolb_crds::BGPPeer;
use ferrolb_process::events::Recorder;
use ipnetwork::IpNetwork;
use kube::Client;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::watch;

use super::bird::{self, Session};
use super::daemon::Bird;
use super::status::{self, Entry};
use super::table::Table;
use crate::metrics::{Metrics, PeerLabel};

/// How often BIRD is asked about its sessions (and a failed step tried again).
const POLL_EVERY: Duration = Duration::from_secs(1);

/// The peers of a node by name, each with how BIRD runs it, or why it cannot be used.
pub type PeerProtocols = BTreeMap<String, Result<PeerRun, String>>;

/// A peer BIRD runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRun {
    /// BIRD's protocol name.
    pub protocol: String,
    /// What to say when the session is down and BIRD recorded no error (the router is silent).
    pub silent: String,
}

/// What the announcer wants.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Desired {
    /// Prefixes with their class (the route's metric).
    pub routes: BTreeMap<IpNetwork, u32>,
    /// BIRD's configuration; None when an external daemon reads the table.
    pub config: Option<String>,
    /// The peers of this node.
    pub peers: PeerProtocols,
}

/// What the driver reports back.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// The routes the kernel table holds as last synchronised.
    pub routes: BTreeMap<IpNetwork, u32>,
    /// Every session's state, by peer name.
    pub sessions: BTreeMap<String, Session>,
}

/// The handle the announcer keeps.
pub struct Handle {
    /// What is wanted now.
    pub desired: watch::Sender<Desired>,
    /// What is.
    pub observed: Arc<Mutex<Observed>>,
}

/// Where BIRD's files go, and which kernel table to write.
#[derive(Debug, Clone)]
pub struct Setup {
    /// This node.
    pub node: String,
    /// The kernel table.
    pub table: u32,
    /// BIRD's directory (configuration, control socket); None with an external daemon.
    pub bird_dir: Option<PathBuf>,
}

/// Starts the driver.
pub fn start(client: Client, peers: Option<Store<BGPPeer>>, setup: Setup, metrics: Metrics) -> std::io::Result<Handle> {
    let table = Table::open(setup.table)?;
    let (desired, rx) = watch::channel(Desired::default());
    let observed = Arc::new(Mutex::new(Observed::default()));
    let bird = setup.bird_dir.as_deref().map(Bird::new);
    let recorder = Recorder::new(client.clone(), "ferrolb-speaker", &setup.node);
    tokio::spawn(run(Task { client, recorder, peers, node: setup.node, table, bird, metrics }, rx, observed.clone()));
    Ok(Handle { desired, observed })
}

struct Task {
    client: Client,
    recorder: Recorder,
    peers: Option<Store<BGPPeer>>,
    node: String,
    table: Table,
    bird: Option<Bird>,
    metrics: Metrics,
}

async fn run(mut t: Task, mut rx: watch::Receiver<Desired>, observed: Arc<Mutex<Observed>>) {
    let mut written: BTreeMap<String, Entry> = BTreeMap::new();
    let mut poll = tokio::time::interval(POLL_EVERY);
    // Nothing is touched before the announcer has said what it wants: after a restart in place
    // the table still holds the previous run's routes, which a router with graceful restart is
    // keeping, and an empty table now would withdraw them for a moment.
    let mut told = false;
    let mut first = true;
    loop {
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { break } else { told = true },
            _ = poll.tick() => {}
        }
        if !told {
            continue;
        }
        if first {
            first = false;
            // Routes left by a previous run: a restart in place.
            if let Some(bird) = &mut t.bird
                && t.table.read().await.is_ok_and(|r| !r.is_empty())
            {
                bird.recover();
            }
        }
        let want = rx.borrow_and_update().clone();
        // The table first: a BIRD that starts now finds the routes there and advertises them
        // before it tells the routers it has sent everything (which ends their graceful restart).
        match t.table.sync(&want.routes).await {
            Ok((added, removed)) if added + removed > 0 => {
                tracing::info!(added, removed, routes = want.routes.len(), "BGP route table updated");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not update the BGP route table"),
        }
        if let (Some(bird), Some(config)) = (&mut t.bird, &want.config)
            && let Err(e) = bird.ensure(config).await
        {
            tracing::warn!(error = %e, "BIRD is not running the wanted configuration");
        }
        let routes = t.table.read().await.unwrap_or_default();
        t.metrics.bgp_routes.set(i64::try_from(routes.len()).unwrap_or(i64::MAX));
        let sessions = match &t.bird {
            Some(bird) => sessions(bird, &want).await,
            None => BTreeMap::new(),
        };
        report(&t, &want, &sessions, &mut written).await;
        let mut o = observed.lock().unwrap_or_else(|e| e.into_inner());
        o.routes = routes;
        o.sessions = sessions;
    }
    if let Some(bird) = &mut t.bird {
        bird.stop().await;
    }
}

/// Each peer's session: BIRD's word for the ones it runs, the reason for the ones it cannot.
async fn sessions(bird: &Bird, want: &Desired) -> BTreeMap<String, Session> {
    let running = match bird.control(&["show", "protocols", "all"]).await {
        Ok(text) => bird::parse_protocols(&text),
        Err(e) => {
            tracing::debug!(error = %e, "BIRD does not answer (yet)");
            BTreeMap::new()
        }
    };
    want.peers
        .iter()
        .map(|(peer, protocol)| {
            let s = match protocol {
                Ok(p) => match running.get(&p.protocol) {
                    Some(s) if s.state != "Established" && s.last_error.is_none() => {
                        Session { last_error: Some(p.silent.clone()), ..s.clone() }
                    }
                    Some(s) => s.clone(),
                    None => Session {
                        state: "Idle".into(),
                        last_error: Some("BIRD is not running this session yet".into()),
                        exported: None,
                    },
                },
                Err(why) => Session { state: "Idle".into(), last_error: Some(why.clone()), exported: None },
            };
            (peer.clone(), s)
        })
        .collect()
}

/// Writes this node's entry of every peer whose state or reason changed, and the metrics.
async fn report(t: &Task, want: &Desired, sessions: &BTreeMap<String, Session>, written: &mut BTreeMap<String, Entry>) {
    let peers: BTreeSet<&String> = want.peers.keys().collect();
    written.retain(|p, _| peers.contains(p));
    t.metrics.bgp_sessions.clear();
    for (peer, s) in sessions {
        let up = s.state == "Established";
        t.metrics.bgp_sessions.get_or_create(&PeerLabel { peer: peer.clone() }).set(i64::from(up));
        let message = if up { None } else { s.last_error.clone() };
        if written.get(peer).is_some_and(|w| w.state == s.state && w.message == message) {
            continue;
        }
        let Some(object) = t.peers.as_ref().and_then(|store| store.get(&ObjectRef::new(peer))) else { continue };
        let entry = Entry { state: s.state.clone(), since: jiff::Timestamp::now(), message };
        match status::write(&t.client, &t.recorder, &t.node, &object, &entry).await {
            Ok(()) => {
                written.insert(peer.clone(), entry);
            }
            // Tried again on the next poll.
            Err(e) => tracing::warn!(%peer, error = %e, "could not write the BGP session state"),
        }
    }
}
