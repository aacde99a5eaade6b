"""Unpack one hostile layer tar into an empty directory, creating every entry ourselves by fd.

The CVE class of runc/umoci/Docker unpackers (path traversal, writing through a symlink the
archive planted, hard links to host files, whiteouts deleting outside the layer, bombs) is
closed by construction, not by filtering names and hoping:

- A name is split into components; an absolute name or any '..' is refused (exit 125, naming
  the entry). Empty and '.' components are dropped ('./a//b' is 'a/b').
- The parent directory is reached from the layer's root fd one component at a time with
  O_NOFOLLOW|O_DIRECTORY: a symlink or non-directory on the way is refused, so no write ever
  goes through a link. Missing parents are created (0755, as Docker does).
- The entry itself is created relative to that parent fd: files with O_CREAT|O_EXCL|O_NOFOLLOW
  (an earlier entry of the same name is unlinked first: tar's "last one wins", never followed),
  symlinks with symlinkat (their target is data, never resolved), hard links with linkat to an
  entry of this same layer reached the same way (never following a symlink).
- Whiteouts become overlayfs whiteouts (OCI layer spec -> overlay format): `.wh.NAME` a 0/0
  character device NAME, `.wh..wh..opq` the opaque xattr on its directory. Nothing is deleted
  because of a whiteout; lower layers are only hidden when stacked. A whiteout for a name the
  same layer also has is ignored (the spec: whiteouts apply to lower layers only).
- Device nodes and fifos are skipped and reported. xattrs from the image are kept only in
  user.* (never user.overlay.*/trusted.* that overlayfs would obey, never security.* file
  capabilities: an image never grants privileges).
- Caps on unpacked bytes and entry count are checked against the header before any data is
  read, and on the decompressed stream itself.

Directory modes and times are applied after the layer's last entry (deepest first), so a 0555
directory in the archive does not stop its own children being created.
"""
from __future__ import annotations

import errno
import os
import stat
import threading
from dataclasses import dataclass, field

from ..errors import SbxError, escape
from . import tarstream
from .blob import human

MAX_PATH = 4096
MAX_COMPONENT = 255
MAX_ID = (1 << 31) - 1
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
WHITEOUT = b".wh."
OPAQUE = b".wh..wh..opq"
OVERLAY_OPAQUE_XATTRS = ("user.overlay.opaque", "trusted.overlay.opaque")
FD_CACHE = 128


class UnpackError(SbxError):
    """A hostile or broken layer: one line naming the layer and the entry (exit 125)."""


@dataclass
class Limits:
    """Per image. The defaults fit every real image we know of; --max-size/--max-entries change them."""

    max_bytes: int = 32 << 30  # uncompressed bytes over all layers (data + tar structure)
    max_entries: int = 2_000_000


class Budget:
    """What is left of the image's limits, shared by layers unpacked in parallel."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.bytes = 0
        self.entries = 0
        self.aborted = False
        self._lock = threading.Lock()

    def abort(self) -> None:
        """Another layer of the image failed: stop the others at their next entry."""
        self.aborted = True

    def take(self, nbytes: int, layer: str, entry: str) -> None:
        if self.aborted:
            raise UnpackError(f"layer {layer}: stopped (another layer of the image was refused)")
        with self._lock:
            self.entries += 1
            self.bytes += nbytes
            if self.entries > self.limits.max_entries:
                raise UnpackError(f"layer {layer}: entry {entry!r}: more than {self.limits.max_entries} entries in "
                                  f"the image: over the entry-count cap (--max-entries {self.limits.max_entries}); "
                                  "refusing it")
            if self.bytes > self.limits.max_bytes:
                raise UnpackError(f"layer {layer}: entry {entry!r} ({human(nbytes)}): the image's files exceed the "
                                  f"unpacked size cap (--max-size {human(self.limits.max_bytes)}); refusing it")


@dataclass
class Report:
    entries: int = 0
    bytes: int = 0  # file data written
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, kind): devices, fifos, unknown types
    dropped_xattrs: int = 0
    whiteouts: int = 0
    opaque: int = 0


def clean(raw: bytes, layer: str, *, what: str = "entry") -> tuple[str, ...]:
    """Components of a tar name; refuses absolute names, '..', NUL, over-long names."""
    if b"\0" in raw:
        raise UnpackError(f"layer {layer}: {what} {_show(raw)}: NUL in the name")
    if len(raw) > MAX_PATH:
        raise UnpackError(f"layer {layer}: {what} {_show(raw)[:80]}...: name longer than {MAX_PATH} bytes")
    if raw.startswith(b"/"):
        raise UnpackError(f"layer {layer}: {what} {_show(raw)}: absolute path: refusing an entry outside the layer")
    parts = []
    for c in raw.split(b"/"):
        if c in (b"", b"."):
            continue
        if c == b"..":
            raise UnpackError(f"layer {layer}: {what} {_show(raw)}: '..' in the path: refusing an entry outside "
                              "the layer")
        if len(c) > MAX_COMPONENT:
            raise UnpackError(f"layer {layer}: {what} {_show(raw)[:80]}...: a name component longer than "
                              f"{MAX_COMPONENT}")
        parts.append(c.decode("utf-8", "surrogateescape"))
    return tuple(parts)


def _show(raw: bytes | str) -> str:
    s = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    return repr(escape(s))


class Unpacker:
    """Creates the entries of one layer under root_fd (an empty directory the caller owns)."""

    def __init__(self, root_fd: int, layer: str, budget: Budget, *, privileged: bool | None = None):
        self.root = root_fd
        self.layer = layer
        self.budget = budget
        self.privileged = os.geteuid() == 0 if privileged is None else privileged
        self.report = Report()
        self._dirs: dict[tuple[str, ...], int] = {}  # parent path -> open O_DIRECTORY fd (bounded cache)
        self._delayed: dict[tuple[str, ...], tarstream.Header] = {}

    # -- the walk -------------------------------------------------------------------------------
    def _err(self, entry: str, msg: str) -> UnpackError:
        return UnpackError(f"layer {self.layer}: entry {_show(entry)}: {msg}")

    def _dirfd(self, comps: tuple[str, ...], entry: str, create: bool = True) -> int:
        """An fd of directory `comps` inside the layer, never through a symlink; created if missing."""
        if not comps:
            return self.root
        fd = self._dirs.get(comps)
        if fd is not None:
            return fd
        parent = self._dirfd(comps[:-1], entry, create)
        name = comps[-1]
        try:
            fd = os.open(name, DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise self._err(entry, f"{'/'.join(comps)} does not exist in this layer") from None
            os.mkdir(name, 0o755, dir_fd=parent)
            fd = os.open(name, DIR_FLAGS, dir_fd=parent)
        except OSError as e:
            if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            if create and stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                # a whiteout this layer wrote earlier, now used as a directory: the layer re-creates the
                # path, and the lower layers' directory stays hidden (overlay: an opaque directory)
                os.unlink(name, dir_fd=parent)
                os.mkdir(name, 0o755, dir_fd=parent)
                fd = os.open(name, DIR_FLAGS, dir_fd=parent)
                self._set_opaque(fd)
            elif stat.S_ISLNK(st.st_mode):
                raise self._err(entry, f"{'/'.join(comps)} is a symlink in this layer: refusing to write through it") from None
            else:
                raise self._err(entry, f"{'/'.join(comps)} is not a directory") from None
        if len(self._dirs) >= FD_CACHE:
            old = next(iter(self._dirs))
            os.close(self._dirs.pop(old))
        self._dirs[comps] = fd
        return fd

    def _forget(self, comps: tuple[str, ...]) -> None:
        n = len(comps)
        for k in [k for k in self._dirs if k[:n] == comps]:
            os.close(self._dirs.pop(k))
        for k in [k for k in self._delayed if k[:n] == comps]:
            del self._delayed[k]

    def _clear(self, pfd: int, comps: tuple[str, ...], keep_dir: bool) -> bool:
        """Remove what an earlier entry put at comps (never following it). True if a directory stays."""
        name = comps[-1]
        try:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return True
            import shutil
            self._forget(comps)
            shutil.rmtree(name, dir_fd=pfd)  # the fd-based walk: symlinks inside are unlinked, never followed
        else:
            os.unlink(name, dir_fd=pfd)
        return False

    # -- entries --------------------------------------------------------------------------------
    def add(self, h: tarstream.Header, reader: tarstream.Reader) -> None:
        entry = h.name.decode("utf-8", "surrogateescape")
        comps = clean(h.name, self.layer)
        self.budget.take(h.size if h.is_file() else 0, self.layer, entry)
        self.report.entries += 1
        if h.uid > MAX_ID or h.gid > MAX_ID:
            raise self._err(entry, f"owner {h.uid}:{h.gid} is out of range")
        base = comps[-1] if comps else ""
        if base.startswith(".wh."):
            self._whiteout(comps, entry)
            return
        if not comps:
            if h.type != tarstream.DIR:
                raise self._err(entry, f"a {h.kind} cannot be the layer's root")
            self._delayed[()] = h
            return
        pfd = self._dirfd(comps[:-1], entry)
        if h.type == tarstream.DIR:
            was_whiteout = self._is_whiteout(pfd, base)
            if not self._clear(pfd, comps, keep_dir=True):
                os.mkdir(base, 0o700, dir_fd=pfd)
                if was_whiteout:
                    fd = os.open(base, DIR_FLAGS, dir_fd=pfd)
                    try:
                        self._set_opaque(fd)
                    finally:
                        os.close(fd)
            self._delayed[comps] = h
            return
        self._clear(pfd, comps, keep_dir=False)
        if h.is_file():
            self._file(pfd, base, h, reader, entry)
        elif h.type == tarstream.SYM:
            self._symlink(pfd, base, h, entry)
        elif h.type == tarstream.LNK:
            self._hardlink(pfd, base, h, entry)
        else:  # devices, fifos, unknown types: never created
            self.report.skipped.append((entry, h.kind))

    def _file(self, pfd: int, base: str, h: tarstream.Header, reader: tarstream.Reader, entry: str) -> None:
        fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=pfd)
        try:
            left = h.size
            while left:
                b = reader.read_data(min(left, 1 << 20), h.name)
                view = memoryview(b)
                while view:
                    view = view[os.write(fd, view):]
                left -= len(b)
            self.report.bytes += h.size
            if self.privileged:
                os.fchown(fd, h.uid, h.gid)
            self._xattrs(fd, h)
            os.fchmod(fd, h.mode & 0o7777)  # after chown, which clears set-id bits
            os.utime(fd, ns=(_ns(h.mtime), _ns(h.mtime)))
        finally:
            os.close(fd)

    def _symlink(self, pfd: int, base: str, h: tarstream.Header, entry: str) -> None:
        if not h.linkname or b"\0" in h.linkname or len(h.linkname) > MAX_PATH:
            raise self._err(entry, "bad symlink target")
        os.symlink(h.linkname.decode("utf-8", "surrogateescape"), base, dir_fd=pfd)
        if self.privileged:
            os.chown(base, h.uid, h.gid, dir_fd=pfd, follow_symlinks=False)
        os.utime(base, ns=(_ns(h.mtime), _ns(h.mtime)), dir_fd=pfd, follow_symlinks=False)

    def _hardlink(self, pfd: int, base: str, h: tarstream.Header, entry: str) -> None:
        target = clean(h.linkname, self.layer, what=f"hard link {_show(entry)} -> ")
        if not target:
            raise self._err(entry, "a hard link to the layer's root")
        tpfd = self._dirfd(target[:-1], entry, create=False)
        try:
            st = os.stat(target[-1], dir_fd=tpfd, follow_symlinks=False)
        except FileNotFoundError:
            raise self._err(entry, f"hard link to {_show('/'.join(target))}, which this layer does not have") from None
        if stat.S_ISDIR(st.st_mode):
            raise self._err(entry, "a hard link to a directory")
        os.link(target[-1], base, src_dir_fd=tpfd, dst_dir_fd=pfd, follow_symlinks=False)

    def _whiteout(self, comps: tuple[str, ...], entry: str) -> None:
        base = comps[-1]
        pfd = self._dirfd(comps[:-1], entry)
        if base == OPAQUE.decode():
            self._set_opaque(pfd)
            return
        if base.startswith(".wh..wh."):
            return  # AUFS bookkeeping (.wh..wh.plnk, .wh..wh.aufs): nothing to create
        hidden = base[len(".wh."):]
        if hidden in ("", ".", ".."):
            raise self._err(entry, "a whiteout of nothing or of '..'")
        try:
            st = os.stat(hidden, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None:
            # The layer has this name itself: a whiteout never hides the layer's own entries, but it
            # does hide the lower layers'. A non-directory hides them anyway; a directory must be opaque.
            if stat.S_ISDIR(st.st_mode):
                fd = os.open(hidden, DIR_FLAGS, dir_fd=pfd)
                try:
                    self._set_opaque(fd)
                finally:
                    os.close(fd)
            return
        os.mknod(hidden, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=pfd)
        self.report.whiteouts += 1

    def _set_opaque(self, fd: int) -> None:
        for name in OVERLAY_OPAQUE_XATTRS:
            if name.startswith("trusted.") and not self.privileged:
                continue
            os.setxattr(fd, name, b"y")
        self.report.opaque += 1

    @staticmethod
    def _is_whiteout(pfd: int, name: str) -> bool:
        try:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0

    def _xattrs(self, fd: int, h: tarstream.Header) -> None:
        for k, v in h.xattrs.items():
            if k.startswith("user.") and not k.startswith("user.overlay."):
                try:
                    os.setxattr(fd, k, v)
                except OSError as e:
                    if e.errno not in (errno.ENOTSUP, errno.EINVAL, errno.ERANGE, errno.E2BIG, errno.ENOSPC):
                        raise
                    self.report.dropped_xattrs += 1
            else:
                self.report.dropped_xattrs += 1

    # -- the end --------------------------------------------------------------------------------
    def finish(self) -> Report:
        """Apply directory owners, modes and times, deepest first; close every fd."""
        try:
            for comps in sorted(self._delayed, key=len, reverse=True):
                h = self._delayed[comps]
                entry = h.name.decode("utf-8", "surrogateescape")
                fd = self._dirfd(comps, entry, create=False)
                if h.type == tarstream.DIR:
                    if self.privileged:
                        os.fchown(fd, h.uid, h.gid)
                    self._xattrs(fd, h)
                    os.fchmod(fd, h.mode & 0o7777)
                    os.utime(fd, ns=(_ns(h.mtime), _ns(h.mtime)))
        finally:
            self.close()
        return self.report

    def close(self) -> None:
        for fd in self._dirs.values():
            os.close(fd)
        self._dirs.clear()


def _ns(t: float) -> int:
    return int(t * 1_000_000_000)


def unpack(src, root_fd: int, layer: str, budget: Budget, *, privileged: bool | None = None) -> Report:
    """Read the tar stream `src` (blob.Stream) and create its entries under root_fd."""
    u = Unpacker(root_fd, layer, budget, privileged=privileged)
    reader = tarstream.Reader(src)
    h = None
    try:
        for h in reader:
            u.add(h, reader)
        return u.finish()
    except tarstream.TarError as e:
        name = e.entry if e.entry is not None else (h.name if h is not None else None)
        where = f"entry {_show(name)}: " if name is not None else ""
        after = " (after the previous entry)" if e.entry is None and h is not None else ""
        raise UnpackError(f"layer {layer}: {where}{e}{after}") from None
    except OSError as e:
        where = f"entry {_show(h.name)}: " if h is not None else ""
        raise UnpackError(f"layer {layer}: {where}{escape(e.strerror or str(e))}") from None
    finally:
        u.close()
