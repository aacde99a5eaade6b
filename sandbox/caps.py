"""Privileges stage: bounding set, id switch, process capability sets, ambient set.

Runs in the workload process as root of the user namespace, after mounts and
Landlock. The bounding set is cut first (that needs CAP_SETPCAP, which the
id switch would take away); keep-caps carries the kept set across setresuid.

prctl(2) goes through sandbox.syscalls (ctypes, loaded anyway) rather than
python-prctl: that extension (linked to libcap) cost ~0.9 ms of every start
to import, for five prctl calls.
"""
from __future__ import annotations

import os

from . import syscalls as sc
from .errors import SbxError
from .facts import CAP_NUMBERS, cap_last, names_to_mask


def drop(keep: tuple[str, ...], uid: int, gid: int, *, rootless: bool, groups: tuple[int, ...] = ()) -> None:
    """Cut the bounding set to `keep`, switch to uid/gid, and give the kept set to uid 0 only.

    Docker's semantics: capabilities belong to root. A non-root workload keeps
    them in its bounding set (what file capabilities could grant, and nothing
    under no_new_privs) but has none effective, permitted, inheritable or
    ambient; uid 0 (inside the user namespace) gets them effective and
    permitted. The inheritable set stays empty for both (moby after
    CVE-2022-24769).
    """
    keep_mask = names_to_mask(keep)
    last = cap_last()
    for cap in range(last + 1):
        if not keep_mask >> cap & 1:
            sc.prctl(sc.PR_CAPBSET_DROP, cap)
    give = keep_mask if uid == 0 else 0
    if give:
        sc.prctl(sc.PR_SET_KEEPCAPS, 1)
    try:
        if not rootless:
            os.setgroups(list(groups))  # an image user's groups (its /etc/group); none otherwise
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    except OSError as e:
        raise SbxError(f"cannot switch to uid {uid} gid {gid} inside the sandbox: {e.strerror}") from None
    sc.capset(give, give, 0)
    sc.prctl(sc.PR_CAP_AMBIENT, sc.PR_CAP_AMBIENT_CLEAR_ALL)
    if give:
        sc.prctl(sc.PR_SET_KEEPCAPS, 0)


def process_caps(keep_mask: int, uid: int) -> dict[str, int]:
    """What drop() leaves a workload with, per set (verify and the posture model compare against it)."""
    give = keep_mask if uid == 0 else 0
    return {"CapEff": give, "CapPrm": give, "CapInh": 0, "CapBnd": keep_mask, "CapAmb": 0}


def set_no_new_privs() -> None:
    sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
    if sc.prctl(sc.PR_GET_NO_NEW_PRIVS) != 1:
        raise SbxError("no_new_privs did not stick")


def confine_init() -> None:
    """The sandbox's init, once setup is done, keeps only what reaping and forwarding need.

    It may still signal the workload (CAP_KILL: the workload runs as another
    uid) and nothing else: bounding/permitted/effective = {KILL}, no inheritable
    or ambient caps, no_new_privs, and not dumpable, so the workload cannot
    ptrace it or read its memory through /proc.
    """
    kill = CAP_NUMBERS["KILL"]
    for cap in range(cap_last() + 1):
        if cap != kill:
            sc.prctl(sc.PR_CAPBSET_DROP, cap)
    sc.capset(1 << kill, 1 << kill, 0)
    sc.prctl(sc.PR_CAP_AMBIENT, sc.PR_CAP_AMBIENT_CLEAR_ALL)
    set_no_new_privs()
    sc.prctl(sc.PR_SET_DUMPABLE, 0)
