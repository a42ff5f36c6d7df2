//! `ferrolb-lab up|down`: a small cluster of network namespaces with sim-apiserver, on this host
//! (root). `up` runs in the foreground until Ctrl-C/SIGTERM or `down`, and removes everything it
//! made when it stops.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use ferrolb_tests::lab::{self, Lab};

/// The ferrolb lab (not part of the product).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Build the lab and serve it until stopped.
    Up {
        /// How many nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Write JSON describing the lab here.
        #[arg(long)]
        state_file: Option<PathBuf>,
    },
    /// Show ferrolb at work: a Service gets an address, one node answers for it, that node's
    /// speaker is killed and another takes over; prints the failover time, then cleans up.
    Demo,
    /// Tear down the lab a state file describes.
    Down {
        /// The file `up --state-file` wrote.
        #[arg(long)]
        state_file: PathBuf,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferrolb-lab: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), lab::netns::LabError> {
    match args.command {
        Cmd::Up { nodes, state_file } => {
            let lab = Lab::up(nodes).await?;
            let running = lab.start_cluster().await?;
            if let Some(path) = &state_file {
                lab.write_state(path)?;
            }
            let t = &lab.topology;
            println!("lab {} is up: sim-apiserver, ferrolb-controller, a ferrolb-speaker per node", t.prefix);
            println!(
                "kubeconfig: {}  (KUBECONFIG={} kubectl get nodes)",
                lab.kubeconfig().display(),
                lab.kubeconfig().display()
            );
            println!("logs: {}", lab.dir.display());
            println!(
                "backends: Pods app=echo in every pod namespace, TCP and UDP 8080 (container ports echo / echo-udp); any Service selecting them gets EndpointSlices"
            );
            for n in &t.nodes {
                println!("node {}: ip netns exec {} ... ({} / {}, {})", n.name, n.namespace, n.ipv4, n.ipv6, n.mac);
            }
            println!("client: ip netns exec {} ... ({} / {})", t.client.namespace, t.client.ipv4, t.client.ipv6);
            println!("stop with Ctrl-C or `ferrolb-lab down --state-file FILE`");
            println!("\n{}", lab::demo::first_step(&lab));
            ferrolb_process::shutdown_signal().await;
            drop(running);
            drop(lab);
            if let Some(path) = &state_file {
                let _ = std::fs::remove_file(path);
            }
            Ok(())
        }
        Cmd::Demo => {
            let outcome = lab::demo::run(|line| println!("{line}")).await?;
            println!(
                "demo passed: {} moved from {} to {} in {} ms",
                outcome.vip,
                outcome.first,
                outcome.second,
                outcome.failover.as_millis()
            );
            Ok(())
        }
        Cmd::Down { state_file } => lab::down(&state_file),
    }
}
