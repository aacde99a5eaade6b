"""Fail-closed verification: read the workload's real state back and compare with the Spec.

Runs in the parent while the workload is parked just before execve (after
every stage, seccomp included), so nothing untrusted has run yet. The LSM
label only changes at exec, so it is checked right after exec (check_label).
Every reading comes from sandbox.facts, the same reader audit uses.
"""
from __future__ import annotations

from .records import field, record

from . import facts
from .facts import ProcFacts, caps_to_names, names_to_mask
from .spec import Spec

# Our namespace names -> /proc/PID/ns names.
NS = {"user": "user", "pid": "pid", "mount": "mnt", "net": "net", "uts": "uts", "ipc": "ipc", "cgroup": "cgroup"}


@record
class Verification:
    problems: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    effective: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def need(self, name: str, ok: bool, detail: str) -> None:
        self.checked.append(name)
        if not ok:
            self.problems.append(f"{name}: {detail}")

    def to_dict(self) -> dict:
        return {"ok": self.ok, "problems": self.problems, "checked": self.checked, "effective": self.effective}


def check_init(pid: int) -> Verification:
    """The sandbox's init, once it says it is confined: only CAP_KILL, no_new_privs, not dumpable.

    Checked before the workload may exec: nothing else orders init's confinement
    before the workload's first instruction.
    """
    v = Verification()
    try:
        st = facts.read_status(pid)
        owner = facts.read_dump_owner(pid)
    except (OSError, facts.ProcessGone):
        v.need("init", False, "the sandbox's init is gone")
        return v
    kill = 1 << facts.CAP_NUMBERS["KILL"]
    v.need("init capabilities",
           not (st.cap_eff & ~kill or st.cap_prm & ~kill or st.cap_bnd & ~kill or st.cap_inh or st.cap_amb),
           f"init keeps capabilities beyond CAP_KILL (eff {st.cap_eff:#x}, bnd {st.cap_bnd:#x})")
    v.need("init no_new_privs", st.no_new_privs == 1, "init has no no_new_privs")
    v.need("init not dumpable", owner == 0, "init is dumpable")
    return v


def check(spec: Spec, f: ProcFacts, *, host_uid: int | None, host_gid: int | None, seccomp_expected: bool,
          cgroup=None) -> Verification:
    v = Verification()
    st = f.status
    v.effective = {
        "uid": list(st.uid), "gid": list(st.gid), "uid_map": [[e.inside, e.outside, e.count] for e in f.uid_map],
        "gid_map": [[e.inside, e.outside, e.count] for e in f.gid_map],
        "cap_eff": caps_to_names(st.cap_eff), "cap_prm": caps_to_names(st.cap_prm), "cap_inh": caps_to_names(st.cap_inh),
        "cap_bnd": caps_to_names(st.cap_bnd), "cap_amb": caps_to_names(st.cap_amb),
        "no_new_privs": st.no_new_privs, "seccomp": st.seccomp, "seccomp_filters": st.seccomp_filters,
        "namespaces_shared_with_sbx": f.shared_namespaces(), "cpus_allowed": st.cpus_allowed_list,
    }

    # Identity: the workload's ids (seen from outside) are the mapped sandbox ids; nothing maps to host root.
    v.need("user namespace", bool(f.uid_map) and bool(f.gid_map), "no uid/gid map")
    v.need("no host root mapping", not facts.maps_host_root(f.uid_map) and not facts.maps_host_root(f.gid_map),
           f"a mapping reaches host id 0: {v.effective['uid_map']}")
    if host_uid is not None:
        v.need("uid", all(u == host_uid for u in st.uid), f"expected host uid {host_uid} (sandbox uid {spec.uid}), got {list(st.uid)}")
    if host_gid is not None:
        v.need("gid", all(g == host_gid for g in st.gid), f"expected host gid {host_gid}, got {list(st.gid)}")
    if spec.uid != 0:
        v.need("non-root", host_uid != 0 and 0 not in st.uid, "workload runs as root")

    # Capabilities: what caps.drop gives (the kept set in the bounding set; effective only for uid 0).
    from .caps import process_caps
    want = process_caps(names_to_mask(spec.security.capabilities), spec.uid)
    for label, val in (("CapEff", st.cap_eff), ("CapPrm", st.cap_prm), ("CapInh", st.cap_inh),
                       ("CapBnd", st.cap_bnd), ("CapAmb", st.cap_amb)):
        v.need(f"capabilities {label}", val == want[label],
               f"expected {caps_to_names(want[label]) or 'none'}, got {caps_to_names(val) or 'none'}")

    if spec.security.no_new_privs:
        v.need("no_new_privs", st.no_new_privs == 1, f"NoNewPrivs is {st.no_new_privs}")
    if seccomp_expected:
        v.need("seccomp", st.seccomp == 2 and (st.seccomp_filters or 0) >= 1,
               f"Seccomp is {st.seccomp}, filters {st.seccomp_filters}")

    # Namespaces: none shared with the process that created the sandbox.
    for ours, procname in NS.items():
        if procname in f.ns and procname in f.host_ns:
            v.need(f"{ours} namespace", f.ns[procname] != f.host_ns[procname], "shared with the host")

    # Mounts, as the workload sees them (mountinfo is relative to its root).
    _check_mount_table(v, spec, f)
    root = f.mount_at("/")
    if spec.filesystem.read_only:
        v.need("read-only root", root is not None and root.readonly, "root is writable")
    sysm = f.mount_at("/proc/sys")
    if "/proc/sys" in spec.filesystem.readonly_paths:
        v.need("read-only /proc/sys", sysm is not None and sysm.readonly, "/proc/sys is writable")
    proc = f.mount_at("/proc")
    v.need("fresh /proc", proc is not None and proc.fstype == "proc", "no proc mount at /proc")
    for p in spec.filesystem.masked_paths:
        if p.startswith("/proc/") and f.mount_at(p) is None and _exists_in(f.pid, p):
            v.problems.append(f"masked path {p}: not masked")
    v.checked.append("masked paths")
    for b in spec.filesystem.binds:
        m = f.mount_at(b.target)
        v.need(f"bind {b.target}", m is not None and m.readonly == b.readonly,
               "missing" if m is None else f"is {'ro' if m.readonly else 'rw'}, wanted {'ro' if b.readonly else 'rw'}")

    if cgroup is not None:
        v.need("cgroup membership", cgroup.contains(f.pid), "workload is not in its cgroup")
        for p in cgroup.verify(spec.resources):
            v.problems.append(f"cgroup: {p}")
        v.checked.append("cgroup limits")
    if spec.resources.cpuset_cpus is not None:
        v.need("cpuset", _cpulist(st.cpus_allowed_list) == _cpulist(spec.resources.cpuset_cpus),
               f"Cpus_allowed_list is {st.cpus_allowed_list}, wanted {spec.resources.cpuset_cpus}")
    return v


def _check_mount_table(v: Verification, spec: Spec, f: ProcFacts) -> None:
    """The sandbox's / is sbx's root mount, alone there, and every mount sits where sbx put one.

    This is what a hostile root filesystem breaks when a mount is misplaced: the
    host's mount tree stacked around the sandbox's root (`/..` is the host's /),
    or a tmpfs over the host root. No mount may expose the host's root file
    system at its top either, unless a bind asked for exactly that.
    """
    import os

    from .mounts import ROOT_SOURCE, expected_mountpoints

    roots = [m for m in f.mounts if m.mountpoint == "/"]
    v.need("root mount", len(roots) == 1 and roots[0].source == ROOT_SOURCE,
           f"expected one {ROOT_SOURCE} mount at /, found "
           + (", ".join(f"{m.fstype} {m.source}" for m in roots) or "none"))
    exact, trees = expected_mountpoints(spec)
    stray = [m.mountpoint for m in f.mounts if m.mountpoint not in exact and not m.mountpoint.startswith(trees)]
    v.need("mount table", not stray, f"mounts sbx did not make: {', '.join(stray[:5])}"
           + (f" (+{len(stray) - 5} more)" if len(stray) > 5 else ""))
    st = os.stat("/")
    host_root = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    asked = {b.target for b in spec.filesystem.binds if os.path.realpath(b.source) == "/"}
    exposed = [m.mountpoint for m in f.mounts if m.dev == host_root and m.root == "/" and m.mountpoint not in asked]
    v.need("host root not mounted", not exposed, f"the host's root file system is mounted at {', '.join(exposed[:5])}")


def _exists_in(pid: int, path: str) -> bool:
    """Does `path` exist in the workload's view? Only /proc paths are asked, and /proc is ours."""
    import os
    try:
        os.lstat(f"/proc/{pid}/root{path}")
        return True
    except OSError:
        return False


def _cpulist(text: str | None) -> set[int]:
    out: set[int] = set()
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        a, _, b = part.partition("-")
        try:
            out.update(range(int(a), int(b or a) + 1))
        except ValueError:
            return set()
    return out


def check_label(pid: int, expected: str | None) -> tuple[str | None, str | None]:
    """After exec: the LSM label in effect must be the one we asked for. Returns (label, problem)."""
    if expected is None:
        return None, None
    try:
        label = facts.read_lsm_label(pid)
    except facts.ProcessGone:
        return None, None  # the workload already finished; nothing left to confine
    if label is None or not (label == expected or label.startswith(expected + " ")):
        return label, f"LSM label is {label!r}, expected {expected!r}"
    return label, None
