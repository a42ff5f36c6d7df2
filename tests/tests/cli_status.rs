//! `ferrolb status` against the lab: the pool's usage, and the Service with its address, its pool
//! and the node the election picked to announce it.

mod common;

use std::time::Duration;

use ferrolb_tests::lab::{Lab, processes};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, PostParams};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_pools_services_and_announcers() {
    if !common::lab_prerequisites() {
        return;
    }
    let lab = Lab::up(3).await.expect("lab up");
    let _running = lab.start_cluster().await.unwrap();
    lab.apply_pool("lan", json!({"addresses": ["198.51.100.200-198.51.100.210"]})).await.unwrap();
    let services: Api<Service> = Api::namespaced(lab.client().await.unwrap(), "default");
    let svc: Service = serde_json::from_value(json!({"metadata": {"name": "echo"}, "spec": {"type": "LoadBalancer",
        "selector": {"app": "echo"}, "ports": [{"port": 80, "targetPort": 8080}]}}))
    .unwrap();
    services.create(&PostParams::default(), &svc).await.unwrap();
    let vip = common::eventually("echo to get an address", Duration::from_secs(20), || async {
        lab.service_ips("echo").await.into_iter().find(std::net::IpAddr::is_ipv4)
    })
    .await;
    let names: Vec<String> = lab.topology.nodes.iter().map(|n| n.name.clone()).collect();
    let winner = ferrolb_speaker::election::winner(names.iter().map(String::as_str), &vip).unwrap().to_string();
    let ferrolb = processes::binary("ferrolb").unwrap();
    let kubeconfig = lab.kubeconfig();
    let text = common::eventually("status to show the pool's usage and the announcer", Duration::from_secs(20), || {
        let (ferrolb, kubeconfig, winner) = (ferrolb.clone(), kubeconfig.clone(), winner.clone());
        async move {
            let out = tokio::task::spawn_blocking(move || {
                std::process::Command::new(ferrolb).args(["status", "--kubeconfig"]).arg(kubeconfig).output()
            })
            .await
            .ok()?
            .ok()?;
            let text = String::from_utf8(out.stdout).ok()?;
            let announced = text.lines().any(|l| l.starts_with("default/echo") && l.ends_with(&winner));
            let counted = text.lines().any(|l| l.starts_with("lan ") && l.contains("1/11"));
            (out.status.success() && announced && counted).then_some(text)
        }
    })
    .await;
    let pool_line = text.lines().find(|l| l.starts_with("lan ")).unwrap_or_default();
    assert!(pool_line.contains("1/11") && pool_line.contains("True"), "{text}");
    let service_line = text.lines().find(|l| l.starts_with("default/echo")).unwrap_or_default();
    assert!(service_line.contains(&vip.to_string()) && service_line.ends_with(&winner), "{text}");
}

/// Linked as `kubectl-ferrolb` on the PATH, kubectl runs it as its plugin: `kubectl ferrolb …`.
#[test]
fn kubectl_runs_it_as_a_plugin() {
    let Some(kubectl) = common::kubectl() else { return };
    let dir = std::env::temp_dir().join(format!("ferrolb-plugin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(processes::binary("ferrolb").unwrap(), dir.join("kubectl-ferrolb")).unwrap();
    let pools = dir.join("pools.yaml");
    std::fs::write(&pools, "apiVersion: ferrolb.io/v1alpha1\nkind: IPPool\nmetadata: {name: home}\nspec: {addresses: [192.168.1.240/29]}\n").unwrap();
    let path = std::env::join_paths(
        std::iter::once(dir.clone()).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
    )
    .unwrap();
    let out =
        std::process::Command::new(kubectl).args(["ferrolb", "check"]).arg(&pools).env("PATH", path).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(text, "ok       IPPool home: IPv4 8\n");
}
