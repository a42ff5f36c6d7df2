//! `ferrolb-speaker`: runs on every node; elects, per address, the node that announces it, answers
//! ARP/NDP for it, advertises addresses over BGP through a routing daemon, and programs nftables
//! forwarding.

use std::net::SocketAddr;
use std::path::PathBuf;

use std::time::Duration;

use clap::Parser;
use ferrolb_process as telemetry;
use ferrolb_speaker::agent;
use ferrolb_speaker::l2::interfaces::DEFAULT_EXCLUDED;
use ferrolb_speaker::membership::key::Key;
use ferrolb_speaker::membership::liveness::Timings;

/// How VIP traffic reaches the Service's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Forwarding {
    /// The speaker programs its own nftables table.
    Nftables,
    /// Leave forwarding to kube-proxy.
    None,
}

/// Who replicates connection state between nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ConntrackSync {
    /// Nothing is replicated: a failover cuts the connections the dead node carried.
    None,
    /// conntrackd (on PATH), run by the speaker, for Services annotated
    /// `ferrolb.io/replicate-connections: "true"`.
    Conntrackd,
}

/// Who advertises addresses of pools with `bgp.enabled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Bgp {
    /// BGP mode off.
    None,
    /// BIRD 2 (`bird`, `birdc` on PATH), configured and supervised by the speaker.
    Bird,
    /// Only the kernel table; a routing daemon the user runs exports it.
    External,
}

/// Flags; the names are a stable contract (docs/CONFIGURATION.md lists them, docs/ARCHITECTURE.md the modules).
#[derive(Parser, Debug)]
#[command(version, about = "ferrolb speaker: ARP/NDP announcements, BGP advertisements and forwarding for one node")]
struct Args {
    /// Kubeconfig to use; without it KUBECONFIG or the in-cluster configuration, as kube does.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The Node this speaker runs on.
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// Namespace of the speakers' membership Leases.
    #[arg(long, default_value = "ferrolb-system")]
    namespace: String,
    /// UDP port for heartbeats between speakers.
    #[arg(long, default_value_t = 7946)]
    peer_port: u16,
    /// File holding the shared heartbeat secret (HMAC key); unauthenticated without it.
    #[arg(long)]
    peer_secret_file: Option<PathBuf>,
    /// How VIP traffic is forwarded.
    #[arg(long, value_enum, default_value_t = Forwarding::Nftables)]
    forwarding: Forwarding,
    /// Where /metrics is served: the node's loopback by default, since the speaker runs on the
    /// host network and its metrics name the addresses this node announces.
    #[arg(long, default_value = "127.0.0.1:7474")]
    metrics_addr: SocketAddr,
    /// Where /healthz and /readyz are served.
    #[arg(long, default_value = "0.0.0.0:7475")]
    health_addr: SocketAddr,
    /// Interfaces never announced on unless a pool's l2.interfaces names them: names or globs,
    /// comma-separated (empty: none). The default lists the virtual interfaces of CNIs, container
    /// engines and kube-proxy.
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_EXCLUDED.iter().map(|s| s.to_string()).collect::<Vec<_>>())]
    exclude_interfaces: Vec<String>,
    /// BGP mode: who advertises the routes.
    #[arg(long, value_enum, default_value_t = Bgp::None)]
    bgp: Bgp,
    /// The kernel routing table the speaker writes the routes to advertise into (no rule routes
    /// traffic by it).
    #[arg(long, default_value_t = 179, value_parser = clap::value_parser!(u32).range(1..=0xffff_fffe))]
    bgp_route_table: u32,
    /// Where BIRD's configuration and control socket live (`--bgp bird`).
    #[arg(long, default_value = "/run/bird")]
    bgp_dir: PathBuf,
    /// How often heartbeats are sent (milliseconds).
    #[arg(long, default_value_t = 100)]
    heartbeat_interval_ms: u64,
    /// A peer silent for this long is dead (milliseconds).
    #[arg(long, default_value_t = 500)]
    peer_timeout_ms: u64,
    /// At start, wait at most this long to hear every registered peer before announcing
    /// (milliseconds).
    #[arg(long, default_value_t = 2000)]
    startup_settle_ms: u64,
    /// Connection replication: established connections of annotated Services survive a
    /// failover. Needs `--forwarding nftables`; turns conntrack events off for other flows on the
    /// host.
    #[arg(long, value_enum, default_value_t = ConntrackSync::None)]
    conntrack_sync: ConntrackSync,
    /// How long peers keep this speaker's addresses on its node while it restarts in place (its
    /// node still up), in milliseconds; 0 hands them over on every exit.
    #[arg(long, default_value_t = 30_000)]
    restart_grace_ms: u64,
    /// A directory on the host that does not outlive a reboot (as the kernel's table does not),
    /// where the speaker keeps what it announces for its next run.
    #[arg(long, default_value = "/run/ferrolb")]
    state_dir: PathBuf,
    /// How long the speaker's Lease lasts without renewal (seconds).
    #[arg(long, default_value_t = 10)]
    lease_seconds: u64,
    /// Log format.
    #[arg(long, value_enum, default_value_t = telemetry::LogFormat::Text)]
    log_format: telemetry::LogFormat,
    /// Log filter (tracing EnvFilter syntax), overridden by RUST_LOG.
    #[arg(long, default_value = "info")]
    log_level: String,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    telemetry::init_logging(args.log_format, &args.log_level);
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "ferrolb-speaker failed");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), telemetry::Error> {
    let secret = match &args.peer_secret_file {
        Some(path) => Key::from_file(path).map_err(|e| telemetry::Error::Config(format!("--peer-secret-file {e}")))?,
        None => Key::none(),
    };
    if args.conntrack_sync == ConntrackSync::Conntrackd && args.forwarding != Forwarding::Nftables {
        return Err(telemetry::Error::Config(
            "--conntrack-sync conntrackd needs --forwarding nftables (the replicated flows are ferrolb's own NAT)"
                .into(),
        ));
    }
    let client = telemetry::connect(args.kubeconfig.as_deref(), "ferrolb-speaker").await?;
    let version = client.apiserver_version().await?;
    tracing::info!(
        server = %version.git_version,
        node = %args.node_name,
        namespace = %args.namespace,
        peer_port = args.peer_port,
        authenticated = secret.is_some(),
        forwarding = ?args.forwarding,
        bgp = ?args.bgp,
        "connected to the API server"
    );
    let metrics = ferrolb_speaker::metrics::Metrics::default();
    let telemetry = telemetry::Telemetry::new(|r| metrics.register(r));
    telemetry.serve(args.metrics_addr, args.health_addr).await?;
    telemetry.set_ready(true);
    let cfg = agent::Config {
        // The loop turns every heartbeat interval; 10 s without a turn is a stuck process (the
        // kubelet restarts it after its liveness probe's failures, 30 s in the chart).
        beat: telemetry.loops.watch("speaker", Duration::from_secs(10)),
        node: args.node_name,
        namespace: args.namespace,
        peer_port: args.peer_port,
        secret,
        timings: Timings {
            interval: Duration::from_millis(args.heartbeat_interval_ms.max(10)),
            timeout: Duration::from_millis(args.peer_timeout_ms.max(20)),
            grace: Duration::from_millis(args.startup_settle_ms),
            hold: Duration::from_millis(args.restart_grace_ms),
        },
        state_dir: args.state_dir,
        conntrack_sync: args.conntrack_sync == ConntrackSync::Conntrackd,
        lease_duration: Duration::from_secs(args.lease_seconds.max(3)),
        forwarding: args.forwarding == Forwarding::Nftables,
        bgp: match args.bgp {
            Bgp::None => None,
            Bgp::Bird => Some(agent::BgpConfig { table: args.bgp_route_table, bird_dir: Some(args.bgp_dir) }),
            Bgp::External => Some(agent::BgpConfig { table: args.bgp_route_table, bird_dir: None }),
        },
        exclude_interfaces: args
            .exclude_interfaces
            .into_iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
    };
    agent::run(client, cfg, metrics, telemetry::shutdown_signal()).await?;
    Ok(())
}
