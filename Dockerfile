# syntax=docker/dockerfile:1
#
# portgroup image: the node daemon (portgroupd, the entrypoint) and the CNI
# plugin binary (portgroup), which the DaemonSet's init container copies into
# the host's /opt/cni/bin. The same layout as hack/image.sh builds without a
# registry (FROM scratch, two static binaries).
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
# Static glibc binaries (crt-static; the explicit --target keeps build scripts
# and proc macros dynamic), as hack/image.sh builds them: the image needs no
# shared library. One package per build: a build of both unifies features, and
# the plugin would link the daemon's dependencies. The binaries are copied out
# of the cache-mounted target directory, which is not part of the image layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    target=$(rustc -vV | sed -n 's/^host: //p') \
 && export "CARGO_TARGET_$(echo "$target" | tr 'a-z-' 'A-Z_')_RUSTFLAGS=-C target-feature=+crt-static" \
 && cargo build --release --locked --target "$target" -p portgroupd \
 && cargo build --release --locked --target "$target" -p portgroup \
 && install -D -m 0755 "target/$target/release/portgroupd" /out/usr/local/bin/portgroupd \
 && install -D -m 0755 "target/$target/release/portgroup" /out/usr/local/bin/portgroup

# Nothing but the two static binaries: no shell, no package manager, no nft
# (port security speaks nf_tables netlink itself). The DaemonSet's init
# container runs `portgroup install`, which needs no shell either.
FROM scratch
COPY --from=build /out/ /
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
