#!/usr/bin/env bash
# Runs every check CI runs: formatting, clippy, the build, and all tests (unit, property,
# sim-apiserver, kubectl, binaries, the root/netns lab suites, the Helm chart, the alerts with
# promtool, the images built and started with podman, a bounded run of every fuzzer). Debian, as root.
# Installs what it needs. Under CI=true, tests whose prerequisites are missing fail instead of
# skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v nft >/dev/null || missing+=(nftables)
command -v ip >/dev/null || missing+=(iproute2)
command -v curl >/dev/null || missing+=(curl)
command -v kubectl >/dev/null || missing+=(kubectl)
# promtool (Prometheus's own rule checker and unit tester) comes with Debian's prometheus package.
command -v promtool >/dev/null || missing+=(prometheus)
# BGP mode: BIRD 2 on the nodes, FRR as the lab's upstream router.
command -v bird >/dev/null || missing+=(bird2)
command -v vtysh >/dev/null || missing+=(frr)
# Connection replication: conntrackd on the nodes, conntrack to forget entries at a takeover.
command -v conntrackd >/dev/null || missing+=(conntrackd)
command -v conntrack >/dev/null || missing+=(conntrack)
# containerd's ctr imports the image archives as k3s and kind do.
command -v containerd >/dev/null || missing+=(containerd)
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  # kubectl comes from Kubernetes' own apt repository where Debian's lacks it; the kubectl tests
  # say so (and fail under CI=true) if it could not be installed.
  apt-get install -y -qq "${missing[@]}" || apt-get install -y -qq nftables iproute2 curl
fi
if ! command -v cargo >/dev/null; then
  echo "cargo is missing: install a Rust toolchain (rustup, 1.89 or newer)" >&2
  exit 1
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true
# The chart is tested with Helm's own engine (helm-python-sdk, no helm binary) and Kubernetes'
# schemas (kubernetes-validate), pinned in charts/tests/requirements.txt.
if ! python3 -m pip --version >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq python3-pip
fi
python3 -m pip install -q --disable-pip-version-check -r charts/tests/requirements.txt 2>&1 |
  grep -v "Running pip as the 'root' user" || true

# A clean CI build gains nothing from incremental caches, which only take disk.
if [ "${CI:-}" = "true" ]; then export CARGO_INCREMENTAL=0; fi

cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
# Benchmarks are type-checked by clippy above; they are built and run by hand (docs/BENCHMARKS.md),
# not linked here, which keeps CI's disk use down.
cargo build --workspace
cargo test --workspace --no-fail-fast
# The images, built as a user builds them (podman, no registry), for the image tests below.
bash scripts/images.sh target/images
python3 -m unittest discover -s charts/tests -v
# Coverage-guided fuzzing of the parsers, bounded (15 s a target, a fixed seed); nightly only.
if rustup run nightly rustc --version >/dev/null 2>&1; then
  bash scripts/fuzz.sh 15
elif [ "${CI:-}" = "true" ]; then
  echo "the nightly toolchain is missing and CI=true requires the fuzzers to run (rustup toolchain install nightly)" >&2
  exit 1
else
  echo "SKIPPED: fuzzing (no nightly toolchain)"
fi
