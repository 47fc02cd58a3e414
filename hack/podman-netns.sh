# Source it; never run it. The cleanup halves shared by the scripts that re-run
# themselves under unshare to run podman in a network namespace of their own
# (hack/podman-e2e.sh, hack/daemonset-e2e.sh).

# Outside: stops the script running inside (pid `child`, the unshare) and removes
# the work directory. unshare --fork ignores SIGINT and SIGTERM while it waits,
# so the script inside is signalled, and cleans up before it exits. Only an
# empty mount point is ever visible here: the tmpfs lives in the private mount
# namespace.
stop_inner_script() {
    local child=$1 work=$2 inner
    if [[ -n $child ]] && kill -0 "$child" 2>/dev/null; then
        inner=$(ps -o pid= --ppid "$child" || true)
        [[ -n $inner ]] && kill -TERM $inner 2>/dev/null
        wait "$child" 2>/dev/null || true
    fi
    rm -rf "$work"
}

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
