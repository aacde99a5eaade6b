"""Many sandboxes from one program: a worker pool runs 100 Python snippets, each in its own
strict sandbox with a timeout and a memory cap, and reports every result.

    sudo .venv/bin/python sandbox/examples/pool.py [--workers N] [--json]

Most snippets compute and print a number; a few never stop (killed at their timeout:
exit 124) and a few allocate past their memory cap (killed by the OOM killer: 137).
Exit status 0 when every snippet ended the way it should, 1 otherwise.
tests/test_pool_example.py runs this in CI.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import sandbox

N = 100
MEMORY = "64m"


def snippet(i: int) -> tuple[str, float, str]:
    """(python source, timeout in seconds, expected outcome) for snippet i."""
    if i % 25 == 7:
        return "while True:\n    pass\n", 1.0, "timeout"
    if i % 25 == 13:
        return "b = bytearray(256 << 20)\nprint(len(b))\n", 20.0, "oom"
    return f"print(sum(k * k for k in range({i * 1000})))\n", 20.0, "ok"


def one(i: int) -> dict:
    src, timeout, expect = snippet(i)
    t0 = time.monotonic()
    try:
        r = sandbox.run(["/usr/bin/python3", "-S", "-c", src], capture_output=True, text=True, timeout=timeout,
                        memory=MEMORY, memory_swap=MEMORY, pids_limit=16, max_output=4096)
    except sandbox.SbxError as e:
        return {"i": i, "expect": expect, "outcome": "refused", "error": str(e), "ok": False}
    outcome = "timeout" if r.timed_out else "oom" if r.oom_killed else "ok" if r.exit_code == 0 else "failed"
    ok = outcome == expect
    if ok and expect == "ok":
        ok = r.stdout.strip() == str(sum(k * k for k in range(i * 1000)))
    return {"i": i, "expect": expect, "outcome": outcome, "exit_code": r.exit_code, "ok": ok,
            "stdout": r.stdout.strip()[:40], "stderr": r.stderr.strip()[-200:],
            "seconds": round(time.monotonic() - t0, 3), "sandbox": r.sandbox_id[:12]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    a = ap.parse_args()
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=a.workers) as pool:
        results = list(pool.map(one, range(N)))
    wall = time.monotonic() - t0
    if a.json:
        print(json.dumps({"results": results, "wall_seconds": round(wall, 2), "workers": a.workers}))
    else:
        for r in results:
            mark = "ok " if r["ok"] else "BAD"
            print(f"{mark} #{r['i']:3d} expect {r['expect']:7s} got {r['outcome']:7s} "
                  f"exit {r.get('exit_code', '-')!s:>3} {r.get('seconds', 0):6.2f}s "
                  f"{r.get('stdout', r.get('error', ''))}")
        bad = sum(not r["ok"] for r in results)
        print(f"{N} snippets, {a.workers} workers, {wall:.1f} s, {bad} unexpected")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
