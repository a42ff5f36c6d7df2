//! Connections survive what users do to speakers: a rolling restart of every speaker (what every
//! `helm upgrade` does), a speaker killed and restarted, and a dead node that comes back. Real
//! long-lived TCP streams (a line every 50 ms, each echoed by a pod) and new connections every
//! 10 ms run through the VIPs the whole time.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use ferrolb_speaker::election;
use ferrolb_tests::lab::streams::{Prober, Stream, StreamReport};
use ferrolb_tests::lab::{Lab, netns, probe, processes::Running, replication};
use serde_json::json;

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// For every node, an address it wins (so that each node announces one VIP).
fn one_vip_per_node(lab: &Lab) -> Vec<Ipv4Addr> {
    (0..lab.topology.nodes.len()).map(|i| lab.addresses_won_by(i, 1)[0]).collect()
}

/// A lab with a cluster, line echo servers on port 9000, and a Service per VIP (port 80: the
/// pod's name; port 9000: the line echo), each answered by the node that wins it. With
/// `replicate`, speakers replicate connections and the Services ask for it.
async fn lab_with_vips(replicate: bool) -> (Lab, Running, Vec<Ipv4Addr>) {
    let lab = Lab::build(3, false).await.expect("lab up");
    let running = if replicate {
        lab.start_replicating_cluster().await.unwrap()
    } else {
        let mut running = lab.start_cluster().await.unwrap();
        running.backends.extend(lab.start_line_echo(9000).unwrap());
        running
    };
    lab.apply_pool("lan", json!({"addresses": ["198.51.100.200-198.51.100.250"]})).await.unwrap();
    let vips = one_vip_per_node(&lab);
    for (i, vip) in vips.iter().enumerate() {
        lab.line_service(&format!("s{i}"), "echo", *vip, replicate).await.unwrap();
    }
    for (i, vip) in vips.iter().enumerate() {
        lab.wait_for_owner(*vip, i).await.unwrap();
        let (ns, target) = (lab.topology.client.namespace.clone(), SocketAddr::new(IpAddr::V4(*vip), 80));
        common::eventually("the VIP to reach a pod", Duration::from_secs(30), || {
            let ns = ns.clone();
            async move { blocking(move || probe::tcp_once(&ns, target)).await }
        })
        .await;
    }
    (lab, running, vips)
}

/// The MACs answering ARP for `vip` from the client.
async fn arp(lab: &Lab, vip: Ipv4Addr) -> std::collections::BTreeSet<[u8; 6]> {
    let c = lab.topology.client.clone();
    blocking(move || probe::arp_who_has(&c.namespace, &c.interface, &c.mac, c.ipv4, vip).unwrap_or_default()).await
}

/// Waits until node `i`'s (new) speaker announces `n` addresses and sees every peer.
async fn wait_for_speaker(lab: &Lab, i: usize, n: f64, peers: f64) {
    let ns = lab.topology.nodes[i].namespace.clone();
    common::eventually("the restarted speaker to be back", Duration::from_secs(30), || async {
        let text = probe::speaker_metrics(&ns).await?;
        let announced = probe::metric(&text, "ferrolb_speaker_announced_addresses")?;
        let live = probe::metric(&text, "ferrolb_speaker_live_peers")?;
        (announced == n && live == peers).then_some(())
    })
    .await;
}

fn streams(lab: &Lab, vips: &[Ipv4Addr]) -> Vec<Stream> {
    vips.iter().map(|v| Stream::open(&lab.topology.client.namespace, SocketAddr::new(IpAddr::V4(*v), 9000))).collect()
}

fn check(reports: &[StreamReport]) -> Duration {
    for r in reports {
        assert_eq!(r.cut, None, "a stream was cut: {r:?}");
        assert_eq!(r.echoed, r.sent, "lines lost: {r:?}");
        assert!(r.sent > 20, "{r:?}");
    }
    reports.iter().map(|r| r.longest_stall).max().unwrap_or_default()
}

/// A DaemonSet update: every speaker in turn gets SIGTERM and a new one starts on its node a
/// second later. No stream is cut, no new connection fails, no address moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_speaker_cuts_nothing_and_moves_nothing() {
    rolling_restart(false).await;
}

/// The same with connection replication on: a restarted speaker's own flows are its own, not a
/// takeover's (nothing of them is forgotten or overwritten).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_with_replication_cuts_nothing() {
    rolling_restart(true).await;
}

async fn rolling_restart(replicate: bool) {
    if !common::lab_prerequisites() {
        return;
    }
    let flags: &[&str] = if replicate { replication::SYNC } else { &[] };
    let (lab, mut running, vips) = lab_with_vips(replicate).await;
    let open = streams(&lab, &vips);
    let targets: Vec<SocketAddr> = vips.iter().map(|v| SocketAddr::new(IpAddr::V4(*v), 80)).collect();
    let prober = Prober::start(&lab.topology.client.namespace, targets);
    for i in 0..3 {
        let mut old = running.speakers.remove(i);
        let status = blocking(move || old.terminate().unwrap()).await;
        assert!(status.success(), "{status}");
        // The table stays in the kernel while no speaker runs.
        let listed = netns::exec(&lab.topology.nodes[i].namespace, "nft", &["list", "tables"]).unwrap_or_default();
        assert!(listed.contains("ferrolb"), "node-{i}'s table went with its speaker");
        tokio::time::sleep(Duration::from_secs(1)).await;
        running.speakers.insert(i, lab.start_speaker(i, flags).unwrap());
        wait_for_speaker(&lab, i, 1.0, 3.0).await;
    }
    let (ok, failed) = blocking(move || prober.stop()).await;
    let reports: Vec<StreamReport> = blocking(move || open.into_iter().map(Stream::stop).collect()).await;
    let stall = check(&reports);
    assert!(failed.is_empty(), "{} of {} new connections failed: {failed:?}", failed.len(), ok + failed.len() as u64);
    assert!(ok > 100, "{ok}");
    for (i, vip) in vips.iter().enumerate() {
        assert_eq!(arp(&lab, *vip).await, [probe::mac_bytes(&lab.topology.nodes[i].mac)].into(), "{vip} moved");
    }
    println!(
        "rolling restart of 3 speakers (replication: {replicate}): 0 of 3 streams cut, {ok} new connections, 0 failed, longest stall {stall:?}"
    );
}

/// kill -9 of the announcing node's speaker, a new one a second later: while it is down a peer
/// answers ARP for the address with the owner's MAC; the address stays; the stream goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_speaker_killed_and_restarted_within_the_grace_keeps_its_address() {
    if !common::lab_prerequisites() {
        return;
    }
    let (lab, mut running, vips) = lab_with_vips(false).await;
    let (vip, owner) = (vips[0], probe::mac_bytes(&lab.topology.nodes[0].mac));
    let open = streams(&lab, &vips[..1]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed = Instant::now();
    running.speakers[0].kill();
    // A client asking now (its neighbour entry expired, say) gets the owner's MAC, from a stand-in.
    common::eventually("a stand-in to answer with the owner's MAC", Duration::from_secs(3), || async {
        let macs = arp(&lab, vip).await;
        (macs == [owner].into()).then_some(())
    })
    .await;
    let answered_after = killed.elapsed();
    tokio::time::sleep(Duration::from_secs(1).saturating_sub(killed.elapsed())).await;
    running.speakers[0] = lab.start_speaker(0, &[]).unwrap();
    wait_for_speaker(&lab, 0, 1.0, 3.0).await;
    let stall = check(&blocking(move || open.into_iter().map(Stream::stop).collect::<Vec<_>>()).await);
    assert_eq!(arp(&lab, vip).await, [owner].into(), "the address moved");
    println!(
        "kill -9 and restart: the stand-in answered {answered_after:?} after the kill; stream not cut, longest stall {stall:?}"
    );
}

/// The announcing node dies (link down, speaker killed); its address moves to the runner-up. It
/// comes back: nothing moves back, and a stream through the new owner is not cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_that_returns_takes_nothing_back() {
    if !common::lab_prerequisites() {
        return;
    }
    let (lab, mut running, vips) = lab_with_vips(false).await;
    let vip = vips[0];
    let names: Vec<&str> = lab.topology.nodes.iter().map(|n| n.name.as_str()).collect();
    let next = election::rank(names.iter().copied(), &IpAddr::V4(vip))[1].to_string();
    let next_idx = names.iter().position(|n| *n == next).unwrap();
    let next_mac = probe::mac_bytes(&lab.topology.nodes[next_idx].mac);
    running.speakers[0].kill();
    netns::ip_in(&lab.topology.nodes[0].namespace, &["link", "set", "eth0", "down"]).unwrap();
    lab.wait_for_owner(vip, next_idx).await.unwrap();
    let open = streams(&lab, &[vip]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    netns::ip_in(&lab.topology.nodes[0].namespace, &["link", "set", "eth0", "up"]).unwrap();
    running.speakers[0] = lab.start_speaker(0, &[]).unwrap();
    // Back and settled (it hears every peer), announcing nothing.
    wait_for_speaker(&lab, 0, 0.0, 3.0).await;
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        assert_eq!(arp(&lab, vip).await, [next_mac].into(), "the address moved back");
    }
    check(&blocking(move || open.into_iter().map(Stream::stop).collect::<Vec<_>>()).await);
}
