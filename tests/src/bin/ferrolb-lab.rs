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
        /// BGP mode: an upstream router (FRR) and a client behind it, BGPPeers for it, and every
        /// speaker running BIRD (needs bird2 and frr).
        #[arg(long)]
        bgp: bool,
    },
    /// Show ferrolb at work: a Service gets an address, one node answers for it, that node's
    /// speaker is killed and another takes over; prints the failover time, then cleans up.
    Demo,
    /// Run the seeded chaos soak on a lab of its own and print its counts (the CI test runs a
    /// minute of fixed seeds; this is the long form).
    Chaos {
        /// The seed (decimal or 0x-hex); the same seed draws the same actions.
        #[arg(long, value_parser = ferrolb_tests::chaos::rng::parse_seed, default_value = "0x5eed0001")]
        seed: u64,
        /// How long to draw actions, in seconds.
        #[arg(long, default_value_t = 1800)]
        seconds: u64,
    },
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
        Cmd::Up { nodes, state_file, bgp } => {
            let lab = Lab::build(nodes, bgp).await?;
            let (running, router) = if bgp {
                let (running, router) =
                    lab.start_bgp_cluster(&lab::router::RouterConfig::default(), serde_json::json!({})).await?;
                (running, Some(router))
            } else {
                (lab.start_cluster().await?, None)
            };
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
            if let (Some(routed), Some(router)) = (&t.routed, &router) {
                println!(
                    "router: ip netns exec {} ... ({} / {}, FRR AS {}; vtysh --vty_socket {}); BGPPeers router and router-v6, nodes AS {}",
                    routed.router.namespace,
                    routed.router.ipv4,
                    routed.router.ipv6,
                    lab::router::ROUTER_ASN,
                    router.vty_dir().display(),
                    lab::router::NODE_ASN
                );
                println!(
                    "remote client (behind the router): ip netns exec {} ... ({} / {})",
                    routed.remote.namespace, routed.remote.ipv4, routed.remote.ipv6
                );
            }
            println!("stop with Ctrl-C or `ferrolb-lab down --state-file FILE`");
            match &router {
                Some(r) => println!("\n{}", lab::demo::first_step_bgp(&lab, r.vty_dir())),
                None => println!("\n{}", lab::demo::first_step(&lab)),
            }
            ferrolb_process::shutdown_signal().await;
            drop(running);
            drop(router);
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
        Cmd::Chaos { seed, seconds } => {
            let config = ferrolb_tests::chaos::driver::Config::new(seed, std::time::Duration::from_secs(seconds));
            match ferrolb_tests::chaos::driver::soak(config, |line| println!("{line}")).await {
                Ok(report) => {
                    println!("\n{report}");
                    Ok(())
                }
                Err(failure) => Err(lab::netns::LabError::Io(std::io::Error::other(failure.to_string()))),
            }
        }
        Cmd::Down { state_file } => lab::down(&state_file),
    }
}
