"""Cost of a sandbox's cgroup: create (all limits written) + attach + destroy (kill, rmdir), in ms.

    sudo .venv/bin/python bench/cgroup_setup.py [-n 50]        # this host (v1 here)
    sudo .venv/bin/python bench/cgroup_setup.py --vm [-n 20]   # pure cgroup v2 under qemu (TCG: slow, compare
                                                                 # v1/v2 only within the same run)
A real process (forked, parked on a pipe like the sandbox's first process)
is attached each round, so destroy also pays for killing and reaping it.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench.common import table  # noqa: E402

MiB = 1024 * 1024


def cases():
    from sandbox.spec import Resources

    cpus = sorted(os.sched_getaffinity(0))
    return {
        "pids": Resources(pids_limit=64),
        "memory+pids": Resources(memory=256 * MiB, pids_limit=64),
        "strict-like (mem,cpus,pids)": Resources(memory=256 * MiB, cpus=1.0, pids_limit=64),
        "all (+shares,cpuset)": Resources(memory=256 * MiB, memory_swap=256 * MiB, cpus=1.0, cpu_shares=512,
                                          cpuset_cpus=str(cpus[-1]), pids_limit=64),
    }


def one(res) -> tuple[float, float, float]:
    from sandbox import cgroups

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(w)
        os.read(r, 1)
        os._exit(0)
    os.close(r)
    sid = "bench-" + os.urandom(8).hex()
    t0 = time.perf_counter()
    cg = cgroups.create(sid, res, degrade=False)
    t1 = time.perf_counter()
    cg.attach(pid)
    t2 = time.perf_counter()
    cg.destroy()
    t3 = time.perf_counter()
    os.close(w)
    os.waitpid(pid, 0)
    return (t1 - t0) * 1000, (t2 - t1) * 1000, (t3 - t2) * 1000


def run(n: int) -> None:
    from sandbox import cgroups

    if os.geteuid() != 0:
        sys.exit("run as root: the benchmark creates cgroups under the hierarchy roots")
    version = cgroups.detect()
    rows = []
    for name, res in cases().items():
        for _ in range(3):
            one(res)  # warm up (first mkdir of sbx/, subtree_control, dentry caches)
        samples = [one(res) for _ in range(n)]
        c, a, d = (statistics.median(x) for x in zip(*samples, strict=False))
        tot = statistics.median(sum(s) for s in samples)
        rows.append((name, f"{c:.2f}", f"{a:.2f}", f"{d:.2f}", f"{tot:.2f}"))
    reap = []
    for _ in range(n):
        t = time.perf_counter()
        cgroups.reap_stale()
        reap.append((time.perf_counter() - t) * 1000)
    print(f"cgroup {version}, kernel {os.uname().release}, median of {n} (ms)")
    print(table(rows, ("limits", "create", "attach", "destroy", "total")))
    print(f"reap_stale with nothing to reap: {statistics.median(reap):.2f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=50)
    ap.add_argument("--vm", action="store_true", help="run inside the pure cgroup-v2 qemu VM (tests/vm)")
    args = ap.parse_args()
    if not args.vm:
        run(args.n)
        return
    from tests.vm import harness

    ok, why = harness.vm_available()
    if not ok:
        sys.exit(f"no VM: {why}")
    res = harness.run_in_vm([sys.executable, os.path.abspath(__file__), "-n", str(args.n)], lsm="none",
                            env={"PYTHONDONTWRITEBYTECODE": "1"}, timeout=900)
    print(res.output, end="")
    print(f"(inside qemu TCG: absolute numbers are inflated by emulation; boot {res.boot_seconds}s)")
    sys.exit(res.exit_code)


if __name__ == "__main__":
    main()
