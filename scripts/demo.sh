#!/usr/bin/env bash
# The lab demo: builds ferrolb, then runs `ferrolb-lab demo` — three nodes in network namespaces,
# a Service gets an address, one node answers ARP for it, the client's curl is answered by a pod,
# its speaker is killed, another takes over, curl is answered again — and cleans up. Debian, as
# root. Installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v nft >/dev/null || missing+=(nftables)
command -v ip >/dev/null || missing+=(iproute2)
command -v curl >/dev/null || missing+=(curl)
if ((${#missing[@]})); then
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}"
fi
cargo build --workspace --bins
exec ./target/debug/ferrolb-lab demo
