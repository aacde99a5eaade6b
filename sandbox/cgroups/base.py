"""What both cgroup backends share: the Cgroup interface, locks, file I/O and Docker's conversions.

A backend (v1.py, v2.py) decides *where* the directories live and *which*
files carry each limit (a list of Write). Everything that is the same in
both versions lives here: attach, membership, verify-by-read-back, kill,
destroy, the per-sandbox lock that keeps reap_stale away from a cgroup in
setup, and the describe() record.
"""
from __future__ import annotations

import errno
import fcntl
import marshal
import os
import time

from .. import facts, paths
from ..errors import SbxError
from ..records import asdict, field, record
from ..sig import signal
from ..spec import Resources
from ..values import MIN_MEMORY, cpulist

PARENT = "sbx"  # every sandbox cgroup is <hierarchy or delegated root>/sbx/<id>
_ID_FIRST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_ID_CHARS = _ID_FIRST | frozenset("_.-")
UNLIMITED = 1 << 62  # cgroup v1 prints "unlimited" as PAGE_COUNTER_MAX*PAGE_SIZE (~2**63)
# An unlocked, empty cgroup with no lock file in *our* state dir may belong to an
# sbx using another SBX_STATE_DIR that is still between mkdir and attach; such a
# cgroup is only reaped once it is clearly older than any setup.
STALE_AGE = 30.0
WAIT_STEP = 0.002

FIX_DEGRADE = "or allow running without these caps with `degrade: allow` in the profile"


@record
class CgroupStats:
    """Usage read from the cgroup files; None where this host/version has no such counter."""

    cpu_usage_ns: int | None = None
    memory_current: int | None = None
    memory_peak: int | None = None
    memory_limit: int | None = None  # None: unlimited
    pids_current: int | None = None
    pids_limit: int | None = None  # None: unlimited
    io_read_bytes: int | None = None
    io_write_bytes: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@record(frozen=True)
class Write:
    """One limit file to write (in list order) and the normalised value verify expects back."""

    label: str  # user-facing control ("memory", "cpus", ...); "" for internal plumbing
    controller: str
    file: str
    value: str
    expect: str


@record
class Unavailable:
    """A requested control this host cannot enforce, and how to fix that."""

    labels: list[str]
    reason: str
    fix: str


# ---------------------------------------------------------------- validation and Docker conversions

def check_id(sandbox_id: str) -> None:
    # [A-Za-z0-9][A-Za-z0-9_.-]{0,127}, checked without `re` (its import is ~4 ms of every start)
    if not (isinstance(sandbox_id, str) and 0 < len(sandbox_id) <= 128 and sandbox_id[0] in _ID_FIRST
            and _ID_CHARS.issuperset(sandbox_id)):
        raise SbxError(f"invalid sandbox id {sandbox_id!r} for a cgroup name", where="cgroups")


def validate(res: Resources) -> None:
    """Refuse values the kernel would reject, with the flag's name, before anything is created."""
    def bad(flag: str, why: str) -> SbxError:
        return SbxError(f"{flag}: {why}", where="resources")

    if res.memory is not None and res.memory != -1 and res.memory < MIN_MEMORY:
        raise bad("--memory", f"{res.memory} bytes is below the {MIN_MEMORY >> 20} MiB minimum")
    if res.memory_swap not in (None, 0, -1):
        if res.memory is None or res.memory == -1:
            raise bad("--memory-swap", "needs --memory (it is the memory+swap total)")
        if res.memory_swap < res.memory:
            raise bad("--memory-swap", f"{res.memory_swap} is below --memory {res.memory} (it is the total incl. swap)")
    if res.cpus is not None and res.cpus != -1:
        if not 1000 <= res.cpu_period <= 1_000_000:
            raise bad("cpu period", f"{res.cpu_period} us is outside 1000..1000000")
        if res.cpus <= 0 or quota_us(res) < 1000:
            raise bad("--cpus", f"{res.cpus} gives a quota below 1 ms per {res.cpu_period} us period")
    if res.cpu_shares is not None and res.cpu_shares < 0:
        raise bad("--cpu-shares", f"{res.cpu_shares} is negative")
    if res.pids_limit is not None and res.pids_limit != -1 and res.pids_limit < 1:
        raise bad("--pids-limit", f"{res.pids_limit} must be >= 1 or -1")
    for flag, val in (("--cpuset-cpus", res.cpuset_cpus), ("--cpuset-mems", res.cpuset_mems)):
        if val is not None:
            try:
                if not cpulist(val):
                    raise ValueError
            except ValueError:
                raise bad(flag, f"{val!r} is not a list like 0-2,4") from None


def quota_us(res: Resources) -> int:
    return int(round(res.cpus * res.cpu_period)) if res.cpus is not None else -1


def clamp_shares(shares: int) -> int:
    return min(max(shares, 2), 262144)


def shares_to_weight(shares: int) -> int:
    """runc's cpu.shares -> cpu.weight mapping: [2, 262144] onto [1, 10000]."""
    return 1 + ((clamp_shares(shares) - 2) * 9999) // 262142


def swap_total(res: Resources) -> int | None:
    """memory+swap total to enforce, -1 for unlimited, None when memory is unlimited/unset.

    Docker would allow as much swap again as memory when --memory-swap is unset;
    sbx is stricter: unset means *no* swap (total == memory), so a sandbox never
    outgrows its memory cap by paging out.
    """
    if res.memory is None or res.memory == -1:
        return None
    if res.memory_swap in (None, 0):
        return res.memory
    return res.memory_swap


def format_list(items) -> str:
    s = sorted(items)
    out = []
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[j] + 1:
            j += 1
        out.append(str(s[i]) if i == j else f"{s[i]}-{s[j]}")
        i = j + 1
    return ",".join(out)


def page_floor(n: int) -> int:
    """The kernel stores byte limits in pages, rounding down: expect what it will print."""
    ps = os.sysconf("SC_PAGE_SIZE")
    return n // ps * ps


def host_has_swap() -> bool:
    total = facts.read_meminfo().get("SwapTotal")
    return True if total is None else total > 0  # unknown: assume swap, so a missing swap control is not ignored


# ---------------------------------------------------------------- cgroupfs file I/O

def read_file(path: str, limit: int = 65536) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        return os.read(fd, limit).decode("utf-8", "replace")
    finally:
        os.close(fd)


def write_file(path: str, value: str) -> None:
    # One write() per value: cgroupfs parses each write as a whole.
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def read_keyed(path: str) -> dict[str, str]:
    """'key value' lines (memory.events, pids.events, cgroup.events, cpu.stat, oom_control)."""
    out = {}
    for line in read_file(path).splitlines():
        k, _, v = line.partition(" ")
        out[k] = v.strip()
    return out


def read_pids(path: str) -> list[int]:
    try:
        return [int(x) for x in read_file(path, 1 << 20).split()]
    except FileNotFoundError:
        return []


def rmdir_retry(path: str, timeout: float = 2.0) -> bool:
    """rmdir; EBUSY while the last task is still exiting is retried briefly. True when gone."""
    deadline = time.monotonic() + timeout
    step = 0.0001
    while True:
        try:
            os.rmdir(path)
            return True
        except FileNotFoundError:
            return True
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() > deadline:
                return False
        time.sleep(step)
        step = min(step * 2, WAIT_STEP * 5)


# ---------------------------------------------------------------- per-sandbox lock

def lock_dir() -> str:
    return paths.ensure_private_dir(os.path.join(paths.ensure_private_dir(paths.state_dir()), "cgroups"))


def lock_path(sandbox_id: str) -> str:
    return os.path.join(lock_dir(), sandbox_id + ".lock")


def take_lock(sandbox_id: str, record: dict, timeout: float = 2.0) -> int:
    """Create and flock the sandbox's lock file; O_CLOEXEC so the workload's exec drops it.

    A concurrent reap (_sweep_locks) may hold a brand-new lock file for an
    instant, or unlink it between our open and our flock. So: wait briefly for
    the lock, then make sure the file we locked is still the one at the path.
    """
    p = lock_path(sandbox_id)
    deadline = time.monotonic() + timeout
    while True:
        fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() >= deadline:
                raise SbxError(f"sandbox id {sandbox_id} already has a cgroup being set up",
                               where="cgroups") from None
            time.sleep(0.005)
            continue
        try:
            same = os.fstat(fd).st_ino == os.stat(p, follow_symlinks=False).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the sweeper unlinked what we locked: start over with a fresh file
    os.ftruncate(fd, 0)
    os.write(fd, marshal.dumps(record))  # marshal, not json: no import on the start-up path
    return fd


def try_lock(sandbox_id: str) -> tuple[int | None, bool]:
    """(fd holding the lock or None if someone holds it, whether the lock file existed)."""
    try:
        fd = os.open(lock_path(sandbox_id), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None, False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None, True
    return fd, True


def read_lock_record(sandbox_id: str) -> dict | None:
    try:
        with open(lock_path(sandbox_id), "rb") as f:
            rec = marshal.loads(f.read(65536))
    except (OSError, ValueError, EOFError, TypeError):
        return None
    return rec if isinstance(rec, dict) else None


def release_lock(sandbox_id: str, fd: int | None) -> None:
    if fd is None:
        return
    try:
        os.unlink(lock_path(sandbox_id))  # unlink while still holding it: no window for a reaper
    except OSError:
        pass
    os.close(fd)


# ---------------------------------------------------------------- the interface

class Cgroup:
    """One sandbox's cgroup, in one directory per hierarchy (v1) or one directory (v2).

    `paths` maps controller -> directory (v2: {"unified": dir}). `degraded`
    names requested caps that are NOT enforced (only when the caller allowed
    degrading). With no directories at all every operation is a no-op.
    """

    version = "?"

    def __init__(self, sandbox_id: str, dirs: dict[str, str], rel: dict[str, str], *,
                 degraded: list[str] | None = None, lock_fd: int | None = None,
                 res: Resources | None = None) -> None:
        self.sandbox_id = sandbox_id
        self.paths = dict(dirs)
        self._rel = dict(rel)  # controller -> path as /proc/PID/cgroup prints it
        self.degraded = list(degraded or [])
        self._lock_fd = lock_fd
        self._res = res
        self._destroyed = False

    # -- backend hooks
    def plan(self, res: Resources) -> list[Write]:
        raise NotImplementedError

    def normalize(self, file: str, raw: str) -> str:
        raise NotImplementedError

    def active_controllers(self) -> set[str]:
        raise NotImplementedError

    def freeze(self) -> None:
        raise NotImplementedError

    def thaw(self) -> None:
        raise NotImplementedError

    def frozen(self) -> bool:
        raise NotImplementedError

    def stats(self) -> CgroupStats:
        raise NotImplementedError

    def oom_kills(self) -> int:
        raise NotImplementedError

    def pids_max_hits(self) -> int:
        raise NotImplementedError

    def _kill_native(self) -> bool:
        """Kill everything with one kernel operation if the version has one (v2 cgroup.kill)."""
        return False

    # -- shared behaviour
    def dirs(self) -> list[str]:
        """Distinct directories (co-mounted v1 controllers share one)."""
        return list(dict.fromkeys(self.paths.values()))

    def file(self, controller: str, name: str) -> str:
        return os.path.join(self.paths[controller], name)

    def oom_killed(self) -> bool:
        return self.oom_kills() > 0

    def procs(self) -> list[int]:
        seen: dict[int, None] = {}
        for d in self.dirs():
            for p in read_pids(os.path.join(d, "cgroup.procs")):
                seen[p] = None
        return list(seen)

    def attach(self, pid: int) -> None:
        """Move pid into every hierarchy; any failure is fatal (the workload must never run uncapped)."""
        for d in self.dirs():
            try:
                write_file(os.path.join(d, "cgroup.procs"), str(pid))
            except OSError as e:
                raise SbxError(f"cannot move pid {pid} into {d}: {e.strerror}", where="cgroups") from None

    def contains(self, pid: int) -> bool:
        entries = facts.read_cgroup(pid)
        for ctrl, rel in self._rel.items():
            want = [e.path for e in entries
                    if (ctrl == "unified" and e.hierarchy == 0) or (ctrl != "unified" and ctrl in e.controllers)]
            if not want or not any(p == rel or p.startswith(rel + "/") for p in want):
                return False
        return True

    def verify(self, res: Resources) -> list[str]:
        """Read back every limit file; each mismatch is one human line. [] means enforced."""
        if self._destroyed:
            return ["cgroup was destroyed"]
        problems = []
        for d in self.dirs():
            if not os.path.isdir(d):
                problems.append(f"{d} is missing")
        if problems:
            return problems
        skip = {d.split(" ", 1)[0] for d in self.degraded}
        active = self.active_controllers()
        for ctrl, labels in labels_for(res).items():
            for label in labels:
                if label not in skip and ctrl not in active:
                    problems.append(f"{label}: the {ctrl} controller is not active for "
                                    f"{self.dirs()[0] if self.paths else 'this sandbox (no cgroup)'}")
        for w in self.plan(res):
            if w.label in skip or w.controller not in self.paths:
                continue
            path = self.file(w.controller, w.file)
            try:
                got = self.normalize(w.file, read_file(path))
            except OSError as e:
                problems.append(f"{path}: unreadable ({e.strerror})")
                continue
            if got != w.expect:
                what = w.label or w.file
                problems.append(f"{what}: {path} reads {got}, wanted {w.expect}")
        return problems

    def kill_all(self, sig: int = signal.SIGKILL, timeout: float = 5.0) -> None:
        """Signal every process; for SIGKILL also wait (bounded) until the cgroup is empty."""
        if not self.paths or self._destroyed:
            return
        if sig == signal.SIGKILL and self._kill_native():
            pass
        else:
            self._signal_each(sig)
        if sig != signal.SIGKILL:
            return
        deadline = time.monotonic() + timeout
        step = 0.0001
        while self.procs():
            if time.monotonic() > deadline:
                return  # destroy() reports the leftover as EBUSY
            time.sleep(step)
            step = min(step * 2, WAIT_STEP * 5)
            if step >= WAIT_STEP:
                self._signal_each(sig)  # a fork that raced the first round

    def _signal_each(self, sig: int) -> None:
        # Freezing first (when we can) stops a fork loop from outrunning us; a
        # pidfd + membership check makes sure a recycled pid is never signalled.
        frozen_here = False
        if sig == signal.SIGKILL:
            try:
                if not self.frozen():
                    self.freeze()
                    frozen_here = True
            except (SbxError, OSError, NotImplementedError, KeyError):
                pass
        try:
            for pid in self.procs():
                try:
                    pfd = os.pidfd_open(pid)
                except OSError:
                    continue
                try:
                    if self.contains(pid):
                        signal.pidfd_send_signal(pfd, sig)
                except (OSError, facts.ProcessGone):
                    pass
                finally:
                    os.close(pfd)
        finally:
            if frozen_here or (sig == signal.SIGKILL and self._frozen_quiet()):
                try:
                    self.thaw()  # SIGKILL is only acted on once the task runs again (v1)
                except (SbxError, OSError):
                    pass

    def _frozen_quiet(self) -> bool:
        try:
            return self.frozen()
        except (SbxError, OSError, NotImplementedError, KeyError):
            return False

    def destroy(self) -> None:
        """Kill everything, remove every directory, release the lock. Idempotent."""
        if self._destroyed:
            return
        left = []
        try:
            # An empty cgroup (the usual end: init's exit took its pid namespace with it) needs no
            # kill round, whose freeze/thaw dance costs ~0.4 ms on v1.
            if any(os.path.isdir(d) for d in self.dirs()) and self.procs():
                self.kill_all()
            for d in self.dirs():
                if not rmdir_retry(d):
                    left.append(d)
        finally:
            self._destroyed = True
            release_lock(self.sandbox_id, self._lock_fd)
            self._lock_fd = None
        if left:
            raise SbxError(f"could not remove cgroup {', '.join(left)} (still busy); "
                           "the next sbx start will reap it", where="cgroups")

    def describe(self) -> dict:
        return {"version": self.version, "id": self.sandbox_id, "paths": dict(self.paths),
                "degraded": list(self.degraded)}

    def __repr__(self) -> str:
        return f"<Cgroup {self.version} {self.sandbox_id[:12]} {sorted(self.paths)}>"


def refusal(problems: list[Unavailable]) -> SbxError:
    grouped: dict[tuple[str, str], list[str]] = {}
    for p in problems:  # one reason+fix, however many caps it costs
        grouped.setdefault((p.reason, p.fix), []).extend(p.labels)
    parts = [f"{', '.join(labels)} cannot be enforced: {reason}; fix: {fix}"
             for (reason, fix), labels in grouped.items()]
    return SbxError(" | ".join(parts) + f"; {FIX_DEGRADE}", where="cgroups")


def degraded_lines(problems: list[Unavailable], res: Resources) -> list[str]:
    vals = {"memory": res.memory, "memory-swap": res.memory_swap, "cpus": res.cpus, "cpu-shares": res.cpu_shares,
            "cpuset-cpus": res.cpuset_cpus, "cpuset-mems": res.cpuset_mems, "pids-limit": res.pids_limit}
    out = []
    for p in problems:
        for label in p.labels:
            out.append(f"{label} (={vals.get(label)}; {p.reason})")
    return out


def labels_for(res: Resources) -> dict[str, list[str]]:
    """Requested controls per cgroup controller name (the same names in v1 and v2)."""
    need: dict[str, list[str]] = {}
    if res.memory is not None:
        need.setdefault("memory", []).append("memory")
    if res.memory_swap not in (None, 0):
        need.setdefault("memory", []).append("memory-swap")
    if res.cpus is not None:
        need.setdefault("cpu", []).append("cpus")
    if res.cpu_shares is not None:
        need.setdefault("cpu", []).append("cpu-shares")
    if res.cpuset_cpus is not None:
        need.setdefault("cpuset", []).append("cpuset-cpus")
    if res.cpuset_mems is not None:
        need.setdefault("cpuset", []).append("cpuset-mems")
    if res.pids_limit is not None:
        need.setdefault("pids", []).append("pids-limit")
    return need


def wait_until(pred, timeout: float, what: str) -> None:
    # Kernel state changes (FROZEN, tasks gone) usually land within a millisecond:
    # poll fast first, then back off so a slow case does not burn a core.
    deadline = time.monotonic() + timeout
    step = 0.0001
    while not pred():
        if time.monotonic() > deadline:
            raise SbxError(f"timed out waiting for {what}", where="cgroups")
        time.sleep(step)
        step = min(step * 2, WAIT_STEP * 5)


@record
class Discovered:
    """A backend's view of this host: where sbx/<id> goes per controller, and what is unavailable."""

    parents: dict[str, str] = field(default_factory=dict)  # controller -> <root>/sbx
    rel: dict[str, str] = field(default_factory=dict)  # controller -> /proc/PID/cgroup path of <root>/sbx
    unavailable: dict[str, tuple[str, str]] = field(default_factory=dict)  # controller -> (reason, fix)
