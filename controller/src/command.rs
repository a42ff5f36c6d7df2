//! The `ferrolb-controller` command: flags, start-up, and leading in turn with the other replicas.
//! A library module so that one executable can be both the controller and the CLI (the controller
//! image ships one, under both names: scripts/image-rootfs.sh).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::allocator::reserved::Hole;
use crate::leader::{self, LeaderConfig};
use crate::metrics::Metrics;
use crate::reconcile::{self, Context, service::Handling};
use clap::Parser;
use ferrolb_process as telemetry;
use tokio::sync::watch;

/// Flags; the names are a stable contract (docs/CONFIGURATION.md lists them, docs/ARCHITECTURE.md the modules).
#[derive(Parser, Debug)]
#[command(version, about = "ferrolb controller: IP address management for LoadBalancer Services")]
struct Args {
    /// Kubeconfig to use; without it KUBECONFIG or the in-cluster configuration, as kube does.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The spec.loadBalancerClass this controller handles.
    #[arg(long, default_value = ferrolb_crds::annotations::DEFAULT_LB_CLASS)]
    lb_class: String,
    /// Ignore Services that set no loadBalancerClass.
    #[arg(long)]
    lb_class_only: bool,
    /// Namespace of the leader-election Lease.
    #[arg(long, default_value = "ferrolb-system")]
    namespace: String,
    /// This replica's name in the Lease (default: POD_NAME, else the host name and process id).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// How long the leader's Lease lasts without renewal (seconds).
    #[arg(long, default_value_t = 15)]
    leader_lease_seconds: u64,
    /// How often the Lease is acquired or renewed (milliseconds).
    #[arg(long, default_value_t = 2000)]
    leader_retry_ms: u64,
    /// The cluster's own ranges, never handed out whatever a pool says: its Service CIDRs
    /// (kube-apiserver's --service-cluster-ip-range), comma-separated. ClusterIPs and Node
    /// addresses in use are never handed out anyway.
    #[arg(long, value_delimiter = ',', value_parser = parse_hole)]
    reserved_cidrs: Vec<Hole>,
    /// The Secret (in --namespace) holding the speakers' heartbeat key: created with a random key
    /// when missing, never changed when present. Empty: the controller does not manage it.
    #[arg(long, default_value = "")]
    peer_secret: String,
    /// How many Service writes run at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Where /metrics is served.
    #[arg(long, default_value = "0.0.0.0:7472")]
    metrics_addr: SocketAddr,
    /// Where /healthz and /readyz are served.
    #[arg(long, default_value = "0.0.0.0:7473")]
    health_addr: SocketAddr,
    /// Log format.
    #[arg(long, value_enum, default_value_t = telemetry::LogFormat::Text)]
    log_format: telemetry::LogFormat,
    /// Log filter (tracing EnvFilter syntax), overridden by RUST_LOG.
    #[arg(long, default_value = "info")]
    log_level: String,
}

fn parse_hole(entry: &str) -> Result<Hole, String> {
    Hole::parse(entry, "reserved by --reserved-cidrs")
        .ok_or_else(|| format!("{entry:?} is not a CIDR, address or range"))
}

/// Runs the controller with the process's arguments until SIGTERM.
#[tokio::main]
pub async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    telemetry::init_logging(args.log_format, &args.log_level);
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "ferrolb-controller failed");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), telemetry::Error> {
    let client = telemetry::connect(args.kubeconfig.as_deref(), "ferrolb-controller").await?;
    let version = client.apiserver_version().await?;
    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "controller".into());
        format!("{}-{}", host.trim(), std::process::id())
    });
    tracing::info!(server = %version.git_version, lb_class = %args.lb_class, identity = %identity, "connected to the API server");
    let metrics = Metrics::default();
    let telemetry = telemetry::Telemetry::new(|r| metrics.register(r));
    telemetry.serve(args.metrics_addr, args.health_addr).await?;
    telemetry.set_ready(true);
    if !args.peer_secret.is_empty() {
        tokio::spawn(crate::peer_secret::run(client.clone(), args.namespace.clone(), args.peer_secret.clone()));
    }

    let (leading_tx, mut leading) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let election = tokio::spawn(leader::run(
        client.clone(),
        LeaderConfig {
            namespace: args.namespace.clone(),
            name: "ferrolb-controller".into(),
            identity: identity.clone(),
            lease_duration: Duration::from_secs(args.leader_lease_seconds),
            retry_period: Duration::from_millis(args.leader_retry_ms),
        },
        leading_tx,
        stop_rx,
    ));
    let ctx = Context {
        client,
        handling: Handling { lb_class: args.lb_class, class_only: args.lb_class_only },
        metrics: metrics.clone(),
        concurrency: args.concurrency,
        field_manager: identity,
        reserved_cidrs: args.reserved_cidrs,
        // The loop turns at least every 250 ms while leading.
        beat: telemetry.loops.watch("controller", Duration::from_secs(10)),
    };
    let shutdown = telemetry::shutdown_signal();
    tokio::pin!(shutdown);
    'outer: loop {
        // Wait to lead.
        while !*leading.borrow_and_update() {
            tokio::select! {
                changed = leading.changed() => if changed.is_err() { break 'outer },
                _ = &mut shutdown => break 'outer,
            }
        }
        metrics.leader.set(1);
        telemetry.set_ready(false);
        let ready = telemetry.clone();
        let term = tokio::spawn(reconcile::run(ctx.clone(), move || ready.set_ready(true)));
        let peers = tokio::spawn(reconcile::peer_status::run(ctx.client.clone(), ctx.field_manager.clone()));
        // Lead until the Lease is lost or we are told to stop; then stop writing at once.
        let stopping = loop {
            tokio::select! {
                changed = leading.changed() => {
                    if changed.is_err() || !*leading.borrow_and_update() { break false }
                }
                _ = &mut shutdown => break true,
            }
        };
        term.abort();
        peers.abort();
        let _ = term.await;
        let _ = peers.await;
        metrics.leader.set(0);
        telemetry.set_ready(true);
        tracing::info!("stopped leading");
        if stopping {
            break;
        }
    }
    stop_tx.send_replace(true);
    let _ = election.await;
    Ok(())
}
