"""`sbx doctor`: can this host run the strict profile, and if not, what exactly to change.

Every fact comes from the running kernel, and the two that matter most
(user namespaces, overlayfs in a user namespace) are probed for real in a
throw-away child rather than inferred from sysctls. Each problem carries the
exact fix. Exit 0 when strict can run as the invoking user, 1 otherwise.
"""
from __future__ import annotations

import errno
import json
import os
import pwd
import resource
import shutil
import stat
import sys
import tempfile
from dataclasses import asdict, dataclass, field

import click

OK, WARN, FAIL, INFO = "ok", "warn", "fail", "info"


@dataclass
class Check:
    id: str
    title: str
    status: str  # ok | warn | fail | info; only "fail" means strict cannot run
    detail: str
    fix: str | None = None


@dataclass
class Report:
    uid: int
    user: str
    facts: dict = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)

    @property
    def strict_ok(self) -> bool:
        return all(c.status != FAIL for c in self.checks)

    def add(self, *a, **kw) -> Check:
        c = Check(*a, **kw)
        self.checks.append(c)
        return c

    def to_dict(self) -> dict:
        return {"strict_can_run": self.strict_ok, "uid": self.uid, "user": self.user,
                "facts": self.facts, "checks": [asdict(c) for c in self.checks]}


def _read(path: str, limit: int = 65536) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(limit).strip()
    except OSError:
        return None


def _sysctl_int(name: str) -> int | None:
    from . import facts
    v = facts.read_sysctl(name)
    try:
        return int(v) if v is not None else None
    except ValueError:
        return None


def _int(path: str) -> int | None:
    v = _read(path)
    try:
        return int(v) if v is not None else None
    except ValueError:
        return None


# ---------------------------------------------------------------- probes in a child

def _in_child(fn) -> int:
    """Run fn() in a forked child; return 0 on success or the errno it failed with."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            fn()
        except OSError as e:
            code = e.errno or 1
        except BaseException:  # noqa: BLE001 - a probe never raises into the parent
            code = 255
        os._exit(code & 0xFF)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 255


def probe_userns() -> int:
    from . import syscalls as sc
    return _in_child(lambda: sc.unshare(sc.CLONE_NEWUSER))


def probe_seccomp_filter() -> int:
    """Install an allow-all seccomp filter in a child (after no_new_privs, as sbx does)."""
    from . import syscalls as sc

    def body() -> None:
        sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
        sc.seccomp_set_filter((0x06).to_bytes(2, "little") + b"\0\0" + (0x7FFF0000).to_bytes(4, "little"))

    return _in_child(body)


def probe_overlay_in_userns() -> int:
    """Mount an overlay inside a fresh user+mount namespace (what --rootfs needs)."""
    from . import syscalls as sc
    d = tempfile.mkdtemp(prefix="sbx-doctor-")
    try:
        for sub in ("lower", "upper", "work", "merged"):
            os.mkdir(os.path.join(d, sub))
        uid, gid = os.geteuid(), os.getegid()

        def body() -> None:
            sc.unshare(sc.CLONE_NEWUSER | sc.CLONE_NEWNS)
            for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
            # The new mount namespace is less privileged, so its mounts never propagate to the host.
            sc.mount("overlay", os.path.join(d, "merged"), "overlay", 0,
                     f"lowerdir={d}/lower,upperdir={d}/upper,workdir={d}/work")

        return _in_child(body)
    finally:
        shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------- checks

def _strict_spec():
    from .profiles import resolve
    return resolve(("true",), profile="strict")


def check_userns(r: Report) -> None:
    max_ns = _sysctl_int("user/max_user_namespaces")
    clone = _sysctl_int("kernel/unprivileged_userns_clone")  # Debian/Ubuntu patch; absent upstream
    aa_restrict = _sysctl_int("kernel/apparmor_restrict_unprivileged_userns")  # Ubuntu 23.10+
    rc = probe_userns()
    r.facts["userns"] = {"max_user_namespaces": max_ns, "unprivileged_userns_clone": clone,
                         "apparmor_restrict_unprivileged_userns": aa_restrict, "create_ok": rc == 0,
                         "create_errno": None if rc == 0 else errno.errorcode.get(rc, str(rc))}
    if rc == 0:
        r.add("userns", "user namespaces", OK, f"created one as uid {r.uid} (max_user_namespaces={max_ns})")
        return
    causes = userns_denial_causes(rc, r.uid, max_ns, clone, aa_restrict)
    r.facts["userns"]["causes"] = [c for c, _ in causes]
    r.add("userns", "user namespaces", FAIL,
          f"unshare(CLONE_NEWUSER) failed: {os.strerror(rc) if rc < 255 else 'unknown error'}"
          + (f" ({'; '.join(c for c, _ in causes)})" if causes else ""),
          "; ".join(f for _, f in causes))


def root_is_namespace_root() -> tuple[bool | None, str]:
    """Is this process's / the top of its mount namespace's root? (the kernel refuses a new user
    namespace to a chrooted process, and every process is "chrooted" once a mount sits on top of /)."""
    from . import facts
    try:
        mounts = facts.read_mountinfo("self")
    except (OSError, facts.ProcessGone):
        return None, ""
    at_root = [m for m in mounts if m.mountpoint == "/"]
    if len(at_root) > 1:
        return False, "stacked"
    # A chroot: some process of this mount namespace (an ancestor, or its pid 1) has another root.
    def root_of(pid: int | str) -> tuple | None:
        return facts.root_identity(pid)

    our_ns = facts.read_ns("self", ("mnt",)).get("mnt")
    if our_ns is None:
        return None, ""
    ours = root_of("self")
    others: list[int] = [1]
    pid = os.getppid()
    for _ in range(64):
        if pid <= 1:
            break
        others.append(pid)
        try:
            pid = facts.read_stat(pid).ppid
        except Exception:  # noqa: BLE001 - gone or unreadable: stop walking
            break
    for p in others:
        try:
            if facts.read_ns(p, ("mnt",)).get("mnt") != our_ns:
                continue
        except (OSError, facts.ProcessGone):
            continue
        theirs = root_of(p)
        if ours is not None and theirs is not None and theirs != ours:
            return False, "chroot"
    return True, ""


def userns_denial_causes(rc: int, uid: int, max_ns: int | None, clone: int | None,
                         aa_restrict: int | None) -> list[tuple[str, str]]:
    """Why unshare(CLONE_NEWUSER) failed with errno rc: (cause, fix) for each cause found on this host."""
    from . import facts
    causes: list[tuple[str, str]] = []
    if rc in (errno.EINVAL, errno.ENOSYS):
        return [("the kernel has no user namespaces", "boot a kernel with CONFIG_USER_NS=y")]
    if rc == errno.ENOSPC:
        if max_ns == 0:
            return [("user.max_user_namespaces is 0", "sysctl -w user.max_user_namespaces=15000")]
        return [(f"the user.max_user_namespaces limit ({max_ns}) is reached for this user or an ancestor "
                 "namespace", "raise it (sysctl -w user.max_user_namespaces=N) or end idle namespaces")]
    if rc == errno.EUSERS:
        return [("user namespaces are nested 32 deep already", "run sbx from a shallower namespace")]
    ok, how = root_is_namespace_root()
    if ok is False and how == "stacked":
        causes.append(("a mount is stacked on top of / (every process's root is now beneath it: a runtime "
                       "started with root.path / and no mount namespace does this)",
                       "as root: nsenter --mount=/proc/self/ns/mnt -- umount -l /  (removes only the stray copy)"))
    elif ok is False:
        causes.append(("this process is chrooted (its / is not its mount namespace's root)",
                       "run sbx outside the chroot, or pivot_root into it in a new mount namespace instead"))
    try:
        st = facts.read_status("self")
        if st.seccomp == 2:
            causes.append((f"a seccomp filter is installed on this process ({st.seccomp_filters or 1})",
                           "inside a container, allow unshare/clone with CLONE_NEWUSER in its seccomp profile"))
    except (OSError, facts.ProcessGone):
        pass
    if aa_restrict == 1 and uid != 0:
        causes.append(("kernel.apparmor_restrict_unprivileged_userns=1",
                       "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0, an AppArmor profile allowing "
                       "userns for sbx, or run sbx as root"))
    if clone == 0 and uid != 0:
        causes.append(("kernel.unprivileged_userns_clone=0", "sysctl -w kernel.unprivileged_userns_clone=1"))
    if not causes:
        causes.append(("no known cause found on this host",
                       "check the LSM audit log (AppArmor/SELinux denials) and any container runtime around sbx"))
    return causes


def check_idmap(r: Report) -> None:
    tools = {n: shutil.which(n) for n in ("newuidmap", "newgidmap")}
    setid = {}
    for n, p in tools.items():
        try:
            st = os.stat(p) if p else None
        except OSError:
            st = None
        has_caps = bool(p) and _has_file_caps(p)
        setid[n] = bool(st and (st.st_mode & stat.S_ISUID)) or has_caps
    ranges = {"subuid": _subids("/etc/subuid", r.user, r.uid), "subgid": _subids("/etc/subgid", r.user, r.uid)}
    r.facts["idmap"] = {"newuidmap": tools["newuidmap"], "newgidmap": tools["newgidmap"],
                        "helpers_privileged": setid, **ranges}
    if r.uid == 0:
        from .userns import pool
        base, slots = pool()
        r.facts["idmap"]["root_pool"] = {"base": base, "slices": slots}
        r.add("idmap", "id maps", OK, f"root: each sandbox gets its own 65536-id slice of {base}.. "
              f"({slots} slices; set an 'sbx' entry in /etc/subuid and /etc/subgid to choose the range)")
        return
    # Rootless sandboxes use a single-id map (no helper needed); ranges only widen what is possible.
    if all(tools.values()) and all(setid.values()) and ranges["subuid"] and ranges["subgid"]:
        r.add("idmap", "id maps", OK, f"single-id map; newuidmap/newgidmap present, subuid {ranges['subuid']}")
    else:
        missing = []
        if not all(tools.values()) or not all(setid.values()):
            missing.append("apt-get install uidmap")
        if not ranges["subuid"] or not ranges["subgid"]:
            missing.append(f"usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {r.user}")
        r.add("idmap", "id maps", INFO, "rootless sandboxes use a single-id map; multi-id maps would need "
              "newuidmap/newgidmap and /etc/subuid ranges", "; ".join(missing))


def _has_file_caps(path: str) -> bool:
    try:
        return bool(os.getxattr(path, "security.capability"))
    except OSError:
        return False


def _subids(path: str, user: str, uid: int) -> list[list[int]]:
    out = []
    text = _read(path, 1 << 20) or ""
    for line in text.splitlines():
        parts = line.strip().split(":")
        if len(parts) == 3 and parts[0] in (user, str(uid)):
            try:
                out.append([int(parts[1]), int(parts[2])])
            except ValueError:
                continue
    return out


def check_cgroups(r: Report, spec) -> None:
    try:
        from . import cgroups
        from .cgroups.base import labels_for
        version = cgroups.detect()
    except Exception as e:  # noqa: BLE001 - the cgroups package may be absent or mid-change; report, don't crash
        r.facts["cgroup"] = {"version": None, "error": str(e)}
        r.add("cgroups", "cgroups", FAIL, f"cannot inspect cgroups: {e}", "reinstall sbx")
        return
    need = labels_for(spec.resources)
    try:
        if version == "v2":
            from .cgroups import v2
            disc, base, _ = v2.discover(list(need))
        else:
            from .cgroups import v1
            disc, base = v1.discover(), None
    except Exception as e:  # noqa: BLE001
        r.facts["cgroup"] = {"version": version, "error": str(e)}
        r.add("cgroups", "cgroups", FAIL, f"cgroup discovery failed: {e}")
        return
    missing = {c: disc.unavailable[c] for c in need if c in disc.unavailable}
    r.facts["cgroup"] = {"version": version, "base": base, "usable": not missing,
                         "controllers": sorted(c for c in need if c not in missing),
                         "unavailable": {c: why for c, (why, _) in missing.items()}}
    who = "root" if r.uid == 0 else f"uid {r.uid}"
    if not missing:
        r.add("cgroups", "cgroups", OK, f"cgroup {version}: {', '.join(sorted(need))} usable by {who}")
        return
    status = WARN if spec.degrade else FAIL
    why = "; ".join(f"{c}: {w}" for c, (w, _) in missing.items())
    fixes = "; ".join(dict.fromkeys(f for _, f in missing.values()))
    r.add("cgroups", "cgroups", status, f"cgroup {version}: strict's caps cannot be enforced for {who} ({why})", fixes)


def check_seccomp(r: Report, spec) -> None:
    from . import facts
    try:
        st = facts.read_status("self")
        mode = None if st.seccomp is None else str(st.seccomp)
    except (OSError, facts.ProcessGone):
        mode = None
    actions = (facts.read_sysctl("kernel/seccomp/actions_avail") or "").split()
    rc = probe_seccomp_filter()
    ok = mode is not None and "errno" in actions and "kill_process" in actions and rc == 0
    r.facts["seccomp"] = {"status_mode": mode, "actions_avail": actions, "filter": ok,
                          "install_errno": None if rc == 0 else errno.errorcode.get(rc, str(rc))}
    if ok:
        r.add("seccomp", "seccomp", OK, f"a filter installs (actions: {' '.join(actions)})")
    else:
        need = spec.security.seccomp != "unconfined"
        r.add("seccomp", "seccomp", FAIL if need else WARN,
              "seccomp filter mode is not available (no Seccomp: line, no errno/kill_process action, "
              "or installing a filter failed)",
              "use a kernel built with CONFIG_SECCOMP=y and CONFIG_SECCOMP_FILTER=y")


def check_landlock(r: Report, spec) -> None:
    from . import landlock
    abi = landlock.abi_version()
    r.facts["landlock_abi"] = abi
    level = spec.security.landlock
    if abi:
        r.add("landlock", "Landlock", OK, f"ABI {abi}" + (" (signal/abstract-socket scoping)" if abi >= 6 else ""))
        return
    r.add("landlock", "Landlock", FAIL if level == "required" else WARN,
          "Landlock is not available: filesystem access is fenced by mounts only",
          "boot with CONFIG_SECURITY_LANDLOCK=y and landlock in lsm= (e.g. lsm=landlock,lockdown,yama,apparmor,bpf)")


def check_mac(r: Report, spec) -> None:
    from . import mac
    aa, se = mac.apparmor_enabled(), mac.selinux_enabled()
    r.facts["apparmor"] = aa
    r.facts["selinux"] = se
    sec = spec.security
    if aa:
        loaded = mac.DEFAULT_APPARMOR_PROFILE in mac.loaded_apparmor_profiles()
        r.facts["apparmor_sbx_default_loaded"] = loaded
        parser = shutil.which("apparmor_parser")
        if loaded:
            r.add("apparmor", "AppArmor", OK, "enabled; sbx-default is loaded")
        elif parser and r.uid == 0:
            r.add("apparmor", "AppArmor", OK, "enabled; sbx-default will be loaded at first run")
        else:
            r.add("apparmor", "AppArmor", FAIL if sec.apparmor == "required" else WARN,
                  "enabled, but sbx-default is not loaded and cannot be loaded by this user",
                  f"sudo apparmor_parser -r -W {mac.apparmor_profile_path()}")
    else:
        r.add("apparmor", "AppArmor", FAIL if sec.apparmor == "required" else INFO,
              "not enabled in this kernel (runs record 'apparmor: not available')",
              "boot with apparmor=1 security=apparmor (or in lsm=) for a MAC layer" if sec.apparmor == "required"
              else None)
    if se:
        check_selinux(r, sec)
    else:
        r.add("selinux", "SELinux", FAIL if sec.selinux == "required" else INFO,
              "not enabled on this host (runs record 'selinux: not available')")


def check_selinux(r: Report, sec) -> None:
    """SELinux is on: is it enforcing, and does the loaded policy know the domain strict execs into?"""
    from . import mac
    enforcing = mac.selinux_enforcing()
    mode = "enforcing" if enforcing else "permissive" if enforcing is False else "mode unknown"
    typ = sec.selinux_type or mac.DEFAULT_SELINUX_TYPE
    loaded = mac.selinux_type_loaded(typ)
    bindings = mac.libselinux() is not None
    r.facts["selinux_mode"] = mode
    r.facts["selinux_type"] = typ
    r.facts["selinux_type_loaded"] = loaded
    if not bindings:
        r.add("selinux", "SELinux", FAIL if sec.selinux == "required" else WARN,
              f"{mode}, but the libselinux Python bindings are missing: sandboxes cannot be labelled",
              "apt-get install python3-selinux (or dnf install python3-libselinux)")
        return
    if not loaded:
        what = "sbx's module is not loaded" if typ == mac.DEFAULT_SELINUX_TYPE else f"no module defines {typ}"
        fix = (f"sudo semodule -i {mac.selinux_module_path()}" if typ == mac.DEFAULT_SELINUX_TYPE
               else f"sudo semodule -i FILE.cil (the module defining {typ})")
        r.add("selinux", "SELinux", FAIL if sec.selinux == "required" else WARN,
              f"{mode}; {what} (the loaded policy has no {typ}): sandboxes run unlabelled, in the caller's domain",
              fix)
        return
    detail = f"{mode}; {typ} is loaded: sandboxes run as {mac.SELINUX_USER_ROLE}:{typ} with their own MCS categories"
    if enforcing:
        r.add("selinux", "SELinux", OK, detail)
    else:
        r.add("selinux", "SELinux", WARN, detail + ", but a permissive policy only logs what it would deny",
              "sudo setenforce 1 (and SELINUX=enforcing in /etc/selinux/config)")


def check_rlimits(r: Report, spec) -> None:
    from .errors import SbxError
    from .rlimits import NAMES, check
    hard = {}
    for name in ("nofile", "nproc"):
        h = resource.getrlimit(NAMES[name])[1]
        hard[name] = "unlimited" if h == resource.RLIM_INFINITY else h
    r.facts["rlimits_hard"] = hard
    try:
        check(spec.rlimits)
    except SbxError as e:
        r.add("rlimits", "hard rlimits", FAIL, e.message,
              "raise the hard limit for sbx's invoker (limits.conf / systemd LimitNOFILE=) or lower the profile's")
        return
    r.add("rlimits", "hard rlimits", OK, f"strict's limits fit under the inherited hard limits "
          f"(nofile {hard['nofile']}, nproc {hard['nproc']})")


def check_overlay(r: Report, userns_ok: bool) -> None:
    rc = probe_overlay_in_userns() if userns_ok else -1
    r.facts["overlay_in_userns"] = rc == 0
    if rc == 0:
        r.add("overlay", "overlayfs in a user namespace", OK, "works (--rootfs is supported)")
    else:
        why = "user namespaces unavailable" if rc == -1 else os.strerror(rc) if 0 < rc < 255 else "unknown error"
        r.add("overlay", "overlayfs in a user namespace", WARN, f"fails ({why}): --rootfs cannot be used",
              "use kernel >= 5.11 (overlayfs mounts in user namespaces), or run --rootfs as root")


def collect() -> Report:
    uid = os.getuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    r = Report(uid=uid, user=user)
    r.facts["kernel"] = os.uname().release
    spec = _strict_spec()
    check_userns(r)
    check_idmap(r)
    check_cgroups(r, spec)
    check_seccomp(r, spec)
    check_landlock(r, spec)
    check_mac(r, spec)
    check_rlimits(r, spec)
    check_overlay(r, r.facts["userns"]["create_ok"])
    return r


def render(r: Report) -> str:
    from .errors import escape
    mark = {OK: "ok  ", WARN: "warn", FAIL: "FAIL", INFO: "info"}
    lines = [f"sbx doctor: kernel {r.facts.get('kernel')}, {'root' if r.uid == 0 else 'rootless'} ({r.user})"]
    for c in r.checks:
        lines.append(f"[{mark[c.status]}] {c.title}: {escape(c.detail)}")
        if c.fix and c.status != OK:
            lines.append(f"       fix: {escape(c.fix)}")
    lines.append("strict profile: " + ("can run" if r.strict_ok else "CANNOT run (fix the FAIL lines)"))
    return "\n".join(lines)


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def doctor_cmd(as_json: bool) -> int:
    """Check this host for what the strict profile needs; exit 0 if it can run, 1 if not."""
    r = collect()
    if as_json:
        sys.stdout.write(json.dumps(r.to_dict(), indent=2, sort_keys=True) + "\n")
    else:
        sys.stdout.write(render(r) + "\n")
    return 0 if r.strict_ok else 1
