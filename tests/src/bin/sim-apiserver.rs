//! `sim-apiserver --listen ADDR --kubeconfig-out PATH`: serves the Kubernetes API from memory.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use ferrolb_tests::apiserver::{SimApiServer, SimConfig};

/// An in-memory test double of kube-apiserver (not part of the product).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Where to write a kubeconfig for kubectl and kube-rs.
    #[arg(long)]
    kubeconfig_out: Option<PathBuf>,
    /// NodePort range, as kube-apiserver's flag of the same name.
    #[arg(long, default_value = "30000-32767")]
    service_node_port_range: String,
    /// ClusterIP ranges, comma-separated (two families make the cluster dual-stack).
    #[arg(long, default_value = "10.96.0.0/16,fd00:10:96::/112")]
    service_cluster_ip_range: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    let args = Args::parse();
    let (lo, hi) =
        args.service_node_port_range.split_once('-').ok_or("--service-node-port-range must look like 30000-32767")?;
    let (lo, hi): (u16, u16) = (lo.trim().parse()?, hi.trim().parse()?);
    if lo > hi {
        return Err("--service-node-port-range: start is after end".into());
    }
    let cidrs = args.service_cluster_ip_range.split(',').map(|c| c.trim().parse()).collect::<Result<Vec<_>, _>>()?;
    let config = SimConfig { listen: args.listen, service_cidrs: cidrs, node_ports: lo..=hi, ..SimConfig::default() };
    let server = SimApiServer::start(config).await?;
    if let Some(path) = &args.kubeconfig_out {
        server.write_kubeconfig(path)?;
    }
    println!("listening on {}", server.url());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
