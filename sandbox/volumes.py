"""Data in and out: named volumes, and whose files a sandbox writes through -v and volumes.

Each sandbox of a root invoker has its own host id range (sandbox.userns), so
a plain bind makes the workload's files belong to a random high uid on the
host, and the next sandbox cannot change them. sbx idmaps such mounts
(mount_setattr MOUNT_ATTR_IDMAP): through them the workload's uid/gid *is* one
host owner, so its files belong to that owner on the host and any later
sandbox, whatever its range, sees and edits them as its own.

Who the owner is (root invoker; a rootless sandbox already is its invoker):
- a named volume: sbx's volume owner, the first id of the id pool's last slice,
  which no sandbox gets (userns.volume_owner);
- a writable `-v` bind: the source's owner (`:noidmap` opts out). Never host
  root: a source owned by uid or gid 0 stays a plain bind (files land in the
  sandbox's range, as before) unless `:U` hands it to the volume owner; an
  explicit `:idmap` of a root-owned source is refused. A sandbox writing as
  root would create root's setuid files and root's symlinks, which sbx and
  every host tool trust;
- a read-only bind: none unless `:idmap` (mapping it would give the workload
  the owner's rights to read, say, 0600 files).
Only that one id pair is mapped, so no other host id can be written through
the mount. In strict, seccomp refuses setuid/setgid bits (chmod), so the
workload cannot leave a binary that runs as the owner either.

Where the idmapping is made: only host root may idmap a mount of a host
filesystem, so sbx does it. For -v binds, the sandbox's init clones the
source in its own mount namespace (the kernel keeps the host's mount locks on
that clone) and waits; sbx takes the detached trees with pidfd_getfd, idmaps
them, and lets init go on (launch: the "idmap" message and token I). Named
volumes live in sbx's 0700 store, which the sandbox's ids cannot reach: sbx
clones them itself (private, no submounts) before the sandbox starts.

Store (data_dir()/volumes, 0700): <name>/meta.json, <name>/lock (held shared
by every sandbox using it, taken exclusively to remove it) and <name>/_data
(the volume's root, owned by the volume owner). Symlinks in the store are
never followed by `-v` (hostpath), whoever owns them: a sandbox can plant one.
"""
from __future__ import annotations

import fcntl
import os
import re
import stat
import time

from . import paths
from .errors import SbxError
from .records import field, record

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")
FILE_TYPE = "sbx_file_t"  # policies/selinux/sbx.cil: host data a sandbox may write (docker's :z analogue)
META_MAX = 64 * 1024


def store_dir() -> str:
    return os.path.join(paths.data_dir(), "volumes")


def _store() -> str:
    paths.ensure_private_dir(paths.data_dir())
    return paths.ensure_private_dir(store_dir())


def check_name(name: str) -> None:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise SbxError(f"invalid volume name {name!r}: use letters, digits, '_', '.', '-' (max 128, not first)",
                       where="volume")


def owner() -> tuple[int, int]:
    """The host ids a named volume's files belong to (see the module docstring)."""
    if not paths.is_root():
        return os.getuid(), os.getgid()
    from .userns import volume_owner
    vo = volume_owner()
    if vo is None:
        raise SbxError("named volumes need an id slice of their own: the 'sbx' entry in /etc/subuid and /etc/subgid "
                       "has a single 65536-id slice; give it at least two")
    return vo


@record
class Volume:
    name: str
    dir: str
    created: float = 0.0
    uid: int = 0
    gid: int = 0
    labels: dict = field(default_factory=dict)

    @property
    def data(self) -> str:
        return os.path.join(self.dir, "_data")

    def describe(self) -> dict:
        return {"name": self.name, "driver": "local", "mountpoint": self.data, "created": self.created,
                "owner": {"uid": self.uid, "gid": self.gid}, "labels": dict(self.labels), "in_use": in_use(self),
                "used_by": used_by(self.name)}


class _StoreLock:
    """The store-wide flock: create and remove are atomic with respect to each other."""

    def __enter__(self) -> str:
        d = _store()
        self.fd = os.open(os.path.join(d, ".lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return d

    def __exit__(self, *exc) -> None:
        os.close(self.fd)


def _load(d: str, name: str) -> Volume | None:
    vdir = os.path.join(d, name)
    blob = paths.read_private(os.path.join(vdir, "meta.json"), META_MAX)
    if blob is None:
        return None
    import json
    try:
        meta = json.loads(blob)
        vol = Volume(name, vdir, float(meta["created"]), int(meta["uid"]), int(meta["gid"]),
                     {str(k): str(v) for k, v in (meta.get("labels") or {}).items()})
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    try:
        st = os.lstat(vol.data)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode):
        return None  # _data replaced by something else: not a volume sbx made
    return vol


def get(name: str) -> Volume | None:
    check_name(name)
    try:
        return _load(_store(), name)
    except SbxError:
        raise
    except OSError:
        return None


def create(name: str | None = None, *, labels: dict | None = None, exist_ok: bool = False) -> Volume:
    """Create a volume (name None: a random one). exist_ok returns an existing one instead of refusing."""
    import json
    if name is None:
        name = os.urandom(32).hex()
    check_name(name)
    for k, v in (labels or {}).items():
        if not re.match(r"[A-Za-z0-9][A-Za-z0-9_./-]{0,127}\Z", str(k)) or len(str(v)) > 1024:
            raise SbxError(f"bad volume label {k!r}", where="volume create --label")
    uid, gid = owner()
    with _StoreLock() as d:
        have = _load(d, name)
        if have is not None:
            if exist_ok:
                return have
            raise SbxError(f"volume {name} exists already", where="volume create")
        vdir = os.path.join(d, name)
        if os.path.lexists(vdir):
            _rmtree(d, name)  # a half-made or damaged entry (no valid meta.json): start it again
        os.mkdir(vdir, 0o700)
        data = os.path.join(vdir, "_data")
        os.mkdir(data, 0o755)
        os.chown(data, uid, gid, follow_symlinks=False)
        os.chmod(data, 0o755)
        vol = Volume(name, vdir, time.time(), uid, gid, dict(labels or {}))
        paths.atomic_write(os.path.join(vdir, "meta.json"),
                           json.dumps({"name": name, "created": vol.created, "uid": uid, "gid": gid,
                                       "labels": vol.labels}).encode())
    return vol


def list_volumes() -> list[Volume]:
    d = _store()
    out = []
    for n in sorted(os.listdir(d)):
        if NAME_RE.match(n):
            v = _load(d, n)
            if v is not None:
                out.append(v)
    return out


def _lock_fd(vol: Volume) -> int:
    return os.open(os.path.join(vol.dir, "lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


def in_use(vol: Volume) -> bool:
    """Is a sandbox using it now? (Its sbx, or the sandbox's init, holds the volume's lock.)"""
    fd = _lock_fd(vol)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def used_by(name: str, *, running_only: bool = False) -> list[str]:
    """Saved (detached) sandboxes whose spec mounts the volume: 12-char ids or names."""
    from . import state
    out: list[str] = []
    try:
        entries = state.entries()
    except (SbxError, OSError):
        return out
    for e in entries:
        if running_only and e.status not in (state.RUNNING, state.PAUSED):
            continue
        fs = (e.config.get("spec") or {}).get("filesystem") or {}
        if any(b.get("kind") == "volume" and b.get("source") == name for b in fs.get("binds") or ()):
            out.append(e.name or e.id[:12])
    return out


def remove(name: str, *, force: bool = False) -> None:
    """Remove a volume and its data. In use (mounted by a running sandbox) only with force."""
    check_name(name)
    with _StoreLock() as d:
        vol = _load(d, name)
        if vol is None:
            raise SbxError(f"no such volume: {name}", where="volume rm")
        fd = _lock_fd(vol)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not force:
                    who = used_by(name, running_only=True)
                    raise SbxError(f"volume {name} is in use by a running sandbox"
                                   + (f" ({', '.join(who)})" if who else "") + "; stop it first or use -f",
                                   where="volume rm") from None
            _rmtree(d, name)
        finally:
            os.close(fd)


def prune() -> list[str]:
    """Remove every volume no sandbox uses now and no saved sandbox names. Returns the removed names."""
    gone = []
    for vol in list_volumes():
        if used_by(vol.name) or in_use(vol):
            continue
        try:
            remove(vol.name)
        except SbxError:
            continue  # taken between the check and the removal
        gone.append(vol.name)
    return gone


def _rmtree(parent: str, name: str) -> None:
    """Remove parent/name and everything below it, by fd, never following a symlink.

    Directories a sandbox made unreadable (mode 0) are opened up first: for a
    rootless invoker those are its own files, and it has no DAC override.
    """
    pfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        _rm_entry(pfd, name, os.fstat(pfd).st_dev)
    finally:
        os.close(pfd)


def _rm_entry(pfd: int, name: str, dev: int) -> None:
    try:
        st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=pfd)
        return
    if st.st_dev != dev:
        raise SbxError(f"refusing to remove {name}: another filesystem is mounted there")
    stack: list[tuple[int, str, int | None]] = [(pfd, name, None)]
    # Depth-first with an explicit stack: a sandbox can nest directories deeper than Python recurses.
    while stack:
        dfd_parent, dname, fd = stack[-1]
        if fd is None:
            fd = _open_dir_owned(dfd_parent, dname)
            if os.fstat(fd).st_dev != dev:
                os.close(fd)
                raise SbxError(f"refusing to remove {dname}: another filesystem is mounted there")
            stack[-1] = (dfd_parent, dname, fd)
        sub = None
        with os.scandir(fd) as it:
            for ent in it:
                if ent.is_dir(follow_symlinks=False):
                    sub = ent.name
                    break
                os.unlink(ent.name, dir_fd=fd)
        if sub is not None:
            stack.append((fd, sub, None))
            continue
        stack.pop()
        os.close(fd)
        os.rmdir(dname, dir_fd=dfd_parent)


def _open_dir_owned(dfd: int, name: str) -> int:
    """A readable directory fd of dfd/name (never a symlink), first giving it u+rwx if it is ours and lacks them."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, dir_fd=dfd)
    except PermissionError:
        p = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        try:
            os.chmod(f"/proc/self/fd/{p}", 0o700)  # through the fd: the inode we checked, not a swapped-in link
        finally:
            os.close(p)
        fd = os.open(name, flags, dir_fd=dfd)
    st = os.fstat(fd)
    if st.st_mode & 0o300 != 0o300 and st.st_uid == os.geteuid():
        os.fchmod(fd, 0o700)  # entries of a directory we cannot write could not be removed
    return fd


# ---------------------------------------------------------------- one sandbox's binds


@record
class DataPlan:
    """Per run, decided by sbx before the sandbox exists (launch.prepare), released at its end.

    sources: the HostPath of every bind, in Spec order (a volume: its _data).
    owners: for each bind, the host (uid, gid) the workload writes as through it, or None.
    idmap_in_init: indexes of -v binds whose clone (made by init) sbx idmaps; premade:
    index -> (tree fd, is_dir) of volumes sbx cloned and idmapped itself.
    """

    sources: list = field(default_factory=list)
    owners: list = field(default_factory=list)
    required: list = field(default_factory=list)  # per bind: an idmap failure refuses (True) or is a note
    idmap_in_init: list = field(default_factory=list)
    premade: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    host_ids: tuple = (0, 0)  # the workload's host uid/gid
    locks: list = field(default_factory=list)
    userns: dict = field(default_factory=dict)  # owner -> mapping namespace fd

    def _ns(self, who: tuple[int, int]) -> int:
        fd = self.userns.get(who)
        if fd is None:
            from .userns import mapping_userns
            fd = mapping_userns([(who[0], self.host_ids[0], 1)], [(who[1], self.host_ids[1], 1)])
            self.userns[who] = fd
        return fd

    def idmap_init_trees(self, init_pid: int, fds) -> None:
        """Idmap init's clones of the -v sources (fd numbers in init), while init waits for token I."""
        from . import mounts
        from . import syscalls as sc
        if not isinstance(fds, list) or len(fds) != len(self.idmap_in_init) or \
                not all(isinstance(f, int) and f >= 0 for f in fds):
            raise SbxError("the sandbox sent a malformed list of bind trees")
        pfd = os.pidfd_open(init_pid)
        try:
            for i, tfd in zip(self.idmap_in_init, fds, strict=True):
                tree = sc.pidfd_getfd(pfd, tfd)
                try:
                    mounts.idmap_tree(tree, self._ns(self.owners[i]), recursive=True)
                except OSError as e:
                    self._failed(i, e)
                finally:
                    os.close(tree)
        finally:
            os.close(pfd)

    def _failed(self, i: int, e: OSError) -> None:
        src = self.sources[i].given
        why = {22: "its filesystem (or one mounted below it) does not support idmapped mounts",
               1: "not permitted (already idmapped?)"}.get(e.errno or 0, e.strerror or str(e))
        if self.required[i]:
            raise SbxError(f"-v {src}: cannot make an idmapped mount: {why}", where="-v")
        self.owners[i] = None
        self.notes.append(f"-v {src}: not idmapped ({why}); the workload's files there belong to its own host ids")

    def describe(self) -> list[dict]:
        return [{"source": hp.path, "owner": None if o is None else {"uid": o[0], "gid": o[1]}}
                for hp, o in zip(self.sources, self.owners, strict=True)]

    def release(self) -> None:
        for fd in list(self.userns.values()) + [t[0] for t in self.premade.values()] + self.locks:
            try:
                os.close(fd)
            except OSError:
                pass
        self.userns, self.premade, self.locks = {}, {}, []


def prepare(spec, idplan, mac_plan=None) -> DataPlan:
    """Resolve every bind source, decide its owner, make volumes' trees, apply :U and :z/:Z.

    Called by launch.prepare in sbx (host credentials) before any fork.
    """
    from . import hostpath
    binds = spec.filesystem.binds
    dp = DataPlan()
    dp.host_ids = (idplan.host_uid(spec.uid), idplan.host_gid(spec.gid))
    rootless = idplan.rootless
    for b in binds:
        if b.relabel:
            _relabel_check(b, mac_plan)  # before any volume is created or file changed
    try:
        for i, b in enumerate(binds):
            if b.kind == "volume":
                vol = create(b.source, exist_ok=True)  # as docker: -v NAME:/path makes it on first use
                lock = _lock_fd(vol)
                dp.locks.append(lock)
                fcntl.flock(lock, fcntl.LOCK_SH)
                hp = hostpath.resolve(vol.data, what="-v")
                dp.sources.append(hp)
                if b.chown:
                    _chown_tree(hp, (vol.uid, vol.gid))
                if b.relabel:
                    _relabel(hp, b, mac_plan)
                if rootless:
                    dp.owners.append(None)  # single-id map: the workload already is the volume's owner
                    dp.required.append(False)
                    continue
                dp.owners.append((vol.uid, vol.gid))
                dp.required.append(True)
                dp.premade[i] = (_volume_tree(dp, i, hp, b), True)
                continue
            hp = hostpath.resolve(b.source, what="-v")
            dp.sources.append(hp)
            if b.relabel:
                _relabel(hp, b, mac_plan)
            want = b.idmap if b.idmap is not None else (not b.readonly or b.chown)
            if rootless:
                if b.chown:
                    _chown_tree(hp, (os.getuid(), os.getgid()))
                if b.idmap:
                    dp.notes.append(f"-v {b.source}: rootless, so no idmapped mount is needed (or possible): "
                                    "the sandbox's one id already is yours")
                dp.owners.append(None)
                dp.required.append(False)
                continue
            if not want:
                dp.owners.append(None)
                dp.required.append(False)
                continue
            who = _source_owner(hp)
            why = _unmappable(who)
            if b.chown:
                if why:
                    who = owner()  # never root, nor a sandbox's range: such a source goes to the volume owner
                _chown_tree(hp, who)
            elif why:
                if b.idmap:
                    raise SbxError(f"-v {b.source}:{b.target}:idmap: {hp.path} belongs to {why} (uid {who[0]}, gid "
                                   f"{who[1]}); sbx never lets a sandbox write as that. Use :U to hand it to sbx's "
                                   f"volume owner, or chown it to a user", where="-v")
                dp.notes.append(f"-v {b.source}: not idmapped: it belongs to {why}, and sbx never lets a sandbox "
                                "write as that (:U hands it to sbx's volume owner)")
                dp.owners.append(None)
                dp.required.append(False)
                continue
            dp.owners.append(who)
            dp.required.append(bool(b.idmap) or b.chown)
            dp.idmap_in_init.append(i)
    except BaseException:
        dp.release()
        raise
    return dp


def _unmappable(who: tuple[int, int]) -> str | None:
    """Why a sandbox must not write as this host owner, or None.

    Root: its files and symlinks are trusted by sbx and the whole host. Ids of
    the sandbox pool (other than the volume owner): a live sandbox may hold that
    id, and this one would then create files as it.
    """
    if 0 in who:
        return "root"
    from .userns import SLICE, pool, volume_owner
    base, nslots = pool()
    if who != volume_owner() and any(base <= i < base + nslots * SLICE for i in who):
        return "a sandbox's own id range (files a plain bind left behind)"
    return None


def _source_owner(hp) -> tuple[int, int]:
    from .hostpath import reopen
    fd = reopen(hp, what="-v")
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    return st.st_uid, st.st_gid


def _volume_tree(dp: DataPlan, i: int, hp, b) -> int:
    """A private, idmapped, detached clone of a volume's _data (no submounts: sbx made the directory)."""
    from . import mounts
    from . import syscalls as sc
    from .hostpath import reopen
    fd = reopen(hp, what="-v")
    try:
        tree = mounts.clone_tree(fd, recursive=False, attrs=mounts.RO_ATTRS if b.readonly else mounts.RW_ATTRS,
                                 propagation=sc.MS_PRIVATE)
    finally:
        os.close(fd)
    try:
        mounts.idmap_tree(tree, dp._ns(dp.owners[i]), recursive=False)
    except OSError as e:
        os.close(tree)
        dp._failed(i, e)
    return tree


def _walk(hp):
    """(dir fd, entry name, lstat) for hp's root and everything below it on the same filesystem, by fd.

    The root comes first as (None, "/proc/self/fd/N", stat); entries below it as
    (their directory's fd, name): act on them with *at() calls that do not follow
    the name, so a symlink a sandbox planted is changed itself, never its target.
    """
    from .hostpath import reopen
    opath = reopen(hp, what="-v")
    stack: list[int] = []
    try:
        top_st = os.fstat(opath)
        yield None, f"/proc/self/fd/{opath}", top_st
        if not stat.S_ISDIR(top_st.st_mode):
            return
        stack.append(os.open(f"/proc/self/fd/{opath}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        while stack:
            dfd = stack.pop()
            try:
                with os.scandir(dfd) as it:
                    names = [e.name for e in it]
                for n in names:
                    try:
                        st = os.stat(n, dir_fd=dfd, follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if st.st_dev != top_st.st_dev:
                        continue  # another filesystem mounted here: not this source's files
                    yield dfd, n, st
                    if stat.S_ISDIR(st.st_mode):
                        try:
                            stack.append(os.open(n, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                                 dir_fd=dfd))
                        except OSError:
                            continue
            finally:
                os.close(dfd)
    finally:
        for fd in stack:
            os.close(fd)
        os.close(opath)


def _chown_tree(hp, who: tuple[int, int]) -> None:
    """`:U`: every file of the source (same filesystem, symlinks themselves) belongs to `who`."""
    try:
        for dfd, name, st in _walk(hp):
            if (st.st_uid, st.st_gid) == who:
                continue
            if dfd is None:
                os.chown(name, *who)  # the root itself, through its fd
            else:
                os.chown(name, *who, dir_fd=dfd, follow_symlinks=False)
    except OSError as e:
        raise SbxError(f"-v {hp.given}:U: cannot give its files to uid {who[0]}: {e.strerror}", where="-v") from None


# Relabelling these would change how the host itself is confined (podman refuses the same kind of list).
_NO_RELABEL = ("/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32", "/media", "/mnt",
               "/opt", "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var", "/var/lib",
               "/var/log", "/var/tmp")
_NO_RELABEL_BELOW = ("/boot/", "/dev/", "/etc/", "/proc/", "/sys/", "/usr/")


def _relabel_allowed(b, path: str) -> None:
    p = os.path.normpath(path)
    if p in _NO_RELABEL or p.startswith(_NO_RELABEL_BELOW):
        raise SbxError(f"-v {b.source}:{b.target}:{b.relabel}: refusing to relabel {p}, a system directory of the "
                       "host (its label confines the host's own programs)", where="-v")


def _relabel_check(b, mac_plan) -> str:
    """The label :z/:Z gives, or SbxError (one line) where there is none to give."""
    from . import mac
    if b.kind == "bind":
        _relabel_allowed(b, b.source)
    if not mac.selinux_enabled():
        raise SbxError(f"-v {b.source}:{b.target}:{b.relabel}: SELinux is not enabled on this host, so there is no "
                       f"label to give; drop :{b.relabel}", where="-v")
    se = mac.libselinux()
    if se is None:
        raise SbxError(f"-v {b.source}:{b.relabel}: relabelling needs the libselinux Python bindings (python3-selinux)",
                       where="-v")
    level = "s0"
    if b.relabel == "Z":
        ctx = getattr(mac_plan, "selinux_context", None)
        if not ctx or ctx.count(":") < 3:
            raise SbxError(f"-v {b.source}:Z: the sandbox has no SELinux label of its own (the profile turns SELinux "
                           "off); use :z", where="-v")
        level = ctx.split(":", 3)[3]
    return f"system_u:object_r:{FILE_TYPE}:{level}"


def _relabel(hp, b, mac_plan) -> None:
    """`:z` (shared, s0) / `:Z` (this sandbox's categories): sbx_file_t on the source and everything below it."""
    from . import mac
    label = _relabel_check(b, mac_plan)
    _relabel_allowed(b, hp.path)  # where the path really led
    se = mac.libselinux()
    try:
        for dfd, name, _ in _walk(hp):
            if dfd is None:
                se.setfilecon(name, label)  # the root, through its /proc/self/fd link (followed: the inode itself)
            else:
                se.lsetfilecon(f"/proc/self/fd/{dfd}/{name}", label)  # never a planted symlink's target
    except OSError as e:
        raise SbxError(f"-v {b.source}:{b.relabel}: cannot relabel to {label}: {e.strerror}", where="-v") from None
