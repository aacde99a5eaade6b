"""Audit time vs number of live namespaced process trees (P3: 500 in <= 1 s, 1000 <= 2.2x of 500).

Creates N trees with `unshare --pid --fork --mount-proc --net sleep 600` (each a new
pid, mount and net namespace: two processes per tree), times the in-process API
(audit.scan.audit) and the CLI (`sbx audit --format json`), prints a table, then
kills every tree it made (its own process groups) before the next size.

    sudo .venv/bin/python bench/audit_scale.py [--sizes 100,500,1000] [--runs 3]
"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import SBX, require, table  # noqa: E402

TREE = ["unshare", "--pid", "--fork", "--mount-proc", "--net", "sleep", "600"]


def spawn(n: int) -> list[subprocess.Popen]:
    procs = []
    for _ in range(n):
        procs.append(subprocess.Popen(TREE, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True))
    # Ready when every unshare has forked its namespaced child.
    deadline = time.time() + 120
    for p in procs:
        while time.time() < deadline:
            try:
                with open(f"/proc/{p.pid}/task/{p.pid}/children") as f:
                    if f.read().strip():
                        break
            except OSError:
                break
            time.sleep(0.005)
    return procs


def reap(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for p in procs:
        p.wait(timeout=30)


def time_api(runs: int, mine: set[int]) -> tuple[float, int]:
    from sandbox.audit.scan import audit
    ts = []
    found = 0
    for _ in range(runs + 1):
        t = time.perf_counter()
        res = audit()
        ts.append(time.perf_counter() - t)
        found = sum(1 for r in res if mine & set(r.container.pids))
    return statistics.median(ts[1:]), found


def time_cli(runs: int) -> float:
    ts = []
    env = dict(os.environ, PYTHONPATH=ROOT)
    for _ in range(runs + 1):
        t = time.perf_counter()
        p = subprocess.run([*SBX, "audit", "--format", "json"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           env=env)
        ts.append(time.perf_counter() - t)
        if p.returncode != 0:
            raise SystemExit(f"sbx audit failed: {p.stderr.decode()[-500:]}")
    return statistics.median(ts[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100,500,1000")
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: audit reads every process's /proc")
    require("unshare")
    rows = []
    api: dict[int, float] = {}
    for n in (int(x) for x in a.sizes.split(",")):
        t0 = time.perf_counter()
        procs = spawn(n)
        made = time.perf_counter() - t0
        try:
            mine = {p.pid for p in procs}
            t_api, found = time_api(a.runs, mine)
            t_cli = time_cli(a.runs)
        finally:
            reap(procs)
        api[n] = t_api
        rows.append((n, found, f"{made:.1f}", f"{t_api * 1000:.0f}", f"{t_cli * 1000:.0f}"))
    print(table(rows, ("trees", "audited", "setup s", "api ms (median)", "cli ms (median)")))
    if 500 in api and 1000 in api:
        print(f"ratio 1000/500 (api): {api[1000] / api[500]:.2f}  (target <= 2.2; 500 target <= 1000 ms)")


if __name__ == "__main__":
    main()
