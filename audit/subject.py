"""A container's security posture, normalised: the only input checks see.

Two producers: `subject_from_facts` (audit: what the kernel says a live container
has) and `subject_from_spec` (admission: what a sandbox built from a Spec WILL
have). Because checks read only a Subject, the same catalogue serves both.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from sandbox import facts

# Paths runtimes mask in /proc and /sys (Docker/podman/runc defaults). Checked only
# where the kernel actually has them.
PROC_MASKS = ("/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug", "/proc/latency_stats",
              "/proc/acpi", "/proc/scsi", "/sys/firmware")
# Device nodes every runtime gives a container: (kind, major, minor); minor None = any.
SAFE_DEVICES = {("c", 1, 3), ("c", 1, 5), ("c", 1, 7), ("c", 1, 8), ("c", 1, 9), ("c", 5, 0), ("c", 5, 1),
                ("c", 5, 2), ("c", 136, None), ("c", 10, 229), ("c", 10, 200)}
SHM_DIRS = ("/dev/shm", "/dev/mqueue", "/dev/pts", "/tmp", "/run", "/var/tmp")
UNLIMITED = 1 << 62  # v1 prints 9223372036854771712 for "no memory limit"


@dataclass(frozen=True)
class MountView:
    source: str  # host path for a bind mount, else the fs source ("overlay", "proc", ...)
    target: str
    readonly: bool
    fstype: str
    shared: bool
    bind: bool  # a host path made visible (source is that path)
    runtime_socket: str | None = None  # runtime name when a host runtime socket is reachable here
    socket_path: str | None = None  # where inside the container that socket is
    inherited: bool = False  # the very same mount the host has at the same place (a tree on the host's root)


@dataclass(frozen=True)
class Device:
    path: str
    kind: str
    major: int
    minor: int


@dataclass
class Subject:
    """Everything the checks judge. None means "unknown" (not read / not applicable)."""

    name: str = ""
    runtime: str = ""
    # identity
    uid: int | None = None  # effective uid inside
    gid: int | None = None
    host_uid: int | None = None  # that uid as the host sees it
    userns: bool = False  # own user namespace
    root_maps_host_root: bool = False  # uid 0 inside is host uid 0
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
    mounts: tuple[MountView, ...] = ()
    proc_mounted: bool = True
    proc_masks_missing: tuple[str, ...] = ()
    proc_sys_writable: bool | None = None
    sysfs_writable: bool | None = None
    root_readonly: bool | None = None
    root_is_host_root: bool = False
    cgroupfs_writable: tuple[str, ...] = ()  # mountpoints of cgroup fs mounted rw inside
    cgroup_v1_release_agent: bool = False  # a rw v1 hierarchy (release_agent escape)
    devices: tuple[Device, ...] | None = ()
    devices_cgroup_all: bool | None = None  # v1 devices.list "a *:* rwm"
    memory_limit: int | None = None  # bytes; None unlimited
    pids_limit: int | None = None
    cpu_limit: float | None = None  # cpus (quota/period); None unlimited
    processes: tuple[str, ...] = ()
    listeners_all_interfaces: tuple[str, ...] = ()  # "tcp/0.0.0.0:22"
    network: str | None = None  # "host", "private", "none", "loopback", "bridge"
    published_ports: tuple[str, ...] = ()  # "0.0.0.0:8080->80/tcp"
    kernel: str = ""
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
        self.proc_exists: dict[str, bool] = {}
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


def _mount_views(pfacts: facts.ProcFacts, host, pid: int) -> list[MountView]:
    out = []
    host_keys = host.mount_keys()
    sock_by_dev: dict[str, list] = {}
    for s in host.sockets:
        sock_by_dev.setdefault(s.mount_dev, []).append(s)
    for m in pfacts.mounts:
        hp = host.host_path(m) if m.fstype not in ("proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup",
                                                    "cgroup2", "overlay", "devtmpfs") else None
        sock = sock_at = None
        for s in sock_by_dev.get(m.dev, ()):
            r = m.root.rstrip("/")
            if s.fs_path == m.root or s.fs_path.startswith(r + "/"):
                inside = m.mountpoint.rstrip("/") + s.fs_path[len(r):] if s.fs_path != m.root else m.mountpoint
                st = facts.stat_in_root(pid, inside)
                # Same device+inode inside the container as the host's listening socket.
                if st is not None and st.st_ino == s.ino and st.st_dev == s.dev:
                    sock, sock_at = s.runtime, inside
                    break
        inherited = (m.dev, m.root, m.mountpoint) in host_keys
        out.append(MountView(
            source=hp if hp is not None else (m.source or m.fstype),
            target=m.mountpoint, readonly=m.readonly, fstype=m.fstype, shared=m.shared,
            bind=hp is not None and not inherited, runtime_socket=sock, socket_path=sock_at,
            inherited=inherited,
        ))
    return out


def subject_from_facts(pfacts: facts.ProcFacts, host, comms: list[str] | None = None,
                       name: str = "", runtime: str = "", group_pids: list[int] | None = None,
                       cache: _Cache | None = None) -> Subject:
    """What the kernel says about a live container, judged against `host` (audit.hostinfo.HostInfo)."""
    cache = cache or _Cache()
    st = pfacts.status
    pid = pfacts.pid
    shared = frozenset(k for k in ("pid", "net", "ipc", "uts", "user", "cgroup", "mnt")
                       if k in pfacts.ns and pfacts.ns.get(k) == host.ns.get(k))
    userns = "user" not in shared
    euid = st.uid[1]
    host_uid = facts.outside_id(pfacts.uid_map, euid) if pfacts.uid_map else None
    root_host = facts.outside_id(pfacts.uid_map, 0) == 0 if pfacts.uid_map else False
    host_keys = host.mount_keys()
    mounts = _mount_views(pfacts, host, pid)
    by_target = {}
    for m in mounts:
        by_target[m.target] = m  # last mounted wins, as in the kernel
    proc = by_target.get("/proc")
    proc_mounted = proc is not None and proc.fstype == "proc"
    missing: list[str] = []
    if proc_mounted:
        for p in PROC_MASKS:
            if p not in by_target:
                if p not in cache.proc_exists:
                    cache.proc_exists[p] = os.path.exists(p)
                if cache.proc_exists[p]:
                    missing.append(p)
    ps = by_target.get("/proc/sys")
    proc_sys_rw = None
    if proc_mounted:
        proc_sys_rw = not (ps.readonly if ps is not None else proc.readonly)
    sysm = by_target.get("/sys")
    sys_rw = None if sysm is None else (sysm.fstype == "sysfs" and not sysm.readonly)
    root = by_target.get("/")
    root_m = pfacts.mount_at("/")
    root_is_host = root_m is not None and (root_m.dev, root_m.root, "/") in host_keys
    cg_rw = tuple(m.target for m in mounts if m.fstype in ("cgroup", "cgroup2") and not m.readonly)
    v1_rw = any(m.fstype == "cgroup" and not m.readonly for m in mounts)
    mem, pids, cpu, devall = _limits(host, cache, pfacts.cgroups)
    devs = facts.list_devices(pid, cache=cache.devices)
    if devs is None:
        devices = None
    else:
        # Containers on the same /dev share one listing object: convert (and judge) it once.
        devices = cache.device_views.get(id(devs))
        if devices is None:
            devices = tuple(Device(d.path, d.kind, d.major, d.minor) for d in devs)
            cache.device_views[id(devs)] = devices
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
    return Subject(
        name=name, runtime=runtime,
        uid=euid, gid=st.gid[1], host_uid=host_uid, userns=userns, root_maps_host_root=root_host,
        cap_eff=_names(st.cap_eff), cap_prm=_names(st.cap_prm), cap_bnd=_names(st.cap_bnd),
        cap_amb=_names(st.cap_amb), cap_all=host.cap_bnd or all_caps(),
        no_new_privs=None if st.no_new_privs is None else bool(st.no_new_privs),
        seccomp=st.seccomp, lsm_label=pfacts.lsm_label, mac_enabled=host.mac_enabled,
        host_namespaces=shared, mounts=tuple(mounts), proc_mounted=proc_mounted,
        proc_masks_missing=tuple(missing), proc_sys_writable=proc_sys_rw, sysfs_writable=sys_rw,
        root_readonly=None if root is None else root.readonly, root_is_host_root=root_is_host,
        cgroupfs_writable=cg_rw, cgroup_v1_release_agent=v1_rw,
        devices=devices, devices_cgroup_all=devall,
        memory_limit=mem, pids_limit=pids, cpu_limit=cpu,
        processes=tuple(sorted(set(comms or []))),
        listeners_all_interfaces=listeners,
        network="host" if "net" in shared else "private",
        kernel=host.kernel,
        evidence={"pid": pid, "nspid": list(st.nspid), "uid_map": [(e.inside, e.outside, e.count) for e in pfacts.uid_map]},
    )


# --- admission path ----------------------------------------------------------

def subject_from_spec(spec, kernel: str | None = None, mac_enabled: bool | None = None) -> Subject:
    """What a sandbox launched from `spec` (sandbox.spec.Spec) will look like.

    sbx always creates user, pid, mount, net, uts, ipc and cgroup namespaces and
    never maps an id to host root; it mounts a fresh /proc with the Spec's masks
    and /proc/sys read-only, a minimal /dev, and no cgroupfs.
    """
    sec = spec.security
    fs = spec.filesystem
    caps = frozenset(c.upper().removeprefix("CAP_") for c in sec.capabilities)
    mounts = [MountView(source=fs.rootfs or "host-view", target="/", readonly=fs.read_only, fstype="rootfs",
                        shared=False, bind=False)]
    from .hostinfo import find_runtime_sockets, read_host  # noqa: F401 - sockets matter for binds
    host_socks = []
    try:
        host_socks = find_runtime_sockets(facts.read_mountinfo("self"))
    except (facts.ProcessGone, OSError):
        pass
    if fs.rootfs is None:
        # host-view root: read-only binds of the host's system directories (sandbox.mounts.HOST_TOP).
        for top in ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"):
            path = "/" + top
            if os.path.isdir(path) and not os.path.islink(path):
                mounts.append(MountView(source=path, target=path, readonly=True, fstype="bind",
                                        shared=False, bind=True))
        for name in fs.etc_files:
            path = os.path.join("/etc", name.strip("/"))
            # Directories are bound read-only, files copied (sandbox.mounts): only binds are mounts.
            if ".." not in name.split("/") and os.path.isdir(path) and not os.path.islink(path):
                mounts.append(MountView(source=path, target=path, readonly=True, fstype="bind",
                                        shared=False, bind=True))
    for b in fs.binds:
        sock = None
        try:
            st = os.stat(b.source)
            for s in host_socks:
                # A bind of the socket itself or of a directory above it: same object either way.
                if (st.st_dev, st.st_ino) == (s.dev, s.ino) or (
                        os.path.isdir(b.source) and s.path.startswith(os.path.realpath(b.source).rstrip("/") + "/")):
                    sock = s.runtime
        except OSError:
            pass
        mounts.append(MountView(source=os.path.normpath(b.source), target=b.target, readonly=b.readonly,
                                fstype="bind", shared=False, bind=True, runtime_socket=sock,
                                socket_path=b.target if sock else None))
    masks = set(fs.masked_paths)
    missing = tuple(p for p in PROC_MASKS if p not in masks and os.path.exists(p))
    label = None
    if sec.selinux_type:
        label = f"system_u:system_r:{sec.selinux_type}:s0"
    elif sec.apparmor_profile:
        label = f"{sec.apparmor_profile} (enforce)"
    r = spec.resources
    cpu = r.cpus if r.cpus and r.cpus > 0 else None
    mem = r.memory if r.memory and r.memory > 0 else None
    pids = r.pids_limit if r.pids_limit and r.pids_limit > 0 else None
    ports = tuple(f"{p.host_ip or '0.0.0.0'}:{p.host_port}->{p.container_port}/{p.proto}" for p in spec.ports)
    return Subject(
        name=spec.name or "", runtime="sbx",
        uid=spec.uid, gid=spec.gid, host_uid=None, userns=True, root_maps_host_root=False,
        # Docker's semantics (sandbox.caps.drop): the kept set is effective for uid 0 only.
        cap_eff=caps if spec.uid == 0 else frozenset(), cap_prm=caps if spec.uid == 0 else frozenset(),
        cap_bnd=caps, cap_amb=frozenset(),
        cap_all=all_caps(),
        no_new_privs=sec.no_new_privs, seccomp=0 if sec.seccomp == "unconfined" else 2,
        lsm_label=label, mac_enabled=mac_enabled,
        host_namespaces=frozenset(), mounts=tuple(mounts), proc_mounted=True,
        proc_masks_missing=missing, proc_sys_writable="/proc/sys" not in fs.readonly_paths,
        sysfs_writable=False,
        root_readonly=fs.read_only, root_is_host_root=False,
        cgroupfs_writable=(), cgroup_v1_release_agent=False, devices=(), devices_cgroup_all=False,
        memory_limit=mem, pids_limit=pids, cpu_limit=cpu,
        processes=(os.path.basename(spec.argv[0]),) if spec.argv else (),
        listeners_all_interfaces=(), network=spec.network,
        published_ports=ports, kernel=kernel if kernel is not None else facts.kernel_release(),
    )
