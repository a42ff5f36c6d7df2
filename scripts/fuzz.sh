#!/usr/bin/env bash
# Runs every cargo fuzz target (fuzz/) for SECONDS each (default 20) from a copy of its seed corpus,
# with a fixed seed, so a CI run is bounded and repeatable. A crash fails the script; libFuzzer
# writes the input that crashed to fuzz/artifacts/<target>/, and its fix comes with a regression
# test. Longer campaigns: `bash scripts/fuzz.sh 600`. Needs the nightly toolchain and cargo-fuzz
# (installed here when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-20}"
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd fuzz
targets=(arp ndp heartbeat address annotations)
cargo +nightly fuzz build
status=0
for t in "${targets[@]}"; do
  cp -r "corpus/$t" "$work/$t"
  echo "fuzz: $t for ${seconds}s"
  if ! cargo +nightly fuzz run "$t" "$work/$t" -- -max_total_time="$seconds" -seed=1 -print_final_stats=1 \
      >"$work/$t.log" 2>&1; then
    status=1
    tail -40 "$work/$t.log"
  fi
  grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb)|^#[0-9]+ +DONE" "$work/$t.log" || true
done
exit "$status"
