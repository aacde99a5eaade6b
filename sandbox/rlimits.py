"""rlimits: validated in the parent against the limits sbx itself inherited,
applied in the workload before the privilege drop."""
from __future__ import annotations

import os

from . import syscalls as sc
from .errors import SbxError
from .spec import Rlimit

# Linux numbering (asm-generic/resource.h); the resource module lacks some names.
NAMES = {
    "cpu": 0, "fsize": 1, "data": 2, "stack": 3, "core": 4, "rss": 5, "nproc": 6, "nofile": 7,
    "memlock": 8, "as": 9, "locks": 10, "sigpending": 11, "msgqueue": 12, "nice": 13, "rtprio": 14,
    "rttime": 15,
}
INF = -1  # unlimited, as the resource module spells it


def _k(v: int) -> int:
    return INF if v < 0 else v


def _show(v: int) -> str:
    return "unlimited" if v in (INF, -1) else str(v)


def check(limits: tuple[Rlimit, ...]) -> None:
    """Refuse (125) a hard limit above what we inherited: the kernel would refuse it in the child anyway."""
    for rl in limits:
        if rl.name not in NAMES:
            raise SbxError(f"unknown ulimit '{rl.name}' (known: {', '.join(sorted(NAMES))})", where="--ulimit")
        _, cur_hard = sc.prlimit(NAMES[rl.name])
        soft, hard = _k(rl.soft), _k(rl.hard)
        if soft != INF and hard != INF and soft > hard or (soft == INF and hard != INF):
            raise SbxError(f"ulimit {rl.name}: soft limit {_show(rl.soft)} is above hard limit {_show(rl.hard)}",
                           where="--ulimit")
        if cur_hard != INF and (hard == INF or hard > cur_hard):
            raise SbxError(f"ulimit {rl.name}={_show(rl.hard)} is above the hard limit sbx inherited ({cur_hard}); "
                           f"lower it or raise the host limit", where="--ulimit")


def apply(limits: tuple[Rlimit, ...]) -> None:
    for rl in limits:
        try:
            sc.prlimit(NAMES[rl.name], (_k(rl.soft), _k(rl.hard)))
        except OSError as e:
            raise SbxError(f"cannot set ulimit {rl.name}={_show(rl.soft)}:{_show(rl.hard)}: "
                           f"{os.strerror(e.errno or 0)}") from None
