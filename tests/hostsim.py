"""Hosts this machine is not, made real for one process tree with a seccomp filter.

A kernel without Landlock answers landlock_create_ruleset with ENOSYS; a filter
installed before sbx starts gives sbx (and everything it forks) exactly that
answer. Nothing in sbx's own code path is switched: the probe it runs is the real one.
"""
from __future__ import annotations

import errno


def no_landlock() -> None:
    """preexec_fn: this process and its children see a kernel without Landlock."""
    import pyseccomp

    f = pyseccomp.SyscallFilter(defaction=pyseccomp.ALLOW)
    for name in ("landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self"):
        f.add_rule(pyseccomp.ERRNO(errno.ENOSYS), name)
    f.load()
