//! The rendered ruleset is real nftables: the kernel accepts the whole table, re-applies it
//! atomically, and applying the difference between two tables leaves exactly what applying the
//! second one whole leaves.

mod common;

use std::collections::BTreeMap;

use ferrolb_crds::Protocol;
use ferrolb_speaker::forwarding::readback;
use ferrolb_speaker::forwarding::render::{ForwardedService, Port, Ruleset};
use ferrolb_tests::lab::{netns, probe};

/// Three Services (sticky Cluster, Local, guarded) with `endpoints` endpoints on TCP 80 and on
/// SCTP 9000 (`shift` moves their addresses), and a UDP port without endpoints.
fn sample(endpoints: usize, shift: usize) -> Vec<ForwardedService> {
    (0..3)
        .map(|i| {
            let eps: Vec<_> =
                (0..endpoints).map(|e| (format!("203.0.113.{}", 2 + 64 * e + shift).parse().unwrap(), 8080)).collect();
            ForwardedService {
                key: format!("default/svc{i}"),
                vips: vec![
                    format!("198.51.100.{}", 200 + i).parse().unwrap(),
                    format!("2001:db8:100::{}", 200 + i).parse().unwrap(),
                ],
                ports: vec![
                    Port { proto: Protocol::Tcp, port: 80, node_port: Some(30080 + i as u16), endpoints: eps.clone() },
                    Port { proto: Protocol::Sctp, port: 9000, node_port: None, endpoints: eps },
                    Port { proto: Protocol::Udp, port: 53, node_port: None, endpoints: vec![] },
                ],
                local: i == 1,
                source_ranges: (i == 2).then(|| vec!["198.51.100.0/24".parse().unwrap()]),
                affinity: (i == 0).then_some(60 + shift as u32),
                // A replicated Service: source NAT to the VIP, checked by the kernel too.
                replicate: i == 3,
            }
        })
        .collect()
}

fn nft_file(ns: &str, text: &str) -> Result<String, String> {
    netns::exec_stdin(ns, "nft", &["-f", "-"], text).map_err(|e| format!("{e}\n{text}"))
}

/// The table as the kernel holds it, independent of creation order and handles: chain → rules,
/// set → sorted elements.
fn kernel_view(ns: &str) -> BTreeMap<String, Vec<String>> {
    let json = netns::exec(ns, "nft", &["-j", "list", "table", "inet", "ferrolb"]).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
    let mut view: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for item in parsed["nftables"].as_array().unwrap() {
        if let Some(rule) = item.get("rule") {
            view.entry(format!("chain {}", rule["chain"])).or_default().push(rule["expr"].to_string());
        } else if let Some(chain) = item.get("chain") {
            view.entry(format!("chain {}", chain["name"])).or_default();
        } else if let Some(set) = item.get("set").or_else(|| item.get("map")) {
            let mut elements: Vec<String> =
                set["elem"].as_array().into_iter().flatten().map(ToString::to_string).collect();
            elements.sort();
            elements.insert(0, set["type"].to_string());
            view.insert(format!("set {}", set["name"]), elements);
        }
    }
    view
}

#[test]
fn the_kernel_takes_the_table_whole_and_by_difference() {
    if !common::lab_prerequisites() {
        return;
    }
    let (by_diff, whole) = (format!("flb{}xnftd", std::process::id()), format!("flb{}xnftw", std::process::id()));
    netns::add(&by_diff).unwrap();
    netns::add(&whole).unwrap();
    let result = std::panic::catch_unwind(|| {
        // Every step changes something different: endpoints appear, move, multiply, vanish;
        // affinity timeouts change (new sets), Services go and come back.
        let steps: Vec<Vec<ForwardedService>> = vec![
            sample(1, 0),
            sample(2, 0),
            sample(2, 1),
            sample(3, 1),
            sample(0, 0),
            sample(2, 0)[..1].to_vec(),
            vec![],
            sample(2, 2),
        ];
        let mut applied: Option<Ruleset> = None;
        for (n, services) in steps.iter().enumerate() {
            let rs = Ruleset::of(services);
            let full = rs.full();
            nft_file(&whole, &full).unwrap_or_else(|e| panic!("step {n}: the whole table applies: {e}"));
            let text = match &applied {
                None => full.clone(),
                Some(old) => rs.changes_from(old),
            };
            if !text.is_empty() {
                nft_file(&by_diff, &text).unwrap_or_else(|e| panic!("step {n}: the difference applies: {e}"));
            }
            assert_eq!(kernel_view(&by_diff), kernel_view(&whole), "step {n}: the difference left another table");
            let listed = netns::exec(&by_diff, "nft", &["-j", "list", "table", "inet", "ferrolb"]).unwrap();
            let read = readback::read(&listed).expect("nft's JSON");
            assert_eq!(read.shape, rs.shape(), "step {n}: the read-back sees the table applied");
            let whole_listed = netns::exec(&whole, "nft", &["-j", "list", "table", "inet", "ferrolb"]).unwrap();
            assert_eq!(
                readback::read(&whole_listed).map(|l| l.content),
                Some(read.content),
                "step {n}: the same table reads back with the same content"
            );
            applied = Some(rs);
        }
        // Spot-check the whole table's content in the kernel's own words.
        nft_file(&whole, &Ruleset::of(&sample(2, 0)).full()).unwrap();
        let listed = netns::exec(&whole, "nft", &["list", "table", "inet", "ferrolb"]).unwrap();
        let flat = listed.split_whitespace().collect::<Vec<_>>().join(" ");
        for needle in [
            "198.51.100.200 . tcp . 80 : goto svc/default/svc0/tcp/80/v4",
            "198.51.100.200 . sctp . 9000 : goto svc/default/svc0/sctp/9000/v4",
            "198.51.100.202 . tcp . 80 : goto svc/default/svc2/tcp/80/v4/lb",
            "tcp . 30081 : goto svc/default/svc1/tcp/80/v4",
            "numgen random mod 2 0 goto svc/default/svc0/tcp/80/v4/ep0",
            "198.51.100.201 . udp . 53",
            "2001:db8:100::200 . tcp . 80",
        ] {
            assert!(flat.contains(needle), "{needle} missing: {listed}");
        }
        assert_eq!(listed.matches("table inet ferrolb").count(), 1, "one table, replaced atomically");
        // What someone might do by hand shows in the read-back: in the shape, or in the content.
        let expected = Ruleset::of(&sample(2, 0)).shape();
        let read = || {
            readback::read(&netns::exec(&whole, "nft", &["-j", "list", "table", "inet", "ferrolb"]).unwrap())
                .expect("nft's JSON")
        };
        let content = read().content;
        assert_eq!(read().shape, expected);
        netns::exec(
            &whole,
            "nft",
            &["delete", "element", "inet", "ferrolb", "vips_v4", "{ 198.51.100.201 . tcp . 80 }"],
        )
        .unwrap();
        assert_ne!(read().shape, expected, "a deleted element is noticed");
        nft_file(&whole, &Ruleset::of(&sample(2, 0)).full()).unwrap();
        netns::exec(&whole, "nft", &["flush", "chain", "inet", "ferrolb", "svc/default/svc1/tcp/80/v4"]).unwrap();
        assert_ne!(read().shape, expected, "a flushed chain is noticed");
        nft_file(&whole, &Ruleset::of(&sample(2, 0)).full()).unwrap();
        netns::exec(&whole, "nft", &["add", "rule", "inet", "ferrolb", "nat_prerouting", "accept"]).unwrap();
        assert_ne!(read().shape, expected, "an added rule is noticed");
        nft_file(&whole, &Ruleset::of(&sample(2, 0)).full()).unwrap();
        assert_eq!(read().content, content, "the same table again reads back the same");
        let chain = "svc/default/svc1/tcp/80/v4";
        let handle = probe::rule_handle(&whole, chain, "dnat").expect("a rule handle");
        netns::exec(&whole, "nft", &["replace", "rule", "inet", "ferrolb", chain, "handle", &handle, "accept"])
            .unwrap();
        let after = read();
        assert_eq!(after.shape, expected, "a rule replaced in place keeps the shape");
        assert_ne!(after.content, content, "but not the content");
    });
    netns::delete(&by_diff);
    netns::delete(&whole);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
