#!/usr/bin/env bash
# hack/vm.sh: run commands inside a throwaway QEMU VM (virtme-ng) that boots a
# full Debian kernel, for the tests that need 802.1Q VLAN sub-interfaces,
# bridge vlan_filtering or dummy links, which the CI kernel lacks.
#
#   hack/vm.sh --ensure        install what is missing (apt/pip), quietly
#   hack/vm.sh --has-8021q     exit 0 if the *running* kernel can make VLANs
#   hack/vm.sh --selftest      boot once, check VLAN/bridge/nft/host binaries
#   hack/vm.sh CMD...          run CMD in the VM (one arg: a shell string;
#                              several args: an argv), exit with CMD's status
#
# Environment (host side):
#   PORTGROUP_VM_KERNEL   kernel image (default: newest /boot/vmlinuz-*)
#   PORTGROUP_VM_MEMORY   guest memory (default 1G)
#   PORTGROUP_VM_CPUS     guest CPUs (default: min(2, nproc))
#   PORTGROUP_VM_RWDIRS   extra host dirs (colon separated) the guest may write;
#                         created if missing. The repo (git top level of $PWD,
#                         else $PWD) and $CARGO_TARGET_DIR are always shared rw.
#   PORTGROUP_VM_TIMEOUT  kill the VM after this many seconds (default: none)
#   PORTGROUP_VM_KEEP=1   keep the per-run temp dir (runner script, rc, env)
# Host variables named PORTGROUP_*, RUST_*, CARGO_*, NEXTEST_* are passed into
# the guest. Inside, PORTGROUP_IN_VM=1 is set, the working directory is the
# host's $PWD, and PATH is the host's PATH plus the sbin directories.
#
# Gotchas found with virtme-ng 1.42, QEMU TCG, Debian kernel 6.1:
# - Never pass KVM: use `--disable-kvm` (on the CI host /dev/kvm hangs).
#   Under TCG vng picks `-machine q35` (microvm needs virtiofsd, which is not
#   installed), so the root is shared over 9p. Boot to a trivial command takes
#   ~20 s, ~30 s for the self test. TCG is single-threaded per vCPU; 2 vCPUs
#   on the 2 host cores does no harm.
# - vng DOES propagate the guest command's exit status (it reads it from a
#   `virtme.ret` virtio serial port). We still write it to a file in a
#   shared temp dir and prefer that, so a guest crash or kernel panic (no rc
#   file) is told apart from the command failing.
# - The guest root is the host's `/` over 9p, READ-ONLY. Without `--rw` (which
#   we never use: it lets the guest write the host's whole root) vng puts a
#   tmpfs-backed overlay on /etc /lib /home /opt /srv /usr /var /tmp: writable
#   in the guest, but the writes are THROWN AWAY and never reach the host.
#   Everything else (/root, /work, ...) is read-only. So anything the guest
#   must hand back (target/, results under /tmp) needs `--rwdir=PATH`; we
#   pass the repo, $CARGO_TARGET_DIR, the per-run temp dir and
#   $PORTGROUP_VM_RWDIRS. An rwdir below /tmp works (mounted over the overlay).
#   /root is read-only inside: `cargo build` in the guest cannot write
#   ~/.cargo; build on the host and run the binaries (or a nextest archive)
#   in the guest.
# - /run is a fresh guest tmpfs (not the host's /run). `ip netns add` works
#   out of the box (it creates /run/netns and its bind mount itself); so does
#   `unshare -n`. The host's /run/netns is never touched.
# - The guest has its own kernel and network stack, so creating links there is
#   safe. Modules load on demand from the host's /lib/modules/<ver> (vng
#   passes virtme_root_mods=1): 8021q, bridge, dummy, nf_tables all work, so
#   the kernel image must have its modules installed (linux-image-amd64 does).
# - /dev/net/tun does not exist until `modprobe tun`. cgroup2 is mounted at
#   /sys/fs/cgroup. No network to the outside (vng runs QEMU with -net none).
# - vng does not pass the host environment (the guest gets HOME, PATH=/sbin:
#   /usr/sbin:/bin:/usr/bin..., TERM): we write an env file and source it.
#   The guest PATH lacks /root/.cargo/bin and /usr/local/bin, hence ours.
# - Guest stdout and stderr arrive on separate virtio ports, so their
#   interleaving on a shared terminal is not exact; use `2>&1` inside CMD if
#   the order matters. Output is streamed, not buffered until exit.
# - QEMU writes the guest's stdout/stderr by opening /proc/self/fd/1 and 2
#   again: when those are regular files (`hack/vm.sh ... >log`), it writes at
#   its own offset 0 and overwrites the host's lines (and vice versa). We
#   always hand vng pipes (through cat) to avoid that.
# - Running tests: build on the host, `cargo nextest archive --archive-file
#   target/t.tar.zst`, then `hack/vm.sh cargo nextest run --archive-file
#   target/t.tar.zst --workspace-remap .` (verified: extraction goes to the
#   guest's /tmp overlay, ~/.cargo read-only is fine). Avoid building inside
#   the guest: slow under TCG, and cargo's lock on target/ is not known to
#   hold between host and guest over 9p (untested; do not race a host build).
# - vng forks sh -> virtme-run -> qemu: killing only the vng PID orphans QEMU.
#   The timeout below kills the whole process group.
set -euo pipefail

SELF=$(readlink -f "${BASH_SOURCE[0]}")
CLEANUP=()
cleanup() { ((${#CLEANUP[@]} == 0)) || rm -rf -- "${CLEANUP[@]}"; }
trap cleanup EXIT

usage() {
	sed -n '2,24p' "$SELF" | sed 's/^# \{0,1\}//'
	exit "${1:-2}"
}

die() { echo "vm.sh: $*" >&2; exit 125; }

# ---------------------------------------------------------------- --ensure
ensure() {
	# One place installs packages for every script (qemu must match qemu-utils).
	"$(dirname "$SELF")/install-deps.sh" >&2 || die "installing what the VM needs failed (see above)"
	compgen -G '/boot/vmlinuz-*' >/dev/null || die "no /boot/vmlinuz-* after install"
}

# ---------------------------------------------------------------- --has-8021q
# Probe in a throwaway network namespace: never create links on the host.
has_8021q() {
	unshare -n sh -c '
		ip link add vA type veth peer name vB &&
		ip link add link vA name vA.100 type vlan id 100' >/dev/null 2>&1 || return 1
}

# ---------------------------------------------------------------- run in VM
pick_kernel() {
	local k=${PORTGROUP_VM_KERNEL:-}
	if [[ -z $k ]]; then
		k=$(ls -1 /boot/vmlinuz-* 2>/dev/null | sort -V | tail -n1) ||
			true
	fi
	[[ -n $k && -r $k ]] || die "no kernel image (/boot/vmlinuz-*); run: hack/vm.sh --ensure"
	local ver=${k##*/vmlinuz-}
	[[ -d /lib/modules/$ver ]] ||
		echo "vm.sh: warning: /lib/modules/$ver missing; 8021q/bridge modules will not load" >&2
	printf '%s\n' "$k"
}

# run_vm CMD... : boot the VM, run CMD (one arg: shell string; more: argv).
run_vm() {
	command -v vng >/dev/null 2>&1 || die "vng not found; run: hack/vm.sh --ensure"
	local kernel cmd tmp repo rc cpus name
	kernel=$(pick_kernel)
	if (($# == 1)); then
		cmd=$1
	else
		cmd=$(printf '%q ' "$@")
	fi

	tmp=$(mktemp -d "${TMPDIR:-/tmp}/portgroup-vm.XXXXXX")
	if [[ ${PORTGROUP_VM_KEEP:-0} == 1 ]]; then
		echo "vm.sh: keeping $tmp" >&2
	else
		CLEANUP+=("$tmp")
	fi

	# Directories the guest may write, visible on the host afterwards.
	local -a rw=("$tmp")
	repo=$(git -C "$PWD" rev-parse --show-toplevel 2>/dev/null || printf '%s' "$PWD")
	[[ $repo != / ]] && rw+=("$repo")
	if [[ -n ${CARGO_TARGET_DIR:-} ]]; then
		mkdir -p "$CARGO_TARGET_DIR"
		rw+=("$(readlink -f "$CARGO_TARGET_DIR")")
	fi
	local IFS_save=$IFS d
	IFS=:
	for d in ${PORTGROUP_VM_RWDIRS:-}; do
		[[ -n $d ]] || continue
		mkdir -p "$d"
		rw+=("$(readlink -f "$d")")
	done
	IFS=$IFS_save

	# Environment for the guest (vng passes none of ours).
	{
		for name in $(compgen -e); do
			[[ $name =~ ^(PORTGROUP_|RUST_|CARGO_|NEXTEST_) ]] || continue
			printf 'export %s=%q\n' "$name" "${!name}"
		done
		local path=$PATH
		for d in /usr/local/sbin /usr/local/bin /usr/sbin /usr/bin /sbin /bin; do
			[[ :$path: == *":$d:"* ]] || path+=:$d
		done
		printf 'export PATH=%q\n' "$path"
		printf 'export PORTGROUP_IN_VM=1\n'
	} >"$tmp/env"

	cat >"$tmp/run" <<-EOF
		#!/bin/bash
		. $(printf '%q' "$tmp/env")
		cd $(printf '%q' "$PWD") || exit 125
		bash -c $(printf '%q' "$cmd")
		rc=\$?
		echo "\$rc" >$(printf '%q' "$tmp/rc")
		exit "\$rc"
	EOF

	cpus=${PORTGROUP_VM_CPUS:-$(($(nproc) < 2 ? $(nproc) : 2))}
	local -a vng=(vng --run "$kernel" --disable-kvm
		--memory "${PORTGROUP_VM_MEMORY:-1G}" --cpus "$cpus"
		--name portgroup-vm --cwd "$PWD")
	for d in "${rw[@]}"; do vng+=("--rwdir=$d"); done
	vng+=(--exec "bash $tmp/run")

	local -a pre=()
	if [[ -n ${PORTGROUP_VM_TIMEOUT:-} && ${PORTGROUP_VM_TIMEOUT} != 0 ]]; then
		# timeout signals its whole process group: vng, virtme-run and qemu.
		pre=(timeout -k 10 "$PORTGROUP_VM_TIMEOUT")
	fi

	# QEMU opens /proc/self/fd/1 and /proc/self/fd/2 afresh: if they are
	# regular files, it writes from offset 0 with its own file offset and
	# clobbers whatever we (or the caller) wrote. Hand it pipes instead.
	{
		{
			"${pre[@]}" "${vng[@]}"
			echo $? >"$tmp/vng-rc"
		} 2>&1 1>&3 3>&- | cat >&2
	} 3>&1 | cat
	rc=$(cat "$tmp/vng-rc" 2>/dev/null || echo 125)
	if [[ -s $tmp/rc ]]; then
		local grc
		grc=$(<"$tmp/rc")
		((grc == rc)) || [[ -n ${pre[*]} ]] ||
			echo "vm.sh: note: vng returned $rc but CMD exited $grc; using $grc" >&2
		return "$grc"
	fi
	echo "vm.sh: the VM exited (vng status $rc) without reporting CMD's status (boot failure, panic or timeout)" >&2
	return $((rc == 0 ? 125 : rc))
}

# ---------------------------------------------------------------- --selftest
# Guest half: runs inside the VM. $1 = the exchange dir on the host, $2 = host epoch.
selftest_guest() {
	local xfer=$1 t0=$2 fails=0 now
	now=$(date +%s.%N)
	echo "guest: command started $(awk -v a="$now" -v b="$t0" 'BEGIN{printf "%.1f", a-b}') s after launch (kernel uptime $(cut -d' ' -f1 /proc/uptime) s)"

	check() { # check NAME CMD...
		local name=$1 out
		shift
		if out=$("$@" 2>&1); then
			echo "  ok   $name"
		else
			echo "  FAIL $name"
			printf '%s\n' "$out" | sed 's/^/       | /'
			fails=$((fails + 1))
		fi
	}

	check "PORTGROUP_IN_VM=1" test "${PORTGROUP_IN_VM:-}" = 1
	check "guest kernel has 802.1Q (has-8021q)" "$SELF" --has-8021q
	check "ip, nft, ping on PATH" sh -c 'command -v ip && command -v nft && command -v ping && command -v bridge'

	# Topology:  [pgst-peer] vb.100 10.99.100.2 --- vb ==veth trunk== va ---
	#            [pgst-node] va.100 (first with an IP, then a port of br100)
	#            [pgst-pod]  p0 10.99.100.3 == p0h port of br100
	local -a ns_node=(ip netns exec pgst-node) ns_pod=(ip netns exec pgst-pod)
	check "ip netns add" sh -c 'ip netns add pgst-peer && ip netns add pgst-node && ip netns add pgst-pod'
	check "veth trunk + VLAN 100 sub-interfaces" sh -c '
		set -e
		ip link add va netns pgst-node type veth peer name vb netns pgst-peer
		ip -n pgst-node link add link va name va.100 type vlan id 100
		ip -n pgst-peer link add link vb name vb.100 type vlan id 100
		for n in pgst-node pgst-peer pgst-pod; do ip -n $n link set lo up; done
		ip -n pgst-node link set va up; ip -n pgst-node link set va.100 up
		ip -n pgst-peer link set vb up; ip -n pgst-peer link set vb.100 up
		ip -n pgst-node addr add 10.99.100.1/24 dev va.100
		ip -n pgst-peer addr add 10.99.100.2/24 dev vb.100'
	check "ping across VLAN 100 (node -> peer)" "${ns_node[@]}" ping -c 2 -W 3 -i 0.2 10.99.100.2
	if command -v tcpdump >/dev/null 2>&1; then
		check "frames on the trunk carry tag 100" sh -c '
			ip netns exec pgst-peer timeout 10 tcpdump -l -nei vb -c 2 "vlan 100 and icmp" >/tmp/pgst-tcpdump 2>&1 &
			sleep 1.5
			ip netns exec pgst-node ping -c 3 -W 2 -i 0.3 10.99.100.2 >/dev/null
			wait
			cat /tmp/pgst-tcpdump; grep -q "vlan 100" /tmp/pgst-tcpdump'
	fi
	check "VLAN 200 and VLAN 201 do not talk" sh -c '
		set -e
		ip -n pgst-node link add link va name va.200 type vlan id 200
		ip -n pgst-peer link add link vb name vb.201 type vlan id 201
		ip -n pgst-node link set va.200 up; ip -n pgst-peer link set vb.201 up
		ip -n pgst-node addr add 10.99.200.1/24 dev va.200
		ip -n pgst-peer addr add 10.99.200.2/24 dev vb.201
		! ip netns exec pgst-node ping -c 1 -W 1 10.99.200.2'
	check "bridge with the VLAN sub-interface as port; pod -> peer ping" sh -c '
		set -e
		ip -n pgst-node addr flush dev va.100
		ip -n pgst-node link add br100 type bridge
		ip -n pgst-node link set va.100 master br100
		ip -n pgst-node link set br100 up
		ip link add p0h netns pgst-node type veth peer name p0 netns pgst-pod
		ip -n pgst-node link set p0h master br100
		ip -n pgst-node link set p0h up
		ip -n pgst-pod link set p0 address 00:50:56:aa:bb:01
		ip -n pgst-pod link set p0 up
		ip -n pgst-pod addr add 10.99.100.3/24 dev p0
		ip netns exec pgst-pod ping -c 2 -W 3 -i 0.2 10.99.100.2'
	check "bridge vlan_filtering" sh -c 'ip -n pgst-node link add brvf type bridge vlan_filtering 1 && ip -n pgst-node link del brvf'
	check "dummy links" sh -c 'ip -n pgst-node link add d0 type dummy && ip -n pgst-node link del d0'
	check "nftables bridge family (table, forward chain, MAC rule)" "${ns_node[@]}" sh -c '
		set -e
		nft add table bridge t
		nft add chain bridge t pgfwd "{ type filter hook forward priority 0; policy accept; }"
		nft add rule bridge t pgfwd iifname p0h ether saddr != 00:50:56:aa:bb:01 drop
		nft list table bridge t'
	check "bridge forwarding still works with the nft rule" "${ns_pod[@]}" ping -c 1 -W 3 10.99.100.2
	check "unshare -n" unshare -n ip link show lo
	check "binary built on the host runs" sh -c "'$xfer/hello' | grep -qx 'hello from the host'"
	check "write to the shared temp dir" sh -c "echo ok >'$xfer/from-guest'"
	check "write to the repo's target/" sh -c "mkdir -p target/vm-selftest && echo ok >target/vm-selftest/from-guest"
	check "cwd is the host's" test "$PWD" = "$(cat "$xfer/host-pwd")"
	ip netns del pgst-pod 2>/dev/null || true
	ip netns del pgst-node 2>/dev/null || true
	ip netns del pgst-peer 2>/dev/null || true
	((fails == 0))
}

selftest() {
	local xfer t0 t1 rc=0 repo
	xfer=$(mktemp -d "${TMPDIR:-/tmp}/portgroup-vm-selftest.XXXXXX")
	CLEANUP+=("$xfer")
	repo=$(git -C "$PWD" rev-parse --show-toplevel 2>/dev/null || printf '%s' "$PWD")
	rm -rf "$repo/target/vm-selftest"
	printf '%s\n' "$PWD" >"$xfer/host-pwd"
	if command -v cc >/dev/null 2>&1; then
		printf '#include <stdio.h>\nint main(void){puts("hello from the host");return 0;}\n' |
			cc -x c -o "$xfer/hello" -
	else
		printf '#!/bin/sh\necho "hello from the host"\n' >"$xfer/hello"
		chmod +x "$xfer/hello"
	fi

	echo "selftest: booting $(pick_kernel) (TCG, ${PORTGROUP_VM_MEMORY:-1G})"
	t0=$(date +%s.%N)
	PORTGROUP_VM_RWDIRS="$xfer${PORTGROUP_VM_RWDIRS:+:$PORTGROUP_VM_RWDIRS}" \
		run_vm "$SELF" --selftest-guest "$xfer" "$t0" || rc=$?
	t1=$(date +%s.%N)

	# Host half: are the guest's writes visible here?
	if [[ $(cat "$xfer/from-guest" 2>/dev/null) == ok ]]; then
		echo "  ok   host sees the guest's file in the shared temp dir"
	else
		echo "  FAIL host does not see the guest's file in the shared temp dir"; rc=1
	fi
	if [[ $(cat "$repo/target/vm-selftest/from-guest" 2>/dev/null) == ok ]]; then
		echo "  ok   host sees the guest's file under target/"
	else
		echo "  FAIL host does not see the guest's file under target/"; rc=1
	fi
	rm -rf "$repo/target/vm-selftest"
	printf 'selftest: boot + run took %.1f s\n' "$(awk -v a="$t1" -v b="$t0" 'BEGIN{print a-b}')"
	if ((rc == 0)); then echo "selftest: PASS"; else echo "selftest: FAIL"; fi
	return "$rc"
}

# ---------------------------------------------------------------- main
(($# > 0)) || usage
case $1 in
-h | --help) usage 0 ;;
--ensure) ensure ;;
--has-8021q) has_8021q ;;
--selftest) selftest ;;
--selftest-guest)
	[[ ${PORTGROUP_IN_VM:-} == 1 ]] || die "--selftest-guest runs inside the VM only"
	shift
	selftest_guest "$@"
	;;
--) shift; (($# > 0)) || usage; run_vm "$@" ;;
-*) echo "vm.sh: unknown option $1" >&2; usage ;;
*) run_vm "$@" ;;
esac
