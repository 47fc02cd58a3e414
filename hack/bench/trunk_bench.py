#!/usr/bin/env python3
"""portgroupd benchmark for trunk portgroups: converge a trunk of N VIDs from
nothing (`portgroupd --once`), a no-op reconcile at N, and back to nothing,
against the floor: one `ip -batch` process making the same links (per VID: the
uplink sub-interface, its bridge, the trunk's sub-interface, two attaches, three
ups; plus the trunk bridge and its veth pair), without the marks.

Needs 802.1Q: run it where the kernel has it, or in the test VM:
  hack/vm.sh "python3 hack/bench/trunk_bench.py --daemon target/release/portgroupd"
Under QEMU TCG absolute times are inflated several-fold; the ratio to the floor,
measured in the same run, holds.

With --rounds R (> 1), after that run, R interleaved rounds time only the
converge from nothing: portgroupd, each --compare binary and the floor, each in
a fresh namespace (deleted afterwards, then waiting for the kernel's cleanup to
finish), the order rotated per round; medians and the median of the per-round
ratios are printed. One run at a time is noisy on a shared or emulated host.

Every contender runs from a copy in a tmpfs (/dev/shm): in the test VM the
host's files arrive over 9p, and exec'ing a binary from there reads it again
each time, which at 100 VIDs cost more than the links themselves (a `--help`
took 0.24-0.35 s from the 9p copy, 0.08-0.12 s from tmpfs). On a node the binary
is in the page cache. `ip` is copied too, so the floor is taken the same way.

Every run makes its own namespace (pgtbench-<random>) and deletes it; never
touches the namespace it was started in.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time


# The floor's `ip`; main() points it at a tmpfs copy.
IP = "ip"
# Each tmpfs copy's original path, which the report names.
ORIGIN: dict[str, str] = {}


def sh(*args: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=check, input=stdin, text=True, capture_output=True)


class Node:
    def __init__(self) -> None:
        self.name = "pgtbench-%08x" % random.getrandbits(32)
        sh("ip", "netns", "add", self.name)
        self.ip("link", "add", "eth1", "type", "veth", "peer", "name", "sw0")
        self.ip("link", "set", "eth1", "up")
        self.ip("link", "set", "sw0", "up")

    def ip(self, *args: str) -> None:
        sh("ip", "-n", self.name, *args)

    def count_links(self, prefix: str) -> int:
        out = sh("ip", "-n", self.name, "-o", "link", "show").stdout
        return sum(1 for line in out.splitlines() if line.split(": ")[1].startswith(prefix))

    def close(self) -> None:
        sh("ip", "netns", "del", self.name, check=False)


def timed(args: list[str], stdin: str | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(args, check=True, input=stdin, text=True, capture_output=True)
    return time.perf_counter() - start


def daemon_run(daemon: str, node: Node, work: str, config: dict) -> float:
    path = os.path.join(work, "config.json")
    with open(path, "w") as f:
        json.dump(config, f)
    # Into the namespace the way `ip -n` takes the floor there: setns alone.
    # `ip netns exec` also makes a mount namespace and remounts /sys, which costs
    # more than a trunk of 100 VIDs' difference under TCG; portgroupd reads no sysfs.
    enter = (["nsenter", f"--net=/run/netns/{node.name}"] if shutil.which("nsenter")
             else ["ip", "netns", "exec", node.name])
    return timed([*enter, daemon, "--config", path,
                  "--run-dir", os.path.join(work, "run"), "--node-name", "bench", "--once",
                  "--log-level", "warn"])


def floor_batch(n: int) -> str:
    lines = ["link add pgtbfloor type bridge",
             "link add pgtpfloor type veth peer name pgtqfloor",
             "link set pgtpfloor master pgtbfloor",
             "link set pgtbfloor up", "link set pgtpfloor up", "link set pgtqfloor up"]
    for vid in range(1, n + 1):
        lines += [
            f"link add link eth1 name fv.{vid} type vlan id {vid}",
            f"link add fb.{vid} type bridge",
            f"link set fv.{vid} master fb.{vid}",
            f"link add link pgtqfloor name fq.{vid} type vlan id {vid}",
            f"link set fq.{vid} master fb.{vid}",
            f"link set fv.{vid} up", f"link set fb.{vid} up", f"link set fq.{vid} up",
        ]
    return "\n".join(lines) + "\n"


def one(daemon: str, n: int) -> dict:
    work = tempfile.mkdtemp(prefix="pgtbench-")
    node = Node()
    try:
        trunk = {"uplink": "eth1", "portgroups": [{"name": "fw", "trunk": f"1-{n}"}]}
        up = daemon_run(daemon, node, work, trunk)
        with open(os.path.join(work, "run", "state.json")) as f:
            state = json.load(f)
        ready = state["portgroups"][0]["ready"]
        subs = node.count_links("pgq")
        noop = daemon_run(daemon, node, work, trunk)
        down = daemon_run(daemon, node, work, {"uplink": "eth1", "portgroups": []})
        left = node.count_links("pg")
        floor = timed([IP, "-n", node.name, "-batch", "-"], stdin=floor_batch(n))
        return {"vids": n, "ready": ready, "subinterfaces": subs, "left_after_down": left,
                "up_s": up, "noop_s": noop, "down_s": down, "floor_s": floor,
                "up_over_floor": up / floor}
    finally:
        node.close()
        shutil.rmtree(work, ignore_errors=True)


def cpu_idle_fraction(window: float) -> float:
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        return fields[3] + fields[4], sum(fields)
    idle0, total0 = sample()
    time.sleep(window)
    idle1, total1 = sample()
    return (idle1 - idle0) / max(1, total1 - total0)


def settle(limit: float = 120.0) -> None:
    """Waits for the kernel to finish tearing a namespace down (it does so in a
    workqueue, after `ip netns del` returns), so it does not eat the next run."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and cpu_idle_fraction(0.5) < 0.9:
        pass


def converge_up(daemon: str | None, n: int) -> float:
    """The converge from nothing alone, in a fresh namespace: portgroupd's, or
    the floor's when daemon is None."""
    work = tempfile.mkdtemp(prefix="pgtbench-")
    node = Node()
    try:
        if daemon is None:
            return timed([IP, "-n", node.name, "-batch", "-"], stdin=floor_batch(n))
        trunk = {"uplink": "eth1", "portgroups": [{"name": "fw", "trunk": f"1-{n}"}]}
        return daemon_run(daemon, node, work, trunk)
    finally:
        node.close()
        shutil.rmtree(work, ignore_errors=True)
        settle()


def median(xs: list[float]) -> float:
    xs = sorted(xs)
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def rounds(daemons: list[str], n: int, count: int) -> dict:
    contenders: list[str | None] = [*daemons, None]
    times: dict[str, list[float]] = {d or "floor": [] for d in contenders}
    settle()
    for r in range(count):
        shift = r % len(contenders)
        for d in contenders[shift:] + contenders[:shift]:
            times[d or "floor"].append(converge_up(d, n))
    floor = times["floor"]
    out = {"vids": n, "rounds": count, "floor_median_up_s": median(floor),
           "up_s": {ORIGIN.get(d, d): t for d, t in times.items()}}
    for i, d in enumerate(daemons):
        ratios = [t / f for t, f in zip(times[d], floor)]
        row = {"median_up_s": median(times[d]), "median_ratio": median(ratios),
               "ratios": [round(x, 3) for x in ratios]}
        out[ORIGIN.get(d, d)] = row
        if i == 0:
            # The --daemon binary's row under a fixed key, for hack/bench/report.py.
            out["daemon"] = row
        print("trunk of %4d VIDs, %d rounds: %s up median %.2f s | floor median %.2f s | "
              "median of per-round up/floor %.2fx (%s)"
              % (n, count, os.path.basename(d), median(times[d]), median(floor),
                 median(ratios), " ".join("%.2f" % x for x in ratios)), flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--daemon", required=True)
    parser.add_argument("--vids", default="100,1000")
    parser.add_argument("--out")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--no-check", action="store_true",
                        help="with --rounds: skip the checked run (up, no-op, down) before them")
    parser.add_argument("--compare", action="append", default=[],
                        help="another portgroupd binary to time in the rounds (repeatable)")
    opts = parser.parse_args()
    global IP
    local = tempfile.mkdtemp(prefix="pgtbench-bin-",
                             dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
    try:
        IP = local_copy(shutil.which("ip") or "/usr/sbin/ip", local, "floor")
        opts.daemon = local_copy(os.path.abspath(opts.daemon), local, "daemon")
        opts.compare = [local_copy(os.path.abspath(d), local, "compare-%d" % i)
                        for i, d in enumerate(opts.compare)]
        return measure(opts)
    finally:
        shutil.rmtree(local, ignore_errors=True)


def local_copy(path: str, directory: str, slot: str) -> str:
    """Copies a contender into the tmpfs (its own subdirectory, so two binaries
    of the same name do not collide), keeping its name for the report."""
    os.makedirs(os.path.join(directory, slot))
    target = os.path.join(directory, slot, os.path.basename(path))
    shutil.copy2(path, target)
    ORIGIN[target] = path
    return target


def measure(opts: argparse.Namespace) -> int:
    rows = []
    for n in [int(v) for v in opts.vids.split(",")]:
        if opts.no_check and opts.rounds > 1:
            daemons = [os.path.abspath(d) for d in [opts.daemon, *opts.compare]]
            rows.append({"vids": n, "rounds": rounds(daemons, n, opts.rounds)})
            continue
        row = one(os.path.abspath(opts.daemon), n)
        rows.append(row)
        print("trunk of %4d VIDs: ready=%s sub-interfaces=%d | up %.2f s, no-op %.2f s, down %.2f s "
              "| ip -batch floor %.2f s | up/floor %.2fx | links left %d"
              % (n, row["ready"], row["subinterfaces"], row["up_s"], row["noop_s"], row["down_s"],
                 row["floor_s"], row["up_over_floor"], row["left_after_down"]), flush=True)
        if not row["ready"] or row["subinterfaces"] != n or row["left_after_down"] != 0:
            print("FAILED: the trunk did not converge as it must", file=sys.stderr)
            return 1
        if opts.rounds > 1:
            daemons = [os.path.abspath(d) for d in [opts.daemon, *opts.compare]]
            row["rounds"] = rounds(daemons, n, opts.rounds)
    if opts.out:
        with open(opts.out, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
