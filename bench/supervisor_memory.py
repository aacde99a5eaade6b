"""Memory of the per-sandbox supervisor (`sbx run -d`) vs conmon, podman's per-container monitor.

Starts N detached strict sandboxes, reads /proc/PID/smaps_rollup of every supervisor
(RSS, PSS, USS = Private_Clean + Private_Dirty), and, with --conmon, N detached podman
containers' conmon processes the same way. Everything it starts it removes.

    sudo .venv/bin/python bench/supervisor_memory.py [--n 10] [--conmon]
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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import SBX, table


def rollup(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[2] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1])
    return {"rss": out.get("Rss", 0), "pss": out.get("Pss", 0),
            "uss": out.get("Private_Clean", 0) + out.get("Private_Dirty", 0)}


def summarize(label: str, rows: list[dict[str, int]]) -> tuple:
    med = {k: statistics.median(r[k] for r in rows) for k in ("rss", "pss", "uss")}
    return (label, len(rows), f"{med['rss'] / 1024:.2f}", f"{med['pss'] / 1024:.2f}", f"{med['uss'] / 1024:.2f}")


def sbx_supervisors(n: int, env: dict) -> tuple[list[dict[str, int]], list[dict[str, int]]]:
    ids = []
    try:
        for _ in range(n):
            p = subprocess.run(SBX + ["run", "-d", "--profile", "strict", "--", "/bin/sleep", "600"],
                               capture_output=True, text=True, env=env)
            if p.returncode != 0:
                raise SystemExit(f"sbx run -d failed: {p.stderr}")
            ids.append(p.stdout.strip())
        p = subprocess.run(SBX + ["inspect", *ids], capture_output=True, text=True, env=env, check=True)
        docs = json.loads(p.stdout)
        sup = [rollup(d["state"]["supervisor_pid"]) for d in docs]
        # The sandbox's init is a fork of the supervisor (pages shared copy-on-write): the honest
        # per-sandbox overhead is the supervisor plus init (the workload itself is not overhead).
        tree = []
        for d, s in zip(docs, sup, strict=False):
            procs = [s, rollup(d["state"]["init_pid"])]
            tree.append({k: sum(p[k] for p in procs) for k in ("rss", "pss", "uss")})
        return sup, tree
    finally:
        if ids:
            subprocess.run(SBX + ["rm", "-f", *ids], capture_output=True, env=env)


def conmons(n: int) -> list[dict[str, int]] | None:
    if shutil.which("podman") is None or not os.path.exists("/bin/busybox"):
        print("conmon: skipped (apt-get install podman conmon busybox-static)", file=sys.stderr)
        return None
    img = "localhost/sbx-bench-bb"
    if subprocess.run(["podman", "image", "exists", img]).returncode != 0:
        with tempfile.TemporaryDirectory() as d:
            root = os.path.join(d, "root", "bin")
            os.makedirs(root)
            shutil.copy("/bin/busybox", os.path.join(root, "busybox"))
            for t in ("sh", "sleep"):
                os.symlink("busybox", os.path.join(root, t))
            tar = os.path.join(d, "rootfs.tar")
            subprocess.run(["tar", "-C", os.path.join(d, "root"), "-cf", tar, "."], check=True)
            subprocess.run(["podman", "import", tar, img], check=True, capture_output=True)
    names = [f"sbx-bench-conmon-{i}" for i in range(n)]
    try:
        for name in names:
            p = subprocess.run(["podman", "run", "-d", "--name", name, "--ulimit", "nofile=1024:1024",
                                "--ulimit", "nproc=1024:1024", img, "/bin/sleep", "600"], capture_output=True, text=True)
            if p.returncode != 0:
                print(f"conmon: skipped (podman run failed: {p.stderr.strip()[-300:]})", file=sys.stderr)
                return None
        out = []
        for name in names:
            p = subprocess.run(["podman", "inspect", "--format", "{{.State.ConmonPid}}", name],
                               capture_output=True, text=True, check=True)
            out.append(rollup(int(p.stdout.strip())))
        return out
    finally:
        subprocess.run(["podman", "rm", "-f", "-t", "0", *names], capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--conmon", action="store_true", help="also measure podman's conmon")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (strict sandboxes with cgroup caps)")
    with tempfile.TemporaryDirectory() as state:
        env = {**os.environ, "SBX_STATE_DIR": state}
        sup, tree = sbx_supervisors(args.n, env)
        rows = [summarize("sbx-supervisor", sup), summarize("sbx supervisor+init", tree)]
    if args.conmon:
        c = conmons(args.n)
        if c:
            rows.append(summarize("conmon", c))
    print(table(rows, ("process", "n", "RSS MiB", "PSS MiB", "USS MiB")))


if __name__ == "__main__":
    main()
