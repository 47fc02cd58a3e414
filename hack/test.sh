#!/usr/bin/env bash
# Runs every test: formatting, lints, unit tests, integration tests in private
# network namespaces, the VLAN tests (inside a VM when this kernel has no 802.1Q),
# the offline manifest validation, the podman end-to-end test and the DaemonSet's
# pod run under podman kube play (hack/daemonset-e2e.sh).
# Installs what it needs (apt-get, pip) when it is missing; safe to rerun.
#
#   hack/test.sh            everything
#   hack/test.sh --quick    fmt, clippy and the tests that need no VM (it says how
#                           many tests that need 802.1Q it left out)
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

# Tests that need 802.1Q are #[ignore]d and live in daemon_vlan::; the podman
# test is #[ignore]d too (it needs the packages installed above). Here every test
# runs, ignored ones included, except the 802.1Q ones: the VLAN step runs those.
vlan_filter='test(/^daemon_vlan::/)'
step "unit, namespace and podman tests (not the ones that need 802.1Q)"
cargo nextest run --workspace --no-fail-fast --run-ignored all -E "not $vlan_filter"
vlan_tests=$(cargo nextest list --workspace --run-ignored all -E "$vlan_filter" \
    --message-format oneline 2>/dev/null | grep -c ' daemon_vlan::' || true)

step "manifests, validated offline"
hack/validate-manifests.sh

step "the DaemonSet's pod under podman kube play, from the image hack/image.sh builds"
hack/daemonset-e2e.sh

if [[ $quick -eq 1 ]]; then
    echo "quick run: left out the VLAN step: $vlan_tests tests that need 802.1Q (daemon_vlan::*),"
    echo "the migration lab and the demo"
    exit 0
fi

step "VLAN tests: $vlan_tests daemon tests (daemon_vlan::*), migration lab, demo"
cargo build --quiet --bins
# The daemon's VLAN tests are in portgroupd's integration-test binary; run it as
# is, filtered to them (in the VM, a nextest archive would first copy every test
# binary over 9p). They are #[ignore]d, hence --ignored; without 802.1Q they fail.
integration=$(cargo test --quiet -p portgroupd --no-run --message-format=json --test integration 2>/dev/null |
    python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "integration" and m.get("executable"):
        print(m["executable"])')
[[ -x $integration ]] || { echo "could not find portgroupd's integration test binary"; exit 1; }
vlan_suite="$integration --ignored --test-threads=2 daemon_vlan:: && hack/migration-lab.sh && ctl/tests/lab/plan_lab.sh && hack/demo.sh --inside"
if hack/vm.sh --has-8021q; then
    bash -c "set -e; $vlan_suite"
else
    echo "this kernel has no 802.1Q: running them in a VM (one boot, a few minutes under TCG)"
    PORTGROUP_VM_TIMEOUT=${PORTGROUP_VM_TIMEOUT:-1500} \
        hack/vm.sh "set -e; ( $vlan_suite ) 2>&1"
fi
echo
echo "hack/test.sh: all passed"
