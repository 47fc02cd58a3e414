#!/usr/bin/env bash
# The main job, in a throwaway lab: a VM migrated from vSphere lands on its old
# VLAN with its old MAC and IP and reaches its old neighbour, and nothing else.
# Builds, installs what it needs, and runs inside a VM when this kernel has no
# 802.1Q. Leaves nothing behind. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" != --inside ]]; then
    [[ $EUID -eq 0 ]] || { echo "hack/demo.sh needs root (network namespaces)"; exit 1; }
    echo "== building portgroup and portgroupd"
    hack/install-deps.sh
    cargo build --quiet --bins
    if hack/vm.sh --has-8021q; then
        exec "$0" --inside
    fi
    echo "== this kernel has no 802.1Q VLANs: running the lab in a small VM (about 30 s to boot)"
    exec hack/vm.sh "hack/demo.sh --inside"
fi

# shellcheck source=hack/lab.sh
source hack/lab.sh
trap lab_down EXIT
VM_MAC=00:50:56:aa:bb:01
VM_IP=10.10.100.21

echo
echo "== the network outside the cluster"
lab_up_switch
lab_say "a switch with VLAN 100 and VLAN 200"
lab_say "legacy host on VLAN 100: 10.10.100.1 ($LEGACY_MAC), the migrated VM's old neighbour"
lab_say "legacy host on VLAN 200: 10.10.200.1 (and 10.10.100.200, which would answer if VLANs leaked)"

echo
echo "== a Kubernetes node: uplink eth1 trunks VLANs 100 and 200; portgroupd reconciles"
lab_up_node worker-1
lab_wait_ready worker-1
python3 - "$LAB_DIR/node-worker-1/run/state.json" <<'PY'
import json, sys
for p in json.load(open(sys.argv[1]))["portgroups"]:
    print(f"  portgroup {p['name']:9} VLAN {p['vlan']}: bridge {p['bridge']} on {p['vlanInterface']}, ready={p['ready']}")
PY

echo
echo "== KubeVirt starts the migrated VM's pod; Multus runs the portgroup plugin (portgroup prod-web)"
lab_vm web worker-1
result=$(lab_cni worker-1 ADD web net1 "$(lab_netconf prod-web "$VM_MAC" "$VM_IP/24")")
python3 - "$result" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
host, pod = r["interfaces"][0], r["interfaces"][1]
print(f"  pod interface {pod['name']}: MAC {pod['mac']}, IP {r['ips'][0]['address']} (as on vSphere)")
print(f"  host side {host['name']} on the prod-web bridge, port security on")
PY

echo
echo "== the VM talks to its old neighbour on VLAN 100"
ip netns exec pgl-vm-web-worker-1 ping -c 3 -i 0.2 -W 1 10.10.100.1 | sed -n 's/^/  /;/packets/p'
learned=$(ip -n pgl-legacy100 neigh show "$VM_IP" | awk '{print $5}')
lab_say "the neighbour knows $VM_IP at $learned: the VM's original MAC, so its firewall rules and ARP entries still hold"
[[ $learned == "$VM_MAC" ]] || { echo "demo failed: neighbour learned $learned"; exit 1; }

echo
echo "== and nothing else: VLAN 200 stays out of reach"
if ip netns exec pgl-vm-web-worker-1 ping -c 2 -i 0.2 -W 1 10.10.100.200 >/dev/null 2>&1; then
    echo "demo failed: the VM reached a VLAN 200 host"; exit 1
fi
lab_say "10.10.100.200 (a VLAN 200 host) does not answer: the VM is on VLAN 100 only"

echo
echo "== the VM is deleted; the plugin removes its port"
lab_cni worker-1 DEL web net1 "$(lab_netconf prod-web "$VM_MAC" "$VM_IP/24")"
left=$(ls "$LAB_DIR/node-worker-1/run/attachments" | wc -l)
lab_say "attachment records left: $left"

echo
echo "== cleaning up the lab"
