# syntax=docker/dockerfile:1
#
# portgroup image: the node daemon (portgroupd, the entrypoint) and the CNI
# plugin binary (portgroup), which the DaemonSet's init container copies into
# the host's /opt/cni/bin.
#
#   docker build -t ghcr.io/portgroup/portgroup:0.1.0 .
#
# Needs BuildKit (the default builder of Docker 23+, and buildah/podman) for
# the cache mounts: rebuilds reuse the crates and the target directory.

# The workspace's rust-version (MSRV): building with it keeps that promise.
ARG RUST_VERSION=1.85
ARG DEBIAN_RELEASE=bookworm

FROM docker.io/library/rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
WORKDIR /src
COPY . .
# --locked: build exactly what Cargo.lock says, fail if it is stale.
# One package per build: a build of both unifies features, and the plugin would
# link the daemon's dependencies.
# The binaries are copied out of the cache-mounted target directory, which is
# not part of the image layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p portgroupd \
 && cargo build --release --locked -p portgroup \
 && install -D -m 0755 target/release/portgroupd /out/portgroupd \
 && install -D -m 0755 target/release/portgroup /out/portgroup

# Same Debian release as the build stage, so the glibc matches.
FROM docker.io/library/debian:${DEBIAN_RELEASE}-slim
# nftables (nft + libnftables1): port-security rules. Nothing else: no
# iproute2, no recommends. The slim base already has /bin/sh and coreutils,
# which the DaemonSet's init container uses to install the plugin atomically.
# Not pinned to an exact Debian version: security updates replace it.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends nftables \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/portgroupd /out/portgroup /usr/local/bin/
LABEL org.opencontainers.image.title="portgroup" \
      org.opencontainers.image.description="vSphere-style port groups for KubeVirt: portgroupd node daemon and portgroup CNI plugin" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"
# Root on purpose: portgroupd needs CAP_NET_ADMIN in the host network
# namespace, which Kubernetes grants to the container's uid 0 (the DaemonSet
# drops every other capability and keeps the root filesystem read-only).
# hadolint ignore=DL3002
USER 0:0
ENTRYPOINT ["/usr/local/bin/portgroupd"]
