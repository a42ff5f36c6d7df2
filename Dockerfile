# syntax=docker/dockerfile:1
# ferrolb's two images from one build, each a target of this file:
#
#   docker build --target controller -t ghcr.io/ferrolb/ferrolb-controller:0.1.0 .
#   docker build --target speaker    -t ghcr.io/ferrolb/ferrolb-speaker:0.1.0 .
#
# The binaries are built from this repository's workspace with `--locked`, the same crates and
# code the tests build (they run debug builds of the host's target; these are release builds).
# No container engine runs on the project's own machines: this file is checked by reading.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
# The controller and the CLI: static (musl), for a scratch-like base.
RUN cargo build --release --locked --target x86_64-unknown-linux-musl -p ferrolb-controller -p ferrolb-cli
# The speaker: glibc, because it loads libnftables at run time (dlopen), as the nft command does.
RUN cargo build --release --locked -p ferrolb-speaker

# nft and the libraries it (and libnftables) needs, from Debian 12 like the speaker's base; glibc
# itself stays the base image's.
FROM debian:bookworm-slim AS nft
RUN apt-get update \
 && apt-get install -y --no-install-recommends nftables \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /out \
 && for f in /usr/sbin/nft $(ldd /usr/sbin/nft | awk '/=>/ {print $3}' | grep -Ev '/(libc|libm|libpthread|libdl|ld-linux[^/]*)\.so'); do \
      cp --parents -L "$f" /out; \
    done

# Controller: static binary, no shell, non-root (65532).
FROM gcr.io/distroless/static-debian12:nonroot AS controller
COPY --from=build /src/target/x86_64-unknown-linux-musl/release/ferrolb-controller /ferrolb-controller
COPY --from=build /src/target/x86_64-unknown-linux-musl/release/ferrolb /ferrolb
USER 65532:65532
ENTRYPOINT ["/ferrolb-controller"]

# Speaker: glibc base without a shell, plus nft and libnftables. It runs as root with only
# NET_RAW and NET_ADMIN (the chart drops every other capability).
FROM gcr.io/distroless/cc-debian12 AS speaker
COPY --from=nft /out/ /
# distroless has no ldconfig cache entry for the copied libraries: name their directories.
ENV LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu
COPY --from=build /src/target/release/ferrolb-speaker /ferrolb-speaker
ENTRYPOINT ["/ferrolb-speaker"]
