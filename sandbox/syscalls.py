"""Thin ctypes wrappers for the syscalls Python 3.11 lacks (unshare, setns, mount, pivot_root, openat2, ...).

Each raises OSError with errno set, like the os module does.
"""
from __future__ import annotations

import ctypes
import os
import struct

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000


MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18

MNT_DETACH = 2

AT_FDCWD = -100

# mount_setattr(2)
AT_RECURSIVE = 0x8000
AT_EMPTY_PATH = 0x1000
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8
MOUNT_ATTR_IDMAP = 0x00100000  # with userns_fd: files show their ids mapped through that namespace

# open_tree(2) / move_mount(2)
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOVE_MOUNT_T_EMPTY_PATH = 0x40
AT_SYMLINK_NOFOLLOW = 0x100

# openat2 resolve flags
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_IN_ROOT = 0x10

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
PR_SET_NAME = 15
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
PR_CAPBSET_DROP = 24

# x86_64 syscall numbers (generic numbers for the newer calls are the same on all arches).
_NR = {
    "x86_64": {"pivot_root": 155, "setns": 308, "unshare": 272, "open_tree": 428, "move_mount": 429,
               "openat2": 437, "mount_setattr": 442, "capset": 126, "capget": 125, "close_range": 436,
               "pidfd_getfd": 438},
    "aarch64": {"pivot_root": 41, "setns": 268, "unshare": 97, "open_tree": 428, "move_mount": 429,
                "openat2": 437, "mount_setattr": 442, "capset": 91, "capget": 90, "close_range": 436,
                "pidfd_getfd": 438},
}

_libc = None


def libc() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _nr(name: str) -> int:
    return _NR.get(os.uname().machine, _NR["x86_64"])[name]


def _check(res: int, what: str, path: str | None = None) -> int:
    if res < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}", path)
    return res


def _b(s: str | bytes | None):
    if s is None:
        return None
    return s.encode() if isinstance(s, str) else s


def unshare(flags: int) -> None:
    _check(libc().unshare(ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    _check(libc().setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    res = libc().mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data))
    _check(res, f"mount {fstype or ''} {source or ''} -> {target}".replace("  ", " "), target)


def umount2(target: str, flags: int = 0) -> None:
    _check(libc().umount2(_b(target), ctypes.c_int(flags)), "umount2", target)


def pivot_root(new_root: str, put_old: str) -> None:
    _check(libc().syscall(ctypes.c_long(_nr("pivot_root")), _b(new_root), _b(put_old)), "pivot_root", new_root)


def socket(family: int, type_: int, proto: int = 0) -> int:
    return _check(libc().socket(ctypes.c_int(family), ctypes.c_int(type_), ctypes.c_int(proto)), "socket")


def set_name(name: str) -> None:
    """The thread's comm (15 bytes), as ps and /proc/PID/comm show it."""
    _check(libc().prctl(ctypes.c_int(PR_SET_NAME), ctypes.c_char_p(name.encode()[:15]), ctypes.c_ulong(0),
                        ctypes.c_ulong(0), ctypes.c_ulong(0)), "prctl(PR_SET_NAME)")


def sethostname(name: str) -> None:
    b = name.encode()
    _check(libc().sethostname(b, ctypes.c_size_t(len(b))), "sethostname")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(libc().prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(arg3),
                               ctypes.c_ulong(arg4), ctypes.c_ulong(arg5)), "prctl")


def prctl_get_int(option: int) -> int:
    """A prctl that stores an int through its second argument (PR_GET_CHILD_SUBREAPER, ...)."""
    val = ctypes.c_int(0)
    _check(libc().prctl(ctypes.c_int(option), ctypes.byref(val), ctypes.c_ulong(0), ctypes.c_ulong(0),
                        ctypes.c_ulong(0)), "prctl")
    return val.value


CLOSE_RANGE_CLOEXEC = 1 << 2


def close_range(first: int, last: int, flags: int = 0) -> None:
    _check(libc().syscall(ctypes.c_long(_nr("close_range")), ctypes.c_uint(first), ctypes.c_uint(last),
                          ctypes.c_uint(flags)), "close_range")


RLIM_INFINITY = (1 << 64) - 1


class _Rlimit(ctypes.Structure):
    _fields_ = [("rlim_cur", ctypes.c_uint64), ("rlim_max", ctypes.c_uint64)]


def prlimit(resource: int, new: tuple[int, int] | None = None) -> tuple[int, int]:
    """getrlimit/setrlimit of this process (prlimit(2)); -1 means unlimited, as in the resource module.

    Here rather than `import resource`: that extension's load is ~0.8 ms of every start.
    """
    def raw(v: int) -> int:
        return RLIM_INFINITY if v < 0 else v

    old = _Rlimit()
    newp = ctypes.byref(_Rlimit(raw(new[0]), raw(new[1]))) if new is not None else None
    _check(libc().prlimit(ctypes.c_int(0), ctypes.c_int(resource), newp, ctypes.byref(old)), "prlimit")
    return tuple(-1 if v == RLIM_INFINITY else v for v in (old.rlim_cur, old.rlim_max))  # type: ignore[return-value]


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def mount_setattr(dirfd: int, path: str, flags: int, attr_set: int, attr_clr: int = 0, userns_fd: int = 0,
                  propagation: int = 0) -> None:
    """mount_setattr(2). With MOUNT_ATTR_IDMAP in attr_set, userns_fd gives the idmapping; propagation
    (MS_PRIVATE, ...) changes the mounts' propagation type, 0 leaves it."""
    attr = _MountAttr(attr_set, attr_clr, propagation, userns_fd)
    _check(libc().syscall(ctypes.c_long(_nr("mount_setattr")), ctypes.c_int(dirfd), _b(path), ctypes.c_uint(flags),
                          ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr))), "mount_setattr", path)


def pidfd_getfd(pidfd: int, targetfd: int) -> int:
    """A copy of another process's fd (pidfd_getfd(2), close-on-exec); needs ptrace access to it."""
    return _check(libc().syscall(ctypes.c_long(_nr("pidfd_getfd")), ctypes.c_int(pidfd), ctypes.c_int(targetfd),
                                 ctypes.c_uint(0)), "pidfd_getfd")


def open_tree(dirfd: int, path: str, flags: int) -> int:
    return _check(libc().syscall(ctypes.c_long(_nr("open_tree")), ctypes.c_int(dirfd), _b(path),
                                 ctypes.c_uint(flags)), "open_tree", path)


def move_mount(from_dirfd: int, from_path: str, to_dirfd: int, to_path: str, flags: int) -> None:
    _check(libc().syscall(ctypes.c_long(_nr("move_mount")), ctypes.c_int(from_dirfd), _b(from_path),
                          ctypes.c_int(to_dirfd), _b(to_path), ctypes.c_uint(flags)), "move_mount", to_path)


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def openat2(dirfd: int, path: str, flags: int, mode: int = 0, resolve: int = 0) -> int:
    how = _OpenHow(flags, mode, resolve)
    return _check(libc().syscall(ctypes.c_long(_nr("openat2")), ctypes.c_int(dirfd), _b(path), ctypes.byref(how),
                                 ctypes.c_size_t(ctypes.sizeof(how))), "openat2", path)


# Capabilities: capset(2) with the v3 (64-bit) header, to clear/set the three process sets at once.
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def capset(effective: int, permitted: int, inheritable: int) -> None:
    header = struct.pack("Ii", _LINUX_CAPABILITY_VERSION_3, 0)
    data = struct.pack("IIIIII", effective & 0xFFFFFFFF, permitted & 0xFFFFFFFF, inheritable & 0xFFFFFFFF,
                       effective >> 32, permitted >> 32, inheritable >> 32)
    hbuf = ctypes.create_string_buffer(header, len(header))
    dbuf = ctypes.create_string_buffer(data, len(data))
    _check(libc().syscall(ctypes.c_long(_nr("capset")), hbuf, dbuf), "capset")


# seccomp(2) filter installation: prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &sock_fprog).
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def seccomp_set_filter(bpf: bytes) -> None:
    """Load a classic-BPF seccomp program (8-byte instructions) into the calling thread's process."""
    buf = ctypes.create_string_buffer(bpf, len(bpf))
    prog = _SockFprog(len(bpf) // 8, ctypes.addressof(buf))
    _check(libc().prctl(ctypes.c_int(PR_SET_SECCOMP), ctypes.c_ulong(SECCOMP_MODE_FILTER),
                        ctypes.c_void_p(ctypes.addressof(prog)), ctypes.c_ulong(0), ctypes.c_ulong(0)),
           "prctl(PR_SET_SECCOMP)")


# Landlock (include/uapi/linux/landlock.h): three syscalls, generic numbers on every arch.
_NR_LANDLOCK = {"create_ruleset": 444, "add_rule": 445, "restrict_self": 446}
LANDLOCK_CREATE_RULESET_VERSION = 1 << 0
LANDLOCK_RULE_PATH_BENEATH = 1


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1  # __attribute__((packed)) in the uapi header: 12 bytes
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 when Landlock is absent (ENOSYS) or disabled (EOPNOTSUPP)."""
    rv = libc().syscall(ctypes.c_long(_NR_LANDLOCK["create_ruleset"]), None, ctypes.c_size_t(0),
                        ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION))
    return int(rv) if rv > 0 else 0


def landlock_create_ruleset(handled_fs: int, handled_net: int, scoped: int, size: int) -> int:
    """A ruleset fd; `size` is how much of the attr struct the ABI knows (8, 16 or 24 bytes)."""
    attr = _RulesetAttr(handled_fs, handled_net, scoped)
    return _check(libc().syscall(ctypes.c_long(_NR_LANDLOCK["create_ruleset"]), ctypes.byref(attr),
                                 ctypes.c_size_t(size), ctypes.c_uint32(0)), "landlock_create_ruleset")


def landlock_add_path_rule(ruleset: int, allowed: int, parent_fd: int) -> None:
    pb = _PathBeneathAttr(allowed, parent_fd)
    _check(libc().syscall(ctypes.c_long(_NR_LANDLOCK["add_rule"]), ctypes.c_int(ruleset),
                          ctypes.c_int(LANDLOCK_RULE_PATH_BENEATH), ctypes.byref(pb), ctypes.c_uint32(0)),
           "landlock_add_rule")


def landlock_restrict_self(ruleset: int) -> None:
    _check(libc().syscall(ctypes.c_long(_NR_LANDLOCK["restrict_self"]), ctypes.c_int(ruleset), ctypes.c_uint32(0)),
           "landlock_restrict_self")
def fstatfs_type(fd: int) -> int:
    """f_type of the filesystem fd is on (fstatfs(2)): tells a procfs/sysfs from a real file system."""
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit; f_type comes first
    _check(libc().fstatfs(ctypes.c_int(fd), buf), "fstatfs")
    return struct.unpack_from("l", buf.raw, 0)[0] & 0xFFFFFFFF


def set_fs_ids(uid: int, gid: int) -> tuple[int, int]:
    """setfsgid/setfsuid of the calling thread: the ids files are created with and checked against.

    Returns the previous (uid, gid). The calls report no errors, so the result is read back: a
    mismatch raises EPERM. With a non-zero fsuid the kernel clears CAP_DAC_OVERRIDE and the other
    file capabilities from the effective set, so access is judged as for that user.
    """
    old_gid = libc().setfsgid(ctypes.c_uint(gid))
    old_uid = libc().setfsuid(ctypes.c_uint(uid))
    if libc().setfsuid(ctypes.c_uint(0xFFFFFFFF)) != uid or libc().setfsgid(ctypes.c_uint(0xFFFFFFFF)) != gid:
        libc().setfsuid(ctypes.c_uint(old_uid))
        libc().setfsgid(ctypes.c_uint(old_gid))
        raise OSError(1, f"setfsuid({uid})/setfsgid({gid}) did not take effect")
    return old_uid, old_gid
