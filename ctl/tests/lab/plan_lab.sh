#!/usr/bin/env bash
# One planned VM end to end, with real packets: an RVTools CSV export is planned
# by portgroupctl; the planned node config drives portgroupd and the planned NAD
# config drives the plugin (with only the MAC in runtimeConfig, as KubeVirt
# under Multus sends it). The VM keeps its vSphere MAC and IP and reaches its
# neighbour on VLAN 100; its reservation's port security holds (a forged
# source IP and a forged MAC are dropped); the VLAN 200 VM stays on VLAN 200.
# A firewall on a distributed trunk port group (VLANs 100 and 200) is planned as
# a trunk portgroup: it tags its own VLANs and reaches both legacy hosts.
# Needs 802.1Q (VLAN sub-interfaces): run it in the test VM:
#   cargo build -p portgroupd -p portgroup -p portgroupctl   (BIN_DIR=target/debug)
#   hack/vm.sh ctl/tests/lab/plan_lab.sh
# Exits non-zero on any failure, and when it cannot run (no root, no 802.1Q).
set -euo pipefail
cd "$(dirname "$0")/../../.."
[[ $EUID -eq 0 ]] || { echo "FAIL: needs root"; exit 1; }
if ! hack/vm.sh --has-8021q; then
    echo "NOT RUN: this kernel has no 802.1Q; run it in the test VM: hack/vm.sh ctl/tests/lab/plan_lab.sh"
    exit 1
fi
# shellcheck source=hack/lab.sh
source hack/lab.sh
trap lab_down EXIT
CTL=${CTL:-$BIN_DIR/portgroupctl}
fail() { echo "FAIL: $*"; exit 1; }
pass() { echo "PASS: $*"; }
for bin in "$CTL" "$BIN_DIR/portgroupd" "$BIN_DIR/portgroup"; do
    [[ -x $bin ]] || fail "$bin is not built"
done

VM_MAC=00:50:56:81:00:21 VM_IP=10.10.100.31 DB_MAC=00:50:56:81:00:22 FW_MAC=00:50:56:81:00:23
export_dir=$LAB_DIR/export plan=$LAB_DIR/plan
mkdir -p "$export_dir"
# An "Export all to CSV" as RVTools writes it: BOM, ';' (a German locale), quoted
# cells, a custom attribute column, upper-case MAC, link-local next to the IP.
csv() { printf '\xef\xbb\xbf'; sed 's/^/"/; s/;/";"/g; s/$/"\r/'; }
csv >"$export_dir/RVTools_tabvNetwork.csv" <<ROWS
VM;Powerstate;Template;NIC label;Network;Switch;Connected;Starts Connected;Mac Address;Type;IPv4 Address;IPv6 Address;Annotation;Owner;Datacenter;Cluster;Host;VI SDK Server
app-web;poweredOn;False;Network adapter 1;Prod-Web;vSwitch0;True;True;${VM_MAC^^};assigned;$VM_IP, fe80::250:56ff:fe81:21;;;ops;DC1;Lab;esx01;vc-lab
app-db;poweredOn;False;Network adapter 1;DB;dvSwitch;True;True;$DB_MAC;assigned;10.10.200.31;;;ops;DC1;Lab;esx01;vc-lab
fw01;poweredOn;False;Network adapter 1;FW-Trunk;dvSwitch;True;True;$FW_MAC;assigned;10.10.100.41, 10.10.200.41;;;ops;DC1;Lab;esx01;vc-lab
ROWS
csv >"$export_dir/RVTools_tabvPort.csv" <<ROWS
Host;Datacenter;Cluster;Port Group;Switch;VLAN;Promiscuous Mode;Mac Changes;Forged Transmits
esx01;DC1;Lab;Prod-Web;vSwitch0;100;False;False;False
ROWS
csv >"$export_dir/RVTools_tabdvPort.csv" <<ROWS
Port;Switch;VLAN;Allow Promiscuous;Mac Changes;Forged Transmits;Object ID
DB;dvSwitch;200;False;False;False;dvportgroup-200
FW-Trunk;dvSwitch;100,200;False;False;False;dvportgroup-300
ROWS

"$CTL" plan --rvtools "$export_dir" --out "$plan" --uplink eth1 --namespace vms
"$CTL" check-config "$plan/node-config.json"
grep -q "\"mac\": \"$VM_MAC\", \"ips\": \[\"$VM_IP\"\]" "$plan/node-config.json" ||
    fail "the plan does not reserve $VM_MAC with $VM_IP: $(cat "$plan/node-config.json")"
pass "planned: prod-web (VLAN 100) reserves $VM_MAC with $VM_IP (link-local left out)"
python3 - "$plan/node-config.json" "$FW_MAC" <<'PY' || fail "the trunk is not planned as a trunk portgroup: $(cat "$plan/node-config.json")"
import json, sys
pgs = {p["name"]: p for p in json.load(open(sys.argv[1]))["portgroups"]}
fw = pgs["fw-trunk"]
assert fw["trunk"] == "100,200", fw
assert fw["reservations"] == [{"mac": sys.argv[2]}], fw
PY
pass "planned: fw-trunk is a trunk portgroup (trunk: \"100,200\"), reserving the firewall's MAC only"

lab_up_switch
lab_up_node a
# The planned config replaces the lab's, as kubectl apply of configmap.yaml
# would: a rename, which portgroupd's watch picks up without a restart.
cp "$plan/node-config.json" "$LAB_DIR/node-a/etc/config.json.new"
mv -f "$LAB_DIR/node-a/etc/config.json.new" "$LAB_DIR/node-a/etc/config.json"
for i in $(seq 1 150); do
    grep -rqs "$VM_MAC" "$LAB_DIR/node-a/run" && break
    sleep 0.1
done
grep -rqs "$VM_MAC" "$LAB_DIR/node-a/run" || fail "portgroupd did not take the planned config: $(cat "$LAB_DIR/node-a/portgroupd.log")"
lab_wait_ready a
pass "portgroupd runs the planned config: prod-web and db ready, the reservation in its node state"

# The NAD's CNI config as planned, plus what KubeVirt passes: the MAC only.
nad_conf() {
    python3 - "$plan/nads/$1.yaml" "$2" <<'PY'
import json, sys, yaml
conf = json.loads(yaml.safe_load(open(sys.argv[1]))["spec"]["config"])
conf["runtimeConfig"] = {"mac": sys.argv[2]}
print(json.dumps(conf))
PY
}
web_conf=$(nad_conf prod-web "$VM_MAC")
lab_vm web a
lab_cni a ADD web net1 "$web_conf" >/dev/null || fail "ADD with the planned NAD"
got=$(ip -n pgl-vm-web-a -br link show net1 | awk '{print $3}')
[[ $got == "$VM_MAC" ]] || fail "the VM's interface has MAC $got, not $VM_MAC"
# The guest brings its own static address, as a migrated disk does.
ip -n pgl-vm-web-a addr add "$VM_IP/24" dev net1
ip netns exec pgl-vm-web-a ping -c 3 -i 0.2 -W 1 10.10.100.1 >/dev/null || fail "the VM cannot reach 10.10.100.1 on VLAN 100"
learned=$(ip -n pgl-legacy100 neigh show "$VM_IP" | awk '{print $5}')
[[ $learned == "$VM_MAC" ]] || fail "the neighbour learned $learned, not $VM_MAC"
pass "the VM keeps MAC $VM_MAC and IP $VM_IP and reaches its VLAN 100 neighbour"

# Port security from the reservation: a forged source IP is dropped...
ip -n pgl-vm-web-a addr flush dev net1
ip -n pgl-vm-web-a addr add 10.10.100.77/24 dev net1
if ip netns exec pgl-vm-web-a ping -c 3 -i 0.2 -W 1 10.10.100.1 >/dev/null 2>&1; then
    fail "a forged source IP (10.10.100.77) got through: the reservation's port security does not hold"
fi
pass "a forged source IP is dropped (the reservation allows only $VM_IP)"
# ... and so is a forged MAC with the right IP.
ip -n pgl-vm-web-a addr flush dev net1
ip -n pgl-vm-web-a link set net1 address 00:50:56:81:00:99
ip -n pgl-vm-web-a addr add "$VM_IP/24" dev net1
ip -n pgl-legacy100 neigh flush all
if ip netns exec pgl-vm-web-a ping -c 3 -i 0.2 -W 1 10.10.100.1 >/dev/null 2>&1; then
    fail "a forged MAC got through (spoofCheck)"
fi
pass "a forged MAC is dropped"
ip -n pgl-vm-web-a link set net1 address "$VM_MAC"
ip netns exec pgl-vm-web-a ping -c 3 -i 0.2 -W 1 10.10.100.1 >/dev/null || fail "back on its own MAC and IP, the VM cannot reach its neighbour"
pass "back on its own MAC and IP, the VM reaches its neighbour again"

# The second planned portgroup: VLAN 200, and nothing of VLAN 100.
lab_vm db a
lab_cni a ADD db net1 "$(nad_conf db "$DB_MAC")" >/dev/null || fail "ADD db with the planned NAD"
ip -n pgl-vm-db-a addr add 10.10.200.31/24 dev net1
ip netns exec pgl-vm-db-a ping -c 3 -i 0.2 -W 1 10.10.200.1 >/dev/null || fail "the db VM cannot reach VLAN 200"
pass "the db VM reaches VLAN 200 through the planned db portgroup"

# The planned trunk: the firewall tags its own VLANs on the planned NAD's port.
for i in $(seq 1 100); do
    python3 -c 'import json, sys; s = json.load(open(sys.argv[1])); sys.exit(0 if any(p["name"] == "fw-trunk" and p["ready"] for p in s["portgroups"]) else 1)' \
        "$LAB_DIR/node-a/run/state.json" && break
    sleep 0.1
done
lab_vm fw a
lab_cni a ADD fw net1 "$(nad_conf fw-trunk "$FW_MAC")" >/dev/null || fail "ADD fw with the planned trunk NAD"
for vid in 100 200; do
    ip -n pgl-vm-fw-a link add link net1 name "net1.$vid" type vlan id "$vid"
    ip -n pgl-vm-fw-a addr add "10.10.$vid.41/24" dev "net1.$vid"
    ip -n pgl-vm-fw-a link set "net1.$vid" up
done
ip netns exec pgl-vm-fw-a ping -c 3 -i 0.2 -W 1 10.10.100.1 >/dev/null || fail "the firewall cannot reach VLAN 100 through the planned trunk"
ip netns exec pgl-vm-fw-a ping -c 3 -i 0.2 -W 1 10.10.200.1 >/dev/null || fail "the firewall cannot reach VLAN 200 through the planned trunk"
pass "the firewall on the planned trunk portgroup reaches VLAN 100 and VLAN 200 with its own tags"
lab_cni a DEL web net1 "$web_conf" || fail "DEL"
pass "planned VM end to end"
