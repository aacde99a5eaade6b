"""The sandbox's namespaces: the one table of their names, which are made where, and joining.

sbx's own name for each kind is the flag's ("mount"); the kernel's, in
/proc/PID/ns and in audit output, is "mnt". Both spellings live in TABLE only.

Setup unshares every kind but cgroup: a new pid namespace applies to the
unsharer's children, so setup forks init right after. Init unshares the cgroup
namespace itself once sbx has put it in the sandbox's cgroup (the namespace is
rooted at the cgroup it is created in); the workload, forked before that, joins
it through init's /proc entry.
"""
from __future__ import annotations

import os

from . import syscalls as sc

# (sbx's name, /proc/PID/ns name, clone flag). User first: joining it gives the capabilities
# that own all the others, so this is also setns order.
TABLE = (
    ("user", "user", sc.CLONE_NEWUSER),
    ("mount", "mnt", sc.CLONE_NEWNS),
    ("pid", "pid", sc.CLONE_NEWPID),
    ("net", "net", sc.CLONE_NEWNET),
    ("uts", "uts", sc.CLONE_NEWUTS),
    ("ipc", "ipc", sc.CLONE_NEWIPC),
    ("cgroup", "cgroup", sc.CLONE_NEWCGROUP),
)
KINDS = tuple(ours for ours, _, _ in TABLE)  # every kind a sandbox has of its own
PROC_NAMES = tuple(proc for _, proc, _ in TABLE)
PROC = {ours: proc for ours, proc, _ in TABLE}
FLAG = {ours: flag for ours, _, flag in TABLE}
OURS = {proc: ours for ours, proc, _ in TABLE}


def proc_name(name: str) -> str | None:
    """Either spelling ("mount" or "mnt") -> the kernel's; None for an unknown kind."""
    if name in OURS:
        return name
    return PROC.get(name)


def open_ns(pid: int, kind: str) -> int:
    """An fd of a process's namespace of `kind` (either spelling), for setns or an idmapped mount."""
    return os.open(f"/proc/{pid}/ns/{proc_name(kind) or kind}", os.O_RDONLY | os.O_CLOEXEC)


def unshare_for_setup() -> None:
    """Every namespace but cgroup (init makes that one, inside the sandbox's cgroup)."""
    flags = 0
    for kind in KINDS:
        if kind != "cgroup":
            flags |= FLAG[kind]
    sc.unshare(flags)


def unshare_cgroup() -> None:
    sc.unshare(sc.CLONE_NEWCGROUP)


def join_cgroup_of_init() -> None:
    """The workload joins init's cgroup namespace (/proc/1 is init: the sandbox's own /proc)."""
    fd = os.open("/proc/1/ns/cgroup", os.O_RDONLY | os.O_CLOEXEC)
    try:
        sc.setns(fd, sc.CLONE_NEWCGROUP)
    finally:
        os.close(fd)


def set_hostname(name: str) -> None:
    sc.sethostname(name)
