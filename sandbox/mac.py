"""Mandatory access control: the AppArmor profile or SELinux context the workload execs under.

Parent side (prepare): read the host's real LSM state, decide the label, load
our own AppArmor profile when it is missing, and refuse (125, naming the LSM)
when a profile *requires* an LSM the host does not run. `if-available` on a
host without the LSM records "<lsm>: not available" and claims nothing.

Child side (apply): right before seccomp and execve, ask the kernel to switch
label at the next exec (AppArmor: "exec PROFILE" into attr/apparmor/exec;
SELinux: setexeccon). The switch happens at exec, so verification reads
/proc/PID/attr/current afterwards and compares it with expected_label().
"""
from __future__ import annotations

import os

from .errors import SbxError
from .records import asdict, field, record
from .spec import IF_AVAILABLE, OFF, REQUIRED, Security

SECURITYFS = "/sys/kernel/security"
AA_PARAM = "/sys/module/apparmor/parameters/enabled"
AA_PROFILES = SECURITYFS + "/apparmor/profiles"
DEFAULT_APPARMOR_PROFILE = "sbx-default"
DEFAULT_SELINUX_TYPE = "sbx_t"
SELINUX_USER_ROLE = "system_u:system_r"
MCS_CATEGORIES = 1024  # c0..c1023, the refpolicy MCS default


@record
class MacPlan:
    apparmor_profile: str | None = None
    selinux_context: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _active_lsms() -> list[str] | None:
    """The kernel's active LSM list (securityfs), or None when securityfs is not mounted."""
    try:
        with open(SECURITYFS + "/lsm", encoding="ascii", errors="replace") as f:
            return f.read().strip().split(",")
    except OSError:
        return None


def apparmor_enabled() -> bool:
    """AppArmor is built in, enabled at boot, and active (not only compiled in)."""
    try:
        with open(AA_PARAM, encoding="ascii") as f:
            if f.read().strip() != "Y":
                return False
    except OSError:
        return False
    lsms = _active_lsms()
    return lsms is None or "apparmor" in lsms


# Where distributions install the libselinux SWIG bindings (python3-selinux, libselinux-python3).
_SYSTEM_SITES = ("/usr/lib/python3/dist-packages", "/usr/lib64/python{v}/site-packages",
                 "/usr/lib/python{v}/site-packages")


def libselinux():
    """The real libselinux Python bindings, or None when the host has none.

    The PyPI `selinux` package that venvs install is only a shim: on Debian and
    Ubuntu it never loads the real module and its is_selinux_enabled() always
    answers 0, so an SELinux host would look unconfined. When we meet the shim
    (no setexeccon), we load the distribution's bindings from its site dir.
    """
    import importlib.util
    import sys
    try:
        import selinux
    except ImportError:
        selinux = None
    if selinux is not None and hasattr(selinux, "setexeccon"):
        return selinux
    ver = f"{sys.version_info.major}.{sys.version_info.minor}"
    for site in _SYSTEM_SITES:
        pkg = os.path.join(site.format(v=ver), "selinux")
        init = os.path.join(pkg, "__init__.py")
        if not os.path.isfile(init):
            continue
        spec = importlib.util.spec_from_file_location("selinux", init, submodule_search_locations=[pkg])
        if spec is None or spec.loader is None:
            continue
        mod = importlib.util.module_from_spec(spec)
        saved = sys.modules.get("selinux")
        sys.modules["selinux"] = mod  # the bindings import their C part as a submodule of "selinux"
        try:
            spec.loader.exec_module(mod)
        except ImportError:
            if saved is not None:
                sys.modules["selinux"] = saved
            else:
                sys.modules.pop("selinux", None)
            continue
        if hasattr(mod, "setexeccon"):
            return mod
    return None


def selinux_enabled() -> bool:
    """SELinux is active with a policy loaded (libselinux's own answer)."""
    lsms = _active_lsms()
    if (lsms is not None and "selinux" not in lsms) or not any(
            os.path.exists(p) for p in ("/sys/fs/selinux/enforce", "/selinux/enforce")):
        # The kernel's LSM list says no, or no selinuxfs is mounted (libselinux would answer 0 too):
        # skip loading libselinux, which costs 30+ ms of imports on every run.
        return False
    se = libselinux()
    if se is None:
        # No bindings: still never call an SELinux host unconfined; selinuxfs tells the truth.
        return os.path.exists("/sys/fs/selinux/enforce")
    try:
        return se.is_selinux_enabled() == 1
    except OSError:
        return False


def selinux_enforcing() -> bool | None:
    """True enforcing, False permissive, None when selinuxfs does not say (SELinux off)."""
    try:
        with open("/sys/fs/selinux/enforce", encoding="ascii") as f:
            return f.read(16).strip() == "1"
    except OSError:
        return None


def selinux_context_valid(ctx: str) -> bool:
    """Does the policy loaded in the kernel know this context? (False without the bindings.)"""
    se = libselinux()
    if se is None:
        return False
    try:
        return se.security_check_context(ctx) == 0
    except OSError:
        return False


def selinux_type_loaded(typ: str = DEFAULT_SELINUX_TYPE) -> bool:
    """Is `typ` a domain of the loaded policy (sbx_t: is sbx's module loaded)?"""
    return selinux_context_valid(f"{SELINUX_USER_ROLE}:{typ}:s0")


def loaded_apparmor_profiles() -> set[str]:
    """Names of the profiles in the kernel (lines are 'NAME (MODE)')."""
    try:
        with open(AA_PROFILES, encoding="utf-8", errors="replace") as f:
            text = f.read(4 << 20)
    except OSError:
        return set()
    return parse_profiles(text)


def parse_profiles(text: str) -> set[str]:
    names = set()
    for line in text.splitlines():
        name, sep, _ = line.rpartition(" (")
        names.add(name if sep else line)
    return names


def apparmor_profile_path() -> str:
    from .paths import builtin_dir
    return os.path.join(builtin_dir("policies"), "apparmor", DEFAULT_APPARMOR_PROFILE)


def selinux_module_path() -> str:
    from .paths import builtin_dir
    return os.path.join(builtin_dir("policies"), "selinux", "sbx.cil")


def load_apparmor_default() -> None:
    """Load (or replace) policies/apparmor/sbx-default into the kernel with apparmor_parser."""
    import shutil
    import subprocess
    parser = shutil.which("apparmor_parser") or "/sbin/apparmor_parser"
    if not os.path.exists(parser):
        raise SbxError("apparmor_parser not found; install the apparmor package to load sbx-default",
                       where="apparmor")
    path = apparmor_profile_path()
    # -W writes the cache so the next boot's apparmor.service does not need us.
    p = subprocess.run([parser, "-r", "-W", path], capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        msg = " ".join((p.stderr or p.stdout).split())[-300:]
        raise SbxError(f"loading {DEFAULT_APPARMOR_PROFILE} failed: {msg} "
                       f"(fix: sudo apparmor_parser -r -W {path})", where="apparmor")


def mcs_level(rng=None) -> str:
    """s0 with two distinct random categories, as container runtimes do for per-sandbox separation."""
    import secrets  # lazily: only SELinux hosts pay for it
    rng = rng or secrets.SystemRandom()
    a, b = sorted(rng.sample(range(MCS_CATEGORIES), 2))
    return f"s0:c{a},c{b}"


def _unavailable(lsm: str, level: str, why: str, plan: MacPlan) -> None:
    if level == REQUIRED:
        raise SbxError(f"{lsm} is required by the profile but {why}", where=lsm.lower())
    plan.notes.append(f"{lsm.lower()}: not available")


def _check_level(name: str, level: str) -> None:
    if level not in (REQUIRED, IF_AVAILABLE, OFF):
        raise SbxError(f"unknown {name} level {level!r} (expected required, if-available or off)",
                       where=f"security.{name}")


def apparmor_profile_of(sec: Security) -> str:
    """The AppArmor profile a workload of `sec` runs under (where AppArmor is on)."""
    return sec.apparmor_profile or DEFAULT_APPARMOR_PROFILE


def selinux_type_of(sec: Security) -> str:
    """The SELinux domain a workload of `sec` runs in (where SELinux is on)."""
    return sec.selinux_type or DEFAULT_SELINUX_TYPE


def planned_label(sec: Security) -> str | None:
    """The label launch will put on a workload of `sec` on this host, for admission's posture.

    The per-sandbox MCS level is not known before launch: "s0" stands for it
    (policies match SELinux types, not levels). None where neither LSM applies.
    """
    if sec.selinux != OFF and selinux_enabled():
        return f"{SELINUX_USER_ROLE}:{selinux_type_of(sec)}:{sec.selinux_level or 's0'}"
    if sec.apparmor != OFF and apparmor_enabled() and apparmor_profile_of(sec) != "unconfined":
        return f"{apparmor_profile_of(sec)} (enforce)"
    return None


def prepare(sec: Security, sandbox_id: str) -> MacPlan:
    """Decide the exec label(s) for one sandbox; refuse when a required LSM is absent."""
    _check_level("apparmor", sec.apparmor)
    _check_level("selinux", sec.selinux)
    plan = MacPlan()
    if sec.apparmor != OFF:
        if not apparmor_enabled():
            _unavailable("AppArmor", sec.apparmor, "it is not enabled in this kernel", plan)
        else:
            profile = apparmor_profile_of(sec)
            if profile == "unconfined":
                plan.notes.append("apparmor: unconfined (requested)")
            else:
                if profile not in loaded_apparmor_profiles():
                    if profile != DEFAULT_APPARMOR_PROFILE:
                        # A named profile that is not loaded is a configuration error, never a soft skip.
                        raise SbxError(f"AppArmor profile {profile!r} is not loaded "
                                       f"(fix: sudo apparmor_parser -r /etc/apparmor.d/{profile})",
                                       where="apparmor")
                    try:
                        load_apparmor_default()
                    except SbxError as e:
                        if sec.apparmor == REQUIRED:
                            raise
                        plan.notes.append(f"apparmor: available but {profile} could not be loaded, "
                                          f"not confined ({e.message})")
                        profile = None
                    if profile and profile not in loaded_apparmor_profiles():
                        raise SbxError(f"AppArmor profile {profile!r} still not listed after loading it "
                                       f"(is securityfs mounted? mount -t securityfs securityfs {SECURITYFS})",
                                       where="apparmor")
                plan.apparmor_profile = profile
    if sec.selinux != OFF:
        if not selinux_enabled():
            _unavailable("SELinux", sec.selinux, "it is not enabled on this host", plan)
        else:
            if libselinux() is None:  # loaded here, in the parent: the child cannot import after pivot_root
                raise SbxError("SELinux is enabled but the libselinux Python bindings are missing "
                               "(apt-get install python3-selinux)", where="selinux")
            typ = selinux_type_of(sec)
            level = sec.selinux_level or mcs_level()
            ctx = f"{SELINUX_USER_ROLE}:{typ}:{level}"
            try:
                _check_selinux_context(ctx)
                plan.selinux_context = ctx
            except SbxError:
                # The host runs SELinux but its policy lacks our domain: for "if-available"
                # that is the LSM being unavailable to us; we say so and claim no label.
                if sec.selinux == REQUIRED or typ != DEFAULT_SELINUX_TYPE:
                    raise
                plan.notes.append(f"selinux: available but {typ} is not in the loaded policy, not labelled "
                                  f"(fix: sudo semodule -i {selinux_module_path()})")
    return plan


def _check_selinux_context(ctx: str) -> None:
    """The policy must know the context, or the exec would fail late inside the sandbox."""
    if selinux_context_valid(ctx):
        return
    typ = ctx.split(":")[2]
    if selinux_type_loaded(typ):
        fix = "the level is not one the policy defines (MCS: s0 with categories c0..c1023)"
    elif typ == DEFAULT_SELINUX_TYPE:
        fix = f"install the sbx module: sudo semodule -i {selinux_module_path()}"
    else:
        fix = (f"the loaded policy has no domain {typ}; install the module that defines it "
               f"(sbx policy compile --selinux FILE.cil; sudo semodule -i FILE.cil)")
    raise SbxError(f"SELinux context {ctx} is not valid in the loaded policy ({fix})", where="selinux")


def _write_attr(names: list[str], data: bytes) -> None:
    last: OSError | None = None
    for name in names:
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError as e:
            last = e
            continue
        try:
            os.write(fd, data)
            return
        finally:
            os.close(fd)
    raise last or FileNotFoundError(names[0])


def apply(plan: MacPlan) -> None:
    """In the sandbox child: request the label for the next execve. Raises SbxError on any failure."""
    if plan.apparmor_profile:
        try:
            # thread-self: attr/exec is per task; the apparmor/ subdirectory exists with LSM stacking.
            _write_attr(["/proc/thread-self/attr/apparmor/exec", "/proc/thread-self/attr/exec",
                         "/proc/self/attr/exec"], b"exec " + plan.apparmor_profile.encode())
        except OSError as e:
            raise SbxError(f"cannot set exec profile {plan.apparmor_profile}: {e.strerror or e}",
                           where="apparmor") from None
    if plan.selinux_context:
        se = libselinux()  # already loaded by prepare() in the parent: no file access here
        if se is None:
            raise SbxError("libselinux Python bindings are missing (apt-get install python3-selinux)",
                           where="selinux")
        try:
            rc = se.setexeccon(plan.selinux_context)
        except OSError as e:
            raise SbxError(f"setexeccon {plan.selinux_context} failed: {e.strerror or e}",
                           where="selinux") from None
        if rc not in (0, None):
            raise SbxError(f"setexeccon {plan.selinux_context} failed (rc {rc})", where="selinux")


def expected_label(plan: MacPlan) -> str | None:
    """What /proc/PID/attr/current must show after exec; None when no label was requested."""
    if plan.apparmor_profile:
        return plan.apparmor_profile
    if plan.selinux_context:
        return plan.selinux_context
    return None
