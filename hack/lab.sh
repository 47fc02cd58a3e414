# shellcheck shell=bash
# The lab that hack/demo.sh and hack/migration-lab.sh build, as bash functions.
# Source it; never run it. Everything lives in network namespaces named pgl-*,
# and lab_down removes them all, so the host's own network is never touched.
#
#   switch   pgl-sw: per node a trunk port, per VLAN a bridge of the trunks'
#            VLAN sub-interfaces plus an access port for that VLAN's legacy host
#   legacy   pgl-legacy100 (10.10.100.1/24) and pgl-legacy200 (10.10.200.1/24 and
#            10.10.100.200/24: it would answer VLAN 100's subnet if VLANs leaked)
#   nodes    pgl-node-<n>: uplink eth1 (a trunk to the switch), portgroupd, and the
#            plugin run there as the node's runtime would
#   VMs      pgl-vm-<name>: a virt-launcher pod's network namespace

LAB_DIR=${LAB_DIR:-/tmp/pgl}
BIN_DIR=${BIN_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/debug}
LEGACY_MAC=00:50:56:10:00:01
LAB_NODES=()

lab_say() { printf '  %s\n' "$*"; }

lab_up_switch() {
    mkdir -p "$LAB_DIR"
    ip netns add pgl-sw
    ip -n pgl-sw link set lo up
    local vid
    for vid in 100 200; do
        ip -n pgl-sw link add "vlan$vid" type bridge
        ip -n pgl-sw link set "vlan$vid" up
        ip netns add "pgl-legacy$vid"
        ip -n "pgl-legacy$vid" link set lo up
        ip -n pgl-sw link add "acc$vid" type veth peer name eth0 netns "pgl-legacy$vid"
        ip -n pgl-sw link set "acc$vid" master "vlan$vid" up
        ip -n "pgl-legacy$vid" link set eth0 up
    done
    ip -n pgl-legacy100 link set eth0 address "$LEGACY_MAC"
    ip -n pgl-legacy100 addr add 10.10.100.1/24 dev eth0
    ip -n pgl-legacy200 addr add 10.10.200.1/24 dev eth0
    ip -n pgl-legacy200 addr add 10.10.100.200/24 dev eth0
}

# lab_up_node NAME: a node whose uplink eth1 trunks VLANs 100 and 200 to the switch,
# with portgroupd running on it.
lab_up_node() {
    local node=$1 ns="pgl-node-$1" dir="$LAB_DIR/node-$1" vid
    mkdir -p "$dir/run" "$dir/etc"
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip -n pgl-sw link add "t-$node" type veth peer name eth1 netns "$ns"
    ip -n pgl-sw link set "t-$node" up
    for vid in 100 200; do
        ip -n pgl-sw link add link "t-$node" name "t-$node.$vid" type vlan id "$vid"
        ip -n pgl-sw link set "t-$node.$vid" master "vlan$vid" up
    done
    cat >"$dir/etc/config.json" <<JSON
{
  "uplink": "eth1",
  "portgroups": [
    { "name": "prod-web", "vlan": 100,
      "reservations": [ { "mac": "00:50:56:aa:bb:01", "ips": ["10.10.100.21/24"] } ] },
    { "name": "db", "vlan": 200 }
  ]
}
JSON
    ip netns exec "$ns" "$BIN_DIR/portgroupd" --config "$dir/etc/config.json" --node-name "$node" \
        --run-dir "$dir/run" --listen 127.0.0.1:9750 --log-level "${LAB_LOG:-warn}" \
        >"$dir/portgroupd.log" 2>&1 &
    echo $! >"$dir/portgroupd.pid"
    LAB_NODES+=("$node")
}

# lab_wait_ready NODE: until the node state says both portgroups are ready.
lab_wait_ready() {
    local state="$LAB_DIR/node-$1/run/state.json" i
    for i in $(seq 1 100); do
        if [[ -f $state ]] && python3 - "$state" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
ready = {p["name"] for p in s["portgroups"] if p["ready"]}
sys.exit(0 if {"prod-web", "db"} <= ready else 1)
PY
        then return 0; fi
        sleep 0.1
    done
    echo "node $1 did not become ready; state and log:" >&2
    cat "$state" >&2 || true
    cat "$LAB_DIR/node-$1/portgroupd.log" >&2 || true
    return 1
}

# lab_cni NODE COMMAND VM IFNAME CONFIG_JSON: run the plugin on NODE as a runtime does.
lab_cni() {
    local node=$1 command=$2 vm=$3 ifname=$4 config=$5
    printf '%s' "$config" | ip netns exec "pgl-node-$node" env \
        CNI_COMMAND="$command" CNI_CONTAINERID="$vm-on-$node" CNI_NETNS="/run/netns/pgl-vm-$vm-$node" \
        CNI_IFNAME="$ifname" CNI_PATH=/usr/lib/cni PORTGROUP_RUN_DIR="$LAB_DIR/node-$node/run" \
        "$BIN_DIR/portgroup"
}

# lab_vm NAME NODE: the network namespace of a VM's pod on NODE.
lab_vm() {
    ip netns add "pgl-vm-$1-$2"
    ip -n "pgl-vm-$1-$2" link set lo up
}

# netconf PORTGROUP MAC IP [EXTRA_JSON_FIELDS]
lab_netconf() {
    printf '{"cniVersion":"1.0.0","name":"%s","type":"portgroup","portgroup":"%s","runtimeConfig":{"mac":"%s","ips":["%s"]}%s}' \
        "$1" "$1" "$2" "$3" "${4:+,$4}"
}

lab_down() {
    local node pid
    for node in "${LAB_NODES[@]}"; do
        pid=$(cat "$LAB_DIR/node-$node/portgroupd.pid" 2>/dev/null || true)
        [[ -n $pid ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    done
    for ns in $(ip netns list | awk '{print $1}' | grep '^pgl-' || true); do
        ip netns del "$ns"
    done
    rm -rf "$LAB_DIR"
}
