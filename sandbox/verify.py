"""Fail-closed verification: read the workload's real state back and compare with the Spec.

Runs in the parent while the workload is parked just before execve (after
every stage, seccomp included), so nothing untrusted has run yet. The LSM
label only changes at exec, so it is checked right after exec (check_label).
Every reading comes from sandbox.facts, the same reader audit uses.
"""
from __future__ import annotations

from .records import field, record

from . import facts
from .facts import ProcFacts, caps_to_names
from .spec import Spec


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


def check_init(pid: int, *, seccomp: bool = False) -> Verification:
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
    if seccomp:
        v.need("init seccomp", st.seccomp == 2 and (st.seccomp_filters or 0) >= 1,
               f"init has Seccomp {st.seccomp}, filters {st.seccomp_filters}")
    return v


def check(spec: Spec, f: ProcFacts, *, uid_map=(), gid_map=(), cgroup=None) -> Verification:
    """The parked workload (or exec'd command) against what launch planned for it.

    uid_map/gid_map: the rows sbx wrote for the sandbox's user namespace. The
    comparison itself is posture.differences (identity, capabilities,
    no_new_privs, seccomp, namespaces, cpuset) plus the mount plan's
    (mounts.MountPlan.differences) and the cgroup backend's own.
    """
    from . import posture
    from .mounts import planned as planned_mounts

    v = Verification()
    want = posture.planned(spec, uid_map, gid_map)
    got = posture.observed(f)
    st = f.status
    v.effective = {
        "uid": list(st.uid), "gid": list(st.gid), "uid_inside": got.identity.uid, "gid_inside": got.identity.gid,
        "uid_map": [list(r) for r in got.identity.uid_map], "gid_map": [list(r) for r in got.identity.gid_map],
        "cap_eff": caps_to_names(st.cap_eff), "cap_prm": caps_to_names(st.cap_prm), "cap_inh": caps_to_names(st.cap_inh),
        "cap_bnd": caps_to_names(st.cap_bnd), "cap_amb": caps_to_names(st.cap_amb),
        "no_new_privs": st.no_new_privs, "seccomp": st.seccomp, "seccomp_filters": st.seccomp_filters,
        "namespaces_shared_with_sbx": f.shared_namespaces(), "cpus_allowed": st.cpus_allowed_list,
    }
    found = posture.differences(want, got, v.checked) + planned_mounts(spec).differences(got.mounts, f.pid, v.checked)
    v.problems.extend(f"{name}: {problem}" for name, problem in found)
    if cgroup is not None:
        # Its own cgroup, read-only, where runtimes look for their limits (mounts.cgroup_namespace).
        view = [m for m in f.mounts if m.mountpoint == "/sys/fs/cgroup" or m.mountpoint.startswith("/sys/fs/cgroup/")]
        v.need("read-only /sys/fs/cgroup", (bool(view) or not cgroup.paths) and all(m.readonly for m in view),
               "not mounted" if not view else "writable: " + ", ".join(m.mountpoint for m in view if not m.readonly))
        v.need("cgroup membership", cgroup.contains(f.pid), "workload is not in its cgroup")
        for p in cgroup.verify(spec.resources):
            v.problems.append(f"cgroup: {p}")
        v.checked.append("cgroup limits")
    return v


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
