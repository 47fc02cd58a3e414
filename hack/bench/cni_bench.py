#!/usr/bin/env python3
"""CNI ADD/DEL benchmark: portgroup against Debian's reference bridge plugin and
against the kernel's own cost (one `ip -batch` process), interleaved.

Run it INSIDE the node network namespace, once (hack/bench.sh does):

    ip netns exec pgb-<tag>-node python3 hack/bench/cni_bench.py --pods pgb-<tag>-p --npods K ...

so that every plugin is exec'd directly, as a runtime does, and `ip netns exec`'s
own cost (mount namespace, /sys remount) is paid once, not per operation. The pod
namespaces (/run/netns/<pods><i>) and the bridge exist before it starts; it never
creates or deletes a namespace itself.

Sections (--sections, comma separated; default all):
  seq      ADD then DEL per contender, per cycle, contender order shuffled each cycle
  burst    100 ADDs at once, then 100 DELs at once, per contender, rounds interleaved; with
           --portgroupd, portgroupd runs in the node namespace meanwhile, as on a node (a DEL
           then leaves its port's nftables elements to its sweep; checked empty after each round)
  profile  where portgroup's ADD time goes: strace -c, an strace timeline, callgrind
  portsec  ADD+DEL with spoofCheck at 1/100/1000 existing port-security VM ports
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import Failures, Run, percentile, ratio, resolve, run, summary_ms  # noqa: E402

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
STATIC_IPAM = {"type": "static", "addresses": [{"address": "10.5.0.5/24"}]}


def mac_for(slot: int, n: int) -> str:
    return "02:b0:%02x:%02x:%02x:%02x" % (slot & 0xFF, (n >> 16) & 0xFF, (n >> 8) & 0xFF, n & 0xFF)


class Contender:
    """One way of attaching a pod to br0. `kind` is cni (a plugin), floor (ip -batch)
    or exec (a single process with no netlink work, for the profile)."""

    def __init__(self, name, kind, desc, binary=None, conf=None, env_extra=None, slot=0):
        self.name, self.kind, self.desc = name, kind, desc
        self.binary, self.conf, self.env_extra, self.slot = binary, conf, env_extra or {}, slot
        self.counter = 0

    # --- CNI -----------------------------------------------------------------
    def _cni_env(self, command, cid, netns, ifname, cni_path):
        env = {"PATH": PATH, "CNI_COMMAND": command, "CNI_PATH": cni_path}
        if cid is not None:
            env.update({"CNI_CONTAINERID": cid, "CNI_NETNS": netns, "CNI_IFNAME": ifname})
        env.update(self.env_extra)
        return env

    def _stdin(self, mac):
        conf = dict(self.conf)
        if mac:
            conf["runtimeConfig"] = {"mac": mac}
        return json.dumps(conf).encode()

    def add(self, a, cid, netns_name, ifname, mac) -> Run:
        if self.kind == "cni":
            env = self._cni_env("ADD", cid, f"/run/netns/{netns_name}", ifname, a.cni_path)
            return run([self.binary], env, self._stdin(mac))
        if self.kind == "floor":
            host = floor_name(cid)
            batch = (
                f"link add {ifname} netns {netns_name} address {mac} mtu {a.mtu} up "
                f"type veth peer name {host} address fe:{mac[3:]} mtu {a.mtu}\n"
                f"link set dev {host} master {a.bridge} up\n"
            )
            return run([a.ip, "-batch", "-"], {"PATH": PATH}, batch.encode())
        if self.kind == "exec":
            return run(self.binary, self._cni_env("VERSION", None, None, None, a.cni_path),
                       json.dumps(self.conf).encode() if self.conf else b"")
        raise ValueError(self.kind)

    def delete(self, a, cid, netns_name, ifname, mac) -> Run:
        if self.kind == "cni":
            env = self._cni_env("DEL", cid, f"/run/netns/{netns_name}", ifname, a.cni_path)
            return run([self.binary], env, self._stdin(mac))
        if self.kind == "floor":
            return run([a.ip, "-batch", "-"], {"PATH": PATH}, f"link del {floor_name(cid)}\n".encode())
        raise ValueError(self.kind)

    def next_cid(self, prefix="c"):
        self.counter += 1
        return f"{prefix}-{self.name}-{self.counter}"


def floor_name(cid: str) -> str:
    import hashlib

    return "fl" + hashlib.blake2s(cid.encode(), digest_size=6).hexdigest()


def base_conf(**extra):
    conf = {"cniVersion": "1.0.0", "name": "bench", "type": "portgroup"}
    conf.update(extra)
    return conf


def make_contenders(a):
    pg_env = {"PORTGROUP_RUN_DIR": a.run_dir}
    l2 = dict(bridge=a.bridge, conflictProbe=False, spoofCheck=False)
    c = [
        Contender("pg-l2", "cni", "portgroup bridge mode, plain L2, spoofCheck false",
                  a.plugin, base_conf(**l2), pg_env, 1),
        Contender("pg-static", "cni", "portgroup bridge mode, static IPAM delegated",
                  a.plugin, base_conf(**l2, ipam=STATIC_IPAM), pg_env, 2),
        Contender("ref-l2", "cni", "reference bridge plugin, ipam {}",
                  a.reference, {"cniVersion": "1.0.0", "name": "bench", "type": "bridge",
                                "bridge": a.bridge, "ipam": {}}, {}, 3),
        Contender("ref-static", "cni", "reference bridge plugin, static IPAM",
                  a.reference, {"cniVersion": "1.0.0", "name": "bench", "type": "bridge",
                                "bridge": a.bridge, "ipam": STATIC_IPAM}, {}, 4),
        Contender("floor", "floor", "one `ip -batch -` process: veth with peer made in the pod "
                  "netns (MAC, MTU, up), host end master br0 up / link del", slot=5),
        Contender("pg-portsec", "cni", "portgroup bridge mode, plain L2, spoofCheck TRUE",
                  a.plugin, base_conf(bridge=a.bridge, conflictProbe=False, spoofCheck=True),
                  pg_env, 6),
    ]
    if a.disk_run_dir:
        c.append(Contender("pg-l2-disk", "cni", "pg-l2 with the run dir on disk (ext4) instead of "
                           "tmpfs: the cost of the record's fsync", a.plugin, base_conf(**l2),
                           {"PORTGROUP_RUN_DIR": a.disk_run_dir}, 7))
    if a.compare:
        c.append(Contender("cmp-l2", "cni", f"pg-l2 with another build: {a.compare}", a.compare,
                           base_conf(**l2), {"PORTGROUP_RUN_DIR": os.path.join(a.run_dir, "cmp")}, 9))
        c.append(Contender("cmp-static", "cni", f"pg-static with another build: {a.compare}", a.compare,
                           base_conf(**l2, ipam=STATIC_IPAM), {"PORTGROUP_RUN_DIR": os.path.join(a.run_dir, "cmp")}, 10))
        c.append(Contender("cmp-portsec", "cni", f"pg-portsec with another build: {a.compare}", a.compare,
                           base_conf(bridge=a.bridge, conflictProbe=False, spoofCheck=True),
                           {"PORTGROUP_RUN_DIR": os.path.join(a.run_dir, "cmp")}, 12))
    if a.bridge_of_portgroupd:
        # The plugin refuses bridge mode on a bridge portgroupd made (code 109,
        # "attach to it with portgroup instead"), so there only portgroup mode
        # is measured, against the reference plugin and the floor.
        c = [x for x in c if x.name in ("ref-l2", "ref-static", "floor")]
    if not a.portgroup and a.synthetic_state:
        a.portgroup, a.portgroup_run_dir = "bench", os.path.join(a.run_dir, "pgmode")
        write_synthetic_state(a)
        desc = (f"portgroup mode: portgroup 'bench' -> {a.bridge}, resolved through a node state of "
                f"{a.synthetic_state} portgroups x 4 reservations written by the harness as portgroupd would")
    else:
        desc = f"portgroup mode (portgroup {a.portgroup!r}, node state from portgroupd)"
    if a.portgroup:
        c.append(Contender("pg-portgroup", "cni", desc, a.plugin,
                           base_conf(portgroup=a.portgroup, conflictProbe=False, spoofCheck=False),
                           {"PORTGROUP_RUN_DIR": a.portgroup_run_dir or a.run_dir}, 8))
    if a.synthetic_state and a.portgroup == "bench":
        c.append(Contender("pg-trunk", "cni",
                           "portgroup mode onto a trunk portgroup: 'bench-trunk' (trunk 100-110,200, "
                           "its bridge the bench bridge, MAC-only reservations) in the same node state; "
                           "the ADD attaches to the trunk's bridge exactly as to an access portgroup's",
                           a.plugin, base_conf(portgroup="bench-trunk", conflictProbe=False, spoofCheck=False),
                           {"PORTGROUP_RUN_DIR": a.portgroup_run_dir}, 12))
        c.append(Contender("pg-pgmode-json", "cni",
                           "portgroup mode through state.json alone: portgroup 'bench-nofile' has no "
                           "<run-dir>/portgroups/ file, so the plugin falls back to parsing the whole "
                           "state.json (what every portgroup-mode ADD did before the per-portgroup files)",
                           a.plugin, base_conf(portgroup="bench-nofile", conflictProbe=False, spoofCheck=False),
                           {"PORTGROUP_RUN_DIR": a.portgroup_run_dir}, 11))
    return c


def write_synthetic_state(a):
    """A node state like portgroupd's (docs/DESIGN.md, src/state.rs), so portgroup mode's ADD path
    (find the portgroup, read it, check it is ready) is measured on this kernel, which has no
    802.1Q: the plugin never touches the VLAN interface, only the portgroup's bridge.

    Written as portgroupd writes it: state.json with every portgroup, and one
    <run-dir>/portgroups/<name>.json per portgroup ({"node": ..., <the portgroup's fields>}),
    which is what the plugin reads on ADD. Two entries point at the bench bridge: "bench"
    (with its file) and "bench-nofile" (its file removed, so the plugin falls back to
    state.json: the pg-pgmode-json row, the cost before the per-portgroup files)."""
    pgs = []
    for i in range(max(a.synthetic_state, 2)):
        v = i + 1
        name = {0: "bench", 1: "bench-nofile"}.get(i, f"pg{v}")
        pgs.append({
            "name": name, "vlan": v, "uplink": "eth1",
            "bridge": a.bridge if i < 2 else f"pgbr0000.{v}", "vlanInterface": f"pgv0000.{v}",
            "mtu": 1500, "ready": True, "reason": None, "draining": False, "strict": False,
            "reservations": [{"mac": "00:50:56:%02x:%02x:%02x" % (v >> 8, v & 0xFF, r),
                              "ips": [f"10.{v >> 8}.{v & 0xFF}.{r + 10}/24",
                                      f"2001:db8:{v:x}::{r + 10:x}/64"]} for r in range(4)],
        })
    # A trunk portgroup as portgroupd publishes one: the plugin attaches to its
    # bridge (pgtb... on a node; the bench bridge here) the same way.
    pgs.append({
        "name": "bench-trunk", "mode": "trunk", "vlan": None, "trunk": "100-110,200",
        "uplink": "eth1", "bridge": a.bridge, "vlanInterface": "", "mtu": 1500, "ready": True,
        "reason": None, "draining": False, "strict": False,
        "reservations": [{"mac": "00:50:56:ff:00:%02x" % r, "ips": []} for r in range(4)],
    })
    state = {"node": "bench", "generation": 1, "reconciledAt": "2026-11-23T10:00:00Z",
             "configErrors": [], "portgroups": pgs}
    pg_dir = os.path.join(a.portgroup_run_dir, "portgroups")
    os.makedirs(pg_dir, exist_ok=True)
    for pg in pgs:
        if pg["name"] != "bench-nofile":
            with open(os.path.join(pg_dir, pg["name"] + ".json"), "w") as f:
                json.dump({"node": "bench", **pg}, f)
    with open(os.path.join(a.portgroup_run_dir, "state.json"), "w") as f:
        json.dump(state, f, indent=1)
    a.synthetic_state_bytes = os.path.getsize(os.path.join(a.portgroup_run_dir, "state.json"))


def exec_rows(a):
    """Single processes with no network work: what process start alone costs."""
    return [
        Contender("exec-true", "exec", "/bin/true: the harness's spawn+wait floor",
                  [resolve("true")], None, {}),
        Contender("pg-version", "exec", "portgroup VERSION: process start, stdin, JSON, no runtime",
                  [a.plugin], {"cniVersion": "1.0.0"}, {}),
        Contender("ref-version", "exec", "reference bridge VERSION: Go process start",
                  [a.reference], {"cniVersion": "1.0.0"}, {}),
        Contender("ip-start", "exec", "`ip -batch -` with nothing to do: iproute2 process start",
                  [a.ip, "-batch", "-"], None, {}),
    ]


# --- sections -----------------------------------------------------------------


def section_seq(a, contenders, pods):
    rng = random.Random(a.seed)
    execs = exec_rows(a)
    samples = {c.name: {"add": [], "del": [], "addel": [], "add_cpu": [], "del_cpu": [],
                        "addel_cpu": [], "add_minflt": []} for c in contenders}
    samples.update({c.name: {"op": [], "op_cpu": []} for c in execs})
    fails = {c.name: Failures() for c in contenders + execs}
    pod_of = {c.name: pods[i] for i, c in enumerate(contenders)}
    everything = contenders + execs
    total = a.warmup + a.cycles
    t_start = time.time()
    for cycle in range(total):
        order = everything[:]
        rng.shuffle(order)
        keep = cycle >= a.warmup
        for c in order:
            if c.kind == "exec":
                r = c.add(a, None, None, None, None)
                if r.rc != 0:
                    fails[c.name].add("op", r)
                elif keep:
                    samples[c.name]["op"].append(r.wall_ns)
                    samples[c.name]["op_cpu"].append(r.cpu_ns)
                continue
            cid = c.next_cid("s")
            mac = mac_for(c.slot, c.counter)
            ra = c.add(a, cid, pod_of[c.name], "net1", mac)
            rd = c.delete(a, cid, pod_of[c.name], "net1", mac)
            if ra.rc != 0:
                fails[c.name].add("ADD", ra)
            if rd.rc != 0:
                fails[c.name].add("DEL", rd)
            if keep and ra.rc == 0 and rd.rc == 0:
                s = samples[c.name]
                s["add"].append(ra.wall_ns)
                s["del"].append(rd.wall_ns)
                s["addel"].append(ra.wall_ns + rd.wall_ns)
                s["add_cpu"].append(ra.cpu_ns)
                s["del_cpu"].append(rd.cpu_ns)
                s["addel_cpu"].append(ra.cpu_ns + rd.cpu_ns)
                s["add_minflt"].append(ra.minflt)
        if a.progress and (cycle + 1) % 50 == 0:
            print(f"  seq: {cycle + 1}/{total} cycles, {time.time() - t_start:.0f} s", file=sys.stderr)
    out = {}
    for c in everything:
        out[c.name] = {"desc": c.desc, "failures": fails[c.name].as_json()}
        for k, v in samples[c.name].items():
            out[c.name][k] = {"p50": percentile(v, 50)} if k.endswith("minflt") else summary_ms(v)
    out["_meta"] = {"cycles": a.cycles, "warmup": a.warmup, "seconds": round(time.time() - t_start, 1),
                    "order": "shuffled per cycle (seed %d)" % a.seed}
    return out


def sanity(a, contenders, pods):
    """One ADD per contender, then look: pod side up with the MAC, host side on br0."""
    res = {}
    for i, c in enumerate(contenders):
        cid, mac, pod = c.next_cid("sanity"), mac_for(c.slot, 0xFFFF), pods[i]
        r = c.add(a, cid, pod, "net1", mac)
        brif_before = set(os.listdir(f"/sys/class/net/{a.bridge}/brif"))
        pod_link = subprocess.run([a.ip, "-n", pod, "-j", "addr", "show", "dev", "net1"],
                                  capture_output=True, text=True)
        info = {"add_rc": r.rc}
        try:
            link = json.loads(pod_link.stdout)[0]
            info.update(pod_mac_ok=link.get("address") == mac, pod_up="UP" in link.get("flags", []),
                        pod_mtu=link.get("mtu"),
                        pod_addrs=[f"{x['local']}/{x['prefixlen']}" for x in link.get("addr_info", [])
                                   if x.get("family") == "inet"])
        except (ValueError, IndexError):
            info["pod_link"] = "missing"
        if c.name == "pg-portsec":
            info["portsec_set_before_del"] = secured_ports()
        d = c.delete(a, cid, pod, "net1", mac)
        if c.name == "pg-portsec":
            info["portsec_set_after_del"] = secured_ports()
        brif_after = set(os.listdir(f"/sys/class/net/{a.bridge}/brif"))
        info.update(host_ports_added=len(brif_before - brif_after), del_rc=d.rc,
                    pod_link_gone=subprocess.run([a.ip, "-n", pod, "link", "show", "net1"],
                                                 capture_output=True).returncode != 0)
        if r.rc != 0:
            info["add_error"] = (r.stdout or r.stderr).decode(errors="replace")[:300]
        res[c.name] = info
    return res


def _burst_phase(a, c, items, op):
    """Starts len(items) processes at once (threads released by one barrier)."""
    barrier = threading.Barrier(len(items))
    runs: list[Run | None] = [None] * len(items)

    def worker(i, cid, pod, mac):
        barrier.wait()
        runs[i] = (c.add if op == "ADD" else c.delete)(a, cid, pod, "net1", mac)

    threads = [threading.Thread(target=worker, args=(i, *it)) for i, it in enumerate(items)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = max(r.end_ns for r in runs) - min(r.start_ns for r in runs)
    f = Failures()
    for r in runs:
        if r.rc != 0:
            f.add(op, r)
    return {"wall_ms": round(wall / 1e6, 1), "failures": f.count, "errors": f.first,
            "per_op": summary_ms([r.wall_ns for r in runs])}


class Portgroupd:
    """portgroupd in the node namespace (this one), as on a node: no portgroups, its
    port-security sweep on. Where it runs, a DEL leaves its port's elements to the sweep
    (portgroup::sweeper), so the burst rows measure that, with the daemon's own work
    competing for the same cores."""

    def __init__(self, a):
        self.lock = os.path.join(a.run_dir, "portgroupd.lock")
        conf = os.path.join(a.scratch, "portgroupd-bench.json")
        with open(conf, "w") as f:
            json.dump({"uplink": "pgb-none", "portgroups": []}, f)
        self.log = open(os.path.join(a.scratch, "portgroupd-bench.log"), "w")
        self.proc = subprocess.Popen(
            [a.portgroupd, "--config", conf, "--run-dir", a.run_dir, "--node-name", "bench",
             "--device-plugin-dir", "", "--resync", "3600", "--log-level", "info"],
            stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.time() + 20
        while not self.sweeping():
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                sys.exit(f"portgroupd did not take its sweeper lock; log: {self.log.name}")
            time.sleep(0.05)

    def sweeping(self):
        import fcntl
        try:
            with open(self.lock) as f:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return False
        except BlockingIOError:
            return True
        except OSError:
            return False

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def _swept(timeout_s=10.0):
    """Waits until the port-security set is empty (the sweep removed what the DELs
    left); returns (ports left, seconds waited). Not part of any timed phase."""
    t0 = time.time()
    left = secured_ports()
    while left and time.time() - t0 < timeout_s:
        time.sleep(0.05)
        left = secured_ports()
    return left, round(time.time() - t0, 2)


def section_burst(a, contenders, pods):
    daemon = Portgroupd(a) if a.portgroupd else None
    try:
        return _section_burst(a, contenders, pods, daemon)
    finally:
        if daemon:
            daemon.stop()


def _section_burst(a, contenders, pods, daemon):
    rng = random.Random(a.seed + 1)
    res = {c.name: [] for c in contenders}
    brif = f"/sys/class/net/{a.bridge}/brif"
    for rnd in range(a.burst_rounds):
        order = contenders[:]
        rng.shuffle(order)
        for c in order:
            base = len(os.listdir(brif))
            items = []
            for i in range(a.burst):
                cid = c.next_cid(f"b{rnd}")
                items.append((cid, pods[i], mac_for(c.slot, c.counter)))
            add = _burst_phase(a, c, items, "ADD")
            add["ports_on_bridge"] = len(os.listdir(brif)) - base
            dele = _burst_phase(a, c, items, "DEL")
            dele["ports_left"] = len(os.listdir(brif)) - base
            leftovers = sum(1 for p in set(p for _, p, _ in items)
                            if os.path.exists(f"/run/netns/{p}") and _has_link(a, p, "net1"))
            dele["pod_links_left"] = leftovers
            # Nothing leaks: every port's elements are gone, by the DELs or by the sweep.
            dele["portsec_ports_left"], dele["sweep_wait_s"] = _swept()
            # A failed round must not poison the next: clean up whatever is left.
            if leftovers or dele["ports_left"]:
                for cid, pod, mac in items:
                    c.delete(a, cid, pod, "net1", mac)
                    subprocess.run([a.ip, "-n", pod, "link", "del", "net1"], capture_output=True)
            res[c.name].append({"add": add, "del": dele})
            if a.progress:
                print(f"  burst round {rnd + 1}: {c.name}: ADD {add['wall_ms']} ms "
                      f"({add['failures']} failed), DEL {dele['wall_ms']} ms ({dele['failures']} failed)",
                      file=sys.stderr)
    out = {}
    for name, rounds in res.items():
        out[name] = {
            "rounds": rounds,
            "add_wall_ms_p50": percentile([r["add"]["wall_ms"] for r in rounds], 50),
            "del_wall_ms_p50": percentile([r["del"]["wall_ms"] for r in rounds], 50),
            "failures": sum(r["add"]["failures"] + r["del"]["failures"] for r in rounds),
            "ok_ports_every_round": all(r["add"]["ports_on_bridge"] == a.burst and r["del"]["ports_left"] == 0
                                        and not r["del"]["portsec_ports_left"] for r in rounds),
        }
    out["_meta"] = {"burst": a.burst, "rounds": a.burst_rounds, "portgroupd_running": bool(daemon)}
    return out


def _has_link(a, pod, ifname):
    return subprocess.run([a.ip, "-n", pod, "link", "show", ifname], capture_output=True).returncode == 0


def secured_ports():
    """Ports in portgroup's port-security set (`table bridge portgroup`, set `ports`) in
    this netns, or None without nft or without the table: proof the rows measure real rules."""
    nft = _which("nft")
    if not nft:
        return None
    r = subprocess.run([nft, "-j", "list", "set", "bridge", "portgroup", "ports"], capture_output=True, text=True)
    if r.returncode != 0:
        return None
    try:
        for item in json.loads(r.stdout).get("nftables", []):
            if "set" in item:
                return len(item["set"].get("elem", []))
    except ValueError:
        return None
    return None


def flood_rate(a, pod, ifname="net1"):
    """Frames per second the bridge floods to one port (background chatter), over 1 s."""
    path = f"/sys/class/net/{a.bridge}/brif"
    ports = sorted(os.listdir(path))
    if not ports:
        return None
    stat = f"/sys/class/net/{ports[0]}/statistics/tx_packets"
    x = int(open(stat).read())
    time.sleep(1)
    return int(open(stat).read()) - x


def section_portsec(a, contenders, pods):
    """Existing spoofCheck ports 1 -> 100 -> 1000, then ADD+DEL of one more, p50, with pg-l2
    (same plugin, spoofCheck false) and the floor interleaved as baselines, so the ratio
    portsec/baseline at each level holds however loaded the machine is at that moment.

    The fill ports' pod ends share one namespace with IPv6 disabled: they stand for idle VMs.
    With IPv6 on, 1000 interfaces' DAD/RS/MLD chatter is flooded by the bridge to every port
    (~50 frames/s/port, a third of a core in softirq here), which swamps what is measured."""
    by = {c.name: c for c in contenders}
    ps, base, floor = by["pg-portsec"], by["pg-l2"], by["floor"]
    measured = [ps, base, floor]
    fill_pod = pods[0]
    subprocess.run([a.ip, "netns", "exec", fill_pod, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                    "net.ipv6.conf.default.disable_ipv6=1"], check=False)
    measure_pods = {c.name: pods[1 + i] for i, c in enumerate(measured)}
    rng = random.Random(a.seed + 2)
    filled, fill_fail = 0, Failures()
    lock = threading.Lock()
    res = []

    def fill_to(n):
        nonlocal filled
        todo = list(range(filled, n))

        def worker():
            while True:
                with lock:
                    if not todo:
                        return
                    i = todo.pop(0)
                r = ps.add(a, f"fill-{i}", fill_pod, f"f{i}", mac_for(0x0F, i))
                if r.rc != 0:
                    with lock:
                        fill_fail.add("fill ADD", r)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        filled = n

    for level in a.portsec_levels:
        t0 = time.time()
        fill_to(level)
        fill_s = time.time() - t0
        time.sleep(a.portsec_settle)
        samples = {c.name: {"add": [], "addel": []} for c in measured}
        failures = Failures()
        for rep in range(a.portsec_reps + 2):
            order = measured[:]
            rng.shuffle(order)
            for c in order:
                cid = c.next_cid(f"ps{level}")
                mac = mac_for(c.slot, c.counter)
                ra = c.add(a, cid, measure_pods[c.name], "net1", mac)
                rd = c.delete(a, cid, measure_pods[c.name], "net1", mac)
                if ra.rc or rd.rc:
                    failures.add("ADD" if ra.rc else "DEL", ra if ra.rc else rd)
                elif rep >= 2:
                    samples[c.name]["add"].append(ra.wall_ns)
                    samples[c.name]["addel"].append(ra.wall_ns + rd.wall_ns)
        row = {"existing_ports": level, "fill_seconds": round(fill_s, 1),
               "ports_on_bridge": len(os.listdir(f"/sys/class/net/{a.bridge}/brif")),
               "ports_in_portsec_set": secured_ports(),
               "background_frames_per_port_per_s": flood_rate(a, fill_pod),
               "failures": failures.as_json()}
        for name, s in samples.items():
            row[name] = {"add": summary_ms(s["add"]), "addel": summary_ms(s["addel"])}
        row["portsec_over_baseline_add_p50"] = ratio(row[ps.name]["add"].get("p50"),
                                                     row[base.name]["add"].get("p50"))
        row["portsec_over_floor_add_p50"] = ratio(row[ps.name]["add"].get("p50"),
                                                  row[floor.name]["add"].get("p50"))
        res.append(row)
        if a.progress:
            print(f"  portsec at {level} ports: ADD p50 {row[ps.name]['add'].get('p50')} ms "
                  f"(pg-l2 {row[base.name]['add'].get('p50')} ms, floor {row[floor.name]['add'].get('p50')} ms)",
                  file=sys.stderr)
    first, last = res[0], res[-1]
    flat = {
        "add_p50_ratio_last_vs_first": ratio(last[ps.name]["add"].get("p50"), first[ps.name]["add"].get("p50")),
        "floor_add_p50_ratio_last_vs_first": ratio(last[floor.name]["add"].get("p50"),
                                                   first[floor.name]["add"].get("p50")),
        "normalised_ratio_last_vs_first": ratio(last["portsec_over_baseline_add_p50"],
                                                first["portsec_over_baseline_add_p50"]),
        "note": "normalised = (portsec/pg-l2 at the last level) / (portsec/pg-l2 at the first); "
                "1.0 is perfectly flat; the target counts <= 1.25 as flat",
    }
    return {"levels": res, "flatness": flat, "fill_failures": fill_fail.as_json(),
            "reps": a.portsec_reps, "settle_seconds": a.portsec_settle}


def strace_cmd(a, c, cid, pod, mac, extra):
    env = c._cni_env("ADD", cid, f"/run/netns/{pod}", "net1", a.cni_path)
    return run([a.strace] + extra + ["--", c.binary], env, c._stdin(mac))


def parse_strace_c(path):
    rows = []
    for line in open(path):
        m = re.match(r"\s*([\d.]+)\s+([\d.]+)\s+(\d+)\s+(\d+)\s+(\d+)?\s*(\w+)\s*$", line)
        if m and m.group(6) != "total":
            rows.append({"syscall": m.group(6), "calls": int(m.group(4)),
                         "errors": int(m.group(5) or 0), "seconds": float(m.group(2))})
    return rows


PERF_LINE = re.compile(r"^\s*([\d.]+|\?) \(\s*([\d.]*) ?m?s?\s*\): (\S+)/(\d+)\s+(.*)$")
NLMSG = {"0x10": "RTM_NEWLINK", "0x11": "RTM_DELLINK", "0x12": "RTM_GETLINK", "0x13": "RTM_SETLINK",
         "0x14": "RTM_NEWADDR", "0x16": "RTM_GETADDR", "0x18": "RTM_NEWROUTE"}


def netlink_types(strace_file):
    """The nlmsg_type of every netlink request, in order, per process, from an strace -f log."""
    types = []
    for line in open(strace_file):
        if " sendto(" in line or " sendmsg(" in line:
            m = re.search(r"nlmsg_type=(RTM_\w+|0x[0-9a-f]+)", line)
            if m:
                types.append(NLMSG.get(m.group(1), m.group(1)))
    return types


def perf_events(path):
    """perf trace -T output, one dict per syscall, in time order. A blocked syscall shows
    up again as "... [continued]: name()" with its start time and duration: its time here
    is when it returned."""
    evs = []
    for line in open(path):
        m = PERF_LINE.match(line.rstrip())
        if not m or m.group(1) == "?":
            continue
        ts, dur, comm, tid, rest = m.groups()
        t, d = float(ts), float(dur or 0)
        if rest.startswith("..."):
            call = "continued:" + rest.split(":", 1)[1].strip().split("(", 1)[0]
            t += d
        else:
            call = rest.split("(", 1)[0].strip()
        evs.append({"t": t, "dur": d, "comm": comm, "tid": int(tid), "call": call, "rest": rest,
                    "end": t if call.startswith("continued:") else t + d})
    evs.sort(key=lambda e: e["t"])
    return evs


def perf_marks(evs, nl_types):
    """Named points in one ADD, in time order; the span to the next mark is its cost."""
    marks, sends, sockets, children = [], 0, 0, set()
    main_tid = evs[0]["tid"] if evs else None
    for i, e in enumerate(evs):
        c, rest, lab = e["call"], e["rest"], None
        if i == 0:
            lab = "ld.so + std init"
        elif e["tid"] != main_tid:
            if c == "setns":
                lab = "thread: setns into the pod netns, open socket"
            elif (e["comm"] not in ("portgroup", "netns") and not e["comm"].startswith(":")
                  and e["comm"] not in children):
                children.add(e["comm"])
                lab = f"child {e['comm']} runs (IPAM plugin, until reaped)"
        elif c == "read" and "fd:" not in rest.split(")")[0]:
            lab = "main: read stdin, parse config, logging init"
        elif c == "epoll_create1":
            lab = "tokio runtime"
        elif c == "socket" and "NETLINK" in rest:
            sockets += 1
            lab = f"netlink socket #{sockets}"
        elif c in ("sendto", "sendmsg"):
            t = nl_types[sends] if sends < len(nl_types) else "?"
            sends += 1
            lab = f"netlink {t}"
        elif c == "fstatfs":
            lab = "open pod netns, look for an existing record"
        elif c == "mkdir":
            lab = "write record (create, write, rename)"
        elif c in ("clone3", "clone", "vfork"):
            lab = "clone (thread or IPAM child)"
        elif c == "continued:futex":
            lab = "thread joined"
        elif c in ("wait4", "continued:wait4"):
            lab = "IPAM child reaped, result parsed"
        elif c == "write" and "fd: 1," in rest:
            lab = "write result to stdout"
        elif c == "exit_group":
            lab = "exit_group"
        if lab and not (marks and marks[-1][1] == lab):
            marks.append((e["t"], lab))
    end = max((e["end"] for e in evs), default=0)
    out = []
    for i, (t, lab) in enumerate(marks):
        nxt = marks[i + 1][0] if i + 1 < len(marks) else end
        out.append((lab, nxt - t))
    return out, (end - evs[0]["t"]) if evs else 0


def perf_timeline(a, c, pod, tmp, runs, slot_base):
    """Median span per step over `runs` ADDs traced with perf trace (low overhead, no ptrace);
    netlink request types come from one strace'd ADD (perf trace shows no payload)."""
    cid, mac = c.next_cid("tlx"), mac_for(c.slot, slot_base)
    f = os.path.join(tmp, f"nl-{c.name}")
    strace_cmd(a, c, cid, pod, mac, ["-f", "-s", "96", "-o", f])
    c.delete(a, cid, pod, "net1", mac)
    types = netlink_types(f)
    per_step, totals, keys_order = {}, [], None
    for i in range(runs):
        cid, mac = c.next_cid("tl"), mac_for(c.slot, slot_base + 1 + i)
        f = os.path.join(tmp, f"pt-{c.name}-{i}")
        env = c._cni_env("ADD", cid, f"/run/netns/{pod}", "net1", a.cni_path)
        r = run([a.perf, "trace", "-T", "-o", f, "--", c.binary], env, c._stdin(mac))
        c.delete(a, cid, pod, "net1", mac)
        if r.rc != 0:
            return {"error": r.stderr.decode(errors="replace")[-300:]}
        steps, total = perf_marks(perf_events(f), types)
        keys = []
        for lab, span in steps:
            k = lab
            n = 2
            while k in keys:
                k, n = f"{lab} #{n}", n + 1
            keys.append(k)
            per_step.setdefault(k, []).append(span)
        totals.append(total)
        keys_order = keys_order or keys
    rows = [{"step": k, "p50_ms": round(percentile(per_step[k], 50), 3), "runs": len(per_step[k])}
            for k in keys_order]
    return {"netlink_requests": types, "traced_total_p50_ms": round(percentile(totals, 50), 3),
            "steps": rows, "runs": runs,
            "note": "perf trace -T: wall time from the first syscall after execve to the last; "
                    "each step runs until the next one starts"}


def section_profile(a, contenders, pods):
    by = {c.name: c for c in contenders}
    pg = by["pg-l2"]
    pod = pods[0]
    out = {}
    tmp = tempfile.mkdtemp(prefix="pgb-prof-", dir=a.scratch)
    try:
        if a.strace:
            # syscall counts over a few ADDs (each followed by an untraced DEL).
            for name in ("pg-l2", "pg-static", "ref-l2"):
                c = by[name]
                per, reps = {}, 3
                for i in range(reps):
                    cid, mac = c.next_cid("prof"), mac_for(c.slot, 0xF000 + i)
                    f = os.path.join(tmp, f"c-{name}-{i}")
                    r = strace_cmd(a, c, cid, pod, mac, ["-f", "-c", "-o", f])
                    c.delete(a, cid, pod, "net1", mac)
                    if r.rc != 0:
                        out[f"strace_error_{name}"] = r.stderr.decode(errors="replace")[-500:]
                        break
                    for row in parse_strace_c(f):
                        p = per.setdefault(row["syscall"], {"calls": 0, "errors": 0})
                        p["calls"] += row["calls"]
                        p["errors"] += row["errors"]
                out[f"syscalls_{name}"] = {
                    "total_per_add": round(sum(v["calls"] for v in per.values()) / reps, 1),
                    "top": {k: round(v["calls"] / reps, 1)
                            for k, v in sorted(per.items(), key=lambda x: -x[1]["calls"])[:12]},
                }
        if a.perf and a.strace:
            for name in ("pg-l2", "pg-static"):
                out[f"timeline_{name}"] = perf_timeline(a, by[name], pod, tmp, a.profile_runs, 0xE000)
        if a.valgrind:
            out["callgrind"] = callgrind(a, by, pod, tmp)
    finally:
        subprocess.run(["rm", "-rf", tmp])
    return out


def callgrind(a, by, pod, tmp):
    """Instruction counts (user space only, repeatable): one ADD of pg-l2, VERSION, the floor."""
    res = {}
    pg = by["pg-l2"]
    # The same code with its symbols (profile "profiling"), so functions have names.
    binary = a.symbols_plugin or pg.binary

    def vg(tag, argv, env, stdin):
        f = os.path.join(tmp, f"cg-{tag}")
        r = run([a.valgrind, "--tool=callgrind", f"--callgrind-out-file={f}", "--"] + argv, env, stdin)
        if r.rc != 0:
            return None, r
        return f, r

    cid, mac = pg.next_cid("cg"), mac_for(pg.slot, 0xF300)
    f, r = vg("add", [binary], pg._cni_env("ADD", cid, f"/run/netns/{pod}", "net1", a.cni_path), pg._stdin(mac))
    pg.delete(a, cid, pod, "net1", mac)
    if f:
        res["pg_add"] = annotate(f)
    else:
        res["pg_add_error"] = r.stderr.decode(errors="replace")[-400:]
    # One ADD with port security, of the benched binary itself (static when hack/bench.sh
    # built it: no dynamic loader); the table already exists, earlier sections made it.
    ps = by["pg-portsec"]
    cid, mac = ps.next_cid("cg"), mac_for(ps.slot, 0xF300)
    f, r = vg("portsec", [ps.binary], ps._cni_env("ADD", cid, f"/run/netns/{pod}", "net1", a.cni_path),
              ps._stdin(mac))
    ps.delete(a, cid, pod, "net1", mac)
    if f:
        res["pg_portsec_add"] = annotate(f, top=0)
    if "cmp-portsec" in by:
        c = by["cmp-portsec"]
        cid, mac = c.next_cid("cg"), mac_for(c.slot, 0xF300)
        f, r = vg("cmp-portsec", [c.binary], c._cni_env("ADD", cid, f"/run/netns/{pod}", "net1", a.cni_path),
                  c._stdin(mac))
        c.delete(a, cid, pod, "net1", mac)
        if f:
            res["cmp_portsec_add"] = annotate(f, top=0)
    f, _ = vg("ver", [binary], pg._cni_env("VERSION", None, None, None, a.cni_path), b'{"cniVersion":"1.0.0"}')
    if f:
        res["pg_version"] = annotate(f, top=0)
    fl = by["floor"]
    cid, mac = fl.next_cid("cg"), mac_for(fl.slot, 0xF300)
    host = floor_name(cid)
    batch = (f"link add net1 netns {pod} address {mac} mtu {a.mtu} up type veth peer name {host} "
             f"address fe:{mac[3:]} mtu {a.mtu}\nlink set dev {host} master {a.bridge} up\n")
    f, _ = vg("floor", [a.ip, "-batch", "-"], {"PATH": PATH}, batch.encode())
    fl.delete(a, cid, pod, "net1", mac)
    if f:
        res["floor_add"] = annotate(f, top=0)
    f, _ = vg("true", [resolve("true")], {"PATH": PATH}, b"")
    if f:
        res["true"] = annotate(f, top=0)
    return res


def annotate(path, top=25):
    out = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", path],
                         capture_output=True, text=True).stdout
    total = None
    fns = []
    for line in out.splitlines():
        m = re.match(r"^\s*([\d,]+)\s+\(?.*PROGRAM TOTALS", line)
        if m:
            total = int(m.group(1).replace(",", ""))
            continue
        m = re.match(r"^\s*([\d,]+)\s+\(\s*([\d.]+)%\)\s+(.*)$", line)
        if m and total:
            fns.append({"ir": int(m.group(1).replace(",", "")), "pct": float(m.group(2)),
                        "fn": m.group(3)[:160]})
    res = {"instructions": total}
    if top:
        res["top_inclusive"] = fns[:top]
    return res


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plugin", required=True)
    p.add_argument("--symbols-plugin", default=None,
                   help="the plugin built with --profile profiling, for callgrind's function names")
    p.add_argument("--reference", default="/usr/lib/cni/bridge")
    p.add_argument("--cni-path", default="/usr/lib/cni")
    p.add_argument("--bridge", default="br0")
    p.add_argument("--mtu", type=int, default=1500)
    p.add_argument("--run-dir", required=True, help="PORTGROUP_RUN_DIR (tmpfs, like /run)")
    p.add_argument("--disk-run-dir", help="a run dir on disk for the pg-l2-disk row")
    p.add_argument("--portgroup", help="also bench portgroup mode with this portgroup (needs a node state)")
    p.add_argument("--portgroup-run-dir")
    p.add_argument("--bridge-of-portgroupd", action="store_true",
                   help="--bridge is a portgroup's bridge made by portgroupd: leave out the "
                        "bridge-mode contenders, which the plugin refuses there")
    p.add_argument("--compare", help="another portgroup binary: adds cmp-l2 and cmp-static rows")
    p.add_argument("--synthetic-state", type=int, default=0,
                   help="without --portgroup: bench portgroup mode against a node state of N portgroups "
                        "written by the harness (0: no portgroup-mode row)")
    p.add_argument("--pods", required=True, help="pod netns name prefix: <prefix><i> for i < --npods")
    p.add_argument("--npods", type=int, required=True)
    p.add_argument("--cycles", type=int, default=200)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--burst", type=int, default=100)
    p.add_argument("--burst-rounds", type=int, default=3)
    p.add_argument("--portgroupd", help="run this portgroupd in the node namespace during the burst "
                   "section, as on a node (DELs then leave their ports' elements to its sweep)")
    p.add_argument("--portsec-levels", default="1,100,1000")
    p.add_argument("--portsec-reps", type=int, default=40)
    p.add_argument("--portsec-settle", type=float, default=5.0,
                   help="seconds to wait after filling, for the new ports' DAD to finish")
    p.add_argument("--sections", default="seq,burst,profile,portsec")
    p.add_argument("--profile-runs", type=int, default=15)
    p.add_argument("--seed", type=int, default=6)
    p.add_argument("--scratch", default=tempfile.gettempdir())
    p.add_argument("--out", required=True)
    p.add_argument("--progress", action="store_true")
    a = p.parse_args()
    a.portsec_levels = [int(x) for x in a.portsec_levels.split(",")]
    a.ip = resolve("ip")
    a.strace = _which("strace")
    a.valgrind = _which("valgrind") if _which("callgrind_annotate") else None
    a.perf = _which("perf")
    if a.perf and subprocess.run([a.perf, "trace", "-o", "/dev/null", "--", "true"],
                                 capture_output=True).returncode != 0:
        a.perf = None
    sections = a.sections.split(",")

    contenders = make_contenders(a)
    pods = [f"{a.pods}{i}" for i in range(a.npods)]
    need = max(a.burst if "burst" in sections else 0, len(contenders) + 4)
    if len(pods) < need:
        sys.exit(f"need {need} pod namespaces, got {len(pods)}")
    if not os.path.isdir(f"/sys/class/net/{a.bridge}/brif"):
        sys.exit(f"bridge {a.bridge} not found: run me inside the node netns")

    result = {
        "contenders": {c.name: c.desc for c in contenders},
        "synthetic_state": ({"portgroups": max(a.synthetic_state, 2), "state_json_bytes": a.synthetic_state_bytes}
                            if getattr(a, "synthetic_state_bytes", None) else None),
        "python": platform.python_version(),
        "tools": {"strace": bool(a.strace), "valgrind": bool(a.valgrind), "perf_trace": bool(a.perf)},
    }
    seq_pods = pods[-len(contenders):]
    result["sanity"] = sanity(a, contenders, seq_pods)
    broken = [c.name for c in contenders if result["sanity"][c.name]["add_rc"] != 0]
    if broken:
        print(f"!! excluded, their sanity ADD failed: {broken}", file=sys.stderr)
        result["excluded"] = broken
        if "pg-l2" in broken:
            with open(a.out, "w") as f:
                json.dump(result, f, indent=1)
            sys.exit(f"pg-l2 itself fails: see the sanity section of {a.out}")
    for section in sections:
        t0 = time.time()
        if a.progress:
            print(f"== {section}", file=sys.stderr)
        if broken:
            contenders = [c for c in contenders if c.name not in broken]
        if section == "seq":
            result["seq"] = section_seq(a, contenders, seq_pods)
        elif section == "burst":
            result["burst"] = section_burst(a, [c for c in contenders
                                                if c.name not in ("pg-l2-disk", "pg-pgmode-json")], pods)
        elif section == "profile":
            result["profile"] = section_profile(a, contenders, seq_pods)
        elif section == "portsec":
            result["portsec"] = section_portsec(a, contenders, pods)
        else:
            sys.exit(f"unknown section {section}")
        result.setdefault("section_seconds", {})[section] = round(time.time() - t0, 1)
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)


def _which(prog):
    try:
        return resolve(prog)
    except FileNotFoundError:
        return None


if __name__ == "__main__":
    main()
