"""ferrolb's images as scripts/images.sh builds them (no registry; podman from Debian), loaded from
their archives into a podman storage of their own and started: the controller connects to
sim-apiserver and hands out an address, the speaker's tools run inside its image.

Needs the archives in target/images (scripts/test.sh builds them first) and podman; under CI=true a
missing one fails instead of skipping. Podman runs here with `--runtime runc` and explicit
ulimits: in this sandbox crun refuses the host's hybrid cgroup layout and the default rlimits are
above what the container may set (docs/TESTING.md).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
import unittest
import urllib.request

import yaml

from test_chart import ROOT, SimApiServerCase, container, render

ARCHIVES = ROOT / "target" / "images"
CHART_VERSION = yaml.safe_load((ROOT / "charts" / "ferrolb" / "Chart.yaml").read_text())["appVersion"]
RUN = ["--runtime", "runc", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
COMPONENTS = ("controller", "speaker")


def archive(component: str) -> pathlib.Path:
    return ARCHIVES / f"ferrolb-{component}-{CHART_VERSION}.tar"


def chart_image(component: str) -> str:
    kind = {"controller": "Deployment", "speaker": "DaemonSet"}[component]
    return container(render(), kind)["image"]


class Podman:
    """podman with a storage of its own, holding only what was loaded from the archives."""

    def __init__(self) -> None:
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="ferrolb-images-"))

    def __call__(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        done = subprocess.run(
            ["podman", "--root", str(self.dir / "root"), "--runroot", str(self.dir / "run"), *args],
            capture_output=True, text=True, timeout=timeout,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)}: {done.stdout}{done.stderr}")
        return done

    def close(self) -> None:
        self("system", "reset", "--force", check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


def prerequisites() -> str | None:
    """Why the image tests cannot run, or None."""
    if shutil.which("podman") is None:
        why = "podman is missing (Debian package podman)"
    elif not all(archive(c).exists() for c in COMPONENTS):
        why = f"no image archives in {ARCHIVES}: run scripts/images.sh"
    else:
        return None
    if os.environ.get("CI") == "true":
        raise AssertionError(f"{why} (CI=true)")
    return why


class Images(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        why = prerequisites()
        if why:
            raise unittest.SkipTest(why)
        cls.podman = Podman()
        cls.loaded = {c: cls.podman("load", "-i", str(archive(c))).stdout for c in COMPONENTS}
        cls.inspect = {c: json.loads(cls.podman("image", "inspect", chart_image(c)).stdout)[0] for c in COMPONENTS}

    @classmethod
    def tearDownClass(cls):
        cls.podman.close()

    def run_in(self, component: str, entrypoint: str, *args: str) -> subprocess.CompletedProcess:
        return self.podman("run", "--rm", *RUN, "--read-only", "--network", "none", "--entrypoint", entrypoint,
                           chart_image(component), *args)

    def files(self, component: str) -> set[str]:
        """The regular files and symlinks of an image's filesystem."""
        name = f"files-{component}"
        self.podman("create", "--name", name, chart_image(component))
        self.addCleanup(lambda: self.podman("rm", "-f", name, check=False))
        exported = self.podman.dir / f"{component}.tar"
        self.podman("export", "-o", str(exported), name, timeout=60)
        with tarfile.open(exported) as t:
            return {m.name.lstrip("./") for m in t.getmembers() if not m.isdir()}

    def test_archives_carry_the_charts_default_image_references(self):
        for c in COMPONENTS:
            with self.subTest(component=c), tarfile.open(archive(c)) as t:
                (manifest,) = json.load(t.extractfile("manifest.json"))
                self.assertEqual(manifest["RepoTags"], [chart_image(c)])
                self.assertIn(chart_image(c), self.loaded[c])

    def test_metadata_user_and_labels(self):
        for c in COMPONENTS:
            with self.subTest(component=c):
                config = self.inspect[c]["Config"]
                labels = config["Labels"]
                self.assertEqual(labels["org.opencontainers.image.title"], f"ferrolb-{c}")
                self.assertEqual(labels["org.opencontainers.image.version"], CHART_VERSION)
                self.assertRegex(labels["org.opencontainers.image.revision"], r"^([0-9a-f]{40}|unknown)$")
                self.assertRegex(labels["org.opencontainers.image.created"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
                for key in ("source", "licenses", "description"):
                    self.assertTrue(labels[f"org.opencontainers.image.{key}"], key)
                self.assertEqual(config["Entrypoint"], [f"/ferrolb-{c}"])
        self.assertEqual(self.inspect["controller"]["Config"]["User"], "65532:65532")

    def test_each_image_holds_exactly_its_root_filesystem(self):
        # The root filesystems scripts/image-rootfs.sh made for this build; the Dockerfile's build
        # stage runs the same script, so its images hold the same list (docs/TESTING.md).
        for c in COMPONENTS:
            with self.subTest(component=c):
                rootfs = ARCHIVES / "context" / "rootfs" / c
                want = {str(p.relative_to(rootfs)) for p in rootfs.rglob("*") if not p.is_dir()}
                got = self.files(c)
                # The runtime adds its mount points for /etc/hosts and friends.
                got -= {"etc/hosts", "etc/hostname", "etc/resolv.conf", "run/.containerenv"}
                self.assertEqual(got, want)
                self.assertFalse({"bin/sh", "usr/bin/sh", "bin/bash"} & got, "an image has a shell")

    def test_the_controller_image_is_under_20_mb(self):
        self.assertLess(self.inspect["controller"]["Size"], 20_000_000)

    def test_the_speakers_tools_run_inside_its_image(self):
        self.assertIn("--node-name", self.run_in("speaker", "/ferrolb-speaker", "--help").stdout)
        self.assertRegex(self.run_in("speaker", "/usr/sbin/nft", "--version").stdout, r"^nftables v1\.")
        bird = self.run_in("speaker", "/usr/sbin/bird", "--version")
        self.assertRegex(bird.stdout + bird.stderr, r"BIRD version 2\.")
        birdc = self.podman("run", "--rm", *RUN, "--read-only", "--network", "none", "--entrypoint", "/usr/sbin/birdc",
                            chart_image("speaker"), "-s", "/run/bird/none.ctl", "show status", check=False)
        # It runs (its libraries load) and says it cannot reach a BIRD that is not running.
        self.assertIn("/run/bird/none.ctl", birdc.stdout + birdc.stderr)
        conntrackd = self.run_in("speaker", "/usr/sbin/conntrackd", "-v")
        self.assertIn("Connection tracking userspace daemon", conntrackd.stdout + conntrackd.stderr)
        conntrack = self.run_in("speaker", "/usr/sbin/conntrack", "--version")
        self.assertRegex(conntrack.stdout + conntrack.stderr, r"conntrack v1\.")
        # libnftables really works in there: a ruleset in the container's own network namespace.
        done = self.podman("run", "--rm", *RUN, "--read-only", "--network", "none", "--cap-add", "NET_ADMIN",
                           "--entrypoint", "/usr/sbin/nft", chart_image("speaker"),
                           "add table inet probe; list tables")
        self.assertIn("table inet probe", done.stdout)
        self.assertIn("Usage", self.run_in("controller", "/ferrolb", "--help").stdout)


class ContainerdImport(unittest.TestCase):
    """The archives imported by containerd's own `ctr` (what k3s users run, and what `kind load
    image-archive` runs on each node), into a containerd daemon of the test's own."""

    def test_ctr_imports_both_archives_under_the_charts_references(self):
        why = prerequisites()
        if why:
            self.skipTest(why)
        if shutil.which("containerd") is None:
            if os.environ.get("CI") == "true":
                self.fail("containerd is missing (CI=true): scripts/test.sh installs it")
            self.skipTest("containerd is missing (Debian package containerd)")
        d = pathlib.Path(tempfile.mkdtemp(prefix="ferrolb-containerd-"))
        self.addCleanup(shutil.rmtree, d, True)
        sock = d / "containerd.sock"
        daemon = subprocess.Popen(
            ["containerd", "--root", str(d / "root"), "--state", str(d / "state"), "--address", str(sock)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.addCleanup(daemon.wait)
        self.addCleanup(daemon.kill)
        ctr = ["ctr", "--address", str(sock), "--namespace", "k8s.io"]
        eventually(self, lambda: subprocess.run([*ctr, "version"], capture_output=True).returncode == 0, 20,
                   lambda: "containerd did not start")
        for c in COMPONENTS:
            done = subprocess.run([*ctr, "images", "import", "--digests", str(archive(c))],
                                  capture_output=True, text=True, timeout=120)
            self.assertEqual(done.returncode, 0, done.stderr)
        listed = subprocess.run([*ctr, "images", "ls", "-q"], capture_output=True, text=True, check=True).stdout
        for c in COMPONENTS:
            self.assertIn(chart_image(c), listed.split())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ControllerImageInSimApiServer(SimApiServerCase):
    """The controller image started with podman against sim-apiserver: /healthz answers, and a
    Service gets an address from an IPPool."""

    def test_the_controller_image_connects_and_hands_out_an_address(self):
        why = prerequisites()
        if why:
            self.skipTest(why)
        podman = Podman()
        self.addCleanup(podman.close)
        podman("load", "-i", str(archive("controller")))
        port = free_port()
        name = "ferrolb-controller-under-test"
        podman("run", "-d", "--name", name, *RUN, "--read-only", "--network", "host",
               "-v", f"{self.kubeconfig}:/kubeconfig:ro", chart_image("controller"),
               "--kubeconfig", "/kubeconfig", "--namespace", "ferrolb-system", "--identity", "image-test",
               "--metrics-addr", f"127.0.0.1:{port}", "--health-addr", f"127.0.0.1:{port}")
        self.addCleanup(lambda: podman("rm", "-f", name, check=False))

        def healthz() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    return r.status == 200
            except OSError:
                return False

        eventually(self, healthz, 30, lambda: podman("logs", name, check=False).stderr)
        self.kubectl("apply", "-f", "-", input=json.dumps({
            "apiVersion": "ferrolb.io/v1alpha1", "kind": "IPPool", "metadata": {"name": "image-test"},
            "spec": {"addresses": ["203.0.113.200/30"]}}))
        self.kubectl("apply", "-f", "-", input=json.dumps({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "image-test", "namespace": "default"},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}}))

        def addressed() -> bool:
            svc = json.loads(self.kubectl("get", "service", "image-test", "-n", "default", "-o", "json"))
            ingress = svc.get("status", {}).get("loadBalancer", {}).get("ingress") or []
            return any(i.get("ip", "").startswith("203.0.113.20") for i in ingress)

        eventually(self, addressed, 30, lambda: podman("logs", name, check=False).stderr)


def eventually(case: unittest.TestCase, ok, seconds: float, diagnose) -> None:
    deadline = time.monotonic() + seconds
    while not ok():
        if time.monotonic() > deadline:
            case.fail(f"not within {seconds} s; logs:\n{diagnose()}")
        time.sleep(0.2)


if __name__ == "__main__":
    unittest.main()
