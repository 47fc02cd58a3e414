#!/usr/bin/env bash
# Runs every test: formatting, lints, unit tests, integration tests in private
# network namespaces, the VLAN tests (inside a VM when this kernel has no 802.1Q),
# the offline manifest validation, the podman end-to-end test and the DaemonSet's
# pod run under podman kube play (hack/daemonset-e2e.sh).
# Installs what it needs (apt-get, pip) when it is missing; safe to rerun.
#
#   hack/test.sh            everything
#   hack/test.sh --quick    fmt, clippy and the tests that need no VM
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0
[[ "${1:-}" == "--quick" ]] && quick=1

step() { printf '\n==> %s\n' "$*"; }

[[ $EUID -eq 0 ]] || { echo "hack/test.sh needs root (network namespaces, nftables)"; exit 1; }

step "installing what is missing"
hack/install-deps.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "unit and namespace integration tests (VLAN tests skip here without 802.1Q)"
cargo nextest run --workspace --no-fail-fast

step "manifests, validated offline"
hack/validate-manifests.sh

step "the DaemonSet's pod under podman kube play, from the image hack/image.sh builds"
hack/daemonset-e2e.sh

if [[ $quick -eq 1 ]]; then
    echo "quick run: the VLAN tests (VM) skipped"
    exit 0
fi

step "VLAN tests: daemon, migration lab, demo"
cargo build --quiet --bins
# The daemon's VLAN tests are one test binary; run it as is (in the VM, a nextest
# archive would first copy every test binary over 9p).
daemon_vlan=$(cargo test --quiet --no-run --message-format=json --test daemon_vlan 2>/dev/null |
    python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "daemon_vlan" and m.get("executable"):
        print(m["executable"])')
[[ -x $daemon_vlan ]] || { echo "could not find the daemon_vlan test binary"; exit 1; }
vlan_suite="$daemon_vlan --test-threads=2 && hack/migration-lab.sh && hack/demo.sh --inside"
if hack/vm.sh --has-8021q; then
    PORTGROUP_REQUIRE_VLAN=1 bash -c "set -e; $vlan_suite"
else
    echo "this kernel has no 802.1Q: running them in a VM (one boot, a few minutes under TCG)"
    PORTGROUP_REQUIRE_VLAN=1 PORTGROUP_VM_TIMEOUT=${PORTGROUP_VM_TIMEOUT:-1500} \
        hack/vm.sh "set -e; ( $vlan_suite ) 2>&1"
fi
echo
echo "hack/test.sh: all passed"
