"""The one reader of /proc and cgroup files, shared by `run` (verify) and `audit`.

Everything a container can influence is hostile input here: process names and
paths can carry control characters, files can be huge, processes exit between
listing and reading. So every read is bounded, never follows a symlink the
container controls, and a vanished process raises ProcessGone (never a
traceback at the CLI).
"""
from __future__ import annotations

import errno
import os

from . import namespaces
from .records import field, record

PROC = "/proc"
MAX_SMALL = 64 * 1024  # status, maps, attr files
MAX_LARGE = 4 * 1024 * 1024  # net tables of a busy host
# A mount table is read to its end: a container can pad it (long escaped paths, thousands of
# mounts) so that a host bind listed late would fall past any smaller cap. Past this bound the
# view is reported incomplete (read_mountinfo_ex), never silently cut.
MAX_MOUNTINFO = 16 * 1024 * 1024

NS_KINDS = namespaces.PROC_NAMES + ("time",)  # time: read for audit, sbx does not make one

# Linux capability numbers -> names (include/uapi/linux/capability.h).
CAP_NAMES = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
)
CAP_NUMBERS = {n: i for i, n in enumerate(CAP_NAMES)}


class ProcessGone(Exception):
    """The process exited (or became unreadable) while we were reading it."""


def cap_last() -> int:
    try:
        return int(_read_bytes(f"{PROC}/sys/kernel/cap_last_cap", 64))
    except (OSError, ValueError):
        return len(CAP_NAMES) - 1


def caps_to_names(mask: int) -> list[str]:
    names = []
    i = 0
    while mask >> i:
        if mask >> i & 1:
            names.append(CAP_NAMES[i] if i < len(CAP_NAMES) else f"CAP_{i}")
        i += 1
    return names


def names_to_mask(names) -> int:
    mask = 0
    for n in names:
        mask |= 1 << CAP_NUMBERS[n]
    return mask


def _read_bytes(path: str, limit: int) -> bytes:
    """Read at most `limit` bytes; never follow a final symlink."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ESRCH):
            raise ProcessGone(path) from None
        raise
    try:
        chunks = []
        left = limit
        while left > 0:
            b = os.read(fd, min(left, 65536))
            if not b:
                break
            chunks.append(b)
            left -= len(b)
        return b"".join(chunks)
    except OSError as e:
        if e.errno == errno.ESRCH:
            raise ProcessGone(path) from None
        raise
    finally:
        os.close(fd)


def _read_to_end(path: str, limit: int) -> tuple[bytes, bool]:
    """(at most `limit` bytes, whether that was the whole file); never follows a final symlink."""
    data = _read_bytes(path, limit + 1)
    if len(data) <= limit:
        return data, True
    return data[:limit], False


def read_text(pid: int | str, name: str, limit: int = MAX_SMALL) -> str:
    return _read_bytes(f"{PROC}/{pid}/{name}", limit).decode("utf-8", "replace")


@record
class Status:
    name: str = ""
    pid: int = 0
    ppid: int = 0
    nspid: tuple[int, ...] = ()
    uid: tuple[int, int, int, int] = (0, 0, 0, 0)  # real, effective, saved, fs
    gid: tuple[int, int, int, int] = (0, 0, 0, 0)
    groups: tuple[int, ...] = ()
    cap_inh: int = 0
    cap_prm: int = 0
    cap_eff: int = 0
    cap_bnd: int = 0
    cap_amb: int = 0
    no_new_privs: int | None = None
    seccomp: int | None = None  # 0 disabled, 1 strict, 2 filter
    seccomp_filters: int | None = None
    cpus_allowed_list: str | None = None
    mems_allowed_list: str | None = None
    state: str = ""


def parse_status(text: str) -> Status:
    st = Status()
    for line in text.splitlines():
        key, sep, val = line.partition(":")
        if not sep:
            continue
        val = val.strip()
        try:
            if key == "Name":
                st.name = val
            elif key == "State":
                st.state = val[:1]
            elif key == "Pid":
                st.pid = int(val)
            elif key == "PPid":
                st.ppid = int(val)
            elif key == "NSpid":
                st.nspid = tuple(int(x) for x in val.split())
            elif key == "Uid":
                st.uid = tuple(int(x) for x in val.split()[:4])  # type: ignore[assignment]
            elif key == "Gid":
                st.gid = tuple(int(x) for x in val.split()[:4])  # type: ignore[assignment]
            elif key == "Groups":
                st.groups = tuple(int(x) for x in val.split())
            elif key == "CapInh":
                st.cap_inh = int(val, 16)
            elif key == "CapPrm":
                st.cap_prm = int(val, 16)
            elif key == "CapEff":
                st.cap_eff = int(val, 16)
            elif key == "CapBnd":
                st.cap_bnd = int(val, 16)
            elif key == "CapAmb":
                st.cap_amb = int(val, 16)
            elif key == "NoNewPrivs":
                st.no_new_privs = int(val)
            elif key == "Seccomp":
                st.seccomp = int(val)
            elif key == "Seccomp_filters":
                st.seccomp_filters = int(val)
            elif key == "Cpus_allowed_list":
                st.cpus_allowed_list = val
            elif key == "Mems_allowed_list":
                st.mems_allowed_list = val
        except ValueError:
            continue  # a malformed field stays at its default: unknown, not a crash
    return st


def read_status(pid: int | str) -> Status:
    return parse_status(read_text(pid, "status"))


@record(frozen=True)
class IdMapEntry:
    inside: int
    outside: int
    count: int


def parse_idmap(text: str) -> list[IdMapEntry]:
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3:
            try:
                out.append(IdMapEntry(int(parts[0]), int(parts[1]), int(parts[2])))
            except ValueError:
                continue
    return out


def read_idmap(pid: int | str, which: str = "uid") -> list[IdMapEntry]:
    return parse_idmap(read_text(pid, f"{which}_map"))


def maps_host_root(entries: list[IdMapEntry]) -> bool:
    """Does any mapping reach host id 0 (as seen from the reader's user namespace)?"""
    return any(e.outside == 0 and e.count > 0 for e in entries)


def inside_id(entries: list[IdMapEntry], outside: int) -> int | None:
    """The id inside the namespace that `outside` (as the reader sees it) is, or None if unmapped."""
    for e in entries:
        if e.outside <= outside < e.outside + e.count:
            return e.inside + (outside - e.outside)
    return None


def read_ns(pid: int | str, kinds=NS_KINDS) -> dict[str, int]:
    """Namespace inode numbers. readlink gives 'net:[4026531840]' without opening the ns."""
    out: dict[str, int] = {}
    for k in kinds:
        try:
            link = os.readlink(f"{PROC}/{pid}/ns/{k}")
        except FileNotFoundError:
            if not os.path.exists(f"{PROC}/{pid}"):
                raise ProcessGone(str(pid)) from None
            continue  # kernel without this ns kind
        except PermissionError:
            continue
        lb = link.find("[")
        if lb >= 0 and link.endswith("]"):
            try:
                out[k] = int(link[lb + 1:-1])
            except ValueError:
                pass
    return out


@record(frozen=True)
class Mount:
    mount_id: int
    parent_id: int
    dev: str
    root: str
    mountpoint: str
    options: frozenset[str]
    optional: tuple[str, ...]
    fstype: str
    source: str
    super_options: frozenset[str]

    @property
    def readonly(self) -> bool:
        return "ro" in self.options

    @property
    def shared(self) -> bool:
        return any(o.startswith("shared:") for o in self.optional)

    @property
    def peer_group(self) -> int | None:
        """The shared peer group id (shared:N), or None for a private/slave-only mount."""
        return _optional_id(self.optional, "shared:")

    @property
    def master(self) -> int | None:
        """The peer group this mount receives propagation from (master:N), or None."""
        return _optional_id(self.optional, "master:")

    @property
    def nodev(self) -> bool:
        return "nodev" in self.options


def _optional_id(optional: tuple[str, ...], prefix: str) -> int | None:
    for o in optional:
        if o.startswith(prefix):
            try:
                return int(o[len(prefix):])
            except ValueError:
                return None
    return None


def _unescape_mount(s: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    if "\\" not in s:
        return s
    out = []
    i = 0
    while i < len(s):
        if s[i] == "\\" and i + 3 < len(s) and s[i + 1:i + 4].isdigit():
            try:
                out.append(chr(int(s[i + 1:i + 4], 8)))
                i += 4
                continue
            except ValueError:
                pass
        out.append(s[i])
        i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[Mount]:
    mounts = []
    for line in text.splitlines():
        parts = line.split(" ")
        try:
            sep = parts.index("-", 6)
            mounts.append(Mount(
                mount_id=int(parts[0]),
                parent_id=int(parts[1]),
                dev=parts[2],
                root=_unescape_mount(parts[3]),
                mountpoint=_unescape_mount(parts[4]),
                options=frozenset(parts[5].split(",")),
                optional=tuple(parts[6:sep]),
                fstype=parts[sep + 1],
                source=_unescape_mount(parts[sep + 2]) if len(parts) > sep + 2 else "",
                super_options=frozenset(parts[sep + 3].split(",")) if len(parts) > sep + 3 else frozenset(),
            ))
        except (ValueError, IndexError):
            continue
    return mounts


def read_mountinfo_ex(pid: int | str, limit: int = MAX_MOUNTINFO) -> tuple[list[Mount], bool]:
    """(mounts, complete): the whole table, or the first `limit` bytes and False.

    A cut table drops its partial last line; callers that judge mounts must treat
    an incomplete view as unknown (a later mount may be the one that matters).
    """
    raw, complete = _read_to_end(f"{PROC}/{pid}/mountinfo", limit)
    if not complete:
        raw = raw[:raw.rfind(b"\n") + 1]
    return parse_mountinfo(raw.decode("utf-8", "replace")), complete


def read_mountinfo(pid: int | str) -> list[Mount]:
    return read_mountinfo_ex(pid)[0]


def _path_parents(path: str):
    """'/a/b/c' -> '/a/b/c', '/a/b', '/a', '/'."""
    p = path
    while True:
        yield p
        if p == "/":
            return
        p = p.rsplit("/", 1)[0] or "/"


def visible_mounts(mounts: list[Mount]) -> list[Mount]:
    """The mounts a process can actually see: those not covered by a later mount.

    A mount is hidden when a sibling (same parent) sits at its mountpoint or at a
    path above it (that sibling came later: had it come first, the mount would be
    its child), or when any mount on its chain to the root is hidden that way.
    An over-mount at the same path is a child of the mount it covers: it hides
    that mount and, as a sibling at an ancestor path, all its other children.
    Table order is kept.
    """
    by_id = {m.mount_id: m for m in mounts}
    kids: dict[int, dict[str, list[Mount]]] = {}
    for m in mounts:
        kids.setdefault(m.parent_id, {}).setdefault(m.mountpoint, []).append(m)

    def covered(m: Mount) -> bool:
        parent = by_id.get(m.parent_id)
        sib = kids.get(m.parent_id, {})
        for p in _path_parents(m.mountpoint):
            for other in sib.get(p, ()):
                if other is not m and (p != m.mountpoint or other.mount_id > m.mount_id):
                    return True
            if parent is not None and p == parent.mountpoint:
                break  # nothing above the parent's own mountpoint can be its child
        return False

    chain: dict[int, bool] = {}

    def chain_ok(m: Mount) -> bool:
        # Iterative: a container controls how deep its mount tree is.
        path: list[Mount] = []
        cur: Mount | None = m
        seen: set[int] = set()
        while cur is not None and cur.mount_id not in chain and cur.mount_id not in seen:
            seen.add(cur.mount_id)
            path.append(cur)
            cur = by_id.get(cur.parent_id)
        ok = True if cur is None or cur.mount_id in seen else chain[cur.mount_id]
        for x in reversed(path):
            ok = ok and not covered(x)
            chain[x.mount_id] = ok
        return chain[m.mount_id]

    def overmounted(m: Mount) -> bool:
        return any(c is not m for c in kids.get(m.mount_id, {}).get(m.mountpoint, ()))

    return [m for m in mounts if chain_ok(m) and not overmounted(m)]


@record(frozen=True)
class CgroupEntry:
    hierarchy: int
    controllers: tuple[str, ...]
    path: str


def parse_cgroup(text: str) -> list[CgroupEntry]:
    out = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        try:
            out.append(CgroupEntry(int(parts[0]), tuple(c for c in parts[1].split(",") if c), parts[2]))
        except ValueError:
            continue
    return out


def read_cgroup(pid: int | str) -> list[CgroupEntry]:
    return parse_cgroup(read_text(pid, "cgroup"))


def read_sysctl(name: str, limit: int = 4096) -> str | None:
    """A /proc/sys value by its path below /proc/sys ("user/max_user_namespaces"); None if absent."""
    try:
        return _read_bytes(f"{PROC}/sys/{name}", limit).decode("utf-8", "replace").strip()
    except (OSError, ProcessGone):
        return None


def read_meminfo(pid: int | str = "self") -> dict[str, int]:
    """/proc/meminfo (kB values by key); empty if unreadable."""
    out: dict[str, int] = {}
    try:
        text = _read_bytes(f"{PROC}/meminfo", MAX_SMALL).decode("ascii", "replace")
    except (OSError, ProcessGone):
        return out
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        try:
            out[key] = int(rest.split()[0])
        except (ValueError, IndexError):
            continue
    return out


def list_fds(pid: int | str = "self") -> list[int]:
    """The open file descriptor numbers of a process."""
    try:
        return sorted(int(n) for n in os.listdir(f"{PROC}/{pid}/fd") if n.isdigit())
    except FileNotFoundError:
        raise ProcessGone(str(pid)) from None


def root_identity(pid: int | str) -> tuple[int, int, int] | None:
    """(mount id, device, inode) of a process's root directory; None if unreadable."""
    path = "/" if pid == "self" else f"{PROC}/{pid}/root"
    mid = mount_id_of(path)
    try:
        st = os.stat(path)
    except OSError:
        return None
    return None if mid is None else (mid, st.st_dev, st.st_ino)


def mount_id_of(path: str) -> int | None:
    """The id of the mount `path` is on (as mountinfo numbers it), from /proc/self/fdinfo."""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        for line in read_text("self", f"fdinfo/{fd}").splitlines():
            if line.startswith("mnt_id:"):
                return int(line.split()[1])
    except (OSError, ValueError, ProcessGone):
        return None
    finally:
        os.close(fd)
    return None


def read_lsm_label(pid: int | str) -> str | None:
    """The LSM label in effect, or None when no LSM provides one.

    Prefers the AppArmor-specific file (stacked LSMs), then the generic one.
    An empty or unreadable attr means no label: never report one not in effect.
    """
    for name in ("attr/apparmor/current", "attr/current"):
        try:
            raw = read_text(pid, name, 4096)
        except ProcessGone:
            if not os.path.exists(f"{PROC}/{pid}"):
                raise
            continue
        except OSError:
            continue
        label = raw.strip("\x00\n ")
        if label:
            return label
    return None


def read_cmdline(pid: int | str, limit: int = 4096) -> list[str]:
    raw = _read_bytes(f"{PROC}/{pid}/cmdline", limit)
    return [a.decode("utf-8", "replace") for a in raw.split(b"\x00") if a]


def read_comm(pid: int | str) -> str:
    return read_text(pid, "comm", 256).rstrip("\n")


def read_children(pid: int) -> list[int]:
    """Direct children of pid (CONFIG_PROC_CHILDREN), across all its threads."""
    out: list[int] = []
    try:
        tids = os.listdir(f"{PROC}/{pid}/task")
    except FileNotFoundError:
        raise ProcessGone(str(pid)) from None
    for tid in tids:
        try:
            out.extend(int(x) for x in read_text(pid, f"task/{tid}/children").split())
        except (ProcessGone, ValueError):
            continue
    return out


def list_pids() -> list[int]:
    return [int(d) for d in os.listdir(PROC) if d.isdigit()]


@record
class ProcFacts:
    """Everything verify and audit need about one process, read once."""

    pid: int
    status: Status
    uid_map: list[IdMapEntry]
    gid_map: list[IdMapEntry]
    ns: dict[str, int]
    mounts: list[Mount]
    cgroups: list[CgroupEntry]
    lsm_label: str | None
    host_ns: dict[str, int] = field(default_factory=dict)

    def shared_namespaces(self) -> list[str]:
        return sorted(k for k, v in self.ns.items() if self.host_ns.get(k) == v)



def read(pid: int, host_pid: int | str = 1, with_mounts: bool = True) -> ProcFacts:
    """Read a process's security-relevant state. `host_pid` is the reference for shared namespaces."""
    status = read_status(pid)
    ns = read_ns(pid)
    try:
        host_ns = read_ns(host_pid)
    except ProcessGone:
        host_ns = {}
    return ProcFacts(
        pid=pid,
        status=status,
        uid_map=read_idmap(pid, "uid"),
        gid_map=read_idmap(pid, "gid"),
        ns=ns,
        mounts=read_mountinfo(pid) if with_mounts else [],
        cgroups=read_cgroup(pid),
        lsm_label=read_lsm_label(pid),
        host_ns=host_ns,
    )


# ---------------------------------------------------------------------------
# Audit helpers (added for `sbx audit`): still the one place that parses /proc.
# ---------------------------------------------------------------------------

@record(frozen=True)
class StatBrief:
    pid: int
    comm: str
    state: str
    ppid: int
    starttime: int


def _stat_split(text: str) -> tuple[int, str, list[str]]:
    """(pid, comm, fields from field 3 on) of a /proc/PID/stat line."""
    # comm may contain spaces and ')' (it is attacker-chosen): it ends at the LAST ')'.
    lp, rp = text.find("("), text.rfind(")")
    if lp < 0 or rp < lp:
        raise ValueError("malformed stat")
    return int(text[:lp]), text[lp + 1:rp], text[rp + 2:].split()


def parse_stat(text: str) -> StatBrief:
    pid, comm, rest = _stat_split(text)
    return StatBrief(pid=pid, comm=comm, state=rest[0], ppid=int(rest[1]), starttime=int(rest[19]))


def read_arg_area(pid: int | str) -> tuple[int, int]:
    """(arg_start, arg_end): where the process's original argv lives (proc(5) fields 48-49)."""
    try:
        rest = _stat_split(read_text(pid, "stat", 4096))[2]
        return int(rest[45]), int(rest[46])
    except (ValueError, IndexError):
        raise ProcessGone(str(pid)) from None


def read_dump_owner(pid: int | str) -> int:
    """Owner of the process's /proc files: its euid while dumpable, root (0) once it is not."""
    try:
        return os.stat(f"{PROC}/{pid}/mem").st_uid
    except FileNotFoundError:
        raise ProcessGone(str(pid)) from None


def read_stat(pid: int | str) -> StatBrief:
    try:
        return parse_stat(read_text(pid, "stat", 4096))
    except (ValueError, IndexError):
        raise ProcessGone(str(pid)) from None  # a zombie/reaped mid-read looks like garbage


@record(frozen=True)
class Listener:
    proto: str  # tcp, tcp6, udp, udp6
    address: str
    port: int
    inode: int

    @property
    def all_interfaces(self) -> bool:
        return self.address in ("0.0.0.0", "::")


def _hex_addr(h: str) -> str:
    import ipaddress
    b = bytes.fromhex(h)
    if len(b) == 4:
        return str(ipaddress.IPv4Address(b[::-1]))
    # /proc/net/tcp6 prints four host-order 32-bit words.
    words = b"".join(b[i:i + 4][::-1] for i in range(0, 16, 4))
    return str(ipaddress.IPv6Address(words))


def parse_net_sockets(text: str, proto: str) -> list[Listener]:
    """Listening TCP sockets and bound UDP sockets from a /proc/net/{tcp,udp}[6] table."""
    out = []
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 10:
            continue
        try:
            addr, port = parts[1].rsplit(":", 1)
            st = parts[3]
            if proto.startswith("tcp") and st != "0A":  # TCP_LISTEN
                continue
            if proto.startswith("udp") and st != "07":  # TCP_CLOSE == unconnected bound UDP
                continue
            out.append(Listener(proto, _hex_addr(addr), int(port, 16), int(parts[9])))
        except ValueError:
            continue
    return out


def read_listeners(pid: int | str) -> list[Listener]:
    """Sockets listening in pid's network namespace."""
    out: list[Listener] = []
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        try:
            out.extend(parse_net_sockets(read_text(pid, f"net/{proto}", MAX_LARGE), proto))
        except ProcessGone:
            if not os.path.exists(f"{PROC}/{pid}"):
                raise
        except OSError:
            continue
    return out


def read_socket_inodes(pid: int | str, limit: int = 4096) -> set[int]:
    """Inodes of sockets pid holds open (bounded: at most `limit` fds looked at)."""
    out: set[int] = set()
    try:
        names = os.listdir(f"{PROC}/{pid}/fd")
    except FileNotFoundError:
        raise ProcessGone(str(pid)) from None
    except PermissionError:
        return out
    for n in names[:limit]:
        try:
            link = os.readlink(f"{PROC}/{pid}/fd/{n}")
        except OSError:
            continue
        if link.startswith("socket:["):
            try:
                out.add(int(link[8:-1]))
            except ValueError:
                pass
    return out


RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10


def _openat2(dirfd: int, path: str, flags: int, resolve: int) -> int:
    from . import syscalls  # the one ctypes boundary; lazy: most readers never open inside a root
    return syscalls.openat2(dirfd, path, flags, 0, resolve)


def open_root(pid: int | str) -> int:
    """An O_PATH fd of pid's root directory (/proc/PID/root): the base every path inside a
    container is resolved from, with RESOLVE_IN_ROOT, by whoever holds it (`sbx cp`)."""
    try:
        return os.open(f"{PROC}/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ProcessGone(str(pid)) from None


def open_in_root(pid: int | str, path: str, flags: int = os.O_PATH) -> int:
    """Open `path` as seen inside pid's root, resolving every symlink INSIDE that root.

    A container's `/dev -> /` or `x -> /proc/1/root` symlink cannot walk us into the
    host: RESOLVE_IN_ROOT clamps '..' and absolute links to the container root and
    RESOLVE_NO_MAGICLINKS refuses /proc/*/fd-style jumps.
    """
    try:
        root = os.open(f"{PROC}/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ProcessGone(str(pid)) from None
    try:
        return _openat2(root, path.lstrip("/") or ".", flags | os.O_CLOEXEC,
                        RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
    finally:
        os.close(root)


def stat_in_root(pid: int | str, path: str) -> os.stat_result | None:
    """stat() of `path` inside pid's root (None when absent); never follows links out of it."""
    try:
        fd = open_in_root(pid, path)
    except OSError:
        return None
    try:
        return os.fstat(fd)
    finally:
        os.close(fd)


@record(frozen=True)
class DeviceNode:
    path: str
    kind: str  # "c" or "b"
    major: int
    minor: int
    uid: int = 0  # owner and mode as the host sees them: who may open it is decided from these
    gid: int = 0
    mode: int = 0o600


def list_devices(pid: int | str, limit: int = 4096, cache: dict | None = None) -> list[DeviceNode] | None:
    """Device nodes under pid's /dev (one level of subdirectories, pts/shm/mqueue skipped).

    None when /dev cannot be opened inside the root. Bounded to `limit` entries.
    `cache` maps the /dev directory's (st_dev, st_ino) to its listing: many
    containers share the host's devtmpfs, which need not be listed twice per scan.
    """
    import stat as _stat
    try:
        dfd = open_in_root(pid, "/dev", os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None
    key = None
    if cache is not None:
        st = os.fstat(dfd)
        key = (st.st_dev, st.st_ino)
        if key in cache:
            os.close(dfd)
            return cache[key]
    out: list[DeviceNode] = []
    seen = 0

    def walk(fd: int, prefix: str, depth: int) -> None:
        nonlocal seen
        try:
            names = os.listdir(fd)
        except OSError:
            return
        for n in names:
            seen += 1
            if seen > limit:
                return
            try:
                st = os.stat(n, dir_fd=fd, follow_symlinks=False)
            except OSError:
                continue
            if _stat.S_ISCHR(st.st_mode) or _stat.S_ISBLK(st.st_mode):
                out.append(DeviceNode(f"{prefix}/{n}", "c" if _stat.S_ISCHR(st.st_mode) else "b",
                                      os.major(st.st_rdev), os.minor(st.st_rdev),
                                      st.st_uid, st.st_gid, _stat.S_IMODE(st.st_mode)))
            elif _stat.S_ISDIR(st.st_mode) and depth < 1 and n not in ("pts", "shm", "mqueue", "hugepages"):
                try:
                    sub = os.open(n, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                except OSError:
                    continue
                try:
                    walk(sub, f"{prefix}/{n}", depth + 1)
                finally:
                    os.close(sub)

    try:
        walk(dfd, "/dev", 0)
    finally:
        os.close(dfd)
    if key is not None:
        cache[key] = out
    return out


def read_cgroup_value(path: str, limit: int = 4096) -> str | None:
    """A cgroup control file's text (stripped), or None if absent/unreadable."""
    try:
        return _read_bytes(path, limit).decode("utf-8", "replace").strip()
    except (ProcessGone, OSError):
        return None


def cgroup_mounts(pid: int | str = "self") -> dict[str, tuple[str, str]]:
    """controller -> (mountpoint, root) for the cgroup hierarchies pid sees; v2 keyed as ''."""
    out: dict[str, tuple[str, str]] = {}
    for m in read_mountinfo(pid):
        if m.fstype == "cgroup2":
            out.setdefault("", (m.mountpoint, m.root))
        elif m.fstype == "cgroup":
            for o in m.super_options:
                if o in ("rw", "ro") or "=" in o and not o.startswith("name="):
                    continue
                out.setdefault(o, (m.mountpoint, m.root))
    return out


def kernel_release() -> str:
    try:
        return _read_bytes(f"{PROC}/sys/kernel/osrelease", 256).decode().strip()
    except (ProcessGone, OSError):
        return os.uname().release


def active_lsms() -> list[str]:
    try:
        return [x for x in _read_bytes("/sys/kernel/security/lsm", 4096).decode().strip().split(",") if x]
    except (ProcessGone, OSError):
        return []


@record(frozen=True)
class UnixListener:
    inode: int
    path: str  # as bound (relative to the binder's root); "@name" for the abstract namespace


def parse_net_unix(text: str) -> list[UnixListener]:
    """Listening, path-bound unix sockets from a /proc/PID/net/unix table."""
    out = []
    for line in text.splitlines()[1:]:
        parts = line.split(None, 7)
        if len(parts) < 8:
            continue
        try:
            flags = int(parts[3], 16)
            inode = int(parts[6])
        except ValueError:
            continue
        if flags & 0x10000:  # __SO_ACCEPTCON: listen(2) was called
            out.append(UnixListener(inode, parts[7]))
    return out


def read_unix_listeners(pid: int | str) -> list[UnixListener]:
    """Listening unix sockets of pid's network namespace."""
    try:
        return parse_net_unix(read_text(pid, "net/unix", MAX_LARGE))
    except ProcessGone:
        if not os.path.exists(f"{PROC}/{pid}"):
            raise
        return []


def exe_identity(pid: int | str) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the file pid executes, or None if unreadable.

    A process names itself (comm, argv) as it likes; the executed file is what the
    kernel loaded, so "this is the host's bwrap" is decided by this identity.
    """
    try:
        st = os.stat(f"{PROC}/{pid}/exe")
    except OSError:
        return None
    return st.st_dev, st.st_ino
