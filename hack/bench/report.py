#!/usr/bin/env python3
"""Merges bench-results/cni.json, daemon.json, trunk.json and deviceplugin*.json into bench.json, adds the machine,
the ratios and the target verdicts (reported, never asserted), prints the tables."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import ratio  # noqa: E402


def sh(*argv):
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def machine():
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "loadavg_at_report": open("/proc/loadavg").read().split()[:3],
        "mem_total_kib": next((int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal")), None),
        "reference_plugin": sh("dpkg-query", "-W", "-f=${Version}", "containernetworking-plugins"),
        "iproute2": sh("ip", "-V"),
        "git": sh("git", "rev-parse", "--short", "HEAD"),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def p50(seq, name, key):
    return seq.get(name, {}).get(key, {}).get("p50")


def verdict(ok):
    return None if ok is None else ("met" if ok else "MISSED")


def build(cni, daemon, calib_host=None):
    seq = cni.get("seq", {})
    r = {}
    for key in ("addel", "addel_cpu", "add", "del"):
        r[key] = {
            "pg-l2/ref-l2": ratio(p50(seq, "pg-l2", key), p50(seq, "ref-l2", key)),
            "pg-static/ref-static": ratio(p50(seq, "pg-static", key), p50(seq, "ref-static", key)),
            "pg-l2/floor": ratio(p50(seq, "pg-l2", key), p50(seq, "floor", key)),
            "ref-l2/floor": ratio(p50(seq, "ref-l2", key), p50(seq, "floor", key)),
            "pg-portsec/pg-l2": ratio(p50(seq, "pg-portsec", key), p50(seq, "pg-l2", key)),
            "pg-portsec/ref-l2": ratio(p50(seq, "pg-portsec", key), p50(seq, "ref-l2", key)),
            "pg-portsec/floor": ratio(p50(seq, "pg-portsec", key), p50(seq, "floor", key)),
        }
        if "pg-l2-disk" in seq:
            r[key]["pg-l2-disk/pg-l2"] = ratio(p50(seq, "pg-l2-disk", key), p50(seq, "pg-l2", key))
        if "cmp-l2" in seq:
            r[key]["cmp-l2/pg-l2"] = ratio(p50(seq, "cmp-l2", key), p50(seq, "pg-l2", key))
            r[key]["cmp-static/pg-static"] = ratio(p50(seq, "cmp-static", key), p50(seq, "pg-static", key))
            r[key]["cmp-l2/floor"] = ratio(p50(seq, "cmp-l2", key), p50(seq, "floor", key))
            r[key]["cmp-l2/ref-l2"] = ratio(p50(seq, "cmp-l2", key), p50(seq, "ref-l2", key))
        if "cmp-portsec" in seq:
            r[key]["cmp-portsec/pg-portsec"] = ratio(p50(seq, "cmp-portsec", key), p50(seq, "pg-portsec", key))
            r[key]["cmp-portsec/ref-l2"] = ratio(p50(seq, "cmp-portsec", key), p50(seq, "ref-l2", key))
        if "pg-portgroup" in seq:
            r[key]["pg-portgroup/ref-l2"] = ratio(p50(seq, "pg-portgroup", key), p50(seq, "ref-l2", key))
            r[key]["pg-portgroup/pg-l2"] = ratio(p50(seq, "pg-portgroup", key), p50(seq, "pg-l2", key))
        if "pg-trunk" in seq and "pg-portgroup" in seq:
            r[key]["pg-trunk/pg-portgroup"] = ratio(p50(seq, "pg-trunk", key), p50(seq, "pg-portgroup", key))
        if "pg-pgmode-json" in seq:
            r[key]["pg-pgmode-json/pg-l2"] = ratio(p50(seq, "pg-pgmode-json", key), p50(seq, "pg-l2", key))
    burst = cni.get("burst", {})
    pg_burst = {k: v for k, v in burst.items() if k.startswith("pg-")}
    ps = cni.get("portsec", {}).get("flatness", {})
    targets = {}
    if seq:
        a = r["addel"]["pg-l2/ref-l2"]
        targets["addel_p50 <= 0.25x reference"] = {"value": a, "static_ipam": r["addel"]["pg-static/ref-static"],
                                                  "verdict": verdict(None if a is None else a <= 0.25)}
        a = r["addel"]["pg-l2/floor"]
        targets["addel_p50 <= 2x ip -batch floor"] = {"value": a, "verdict": verdict(None if a is None else a <= 2)}
        a = r["add"]["pg-portsec/ref-l2"]
        targets["ADD p50 with port security <= 0.50x reference"] = {
            "value": a, "verdict": verdict(None if a is None else a <= 0.50),
            "note": "pg-portsec ADD / ref-l2 ADD (the reference without macspoofchk), whole process"}
        a = r["add"]["pg-portsec/floor"]
        targets["ADD p50 with port security <= 1.10x ip floor"] = {
            "value": a, "plain_l2": r["add"]["pg-l2/floor"], "verdict": verdict(None if a is None else a <= 1.10),
            "note": "pg-portsec ADD / the ip -batch floor's ADD (plain_l2: pg-l2 / floor)"}
    b_sec, b_l2 = burst.get("pg-portsec", {}), burst.get("pg-l2", {})
    if b_sec and b_l2:
        a = ratio(b_sec.get("del_wall_ms_p50"), b_l2.get("del_wall_ms_p50"))
        rounds = [ratio(x["del"]["wall_ms"], y["del"]["wall_ms"])
                  for x, y in zip(b_sec.get("rounds", []), b_l2.get("rounds", []))]
        targets["burst of 100 DELs with port security <= 1.2x without"] = {
            "value": a, "per_round": rounds, "portsec_ms": b_sec.get("del_wall_ms_p50"),
            "plain_ms": b_l2.get("del_wall_ms_p50"), "verdict": verdict(None if a is None else a <= 1.2),
            "portgroupd_running": burst.get("_meta", {}).get("portgroupd_running"),
            "portsec_ports_left_after_sweep": [x["del"].get("portsec_ports_left") for x in b_sec.get("rounds", [])],
            "sweep_wait_s": [x["del"].get("sweep_wait_s") for x in b_sec.get("rounds", [])]}
    if pg_burst:
        fails = sum(v["failures"] for v in pg_burst.values())
        ports_ok = all(v["ok_ports_every_round"] for v in pg_burst.values())
        targets["burst of 100 with no failure"] = {"failures": fails, "ports_ok": ports_ok,
                                                   "verdict": verdict(fails == 0 and ports_ok)}
    if ps:
        n = ps.get("normalised_ratio_last_vs_first")
        targets["port-security ADD flat 1..1000"] = {
            "value": n, "verdict": verdict(None if n is None else n <= 1.25),
            "note": "(portsec/pg-l2 ADD p50 at the last level) / (the same at the first); <= 1.25 is flat"}
    d = daemon or {}
    calib = (d.get("calibrate") or {}, (calib_host or {}).get("calibrate") or {})
    if all(c.get("up_s") for c in calib) and calib[0].get("n") == calib[1].get("n"):
        factor = calib[0]["up_s"] / calib[1]["up_s"]
        d["tcg_link_work_slowdown"] = {
            "factor": round(factor, 1), "vm_up_s": calib[0]["up_s"], "host_up_s": calib[1]["up_s"],
            "n": calib[0]["n"],
            "what": "N bridges + N veth pairs made by one ip -batch, in the VM / on this host"}
        for row in d.get("converge", []):
            row["up_s_estimated_on_host"] = round(row["up_s"] / factor, 2)
        t = d.get("targets", {}).get("1000 portgroups converged < 5 s")
        c1000 = next((r for r in d.get("converge", []) if r["n"] == 1000), None)
        if t and c1000:
            t["estimated_on_this_host_s"] = c1000["up_s_estimated_on_host"]
            if t.get("verdict") == "MISSED":
                t["verdict"] = ("met by estimate" if c1000["up_s_estimated_on_host"] < 5
                                else "MISSED by estimate")
    if d.get("skipped"):
        for t in ("1000 portgroups converged < 5 s", "drift repair p99 < 100 ms",
                  "portgroupd < 20 MiB RSS at 1000 portgroups"):
            targets[t] = {"verdict": "pending", "why": d["skipped"]}
    else:
        for k, v in d.get("targets", {}).items():
            targets[k] = v
    return r, targets


# deviceplugin*.json, as hack/bench.sh names them: what each run timed.
DEVICEPLUGIN_RUNS = {
    "carrier": "deviceplugin.json",
    "recreate": "deviceplugin-recreate.json",
    "vlan": "deviceplugin-vlan.json",
}


def memory_target(memory):
    """The long-running daemon's VmRSS at 1000 untagged portgroups: the largest of the
    stages after it was ready (settled, after drift, reload, resync), and its VmHWM."""
    d = memory.get("levels", {}).get("1000", {}).get("daemon", {}).get("this")
    if not d or "error" in d:
        return {"verdict": "pending", "why": (d or {}).get("error", "not measured at 1000")}
    stages = [d[k]["VmRSS"] for k in ("settled", "after_drift", "after_reload", "after_resync") if k in d]
    rss, hwm = max(stages), d["after_resync"]["VmHWM"]
    return {"value_mib": round(rss / 1024, 1), "peak_mib": round(hwm / 1024, 1), "ready": d.get("ready"),
            "verdict": verdict(rss < 20 * 1024 and hwm < 20 * 1024)}


def trunk_targets(trunk):
    """trunk_bench.py's rounds: per trunk size, the median of the per-round ratios
    of portgroupd's converge from nothing to the ip -batch floor's."""
    out = {}
    for row in trunk or []:
        r = row.get("rounds") or {}
        d = r.get("daemon")
        if not d:
            continue
        out[f"trunk of {row['vids']} VIDs converges at the ip -batch floor"] = {
            "value": round(d["median_ratio"], 3), "ratios": d["ratios"],
            "median_up_s": round(d["median_up_s"], 3),
            "floor_median_up_s": round(r["floor_median_up_s"], 3),
            "verdict": verdict(d["median_ratio"] <= 1.0)}
    return out


def deviceplugin_runs(directory):
    runs = {}
    for name, file in DEVICEPLUGIN_RUNS.items():
        path = os.path.join(directory, file)
        if os.path.exists(path):
            runs[name] = json.load(open(path))
    return runs


def deviceplugin_target(runs):
    """Health flip p99 < 100 ms, kernel event -> ListAndWatch update: judged on the
    carrier flaps (the event the target names); the other runs are reported."""
    run = runs.get("carrier") or {}
    if run.get("skipped") or not run.get("event_to_update"):
        return {"verdict": "pending", "why": run.get("skipped", "not run")}
    all_ = run["event_to_update"]["all"]
    return {"p50_ms": all_["p50"], "p99_ms": all_["p99"], "n": all_["n"],
            "daemon_p99_ms": run.get("daemon_event_to_offer", {}).get("p99"),
            "loadavg_before": run.get("machine", {}).get("loadavg_before"),
            "verdict": verdict(all_["p99"] < 100)}


def print_deviceplugin(runs):
    if not runs:
        return
    print("\nDevice plugin: health flip, kernel event -> ListAndWatch update (ms)")
    print(f"{'run':<10}{'portgroup':<38}{'flips':>6}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}"
          f"{'daemon p50':>11}{'daemon p99':>11}  load before/after")
    for name, run in runs.items():
        if run.get("skipped"):
            print(f"{name:<10}SKIPPED ({run['skipped']})")
            continue
        e, d = run["event_to_update"]["all"], run.get("daemon_event_to_offer", {})
        m = run.get("machine", {})
        print(f"{name:<10}{run.get('portgroup', 'access, VLAN 100')[:37]:<38}{e['n']:>6}{fmt(e['p50'])}"
              f"{fmt(e['p90'])}{fmt(e['p99'])}{fmt(e['max'])}{fmt(d.get('p50'), 11)}{fmt(d.get('p99'), 11)}"
              f"  {m.get('loadavg_before')} / {m.get('loadavg_after')}")
        for which in ("to_unhealthy", "to_healthy"):
            x = run["event_to_update"][which]
            print(f"  {which:<46}{x['n']:>6}{fmt(x['p50'])}{fmt(x['p90'])}{fmt(x['p99'])}{fmt(x['max'])}")
        if run.get("daemon_errors") or run.get("listener_late"):
            print(f"  daemon errors {run.get('daemon_errors')}, flips whose event the listener saw late "
                  f"{run.get('listener_late')}")


def fmt(v, w=8):
    return f"{v:>{w}}" if v is not None else f"{'-':>{w}}"


def print_tables(res):
    cni, ratios, targets = res["cni"], res["ratios"], res["targets"]
    m = res["machine"]
    print(f"\nmachine: {m['nproc']} cores, {m['cpu']}, kernel {m['kernel']}, load {' '.join(m['loadavg_at_report'])}")
    seq = cni.get("seq", {})
    if cni.get("synthetic_state"):
        ss = cni["synthetic_state"]
        print(f"\nportgroup-mode rows resolve through a harness-written node state of {ss['portgroups']} "
              f"portgroups x 4 reservations (state.json {ss['state_json_bytes'] / 1e3:.0f} kB)")
    if seq:
        meta = seq.get("_meta", {})
        print(f"\nSequential ADD+DEL, {meta.get('cycles')} cycles, contenders interleaved, wall ms "
              f"(cpu = user+sys of the process)")
        print(f"{'contender':<13}{'ADD p50':>9}{'ADD p99':>9}{'DEL p50':>9}{'DEL p99':>9}"
              f"{'A+D p50':>9}{'A+D p99':>9}{'cpu p50':>9}{'fail':>6}")
        for name, row in seq.items():
            if name.startswith("_") or "addel" not in row:
                continue
            print(f"{name:<13}{fmt(row['add'].get('p50'), 9)}{fmt(row['add'].get('p99'), 9)}"
                  f"{fmt(row['del'].get('p50'), 9)}{fmt(row['del'].get('p99'), 9)}"
                  f"{fmt(row['addel'].get('p50'), 9)}{fmt(row['addel'].get('p99'), 9)}"
                  f"{fmt(row['addel_cpu'].get('p50'), 9)}{row['failures']['count']:>6}")
        print(f"\nprocess start alone (one exec, no netlink), wall ms")
        for name, row in seq.items():
            if "op" in row:
                print(f"{name:<13}p50 {fmt(row['op'].get('p50'), 7)}  p99 {fmt(row['op'].get('p99'), 7)}"
                      f"  cpu p50 {fmt(row['op_cpu'].get('p50'), 7)}")
        print("\nratios of medians: ADD+DEL wall [ADD+DEL cpu]  ADD wall  DEL wall")
        for k, v in ratios["addel"].items():
            print(f"  {k:<22}{fmt(v, 7)}   [{fmt(ratios['addel_cpu'].get(k), 6)}]"
                  f"  {fmt(ratios['add'].get(k), 7)}  {fmt(ratios['del'].get(k), 7)}")
    burst = cni.get("burst", {})
    if burst:
        meta = burst.get("_meta", {})
        print(f"\nBurst: {meta.get('burst')} ADDs at once, then {meta.get('burst')} DELs, "
              f"{meta.get('rounds')} round(s); wall ms p50 over rounds")
        print(f"{'contender':<13}{'ADD wall':>10}{'DEL wall':>10}{'failures':>10}  ports ok")
        for name, row in burst.items():
            if name.startswith("_"):
                continue
            print(f"{name:<13}{fmt(row['add_wall_ms_p50'], 10)}{fmt(row['del_wall_ms_p50'], 10)}"
                  f"{row['failures']:>10}  {row['ok_ports_every_round']}")
    ps = cni.get("portsec")
    if ps:
        print("\nPort security (spoofCheck true) ADD at N existing VM ports, p50 ms; pg-l2 and the floor "
              "interleaved as baselines")
        for lv in ps["levels"]:
            print(f"  {lv['existing_ports']:>5} ports: portsec ADD {fmt(lv['pg-portsec']['add'].get('p50'), 7)}"
                  f"  pg-l2 ADD {fmt(lv['pg-l2']['add'].get('p50'), 7)}"
                  f"  floor ADD {fmt(lv.get('floor', {}).get('add', {}).get('p50'), 7)}"
                  f"  portsec/pg-l2 {fmt(lv['portsec_over_baseline_add_p50'], 6)}"
                  f"  ADD+DEL {fmt(lv['pg-portsec']['addel'].get('p50'), 7)} vs {fmt(lv['pg-l2']['addel'].get('p50'), 7)}"
                  f"  background {lv.get('background_frames_per_port_per_s')} frames/s/port"
                  f"  secured ports {lv.get('ports_in_portsec_set')}")
        print(f"  flatness (normalised last/first): {ps['flatness'].get('normalised_ratio_last_vs_first')}")
    prof = cni.get("profile", {})
    if prof:
        sc = {k[len("syscalls_"):]: v["total_per_add"] for k, v in prof.items() if k.startswith("syscalls_")}
        if sc:
            print("\nProfile of ADD: syscalls per ADD (strace -f -c, children included): "
                  + ", ".join(f"{k} {v:.0f}" for k, v in sc.items()))
        cg = prof.get("callgrind", {})
        if cg.get("pg_add"):
            print(f"  user-space instructions (callgrind): pg ADD {cg['pg_add']['instructions']:,}"
                  f", pg VERSION {(cg.get('pg_version') or {}).get('instructions') or 0:,}"
                  f", ip -batch floor ADD {(cg.get('floor_add') or {}).get('instructions') or 0:,}"
                  f", /bin/true {(cg.get('true') or {}).get('instructions') or 0:,}")
        if cg.get("pg_portsec_add"):
            cmp = (cg.get("cmp_portsec_add") or {}).get("instructions")
            print(f"  one ADD with port security (the benched binary): {cg['pg_portsec_add']['instructions']:,}"
                  + (f"; the --compare build: {cmp:,}" if cmp else ""))
        for name in ("pg-l2", "pg-static"):
            tl = prof.get(f"timeline_{name}")
            if tl and tl.get("steps"):
                print(f"  {name} ADD step by step (perf trace, p50 of {tl['runs']} ADDs; "
                      f"traced total p50 {tl['traced_total_p50_ms']} ms):")
                for s in tl["steps"]:
                    print(f"    {s['p50_ms']:>7.3f} ms  {s['step']}")
    print_deviceplugin(res.get("deviceplugin") or {})
    d = res.get("daemon") or {}
    if d.get("skipped"):
        print(f"\nportgroupd: SKIPPED ({d['skipped']})")
    elif d:
        print("\nportgroupd" + (" (inside the TCG test VM)" if d.get("in_vm") else ""))
        for k, v in d.get("summary", {}).items():
            print(f"  {k}: {v}")
        tcg = d.get("tcg_link_work_slowdown")
        if tcg:
            print(f"  TCG slowdown for link work ({tcg['n']} bridges + veth pairs by ip -batch): "
                  f"{tcg['factor']}x ({tcg['vm_up_s']} s in the VM, {tcg['host_up_s']} s on this host); "
                  "converge up, estimated on this host: "
                  + ", ".join(f"{r['n']}: {r['up_s_estimated_on_host']} s" for r in d.get("converge", [])))
        vseq = (d.get("cni_portgroup_mode") or {}).get("seq", {})
        if vseq:
            print("  CNI on a VLAN portgroup's bridge, ADD+DEL p50 ratios in the same run:")
            # Bridge mode (pg-l2) is refused on portgroupd's bridge: portgroup mode only.
            for x, y in (("pg-portgroup", "ref-l2"), ("pg-portgroup", "floor")):
                print(f"    {x}/{y}: {ratio(p50(vseq, x, 'addel'), p50(vseq, y, 'addel'))}")
    print("\nTargets (reported, not asserted)")
    for k, v in targets.items():
        extra = {x: y for x, y in v.items() if x not in ("verdict", "note", "why")}
        print(f"  {k:<44} {v.get('verdict') or 'not measured (--quick)' if res.get('quick') else v.get('verdict')}"
              f"  {json.dumps(extra) if extra else ''}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--cni", required=True)
    p.add_argument("--daemon")
    p.add_argument("--trunk", help="trunk_bench.py --rounds (a trunk portgroup's converge)")
    p.add_argument("--memory", help="daemon_bench.py --parts memory (untagged portgroups, this kernel)")
    p.add_argument("--calibrate-host", help="daemon_bench.py --parts calibrate run on this host's kernel")
    p.add_argument("--out", required=True)
    p.add_argument("--argv", default="")
    p.add_argument("--quick", default="0")
    p.add_argument("--deviceplugin-dir", help="where hack/bench.sh wrote deviceplugin*.json")
    p.add_argument("--deviceplugin-only", action="store_true",
                   help="merge only the device-plugin runs into --out (kept from an earlier full run, "
                        "if any) and print only them")
    a = p.parse_args()
    if a.deviceplugin_only:
        res = json.load(open(a.out)) if os.path.exists(a.out) else {"machine": machine(), "targets": {}}
        dp = deviceplugin_runs(a.deviceplugin_dir)
        res["deviceplugin"] = dp
        res.setdefault("targets", {})["device-plugin health flip p99 < 100 ms"] = deviceplugin_target(dp)
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
        print_deviceplugin(dp)
        t = res["targets"]["device-plugin health flip p99 < 100 ms"]
        print(f"\ntarget device-plugin health flip p99 < 100 ms: {t.get('verdict')}  "
              + json.dumps({k: v for k, v in t.items() if k != 'verdict'}))
        print(f"\nJSON: {a.out} (device-plugin runs merged in)")
        return
    cni = json.load(open(a.cni)) if os.path.exists(a.cni) else {}
    daemon = json.load(open(a.daemon)) if a.daemon and os.path.exists(a.daemon) else None
    calib_host = (json.load(open(a.calibrate_host))
                  if a.calibrate_host and os.path.exists(a.calibrate_host) else None)
    ratios, targets = build(cni, daemon, calib_host)
    memory = json.load(open(a.memory)).get("memory") if a.memory and os.path.exists(a.memory) else None
    if memory:
        targets["portgroupd < 20 MiB RSS at 1000 portgroups (untagged, this kernel)"] = memory_target(memory)
    trunk = json.load(open(a.trunk)) if a.trunk and os.path.exists(a.trunk) else None
    targets.update(trunk_targets(trunk))
    dp = deviceplugin_runs(a.deviceplugin_dir) if a.deviceplugin_dir else {}
    if dp:
        targets["device-plugin health flip p99 < 100 ms"] = deviceplugin_target(dp)
    res = {"machine": machine(), "args": a.argv, "quick": a.quick == "1", "ratios": ratios,
           "targets": targets, "cni": cni, "daemon": daemon, "memory": memory, "trunk": trunk,
           "deviceplugin": dp}
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
    print_tables(res)
    print(f"\nJSON: {a.out}")


if __name__ == "__main__":
    main()
