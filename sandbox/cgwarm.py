"""Start the kernel's cgroup-migration grace period early, off the critical path.

Every write to a cgroup.procs file takes the global cgroup_threadgroup_rwsem
for writing. When nobody has done so for a while, that percpu rwsem first
waits for a full RCU grace period (rcu_sync_enter -> synchronize_rcu): 9-18 ms
on these machines, the largest single cost of a cold `sbx run`, and runc and
podman pay it too. Once entered, the rwsem stays in its slow-reader mode for
one more grace period after the last writer, and writers in that window do
not wait again.

So at the very start of `sbx run` a thread moves this process into the cgroup
it is already in (a no-op migration that still takes the rwsem). The grace
period then elapses while the main thread imports, resolves the spec and
prepares the sandbox. The thread repeats the no-op every few milliseconds
(each one is fast while the rwsem is warm) until the launcher has attached
the sandbox and stops it, or MAX_WARM passes, so a slow prepare does not let
the window close. Each launch has its own warmer, so sandboxes started from
several API threads do not end each other's. Best effort: any failure just
means the attach pays the wait itself, as it did before.
"""
from __future__ import annotations

import _thread
import os
import time

MAX_WARM = 0.5  # seconds; a sandbox that takes longer to prepare pays one grace period, as without this
INTERVAL = 0.003  # well inside the shortest grace period seen here (~6 ms)
# A warmer the CLI started before launch.run existed, for that run to take over.
_pending: list[Warmer] = []
_lock = _thread.allocate_lock()


class Warmer:
    """One launch's background no-op migration; stop() once the sandbox is attached."""

    def __init__(self, path: str) -> None:
        self.stopped = False
        self.deadline = time.monotonic() + MAX_WARM
        # A raw _thread (no threading import, ~3 ms): it only writes, sleeps and closes.
        _thread.start_new_thread(self._run, (path, str(os.getpid()).encode()))

    def _run(self, path: str, pid: bytes) -> None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            return
        try:
            while not self.stopped and time.monotonic() < self.deadline:
                os.write(fd, pid)
                time.sleep(INTERVAL)
        except OSError:
            pass
        finally:
            os.close(fd)

    def stop(self) -> None:
        self.stopped = True  # the thread sees it within INTERVAL


def _own_procs_file() -> str | None:
    """cgroup.procs of this process's current cgroup, in one v1 hierarchy or the v2 tree."""
    from . import facts  # the one /proc reader; the run path imports it anyway
    try:
        entries = facts.read_cgroup("self")
    except (OSError, facts.ProcessGone):
        return None
    v2 = None
    for e in entries:
        if not e.path.startswith("/") or "\\" in e.path:
            continue  # an escaped or unreachable path: leave it alone
        if e.hierarchy == 0 and not e.controllers:
            v2 = e.path
            continue
        for ctrl in e.controllers:
            if ctrl in ("pids", "memory", "cpu", "cpuset"):
                cand = f"/sys/fs/cgroup/{ctrl}{e.path.rstrip('/')}/cgroup.procs"
                if os.path.exists(cand):
                    return cand
    if v2 is not None and os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        return f"/sys/fs/cgroup{v2.rstrip('/')}/cgroup.procs"
    return None


def start(*, for_next_launch: bool = False) -> Warmer | None:
    """Start warming from a background thread; None when this host or user cannot.

    for_next_launch: the CLI, before it has a launch; the next take() returns it.
    Root only: a rootless invoker usually cannot write its own cgroup.procs, and
    never creates v1 cgroups anyway.
    """
    if os.geteuid() != 0:
        return None
    path = _own_procs_file()
    if path is None:
        return None
    w = Warmer(path)
    if for_next_launch:
        with _lock:
            _pending.append(w)
    return w


def take() -> Warmer | None:
    """The warmer the CLI started for this launch, if there is one."""
    with _lock:
        return _pending.pop() if _pending else None
