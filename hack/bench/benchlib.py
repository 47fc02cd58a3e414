"""Shared helpers for the portgroup benchmarks (hack/bench.sh).

Every timed operation is one process started the way a CNI runtime starts a
plugin: posix_spawn with a clean environment, the config on stdin, stdout and
stderr collected, then wait4. Wall time is perf_counter_ns around the whole
thing; CPU time (user + sys of the child) comes from wait4's rusage and is far
less sensitive to other load on a shared machine than wall time.
"""

from __future__ import annotations

import math
import os
import selectors
import shutil
import statistics
import time
from dataclasses import dataclass, field


@dataclass
class Run:
    rc: int
    wall_ns: int
    cpu_ns: int
    minflt: int
    maxrss_kib: int
    stdout: bytes
    stderr: bytes
    start_ns: int = 0
    end_ns: int = 0


def resolve(prog: str) -> str:
    if os.path.isabs(prog):
        return prog
    found = shutil.which(prog, path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    if not found:
        raise FileNotFoundError(prog)
    return found


def run(argv: list[str], env: dict[str, str], stdin: bytes = b"") -> Run:
    """Spawns argv, feeds stdin, collects output, reaps with rusage."""
    r_in, w_in = os.pipe()
    r_out, w_out = os.pipe()
    r_err, w_err = os.pipe()
    actions = [
        (os.POSIX_SPAWN_DUP2, r_in, 0),
        (os.POSIX_SPAWN_DUP2, w_out, 1),
        (os.POSIX_SPAWN_DUP2, w_err, 2),
    ]
    t0 = time.perf_counter_ns()
    try:
        pid = os.posix_spawn(argv[0], argv, env, file_actions=actions)
    finally:
        os.close(r_in)
        os.close(w_out)
        os.close(w_err)
    try:
        if stdin:
            # Configs are far below the pipe buffer (64 KiB): this never blocks.
            os.write(w_in, stdin)
    except BrokenPipeError:
        pass
    finally:
        os.close(w_in)
    out, err = _drain(r_out, r_err)
    _, status, ru = os.wait4(pid, 0)
    t1 = time.perf_counter_ns()
    cpu_ns = int((ru.ru_utime + ru.ru_stime) * 1e9)
    return Run(
        rc=os.waitstatus_to_exitcode(status),
        wall_ns=t1 - t0,
        cpu_ns=cpu_ns,
        minflt=ru.ru_minflt,
        maxrss_kib=ru.ru_maxrss,
        stdout=out,
        stderr=err,
        start_ns=t0,
        end_ns=t1,
    )


def _drain(r_out: int, r_err: int) -> tuple[bytes, bytes]:
    bufs = {r_out: bytearray(), r_err: bytearray()}
    sel = selectors.DefaultSelector()
    for fd in bufs:
        sel.register(fd, selectors.EVENT_READ)
    open_fds = set(bufs)
    while open_fds:
        for key, _ in sel.select():
            chunk = os.read(key.fd, 65536)
            if chunk:
                bufs[key.fd] += chunk
            else:
                sel.unregister(key.fd)
                os.close(key.fd)
                open_fds.discard(key.fd)
    sel.close()
    return bytes(bufs[r_out]), bytes(bufs[r_err])


def percentile(values: list[float], p: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    s = sorted(values)
    if len(s) == 1:
        return float(s[0])
    k = (len(s) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary_ms(values_ns: list[int]) -> dict:
    """p50/p90/p99/mean/min/max in milliseconds."""
    if not values_ns:
        return {"n": 0}
    ms = [v / 1e6 for v in values_ns]
    return {
        "n": len(ms),
        "p50": round(percentile(ms, 50), 3),
        "p90": round(percentile(ms, 90), 3),
        "p99": round(percentile(ms, 99), 3),
        "mean": round(statistics.fmean(ms), 3),
        "min": round(min(ms), 3),
        "max": round(max(ms), 3),
    }


def ratio(a, b):
    if a is None or b in (None, 0):
        return None
    return round(a / b, 3)


@dataclass
class Failures:
    count: int = 0
    first: list[str] = field(default_factory=list)

    def add(self, what: str, r: Run) -> None:
        self.count += 1
        if len(self.first) < 3:
            msg = (r.stdout or r.stderr).decode(errors="replace").strip().replace("\n", " ")
            self.first.append(f"{what}: rc={r.rc} {msg[:300]}")

    def as_json(self) -> dict:
        return {"count": self.count, "first": self.first}
