"""User namespace id maps: nobody in the sandbox is host root.

Root invoker: each sandbox gets its own 65536-id slice of an unprivileged host
range (like podman's --userns=auto), claimed with a flock that the kernel
releases when the holder dies, so a SIGKILLed sbx never leaks a slice and two
live sandboxes never share a host uid. The range comes from the `sbx` entry in
/etc/subuid and /etc/subgid if there is one, else the documented default
DEFAULT_BASE (1_000_000_000) with DEFAULT_SLOTS slices.

The pool's last slice is never handed to a sandbox: its first id owns the data
of named volumes (volume_owner()), so no sandbox's own ids can touch volume
files except through the idmapped mount sbx gives it (sandbox.volumes).

Rootless invoker: a single-id map, the sandbox uid/gid -> the invoker's own ids
(setgroups denied, as the kernel requires for an unprivileged gid_map).
"""
from __future__ import annotations

import fcntl
import os

from . import paths
from .errors import SbxError
from .records import field, record
from .spec import Spec

SLICE = 65536
DEFAULT_BASE = 1_000_000_000
DEFAULT_SLOTS = 1024
SUBID_USER = "sbx"


@record
class IdPlan:
    uid_map: list[tuple[int, int, int]]
    gid_map: list[tuple[int, int, int]]
    setgroups_deny: bool
    rootless: bool
    slot: int | None = None
    lock_fd: int | None = field(default=None, repr=False)

    def host_uid(self, inside: int) -> int | None:
        return outside(self.uid_map, inside)

    def host_gid(self, inside: int) -> int | None:
        return outside(self.gid_map, inside)

    def release(self) -> None:
        if self.lock_fd is not None:
            try:
                os.close(self.lock_fd)
            finally:
                self.lock_fd = None

    def describe(self) -> dict:
        return {"uid_map": self.uid_map, "gid_map": self.gid_map, "rootless": self.rootless, "slot": self.slot}

    def become_root(self) -> None:
        """In init, once its maps exist: root of the namespace (a rootless map has only one id, kept)."""
        if not self.rootless:
            os.setresgid(0, 0, 0)
            os.setresuid(0, 0, 0)
            os.setgroups([])


def outside(idmap, inside: int) -> int | None:
    """Host id for `inside` under an id map given as (inside, outside, count) rows."""
    for i, o, c in idmap or ():
        if i <= inside < i + c:
            return o + inside - i
    return None


def _subid_range(path: str) -> tuple[int, int] | None:
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                parts = line.strip().split(":")
                if len(parts) == 3 and parts[0] == SUBID_USER:
                    return int(parts[1]), int(parts[2])
    except (OSError, ValueError):
        return None
    return None


def pool() -> tuple[int, int]:
    """(base, number of slices) of the host id pool for a root invoker."""
    r = _subid_range("/etc/subuid")
    g = _subid_range("/etc/subgid")
    if r and g and r == g and r[1] >= SLICE:
        return r[0], r[1] // SLICE
    return DEFAULT_BASE, DEFAULT_SLOTS


def volume_owner() -> tuple[int, int] | None:
    """(uid, gid) that owns named volumes' data for a root invoker: the first id of the pool's
    last slice, which no sandbox gets. None when the pool has a single slice (nothing to spare)."""
    base, nslots = pool()
    if nslots < 2:
        return None
    vid = base + (nslots - 1) * SLICE
    return vid, vid


def mapping_userns(uid_map: list[tuple[int, int, int]], gid_map: list[tuple[int, int, int]]) -> int:
    """An fd of a new user namespace with exactly these maps, for MOUNT_ATTR_IDMAP.

    No process is left in it: a forked child unshares it and waits on a pipe while
    we write its maps (host root may map any ids) and open /proc/CHILD/ns/user,
    then exits. The fd keeps the namespace alive as long as a mount uses it.
    """
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    done_r, done_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(ready_r)
            os.close(done_w)
            from . import syscalls as sc
            sc.unshare(sc.CLONE_NEWUSER)
            os.write(ready_w, b"u")
            os.read(done_r, 1)  # EOF: the parent has what it needs (or died)
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(done_r)
    try:
        if os.read(ready_r, 1) != b"u":
            raise SbxError("cannot create a user namespace for an idmapped mount")
        fake = IdPlan(uid_map, gid_map, False, False)
        write_maps(pid, fake)
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(ready_r)
        os.close(done_w)
        while True:
            try:
                os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue
            except ChildProcessError:
                break


def _claim_slot(nslots: int) -> tuple[int, int]:
    d = paths.ensure_private_dir(os.path.join(paths.ensure_private_dir(paths.state_dir()), "idslots"))
    start = int.from_bytes(os.urandom(4), "little") % nslots  # spread concurrent claimers
    for k in range(nslots):
        slot = (start + k) % nslots
        fd = os.open(os.path.join(d, f"{slot}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return slot, fd
        except BlockingIOError:
            os.close(fd)
    raise SbxError(f"all {nslots} user-namespace id slices are in use (see /etc/subuid entry '{SUBID_USER}')")


def plan(spec: Spec) -> IdPlan:
    if os.geteuid() == 0:
        base, nslots = pool()
        slot, fd = _claim_slot(max(1, nslots - 1))  # the last slice is the volumes' (volume_owner)
        start = base + slot * SLICE
        if start == 0:
            raise SbxError("id pool starts at host uid 0: fix the 'sbx' entry in /etc/subuid")
        return IdPlan([(0, start, SLICE)], [(0, start, SLICE)], False, False, slot, fd)
    # Rootless: the kernel allows exactly one line mapping to our own ids.
    return IdPlan([(spec.uid, os.geteuid(), 1)], [(spec.gid, os.getegid(), 1)], True, True)


def write_maps(pid: int, idp: IdPlan) -> None:
    """Written by the parent (outside the namespace), as the kernel requires."""
    def _w(name: str, text: str) -> None:
        fd = os.open(f"/proc/{pid}/{name}", os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
    try:
        if idp.setgroups_deny:
            _w("setgroups", "deny")
        _w("uid_map", "".join(f"{i} {o} {c}\n" for i, o, c in idp.uid_map))
        _w("gid_map", "".join(f"{i} {o} {c}\n" for i, o, c in idp.gid_map))
    except OSError as e:
        raise SbxError(f"cannot write user namespace id maps: {e.strerror}") from None
