"""`sbx cp`: files between the host and a running sandbox's root, by fd, never by path string.

The sandbox is hostile and keeps running while we copy: it can plant symlinks (`d -> /`,
`x -> ../../../etc`), swap a directory for a symlink between two of our calls, grow a file
forever, or offer fifos and device nodes. So:

* Every path inside the sandbox is resolved from an fd of its root (/proc/INIT/root, via
  facts.open_root) with openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS): absolute links and
  `..` stay inside that root, /proc/*/root-style jumps are refused. Below the first component,
  the walk goes entry by entry from directory fds (openat of one name, O_NOFOLLOW), so a swap
  after we opened a directory cannot move us: we hold that directory, not its name.
* A file is opened O_PATH first and judged by fstat; only a regular file is reopened for
  reading, through our own /proc/self/fd link to that same inode (no second lookup a swap
  could redirect). Fifos, sockets and device nodes are skipped and counted, never opened.
* Kernel interfaces (procfs, sysfs, cgroupfs, devpts, ...) are neither copied nor descended.
* Everything written is created under the destination directory fd: directories by mkdirat
  (an existing one reopened O_DIRECTORY|O_NOFOLLOW, so a symlink there is refused), files as
  a fresh O_CREAT|O_EXCL|O_NOFOLLOW temporary renamed into place (an existing file or symlink
  at the name is replaced, never written through). No device node or fifo is ever created;
  setuid/setgid/sticky bits are dropped (a root-owned setuid file planted on the host by a
  sandbox would be an escalation).
* Bytes, entries and depth are bounded (Limits); past a bound the copy stops with one line.

Copying into a sandbox writes through the same kind of root fd: the sandbox's own mounts
(read-only root, size-capped /tmp) apply exactly as they do to the sandbox, and a symlink it
plants anywhere on the way resolves inside its root.
"""
from __future__ import annotations

import errno
import os
import stat

from . import facts
from . import syscalls as sc
from .errors import SbxError, escape
from .records import record

# f_type of filesystems that are kernel interfaces, not files (linux/magic.h).
PSEUDO_FS = {
    0x9FA0: "proc", 0x62656572: "sysfs", 0x27E0EB: "cgroup", 0x63677270: "cgroup2", 0x1CD1: "devpts",
    0x64626720: "debugfs", 0x74726163: "tracefs", 0x73636673: "securityfs", 0xCAFE4A11: "bpf",
    0x19800202: "mqueue", 0x6165676C: "pstore", 0x62656570: "configfs", 0x65735543: "fusectl",
    0x42494E4D: "binfmt_misc", 0xF97CFF8C: "selinuxfs", 0xDE5E81E4: "efivarfs", 0x6E736673: "nsfs",
}
RESOLVE = sc.RESOLVE_IN_ROOT | sc.RESOLVE_NO_MAGICLINKS
CHUNK = 1 << 20


@record
class Limits:
    max_bytes: int = 1 << 30  # --max-size
    max_entries: int = 100_000
    max_depth: int = 128


@record
class Stats:
    bytes: int = 0
    entries: int = 0
    skipped: int = 0  # fifos, sockets, device nodes, kernel interfaces


def _err(msg: str) -> SbxError:
    return SbxError(msg, where="cp")


def _why(e: OSError) -> str:
    return os.strerror(e.errno) if e.errno else str(e)


class as_user:
    """Create files as (uid, gid), through the thread's fs ids; restored on exit. A file system
    mounted in the sandbox's user namespace refuses files of an id it does not map (EOVERFLOW),
    and the fs ids also make the kernel judge access as that user, not as root."""

    def __init__(self, owner: tuple[int, int] | None) -> None:
        self.owner = owner
        self.old: tuple[int, int] | None = None

    def __enter__(self):
        if self.owner is not None:
            try:
                self.old = sc.set_fs_ids(*self.owner)
            except OSError as e:
                raise _err(f"cannot act as uid {self.owner[0]}: {_why(e)}") from None
        return self

    def __exit__(self, *exc) -> None:
        if self.old is not None:
            sc.set_fs_ids(*self.old)


def reopen(fd: int, flags: int) -> int:
    """A new open file description of the exact inode an O_PATH fd holds (through our own
    /proc/self/fd link: no lookup by name, so nothing can be swapped in between)."""
    return os.open(f"/proc/self/fd/{fd}", flags | os.O_CLOEXEC)


def pseudo_fs(fd: int) -> str | None:
    try:
        return PSEUDO_FS.get(sc.fstatfs_type(fd))
    except OSError:
        return None


# ---------------------------------------------------------------- writing (a directory fd we own)

class Dest:
    """Creates entries under directory fds, as `owner` (host uid, gid) when given (as_user):
    sources are opened as ourselves, everything written as the owner."""

    def __init__(self, limits: Limits, stats: Stats, owner: tuple[int, int] | None = None) -> None:
        self.limits = limits
        self.stats = stats
        self.owner = owner

    def mkdir(self, dirfd: int, name: str, mode: int) -> int:
        """An O_RDONLY fd of directory `name` under dirfd, created if missing (never through a symlink)."""
        with as_user(self.owner):
            created = False
            try:
                os.mkdir(name, 0o700, dir_fd=dirfd)
                created = True
            except FileExistsError:
                pass
            try:
                fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise _err(f"{escape(name)} exists and is not a directory (a symlink there is never "
                               "followed)") from None
                raise
            if created:
                os.fchmod(fd, mode & 0o777)
            return fd

    def _tmp(self, dirfd: int) -> str:
        return f".sbx-cp-{os.urandom(8).hex()}"

    def file(self, dirfd: int, name: str, src: int, st: os.stat_result) -> None:
        """Copy the open regular file src to `name` under dirfd (temp file + rename)."""
        with as_user(self.owner):
            tmp = self._tmp(dirfd)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=dirfd)
            try:
                try:
                    while True:
                        left = self.limits.max_bytes - self.stats.bytes
                        chunk = os.read(src, min(CHUNK, left + 1))
                        if not chunk:
                            break
                        if len(chunk) > left:
                            raise _err(f"copy exceeds --max-size {self.limits.max_bytes} bytes; stopped")
                        view = memoryview(chunk)
                        while view:
                            view = view[os.write(fd, view):]
                        self.stats.bytes += len(chunk)
                    os.fchmod(fd, stat.S_IMODE(st.st_mode) & 0o777)
                    os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
                finally:
                    os.close(fd)
                os.rename(tmp, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
            except BaseException:
                try:
                    os.unlink(tmp, dir_fd=dirfd)
                except OSError:
                    pass
                raise

    def symlink(self, dirfd: int, name: str, target: str) -> None:
        with as_user(self.owner):
            tmp = self._tmp(dirfd)
            os.symlink(target, tmp, dir_fd=dirfd)
            try:
                os.rename(tmp, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
            except BaseException:
                try:
                    os.unlink(tmp, dir_fd=dirfd)
                except OSError:
                    pass
                raise

    def utime(self, fd: int, st: os.stat_result) -> None:
        with as_user(self.owner):
            try:
                os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
            except PermissionError:
                pass  # a directory that existed already and is not ours: its times stay


# ---------------------------------------------------------------- reading

class Copier:
    def __init__(self, dest: Dest, limits: Limits, stats: Stats, where_src: str) -> None:
        self.dest = dest
        self.limits = limits
        self.stats = stats
        self.where_src = where_src  # "sandbox" or "host": names the side in messages

    def _count(self) -> None:
        self.stats.entries += 1
        if self.stats.entries > self.limits.max_entries:
            raise _err(f"more than {self.limits.max_entries} entries; copy stopped")

    def entry(self, src: int, st: os.stat_result, dst_dir: int, name: str, depth: int, label: str) -> None:
        """Copy the entry held by O_PATH fd `src` (fstat st) to `name` under dst_dir."""
        self._count()
        if stat.S_ISDIR(st.st_mode):
            self.tree(src, st, dst_dir, name, depth, label)
        elif stat.S_ISREG(st.st_mode):
            rfd = reopen(src, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
            try:
                self.dest.file(dst_dir, name, rfd, st)
            finally:
                os.close(rfd)
        elif stat.S_ISLNK(st.st_mode):
            self.dest.symlink(dst_dir, name, os.readlink("", dir_fd=src))
        else:
            self.stats.skipped += 1  # fifo, socket, device node: never opened, never created

    def tree(self, src: int, st: os.stat_result, dst_dir: int, name: str, depth: int, label: str) -> None:
        if depth > self.limits.max_depth:
            raise _err(f"{escape(label)}: deeper than {self.limits.max_depth} levels; copy stopped")
        dfd = reopen(src, os.O_RDONLY | os.O_DIRECTORY)
        try:
            out = self.dest.mkdir(dst_dir, name, stat.S_IMODE(st.st_mode))
            try:
                self.contents(dfd, st, out, depth, label)
                self.dest.utime(out, st)
            finally:
                os.close(out)
        finally:
            os.close(dfd)

    def contents(self, dfd: int, st: os.stat_result, out: int, depth: int, label: str) -> None:
        """Copy every entry of open directory dfd into open directory out."""
        for child in _listdir(dfd, self.limits.max_entries):
            try:
                cfd = os.open(child, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
            except FileNotFoundError:
                continue  # gone meanwhile: the sandbox removed it
            try:
                cst = os.fstat(cfd)
                if cst.st_dev != st.st_dev and pseudo_fs(cfd):
                    self.stats.skipped += 1  # a procfs/sysfs/... mounted below: not files
                    continue
                self.entry(cfd, cst, out, child, depth + 1, f"{label.rstrip('/')}/{child}")
            finally:
                os.close(cfd)


def _listdir(dfd: int, limit: int) -> list[str]:
    names = []
    with os.scandir(dfd) as it:
        for de in it:
            names.append(de.name)
            if len(names) > limit:
                raise _err(f"a directory holds more than {limit} entries; copy stopped")
    return sorted(names)


# ---------------------------------------------------------------- path syntax (docker's rules)

@record(frozen=True)
class PathArg:
    path: str  # as given
    want_dir: bool  # ended with "/" (or "/."): must be a directory
    contents: bool  # ended with "/.": copy what is inside, not the directory itself

    @property
    def base(self) -> str:
        p = self.path.rstrip("/")
        if p.endswith("/.") or p == ".":
            p = p[:-1].rstrip("/")
        return p.rsplit("/", 1)[-1] if p else ""


def path_arg(p: str) -> PathArg:
    if not p:
        raise _err("empty path")
    if "\x00" in p:
        raise _err("a path cannot contain NUL")
    contents = p.endswith("/.") or p == "."
    return PathArg(p, p.endswith("/") or contents, contents)


def split_ref(arg: str) -> tuple[str | None, str]:
    """docker's splitCpArg: 'ID:PATH' names a sandbox path; a local path starting with / or . never
    does (write ./a:b for a host file whose name holds a colon)."""
    if arg.startswith(("/", ".")):
        return None, arg
    ref, sep, path = arg.partition(":")
    if not sep or not ref:
        return None, arg
    return ref, path


# ---------------------------------------------------------------- the sandbox side

def _in_root(root: int, path: str, follow: bool) -> int:
    """O_PATH fd of `path` inside the sandbox root (links resolve inside it; the last one
    followed only when asked)."""
    rel = path.strip("/") or "."
    flags = os.O_PATH | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    return sc.openat2(root, rel, flags, 0, RESOLVE)


def _split_parent(path: str) -> tuple[str, str]:
    p = path.rstrip("/")
    parent, _, leaf = p.rpartition("/")
    return parent or "/", leaf


def copy_out(root: int, src: PathArg, dst: str, limits: Limits, follow: bool = False) -> Stats:
    """Sandbox path src (resolved in root) -> host path dst, with docker's cp semantics."""
    stats = Stats()
    label = src.path
    try:
        sfd = _in_root(root, src.path, follow or src.want_dir)
    except OSError as e:
        raise _err(f"{escape(label)} in the sandbox: {_why(e)}") from None
    try:
        st = os.fstat(sfd)
        kind = pseudo_fs(sfd)
        if kind:
            raise _err(f"{escape(label)} is on a {kind} filesystem in the sandbox: sbx cp copies files, "
                       "not kernel interfaces")
        if src.want_dir and not stat.S_ISDIR(st.st_mode):
            raise _err(f"{escape(label)} in the sandbox is not a directory")
        if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            raise _err(f"{escape(label)} in the sandbox is not a regular file, directory or symlink: not copied")
        copier = Copier(Dest(limits, stats), limits, stats, "sandbox")
        try:
            dparent, dleaf, dst_is_dir = _host_dest(dst, stat.S_ISDIR(st.st_mode))
        except OSError as e:
            raise _err(f"{escape(dst)}: {_why(e)}") from None
        try:
            _place(copier, sfd, st, src, dparent, dleaf, dst_is_dir, label)
        except OSError as e:
            raise _err(f"copying {escape(label)} to {escape(dst)}: {_why(e)}"
                       + (f" ({escape(e.filename)})" if isinstance(e.filename, str) else "")) from None
        finally:
            os.close(dparent)
    finally:
        os.close(sfd)
    return stats


def _place(copier: Copier, sfd: int, st: os.stat_result, src: PathArg, dparent: int, dleaf: str | None,
           dst_is_dir: bool, label: str) -> None:
    """Docker's placement: into an existing directory as its basename (or its contents with
    SRC/.), else as the destination name itself."""
    if stat.S_ISDIR(st.st_mode) and src.contents:
        out = copier.dest.mkdir(dparent, dleaf, stat.S_IMODE(st.st_mode)) if dleaf else os.dup(dparent)
        try:
            dfd = reopen(sfd, os.O_RDONLY | os.O_DIRECTORY)
            try:
                copier.contents(dfd, st, out, 0, label)
            finally:
                os.close(dfd)
        finally:
            os.close(out)
        return
    if dst_is_dir:
        name = src.base or "root"
        copier.entry(sfd, st, dparent, name, 0, label)
    else:
        copier.entry(sfd, st, dparent, dleaf, 0, label)


def _resolve_host(path: str):
    from .hostpath import resolve
    try:
        return resolve(path, what="host path")
    except SbxError as e:
        raise _err(e.message) from None


def _host_dest(dst: str, src_is_dir: bool) -> tuple[int, str | None, bool]:
    """(directory fd, leaf name or None, True if that fd IS the destination directory) on the host.

    The user names the host path, so its symlinks are followed as cp would, but only those owned
    by root or the user (hostpath.resolve), and what is found is opened again without symlinks.
    """
    want_dir = dst.endswith("/") or dst.endswith("/.")
    absdst = (dst if dst.startswith("/") else os.path.join(os.getcwd(), dst)).rstrip("/") or "/"
    parent, leaf = _split_parent(absdst)
    if leaf in ("", ".", ".."):
        hp = _resolve_host(absdst)
        if not hp.is_dir:
            raise _err(f"{escape(dst)} is not a directory")
        return _open_dir_exact(hp.path), None, True
    php = _resolve_host(parent)
    if not php.is_dir:
        raise _err(f"destination {escape(dst)}: {escape(parent)} is not a directory")
    pfd = _open_dir_exact(php.path)
    try:
        try:
            lst = os.stat(leaf, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            if want_dir and not src_is_dir:
                raise _err(f"destination directory {escape(dst)} does not exist") from None
            pfd, keep = -1, pfd
            return keep, leaf, False
        if stat.S_ISLNK(lst.st_mode):  # the user's own link (hostpath refuses others' links)
            hp = _resolve_host(absdst)
            if hp.is_dir:
                return _open_dir_exact(hp.path), None, True
            parent, leaf = _split_parent(hp.path)
            lst = os.stat(hp.path, follow_symlinks=False)
            os.close(pfd)
            pfd = _open_dir_exact(parent)
        if stat.S_ISDIR(lst.st_mode):
            return os.open(leaf, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd), None, True
        if src_is_dir:
            raise _err(f"cannot copy a directory to {escape(dst)}: it is an existing file")
        if want_dir:
            raise _err(f"{escape(dst)} is not a directory")
        pfd, keep = -1, pfd
        return keep, leaf, False
    finally:
        if pfd >= 0:
            os.close(pfd)


def _open_dir_exact(path: str) -> int:
    try:
        return sc.openat2(sc.AT_FDCWD, path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, 0,
                          sc.RESOLVE_NO_SYMLINKS | sc.RESOLVE_NO_MAGICLINKS)
    except OSError as e:
        raise _err(f"{escape(path)}: {_why(e)} (it changed while sbx cp looked at it)") from None


def copy_in(root: int, src: str, dst: PathArg, owner: tuple[int, int] | None, limits: Limits,
            follow: bool = False) -> Stats:
    """Host path src -> sandbox path dst (resolved in root), docker's cp semantics.

    owner: host (uid, gid) to write as (the sandbox's workload user): what is created belongs to
    it, and the sandbox's own permissions decide where that may be. None: as we are.
    """
    stats = Stats()
    sarg = path_arg(src)
    abssrc = src if src.startswith("/") else os.path.join(os.getcwd(), src)
    parent, leaf = _split_parent(abssrc)
    try:
        if follow or sarg.want_dir or not leaf or leaf in (".", ".."):
            hp = _resolve_host(abssrc.rstrip("/") or "/")
            sfd = sc.openat2(sc.AT_FDCWD, hp.path, os.O_PATH | os.O_CLOEXEC, 0,
                             sc.RESOLVE_NO_SYMLINKS | sc.RESOLVE_NO_MAGICLINKS)
        else:
            php = _resolve_host(parent)  # a symlink as SRC is copied as a symlink (docker: -L follows)
            pfd = _open_dir_exact(php.path)
            try:
                sfd = os.open(leaf, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
            finally:
                os.close(pfd)
    except OSError as e:
        raise _err(f"{escape(src)}: {_why(e)}") from None
    try:
        st = os.fstat(sfd)
        kind = pseudo_fs(sfd)
        if kind:
            raise _err(f"{escape(src)} is on a {kind} filesystem: sbx cp copies files, not kernel interfaces")
        if sarg.want_dir and not stat.S_ISDIR(st.st_mode):
            raise _err(f"{escape(src)} is not a directory")
        if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            raise _err(f"{escape(src)} is not a regular file, directory or symlink: not copied")
        copier = Copier(Dest(limits, stats, owner), limits, stats, "host")
        with as_user(owner):  # the way to the destination is walked with the sandbox user's permissions
            dparent, dleaf, dst_is_dir = _sandbox_dest(root, dst, stat.S_ISDIR(st.st_mode))
        try:
            _place(copier, sfd, st, sarg, dparent, dleaf, dst_is_dir, src)
        except OSError as e:
            raise _err(f"writing {escape(dst.path)} in the sandbox: {_why(e)}") from None
        finally:
            os.close(dparent)
    finally:
        os.close(sfd)
    return stats


def _sandbox_dest(root: int, dst: PathArg, src_is_dir: bool) -> tuple[int, str | None, bool]:
    """Like _host_dest, inside the sandbox root: every lookup stays in the root (RESOLVE_IN_ROOT)."""
    try:
        fd = _in_root(root, dst.path, True)
    except FileNotFoundError:
        fd = None
    except OSError as e:
        raise _err(f"{escape(dst.path)} in the sandbox: {_why(e)}") from None
    if fd is not None:
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                return reopen(fd, os.O_RDONLY | os.O_DIRECTORY), None, True
            if src_is_dir:
                raise _err(f"cannot copy a directory to {escape(dst.path)}: it is an existing file in the sandbox")
            if dst.want_dir:
                raise _err(f"{escape(dst.path)} in the sandbox is not a directory")
        finally:
            os.close(fd)
    elif dst.want_dir and not src_is_dir:
        raise _err(f"destination directory {escape(dst.path)} does not exist in the sandbox")
    parent, leaf = _split_parent(dst.path if dst.path.startswith("/") else "/" + dst.path)
    if leaf in ("", ".", ".."):
        raise _err(f"bad destination {escape(dst.path)}")
    try:
        pfd = sc.openat2(root, parent.strip("/") or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, 0, RESOLVE)
    except OSError as e:
        raise _err(f"{escape(parent)} in the sandbox: {_why(e)}") from None
    return pfd, leaf, False


def open_sandbox_root(entry) -> tuple[int, int]:
    """(root fd, init pid) of a running sandbox; refuses a stopped one or a recycled pid."""
    from . import state
    from .lifecycle import open_init
    if entry.status not in (state.RUNNING, state.PAUSED):
        raise _err(f"sandbox {entry.id[:12]} is not running ({entry.status}): its root exists only while it "
                   "runs (sbx builds it in the sandbox's own mount namespace)")
    pfd = open_init(entry)
    if pfd is None:
        raise _err(f"sandbox {entry.id[:12]} is not running (its init is gone)")
    try:
        init_pid = int(entry.state["init_pid"])
        try:
            root = facts.open_root(init_pid)
        except (facts.ProcessGone, OSError):
            raise _err(f"sandbox {entry.id[:12]} exited") from None
        import select
        again = open_init(entry)  # the pid could have been recycled between the two opens
        if again is not None:
            os.close(again)
        if again is None or select.select([pfd], [], [], 0)[0]:
            os.close(root)
            raise _err(f"sandbox {entry.id[:12]} exited")
        return root, init_pid
    finally:
        os.close(pfd)
