#!/usr/bin/env bash
# The DaemonSet's pod, run for real: the image hack/image.sh builds (nothing
# pulled), the pod template of manifests/daemonset.yaml turned into the Pod the
# kubelet would run (hack/daemonset_pod.py) and played by podman 4.3
# (`podman kube play --configmap`), in a lab of its own. The ConfigMap is
# manifests/configmap.yaml plus one portgroup of the lab's: `vm-network`,
# untagged on the lab's uplink eth2 (no 802.1Q needed, so it can be ready on
# any kernel).
#
#   hack/daemonset-e2e.sh
#   PORTGROUP_BIN_DIR=DIR hack/daemonset-e2e.sh     static binaries from DIR, no cargo build
#
# Needs root. Everything runs in a private network and mount namespace (the
# script re-execs itself under `unshare`): that network namespace is the lab's
# node, so hostNetwork means the lab, never this machine; /run, /var/lib, /opt
# and /dev/shm are private tmpfs mounts there, so /opt/cni/bin and /run/portgroup
# are the manifest's own hostPaths without touching this machine's, and podman's
# storage (image, containers, volumes) vanishes with the namespace.
#
# The lab node: eth0 with the node IP (its peer in lab-peer), eth1 the
# manifest's VLAN uplink (its peer in lab-switch), eth2 an uplink with no
# address whose peer is a legacy host (namespace lab-legacy, 198.51.100.1/24)
# on the untagged network.
#
# Checks: the init container installs the plugin into /opt/cni/bin; portgroupd
# runs with exactly the manifest's args (after $(VAR) expansion), env, volumes,
# read-only root, the single capability NET_ADMIN, not privileged, in the
# node's network namespace; /healthz and /readyz answer where the probes look
# (the pod IP, which for hostNetwork is the node's); the ConfigMap is read and a
# change made through its mounted volume is picked up; vm-network becomes ready
# (node state, portgroup_ready metric) on a bridge portgroupd made with eth2 as
# its port. Then the plugin the init container installed is run as a runtime
# runs it (CNI_* env, the NAD's config on stdin, from /opt/cni/bin): ADD puts a
# pod namespace on vm-network (the CNI result, the MAC, the pod reaching the
# legacy host through portgroupd's bridge, port security dropping a spoofed
# source), CHECK, DEL, and nothing is left. A portgroup that cannot be ready on
# any kernel (untagged on eth0, which holds the node IP) gets ADD refused with
# code 11 and portgroupd's reason. Prints PASS/FAIL lines.
set -euo pipefail

MARKER=PORTGROUP_DAEMONSET_E2E_INNER
SCRIPT=$(readlink -f "$0")
REPO=$(cd "$(dirname "$SCRIPT")/.." && pwd)
# shellcheck source=hack/podman-netns.sh
source "$REPO/hack/podman-netns.sh"

# --------------------------------------------------------------------- outside
if [[ -z "${!MARKER:-}" ]]; then
    [[ $EUID -eq 0 ]] || { echo "FAIL: $0 needs root (namespaces, podman)"; exit 1; }
    "$REPO/hack/install-deps.sh"
    # Built here, with the network: the inner half has none.
    if [[ -n ${PORTGROUP_BIN_DIR:-} ]]; then
        bin_dir=$(readlink -f "$PORTGROUP_BIN_DIR")
    else
        bin_dir=$("$REPO/hack/image.sh" --build-only | tail -n 1)
    fi
    work=$(mktemp -d /tmp/pg-daemonset-e2e.XXXXXX)
    child=
    outer_cleanup() { stop_inner_script "$child" "$work"; }
    trap outer_cleanup EXIT
    trap 'exit 130' INT TERM
    env "$MARKER=1" PG_WORK="$work" PG_BIN_DIR="$bin_dir" \
        PG_OUTER_NS="$(readlink /proc/self/ns/net /proc/self/ns/mnt | tr '\n' ' ')" \
        unshare --net --mount --propagation private --fork --kill-child=SIGTERM \
        bash "$SCRIPT" "$@" &
    child=$!
    rc=0
    wait "$child" || rc=$?
    child=
    exit "$rc"
fi

# ---------------------------------------------------------------------- inside
W=${PG_WORK:?}
BIN_DIR=${PG_BIN_DIR:?}
if [[ -z ${PG_OUTER_NS:-} || $PG_OUTER_NS == *"$(readlink /proc/self/ns/net)"* ||
    $PG_OUTER_NS == *"$(readlink /proc/self/ns/mnt)"* ]]; then
    echo "FAIL: $MARKER is set but this is not a private network and mount namespace"
    exit 1
fi
fails=0
pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
die() { echo "FAIL: $*"; fails=$((fails + 1)); exit 1; }
t0=$(date +%s)

for dir in "$W" /run /var/lib /dev/shm /opt; do
    mount -t tmpfs -o mode=0755 tmpfs "$dir"
done
mkdir -p "$W"/{storage,runroot,tmp} /run/netns
export CONTAINERS_CONF=$W/containers.conf
export CONTAINERS_STORAGE_CONF=$W/storage.conf
export CONTAINERS_REGISTRIES_CONF=$W/registries.conf
# default_ulimits: podman's own default (nofile 1048576) is above this
# machine's hard limit, and the pod's infra container gets no --ulimit.
cat >"$CONTAINERS_CONF" <<EOF
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$W/events.log"
runtime = "runc"
tmp_dir = "$W/tmp"
static_dir = "$W/storage/libpod"
volume_path = "$W/storage/volumes"
num_locks = 128
EOF
printf '[storage]\ndriver = "vfs"\ngraphroot = "%s"\nrunroot = "%s"\n' "$W/storage" "$W/runroot" >"$CONTAINERS_STORAGE_CONF"
echo 'unqualified-search-registries = []' >"$CONTAINERS_REGISTRIES_CONF"

cgroups_before=$(for cg in /sys/fs/cgroup/*/libpod_parent /sys/fs/cgroup/libpod_parent; do
    if [[ -d $cg ]]; then echo "$cg"; fi
done | tr '\n' ' ')
NODE=lab-node-1
NODE_IP=192.0.2.10
pod_id=
inner_cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [[ -n $pod_id ]] && podman pod rm --force --time 0 "$pod_id" >/dev/null 2>&1
    podman rm --all --force --time 0 >/dev/null 2>&1 || true
    podman rmi --all --force >/dev/null 2>&1 || true
    podman volume rm --all --force >/dev/null 2>&1 || true
    kill_netns_leftovers
    # podman (cgroupfs) puts pods under libpod_parent/<pod id> in every
    # controller: remove our pod's, and libpod_parent if this run made it.
    local cg
    for cg in /sys/fs/cgroup/*/libpod_parent /sys/fs/cgroup/libpod_parent; do
        [[ -d $cg ]] || continue
        [[ -n $pod_id && -d $cg/$pod_id ]] && find "$cg/$pod_id" -depth -type d -exec rmdir {} + 2>/dev/null
        [[ " $cgroups_before " == *" $cg "* ]] || rmdir "$cg" 2>/dev/null || true
    done
    echo "daemonset e2e: $(($(date +%s) - t0)) s, $fails failure(s)"
    ((fails == 0 && rc == 0)) || exit 1
    exit 0
}
trap inner_cleanup EXIT
trap 'echo "FAIL: interrupted"; exit 143' TERM INT

# --- the lab node: its own IP (the pod IP of a hostNetwork pod) and an uplink
ip link set lo up
ip netns add lab-peer
ip link add eth0 type veth peer name eth0 netns lab-peer
ip addr add "$NODE_IP/24" dev eth0
ip link set eth0 up
ip -n lab-peer link set eth0 up
ip netns add lab-switch
ip link add eth1 type veth peer name sw0 netns lab-switch
ip -n lab-switch link set sw0 up
has_8021q=0
ip link add link eth1 name probe.5 type vlan id 5 2>/dev/null && { has_8021q=1; ip link del probe.5; }
# The untagged network: eth2, no address (an untagged portgroup's uplink must
# hold none), the legacy host at its other end.
LEGACY_IP=198.51.100.1
ip netns add lab-legacy
ip link add eth2 type veth peer name eth0 netns lab-legacy
ip link set eth2 up
ip -n lab-legacy link set lo up
ip -n lab-legacy addr add "$LEGACY_IP/24" dev eth0
ip -n lab-legacy link set eth0 up
pass "lab node $NODE: $NODE_IP on eth0, uplink eth1 (802.1Q: $has_8021q), untagged uplink eth2 to the legacy host $LEGACY_IP"

# --- the image
image_log=$W/image.log
PODMAN=podman PORTGROUP_BIN_DIR=$BIN_DIR "$REPO/hack/image.sh" --no-build --list >"$W/image.id" 2>"$image_log" ||
    { cat "$image_log"; die "hack/image.sh failed"; }
cat "$image_log"
image_files=$(awk 'NF == 3 {print $3}' "$image_log")
pass "image built FROM scratch: $(grep -c . <<<"$image_files") entries"

# --- the Pod, from the manifest
python3 "$REPO/hack/daemonset_pod.py" "$REPO/manifests/daemonset.yaml" \
    --node "$NODE" --pod-ip "$NODE_IP" --pod "$W/pod.yaml" --expect "$W/expect.json" ||
    die "could not turn the DaemonSet into a Pod"
x() { jq -r "$@" "$W/expect.json"; }
POD=$(x .pod)
[[ $(x .hostNetwork) == true ]] || fail "the DaemonSet is not hostNetwork"

# What the manifest asks of the image: every command (or the image's entrypoint)
# must be a file the image has.
entrypoint=$(podman image inspect --format '{{index .Config.Entrypoint 0}}' "$(cat "$W/image.id")")
for c in $(x '.containers | keys[]'); do
    exe=$(x --arg c "$c" '.containers[$c].command[0] // empty')
    exe=${exe:-$entrypoint}
    if grep -qx "${exe#/}" <<<"$image_files"; then
        pass "$c: runs $exe, which the image has"
    else
        fail "$c: the manifest runs $exe, which the image lacks (image files: $(tr '\n' ' ' <<<"$image_files"))"
    fi
    image=$(x --arg c "$c" '.containers[$c].image')
    podman image exists "$image" || fail "$c: image $image is not the one built (tag mismatch)"
done
# Every env variable the manifest sets is read by the binary (clap lists the
# variables it reads in --help) or expanded into its args; else it is dead.
for c in $(x '.containers | keys[]'); do
    exe=$(x --arg c "$c" '.containers[$c].command[0] // empty')
    exe=${exe:-$entrypoint}
    help=$("$BIN_DIR/$(basename "$exe")" --help 2>/dev/null || true)
    refs=" $(x --arg c "$c" '.containers[$c].argRefs | join(" ")') "
    for var in $(x --arg c "$c" '.containers[$c].env | keys[]'); do
        if [[ $help == *"[env: $var="* ]]; then
            pass "$c: env $var is read by $(basename "$exe") (its --help says so)"
        elif [[ $refs == *" $var "* ]]; then
            pass "$c: env $var is expanded into its command line"
        else
            fail "$c: env $var is set by the manifest but read by nothing"
        fi
    done
done
((fails == 0)) || die "the manifest and the image disagree"

# --- the ConfigMap: the manifest's, plus the lab's untagged portgroup
python3 - "$REPO/manifests/configmap.yaml" "$W/configmap.yaml" <<'EOF' || die "could not extend the ConfigMap"
import json, sys, yaml
cm = yaml.safe_load(open(sys.argv[1]))
config = json.loads(cm["data"]["config.json"])
config["portgroups"].append({"name": "vm-network", "untagged": True, "uplink": "eth2"})
cm["data"]["config.json"] = json.dumps(config, indent=2) + "\n"
yaml.safe_dump(cm, open(sys.argv[2], "w"), sort_keys=False)
EOF

# --- play it
echo "--- podman kube play"
play_rc=0
podman kube play --configmap "$W/configmap.yaml" "$W/pod.yaml" 2>&1 | tee "$W/play.log" || play_rc=$?
echo "---"
((play_rc == 0)) || die "podman kube play failed ($play_rc)"
pod_id=$(podman pod inspect --format '{{.Id}}' "$POD")
pass "podman kube play: pod $POD"

init=$POD-$(x '.containers | to_entries[] | select(.value.init) | .key')
daemon=$POD-portgroupd
# The init container ran to completion before portgroupd started.
[[ $(podman inspect --format '{{.State.ExitCode}} {{.State.Status}}' "$init") == "0 exited" ]] ||
    fail "init container: $(podman inspect --format '{{.State.Status}} exit {{.State.ExitCode}}' "$init")"
init_log=$(podman logs "$init" 2>&1)
echo "init container log: $init_log"
if cmp -s /opt/cni/bin/portgroup "$BIN_DIR/portgroup" && [[ -x /opt/cni/bin/portgroup ]]; then
    pass "init container installed the plugin: /opt/cni/bin/portgroup ($(stat -c '%s bytes, mode %a' /opt/cni/bin/portgroup)), identical to the image's"
else
    fail "no plugin (or another one) in /opt/cni/bin: $(ls -la /opt/cni/bin)"
fi
[[ -z $(find /opt/cni/bin -name '.portgroup.tmp.*') ]] || fail "temporary files left in /opt/cni/bin"

# --- portgroupd as the manifest says
state=$(podman inspect --format '{{.State.Status}}' "$daemon")
[[ $state == running ]] || { podman logs "$daemon" 2>&1 | tail -20; die "portgroupd is $state"; }
pid=$(podman inspect --format '{{.State.Pid}}' "$daemon")
want_argv=$(x --arg e "$entrypoint" '(.containers.portgroupd.command // [$e]) + .containers.portgroupd.args | .[]')
got_argv=$(tr '\0' '\n' <"/proc/$pid/cmdline")
if [[ $got_argv == "$want_argv" ]]; then
    pass "portgroupd argv: $(tr '\n' ' ' <<<"$got_argv")"
else
    fail "portgroupd argv: want [$(tr '\n' ' ' <<<"$want_argv")], got [$(tr '\n' ' ' <<<"$got_argv")]"
fi
[[ $got_argv == *"$NODE_IP:9750"* && $got_argv == *"$NODE"* ]] || fail "\$(POD_IP)/\$(NODE_NAME) not expanded"
environ=$(tr '\0' '\n' <"/proc/$pid/environ")
for kv in $(x '.containers.portgroupd.env | to_entries[] | "\(.key)=\(.value)"'); do
    grep -qx "$kv" <<<"$environ" && pass "env $kv" || fail "env $kv missing: $(tr '\n' ' ' <<<"$environ")"
done
caps=$(awk '/^Cap(Eff|Prm|Bnd):/ {printf "%s=%s ", $1, $2}' "/proc/$pid/status")
# CAP_NET_ADMIN is bit 12: 0x1000, and nothing else.
want_caps="CapPrm:=0000000000001000 CapEff:=0000000000001000 CapBnd:=0000000000001000 "
[[ $(x '.containers.portgroupd.capAdd | join(",")') == NET_ADMIN && $(x '.containers.portgroupd.capDrop | join(",")') == ALL ]] ||
    fail "the manifest no longer asks for drop ALL, add NET_ADMIN"
[[ $caps == "$want_caps" ]] && pass "capabilities: NET_ADMIN only ($caps)" || fail "capabilities: $caps, want $want_caps"
[[ $(podman inspect --format '{{.HostConfig.Privileged}}' "$daemon") == false ]] || fail "privileged"
root_opts=$(awk '$5 == "/" {print $6}' "/proc/$pid/mountinfo")
[[ $(x .containers.portgroupd.readOnlyRootFilesystem) == true && $root_opts == ro,* ]] &&
    pass "read-only root filesystem ($root_opts)" || fail "root filesystem mounted $root_opts"
[[ $(readlink "/proc/$pid/ns/net") == "$(readlink /proc/$$/ns/net)" ]] &&
    pass "hostNetwork: portgroupd is in the lab node's network namespace" ||
    fail "portgroupd in $(readlink "/proc/$pid/ns/net"), not the node's $(readlink /proc/$$/ns/net)"

# Volumes: every mount the manifest declares, from the source it names, rw as declared; no other.
mounts=$(podman inspect --format '{{range .Mounts}}{{.Destination}} {{.Type}} {{.Source}} {{.RW}}{{"\n"}}{{end}}' "$daemon")
declared=0
while IFS=$'\t' read -r path vol ro; do
    declared=$((declared + 1))
    line=$(awk -v p="$path" '$1 == p' <<<"$mounts")
    [[ -n $line ]] || { fail "volume $vol not mounted at $path"; continue; }
    read -r _ type src rw <<<"$line"
    host=$(x --arg v "$vol" '.volumes[$v].hostPath.path // empty')
    [[ -z $host || $src == "$host" ]] || fail "volume $vol: source $src, manifest says $host"
    [[ $rw == $([[ $ro == true ]] && echo false || echo true) ]] || fail "volume $vol at $path: rw=$rw, readOnly=$ro"
    pass "volume $vol at $path ($type ${host:-$src}, rw=$rw)"
done < <(x '.containers.portgroupd.mounts[] | [.mountPath, .name, (.readOnly // false)] | @tsv')
(($(grep -c . <<<"$mounts") == declared)) || fail "mounts beyond the manifest's: $mounts"

# --- probes, where the kubelet sends them: httpGet to the pod IP
http() { # port path -> "status body"
    python3 - "$@" <<'EOF'
import sys, urllib.request, urllib.error
try:
    r = urllib.request.urlopen("http://%s:%s%s" % (sys.argv[1], sys.argv[2], sys.argv[3]), timeout=5)
    print(r.status, r.read().decode().strip())
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode().strip())
except Exception as e:
    print(0, e)
EOF
}
for probe in $(x '.containers.portgroupd.probes | keys[]'); do
    port=$(x --arg p "$probe" '.containers.portgroupd.probes[$p].port')
    path=$(x --arg p "$probe" '.containers.portgroupd.probes[$p].path')
    host=$(x --arg p "$probe" '.containers.portgroupd.probes[$p].host // empty')
    for _ in $(seq 100); do
        answer=$(http "${host:-$NODE_IP}" "$port" "$path")
        [[ $answer == 200* ]] && break
        sleep 0.2
    done
    x --arg p "$port" -e '.containers.portgroupd.ports | map(.containerPort | tostring) | index($p)' >/dev/null ||
        fail "$probe: port $port is not a containerPort the manifest declares"
    [[ $answer == 200* ]] && pass "$probe: GET http://${host:-$NODE_IP}:$port$path -> $answer" ||
        fail "$probe: GET http://${host:-$NODE_IP}:$port$path -> $answer"
done

# --- the ConfigMap, read
state_file=/run/portgroup/state.json
wait_state() { # jq-condition what
    for _ in $(seq 150); do
        [[ -f $state_file ]] && jq -e "$1" "$state_file" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    return 1
}
want_pgs=$(python3 -c 'import json,sys,yaml
cm = yaml.safe_load(open(sys.argv[1]))
print(" ".join(p["name"] for p in json.loads(cm["data"]["config.json"])["portgroups"]))' "$W/configmap.yaml")
if wait_state ".node == \"$NODE\" and ([.portgroups[].name] | join(\" \")) == \"$want_pgs\""; then
    pass "ConfigMap read: node $NODE, portgroups $want_pgs in $state_file"
else
    fail "state does not show the ConfigMap's portgroups ($want_pgs): $(cat $state_file 2>/dev/null)"
fi
jq -c '.portgroups[] | {name, bridge, ready, reason}' "$state_file" || true
bridge=$(jq -r '.portgroups[] | select(.name == "prod-web") | .bridge' "$state_file")
alias=$(ip -o link show dev "$bridge" 2>/dev/null | grep -o 'alias portgroup:.*' || true)
[[ -n $alias ]] && pass "portgroupd made bridge $bridge ($alias)" || fail "no marked bridge $bridge"

# --- the untagged portgroup: ready, on a bridge portgroupd made
pg_field() { jq -r --arg p "$1" ".portgroups[] | select(.name == \$p) | .$2" "$state_file"; }
if wait_state '.portgroups[] | select(.name == "vm-network") | .ready'; then
    pass "vm-network ready in the node state ($(jq -c '.portgroups[] | select(.name == "vm-network") | {mode, uplink, bridge, ready}' "$state_file"))"
else
    fail "vm-network not ready: $(jq -c '.portgroups[] | select(.name == "vm-network")' "$state_file" 2>/dev/null)"
fi
vm_bridge=$(pg_field vm-network bridge)
vm_alias=$(ip -o link show dev "$vm_bridge" 2>/dev/null | grep -o 'alias portgroup:.*' || true)
eth2_master=$(ip -j link show dev eth2 | jq -r '.[0].master // empty' || true)
if [[ -n $vm_alias && $eth2_master == "$vm_bridge" ]]; then
    pass "portgroupd made bridge $vm_bridge ($vm_alias) with the uplink eth2 as its port"
else
    fail "vm-network's bridge '$vm_bridge': alias '$vm_alias', eth2's master '$eth2_master'"
fi
metrics=$(http "$NODE_IP" 9750 /metrics)
if grep -qx 'portgroup_ready{portgroup="vm-network"} 1' <<<"$metrics"; then
    pass "metrics: $(grep '^portgroup_ready{' <<<"$metrics" | tr '\n' ' ')"
else
    fail "metrics: no portgroup_ready{portgroup=\"vm-network\"} 1 in: $(grep '^portgroup_ready' <<<"$metrics" | tr '\n' ' ')"
fi

# --- a config change through the mounted volume: a portgroup that can never be
# ready (untagged on eth0, which holds the node's own address)
cfg_dir=$(podman inspect --format '{{range .Mounts}}{{if eq .Destination "/etc/portgroup"}}{{.Source}}{{end}}{{end}}' "$daemon")
[[ -f $cfg_dir/config.json ]] || die "no config.json in the ConfigMap volume $cfg_dir"
jq '.portgroups += [{"name": "lab-extra", "untagged": true, "uplink": "eth0"}]' "$cfg_dir/config.json" >"$cfg_dir/.config.json.new"
mv "$cfg_dir/.config.json.new" "$cfg_dir/config.json"
if wait_state '.portgroups[] | select(.name == "lab-extra") | .reason != null'; then
    pass "config change through the volume picked up: lab-extra in the state, not ready: $(pg_field lab-extra reason)"
else
    fail "config change not picked up: $(jq -c '[.portgroups[] | {name, ready}]' $state_file)"
fi
gen=$(http "$NODE_IP" 9750 /metrics | grep -o '^portgroupd_config_generation [0-9]*' || true)
[[ $gen == "portgroupd_config_generation 2" ]] && pass "metrics: $gen" || fail "metrics: '$gen', want generation 2"
[[ -z $(ip -j addr show dev eth0 | jq -r '.[0].master // empty') ]] && ip -j addr show dev eth0 | jq -e --arg a "$NODE_IP" '.[0].addr_info | map(.local) | index($a)' >/dev/null &&
    pass "eth0 untouched: still the node's ($NODE_IP), no bridge port" || fail "eth0 changed: $(ip -br addr show dev eth0)"

# --- the installed plugin, run as a runtime runs it
# The NAD's config as Multus hands it over: the portgroup, port security, the
# pod's MAC and IP from its network-selection annotation (runtimeConfig), and
# the device the kubelet allocated for the NAD's resourceName (deviceID).
POD_MAC=00:50:56:aa:bb:21
POD_IP=198.51.100.21
ip netns add lab-vm
ip netns add lab-vm2
nad() { # portgroup -> the NAD's config, as the runtime sends it
    jq -n --arg pg "$1" --arg mac "$POD_MAC" --arg ip "$POD_IP/24" '{
        cniVersion: "1.0.0", name: $pg, type: "portgroup", portgroup: $pg,
        spoofCheck: true, deviceID: ($pg + "-0"),
        runtimeConfig: {mac: $mac, ips: [$ip]}}'
}
cni() { # command netns containerid < config
    CNI_COMMAND=$1 CNI_CONTAINERID=$3 CNI_NETNS=/run/netns/$2 CNI_IFNAME=net1 CNI_PATH=/opt/cni/bin \
        CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=vms;K8S_POD_NAME=virt-launcher-legacy-app-x7k2p;K8S_POD_INFRA_CONTAINER_ID=$3" \
        /opt/cni/bin/portgroup
}
records=/run/portgroup/attachments
add_rc=0
add_out=$(nad vm-network | cni ADD lab-vm lab-vm-1 2>"$W/add.err") || add_rc=$?
echo "ADD result: $add_out"
if ((add_rc == 0)) && jq -e --arg mac "$POD_MAC" --arg ip "$POD_IP/24" '
    .cniVersion == "1.0.0"
    and (.interfaces | map(select(.name == "net1" and .mac == $mac and .sandbox == "/run/netns/lab-vm")) | length) == 1
    and (.ips | length) == 1 and .ips[0].address == $ip
    and .interfaces[.ips[0].interface].name == "net1"' <<<"$add_out" >/dev/null; then
    pass "ADD vm-network (exit 0): net1 $POD_MAC with $POD_IP/24 in the result"
else
    fail "ADD vm-network: exit $add_rc: $add_out $(cat "$W/add.err")"
fi
pod_link=$(ip -n lab-vm -j addr show dev net1 2>/dev/null || echo '[]')
jq -e --arg mac "$POD_MAC" --arg ip "$POD_IP" '.[0].address == $mac and (.[0].addr_info | map(.local) | index($ip))' <<<"$pod_link" >/dev/null &&
    pass "pod's net1: MAC $POD_MAC, address $POD_IP" || fail "pod's net1: $pod_link"
record=$(find "$records" -name '*.json' 2>/dev/null | head -n 1 || true)
host_veth=$([[ -n $record ]] && jq -r .hostVeth "$record" || true)
veth_master=$(ip -j link show dev "${host_veth:-none}" 2>/dev/null | jq -r '.[0].master // empty' || true)
record_device=$([[ -n $record ]] && jq -r '.deviceID // empty' "$record" || true)
[[ $record_device == vm-network-0 ]] && pass "the attachment record keeps Multus's deviceID ($record_device)" ||
    fail "the attachment record's deviceID: '$record_device', want vm-network-0"
[[ -n $host_veth && $veth_master == "$vm_bridge" ]] &&
    pass "host veth $host_veth is a port of $vm_bridge (record $(basename "$record"))" ||
    fail "host veth '$host_veth' on '$veth_master', want $vm_bridge; records: $(ls "$records" 2>&1)"
reached=0
if ip netns exec lab-vm ping -c 3 -i 0.2 -W 2 "$LEGACY_IP" >"$W/ping.log" 2>&1; then
    reached=1
    pass "pod reaches the legacy host through $vm_bridge: $(grep -o '[0-9]* received' "$W/ping.log")"
else
    fail "pod cannot reach the legacy host $LEGACY_IP: $(tail -n 2 "$W/ping.log" | tr '\n' ' ')"
fi
legacy_neigh=$(ip -n lab-legacy neigh show "$POD_IP" dev eth0 || true)
[[ $legacy_neigh == *"lladdr $POD_MAC"* ]] &&
    pass "the legacy host knows the pod by its MAC: $legacy_neigh" || fail "legacy host's neighbour entry: '$legacy_neigh'"
ip netns exec lab-legacy ping -c 1 -W 2 "$POD_IP" >/dev/null 2>&1 &&
    pass "the legacy host reaches the pod" || fail "the legacy host cannot reach the pod"
# Port security is on (spoofCheck): a source the pod was not given gets nowhere.
ip -n lab-vm addr add 198.51.100.99/24 dev net1 || true
if ip netns exec lab-vm ping -c 2 -i 0.2 -W 1 -I 198.51.100.99 "$LEGACY_IP" >/dev/null 2>&1; then
    fail "a spoofed source (198.51.100.99) got through: port security is not in force"
elif ((!reached)); then
    fail "port security: untested, the pod's own address got nowhere either"
else
    pass "port security: a spoofed source (198.51.100.99) gets no answer"
fi
ip -n lab-vm addr del 198.51.100.99/24 dev net1 2>/dev/null || true

check_rc=0
check_out=$(nad vm-network | jq --argjson r "${add_out:-null}" '. + {prevResult: $r}' | cni CHECK lab-vm lab-vm-1 2>&1) || check_rc=$?
((check_rc == 0)) && pass "CHECK (prevResult = ADD's result): exit 0" || fail "CHECK: exit $check_rc: $check_out"

del_rc=0
del_out=$(nad vm-network | cni DEL lab-vm lab-vm-1 2>&1) || del_rc=$?
((del_rc == 0)) && pass "DEL: exit 0" || fail "DEL: exit $del_rc: $del_out"
left=()
ip -n lab-vm link show net1 >/dev/null 2>&1 && left+=("net1 in the pod")
[[ -n $host_veth ]] && ip link show dev "$host_veth" >/dev/null 2>&1 && left+=("host veth $host_veth")
[[ -n $(find "$records" -name '*.json' 2>/dev/null) ]] && left+=("records: $(ls "$records")")
ports=$(ip -j link show master "$vm_bridge" 2>/dev/null | jq -r 'map(.ifname) | join(" ")' || true)
[[ $ports == eth2 ]] || left+=("ports of $vm_bridge: $ports")
# With portgroupd running, DEL leaves the port's elements to its sweep, which a
# removed attachment record wakes (once no record was removed for 100 ms, at
# most 1 s later), and every resync (60 s) repeats: give it up to 65 s.
# Read whole, then searched: `nft ... | grep -q` under pipefail fails when grep
# exits early on a match (nft gets SIGPIPE).
pod_elements() {
    local table
    table=$(nft list table bridge portgroup 2>/dev/null) || return 1
    grep -qi -e "$POD_MAC" -e "$POD_IP" -e "${host_veth:-none}" <<<"$table"
}
swept_in=$SECONDS
for _ in $(seq 650); do pod_elements || break; sleep 0.1; done
swept_in=$((SECONDS - swept_in))
pod_elements && left+=("port-security rules for the pod in table bridge portgroup, 65 s after DEL")
((${#left[@]} == 0)) && pass "after DEL nothing is left (pod link, host veth, record, bridge port; port-security elements swept by portgroupd within ${swept_in} s); $vm_bridge keeps eth2" ||
    fail "left after DEL: ${left[*]}"
del_again=0
nad vm-network | cni DEL lab-vm lab-vm-1 >/dev/null 2>&1 || del_again=$?
((del_again == 0)) && pass "DEL again: exit 0 (nothing to do)" || fail "a second DEL: exit $del_again"

# A portgroup that is not ready: ADD refused, with portgroupd's reason, nothing made.
add_rc=0
add_out=$(nad lab-extra | cni ADD lab-vm2 lab-vm-2 2>/dev/null) || add_rc=$?
reason=$(pg_field lab-extra reason)
if ((add_rc != 0)) && jq -e '.code == 11' <<<"$add_out" >/dev/null &&
    [[ $add_out == *"not ready on node $NODE"* && $add_out == *"holds IP addresses"* ]]; then
    pass "ADD on lab-extra refused as portgroupd's state says: $(jq -c '{code, msg, details}' <<<"$add_out")"
else
    fail "ADD on a portgroup that is not ready: exit $add_rc: $add_out (state's reason: $reason)"
fi
[[ -z $(find "$records" -name '*.json' 2>/dev/null) ]] && ! ip -n lab-vm2 link show net1 >/dev/null 2>&1 &&
    pass "the refused ADD left nothing" || fail "the refused ADD left something: $(ls "$records" 2>&1)"
ip netns del lab-vm
ip netns del lab-vm2

echo "--- portgroupd log (last lines)"
podman logs "$daemon" 2>&1 | tail -n "${E2E_LOG_LINES:-12}" # more: E2E_LOG_LINES=N
echo "---"
