"""cgroup v2: one unified directory <base>/sbx/<id>, controllers enabled by subtree_control delegation.

base is the cgroup2 root for root, and for a rootless invoker the topmost
ancestor of its own cgroup that it owns (what systemd `Delegate=yes` hands
out: user@UID.service, or a delegated scope). Moving a process between two
cgroups needs write access to their common ancestor's cgroup.procs, which
the delegated base gives us.
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
    Cgroup,
    CgroupStats,
    Discovered,
    Unavailable,
    Write,
    cpulist,
    degraded_lines,
    format_list,
    host_has_swap,
    labels_for,
    page_floor,
    quota_us,
    read_file,
    read_keyed,
    read_lock_record,
    read_pids,
    refusal,
    release_lock,
    rmdir_retry,
    shares_to_weight,
    swap_total,
    take_lock,
    wait_until,
    write_file,
)

CONTROLLERS = ("cpu", "cpuset", "memory", "pids")
OPTIONAL = ("memory", "pids")  # accounting, OOM and pids-limit reporting even without a cap

FIX_ROOTLESS = ("start sbx in a delegated cgroup: systemd-run --user --scope -p Delegate=yes sbx run ... "
                "(needs a systemd user instance: loginctl enable-linger $USER)")
FIX_RO = ("give sbx a writable cgroup filesystem (inside a container: --cgroupns=private with a delegated, "
          "writable cgroup), or run sbx on the host")


def fix_controller(c: str, uid: int) -> str:
    if uid == 0:
        return f"enable the {c} controller (it must be listed in /sys/fs/cgroup/cgroup.controllers)"
    return (f"delegate {c} to users: create /etc/systemd/system/user@.service.d/delegate.conf with "
            f"'[Service]' 'Delegate=cpu cpuset io memory pids', run systemctl daemon-reload, then log in again")


_mount_cache: list = []


def mount() -> facts.Mount | None:
    """The unified hierarchy's mount; cached per process (mountinfo is large on busy hosts)."""
    if not _mount_cache:
        _mount_cache.append(_read_mount())
    return _mount_cache[0]


def _read_mount() -> facts.Mount | None:
    ms = [m for m in facts.read_mountinfo("self") if m.fstype == "cgroup2"]
    for m in ms:
        if m.mountpoint == "/sys/fs/cgroup":
            return m
    return ms[0] if ms else None


def _controllers(d: str) -> set[str]:
    try:
        return set(read_file(os.path.join(d, "cgroup.controllers")).split())
    except OSError:
        return set()


def _owned(d: str, euid: int) -> bool:
    try:
        st = os.stat(d)
    except OSError:
        return False
    return (st.st_uid == euid and os.access(d, os.W_OK | os.X_OK)
            and os.access(os.path.join(d, "cgroup.procs"), os.W_OK)
            and os.access(os.path.join(d, "cgroup.subtree_control"), os.W_OK))


def find_base() -> tuple[str | None, str, str]:
    """(base directory, its /proc/PID/cgroup path, reason when there is none)."""
    m = mount()
    if m is None:
        return None, "", "no cgroup2 filesystem is mounted"
    if m.readonly:
        return None, "", f"{m.mountpoint} is mounted read-only"
    euid = os.geteuid()
    if euid == 0:
        return m.mountpoint, m.root, ""
    own = [e.path for e in facts.read_cgroup("self") if e.hierarchy == 0]
    if not own:
        return None, "", "this process is not in a cgroup v2 hierarchy"
    rel = own[0]
    best = None
    while True:
        d = os.path.join(m.mountpoint, rel.lstrip("/"))
        if not _owned(d, euid):
            break
        best = (d, rel)
        if rel in ("/", ""):
            break
        rel = posixpath.dirname(rel)
    if best is None:
        return None, "", f"uid {euid} owns no cgroup above its own ({own[0]}): nothing is delegated"
    return best[0], best[1], ""


def discover(wanted) -> tuple[Discovered, str | None, str]:
    d = Discovered()
    base, rel, why = find_base()
    uid = os.geteuid()
    if base is None:
        fix = FIX_RO if "read-only" in why else (FIX_ROOTLESS if uid != 0 else "mount cgroup2 at /sys/fs/cgroup")
        for c in wanted:
            d.unavailable[c] = (why, fix)
        return d, None, ""
    avail = _controllers(base)
    for c in wanted:
        if c in avail:
            d.parents[c] = os.path.join(base, PARENT)
            d.rel[c] = posixpath.join(rel, PARENT)
        else:
            d.unavailable[c] = (f"the {c} controller is not available in {base}", fix_controller(c, uid))
    return d, base, rel


class V2Cgroup(Cgroup):
    version = "v2"

    @property
    def dir(self) -> str:
        return self.paths["unified"]

    def active_controllers(self) -> set[str]:
        if "unified" not in self.paths:
            return set()
        return _controllers(self.dir)

    def _has(self, name: str) -> bool:
        return os.path.exists(os.path.join(self.dir, name))

    def plan(self, res: Resources) -> list[Write]:
        if "unified" not in self.paths:
            return []
        on = self.active_controllers()
        ws: list[Write] = []
        u = "unified"
        if "memory" in on and res.memory is not None:
            lim = res.memory
            ws.append(Write("memory", u, "memory.max", "max" if lim == -1 else str(lim),
                            "max" if lim == -1 else str(page_floor(lim))))
            total = swap_total(res)
            if total is not None and self._has("memory.swap.max"):
                sw = "max" if total == -1 else str(total - lim)
                ws.append(Write("memory-swap", u, "memory.swap.max", sw,
                                "max" if total == -1 else str(page_floor(total - lim))))
            if self._has("memory.oom.group"):
                # Kill the whole sandbox on OOM, not one random task of it.
                ws.append(Write("memory", u, "memory.oom.group", "1", "1"))
        if "cpu" in on:
            if res.cpus is not None:
                q = "max" if res.cpus == -1 else str(quota_us(res))
                v = f"{q} {res.cpu_period}"
                ws.append(Write("cpus", u, "cpu.max", v, v))
            if res.cpu_shares is not None:
                w = str(shares_to_weight(res.cpu_shares))
                ws.append(Write("cpu-shares", u, "cpu.weight", w, w))
        if "cpuset" in on:
            for label, name, val in (("cpuset-cpus", "cpuset.cpus", res.cpuset_cpus),
                                     ("cpuset-mems", "cpuset.mems", res.cpuset_mems)):
                if val is not None:
                    ws.append(Write(label, u, name, val, format_list(cpulist(val))))
        if "pids" in on and res.pids_limit is not None:
            v = "max" if res.pids_limit == -1 else str(res.pids_limit)
            ws.append(Write("pids-limit", u, "pids.max", v, v))
        return ws

    def normalize(self, file: str, raw: str) -> str:
        raw = raw.strip()
        if file.startswith("cpuset."):
            return format_list(cpulist(raw))
        return raw

    def _need_dir(self, what: str) -> str:
        if "unified" not in self.paths:
            raise SbxError(f"cannot {what}: this sandbox has no cgroup", where="cgroups")
        return self.dir

    def freeze(self) -> None:
        d = self._need_dir("freeze")
        write_file(os.path.join(d, "cgroup.freeze"), "1")
        try:
            wait_until(self.frozen, 5.0, "cgroup.events to report frozen")
        except SbxError:
            self.thaw()
            raise

    def thaw(self) -> None:
        d = self._need_dir("thaw")
        write_file(os.path.join(d, "cgroup.freeze"), "0")
        wait_until(lambda: not self.frozen(), 5.0, "thaw")

    def frozen(self) -> bool:
        d = self._need_dir("read the freezer")
        return read_keyed(os.path.join(d, "cgroup.events")).get("frozen") == "1"

    def _kill_native(self) -> bool:
        if "unified" not in self.paths or not self._has("cgroup.kill"):
            return False
        write_file(os.path.join(self.dir, "cgroup.kill"), "1")  # kernel kills every task, forks included
        return True

    def _int(self, name: str) -> int | None:
        try:
            raw = read_file(os.path.join(self.dir, name)).strip()
        except OSError:
            return None
        return None if raw == "max" else int(raw)

    def stats(self) -> CgroupStats:
        if "unified" not in self.paths:
            return CgroupStats()
        st = CgroupStats(memory_current=self._int("memory.current"), memory_peak=self._int("memory.peak"),
                         memory_limit=self._int("memory.max"), pids_current=self._int("pids.current"),
                         pids_limit=self._int("pids.max"))
        try:
            st.cpu_usage_ns = int(read_keyed(os.path.join(self.dir, "cpu.stat"))["usage_usec"]) * 1000
        except (OSError, KeyError, ValueError):
            pass
        try:
            rb = wb = 0
            for line in read_file(os.path.join(self.dir, "io.stat")).splitlines():
                for kv in line.split()[1:]:
                    k, _, v = kv.partition("=")
                    rb += int(v) if k == "rbytes" else 0
                    wb += int(v) if k == "wbytes" else 0
            st.io_read_bytes, st.io_write_bytes = rb, wb
        except (OSError, ValueError):
            pass
        return st

    def oom_kills(self) -> int:
        if "unified" not in self.paths or not self._has("memory.events"):
            return 0
        return int(read_keyed(os.path.join(self.dir, "memory.events")).get("oom_kill", "0"))

    def pids_max_hits(self) -> int:
        if "unified" not in self.paths or not self._has("pids.events"):
            return 0
        return int(read_keyed(os.path.join(self.dir, "pids.events")).get("max", "0"))


def _enable(d: str, ctrls: list[str]) -> None:
    """Turn controllers on for d's children (idempotent, one controller per write to name the culprit)."""
    have = set(read_file(os.path.join(d, "cgroup.subtree_control")).split())
    for c in ctrls:
        if c in have:
            continue
        try:
            write_file(os.path.join(d, "cgroup.subtree_control"), "+" + c)
        except OSError as e:
            if e.errno == errno.EBUSY:
                raise SbxError(
                    f"cannot enable {c} in {d}: processes live there (cgroup v2 allows controllers only in "
                    f"cgroups without member processes); fix: move them into a leaf, e.g. "
                    f"mkdir {d}/init and write their pids to {d}/init/cgroup.procs", where="cgroups") from None
            raise SbxError(f"cannot enable {c} in {d}: {e.strerror}", where="cgroups") from None


def create(sandbox_id: str, res: Resources, degrade: bool) -> V2Cgroup:
    need = labels_for(res)
    wanted = list(dict.fromkeys([c for c in CONTROLLERS if c in need] + list(OPTIONAL)))
    disc, base, base_rel = discover(wanted)
    problems = [Unavailable(labels, *disc.unavailable[c]) for c, labels in need.items() if c in disc.unavailable]
    if problems and not degrade:
        raise refusal(problems)
    ctrls = [c for c in wanted if c in disc.parents]
    if base is None:
        return V2Cgroup(sandbox_id, {}, {}, degraded=degraded_lines(problems, res), res=res)
    # Even with no controller left, the directory gives freeze/kill/membership (core v2 files).
    parent = os.path.join(base, PARENT)
    d = os.path.join(parent, sandbox_id)
    rel = posixpath.join(base_rel, PARENT, sandbox_id)
    lock = take_lock(sandbox_id, {"version": "v2", "paths": {"unified": d}})
    made = False
    try:
        try:
            _enable(base, ctrls)
            os.makedirs(parent, mode=0o755, exist_ok=True)
            _enable(parent, ctrls)
            os.mkdir(d, 0o755)
            made = True
        except FileExistsError:
            raise SbxError(f"cgroup {d} already exists (sandbox id reused?)", where="cgroups") from None
        except OSError as e:
            fix = f"; fix: {FIX_RO}" if e.errno == errno.EROFS else ""
            raise SbxError(f"cannot create {d}: {e.strerror}{fix}", where="cgroups") from None
        cg = V2Cgroup(sandbox_id, {"unified": d}, {"unified": rel}, lock_fd=lock, res=res)
        total = swap_total(res)
        if "memory" in need and "memory" in ctrls and total is not None and not cg._has("memory.swap.max"):
            if res.memory_swap not in (None, 0, -1) or host_has_swap():
                p = Unavailable(["memory-swap"], "this kernel does not account swap (no memory.swap.max)",
                                "boot with swapaccount=1 / CONFIG_MEMCG_SWAP")
                if not degrade:
                    raise refusal([p])
                problems.append(p)
        cg.degraded = degraded_lines(problems, res)
        for w in cg.plan(res):
            path = cg.file(w.controller, w.file)
            try:
                write_file(path, w.value)
            except OSError as e:
                hint = ""
                if w.file.startswith("cpuset.") and e.errno in (errno.EINVAL, errno.ERANGE):
                    try:
                        hint = f" (available: {read_file(os.path.join(d, w.file + '.effective')).strip()})"
                    except OSError:
                        pass
                raise SbxError(f"{w.label or w.file}: writing {w.value} to {path} failed: {e.strerror}{hint}",
                               where="cgroups") from None
        return cg
    except BaseException:
        if made:
            rmdir_retry(d, 0.5)
        release_lock(sandbox_id, lock)
        raise


def list_sandboxes() -> dict[str, list[str]]:
    base, _, _ = find_base()
    if base is None:
        return {}
    p = os.path.join(base, PARENT)
    try:
        names = os.listdir(p)
    except OSError:
        return {}
    return {n: [os.path.join(p, n)] for n in names
            if os.path.isdir(os.path.join(p, n)) and not os.path.islink(os.path.join(p, n))}


def open_existing(sandbox_id: str) -> V2Cgroup | None:
    # A rootless sbx verb may run from another cgroup than the creator did (another
    # terminal, another scope), so prefer the directory the creator recorded in its
    # lock file; accept it only if it really is <somewhere in the cgroup2 mount>/sbx/<id>.
    m = mount()
    if m is None:
        return None
    rec = read_lock_record(sandbox_id) or {}
    d = (rec.get("paths") or {}).get("unified") if rec.get("version") == "v2" else None
    top = m.mountpoint.rstrip("/") + "/"
    if not (isinstance(d, str) and d.startswith(top) and d.endswith(f"/{PARENT}/{sandbox_id}")
            and ".." not in d.split("/") and os.path.isdir(d)):
        base, _, _ = find_base()
        d = os.path.join(base, PARENT, sandbox_id) if base else None
        if d is None or not os.path.isdir(d):
            return None
    rel = posixpath.join(m.root, os.path.relpath(d, m.mountpoint))
    return V2Cgroup(sandbox_id, {"unified": d}, {"unified": rel})


def is_empty(dirs: list[str]) -> bool:
    for d in dirs:
        try:
            if read_keyed(os.path.join(d, "cgroup.events")).get("populated") == "1":
                return False
        except OSError:
            if read_pids(os.path.join(d, "cgroup.procs")):
                return False
    return True
