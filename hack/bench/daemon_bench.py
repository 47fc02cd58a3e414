#!/usr/bin/env python3
"""portgroupd benchmark (issue 6): converge from nothing to N portgroups and back,
drift repair latency, resident memory, idle CPU; and, while VLAN portgroups exist,
the CNI rows in portgroup mode (pg-portgroup against the reference and the floor,
interleaved, on the portgroup's own bridge).

VLAN portgroups need 802.1Q. hack/bench.sh runs this directly when the kernel has
it and otherwise inside the test VM (hack/vm.sh): there QEMU runs under TCG, so
absolute times are inflated several-fold; ratios measured in the same run hold.

The outer invocation makes its own namespaces (<tag>-dnode and pods <tag>-dp<i>),
re-runs itself inside the node namespace (--inner), and deletes them all on exit.
Never touches the namespace it was started in.

portgroupd is driven through its command line (DESIGN.md):
  portgroupd --config FILE --node-name NAME --run-dir DIR [--once]
and its node state <run-dir>/state.json (portgroups[].ready, .bridge, .vlanInterface).
The uplink is a veth end (pgbup0) inside the node namespace.

Rows:
  converge   for N in 10,100,1000,4094 (--quick: 10,100): `--once` from nothing to N
             (wall, CPU, peak RSS from wait4), a no-op `--once` at N, `--once` back to 0;
             checks N ready in state.json and N bridges, then none.
  drift      a long-running daemon at --drift-n portgroups; delete one bridge, time from
             the kernel's RTM_DELLINK to the bridge being back, up, with its VLAN
             interface enslaved again (seen on an rtnetlink monitor socket); p50/p99.
  memory     VmRSS of the long-running daemon idle at --drift-n, and after starting it
             at 1000 portgroups (ready, then settled 2 s).
  idle cpu   utime+stime of the idle daemon over --idle-seconds, as % of one core.
  cni        cni_bench.py --sections seq with a pg-portgroup contender.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from benchlib import percentile, run, summary_ms  # noqa: E402

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
UPLINK = "pgbup0"
RTMGRP_LINK = 1
RTM_NEWLINK, RTM_DELLINK = 16, 17
IFLA_IFNAME, IFLA_MASTER = 3, 10
IFF_UP = 1


def sh(*argv, check=True):
    r = subprocess.run(argv, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{argv}: {r.stderr.strip()}")
    return r.stdout


def config(n, path):
    conf = {"uplink": UPLINK, "portgroups": [{"name": f"pg{v}", "vlan": v} for v in range(1, n + 1)]}
    with open(path + ".tmp", "w") as f:
        json.dump(conf, f)
    os.rename(path + ".tmp", path)


def read_state(run_dir):
    try:
        with open(os.path.join(run_dir, "state.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def bridges():
    return [n for n in os.listdir("/sys/class/net") if os.path.isdir(f"/sys/class/net/{n}/bridge")]


def daemon_argv(a, conf, once):
    argv = [a.daemon, "--config", conf, "--node-name", "bench", "--run-dir", a.run_dir]
    return argv + (["--once"] if once else [])


def daemon_env(a):
    return {"PATH": PATH, "PORTGROUP_RUN_DIR": a.run_dir, "NODE_NAME": "bench"}


# --- converge ------------------------------------------------------------------


def converge(a):
    rows = []
    conf = os.path.join(a.run_dir, "config.json")
    for n in a.levels:
        row = {"n": n}
        config(n, conf)
        r = run(daemon_argv(a, conf, True), daemon_env(a))
        state = read_state(a.run_dir) or {}
        ready = sum(1 for p in state.get("portgroups", []) if p.get("ready"))
        row.update(up_s=round(r.wall_ns / 1e9, 3), up_cpu_s=round(r.cpu_ns / 1e9, 3), rc_up=r.rc,
                   ready=ready, bridges=len(bridges()), peak_rss_mib=round(_maxrss_kib(r) / 1024, 1))
        if r.rc != 0:
            row["error"] = (r.stderr or r.stdout).decode(errors="replace")[-400:]
        r2 = run(daemon_argv(a, conf, True), daemon_env(a))
        row["noop_s"] = round(r2.wall_ns / 1e9, 3)
        config(0, conf)
        r3 = run(daemon_argv(a, conf, True), daemon_env(a))
        row.update(down_s=round(r3.wall_ns / 1e9, 3), rc_down=r3.rc, bridges_left=len(bridges()))
        rows.append(row)
        print(f"  converge {n}: up {row['up_s']} s ({ready} ready), no-op {row['noop_s']} s, "
              f"down {row['down_s']} s", file=sys.stderr)
    return rows


def _maxrss_kib(r):
    return r.maxrss_kib


# --- long-running daemon --------------------------------------------------------


class Daemon:
    def __init__(self, a, n):
        self.a = a
        self.conf = os.path.join(a.run_dir, f"config-{n}.json")
        config(n, self.conf)
        try:
            os.unlink(os.path.join(a.run_dir, "state.json"))
        except FileNotFoundError:
            pass
        self.log = open(os.path.join(a.run_dir, f"daemon-{n}.log"), "wb")
        self.t0 = time.perf_counter()
        self.p = subprocess.Popen(daemon_argv(a, self.conf, False), env=daemon_env(a),
                                  stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, n, timeout):
        end = time.perf_counter() + timeout
        while time.perf_counter() < end:
            s = read_state(self.a.run_dir)
            if s and sum(1 for p in s.get("portgroups", []) if p.get("ready")) == n:
                return time.perf_counter() - self.t0, s
            if self.p.poll() is not None:
                raise RuntimeError(f"portgroupd exited {self.p.returncode}")
            time.sleep(0.01)
        raise TimeoutError(f"{n} portgroups not ready after {timeout} s")

    def rss_kib(self):
        for line in open(f"/proc/{self.p.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return None

    def cpu_s(self):
        fields = open(f"/proc/{self.p.pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.log.close()


class LinkMonitor:
    """rtnetlink RTMGRP_LINK events: name -> (index, up, master)."""

    def __init__(self):
        self.s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
        self.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.s.bind((0, RTMGRP_LINK))

    def events(self, timeout):
        r, _, _ = select.select([self.s], [], [], timeout)
        if not r:
            return []
        data, t = self.s.recv(1 << 20), time.perf_counter()
        out, off = [], 0
        while off + 16 <= len(data):
            ln, typ = struct.unpack_from("=IH", data, off)
            if ln < 16:
                break
            if typ in (RTM_NEWLINK, RTM_DELLINK) and ln >= 32:
                _, _, _, index, flags, _ = struct.unpack_from("=BBHiII", data, off + 16)
                name, master, aoff = None, None, off + 32
                while aoff + 4 <= off + ln:
                    alen, atype = struct.unpack_from("=HH", data, aoff)
                    if alen < 4:
                        break
                    payload = data[aoff + 4:aoff + alen]
                    if atype == IFLA_IFNAME:
                        name = payload.split(b"\0", 1)[0].decode()
                    elif atype == IFLA_MASTER and len(payload) >= 4:
                        master = struct.unpack_from("=I", payload)[0]
                    aoff += (alen + 3) & ~3
                out.append({"t": t, "type": typ, "name": name, "index": index,
                            "up": bool(flags & IFF_UP), "master": master})
            off += (ln + 3) & ~3
        return out


def drift(a, d, state):
    pgs = [p for p in state["portgroups"] if p.get("ready")]
    mon = LinkMonitor()
    lat, fails = [], 0
    rng = random.Random(6)
    for rep in range(a.drift_reps):
        pg = rng.choice(pgs)
        br, vif = pg["bridge"], pg.get("vlanInterface")
        sh("ip", "link", "del", br)
        t_del, bridge_idx, bridge_up, enslaved = None, None, False, vif is None
        end = time.perf_counter() + 10
        while time.perf_counter() < end:
            for ev in mon.events(0.5):
                if ev["name"] == br and ev["type"] == RTM_DELLINK and t_del is None:
                    t_del = ev["t"]
                elif ev["name"] == br and ev["type"] == RTM_NEWLINK and t_del is not None:
                    bridge_idx, bridge_up = ev["index"], ev["up"]
                elif ev["name"] == vif and ev["type"] == RTM_NEWLINK and t_del is not None:
                    enslaved = bridge_idx is not None and ev["master"] == bridge_idx
                if t_del is not None and bridge_up and enslaved:
                    break
            else:
                continue
            break
        if t_del is not None and bridge_up and enslaved:
            lat.append(int((ev["t"] - t_del) * 1e9))
        else:
            fails += 1
        time.sleep(rng.uniform(0.05, 0.15))
    return {"reps": a.drift_reps, "failures": fails, "repair": summary_ms(lat),
            "definition": "RTM_DELLINK of the bridge -> bridge back, up, VLAN interface enslaved"}


def long_running(a):
    res = {}
    d = Daemon(a, a.drift_n)
    try:
        t_ready, state = d.wait_ready(a.drift_n, 120)
        res["start_to_ready_s"] = round(t_ready, 3)
        time.sleep(2)
        res["rss_idle_kib"] = d.rss_kib()
        c0, t0 = d.cpu_s(), time.perf_counter()
        time.sleep(a.idle_seconds)
        res["idle_cpu_pct_of_one_core"] = round(100 * (d.cpu_s() - c0) / (time.perf_counter() - t0), 3)
        res["idle_seconds"] = a.idle_seconds
        res["drift"] = drift(a, d, state)
        print(f"  drift repair p50 {res['drift']['repair'].get('p50')} ms, "
              f"p99 {res['drift']['repair'].get('p99')} ms", file=sys.stderr)
    finally:
        d.stop()
    conf = os.path.join(a.run_dir, "config.json")
    config(0, conf)
    run(daemon_argv(a, conf, True), daemon_env(a))
    n = a.rss_n
    d = Daemon(a, n)
    try:
        t_ready, _ = d.wait_ready(n, 600)
        time.sleep(2)
        res[f"start_to_ready_s_at_{n}"] = round(t_ready, 3)
        res[f"rss_kib_at_{n}"] = d.rss_kib()
    finally:
        d.stop()
    config(0, conf)
    run(daemon_argv(a, conf, True), daemon_env(a))
    return res


def cni_rows(a):
    """portgroup mode vs bridge mode vs the reference vs the floor, on a VLAN portgroup's bridge."""
    conf = os.path.join(a.run_dir, "config.json")
    config(1, conf)
    r = run(daemon_argv(a, conf, True), daemon_env(a))
    state = read_state(a.run_dir) or {}
    pg = next((p for p in state.get("portgroups", []) if p.get("ready")), None)
    if r.rc != 0 or not pg:
        return {"error": "portgroup pg1 not ready", "state": state}
    out = os.path.join(a.run_dir, "cni-vm.json")
    plugin, reference, cni_path = a.plugin, "/usr/lib/cni/bridge", "/usr/lib/cni"
    if a.in_vm:
        # Under vng the host's files arrive over 9p: exec'ing from there costs more than
        # the work measured. Copy every contender's binaries to the guest's tmpfs.
        bindir = os.path.join(a.run_dir, "bin")
        os.makedirs(bindir, exist_ok=True)
        for src in (a.plugin, "/usr/lib/cni/bridge", "/usr/lib/cni/static"):
            subprocess.run(["cp", src, bindir], check=True)
        plugin = os.path.join(bindir, os.path.basename(a.plugin))
        reference, cni_path = os.path.join(bindir, "bridge"), bindir
    argv = [sys.executable, os.path.join(HERE, "cni_bench.py"), "--plugin", plugin,
            "--reference", reference, "--cni-path", cni_path,
            "--bridge", pg["bridge"], "--run-dir", os.path.join(a.run_dir, "cni"),
            "--portgroup", pg["name"], "--portgroup-run-dir", a.run_dir,
            "--pods", f"{a.tag}-dp", "--npods", str(a.npods), "--sections", "seq",
            "--cycles", str(a.cni_cycles), "--out", out, "--progress"]
    subprocess.run(argv, check=False)
    config(0, conf)
    run(daemon_argv(a, conf, True), daemon_env(a))
    try:
        return json.load(open(out))
    except (OSError, ValueError):
        return {"error": "cni_bench.py failed"}


def inner(a):
    os.makedirs(a.run_dir, exist_ok=True)
    if a.in_vm:
        # Same reason as in cni_rows: run portgroupd from tmpfs, not over 9p.
        subprocess.run(["cp", a.daemon, os.path.join(a.run_dir, "portgroupd")], check=True)
        a.daemon = os.path.join(a.run_dir, "portgroupd")
    sh("ip", "link", "set", "lo", "up")
    sh("ip", "link", "add", UPLINK, "type", "veth", "peer", "name", UPLINK + "p")
    sh("ip", "link", "set", UPLINK, "up")
    sh("ip", "link", "set", UPLINK + "p", "up")
    res = {"in_vm": a.in_vm, "kernel": os.uname().release, "nproc": os.cpu_count()}
    t0 = time.time()
    res["converge"] = converge(a)
    res["daemon"] = long_running(a)
    res["cni_portgroup_mode"] = cni_rows(a)
    res["seconds"] = round(time.time() - t0, 1)
    res["summary"], res["targets"] = summarize(res, a)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)


def summarize(res, a):
    conv = {r["n"]: r for r in res["converge"]}
    d = res["daemon"]
    env = " (inside a TCG VM: absolute times inflated)" if a.in_vm else ""
    summary = {f"converge {n}": f"up {r['up_s']} s, down {r['down_s']} s, ready {r['ready']}/{n}"
               for n, r in conv.items()}
    summary["drift repair"] = f"p50 {d['drift']['repair'].get('p50')} ms, p99 {d['drift']['repair'].get('p99')} ms"
    summary["rss idle"] = f"{d['rss_idle_kib']} KiB at {a.drift_n} portgroups"
    summary[f"rss at {a.rss_n}"] = f"{d.get(f'rss_kib_at_{a.rss_n}')} KiB"
    summary["idle cpu"] = f"{d['idle_cpu_pct_of_one_core']} % of one core"
    targets = {}
    c1000 = conv.get(1000)
    targets["1000 portgroups converged < 5 s"] = {
        "value": c1000["up_s"] if c1000 else None, "where": env or "bare kernel",
        "verdict": None if not c1000 else ("met" if c1000["up_s"] < 5 and c1000["ready"] == 1000 else "MISSED")}
    p99 = d["drift"]["repair"].get("p99")
    targets["drift repair p99 < 100 ms"] = {"value": p99, "verdict": None if p99 is None else
                                            ("met" if p99 < 100 and not d["drift"]["failures"] else "MISSED")}
    rss = d.get(f"rss_kib_at_{a.rss_n}")
    targets["portgroupd < 20 MiB RSS at 1000 portgroups"] = {
        "value_mib": round(rss / 1024, 1) if rss else None,
        "verdict": None if not rss or a.rss_n != 1000 else ("met" if rss < 20 * 1024 else "MISSED")}
    return summary, targets


def outer(a):
    node = f"{a.tag}-dnode"
    names = [node] + [f"{a.tag}-dp{i}" for i in range(a.npods)]
    try:
        subprocess.run(["ip", "-batch", "-"], input="".join(f"netns add {n}\n" for n in names),
                       text=True, check=True)
        argv = ["ip", "netns", "exec", node, sys.executable, os.path.abspath(__file__), "--inner"]
        argv += [x for x in sys.argv[1:] if x != "--inner"] + ["--tag", a.tag]
        return subprocess.run(argv).returncode
    finally:
        left = [n for n in sh("ip", "netns", "list", check=False).split() if n in names]
        subprocess.run(["ip", "-force", "-batch", "-"], input="".join(f"netns del {n}\n" for n in left),
                       text=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--daemon", required=True)
    p.add_argument("--plugin", required=True)
    p.add_argument("--tag", default=f"pgb-{os.getpid()}")
    p.add_argument("--out", required=True)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--in-vm", action="store_true")
    p.add_argument("--inner", action="store_true")
    p.add_argument("--levels")
    p.add_argument("--drift-n", type=int, default=10)
    p.add_argument("--drift-reps", type=int)
    p.add_argument("--rss-n", type=int)
    p.add_argument("--idle-seconds", type=float)
    p.add_argument("--cni-cycles", type=int)
    p.add_argument("--npods", type=int, default=12)
    a = p.parse_args()
    q = a.quick
    a.levels = [int(x) for x in (a.levels or ("10,100" if q else "10,100,1000,4094")).split(",")]
    a.drift_reps = a.drift_reps or (10 if q else 100)
    a.rss_n = a.rss_n or (100 if q else 1000)
    a.idle_seconds = a.idle_seconds if a.idle_seconds is not None else (5 if q else 30)
    a.cni_cycles = a.cni_cycles or (20 if q else 100)
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else "/run"
    a.run_dir = f"{base}/{a.tag}-drun"
    if not a.inner:
        sys.exit(outer(a))
    try:
        inner(a)
    finally:
        subprocess.run(["rm", "-rf", a.run_dir])


if __name__ == "__main__":
    main()
