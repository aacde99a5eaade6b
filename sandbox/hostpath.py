"""Host paths a user names (-v sources, --rootfs): resolved once in sbx, checked again in the sandbox.

The invoker chose the path, so its symlinks are followed, as docker and podman
do, but only symlinks owned by root or by the invoking user: a symlink planted
by someone else (another local user, or a sandbox writing into a shared
read-write volume, whose files belong to its own host uid range) is refused,
the way the kernel's protected_symlinks refuses symlinks in sticky directories.
Without this rule a sandbox could plant `cache -> /etc` in a volume and have the
next `-v vol/cache:/cache` bind the host's /etc. Inside sbx's named-volume store
no symlink is followed at all, whoever owns it: through an idmapped mount a
sandbox creates files as the volume's owner (for a rootless invoker, as the
invoker itself), so an owner check could not tell its symlinks from yours.

The walk runs in sbx (host credentials, so symlink owners are the real host
uids) and yields a symlink-free path plus the (device, inode) it reached. The
sandbox's init, in its own mount namespace, opens that path again with
RESOLVE_NO_SYMLINKS and checks it reached the same inode: a symlink swapped in
between the two walks fails the open, a replaced directory fails the check.
"""
from __future__ import annotations

import errno
import os
import stat

from . import syscalls as sc
from .errors import SbxError
from .records import record

MAX_SYMLINKS = 40  # the kernel's own limit (ELOOP)


@record(frozen=True)
class HostPath:
    given: str  # what the user wrote
    path: str  # absolute, no symlink in any component
    dev: int
    ino: int
    is_dir: bool


def resolve(given: str, *, what: str, trusted_uids: frozenset[int] | None = None) -> HostPath:
    """Follow `given` component by component (O_NOFOLLOW), refusing symlinks of untrusted owners."""
    if trusted_uids is None:
        trusted_uids = frozenset({0, os.getuid()})
    from .volumes import store_dir
    store = os.path.realpath(store_dir()).rstrip("/") + "/"
    if not given.startswith("/"):
        raise SbxError(f"{what} {given}: must be an absolute path", where=what)
    todo = [c for c in given.split("/") if c and c != "."]
    done: list[str] = []
    fds = [os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)]
    links = 0
    try:
        while todo:
            comp = todo.pop(0)
            if comp == "..":
                if done:
                    done.pop()
                    os.close(fds.pop())
                continue
            try:
                fd = os.open(comp, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fds[-1])
            except OSError as e:
                raise SbxError(f"cannot open {what} {given}: {e.strerror} (at /{'/'.join(done + [comp])})",
                               where=what) from None
            st = os.fstat(fd)
            if stat.S_ISLNK(st.st_mode):
                os.close(fd)
                here = "/" + "/".join(done + [comp])
                if (here + "/").startswith(store):
                    raise SbxError(f"{what} {given}: {here} is a symlink inside sbx's volume store (a sandbox may have "
                                   "planted it): refusing to follow it", where=what)
                if st.st_uid not in trusted_uids:
                    raise SbxError(f"{what} {given}: {here} is a symlink owned by uid {st.st_uid} (neither root nor "
                                   "you): refusing to follow it", where=what)
                links += 1
                if links > MAX_SYMLINKS:
                    raise SbxError(f"{what} {given}: too many levels of symlinks", where=what)
                target = os.readlink(comp, dir_fd=fds[-1])
                parts = [c for c in target.split("/") if c and c != "."]
                if target.startswith("/"):
                    while len(fds) > 1:
                        os.close(fds.pop())
                    done = []
                todo = parts + todo
                continue
            if todo and not stat.S_ISDIR(st.st_mode):
                os.close(fd)
                raise SbxError(f"cannot open {what} {given}: Not a directory (at /{'/'.join(done + [comp])})",
                               where=what)
            done.append(comp)
            fds.append(fd)
        st = os.fstat(fds[-1])
        return HostPath(given, "/" + "/".join(done), st.st_dev, st.st_ino, stat.S_ISDIR(st.st_mode))
    finally:
        for fd in fds:
            os.close(fd)


def reopen(hp: HostPath, *, what: str) -> int:
    """An O_PATH fd of hp.path in the current mount namespace, or SbxError if it is not what sbx checked."""
    try:
        fd = sc.openat2(sc.AT_FDCWD, hp.path, os.O_PATH | os.O_CLOEXEC, 0,
                        sc.RESOLVE_NO_SYMLINKS | sc.RESOLVE_NO_MAGICLINKS)
    except OSError as e:
        why = "a symlink appeared in it" if e.errno == errno.ELOOP else e.strerror
        raise SbxError(f"{what} {hp.given} changed while the sandbox started: {why}", where=what) from None
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != (hp.dev, hp.ino):
        os.close(fd)
        raise SbxError(f"{what} {hp.given} changed while the sandbox started (another file is there now)",
                       where=what)
    return fd
