"""cgroup v1: one hierarchy per controller (or co-mounted group), each with its own sbx/<id>.

Hybrid hosts (v1 controllers plus an empty cgroup2 at /sys/fs/cgroup/unified)
are v1 for our purposes: every controller we use must be mounted as v1.
v1 has no safe delegation to unprivileged users, so rootless is refused
(or degraded when the profile allows it).
"""
from __future__ import annotations

import errno
import os
import posixpath

from .. import facts
from ..errors import SbxError
from ..spec import Resources
from .base import (
    PARENT,
    UNLIMITED,
    Cgroup,
    CgroupStats,
    Discovered,
    Unavailable,
    Write,
    clamp_shares,
    cpulist,
    degraded_lines,
    format_list,
    host_has_swap,
    labels_for,
    page_floor,
    quota_us,
    read_file,
    read_keyed,
    read_pids,
    refusal,
    release_lock,
    rmdir_retry,
    swap_total,
    take_lock,
    wait_until,
    write_file,
)

KNOWN = ("cpu", "cpuacct", "cpuset", "memory", "pids", "freezer")
# Created even when no limit needs them: stats (cpuacct, memory, pids), pause (freezer), OOM/pids reporting.
OPTIONAL = ("cpuacct", "freezer", "memory", "pids")

FIX_ROOTLESS = ("run sbx as root, or use a cgroup v2 host (boot with systemd.unified_cgroup_hierarchy=1) and start "
                "sbx in a delegated scope: systemd-run --user --scope -p Delegate=yes sbx run ...")
FIX_RO = ("give sbx a writable cgroup filesystem (inside a container: run it with a private, writable, delegated "
          "cgroup, e.g. cgroup v2 with --cgroupns=private), or run sbx on the host")


_mounts_cache: dict[str, facts.Mount] | None = None


def mounts() -> dict[str, facts.Mount]:
    """controller -> its v1 mount (the one under /sys/fs/cgroup when a hierarchy is mounted twice).

    Cached per process: mountinfo is large on busy hosts and create + reap read it on every start.
    """
    global _mounts_cache
    if _mounts_cache is None:
        _mounts_cache = _read_mounts()
    return _mounts_cache


def _read_mounts() -> dict[str, facts.Mount]:
    ms = [m for m in facts.read_mountinfo("self") if m.fstype == "cgroup"]
    ms.sort(key=lambda m: not m.mountpoint.startswith("/sys/fs/cgroup/"))
    out: dict[str, facts.Mount] = {}
    for m in ms:
        for c in KNOWN:
            if c in m.super_options or c in m.options:
                out.setdefault(c, m)
    return out


def discover() -> Discovered:
    d = Discovered()
    euid = os.geteuid()
    ms = mounts()
    for c in KNOWN:
        m = ms.get(c)
        if m is None:
            d.unavailable[c] = (f"the {c} controller is not mounted as cgroup v1",
                                f"mount -t cgroup -o {c} cgroup /sys/fs/cgroup/{c} (or use a cgroup v2 host)")
        elif m.readonly:
            d.unavailable[c] = (f"{m.mountpoint} is mounted read-only", FIX_RO)
        elif euid != 0:
            d.unavailable[c] = (f"cgroup v1 cannot be delegated to uid {euid}", FIX_ROOTLESS)
        else:
            d.parents[c] = os.path.join(m.mountpoint, PARENT)
            d.rel[c] = posixpath.join(m.root, PARENT)
    return d


class V1Cgroup(Cgroup):
    version = "v1"

    def has_memsw(self) -> bool:
        return "memory" in self.paths and os.path.exists(self.file("memory", "memory.memsw.limit_in_bytes"))

    def active_controllers(self) -> set[str]:
        return {c for c, d in self.paths.items() if os.path.isdir(d)}

    def _parent_value(self, name: str) -> str:
        return read_file(os.path.join(os.path.dirname(self.paths["cpuset"]), name)).strip()

    def plan(self, res: Resources) -> list[Write]:
        ws: list[Write] = []
        if "memory" in self.paths and res.memory is not None:
            # Limit first, then memory+swap: memsw may never be below the limit, so this
            # order is the one that works whether the value rises or falls.
            lim = res.memory
            ws.append(Write("memory", "memory", "memory.limit_in_bytes", str(lim),
                            "max" if lim == -1 else str(page_floor(lim))))
            total = swap_total(res)
            if total is not None and self.has_memsw():
                ws.append(Write("memory-swap", "memory", "memory.memsw.limit_in_bytes", str(total),
                                "max" if total == -1 else str(page_floor(total))))
        if "cpu" in self.paths:
            if res.cpus is not None:
                q = -1 if res.cpus == -1 else quota_us(res)
                ws.append(Write("cpus", "cpu", "cpu.cfs_period_us", str(res.cpu_period), str(res.cpu_period)))
                ws.append(Write("cpus", "cpu", "cpu.cfs_quota_us", str(q), str(q)))
            if res.cpu_shares is not None:
                s = str(clamp_shares(res.cpu_shares))
                ws.append(Write("cpu-shares", "cpu", "cpu.shares", s, s))
        if "cpuset" in self.paths:
            # A v1 cpuset with empty cpus/mems refuses tasks: always fill both, from the parent when not asked.
            for label, name, val in (("cpuset-cpus", "cpuset.cpus", res.cpuset_cpus),
                                     ("cpuset-mems", "cpuset.mems", res.cpuset_mems)):
                v = val if val is not None else self._parent_value(name)
                ws.append(Write(label if val is not None else "", "cpuset", name, v, format_list(cpulist(v))))
        if "pids" in self.paths and res.pids_limit is not None:
            v = "max" if res.pids_limit == -1 else str(res.pids_limit)
            ws.append(Write("pids-limit", "pids", "pids.max", v, v))
        return ws

    def normalize(self, file: str, raw: str) -> str:
        raw = raw.strip()
        if file in ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes"):
            n = int(raw)
            return "max" if n >= UNLIMITED or n == -1 else str(n)
        if file.startswith("cpuset."):
            return format_list(cpulist(raw))
        return raw

    # -- freezer
    def _need(self, ctrl: str, what: str) -> str:
        if ctrl not in self.paths:
            raise SbxError(f"cannot {what}: no {ctrl} cgroup for this sandbox", where="cgroups")
        return self.paths[ctrl]

    def freeze(self) -> None:
        d = self._need("freezer", "freeze")
        write_file(os.path.join(d, "freezer.state"), "FROZEN")
        try:
            # FREEZING until every task has stopped; a task stuck in D state can hold it there.
            wait_until(self.frozen, 5.0, "the freezer to reach FROZEN")
        except SbxError:
            self.thaw()
            raise

    def thaw(self) -> None:
        d = self._need("freezer", "thaw")
        write_file(os.path.join(d, "freezer.state"), "THAWED")
        wait_until(lambda: read_file(os.path.join(d, "freezer.state")).strip() == "THAWED", 5.0, "thaw")

    def frozen(self) -> bool:
        d = self._need("freezer", "read the freezer")
        return read_file(os.path.join(d, "freezer.state")).strip() == "FROZEN"

    # -- accounting
    def _int(self, ctrl: str, name: str) -> int | None:
        if ctrl not in self.paths:
            return None
        try:
            raw = read_file(self.file(ctrl, name)).strip()
        except OSError:
            return None
        if raw == "max":
            return None
        n = int(raw)
        return None if n >= UNLIMITED else n

    def stats(self) -> CgroupStats:
        return CgroupStats(
            cpu_usage_ns=self._int("cpuacct", "cpuacct.usage"),
            memory_current=self._int("memory", "memory.usage_in_bytes"),
            memory_peak=self._int("memory", "memory.max_usage_in_bytes"),
            memory_limit=self._int("memory", "memory.limit_in_bytes"),
            pids_current=self._int("pids", "pids.current"),
            pids_limit=self._int("pids", "pids.max"),
        )

    def oom_kills(self) -> int:
        if "memory" not in self.paths:
            return 0
        return int(read_keyed(self.file("memory", "memory.oom_control")).get("oom_kill", "0"))

    def pids_max_hits(self) -> int:
        if "pids" not in self.paths:
            return 0
        return int(read_keyed(self.file("pids", "pids.events")).get("max", "0"))


def _init_cpuset_parent(parent: str) -> None:
    """A fresh v1 cpuset dir has empty cpus/mems: copy the hierarchy root's so children can be filled."""
    root = os.path.dirname(parent)
    for name in ("cpuset.cpus", "cpuset.mems"):
        p = os.path.join(parent, name)
        if not read_file(p).strip():
            write_file(p, read_file(os.path.join(root, name)).strip())


def _mkdir_error(path: str, e: OSError) -> SbxError:
    if e.errno == errno.EROFS:
        return SbxError(f"cannot create {path}: cgroup filesystem is read-only; fix: {FIX_RO}", where="cgroups")
    return SbxError(f"cannot create {path}: {e.strerror}", where="cgroups")


def create(sandbox_id: str, res: Resources, degrade: bool) -> V1Cgroup:
    need = labels_for(res)
    disc = discover()
    problems = [Unavailable(labels, *disc.unavailable[c]) for c, labels in need.items() if c in disc.unavailable]
    if "memory" in need and "memory" not in disc.unavailable and swap_total(res) is not None:
        root = os.path.dirname(disc.parents["memory"])
        if not os.path.exists(os.path.join(root, "memory.memsw.limit_in_bytes")):
            # Without swap accounting a swap cap cannot be set; it only matters if there is swap to use.
            if res.memory_swap not in (None, 0, -1) or host_has_swap():
                problems.append(Unavailable(["memory-swap"], "this kernel does not account swap (no memory.memsw.*)",
                                            "boot with swapaccount=1, or use a cgroup v2 host"))
    if problems and not degrade:
        raise refusal(problems)
    degraded = degraded_lines(problems, res)
    lost = {c for c in need if c in disc.unavailable}
    ctrls = [c for c in KNOWN if (c in need and c not in lost) or (c in OPTIONAL and c in disc.parents)]
    if not ctrls:
        return V1Cgroup(sandbox_id, {}, {}, degraded=degraded, res=res)
    dirs = {c: os.path.join(disc.parents[c], sandbox_id) for c in ctrls}
    rel = {c: posixpath.join(disc.rel[c], sandbox_id) for c in ctrls}
    lock = take_lock(sandbox_id, {"version": "v1", "paths": dirs})
    made: list[str] = []
    try:
        for c in ctrls:
            d = dirs[c]
            if d in made:
                continue  # co-mounted with a controller already handled (cpu,cpuacct)
            try:
                os.makedirs(disc.parents[c], mode=0o755, exist_ok=True)
                if c == "cpuset":
                    _init_cpuset_parent(disc.parents[c])
                os.mkdir(d, 0o755)
            except FileExistsError:
                raise SbxError(f"cgroup {d} already exists (sandbox id reused?)", where="cgroups") from None
            except OSError as e:
                raise _mkdir_error(d, e) from None
            made.append(d)
        cg = V1Cgroup(sandbox_id, dirs, rel, degraded=degraded, lock_fd=lock, res=res)
        for w in cg.plan(res):
            path = cg.file(w.controller, w.file)
            try:
                write_file(path, w.value)
            except OSError as e:
                hint = ""
                if w.controller == "cpuset" and e.errno in (errno.EINVAL, errno.ERANGE):
                    hint = f" (available: {cg._parent_value(w.file)})"
                raise SbxError(f"{w.label or w.file}: writing {w.value} to {path} failed: {e.strerror}{hint}",
                               where="cgroups") from None
        return cg
    except BaseException:
        for d in reversed(made):
            rmdir_retry(d, 0.5)
        release_lock(sandbox_id, lock)
        raise


def parents() -> list[str]:
    """Every existing <hierarchy>/sbx (for reaping), one per distinct hierarchy."""
    out = []
    for m in {m.mountpoint: m for m in mounts().values()}.values():
        p = os.path.join(m.mountpoint, PARENT)
        if os.path.isdir(p):
            out.append(p)
    return out


def list_sandboxes() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for p in parents():
        try:
            names = os.listdir(p)
        except OSError:
            continue
        for n in names:
            d = os.path.join(p, n)
            if os.path.isdir(d) and not os.path.islink(d):
                found.setdefault(n, []).append(d)
    return found


def open_existing(sandbox_id: str) -> V1Cgroup | None:
    disc = discover()
    dirs, rel = {}, {}
    for c, parent in disc.parents.items():
        d = os.path.join(parent, sandbox_id)
        if os.path.isdir(d):
            dirs[c] = d
            rel[c] = posixpath.join(disc.rel[c], sandbox_id)
    return V1Cgroup(sandbox_id, dirs, rel) if dirs else None


def is_empty(dirs: list[str]) -> bool:
    return not any(read_pids(os.path.join(d, "cgroup.procs")) for d in dirs)
