#!/usr/bin/env bash
# Builds the portgroup container image from the binaries cargo builds here, with
# nothing pulled from any registry: `FROM scratch` holding only
#
#   /usr/local/bin/portgroupd   the node daemon (the entrypoint)
#   /usr/local/bin/portgroup    the CNI plugin (`portgroup install <dir>` copies it to the host)
#
# Both are linked statically (glibc, `-C target-feature=+crt-static`): no shared
# library, no shell, no package manager, no nft (port security speaks nf_tables
# netlink itself). The Dockerfile builds the same layout for people with a registry.
#
#   hack/image.sh                       build ghcr.io/portgroup/portgroup:<Cargo.toml version>
#   hack/image.sh --tag NAME:TAG        another name
#   hack/image.sh --list                also print the image's files and sizes
#   hack/image.sh --build-only          only build the static binaries
#   hack/image.sh --no-build            use the binaries built before
#   PODMAN="podman --root D --runroot R" hack/image.sh    another podman storage
#   PORTGROUP_BIN_DIR=DIR hack/image.sh --no-build        binaries from DIR
#
# Prints the image ID on the last line.
set -euo pipefail
cd "$(dirname "$0")/.."

list=0
build=1
image=1
tag=""
while (($#)); do
    case $1 in
    --tag) tag=${2:?--tag needs NAME:TAG}; shift 2 ;;
    --list) list=1; shift ;;
    --build-only) image=0; shift ;;
    --no-build) build=0; shift ;;
    *) echo "usage: hack/image.sh [--tag NAME:TAG] [--list] [--build-only | --no-build]" >&2; exit 2 ;;
    esac
done

say() { echo "image.sh: $*" >&2; }
die() { echo "image.sh: $*" >&2; exit 1; }
read -r -a podman <<<"${PODMAN:-podman}"

# The one version: the workspace's, in Cargo.toml (a test checks the manifests agree).
version=$(python3 - <<'EOF'
import tomllib
with open("Cargo.toml", "rb") as f:
    print(tomllib.load(f)["workspace"]["package"]["version"])
EOF
)
tag=${tag:-ghcr.io/portgroup/portgroup:$version}

# An explicit --target keeps build scripts and proc macros dynamic (they run on
# this host); only the two binaries are static.
target=$(rustc -vV | sed -n 's/^host: //p')
[[ $target == *-linux-gnu ]] || die "expected a *-linux-gnu host, got $target"
target_env=CARGO_TARGET_$(tr 'a-z-' 'A-Z_' <<<"$target")_RUSTFLAGS
out=${PORTGROUP_BIN_DIR:-target/$target/release}
if ((build)); then
    say "building portgroupd and portgroup (release, static, $target)"
    # One package per build: building both at once unifies features, and the
    # plugin would link the daemon's dependencies.
    for package in portgroupd portgroup; do
        env "$target_env=-C target-feature=+crt-static" \
            cargo build --quiet --release --locked --target "$target" -p "$package"
    done
fi

ctx=$(mktemp -d /tmp/pg-image.XXXXXX)
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/rootfs/usr/local/bin"
for bin in portgroupd portgroup; do
    # Static means no PT_INTERP and no DT_NEEDED: nothing to find at run time.
    if readelf -lW "$out/$bin" | grep -q 'Requesting program interpreter' ||
        readelf -dW "$out/$bin" | grep -q '(NEEDED)'; then
        die "$out/$bin is not static: $(readelf -dW "$out/$bin" | grep NEEDED | tr -s ' ' | tr '\n' ';')"
    fi
    install -m 0755 "$out/$bin" "$ctx/rootfs/usr/local/bin/$bin"
    say "$bin: $(stat -c %s "$out/$bin") bytes, static"
done
((image)) || { echo "$PWD/$out"; exit 0; }

cat >"$ctx/Containerfile" <<EOF
FROM scratch
COPY rootfs/ /
LABEL org.opencontainers.image.title="portgroup" \\
      org.opencontainers.image.description="vSphere-style port groups for KubeVirt: portgroupd node daemon and portgroup CNI plugin" \\
      org.opencontainers.image.licenses="Apache-2.0" \\
      org.opencontainers.image.version="$version"
USER 0:0
ENTRYPOINT ["/usr/local/bin/portgroupd"]
EOF
say "podman build $tag"
"${podman[@]}" build --quiet --pull=never --layers=false -t "$tag" -f "$ctx/Containerfile" "$ctx" >/dev/null
id=$("${podman[@]}" image inspect --format '{{.Id}}' "$tag")
size=$("${podman[@]}" image inspect --format '{{.Size}}' "$tag")
say "$tag: $size bytes ($((size / 1024)) KiB), image $id"
if ((list)); then
    # The image's own files, as a container from it sees them.
    cid=$("${podman[@]}" create --quiet "$tag")
    "${podman[@]}" export --output "$ctx/export.tar" "$cid"
    tar -tvf "$ctx/export.tar" | awk '{print $1, $3, $6}' >&2
    "${podman[@]}" rm --force "$cid" >/dev/null
fi
echo "$id"
