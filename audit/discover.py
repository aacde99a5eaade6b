"""Find the containers on this host by walking /proc once.

A container is a group of processes that a runtime owns -- by its cgroup
(libpod-<id>, docker-<id>.scope, ...), by the runtime's own state (runc's
/run/runc/ID/state.json, crun's /run/crun/ID/status), or by the runtime monitor
it descends from (conmon's `-c ID -n NAME`, systemd-nspawn) -- or, with no
runtime recognised, a tree of processes in namespaces that differ from pid 1's
("namespaced process tree"). A container sharing every namespace with the host is
found by the first two; a bare tree by the last.

Per process we read only stat, the ns links and cgroup; full facts are read later
for the process each group is judged by: the most privileged of its workload
processes. Runtime helpers (bwrap's and firejail's in-sandbox parents, conmon,
nspawn, catatonit) are recognised by the file they execute (device and inode of
the host's binary), never by the name a process gives itself, so a workload
cannot hide by calling itself "bwrap". Processes that vanish mid-scan are skipped.
"""
from __future__ import annotations

import itertools
import json
import os
import re
import shutil
from dataclasses import dataclass, field

from sandbox import facts, namespaces
from sandbox.errors import SbxError

# Kinds compared to decide "namespaced". time ns rarely differs and is not isolation.
GROUP_NS = namespaces.PROC_NAMES  # the kinds a container may have of its own

# Reaping inits that only forward signals. Only a tie-break: a process named so is still
# judged when it is the most privileged one (the name is the process's own choice).
MINIMAL_INITS = frozenset({"sbx-init", "tini", "tini-static", "catatonit", "dumb-init", "docker-init"})

# Runtime helpers and monitors, identified by the host binary they execute.
HELPER_BINARIES = ("bwrap", "firejail", "systemd-nspawn", "conmon", "catatonit")
HELPER_DIRS = ("/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin", "/usr/libexec/podman", "/usr/lib/podman")
# Processes outside a container that hold its published ports (the port forwarder).
FORWARDER_COMMS = frozenset({"conmon", "sbx-supervisor", "rootlessport", "docker-proxy"})

MAX_JUDGED = 256  # statuses read per container to find its most privileged process
MAX_STATES = 4096  # runtime state files read per scan

_HEX64 = r"([0-9a-f]{64})"
# (runtime, regex over a cgroup path); group 1 is the container id (or name).
CGROUP_PATTERNS: tuple[tuple[str, re.Pattern], ...] = (
    ("sbx", re.compile(r"(?:^|/)sbx/([A-Za-z0-9][A-Za-z0-9_.-]{0,127})(?:/|$)")),
    ("sbx", re.compile(r"(?:^|/)sbx-([A-Za-z0-9][A-Za-z0-9_.-]{0,127})\.scope(?:/|$)")),
    ("podman", re.compile(r"libpod-(?!conmon-)" + _HEX64 + r"(?:\.scope)?(?:/|$)")),
    ("docker", re.compile(r"docker-" + _HEX64 + r"\.scope(?:/|$)")),
    ("docker", re.compile(r"(?:^|/)docker/" + _HEX64 + r"(?:/|$)")),
    ("containerd", re.compile(r"cri-containerd-" + _HEX64 + r"\.scope(?:/|$)")),
    ("cri-o", re.compile(r"crio-(?!conmon-)" + _HEX64 + r"(?:\.scope)?(?:/|$)")),
    ("kubernetes", re.compile(r"kubepods[^/]*/(?:.*/)?(?:[^/]*-)?" + _HEX64 + r"(?:\.scope)?(?:/|$)")),
    ("lxc", re.compile(r"(?:^|/)lxc\.payload\.([^/]+)")),
    ("lxc", re.compile(r"(?:^|/)lxc/([^/]+)")),
    ("nspawn", re.compile(r"machine\.slice/(?:machine-|systemd-nspawn@)([^/]+?)(?:\.scope|\.service)(?:/|$)")),
)
_POD_UID = re.compile(r"kubepods[^/]*/(?:.*/)?[^/]*pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}")  # runc/crun container ids (and names we accept)


@dataclass(frozen=True)
class Attribution:
    runtime: str
    id: str
    pod_uid: str | None = None
    name: str | None = None


def attribute(cgroup_path: str) -> Attribution | None:
    """Runtime and container id from one cgroup path, or None when no runtime is recognised."""
    pod = _POD_UID.search(cgroup_path)
    pod_uid = pod.group(1).replace("_", "-") if pod else None
    for runtime, rx in CGROUP_PATTERNS:
        m = rx.search(cgroup_path)
        if m:
            ident = m.group(1)
            if runtime == "nspawn":
                ident = ident.replace("\\x2d", "-")
            if pod_uid is not None and runtime in ("containerd", "cri-o", "docker", "kubernetes"):
                return Attribution("kubernetes", ident, pod_uid)
            return Attribution(runtime, ident, pod_uid)
    return None


def _cgroup_path(entries: list[facts.CgroupEntry]) -> str:
    """The most telling path: v2 unified, else name=systemd, else the first v1 hierarchy."""
    by = {",".join(e.controllers): e.path for e in entries}
    for key in ("", "name=systemd", "memory", "pids"):
        if key in by and by[key] not in ("", "/"):
            return by[key]
    return entries[0].path if entries else "/"


@dataclass
class Container:
    runtime: str  # sbx, podman, docker, containerd, cri-o, kubernetes, lxc, nspawn, runc, crun, namespaced
    id: str
    init_pid: int  # the judged process: the most privileged workload process (see judge())
    pids: list[int]
    comms: dict[int, str]
    cgroup_path: str
    name: str | None = None
    pod_uid: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    # The image, from the runtime's own state where it records one (sbx, podman): the name it was
    # run by, its id, and whether that name pins content (NAME@sha256:..., or the full id).
    image: str | None = None
    image_id: str | None = None
    image_pinned: bool = False
    # What discovery already read for the judged process (ns inodes, cgroup entries, status): not read twice.
    init_ns: dict = field(default_factory=dict, repr=False)
    init_cgroups: list = field(default_factory=list, repr=False)
    init_status: facts.Status | None = field(default=None, repr=False)
    helpers: dict[int, str] = field(default_factory=dict)  # pid -> helper binary (bwrap, firejail, ...)
    forwarders: list[int] = field(default_factory=list)  # host processes holding its published ports
    declared_ports: list[dict] = field(default_factory=list, repr=False)  # from the runtime's own state

    @property
    def cid(self) -> str:
        return self.id

    @property
    def short_id(self) -> str:
        return self.id[:12] if re.fullmatch(r"[0-9a-f]{64}", self.id) else self.id

    @property
    def display(self) -> str:
        return self.name or self.short_id

    def selector(self) -> dict:
        """Keys waivers/policies select on (see audit.policy.Waiver)."""
        return {"id": self.id, "name": self.name or self.short_id, "runtime": self.runtime,
                "pid": str(self.init_pid)}


@dataclass
class _Proc:
    pid: int
    ppid: int
    start: int
    comm: str
    key: tuple
    pidns: int = 0
    ns: dict = field(default_factory=dict)
    cgroups: list = field(default_factory=list)
    hostlike: bool = False  # shares every namespace with the host


@dataclass
class Scan:
    """One pass over /proc: the namespaced/attributed processes, and a light table of all."""

    procs: list[_Proc]
    table: dict[int, tuple[int, str, int]]  # pid -> (ppid, comm, starttime), every process
    host_ns: dict[str, int]


# --- runtime state ------------------------------------------------------------

_MAX_META = 16 * 1024 * 1024


def _read_json(path: str, limit: int = _MAX_META):
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if os.fstat(fd).st_size > limit:
            return None
        data = b""
        while len(data) <= limit:
            b = os.read(fd, 1 << 20)
            if not b:
                break
            data += b
        return json.loads(data)
    except (OSError, ValueError, RecursionError):
        return None
    finally:
        os.close(fd)


def _root_only_dir(path: str) -> bool:
    """State is trusted only from a directory no one but root can write."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    import stat as _stat
    return _stat.S_ISDIR(st.st_mode) and st.st_uid == 0 and not st.st_mode & 0o022


def runtime_states() -> dict[int, tuple[str, str, int | None]]:
    """init pid -> (runtime, container id, recorded start time) from runc's and crun's state dirs."""
    out: dict[int, tuple[str, str, int | None]] = {}
    for runtime, top, fname in (("runc", "/run/runc", "state.json"), ("crun", "/run/crun", "status")):
        if not _root_only_dir(top):
            continue
        try:
            names = os.listdir(top)[:MAX_STATES]
        except OSError:
            continue
        for cid in names:
            if not _ID.fullmatch(cid):
                continue
            data = _read_json(os.path.join(top, cid, fname), 4 * 1024 * 1024)
            if not isinstance(data, dict):
                continue
            pid = data.get("init_process_pid") if runtime == "runc" else data.get("pid")
            start = data.get("init_process_start") if runtime == "runc" else data.get("process-start-time")
            if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0:
                out[pid] = (runtime, cid, start if isinstance(start, int) and not isinstance(start, bool) else None)
    return out


def helper_identities() -> dict[tuple[int, int], str]:
    """(st_dev, st_ino) of the host's runtime helper binaries -> their name."""
    out: dict[tuple[int, int], str] = {}
    for name in HELPER_BINARIES:
        paths = {p for p in (shutil.which(name),) if p}
        paths |= {os.path.join(d, name) for d in HELPER_DIRS}
        for p in paths:
            try:
                st = os.stat(p)
            except OSError:
                continue
            out[(st.st_dev, st.st_ino)] = name
    return out


# --- the pass over /proc ---------------------------------------------------------

def scan_processes(host_ns: dict[str, int], states: dict | None = None) -> Scan:
    """One bounded pass over /proc: the minimum needed to group processes."""
    out: list[_Proc] = []
    table: dict[int, tuple[int, str, int]] = {}
    host = {k: host_ns.get(k) for k in GROUP_NS}
    states = states or {}
    me = os.getpid()
    hostlike: list[_Proc] = []
    for pid in facts.list_pids():
        try:
            st = facts.read_stat(pid)
        except (facts.ProcessGone, OSError):
            continue
        table[pid] = (st.ppid, st.comm, st.starttime)
        if pid == me or pid == 2 or st.ppid == 2 or st.state == "Z":
            continue  # ourselves, kernel threads, zombies
        try:
            ns = facts.read_ns(pid, GROUP_NS)
            if not ns:
                continue  # unreadable (permission): nothing to judge
            cg = facts.read_cgroup(pid)
        except (facts.ProcessGone, OSError):
            continue  # exited or became unreadable between listing and reading
        path = _cgroup_path(cg)
        att = attribute(path)
        is_host = all(ns.get(k) == host[k] for k in GROUP_NS)
        if att is not None:
            key = ("rt", att.runtime, att.id, att.pod_uid or "", path)
        elif is_host:
            # A host process, unless a runtime's state says otherwise (decided below).
            hostlike.append(_Proc(pid, st.ppid, st.starttime, st.comm, ("host",), ns.get("pid", 0), ns, cg, True))
            continue
        else:
            key = ("ns",) + tuple(ns.get(k, 0) for k in GROUP_NS) + (path,)
        out.append(_Proc(pid, st.ppid, st.starttime, st.comm, key, ns.get("pid", 0), ns, cg, is_host))
    # Runtime state claims processes by init pid (checked against its start time: pids are reused).
    claimed = {pid: v for pid, v in states.items() if pid in table and (v[2] is None or v[2] == table[pid][2])}
    if claimed:
        for p in hostlike:
            hit = _state_ancestor(p.pid, table, claimed)
            if hit is not None:
                runtime, cid, _ = claimed[hit]
                p.key = ("rt", runtime, cid, "", _cgroup_path(p.cgroups))
                out.append(p)
        for p in out:
            if p.key[0] == "ns":
                hit = _state_ancestor(p.pid, table, claimed)
                if hit is not None:
                    runtime, cid, _ = claimed[hit]
                    p.key = ("rt", runtime, cid, "", p.key[-1])
    return Scan(out, table, host_ns)


def _ancestors(pid: int, table: dict[int, tuple[int, str, int]], limit: int = 4096):
    seen = 0
    cur = pid
    while seen < limit:
        yield cur
        nxt = table.get(cur)
        if nxt is None or nxt[0] in (0, cur):
            return
        cur = nxt[0]
        seen += 1


def _state_ancestor(pid: int, table, claimed) -> int | None:
    for a in _ancestors(pid, table):
        if a in claimed:
            return a
        if a == 1:
            return None
    return None


def _tree_key(p: _Proc, by_pid: dict[int, _Proc]) -> tuple:
    """An unattributed process belongs to its topmost namespaced ancestor in the same cgroup:
    `unshare --pid --fork` leaves the unshare process and its child in different pid namespaces."""
    seen = 0
    cur = p
    while seen < 4096:
        parent = by_pid.get(cur.ppid)
        if parent is None or parent.key[0] != "ns" or parent.key[-1] != p.key[-1]:
            return cur.key + (cur.pid,)
        cur = parent
        seen += 1
    return cur.key + (cur.pid,)


def _argv_opt(argv: list[str], short: str | None, long: str) -> str | None:
    """The value of `-x V`, `--long V` or `--long=V` in argv."""
    for i, a in enumerate(argv):
        if (short and a == short) or a == long:
            return argv[i + 1] if i + 1 < len(argv) else None
        if a.startswith(long + "="):
            return a[len(long) + 1:]
    return None


class _Helpers:
    """Which pids run a host runtime helper binary (cached per scan)."""

    def __init__(self, identities: dict[tuple[int, int], str]):
        self.ids = identities
        self.by_pid: dict[int, str | None] = {}

    def of(self, pid: int) -> str | None:
        if pid not in self.by_pid:
            ident = facts.exe_identity(pid) if self.ids else None
            self.by_pid[pid] = self.ids.get(ident) if ident is not None else None
        return self.by_pid[pid]


def _monitor_attribution(top: int, table, helpers: _Helpers) -> tuple[Attribution | None, int | None]:
    """(runtime/id/name from the monitor the tree runs under, that monitor's pid).

    conmon carries `-c ID -n NAME` (rootful and rootless podman, CRI-O); systemd-nspawn
    `-M NAME` or `-D DIR` (machined or not). Only a monitor that executes the host's
    binary counts, so a container cannot name itself after another one.
    """
    for a in itertools.islice(_ancestors(top, table), 64):
        kind = helpers.of(a)
        if kind not in ("conmon", "systemd-nspawn"):
            continue
        try:
            argv = facts.read_cmdline(a, 64 * 1024)
        except (facts.ProcessGone, OSError):
            return None, None
        if kind == "conmon":
            cid = _argv_opt(argv, "-c", "--cid")
            if not cid or not _ID.fullmatch(cid):
                return None, a
            name = _argv_opt(argv, "-n", "--name")
            joined = " ".join(argv)
            runtime = "cri-o" if "crio" in joined and "podman" not in joined else "podman"
            return Attribution(runtime, cid, None, name if name and _ID.fullmatch(name) else None), a
        name = _argv_opt(argv, "-M", "--machine")
        if not name:
            d = _argv_opt(argv, "-D", "--directory") or _argv_opt(argv, "-i", "--image")
            name = os.path.basename(d.rstrip("/")) if d else f"nspawn-{a}"
        if not _ID.fullmatch(name):
            name = f"nspawn-{a}"
        return Attribution("nspawn", name, None, name), a
    return None, None


def _rank(st: facts.Status, p: _Proc, host_pidns: int | None) -> tuple:
    """Most privileged first; among equals the one in its own pid namespace and not a reaping init."""
    return (st.uid[1] == 0, bin(st.cap_eff).count("1"), bin(st.cap_prm).count("1"), bin(st.cap_amb).count("1"),
            st.seccomp == 0, not st.no_new_privs, bin(st.cap_bnd).count("1"),
            p.pidns != host_pidns, p.comm not in MINIMAL_INITS, -p.start, -p.pid)


def judge(members: list[_Proc], helpers: _Helpers, host_pidns: int | None,
          extra: dict[int, str] | None = None) -> tuple[_Proc, facts.Status | None, dict[int, str]]:
    """The process a container is judged by: its most privileged workload process.

    Runtime helpers inside the container (bwrap's and firejail's parents, catatonit,
    conmon, sbx's own init) are not the workload: they are judged only when nothing
    else runs.
    """
    helper_of = {p.pid: h for p in members if (h := helpers.of(p.pid)) is not None}
    helper_of.update(extra or {})
    work = [p for p in members if p.pid not in helper_of] or members
    work = sorted(work, key=lambda p: (p.start, p.pid))[:MAX_JUDGED]
    best = None
    for p in work:
        try:
            st = facts.read_status(p.pid)
        except (facts.ProcessGone, OSError):
            continue
        r = _rank(st, p, host_pidns)
        if best is None or r > best[0]:
            best = (r, p, st)
    if best is None:
        return work[0], None, helper_of
    return best[1], best[2], helper_of


def group(scan: Scan | list[_Proc], host_pidns: int | None = None,
          helper_ids: dict[tuple[int, int], str] | None = None) -> list[Container]:
    if isinstance(scan, list):  # older callers: a bare list of processes
        scan = Scan(scan, {p.pid: (p.ppid, p.comm, p.start) for p in scan}, {})
    procs, table = scan.procs, scan.table
    helpers = _Helpers(helper_identities() if helper_ids is None else helper_ids)
    groups: dict[tuple, list[_Proc]] = {}
    by_pid = {p.pid: p for p in procs}
    # A tree under a runtime monitor (rootless podman's conmon, nspawn without machined) is that
    # runtime's container, whatever cgroups its processes are in (nspawn moves its payload).
    monitored: dict[tuple, tuple[Attribution, int]] = {}
    for p in procs:
        if p.key[0] == "ns":
            att, mon = _monitor_attribution(p.pid, table, helpers)
            if att is not None:
                key = ("rt", att.runtime, att.id, "")
                monitored[key] = (att, mon)
                p.key = key + (p.key[-1],)
    for p in procs:
        # The same runtime container may show several cgroup paths (sub-cgroups): group by id only.
        k = p.key[:4] if p.key[0] == "rt" else _tree_key(p, by_pid)
        groups.setdefault(k, []).append(p)
    out: list[Container] = []
    for k, members in groups.items():
        pids = {p.pid for p in members}
        tops = [p for p in members if p.ppid not in pids] or members
        top = min(tops, key=lambda p: (p.start, p.pid))
        monitor_att, monitor = monitored.get(k, (None, None))
        if monitor_att is None and k[0] == "rt" and k[1] in ("podman", "cri-o", "kubernetes"):
            monitor_att, monitor = _monitor_attribution(top.pid, table, helpers)
        if monitor is not None and monitor in pids and helpers.of(monitor) == "conmon":
            # Rootless conmon lives in the container's user namespace: a monitor, not a member.
            members = [p for p in members if p.pid != monitor]
            pids.discard(monitor)
            if not members:
                continue
            tops = [p for p in members if p.ppid not in pids] or members
            top = min(tops, key=lambda p: (p.start, p.pid))
        extra = {}
        if k[0] == "rt" and k[1] == "sbx" and top.comm == "sbx-init" and table.get(top.ppid, (0, "", 0))[1] != "":
            # sbx's reaping init is the top of its cgroup, started by sbx from outside: the workload
            # (its child) cannot take that place, so the name is not what identifies it here.
            extra[top.pid] = "sbx-init"
        init, status, helper_of = judge(members, helpers, host_pidns, extra)
        path = init.key[-1]
        name = None
        if k[0] == "rt":
            runtime, ident, pod = k[1], k[2], k[3] or None
            if runtime in ("runc", "crun"):
                name = ident
        elif helper_of and all(helper_of.get(p.pid) == "catatonit" for p in members) and \
                "-P" in _cmdline(init.pid):
            # Rootless podman's pause process: it only holds the user and mount namespaces.
            runtime, ident, pod, name = "podman", f"rootless-pause-{init.pid}", None, "rootless-pause"
        else:
            runtime, ident, pod = "namespaced", f"ns-{init.key[3]}-{init.pid}", None
        if monitor_att is not None and name is None and monitor_att.id == ident:
            name = monitor_att.name
        forwarders: list[int] = []
        parent = table.get(top.pid, (0, "", 0))[0]
        pcomm = table.get(parent, (0, "", 0))[1]
        # The forwarder is outside the container: conmon (its binary), sbx's supervisor or CLI for an sbx
        # cgroup, a rootless port forwarder. A bare tree's parent is just whoever started it.
        if parent and parent not in pids and parent != 1 and runtime != "namespaced" and (
                helpers.of(parent) == "conmon" or runtime == "sbx" or pcomm in FORWARDER_COMMS):
            forwarders.append(parent)
        out.append(Container(runtime=runtime, id=ident, init_pid=init.pid,
                             pids=sorted(pids), comms={p.pid: p.comm for p in members},
                             cgroup_path=path, name=name, pod_uid=pod, init_ns=init.ns, init_cgroups=init.cgroups,
                             init_status=status, helpers=helper_of, forwarders=forwarders))
    out.sort(key=lambda c: (c.runtime, c.init_pid))
    return out


def _cmdline(pid: int) -> list[str]:
    try:
        return facts.read_cmdline(pid, 4096)
    except (facts.ProcessGone, OSError):
        return []


# --- enrichment from local metadata (optional; never required) ---------------

def _podman_state() -> dict[str, tuple[str | None, str | None, str | None]]:
    """containers/storage's containers.json: id -> (name, image name, image id)."""
    out: dict[str, tuple[str | None, str | None, str | None]] = {}
    for path in ("/var/lib/containers/storage/overlay-containers/containers.json",):
        data = _read_json(path)
        if isinstance(data, list):
            for c in data:
                if not isinstance(c, dict) or not isinstance(c.get("id"), str):
                    continue
                name = str(c["names"][0]) if c.get("names") else None
                image_id = c.get("image") if isinstance(c.get("image"), str) else None
                image = None
                try:
                    meta = json.loads(c.get("metadata") or "{}")
                    image = meta.get("image-name") if isinstance(meta.get("image-name"), str) else None
                except (ValueError, TypeError, AttributeError):
                    pass
                out[c["id"]] = (name, image, image_id)
    return out


def _pinned(ref: str | None, image_id: str | None = None) -> bool:
    if not ref:
        return False
    return "@sha256:" in ref or (image_id is not None and ref.removeprefix("sha256:") == image_id)


def _docker_name(cid: str) -> str | None:
    if not re.fullmatch(r"[0-9a-f]{64}", cid):
        return None
    data = _read_json(f"/var/lib/docker/containers/{cid}/config.v2.json")
    if isinstance(data, dict) and isinstance(data.get("Name"), str):
        return data["Name"].lstrip("/")
    return None


def _sbx_meta(cid: str) -> dict | None:
    from sandbox.paths import state_dir
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", cid):
        return None
    d = state_dir()
    # sandbox.state layout: <state_dir>/sandboxes/<id>/config.json holds the name (detached sandboxes).
    for path in (os.path.join(d, "sandboxes", cid, "config.json"), os.path.join(d, "sandboxes", cid, "state.json")):
        data = _read_json(path)
        if isinstance(data, dict):
            return data
    return None


def enrich(containers: list[Container]) -> None:
    podman: dict | None = None
    for c in containers:
        if c.runtime == "podman":
            if podman is None:
                podman = _podman_state()
            name, c.image, c.image_id = podman.get(c.id, (None, None, None))
            c.name = c.name or name
            c.image_pinned = _pinned(c.image, c.image_id)
        elif c.runtime == "docker":
            c.name = _docker_name(c.id)
        elif c.runtime == "sbx":
            meta = _sbx_meta(c.id)
            if meta:
                n = meta.get("name") or (meta.get("spec") or {}).get("name")
                c.name = str(n) if n else None
                ports = (meta.get("spec") or {}).get("ports")
                if isinstance(ports, list):
                    c.declared_ports = [p for p in ports if isinstance(p, dict)][:256]
                img = (meta.get("spec") or {}).get("image")
                if isinstance(img, dict) and isinstance(img.get("ref"), str):
                    c.image, c.image_id = img["ref"], img.get("id") if isinstance(img.get("id"), str) else None
                    c.image_pinned = bool(img.get("pinned"))
        elif c.runtime in ("lxc", "nspawn"):
            c.name = c.name or c.id
        if c.pod_uid:
            c.labels["k8s.pod.uid"] = c.pod_uid


def discover(host_ns: dict[str, int] | None = None, scan: Scan | None = None) -> list[Container]:
    if host_ns is None:
        from .hostinfo import reference_pid
        try:
            host_ns = facts.read_ns(reference_pid())
        except facts.ProcessGone:
            host_ns = {}
    if not host_ns:
        raise SbxError("cannot read the host's namespaces from /proc (is /proc mounted, are we root?)", code=2)
    if scan is None:
        scan = scan_processes(host_ns, runtime_states())
    containers = group(scan, host_ns.get("pid"))
    enrich(containers)
    return containers


def select(containers: list[Container], ref: str | None = None, pid: int | None = None,
           runtime: str | None = None) -> list[Container]:
    """Filter as `sbx audit ID|NAME`, `--pid PID`, `--runtime R` do."""
    out = containers
    if runtime:
        out = [c for c in out if c.runtime == runtime]
    if pid is not None:
        out = [c for c in out if pid in c.pids]
    if ref:
        exact = [c for c in out if ref in (c.id, c.name, c.short_id)]
        out = exact or ([c for c in out if len(ref) >= 3 and c.id.startswith(ref)])
    return out
