"""Read a file of an image from the host, through its stack of unpacked layers, with overlayfs semantics.

Used for the image's own /etc/passwd and /etc/group (config.User), never for anything the
workload can change. Symlinks are followed in the MERGED view and clamped at the image's root
('/..' is '/'), as the kernel would inside the sandbox; each layer is walked by fd with
O_NOFOLLOW, so nothing outside a layer's root is ever opened. Whiteouts (0/0 character
devices) and opaque directories hide what is below them, as they do once stacked.
"""
from __future__ import annotations

import errno
import os
import stat

MAX_HOPS = 40
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class _Hit:
    __slots__ = ("layer", "st")

    def __init__(self, layer: int, st: os.stat_result):
        self.layer = layer
        self.st = st


class Layered:
    """roots: the layer directories bottom first (the order of rootfs.diff_ids)."""

    def __init__(self, roots: list[str]):
        self.roots = list(roots)

    def _walk(self, layer: int, comps: list[str]) -> tuple[int | None, str, bool]:
        """In one layer: (fd of comps' parent or None if absent, the last name, whether lower layers are hidden).

        Lower layers are hidden for comps when an ancestor here is opaque, a whiteout or a non-directory.
        """
        fd = os.open(self.roots[layer], DIR_FLAGS)
        hidden = False
        try:
            for c in comps[:-1]:
                try:
                    nfd = os.open(c, DIR_FLAGS, dir_fd=fd)
                except OSError as e:
                    if e.errno == errno.ENOENT:
                        os.close(fd)
                        return None, "", hidden
                    if e.errno in (errno.ENOTDIR, errno.ELOOP):
                        os.close(fd)
                        return None, "", True
                    raise
                os.close(fd)
                fd = nfd
                hidden = hidden or _opaque(fd)
            return fd, comps[-1], hidden
        except BaseException:
            os.close(fd)
            raise

    def _lstat(self, comps: list[str]) -> _Hit | None:
        """The merged entry at comps (its ancestors are known merged directories)."""
        for layer in range(len(self.roots) - 1, -1, -1):
            fd, name, hidden = self._walk(layer, comps)
            if fd is None:
                if hidden:
                    return None
                continue
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                if hidden:
                    return None
                continue
            finally:
                os.close(fd)
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                return None  # a whiteout
            return _Hit(layer, st)
        return None

    def resolve(self, path: str) -> tuple[list[str], _Hit] | None:
        todo = [c for c in path.split("/") if c not in ("", ".")]
        cur: list[str] = []
        hops = 0
        hit = None
        while todo:
            c = todo.pop(0)
            if c == "..":
                cur = cur[:-1]
                continue
            p = cur + [c]
            hit = self._lstat(p)
            if hit is None:
                return None
            if stat.S_ISLNK(hit.st.st_mode):
                hops += 1
                if hops > MAX_HOPS:
                    return None
                fd, name, _ = self._walk(hit.layer, p)
                if fd is None:
                    return None
                try:
                    target = os.readlink(name, dir_fd=fd)
                finally:
                    os.close(fd)
                if target.startswith("/"):
                    cur = []
                todo = [x for x in target.split("/") if x not in ("", ".")] + todo
                hit = None
                continue
            if todo and not stat.S_ISDIR(hit.st.st_mode):
                return None
            cur = p
        if hit is None:
            return None
        return cur, hit

    def read(self, path: str, limit: int = 4 << 20) -> bytes | None:
        """A regular file's bytes (at most limit), or None if the image has no such file."""
        r = self.resolve(path)
        if r is None:
            return None
        comps, hit = r
        if not stat.S_ISREG(hit.st.st_mode):
            return None
        fd, name, _ = self._walk(hit.layer, comps)
        if fd is None:
            return None
        try:
            ffd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=fd)
        finally:
            os.close(fd)
        try:
            if not stat.S_ISREG(os.fstat(ffd).st_mode):
                return None
            return os.read(ffd, limit)
        finally:
            os.close(ffd)


def _opaque(fd: int) -> bool:
    for name in ("user.overlay.opaque", "trusted.overlay.opaque"):
        try:
            if os.getxattr(fd, name) == b"y":
                return True
        except OSError:
            pass
    return False
