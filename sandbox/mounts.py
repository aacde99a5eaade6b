"""The filesystem stage: build the sandbox's root and pivot into it.

Runs in the sandbox's init process (pid 1 of the new pid namespace, inside the
new mount namespace, as root of the new user namespace). Two modes:

* host-view (default): a fresh tmpfs root holding read-only binds of the host's
  /usr, /bin, /lib*, ... (merged-usr symlinks are recreated, not bound), a
  generated minimal /etc plus a safe subset of the host's, and nothing of
  /root, /home, /run or /var unless bound.
* rootfs: an overlay whose lower layer is the user's directory and whose upper
  layer is a private tmpfs, so mountpoints can be created without writing to
  the user's tree; made read-only after setup.

Both get: tmpfs /tmp (size-capped), fresh /proc with Docker's masked and
read-only paths, minimal /dev, optional read-only /sys, -v binds.

Paths inside a --rootfs are container-controlled: they are resolved with
openat2(RESOLVE_IN_ROOT) so a symlink in the rootfs can never send a mount
onto the host.
"""
from __future__ import annotations

import errno
import os
import stat
from .records import record

from . import syscalls as sc
from .errors import SbxError
from .spec import Bind, Spec

HOST_TOP = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
             ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx"))
RO_ATTRS = sc.MOUNT_ATTR_RDONLY | sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV
MAX_ETC_COPY = 1 << 20


@record
class Sources:
    """User-given paths opened (O_PATH) before any mount changes, in the sandbox's mount ns."""

    rootfs_fd: int | None
    bind_fds: list[tuple[Bind, int, bool]]  # (bind, fd, is_dir)

    def close(self) -> None:
        for fd in [self.rootfs_fd] + [b[1] for b in self.bind_fds]:
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass


def open_sources(spec: Spec) -> Sources:
    """Open --rootfs and -v sources. Called after unshare, before the id switch.

    The invoker chose these paths, so following their symlinks is the user's
    intent (as in docker); but we pin each one to an fd here so nothing can swap
    it between this check and the mount.
    """
    fs = spec.filesystem
    rootfs_fd = None
    if fs.rootfs:
        try:
            rootfs_fd = os.open(fs.rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise SbxError(f"cannot open rootfs {fs.rootfs}: {e.strerror}", where="--rootfs") from None
    binds = []
    for b in fs.binds:
        try:
            fd = os.open(b.source, os.O_PATH | os.O_CLOEXEC)
        except OSError as e:
            raise SbxError(f"cannot open bind source {b.source}: {e.strerror}", where="-v") from None
        is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
        binds.append((b, fd, is_dir))
    return Sources(rootfs_fd, binds)


def _staging_point() -> str:
    # Any real directory works: the tmpfs is mounted over it in our private
    # mount namespace only, and the host's view never changes.
    for cand in ("/tmp", "/mnt", "/run", "/var/tmp", "/opt"):
        try:
            if stat.S_ISDIR(os.lstat(cand).st_mode):
                return cand
        except OSError:
            continue
    raise SbxError("no directory available to stage the sandbox root (tried /tmp /mnt /run /var/tmp /opt)")


def _fail(what: str, e: OSError) -> SbxError:
    return SbxError(f"mount setup failed: {what}: {os.strerror(e.errno or 0)}")


def _resolve_in(root_fd: int, path: str, *, create: str | None = None) -> int:
    """Open `path` inside the tree at root_fd without ever leaving it (O_PATH fd).

    create: None, "dir" or "file": create the final component (and parents as dirs) when missing.
    """
    rel = path.strip("/")
    if not rel:
        return os.dup(root_fd)
    how = sc.RESOLVE_IN_ROOT | sc.RESOLVE_NO_MAGICLINKS
    try:
        return sc.openat2(root_fd, rel, os.O_PATH | os.O_CLOEXEC, 0, how)
    except FileNotFoundError:
        if create is None:
            raise
    parent, _, leaf = rel.rpartition("/")
    pfd = _resolve_in(root_fd, parent, create="dir") if parent else os.dup(root_fd)
    try:
        dfd = sc.openat2(pfd, ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, 0, 0)
        try:
            if create == "dir":
                try:
                    os.mkdir(leaf, 0o755, dir_fd=dfd)
                except FileExistsError:
                    pass
            else:
                try:
                    os.close(os.open(leaf, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dfd))
                except FileExistsError:
                    pass
        finally:
            os.close(dfd)
        return sc.openat2(pfd, leaf, os.O_PATH | os.O_CLOEXEC, 0, how)
    finally:
        os.close(pfd)


def _fdpath(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def _bind(src: str, dst: str, *, readonly: bool, recursive: bool = True, extra: int = 0) -> None:
    flags = sc.MS_BIND | (sc.MS_REC if recursive else 0)
    sc.mount(src, dst, None, flags)
    attrs = (RO_ATTRS if readonly else sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV) | extra
    sc.mount_setattr(-100, dst, sc.AT_RECURSIVE if recursive else 0, attrs)


def _mkdir(path: str, mode: int = 0o755) -> None:
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        pass


def _touch(path: str) -> None:
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644))


def _write(path: str, text: str, mode: int = 0o644) -> None:
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _etc(new: str, spec: Spec) -> None:
    etc = os.path.join(new, "etc")
    _mkdir(etc)
    # Identity files are generated, not copied: the host's user list is not the sandbox's business.
    users = {0: "root", 65534: "nobody"}
    users.setdefault(spec.uid, "sbx")
    groups = {0: "root", 65534: "nogroup"}
    groups.setdefault(spec.gid, "sbx")
    _write(os.path.join(etc, "passwd"), "".join(
        f"{n}:x:{u}:{spec.gid if u == spec.uid else u}:{n}:/tmp:/usr/sbin/nologin\n" for u, n in sorted(users.items())))
    _write(os.path.join(etc, "group"), "".join(f"{n}:x:{g}:\n" for g, n in sorted(groups.items())))
    _write(os.path.join(etc, "hostname"), spec.hostname + "\n")
    _write(os.path.join(etc, "hosts"), f"127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.1.1\t{spec.hostname}\n")
    for name in spec.filesystem.etc_files:
        if "/" in name.strip("/") and ".." in name.split("/"):
            continue
        host = os.path.join("/etc", name)
        dst = os.path.join(etc, name)
        try:
            st = os.lstat(host)
        except OSError:
            continue
        if stat.S_ISLNK(st.st_mode):
            try:
                os.symlink(os.readlink(host), dst)
            except FileExistsError:
                pass
        elif stat.S_ISDIR(st.st_mode):
            _mkdir(dst)
            _bind(host, dst, readonly=True)
        elif stat.S_ISREG(st.st_mode) and st.st_size <= MAX_ETC_COPY:
            try:
                fd = os.open(host, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                continue  # unreadable to the sandbox's root: leave it out
            try:
                data = os.read(fd, MAX_ETC_COPY)
            finally:
                os.close(fd)
            fdw = os.open(dst, os.O_CREAT | os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            try:
                os.write(fdw, data)
            finally:
                os.close(fdw)


def _host_view(new: str, spec: Spec) -> None:
    for name in HOST_TOP:
        host = "/" + name
        try:
            st = os.lstat(host)
        except OSError:
            continue
        dst = os.path.join(new, name)
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(host), dst)
        elif stat.S_ISDIR(st.st_mode):
            _mkdir(dst)
            _bind(host, dst, readonly=True)
    _etc(new, spec)
    for d in ("tmp", "proc", "dev", "sys", "run", "var", "home", "root"):
        _mkdir(os.path.join(new, d), 0o755)
    os.chmod(os.path.join(new, "root"), 0o700)


def _proc(new: str, spec: Spec) -> None:
    proc = os.path.join(new, "proc")
    sc.mount("proc", proc, "proc", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
    for p in spec.filesystem.readonly_paths:
        target = os.path.join(new, p.lstrip("/"))
        try:
            _bind(target, target, readonly=True, extra=sc.MOUNT_ATTR_NOEXEC)
        except FileNotFoundError:
            continue
    _mask(new, spec.filesystem.masked_paths)


def _mask(new: str, paths: tuple[str, ...]) -> None:
    for p in paths:
        target = os.path.join(new, p.lstrip("/"))
        try:
            st = os.lstat(target)
        except OSError:
            continue  # not on this kernel, or under a tree we did not mount
        if stat.S_ISDIR(st.st_mode):
            sc.mount("tmpfs", target, "tmpfs", sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC, "size=0,mode=0555")
        else:
            sc.mount("/dev/null", target, None, sc.MS_BIND)


def _dev(new: str, spec: Spec, rootless: bool) -> None:
    dev = os.path.join(new, "dev")
    _mkdir(dev)
    sc.mount("tmpfs", dev, "tmpfs", sc.MS_NOSUID | sc.MS_NOEXEC, "mode=0755,size=65536")
    for node in DEV_NODES:
        host = "/dev/" + node
        if not os.path.exists(host):
            continue
        dst = os.path.join(dev, node)
        _touch(dst)
        sc.mount(host, dst, None, sc.MS_BIND)
        sc.mount_setattr(-100, dst, 0, sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NOEXEC)
    for name, target in DEV_LINKS:
        os.symlink(target, os.path.join(dev, name))
    pts = os.path.join(dev, "pts")
    _mkdir(pts)
    opts = "newinstance,ptmxmode=0666,mode=0620" + ("" if rootless else ",gid=5")
    try:
        sc.mount("devpts", pts, "devpts", sc.MS_NOSUID | sc.MS_NOEXEC, opts)
    except OSError:
        sc.mount("devpts", pts, "devpts", sc.MS_NOSUID | sc.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620")
    shm = os.path.join(dev, "shm")
    _mkdir(shm, 0o1777)
    sc.mount("shm", shm, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC,
             f"mode=1777,size={spec.filesystem.shm_size}")
    mq = os.path.join(dev, "mqueue")
    _mkdir(mq)
    try:
        sc.mount("mqueue", mq, "mqueue", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
    except OSError:
        os.rmdir(mq)


def _binds(new: str, sources: Sources) -> None:
    root_fd = os.open(new, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for bind, src_fd, is_dir in sources.bind_fds:
            try:
                tfd = _resolve_in(root_fd, bind.target, create="dir" if is_dir else "file")
            except OSError as e:
                raise SbxError(f"cannot create mountpoint {bind.target} in the sandbox: {e.strerror}",
                               where="-v") from None
            try:
                sc.mount(_fdpath(src_fd), _fdpath(tfd), None, sc.MS_BIND | sc.MS_REC)
            finally:
                os.close(tfd)
            # Re-resolve to reach the new mount (tfd names the dentry beneath it).
            mfd = _resolve_in(root_fd, bind.target)
            try:
                attrs = RO_ATTRS if bind.readonly else (sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV)
                sc.mount_setattr(mfd, "", sc.AT_RECURSIVE | sc.AT_EMPTY_PATH, attrs)
            finally:
                os.close(mfd)
    finally:
        os.close(root_fd)


def setup(spec: Spec, sources: Sources, *, rootless: bool) -> None:
    """Build the root, pivot into it, make it read-only. Raises SbxError on failure."""
    fs = spec.filesystem
    step = "making mounts private"
    try:
        sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
        stage = _staging_point()
        step = f"staging tmpfs on {stage}"
        sc.mount("sbx-stage", stage, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, "mode=0755,size=1m")
        new = os.path.join(stage, "root")
        _mkdir(new)
        if sources.rootfs_fd is not None:
            step = f"overlay on rootfs {fs.rootfs}"
            upper, work = os.path.join(stage, "upper"), os.path.join(stage, "work")
            _mkdir(upper)
            _mkdir(work)
            sc.mount("sbx-root", new, "overlay", sc.MS_NOSUID | sc.MS_NODEV,
                     f"lowerdir={_fdpath(sources.rootfs_fd)},upperdir={upper},workdir={work}")
            root_fd = os.open(new, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                for d in ("tmp", "proc", "dev") + (("sys",) if fs.sys else ()):
                    os.close(_resolve_in(root_fd, d, create="dir"))
            finally:
                os.close(root_fd)
        else:
            step = "root tmpfs"
            sc.mount("sbx-root", new, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, "mode=0755,size=4m")
            step = "host-view binds"
            _host_view(new, spec)
        step = "/tmp"
        tmp = os.path.join(new, "tmp")
        sc.mount("tmpfs", tmp, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, f"mode=1777,size={fs.tmp_size}")
        step = "/proc"
        _proc(new, spec)
        step = "/dev"
        _dev(new, spec, rootless)
        if fs.sys:
            step = "/sys"
            sysd = os.path.join(new, "sys")
            sc.mount("sysfs", sysd, "sysfs", sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
            _mask(new, tuple(p for p in fs.masked_paths if p.startswith("/sys/")))
        step = "binds"
        _binds(new, sources)
        step = "/dev read-only"
        sc.mount_setattr(-100, os.path.join(new, "dev"), 0, sc.MOUNT_ATTR_RDONLY | sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NOEXEC)
        step = "pivot_root"
        os.chdir(new)
        sc.pivot_root(".", ".")
        sc.umount2(".", sc.MNT_DETACH)
        os.chdir("/")
        if fs.read_only:
            step = "read-only root"
            sc.mount_setattr(-100, "/", 0, sc.MOUNT_ATTR_RDONLY | sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV)
    except SbxError:
        raise
    except OSError as e:
        if e.errno == errno.EPERM and step == "/proc":
            raise SbxError("cannot mount a fresh /proc (is this host's /proc partly masked, e.g. inside a container?)") from None
        raise _fail(step, e) from None
    finally:
        sources.close()
