"""A container's security posture, normalised: the only input checks see.

Two producers: `subject_from_facts` (audit: what the kernel says a live container
has) and `subject_from_spec` (admission: what a sandbox built from a Spec WILL
have). Because checks read only a Subject, the same catalogue serves both.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from sandbox import facts, posture

# Paths runtimes mask in /proc and /sys (Docker/podman/runc defaults). Checked only
# where the kernel actually has them.
PROC_MASKS = ("/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug", "/proc/latency_stats",
              "/proc/acpi", "/proc/scsi", "/sys/firmware")
# Device nodes every runtime gives a container: (kind, major, minor); minor None = any.
SAFE_DEVICES = {("c", 1, 3), ("c", 1, 5), ("c", 1, 7), ("c", 1, 8), ("c", 1, 9), ("c", 5, 0), ("c", 5, 1),
                ("c", 5, 2), ("c", 136, None), ("c", 10, 229), ("c", 10, 200)}
UNLIMITED = 1 << 62  # v1 prints 9223372036854771712 for "no memory limit"


@dataclass(frozen=True)
class Obj:
    """Owner and mode of a file as the host sees it, stat'ed inside the container's root.

    Whether a process can really use it (open a socket, write release_agent or a
    sysctl, open a device) is decided from these and the process's host
    credentials (audit.predicates.can_access), because that is what the kernel does.
    """

    path: str
    uid: int
    gid: int
    mode: int  # permission bits (S_IMODE)


def obj_of(path: str, st: os.stat_result | None) -> Obj | None:
    import stat as _stat
    return None if st is None else Obj(path, st.st_uid, st.st_gid, _stat.S_IMODE(st.st_mode))


@dataclass(frozen=True)
class SocketView:
    """A host runtime API socket visible through a mount."""

    runtime: str
    path: str  # where inside the container
    obj: Obj | None = None  # owner/mode (connect(2) needs write permission on it)


@dataclass(frozen=True)
class MountView:
    source: str  # host path for a bind mount, else the fs source ("overlay", "proc", ...)
    target: str
    readonly: bool
    fstype: str
    shared: bool  # shared propagation WITH THE HOST (a host mount is in the same peer group)
    bind: bool  # a host path made visible (source is that path)
    runtime_socket: str | None = None  # runtime name when a host runtime socket is reachable here
    socket_path: str | None = None  # where inside the container that socket is
    inherited: bool = False  # the very same mount the host has at the same place (a tree on the host's root)
    socket_obj: Obj | None = None  # owner/mode of that socket (connect(2) needs write permission on it)
    mask: bool = False  # read-only bind of an empty file/directory: hides a path, exposes nothing
    same_place: bool = False  # a host path shown at its own path in a tree on the host's root
    nodev: bool = False
    sockets: tuple[SocketView, ...] = ()  # every runtime socket reachable through this mount (first: runtime_socket)

    def all_sockets(self) -> tuple[SocketView, ...]:
        if self.sockets:
            return self.sockets
        return (SocketView(self.runtime_socket, self.socket_path or self.target, self.socket_obj),) \
            if self.runtime_socket else ()


@dataclass(frozen=True)
class Device:
    path: str
    kind: str
    major: int
    minor: int
    uid: int | None = None  # None: unknown (admission), judged reachable
    gid: int | None = None
    mode: int | None = None


@dataclass(frozen=True)
class CgroupMount:
    target: str
    version: int  # 1 or 2
    readonly: bool
    dir: Obj | None = None  # the mounted cgroup directory (write = manage that cgroup)
    release_agent: Obj | None = None  # v1 hierarchy root only


@dataclass
class Subject:
    """Everything the checks judge. None means "unknown" (not read / not applicable).

    Identity has two views: `uid`/`gid` are the ids INSIDE the process's user
    namespace (what `id` prints in the container; what policies' uid ranges mean),
    `host_uid`/`host_gid`/`host_groups` are the same credentials as the host sees
    them (what the kernel checks host objects against). `root_maps_host_root` is
    true when ANY id of the namespace maps to host uid 0: whoever can become that
    id is host root.
    """

    name: str = ""
    runtime: str = ""
    # identity
    uid: int | None = None  # effective uid inside the container's user namespace
    gid: int | None = None
    host_uid: int | None = None  # effective uid as the host sees it
    host_gid: int | None = None
    host_fsuid: int | None = None  # what file permission checks use (normally == host_uid)
    host_groups: frozenset[int] = frozenset()  # fsgid, egid and supplementary groups, host ids
    uid_map: tuple[tuple[int, int, int], ...] = ()  # (inside, host, count)
    gid_map: tuple[tuple[int, int, int], ...] = ()
    userns: bool = False  # own user namespace
    root_maps_host_root: bool = False  # some id inside maps to host uid 0
    # capabilities (names without CAP_)
    cap_eff: frozenset[str] = frozenset()
    cap_prm: frozenset[str] = frozenset()
    cap_bnd: frozenset[str] = frozenset()
    cap_amb: frozenset[str] = frozenset()
    cap_all: frozenset[str] = frozenset()  # every cap this kernel has
    no_new_privs: bool | None = None
    seccomp: int | None = None  # 0 off, 1 strict, 2 filter
    lsm_label: str | None = None
    mac_enabled: bool | None = None  # does the host run a labelling LSM at all
    host_namespaces: frozenset[str] = frozenset()  # kinds shared with the host
    mounts: tuple[MountView, ...] = ()  # the visible ones (covered mounts are left out)
    mounts_complete: bool = True  # False: the mount table was larger than sbx reads
    proc_mounted: bool = True
    proc_masks_missing: tuple[str, ...] = ()
    proc_sys_writable: bool | None = None  # /proc/sys mounted read-write (procfs)
    proc_sys_obj: Obj | None = None  # a global sysctl (kernel/core_pattern) inside, when mounted rw
    sysfs_writable: bool | None = None
    sysfs_obj: Obj | None = None  # a sysfs knob inside, when mounted rw
    root_readonly: bool | None = None
    root_is_host_root: bool = False
    cgroupfs_writable: tuple[str, ...] = ()  # mountpoints of cgroup fs mounted rw inside
    cgroup_v1_release_agent: bool = False  # a rw v1 hierarchy (release_agent escape)
    cgroup_mounts: tuple[CgroupMount, ...] = ()
    devices: tuple[Device, ...] | None = ()
    dev_mounts: tuple[tuple[str, bool], ...] = ()  # (mountpoint, nodev) of mounts at or under /dev, deepest first
    devices_cgroup_all: bool | None = None  # v1 devices.list "a *:* rwm"
    memory_limit: int | None = None  # bytes; None unlimited
    pids_limit: int | None = None
    cpu_limit: float | None = None  # cpus (quota/period); None unlimited
    processes: tuple[str, ...] = ()
    listeners_all_interfaces: tuple[str, ...] = ()  # "tcp/0.0.0.0:22"
    network: str | None = None  # "host", "private", "none", "loopback", "bridge"
    published_ports: tuple[str, ...] = ()  # "0.0.0.0:8080->80/tcp" ("0.0.0.0:8080/tcp": container port unknown)
    kernel: str = ""
    # the image, where known: the reference used, the image's other names, pinned = by digest or full id
    image: str | None = None
    image_names: tuple[str, ...] = ()
    image_pinned: bool = False
    evidence: dict = field(default_factory=dict)


def kernel_tuple(release: str) -> tuple[int, int]:
    parts = []
    for p in release.split(".")[:2]:
        num = "".join(ch for ch in p if ch.isdigit()) or "0"
        parts.append(int(num[:6]))
    while len(parts) < 2:
        parts.append(0)
    return parts[0], parts[1]


def _names(mask: int) -> frozenset[str]:
    return frozenset(facts.caps_to_names(mask))


def all_caps() -> frozenset[str]:
    return frozenset(facts.CAP_NAMES[:facts.cap_last() + 1])


# --- audit path --------------------------------------------------------------

class _Cache:
    """Per-scan caches: many containers share cgroup ancestors and net namespaces."""

    def __init__(self) -> None:
        self.cg: dict[str, str | None] = {}
        self.listeners: dict[int, list[facts.Listener]] = {}
        self.kernel_files: dict[tuple[str, str], bool] = {}  # (fstype, fs-relative path) -> exists
        self.objs: dict[tuple[str, str], Obj | None] = {}  # (device, fs-relative path) -> owner/mode
        self.devices: dict = {}
        self.device_views: dict = {}

    def value(self, path: str) -> str | None:
        if path not in self.cg:
            self.cg[path] = facts.read_cgroup_value(path)
        return self.cg[path]


def _cg_dir(host, cgroups: list[facts.CgroupEntry], controller: str) -> str | None:
    for e in cgroups:
        if controller in e.controllers or (controller == "" and not e.controllers):
            mnt = host.cgroup_mounts.get(controller)
            if mnt is None:
                return None
            mp, root = mnt
            rel = e.path
            if root != "/" and rel.startswith(root):
                rel = rel[len(root):]
            return mp.rstrip("/") + "/" + rel.strip("/") if rel.strip("/") else mp
    return None


def _ancestors(d: str, top: str):
    while True:
        yield d
        if d.rstrip("/") == top.rstrip("/") or "/" not in d.strip("/"):
            return
        d = d.rsplit("/", 1)[0]


def _min_limit(host, cache: _Cache, cgroups, controller: str, fname: str, parse) -> int | float | None:
    """Tightest limit on the path from the container's cgroup up to the hierarchy root."""
    d = _cg_dir(host, cgroups, controller)
    if d is None:
        return None
    top = host.cgroup_mounts[controller][0]
    best = None
    for a in _ancestors(d, top):
        v = parse(cache.value(f"{a}/{fname}"))
        if v is not None and (best is None or v < best):
            best = v
    return best


def _int_or_none(text: str | None) -> int | None:
    if text is None or text == "max":
        return None
    try:
        v = int(text)
    except ValueError:
        return None
    return None if v >= UNLIMITED or v < 0 else v


def _v2_cpu(text: str | None) -> float | None:
    if not text:
        return None
    q, _, p = text.partition(" ")
    if q == "max":
        return None
    try:
        return int(q) / int(p or 100000)
    except (ValueError, ZeroDivisionError):
        return None


def _limits(host, cache: _Cache, cgroups) -> tuple[int | None, int | None, float | None, bool | None]:
    mem = pids = None
    cpu = None
    devall = None
    if "memory" in host.cgroup_mounts:
        mem = _min_limit(host, cache, cgroups, "memory", "memory.limit_in_bytes", _int_or_none)
    elif "" in host.cgroup_mounts:
        mem = _min_limit(host, cache, cgroups, "", "memory.max", _int_or_none)
    if "pids" in host.cgroup_mounts:
        pids = _min_limit(host, cache, cgroups, "pids", "pids.max", _int_or_none)
    elif "" in host.cgroup_mounts:
        pids = _min_limit(host, cache, cgroups, "", "pids.max", _int_or_none)
    if "cpu" in host.cgroup_mounts:
        d = _cg_dir(host, cgroups, "cpu")
        if d is not None:
            top = host.cgroup_mounts["cpu"][0]
            for a in _ancestors(d, top):
                q = _int_or_none(cache.value(f"{a}/cpu.cfs_quota_us"))
                if q:
                    p = _int_or_none(cache.value(f"{a}/cpu.cfs_period_us")) or 100000
                    c = q / p
                    cpu = c if cpu is None else min(cpu, c)
    elif "" in host.cgroup_mounts:
        d = _cg_dir(host, cgroups, "")
        if d is not None:
            for a in _ancestors(d, host.cgroup_mounts[""][0]):
                c = _v2_cpu(cache.value(f"{a}/cpu.max"))
                if c is not None:
                    cpu = c if cpu is None else min(cpu, c)
    if "devices" in host.cgroup_mounts:
        d = _cg_dir(host, cgroups, "devices")
        if d is not None:
            txt = cache.value(f"{d}/devices.list")
            if txt is not None:
                devall = any(line.strip() == "a *:* rwm" for line in txt.splitlines())
    return mem, pids, cpu, devall


class _View:
    """The container's own mount view: visible mounts, and which one a path lies on."""

    def __init__(self, mounts: list[facts.Mount]):
        self.mounts = mounts
        self.at: dict[str, facts.Mount] = {}
        for m in mounts:
            self.at[m.mountpoint] = m  # visible mounts: at most one per path (the later one wins)

    def containing(self, path: str) -> facts.Mount | None:
        p = path
        while True:
            m = self.at.get(p)
            if m is not None:
                return m
            if p == "/":
                return None
            p = p.rsplit("/", 1)[0] or "/"


def _fs_relative(m: facts.Mount, path: str) -> str:
    rest = path[len(m.mountpoint.rstrip("/")):] if m.mountpoint != "/" else path
    return (m.root.rstrip("/") + rest) or "/"


# Kernel files whose write is a host-wide knob: one per filesystem, the first that exists is judged.
SYSCTL_KNOB = "/proc/sys/kernel/core_pattern"
SYSFS_KNOBS = ("/sys/kernel/uevent_helper", "/sys/kernel/profiling", "/sys/power/state", "/sys/kernel/mm")
_KERNEL_FS = {"/proc": "proc", "/sys": "sysfs"}


def _masks_missing(view: _View, pid: int, cache: _Cache) -> list[str]:
    """Which of PROC_MASKS the process can really open: judged in ITS mount view, never the host's.

    A path is masked when a mount covers it (podman's /dev/null and tmpfs, firejail's
    empty files), or when what holds it is not the kernel's procfs/sysfs (a tmpfs, no
    /sys at all). Otherwise it is missing when the kernel's filesystem has it; that
    answer depends only on the filesystem type and the path inside it, so it is
    looked up once per scan -- inside this container's root.
    """
    out = []
    for p in PROC_MASKS:
        if p in view.at:
            continue
        top = "/" + p.split("/")[1]
        m = view.containing(p)
        if m is None or m.fstype != _KERNEL_FS.get(top):
            continue
        key = (m.fstype, _fs_relative(m, p))
        if key not in cache.kernel_files:
            cache.kernel_files[key] = facts.stat_in_root(pid, p) is not None
        if cache.kernel_files[key]:
            out.append(p)
    return out


def _empty_object(pid: int, path: str) -> bool:
    """An empty regular file or an empty directory at `path` inside pid's root (a mask).

    Opened with O_DIRECTORY or O_PATH only: a device node is never opened for real.
    """
    import stat as _stat
    try:
        fd = facts.open_in_root(pid, path, os.O_RDONLY | os.O_DIRECTORY)
    except NotADirectoryError:
        st = facts.stat_in_root(pid, path)
        return st is not None and _stat.S_ISREG(st.st_mode) and st.st_size == 0
    except OSError:
        return False
    try:
        with os.scandir(fd) as it:
            return next(iter(it), None) is None
    except OSError:
        return False
    finally:
        os.close(fd)


_SYNTHETIC_FS = ("proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2", "overlay", "devtmpfs")


def _mount_views(view: _View, host, pid: int, root_is_host: bool) -> list[MountView]:
    out = []
    host_keys = host.mount_keys()
    peers = host.peer_groups()
    sock_by_dev: dict[str, list] = {}
    for s in host.sockets:
        sock_by_dev.setdefault(s.mount_dev, []).append(s)
    for m in view.mounts:
        hp = host.host_path(m) if m.fstype not in _SYNTHETIC_FS else None
        socks: list[SocketView] = []
        for s in sock_by_dev.get(m.dev, ()):
            r = m.root.rstrip("/")
            if s.fs_path == m.root or s.fs_path.startswith(r + "/"):
                inside = m.mountpoint.rstrip("/") + s.fs_path[len(r):] if s.fs_path != m.root else m.mountpoint
                st = facts.stat_in_root(pid, inside)
                # Same device+inode inside the container as the host's listening socket.
                if st is not None and st.st_ino == s.ino and st.st_dev == s.dev:
                    socks.append(SocketView(s.runtime, inside, obj_of(inside, st)))
        first = socks[0] if socks else None
        sock, sock_at, sock_obj = (first.runtime, first.path, first.obj) if first else (None, None, None)
        inherited = (m.dev, m.root, m.mountpoint) in host_keys
        bind = hp is not None and not inherited
        mask = bind and m.readonly and sock is None and _empty_object(pid, m.mountpoint)
        group = m.peer_group
        out.append(MountView(
            source=hp if hp is not None else (m.source or m.fstype),
            target=m.mountpoint, readonly=m.readonly, fstype=m.fstype,
            shared=group is not None and group in peers,
            bind=bind, runtime_socket=sock, socket_path=sock_at,
            inherited=inherited, socket_obj=sock_obj, mask=mask,
            same_place=bind and root_is_host and hp == m.mountpoint, nodev=m.nodev, sockets=tuple(socks),
        ))
    return out


def _obj(view: _View, pid: int, path: str, cache: _Cache) -> Obj | None:
    """Owner/mode of `path` in pid's view. Looked up inside its root, once per (filesystem, path in it):
    many trees inherit the host's /sys and cgroup mounts, where the same path is the same file."""
    m = view.containing(path)
    key = (m.dev, _fs_relative(m, path)) if m is not None else None
    if key is not None and key in cache.objs:
        o = cache.objs[key]
        return None if o is None else Obj(path, o.uid, o.gid, o.mode)
    o = obj_of(path, facts.stat_in_root(pid, path))
    if key is not None:
        cache.objs[key] = o
    return o


def _first_obj(view: _View, pid: int, paths, cache: _Cache) -> Obj | None:
    for p in paths:
        o = _obj(view, pid, p, cache)
        if o is not None:
            return o
    return None


def _proto(p: str) -> str:
    return "udp" if p.startswith("udp") else "tcp"


def _published(forwarders: list[int], declared: list[dict], cache: _Cache) -> tuple[str, ...]:
    """Ports a forwarder process (conmon, sbx's proxy, rootlessport) listens on for the container.

    The listening sockets are the truth (what is reachable); the runtime's declared
    mapping only adds the container-side port where it names the same host address.
    """
    out: set[str] = set()
    want = {}
    for d in declared:
        try:
            want[(str(d.get("host_ip") or "0.0.0.0"), int(d["host_port"]), str(d.get("proto") or "tcp"))] = \
                int(d["container_port"])
        except (KeyError, TypeError, ValueError):
            continue
    for f in forwarders[:8]:
        try:
            ns = facts.read_ns(f, ("net",)).get("net", 0)
            if ns not in cache.listeners:
                cache.listeners[ns] = facts.read_listeners(f)
            mine = facts.read_socket_inodes(f)
        except (facts.ProcessGone, OSError):
            continue
        for x in cache.listeners[ns]:
            if x.inode not in mine:
                continue
            proto = _proto(x.proto)
            addr = f"[{x.address}]" if ":" in x.address else x.address
            cport = want.get((x.address, x.port, proto))
            if cport is None and x.address == "::":
                cport = want.get(("0.0.0.0", x.port, proto))
            out.add(f"{addr}:{x.port}->{cport}/{proto}" if cport is not None else f"{addr}:{x.port}/{proto}")
    return tuple(sorted(out))


def _ids(entries: list[facts.IdMapEntry]) -> tuple[tuple[int, int, int], ...]:
    return tuple((e.inside, e.outside, e.count) for e in entries)


def subject_from_facts(pfacts: facts.ProcFacts, host, comms: list[str] | None = None,
                       name: str = "", runtime: str = "", group_pids: list[int] | None = None,
                       cache: _Cache | None = None, mounts_complete: bool = True,
                       forwarders: list[int] | None = None, declared_ports: list[dict] | None = None) -> Subject:
    """What the kernel says about a live container, judged against `host` (audit.hostinfo.HostInfo).

    Every path is looked at in the process's own mount view (its mountinfo, its
    /proc/PID/root), never at the host's paths.
    """
    cache = cache or _Cache()
    st = pfacts.status
    pid = pfacts.pid
    # The one posture model (sandbox.posture): identity in and out of the user namespace,
    # capabilities, no_new_privs, seccomp, label and shared namespaces, as verify reads them.
    pos = posture.observed(pfacts, reference_ns=host.ns)
    ident = pos.identity
    shared = pos.shared_namespaces
    userns = ident.own_userns
    host_uid, host_gid, uid, gid = ident.host_uid, ident.host_gid, ident.uid, ident.gid
    root_host = ident.maps_host_root() if (pfacts.uid_map or not userns) else False
    view = _View(facts.visible_mounts(pfacts.mounts))
    root_m = view.at.get("/")
    host_keys = host.mount_keys()
    root_is_host = root_m is not None and (root_m.dev, root_m.root, "/") in host_keys
    mounts = _mount_views(view, host, pid, root_is_host)
    by_target = {m.target: m for m in mounts}
    proc = by_target.get("/proc")
    proc_mounted = proc is not None and proc.fstype == "proc"
    missing = _masks_missing(view, pid, cache) if proc_mounted else []
    proc_sys_rw = None
    proc_sys_obj = None
    if proc_mounted:
        ps = view.containing("/proc/sys")
        proc_sys_rw = ps is not None and ps.fstype == "proc" and not ps.readonly
        if proc_sys_rw:
            proc_sys_obj = _first_obj(view, pid, (SYSCTL_KNOB,), cache)
    sysm = view.at.get("/sys")
    sys_rw = None if sysm is None else (sysm.fstype == "sysfs" and not sysm.readonly)
    sysfs_obj = _first_obj(view, pid, SYSFS_KNOBS, cache) if sys_rw else None
    root = by_target.get("/")
    cgm = []
    for m in view.mounts:
        if m.fstype not in ("cgroup", "cgroup2"):
            continue
        v1 = m.fstype == "cgroup"
        d = ra = None
        if not m.readonly:
            d = _obj(view, pid, m.mountpoint, cache)
            if v1:
                ra = _obj(view, pid, m.mountpoint.rstrip("/") + "/release_agent", cache)
        cgm.append(CgroupMount(m.mountpoint, 1 if v1 else 2, m.readonly, d, ra))
    cg_rw = tuple(c.target for c in cgm if not c.readonly)
    v1_rw = any(c.version == 1 and not c.readonly for c in cgm)
    mem, pids, cpu, devall = _limits(host, cache, pfacts.cgroups)
    devs = facts.list_devices(pid, cache=cache.devices)
    if devs is None:
        devices = None
    else:
        # Containers on the same /dev share one listing object: convert (and judge) it once.
        devices = cache.device_views.get(id(devs))
        if devices is None:
            devices = tuple(Device(d.path, d.kind, d.major, d.minor, d.uid, d.gid, d.mode) for d in devs)
            cache.device_views[id(devs)] = devices
    dev_mounts = tuple(sorted(((m.mountpoint, m.nodev) for m in view.mounts
                               if m.mountpoint == "/dev" or m.mountpoint.startswith("/dev/") or m.mountpoint == "/"),
                              key=lambda x: -len(x[0])))
    # Listening sockets matter where they are exposed: in the host's network namespace (read
    # once per scan, cached), narrowed to the sockets this container's processes hold. A private
    # netns is reachable only through published ports; its tables are not read, because
    # /proc/PID/net/tcp walks the kernel's whole connection hash (~10 ms each on a busy host).
    lst: list[facts.Listener] = []
    if "net" in shared:
        net_ino = pfacts.ns.get("net", 0)
        if net_ino not in cache.listeners:
            try:
                cache.listeners[net_ino] = facts.read_listeners(pid)
            except (facts.ProcessGone, OSError):
                cache.listeners[net_ino] = []
        mine: set[int] = set()
        for p in (group_pids or [pid])[:64]:
            try:
                mine |= facts.read_socket_inodes(p)
            except (facts.ProcessGone, OSError):
                continue
        lst = [x for x in cache.listeners[net_ino] if x.inode in mine]
    listeners = tuple(sorted({f"{x.proto}/{x.address}:{x.port}" for x in lst if x.all_interfaces}))
    published = _published(forwarders or [], declared_ports or [], cache) if forwarders else ()
    return Subject(
        name=name, runtime=runtime,
        uid=uid, gid=gid, host_uid=host_uid, host_gid=host_gid, host_fsuid=st.uid[3],
        host_groups=frozenset(st.groups) | {st.gid[1], st.gid[3]},
        uid_map=_ids(pfacts.uid_map), gid_map=_ids(pfacts.gid_map),
        userns=userns, root_maps_host_root=root_host,
        cap_eff=_names(st.cap_eff), cap_prm=_names(st.cap_prm), cap_bnd=_names(st.cap_bnd),
        cap_amb=_names(st.cap_amb), cap_all=host.cap_bnd or all_caps(),
        no_new_privs=None if st.no_new_privs is None else bool(st.no_new_privs),
        seccomp=st.seccomp, lsm_label=pfacts.lsm_label, mac_enabled=host.mac_enabled,
        host_namespaces=shared, mounts=tuple(mounts), mounts_complete=mounts_complete, proc_mounted=proc_mounted,
        proc_masks_missing=tuple(missing), proc_sys_writable=proc_sys_rw, proc_sys_obj=proc_sys_obj,
        sysfs_writable=sys_rw, sysfs_obj=sysfs_obj,
        root_readonly=None if root is None else root.readonly, root_is_host_root=root_is_host,
        cgroupfs_writable=cg_rw, cgroup_v1_release_agent=v1_rw, cgroup_mounts=tuple(cgm),
        devices=devices, dev_mounts=dev_mounts, devices_cgroup_all=devall,
        memory_limit=mem, pids_limit=pids, cpu_limit=cpu,
        processes=tuple(sorted(set(comms or []))),
        listeners_all_interfaces=listeners,
        network="host" if "net" in shared else "private",
        published_ports=published,
        kernel=host.kernel,
        evidence={"pid": pid, "nspid": list(st.nspid), "uid_map": [(e.inside, e.outside, e.count) for e in pfacts.uid_map]},
    )


# --- admission path ----------------------------------------------------------

def subject_from_spec(spec, kernel: str | None = None, mac_enabled: bool | None = None, name: str = "") -> Subject:
    """What a sandbox launched from `spec` (sandbox.spec.Spec) will look like.

    Built from the same functions launch uses, not from copies of its logic:
    sandbox.posture.planned (identity, capabilities, no_new_privs, seccomp,
    namespaces), sandbox.mounts.planned (the mount plan) and sandbox.mac
    (the label). sbx never maps an id to host root, mounts a fresh /proc with
    the Spec's masks and /proc/sys read-only, a minimal /dev, and no cgroupfs.
    """
    from sandbox import mac
    from sandbox import mounts as sbx_mounts

    sec = spec.security
    fs = spec.filesystem
    pos = posture.planned(spec)
    plan = sbx_mounts.planned(spec)
    from .hostinfo import find_runtime_sockets
    host_socks = []
    try:
        host_socks = find_runtime_sockets(facts.read_mountinfo("self"))
    except (facts.ProcessGone, OSError):
        pass
    views = []
    for pm in plan.mounts:
        if not pm.bind:
            if pm.target == "/":
                views.append(MountView(source=pm.source, target="/", readonly=pm.readonly, fstype="rootfs",
                                       shared=False, bind=False))
            continue
        sock = None
        try:
            st = os.stat(pm.source)
            for s_ in host_socks:
                # A bind of the socket itself or of a directory above it: same object either way.
                if (st.st_dev, st.st_ino) == (s_.dev, s_.ino) or (
                        os.path.isdir(pm.source) and s_.path.startswith(os.path.realpath(pm.source).rstrip("/") + "/")):
                    sock = s_.runtime
        except OSError:
            pass
        views.append(MountView(source=pm.source, target=pm.target, readonly=pm.readonly, fstype="bind",
                               shared=False, bind=True, runtime_socket=sock,
                               socket_path=pm.target if sock else None))
    masks = set(fs.masked_paths)
    missing = tuple(p for p in PROC_MASKS if p not in masks and os.path.exists(p))
    r = spec.resources
    cpu = r.cpus if r.cpus and r.cpus > 0 else None
    mem = r.memory if r.memory and r.memory > 0 else None
    pids = r.pids_limit if r.pids_limit and r.pids_limit > 0 else None
    ports = tuple(f"{p.host_ip or '0.0.0.0'}:{p.host_port}->{p.container_port}/{p.proto}" for p in spec.ports)
    ident = pos.identity
    return Subject(
        name=name, runtime="sbx",
        uid=ident.uid, gid=ident.gid, host_uid=None, userns=ident.own_userns,
        root_maps_host_root=False,  # sbx never maps an id to host root (verify refuses otherwise)
        cap_eff=_names(pos.caps["CapEff"]), cap_prm=_names(pos.caps["CapPrm"]), cap_bnd=_names(pos.caps["CapBnd"]),
        cap_amb=_names(pos.caps["CapAmb"]), cap_all=all_caps(),
        no_new_privs=pos.no_new_privs, seccomp=pos.seccomp,
        lsm_label=mac.planned_label(sec), mac_enabled=mac_enabled,
        host_namespaces=pos.shared_namespaces, mounts=tuple(views), proc_mounted=True,
        proc_masks_missing=missing, proc_sys_writable="/proc/sys" not in plan.readonly_paths,
        sysfs_writable=False,
        root_readonly=plan.root_readonly, root_is_host_root=False,
        cgroupfs_writable=(), cgroup_v1_release_agent=False, devices=(), devices_cgroup_all=False,
        memory_limit=mem, pids_limit=pids, cpu_limit=cpu,
        processes=(os.path.basename(spec.argv[0]),) if spec.argv else (),
        listeners_all_interfaces=(), network=spec.network,
        image=spec.image.ref if spec.image is not None else None,
        image_names=tuple(spec.image.names) if spec.image is not None else (),
        image_pinned=bool(spec.image.pinned) if spec.image is not None else False,
        published_ports=ports, kernel=kernel if kernel is not None else facts.kernel_release(),
    )
