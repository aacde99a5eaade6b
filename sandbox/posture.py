"""A process's security posture: the one model verify, admission and audit reason about.

Two producers:

* `observed(facts)`: what the kernel says a process has (/proc, through sandbox.facts);
* `planned(spec, idmap)`: what a sandbox launched from `spec` will have, decided
  by the same functions launch uses (caps.process_caps, mounts.planned, mac).

Verification is the difference between the two (`differences`), checked while
the workload is parked before its execve. Audit (audit.subject) builds its
richer Subject from an observed Posture, admission from a planned one, so the
identity rules live here once: /proc/PID/status shows ids as the host sees
them; the ids inside the process's user namespace are found through its maps.

Records, not dataclasses: this module is on `sbx run`'s path.
"""
from __future__ import annotations

from . import facts, namespaces
from .records import field, record
from .values import cpulist_or_empty

NAMESPACES = namespaces.PROC_NAMES  # the kinds a sandbox has of its own, as /proc names them
CAP_SETS = ("CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb")


@record(frozen=True)
class Identity:
    """Who a process is, inside its user namespace and as the host sees it."""

    uid: int | None  # effective uid inside the user namespace (what `id` prints there); None: unmapped
    gid: int | None
    host_uid: int | None  # the same credential as the host sees it
    host_gid: int | None
    uid_map: tuple[tuple[int, int, int], ...] = ()  # (inside, host, count)
    gid_map: tuple[tuple[int, int, int], ...] = ()
    own_userns: bool = True
    all_host_uids: tuple[int, ...] = ()  # real, effective, saved, fs uids, host view (observed only)
    all_host_gids: tuple[int, ...] = ()

    def maps_host_root(self) -> bool:
        """Does ANY uid of the namespace map to host uid 0? Whoever can become it is host root.

        In the host's own user namespace uid 0 is host root by definition.
        """
        if not self.own_userns:
            return True
        return any(o == 0 and c > 0 for _, o, c in self.uid_map)

    def maps_host_root_group(self) -> bool:
        return not self.own_userns or any(o == 0 and c > 0 for _, o, c in self.gid_map)


@record(frozen=True)
class Posture:
    identity: Identity
    caps: dict[str, int] = field(default_factory=dict)  # CAP_SETS -> mask
    no_new_privs: bool | None = None
    seccomp: int | None = None  # 0 off, 1 strict, 2 filter
    seccomp_filters: int | None = None
    lsm_label: str | None = None
    shared_namespaces: frozenset[str] = frozenset()  # kinds shared with the reference process
    cpus: str | None = None  # Cpus_allowed_list
    mounts: tuple[facts.Mount, ...] = ()  # observed: the mount table as the process sees it


def _rows(entries: list[facts.IdMapEntry]) -> tuple[tuple[int, int, int], ...]:
    return tuple((e.inside, e.outside, e.count) for e in entries)


def observed(f: facts.ProcFacts, reference_ns: dict[str, int] | None = None) -> Posture:
    """The posture /proc shows for f.pid; shared namespaces are those equal to `reference_ns`
    (default f.host_ns: the process that read the facts, sbx itself for verify)."""
    st = f.status
    ref = f.host_ns if reference_ns is None else reference_ns
    shared = frozenset(k for k in NAMESPACES if k in f.ns and f.ns.get(k) == ref.get(k))
    own = "user" not in shared
    host_uid, host_gid = st.uid[1], st.gid[1]
    if own:
        uid = facts.inside_id(f.uid_map, host_uid) if f.uid_map else None
        gid = facts.inside_id(f.gid_map, host_gid) if f.gid_map else None
    else:
        uid, gid = host_uid, host_gid
    ident = Identity(uid, gid, host_uid, host_gid, _rows(f.uid_map), _rows(f.gid_map), own,
                     tuple(st.uid), tuple(st.gid))
    return Posture(
        identity=ident,
        caps={"CapEff": st.cap_eff, "CapPrm": st.cap_prm, "CapInh": st.cap_inh, "CapBnd": st.cap_bnd,
              "CapAmb": st.cap_amb},
        no_new_privs=None if st.no_new_privs is None else bool(st.no_new_privs),
        seccomp=st.seccomp, seccomp_filters=st.seccomp_filters, lsm_label=f.lsm_label,
        shared_namespaces=shared, cpus=st.cpus_allowed_list, mounts=tuple(f.mounts),
    )


def planned(spec, uid_map=(), gid_map=()) -> Posture:
    """What launch will give a workload of `spec`, given the id maps its namespace gets.

    Without maps (admission, before any id slice is claimed) the host ids are
    unknown (None), but no map ever reaches host root: sbx never makes one.
    """
    from .caps import process_caps
    from .userns import outside
    sec = spec.security
    rows_u = tuple((int(a), int(b), int(c)) for a, b, c in uid_map or ())
    rows_g = tuple((int(a), int(b), int(c)) for a, b, c in gid_map or ())
    ident = Identity(spec.uid, spec.gid, outside(rows_u, spec.uid) if rows_u else None,
                     outside(rows_g, spec.gid) if rows_g else None, rows_u, rows_g, True)
    return Posture(
        identity=ident,
        caps=process_caps(facts.names_to_mask(sec.capabilities), spec.uid),
        no_new_privs=sec.no_new_privs,
        seccomp=0 if sec.seccomp == "unconfined" else 2,
        shared_namespaces=frozenset(),
        cpus=spec.resources.cpuset_cpus,
    )


def differences(want: Posture, got: Posture, checked: list[str] | None = None) -> list[tuple[str, str]]:
    """(control, problem) for every way `got` falls short of `want` (`checked` collects the names
    compared). The mount table is judged by mounts.MountPlan.differences, the cgroup by its backend,
    the LSM label after exec."""
    out: list[tuple[str, str]] = []
    w, g = want.identity, got.identity

    def need(name: str, ok: bool, detail: str) -> None:
        if checked is not None:
            checked.append(name)
        if not ok:
            out.append((name, detail))

    need("user namespace", g.own_userns and bool(g.uid_map) and bool(g.gid_map), "no user namespace of its own")
    need("no host root mapping", not g.maps_host_root() and not g.maps_host_root_group(),
         f"a mapping reaches host id 0: uid {list(g.uid_map)}, gid {list(g.gid_map)}")
    if w.host_uid is not None:
        need("uid", all(u == w.host_uid for u in g.all_host_uids or (g.host_uid,)),
             f"expected host uid {w.host_uid} (sandbox uid {w.uid}), got {list(g.all_host_uids)}")
    if w.host_gid is not None:
        need("gid", all(x == w.host_gid for x in g.all_host_gids or (g.host_gid,)),
             f"expected host gid {w.host_gid}, got {list(g.all_host_gids)}")
    need("uid inside", g.uid == w.uid, f"expected uid {w.uid} inside the sandbox, got {g.uid}")
    if w.uid != 0:
        need("non-root", g.host_uid != 0 and 0 not in g.all_host_uids and g.uid != 0, "workload runs as root")
    for label in CAP_SETS:
        want_m, got_m = want.caps.get(label, 0), got.caps.get(label, 0)
        need(f"capabilities {label}", want_m == got_m,
             f"expected {facts.caps_to_names(want_m) or 'none'}, got {facts.caps_to_names(got_m) or 'none'}")
    if want.no_new_privs:
        need("no_new_privs", got.no_new_privs is True, f"NoNewPrivs is {got.no_new_privs}")
    if want.seccomp == 2:
        need("seccomp", got.seccomp == 2 and (got.seccomp_filters or 0) >= 1,
             f"Seccomp is {got.seccomp}, filters {got.seccomp_filters}")
    for kind in NAMESPACES:
        need(f"{namespaces.OURS[kind]} namespace",
             kind not in got.shared_namespaces or kind in want.shared_namespaces, "shared with the host")
    if want.cpus is not None:
        need("cpuset", cpulist_or_empty(got.cpus) == cpulist_or_empty(want.cpus),
             f"Cpus_allowed_list is {got.cpus}, wanted {want.cpus}")
    return out
