"""P1/P2: cold start of `sbx run --profile strict -- /bin/true` vs bwrap, runc, crun (same run, interleaved),
and in-process API throughput vs a shell loop of bwrap.

The ratio base is runc with the bundle `runc spec` writes (plus a read-only root and an
rlimit), as the issue measures it. "runc, strict-equivalent" is also shown for context:
the same bundle given what sbx's strict profile does on top (user namespace mapping no
host root, cgroup namespace, uid 65534, no capabilities, no_new_privs, sbx's strict
seccomp filter, memory/swap/cpu/pids caps).

    sudo .venv/bin/python bench/startup.py [--n 30]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import SBX, busybox_rootfs, interleaved, med_ms, require, table

BWRAP = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--ro-bind", "/usr", "/usr",
         "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
         "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--cap-drop", "ALL", "/bin/true"]


def oci_seccomp(path: str) -> dict:
    """A Docker-format profile as OCI config.json's linux.seccomp, for a container with no capabilities."""
    with open(path) as f:
        doc = json.load(f)
    arch = os.uname().machine
    docker_arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(arch, arch)
    oci_arch = {"x86_64": "SCMP_ARCH_X86_64", "aarch64": "SCMP_ARCH_AARCH64"}.get(arch)
    rules = []
    for r in doc["syscalls"]:
        inc, exc = r.get("includes") or {}, r.get("excludes") or {}
        if inc.get("caps") or (inc.get("arches") and docker_arch not in inc["arches"]) \
                or docker_arch in (exc.get("arches") or ()):
            continue
        rules.append({k: v for k, v in r.items() if k in ("names", "action", "args", "errnoRet")})
    out = {"defaultAction": doc["defaultAction"], "syscalls": rules}
    if "defaultErrnoRet" in doc:
        out["defaultErrnoRet"] = doc["defaultErrnoRet"]
    if oci_arch:
        out["architectures"] = [oci_arch]
    return out


def oci_bundle(d: str, runtime: str, equivalent: bool = False) -> str:
    busybox_rootfs(os.path.join(d, "rootfs"))
    subprocess.run([runtime, "spec"], cwd=d, check=True)
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    cfg["process"]["args"] = ["/bin/true"]
    cfg["process"]["terminal"] = False
    cfg["process"]["rlimits"] = [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
    cfg["root"]["readonly"] = True
    if equivalent:
        os.chmod(d, 0o755)  # the mapped ids must reach the rootfs (TemporaryDirectory is 0700)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        cfg["process"]["user"] = {"uid": 65534, "gid": 65534}
        cfg["process"]["capabilities"] = {k: [] for k in ("bounding", "effective", "permitted", "ambient")}
        cfg["process"]["noNewPrivileges"] = True
        cfg["process"]["rlimits"] += [{"type": "RLIMIT_NPROC", "hard": 512, "soft": 512},
                                      {"type": "RLIMIT_CORE", "hard": 0, "soft": 0}]
        lx = cfg["linux"]
        lx["namespaces"] += [{"type": "user"}, {"type": "cgroup"}]
        lx["uidMappings"] = [{"containerID": 0, "hostID": 3_000_000_000, "size": 65536}]
        lx["gidMappings"] = [{"containerID": 0, "hostID": 3_000_000_000, "size": 65536}]
        lx["seccomp"] = oci_seccomp(os.path.join(root, "policies", "seccomp", "strict.json"))
        lx["resources"] = {**lx.get("resources", {}),
                           "memory": {"limit": 512 << 20, "swap": 512 << 20},
                           "cpu": {"quota": 100000, "period": 100000}, "pids": {"limit": 256}}
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f)
    return d


def ensure_hugetlb_v1() -> None:
    # crun refuses v1-hybrid hosts where hugetlb is still on the unified hierarchy (HOST-NOTES).
    if os.path.isdir("/sys/fs/cgroup/cpu") and not os.path.ismount("/sys/fs/cgroup/hugetlb"):
        print("note: mounting the hugetlb controller as v1 at /sys/fs/cgroup/hugetlb (crun needs it here)", file=sys.stderr)
        os.makedirs("/sys/fs/cgroup/hugetlb", exist_ok=True)
        subprocess.run(["mount", "-t", "cgroup", "-o", "hugetlb", "cgroup", "/sys/fs/cgroup/hugetlb"], check=False)


def api_throughput(seconds: float, workers: int = 1) -> float:
    """Sandboxes per second through the API, from `workers` threads of one interpreter, each sequential."""
    import threading

    from sandbox import resolve, run
    spec = resolve(["/bin/true"], profile="strict")
    counts = [0] * workers
    errors: list[str] = []
    t0 = time.perf_counter()

    def loop(i: int) -> None:
        while time.perf_counter() - t0 < seconds:
            r = run(spec)
            if r.exit_code != 0:
                errors.append(f"exit {r.exit_code}")
                return
            counts[i] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"API benchmark: a sandbox failed ({errors[0]})")
    return sum(counts) / (time.perf_counter() - t0)


def api_processes(seconds: float, workers: int) -> float:
    """The same loop in `workers` separate interpreters (forked from this one), summed."""
    pipes = []
    for _ in range(workers):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(r)
                rate = api_throughput(seconds)
                os.write(w, f"{rate}".encode())
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        pipes.append((pid, r))
    total = 0.0
    for pid, r in pipes:
        got = os.read(r, 64)
        os.close(r)
        _, status = os.waitpid(pid, 0)
        if status != 0 or not got:
            raise SystemExit("API benchmark: a worker process failed")
        total += float(got)
    return total


def api_cpu_ms(count: int = 60) -> tuple[float, float]:
    """CPU per sandbox (ms) of the sequential API loop: (sbx's own process, the sandbox's processes)."""
    import resource

    from sandbox import resolve, run
    spec = resolve(["/bin/true"], profile="strict")
    run(spec)
    s0, c0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    for _ in range(count):
        run(spec)
    s1, c1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    own = (s1.ru_utime + s1.ru_stime - s0.ru_utime - s0.ru_stime) * 1000 / count
    kids = (c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime) * 1000 / count
    return own, kids


def bwrap_loop(count: int) -> float:
    t0 = time.perf_counter()
    subprocess.run(["sh", "-c", f'i=0; while [ $i -lt {count} ]; do "$@" || exit 1; i=$((i+1)); done', "sh", *BWRAP],
                   check=True)
    return count / (time.perf_counter() - t0)


def peak_rss_kib(argv: list[str], n: int = 5) -> int:
    """Median peak RSS (KiB) of the command's process tree, from GNU time's wait4 rusage.

    Measured through /usr/bin/time (a small C process), not from this Python process:
    a fork of the benchmark would count our own pages before exec.
    """
    out = []
    for _ in range(n):
        p = subprocess.run(["/usr/bin/time", "-f", "%M", *argv], stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
        if p.returncode != 0:
            raise SystemExit(f"benchmark command failed ({p.returncode}): {' '.join(argv)}")
        out.append(int(p.stderr.strip().splitlines()[-1]))
    return sorted(out)[len(out) // 2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--seconds", type=float, default=3.0)
    a = ap.parse_args()
    require("bwrap", "runc", "crun", "busybox")
    if not os.path.exists("/usr/bin/time"):
        raise SystemExit("missing /usr/bin/time (apt-get install time)")
    ensure_hugetlb_v1()
    with tempfile.TemporaryDirectory() as d1, tempfile.TemporaryDirectory() as d2, \
            tempfile.TemporaryDirectory() as d3:
        cmds = {
            "sbx strict": SBX + ["run", "--profile", "strict", "--", "/bin/true"],
            "bwrap": BWRAP,
            "runc": ["runc", "run", "-b", oci_bundle(d1, "runc"), f"bench-runc-{os.getpid()}"],
            "crun": ["crun", "run", "-b", oci_bundle(d2, "crun"), f"bench-crun-{os.getpid()}"],
            "runc, strict-equivalent": ["runc", "run", "-b", oci_bundle(d3, "runc", equivalent=True),
                                        f"bench-runc-eq-{os.getpid()}"],
        }
        res = interleaved(cmds, a.n)
        rss = {k: peak_rss_kib(v) for k, v in cmds.items()}
    base = med_ms(res["runc"])
    rows = [(k, f"{med_ms(v):.1f}", f"{med_ms(v) / base:.2f}x", f"{rss[k] / 1024:.1f}") for k, v in res.items()]
    print("P1 cold start, median of", a.n, "(ms; ratio to runc) and peak RSS of the launcher's process tree")
    print(table(rows, ("runtime", "median ms", "vs runc", "peak RSS MiB")))
    api = api_throughput(a.seconds)
    api2 = api_throughput(a.seconds, workers=2)
    apip = api_processes(a.seconds, workers=2)
    bw = bwrap_loop(100)
    own, kids = api_cpu_ms()
    print()
    print(table([("sbx API (strict, sequential)", f"{api:.0f}/s", f"{api / bw:.2f}x", "1.00x"),
                 ("sbx API, 2 worker threads", f"{api2:.0f}/s", f"{api2 / bw:.2f}x", f"{api2 / api:.2f}x"),
                 ("sbx API, 2 worker processes", f"{apip:.0f}/s", f"{apip / bw:.2f}x", f"{apip / api:.2f}x"),
                 ("bwrap shell loop", f"{bw:.0f}/s", "1.00x", "")],
                ("P2 throughput", "rate", "vs bwrap", "vs 1 worker")))
    cores = os.cpu_count() or 1
    print(f"CPU per sandbox (sequential API): {own:.1f} ms in sbx + {kids:.1f} ms in the sandbox's processes; "
          f"{cores} cores bound any number of workers to ~{cores * 1000 / (own + kids):.0f}/s")


if __name__ == "__main__":
    main()
