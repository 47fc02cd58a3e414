#!/usr/bin/env bash
# The two-node migration lab, with real packets:
#   1. a migrated VM attached on node A keeps its MAC and IP and reaches its
#      legacy neighbour on VLAN 100;
#   2. live migration: the same VM attached on node B with linkDown while A still
#      has it (the conflict probe hears the VM's own MAC and lets it through), then
#      the handover (A's attachment deleted, B's link up, a gratuitous ARP): the
#      neighbour reaches the VM again, through node B; the outage is measured;
#   3. a VM on VLAN 200 with an address in VLAN 100's subnet never reaches VLAN 100,
#      before, during and after.
# Exits non-zero on any failure. Needs 802.1Q: hack/test.sh runs it in the VM.
# Usage: hack/migration-lab.sh   (BIN_DIR=target/debug by default; build first)
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $EUID -eq 0 ]] || { echo "needs root"; exit 1; }
if ! hack/vm.sh --has-8021q; then
    echo "hack/migration-lab.sh: this kernel has no 802.1Q; hack/test.sh runs this lab in the test VM" >&2
    exit 1
fi
# shellcheck source=hack/lab.sh
source hack/lab.sh
trap lab_down EXIT
VM_MAC=00:50:56:aa:bb:01
VM_IP=10.10.100.21
fail() { echo "FAIL: $*"; exit 1; }
pass() { echo "PASS: $*"; }

# VLAN 200 must stay unreachable from the db VM: "before", "during", "after".
isolated() {
    if ip netns exec pgl-vm-db-a ping -c 2 -i 0.2 -W 1 10.10.100.1 >/dev/null 2>&1; then
        fail "$1: the VLAN 200 VM reached VLAN 100"
    fi
    pass "$1: the VLAN 200 VM cannot reach VLAN 100"
}

lab_up_switch
lab_up_node a
lab_up_node b
lab_wait_ready a
lab_wait_ready b
pass "both nodes reconciled prod-web (VLAN 100) and db (VLAN 200)"

lab_vm web a
web_conf=$(lab_netconf prod-web "$VM_MAC" "$VM_IP/24")
lab_cni a ADD web net1 "$web_conf" >/dev/null || fail "ADD on node A"
lab_vm db a
lab_cni a ADD db net1 "$(lab_netconf db 00:50:56:aa:cc:02 10.10.100.99/24)" >/dev/null || fail "ADD db VM"

ip netns exec pgl-vm-web-a ping -c 3 -i 0.2 -W 1 10.10.100.1 >/dev/null || fail "VM on node A cannot reach its neighbour"
learned=$(ip -n pgl-legacy100 neigh show "$VM_IP" | awk '{print $5}')
[[ $learned == "$VM_MAC" ]] || fail "neighbour learned $learned, not $VM_MAC"
pass "VM on node A reaches 10.10.100.1 and the neighbour learned its original MAC $VM_MAC"
isolated before

# The target pod on node B, down, while node A still runs the VM.
lab_vm web b
target_conf=$(lab_netconf prod-web "$VM_MAC" "$VM_IP/24" '"linkDown":true,"logLevel":"info"')
out=$(lab_cni b ADD web net1 "$target_conf" 2>&1) || fail "ADD on node B during the migration: $out"
grep -q "live migration" <<<"$out" || fail "node B's probe did not hear the VM's own MAC: $out"
pass "node B attached the target with linkDown; its probe heard the VM's own MAC and went on"

# The neighbour pings the VM every 10 ms through the handover.
ping_log="$LAB_DIR/handover.ping"
ip netns exec pgl-legacy100 ping -D -i 0.01 -W 1 "$VM_IP" >"$ping_log" 2>&1 &
pinger=$!
ip netns exec pgl-vm-db-a ping -i 0.05 -W 1 10.10.100.1 >"$LAB_DIR/during.ping" 2>&1 &
isolation_pinger=$!
sleep 1
lab_cni a DEL web net1 "$web_conf" || fail "DEL on node A"
ip -n pgl-vm-web-b link set net1 up
ip netns exec pgl-vm-web-b busybox arping -U -c 2 -w 1 -I net1 "$VM_IP" >/dev/null 2>&1 || true
sleep 2
kill -INT "$pinger" "$isolation_pinger"
wait "$pinger" "$isolation_pinger" 2>/dev/null || true
grep -q "bytes from" "$LAB_DIR/during.ping" && fail "during: the VLAN 200 VM reached VLAN 100"
pass "during: the VLAN 200 VM cannot reach VLAN 100"

outage_ms=$(python3 - "$ping_log" <<'PY'
import re, sys
times = [float(m.group(1)) for m in re.finditer(r"^\[(\d+\.\d+)\] \d+ bytes from", open(sys.argv[1]).read(), re.M)]
if len(times) < 2:
    print(-1)
else:
    print(round(max(b - a for a, b in zip(times, times[1:])) * 1000))
PY
)
tail_ok=$(tail -n 20 "$ping_log" | grep -c "bytes from" || true)
[[ $tail_ok -gt 0 ]] || fail "the neighbour does not reach the VM after the handover"
ip netns exec pgl-vm-web-b ping -c 2 -i 0.2 -W 1 10.10.100.1 >/dev/null || fail "VM on node B cannot reach its neighbour"
pass "after the handover the neighbour reaches the VM through node B (outage ${outage_ms} ms, pinging every 10 ms)"
echo "handover outage: ${outage_ms} ms"
isolated after

lab_cni b DEL web net1 "$target_conf"
lab_cni a DEL db net1 "$(lab_netconf db 00:50:56:aa:cc:02 10.10.100.99/24)"
left=$(find "$LAB_DIR"/node-*/run/attachments -name '*.json' | wc -l)
[[ $left -eq 0 ]] || fail "$left attachment records left"
pass "all attachments removed"
