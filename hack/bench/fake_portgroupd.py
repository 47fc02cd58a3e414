#!/usr/bin/env python3
"""A stand-in for portgroupd, ONLY to test the benchmark harness's wiring
(daemon_bench.py) before the real daemon lands:

    hack/vm.sh 'python3 hack/bench/daemon_bench.py --daemon hack/bench/fake_portgroupd.py \
        --plugin target/release/portgroup --out /tmp/x.json --quick --in-vm'

Same command line and state.json shape as DESIGN.md's portgroupd; it reconciles by
running `ip -batch` and polls for drift every 20 ms. Its numbers mean nothing.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time


def links():
    out = subprocess.run(["ip", "-j", "-d", "link", "show"], capture_output=True, text=True).stdout
    return {l["ifname"]: l for l in json.loads(out or "[]")}


def reconcile(conf):
    uplink = conf["uplink"]
    have = links()
    want = {}
    batch = []
    for pg in conf["portgroups"]:
        v = pg["vlan"]
        vif, br = f"pgvfake.{v}", f"pgbrfake.{v}"
        want[vif], want[br] = pg, pg
        if br not in have:
            batch += [f"link add {br} type bridge", f"link set {br} alias portgroup:{pg['name']}"]
        if vif not in have:
            batch += [f"link add link {uplink} name {vif} type vlan id {v}",
                      f"link set {vif} alias portgroup:{pg['name']}"]
        if br not in have or vif not in have or have[vif].get("master") != br:
            batch += [f"link set {vif} master {br}"]
        if br not in have or "UP" not in have[br].get("flags", []):
            batch += [f"link set {br} up"]
        if vif not in have or "UP" not in have[vif].get("flags", []):
            batch += [f"link set {vif} up"]
    for name, l in have.items():
        if l.get("ifalias", "").startswith("portgroup:") and name not in want:
            batch.append(f"link del {name}")
    if batch:
        subprocess.run(["ip", "-force", "-batch", "-"], input="\n".join(batch) + "\n", text=True,
                       capture_output=True)
    return [{"name": pg["name"], "vlan": pg["vlan"], "uplink": uplink,
             "bridge": f"pgbrfake.{pg['vlan']}", "vlanInterface": f"pgvfake.{pg['vlan']}",
             "mtu": None, "ready": True, "reason": None} for pg in conf["portgroups"]]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True)
    p.add_argument("--node-name", required=True)
    p.add_argument("--run-dir", required=True)
    p.add_argument("--once", action="store_true")
    a = p.parse_args()
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    gen = 0
    while not stop:
        conf = json.load(open(a.config))
        pgs = reconcile(conf)
        gen += 1
        state = {"node": a.node_name, "generation": gen, "reconciledAt": "1970-01-01T00:00:00Z",
                 "portgroups": pgs}
        os.makedirs(a.run_dir, exist_ok=True)
        tmp = os.path.join(a.run_dir, ".state.json.tmp")
        with open(tmp, "w") as f:
            json.dump(state, f)
        os.rename(tmp, os.path.join(a.run_dir, "state.json"))
        if a.once:
            return 0
        time.sleep(0.02)
    return 0


if __name__ == "__main__":
    sys.exit(main())
