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
from .facts import CAP_NUMBERS, cap_last, names_to_mask
from .errors import SbxError


def drop(keep: tuple[str, ...], uid: int, gid: int, *, rootless: bool) -> None:
    keep_mask = names_to_mask(keep)
    last = cap_last()
    for cap in range(last + 1):
        if not keep_mask >> cap & 1:
            sc.prctl(sc.PR_CAPBSET_DROP, cap)
    if keep_mask:
        sc.prctl(sc.PR_SET_KEEPCAPS, 1)
    try:
        if not rootless:
            os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    except OSError as e:
        raise SbxError(f"cannot switch to uid {uid} gid {gid} inside the sandbox: {e.strerror}") from None
    sc.capset(keep_mask, keep_mask, keep_mask)
    sc.prctl(sc.PR_CAP_AMBIENT, sc.PR_CAP_AMBIENT_CLEAR_ALL)
    if keep_mask and uid != 0:
        # Without ambient caps a non-root workload would lose the kept set at exec.
        for name in keep:
            sc.prctl(sc.PR_CAP_AMBIENT, 2, CAP_NUMBERS[name])  # PR_CAP_AMBIENT_RAISE
    if keep_mask:
        sc.prctl(sc.PR_SET_KEEPCAPS, 0)


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
