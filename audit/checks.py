"""The check catalogue: one list, used by `sbx audit` (live containers) and by policy/admission (Specs).

Each check reads only a Subject (audit.subject) and returns Findings; what
"privileged", "host root" or "reachable" mean is defined once, in
audit.predicates, and shared with the policy rules (audit.conformance). IDs are
stable: never renumber, only add. Mappings name the matching control in the
CIS Docker Benchmark (section 5 unless stated; numbering of v1.5.0 -- see
CIS_DOCKER_VERSION), the Kubernetes Pod Security Standards (level + field),
Trivy's KSV checks and Kubescape's C-xxxx controls, where one exists. The catalogue is documented in audit/CHECKS.md (generated
from this file by `python -m audit.checks --markdown`).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from . import predicates as P
from .subject import SAFE_DEVICES, Subject, kernel_tuple

# The CIS Docker Benchmark release whose section-5 numbers the `cis` mappings use. v1.2.0 to
# v1.5.0 number section 5 alike (5.1 AppArmor ... 5.31 Docker socket); v1.6.0 inserted a new
# 5.1 and shifted the rest by one, so its 5.5 is this catalogue's 5.4.
CIS_DOCKER_VERSION = "1.5.0"

SEVERITIES = ("info", "low", "medium", "high", "critical")
SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}

# Docker's default capability set (moby oci/caps/defaults.go): anything beyond it was added.
DOCKER_DEFAULT_CAPS = frozenset({
    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID", "SETFCAP",
    "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE",
})
# Capabilities that each, alone, give a known path to the host or to other workloads.
DANGEROUS_CAPS = frozenset({
    "SYS_ADMIN", "SYS_MODULE", "SYS_PTRACE", "SYS_RAWIO", "DAC_READ_SEARCH", "NET_ADMIN", "BPF", "PERFMON",
    "SYS_BOOT", "MAC_ADMIN", "MAC_OVERRIDE", "SYS_TIME", "SYSLOG", "CHECKPOINT_RESTORE", "SYS_RESOURCE",
})
SENSITIVE_PATHS = ("/", "/etc", "/proc", "/sys", "/dev", "/boot", "/usr", "/lib", "/lib64", "/bin", "/sbin",
                   "/root", "/home", "/var/lib/kubelet", "/etc/kubernetes", "/var/lib/docker",
                   "/var/lib/containers", "/var/lib/containerd", "/run", "/var/run", "/var/log")
# Read-only exposure of these is routine (system binaries) rather than a secret leak.
LOW_RO_PATHS = ("/usr", "/lib", "/lib64", "/bin", "/sbin", "/lib32", "/libx32")
# Public, secret-free parts of /etc that sandboxes routinely bind read-only.
PUBLIC_ETC = ("/etc/ssl/certs", "/etc/ssl", "/etc/ca-certificates", "/etc/alternatives", "/etc/ld.so.conf.d",
              "/etc/python3", "/etc/localtime", "/etc/zoneinfo", "/etc/fonts", "/etc/mime.types")
EXPECTED_SELINUX_TYPES = frozenset({"container_t", "container_init_t", "container_kvm_t", "container_engine_t",
                                    "svirt_lxc_net_t", "svirt_sandbox_t", "sbx_t"})
UNCONFINED_SELINUX_TYPES = frozenset({"unconfined_t", "spc_t", "unconfined_service_t", "kernel_t", "initrc_t",
                                      "init_t", "container_runtime_t"})
MIN_KERNEL = (5, 10)  # oldest LTS still carrying the namespace/cgroup escape fixes containers rely on
OLD_KERNEL = (4, 19)


@dataclass(frozen=True)
class Finding:
    check_id: str
    severity: str
    title: str
    message: str
    evidence: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"check": self.check_id, "severity": self.severity, "title": self.title,
                "message": self.message, "evidence": self.evidence}


@dataclass(frozen=True)
class Check:
    id: str
    title: str
    severity: str  # the usual severity; a finding may lower it (e.g. caps confined by a user namespace)
    rationale: str
    remediation: str
    reads: tuple[str, ...]
    cis: str | None = None  # CIS Docker Benchmark recommendation number (CIS_DOCKER_VERSION numbering)
    pss: tuple[str, str] | None = None  # (baseline|restricted, field)
    ksv: str | None = None  # Trivy misconfiguration id
    kubescape: str | None = None
    fn: Callable[[Subject], list] = field(default=lambda s: [], repr=False, compare=False)

    def run(self, s: Subject) -> list[Finding]:
        out = []
        for item in self.fn(s) or ():
            sev, msg, ev = item if len(item) == 3 else (self.severity, *item)
            out.append(Finding(self.id, sev or self.severity, self.title, msg, ev))
        return out

    def mappings(self) -> dict:
        return {"cis_docker": self.cis, "cis_docker_version": CIS_DOCKER_VERSION if self.cis else None,
                "pss": None if self.pss is None else {"level": self.pss[0], "field": self.pss[1]},
                "trivy": self.ksv, "kubescape": self.kubescape}


CHECKS: list[Check] = []


def check(id: str, title: str, severity: str, rationale: str, remediation: str, reads: tuple[str, ...], **m):
    def deco(fn):
        CHECKS.append(Check(id, title, severity, rationale, remediation, reads, fn=fn, **m))
        return fn
    return deco


def _caps(cs) -> str:
    return ", ".join(sorted(cs))


_confined = P.confined


def _lower(sev: str) -> str:
    return SEVERITIES[max(0, SEVERITY_RANK[sev] - 1)]


def _as_user(s: Subject, sev: str) -> str:
    """One level lower when the process cannot exceed what its host uid may do anyway."""
    return _lower(sev) if P.unprivileged(s) else sev


# --- privilege --------------------------------------------------------------

@check("SBX-A001", "Privileged container", "critical",
       "A privileged container has every capability, no /proc masks and (usually) every device: "
       "it can load kernel modules, mount host disks and write kernel tunables, so it is the host.",
       "Do not use --privileged; add only the capabilities and devices the workload needs.",
       ("status.CapBnd", "mountinfo", "cgroup devices.list"),
       cis="5.4", pss=("baseline", "securityContext.privileged"), ksv="KSV017", kubescape="C-0057")
def _privileged(s: Subject):
    signs = P.privileged_signs(s)
    if not signs:
        return []
    sev = "critical" if not _confined(s) else "high"
    return [(sev, "full capability bounding set with " + ", ".join(signs), {"signs": signs})]


@check("SBX-A002", "CAP_SYS_ADMIN in the effective set", "critical",
       "SYS_ADMIN allows mount, namespace and cgroup manipulation and many kernel interfaces; most "
       "container escapes (release_agent, device mounts) start here.",
       "Drop SYS_ADMIN (--cap-drop SYS_ADMIN); grant narrower capabilities or use a user namespace.",
       ("status.CapEff",), cis="5.3", pss=("baseline", "securityContext.capabilities.add"), ksv="KSV005",
       kubescape="C-0046")
def _sys_admin(s: Subject):
    if "SYS_ADMIN" not in s.cap_eff:
        return []
    sev = "critical" if not _confined(s) else "high"
    return [(sev, "effective capabilities include SYS_ADMIN" + (" (inside an own user namespace)" if _confined(s) else ""),
             {"cap_eff": sorted(s.cap_eff)})]


@check("SBX-A003", "Dangerous capabilities in the effective set", "high",
       "SYS_MODULE, SYS_PTRACE, SYS_RAWIO, DAC_READ_SEARCH, NET_ADMIN, BPF and similar each give a known "
       "route to host memory, other processes, raw devices or the host network.",
       "Drop the listed capabilities; keep only what the workload needs.",
       ("status.CapEff",), cis="5.3", pss=("baseline", "securityContext.capabilities.add"), ksv="KSV022",
       kubescape="C-0046")
def _dangerous_eff(s: Subject):
    bad = (s.cap_eff & DANGEROUS_CAPS) - {"SYS_ADMIN"}
    if not bad:
        return []
    sev = "high" if not _confined(s) else "medium"
    return [(sev, f"effective capabilities include {_caps(bad)}", {"caps": sorted(bad)})]


@check("SBX-A004", "Dangerous capabilities left in the bounding set", "medium",
       "A capability in the bounding set can be regained by executing a setuid-root or file-capability "
       "binary unless no_new_privs is set.",
       "Drop all capabilities (--cap-drop ALL) and add back only what is needed.",
       ("status.CapBnd", "status.CapEff", "status.NoNewPrivs"), cis="5.3",
       pss=("restricted", "securityContext.capabilities.drop"), ksv="KSV003", kubescape="C-0046")
def _dangerous_bnd(s: Subject):
    bad = (s.cap_bnd & DANGEROUS_CAPS) - s.cap_eff
    if not bad:
        return []
    sev = "low" if s.no_new_privs else "medium"
    return [(sev, f"bounding set still holds {_caps(bad)}", {"caps": sorted(bad), "no_new_privs": s.no_new_privs})]


@check("SBX-A005", "Ambient capabilities set", "medium",
       "Ambient capabilities survive execve of unprivileged programs, so every program the container runs "
       "holds them.",
       "Do not set ambient capabilities; grant file capabilities to the one binary that needs them.",
       ("status.CapAmb",), cis="5.3", kubescape="C-0046")
def _ambient(s: Subject):
    if not s.cap_amb:
        return []
    # Within Docker's defaults this is how a non-root workload keeps a granted cap (sbx does it): low.
    if s.cap_amb & DANGEROUS_CAPS:
        sev = "high" if not _confined(s) else "medium"
    else:
        sev = "medium" if s.cap_amb - DOCKER_DEFAULT_CAPS else "low"
    return [(sev, f"ambient capabilities: {_caps(s.cap_amb)}", {"caps": sorted(s.cap_amb)})]


@check("SBX-A006", "Capabilities beyond Docker's default set", "medium",
       "Docker's 14 default capabilities are the widely reviewed baseline; anything added widens the kernel "
       "attack surface.",
       "Remove the --cap-add for the listed capabilities.",
       ("status.CapBnd", "status.CapEff"), cis="5.3", pss=("baseline", "securityContext.capabilities.add"),
       ksv="KSV022", kubescape="C-0046")
def _beyond_default(s: Subject):
    extra = (s.cap_bnd | s.cap_eff) - DOCKER_DEFAULT_CAPS
    if not extra or (s.cap_all and s.cap_all <= s.cap_bnd):
        return [] if not extra else [("medium", f"all {len(s.cap_bnd)} capabilities are in the bounding set",
                                      {"extra": sorted(extra)})]
    return [(f"{len(extra)} capabilities beyond the default 14: {_caps(extra)}", {"extra": sorted(extra)})]


@check("SBX-A007", "Capabilities not dropped to the restricted set", "low",
       "The Pod Security Standards restricted profile requires dropping ALL capabilities and adding back at "
       "most NET_BIND_SERVICE.",
       "Run with --cap-drop ALL (add NET_BIND_SERVICE only if binding ports below 1024).",
       ("status.CapBnd",), pss=("restricted", "securityContext.capabilities.drop"), ksv="KSV106",
       kubescape="C-0046")
def _not_restricted_caps(s: Subject):
    extra = s.cap_bnd - {"NET_BIND_SERVICE"}
    if not extra:
        return []
    return [(f"{len(extra)} capabilities kept besides NET_BIND_SERVICE", {"caps": sorted(extra)})]


@check("SBX-A008", "no_new_privs not set", "medium",
       "Without no_new_privs a process can gain privileges by executing setuid/setgid or file-capability "
       "binaries.",
       "Run with --security-opt no-new-privileges (Kubernetes: allowPrivilegeEscalation: false).",
       ("status.NoNewPrivs",), cis="5.25", pss=("restricted", "securityContext.allowPrivilegeEscalation"),
       ksv="KSV001", kubescape="C-0016")
def _nnp(s: Subject):
    if s.no_new_privs is False:
        return [("NoNewPrivs: 0", {"no_new_privs": 0})]
    return []


@check("SBX-A009", "Seccomp disabled", "high",
       "Without a seccomp filter every system call of the kernel is reachable, including the rarely used ones "
       "behind most kernel privilege escalations.",
       "Keep the runtime's default seccomp profile (never seccomp=unconfined).",
       ("status.Seccomp",), cis="5.21", pss=("baseline", "securityContext.seccompProfile.type"), ksv="KSV104",
       kubescape="C-0210")
def _seccomp(s: Subject):
    if s.seccomp == 0:
        return [("Seccomp: 0 (no filter)", {"seccomp": 0})]
    return []


# --- LSM ----------------------------------------------------------------------

def _lsm_kind(label: str) -> str:
    return "selinux" if label.count(":") >= 2 and " " not in label else "apparmor"


@check("SBX-A010", "No LSM confinement", "medium",
       "An AppArmor profile or SELinux type limits what even a root process can touch; without one a "
       "container escape meets no mandatory access control.",
       "Run under an AppArmor profile or an SELinux container type (sbx: --security-opt apparmor=/label=).",
       ("attr/current",), cis="5.1", kubescape="C-0055")
def _no_lsm(s: Subject):
    if s.lsm_label is not None:
        return []
    if s.mac_enabled:
        return [("medium", "no LSM label although the host runs a labelling LSM", {})]
    return [("low", "no LSM label (the host runs no AppArmor/SELinux)", {"mac_enabled": s.mac_enabled})]


@check("SBX-A011", "LSM unconfined", "high",
       "An explicit unconfined AppArmor profile or an unconfined SELinux type (spc_t, unconfined_t) switches "
       "mandatory access control off for this container.",
       "Remove apparmor=unconfined / label=disable / label=type:spc_t.",
       ("attr/current",), cis="5.1", pss=("baseline", "securityContext.appArmorProfile.type"), ksv="KSV002",
       kubescape="C-0055")
def _unconfined(s: Subject):
    lab = s.lsm_label
    if lab is None:
        return []
    if _lsm_kind(lab) == "selinux":
        t = lab.split(":")[2]
        if t in UNCONFINED_SELINUX_TYPES:
            return [(f"SELinux type {t} is unconfined", {"label": lab})]
        return []
    if lab.split(" ")[0] == "unconfined" or lab.endswith("(unconfined)"):
        return [("AppArmor profile is unconfined", {"label": lab})]
    return []


@check("SBX-A012", "LSM profile in complain mode", "medium",
       "A profile in complain (or kill-less audit) mode only logs: nothing is denied.",
       "Load the profile in enforce mode.", ("attr/current",), cis="5.1", kubescape="C-0055")
def _complain(s: Subject):
    if s.lsm_label and s.lsm_label.endswith("(complain)"):
        return [("AppArmor profile in complain mode", {"label": s.lsm_label})]
    return []


@check("SBX-A013", "Unexpected SELinux type", "medium",
       "Container workloads should run in a container domain (container_t, sbx_t, ...); other types carry "
       "rules written for host services.",
       "Use the runtime's container type or a udica/sbx-generated one.", ("attr/current",), cis="5.2",
       pss=("baseline", "securityContext.seLinuxOptions.type"), ksv="KSV025", kubescape="C-0055")
def _selinux_type(s: Subject):
    lab = s.lsm_label
    if lab is None or _lsm_kind(lab) != "selinux":
        return []
    t = lab.split(":")[2]
    if t in EXPECTED_SELINUX_TYPES or t in UNCONFINED_SELINUX_TYPES:
        return []
    return [(f"SELinux type {t} is not a container type", {"label": lab})]


# --- namespaces & identity -------------------------------------------------------

def _ns_check(kind: str, id: str, title: str, sev: str, why: str, fix: str, **m):
    @check(id, title, sev, why, fix, (f"ns/{kind}",), **m)
    def _fn(s: Subject):
        if kind in s.host_namespaces:
            extra = f"; the process is unprivileged host uid {s.host_uid}" if P.unprivileged(s) else ""
            return [(_as_user(s, sev), f"{kind} namespace is the host's (same inode as the host's init{extra})",
                     {"namespace": kind})]
        return []
    return _fn


_ns_check("pid", "SBX-A014", "Host PID namespace shared", "high",
          "With the host's pid namespace the container sees and can signal (and with SYS_PTRACE, inject into) "
          "every host process.", "Do not use --pid=host (hostPID: false).",
          cis="5.15", pss=("baseline", "spec.hostPID"), ksv="KSV010", kubescape="C-0038")
_ns_check("net", "SBX-A015", "Host network namespace shared", "high",
          "With the host's network namespace the container can reach every host-local service (including "
          "abstract unix sockets) and bind any host interface.", "Do not use --network=host (hostNetwork: false).",
          cis="5.9", pss=("baseline", "spec.hostNetwork"), ksv="KSV009", kubescape="C-0041")
_ns_check("ipc", "SBX-A016", "Host IPC namespace shared", "high",
          "The host's IPC namespace exposes host shared memory segments and message queues.",
          "Do not use --ipc=host (hostIPC: false).",
          cis="5.16", pss=("baseline", "spec.hostIPC"), ksv="KSV008", kubescape="C-0038")
_ns_check("uts", "SBX-A017", "Host UTS namespace shared", "medium",
          "With the host's UTS namespace a privileged container can change the host's hostname.",
          "Do not use --uts=host.", cis="5.20")
_ns_check("cgroup", "SBX-A018", "Host cgroup namespace shared", "low",
          "The host cgroup namespace reveals the host's cgroup layout and eases cgroup-based escapes.",
          "Use a private cgroup namespace (--cgroupns=private).")
_ns_check("mnt", "SBX-A019", "Host mount namespace shared", "high",
          "A process in the host's mount namespace sees, and may change, every host mount.",
          "Give the workload its own mount namespace and root filesystem.", cis="5.5")


@check("SBX-A020", "No user namespace", "medium",
       "Without a user namespace container ids are host ids: root inside is root outside, and a capability "
       "applies to the whole host.",
       "Run with a user namespace (podman --userns=auto, docker userns-remap, sbx by default).",
       ("ns/user",), cis="5.30")
def _no_userns(s: Subject):
    if "user" in s.host_namespaces or not s.userns:
        return [("user namespace is the host's", {})]
    return []


@check("SBX-A021", "Runs as uid 0", "medium",
       "Root inside owns the container's files and passes most permission checks; combined with any escape "
       "it is the most valuable foothold.",
       "Run as a non-root user (--user 1000, runAsNonRoot: true).",
       ("status.Uid",), pss=("restricted", "securityContext.runAsNonRoot"), ksv="KSV012", kubescape="C-0013")
def _root(s: Subject):
    if s.uid == 0:
        return [("effective uid is 0" + (f" inside (host uid {s.host_uid})" if s.userns else ""),
                 {"uid": 0, "host_uid": s.host_uid})]
    return []


@check("SBX-A022", "An id maps to host root", "high",
       "When an id inside maps to host uid 0 (no user namespace, a 0->0 mapping, or any other id mapped to "
       "host root) a process with that id is host root: a breakout lands as host root and files written on "
       "shared mounts are owned by host root.",
       "Use a user namespace that maps no id to host uid 0 (container root to an unprivileged host uid).",
       ("status.Uid", "uid_map"), pss=("restricted", "securityContext.runAsUser"), ksv="KSV105")
def _host_root(s: Subject):
    ev = {"uid": s.uid, "host_uid": s.host_uid}
    if P.is_host_root(s):
        inside = "" if not s.userns or s.uid == 0 else f" (uid {s.uid} inside its user namespace)"
        return [("high", f"the process runs as host uid 0{inside}", ev)]
    if s.root_maps_host_root and (s.uid == 0 or "SETUID" in s.cap_bnd or s.no_new_privs is not True):
        inside = next((i for i, out, n in s.uid_map if out <= 0 < out + n), None)
        which = "uid 0" if inside in (None, 0) else f"uid {inside}"
        return [("medium", f"container {which} is host uid 0 (reachable via SETUID or setuid binaries)", ev)]
    return []


# --- mounts ----------------------------------------------------------------------

@check("SBX-A023", "Container runtime socket mounted", "critical",
       "Whoever can talk to a runtime's API socket can start a privileged container with the host's root "
       "mounted: it is root on the host.",
       "Never mount docker/containerd/CRI-O/podman/buildkit sockets into containers; use a scoped proxy.",
       ("mountinfo", "stat of the mount target vs the host socket (device+inode)"),
       cis="5.31", pss=("baseline", "spec.volumes[*].hostPath"), ksv="KSV006", kubescape="C-0074")
def _runtime_socket(s: Subject):
    out = []
    for m, k, r in P.reachable_sockets(s):
        out.append(("critical" if r == "now" else "high",
                    f"{k.runtime} API socket reachable at {k.path} (mount of host {m.source} at {m.target})"
                    + ("" if r == "now" else "; usable after regaining host privilege"),
                    {"runtime": k.runtime, "path": k.path, "target": m.target, "source": m.source}))
    for m, k in P.unreachable_sockets(s):
        o = k.obj
        out.append(("info", f"{k.runtime} API socket visible at {k.path} but mode {o.mode:04o} owner "
                            f"{o.uid}:{o.gid} denies host uid {s.host_uid}",
                    {"runtime": k.runtime, "path": k.path, "target": m.target, "reachable": False}))
    return out


RUNTIME_OWNED = P.RUNTIME_OWNED


def _sensitive(path: str) -> str | None:
    if P.runtime_owned(path):
        return None
    for p in SENSITIVE_PATHS:
        if path == p or (p != "/" and path.startswith(p + "/")):
            return p
    return None


@check("SBX-A024", "Sensitive host path mounted read-write", "high",
       "A writable bind of /, /etc, /root, /var/lib/kubelet and similar lets the container rewrite host "
       "configuration, credentials or binaries.",
       "Remove the bind or make it read-only (:ro), and bind only the specific subdirectory needed.",
       ("mountinfo (device+root matched to the host mount table)",),
       cis="5.5", pss=("baseline", "spec.volumes[*].hostPath"), ksv="KSV023", kubescape="C-0045")
def _sensitive_rw(s: Subject):
    out = []
    flagged: list[str] = []
    for m in P.host_binds(s):
        if m.readonly or m.target == "/" or (m.runtime_socket and m.socket_path == m.target):
            continue
        if any(m.target.startswith(t.rstrip("/") + "/") for t in flagged):
            continue  # a submount of a recursive bind already reported (-v /:/host brings /host/run/...)
        base = _sensitive(m.source)
        if base is not None and not m.source.startswith("/dev/shm"):
            flagged.append(m.target)
            # Writes still pass the host uid's permission checks: an unprivileged tree writes only its own files.
            sev = _as_user(s, "critical" if m.source == "/" else "high")
            out.append((sev, f"host {m.source} mounted read-write at {m.target}",
                        {"source": m.source, "target": m.target}))
    return out


@check("SBX-A025", "Sensitive host path mounted read-only", "medium",
       "Read-only binds of host configuration or credentials (/etc, /root, kubelet state) still leak secrets.",
       "Bind only the files needed, or copy them into the image.",
       ("mountinfo",), cis="5.5", pss=("baseline", "spec.volumes[*].hostPath"), ksv="KSV023",
       kubescape="C-0048")
def _sensitive_ro(s: Subject):
    out = []
    flagged: list[str] = []
    for m in P.host_binds(s):
        if m.target == "/" or (m.runtime_socket and m.socket_path == m.target):
            continue
        if any(m.target.startswith(t.rstrip("/") + "/") for t in flagged):
            continue
        base = _sensitive(m.source)
        if base is None:
            continue
        flagged.append(m.target)
        if not m.readonly:
            continue
        if _system_ro(m.source, base):
            continue  # SBX-A042
        out.append((f"host {m.source} mounted read-only at {m.target}", {"source": m.source, "target": m.target}))
    return out


def _system_ro(source: str, base: str) -> bool:
    public = any(source == p or source.startswith(p) for p in PUBLIC_ETC) and "/private" not in source
    return base in LOW_RO_PATHS or public


@check("SBX-A042", "Host system directories mounted read-only", "low",
       "Read-only binds of /usr, /lib or public /etc parts (certificates, alternatives) expose no secrets but "
       "tie the container to host binaries; Pod Security baseline forbids any hostPath volume.",
       "Prefer an image root filesystem; keep such binds read-only.",
       ("mountinfo",), cis="5.5")
def _system_dirs_ro(s: Subject):
    out = []
    for m in P.host_binds(s):
        if not m.readonly or m.target == "/" or m.runtime_socket:
            continue
        base = _sensitive(m.source)
        if base is not None and _system_ro(m.source, base):
            out.append((f"host {m.source} mounted read-only at {m.target}", {"source": m.source, "target": m.target}))
    return out


@check("SBX-A026", "Root filesystem is the host's", "high",
       "The process tree runs directly on the host's root filesystem, so every host file its uid can reach "
       "is in scope.",
       "Give the workload its own root (an image rootfs, or sbx's host-view with read-only system dirs).",
       ("mountinfo",), cis="5.5")
def _host_root_fs(s: Subject):
    if s.root_is_host_root:
        root = next((m for m in s.mounts if m.target == "/"), None)
        ro = root is not None and root.readonly
        what = "the container's / is the host's / " + ("(read-only)" if ro else "(writable)")
        if P.unprivileged(s):
            # Every host file in reach is one its host uid reaches without any container.
            return [("low", f"{what}, with the access of unprivileged host uid {s.host_uid} only", {})]
        return [("medium" if ro else "high", what, {})]
    return []


@check("SBX-A027", "Shared mount propagation", "medium",
       "A mount in a propagation peer group the host is in passes mounts made in the container to the host "
       "(and back), so a container with mount rights can plant mounts on the host. Peer groups that exist only "
       "inside the container do not reach the host.",
       "Use private or slave propagation for binds (no :shared / :rshared).",
       ("mountinfo optional fields",), cis="5.19")
def _propagation(s: Subject):
    shared = [m.target for m in s.mounts if m.shared]
    if shared:
        return [(f"{len(shared)} mount(s) share propagation with the host: {', '.join(shared[:5])}",
                 {"targets": shared})]
    return []


@check("SBX-A028", "Kernel /proc paths not masked", "high",
       "Runtimes mask /proc/kcore, /proc/keys, /proc/timer_list, /sys/firmware and similar: unmasked they "
       "leak kernel memory layout and secrets and widen kernel attack surface.",
       "Keep the runtime's default masks (no --privileged, no procMount: Unmasked).",
       ("mountinfo",), pss=("baseline", "securityContext.procMount"), ksv="KSV027")
def _proc_masks(s: Subject):
    if s.proc_masks_missing:
        if P.unprivileged(s):
            return [("low", f"not masked: {', '.join(s.proc_masks_missing)} (read as unprivileged host uid "
                            f"{s.host_uid}, as any of its processes can)", {"missing": list(s.proc_masks_missing)})]
        return [(f"not masked: {', '.join(s.proc_masks_missing)}", {"missing": list(s.proc_masks_missing)})]
    return []


@check("SBX-A029", "/proc/sys writable", "high",
       "A writable /proc/sys lets root in the container change host kernel tunables (core_pattern runs a "
       "host program as root).",
       "Keep /proc/sys read-only (the runtime default); set the sysctls needed with --sysctl.",
       ("mountinfo",), pss=("baseline", "securityContext.procMount"), ksv="KSV026")
def _proc_sys(s: Subject):
    r = P.proc_sys_writable(s)
    if r == "now":
        return [("high", "/proc/sys is mounted read-write and this process (host root) can write host sysctls", {})]
    if r == "regain":
        return [("medium", "/proc/sys is mounted read-write; writable after regaining host root", {})]
    return []


@check("SBX-A030", "/sys writable", "high",
       "A writable sysfs exposes device, power and kernel knobs of the host.",
       "Mount /sys read-only (the runtime default) or not at all.", ("mountinfo",), cis="5.4",
       pss=("baseline", "securityContext.privileged"))
def _sys_rw(s: Subject):
    r = P.sysfs_writable(s)
    if r is not None:
        return [("high" if r == "now" else "medium", "/sys is mounted read-write"
                 + ("" if r == "now" else "; writable after regaining host privilege"), {})]
    return []


@check("SBX-A031", "Root filesystem writable", "low",
       "A writable root lets an intruder modify the container's binaries and persist.",
       "Run with --read-only and give writable tmpfs/volumes only where needed.",
       ("mountinfo",), cis="5.12", ksv="KSV014", kubescape="C-0017")
def _root_rw(s: Subject):
    if s.root_readonly is False and not s.root_is_host_root:
        return [("root filesystem is mounted read-write", {})]
    return []


@check("SBX-A032", "cgroupfs writable with CAP_SYS_ADMIN", "critical",
       "A writable cgroup v1 hierarchy plus SYS_ADMIN allows the release_agent escape (CVE-2022-0492): a "
       "host program runs as root when a cgroup empties.",
       "Mount cgroupfs read-only (the runtime default), drop SYS_ADMIN, use cgroup v2.",
       ("mountinfo", "status.CapEff"), cis="5.24", kubescape="C-0086")
def _cgroup_escape(s: Subject):
    rw = P.writable_cgroupfs(s)
    if not rw:
        return []
    targets = [t for t, _, _, _ in rw]
    v1 = any(v == 1 for _, v, _, _ in rw)
    ev = {"targets": targets, "v1": v1}
    where = ", ".join(targets[:4])
    # Since 5.17 writing release_agent needs SYS_ADMIN in the initial user namespace (and mounting
    # a v1 hierarchy does too): only host capabilities make this the release_agent escape.
    if "SYS_ADMIN" in P.host_caps(s):
        return [("critical" if v1 else "high",
                 f"cgroupfs writable at {where} with host SYS_ADMIN" + (" (v1: release_agent)" if v1 else ""), ev)]
    if P.unprivileged(s):
        return [("low", f"cgroupfs writable at {where} by its own host uid {s.host_uid} (a delegated cgroup)", ev)]
    if all(r == "regain" for _, _, r, _ in rw):
        return [("medium", f"cgroupfs mounted read-write at {where}; writable after regaining host privilege", ev)]
    return [("medium", f"cgroupfs writable at {where}", ev)]


# --- devices ----------------------------------------------------------------------

def _safe_dev(d) -> bool:
    return (d.kind, d.major, d.minor) in SAFE_DEVICES or (d.kind, d.major, None) in SAFE_DEVICES


_UNSAFE: dict[int, tuple] = {}  # id(devices tuple) -> (tuple kept alive, unsafe devices)
_OPENABLE: dict[tuple, tuple] = {}  # (id(devices), credentials, /dev mounts) -> (tuple kept alive, openable unsafe ones)


def _unsafe_devices(devs: tuple) -> list:
    hit = _UNSAFE.get(id(devs))
    if hit is not None and hit[0] is devs:
        return hit[1]
    bad = [d for d in devs if not _safe_dev(d)]
    if len(_UNSAFE) > 1024:
        _UNSAFE.clear()
    _UNSAFE[id(devs)] = (devs, bad)
    return bad


@check("SBX-A033", "Host devices present", "high",
       "Block devices give raw access to host disks; character devices such as /dev/mem, /dev/kmsg or GPU "
       "and USB nodes reach host hardware or kernel memory.",
       "Do not pass host devices (--device) and do not run privileged.",
       ("/dev listing inside the container root (openat2 RESOLVE_IN_ROOT)",), cis="5.17",
       pss=("baseline", "securityContext.privileged"))
def _devices(s: Subject):
    if not s.devices:
        return []
    key = (id(s.devices), P.cred_key(s), s.dev_mounts)
    hit = _OPENABLE.get(key)
    if hit is None or hit[0] is not s.devices:
        if len(_OPENABLE) > 1024:
            _OPENABLE.clear()
        # Many containers share one /dev listing and the same credentials: judge each set once.
        hit = _OPENABLE[key] = (s.devices, [d for d in _unsafe_devices(s.devices) if P.device_openable(s, d)])
    bad = hit[1]
    if not bad:
        return []
    blocks = [d.path for d in bad if d.kind == "b"]
    names = [d.path for d in bad][:8]
    # A node the process can open outside any container as well (its host uid passes) is no new reach.
    sev = _as_user(s, "critical" if blocks and not _confined(s) else "high")
    return [(sev, f"{len(bad)} host device node(s): {', '.join(names)}" + (" ..." if len(bad) > 8 else ""),
             {"devices": [f"{d.kind} {d.major}:{d.minor} {d.path}" for d in bad[:64]]})]


@check("SBX-A034", "Device cgroup allows every device", "high",
       "A devices cgroup of 'a *:* rwm' lets the container create and open any device node (mknod).",
       "Restrict the device cgroup to the runtime default.", ("cgroup devices.list",), cis="5.17",
       pss=("baseline", "securityContext.privileged"))
def _devices_all(s: Subject):
    # mknod of real devices needs MKNOD in the initial user namespace whatever the cgroup says.
    if not s.devices_cgroup_all or s.userns:
        return []
    if "MKNOD" in s.cap_eff:
        return [("devices.list is 'a *:* rwm' and the process holds MKNOD", {})]
    if "MKNOD" in s.cap_bnd and P.may_gain_host_privilege(s):
        return [("medium", "devices.list is 'a *:* rwm'; MKNOD can be regained (bounding set)", {})]
    return []


# --- resources ------------------------------------------------------------------------

@check("SBX-A035", "No memory limit", "medium",
       "Without a memory limit one container can exhaust host memory and push the OOM killer onto others.",
       "Set --memory.", ("memory cgroup",), cis="5.10", ksv="KSV018", kubescape="C-0004")
def _mem(s: Subject):
    return [] if s.memory_limit is not None else [("no memory limit on the cgroup path", {})]


@check("SBX-A036", "No pids limit", "medium",
       "Without a pids limit a fork bomb in one container exhausts the host's pid space.",
       "Set --pids-limit.", ("pids cgroup",), cis="5.28")
def _pids(s: Subject):
    return [] if s.pids_limit is not None else [("no pids limit on the cgroup path", {})]


@check("SBX-A037", "No CPU limit", "low",
       "Without a CPU quota one container can starve the others on the host.",
       "Set --cpus.", ("cpu cgroup",), cis="5.11", ksv="KSV011", kubescape="C-0050")
def _cpu(s: Subject):
    return [] if s.cpu_limit is not None else [("no CPU quota on the cgroup path", {})]


# --- processes & network ------------------------------------------------------------------

@check("SBX-A038", "SSH daemon running inside", "medium",
       "An sshd in a container is an extra, separately managed way in, with its own keys and patches.",
       "Remove sshd; use the runtime's exec.", ("comm of every process in the container",), cis="5.6")
def _sshd(s: Subject):
    hits = [p for p in s.processes if p == "sshd" or p.startswith("sshd:") or p == "dropbear"]
    return [(f"process {hits[0]} is running", {"processes": hits})] if hits else []


@check("SBX-A039", "Listening on all interfaces", "medium",
       "A service bound to 0.0.0.0/:: in the host network namespace is exposed on every host interface.",
       "Bind to a specific address, or publish ports on a specific host IP (-p 127.0.0.1:8080:80).",
       ("net/tcp*, net/udp*", "fd socket inodes"), cis="5.13", pss=("baseline", "ports[*].hostPort"),
       ksv="KSV024", kubescape="C-0044")
def _listen_all(s: Subject):
    out = []
    if s.listeners_all_interfaces:
        sev = "medium" if s.network == "host" else "info"
        where = "host network namespace" if s.network == "host" else "the container's own network namespace"
        out.append((sev, f"listening on all interfaces in {where}: {', '.join(s.listeners_all_interfaces[:6])}",
                    {"listeners": list(s.listeners_all_interfaces)}))
    wild = P.wildcard_ports(s)
    if wild:
        out.append(("low", f"ports published on all host interfaces: {', '.join(wild)}", {"ports": wild}))
    return out


@check("SBX-A040", "Privileged host port published", "low",
       "Publishing a host port below 1024 needs privileges on the host and is usually a system service's.",
       "Publish on a port >= 1024.", ("published ports",), cis="5.7")
def _priv_ports(s: Subject):
    low = P.privileged_ports(s)
    return [(f"privileged host ports: {', '.join(low)}", {"ports": low})] if low else []


@check("SBX-A041", "Kernel too old", "medium",
       "Container isolation relies on kernel fixes (cgroup release_agent CVE-2022-0492, fsconfig "
       "CVE-2022-0185, Dirty Pipe CVE-2022-0847, ...) and features (Landlock 5.13, pidfd, clone3) missing "
       "from old kernels.",
       f"Run a kernel >= {MIN_KERNEL[0]}.{MIN_KERNEL[1]} with current stable updates.", ("osrelease",),
       kubescape="C-0079")
def _kernel(s: Subject):
    if not s.kernel:
        return []
    v = kernel_tuple(s.kernel)
    if v < OLD_KERNEL:
        return [("high", f"kernel {s.kernel} is older than {OLD_KERNEL[0]}.{OLD_KERNEL[1]}", {"kernel": s.kernel})]
    if v < MIN_KERNEL:
        return [(f"kernel {s.kernel} is older than {MIN_KERNEL[0]}.{MIN_KERNEL[1]}", {"kernel": s.kernel})]
    return []


@check("SBX-A043", "Mount table incomplete", "high",
       "The container's mount table is larger than sbx reads (16 MiB, four times the largest tables seen on busy "
       "hosts): a container can pad it with thousands of "
       "mounts or long escaped paths so that a host bind listed late is never seen. Every mount-based verdict for "
       "it is unknown.",
       "Find out why the container has so many mounts; audit it with the runtime's own inspect output.",
       ("mountinfo (length)",))
def _mounts_incomplete(s: Subject):
    if not s.mounts_complete:
        return [(f"only the first {len(s.mounts)} visible mounts of a mount table over the read limit were judged",
                 {"mounts_read": len(s.mounts)})]
    return []


# --- running the catalogue -------------------------------------------------------------------

def by_id() -> dict[str, Check]:
    return {c.id: c for c in CHECKS}


# --- image ------------------------------------------------------------------

@check("SBX-A050", "Image named by a mutable tag", "low",
       "A tag (`:latest`, or any tag) can be moved to other content by whoever controls the registry or the "
       "local store, so the same command may start a different image tomorrow; only a digest names content.",
       "Run the image by NAME@sha256:DIGEST (sbx pull prints the digest; sbx image inspect shows it).",
       ("runtime state (image reference)",), ksv="KSV013", kubescape="C-0075")
def _mutable_tag(s: Subject):
    if s.image and not s.image_pinned:
        tag = s.image.rsplit("/", 1)[-1].partition(":")[2] or "latest"
        return [(f"image {s.image} is named by the tag '{tag}', not by a digest", {"image": s.image})]
    return []


def run_checks(s: Subject, only: set[str] | None = None) -> list[Finding]:
    out: list[Finding] = []
    for c in CHECKS:
        if only is not None and c.id not in only:
            continue
        out.extend(c.run(s))
    out.sort(key=lambda f: (-SEVERITY_RANK[f.severity], f.check_id))
    return out


WEIGHTS = {"critical": 40, "high": 20, "medium": 8, "low": 2, "info": 0}


def score(findings: list[Finding]) -> int:
    """100 = nothing found. Each check counts once, at its worst finding."""
    worst: dict[str, int] = {}
    for f in findings:
        worst[f.check_id] = max(worst.get(f.check_id, 0), WEIGHTS[f.severity])
    return max(0, 100 - sum(worst.values()))


def pss_level(findings: list[Finding]) -> str:
    """'restricted', 'baseline' or 'privileged' (= meets neither) per the Pod Security Standards mappings."""
    cat = by_id()
    levels = {cat[f.check_id].pss[0] for f in findings
              if f.check_id in cat and cat[f.check_id].pss is not None and f.severity != "info"}
    if "baseline" in levels:
        return "privileged"
    if "restricted" in levels:
        return "baseline"
    return "restricted"


def worst(findings: list[Finding]) -> str | None:
    return max((f.severity for f in findings), key=SEVERITY_RANK.__getitem__, default=None)


def markdown() -> str:
    """The catalogue as a Markdown reference (audit/CHECKS.md)."""
    lines = ["# sbx audit check catalogue", "",
             "Generated from `audit/checks.py` (`python -m audit.checks --markdown`). IDs are stable.", "",
             "Severity is the usual one; a finding may be lowered when the capability or mount is confined by an "
             "own user namespace that does not map to host root, when the kernel would deny this process the "
             "access (decided from its host credentials against the object's owner and mode), or when the process "
             "cannot exceed what its unprivileged host uid may do anyway.", "",
             f"CIS numbers follow the CIS Docker Benchmark v{CIS_DOCKER_VERSION} (section 5 is numbered the same "
             "from v1.2.0 to v1.5.0; v1.6.0 inserted a new 5.1 and shifted the rest by one).", "",
             f"| ID | Title | Severity | CIS Docker v{CIS_DOCKER_VERSION} | PSS | Trivy | Kubescape |",
             "|---|---|---|---|---|---|---|"]
    for c in CHECKS:
        pss = f"{c.pss[0]}: `{c.pss[1]}`" if c.pss else "-"
        lines.append(f"| {c.id} | {c.title} | {c.severity} | {c.cis or '-'} | {pss} | {c.ksv or '-'} | {c.kubescape or '-'} |")
    lines += ["", "## Verdicts", "",
              "* **score**: 100 minus, per check at its worst finding: critical 40, high 20, medium 8, low 2 "
              "(floor 0).",
              "* **pss**: `restricted` when no finding maps to a PSS control; `baseline` when only restricted-level "
              "controls are violated; `privileged` (meets neither) when a baseline control is violated.", "",
              "## JSON output (`sbx audit --format json`, schema_version \"1\")", "",
              "```",
              "{schema_version: \"1\", tool: {name, version}, kernel,",
              " summary: {containers, findings: {critical, high, medium, low, info}},",
              " containers: [{id, name, runtime, init_pid, pids, processes, command, cgroup, labels, helpers,",
              "               image: null | {ref, id, pinned},",
              "               score, pss, worst, error,",
              "               posture: {uid, host_uid, gid, host_gid, userns, root_maps_host_root, cap_eff,",
              "                         cap_bnd, cap_amb, no_new_privs, seccomp, lsm_label, host_namespaces,",
              "                         root_readonly, memory_limit, pids_limit, cpu_limit, network,",
              "                         published_ports, mounts_complete},",
              "               findings: [{check, severity, title, message, evidence}]}]}",
              "```", "",
              "`uid`/`gid` are the ids inside the container's user namespace, `host_uid`/`host_gid` the same "
              "credentials as the host sees them; `root_maps_host_root` is true when any id of the namespace maps "
              "to host uid 0. `init_pid` is the process the container is judged by: its most privileged workload "
              "process (runtime helpers such as bwrap's, firejail's or conmon are not judged); `helpers` maps the "
              "pids recognised as runtime helpers to the helper's name.", "",
              "Keys are only ever added within a schema version. Strings from containers are escaped "
              "(control characters as `\\xNN`, bidi and zero-width characters as `\\uNNNN`). Containers are "
              "ordered worst score first.", "",
              "## SARIF output (`--format sarif`)", "",
              "SARIF 2.1.0, one run; `tool.driver.rules` holds one rule per check (help text, "
              "`properties.mappings` with the CIS/PSS/Trivy/Kubescape ids, `security-severity`); each result "
              "references its rule by `ruleId`/`ruleIndex`, has a physical location (the artifact "
              "`containers/RUNTIME/NAME`, line 1, so code scanning accepts it) and names the container as a "
              "logical location (`runtime/name`), and carries a `partialFingerprints` value unique to that finding "
              "(a hash of container, check and the finding's subject). Critical/high map to `error`, medium to "
              "`warning`, low/info to `note`.", ""]
    for c in CHECKS:
        lines += [f"## {c.id}: {c.title}", "", f"*Severity:* {c.severity}. *Reads:* {', '.join(c.reads)}.", "",
                  c.rationale, "", f"*Remediation:* {c.remediation}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    import sys
    if "--markdown" in sys.argv:
        sys.stdout.write(markdown())
