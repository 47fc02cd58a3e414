# Source it; never run it. For scripts that run podman inside a network
# namespace of their own (hack/podman-e2e.sh, hack/daemonset-e2e.sh).

# Kills whatever still runs in this shell's network namespace (a conmon, a
# container process that podman left behind): in a namespace the script made
# itself, everything but this shell and its ancestors was started by it.
kill_netns_leftovers() {
    local me pid keep=" " p=$BASHPID
    while [[ $p -gt 1 ]]; do
        keep+="$p "
        p=$(awk '{print $4}' "/proc/$p/stat")
    done
    me=$(readlink /proc/self/ns/net)
    for pid in $(ls /proc | grep -E '^[0-9]+$'); do
        [[ $keep == *" $pid "* ]] && continue
        [[ $(readlink "/proc/$pid/ns/net" 2>/dev/null) == "$me" ]] || continue
        echo "cleanup: killing leftover $(cat "/proc/$pid/comm" 2>/dev/null) ($pid)"
        kill -KILL "$pid" 2>/dev/null || true
    done
}
