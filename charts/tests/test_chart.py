"""The Helm chart, tested with Helm's own engine (helm-python-sdk binds Helm's Go library; no helm
binary): lint, render with defaults and with every option, values-schema refusals, Kubernetes'
schemas for every rendered object (kubernetes-validate, offline), and the rendered objects loaded
into sim-apiserver with kubectl and installed and upgraded there by Helm.

Run from the repository root after `cargo build --workspace` (it runs the binaries' --help and
sim-apiserver): `python3 -m unittest discover -s charts/tests -v`.
"""

from __future__ import annotations

import base64
import json
import os
import pathlib
import re
import shutil
import subprocess
import tempfile
import time
import unittest

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "ferrolb"
BIN = ROOT / "target" / "debug"
NAMESPACE = "ferrolb-system"
KUBERNETES = "1.33.0"
# Kinds whose schema is not Kubernetes' own: IPPool is checked by sim-apiserver against our CRD,
# ServiceMonitor and PrometheusRule belong to the Prometheus Operator.
CUSTOM_KINDS = {"IPPool", "ServiceMonitor", "PrometheusRule"}
TESTS = pathlib.Path(__file__).parent
DOCS = ROOT / "docs"


def required(tool: str) -> str | None:
    """The path of `tool`; a missing tool skips the test, or fails it under CI=true."""
    path = shutil.which(tool)
    if path is None and os.environ.get("CI") == "true":
        raise AssertionError(f"{tool} is missing (CI=true): scripts/test.sh installs it")
    return path


def values_file(name: str) -> dict:
    return yaml.safe_load((pathlib.Path(__file__).parent / name).read_text())


def render(values: dict | None = None) -> list[dict]:
    """Every object the chart renders (NOTES.txt aside), as parsed YAML."""
    rendered = helm.Chart.load(CHART).render(values, name="ferrolb", namespace=NAMESPACE, is_install=True)
    docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def container(docs: list[dict], kind: str) -> dict:
    (workload,) = of_kind(docs, kind)
    (c,) = workload["spec"]["template"]["spec"]["containers"]
    return c


def flags_of(binary: str) -> set[str]:
    """The long flags a binary's --help lists."""
    out = subprocess.run([BIN / binary, "--help"], capture_output=True, text=True, check=True).stdout
    return set(re.findall(r"^\s+(?:-\w, )?--([a-z0-9-]+)", out, re.M)) - {"help", "version"}


class Lint(unittest.TestCase):
    def test_lint_is_clean_with_defaults_and_every_option(self):
        for values in (None, values_file("values-all.yaml")):
            report = helm.lint(CHART, values, strict=True, kube_version="v1.33.0")
            self.assertEqual(report["errors"], [], report)
            worse_than_info = [m for m in report["messages"] if m["severity"] >= 2]
            self.assertEqual(worse_than_info, [], report)


class Defaults(unittest.TestCase):
    docs = render()

    def test_controller_is_two_replicas_spread_over_nodes_and_non_root(self):
        (deploy,) = of_kind(self.docs, "Deployment")
        spec = deploy["spec"]["template"]["spec"]
        self.assertEqual(deploy["spec"]["replicas"], 2)
        term = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
        self.assertEqual(term["podAffinityTerm"]["topologyKey"], "kubernetes.io/hostname")
        self.assertTrue(spec["securityContext"]["runAsNonRoot"])
        c = container(self.docs, "Deployment")
        self.assertEqual(c["securityContext"]["capabilities"], {"drop": ["ALL"]})
        self.assertTrue(c["securityContext"]["readOnlyRootFilesystem"])
        self.assertEqual(c["readinessProbe"]["httpGet"]["path"], "/readyz")
        self.assertEqual(c["livenessProbe"]["httpGet"]["path"], "/healthz")
        (pdb,) = of_kind(self.docs, "PodDisruptionBudget")
        self.assertEqual(pdb["spec"]["selector"], deploy["spec"]["selector"])

    def test_speaker_runs_on_every_node_with_only_net_raw_and_net_admin(self):
        (ds,) = of_kind(self.docs, "DaemonSet")
        spec = ds["spec"]["template"]["spec"]
        self.assertTrue(spec["hostNetwork"])
        self.assertEqual(spec["dnsPolicy"], "ClusterFirstWithHostNet")
        tolerated = {t["key"] for t in spec["tolerations"]}
        self.assertIn("node-role.kubernetes.io/control-plane", tolerated)
        c = container(self.docs, "DaemonSet")
        sc = c["securityContext"]
        self.assertEqual(sc["capabilities"], {"drop": ["ALL"], "add": ["NET_RAW", "NET_ADMIN"]})
        self.assertTrue(sc["readOnlyRootFilesystem"])
        self.assertFalse(sc["allowPrivilegeEscalation"])
        self.assertNotIn("privileged", sc)
        self.assertIn("--peer-secret-file=/etc/ferrolb/peer-secret/key", c["args"])
        self.assertIn("--forwarding=nftables", c["args"])

    def test_heartbeat_key_is_made_in_the_cluster_so_offline_renders_are_stable(self):
        # GitOps tools render with `helm template` (no `lookup`): a key in the chart would change
        # on every render. The controller creates the Secret instead.
        self.assertEqual(of_kind(self.docs, "Secret"), [])
        self.assertEqual(render(), self.docs, "two renders differ")
        self.assertIn("--peer-secret=ferrolb-peer-secret", container(self.docs, "Deployment")["args"])
        role = next(d for d in of_kind(self.docs, "Role") if d["metadata"]["name"] == "ferrolb-controller")
        self.assertIn({"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]}, role["rules"])
        self.assertIn(
            {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["ferrolb-peer-secret"], "verbs": ["get"]},
            role["rules"],
        )
        (ds,) = of_kind(self.docs, "DaemonSet")
        volume, state = ds["spec"]["template"]["spec"]["volumes"]
        self.assertIn("--bgp=none", ds["spec"]["template"]["spec"]["containers"][0]["args"])
        self.assertEqual(volume["secret"]["secretName"], "ferrolb-peer-secret")
        self.assertNotIn("optional", volume["secret"], "a speaker without the key must wait for it")
        # The claims outlive the pod (a restart in place), not the node's boot.
        self.assertEqual(state["hostPath"], {"path": "/run/ferrolb", "type": "DirectoryOrCreate"})

    def test_nothing_optional_by_default(self):
        for kind in ("ServiceMonitor", "PrometheusRule", "ConfigMap", "IPPool"):
            self.assertEqual(of_kind(self.docs, kind), [], kind)

    def test_the_speakers_metrics_stay_on_the_nodes_loopback(self):
        # hostNetwork: 0.0.0.0 would open to the LAN which addresses every node announces.
        speaker = container(self.docs, "DaemonSet")
        self.assertIn("--metrics-addr=127.0.0.1:7474", speaker["args"])
        self.assertNotIn("metrics", [p["name"] for p in speaker["ports"]])
        with self.assertRaisesRegex(Exception, "serviceMonitor.enabled needs speaker.metricsExposed=true"):
            render({"serviceMonitor": {"enabled": True}})


class EveryOption(unittest.TestCase):
    values = values_file("values-all.yaml")
    docs = render(values)

    def test_every_flag_of_both_binaries_is_set_from_values(self):
        # Set another way: the kubeconfig (in-cluster), the replica's and node's names (env).
        by_env = {"ferrolb-controller": {"kubeconfig", "identity"}, "ferrolb-speaker": {"kubeconfig", "node-name"}}
        for binary, kind in (("ferrolb-controller", "Deployment"), ("ferrolb-speaker", "DaemonSet")):
            args = container(self.docs, kind)["args"]
            given = {a[2:].split("=")[0] for a in args}
            self.assertEqual(given, flags_of(binary) - by_env[binary], f"{binary}: flags without a value")
        self.assertEqual(container(self.docs, "Deployment")["env"][0]["name"], "POD_NAME")
        self.assertEqual(container(self.docs, "DaemonSet")["env"][0]["name"], "NODE_NAME")

    def test_values_reach_the_objects(self):
        c = container(self.docs, "Deployment")
        for arg in ("--lb-class=example.com/lb", "--lb-class-only", "--leader-lease-seconds=20",
                    "--leader-retry-ms=1500", "--concurrency=8", "--reserved-cidrs=10.96.0.0/12,fd00:10:96::/112",
                    "--metrics-addr=0.0.0.0:9472",
                    "--health-addr=0.0.0.0:9473", "--log-format=json", "--log-level=ferrolb_speaker=debug,info"):
            self.assertIn(arg, c["args"])
        self.assertEqual(c["image"], "registry.example.com/mirror/ferrolb-controller:v9.9.9")
        s = container(self.docs, "DaemonSet")
        self.assertIn("--metrics-addr=0.0.0.0:9474", s["args"])
        for arg in ("--forwarding=none", "--peer-port=17946", "--heartbeat-interval-ms=200",
                    "--peer-timeout-ms=1000", "--startup-settle-ms=3000", "--lease-seconds=15", "--restart-grace-ms=60000", "--conntrack-sync=conntrackd",
                    "--exclude-interfaces=veth*,cni0", "--bgp=bird", "--bgp-route-table=201", "--bgp-dir=/run/bird"):
            self.assertIn(arg, s["args"])
        self.assertIn({"name": "bird", "mountPath": "/run/bird"}, s["volumeMounts"])
        self.assertIn("--state-dir=/run/ferrolb", s["args"])
        self.assertIn({"name": "state", "mountPath": "/run/ferrolb"}, s["volumeMounts"])
        (deploy,) = of_kind(self.docs, "Deployment")
        self.assertEqual(deploy["spec"]["replicas"], 3)
        self.assertIn("nodeAffinity", deploy["spec"]["template"]["spec"]["affinity"])
        (ds,) = of_kind(self.docs, "DaemonSet")
        self.assertEqual(ds["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"], "my-peer-key")
        self.assertIn("--peer-secret=my-peer-key", c["args"])
        self.assertEqual(len(of_kind(self.docs, "ServiceMonitor")), 2)

    def test_bgp_mode_lets_the_speaker_read_peers_and_only_its_namespaces_secrets(self):
        speaker = "ferrolb-speaker"
        role = next(d for d in self.docs if d["kind"] == "Role" and d["metadata"]["name"] == speaker)
        self.assertIn({"apiGroups": [""], "resources": ["secrets"], "verbs": ["list", "watch"]}, role["rules"])
        self.assertEqual(role["metadata"]["namespace"], NAMESPACE)
        cluster = next(d for d in self.docs if d["kind"] == "ClusterRole" and d["metadata"]["name"] == speaker)
        self.assertFalse(any("secrets" in r["resources"] for r in cluster["rules"]), "Secrets cluster-wide")
        self.assertIn({"apiGroups": ["ferrolb.io"], "resources": ["bgppeers/status"], "verbs": ["patch"]}, cluster["rules"])
        default = render()
        default_cluster = next(d for d in default if d["kind"] == "ClusterRole" and d["metadata"]["name"] == speaker)
        self.assertFalse(any("bgppeers" in r["resources"] for r in default_cluster["rules"]), "BGP rights without BGP")

    def test_pools_become_ippools(self):
        pools = {p["metadata"]["name"]: p["spec"] for p in of_kind(self.docs, "IPPool")}
        for pool in self.values["pools"]:
            spec = dict(pool)
            del spec["name"]
            self.assertEqual(pools[pool["name"]], spec)

    def test_a_home_lab_is_one_command(self):
        values = helm.parse_set_string("pools[0].name=home,pools[0].addresses[0]=192.168.1.240-192.168.1.250")
        helm.Chart.load(CHART).validate_schema(values)
        (pool,) = of_kind(render(values), "IPPool")
        self.assertEqual(pool["spec"], {"addresses": ["192.168.1.240-192.168.1.250"]})


class BadValues(unittest.TestCase):
    cases = {
        "a typo in a key": {"contoller": {"replicas": 2}},
        "an unknown forwarding mode": {"speaker": {"forwarding": "iptables"}},
        "an unknown log format": {"log": {"format": "xml"}},
        "a pool without addresses": {"pools": [{"name": "home"}]},
        "a pool with an unknown field": {"pools": [{"name": "home", "addresses": ["192.0.2.0/28"], "adresses": []}]},
        "a number as text": {"controller": {"replicas": "two"}},
        "a port out of range": {"speaker": {"ports": {"peer": 70000}}},
        "a pool name that is no Kubernetes name": {"pools": [{"name": "Home Lab", "addresses": ["192.0.2.0/28"]}]},
    }

    def test_a_bad_values_file_is_refused_with_the_key_named(self):
        values = helm.values_from_yaml((pathlib.Path(__file__).parent / "values-bad.yaml").read_text())
        with self.assertRaises(helm.HelmError) as refused:
            helm.Chart.load(CHART).validate_schema(values)
        self.assertIn("forwardng", str(refused.exception))

    def test_bad_values_are_refused_before_anything_renders(self):
        chart = helm.Chart.load(CHART)
        for what, values in self.cases.items():
            with self.subTest(what):
                with self.assertRaises(helm.HelmError):
                    chart.validate_schema(values)
                with self.assertRaises(helm.HelmError):
                    chart.render(values, name="ferrolb", namespace=NAMESPACE)


class KubernetesSchemas(unittest.TestCase):
    def test_every_rendered_object_is_valid_for_its_kind(self):
        for values in (None, values_file("values-all.yaml")):
            for doc in render(values):
                if doc["kind"] in CUSTOM_KINDS:
                    continue
                with self.subTest(kind=doc["kind"], name=doc["metadata"]["name"]):
                    kubernetes_validate.validate(doc, KUBERNETES, strict=True)


class Alerts(unittest.TestCase):
    """The PrometheusRule, checked and unit-tested by Prometheus's own promtool."""

    rule = of_kind(render({"prometheusRule": {"enabled": True, "labels": {"release": "prom"}}}), "PrometheusRule")[0]
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]
    unit_tests = yaml.safe_load((TESTS / "alerts-test.yaml").read_text())

    def promtool(self, *args: str) -> str:
        promtool = required("promtool")
        if promtool is None:
            self.skipTest("promtool is missing (Debian package prometheus)")
        with tempfile.TemporaryDirectory() as d:
            (pathlib.Path(d) / "rules.yaml").write_text(yaml.safe_dump(self.rule["spec"]))
            shutil.copy(TESTS / "alerts-test.yaml", d)
            done = subprocess.run([promtool, *args], cwd=d, capture_output=True, text=True)
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        return done.stdout

    def test_the_rendered_rules_pass_promtool_check(self):
        self.assertIn(f"SUCCESS: {len(self.alerts)} rules found", self.promtool("check", "rules", "rules.yaml"))

    def test_every_alert_fires_and_stays_quiet_in_promtool_unit_tests(self):
        self.promtool("test", "rules", "alerts-test.yaml")
        fired, quiet = set(), set()
        for t in self.unit_tests["tests"]:
            for case in t.get("alert_rule_test", []):
                (fired if case.get("exp_alerts") else quiet).add(case["alertname"])
        names = {a["alert"] for a in self.alerts}
        self.assertEqual(names - fired, set(), "alerts never shown firing")
        self.assertEqual(names - quiet, set(), "alerts never shown quiet")

    def test_every_alert_has_a_severity_and_a_runbook_section(self):
        anchors = {
            re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.+)$", (DOCS / "TROUBLESHOOTING.md").read_text(), re.M)
        }
        for a in self.alerts:
            with self.subTest(alert=a["alert"]):
                self.assertIn(a["labels"]["severity"], {"warning", "critical"})
                url = a["annotations"]["runbook_url"]
                self.assertTrue(url.startswith("https://github.com/ferrolb/ferrolb/blob/main/docs/TROUBLESHOOTING.md#"), url)
                self.assertIn(url.split("#")[1], anchors)
        self.assertEqual(self.rule["metadata"]["labels"]["release"], "prom")


class Dashboard(unittest.TestCase):
    """The Grafana dashboard ConfigMap and the JSON inside it."""

    (configmap,) = of_kind(render(values_file("values-all.yaml")), "ConfigMap")
    dashboard = json.loads(configmap["data"]["ferrolb.json"])

    def test_the_sidecar_finds_it(self):
        self.assertEqual(self.configmap["metadata"]["namespace"], "monitoring")
        self.assertEqual(self.configmap["metadata"]["labels"]["grafana_dashboard"], "1")
        self.assertEqual(self.configmap["metadata"]["annotations"], {"grafana_folder": "Network"})

    def test_it_is_valid_for_the_schema_version_it_declares(self):
        import jsonschema

        version = self.dashboard["schemaVersion"]
        schema = json.loads((TESTS / f"grafana-dashboard-v{version}.schema.json").read_text())
        jsonschema.validate(self.dashboard, schema)

    def test_panels_do_not_overlap_and_every_query_uses_the_chosen_data_source(self):
        cells = {}
        for p in self.dashboard["panels"]:
            g = p["gridPos"]
            for x in range(g["x"], g["x"] + g["w"]):
                for y in range(g["y"], g["y"] + g["h"]):
                    self.assertNotIn((x, y), cells, f"{p['title']} overlaps {cells.get((x, y))}")
                    cells[(x, y)] = p["title"]
            for t in p.get("targets", []):
                self.assertEqual(t["datasource"], {"type": "prometheus", "uid": "${datasource}"}, p["title"])
        ids = [p["id"] for p in self.dashboard["panels"]]
        self.assertEqual(len(ids), len(set(ids)))


def operator_crd(kind: str, plural: str) -> dict:
    """A stand-in for one of the Prometheus Operator's CRDs, so that its objects can be stored too."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.monitoring.coreos.com"},
        "spec": {
            "group": "monitoring.coreos.com",
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": kind.lower(), "kind": kind, "listKind": f"{kind}List"},
            "versions": [{"name": "v1", "served": True, "storage": True,
                          "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}],
        },
    }


class SimApiServerCase(unittest.TestCase):
    """Tests against a sim-apiserver (our kube-apiserver double) of their own, with ferrolb's and
    the Prometheus Operator's CRDs and ferrolb's namespace."""

    @classmethod
    def setUpClass(cls):
        cls.dir = pathlib.Path(tempfile.mkdtemp(prefix="ferrolb-chart-"))
        cls.kubeconfig = cls.dir / "kubeconfig"
        cls.server = subprocess.Popen(
            [BIN / "sim-apiserver", "--kubeconfig-out", cls.kubeconfig], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 20
        while not cls.kubeconfig.exists():
            if time.monotonic() > deadline or cls.server.poll() is not None:
                raise RuntimeError("sim-apiserver did not start")
            time.sleep(0.05)
        time.sleep(0.1)
        cls.kubectl("apply", "-f", str(CHART / "crds"))
        for kind, plural in (("ServiceMonitor", "servicemonitors"), ("PrometheusRule", "prometheusrules")):
            cls.kubectl("apply", "-f", "-", input=json.dumps(operator_crd(kind, plural)))
        cls.namespace(NAMESPACE)
        cls.namespace("monitoring")

    @classmethod
    def tearDownClass(cls):
        cls.server.kill()
        cls.server.wait()
        shutil.rmtree(cls.dir, ignore_errors=True)

    @classmethod
    def namespace(cls, name: str) -> None:
        # `kubectl create namespace` speaks protobuf, which sim-apiserver does not; apply is JSON.
        cls.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}))

    @classmethod
    def kubectl(cls, *args: str, input: str | None = None) -> str:
        done = subprocess.run(
            ["kubectl", "--kubeconfig", str(cls.kubeconfig), *args], input=input, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {done.stderr}")
        return done.stdout


class InSimApiServer(SimApiServerCase):
    """The rendered objects stored by sim-apiserver through kubectl, and the chart installed and
    upgraded there by Helm itself."""

    def test_rendered_objects_load_with_kubectl(self):
        docs = render(values_file("values-all.yaml")) + render({"pools": [{"name": "lan", "addresses": ["198.51.100.0/28"]}]})
        # Both renders share names; the second one's objects replace the first's (an upgrade).
        stream = "\n---\n".join(yaml.safe_dump(d) for d in docs)
        self.kubectl("apply", "--server-side", "--field-manager=chart-test", "--force-conflicts", "-f", "-", input=stream)
        for d in docs:
            kind, name = d["kind"].lower(), d["metadata"]["name"]
            ns = ["-n", d["metadata"].get("namespace", NAMESPACE)]
            got = json.loads(self.kubectl("get", kind, name, *ns, "-o", "json"))
            self.assertEqual(got["kind"], d["kind"])
        pools = json.loads(self.kubectl("get", "ippools", "-o", "json"))["items"]
        self.assertEqual(sorted(p["metadata"]["name"] for p in pools), ["home", "lan", "media"])

    def test_helm_install_then_upgrade_keeps_the_heartbeat_key(self):
        # Helm's default storage: each release revision is a Secret, written in protobuf.
        config = helm.Config(kubeconfig_path=self.kubeconfig, namespace="ferrolb-release")
        self.namespace("ferrolb-release")
        config.install(CHART, "lb", {"pools": [{"name": "up", "addresses": ["203.0.113.0/28"]}]}, namespace="ferrolb-release")
        deploy = json.loads(self.kubectl("get", "deployment", "lb-controller", "-n", "ferrolb-release", "-o", "json"))
        args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
        secret_name = next(a.split("=", 1)[1] for a in args if a.startswith("--peer-secret="))
        secret = lambda: json.loads(self.kubectl("get", "secret", secret_name, "-n", "ferrolb-release", "-o", "json"))
        # The real controller, with the chart's flags, makes the key; a second run keeps it.
        first = self.controller_makes_the_key(secret_name, secret)
        config.upgrade(CHART, "lb", {"log": {"format": "json"}}, namespace="ferrolb-release")
        self.assertEqual(self.controller_makes_the_key(secret_name, secret), first, "the key must never change")
        self.assertEqual(len(bytes.fromhex(base64.b64decode(first).decode())), 32)
        ds = json.loads(self.kubectl("get", "daemonset", "lb-speaker", "-n", "ferrolb-release", "-o", "json"))
        self.assertIn("--log-format=json", ds["spec"]["template"]["spec"]["containers"][0]["args"])
        # The release records Helm keeps in the cluster: one Secret per revision.
        records = json.loads(self.kubectl("get", "secrets", "-n", "ferrolb-release", "-l", "owner=helm,name=lb", "-o", "json"))
        revisions = sorted(r["metadata"]["labels"]["version"] for r in records["items"])
        self.assertEqual(revisions, ["1", "2"])
        self.assertTrue(all(r["type"] == "helm.sh/release.v1" for r in records["items"]))

    def controller_makes_the_key(self, name: str, secret) -> str:
        controller = subprocess.Popen(
            [BIN / "ferrolb-controller", "--kubeconfig", self.kubeconfig, "--namespace", "ferrolb-release",
             f"--peer-secret={name}", "--identity", "chart-test", "--metrics-addr", "127.0.0.1:0",
             "--health-addr", "127.0.0.1:0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    return secret()["data"]["key"]
                except AssertionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        finally:
            controller.kill()
            controller.wait()


if __name__ == "__main__":
    unittest.main()
