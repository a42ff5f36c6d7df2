#!/usr/bin/env bash
# The root filesystem of one ferrolb image — the one list of what each image holds. Both builds
# use it: scripts/images.sh (podman, on this machine) and the Dockerfile (for registries), each on
# Debian 12 with the same packages, so both images hold the same files.
#
#   scripts/image-rootfs.sh controller|speaker BIN_DIR OUT_DIR
#
# controller: the ferrolb executable (the CLI, which is the controller when called by the name
#             ferrolb-controller: one executable instead of two nearly equal ones), the C libraries
#             it links, and a passwd entry for the non-root user 65532. No shell.
# speaker:    ferrolb-speaker; nft with libnftables (the speaker loads it at run time); BIRD 2
#             (bird, birdc, birdcl) for BGP mode; conntrackd and conntrack for connection
#             replication; the libraries all of them link. No shell.
# Both carry Debian's CA bundle: the kube client's TLS setup loads the system's roots beside the
# cluster's CA and refuses to start without any.
set -euo pipefail
component=${1:?controller or speaker}
bin=${2:?directory of the built binaries}
out=${3:?output directory}

# Copies the shared libraries the given executables load (ldd's closure) under $out at their paths.
libraries() {
  local f
  for f in "$@"; do
    ldd "$f" | awk '/=> \// {print $3} /^[ \t]*\/[^ ]+ \(/ {print $1}' | while read -r lib; do
      cp --parents -L -n "$lib" "$out"
    done
  done
}

# Copies files of the system (Debian's packages) under $out at their paths, with their libraries.
system_files() {
  local f
  for f in "$@"; do
    [[ -e $f ]] || { echo "image-rootfs: $f is missing (install nftables, bird2, conntrackd and conntrack)" >&2; exit 1; }
    cp --parents -L "$f" "$out"
  done
  libraries "$@"
}

rm -rf "$out"
mkdir -p "$out/etc"
[[ -e /etc/ssl/certs/ca-certificates.crt ]] || { echo "image-rootfs: install ca-certificates" >&2; exit 1; }
cp --parents -L /etc/ssl/certs/ca-certificates.crt "$out"
case $component in
  controller)
    install -m 0755 "$bin/ferrolb" "$out/"
    ln -s ferrolb "$out/ferrolb-controller"
    libraries "$out/ferrolb"
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$out/etc/passwd"
    printf 'root:x:0:\nnonroot:x:65532:\n' >"$out/etc/group"
    ;;
  speaker)
    install -m 0755 "$bin/ferrolb-speaker" "$out/"
    lib=$(ldconfig -p | awk '/libnftables\.so\.1 .*x86-64/ {print $NF; exit}')
    system_files /usr/sbin/nft "$lib" /usr/sbin/bird /usr/sbin/birdc /usr/sbin/birdcl /usr/sbin/conntrackd /usr/sbin/conntrack
    libraries "$out/ferrolb-speaker"
    # BIRD's control socket and state live in /run/bird (a volume in the pod: the root is read-only).
    mkdir -p "$out/run/bird" "$out/etc/bird"
    printf 'root:x:0:0:root:/root:/sbin/nologin\n' >"$out/etc/passwd"
    printf 'root:x:0:\n' >"$out/etc/group"
    ;;
  *)
    echo "image-rootfs: unknown component $component (controller or speaker)" >&2
    exit 2
    ;;
esac
