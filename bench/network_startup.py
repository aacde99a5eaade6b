"""Extra start-up cost of `--network bridge` over `loopback` (median ms, side by side, interleaved).

Two views:
- CLI: `sbx run --profile strict --network MODE -- /bin/true`, a new interpreter per run
  (bridge pays the pyroute2 import here, about 115 ms on a cold interpreter);
- API: sandbox.run() in one interpreter (pyroute2 already imported: the netlink
  work, the nft transaction and the allocation lock only).

    sudo .venv/bin/python bench/network_startup.py [--n 20] [--profile strict]

Measured on the 2-cpu dev VM (load average ~5 from other jobs, n=15):
CLI loopback 103 ms, bridge 304 ms (+200: ~110 pyroute2 import, ~90 network work);
API loopback 29 ms, bridge 127 ms (+99). Phases: prepare 17, attach 9, release 65 ms;
release is mostly the kernel unregistering the veth and, when the last sandbox leaves,
sbx0 (each ~25-35 ms here), the price of leaving an idle host with nothing of sbx on it.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import SBX, interleaved, med_ms, table


def api_medians(profile: str, n: int) -> dict[str, list[float]]:
    from sandbox import resolve, run
    specs = {m: resolve(["/bin/true"], profile=profile, network=m) for m in ("loopback", "bridge")}
    specs["bridge -p"] = resolve(["/bin/true"], profile=profile, network="bridge", publish=["127.0.0.1:18555:80"])
    for spec in specs.values():  # warm-up: imports, caches
        assert run(spec).exit_code == 0
    res: dict[str, list[float]] = {k: [] for k in specs}
    for _ in range(n):
        for k, spec in specs.items():
            t = time.perf_counter()
            r = run(spec)
            res[k].append(time.perf_counter() - t)
            if r.exit_code != 0:
                raise SystemExit(f"sandbox failed ({r.exit_code}) in mode {k}")
    return res


def phase_medians(profile: str, n: int) -> dict[str, float]:
    """Where bridge mode spends its time: netbridge's three calls timed inside real API runs."""
    from sandbox import netbridge, resolve, run
    spent: dict[str, list[float]] = {"prepare": [], "attach": [], "release": []}

    def timed(name, fn):
        def wrapper(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                spent[name].append(time.perf_counter() - t)
        return wrapper

    orig = netbridge.prepare, netbridge.BridgeNet.attach, netbridge.BridgeNet.release
    netbridge.prepare = timed("prepare", orig[0])
    netbridge.BridgeNet.attach = timed("attach", orig[1])
    netbridge.BridgeNet.release = timed("release", orig[2])
    try:
        spec = resolve(["/bin/true"], profile=profile, network="bridge")
        for _ in range(n):
            assert run(spec).exit_code == 0
    finally:
        netbridge.prepare, netbridge.BridgeNet.attach, netbridge.BridgeNet.release = orig
    return {k: med_ms(v) for k, v in spent.items()}


def import_ms(module: str) -> float:
    import subprocess
    code = f"import time; t = time.perf_counter(); import {module}; print((time.perf_counter() - t) * 1000)"
    xs = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
          for _ in range(5)]
    return statistics.median(xs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--profile", default="strict")
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bridge networking needs root: run with sudo")
    base = [*SBX, "run", "--profile", a.profile]
    cli = interleaved({
        "loopback": [*base, "--network", "loopback", "--", "/bin/true"],
        "bridge": [*base, "--network", "bridge", "--", "/bin/true"],
        "bridge -p": [*base, "--network", "bridge", "-p", "127.0.0.1:18556:80", "--", "/bin/true"],
    }, a.n)
    api = api_medians(a.profile, a.n)
    rows = []
    for view, res in (("CLI", cli), ("API", api)):
        lo = med_ms(res["loopback"])
        for k in ("loopback", "bridge", "bridge -p"):
            m = med_ms(res[k])
            rows.append((view, k, f"{m:.1f}", "" if k == "loopback" else f"+{m - lo:.1f}"))
    print(f"sbx start-up, profile {a.profile}, median of {a.n} runs each (interleaved)")
    print(table(rows, ("view", "network", "median ms", "extra ms vs loopback")))
    phases = phase_medians(a.profile, a.n)
    print("bridge phases (API, median ms): " + ", ".join(f"{k} {v:.1f}" for k, v in phases.items())
          + "  [prepare: lock, allocation, sbx0, nft; attach: veth + netns config; release: the reverse,"
            " sbx0 and tables removed when the last sandbox leaves]")
    print(f"pyroute2 import on a cold interpreter: {import_ms('pyroute2'):.1f} ms (median of 5)")
    print(f"load average during the run: {os.getloadavg()[0]:.1f} (on {os.cpu_count()} cpus)")


if __name__ == "__main__":
    main()
