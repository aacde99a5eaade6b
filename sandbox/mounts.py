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
* image: an overlay of the image's layers (from sbx's store, shared by every
  sandbox of the image, never copied), each an idmapped read-only mount made by
  sbx through this sandbox's user namespace, so files keep their image owners
  inside while each sandbox has its own host id range; upper layer a private
  tmpfs (tmp_size when the profile wants a writable root). `userxattr`: the
  layers' opaque directories are user.overlay.opaque (sandbox.image.unpack).

Both get: tmpfs /tmp (size-capped), fresh /proc with Docker's masked and
read-only paths, minimal /dev, optional read-only /sys, -v binds.

A --rootfs (and later an image) is attacker-controlled: its `tmp` may be a
symlink to `../../..`, its `dev` a symlink to `/`. So no mount here is ever made
by a path string. Every target is opened inside the new root with
openat2(RESOLVE_IN_ROOT) (intermediate symlinks stay inside the root), its last
component without following a symlink; a target that is a symlink, or that
resolves to the root itself, is refused with the entry's name. Mounts are then
made on that fd (/proc/self/fd/N for new filesystems, move_mount of a detached
tree for binds), which is what runc's securejoin and crun's openat2 code do.

Bind sources are cloned (open_tree) in open_sources, before the staging tmpfs
exists, so a recursive bind of the host's /tmp (or /) can never carry the
staging mount, which holds the sandbox's writable root copies. Cloned here, in
the sandbox's own mount namespace, a tree keeps the locks the kernel put on the
host's mounts when the namespace was copied (a covered submount cannot be
unmounted to show what is beneath it, a read-only host mount stays read-only).

Idmapped mounts (idmap_tree) need CAP_SYS_ADMIN over the filesystem's own user
namespace, which only host root has: sbx idmaps the trees init cloned (it takes
them with pidfd_getfd while init waits, sandbox.volumes) or trees of its own
store that it clones itself (named volumes, the bridge's hosts directory:
`premade` in open_sources), which it makes private (no propagation to or from the
host) and which have no submounts to protect.

/sys/fs/cgroup (cgroup_namespace): once init is in the sandbox's cgroup it
unshares its cgroup namespace and mounts each hierarchy where the sandbox has
its own cgroup, read-only: v2 directly, v1 as a read-only tmpfs of one
directory per hierarchy (plus a symlink per co-mounted controller), as Docker
lays it out. The namespace root is the sandbox's cgroup, so nothing above or
beside it is visible, and a runtime (JVM, Go, Node) reads its own limits there.
"""
from __future__ import annotations

import errno
import os
import stat

from . import syscalls as sc
from .errors import SbxError
from .records import field, record
from .spec import Bind, Spec

HOST_TOP = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
             ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx"))
RO_ATTRS = sc.MOUNT_ATTR_RDONLY | sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV
RW_ATTRS = sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV
MAX_ETC_COPY = 1 << 20
STAGE_SIZE = 1 << 20  # the staging tmpfs: a --rootfs overlay's upper layer lives there
ROOT_SIZE = 4 << 20  # the host-view root tmpfs
DEV_SIZE = 65536
ROOT_SOURCE = "sbx-root"  # the fs source of the sandbox's / (verify looks for it)


@record
class Sources:
    """User-given paths, pinned before any mount changes, in the sandbox's mount ns.

    rootfs_fd: O_PATH fd of the --rootfs directory. bind_trees: for each -v, a
    detached clone (open_tree) of the source's mount subtree, taken before the
    staging tmpfs is mounted.
    """

    rootfs_fd: int | None
    bind_trees: list[tuple[Bind, int, bool]]  # (bind, detached tree fd, is_dir)
    layers: list[int] = field(default_factory=list)  # image layers bottom first: idmapped trees, or O_PATH fds
    idmapped: bool = False
    net_tree: int | None = None  # the bridge's per-sandbox hosts directory (sbx-made, read-only)

    def close(self) -> None:
        for fd in [self.rootfs_fd, self.net_tree] + [b[1] for b in self.bind_trees] + self.layers:
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.rootfs_fd = None
        self.net_tree = None
        self.bind_trees = []
        self.layers = []

    def tree_fds(self, indexes) -> list[int]:
        """The detached trees of these binds (by position in the Spec), for sbx to idmap."""
        return [self.bind_trees[i][1] for i in indexes]

def layer_trees(layers: list, userns_fd: int) -> list[int]:
    """Detached, read-only, nosuid, idmapped clones of the image's layer roots (run by sbx, host root).

    The idmapping is the sandbox's user namespace: a file the image gives uid N shows as N
    inside, whatever host id range this sandbox has. Private: a clone made in the host's mount
    namespace would otherwise stay in the peer group of a shared host mount.
    """
    from .hostpath import reopen
    out: list[int] = []
    try:
        for hp in layers:
            fd = reopen(hp, what="image layer")
            try:
                tree = sc.open_tree(fd, "", sc.OPEN_TREE_CLONE | sc.OPEN_TREE_CLOEXEC | sc.AT_EMPTY_PATH)
            finally:
                os.close(fd)
            out.append(tree)
            try:
                idmap_tree(tree, userns_fd, RO_ATTRS, recursive=False, propagation=sc.MS_PRIVATE)
            except OSError as e:
                raise SbxError(f"cannot make an idmapped mount of image layer {hp.path}: {e.strerror} (image "
                               "sandboxes need idmapped mounts: kernel >= 5.12 and a filesystem that supports "
                               "them under the store)") from None
    except BaseException:
        for fd in out:
            _close(fd)
        raise
    return out


def open_sources(spec: Spec, rootfs, binds: list, layers: list = (), layer_trees: list[int] | None = None, *,
                 premade: dict | None = None, net_tree: int | None = None) -> Sources:
    """Pin --rootfs and -v sources. Called after unshare, before the id switch and any mount.

    The paths were resolved by sbx itself (hostpath.resolve: symlink owners
    checked with host credentials); here they are opened again without following
    any symlink and must reach the same inode. (rootfs, binds: hostpath.HostPath)
    premade: bind index -> (tree fd, is_dir) that sbx cloned itself (named volumes,
    in sbx's 0700 store, which the sandbox's ids cannot reach); net_tree likewise.
    This process owns those fds from here on (Sources.close closes them).
    """
    premade = premade or {}
    srcs = Sources(None, [], net_tree=net_tree)
    if rootfs is None and not binds and not layers and layer_trees is None:
        return srcs
    from .hostpath import reopen
    try:
        if rootfs is not None:
            srcs.rootfs_fd = reopen(rootfs, what="--rootfs")
            if not rootfs.is_dir:
                raise SbxError(f"--rootfs {rootfs.given} is not a directory", where="--rootfs")
        for i, (b, hp) in enumerate(zip(spec.filesystem.binds, binds)):
            if i in premade:
                srcs.bind_trees.append((b, premade[i][0], premade[i][1]))
                continue
            fd = reopen(hp, what="-v")
            try:
                tree = sc.open_tree(fd, "", sc.OPEN_TREE_CLONE | sc.OPEN_TREE_CLOEXEC | sc.AT_RECURSIVE
                                    | sc.AT_EMPTY_PATH)
            except OSError as e:
                raise SbxError(f"cannot bind {b.source}: {e.strerror}", where="-v") from None
            finally:
                os.close(fd)
            srcs.bind_trees.append((b, tree, hp.is_dir))
        if layer_trees is not None:
            srcs.layers, srcs.idmapped = list(layer_trees), True
        else:
            # rootless: no idmapping is possible without the host's CAP_SYS_ADMIN; the store is the
            # invoker's own, its files show as the sandbox user (the single mapped id)
            for hp in layers:
                srcs.layers.append(reopen(hp, what="image layer"))
    except BaseException:
        if layer_trees is not None and not srcs.layers:
            for fd in layer_trees:
                _close(fd)
        srcs.close()
        raise
    return srcs


def _fdpath(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def _close(fd: int | None) -> None:
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass


class NewRoot:
    """The sandbox root under construction, addressed only through fds.

    `open` is the one way a path inside the root is reached: intermediate
    symlinks resolve inside the root (RESOLVE_IN_ROOT, no magic links), the last
    component is never followed, and neither a symlink nor the root itself is
    accepted as a place to mount on or write to.
    """

    def __init__(self, fd: int, where: str) -> None:
        self.fd = fd
        st = os.fstat(fd)
        self.ident = (st.st_dev, st.st_ino)
        self.where = where  # names the tree in refusals: "--rootfs /srv/r" or "sandbox root"

    def refuse(self, path: str, why: str) -> SbxError:
        return SbxError(f"/{path.strip('/')} {why}", where=self.where)

    def _at(self, dirfd: int, rel: str) -> int:
        return sc.openat2(dirfd, rel, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, 0,
                          sc.RESOLVE_IN_ROOT | sc.RESOLVE_NO_MAGICLINKS)

    def _checked(self, fd: int, path: str, want: str | None) -> int:
        st = os.fstat(fd)
        why = None
        if stat.S_ISLNK(st.st_mode):
            try:
                why = f"is a symlink (-> {os.readlink('', dir_fd=fd)}); sbx mounts or writes there and never " \
                      "follows a symlink of the root"
            except OSError:
                why = "is a symlink; sbx mounts or writes there and never follows a symlink of the root"
        elif (st.st_dev, st.st_ino) == self.ident:
            why = "resolves to the root itself"
        elif want == "dir" and not stat.S_ISDIR(st.st_mode):
            why = "is not a directory"
        elif want == "file" and stat.S_ISDIR(st.st_mode):
            why = "is a directory, not a file"
        if why is not None:
            os.close(fd)
            raise self.refuse(path, why)
        return fd

    def open(self, path: str, *, create: str | None = None, want: str | None = None) -> int:
        """O_PATH fd of `path` inside the root. create: None, "dir" or "file" (parents become dirs)."""
        rel = path.strip("/")
        if not rel:
            return os.dup(self.fd)
        parent, _, leaf = rel.rpartition("/")
        pfd = self._parent(parent, create=create is not None)
        try:
            try:
                return self._checked(self._at(pfd, leaf), path, want or create)
            except FileNotFoundError:
                if create is None:
                    raise
            dfd = sc.openat2(pfd, ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, 0, 0)
            try:
                if create == "dir":
                    try:
                        os.mkdir(leaf, 0o755, dir_fd=dfd)
                    except FileExistsError:
                        pass
                else:
                    try:
                        os.close(os.open(leaf, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                         0o644, dir_fd=dfd))
                    except FileExistsError:
                        pass
            finally:
                os.close(dfd)
            return self._checked(self._at(pfd, leaf), path, create)
        finally:
            os.close(pfd)

    def _parent(self, rel: str, *, create: bool) -> int:
        """O_PATH fd of a directory on the way to a target, each missing component created.

        No component may be a symlink: a mount lands exactly at the path the
        user named, which is also the path verification then finds it at.
        """
        fd = os.dup(self.fd)
        done = ""
        try:
            for comp in [c for c in rel.split("/") if c]:
                done += "/" + comp
                if comp == "..":
                    raise self.refuse(done, "has '..' on the way")
                try:
                    nfd = self._checked(self._at(fd, comp), done, "dir")
                except FileNotFoundError:
                    if not create:
                        raise
                    dfd = sc.openat2(fd, ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, 0, 0)
                    try:
                        os.mkdir(comp, 0o755, dir_fd=dfd)
                    except FileExistsError:
                        pass
                    finally:
                        os.close(dfd)
                    nfd = self._checked(self._at(fd, comp), done, "dir")
                os.close(fd)
                fd = nfd
            return fd
        except BaseException:
            os.close(fd)
            raise

    def dir(self, path: str) -> int:
        """A real (O_RDONLY) directory fd of `path`, for *at() calls beneath it."""
        fd = self.open(path, want="dir")
        try:
            return sc.openat2(fd, ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, 0, 0)
        finally:
            os.close(fd)

    def exists(self, path: str) -> bool:
        try:
            os.close(self._at(self.fd, path.strip("/") or "."))
            return True
        except OSError:
            return False

    def mount(self, path: str, fstype: str, source: str, flags: int, data: str | None = None, *,
              create: str | None = "dir") -> None:
        """A new filesystem on `path` (resolved inside the root), via the fd."""
        fd = self.open(path, create=create, want="dir")
        try:
            sc.mount(source, _fdpath(fd), fstype, flags, data)
        finally:
            os.close(fd)

    def attach(self, tree: int, path: str, *, create: str | None = None, want: str | None = None) -> None:
        """Move a detached mount tree (open_tree clone) onto `path`."""
        fd = self.open(path, create=create, want=want)
        try:
            sc.move_mount(tree, "", fd, "", sc.MOVE_MOUNT_F_EMPTY_PATH | sc.MOVE_MOUNT_T_EMPTY_PATH)
        finally:
            os.close(fd)

    def setattr(self, path: str, attrs: int, *, recursive: bool = False) -> None:
        fd = self.open(path)
        try:
            sc.mount_setattr(fd, "", sc.AT_EMPTY_PATH | (sc.AT_RECURSIVE if recursive else 0), attrs)
        finally:
            os.close(fd)

    def replace(self, path: str, *, data: bytes | None = None, symlink: str | None = None) -> None:
        """Put a file or symlink of sbx's at `path`, removing what the tree had there (never a directory).

        In an overlay root the removal is a whiteout in the private upper layer:
        the user's tree is not touched. Its parents are resolved like open()'s.
        """
        parent, _, leaf = path.strip("/").rpartition("/")
        dfd = self.dir(parent)
        try:
            try:
                st = os.stat(leaf, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            if st is not None:
                if stat.S_ISDIR(st.st_mode):
                    raise self.refuse(path, "is a directory; sbx puts a file there")
                os.unlink(leaf, dir_fd=dfd)
            if symlink is not None:
                os.symlink(symlink, leaf, dir_fd=dfd)
        finally:
            os.close(dfd)
        if data is not None:
            self.write(path, data)

    def write(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Create a new file inside the root (never through a symlink, never an existing file)."""
        parent, _, leaf = path.strip("/").rpartition("/")
        dfd = self.dir(parent)
        try:
            fd = os.open(leaf, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, mode,
                         dir_fd=dfd)
        except FileExistsError:
            raise self.refuse(path, "exists already; sbx only writes files it creates") from None
        finally:
            os.close(dfd)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)


def clone_tree(path_or_fd: str | int, *, recursive: bool, attrs: int, propagation: int = 0) -> int:
    """A detached copy of a mount (subtree) with `attrs` set on every mount in it.

    propagation=MS_PRIVATE for a clone made in the host's mount namespace: a
    clone of a shared mount joins its peer group, and mounts made later beneath
    it (inside the sandbox) would propagate to the host.
    """
    if isinstance(path_or_fd, int):
        tree = sc.open_tree(path_or_fd, "", sc.OPEN_TREE_CLONE | sc.OPEN_TREE_CLOEXEC | sc.AT_EMPTY_PATH
                            | (sc.AT_RECURSIVE if recursive else 0))
    else:
        tree = sc.open_tree(sc.AT_FDCWD, path_or_fd, sc.OPEN_TREE_CLONE | sc.OPEN_TREE_CLOEXEC
                            | (sc.AT_RECURSIVE if recursive else 0))
    try:
        sc.mount_setattr(tree, "", sc.AT_EMPTY_PATH | (sc.AT_RECURSIVE if recursive else 0), attrs,
                         propagation=propagation)
    except BaseException:
        os.close(tree)
        raise
    return tree


def idmap_tree(tree: int, userns_fd: int, attrs: int = 0, *, recursive: bool = True, propagation: int = 0) -> None:
    """Give a detached mount tree (an open_tree clone, not attached yet) the idmapping of userns_fd.

    Files on it then show their owners mapped through that user namespace (on-disk
    id N appears as the namespace's id N, i.e. its host id), and files created
    through it are stored with the inverse mapping (mount_setattr(2)). A mount can
    be idmapped once. Needs CAP_SYS_ADMIN over the filesystem's user namespace:
    host root (sbx), never the sandbox. Shared by -v binds, named volumes and image
    layers. OSError: EINVAL when a filesystem in the tree cannot be idmapped (or the
    tree is attached), EPERM when not privileged or already idmapped. propagation: see clone_tree.
    """
    sc.mount_setattr(tree, "", sc.AT_EMPTY_PATH | (sc.AT_RECURSIVE if recursive else 0),
                     sc.MOUNT_ATTR_IDMAP | attrs, 0, userns_fd, propagation=propagation)


def _bind_host(root: NewRoot, host: str, path: str, *, create: str, attrs: int, recursive: bool = True) -> None:
    tree = clone_tree(host, recursive=recursive, attrs=attrs)
    try:
        root.attach(tree, path, create=create)
    finally:
        os.close(tree)


def _bind_self(root: NewRoot, path: str, attrs: int) -> None:
    """Re-mount `path` (already inside the root) on itself with `attrs` (e.g. /proc/sys read-only)."""
    fd = root.open(path)
    try:
        tree = clone_tree(fd, recursive=True, attrs=attrs)
        try:
            sc.move_mount(tree, "", fd, "", sc.MOVE_MOUNT_F_EMPTY_PATH | sc.MOVE_MOUNT_T_EMPTY_PATH)
        finally:
            os.close(tree)
    finally:
        os.close(fd)


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


def _etc(root: NewRoot, spec: Spec) -> None:
    os.close(root.open("etc", create="dir"))
    # Identity files are generated, not copied: the host's user list is not the sandbox's business.
    users = {0: "root", 65534: "nobody"}
    users.setdefault(spec.uid, "sbx")
    groups = {0: "root", 65534: "nogroup"}
    groups.setdefault(spec.gid, "sbx")
    root.write("etc/passwd", "".join(
        f"{n}:x:{u}:{spec.gid if u == spec.uid else u}:{n}:/tmp:/usr/sbin/nologin\n"
        for u, n in sorted(users.items())).encode())
    root.write("etc/group", "".join(f"{n}:x:{g}:\n" for g, n in sorted(groups.items())).encode())
    root.write("etc/hostname", (spec.hostname + "\n").encode())
    _names(root, spec, fresh=True)
    etc = root.dir("etc")
    try:
        for name in spec.filesystem.etc_files:
            name = name.strip("/")
            if not name or "/" in name or name in (".", ".."):
                continue  # one entry of the host's /etc each; never a path into it
            host = os.path.join("/etc", name)
            try:
                st = os.lstat(host)
            except OSError:
                continue
            if stat.S_ISLNK(st.st_mode):
                try:
                    os.symlink(os.readlink(host), name, dir_fd=etc)
                except FileExistsError:
                    pass
            elif stat.S_ISDIR(st.st_mode):
                _bind_host(root, host, "etc/" + name, create="dir", attrs=RO_ATTRS)
            elif stat.S_ISREG(st.st_mode) and st.st_size <= MAX_ETC_COPY:
                try:
                    fd = os.open(host, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                except OSError:
                    continue  # unreadable to the sandbox's root: leave it out
                try:
                    data = os.read(fd, MAX_ETC_COPY)
                finally:
                    os.close(fd)
                try:
                    root.write("etc/" + name, data)
                except SbxError:
                    continue  # generated above (passwd, hosts, ...): ours wins
    finally:
        os.close(etc)


NET_DIR = "/run/sbx-net"  # the bridge's hosts (and resolv.conf): kept current by sbx (sandbox.netbridge)


def hosts_text(spec: Spec) -> bytes:
    """The /etc/hosts of a sandbox off the bridge: localhost, its hostname, --add-host lines."""
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback", f"127.0.1.1\t{spec.hostname}"]
    lines += [f"{ip}\t{name}" for name, ip in spec.add_hosts]
    return ("\n".join(lines) + "\n").encode()


def _names(root: NewRoot, spec: Spec, *, fresh: bool) -> None:
    """/etc/hosts and /etc/resolv.conf: sbx's own, in the generated /etc (fresh) or over a rootfs's.

    On the bridge they are symlinks into NET_DIR, a read-only bind of a directory
    sbx rewrites (by rename) as sandboxes come and go, so every sandbox resolves
    the others' names; elsewhere a static file, and only --add-host changes a rootfs's.
    """
    if spec.network != "bridge" and not (fresh or spec.add_hosts):
        return  # a rootfs keeps its own /etc/hosts
    os.close(root.open("etc", create="dir"))
    if spec.network == "bridge":
        root.replace("etc/hosts", symlink=NET_DIR + "/hosts")
        if spec.egress or spec.dns:
            root.replace("etc/resolv.conf", symlink=NET_DIR + "/resolv.conf")
    else:
        root.replace("etc/hosts", data=hosts_text(spec))


def _host_view(root: NewRoot, spec: Spec) -> None:
    top = root.dir("")
    try:
        for name in HOST_TOP:
            host = "/" + name
            try:
                st = os.lstat(host)
            except OSError:
                continue
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(host), name, dir_fd=top)
            elif stat.S_ISDIR(st.st_mode):
                _bind_host(root, host, name, create="dir", attrs=RO_ATTRS)
        for d in ("tmp", "proc", "dev", "sys", "run", "var", "home", "root"):
            os.mkdir(d, 0o755, dir_fd=top)
        os.chmod("root", 0o700, dir_fd=top)
    finally:
        os.close(top)
    _etc(root, spec)


def _mask(root: NewRoot, paths: tuple[str, ...]) -> None:
    for p in paths:
        try:
            fd = root.open(p)
        except FileNotFoundError:
            continue  # not on this kernel, or under a tree we did not mount
        except NotADirectoryError:
            continue
        try:
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                sc.mount("tmpfs", _fdpath(fd), "tmpfs", sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC,
                         "size=0,mode=0555")
            else:
                tree = clone_tree("/dev/null", recursive=False, attrs=RO_ATTRS | sc.MOUNT_ATTR_NOEXEC)
                try:
                    sc.move_mount(tree, "", fd, "", sc.MOVE_MOUNT_F_EMPTY_PATH | sc.MOVE_MOUNT_T_EMPTY_PATH)
                finally:
                    os.close(tree)
        finally:
            os.close(fd)


def _proc(root: NewRoot, spec: Spec) -> None:
    root.mount("proc", "proc", "proc", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
    for p in spec.filesystem.readonly_paths:
        if not root.exists(p):
            continue
        _bind_self(root, p, RO_ATTRS | sc.MOUNT_ATTR_NOEXEC)
    _mask(root, tuple(p for p in spec.filesystem.masked_paths if not p.startswith("/sys/")))


def _dev(root: NewRoot, spec: Spec, rootless: bool) -> None:
    root.mount("dev", "tmpfs", "tmpfs", sc.MS_NOSUID | sc.MS_NOEXEC, f"mode=0755,size={DEV_SIZE}")
    dev = root.dir("dev")  # the fresh tmpfs: nothing of the rootfs is beneath it any more
    try:
        for node in DEV_NODES:
            host = "/dev/" + node
            if not os.path.exists(host):
                continue
            os.close(os.open(node, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                             dir_fd=dev))
            _bind_host(root, host, "dev/" + node, create="file", attrs=sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NOEXEC,
                       recursive=False)
        for name, target in DEV_LINKS:
            os.symlink(target, name, dir_fd=dev)
        for d, mode in (("pts", 0o755), ("shm", 0o1777), ("mqueue", 0o755)):
            os.mkdir(d, mode, dir_fd=dev)
    finally:
        os.close(dev)
    opts = "newinstance,ptmxmode=0666,mode=0620" + ("" if rootless else ",gid=5")
    try:
        root.mount("dev/pts", "devpts", "devpts", sc.MS_NOSUID | sc.MS_NOEXEC, opts, create=None)
    except OSError:
        root.mount("dev/pts", "devpts", "devpts", sc.MS_NOSUID | sc.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620",
                   create=None)
    root.mount("dev/shm", "tmpfs", "shm", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC,
               f"mode=1777,size={spec.filesystem.shm_size}", create=None)
    try:
        root.mount("dev/mqueue", "mqueue", "mqueue", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC, create=None)
    except OSError:
        dev = root.dir("dev")
        try:
            os.rmdir("mqueue", dir_fd=dev)
        finally:
            os.close(dev)


def _binds(root: NewRoot, sources: Sources) -> None:
    for bind, tree, is_dir in sources.bind_trees:
        sc.mount_setattr(tree, "", sc.AT_EMPTY_PATH | sc.AT_RECURSIVE, RO_ATTRS if bind.readonly else RW_ATTRS)
        try:
            root.attach(tree, bind.target, create="dir" if is_dir else "file")
        except FileNotFoundError:
            raise root.refuse(bind.target, "cannot be created as a mountpoint") from None
        except OSError as e:
            raise SbxError(f"cannot bind {bind.source} to {bind.target} in the sandbox: {e.strerror}",
                           where="-v") from None


def _image_root(spec: Spec, sources: Sources, stage: str, new: str) -> NewRoot:
    """The image's layers stacked read-only under a private upper layer, mounted at `new`."""
    if len(sources.layers) != len(spec.image.layers):
        raise SbxError(f"image {spec.image.ref}: {len(sources.layers)} of {len(spec.image.layers)} layers available")
    lowers = []
    for i, fd in enumerate(sources.layers):
        if sources.idmapped:
            d = os.path.join(stage, f"l{i}")
            os.mkdir(d, 0o755)
            dfd = os.open(d, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                sc.move_mount(fd, "", dfd, "", sc.MOVE_MOUNT_F_EMPTY_PATH | sc.MOVE_MOUNT_T_EMPTY_PATH)
            finally:
                os.close(dfd)
            lowers.append(d)
        else:
            lowers.append(_fdpath(fd))
    rw = stage
    if not spec.filesystem.read_only:
        # a writable root gets its own capped tmpfs (the staging one holds only mountpoints)
        rw = os.path.join(stage, "rw")
        os.mkdir(rw, 0o755)
        sc.mount("sbx-upper", rw, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, f"mode=0755,size={spec.filesystem.tmp_size}")
    upper, work = os.path.join(rw, "upper"), os.path.join(rw, "work")
    os.mkdir(upper, 0o755)
    os.mkdir(work, 0o755)
    # overlay takes the top layer first
    sc.mount(ROOT_SOURCE, new, "overlay", sc.MS_NOSUID | sc.MS_NODEV,
             f"lowerdir={':'.join(reversed(lowers))},upperdir={upper},workdir={work},userxattr")
    return NewRoot(os.open(new, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC), f"image {spec.image.ref}")


def setup(spec: Spec, sources: Sources, *, rootless: bool) -> None:
    """Build the root, pivot into it, make it read-only. Raises SbxError on failure."""
    fs = spec.filesystem
    step = "making mounts private"
    root = None
    try:
        sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
        stage = _staging_point()
        step = f"staging tmpfs on {stage}"
        sc.mount("sbx-stage", stage, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, f"mode=0755,size={STAGE_SIZE}")
        new = os.path.join(stage, "root")
        os.mkdir(new, 0o755)
        if sources.rootfs_fd is not None:
            step = f"overlay on rootfs {fs.rootfs}"
            upper, work = os.path.join(stage, "upper"), os.path.join(stage, "work")
            os.mkdir(upper, 0o755)
            os.mkdir(work, 0o755)
            sc.mount(ROOT_SOURCE, new, "overlay", sc.MS_NOSUID | sc.MS_NODEV,
                     f"lowerdir={_fdpath(sources.rootfs_fd)},upperdir={upper},workdir={work}")
            root = NewRoot(os.open(new, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC), f"--rootfs {fs.rootfs}")
            step = "rootfs mountpoints"
            for d in ("tmp", "proc", "dev") + (("sys",) if fs.sys else ()):
                os.close(root.open(d, create="dir"))
        elif spec.image is not None:
            step = f"image {spec.image.ref}"
            root = _image_root(spec, sources, stage, new)
            step = "image mountpoints"
            for d in ("tmp", "proc", "dev") + (("sys",) if fs.sys else ()):
                os.close(root.open(d, create="dir"))
            if spec.cwd.strip("/") and not root.exists(spec.cwd):
                os.close(root.open(spec.cwd, create="dir"))  # Docker creates a missing WorkingDir
        else:
            step = "root tmpfs"
            sc.mount(ROOT_SOURCE, new, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, f"mode=0755,size={ROOT_SIZE}")
            root = NewRoot(os.open(new, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC), "sandbox root")
            step = "host-view binds"
            _host_view(root, spec)
        step = "/tmp"
        root.mount("tmp", "tmpfs", "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, f"mode=1777,size={fs.tmp_size}")
        step = "/proc"
        _proc(root, spec)
        step = "/dev"
        _dev(root, spec, rootless)
        if fs.sys:
            step = "/sys"
            root.mount("sys", "sysfs", "sysfs", sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
            _mask(root, tuple(p for p in fs.masked_paths if p.startswith("/sys/")))
        if fs.rootfs is not None:
            step = "/etc/hosts"
            _names(root, spec, fresh=False)
        if sources.net_tree is not None:
            step = NET_DIR
            root.attach(sources.net_tree, NET_DIR, create="dir")
        if spec.resources.requested():
            step = "/sys/fs/cgroup"
            os.close(root.open("sys/fs/cgroup", create="dir"))  # mounted by cgroup_namespace, after the pivot
        step = "binds"
        _binds(root, sources)
        step = "/dev read-only"
        root.setattr("dev", sc.MOUNT_ATTR_RDONLY | sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NOEXEC)
        step = "pivot_root"
        os.fchdir(root.fd)
        sc.pivot_root(".", ".")
        sc.umount2(".", sc.MNT_DETACH)
        os.chdir("/")
        if fs.read_only:
            step = "read-only root"
            sc.mount_setattr(sc.AT_FDCWD, "/", 0, sc.MOUNT_ATTR_RDONLY | sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV)
    except SbxError:
        raise
    except OSError as e:
        if e.errno == errno.EPERM and step == "/proc":
            raise SbxError("cannot mount a fresh /proc (is this host's /proc partly masked, e.g. inside a container?)") from None
        raise _fail(step, e) from None
    finally:
        if root is not None:
            _close(root.fd)
        sources.close()


def _own_cgroups(sandbox_id: str) -> list:
    """The hierarchies (facts.CgroupEntry) where this process is in the sandbox's own cgroup (…/sbx/<id>)."""
    from . import facts
    from .cgroups.base import PARENT
    tail = f"/{PARENT}/{sandbox_id}"
    return [e for e in facts.read_cgroup("self") if e.path == tail or e.path.endswith(tail)]


def cgroup_namespace(spec: Spec, sandbox_id: str) -> None:
    """Unshare the cgroup namespace (rooted at the sandbox's cgroup) and mount /sys/fs/cgroup from it.

    Runs in init after the pivot, once sbx has put it in the sandbox's cgroup.
    Only hierarchies where the sandbox has a cgroup of its own are mounted: in
    any other, the namespace root would be the caller's cgroup, with its siblings.
    """
    from . import namespaces
    own = _own_cgroups(sandbox_id) if spec.resources.requested() else []
    namespaces.unshare_cgroup()
    if not own:
        return
    flags = sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC
    root = NewRoot(os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC), "sandbox root")
    try:
        v1 = [e for e in own if e.controllers]
        if not v1:
            root.mount("sys/fs/cgroup", "cgroup2", "cgroup2", flags, create=None)
            return
        root.mount("sys/fs/cgroup", "tmpfs", "tmpfs", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC,
                   "mode=0755,size=64k,nr_inodes=256", create=None)
        top = root.dir("sys/fs/cgroup")
        try:
            for e in v1:
                name = ",".join(e.controllers)
                os.mkdir(name, 0o755, dir_fd=top)
                for c in e.controllers if len(e.controllers) > 1 else ():
                    os.symlink(name, c, dir_fd=top)  # cpu -> cpu,cpuacct, as Docker and systemd lay it out
        finally:
            os.close(top)
        for e in v1:
            root.mount("sys/fs/cgroup/" + ",".join(e.controllers), "cgroup", "cgroup", flags,
                       ",".join(e.controllers), create=None)
        root.setattr("sys/fs/cgroup", RO_ATTRS | sc.MOUNT_ATTR_NOEXEC)
    except OSError as e:
        raise _fail("/sys/fs/cgroup", e) from None
    finally:
        _close(root.fd)


def writable_places(spec: Spec) -> list[dict]:
    """Where the workload can write and how much (for --explain): sbx's own places are capped tmpfs;
    binds and volumes are host storage sbx does not cap (the host filesystem's quotas apply)."""
    fs = spec.filesystem
    out: list[dict] = [{"path": "/tmp", "kind": "tmpfs", "cap_bytes": fs.tmp_size},
           {"path": "/dev/shm", "kind": "tmpfs", "cap_bytes": fs.shm_size},
           {"path": "/dev/mqueue", "kind": "mqueue", "cap_bytes": None,
            "note": "POSIX message queues: bounded by the msgqueue rlimit and the kernel's queue limits"}]
    if fs.read_only:
        out.append({"path": "/", "kind": "read-only", "cap_bytes": 0})
    elif spec.image is not None:
        out.append({"path": "/", "kind": "overlay upper layer (tmpfs)", "cap_bytes": fs.tmp_size,
                    "note": "writes land in a private layer above the image's, never in the store"})
    elif fs.rootfs is not None:
        out.append({"path": "/", "kind": "overlay upper layer (tmpfs)", "cap_bytes": STAGE_SIZE,
                    "note": f"writes to {fs.rootfs} land in a private layer, never in the directory"})
    else:
        out.append({"path": "/", "kind": "tmpfs", "cap_bytes": ROOT_SIZE})
    for b in fs.binds:
        if not b.readonly:
            out.append({"path": b.target, "kind": "volume" if b.kind == "volume" else "host bind",
                        "cap_bytes": None, "source": b.source,
                        "note": "host storage: not capped by sbx (the host filesystem's space and quotas apply)"})
    return out


@record(frozen=True)
class PlannedMount:
    target: str
    source: str  # a host path for binds, else the filesystem ("tmpfs", "proc", ...)
    readonly: bool
    bind: bool  # a host path made visible


@record(frozen=True)
class MountPlan:
    """Where this sandbox gets mounts (what setup() makes), for verify and for admission's posture."""

    mounts: tuple[PlannedMount, ...]
    exact: frozenset[str]  # every mountpoint sbx makes
    trees: tuple[str, ...]  # recursive binds: submounts below these are the host's own ("/usr/")
    root_readonly: bool
    readonly_paths: tuple[str, ...]  # /proc paths made read-only
    masked_paths: tuple[str, ...]
    binds: tuple[tuple[str, bool], ...]  # (target, readonly) of -v binds
    host_root_binds: frozenset[str]  # bind targets whose source is the host's / (asked for)

    def differences(self, mounts, pid: int, checked: list[str] | None = None) -> list[tuple[str, str]]:
        """(control, problem) for every way the workload's mount table differs from the plan.

        What a hostile root filesystem breaks when a mount is misplaced: the host's
        mount tree stacked around the sandbox's root (`/..` is the host's /), or a
        tmpfs over the host root. No mount may expose the host's root file system
        at its top either, unless a bind asked for exactly that.
        """
        out: list[tuple[str, str]] = []
        if checked is not None:
            checked.extend(("root mount", "mount table", "host root not mounted", "fresh /proc", "masked paths")
                           + (("read-only root",) if self.root_readonly else ())
                           + (("read-only /proc/sys",) if "/proc/sys" in self.readonly_paths else ())
                           + tuple(f"bind {t}" for t, _ in self.binds))

        def at(path: str):
            found = None
            for m in mounts:
                if m.mountpoint == path:
                    found = m
            return found

        roots = [m for m in mounts if m.mountpoint == "/"]
        if not (len(roots) == 1 and roots[0].source == ROOT_SOURCE):
            out.append(("root mount", f"expected one {ROOT_SOURCE} mount at /, found "
                        + (", ".join(f"{m.fstype} {m.source}" for m in roots) or "none")))
        stray = [m.mountpoint for m in mounts if m.mountpoint not in self.exact
                 and not m.mountpoint.startswith(self.trees)]
        if stray:
            out.append(("mount table", f"mounts sbx did not make: {', '.join(stray[:5])}"
                        + (f" (+{len(stray) - 5} more)" if len(stray) > 5 else "")))
        st = os.stat("/")
        host_root = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
        exposed = [m.mountpoint for m in mounts if m.dev == host_root and m.root == "/"
                   and m.mountpoint not in self.host_root_binds]
        if exposed:
            out.append(("host root not mounted", f"the host's root file system is mounted at {', '.join(exposed[:5])}"))
        root = at("/")
        if self.root_readonly and not (root is not None and root.readonly):
            out.append(("read-only root", "root is writable"))
        if "/proc/sys" in self.readonly_paths:
            sysm = at("/proc/sys")
            if not (sysm is not None and sysm.readonly):
                out.append(("read-only /proc/sys", "/proc/sys is writable"))
        proc = at("/proc")
        if not (proc is not None and proc.fstype == "proc"):
            out.append(("fresh /proc", "no proc mount at /proc"))
        for p in self.masked_paths:
            if p.startswith("/proc/") and at(p) is None and facts_exists_in(pid, p):
                out.append((f"masked path {p}", "not masked"))
        for target, ro in self.binds:
            m = at(target)
            if m is None:
                out.append((f"bind {target}", "missing"))
            elif m.readonly != ro:
                out.append((f"bind {target}", f"is {'ro' if m.readonly else 'rw'}, wanted {'ro' if ro else 'rw'}"))
        return out


def facts_exists_in(pid: int, path: str) -> bool:
    """Does `path` exist in the workload's view? Only /proc paths are asked, and that /proc is ours."""
    from . import facts
    return facts.stat_in_root(pid, path) is not None


def planned(spec: Spec) -> MountPlan:
    """The mounts setup() will make for `spec` (host-view tops and /etc binds as this host has them)."""
    fs = spec.filesystem
    root = fs.rootfs or (f"image:{spec.image.ref}" if spec.image is not None else "host-view")
    ms = [PlannedMount("/", root, fs.read_only, False),
          PlannedMount("/tmp", "tmpfs", False, False), PlannedMount("/proc", "proc", False, False),
          PlannedMount("/dev", "tmpfs", True, False)]
    exact = {"/", "/tmp", "/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue"}
    exact.update("/dev/" + n for n in DEV_NODES)
    exact.update(p for p in fs.readonly_paths + fs.masked_paths if p.startswith("/proc/"))
    trees = []
    if fs.sys:
        exact.add("/sys")
        exact.update(p for p in fs.masked_paths if p.startswith("/sys/"))
        ms.append(PlannedMount("/sys", "sysfs", True, False))
    if fs.rootfs is None and spec.image is None:
        for name in HOST_TOP:
            host = "/" + name
            if os.path.isdir(host) and not os.path.islink(host):
                trees.append(host)
                ms.append(PlannedMount(host, host, True, True))
        for name in fs.etc_files:
            name = name.strip("/")
            host = "/etc/" + name
            if name and "/" not in name and os.path.isdir(host) and not os.path.islink(host):
                trees.append(host)
                ms.append(PlannedMount(host, host, True, True))
    for b in fs.binds:
        trees.append(b.target)
        if b.kind == "volume":
            # sbx's own data (sandbox.volumes), not a host path: as a PVC is not a hostPath
            ms.append(PlannedMount(b.target, f"volume:{b.source}", b.readonly, False))
        else:
            ms.append(PlannedMount(b.target, os.path.normpath(b.source), b.readonly, True))
    if spec.network == "bridge":
        exact.add(NET_DIR)
        ms.append(PlannedMount(NET_DIR, "sbx-net", True, False))  # sbx's hosts file, rewritten by sbx
    if spec.resources.requested():
        trees.append("/sys/fs/cgroup")  # one mount (v2) or a tmpfs with one per hierarchy (v1)
        ms.append(PlannedMount("/sys/fs/cgroup", "cgroup", True, False))
    exact.update(trees)
    return MountPlan(
        mounts=tuple(ms), exact=frozenset(exact), trees=tuple(t.rstrip("/") + "/" for t in trees),
        root_readonly=fs.read_only, readonly_paths=fs.readonly_paths, masked_paths=fs.masked_paths,
        binds=tuple((b.target, b.readonly) for b in fs.binds),
        host_root_binds=frozenset(b.target for b in fs.binds if os.path.realpath(b.source) == "/"),
    )


def expected_mountpoints(spec: Spec) -> tuple[frozenset[str], tuple[str, ...]]:
    """(every mountpoint sbx makes, prefixes whose submounts are expected): planned(spec)'s view."""
    mp = planned(spec)
    return mp.exact, mp.trees
