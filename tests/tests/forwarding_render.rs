//! The rendered ruleset is real nftables: the kernel accepts it in a namespace of its own, a
//! second apply of the same text replaces the table atomically, and the maps hold what the
//! Services say.

mod common;

use ferrolb_speaker::forwarding::render::{Port, Proto, Service, render};
use ferrolb_tests::lab::netns;

fn sample(endpoints: usize) -> Vec<Service> {
    (0..3)
        .map(|i| Service {
            key: format!("default/svc{i}"),
            vips: vec![
                format!("198.51.100.{}", 200 + i).parse().unwrap(),
                format!("2001:db8:100::{}", 200 + i).parse().unwrap(),
            ],
            ports: vec![
                Port {
                    proto: Proto::Tcp,
                    port: 80,
                    node_port: Some(30080 + i as u16),
                    endpoints: (0..endpoints)
                        .map(|e| (format!("203.0.113.{}", 2 + 64 * e).parse().unwrap(), 8080))
                        .collect(),
                },
                Port { proto: Proto::Udp, port: 53, node_port: None, endpoints: vec![] },
            ],
            local: i == 1,
            source_ranges: if i == 2 { vec!["198.51.100.0/24".parse().unwrap()] } else { vec![] },
            affinity: (i == 0).then_some(60),
        })
        .collect()
}

#[test]
fn the_kernel_accepts_the_ruleset_and_reapplies_it_atomically() {
    if !common::lab_prerequisites() {
        return;
    }
    let ns = format!("flb{}xnft", std::process::id());
    netns::add(&ns).unwrap();
    let dir = std::env::temp_dir().join(&ns);
    std::fs::create_dir_all(&dir).unwrap();
    let result = std::panic::catch_unwind(|| {
        for (n, endpoints) in [(0, 1), (1, 2), (2, 0)] {
            let file = dir.join(format!("rules-{n}.nft"));
            std::fs::write(&file, render(&sample(endpoints))).unwrap();
            let path = file.to_str().unwrap();
            netns::exec(&ns, "nft", &["-c", "-f", path]).expect("nft -c accepts the ruleset");
            netns::exec(&ns, "nft", &["-f", path]).expect("the ruleset applies");
            let listed = netns::exec(&ns, "nft", &["list", "table", "inet", "ferrolb"]).unwrap();
            // nft prints sets back in its own layout; compare what matters, flattened.
            let flat = listed.split_whitespace().collect::<Vec<_>>().join(" ");
            let has = |needle: &str| flat.contains(needle);
            if endpoints > 0 {
                assert!(has("198.51.100.200 . tcp . 80 : goto svc0_p0_v4"), "apply {n}: {listed}");
                assert!(has("198.51.100.202 . tcp . 80 : goto svc2_p0_v4_lb"), "apply {n}: {listed}");
                assert!(has("tcp . 30081 : goto svc1_p0_v4"), "apply {n}: {listed}");
                assert_eq!(has("numgen random mod 2"), endpoints == 2, "apply {n}: {listed}");
            } else {
                assert!(!has(": goto svc"), "apply {n}: {listed}");
                assert!(has("198.51.100.200 . tcp . 80"), "apply {n}: {listed}");
                assert!(has("tcp . 30080"), "apply {n}: {listed}");
            }
            // IPv6 VIPs without IPv6 endpoints, and UDP 53 without endpoints, are refused.
            assert!(has("2001:db8:100::200 . tcp . 80"), "apply {n}: {listed}");
            assert!(has("198.51.100.201 . udp . 53"), "apply {n}: {listed}");
            assert_eq!(listed.matches("table inet ferrolb").count(), 1, "one table, replaced atomically");
        }
    });
    netns::delete(&ns);
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
