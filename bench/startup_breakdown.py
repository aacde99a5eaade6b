"""Where the milliseconds of `sbx run --profile strict -- /bin/true` go (issue 9, P1).

Runs the CLI's own code path (cli._dispatch) N times, each in a fresh
interpreter, with timing wrappers around the launch stages in the parent and
in the sandbox's processes (setup, init, workload). Every process stamps
CLOCK_MONOTONIC (time.perf_counter) and sends its marks over an inherited pipe,
so one timeline covers all four processes. Nothing in sbx is changed: the
wrappers are installed from outside, as a profiler would.

    sudo .venv/bin/python bench/startup_breakdown.py [--n 20] [--imports 15]

Prints, per stage, the median start offset from the exec of the interpreter and
the median duration. Stages on different processes overlap (that is the point
of the launch order); the critical path is the "ready" wait plus the parent's
own work around it.
"""
from __future__ import annotations

# Only os/sys/time at the top: the measured interpreter runs this file too, and
# its imports would be counted as sbx's.
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# (module, attribute, label, process). Attributes on classes are "Class.method".
PARENT = (
    ("sandbox.speccache", "resolve", "resolve spec (cache)"),
    ("sandbox.launch", "_plan_confinement", "plan: seccomp/landlock/LSM"),
    ("sandbox.launch", "preload", "plan: preload child modules"),
    ("sandbox.userns", "plan", "plan: id slice"),
    ("sandbox.userns", "write_maps", "write uid/gid maps"),
    ("sandbox.launch", "create_cgroup", "create cgroup + limits"),
    ("sandbox.cgroups.base", "Cgroup.attach", "attach to cgroup"),
    ("sandbox.launch", "_reap_stale_cgroups", "reap stale cgroups"),
    ("sandbox.facts", "read", "verify: read /proc"),
    ("sandbox.verify", "check", "verify: compare"),
    ("sandbox.launch", "release_and_confirm", "release + confirm exec"),
    ("sandbox.launch", "_wait", "wait for exit"),
    ("sandbox.launch", "release", "teardown (cgroup, id slice)"),
)
# Every named stage of the sandbox processes (sandbox.protocol.Steps) is timed under its own name.
CHILD = ()
RUN_MODULES = ("sandbox.cli", "sandbox.cmd_run", "sandbox.speccache", "sandbox.launch", "sandbox.protocol",
               "sandbox.process", "sandbox.namespaces", "sandbox.verify",
               "sandbox.cgroups.v1", "sandbox.mounts", "sandbox.caps", "sandbox.seccomp", "sandbox.landlock",
               "sandbox.net", "sandbox.initproc", "sandbox.rlimits", "sandbox.userns", "sandbox.mac", "sandbox.cgwarm")


def _child_main(fd: int, t_exec: float) -> None:
    """In the measured interpreter: wrap, run the CLI path once, send marks, exit like the CLI does."""
    t_main = time.perf_counter()
    import importlib

    from sandbox import cgwarm
    cgwarm.start(for_next_launch=True)  # what cli._dispatch does first; the wrappers' imports below count as the run path's imports
    mods = {m: importlib.import_module(m) for m in RUN_MODULES}
    t_imported = time.perf_counter()
    marks: list[tuple] = [("exec + interpreter + site", t_exec, t_main - t_exec, "parent"),
                          ("imports of the run path", t_main, t_imported - t_main, "parent")]
    main_pid = os.getpid()

    def emit(label: str, t0: float, dt: float) -> None:
        if os.getpid() == main_pid:
            marks.append((label, t0, dt, "parent"))
        else:
            # Sandbox processes cannot return marks through our memory: one small write each (< PIPE_BUF).
            os.write(fd, _line(label, t0, dt, "sandbox"))

    def wrap(owner, attr: str, label: str) -> None:
        fn = getattr(owner, attr)

        def timed(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                emit(label, t, time.perf_counter() - t)
        setattr(owner, attr, timed)

    for mod, attr, label in PARENT + CHILD:
        owner = mods.get(mod) or importlib.import_module(mod)
        if "." in attr:
            cls, attr = attr.split(".")
            owner = getattr(owner, cls)
        wrap(owner, attr, label)
    protocol = importlib.import_module("sandbox.protocol")
    orig_expect = protocol.Channel.expect

    def expect(self, kind):
        t = time.perf_counter()
        try:
            return orig_expect(self, kind)
        finally:
            emit(f"parent waits for sandbox '{kind}'", t, time.perf_counter() - t)
    protocol.Channel.expect = expect
    orig_step = protocol.Steps.__call__

    def step(self, name, fn, *a, **kw):
        t = time.perf_counter()
        try:
            return orig_step(self, name, fn, *a, **kw)
        finally:
            if os.getpid() != main_pid:
                emit(name, t, time.perf_counter() - t)
    protocol.Steps.__call__ = step
    code = mods["sandbox.cli"]._dispatch(["run", "--profile", "strict", "--", "/bin/true"])
    t_end = time.perf_counter()
    marks.append(("total until exit", t_exec, t_end - t_exec, "parent"))
    for m in marks:
        os.write(fd, _line(*m))
    os.close(fd)
    os._exit(code)


def _line(label: str, t0: float, dt: float, where: str) -> bytes:
    return f"{label}\t{t0!r}\t{dt!r}\t{where}\n".encode()


def one_run() -> dict[str, tuple[float, float, str]]:
    import subprocess

    r, w = os.pipe()
    t_exec = time.perf_counter()
    p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--measure", str(w), repr(t_exec)],
                         pass_fds=(w,), stdout=subprocess.DEVNULL)
    os.close(w)
    data = b""
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        data += chunk
    os.close(r)
    if p.wait() != 0:
        raise SystemExit(f"measured run exited {p.returncode}")
    out: dict[str, tuple[float, float, str]] = {}
    for line in data.decode().splitlines():
        label, t0s, dts, where = line.split("\t")
        t0, dt = float(t0s), float(dts)
        if label in out:  # a stage that runs more than once (attach: setup and init): first start, summed time
            s0, d0, _ = out[label]
            out[label] = (min(s0, t0), d0 + dt, where)
        else:
            out[label] = (t0, dt, where)
    return {k: ((t0 - t_exec) * 1000, dt * 1000, where) for k, (t0, dt, where) in out.items()}


def slowest_imports(top: int) -> list[tuple[str, float, float]]:
    """(module, self ms, cumulative ms) of the run path's imports, from `python -X importtime`, median of 5."""
    import statistics
    import subprocess
    code = "import " + ", ".join(RUN_MODULES)
    startup = subprocess.run([sys.executable, "-X", "importtime", "-c", "pass"], capture_output=True, text=True,
                             check=True).stderr
    already = {line.split("|")[2].strip() for line in startup.splitlines() if line.count("|") == 2}
    runs: list[dict[str, tuple[float, float]]] = []
    for _ in range(5):
        p = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True,
                           cwd=ROOT, check=True)
        got = {}
        for line in p.stderr.splitlines():
            if not line.startswith("import time:") or "|" not in line or "self [us]" in line:
                continue
            self_us, cum_us, name = line[len("import time:"):].split("|")
            got[name.strip()] = (int(self_us) / 1000, int(cum_us) / 1000)
        runs.append(got)
    names = set.intersection(*(set(r) for r in runs)) - already  # interpreter start-up is its own row
    rows = [(n, statistics.median(r[n][0] for r in runs), statistics.median(r[n][1] for r in runs)) for n in names]
    return sorted(rows, key=lambda r: -r[1])[:top]


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--measure":
        _child_main(int(sys.argv[2]), float(sys.argv[3]))
        return
    import argparse
    import statistics

    from bench.common import table
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--imports", type=int, default=15, help="also list the N slowest imports (0: no)")
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (the strict profile's cgroup caps need it)")
    one_run()  # warm the spec and seccomp caches
    runs = [one_run() for _ in range(a.n)]
    labels = sorted({k for r in runs for k in r}, key=lambda k: statistics.median(r[k][0] for r in runs if k in r))
    rows = []
    for k in labels:
        got = [r[k] for r in runs if k in r]
        rows.append((k, got[0][2], f"{statistics.median(g[0] for g in got):.1f}",
                     f"{statistics.median(g[1] for g in got):.2f}"))
    print(f"sbx run --profile strict -- /bin/true: stage timeline, median of {a.n} (ms from exec)")
    print(table(rows, ("stage", "process", "starts at", "takes")))
    if a.imports:
        print()
        print("slowest imports of the run path (python -X importtime, median of 5; its own overhead inflates them)")
        print(table([(n, f"{s:.2f}", f"{c:.2f}") for n, s, c in slowest_imports(a.imports)],
                    ("module", "self ms", "cumulative ms")))


if __name__ == "__main__":
    main()
