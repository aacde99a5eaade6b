"""Seccomp cost: a getppid loop with no filter vs sbx strict vs sbx default vs podman's profile
(compiled by sbx), and cold vs warm `seccomp.prepare()`.

    .venv/bin/python bench/seccomp_cost.py [--calls 10000000] [--rounds 5] [--prepare-n 15]

The loop is a small C program (gcc) timing itself with CLOCK_MONOTONIC, so
process start-up is not counted; without gcc it falls back to a Python loop
(interpreter overhead then dominates and hides the filter). Each filter is
installed by sbx's own `seccomp.install` after no_new_privs, in a fresh child
that then execs the loop. Runs are interleaved so machine noise hits all alike.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench.common import table  # noqa: E402

LOOP_C = r"""
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>
int main(int argc, char **argv) {
    long n = atol(argv[1]);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) syscall(SYS_getppid);  /* a real syscall every time */
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%.3f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n);
    return 0;
}
"""
LOOP_PY = "import os,sys,time\nn=int(sys.argv[1]);t=time.perf_counter_ns()\nfor _ in range(n): os.getppid()\n" \
          "print((time.perf_counter_ns()-t)/n)"

# Child side of one measurement: set no_new_privs, install the filter (if any), exec the loop.
RUNNER = r"""
import os, sys
sys.path.insert(0, sys.argv[1])
import prctl
from sandbox import seccomp
prctl.set_no_new_privs(1)
bpf = open(sys.argv[2], "rb").read() if sys.argv[2] != "-" else None
if bpf:
    seccomp.install(bpf)
os.execv(sys.argv[3], sys.argv[3:])
"""

PREPARE_PROBE = r"""
import json, sys, time
t = time.perf_counter()
from sandbox import seccomp
seccomp.prepare(sys.argv[1], frozenset())
print(json.dumps(time.perf_counter() - t))
"""


def build_loop(d: str) -> tuple[list[str], str]:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc:
        src = os.path.join(d, "loop.c")
        with open(src, "w") as f:
            f.write(LOOP_C)
        exe = os.path.join(d, "loop")
        subprocess.run([cc, "-O2", "-o", exe, src], check=True)
        return [exe], "C (gcc -O2), syscall(SYS_getppid)"
    print("gcc not found (apt-get install gcc): falling back to a Python loop", file=sys.stderr)
    return [sys.executable, "-c", LOOP_PY], "Python os.getppid()"


def measure(loop: list[str], bpf_file: str, calls: int) -> float:
    p = subprocess.run([sys.executable, "-c", RUNNER, ROOT, bpf_file, *loop, str(calls)], capture_output=True,
                       text=True, check=False)
    if p.returncode != 0:
        raise SystemExit(f"loop failed under {bpf_file}: {p.stderr.strip()[-500:]}")
    return float(p.stdout.strip())


def prepare_times(ref: str, n: int, cache: str) -> tuple[list[float], list[float]]:
    env = dict(os.environ, PYTHONPATH=ROOT, SBX_CACHE_DIR=cache)
    cold, warm = [], []
    for _ in range(n):
        shutil.rmtree(cache, ignore_errors=True)
        for bucket in (cold, warm):
            p = subprocess.run([sys.executable, "-c", PREPARE_PROBE, ref], capture_output=True, text=True,
                               env=env, check=True)
            bucket.append(json.loads(p.stdout))
    return cold, warm


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=10_000_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--prepare-n", type=int, default=15)
    args = ap.parse_args()

    from sandbox import seccomp
    with tempfile.TemporaryDirectory() as d:
        os.environ["SBX_CACHE_DIR"] = os.path.join(d, "cache")
        loop, kind = build_loop(d)
        filters = {"no filter": "-"}
        # The floor: a filter that allows everything still moves every syscall onto the kernel's
        # seccomp entry path; what a profile adds beyond this is the cost of its rules.
        floor = os.path.join(d, "allow-all.json")
        with open(floor, "w") as f:
            f.write('{"defaultAction": "SCMP_ACT_ALLOW"}')
        profiles = {"allow-all (floor)": floor, "sbx strict": "strict", "sbx default": "default"}
        podman = "/usr/share/containers/seccomp.json"
        if os.path.exists(podman):
            profiles["podman seccomp.json"] = podman
        for label, ref in profiles.items():
            bpf = seccomp.prepare(ref, frozenset())
            path = os.path.join(d, label.replace(" ", "_") + ".bpf")
            with open(path, "wb") as f:
                f.write(bpf)
            filters[label] = path
        insns = {label: (os.path.getsize(p) // 8 if p != "-" else 0) for label, p in filters.items()}

        res: dict[str, list[float]] = {k: [] for k in filters}
        for label, path in filters.items():  # warm-up
            measure(loop, path, args.calls // 10)
        for _ in range(args.rounds):
            for label, path in filters.items():
                res[label].append(measure(loop, path, args.calls))
        base = statistics.median(res["no filter"])
        fl = statistics.median(res["allow-all (floor)"])
        rows = []
        for label in filters:
            m = statistics.median(res[label])
            rows.append((label, insns[label], f"{m:.1f}", f"{m / base:.3f}", f"{(m / base - 1) * 100:+.1f}%",
                         f"{(m / fl - 1) * 100:+.1f}%" if label != "no filter" else ""))
        print(f"getppid loop: {kind}, {args.calls:,} calls x {args.rounds} rounds, median ns/call\n")
        print(table(rows, ("filter", "BPF insns", "ns/call", "ratio", "vs no filter", "vs allow-all floor")))

        cold, warm = prepare_times("strict", args.prepare_n, os.path.join(d, "pcache"))
        print(f"\nseccomp.prepare('strict') in a fresh interpreter, {args.prepare_n} runs (import of sandbox.seccomp "
              "included):")
        print(table([("cold (parse + libseccomp compile + cache write)", f"{statistics.median(cold) * 1000:.2f}"),
                     ("warm (hash + cached BPF, no libseccomp import)", f"{statistics.median(warm) * 1000:.2f}")],
                    ("case", "median ms")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
