//! kubectl 1.32 against sim-apiserver: applies the chart's CRD and IPPools (validated by the
//! server, with kubectl's default strict field validation), prints the printer columns, and
//! creates LoadBalancer Services that come back with a clusterIP and nodePorts.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use ferrolb_tests::apiserver::SimApiServer;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

struct Kubectl {
    bin: PathBuf,
    dir: PathBuf,
}

impl Kubectl {
    fn new(bin: PathBuf, server: &SimApiServer, name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("ferrolb-kubectl-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        server.write_kubeconfig(&dir.join("kubeconfig")).unwrap();
        Self { bin, dir }
    }

    /// Runs kubectl with its own kubeconfig and discovery cache; returns (ok, stdout, stderr).
    async fn run(&self, args: &[&str]) -> (bool, String, String) {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--kubeconfig")
            .arg(self.dir.join("kubeconfig"))
            .arg("--cache-dir")
            .arg(self.dir.join("cache"))
            .args(args);
        tokio::task::spawn_blocking(move || common::run(&mut cmd)).await.unwrap()
    }

    async fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args).await;
        assert!(ok, "kubectl {args:?} failed:\n{out}\n{err}");
        out
    }

    fn file(&self, name: &str, body: &str) -> String {
        let path = self.dir.join(name);
        std::fs::write(&path, body).unwrap();
        path.to_string_lossy().into_owned()
    }
}

impl Drop for Kubectl {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn chart_crd() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../charts/ferrolb/crds/ippools.ferrolb.io.yaml")
        .to_string_lossy()
        .into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_the_crd_and_ippools_and_refuses_invalid_ones() {
    let Some(bin) = common::kubectl() else { return };
    let (server, _client) = common::start().await;
    let k = Kubectl::new(bin, &server, "pools");
    k.ok(&["apply", "-f", &chart_crd()]).await;
    k.ok(&["wait", "--for=condition=established", "crd/ippools.ferrolb.io", "--timeout=10s"]).await;
    let pool = k.file("pool.yaml", "apiVersion: ferrolb.io/v1alpha1\nkind: IPPool\nmetadata: {name: home}\nspec:\n  addresses: [\"198.51.100.240-198.51.100.250\", \"2001:db8::/120\"]\n");
    assert!(k.ok(&["apply", "-f", &pool]).await.contains("ippool.ferrolb.io/home created"));
    let table = k.ok(&["get", "ippools"]).await;
    let header: Vec<&str> =
        table.lines().next().unwrap().split("  ").map(str::trim).filter(|s| !s.is_empty()).collect();
    assert_eq!(
        header,
        ["NAME", "ADDRESSES", "AUTO-ASSIGN", "IPV4 USED", "IPV4 AVAILABLE", "IPV6 USED", "IPV6 AVAILABLE", "AGE"],
        "{table}"
    );
    assert!(table.lines().nth(1).unwrap().starts_with("home "), "{table}");
    assert!(table.contains("198.51.100.240-198.51.100.250") && table.contains("true"), "{table}");
    // The short name and a second apply (a merge patch) work too.
    k.ok(&["get", "ipp", "home", "-o", "yaml"]).await;
    let pool2 = k.file("pool2.yaml", "apiVersion: ferrolb.io/v1alpha1\nkind: IPPool\nmetadata: {name: home}\nspec:\n  addresses: [\"198.51.100.240-198.51.100.250\"]\n  priority: 5\n");
    assert!(k.ok(&["apply", "-f", &pool2]).await.contains("configured"));
    assert_eq!(k.ok(&["get", "ipp", "home", "-o", "jsonpath={.spec.priority}"]).await, "5");

    for (name, spec, expect) in [
        ("bad", "addresses: [not-an-ip]", "spec.addresses[0]: Invalid value: \"not-an-ip\""),
        ("badcidr", "addresses: [\"999.1.1.1/24\"]", "must be a CIDR"),
        ("mixed", "addresses: [\"198.51.100.1-2001:db8::1\"]", "of one family"),
        ("typo", "adresses: [\"198.51.100.0/24\"]", "unknown field \"spec.adresses\""),
    ] {
        let f = k.file(
            &format!("{name}.yaml"),
            &format!("apiVersion: ferrolb.io/v1alpha1\nkind: IPPool\nmetadata: {{name: {name}}}\nspec:\n  {spec}\n"),
        );
        let (ok, out, err) = k.run(&["apply", "-f", &f]).await;
        assert!(!ok, "{name} was accepted: {out}");
        assert!(err.contains(expect), "{name}: expected {expect:?} in {err}");
    }
    let (_, out, _) = k.run(&["get", "ipp", "-o", "name"]).await;
    assert_eq!(out.trim(), "ippool.ferrolb.io/home", "refused pools are not stored");
    let described = k.ok(&["describe", "ippool", "home"]).await;
    assert!(described.contains("Addresses:") && described.contains("198.51.100.240-198.51.100.250"), "{described}");
    k.ok(&["delete", "ippool", "home"]).await;
    k.ok(&["wait", "--for=delete", "ippool/home", "--timeout=10s"]).await;
    assert!(server.objects("ferrolb.io", "ippools").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_creates_a_load_balancer_service_that_gets_a_cluster_ip_and_node_ports() {
    let Some(bin) = common::kubectl() else { return };
    let (server, client) = common::start().await;
    let k = Kubectl::new(bin, &server, "svc");
    let svc = k.file(
        "svc.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec:\n  type: LoadBalancer\n  selector: {app: web}\n  ports: [{name: http, port: 80, targetPort: 8080}, {name: dns, port: 53, protocol: UDP}]\n",
    );
    k.ok(&["apply", "-f", &svc]).await;
    let cluster_ip = k.ok(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]).await;
    assert!(cluster_ip.parse::<std::net::IpAddr>().is_ok(), "{cluster_ip:?}");
    let node_ports = k.ok(&["get", "svc", "web", "-o", "jsonpath={.spec.ports[*].nodePort}"]).await;
    let ports: Vec<u16> = node_ports.split_whitespace().map(|p| p.parse().unwrap()).collect();
    assert_eq!(ports.len(), 2);
    assert!(ports.iter().all(|p| (30000..=32767).contains(p)) && ports[0] != ports[1], "{ports:?}");
    let table = k.ok(&["get", "svc", "web"]).await;
    assert!(table.contains("EXTERNAL-IP") && table.contains("<pending>"), "{table}");
    assert!(table.contains(&format!("80:{}/TCP", ports[0])), "{table}");

    // A second apply is a strategic merge patch: the nodePorts survive it.
    let svc2 = k.file(
        "svc2.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default, labels: {tier: front}}\nspec:\n  type: LoadBalancer\n  selector: {app: web}\n  ports: [{name: http, port: 80, targetPort: 8080}, {name: dns, port: 53, protocol: UDP}]\n",
    );
    assert!(k.ok(&["apply", "-f", &svc2]).await.contains("configured"));
    assert_eq!(k.ok(&["get", "svc", "web", "-o", "jsonpath={.spec.ports[*].nodePort}"]).await, node_ports);

    // Once a controller writes status, kubectl shows the EXTERNAL-IP.
    let api: Api<Service> = Api::namespaced(client, "default");
    api.patch_status(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.240", "ipMode": "VIP"}]}}})),
    )
    .await
    .unwrap();
    let table = k.ok(&["get", "svc", "web"]).await;
    assert!(table.contains("198.51.100.240"), "{table}");
    let described = k.ok(&["describe", "svc", "web"]).await;
    assert!(described.contains("LoadBalancer Ingress:") && described.contains("198.51.100.240"), "{described}");
    k.ok(&["delete", "-f", &svc]).await;
    k.ok(&["wait", "--for=delete", "svc/web", "--timeout=10s"]).await;
    let left: Vec<String> = server
        .objects("", "services")
        .iter()
        .map(|s| s["metadata"]["name"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(left, ["kubernetes"], "only the API server's own Service is left");
}

/// kubectl's `create` commands send protobuf for built-in kinds: sim-apiserver reads them, as
/// kube-apiserver does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_create_commands_send_protobuf_and_are_understood() {
    let Some(bin) = common::kubectl() else { return };
    let (server, _client) = common::start().await;
    let k = Kubectl::new(bin, &server, "create");
    assert!(k.ok(&["create", "namespace", "shop"]).await.contains("namespace/shop created"));
    k.ok(&["create", "service", "loadbalancer", "web", "--tcp=80:8080", "-n", "shop"]).await;
    k.ok(&["create", "deployment", "web", "--image=nginx:1.27", "--port=8080", "--replicas=2", "-n", "shop"]).await;
    k.ok(&["create", "secret", "generic", "key", "--from-literal=password=s3cret", "-n", "shop"]).await;
    k.ok(&["create", "configmap", "settings", "--from-literal=mode=fast", "-n", "shop"]).await;
    let get = |what: &'static str, path: &'static str| {
        let k = &k;
        async move { k.ok(&["get", what, "-n", "shop", "-o", &format!("jsonpath={path}")]).await }
    };
    assert_eq!(
        get("svc/web", "{.spec.type} {.spec.ports[0].port} {.spec.ports[0].targetPort}").await,
        "LoadBalancer 80 8080"
    );
    assert!(get("svc/web", "{.spec.clusterIP}").await.parse::<std::net::IpAddr>().is_ok());
    assert_eq!(get("svc/web", "{.spec.selector.app}").await, "web");
    assert_eq!(
        get("deploy/web", "{.spec.replicas} {.spec.template.spec.containers[0].image} {.spec.template.spec.containers[0].ports[0].containerPort}").await,
        "2 nginx:1.27 8080"
    );
    assert_eq!(get("deploy/web", "{.spec.selector.matchLabels.app}").await, "web");
    assert_eq!(get("secret/key", "{.data.password}").await, "czNjcmV0", "base64 of the value");
    assert_eq!(get("configmap/settings", "{.data.mode}").await, "fast");
    // Namespaced as asked, and the namespace exists for real.
    assert_eq!(k.ok(&["get", "ns", "shop", "-o", "jsonpath={.status.phase}"]).await, "Active");
}

/// BGPPeers as users type them: accepted with the columns `kubectl get` shows, refused with the
/// field and the reason when an ASN, an address, a timer or a password is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_bgppeers_and_refuses_invalid_ones() {
    let Some(bin) = common::kubectl() else { return };
    let (server, _client) = common::start().await;
    let k = Kubectl::new(bin, &server, "peers");
    let crd = chart_crd().replace("ippools.ferrolb.io.yaml", "bgppeers.ferrolb.io.yaml");
    k.ok(&["apply", "-f", &crd]).await;
    k.ok(&["wait", "--for=condition=established", "crd/bgppeers.ferrolb.io", "--timeout=10s"]).await;
    let peer = |name: &str, spec: &str| {
        k.file(
            &format!("{name}.yaml"),
            &format!("apiVersion: ferrolb.io/v1alpha1\nkind: BGPPeer\nmetadata: {{name: {name}}}\nspec:\n  {spec}\n"),
        )
    };
    let good = peer(
        "tor-a",
        "peerAddress: 192.0.2.1\n  peerASN: 64512\n  myASN: 64513\n  holdTime: 9s\n  keepaliveTime: 3s\n  passwordSecret: {name: tor-a-md5}\n  bfd: {receiveIntervalMs: 100, transmitIntervalMs: 100}",
    );
    assert!(k.ok(&["apply", "-f", &good]).await.contains("bgppeer.ferrolb.io/tor-a created"));
    let v6 = peer("tor-b", "peerAddress: \"2001:db8::1\"\n  peerASN: 4200000000\n  myASN: 4200000000");
    k.ok(&["apply", "-f", &v6]).await;
    let table = k.ok(&["get", "bgppeers"]).await;
    let header: Vec<&str> =
        table.lines().next().unwrap().split("  ").map(str::trim).filter(|s| !s.is_empty()).collect();
    assert_eq!(header, ["NAME", "ADDRESS", "ASN", "ESTABLISHED", "SELECTED", "READY", "AGE"], "{table}");
    assert!(table.contains("192.0.2.1") && table.contains("64512") && table.contains("2001:db8::1"), "{table}");
    assert_eq!(k.ok(&["get", "bgpp", "tor-a", "-o", "jsonpath={.spec.port}"]).await, "179");

    for (name, spec, expect) in [
        ("asn0", "peerAddress: 192.0.2.1\n  peerASN: 0\n  myASN: 1", "spec.peerASN: Invalid value: 0"),
        ("asnbig", "peerAddress: 192.0.2.1\n  peerASN: 4294967296\n  myASN: 1", "spec.peerASN"),
        ("addr", "peerAddress: 192.0.2.300\n  peerASN: 1\n  myASN: 1", "must be an IPv4 or IPv6 address"),
        (
            "hold",
            "peerAddress: 192.0.2.1\n  peerASN: 1\n  myASN: 1\n  holdTime: 2s",
            "must be 0s, or between 3s and 65535s",
        ),
        (
            "keepalive",
            "peerAddress: 192.0.2.1\n  peerASN: 1\n  myASN: 1\n  holdTime: 9s\n  keepaliveTime: 10s",
            "keepaliveTime must be shorter than holdTime",
        ),
        ("duration", "peerAddress: 192.0.2.1\n  peerASN: 1\n  myASN: 1\n  holdTime: soon", "spec.holdTime"),
        (
            "bfd",
            "peerAddress: 192.0.2.1\n  peerASN: 1\n  myASN: 1\n  bfd: {detectMultiplier: 1}",
            "spec.bfd.detectMultiplier",
        ),
        (
            "inline",
            "peerAddress: 192.0.2.1\n  peerASN: 1\n  myASN: 1\n  password: hunter2",
            "unknown field \"spec.password\"",
        ),
    ] {
        let (ok, out, err) = k.run(&["apply", "-f", &peer(name, spec)]).await;
        assert!(!ok, "{name} was accepted: {out}");
        assert!(err.contains(expect), "{name}: expected {expect:?} in {err}");
    }
    let (_, out, _) = k.run(&["get", "bgpp", "-o", "name"]).await;
    assert_eq!(out.trim(), "bgppeer.ferrolb.io/tor-a\nbgppeer.ferrolb.io/tor-b", "refused peers are not stored");
}
