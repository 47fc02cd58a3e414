#!/usr/bin/env bash
# Installs what the tests, the demo and the VLAN test VM need, and only what is
# missing: with everything present it changes nothing and asks no registry.
# Every other script that needs packages calls this one.
#
#   hack/install-deps.sh           tests, demo, VM (Debian packages, PyPI, cargo-nextest)
#   hack/install-deps.sh --bench   the above plus the benchmarks' profilers
#
# Package rules, so that the machine's own packages stay consistent:
# - apt never removes a package (--no-remove) and is never asked to downgrade.
# - qemu-system-x86 must match an installed qemu-utils: a machine that came
#   with qemu-utils from <release>-backports gets qemu-system-x86 from there
#   too, with backports enabled for that one install only (a temporary
#   sources.list.d and package-list directory, deleted afterwards).
set -euo pipefail

bench=0
case "${1:-}" in
"") ;;
--bench) bench=1 ;;
*) echo "usage: hack/install-deps.sh [--bench]" >&2; exit 2 ;;
esac

say() { echo "install-deps: $*"; }
die() { echo "install-deps: $*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'; }

# -------------------------------------------------------------- what is missing
# Each entry: package, then why it is needed (printed with the install line).
apt_pkgs=()
apt_why=()
want() { apt_pkgs+=("$1"); apt_why+=("$1 ($2);"); }

[[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/static && -x /usr/lib/cni/host-local ]] ||
    want containernetworking-plugins "reference CNI plugins the tests compare with and delegate to"
have nft || want nftables "inspecting port-security rules in tests"
have ip || want iproute2 "network namespaces and links"
have ping || want iputils-ping "pings through port security in the namespace tests, the labs and the podman test"
have jq || want jq "podman end-to-end test"
have podman || want podman "podman end-to-end test, a real libcni runtime"
have runc || want runc "podman's OCI runtime"
have conmon || want conmon "podman's container monitor"
have busybox || want busybox-static "the podman test's container and the VM's tools"
have tcpdump || want tcpdump "packet captures in the labs"
have readelf || want binutils "hack/image.sh checks the image's binaries are static"
have qemu-system-x86_64 || want qemu-system-x86 "the VLAN test VM, for kernels without 802.1Q"
compgen -G '/boot/vmlinuz-*' >/dev/null || want linux-image-amd64 "the VLAN test VM's kernel"
have strace || want strace "counting the plugin's syscalls and netlink requests (the work-budget test)"
have chromium || want chromium "portgroupctl's report.html rendered in a real browser (headless)"
if ((bench)); then
    have valgrind || want valgrind "benchmarks: instruction counts (callgrind)"
fi

pip_pkgs=()
have vng || pip_pkgs+=(virtme-ng)
# The manifest validation's pins (hack/validate-manifests.sh checks they import).
python3 -c 'import kubernetes_validate' 2>/dev/null || pip_pkgs+=('kubernetes-validate==1.37.0')
python3 -c 'import jsonschema, referencing' 2>/dev/null || pip_pkgs+=('jsonschema>=4.18,<5')
python3 -c 'import yaml' 2>/dev/null || pip_pkgs+=(pyyaml)

# ------------------------------------------------------------------------- apt
export DEBIAN_FRONTEND=noninteractive
apt_log=$(mktemp)
bpo_dir=""
cleanup() { rm -f "$apt_log"; [[ -z $bpo_dir ]] || rm -rf "$bpo_dir"; }
trap cleanup EXIT

# Runs apt-get quietly; on failure prints its output and the command to rerun.
apt_run() {
    local what=$1
    shift
    if ! apt-get "$@" >"$apt_log" 2>&1; then
        tail -n 25 "$apt_log" >&2
        die "could not install $what. Run it by hand to see why: apt-get $*"
    fi
}

# The version of qemu-system-x86 apt would pick from the machine's own sources.
candidate() { apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}'; }

# qemu-system-x86 from <release>-backports when the installed qemu-utils is newer
# than what the release itself offers (apt would otherwise refuse the pair, or
# resolve it by removing qemu-utils).
install_qemu_from_backports() {
    local utils=$1 codename
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    [[ -n $codename ]] || die "qemu-utils $utils is newer than this release's qemu-system-x86, and /etc/os-release names no release to take backports from"
    bpo_dir=$(mktemp -d)
    mkdir -p "$bpo_dir/lists/partial" "$bpo_dir/sources.list.d"
    # The machine's own sources (sources.list and every sources.list.d entry)
    # stay; backports is added beside them for these calls only, with package
    # lists kept in the temporary directory.
    local part
    for part in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [[ -e $part ]] && ln -s "$part" "$bpo_dir/sources.list.d/"
    done
    echo "deb http://deb.debian.org/debian $codename-backports main" >"$bpo_dir/sources.list.d/portgroup-backports.list"
    local o=(-o "Dir::Etc::sourceparts=$bpo_dir/sources.list.d" -o "Dir::State::lists=$bpo_dir/lists")
    say "apt-get install qemu-system-x86=$utils from $codename-backports (it must match the installed qemu-utils $utils)"
    apt_run "the package lists of $codename-backports" "${o[@]}" update
    if apt-cache "${o[@]}" madison qemu-system-x86 | awk '{print $3}' | grep -qxF "$utils"; then
        # -t: its dependencies (qemu-system-common, -data, ...) must come from there too.
        apt_run "qemu-system-x86=$utils" "${o[@]}" install -y --no-remove -t "$codename-backports" "qemu-system-x86=$utils"
    else
        # Backports has moved past the installed qemu-utils: upgrade both together.
        apt_run "qemu-system-x86 and qemu-utils from $codename-backports" "${o[@]}" \
            install -y --no-remove -t "$codename-backports" qemu-system-x86 qemu-utils
    fi
}

if ((${#apt_pkgs[@]})); then
    say "apt-get install ${apt_why[*]}"
    apt_run "the package lists (apt-get update)" update
    qemu_bpo=""
    main=()
    for p in "${apt_pkgs[@]}"; do
        if [[ $p == qemu-system-x86 ]] && installed qemu-utils; then
            utils=$(dpkg-query -W -f='${Version}' qemu-utils)
            offered=$(candidate qemu-system-x86)
            if [[ -n $offered ]] && dpkg --compare-versions "$utils" gt "$offered"; then
                qemu_bpo=$utils
                continue
            fi
        fi
        main+=("$p")
    done
    ((${#main[@]} == 0)) || apt_run "${main[*]}" install -y --no-remove "${main[@]}"
    [[ -z $qemu_bpo ]] || install_qemu_from_backports "$qemu_bpo"
fi

# ------------------------------------------------------------------------- pip
if ((${#pip_pkgs[@]})); then
    say "pip install ${pip_pkgs[*]} (the VLAN test VM's runner; the offline manifest validation)"
    pip=(python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore)
    if ! "${pip[@]}" "${pip_pkgs[@]}" >"$apt_log" 2>&1 &&
        ! "${pip[@]}" --break-system-packages "${pip_pkgs[@]}" >>"$apt_log" 2>&1; then
        tail -n 25 "$apt_log" >&2
        die "could not install ${pip_pkgs[*]}. Run it by hand to see why: python3 -m pip install ${pip_pkgs[*]}"
    fi
    hash -r
    # pyenv puts console scripts behind shims that exist only after a rehash.
    if have pyenv; then pyenv rehash; fi
    have vng || die "virtme-ng is installed but vng is not on PATH ($(python3 -m pip show -f virtme-ng 2>/dev/null | awk '/^Location:/ {print $2}'))"
fi

# ----------------------------------------------------------------------- cargo
if ! cargo nextest --version >/dev/null 2>&1; then
    say "cargo install cargo-nextest (the test runner)"
    cargo install --locked -q cargo-nextest || die "could not install cargo-nextest. Run it by hand to see why: cargo install --locked cargo-nextest"
fi
