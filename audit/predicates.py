"""Shared definitions over a Subject: what "privileged", "host root", "reachable" mean.

The risk catalogue (audit.checks) and the policy rules (audit.conformance) both
decide through these functions, so a live container, an admission Spec and a
policy can never disagree about, say, whether a container is privileged or
whether a host path is really exposed.

Reachability follows the kernel: a host object (a runtime socket, release_agent,
a sysctl, a device node) is usable by a process when its HOST credentials pass
the object's owner/mode check, or when it holds the overriding capability in the
user namespace that owns the object. Capabilities held inside an own user
namespace act on host objects only where that namespace maps the object's owner
and group (capable_wrt_inode_uidgid); for host-root-owned objects that means
only when the namespace maps host root.
"""
from __future__ import annotations

from .subject import Obj, Subject

READ, WRITE = 4, 2

# Per-container files the runtime itself generates and binds (resolv.conf, hosts, secrets volumes).
RUNTIME_OWNED = ("/run/containers/storage/overlay-containers/", "/var/lib/containers/storage/overlay-containers/",
                 "/var/lib/docker/containers/", "/var/lib/kubelet/pods/", "/run/sbx/", "/run/libpod/",
                 "/var/run/containers/storage/overlay-containers/", "/run/user/",
                 "/var/lib/sbx/volumes/")  # sbx's named volumes: the runtime's own data, as a PVC is


# --- identity ------------------------------------------------------------------

def confined(s: Subject) -> bool:
    """Capabilities held inside an own user namespace that maps no id to host root act only on that namespace."""
    return s.userns and not s.root_maps_host_root


def is_host_root(s: Subject) -> bool:
    """The process runs as host uid 0 (whatever uid it has inside)."""
    return s.host_uid == 0 or s.host_fsuid == 0


def host_caps(s: Subject) -> frozenset[str]:
    """Capabilities effective against the host (the initial user namespace)."""
    return frozenset() if s.userns else s.cap_eff


def may_gain_host_privilege(s: Subject) -> bool:
    """Could this process hold, or regain, host root or host capabilities?

    Yes when it is host root, holds capabilities in the host user namespace, can
    become an id that maps to host root, or -- in the host user namespace without
    no_new_privs -- can exec a setuid-root or file-capability binary. An own user
    namespace that maps nothing to host root cannot: the kernel ignores setuid bits
    of unmapped owners and its capabilities stop at the namespace.
    """
    if s.host_uid is None:
        return True  # unknown (admission of a Spec): assume the worst
    if is_host_root(s) or s.root_maps_host_root:
        return True
    if not s.userns:
        if s.cap_eff or s.cap_prm or s.cap_amb:
            return True
        if s.cap_bnd and s.no_new_privs is not True:
            return True
    return False


def unprivileged(s: Subject) -> bool:
    """Nothing beyond what its host uid could do anyway (an ordinary user's `unshare -r`, rootless podman)."""
    return not may_gain_host_privilege(s)


def cred_key(s: Subject) -> tuple:
    """Everything can_access/reach decide on, as a hashable key (for caching verdicts per scan)."""
    return (s.host_uid, s.host_fsuid, s.host_groups, s.cap_eff, s.userns, s.uid_map, s.gid_map,
            s.root_maps_host_root, s.cap_prm, s.cap_amb, s.cap_bnd, s.no_new_privs)


def _mapped(entries: tuple[tuple[int, int, int], ...], host_id: int) -> bool:
    return any(out <= host_id < out + n for _, out, n in entries)


def can_access(s: Subject, obj: Obj | None, want: int) -> bool:
    """Do the process's host credentials pass the kernel's permission check on obj (READ/WRITE bits)?

    Unknown credentials or an unknown object: True (fail closed: report it).
    ACLs and LSMs are not modelled; they only ever deny more.
    """
    if obj is None or s.host_fsuid is None:
        return True
    caps = s.cap_eff
    if caps and (not s.userns or (_mapped(s.uid_map, obj.uid) and _mapped(s.gid_map, obj.gid))):
        if "DAC_OVERRIDE" in caps:
            return True
        if want == READ and "DAC_READ_SEARCH" in caps:
            return True
    if s.host_fsuid == obj.uid:
        bits = obj.mode >> 6
    elif obj.gid in s.host_groups:
        bits = obj.mode >> 3
    else:
        bits = obj.mode
    return bits & want == want


def reach(s: Subject, obj: Obj | None, want: int) -> str | None:
    """'now' (the kernel allows it), 'regain' (only after regaining host privilege), or None (denied)."""
    if can_access(s, obj, want):
        return "now"
    return "regain" if may_gain_host_privilege(s) else None


# --- privilege -----------------------------------------------------------------

def proc_sys_writable(s: Subject) -> str | None:
    """Can the process write host-wide sysctls? The kernel checks /proc/sys by the caller's host euid."""
    if not s.proc_sys_writable:
        return None
    obj = s.proc_sys_obj
    if obj is not None and s.host_uid is not None:
        # proc_sys_permission(): owner bits for global root, no capability override.
        if is_host_root(s) and obj.mode & 0o200:
            return "now"
        return "regain" if may_gain_host_privilege(s) else None
    return reach(s, obj, WRITE)


def sysfs_writable(s: Subject) -> str | None:
    return reach(s, s.sysfs_obj, WRITE) if s.sysfs_writable else None


def writable_cgroupfs(s: Subject) -> list[tuple[str, int, str, bool]]:
    """(target, version, reach, release_agent writable) for each cgroupfs mounted rw that this process can write."""
    out = []
    for c in s.cgroup_mounts:
        if c.readonly:
            continue
        r = reach(s, c.dir, WRITE)
        ra = c.version == 1 and c.release_agent is not None and reach(s, c.release_agent, WRITE) is not None
        if r is not None or ra:
            out.append((c.target, c.version, r or "regain", ra))
    if not s.cgroup_mounts:  # admission / older producers: only the mount flags are known
        out = [(t, 1 if s.cgroup_v1_release_agent else 2, "now", s.cgroup_v1_release_agent) for t in s.cgroupfs_writable]
    return out


def privileged_signs(s: Subject) -> list[str]:
    """Why a container is "privileged" (the --privileged / securityContext.privileged shape), or [].

    A full bounding set alone is every `unshare -r`; it takes the privileged shape's
    other marks -- and marks the kernel lets this process use -- to be privileged.
    """
    if not s.cap_all or not s.cap_all <= s.cap_bnd:
        return []
    signs = []
    if s.proc_masks_missing and may_gain_host_privilege(s):
        signs.append("/proc masks missing")
    if proc_sys_writable(s):
        signs.append("/proc/sys writable")
    if s.devices_cgroup_all and may_gain_host_privilege(s):
        signs.append("all devices allowed")
    if sysfs_writable(s):
        signs.append("/sys writable")
    return signs


# --- mounts -------------------------------------------------------------------

def runtime_owned(path: str) -> bool:
    return path.startswith(RUNTIME_OWNED) or "/containers/storage/overlay-containers/" in path \
        or "/.local/share/sbx/volumes/" in path


def host_binds(s: Subject):
    """Mounts that really expose a host path: not the runtime's own generated files, not masks
    (empty read-only files/dirs hiding a path), not a host path shown at its own place in a tree
    that already runs on the host's root (that is the root finding), not a reachable socket bind."""
    for m in s.mounts:
        if not m.bind or m.mask or m.same_place or runtime_owned(m.source):
            continue
        yield m


def reachable_sockets(s: Subject):
    """(mount, socket, 'now'|'regain') for each runtime API socket the process can connect to (write permission)."""
    for m in s.mounts:
        for k in m.all_sockets():
            r = reach(s, k.obj, WRITE)
            if r is not None:
                yield m, k, r


def unreachable_sockets(s: Subject):
    """(mount, socket) for each runtime API socket in view that the kernel would not let it connect to."""
    for m in s.mounts:
        for k in m.all_sockets():
            if reach(s, k.obj, WRITE) is None:
                yield m, k


# --- devices ------------------------------------------------------------------

def device_openable(s: Subject, d) -> bool:
    """Could the process open this device node: not on a nodev mount, and owner/mode (or caps) allow it."""
    for mp, nodev in s.dev_mounts:
        if d.path == mp or d.path.startswith(mp.rstrip("/") + "/"):
            if nodev:
                return False
            break
    if d.mode is None:
        return True
    obj = Obj(d.path, d.uid, d.gid, d.mode)
    return reach(s, obj, READ) is not None or reach(s, obj, WRITE) is not None


# --- network ------------------------------------------------------------------

def host_port(p: str) -> int | None:
    """The host port of a published-port string ("0.0.0.0:8080->80/tcp" or "[::]:8080/tcp")."""
    head = p.split("->")[0].split("/")[0]
    try:
        return int(head.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return None


def wildcard_ports(s: Subject) -> list[str]:
    """Published ports bound to every host interface."""
    return [p for p in s.published_ports if p.startswith(("0.0.0.0:", "[::]:", ":::"))]


def privileged_ports(s: Subject) -> list[str]:
    return [p for p in s.published_ports if (hp := host_port(p)) is not None and hp < 1024]


def host_network(s: Subject) -> bool:
    return "net" in s.host_namespaces or s.network == "host"
