#!/usr/bin/env bash
# The two-node migration lab, with real packets. The switch namespace's per-VLAN
# bridge learns MACs as a physical switch does; `bridge monitor fdb` on it
# counts how often the VM's MAC moves between the nodes' trunk ports.
#
#   1. A VM on node A keeps its MAC and IP and reaches its legacy neighbour on
#      VLAN 100; a VM on VLAN 200 never reaches VLAN 100 (before, during, after).
#   2. The failure: a migration whose target pod on node B is not held (its
#      conflict probe is off, so nothing tells portgroup it is a target). While
#      the source still runs on A, B's pod chatters with the VM's MAC (an ARP
#      request, IPv6 duplicate-address detection, a ping): the switch moves the
#      MAC back and forth. The lab requires more than one move here, so it can
#      see the failure it guards against.
#   3. The fix: the same migration with the probe on. B's probe hears the VM's
#      own MAC answer from A, so B's port is held: the same chatter reaches
#      nothing. A's pod goes; B's guest sends QEMU's announcement (RARP frames at
#      QEMU's default spacing); the first RARP opens the port in the kernel.
#      Required: exactly one move. Printed: the outage the legacy neighbour sees
#      pinging every 10 ms, and the time from the first RARP to its first reply.
#   4. A fresh VM on node B (its MAC answers nowhere) is not held: its first
#      ping goes through.
#
# The pods here are the guest: B's pod interface carries the VM's MAC and sends
# what the guest and QEMU would. KubeVirt's bridge binding puts an in-pod bridge
# and the guest's tap behind that interface, handing the guest the interface's
# MAC; the hold sits on the node's side of the pod's veth and judges each frame
# by its source MAC and content, so whether the pod's kernel or a guest behind
# an in-pod bridge sent it makes no difference to what is held or opens it.
#
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
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    lab_down
}
trap cleanup EXIT
VM_MAC=00:50:56:aa:bb:01
VM_IP=10.10.100.21
VM_IP6=2001:db8:100::21
# QEMU's announce-self defaults: 5 rounds, 50 ms initial, +100 ms a round, at most 550 ms.
QEMU_ANNOUNCE_GAPS_MS="50 150 250 350"
fail() { echo "FAIL: $*"; exit 1; }
step() { echo "--- $*"; }
pass() { echo "PASS: $*"; }

# VLAN 200 must stay unreachable from the db VM.
isolated() {
    if ip netns exec pgl-vm-db-a ping -c 2 -i 0.2 -W 1 10.10.100.1 >/dev/null 2>&1; then
        fail "$1: the VLAN 200 VM reached VLAN 100"
    fi
    pass "$1: the VLAN 200 VM cannot reach VLAN 100"
}

# The switch port the VM's MAC is learned on now.
switch_port() {
    ip netns exec pgl-sw bridge fdb show br vlan100 | awk -v mac="$VM_MAC" '$1 == mac && !found {print $3; found = 1}'
}

# metric NODE NAME: one series of a node's portgroupd.
metric() {
    ip netns exec "pgl-node-$1" python3 - "$2" <<'PY'
import sys, urllib.request
body = urllib.request.urlopen("http://127.0.0.1:9750/metrics", timeout=5).read().decode()
print(next((l.split()[1] for l in body.splitlines() if l.split()[:1] == [sys.argv[1]]), "missing"))
PY
}

# What a target pod sends while the source still runs: an ARP request and a ping
# (one ping to the neighbour), IPv6 duplicate-address detection.
chatter() {
    ip netns exec "pgl-vm-$1" ping -c 2 -i 0.2 -W 1 10.10.100.1 >/dev/null 2>&1 || true
    ip -n "pgl-vm-$1" addr add "$VM_IP6/64" dev net1
    sleep 1.5 # DAD: one solicitation, then a second of waiting
}

# announce NS: QEMU's announcement from the VM's MAC at QEMU's spacing; prints
# the time the first RARP left (epoch seconds).
announce() {
    ip netns exec "pgl-vm-$1" python3 - "$VM_MAC" "$QEMU_ANNOUNCE_GAPS_MS" <<'PY'
import socket, sys, time
mac = bytes.fromhex(sys.argv[1].replace(":", ""))
gaps = [int(g) / 1000 for g in sys.argv[2].split()]
# RARP "request reverse" (op 3), Ethernet/IPv4, sender and target the VM's MAC.
rarp = mac + b"\0\0\0\0" + mac + b"\0\0\0\0"
frame = b"\xff" * 6 + mac + b"\x80\x35" + bytes([0, 1, 8, 0, 6, 4, 0, 3]) + rarp
frame += b"\0" * (60 - len(frame))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("net1", 0))
first = time.time()
s.send(frame)
for gap in gaps:
    time.sleep(gap)
    s.send(frame)
print(f"{first:.6f}")
PY
}

# moves LOG START: how often the VM's MAC changed switch port in `bridge monitor
# fdb` output LOG, starting from port START.
moves() {
    python3 - "$1" "$2" "$VM_MAC" <<'PY'
import sys
log, port, mac = sys.argv[1], sys.argv[2], sys.argv[3]
moves = 0
for line in open(log):
    words = line.split()
    if not words or words[0] == "Deleted" or words[0] != mac or "dev" not in words:
        continue
    if "master" in words and words[words.index("master") + 1] != "vlan100":
        continue
    dev = words[words.index("dev") + 1]
    if dev != port:
        moves += 1
        port = dev
print(moves, port)
PY
}

# migrate TARGET_EXTRA: one live migration of "web" from node A to node B, the
# source chattering all along and the neighbour pinging it every 10 ms. Sets
# MOVES, FINAL_PORT, OUTAGE_MS and ANNOUNCE_TO_REPLY_MS.
migrate() {
    local target_conf=$1 start fdb_log="$LAB_DIR/fdb.log" ping_log="$LAB_DIR/handover.ping"
    local monitor pinger source_talk isolation_pinger first_rarp out
    lab_vm web a
    web_conf=$(lab_netconf prod-web "$VM_MAC" "$VM_IP/24")
    lab_cni a ADD web net1 "$web_conf" >/dev/null || fail "ADD on node A"
    ip netns exec pgl-vm-web-a ping -c 3 -i 0.2 -W 1 10.10.100.1 >/dev/null || fail "VM on node A cannot reach its neighbour"
    start=$(switch_port)
    [[ $start == t-a.100 ]] || fail "the switch learned the VM on '$start', not node A's trunk"

    ip netns exec pgl-sw bridge monitor fdb >"$fdb_log" 2>&1 &
    monitor=$!
    PIDS+=("$monitor")
    # The source VM is live: it keeps talking to its neighbour.
    ip netns exec pgl-vm-web-a ping -i 0.05 -W 1 10.10.100.1 >/dev/null 2>&1 &
    source_talk=$!
    PIDS+=("$source_talk")
    ip netns exec pgl-legacy100 ping -D -i 0.01 -W 1 "$VM_IP" >"$ping_log" 2>&1 &
    pinger=$!
    PIDS+=("$pinger")
    ip netns exec pgl-vm-db-a ping -i 0.05 -W 1 10.10.100.1 >"$LAB_DIR/during.ping" 2>&1 &
    isolation_pinger=$!
    PIDS+=("$isolation_pinger")
    sleep 0.5

    # The target pod on node B, attached while node A still runs the VM.
    step "attaching the target on node B while node A runs the VM"
    lab_vm web b
    out=$(lab_cni b ADD web net1 "$target_conf" 2>&1) || fail "ADD on node B during the migration: $out"
    TARGET_LOG=$out
    chatter web-b
    HELD_WHILE_CHATTERING=$(metric b portgroup_ports_awaiting_handover)
    HELD_FRAMES=$(metric b portgroup_handover_held_frames_total)

    step "the source goes; the target's guest announces itself"
    # The source goes; the target's guest announces itself as QEMU does.
    kill "$source_talk" 2>/dev/null || true
    lab_cni a DEL web net1 "$web_conf" || fail "DEL on node A"
    first_rarp=$(announce web-b)
    sleep 1.5
    # ping prints its summary on SIGINT; bridge monitor, started in the
    # background of a script, ignores SIGINT: it gets SIGTERM.
    kill -INT "$pinger" "$isolation_pinger" 2>/dev/null || true
    kill "$monitor" 2>/dev/null || true
    wait "$pinger" "$isolation_pinger" "$monitor" 2>/dev/null || true
    grep -q "bytes from" "$LAB_DIR/during.ping" && fail "during: the VLAN 200 VM reached VLAN 100"

    read -r MOVES FINAL_PORT < <(moves "$fdb_log" "$start")
    read -r OUTAGE_MS ANNOUNCE_TO_REPLY_MS < <(python3 - "$ping_log" "$first_rarp" <<'PY'
import re, sys
times = [float(m.group(1)) for m in re.finditer(r"^\[(\d+\.\d+)\] \d+ bytes from", open(sys.argv[1]).read(), re.M)]
rarp = float(sys.argv[2])
outage = round(max(b - a for a, b in zip(times, times[1:])) * 1000) if len(times) > 1 else -1
after = [t for t in times if t >= rarp]
print(outage, round((after[0] - rarp) * 1000, 1) if after else -1)
PY
)
    grep -q "bytes from" <(tail -n 20 "$ping_log") || fail "the neighbour does not reach the VM after the handover"
    ip netns exec pgl-vm-web-b ping -c 2 -i 0.2 -W 1 10.10.100.1 >/dev/null || fail "VM on node B cannot reach its neighbour"
}

# Take the migrated VM away again (node B's pod, node A's namespace).
reset_web() {
    lab_cni b DEL web net1 "$1" >/dev/null || fail "DEL on node B"
    ip netns del pgl-vm-web-a
    ip netns del pgl-vm-web-b
    # The switch forgets the MAC as if it had aged out.
    ip netns exec pgl-sw bridge fdb del "$VM_MAC" dev t-b.100 master 2>/dev/null || true
}

lab_up_switch
lab_up_node a
lab_up_node b
lab_wait_ready a
lab_wait_ready b
pass "both nodes reconciled prod-web (VLAN 100) and db (VLAN 200)"
lab_vm db a
db_conf=$(lab_netconf db 00:50:56:aa:cc:02 10.10.100.99/24)
lab_cni a ADD db net1 "$db_conf" >/dev/null || fail "ADD db VM"
isolated before

# 2. The failure: the target is not held.
step "a migration whose target is not held"
unheld_conf=$(lab_netconf prod-web "$VM_MAC" "$VM_IP/24" '"conflictProbe":false')
migrate "$unheld_conf"
[[ $HELD_WHILE_CHATTERING == 0 ]] || fail "a target with the probe off was held ($HELD_WHILE_CHATTERING)"
[[ $MOVES -gt 1 ]] || fail "without the hold the switch moved the MAC $MOVES time(s): the lab cannot see the failure"
pass "without the hold: the switch moved $VM_MAC $MOVES times during one migration (the failure)"
echo "unheld handover: $MOVES moves, outage ${OUTAGE_MS} ms"
reset_web "$unheld_conf"

# 3. The fix: the probe hears the VM's own MAC, the target is held.
step "a migration whose target is held"
held_conf=$(lab_netconf prod-web "$VM_MAC" "$VM_IP/24" '"logLevel":"info"')
migrate "$held_conf"
grep -q "live migration" <<<"$TARGET_LOG" || fail "node B's probe did not hear the VM's own MAC: $TARGET_LOG"
[[ $HELD_WHILE_CHATTERING == 1 ]] || fail "node B reports $HELD_WHILE_CHATTERING ports awaiting the handover, not 1"
[[ $HELD_FRAMES -gt 0 ]] || fail "node B held no frames of the target's chatter"
pass "node B held the target while its pod chattered ($HELD_FRAMES frames held, portgroup_ports_awaiting_handover 1)"
[[ $MOVES -eq 1 && $FINAL_PORT == t-b.100 ]] ||
    fail "with the hold the switch moved the MAC $MOVES time(s), ending on $FINAL_PORT (want exactly 1, to t-b.100)"
pass "with the hold: the switch moved $VM_MAC exactly once, to node B, on the guest's announcement"
[[ $(metric b portgroup_ports_awaiting_handover) == 0 ]] || fail "node B still reports a port awaiting the handover"
pass "after the announcement the port is open and the neighbour reaches the VM through node B"
echo "held handover: outage ${OUTAGE_MS} ms (neighbour pinging every 10 ms), first RARP to first reply ${ANNOUNCE_TO_REPLY_MS} ms"
echo "QEMU's RARP spacing used: first at 0, then gaps of $QEMU_ANNOUNCE_GAPS_MS ms"
isolated after
reset_web "$held_conf"

# 4. A fresh VM on node B talks at once.
lab_vm fresh b
fresh_conf=$(lab_netconf prod-web 00:50:56:aa:bb:05 10.10.100.25/24)
lab_cni b ADD fresh net1 "$fresh_conf" >/dev/null || fail "ADD of a fresh VM on node B"
[[ $(metric b portgroup_ports_awaiting_handover) == 0 ]] || fail "a fresh VM was held"
ip netns exec pgl-vm-fresh-b ping -c 1 -W 2 10.10.100.1 >/dev/null || fail "a fresh VM's first ping did not go through"
pass "a fresh VM on node B is not held: its first ping goes through"
lab_cni b DEL fresh net1 "$fresh_conf"

lab_cni a DEL db net1 "$db_conf"
left=$(find "$LAB_DIR"/node-*/run/attachments -name '*.json' | wc -l)
[[ $left -eq 0 ]] || fail "$left attachment records left"
pass "all attachments removed"
