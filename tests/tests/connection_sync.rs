//! Established connections across a failover: with `--conntrack-sync conntrackd`, the flows of a
//! Service annotated `ferrolb.io/replicate-connections: "true"` are replicated to every node, and
//! when the announcing node dies (link down, speaker killed) a long-lived TCP stream through its
//! address continues through the new owner — whether its pod runs on the new owner (whose kernel
//! saw the flow pass before) or on a third node. A stream through a Service on the same node
//! without the annotation is the control: it is cut, as it is with every other L2
//! implementation.

mod common;

use ferrolb_tests::lab::Lab;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicated_stream_survives_the_death_of_its_node_and_a_plain_one_does_not() {
    if !common::lab_prerequisites() {
        return;
    }
    let lab = Lab::build(3, false).await.expect("lab up");
    let mut running = lab.start_replicating_cluster().await.unwrap();
    let seen = lab.replicated_failover(&mut running).await.unwrap();
    for (what, r) in [("its pod on the new owner", &seen.near), ("its pod on a third node", &seen.far)] {
        assert_eq!(r.cut, None, "the replicated stream ({what}) was cut: {r:?}");
        assert_eq!(r.echoed, r.sent, "{what}: {r:?}");
    }
    // Only the replicated Services' flows travel: node-2 held node-1's two replicated streams
    // (to the addresses 198.51.100.x it owns) and nothing of the plain one.
    let vips = lab.addresses_won_by(0, 3);
    for (vip, held) in [(vips[0], true), (vips[1], true), (vips[2], false)] {
        let line = format!("dst={vip} ");
        assert_eq!(seen.external.contains(&line), held, "{vip} in node-2's external cache:\n{}", seen.external);
    }
    let plain = &seen.plain;
    assert!(plain.cut.is_some(), "the control stream survived without replication: the test proves nothing: {plain:?}");
    println!(
        "failover with replication: streams kept, longest stalls {:?} (pod on the new owner), {:?} (pod on a third node); without: {:?}",
        seen.near.longest_stall, seen.far.longest_stall, plain.cut
    );
}
