"""Shared benchmark helpers: side-by-side medians and ratios, peers checked, nothing installed silently."""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SBX = [os.path.join(ROOT, ".venv", "bin", "sbx")] if os.path.exists(os.path.join(ROOT, ".venv", "bin", "sbx")) \
    else [sys.executable, "-m", "sandbox"]
APT = {"bwrap": "bubblewrap", "runc": "runc", "crun": "crun", "podman": "podman", "busybox": "busybox-static",
       "conmon": "conmon"}


def require(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pkgs = " ".join(sorted({APT.get(t, t) for t in missing}))
        print(f"missing peer(s): {', '.join(missing)}; install with: apt-get install {pkgs}", file=sys.stderr)
        sys.exit(2)


def time_cmd(argv: list[str], n: int, warmup: int = 2, **kw) -> list[float]:
    """Wall-clock seconds of each of n runs (after warmup); fails loudly on a non-zero exit."""
    out = []
    for i in range(warmup + n):
        t = time.perf_counter()
        p = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)
        dt = time.perf_counter() - t
        if p.returncode != 0:
            raise SystemExit(f"benchmark command failed ({p.returncode}): {' '.join(argv)}\n{p.stderr.decode()[-2000:]}")
        if i >= warmup:
            out.append(dt)
    return out


def interleaved(cmds: dict[str, list[str]], n: int, **kw) -> dict[str, list[float]]:
    """Run the commands round-robin so machine noise hits all of them alike."""
    res: dict[str, list[float]] = {k: [] for k in cmds}
    for k, argv in cmds.items():
        time_cmd(argv, 0, warmup=2, **kw)
    for _ in range(n):
        for k, argv in cmds.items():
            res[k].extend(time_cmd(argv, 1, warmup=0, **kw))
    return res


def med_ms(xs: list[float]) -> float:
    return statistics.median(xs) * 1000


def table(rows: list[tuple], headers: tuple) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*headers), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*map(str, r)) for r in rows]
    return "\n".join(lines)


def busybox_rootfs(path: str) -> str:
    """A minimal rootfs (busybox-static) for runc/crun/podman bundles."""
    require("busybox")
    bb = shutil.which("busybox")
    os.makedirs(os.path.join(path, "bin"), exist_ok=True)
    for d in ("proc", "dev", "sys", "tmp", "etc"):
        os.makedirs(os.path.join(path, d), exist_ok=True)
    dst = os.path.join(path, "bin", "busybox")
    if not os.path.exists(dst):
        shutil.copy2(bb, dst)
        for t in ("sh", "true", "cat", "ls", "id", "sleep"):
            os.symlink("busybox", os.path.join(path, "bin", t))
    return path
