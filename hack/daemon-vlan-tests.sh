#!/usr/bin/env bash
# hack/daemon-vlan-tests.sh: run portgroupd's namespace tests (tests/daemon_*.rs)
# where 802.1Q exists, with PORTGROUP_REQUIRE_VLAN=1 so that a VLAN test fails
# instead of skipping. On a kernel with 802.1Q they run directly; otherwise the
# test binaries are built here and run inside a VM by hack/vm.sh (~30 s boot).
#
#   hack/daemon-vlan-tests.sh [TEST-FILTER]
#
# Environment: PORTGROUP_VM_SH (default: hack/vm.sh of this repo).
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

filter=${1:-}
vm=${PORTGROUP_VM_SH:-hack/vm.sh}

# Build on the host: the VM sees the host's files but cannot write ~/.cargo.
mapfile -t bins < <(
	cargo test --no-run --message-format=json --test daemon_vlan --test daemon_basic 2>/dev/null |
		python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])'
)
((${#bins[@]} == 2)) || { echo "daemon-vlan-tests: expected 2 test binaries, got: ${bins[*]}" >&2; exit 1; }
cargo build --quiet --bin portgroupd

# One test at a time: the drift timings mean more without a neighbour competing for the CPU.
cmd="set -e; export PORTGROUP_REQUIRE_VLAN=1; for b in ${bins[*]}; do echo \"== \$b\"; \$b --test-threads=1 --nocapture $filter; done"

if "$vm" --has-8021q 2>/dev/null; then
	echo "daemon-vlan-tests: this kernel has 802.1Q; running here"
	bash -c "$cmd"
else
	echo "daemon-vlan-tests: no 802.1Q here; running in a VM via $vm"
	PORTGROUP_VM_TIMEOUT=${PORTGROUP_VM_TIMEOUT:-900} "$vm" "$cmd"
fi
