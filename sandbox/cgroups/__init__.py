"""Per-sandbox cgroups: one interface, a v1 and a v2 backend, picked at runtime.

The launcher calls, in the host-side parent and before the sandbox runs anything:

    cg = cgroups.create(sandbox_id, spec.resources, degrade=spec.degrade)   # all limits written, lock held
    cg.attach(pid); cg.verify(res) -> []; ...; cg.destroy()

and `reap_stale()` on every start to remove the cgroups of an sbx that was SIGKILLed.
See base.Cgroup for the full interface.
"""
from __future__ import annotations

import os
import time

from ..spec import Resources
from .base import STALE_AGE, Cgroup, CgroupStats, check_id, release_lock, rmdir_retry, try_lock, validate

__all__ = ["Cgroup", "CgroupStats", "check", "create", "detect", "open_existing", "reap_stale"]


_detected: str | None = None


def detect() -> str:
    """'v2' when /sys/fs/cgroup is a cgroup2 mount (pure unified); otherwise 'v1' (legacy or hybrid).

    A cgroup2 root has cgroup.controllers; the tmpfs of a v1/hybrid layout does
    not. One stat instead of parsing mountinfo (which is large on busy hosts),
    cached for the process.
    """
    global _detected
    if _detected is None:
        _detected = "v2" if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else "v1"
    return _detected


def _backend():
    if detect() == "v2":
        from . import v2
        return v2
    from . import v1
    return v1


def check(sandbox_id: str, res: Resources) -> None:
    """Refuse a bad id or limit values before any process exists (create() checks again)."""
    check_id(sandbox_id)
    validate(res)


def create(sandbox_id: str, res: Resources, *, degrade: bool) -> Cgroup | None:
    """Create <parent>/sbx/<id> in every needed hierarchy with every limit written.

    None only when no cap is requested. An unenforceable cap raises SbxError
    (125) naming the fix, unless degrade: then `.degraded` lists what is not enforced.
    """
    if not res.requested():
        return None
    check_id(sandbox_id)
    validate(res)
    return _backend().create(sandbox_id, res, degrade)


def open_existing(sandbox_id: str) -> Cgroup | None:
    """The cgroup of a running sandbox, from another sbx process (pause, stats, rm). No lock is taken."""
    check_id(sandbox_id)
    return _backend().open_existing(sandbox_id)


def reap_stale(kill_orphans: bool = False) -> int:
    """Remove sbx cgroups whose creator is gone (lock not held); returns how many sandboxes were reaped.

    Only empty cgroups are removed unless kill_orphans: a detached sandbox whose
    supervisor died may still be running, and killing it is the caller's call.
    """
    be = _backend()
    n = 0
    for sid, dirs in be.list_sandboxes().items():
        try:
            check_id(sid)
        except Exception:  # noqa: BLE001 - not ours (a name sbx never creates)
            continue
        fd, had_file = try_lock(sid)
        if fd is None and had_file:
            continue  # held: in setup or running
        if fd is None and not had_file and _age(dirs) < STALE_AGE:
            continue  # maybe an sbx with another state dir, between mkdir and attach
        removed = False
        try:
            if not be.is_empty(dirs):
                if not kill_orphans:
                    continue
                cg = be.open_existing(sid)
                if cg is not None:
                    cg.kill_all()
            removed = all(rmdir_retry(d, 0.2) for d in dirs)
            n += removed
        finally:
            if fd is not None:
                if removed:
                    release_lock(sid, fd)
                else:
                    os.close(fd)
    _sweep_locks()
    return n


def _age(dirs: list[str]) -> float:
    try:
        return time.time() - max(os.stat(d).st_mtime for d in dirs)
    except OSError:
        return 0.0


def _sweep_locks() -> None:
    """Lock files left without a cgroup (creator killed between lock and mkdir)."""
    from .base import lock_dir

    try:
        d = lock_dir()
        names = os.listdir(d)
    except Exception:  # noqa: BLE001 - no state dir yet: nothing to sweep
        return
    live = None
    for name in names:
        if not name.endswith(".lock"):
            continue
        sid = name[:-5]
        try:
            check_id(sid)
        except Exception:  # noqa: BLE001
            continue
        fd, _ = try_lock(sid)
        if fd is None:
            continue
        if live is None:
            live = set(_backend().list_sandboxes())
        if sid in live:
            os.close(fd)  # its cgroup is busy: keep the lock file for the next reap
            continue
        release_lock(sid, fd)


