"""The cgroup backend against the real kernel (v1 on these hosts; the same file runs unchanged on pure v2).

Every test forks a real process that blocks on a pipe, moves it into a real
sandbox cgroup and proves the limit by what the kernel does to it. Nothing is
mocked. Version-specific file names only appear behind detect().
"""
from __future__ import annotations

import json
import mmap
import os
import shutil
import signal
import struct
import tempfile
import time

import pytest

from tests.forked import in_child

from sandbox import cgroups, facts
from sandbox.cgroups import base
from sandbox.errors import SbxError
from sandbox.spec import Resources

VERSION = cgroups.detect()
MiB = 1024 * 1024

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: creating cgroups under the hierarchy root (no delegated cgroup here)")


# ---------------------------------------------------------------- helpers

class Child:
    """A forked process parked on a pipe; after go() it runs fn and exits with its return value."""

    def __init__(self, fn):
        r, w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            code = 99
            try:
                os.close(w)
                os.read(r, 1)
                code = fn() or 0
            except BaseException:  # noqa: BLE001 - never return into pytest from a fork
                code = 98
            finally:
                os._exit(code)
        os.close(r)
        self._w = w
        self.status: int | None = None

    def go(self) -> None:
        os.write(self._w, b"g")
        os.close(self._w)
        self._w = None

    def wait(self, timeout: float = 20.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, st = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = st
                return st
            time.sleep(0.01)
        self.kill()
        raise AssertionError(f"child {self.pid} still running after {timeout}s")

    def kill(self) -> None:
        if self.status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _, self.status = os.waitpid(self.pid, 0)
        if self._w is not None:
            os.close(self._w)
            self._w = None


@pytest.fixture
def make():
    made: list = []
    kids: list[Child] = []

    def _make(res: Resources, degrade: bool = False):
        sid = "test-" + os.urandom(8).hex()
        cg = cgroups.create(sid, res, degrade=degrade)
        made.append(cg)
        return cg

    def _child(fn) -> Child:
        c = Child(fn)
        kids.append(c)
        return c

    _make.child = _child
    yield _make
    for c in kids:
        c.kill()
    for cg in made:
        if cg is not None:
            cg.destroy()
            assert not any(os.path.exists(d) for d in cg.dirs()), "destroy left a directory"


def limit_file(cg, controller: str, v1_name: str, v2_name: str) -> str:
    return cg.file(controller, v1_name) if VERSION == "v1" else cg.file("unified", v2_name)


def read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


# ---------------------------------------------------------------- detection and plumbing

def test_detect_matches_the_mounted_hierarchy():
    # Pure v2 has cgroup.controllers at the top of /sys/fs/cgroup; v1/hybrid has per-controller dirs there.
    assert VERSION == ("v2" if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else "v1")


def test_nothing_requested_creates_nothing():
    assert cgroups.create("test-none", Resources(), degrade=False) is None


def test_docker_conversions():
    assert base.shares_to_weight(2) == 1
    assert base.shares_to_weight(262144) == 10000
    assert base.shares_to_weight(1024) == 39  # runc's integer formula
    assert base.swap_total(Resources(memory=64 * MiB)) == 64 * MiB  # unset: no swap at all (strict choice)
    assert base.swap_total(Resources(memory=64 * MiB, memory_swap=-1)) == -1
    assert base.swap_total(Resources(memory=64 * MiB, memory_swap=96 * MiB)) == 96 * MiB
    assert base.format_list(base.cpulist("3,0-1,2")) == "0-3"


@pytest.mark.parametrize("res,needle", [
    (Resources(memory=64 * MiB, memory_swap=32 * MiB), "--memory-swap"),
    (Resources(memory_swap=32 * MiB), "--memory-swap"),
    (Resources(cpus=0.001), "--cpus"),
    (Resources(pids_limit=0), "--pids-limit"),
    (Resources(cpuset_cpus="a-b"), "--cpuset-cpus"),
])
def test_bad_values_refused_before_anything_exists(res, needle):
    with pytest.raises(SbxError) as ei:
        cgroups.create("test-bad-" + os.urandom(4).hex(), res, degrade=True)
    assert ei.value.code == 125 and needle in ei.value.line()


def test_bad_sandbox_id_refused():
    with pytest.raises(SbxError) as ei:
        cgroups.create("../escape", Resources(pids_limit=5), degrade=False)
    assert ei.value.code == 125


def test_unavailable_cpuset_refused_and_nothing_left():
    cpu = max(os.sched_getaffinity(0)) + 64
    sid = "test-" + os.urandom(8).hex()
    with pytest.raises(SbxError) as ei:
        cgroups.create(sid, Resources(cpuset_cpus=str(cpu), pids_limit=10), degrade=False)
    assert ei.value.code == 125 and "cpuset" in ei.value.line()
    assert cgroups.open_existing(sid) is None
    assert not os.path.exists(base.lock_path(sid))


# ---------------------------------------------------------------- limits written, read back, tampering caught

def test_limits_written_verified_and_tampering_detected(make):
    res = Resources(memory=64 * MiB, cpus=0.5, cpu_shares=512, pids_limit=20)
    cg = make(res)
    assert cg.degraded == []
    assert cg.verify(res) == []
    if VERSION == "v1":
        assert read(cg.file("memory", "memory.limit_in_bytes")) == str(64 * MiB)
        assert read(cg.file("cpu", "cpu.cfs_quota_us")) == "50000"
        assert read(cg.file("cpu", "cpu.shares")) == "512"
        if os.path.exists(cg.file("memory", "memory.memsw.limit_in_bytes")):
            assert read(cg.file("memory", "memory.memsw.limit_in_bytes")) == str(64 * MiB)  # no swap
    else:
        d = cg.paths["unified"]
        assert read(os.path.join(d, "memory.max")) == str(64 * MiB)
        assert read(os.path.join(d, "cpu.max")) == "50000 100000"
        assert read(os.path.join(d, "cpu.weight")) == str(base.shares_to_weight(512))
        if os.path.exists(os.path.join(d, "memory.swap.max")):
            assert read(os.path.join(d, "memory.swap.max")) == "0"
        assert read(os.path.join(d, "memory.oom.group")) == "1"
    st = cg.stats()
    assert st.memory_limit == 64 * MiB and st.pids_limit == 20
    json.dumps(cg.describe())

    # Someone raises the pids cap behind our back: verify must say so.
    with open(limit_file(cg, "pids", "pids.max", "pids.max"), "w") as f:
        f.write("1000")
    problems = cg.verify(res)
    assert len(problems) == 1 and "pids-limit" in problems[0] and "1000" in problems[0]


def test_attach_membership_and_open_existing(make):
    res = Resources(pids_limit=10)
    cg = make(res)
    c = make.child(lambda: time.sleep(30))
    assert not cg.contains(c.pid)
    cg.attach(c.pid)
    assert cg.contains(c.pid)
    assert c.pid in cg.procs()
    other = cgroups.open_existing(cg.sandbox_id)
    assert other is not None and other.paths == cg.paths and other.contains(c.pid)
    assert other.stats().pids_current == 1


# ---------------------------------------------------------------- the kernel enforces them

def _hog() -> int:
    chunks = []
    for _ in range(512):
        chunks.append(b"\x01" * MiB)  # written, so every page is really charged
    return 0


def test_memory_hog_is_oom_killed_at_the_limit(make):
    res = Resources(memory=48 * MiB, pids_limit=16)
    cg = make(res)
    c = make.child(_hog)
    cg.attach(c.pid)
    c.go()
    st = c.wait()
    assert os.WIFSIGNALED(st) and os.WTERMSIG(st) == signal.SIGKILL, f"hog survived: status {st}"
    assert cg.oom_killed() and cg.oom_kills() >= 1
    peak = cg.stats().memory_peak
    if peak is not None:
        assert peak <= 48 * MiB


def _fork_loop() -> int:
    for _ in range(64):
        try:
            pid = os.fork()
        except BlockingIOError:
            return 42  # EAGAIN: the pids cap
        if pid == 0:
            time.sleep(30)
            os._exit(0)
    return 0


def test_fork_loop_capped_by_pids(make):
    res = Resources(pids_limit=8)
    cg = make(res)
    c = make.child(_fork_loop)
    cg.attach(c.pid)
    c.go()
    assert os.WEXITSTATUS(c.wait()) == 42
    assert cg.pids_max_hits() > 0
    assert 0 < cg.stats().pids_current <= 8  # the sleeping grandchildren, capped
    cg.kill_all()
    assert cg.procs() == []


def _spin() -> int:
    while True:
        pass


def test_cpu_quota_quarter_of_a_cpu(make):
    res = Resources(cpus=0.25)
    cg = make(res)
    c = make.child(_spin)
    cg.attach(c.pid)
    c.go()
    time.sleep(0.2)  # let the first CFS periods pass
    u0, t0 = cg.stats().cpu_usage_ns, time.monotonic()
    assert u0 is not None, "no cpu usage counter in the sandbox cgroup"
    time.sleep(1.5)
    u1, t1 = cg.stats().cpu_usage_ns, time.monotonic()
    share = (u1 - u0) / 1e9 / (t1 - t0)
    assert 0.15 <= share <= 0.35, f"cpu share {share:.3f} under --cpus 0.25"


def test_cpuset_visible_in_cpus_allowed_list(make):
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs 2 cpus to show a cpuset restriction")
    want = str(cpus[-1])
    res = Resources(cpuset_cpus=want)
    cg = make(res)
    c = make.child(lambda: time.sleep(30))
    cg.attach(c.pid)
    assert facts.read_status(c.pid).cpus_allowed_list == want
    assert cg.verify(res) == []


def test_freeze_stops_progress_and_thaw_resumes(make):
    res = Resources(pids_limit=10)
    cg = make(res)
    mem = mmap.mmap(-1, 8)

    def count() -> int:
        n = 0
        while True:
            n += 1
            struct.pack_into("Q", mem, 0, n)

    def now() -> int:
        return struct.unpack_from("Q", mem, 0)[0]

    c = make.child(count)
    cg.attach(c.pid)
    c.go()
    base.wait_until(lambda: now() > 0, 5, "the counter to start")
    cg.freeze()
    assert cg.frozen()
    a = now()
    time.sleep(0.25)
    assert now() == a, "counter moved while frozen"
    cg.thaw()
    assert not cg.frozen()
    # Thawed tasks are rescheduled by the kernel at its pace (slow under qemu's TCG): wait, bounded.
    try:
        base.wait_until(lambda: now() > a, 10, "the counter to resume")
    except Exception:
        st = os.waitpid(c.pid, os.WNOHANG)
        raise AssertionError(f"counter did not resume after thaw: {a} -> {now()}, child {c.pid} waitpid={st}") from None


def test_destroy_kills_removes_and_is_idempotent(make):
    res = Resources(memory=32 * MiB, pids_limit=10)
    cg = make(res)
    c = make.child(_fork_loop)
    cg.attach(c.pid)
    c.go()
    base.wait_until(lambda: len(cg.procs()) >= 3, 5, "the fork loop")
    cg.destroy()
    assert not any(os.path.exists(d) for d in cg.dirs())
    assert not os.path.exists(base.lock_path(cg.sandbox_id))
    st = c.wait()
    assert os.WIFSIGNALED(st) and os.WTERMSIG(st) == signal.SIGKILL
    cg.destroy()  # second call is a no-op


# ---------------------------------------------------------------- stale cgroups after a SIGKILLed sbx

def _orphan(attach_self: bool) -> tuple[str, int]:
    """Fork a creator that makes a cgroup (optionally joining it), then SIGKILL it like a killed sbx."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            sid = "test-" + os.urandom(8).hex()
            cg = cgroups.create(sid, Resources(pids_limit=10), degrade=False)
            if attach_self:
                kid = os.fork()
                if kid == 0:
                    # exec like a real workload: the close-on-exec lock fd goes away with it
                    os.execv("/bin/sleep", ["sleep", "60"])
                cg.attach(kid)
                # Until its exec, the kid still holds the creator's lock fd (close-on-exec):
                # report only once it is the orphaned workload a reaper would find.
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    with open(f"/proc/{kid}/comm") as f:
                        if f.read().strip() == "sleep":
                            break
                    time.sleep(0.005)
            os.write(w, sid.encode() + b"\n")
            time.sleep(60)
        finally:
            os._exit(1)
    os.close(w)
    line = os.read(r, 200).decode().strip()
    os.close(r)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    assert line.startswith("test-"), line
    return line, pid


def test_reap_stale_removes_cgroup_of_sigkilled_creator():
    sid, _ = _orphan(attach_self=False)
    cg = cgroups.open_existing(sid)
    assert cg is not None and all(os.path.isdir(d) for d in cg.dirs())
    assert cgroups.reap_stale() >= 1
    assert cgroups.open_existing(sid) is None
    assert not os.path.exists(base.lock_path(sid))


def test_reap_stale_keeps_running_orphan_unless_asked_to_kill():
    sid, _ = _orphan(attach_self=True)
    try:
        cgroups.reap_stale()
        cg = cgroups.open_existing(sid)
        assert cg is not None and cg.procs(), "a running orphan must not be reaped by default"
        assert cgroups.reap_stale(kill_orphans=True) >= 1
        assert cgroups.open_existing(sid) is None
    finally:
        cg = cgroups.open_existing(sid)
        if cg is not None:
            cg.destroy()


def test_reap_stale_never_touches_a_locked_cgroup(make):
    res = Resources(pids_limit=10)
    cg = make(res)  # this process holds its lock, as a live sbx in setup would
    cgroups.reap_stale()
    assert all(os.path.isdir(d) for d in cg.dirs())
    assert cg.verify(res) == []


# ---------------------------------------------------------------- rootless: refuse with the fix, or degrade

def test_rootless_refused_with_fix_or_degraded():
    res = Resources(memory=64 * MiB, pids_limit=10)
    state = tempfile.mkdtemp(prefix="sbx-cg-rootless-")
    os.chown(state, 65534, 65534)

    def as_nobody() -> dict:
        os.environ["SBX_STATE_DIR"] = state
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
        out: dict = {}
        try:
            cgroups.create("test-rootless", res, degrade=False)
            out["refused"] = False
        except SbxError as e:
            out.update(refused=True, code=e.code, line=e.line())
        cg = cgroups.create("test-rootless", res, degrade=True)
        out.update(degraded=cg.degraded, paths=cg.paths)
        cg.destroy()
        return out

    try:
        out = in_child(as_nobody)
    finally:
        shutil.rmtree(state, ignore_errors=True)
    assert "exception" not in out, out
    assert out["refused"] and out["code"] == 125
    assert "fix:" in out["line"] and ("Delegate=yes" in out["line"] or "delegate" in out["line"].lower())
    assert "degrade: allow" in out["line"]
    assert out["paths"] == {}
    labels = {d.split(" ", 1)[0] for d in out["degraded"]}
    assert labels == {"memory", "pids-limit"}, out["degraded"]


def test_rootless_uses_a_delegated_v2_cgroup():
    """What systemd Delegate=yes gives a user, built by hand: a subtree it owns, with itself in a leaf."""
    if VERSION != "v2":
        pytest.skip("cgroup v1 has no delegation to unprivileged users (the refusal is tested above)")
    root = "/sys/fs/cgroup"
    avail = set(read(os.path.join(root, "cgroup.controllers")).split())
    if not {"memory", "pids"} <= avail:
        pytest.skip("cgroup v2 without the memory and pids controllers")
    for c in ("memory", "pids"):
        with open(os.path.join(root, "cgroup.subtree_control"), "w") as f:
            f.write("+" + c)
    deleg = os.path.join(root, "sbx-test-deleg-" + os.urandom(4).hex())
    leaf = os.path.join(deleg, "leaf")
    state = tempfile.mkdtemp(prefix="sbx-cg-deleg-")
    os.chown(state, 65534, 65534)
    os.mkdir(deleg)
    os.mkdir(leaf)
    for d in (deleg, leaf):
        for name in ("", "cgroup.procs", "cgroup.subtree_control", "cgroup.threads"):
            os.chown(os.path.join(d, name), 65534, 65534)
    res = Resources(memory=48 * MiB, pids_limit=8)

    def as_delegated_user() -> dict:
        with open(os.path.join(leaf, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))  # as root still: join the leaf, as systemd-run --scope would
        os.environ["SBX_STATE_DIR"] = state
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
        cg = cgroups.create("test-deleg", res, degrade=False)
        kid = os.fork()
        if kid == 0:
            time.sleep(0.2)
            try:
                _hog()
            finally:
                os._exit(0)
        cg.attach(kid)
        out = {"paths": cg.paths, "degraded": cg.degraded, "verify": cg.verify(res), "contains": cg.contains(kid)}
        _, st = os.waitpid(kid, 0)
        out.update(killed=os.WIFSIGNALED(st) and os.WTERMSIG(st) == 9, oom=cg.oom_killed())
        cg.destroy()
        out["left"] = [d for d in cg.dirs() if os.path.exists(d)]
        return out

    try:
        out = in_child(as_delegated_user)
    finally:
        for d in (os.path.join(deleg, "sbx"), leaf, deleg):
            base.rmdir_retry(d)
        shutil.rmtree(state, ignore_errors=True)
    assert "exception" not in out, out
    assert out["paths"] == {"unified": os.path.join(deleg, "sbx", "test-deleg")}
    assert out["degraded"] == [] and out["verify"] == [] and out["contains"]
    assert out["killed"] and out["oom"] and out["left"] == []


def _test_dirs() -> set[str]:
    """Every test- cgroup directory under any sbx parent on this host."""
    from sandbox.cgroups import v1, v2
    found = (v2 if VERSION == "v2" else v1).list_sandboxes()
    return {d for sid, ds in found.items() if sid.startswith("test-") for d in ds}


def test_no_cgroup_left_after_200_sandboxes_some_creators_sigkilled():
    before = _test_dirs()
    res = Resources(memory=64 * MiB, pids_limit=16)
    killed = []
    for i in range(200):
        if i % 10 == 9:
            killed.append(_orphan(attach_self=False)[0])  # an sbx SIGKILLed mid-run
            continue
        cg = cgroups.create("test-" + os.urandom(8).hex(), res, degrade=False)
        c = Child(lambda: 0)
        try:
            cg.attach(c.pid)
            c.go()
            c.wait()
        finally:
            c.kill()
            cg.destroy()
    assert len(killed) == 20
    cgroups.reap_stale()  # what the next sbx start does
    assert _test_dirs() - before == set()
    assert not any(os.path.exists(base.lock_path(s)) for s in killed)
