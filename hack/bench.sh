#!/usr/bin/env bash
# hack/bench.sh: portgroup's benchmarks. Method and results: BENCHMARKS.md.
#
#   hack/bench.sh                 full run (200 cycles, 3 burst rounds, 1/100/1000 ports)
#   hack/bench.sh --quick         smoke run (30 cycles, 1 burst round, 1/100 ports)
#   hack/bench.sh --cycles N      sequential cycles per contender (default 200)
#   hack/bench.sh --sections S    comma list of seq,burst,profile,portsec (default all); the
#                                 burst runs with target/release/portgroupd in the node
#                                 namespace when it is built, as on a node
#   hack/bench.sh --no-build      use the plugin and portgroupd as built (the plugin:
#                                 target/<host>/release/portgroup, static as shipped, else
#                                 target/release/portgroup)
#   hack/bench.sh --no-daemon     skip the portgroupd section
#   hack/bench.sh --plan          only the planner: portgroupctl plan on a generated RVTools
#                                 export of 10,000 VMs / 25,000 NICs / 500 port groups, as
#                                 xlsx and as CSV; wall time and peak RSS (no root needed)
#   hack/bench.sh --no-deviceplugin  skip the device-plugin health-flip section
#   hack/bench.sh --only-deviceplugin  only the device-plugin health-flip section (on this
#                                 host, untagged portgroup: 100 carrier flaps and 100 uplink
#                                 re-creations, a few minutes with the build), then the report
#   hack/bench.sh --deviceplugin-vlan  also time a VLAN portgroup's flips (needs 802.1Q: in
#                                 the test VM when this kernel lacks it)
#   hack/bench.sh --flaps N       uplink flaps for the device-plugin section (default 100, --quick 20)
#   hack/bench.sh --out DIR       results directory (default bench-results)
#   hack/bench.sh --portsec-mechanisms   also time port security at 1000 ports and what
#                                 each alternative mechanism (nft -f, nft -j, libnftables)
#                                 costs per port (hack/bench/portsec_scale.rs, printed only)
#   hack/bench.sh --handover      also the migration handover: RARP to forwarding, held and
#                                 not held, 100 handovers each (hack/bench/handover_bench.rs)
#   hack/bench.sh --compare BIN   also bench another portgroup build (rows cmp-l2, cmp-static,
#                                 interleaved with the rest): to measure a fix before merging
#   hack/bench.sh --state-portgroups N   size of the node state (state.json plus one
#                                 portgroups/<name>.json per portgroup, as portgroupd writes
#                                 it) that the pg-portgroup and pg-pgmode-json rows resolve
#                                 their portgroup through (default 100)
#
# Output: a table on stdout, JSON in bench-results/bench.json (parts in
# bench-results/cni.json, daemon.json and calibrate-host.json).
#
# Everything runs in throwaway network namespaces named pgb-<pid>-*: one "node"
# namespace with bridge br0 and up to 112 pod namespaces. The host's own
# namespace is never touched. All of it (and the run dirs) is deleted on exit,
# whatever the exit. The CNI harness runs INSIDE the node namespace, once, and
# execs every plugin directly, so `ip netns exec`'s own overhead (new mount
# namespace, /sys remount) is not in any measured operation.
#
# Installs what it needs, only when missing: containernetworking-plugins
# (/usr/lib/cni/bridge, static), iproute2, strace, valgrind. hyperfine is not
# used: the harness must interleave contenders cycle by cycle, which hyperfine
# cannot do, so it times each exec itself (perf_counter_ns + wait4 rusage).
#
# The daemon section (portgroupd: converge N = 10, 100, 1000, 4094 portgroups and
# back, against an ip -batch floor up to 1000; drift repair; RSS idle and at 1000;
# idle CPU; portgroup-mode CNI rows on a real VLAN bridge) runs when
# target/release/portgroupd exists and its --help lists --once; otherwise it is
# skipped with a notice. VLAN portgroups need 802.1Q: when this kernel lacks it
# the section runs inside the test VM (hack/vm.sh; QEMU TCG: ~30 min for the full
# section, 4094 alone ~11 min; absolute times are upper bounds there, read the
# ratios). --quick: N = 10, 100 (~3 min). Then, on this kernel, pod churn: 100
# untagged portgroups, 200 VM ADD+DEL cycles through the plugin, portgroupd's
# CPU against the plugin runs' CPU (~15 s); and portgroupd's memory at 1000 untagged
# portgroups, each on its own uplink (--parts memory, ~4 min: tearing 1000 bridges
# down is most of it; --quick: 100). See hack/bench/daemon_bench.py. Then a trunk
# portgroup of 100 and 1000 VIDs converged from nothing against the ip -batch floor,
# 3 interleaved rounds (hack/bench/trunk_bench.py, in the test VM without 802.1Q:
# ~15 min; --quick: 100 VIDs, ~4 min).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
export PYTHONDONTWRITEBYTECODE=1
argv="$*"

plan_only=0 quick=0 build=1 daemon=1 deviceplugin=1 only_deviceplugin=0 deviceplugin_vlan=0 flaps="" mechanisms=0 handover=0 cycles="" sections="seq,burst,profile,portsec" state_pgs=100 compare="" out=$repo/bench-results
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) quick=1 ;;
        --cycles) cycles=$2; shift ;;
        --sections) sections=$2; shift ;;
        --no-build) build=0 ;;
        --no-daemon) daemon=0 ;;
        --portsec-mechanisms) mechanisms=1 ;;
        --handover) handover=1 ;;
        --plan) plan_only=1 ;;
        --no-deviceplugin) deviceplugin=0 ;;
        --only-deviceplugin) only_deviceplugin=1 ;;
        --deviceplugin-vlan) deviceplugin_vlan=1 ;;
        --flaps) flaps=$2; shift ;;
        --state-portgroups) state_pgs=$2; shift ;;
        --compare) compare=$(realpath "$2"); shift ;;
        --out) out=$(realpath -m "$2"); shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done
# --- portgroupctl plan (--plan) -------------------------------------------------
# The estate is generated (ctl/examples/gen_estate.rs), never committed. Each
# input is planned `runs` times into a fresh directory; every run's wall time and
# peak RSS come from wait4's rusage (a Python parent, so nothing of the harness
# is counted). Targets: under 3 s and under 300 MiB.
if [[ $plan_only -eq 1 ]]; then
    plan_target=${CARGO_TARGET_DIR:-$repo/target}
    plan_vms=${PLAN_VMS:-10000} plan_nics=${PLAN_NICS:-25000} plan_pgs=${PLAN_PORTGROUPS:-500}
    runs=5; [[ $quick -eq 1 ]] && runs=2
    if [[ $build -eq 1 ]]; then
        printf '\n==> %s\n' "cargo build --release -p portgroupctl (binary and the gen_estate example)" >&2
        cargo build --release -q -p portgroupctl --bin portgroupctl --example gen_estate
    fi
    data=$out/plan-estate
    rm -rf "$data"
    mkdir -p "$data"
    printf '\n==> %s\n' "generating $plan_vms VMs / $plan_nics NICs / $plan_pgs port groups (xlsx and CSV)" >&2
    "$plan_target/release/examples/gen_estate" --vms "$plan_vms" --nics "$plan_nics" \
        --portgroups "$plan_pgs" --xlsx "$data/RVTools_export_all.xlsx" --csv "$data/csv"
    python3 - "$plan_target/release/portgroupctl" "$data" "$runs" "$out/plan.json" <<'PY'
import json, os, statistics, subprocess, sys, time
ctl, data, runs, result = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
inputs = {"xlsx": os.path.join(data, "RVTools_export_all.xlsx"), "csv": os.path.join(data, "csv")}
rows = {}
summary = None
for name, path in inputs.items():
    walls, cpus, rss = [], [], []
    for i in range(runs):
        out = os.path.join(data, "out-%s-%d" % (name, i))
        start = time.perf_counter()
        proc = subprocess.Popen([ctl, "plan", "--rvtools", path, "--out", out],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        walls.append(time.perf_counter() - start)
        stdout, stderr = proc.stdout.read().decode(), proc.stderr.read().decode()
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit("plan failed on %s: %s" % (name, stderr))
        summary = stdout.strip()
        rss.append(usage.ru_maxrss / 1024.0)  # KiB -> MiB
        cpus.append(usage.ru_utime + usage.ru_stime)
    rows[name] = {"runs": runs, "wall_s_median": round(statistics.median(walls), 3),
                  "wall_s_max": round(max(walls), 3),
                  "cpu_s_median": round(statistics.median(cpus), 3), "peak_rss_mib_max": round(max(rss), 1)}
size = {k: os.path.getsize(v) if os.path.isfile(v) else sum(
    os.path.getsize(os.path.join(v, f)) for f in os.listdir(v)) for k, v in inputs.items()}
with open(result, "w") as f:
    json.dump({"plan": rows, "input_bytes": size, "last_run": summary}, f, indent=2)
print("\nportgroupctl plan (%s)" % summary)
print("%-5s %6s %14s %11s %13s %15s" % ("input", "runs", "wall median s", "wall max s", "CPU median s", "peak RSS MiB"))
for name, r in rows.items():
    print("%-5s %6d %14.3f %11.3f %13.3f %15.1f" % (name, r["runs"], r["wall_s_median"], r["wall_s_max"], r["cpu_s_median"], r["peak_rss_mib_max"]))
print("load average during the run: %.1f %.1f %.1f (cores: %d)" % (os.getloadavg() + (os.cpu_count(),)))
bad = [n for n, r in rows.items() if r["wall_s_max"] >= 3 or r["peak_rss_mib_max"] >= 300]
print("target (< 3 s, < 300 MiB): %s" % ("MISSED by " + ", ".join(bad) if bad else "met"))
PY
    rm -rf "$data"/out-*
    exit 0
fi

[[ $EUID -eq 0 ]] || { echo "hack/bench.sh needs root (network namespaces)" >&2; exit 1; }

if [[ $quick -eq 1 ]]; then
    flaps=${flaps:-20}
    cycles=${cycles:-30} burst_rounds=1 levels=1,100 reps=10 profile_runs=5
else
    flaps=${flaps:-100}
    cycles=${cycles:-200} burst_rounds=3 levels=1,100,1000 reps=40 profile_runs=15
fi
burst=100

step() { printf '\n==> %s\n' "$*" >&2; }

# --- dependencies -------------------------------------------------------------
"$repo/hack/install-deps.sh" --bench >&2

host=$(rustc -vV | sed -n 's/^host: //p')
if [[ $only_deviceplugin -eq 1 ]]; then
    ((deviceplugin == 1)) || { echo "--only-deviceplugin and --no-deviceplugin exclude each other" >&2; exit 2; }
    build=0
fi
if [[ $build -eq 1 ]]; then
    # One package per build: a workspace build unifies features and would link
    # the daemon's dependencies into the plugin.
    # The plugin as the image ships it (hack/image.sh): static, so no dynamic
    # loader or relocations at each exec. An explicit --target keeps build
    # scripts and proc macros dynamic.
    step "cargo build --release --target $host -p portgroup (static, as shipped); cargo build --release -p portgroupd"
    env "CARGO_TARGET_$(tr 'a-z-' 'A-Z_' <<<"$host")_RUSTFLAGS=-C target-feature=+crt-static" \
        cargo build --release -q --target "$host" -p portgroup
    cargo build --release -q -p portgroupd
    if [[ ,$sections, == *,profile,* ]]; then
        step "cargo build --profile profiling -p portgroup (release code with symbols, for callgrind)"
        cargo build --profile profiling -q -p portgroup
    fi
fi
target=${CARGO_TARGET_DIR:-$repo/target}
plugin=$target/$host/release/portgroup
[[ -x $plugin ]] || plugin=$target/release/portgroup   # --no-build with only a dynamic build
mkdir -p "$out"
if [[ $only_deviceplugin -eq 0 ]]; then
[[ -x $plugin ]] || { echo "$plugin is missing (cargo build --release -p portgroup)" >&2; exit 1; }

# --- throwaway namespaces -----------------------------------------------------
tag="pgb-$$"
node="$tag-node"
npods=$((burst + 12))
run_dir=/dev/shm/$tag-run          # tmpfs, like /run on a node
disk_run_dir=$out/.$tag-run-disk   # ext4: shows what the record's fsync costs
scratch=/dev/shm/$tag-scratch

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    ip netns list 2>/dev/null | awk -v p="^$tag-" '$1 ~ p {print "netns del " $1}' |
        ip -force -batch - 2>/dev/null || true
    rm -rf "$run_dir" "$disk_run_dir" "$scratch"
    if ip netns list 2>/dev/null | grep -q "^$tag-"; then
        echo "warning: namespaces left behind: $(ip netns list | grep "^$tag-" | tr '\n' ' ')" >&2
    fi
    exit $rc
}
trap cleanup EXIT INT TERM

step "namespaces $tag-*: node with br0, $npods pods"
{
    echo "netns add $node"
    for ((i = 0; i < npods; i++)); do echo "netns add $tag-p$i"; done
} | ip -batch -
ip -n "$node" -batch - <<EOF
link set lo up
link add br0 type bridge
link set br0 up
EOF
mkdir -p "$run_dir" "$disk_run_dir" "$scratch"

# --- CNI ADD/DEL --------------------------------------------------------------
step "CNI benchmark: $cycles cycles, burst $burst x $burst_rounds, port security at $levels ($sections)"
extra=()
[[ -n $compare ]] && extra+=(--compare "$compare")
# The burst runs with portgroupd in the node namespace, as on a node: where it
# runs, a DEL leaves its port's nftables elements to its sweep.
daemon_bin=$target/release/portgroupd
[[ -x $daemon_bin ]] && "$daemon_bin" --help 2>/dev/null | grep -q -- --run-dir && extra+=(--portgroupd "$daemon_bin")
symbols_plugin=$target/profiling/portgroup
[[ -x $symbols_plugin && ! $symbols_plugin -ot $plugin ]] && extra+=(--symbols-plugin "$symbols_plugin")
ip netns exec "$node" python3 "$repo/hack/bench/cni_bench.py" "${extra[@]}" \
    --plugin "$plugin" --run-dir "$run_dir" --disk-run-dir "$disk_run_dir" \
    --pods "$tag-p" --npods "$npods" --cycles "$cycles" --burst "$burst" \
    --burst-rounds "$burst_rounds" --portsec-levels "$levels" --portsec-reps "$reps" --profile-runs "$profile_runs" \
    --synthetic-state "$state_pgs" --sections "$sections" --scratch "$scratch" --out "$out/cni.json" --progress

# --- port-security mechanisms -------------------------------------------------
if [[ $mechanisms -eq 1 ]]; then
    step "port security at 1000 ports and the alternative mechanisms (cargo bench --bench portsec_scale)"
    cargo bench -q -p portgroupd --bench portsec_scale | tee "$out/portsec-mechanisms.txt" >&2
fi

# --- the migration handover -----------------------------------------------------
if [[ $handover -eq 1 ]]; then
    step "the migration handover, 100 handovers (cargo bench --bench handover_bench)"
    cargo bench -q -p portgroupd --bench handover_bench | tee "$out/handover.txt" >&2
fi

# --- portgroupd ---------------------------------------------------------------
daemon_bin=$target/release/portgroupd
rm -f "$out/calibrate-host.json" "$out/trunk.json"
if [[ $daemon -eq 0 ]]; then
    echo '{"skipped": "--no-daemon"}' >"$out/daemon.json"
elif [[ ! -x $daemon_bin ]] || ! "$daemon_bin" --help 2>&1 | grep -q -- '--once'; then
    reason="portgroupd not built or not the real daemon yet ($daemon_bin; its --help must list --once)"
    step "daemon section SKIPPED: $reason"
    printf '{"skipped": "%s"}\n' "$reason" >"$out/daemon.json"
else
    dq=""; [[ $quick -eq 1 ]] && dq="--quick"
    if hack/vm.sh --has-8021q; then
        step "daemon benchmark (this kernel has 802.1Q)"
        python3 hack/bench/daemon_bench.py --daemon "$daemon_bin" --plugin "$plugin" \
            --tag "$tag" --out "$out/daemon.json" $dq
    else
        step "link-work calibration on this kernel (for the TCG slowdown of the VM's converge times)"
        python3 hack/bench/daemon_bench.py --daemon "$daemon_bin" --plugin "$plugin" --tag "$tag" \
            --parts calibrate --out "$out/calibrate-host.json" $dq
        step "daemon benchmark inside the test VM (this kernel has no 802.1Q; ~30 s boot)"
        hack/vm.sh --ensure
        PORTGROUP_VM_RWDIRS="$out${PORTGROUP_VM_RWDIRS:+:$PORTGROUP_VM_RWDIRS}" \
            PORTGROUP_VM_TIMEOUT=${PORTGROUP_VM_TIMEOUT:-3600} hack/vm.sh \
            "python3 hack/bench/daemon_bench.py --daemon $daemon_bin --plugin $plugin --tag pgbvm --out $out/daemon.json --in-vm --parts calibrate,converge,daemon,cni $dq 2>&1"
    fi
    # A trunk portgroup's converge from nothing against the ip -batch floor
    # (hack/bench/trunk_bench.py: interleaved rounds, each contender from tmpfs).
    trunk_vids="100,1000" trunk_rounds=3; [[ $quick -eq 1 ]] && trunk_vids=100
    trunk_cmd="python3 hack/bench/trunk_bench.py --daemon $daemon_bin --vids $trunk_vids --rounds $trunk_rounds --out $out/trunk.json"
    if hack/vm.sh --has-8021q; then
        step "trunk portgroup converge, $trunk_vids VIDs, $trunk_rounds rounds"
        $trunk_cmd
    else
        step "trunk portgroup converge, $trunk_vids VIDs, $trunk_rounds rounds, inside the test VM (no 802.1Q here)"
        PORTGROUP_VM_RWDIRS="$out${PORTGROUP_VM_RWDIRS:+:$PORTGROUP_VM_RWDIRS}" \
            PORTGROUP_VM_TIMEOUT=${PORTGROUP_VM_TIMEOUT:-3600} hack/vm.sh "$trunk_cmd 2>&1"
    fi
    # Untagged portgroups need no 802.1Q: pod churn runs on this kernel.
    step "portgroupd under pod churn (100 untagged portgroups, 200 VM ADD+DEL cycles through the plugin)"
    python3 hack/bench/daemon_bench.py --daemon "$daemon_bin" --plugin "$plugin" --tag "$tag" \
        --parts churn --out "$out/churn.json"
    step "portgroupd under pod churn with spoofCheck (DELs leave their elements to portgroupd's sweep)"
    python3 hack/bench/daemon_bench.py --daemon "$daemon_bin" --plugin "$plugin" --tag "$tag" \
        --parts churn --churn-spoofcheck --out "$out/churn-portsec.json"
    # Untagged portgroups on distinct uplinks: portgroupd's memory at 1000 on this kernel.
    mem_pgs=1000; mem_reps=3; [[ $quick -eq 1 ]] && { mem_pgs=100; mem_reps=1; }
    step "portgroupd memory at $mem_pgs untagged portgroups (VmRSS and VmHWM; --once rows)"
    python3 hack/bench/daemon_bench.py --daemon "$daemon_bin" --plugin "$plugin" --tag "$tag" \
        --parts memory --memory-pgs "$mem_pgs" --memory-reps "$mem_reps" --out "$out/memory.json"
fi
fi # not --only-deviceplugin

# --- device plugin: health-flip latency -----------------------------------------
# From the kernel's link event on the uplink to the ListAndWatch update a fake
# kubelet receives, over $flaps flaps (benches/deviceplugin_flip.rs), on this
# host: an untagged portgroup (a bridge on the raw uplink, ready without
# 802.1Q), its uplink losing and regaining carrier (deviceplugin.json), then
# deleted and made anew (deviceplugin-recreate.json). --deviceplugin-vlan also
# times a VLAN portgroup (deviceplugin-vlan.json), in the test VM when this
# kernel has no 802.1Q (absolute times there are TCG-inflated upper bounds).
rm -f "$out"/deviceplugin*.json
if [[ $deviceplugin -eq 0 ]]; then
    echo '{"skipped": "--no-deviceplugin"}' >"$out/deviceplugin.json"
else
    step "device-plugin health flip: building benches/deviceplugin_flip.rs (release)"
    flip_bin=$(cargo bench --quiet --no-run --bench deviceplugin_flip --message-format=json 2>/dev/null |
        python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "deviceplugin_flip" and m.get("executable"):
        print(m["executable"])')
    [[ -x $flip_bin ]] || { echo "could not build the deviceplugin_flip bench" >&2; exit 1; }
    step "device-plugin health flip: untagged portgroup, $flaps carrier flaps (load $(cut -d' ' -f1-3 /proc/loadavg))"
    "$flip_bin" --flaps "$flaps" --kind carrier --out "$out/deviceplugin.json"
    step "device-plugin health flip: untagged portgroup, $flaps uplink re-creations (load $(cut -d' ' -f1-3 /proc/loadavg))"
    "$flip_bin" --flaps "$flaps" --kind recreate --out "$out/deviceplugin-recreate.json"
    if [[ $deviceplugin_vlan -eq 1 ]]; then
        if hack/vm.sh --has-8021q; then
            step "device-plugin health flip: VLAN portgroup, $flaps carrier flaps"
            "$flip_bin" --vlan --flaps "$flaps" --out "$out/deviceplugin-vlan.json"
        else
            step "device-plugin health flip: VLAN portgroup, $flaps carrier flaps inside the test VM (no 802.1Q here)"
            hack/vm.sh --ensure
            PORTGROUP_VM_RWDIRS="$out${PORTGROUP_VM_RWDIRS:+:$PORTGROUP_VM_RWDIRS}" \
                PORTGROUP_VM_TIMEOUT=${PORTGROUP_VM_TIMEOUT:-1800} hack/vm.sh \
                "$flip_bin --vlan --flaps $flaps --out $out/deviceplugin-vlan.json 2>&1"
        fi
    fi
fi

# --- report -------------------------------------------------------------------
if [[ $only_deviceplugin -eq 1 ]]; then
    # This section's runs replace their part of bench.json; the rest of an
    # earlier full run stays as it was.
    python3 "$repo/hack/bench/report.py" --cni "$out/cni.json" --deviceplugin-dir "$out" \
        --deviceplugin-only --out "$out/bench.json"
    exit 0
fi
python3 "$repo/hack/bench/report.py" --cni "$out/cni.json" --daemon "$out/daemon.json" \
    --trunk "$out/trunk.json" --memory "$out/memory.json" --calibrate-host "$out/calibrate-host.json" --deviceplugin-dir "$out" \
    --out "$out/bench.json" --argv="$argv" --quick "$quick"
