//! `ferrolb-controller`: hands out EXTERNAL-IPs from IPPools to LoadBalancer Services.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use ferrolb_crds::runtime as telemetry;

/// Flags; names are part of the contract in DESIGN.md.
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

#[tokio::main]
async fn main() -> std::process::ExitCode {
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
    let client = telemetry::connect(args.kubeconfig.as_deref()).await?;
    let version = client.apiserver_version().await?;
    tracing::info!(
        server = %version.git_version,
        lb_class = %args.lb_class,
        lb_class_only = args.lb_class_only,
        namespace = %args.namespace,
        "connected to the API server"
    );
    let telemetry = telemetry::Telemetry::new(|_| {});
    telemetry.set_ready(true);
    telemetry.serve(args.metrics_addr, args.health_addr).await?;
    tokio::signal::ctrl_c().await?;
    Ok(())
}
