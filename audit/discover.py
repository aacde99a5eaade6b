"""Find the containers on this host by walking /proc once.

A container is a group of processes that share a runtime's cgroup (libpod-<id>,
docker-<id>.scope, ...) or, with no known runtime, the same set of namespaces
that differs from pid 1's ("namespaced process tree"). Per process we read only
stat, the ns links and cgroup; full facts are read later for each group's init.
Processes that vanish mid-scan are skipped.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

from sandbox import facts
from sandbox.errors import SbxError

# Kinds compared to decide "namespaced". time ns rarely differs and is not isolation.
GROUP_NS = ("user", "pid", "mnt", "net", "uts", "ipc", "cgroup")

# Reaping inits that only forward signals; the container's posture is its workload's.
MINIMAL_INITS = frozenset({"sbx-init", "tini", "tini-static", "catatonit", "dumb-init", "docker-init"})

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


@dataclass(frozen=True)
class Attribution:
    runtime: str
    id: str
    pod_uid: str | None = None


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
    runtime: str  # sbx, podman, docker, containerd, cri-o, kubernetes, lxc, nspawn, namespaced
    id: str
    init_pid: int
    pids: list[int]
    comms: dict[int, str]
    cgroup_path: str
    name: str | None = None
    pod_uid: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    # What discovery already read for the init (ns inodes, cgroup entries): not read twice.
    init_ns: dict = field(default_factory=dict, repr=False)
    init_cgroups: list = field(default_factory=list, repr=False)

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


def scan_processes(host_ns: dict[str, int]) -> list[_Proc]:
    """One bounded pass over /proc: the minimum needed to group processes."""
    out: list[_Proc] = []
    host = {k: host_ns.get(k) for k in GROUP_NS}
    me = os.getpid()
    for pid in facts.list_pids():
        if pid == me:
            continue
        try:
            ns = facts.read_ns(pid, GROUP_NS)
            if not ns:
                continue  # unreadable (permission): nothing to judge
            if all(ns.get(k) == host[k] for k in GROUP_NS):
                continue  # a host process (kernel threads too)
            st = facts.read_stat(pid)
            if st.ppid == 2 or st.state == "Z":
                continue
            cg = facts.read_cgroup(pid)
        except (facts.ProcessGone, OSError):
            continue  # exited or became unreadable between listing and reading
        path = _cgroup_path(cg)
        att = attribute(path)
        if att is not None:
            key = ("rt", att.runtime, att.id, att.pod_uid or "", path)
        else:
            key = ("ns",) + tuple(ns.get(k, 0) for k in GROUP_NS) + (path,)
        out.append(_Proc(pid, st.ppid, st.starttime, st.comm, key, ns.get("pid", 0), ns, cg))
    return out


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


def group(procs: list[_Proc], host_pidns: int | None = None) -> list[Container]:
    groups: dict[tuple, list[_Proc]] = {}
    by_pid = {p.pid: p for p in procs}
    for p in procs:
        # The same runtime container may show several cgroup paths (sub-cgroups): group by id only.
        k = p.key[:4] if p.key[0] == "rt" else _tree_key(p, by_pid)
        groups.setdefault(k, []).append(p)
    out: list[Container] = []
    for k, members in groups.items():
        pids = {p.pid for p in members}
        roots = [p for p in members if p.ppid not in pids] or members
        init = min(roots, key=lambda p: (p.start, p.pid))
        if host_pidns is not None and init.pidns == host_pidns:
            # The workload of `unshare --pid --fork` (and of sbx's launcher) is the child in the new
            # pid namespace: judge that one, not the half-unshared parent.
            inner = [p for p in members if p.pidns != host_pidns]
            if inner:
                init = min(inner, key=lambda p: (p.start, p.pid))
        if init.comm in MINIMAL_INITS:
            # A reaping init (sbx-init, tini, catatonit...) is plumbing: judge the workload it runs.
            kids = [p for p in members if p.ppid == init.pid]
            if kids:
                init = min(kids, key=lambda p: (p.start, p.pid))
        path = init.key[-1]
        if k[0] == "rt":
            runtime, ident, pod = k[1], k[2], k[3] or None
        else:
            runtime, ident, pod = "namespaced", f"ns-{init.key[3]}-{init.pid}", None
        out.append(Container(runtime=runtime, id=ident, init_pid=init.pid,
                             pids=sorted(pids), comms={p.pid: p.comm for p in members},
                             cgroup_path=path, pod_uid=pod, init_ns=init.ns, init_cgroups=init.cgroups))
    out.sort(key=lambda c: (c.runtime, c.init_pid))
    return out


# --- enrichment from local metadata (optional; never required) ---------------

_MAX_META = 16 * 1024 * 1024


def _read_json(path: str):
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if os.fstat(fd).st_size > _MAX_META:
            return None
        data = b""
        while len(data) <= _MAX_META:
            b = os.read(fd, 1 << 20)
            if not b:
                break
            data += b
        return json.loads(data)
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)


def _podman_names() -> dict[str, str]:
    out: dict[str, str] = {}
    for path in ("/var/lib/containers/storage/overlay-containers/containers.json",):
        data = _read_json(path)
        if isinstance(data, list):
            for c in data:
                if isinstance(c, dict) and isinstance(c.get("id"), str) and c.get("names"):
                    out[c["id"]] = str(c["names"][0])
    return out


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
    podman: dict[str, str] | None = None
    for c in containers:
        if c.runtime == "podman":
            if podman is None:
                podman = _podman_names()
            c.name = podman.get(c.id)
        elif c.runtime == "docker":
            c.name = _docker_name(c.id)
        elif c.runtime == "sbx":
            meta = _sbx_meta(c.id)
            if meta:
                n = meta.get("name") or (meta.get("spec") or {}).get("name")
                c.name = str(n) if n else None
        elif c.runtime in ("lxc", "nspawn"):
            c.name = c.id
        if c.pod_uid:
            c.labels["k8s.pod.uid"] = c.pod_uid


def discover(host_ns: dict[str, int] | None = None) -> list[Container]:
    if host_ns is None:
        from .hostinfo import reference_pid
        try:
            host_ns = facts.read_ns(reference_pid())
        except facts.ProcessGone:
            host_ns = {}
    if not host_ns:
        raise SbxError("cannot read the host's namespaces from /proc (is /proc mounted, are we root?)", code=2)
    containers = group(scan_processes(host_ns), host_ns.get("pid"))
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
