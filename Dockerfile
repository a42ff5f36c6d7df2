# syntax=docker/dockerfile:1
# ferrolb's two images, for builders with registry access:
#
#   docker build --target controller -t ghcr.io/ferrolb/ferrolb-controller:0.1.0 .
#   docker build --target speaker    -t ghcr.io/ferrolb/ferrolb-speaker:0.1.0 .
#
# Without a registry, scripts/images.sh builds the same two images with podman: it runs the same
# root-filesystem script (scripts/image-rootfs.sh, the one list of what each image holds) on the
# same Debian release and builds the stages below "the images" from this file.

ARG RUST_VERSION=1.95

# The binaries (the `image` profile: release, LTO, no symbols) and both root filesystems, from
# Debian 12's packages as on the machines that build with podman.
FROM rust:${RUST_VERSION}-bookworm AS rootfs
RUN apt-get update \
 && apt-get install -y --no-install-recommends nftables bird2 conntrackd conntrack ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --profile image --locked -p ferrolb-cli -p ferrolb-speaker \
 && scripts/image-rootfs.sh controller target/image /rootfs/controller \
 && scripts/image-rootfs.sh speaker target/image /rootfs/speaker

# ---- the images (scripts/images.sh builds these stages, reading /rootfs from its build context) ----

# Controller (and the ferrolb CLI): no shell, non-root.
FROM scratch AS controller
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=1970-01-01T00:00:00Z
COPY --from=rootfs /rootfs/controller/ /
USER 65532:65532
ENTRYPOINT ["/ferrolb-controller"]
LABEL org.opencontainers.image.title="ferrolb-controller" \
      org.opencontainers.image.description="ferrolb's controller: hands out LoadBalancer addresses from IPPools; also carries the ferrolb CLI" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="https://github.com/ferrolb/ferrolb" \
      org.opencontainers.image.licenses="Apache-2.0"

# Speaker: nft/libnftables and BIRD 2 beside it, no shell. It runs as root with only NET_RAW and
# NET_ADMIN (the chart drops every other capability).
FROM scratch AS speaker
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=1970-01-01T00:00:00Z
COPY --from=rootfs /rootfs/speaker/ /
ENTRYPOINT ["/ferrolb-speaker"]
LABEL org.opencontainers.image.title="ferrolb-speaker" \
      org.opencontainers.image.description="ferrolb's speaker: announces LoadBalancer addresses (ARP/NDP) and forwards them with nftables; carries BIRD 2 for BGP mode" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="https://github.com/ferrolb/ferrolb" \
      org.opencontainers.image.licenses="Apache-2.0"
