#!/usr/bin/env python3
"""portgroupd benchmark: converge from nothing to N portgroups and back,
drift repair latency, resident memory, idle CPU; and, while VLAN portgroups exist,
the CNI rows in portgroup mode (pg-portgroup against the reference and the floor,
interleaved, on the portgroup's own bridge).

VLAN portgroups need 802.1Q. hack/bench.sh runs this directly when the kernel has
it and otherwise inside the test VM (hack/vm.sh): there QEMU runs under TCG, so
absolute times are inflated several-fold; ratios measured in the same run hold.

The outer invocation makes its own namespaces (<tag>-dnode and pods <tag>-dp<i>),
re-runs itself inside the node namespace (--inner), and deletes them all on exit.
Never touches the namespace it was started in.

portgroupd is driven through its command line (docs/DESIGN.md):
  portgroupd --config FILE --node-name NAME --run-dir DIR [--once]
and its node state <run-dir>/state.json (portgroups[].ready, .bridge, .vlanInterface).
The uplink is a veth end (pgbup0) inside the node namespace.

Rows:
  converge   for N in 10,100,1000,4094 (--quick: 10,100): `--once` from nothing to N
             (wall, CPU from wait4, peak RSS = VmHWM polled every 20 ms), a no-op
             `--once` at N, `--once` back to 0; checks N ready in state.json and N
             bridges, then none. For N <= --floor-max (1000) also the floor: one
             `ip -batch` making the same links (4 requests per portgroup), torn down
             link by link and, separately, with one `ip link del group`.
  drift      a long-running daemon at --drift-n portgroups; delete one bridge with one
             RTM_DELLINK from this process, time from just before that request to the
             bridge being back, up, with its VLAN interface enslaved again (seen on an
             rtnetlink monitor socket); p50/p99. Also the daemon's own "repaired drift in
             X ms" log lines (first link event -> end of the repairing reconcile).
  memory     VmRSS of the long-running daemon idle at --drift-n, and after starting it
             at 1000 portgroups (ready, then settled 2 s); VmHWM there too.
  idle cpu   utime+stime of the idle daemon over --idle-seconds (65: one 60 s resync
             included), as % of one core.
  cni        cni_bench.py --sections seq with a pg-portgroup contender on the bridge of a
             real VLAN portgroup made by portgroupd, against the reference plugin and the
             floor (bridge mode is refused on portgroupd's bridges: --bridge-of-portgroupd).
  churn      (--parts churn; no 802.1Q needed) --churn-pgs untagged portgroups (100), each
             on its own veth uplink, under a running portgroupd; --churn-cycles (200) VM
             ADD+DEL cycles through the plugin; portgroupd's CPU (/proc/<pid>/stat) against
             the plugin runs' (RUSAGE_CHILDREN), reconciles and events from its /metrics.

  memory     (--parts memory; no 802.1Q needed) for N in --memory-pgs (1000), N untagged
             portgroups, each on its own veth uplink (3N links). `--once` from nothing to
             N, a no-op `--once` and `--once` back to 0 (wall, CPU, VmHWM), --memory-reps
             rounds interleaved with --compare-daemon BIN when given (the same rows for
             another build, to measure a change in one run). Then the long-running daemon
             at N: VmRSS, VmHWM, RssAnon/RssFile and threads once ready, settled 2 s,
             after one bridge deleted and repaired, after a config reload and after a
             periodic resync (--resync 3); and idle at 10 untagged portgroups.

--parts converge,daemon,cni and --levels pick a subset (for development).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from benchlib import percentile, summary_ms  # noqa: E402

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
    conf = os.path.join(a.conf_dir, "config.json")
    for n in a.levels:
        row = {"n": n}
        config(n, conf)
        r = run_once(daemon_argv(a, conf, True), daemon_env(a))
        state = read_state(a.run_dir) or {}
        ready = sum(1 for p in state.get("portgroups", []) if p.get("ready"))
        row.update(up_s=round(r.wall_ns / 1e9, 3), up_cpu_s=round(r.cpu_ns / 1e9, 3), rc_up=r.rc,
                   ready=ready, bridges=len(bridges()), peak_rss_mib=round(_maxrss_kib(r) / 1024, 1))
        if r.rc != 0:
            row["error"] = (r.stderr or r.stdout).decode(errors="replace")[-400:]
        r2 = run_once(daemon_argv(a, conf, True), daemon_env(a))
        row["noop_s"] = round(r2.wall_ns / 1e9, 3)
        config(0, conf)
        r3 = run_once(daemon_argv(a, conf, True), daemon_env(a))
        row.update(down_s=round(r3.wall_ns / 1e9, 3), rc_down=r3.rc, bridges_left=len(bridges()))
        if n <= a.floor_max:
            row["floor"] = converge_floor(a, n)
        rows.append(row)
        fl = row.get("floor", {})
        print(f"  converge {n}: up {row['up_s']} s ({ready} ready), no-op {row['noop_s']} s, "
              f"down {row['down_s']} s; ip -batch floor: up {fl.get('up_s')} s, down {fl.get('down_s')} s, "
              f"down by group {fl.get('down_group_s')} s", file=sys.stderr)
    return rows


FLOOR_GROUP = 0x7067_0002


def converge_floor(a, n):
    """The same topology made by one `ip -batch` process, the least netlink work that gives
    it: per portgroup a VLAN interface and a bridge (created down, in a link group), then
    alias + master + up on the VLAN interface and alias + up on the bridge: 4 requests.
    Torn down two ways: one `link del` per link (what a reconciler deleting portgroup by
    portgroup must do), and one `link del group` request for all of them (the kernel
    unregisters them together, with one round of RCU waits instead of one per link)."""
    def make():
        lines = []
        for v in range(1, n + 1):
            lines.append(f"link add link {UPLINK} name fv{v} group {FLOOR_GROUP} mtu 1500 type vlan id {v}")
            lines.append(f"link add name fb{v} group {FLOOR_GROUP} mtu 1500 type bridge")
            lines.append(f"link set fv{v} alias portgroup:floor master fb{v} up")
            lines.append(f"link set fb{v} alias portgroup:floor up")
        return run_once(["ip", "-batch", "-"], {"PATH": PATH}, ("\n".join(lines) + "\n").encode())

    res = {}
    r = make()
    res.update(up_s=round(r.wall_ns / 1e9, 3), up_cpu_s=round(r.cpu_ns / 1e9, 3), rc_up=r.rc,
               bridges=len(bridges()))
    dels = "".join(f"link del fv{v}\nlink del fb{v}\n" for v in range(1, n + 1)).encode()
    r = run_once(["ip", "-batch", "-"], {"PATH": PATH}, dels)
    res.update(down_s=round(r.wall_ns / 1e9, 3), rc_down=r.rc)
    make()
    r = run_once(["ip", "link", "del", "group", str(FLOOR_GROUP)], {"PATH": PATH})
    res.update(down_group_s=round(r.wall_ns / 1e9, 3), rc_down_group=r.rc, bridges_left=len(bridges()))
    return res


def _maxrss_kib(r):
    return r.maxrss_kib


class Once:
    """One `portgroupd --once`: wall, CPU (wait4 rusage) and peak RSS. The peak is the
    process's VmHWM polled every 20 ms, not wait4's ru_maxrss: a child spawned with
    vfork (posix_spawn) inherits its parent's high-water mark at exec, so ru_maxrss
    reports this Python harness (~16 MiB), not portgroupd."""

    def __init__(self, rc, wall_ns, cpu_ns, peak_kib, stderr, user_ns=None):
        self.rc, self.wall_ns, self.cpu_ns, self.maxrss_kib = rc, wall_ns, cpu_ns, peak_kib
        self.user_ns = user_ns
        self.stdout, self.stderr = b"", stderr


def run_once(argv, env, stdin=None):
    import tempfile
    with tempfile.TemporaryFile() as log, tempfile.TemporaryFile() as inp:
        if stdin:
            inp.write(stdin)
            inp.seek(0)
        t0 = time.perf_counter_ns()
        p = subprocess.Popen(argv, env=env, stdin=inp if stdin else subprocess.DEVNULL, stdout=log,
                             stderr=subprocess.STDOUT)
        peak = 0
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            try:
                for line in open(f"/proc/{p.pid}/status"):
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]))
            except OSError:
                pass
            time.sleep(0.02)
        t1 = time.perf_counter_ns()
        p.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        out = log.read()
    return Once(p.returncode, t1 - t0, int((ru.ru_utime + ru.ru_stime) * 1e9), peak, out, int(ru.ru_utime * 1e9))


# --- long-running daemon --------------------------------------------------------


class Daemon:
    def __init__(self, a, n):
        self.a = a
        self.conf = os.path.join(a.conf_dir, f"config-{n}.json")
        config(n, self.conf)
        try:
            os.unlink(os.path.join(a.run_dir, "state.json"))
        except FileNotFoundError:
            pass
        self.log_path = os.path.join(a.conf_dir, f"daemon-{n}.log")
        self.log = open(self.log_path, "wb")
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

    def rss_kib(self, field="VmRSS"):
        for line in open(f"/proc/{self.p.pid}/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
        return None

    def cpu_s(self):
        fields = open(f"/proc/{self.p.pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def logged_repairs(self):
        with open(self.log_path, "rb") as f:
            return f.read().count(b"repaired drift in ")

    def stop(self):
        stop_daemon(self.p, self.log)


def stop_daemon(p, log):
    """SIGTERM, 10 s to exit, then SIGKILL; closes its log."""
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    log.close()


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


def del_link(name):
    """Deletes a link with one RTM_DELLINK from this process and returns perf_counter()
    taken just before the request. Timing from an `ip link del` child instead would
    count from whenever the harness got around to reading the DELLINK event: under TCG
    the daemon has often repaired the bridge before `ip` has even exited."""
    index = socket.if_nametoindex(name)
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
    try:
        msg = struct.pack("=IHHII", 16 + 16, RTM_DELLINK, 0x1 | 0x4, 1, 0)  # NLM_F_REQUEST|NLM_F_ACK
        msg += struct.pack("=BBHiII", 0, 0, 0, index, 0, 0)
        t = time.perf_counter()
        s.sendto(msg, (0, 0))
        ack = s.recv(65536)
        err = struct.unpack_from("=i", ack, 16)[0]
        if err:
            raise OSError(-err, f"RTM_DELLINK {name}: {os.strerror(-err)}")
        return t
    finally:
        s.close()


def drift(a, d, state):
    pgs = [p for p in state["portgroups"] if p.get("ready")]
    mon = LinkMonitor()
    lat, fails = [], 0
    rng = random.Random(6)
    base = d.logged_repairs()
    for rep in range(a.drift_reps):
        pg = rng.choice(pgs)
        br, vif = pg["bridge"], pg.get("vlanInterface")
        t_req = del_link(br)
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
            lat.append(int((ev["t"] - t_req) * 1e9))
        else:
            fails += 1
        # Let the daemon finish that reconcile (its log line) so that reps do not overlap.
        end = time.perf_counter() + 5
        while d.logged_repairs() < base + len(lat) + fails and time.perf_counter() < end:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.05, 0.15))
    return {"reps": a.drift_reps, "failures": fails, "repair": summary_ms(lat),
            "definition": "the harness's RTM_DELLINK request for the bridge -> the bridge back, up, "
                          "with its VLAN interface enslaved again (both ends seen on an rtnetlink monitor)"}


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
        res["idle_note"] = ("the window includes the periodic full resync (every 60 s)" if a.idle_seconds > 60
                            else "the window is shorter than the 60 s resync period")
        res["drift"] = drift(a, d, state)
        res["rss_after_drift_kib"] = d.rss_kib()
    finally:
        d.stop()
    # The daemon's own figure: "repaired drift in X ms", from the first link event of the
    # batch to the end of the reconcile that fixed it (10 ms of event coalescing included).
    logged = [int(m) for m in re.findall(rb"repaired drift in (\d+) ms", open(d.log_path, "rb").read())]
    res["drift"]["daemon_logged_ms"] = {"count": len(logged), "p50": percentile(logged, 50),
                                        "p99": percentile(logged, 99), "max": max(logged, default=None)}
    print(f"  drift repair p50 {res['drift']['repair'].get('p50')} ms, "
          f"p99 {res['drift']['repair'].get('p99')} ms (daemon's log: p50 "
          f"{res['drift']['daemon_logged_ms']['p50']} ms, p99 {res['drift']['daemon_logged_ms']['p99']} ms)",
          file=sys.stderr)
    conf = os.path.join(a.conf_dir, "config.json")
    config(0, conf)
    run_once(daemon_argv(a, conf, True), daemon_env(a))
    n = a.rss_n
    d = Daemon(a, n)
    try:
        t_ready, _ = d.wait_ready(n, 600)
        time.sleep(2)
        res[f"start_to_ready_s_at_{n}"] = round(t_ready, 3)
        res[f"rss_kib_at_{n}"] = d.rss_kib()
        res[f"peak_rss_kib_at_{n}"] = d.rss_kib("VmHWM")
    finally:
        d.stop()
    config(0, conf)
    run_once(daemon_argv(a, conf, True), daemon_env(a))
    return res


def cni_rows(a):
    """portgroup mode vs bridge mode vs the reference vs the floor, on a VLAN portgroup's bridge."""
    conf = os.path.join(a.conf_dir, "config.json")
    config(1, conf)
    r = run_once(daemon_argv(a, conf, True), daemon_env(a))
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
            "--portgroup", pg["name"], "--portgroup-run-dir", a.run_dir, "--bridge-of-portgroupd",
            "--pods", f"{a.tag}-dp", "--npods", str(a.npods), "--sections", "seq",
            "--cycles", str(a.cni_cycles), "--out", out, "--progress"]
    subprocess.run(argv, check=False)
    config(0, conf)
    run_once(daemon_argv(a, conf, True), daemon_env(a))
    try:
        return json.load(open(out))
    except (OSError, ValueError):
        return {"error": "cni_bench.py failed"}


def calibrate(a, n=1000):
    """Kernel work like N portgroups' that needs no 802.1Q, so it runs on this host and in
    the VM alike: N bridges and N veth pairs (one veth end standing for the VLAN interface,
    enslaved), created and brought up by one `ip -batch`, then deleted with one
    `ip link del group`. The VM/host ratio of these times is the TCG slowdown for link work,
    which turns the VM's converge times into estimates for this host's kernel."""
    lines = []
    for v in range(1, n + 1):
        lines.append(f"link add name cb{v} group {FLOOR_GROUP} mtu 1500 type bridge")
        lines.append(f"link add name cv{v} group {FLOOR_GROUP} mtu 1500 type veth peer name cp{v} group {FLOOR_GROUP}")
        lines.append(f"link set cv{v} alias portgroup:calibrate master cb{v} up")
        lines.append(f"link set cb{v} alias portgroup:calibrate up")
    r = run_once(["ip", "-batch", "-"], {"PATH": PATH}, ("\n".join(lines) + "\n").encode())
    res = {"n": n, "up_s": round(r.wall_ns / 1e9, 3), "up_cpu_s": round(r.cpu_ns / 1e9, 3), "rc_up": r.rc,
           "bridges": len(bridges())}
    r = run_once(["ip", "link", "del", "group", str(FLOOR_GROUP)], {"PATH": PATH})
    res.update(down_group_s=round(r.wall_ns / 1e9, 3), rc_down=r.rc, bridges_left=len(bridges()))
    print(f"  calibrate {n} bridges + veth pairs: up {res['up_s']} s, down by group {res['down_group_s']} s",
          file=sys.stderr)
    return res


# --- churn ----------------------------------------------------------------------


def metrics_text(port):
    import urllib.request
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return r.read().decode()
    except OSError:
        return ""


def metric_value(text, series):
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return None


def churn(a):
    """Pod churn against a running portgroupd: --churn-pgs untagged portgroups (each
    with its own uplink, a veth end with no address; no 802.1Q needed), all ready;
    then --churn-cycles VM ADD+DEL cycles back to back through the real plugin in
    portgroup mode, spread over the portgroups and the pod namespaces. CPU of the
    plugin runs: the sum of wait4 rusage (utime+stime) of every ADD and DEL. CPU of
    portgroupd: utime+stime from /proc/<pid>/stat from just before the first ADD to
    2 s after the last DEL (its debounced garbage collection included). Also the
    reconciles and link events the burst caused, from its /metrics."""
    n, cycles, port = a.churn_pgs, a.churn_cycles, 9799
    batch = "".join(f"link add pgcu{i} type veth peer name pgcp{i}\nlink set pgcu{i} up\nlink set pgcp{i} up\n"
                    for i in range(n))
    subprocess.run(["ip", "-batch", "-"], input=batch, text=True, check=True)
    conf = os.path.join(a.conf_dir, "churn.json")
    with open(conf, "w") as f:
        json.dump({"uplink": "pgcu0", "portgroups": [
            {"name": f"c{i}", "untagged": True, "uplink": f"pgcu{i}"} for i in range(n)]}, f)
    try:
        os.unlink(os.path.join(a.run_dir, "state.json"))
    except FileNotFoundError:
        pass
    log = open(os.path.join(a.conf_dir, "daemon-churn.log"), "wb")
    d = subprocess.Popen([a.daemon, "--config", conf, "--node-name", "bench", "--run-dir", a.run_dir,
                          "--listen", f"127.0.0.1:{port}", "--resync", "3600"],
                         env=daemon_env(a), stdout=log, stderr=subprocess.STDOUT)
    res = {"portgroups": n, "cycles": cycles, "spoof_check": a.churn_spoofcheck}
    try:
        # Ready, or refused for a name collision: 4 hex digits of tag per uplink
        # name collide a few times among 1000 uplinks.
        end = time.perf_counter() + 300
        while time.perf_counter() < end:
            s = read_state(a.run_dir) or {}
            pgs = s.get("portgroups", [])
            if len(pgs) == n and all(p.get("ready") or "also wanted" in (p.get("reason") or "") for p in pgs):
                break
            time.sleep(0.05)
        else:
            return {"error": f"{n} untagged portgroups not ready", "state": read_state(a.run_dir)}
        ready = [p["name"] for p in pgs if p.get("ready")]
        res["ready"] = len(ready)
        time.sleep(2)  # the daemon's own events settle
        before = metrics_text(port)

        def cpu():
            fields = open(f"/proc/{d.pid}/stat").read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

        def plugin(cmd, cid, pod, pg):
            env = {"PATH": PATH, "CNI_COMMAND": cmd, "CNI_CONTAINERID": cid, "CNI_NETNS": f"/run/netns/{pod}",
                   "CNI_IFNAME": "net1", "CNI_PATH": "/usr/lib/cni", "PORTGROUP_RUN_DIR": a.run_dir}
            stdin = json.dumps({"cniVersion": "1.0.0", "name": "churn", "type": "portgroup", "portgroup": pg,
                                "conflictProbe": False, "spoofCheck": a.churn_spoofcheck}).encode()
            r = subprocess.run([a.plugin], env=env, input=stdin, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
            return r.returncode, r.stderr

        # The plugin runs are this harness's only children meanwhile: RUSAGE_CHILDREN
        # before and after is their CPU.
        import resource
        c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        d0, t0 = cpu(), time.perf_counter()
        failures = 0
        for i in range(cycles):
            pod, pg, cid = f"{a.tag}-dp{i % a.npods}", ready[i % len(ready)], f"churn-{i}"
            rc, err = plugin("ADD", cid, pod, pg)
            if rc != 0:
                failures += 1
                res.setdefault("first_error", err.decode(errors="replace")[-300:])
            rc, err = plugin("DEL", cid, pod, pg)
            failures += rc != 0
        wall = time.perf_counter() - t0
        c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        time.sleep(2)
        d1 = cpu()
        after = metrics_text(port)
        plugin_cpu = (c1.ru_utime + c1.ru_stime) - (c0.ru_utime + c0.ru_stime)
        daemon_cpu = d1 - d0
        delta = {k: (metric_value(after, k) or 0) - (metric_value(before, k) or 0) for k in (
            "portgroupd_reconciles_total", 'portgroupd_link_events_total{outcome="reconcile"}',
            'portgroupd_link_events_total{outcome="ignored"}', "portgroupd_state_files_written_total")}
        res.update(wall_s=round(wall, 2), failures=failures, plugin_cpu_s=round(plugin_cpu, 3),
                   daemon_cpu_s=round(daemon_cpu, 3),
                   daemon_over_plugin=round(daemon_cpu / plugin_cpu, 3) if plugin_cpu else None,
                   reconciles=delta["portgroupd_reconciles_total"],
                   events_counted=delta['portgroupd_link_events_total{outcome="reconcile"}'],
                   events_ignored=delta['portgroupd_link_events_total{outcome="ignored"}'],
                   state_files_written=delta["portgroupd_state_files_written_total"],
                   rss_kib=None)
        for line in open(f"/proc/{d.pid}/status"):
            if line.startswith("VmRSS:"):
                res["rss_kib"] = int(line.split()[1])
        print(f"  churn{' (spoofCheck)' if a.churn_spoofcheck else ''}: {cycles} ADD+DEL cycles on {n} untagged portgroups in {res['wall_s']} s "
              f"({failures} failed): plugin CPU {res['plugin_cpu_s']} s, portgroupd CPU {res['daemon_cpu_s']} s "
              f"= {res['daemon_over_plugin']} of it (target <= 0.10); {res['reconciles']} reconciles, "
              f"{res['events_ignored']} link events ignored, {res['events_counted']} counted, "
              f"{res['state_files_written']} state files written", file=sys.stderr)
        return res
    finally:
        stop_daemon(d, log)
        subprocess.run(["ip", "-batch", "-"], input="".join(f"link del pgcu{i}\n" for i in range(n)), text=True)


# --- memory (untagged: no 802.1Q) ---------------------------------------------


def proc_memory(pid):
    """VmRSS, VmHWM, RssAnon, RssFile (KiB) and Threads of a process."""
    out = {}
    for line in open(f"/proc/{pid}/status"):
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"):
            out[key] = int(rest.split()[0])
    return out


def untagged_uplinks(n, make):
    verb = "add" if make else "del"
    lines = "".join(f"link add pgmu{i} type veth peer name pgmp{i}\nlink set pgmu{i} up\nlink set pgmp{i} up\n"
                    if make else f"link del pgmu{i}\n" for i in range(n))
    r = subprocess.run(["ip", "-force", "-batch", "-"], input=lines, text=True, capture_output=True)
    if make and r.returncode != 0:
        raise RuntimeError(f"ip -batch link {verb}: {r.stderr.strip()[-300:]}")


def untagged_config(n, path):
    conf = {"uplink": "pgmu0", "portgroups": [{"name": f"m{i}", "untagged": True, "uplink": f"pgmu{i}"}
                                              for i in range(n)]}
    with open(path + ".tmp", "w") as f:
        json.dump(conf, f)
    os.rename(path + ".tmp", path)


def settled_count(run_dir, n):
    """Portgroups ready, or refused for an uplink-name collision (16 bits of tag per
    uplink name: a few collide among 1000 uplinks), when all N are one or the other."""
    s = read_state(run_dir) or {}
    pgs = s.get("portgroups", [])
    ok = [p for p in pgs if p.get("ready") or "also wanted" in (p.get("reason") or "")]
    return (len(pgs) == n and len(ok) == n), sum(1 for p in pgs if p.get("ready"))


def memory_once_rows(a, n, daemons):
    """`--once` up / no-op / down at N, each build once per round, rounds interleaved."""
    conf = os.path.join(a.conf_dir, f"memory-{n}.json")
    empty = os.path.join(a.conf_dir, "memory-0.json")
    untagged_config(n, conf)
    untagged_config(0, empty)
    env = daemon_env(a)
    rows = {name: [] for name in daemons}
    for rnd in range(a.memory_reps):
        order = list(daemons.items())
        random.Random(rnd).shuffle(order)
        for name, binary in order:
            argv = [binary, "--config", conf, "--node-name", "bench", "--run-dir", a.run_dir,
                    "--device-plugin-dir", "", "--once"]
            up = run_once(argv, env)
            ok, ready = settled_count(a.run_dir, n)
            noop = run_once(argv, env)
            down = run_once(argv[:2] + [empty] + argv[3:], env)
            rows[name].append({"up_s": up.wall_ns / 1e9, "up_cpu_s": up.cpu_ns / 1e9,
                               "up_user_cpu_s": up.user_ns / 1e9, "noop_user_cpu_s": noop.user_ns / 1e9,
                               "up_peak_kib": up.maxrss_kib, "rc": up.rc, "ready": ready, "settled": ok,
                               "noop_s": noop.wall_ns / 1e9, "noop_cpu_s": noop.cpu_ns / 1e9,
                               "noop_peak_kib": noop.maxrss_kib, "down_s": down.wall_ns / 1e9,
                               "down_cpu_s": down.cpu_ns / 1e9, "down_peak_kib": down.maxrss_kib,
                               "bridges_left": len(bridges())})
    out = {}
    for name, rs in rows.items():
        med = lambda k: round(sorted(r[k] for r in rs)[len(rs) // 2], 3)
        out[name] = {"runs": rs, **{f"median_{k}": med(k) for k in rs[0] if k not in ("rc", "settled")}}
        print(f"  --once at {n} untagged [{name}]: up {out[name]['median_up_s']} s (cpu "
              f"{out[name]['median_up_cpu_s']} s, user {out[name]['median_up_user_cpu_s']} s, peak {out[name]['median_up_peak_kib'] / 1024:.1f} MiB), "
              f"no-op {out[name]['median_noop_s']} s (peak {out[name]['median_noop_peak_kib'] / 1024:.1f} MiB), "
              f"down {out[name]['median_down_s']} s", file=sys.stderr)
    return out


def memory_daemon(a, n, binary):
    """The long-running daemon at N untagged portgroups, from nothing."""
    conf = os.path.join(a.conf_dir, f"memory-{n}.json")
    untagged_config(n, conf)
    try:
        os.unlink(os.path.join(a.run_dir, "state.json"))
    except FileNotFoundError:
        pass
    log_path = os.path.join(a.conf_dir, f"daemon-memory-{n}.log")
    log = open(log_path, "wb")
    t0 = time.perf_counter()
    p = subprocess.Popen([binary, "--config", conf, "--node-name", "bench", "--run-dir", a.run_dir,
                          "--device-plugin-dir", "", "--listen", "127.0.0.1:0", "--resync", "3"],
                         env=daemon_env(a), stdout=log, stderr=subprocess.STDOUT)
    res = {"n": n}
    try:
        end = time.perf_counter() + 600
        while not settled_count(a.run_dir, n)[0]:
            if p.poll() is not None or time.perf_counter() > end:
                return {"n": n, "error": f"portgroupd exited {p.returncode}" if p.poll() is not None
                        else "not ready after 600 s"}
            time.sleep(0.05)
        res["start_to_ready_s"] = round(time.perf_counter() - t0, 3)
        res["ready"] = settled_count(a.run_dir, n)[1]
        res["at_ready"] = proc_memory(p.pid)
        time.sleep(2)
        res["settled"] = proc_memory(p.pid)
        if n:
            state = read_state(a.run_dir)
            br = next(pg["bridge"] for pg in state["portgroups"] if pg.get("ready"))
            before = open(log_path, "rb").read().count(b"repaired drift in ")
            del_link(br)
            end = time.perf_counter() + 10
            while open(log_path, "rb").read().count(b"repaired drift in ") == before and time.perf_counter() < end:
                time.sleep(0.01)
            res["drift_repaired"] = open(log_path, "rb").read().count(b"repaired drift in ") > before
            res["after_drift"] = proc_memory(p.pid)
            os.utime(conf)
            time.sleep(1)
            res["after_reload"] = proc_memory(p.pid)
        time.sleep(3.5)  # one periodic resync (--resync 3): dump, plan, collect, verify
        res["after_resync"] = proc_memory(p.pid)
        smaps = {}
        for line in open(f"/proc/{p.pid}/smaps_rollup"):
            key, _, rest = line.partition(":")
            if key in ("Rss", "Anonymous", "Private_Dirty", "Shared_Clean"):
                smaps[key] = int(rest.split()[0])
        res["smaps_rollup_kib"] = smaps
    finally:
        stop_daemon(p, log)
    return res


def memory(a):
    daemons = {"this": a.daemon}
    if a.compare_daemon:
        daemons["compare"] = a.compare_daemon
    res = {"levels": {}, "builds": daemons}
    empty = os.path.join(a.conf_dir, "memory-0.json")
    untagged_config(0, empty)
    for n in a.memory_pgs:
        untagged_uplinks(n, True)
        try:
            lvl = {"once": memory_once_rows(a, n, daemons), "daemon": {}}
            for name, binary in daemons.items():
                d = memory_daemon(a, n, binary)
                run_once([binary, "--config", empty, "--node-name", "bench", "--run-dir", a.run_dir,
                          "--device-plugin-dir", "", "--once"], daemon_env(a))
                lvl["daemon"][name] = d
                m = lambda k: (d.get(k) or {}).get("VmRSS", 0) / 1024
                print(f"  portgroupd at {n} untagged [{name}]: ready {d.get('ready')} in "
                      f"{d.get('start_to_ready_s')} s; VmRSS ready {m('at_ready'):.1f}, settled "
                      f"{m('settled'):.1f}, after drift {m('after_drift'):.1f}, after reload "
                      f"{m('after_reload'):.1f}, after resync {m('after_resync'):.1f} MiB; VmHWM "
                      f"{(d.get('after_resync') or {}).get('VmHWM', 0) / 1024:.1f} MiB, threads "
                      f"{(d.get('after_resync') or {}).get('Threads')}", file=sys.stderr)
            res["levels"][str(n)] = lvl
        finally:
            untagged_uplinks(n, False)
    untagged_uplinks(10, True)
    try:
        res["idle_at_10"] = {}
        for name, binary in daemons.items():
            res["idle_at_10"][name] = memory_daemon(a, 10, binary)
            run_once([binary, "--config", empty, "--node-name", "bench", "--run-dir", a.run_dir,
                      "--device-plugin-dir", "", "--once"], daemon_env(a))
            print(f"  portgroupd idle at 10 untagged [{name}]: VmRSS "
                  f"{res['idle_at_10'][name].get('after_resync', {}).get('VmRSS', 0) / 1024:.1f} MiB",
                  file=sys.stderr)
    finally:
        untagged_uplinks(10, False)
    return res


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
    parts = a.parts.split(",")
    if "calibrate" in parts:
        res["calibrate"] = calibrate(a, 100 if a.quick else 1000)
        if parts == ["calibrate"]:
            with open(a.out, "w") as f:
                json.dump(res, f, indent=1)
            return
    res["converge"] = converge(a) if "converge" in parts else []
    res["daemon"] = long_running(a) if "daemon" in parts else {}
    res["cni_portgroup_mode"] = cni_rows(a) if "cni" in parts else {}
    res["churn"] = churn(a) if "churn" in parts else {}
    if "memory" in parts:
        res["memory"] = memory(a)
    res["seconds"] = round(time.time() - t0, 1)
    res["summary"], res["targets"] = (summarize(res, a) if {"converge", "daemon", "cni"} <= set(parts)
                                      else ({}, {}))
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)


def summarize(res, a):
    conv = {r["n"]: r for r in res["converge"]}
    d = res["daemon"]
    env = " (inside a TCG VM: absolute times inflated)" if a.in_vm else ""
    summary = {}
    for n, r in conv.items():
        line = (f"up {r['up_s']} s (cpu {r['up_cpu_s']} s, peak RSS {r['peak_rss_mib']} MiB), no-op {r['noop_s']} s, "
                f"down {r['down_s']} s, ready {r['ready']}/{n}, left {r['bridges_left']}")
        fl = r.get("floor")
        if fl:
            line += (f"; ip -batch floor up {fl['up_s']} s, down {fl['down_s']} s (by group {fl['down_group_s']} s)"
                     f"; portgroupd/floor up {round(r['up_s'] / fl['up_s'], 2)}x, down {round(r['down_s'] / fl['down_s'], 2)}x")
        summary[f"converge {n}"] = line
    lg = d["drift"].get("daemon_logged_ms", {})
    summary["drift repair"] = (f"p50 {d['drift']['repair'].get('p50')} ms, p99 {d['drift']['repair'].get('p99')} ms, "
                               f"{d['drift']['failures']} failed of {d['drift']['reps']} (daemon's own log: "
                               f"p50 {lg.get('p50')} ms, p99 {lg.get('p99')} ms over {lg.get('count')})")
    summary["rss idle"] = f"{d['rss_idle_kib']} KiB at {a.drift_n} portgroups"
    summary[f"rss at {a.rss_n}"] = (f"{d.get(f'rss_kib_at_{a.rss_n}')} KiB (peak {d.get(f'peak_rss_kib_at_{a.rss_n}')} KiB), "
                                    f"ready {d.get(f'start_to_ready_s_at_{a.rss_n}')} s after start")
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
    p.add_argument("--churn-pgs", type=int, default=100)
    p.add_argument("--churn-cycles", type=int, default=200)
    # With port security every DEL leaves its port's elements to portgroupd's
    # sweep: that work moves into the daemon and is counted against the target.
    p.add_argument("--churn-spoofcheck", action="store_true")
    p.add_argument("--memory-pgs", default="1000",
                   help="comma list of untagged portgroup counts for --parts memory (e.g. 1000,4094)")
    p.add_argument("--memory-reps", type=int, default=3)
    p.add_argument("--compare-daemon", help="--parts memory: also measure this portgroupd build, interleaved")
    p.add_argument("--floor-max", type=int, default=1000,
                   help="also time the ip -batch floor for converge levels up to this N")
    p.add_argument("--parts", default="converge,daemon,cni",
                   help="comma list of calibrate,converge,daemon,cni,churn,memory (targets are summarised only "
                        "with converge,daemon,cni)")
    a = p.parse_args()
    q = a.quick
    a.memory_pgs = [int(x) for x in a.memory_pgs.split(",")]
    a.levels = [int(x) for x in (a.levels or ("10,100" if q else "10,100,1000,4094")).split(",")]
    a.drift_reps = a.drift_reps or (10 if q else 100)
    a.rss_n = a.rss_n or (100 if q else 1000)
    a.idle_seconds = a.idle_seconds if a.idle_seconds is not None else (5 if q else 65)
    a.cni_cycles = a.cni_cycles or (20 if q else 50)
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else "/run"
    a.run_dir = f"{base}/{a.tag}-drun"
    # The config lives in its own directory: portgroupd watches the config's directory
    # (a ConfigMap volume), so a config inside the run dir would wake it on each of its
    # own state writes.
    a.conf_dir = f"{base}/{a.tag}-dconf"
    if not a.inner:
        sys.exit(outer(a))
    try:
        os.makedirs(a.conf_dir, exist_ok=True)
        inner(a)
    finally:
        subprocess.run(["rm", "-rf", a.run_dir, a.conf_dir])


if __name__ == "__main__":
    main()
