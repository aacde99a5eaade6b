"""Landlock: restrict the workload's filesystem access to what the mount plan intends.

Why our own binding (sandbox/syscalls.py, the one ctypes module) rather than a
package: Landlock is three syscalls (create_ruleset, add_rule, restrict_self)
with two small structs; a binding adds no dependency to a security tool, and
— the real reason — we need to control ABI probing ourselves: we handle exactly the access rights the
running kernel's ABI knows (older kernels reject unknown bits with EINVAL) and
we report the ABI actually used, which the run record and verification rely on.

Order in the launch: applied in the workload process after pivot_root (so the
rule paths are the sandbox's own paths) and before the capability drop; the
kernel accepts restrict_self there because the process still holds
CAP_SYS_ADMIN in its user namespace (or has no_new_privs).

Landlock grants are a union: a path gets every right granted on it or on any
parent. So a read-only bind *under* a read-write tree (-v x:/tmp/x:ro) is
protected by its read-only mount flag, not by Landlock; Landlock's job here is
the converse — denying what a writable mount would otherwise allow.

Network rights (ABI 4, TCP bind/connect) are deliberately not handled here:
the sandbox's network is decided by its network namespace (sandbox.net).
"""
from __future__ import annotations

import errno
import os
import stat

from . import syscalls as sc
from .errors import SbxError
from .records import field, record
from .spec import IF_AVAILABLE, OFF, REQUIRED, Spec

# Filesystem access rights (include/uapi/linux/landlock.h), by the ABI that introduced them.
EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13  # ABI 2
TRUNCATE = 1 << 14  # ABI 3
IOCTL_DEV = 1 << 15  # ABI 5

SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1  # ABI 6

_ABI1_FS = (1 << 13) - 1
# Rights that make sense on a non-directory; the kernel refuses others there.
_FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV

ACCESS_NAMES = ("ro", "rw", "wfile")



@record(frozen=True)
class Rule:
    path: str
    access: str  # "ro" | "rw" | "wfile"


@record
class LandlockPlan:
    rules: list[Rule]
    abi: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"abi": self.abi, "rules": [{"path": r.path, "access": r.access} for r in self.rules]}


def abi_version() -> int:
    """The kernel's Landlock ABI; 0 when Landlock is not built in or is disabled at boot.

    Always the kernel's own answer: no switch may make sbx believe Landlock is
    missing (that would drop it from every if-available profile). Tests simulate
    such a host with a seccomp filter under sbx (tests/hostsim.py).
    """
    return sc.landlock_abi()


def fs_rights(abi: int) -> int:
    """Every filesystem right the given ABI can handle."""
    rights = _ABI1_FS
    if abi >= 2:
        rights |= REFER
    if abi >= 3:
        rights |= TRUNCATE
    if abi >= 5:
        rights |= IOCTL_DEV
    return rights


def access_mask(access: str, abi: int) -> int:
    ro = READ_FILE | READ_DIR | EXECUTE
    if access == "ro":
        mask = ro
    elif access == "wfile":
        # Device nodes: read, write, truncate (`> /dev/null` opens O_TRUNC) and
        # ioctl (a shell opening /dev/tty needs terminal ioctls); no creation.
        mask = ro | WRITE_FILE | TRUNCATE | IOCTL_DEV
    elif access == "rw":
        mask = fs_rights(abi)
    else:
        raise SbxError(f"unknown landlock access {access!r} (expected one of {', '.join(ACCESS_NAMES)})",
                       where="landlock")
    return mask & fs_rights(abi)


def rules_for(spec: Spec) -> list[Rule]:
    """The rules that mirror the mount plan of sandbox.mounts.

    /proc gets "wfile" rather than "ro": the process's own files there are
    legitimately written (attr/exec by the MAC stage, which runs after this
    one; oom_score_adj, comm, `> /proc/self/fd/1`), and what /proc must not
    let a workload change is already fenced by the mount plan (/proc/sys,
    /proc/sysrq-trigger and friends are read-only binds, sensitive files are
    masked) and by the user namespace owning none of the host's knobs. No
    creation/removal rights are granted there (procfs has none to give).
    """
    fs = spec.filesystem
    rules = [Rule("/", "ro" if fs.read_only else "rw")]
    rules.append(Rule("/tmp", "rw"))
    rules.append(Rule("/dev", "wfile"))
    rules.append(Rule("/dev/shm", "rw"))
    # POSIX message queues live on the mqueue mount of the sandbox's own ipc
    # namespace; mq_open() is a create in that directory, so it needs rw.
    rules.append(Rule("/dev/mqueue", "rw"))
    rules.append(Rule("/proc", "wfile"))
    for b in fs.binds:
        rules.append(Rule(b.target, "ro" if b.readonly else "rw"))
    return rules


def plan(spec: Spec) -> LandlockPlan | None:
    """Parent-side decision by spec.security.landlock: refuse, skip with a note, or plan the rules."""
    level = spec.security.landlock
    if level == OFF:
        return None
    if level not in (REQUIRED, IF_AVAILABLE):
        raise SbxError(f"unknown landlock level {level!r} (expected required, if-available or off)",
                       where="security.landlock")
    abi = abi_version()
    if abi == 0:
        if level == REQUIRED:
            raise SbxError("Landlock is required by the profile but this kernel does not provide it "
                           "(not built in, or not in the lsm= boot list); use a kernel with "
                           "CONFIG_SECURITY_LANDLOCK=y or set security.landlock: if-available",
                           where="landlock")
        return None
    return LandlockPlan(rules=rules_for(spec), abi=abi)


def _err(what: str, e: int) -> SbxError:
    return SbxError(f"{what}: {os.strerror(e)}", where="landlock")


def apply(rules: list[Rule], *, scope_signals: bool = True) -> int:
    """Restrict the calling process (and its future children) to `rules`; return the ABI used.

    Runs in the forked sandbox child. Handles every right the kernel's ABI knows
    so nothing unlisted stays allowed; with ABI >= 6 and scope_signals also
    scopes signals and abstract unix sockets to the sandbox's own domain.
    Rule paths that do not exist (or whose last component is a symlink, which
    we never follow) are skipped: no rule means no access, which fails closed.
    """
    abi = abi_version()
    if abi == 0:
        raise SbxError("Landlock is not available in this kernel", where="landlock")
    handled = fs_rights(abi)
    size, scoped = 8, 0  # ABI 1-3 know only handled_access_fs
    if abi >= 4:
        size = 16
    if abi >= 6:
        size = 24
        if scope_signals:
            scoped = SCOPE_SIGNAL | SCOPE_ABSTRACT_UNIX_SOCKET
    try:
        ruleset = sc.landlock_create_ruleset(handled, 0, scoped, size)
    except OSError as e:
        raise _err("create_ruleset failed", e.errno or 0) from None
    try:
        for rule in rules:
            mask = access_mask(rule.access, abi)
            try:
                fd = os.open(rule.path, os.O_PATH | os.O_CLOEXEC | os.O_NOFOLLOW)
            except FileNotFoundError:
                continue
            except NotADirectoryError:
                continue
            except OSError as e:
                raise _err(f"cannot open rule path {rule.path}", e.errno or 0) from None
            try:
                mode = os.fstat(fd).st_mode
                if stat.S_ISLNK(mode):
                    continue
                if not stat.S_ISDIR(mode):
                    mask &= _FILE_RIGHTS
                try:
                    sc.landlock_add_path_rule(ruleset, mask, fd)
                except OSError as e:
                    raise _err(f"add_rule {rule.path} ({rule.access}) failed", e.errno or 0) from None
            finally:
                os.close(fd)
        try:
            sc.landlock_restrict_self(ruleset)
        except OSError as e:
            if e.errno == errno.EPERM:
                raise SbxError("restrict_self refused: the process needs no_new_privs or CAP_SYS_ADMIN "
                               "in its user namespace at this stage", where="landlock") from None
            raise _err("restrict_self failed", e.errno or 0) from None
    finally:
        os.close(ruleset)
    return abi
