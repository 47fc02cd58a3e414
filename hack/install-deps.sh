#!/usr/bin/env bash
# Installs what the tests, the demo and the benchmarks need, only what is missing.
set -euo pipefail
need_apt=()
have() { command -v "$1" >/dev/null 2>&1; }
[[ -x /usr/lib/cni/bridge ]] || need_apt+=(containernetworking-plugins)
have nft || need_apt+=(nftables)
have ip || need_apt+=(iproute2)
have podman || need_apt+=(podman)
have runc || need_apt+=(runc)
have busybox || need_apt+=(busybox-static)
have qemu-system-x86_64 || need_apt+=(qemu-system-x86)
ls /boot/vmlinuz-* >/dev/null 2>&1 || need_apt+=(linux-image-amd64)
have tcpdump || need_apt+=(tcpdump)
if [[ ${#need_apt[@]} -gt 0 ]]; then
    echo "apt-get install ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
need_pip=()
have vng || need_pip+=(virtme-ng)
python3 -c 'import kubernetes_validate' 2>/dev/null || need_pip+=(kubernetes-validate)
python3 -c 'import jsonschema' 2>/dev/null || need_pip+=(jsonschema)
python3 -c 'import yaml' 2>/dev/null || need_pip+=(pyyaml)
if [[ ${#need_pip[@]} -gt 0 ]]; then
    echo "pip install ${need_pip[*]}"
    pip install -q "${need_pip[@]}"
    hash -r
fi
if ! cargo nextest --version >/dev/null 2>&1; then
    echo "cargo install cargo-nextest"
    cargo install --locked -q cargo-nextest
fi
