"""Policy files for security teams: one YAML source for admission, conformance and MAC/seccomp compile.

    apiVersion: sbx/v1
    name: restricted
    capabilities: {allowed: [NET_BIND_SERVICE], denied: [SYS_ADMIN], privileged: forbidden}
    identity: {run_as_non_root: true, allowed_uids: ["1000-65535"], userns_required: true}
    controls: {no_new_privs: required, seccomp: any, read_only_root: required, landlock: optional,
               apparmor_profiles: [sbx-default], selinux_types: [sbx_t]}
    namespaces: {host_shared_allowed: []}
    mounts: {denied_host_paths: [/, /etc, /var/run], rw_allowed_host_paths: [/srv/data]}
    resources: {memory: {required: true, max: 2g}, pids: {required: true, max: 4096},
                cpu: {required: false, max: 4}, rlimits: {nofile: 65536}}
    network: {allowed_modes: [none, loopback], published_ports: "1024-65535", host_network: forbidden}
    images: {allowed_registries: [registry.example.com, quay.io/myorg], require_digest: true}
    waivers: [{check: SBX-P001, selector: {name: "web-*"}, expires: 2027-01-31, reason: "..."}]
    mac: {files: {read: [/usr/**], write: [/tmp/**], exec: [/usr/bin/**]}, network: [unix],
          syscalls: {base: strict, allow: [], deny: []}}

Every error names file:line:column and the field (via sandbox.yamlmarks).
"""
from __future__ import annotations

import datetime as _dt
import difflib
import os
import re
from dataclasses import dataclass, field

from sandbox import namespaces
from sandbox.errors import SpecError
from sandbox.facts import CAP_NAMES
from sandbox.values import cap_bare
from sandbox.yamlmarks import Doc, check_schema, get_path, load

LEVELS = ("required", "optional", "forbidden")
NS_NAMES = namespaces.PROC_NAMES  # the kernel's spelling ("mnt"); "mount" is accepted too
NET_MODES = ("none", "loopback", "bridge", "host")
NET_FAMILIES = ("unix", "inet", "inet6", "netlink", "packet")
# Paths and names end up inside AppArmor / CIL / JSON text: only this alphabet gets through.
SAFE_PATH = re.compile(r"^/[A-Za-z0-9._/@+*-]*$")
SAFE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")
CHECK_ID = re.compile(r"^SBX-[A-Z]\d{3}$")

SCHEMA: dict = {
    "apiVersion": "str", "kind": "str", "name": "str", "description": "str",
    "capabilities": {"allowed": "strs", "denied": "strs", "privileged": "str"},
    "identity": {"run_as_non_root": "bool", "allowed_uids": "ranges", "userns_required": "bool"},
    "controls": {"no_new_privs": "str", "seccomp": "str", "read_only_root": "str", "landlock": "str",
                 "apparmor_profiles": "strs", "selinux_types": "strs"},
    "namespaces": {"host_shared_allowed": "strs"},
    "mounts": {"denied_host_paths": "strs", "rw_allowed_host_paths": "strs", "runtime_sockets": "str"},
    "resources": {
        "memory": {"required": "bool", "max": "size"},
        "pids": {"required": "bool", "max": "int"},
        "cpu": {"required": "bool", "max": "num"},
        "rlimits": "map",
    },
    "network": {"allowed_modes": "strs", "published_ports": "str", "host_network": "str",
                "bind_all_interfaces": "str"},
    "waivers": "list",
    "images": {"allowed_registries": "list", "require_digest": "bool"},  # audit/policy_images.py
    "mac": {
        "files": {"read": "strs", "write": "strs", "exec": "strs"},
        "network": "strs",
        "syscalls": {"base": "str", "allow": "strs", "deny": "strs"},
        "capabilities": "strs",
    },
}


@dataclass(frozen=True)
class Waiver:
    check: str
    selector: dict
    expires: _dt.date
    reason: str

    def expired(self, today: _dt.date | None = None) -> bool:
        return (today or _dt.date.today()) > self.expires

    def matches(self, target: dict) -> bool:
        import fnmatch
        for k, pat in self.selector.items():
            val = target.get(k)
            if val is None or not fnmatch.fnmatchcase(str(val), str(pat)):
                return False
        return True


@dataclass
class Policy:
    name: str
    path: str
    data: dict
    waivers: list[Waiver] = field(default_factory=list)
    doc: Doc | None = None

    def get(self, dotted: str, default=None):
        return get_path(self.data, dotted, default)

    def where(self, key: str) -> str:
        return self.doc.where(key) if self.doc else self.path

    # Normalised views used by evaluation.
    def allowed_caps(self) -> set[str] | None:
        a = self.get("capabilities.allowed")
        return None if a is None else {_cap(c) for c in a}

    def denied_caps(self) -> set[str]:
        return {_cap(c) for c in self.get("capabilities.denied", []) or []}

    def uid_ranges(self) -> list[tuple[int, int]]:
        return [_range(r) for r in self.get("identity.allowed_uids", []) or []]

    def port_range(self) -> tuple[int, int] | None:
        r = self.get("network.published_ports")
        return None if r is None else _range(r)


def _cap(c: str) -> str:
    return cap_bare(c)


def _range(text) -> tuple[int, int]:
    s = str(text).strip()
    a, sep, b = s.partition("-")
    lo, hi = int(a), int(b) if sep else int(a)
    if lo < 0 or hi < lo:
        raise ValueError(f"range '{text}' must be LOW-HIGH with LOW <= HIGH")
    return lo, hi


def builtin_names() -> list[str]:
    from sandbox.paths import builtin_dir
    d = builtin_dir("policies")
    return sorted(f[:-5] for f in os.listdir(d) if f.endswith(".yaml"))


def policy_path(ref: str) -> str:
    from sandbox.profiles import builtin_or_path
    return builtin_or_path(ref, "policies")


def _suggest(word: str, choices) -> str:
    near = difflib.get_close_matches(word, list(choices), 1)
    return f" (did you mean {near[0]}?)" if near else ""


def lint(path: str, text: str | None = None) -> tuple[Policy | None, list[SpecError]]:
    """Parse and check a policy. Returns (policy or None, every error found, each with file:line:col)."""
    try:
        doc = load(path, text)
    except SpecError as e:
        return None, [e]
    errors: list[SpecError] = []
    if not isinstance(doc.data, dict):
        return None, [doc.error("", "a policy must be a mapping")]
    data = doc.data
    errors.extend(check_schema(doc, data, SCHEMA, kinds=KINDS))
    if data.get("apiVersion", "sbx/v1") != "sbx/v1":
        errors.append(doc.error("apiVersion", "must be sbx/v1"))
    name = data.get("name")
    if not isinstance(name, str) or not SAFE_NAME.match(name):
        errors.append(doc.error("name", "required: a name of letters, digits, '-' and '_' (it becomes a MAC type/profile name)"))

    def caps_list(key: str) -> set[str]:
        out = set()
        vals = _get(data, key)
        if not isinstance(vals, list):
            return out
        for i, c in enumerate(vals):
            n = _cap(c) if isinstance(c, str) else None
            if n is None or n not in CAP_NAMES:
                errors.append(doc.error(f"{key}[{i}]", f"unknown capability {c!r}{_suggest(str(n), CAP_NAMES)}"))
            else:
                out.add(n)
        return out

    allowed = caps_list("capabilities.allowed")
    denied = caps_list("capabilities.denied")
    for c in sorted(allowed & denied):
        errors.append(doc.error("capabilities.allowed", f"{c} is both allowed and denied"))
    caps_list("mac.capabilities")
    for key in ("capabilities.privileged", "network.host_network", "network.bind_all_interfaces"):
        v = _get(data, key)
        if v is not None and v not in ("forbidden", "allowed"):
            errors.append(doc.error(key, "must be forbidden or allowed"))
    for key in ("controls.no_new_privs", "controls.read_only_root", "controls.landlock"):
        v = _get(data, key)
        if v is not None and v not in LEVELS:
            errors.append(doc.error(key, f"must be one of {', '.join(LEVELS)}"))
    sc = _get(data, "controls.seccomp")
    if sc is not None and sc not in ("any", "optional") and not SAFE_NAME.match(str(sc)):
        errors.append(doc.error("controls.seccomp", "must be any, optional, or a seccomp profile name"))
    if _get(data, "mounts.runtime_sockets") not in (None, "forbidden", "allowed"):
        errors.append(doc.error("mounts.runtime_sockets", "must be forbidden or allowed"))
    for i, r in enumerate(_get(data, "identity.allowed_uids") or []):
        try:
            lo, _ = _range(r)
            if _get(data, "identity.run_as_non_root") is True and lo == 0:
                errors.append(doc.error(f"identity.allowed_uids[{i}]", "includes uid 0 but run_as_non_root is true"))
        except (ValueError, TypeError):
            errors.append(doc.error(f"identity.allowed_uids[{i}]", f"{r!r} is not a uid range like 1000-65535"))
    pr = _get(data, "network.published_ports")
    if pr is not None:
        try:
            lo, hi = _range(pr)
            if hi > 65535:
                raise ValueError
        except (ValueError, TypeError):
            errors.append(doc.error("network.published_ports", f"{pr!r} is not a port range like 1024-65535"))
    for i, m in enumerate(_get(data, "network.allowed_modes") or []):
        if m not in NET_MODES:
            errors.append(doc.error(f"network.allowed_modes[{i}]", f"unknown mode {m!r}{_suggest(str(m), NET_MODES)}"))
    for i, n in enumerate(_get(data, "namespaces.host_shared_allowed") or []):
        if not isinstance(n, str) or namespaces.proc_name(n) is None:
            errors.append(doc.error(f"namespaces.host_shared_allowed[{i}]", f"unknown namespace {n!r}{_suggest(str(n), NS_NAMES)}"))
    for key in ("mounts.denied_host_paths", "mounts.rw_allowed_host_paths", "mac.files.read", "mac.files.write",
                "mac.files.exec"):
        for i, p in enumerate(_get(data, key) or []):
            if not isinstance(p, str) or not SAFE_PATH.match(p) or "/../" in p + "/" or "**/**" in p:
                errors.append(doc.error(f"{key}[{i}]", f"{p!r} must be an absolute path of [A-Za-z0-9._/@+*-] "
                                                       "(no quotes, spaces, newlines or '..': it is written into MAC policy text)"))
    for i, fam in enumerate(_get(data, "mac.network") or []):
        if fam not in NET_FAMILIES:
            errors.append(doc.error(f"mac.network[{i}]", f"unknown network family {fam!r}{_suggest(str(fam), NET_FAMILIES)}"))
    for i, prof in enumerate(_get(data, "controls.apparmor_profiles") or []):
        if not isinstance(prof, str) or not re.match(r"^[A-Za-z0-9_.:/-]+$", prof):
            errors.append(doc.error(f"controls.apparmor_profiles[{i}]", f"{prof!r} is not an AppArmor profile name"))
    for i, t in enumerate(_get(data, "controls.selinux_types") or []):
        if not isinstance(t, str) or not re.match(r"^[A-Za-z0-9_]+$", t):
            errors.append(doc.error(f"controls.selinux_types[{i}]", f"{t!r} is not an SELinux type"))
    _lint_resources(doc, data, errors)
    _lint_syscalls(doc, data, errors)
    from . import policy_images
    policy_images.lint(doc, data, errors)
    waivers = _lint_waivers(doc, data, errors)
    if errors:
        return None, errors
    return Policy(name=name, path=path, data=data, waivers=waivers, doc=doc), []


# Policy-only schema kinds, on top of sandbox.yamlmarks.BASE_KINDS.
KINDS: dict = {
    "strs": (lambda x: isinstance(x, list) and all(isinstance(i, str) for i in x), "a list of strings"),
    "ranges": (lambda x: isinstance(x, list) and all(isinstance(i, (str, int)) and not isinstance(i, bool)
                                                      for i in x), "a list of ranges like 1000-65535"),
}


def _kind_of(dotted: str) -> str | None:
    cur = SCHEMA
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur if isinstance(cur, str) else None


def _get(data, dotted: str):
    """The value at `dotted`, or None when missing or of the wrong type (check_schema reported that
    one with its file:line): the semantic checks below only ever see well-typed values."""
    v = get_path(data, dotted)
    kind = _kind_of(dotted)
    if v is None or kind is None:
        return v
    from sandbox.yamlmarks import BASE_KINDS
    accepts, _ = {**BASE_KINDS, **KINDS}[kind.rstrip("?")]
    return v if accepts(v) else None


def _lint_resources(doc: Doc, data: dict, errors: list[SpecError]) -> None:
    from sandbox.rlimits import NAMES
    from sandbox.values import parse_size
    mem = _get(data, "resources.memory.max")
    if mem is not None:
        try:
            if parse_size(mem) <= 0:
                raise ValueError("must be > 0")
        except ValueError as e:
            errors.append(doc.error("resources.memory.max", str(e)))
    for key in ("resources.pids.max", "resources.cpu.max"):
        v = _get(data, key)
        if v is not None and not isinstance(v, bool) and isinstance(v, (int, float)) and v <= 0:
            errors.append(doc.error(key, "must be > 0"))
    rl = _get(data, "resources.rlimits")
    if isinstance(rl, dict):
        for k, v in rl.items():
            if k not in NAMES:
                errors.append(doc.error(f"resources.rlimits.{k}", f"unknown rlimit{_suggest(str(k), NAMES)}"))
            elif isinstance(v, bool) or not isinstance(v, int) or v < 0:
                errors.append(doc.error(f"resources.rlimits.{k}", "ceiling must be a non-negative integer"))


def _syscall_names() -> set[str]:
    from sandbox import seccomp
    return set(seccomp.syscall_names())


def _lint_syscalls(doc: Doc, data: dict, errors: list[SpecError]) -> None:
    allow = _get(data, "mac.syscalls.allow") or []
    deny = _get(data, "mac.syscalls.deny") or []
    if not allow and not deny:
        return
    known = _syscall_names()
    for key, vals in (("mac.syscalls.allow", allow), ("mac.syscalls.deny", deny)):
        for i, s in enumerate(vals):
            if not isinstance(s, str) or s not in known:
                errors.append(doc.error(f"{key}[{i}]", f"unknown syscall {s!r}{_suggest(str(s), known)}"))
    for s in sorted(set(allow) & set(deny)):
        errors.append(doc.error("mac.syscalls.allow", f"syscall {s} is both allowed and denied"))
    base = _get(data, "mac.syscalls.base")
    if base is not None and base not in ("strict", "default"):
        errors.append(doc.error("mac.syscalls.base", "must be strict or default"))


def _lint_waivers(doc: Doc, data: dict, errors: list[SpecError]) -> list[Waiver]:
    out = []
    ws = _get(data, "waivers") or []
    if not isinstance(ws, list):
        return out
    for i, w in enumerate(ws):
        key = f"waivers[{i}]"
        if not isinstance(w, dict):
            errors.append(doc.error(key, "must be a mapping with check, selector, expires, reason"))
            continue
        unknown = set(w) - {"check", "selector", "expires", "reason"}
        if unknown:
            errors.append(doc.error(f"{key}.{sorted(unknown)[0]}", "unknown key (known: check, selector, expires, reason)"))
        chk = w.get("check")
        if not isinstance(chk, str) or not CHECK_ID.match(chk):
            errors.append(doc.error(f"{key}.check", f"{chk!r} is not a check ID like SBX-A001 or SBX-P001"))
        sel = w.get("selector")
        if not isinstance(sel, dict) or not sel or not set(sel) <= {"id", "name", "runtime", "pid", "image"}:
            errors.append(doc.error(f"{key}.selector", "must map some of id/name/runtime/pid/image to patterns"))
            sel = {}
        exp = w.get("expires")
        if isinstance(exp, str):
            try:
                exp = _dt.date.fromisoformat(exp)
            except ValueError:
                exp = None
        if not isinstance(exp, _dt.date):
            errors.append(doc.error(f"{key}.expires", "must be a date YYYY-MM-DD"))
            exp = _dt.date.min
        reason = w.get("reason")
        if not isinstance(reason, str) or not reason.strip():
            errors.append(doc.error(f"{key}.reason", "a waiver needs a reason"))
        out.append(Waiver(str(chk), dict(sel or {}), exp, str(reason or "")))
    return out


def load_policy(ref: str) -> Policy:
    """Load and lint; the first error is raised as one line (SpecError, exit 125)."""
    policy, errors = lint(policy_path(ref))
    if errors:
        raise errors[0]
    assert policy is not None
    return policy
