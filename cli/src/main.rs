//! `ferrolb` (also `kubectl ferrolb` when installed as `kubectl-ferrolb`): status of pools and
//! Services, migration from MetalLB, offline checks of IPPool files.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ferrolb_cli::{check, migrate, status, yaml};
use ferrolb_crds::{BGPPeer, IPPool};
use k8s_openapi::api::core::v1::Service;
use kube::Api;

#[derive(Parser)]
#[command(version, about = "ferrolb's command-line tool (also usable as `kubectl ferrolb`)")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Pools with their usage, BGP peers with every node's session, and every Service ferrolb
    /// handles with its addresses, pool and the nodes announcing it.
    Status {
        /// Kubeconfig to use; without it KUBECONFIG or the in-cluster configuration.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// The loadBalancerClass the controller handles.
        #[arg(long, default_value = ferrolb_crds::annotations::DEFAULT_LB_CLASS)]
        lb_class: String,
    },
    /// Read MetalLB's IPAddressPool, L2Advertisement, BGPAdvertisement, BGPPeer, BFDProfile and
    /// Community YAML and write the equivalent IPPools and BGPPeers to stdout; what cannot be
    /// translated is said on stderr.
    Migrate {
        /// Files to read (`-` for stdin).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// ferrolb's namespace: where Secrets made for inline BGP passwords go.
        #[arg(long, default_value = "ferrolb-system")]
        namespace: String,
    },
    /// Validate IPPool and BGPPeer YAML offline (pools with the controller's own parser, peers
    /// with the CRD's rules); exits 1 if an object is invalid or a pool overlaps another.
    Check {
        /// Files to read (`-` for stdin).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// Every document of every file.
fn read(files: &[PathBuf]) -> Result<Vec<serde_json::Value>, String> {
    let mut docs = Vec::new();
    for f in files {
        let name = f.display().to_string();
        let text = if name == "-" {
            std::io::read_to_string(std::io::stdin()).map_err(|e| format!("stdin: {e}"))?
        } else {
            std::fs::read_to_string(f).map_err(|e| format!("{name}: {e}"))?
        };
        docs.extend(yaml::documents(&name, &text).map_err(|e| e.to_string())?);
    }
    Ok(docs)
}

async fn run(args: Args) -> Result<ExitCode, String> {
    match args.command {
        Command::Check { files } => {
            let (reports, others) = check::check(&read(&files)?);
            if reports.is_empty() {
                return Err("no IPPool or BGPPeer found".into());
            }
            let (text, ok) = check::render(&reports, &others);
            print!("{text}");
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Migrate { files, namespace } => {
            let m = migrate::migrate(&read(&files)?, &namespace);
            if m.pools.is_empty() {
                return Err("no MetalLB IPAddressPool found".into());
            }
            print!("{}", yaml::to_yaml(&[m.pools, m.peers].concat()));
            for n in &m.notes {
                eprintln!("note: {n}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { kubeconfig, lb_class } => {
            let client =
                ferrolb_process::connect(kubeconfig.as_deref(), "ferrolb-cli").await.map_err(|e| e.to_string())?;
            let pools = Api::<IPPool>::all(client.clone())
                .list(&Default::default())
                .await
                .map_err(|e| format!("listing IPPools: {e}"))?;
            // A cluster without BGPPeers' CRD (404) simply has none.
            let peers = match Api::<BGPPeer>::all(client.clone()).list(&Default::default()).await {
                Ok(list) => list.items,
                Err(kube::Error::Api(e)) if e.code == 404 => Vec::new(),
                Err(e) => return Err(format!("listing BGPPeers: {e}")),
            };
            let services = Api::<Service>::all(client)
                .list(&Default::default())
                .await
                .map_err(|e| format!("listing Services: {e}"))?;
            print!("{}", status::render(&pools.items, &peers, &services.items, &lb_class));
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    // Called as `ferrolb-controller` (the controller image links that name to this executable):
    // be the controller. One executable for both keeps that image small.
    let called = std::env::args_os().next().map(PathBuf::from);
    if called.as_deref().and_then(|p| p.file_name()).is_some_and(|n| n == "ferrolb-controller") {
        return ferrolb_controller::command::main();
    }
    cli()
}

#[tokio::main(flavor = "current_thread")]
async fn cli() -> ExitCode {
    match run(Args::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ferrolb: {e}");
            ExitCode::from(2)
        }
    }
}
