"""What the host looks like, read once per scan: its namespaces, its mounts, its runtime sockets.

Container facts are judged against this: a namespace is "shared with the host"
when its inode equals pid 1's; a bind mount's host path is found by matching the
mount's device and root against the host's own mount table; a propagation peer
group is the host's only when a host mount is in it; a runtime socket is
recognised inside a container by device+inode, never by its name, and a runtime
API socket is found where the engine really listens (any path: the listening
process's open sockets), not only at the standard paths.
"""
from __future__ import annotations

import glob
import os
import stat
from dataclasses import dataclass, field

from sandbox import facts

# Where engines put their API sockets. Names only seed the search: containers are
# matched against the (st_dev, st_ino) of what is really listening here.
RUNTIME_SOCKETS: tuple[tuple[str, str], ...] = (
    ("docker", "/run/docker.sock"),
    ("docker", "/var/run/docker.sock"),
    ("docker", "/run/user/*/docker.sock"),
    ("containerd", "/run/containerd/containerd.sock"),
    ("containerd", "/run/k3s/containerd/containerd.sock"),
    ("containerd", "/run/containerd/containerd.sock.ttrpc"),
    ("cri-o", "/run/crio/crio.sock"),
    ("cri-o", "/var/run/crio/crio.sock"),
    ("cri-dockerd", "/run/cri-dockerd.sock"),
    ("podman", "/run/podman/podman.sock"),
    ("podman", "/run/user/*/podman/podman.sock"),
    ("buildkit", "/run/buildkit/buildkitd.sock"),
    ("buildkit", "/run/user/*/buildkit/buildkitd.sock"),
    ("lxd", "/var/snap/lxd/common/lxd/unix.socket"),
    ("lxd", "/var/lib/lxd/unix.socket"),
    ("incus", "/var/lib/incus/unix.socket"),
    ("sbx", "/run/sbx/sbx.sock"),
)


# Engines whose listening unix sockets are API sockets: process name -> runtime.
RUNTIME_DAEMONS: dict[str, str] = {
    "dockerd": "docker", "containerd": "containerd", "podman": "podman", "crio": "cri-o",
    "buildkitd": "buildkit", "cri-dockerd": "cri-dockerd", "lxd": "lxd", "incusd": "incus",
}


@dataclass(frozen=True)
class RuntimeSocket:
    runtime: str
    path: str
    dev: int
    ino: int
    mount_dev: str  # "major:minor" as mountinfo prints it
    fs_path: str  # the socket's path relative to its filesystem's root (mountinfo "root" space)


@dataclass
class HostInfo:
    ns: dict[str, int]
    mounts: list[facts.Mount]
    sockets: list[RuntimeSocket]
    kernel: str
    lsms: list[str]
    cgroup_mounts: dict[str, tuple[str, str]]
    cap_bnd: frozenset[str] = frozenset()  # what a privileged container can get: the host init's bounding set
    extra_sockets: list[str] = field(default_factory=list)

    def peer_groups(self) -> set[int]:
        """Propagation peer groups host mounts are in (shared:N) or receive from (master:N)."""
        got = self.__dict__.get("_peers")
        if got is None:
            got = self.__dict__["_peers"] = {g for m in self.mounts for g in (m.peer_group, m.master)
                                             if g is not None}
        return got

    def add_daemon_sockets(self, table: dict[int, tuple[int, str, int]]) -> None:
        """Add the API sockets engines listen on, wherever they are (table: pid -> (ppid, comm, start))."""
        seen = {(s.dev, s.ino) for s in self.sockets}
        for s in find_daemon_sockets(table, self.mounts, self.ns):
            if (s.dev, s.ino) not in seen:
                seen.add((s.dev, s.ino))
                self.sockets.append(s)

    def mount_keys(self) -> set[tuple[str, str, str]]:
        """(dev, root, mountpoint) of every host mount, to spot mounts a tree merely inherited."""
        keys = self.__dict__.get("_keys")
        if keys is None:
            keys = self.__dict__["_keys"] = {(m.dev, m.root, m.mountpoint) for m in self.mounts}
        return keys

    def host_path(self, m: facts.Mount) -> str | None:
        """The host path a container's bind mount shows, or None (overlay, tmpfs, proc...)."""
        best = None
        for hm in self.mounts:
            if hm.dev != m.dev:
                continue
            r = hm.root.rstrip("/")
            if m.root == hm.root or m.root.startswith(r + "/"):
                if best is None or len(hm.root) > len(best.root):
                    best = hm
        if best is None:
            return None
        rel = m.root[len(best.root.rstrip("/")):]
        base = best.mountpoint.rstrip("/")
        return (base + rel) or "/"

    @property
    def mac_enabled(self) -> bool | None:
        """Is an LSM that labels processes (AppArmor/SELinux/Smack) active? None: unknown."""
        if self.lsms:
            return any(x in self.lsms for x in ("apparmor", "selinux", "smack"))
        if os.path.exists("/sys/kernel/security/apparmor") or os.path.exists("/sys/fs/selinux/enforce"):
            return True
        return None


def _socket_fs_path(path: str, st: os.stat_result, mounts: list[facts.Mount]) -> tuple[str, str]:
    dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    best = None
    for m in mounts:
        mp = m.mountpoint.rstrip("/")
        if m.dev == dev and (path == m.mountpoint or path.startswith(mp + "/")):
            if best is None or len(m.mountpoint) > len(best.mountpoint):
                best = m
    if best is None:
        return dev, path
    rel = path[len(best.mountpoint.rstrip("/")):]
    return dev, (best.root.rstrip("/") + rel) or "/"


def find_runtime_sockets(mounts: list[facts.Mount], extra: list[str] = ()) -> list[RuntimeSocket]:
    out: list[RuntimeSocket] = []
    seen: set[tuple[int, int]] = set()
    for runtime, pattern in list(RUNTIME_SOCKETS) + [("custom", p) for p in extra]:
        for path in sorted(glob.glob(pattern)) if "*" in pattern else [pattern]:
            try:
                st = os.stat(path)  # the host's own paths: following the host's symlinks is fine
            except OSError:
                continue
            if not stat.S_ISSOCK(st.st_mode) or (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            dev, fs_path = _socket_fs_path(os.path.realpath(path), st, mounts)
            out.append(RuntimeSocket(runtime, path, st.st_dev, st.st_ino, dev, fs_path))
    return out


def _is_api_daemon(pid: int, comm: str) -> bool:
    if comm != "podman":
        return True
    # The podman CLI is short-lived; only `podman system service` serves the API.
    try:
        argv = facts.read_cmdline(pid, 4096)
    except (facts.ProcessGone, OSError):
        return False
    return "service" in argv


def find_daemon_sockets(table: dict[int, tuple[int, str, int]], host_mounts: list[facts.Mount],
                        host_ns: dict[str, int]) -> list[RuntimeSocket]:
    """API sockets recognised by the process listening on them (dockerd, containerd, podman service...)."""
    out: list[RuntimeSocket] = []
    tables: dict[int, list[facts.UnixListener]] = {}
    for pid, (_, comm, _) in table.items():
        runtime = RUNTIME_DAEMONS.get(comm)
        if runtime is None or not _is_api_daemon(pid, comm):
            continue
        try:
            mine = facts.read_socket_inodes(pid)
            netns = facts.read_ns(pid, ("net", "mnt"))
            if netns.get("net", 0) not in tables:
                tables[netns.get("net", 0)] = facts.read_unix_listeners(pid)
            mounts = host_mounts if netns.get("mnt") == host_ns.get("mnt") else facts.read_mountinfo(pid)
        except (facts.ProcessGone, OSError):
            continue
        for lst in tables[netns.get("net", 0)]:
            if lst.inode not in mine or not lst.path.startswith("/"):
                continue  # not this daemon's, or abstract (no file to bind into a container)
            st = facts.stat_in_root(pid, lst.path)
            if st is None or not stat.S_ISSOCK(st.st_mode):
                continue
            dev, fs_path = _socket_fs_path(lst.path, st, mounts)
            out.append(RuntimeSocket(runtime, lst.path, st.st_dev, st.st_ino, dev, fs_path))
    return out


def reference_pid() -> int | str:
    """Whose namespaces are "the host's": pid 1, or kthreadd when pid 1 hides its ns links.

    Kernel threads always live in the initial namespaces, so kthreadd (pid 2) is a
    faithful stand-in when pid 1 is not ptrace-readable (seen on hardened hosts).
    """
    for pid in (1, 2):
        try:
            if pid == 2 and facts.read_comm(2) != "kthreadd":
                continue
            if facts.read_ns(pid):
                return pid
        except (facts.ProcessGone, OSError):
            continue
    return "self"


def _host_bounding() -> frozenset[str]:
    for pid in (1, "self"):
        try:
            return frozenset(facts.caps_to_names(facts.read_status(pid).cap_bnd))
        except (facts.ProcessGone, OSError):
            continue
    return frozenset(facts.CAP_NAMES[:facts.cap_last() + 1])


def read_host(extra_sockets: list[str] = ()) -> HostInfo:
    """The reference view: the reference pid's namespaces; pid 1's mount table (ours as a fallback)."""
    ref = reference_pid()
    try:
        ns = facts.read_ns(ref)
    except facts.ProcessGone:
        ns = {}
    mounts: list[facts.Mount] = []
    for mp in (1, "self"):
        try:
            mounts = facts.read_mountinfo(mp)
        except (facts.ProcessGone, OSError):
            continue
        if mounts:
            break
    return HostInfo(
        ns=ns,
        mounts=mounts,
        sockets=find_runtime_sockets(mounts, list(extra_sockets)),
        kernel=facts.kernel_release(),
        lsms=facts.active_lsms(),
        cgroup_mounts=facts.cgroup_mounts("self"),
        cap_bnd=_host_bounding(),
        extra_sockets=list(extra_sockets),
    )
