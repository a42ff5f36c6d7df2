//! The chart's alerts and dashboard query only metrics the binaries export: a lab runs the
//! controller and the speakers, a Service gets an address (so per-address series exist), and
//! every `ferrolb_*` name in `charts/ferrolb/files/` is looked up in what they serve.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use ferrolb_tests::lab::router::RouterConfig;
use ferrolb_tests::lab::{Lab, probe};

/// Every `ferrolb_*` name in `text`.
fn used_names(text: &str) -> BTreeSet<String> {
    regex::Regex::new(r"\bferrolb_[a-z0-9_]*[a-z0-9]")
        .unwrap()
        .find_iter(text)
        .map(|m| m.as_str().to_string())
        .collect()
}

/// The names a query may use for what `/metrics` text declares: each family's own name and, by
/// its type, the sample names Prometheus stores (`_total`, `_bucket`, `_sum`, `_count`).
fn exported_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (name, ty) in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split_once(' ')) {
        out.insert(name.to_string());
        let suffixes: &[&str] = match ty {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            _ => &[],
        };
        out.extend(suffixes.iter().map(|s| format!("{name}{s}")));
    }
    out
}

#[test]
fn names_are_found_by_type() {
    let text = "# TYPE ferrolb_a counter\nferrolb_a_total 1\n# TYPE ferrolb_h histogram\n# TYPE ferrolb_g gauge\n";
    let names = exported_names(text);
    for n in ["ferrolb_a", "ferrolb_a_total", "ferrolb_h_bucket", "ferrolb_h_count", "ferrolb_g"] {
        assert!(names.contains(n), "{n}");
    }
    assert!(!names.contains("ferrolb_g_total"));
    assert_eq!(
        used_names("sum(rate(ferrolb_a_total[5m])) / ferrolb_g{x=\"ferrolb_\"}"),
        BTreeSet::from(["ferrolb_a_total".to_string(), "ferrolb_g".to_string()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_alerts_and_the_dashboard_use_is_exported_by_a_running_binary() {
    if !common::lab_prerequisites() {
        return;
    }
    let files = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/ferrolb/files");
    let mut used = BTreeSet::new();
    for f in ["prometheus-rules.yaml", "dashboard.json"] {
        let text = std::fs::read_to_string(format!("{files}/{f}")).unwrap();
        let names = used_names(&text);
        assert!(names.len() >= 5, "{f} uses {names:?}");
        used.extend(names);
    }

    if !["bird", "vtysh"].iter().all(|t| std::process::Command::new(t).arg("--version").output().is_ok()) {
        assert!(!common::in_ci(), "BIRD and FRR are needed under CI=true (apt install bird2 frr)");
        eprintln!("SKIPPED: BIRD or FRR missing");
        return;
    }
    // Both announcing protocols run: the pool uses ARP and BGP (BIRD on the nodes, FRR upstream).
    let lab = Lab::build(2, true).await.expect("lab up");
    let (running, _router) = lab.start_bgp_cluster(&RouterConfig::default(), serde_json::json!({})).await.unwrap();
    // Families with labels appear once a series exists: two addresses for three Services gives
    // an allocation failure, a client's ARP request a request and a reply, and a connection
    // through the VIP forwarding.
    let pool = serde_json::json!({"addresses": ["198.51.100.240-198.51.100.241"], "l2": {}, "bgp": {"enabled": true}});
    lab.apply_pool("lan", pool).await.unwrap();
    let services = kube::Api::namespaced(lab.client().await.unwrap(), "default");
    for name in ["web", "db", "cache"] {
        let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"type": "LoadBalancer", "selector": {"app": "echo"}, "ports": [{"port": 80, "targetPort": "echo"}]}}))
        .unwrap();
        services.create(&Default::default(), &svc).await.unwrap();
    }
    // Two of the three get the two addresses; which two depends on the order the controller sees
    // them in (a pool appearing after them queues them by name), so take either.
    let vip = common::eventually("a Service to get an address", Duration::from_secs(20), || async {
        for name in ["web", "db", "cache"] {
            if let Some(ip) = lab.service_ips(name).await.first().copied() {
                return Some(ip);
            }
        }
        None
    })
    .await;
    let client = lab.topology.client.clone();
    let std::net::IpAddr::V4(v4) = vip else { panic!("{vip} is not IPv4") };
    common::eventually("an ARP answer for the VIP", Duration::from_secs(10), || {
        let client = client.clone();
        async move {
            let ask = move || probe::arp_who_has(&client.namespace, "eth0", &client.mac, client.ipv4, v4).ok();
            tokio::task::spawn_blocking(ask).await.ok()?.filter(|macs| !macs.is_empty())
        }
    })
    .await;
    let client = lab.topology.client.namespace.clone();
    common::eventually("a connection through the VIP", Duration::from_secs(20), || {
        let client = client.clone();
        async move {
            tokio::task::spawn_blocking(move || probe::tcp_once(&client, std::net::SocketAddr::new(vip, 80)))
                .await
                .ok()?
        }
    })
    .await;

    let scrape = || async {
        let mut texts = vec![common::http_get(running.controller.metrics, "/metrics").await?.1];
        for node in &lab.topology.nodes {
            texts.push(probe::speaker_metrics(&node.namespace).await?);
        }
        Some(texts.iter().flat_map(|t| exported_names(t)).collect::<BTreeSet<String>>())
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let exported = scrape().await.unwrap_or_default();
        let missing: Vec<&String> = used.difference(&exported).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "used by the alerts or the dashboard but exported by no binary: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
