#!/usr/bin/env bash
# Builds ferrolb's controller and speaker images from this checkout, with tools from Debian's
# packages and no registry: release binaries (the `image` profile), root filesystems from
# scripts/image-rootfs.sh, and podman building the Dockerfile's image stages `FROM scratch`.
# Writes one archive per image that `docker load`, `podman load`, `ctr images import` and
# `kind load image-archive` accept (the docker-archive format, with its manifest.json), tagged as
# the chart's default image references:
#
#   scripts/images.sh [OUT_DIR]      # default target/images
#   -> OUT_DIR/ferrolb-controller-<version>.tar, OUT_DIR/ferrolb-speaker-<version>.tar
#
# Debian, as root. Installs podman, runc, nftables, bird2, conntrackd, conntrack and ca-certificates
# if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/images}
mkdir -p "$out"
out=$(cd "$out" && pwd)

missing=()
command -v podman >/dev/null || missing+=(podman)
# The image tests run containers with runc: crun refuses hybrid cgroup hosts (docs/TESTING.md).
command -v runc >/dev/null || missing+=(runc)
command -v nft >/dev/null || missing+=(nftables)
command -v bird >/dev/null || missing+=(bird2)
command -v conntrackd >/dev/null || missing+=(conntrackd)
command -v conntrack >/dev/null || missing+=(conntrack)
[[ -e /etc/ssl/certs/ca-certificates.crt ]] || missing+=(ca-certificates)
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

version=$(awk -F'"' '/^appVersion:/ {print $2}' charts/ferrolb/Chart.yaml)
registry=$(awk '/^  registry:/ {print $2; exit}' charts/ferrolb/values.yaml)
repository=$(awk '/^  repository:/ {print $2; exit}' charts/ferrolb/values.yaml)
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
# The commit's time, not the clock's: the same checkout gives the same image metadata.
epoch=$(git log -1 --format=%ct 2>/dev/null || echo 0)
created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)

cargo build --profile image --locked -p ferrolb-cli -p ferrolb-speaker

context="$out/context"
rm -rf "$context"
mkdir -p "$context/rootfs"
scripts/image-rootfs.sh controller target/image "$context/rootfs/controller"
scripts/image-rootfs.sh speaker target/image "$context/rootfs/speaker"
# The Dockerfile's image stages, copying the root filesystems from this context instead of from
# its build stage.
sed -n '/^# ---- the images/,$p' Dockerfile | sed 's|^COPY --from=rootfs /rootfs/|COPY rootfs/|' >"$context/Containerfile"

for component in controller speaker; do
  image="$registry/$repository-$component:$version"
  podman build --quiet --target "$component" --timestamp "$epoch" \
    --build-arg VERSION="$version" --build-arg REVISION="$revision" --build-arg CREATED="$created" \
    -t "$image" -f "$context/Containerfile" "$context" >/dev/null
  archive="$out/ferrolb-$component-$version.tar"
  rm -f "$archive"
  podman save --quiet --format docker-archive -o "$archive" "$image"
  size=$(podman image inspect --format '{{.Size}}' "$image")
  printf '%s  %s  (%s bytes unpacked, archive %s bytes)\n' "$image" "$archive" "$size" "$(stat -c %s "$archive")"
done
