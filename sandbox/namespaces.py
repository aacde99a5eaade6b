"""The sandbox's namespaces: which are made where, and joining the sandbox's cgroup namespace.

Setup unshares every kind but cgroup: a new pid namespace applies to the
unsharer's children, so setup forks init right after. Init unshares the cgroup
namespace itself once sbx has put it in the sandbox's cgroup (the namespace is
rooted at the cgroup it is created in); the workload, forked before that, joins
it through init's /proc entry.
"""
from __future__ import annotations

import os

from . import syscalls as sc

# Namespace kinds a sandbox gets, in sbx's own names (spec.NAMESPACES is the same set).
KINDS = ("user", "mount", "pid", "net", "uts", "ipc", "cgroup")


def unshare_for_setup() -> None:
    """Every namespace but cgroup (init makes that one, inside the sandbox's cgroup)."""
    flags = 0
    for kind in KINDS:
        if kind != "cgroup":
            flags |= sc.NS_FLAGS[kind]
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
