"""`sbx version` and `sbx info`: what this sbx is and what this host gives it.

No new readers: kernel facts come from facts (the /proc reader), landlock, cgroups and mac,
and `info`'s host checks are doctor's own (the probes run for real in a throw-away child).
"""
from __future__ import annotations

import os
import platform
import sys

FALLBACK_VERSION = "0.1.0"


def client_version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version
        try:
            return version("sbx")
        except PackageNotFoundError:
            return FALLBACK_VERSION
    except ImportError:
        return FALLBACK_VERSION


def cgroup_layout() -> dict:
    """{"version": "1"|"2", "hybrid": bool, "v2_mount": path|None, "v1_controllers": [...]}."""
    from . import cgroups, facts
    v = cgroups.detect()
    mounts = facts.cgroup_mounts("self")
    v2 = mounts.get("", (None, None))[0]
    v1 = sorted(k for k in mounts if k and not k.startswith("name="))
    return {"version": "2" if v == "v2" else "1", "hybrid": v == "v1" and v2 is not None,
            "v2_mount": v2, "v1_controllers": v1 if v == "v1" else []}


def kernel_features() -> dict:
    from . import doctor, landlock, mac
    abi = landlock.abi_version()
    features = {
        "user_namespaces": doctor.probe_userns() == 0,
        "seccomp_filter": doctor.probe_seccomp_filter() == 0,
        "landlock_abi": abi,
        "cgroup": cgroup_layout(),
        "lsms": _lsms(),
        "apparmor": mac.apparmor_enabled(),
        "selinux": mac.selinux_enabled(),
        "openat2": _openat2_works(),
        "pidfd": _pidfd_works(),
    }
    return features


def _lsms() -> list[str] | None:
    """The kernel's active LSMs; None when the list cannot be read (securityfs not mounted)."""
    from . import facts
    if not os.path.exists("/sys/kernel/security/lsm"):
        return None
    return facts.active_lsms()


def _openat2_works() -> bool:
    from . import syscalls as sc
    try:
        fd = sc.openat2(sc.AT_FDCWD, "/", os.O_PATH | os.O_CLOEXEC, 0, sc.RESOLVE_IN_ROOT)
    except OSError:
        return False
    os.close(fd)
    return True


def _pidfd_works() -> bool:
    try:
        fd = os.pidfd_open(os.getpid())
    except (OSError, AttributeError):
        return False
    os.close(fd)
    return True


def version() -> dict:
    from . import facts
    return {
        "Client": {"Version": client_version(), "Python": platform.python_version(), "Os": sys.platform,
                   "Arch": os.uname().machine, "Executable": sys.executable},
        "Kernel": {"Release": facts.kernel_release(), "Features": kernel_features()},
    }


def _os_release() -> str:
    try:
        with open("/etc/os-release", encoding="utf-8", errors="replace") as f:
            for line in f.read(16384).splitlines():
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.system()


def info() -> dict:
    from . import doctor, facts, paths, state
    from .profiles import builtin_profiles
    r = doctor.collect()
    f = r.facts
    counts = {"running": 0, "paused": 0, "exited": 0, "created": 0}
    for e in state.entries():
        counts[e.status] = counts.get(e.status, 0) + 1
    cg = cgroup_layout()
    cg["usable_for_strict"] = (f.get("cgroup") or {}).get("usable")
    cg["strict_controllers"] = (f.get("cgroup") or {}).get("controllers")
    abi = f.get("landlock_abi") or 0
    secopts = []
    if (f.get("seccomp") or {}).get("filter"):
        secopts.append("name=seccomp,profile=strict")
    if abi:
        secopts.append(f"name=landlock,abi={abi}")
    if f.get("apparmor"):
        secopts.append("name=apparmor")
    if f.get("selinux"):
        secopts.append("name=selinux")
    if (f.get("userns") or {}).get("create_ok"):
        secopts.append("name=userns")
    if os.geteuid() != 0:
        secopts.append("name=rootless")
    try:
        mem = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        mem = None
    sd = paths.state_dir()
    return {
        "Sandboxes": sum(counts.values()),
        "SandboxesRunning": counts["running"],
        "SandboxesPaused": counts["paused"],
        "SandboxesStopped": counts["exited"],
        "SandboxesCreated": counts["created"],
        "ClientVersion": client_version(),
        "KernelVersion": facts.kernel_release(),
        "OperatingSystem": _os_release(),
        "Architecture": os.uname().machine,
        "NCPU": os.cpu_count(),
        "MemTotal": mem,
        "Cgroup": cg,
        "SecurityOptions": secopts,
        "LSMs": _lsms(),
        "LandlockABI": abi,
        "Seccomp": f.get("seccomp"),
        "UserNamespaces": f.get("userns"),
        "IDMaps": f.get("idmap"),
        "RlimitsHard": f.get("rlimits_hard"),
        "OverlayInUserns": f.get("overlay_in_userns"),
        "Rootless": os.geteuid() != 0,
        "StateDir": sd,
        "SandboxesDir": os.path.join(sd, "sandboxes"),
        "EventsLog": os.path.join(sd, "events.log"),
        "CacheDir": paths.cache_dir(),
        "DefaultProfile": "strict",
        "Profiles": builtin_profiles(),
        "StrictCanRun": r.strict_ok,
        "Warnings": [f"{c.title}: {c.detail}" for c in r.checks if c.status in ("warn", "fail")],
    }


def render_version(v: dict) -> str:
    c, k = v["Client"], v["Kernel"]
    feats = k["Features"]
    cg = feats["cgroup"]
    names = [n for n, on in (("userns", feats["user_namespaces"]), ("seccomp-filter", feats["seccomp_filter"]),
                             ("openat2", feats["openat2"]), ("pidfd", feats["pidfd"]),
                             ("apparmor", feats["apparmor"]), ("selinux", feats["selinux"])) if on]
    if feats["landlock_abi"]:
        names.append(f"landlock (ABI {feats['landlock_abi']})")
    names.append(f"cgroup v{cg['version']}" + (" (hybrid)" if cg["hybrid"] else ""))
    return "\n".join([
        "Client:",
        f" Version:    {c['Version']}",
        f" Python:     {c['Python']}",
        f" OS/Arch:    {c['Os']}/{c['Arch']}",
        "",
        "Kernel:",
        f" Release:    {k['Release']}",
        f" Features:   {', '.join(names)}",
        f" LSMs:       {_lsm_text(feats['lsms'])}",
    ]) + "\n"


def render_info(i: dict) -> str:
    cg = i["Cgroup"]
    userns = i["UserNamespaces"] or {}
    lines = [
        f"Sandboxes: {i['Sandboxes']}",
        f" Running: {i['SandboxesRunning']}",
        f" Paused: {i['SandboxesPaused']}",
        f" Stopped: {i['SandboxesStopped']}",
        f" Created: {i['SandboxesCreated']}",
        f"Client Version: {i['ClientVersion']}",
        f"Kernel Version: {i['KernelVersion']}",
        f"Operating System: {i['OperatingSystem']}",
        f"Architecture: {i['Architecture']}",
        f"CPUs: {i['NCPU']}",
        f"Total Memory: {_gib(i['MemTotal'])}",
        f"Cgroup Version: {cg['version']}" + (f" (hybrid: cgroup2 also at {cg['v2_mount']})" if cg["hybrid"] else ""),
        f" Controllers for strict: {', '.join(cg.get('strict_controllers') or []) or '-'}"
        f" ({'usable' if cg.get('usable_for_strict') else 'NOT usable'})",
        f"LSMs: {_lsm_text(i['LSMs'])}",
        f"Landlock ABI: {i['LandlockABI'] or 'not available'}",
        "Security Options:",
        *[f" {o}" for o in i["SecurityOptions"]],
        "User Namespaces:",
        f" create: {'ok' if userns.get('create_ok') else 'FAILS (' + str(userns.get('create_errno')) + ')'}",
        f" max_user_namespaces: {userns.get('max_user_namespaces')}",
    ]
    if userns.get("unprivileged_userns_clone") is not None:
        lines.append(f" unprivileged_userns_clone: {userns['unprivileged_userns_clone']}")
    if userns.get("apparmor_restrict_unprivileged_userns") is not None:
        lines.append(f" apparmor_restrict_unprivileged_userns: {userns['apparmor_restrict_unprivileged_userns']}")
    pool = (i["IDMaps"] or {}).get("root_pool")
    if pool:
        lines.append(f" id pool: {pool['slices']} slices of 65536 from {pool['base']}")
    lines += [
        f"Rootless: {str(i['Rootless']).lower()}",
        f"State Dir: {i['StateDir']}",
        f"Events Log: {i['EventsLog']}",
        f"Cache Dir: {i['CacheDir']}",
        f"Profiles: {', '.join(i['Profiles'])} (default: {i['DefaultProfile']})",
        f"Strict Can Run: {str(i['StrictCanRun']).lower()}",
    ]
    for w in i["Warnings"]:
        lines.append(f"WARNING: {w}")
    return "\n".join(lines) + "\n"


def _lsm_text(lsms) -> str:
    if lsms is None:
        return "unknown (securityfs is not mounted: /sys/kernel/security/lsm is missing)"
    return ",".join(lsms) or "(none)"


def _gib(n) -> str:
    return "unknown" if not n else f"{n / (1 << 30):.2f}GiB"
