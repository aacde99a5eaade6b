"""Docker/OCI seccomp JSON -> validated rule set -> classic BPF bytes (via libseccomp).

Only the cold path of sandbox.seccomp comes here: a warm run reads the cached
BPF and never imports this module or libseccomp.

Every refusal names the file, line:column and JSON location of the offending
item (``syscalls[3].names[1]``), because firejail#2931 shows what silently
skipping an unknown name costs: a profile that looks tight and is not.
"""
from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import dataclass, field
from json.decoder import scanstring

from .errors import SpecError
from .facts import CAP_NAMES
from .values import cap_bare

MAX_ERRNO = 4095
EPERM = 1

# libseccomp action values (include/seccomp.h); SCMP_ACT_ERRNO/TRACE carry a 16-bit datum.
ACTIONS = {
    "SCMP_ACT_KILL": 0x00000000,  # kill the thread (historical name)
    "SCMP_ACT_KILL_THREAD": 0x00000000,
    "SCMP_ACT_KILL_PROCESS": 0x80000000,
    "SCMP_ACT_TRAP": 0x00030000,
    "SCMP_ACT_ERRNO": 0x00050000,
    "SCMP_ACT_TRACE": 0x7FF00000,
    "SCMP_ACT_LOG": 0x7FFC0000,
    "SCMP_ACT_ALLOW": 0x7FFF0000,
}
# A notify filter without a listener only returns ENOSYS: refuse it instead of pretending.
REFUSED_ACTIONS = {"SCMP_ACT_NOTIFY": "needs a seccomp agent (listenerPath), which sbx does not run"}

OPS = {"SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4, "SCMP_CMP_GE": 5,
       "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7}

_LE, _B64 = 0x40000000, 0x80000000
ARCHES = {  # SCMP_ARCH_* -> AUDIT_ARCH_* token libseccomp uses
    "SCMP_ARCH_X86": 3 | _LE, "SCMP_ARCH_X86_64": 62 | _B64 | _LE, "SCMP_ARCH_X32": 62 | _LE,
    "SCMP_ARCH_ARM": 40 | _LE, "SCMP_ARCH_AARCH64": 183 | _B64 | _LE,
    "SCMP_ARCH_MIPS": 8, "SCMP_ARCH_MIPS64": 8 | _B64, "SCMP_ARCH_MIPS64N32": 8 | _B64 | 0x20000000,
    "SCMP_ARCH_MIPSEL": 8 | _LE, "SCMP_ARCH_MIPSEL64": 8 | _B64 | _LE,
    "SCMP_ARCH_MIPSEL64N32": 8 | _B64 | _LE | 0x20000000,
    "SCMP_ARCH_PARISC": 15, "SCMP_ARCH_PARISC64": 15 | _B64,
    "SCMP_ARCH_PPC": 20, "SCMP_ARCH_PPC64": 21 | _B64, "SCMP_ARCH_PPC64LE": 21 | _B64 | _LE,
    "SCMP_ARCH_S390": 22, "SCMP_ARCH_S390X": 22 | _B64, "SCMP_ARCH_RISCV64": 243 | _B64 | _LE,
}
# uname -m -> (SCMP_ARCH_ name, names an includes/excludes "arches" entry may use for it).
NATIVE = {
    "x86_64": ("SCMP_ARCH_X86_64", {"amd64", "x86_64"}),
    "i686": ("SCMP_ARCH_X86", {"386", "x86", "i386", "i686"}),
    "aarch64": ("SCMP_ARCH_AARCH64", {"arm64", "aarch64"}),
    "armv7l": ("SCMP_ARCH_ARM", {"arm"}),
    "ppc64le": ("SCMP_ARCH_PPC64LE", {"ppc64le"}),
    "s390x": ("SCMP_ARCH_S390X", {"s390x"}),
    "riscv64": ("SCMP_ARCH_RISCV64", {"riscv64"}),
}
RULE_ARCHES = {"amd64", "x86_64", "386", "x86", "i386", "i686", "x32", "arm", "arm64", "aarch64", "ppc", "ppc64",
               "ppc64le", "s390", "s390x", "mips", "mipsle", "mips64", "mips64le", "mips64n32", "mips64len32",
               "riscv64", "loong64", "parisc", "parisc64"} | {a.lower() for a in ARCHES} | set(ARCHES)

TOP_KEYS = {"defaultAction", "defaultErrnoRet", "defaultErrno", "architectures", "archMap", "syscalls", "flags", "listenerPath",
            "listenerMetadata", "comment"}
RULE_KEYS = {"names", "name", "action", "errnoRet", "errno", "args", "includes", "excludes", "comment"}
ARG_KEYS = {"index", "value", "valueTwo", "op"}
FILTER_KEYS = {"caps", "arches", "minKernel"}


@dataclass(frozen=True)
class Arg:
    index: int
    op: int
    value: int
    value_two: int


@dataclass
class Rule:
    loc: str  # "syscalls[3]"
    where: str  # "file:line:col"
    names: list[tuple[str, str]]  # (syscall, location of that name)
    action: int
    args: tuple[Arg, ...] = ()
    inc_caps: tuple[str, ...] = ()
    inc_arches: tuple[str, ...] = ()
    min_kernel: tuple[int, ...] | None = None
    exc_caps: tuple[str, ...] = ()
    exc_arches: tuple[str, ...] = ()


@dataclass
class Profile:
    path: str
    default_action: int
    arches: list[str] = field(default_factory=list)  # extra SCMP_ARCH_* beyond native
    rules: list[Rule] = field(default_factory=list)


# ------------------------------------------------------------------ JSON with positions

class _Doc:
    """Parsed JSON plus where each value starts, so errors can say file:line:col."""

    def __init__(self, path: str, text: str):
        self.path = path
        self.text = text
        self.pos: dict[tuple, int] = {}

    def where(self, key: tuple) -> str:
        while key not in self.pos and key:
            key = key[:-1]
        off = self.pos.get(key, 0)
        line = self.text.count("\n", 0, off) + 1
        col = off - (self.text.rfind("\n", 0, off) + 1) + 1
        return f"{self.path}:{line}:{col}"

    def fail(self, key: tuple, msg: str) -> SpecError:
        return SpecError(f"{_loc(key)}: {msg}" if key else msg, where=self.where(key))


def _loc(key: tuple) -> str:
    out = ""
    for k in key:
        out += f"[{k}]" if isinstance(k, int) else (f".{k}" if out else k)
    return out


_WS = re.compile(r"[ \t\n\r]*")
_SCALAR = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][-+]?\d+)?|true|false|null")


def _index(doc: _Doc) -> None:
    """Record the start offset of every value. Runs only on text json.loads accepted."""
    text = doc.text

    def ws(i: int) -> int:
        return _WS.match(text, i).end()

    def value(i: int, key: tuple) -> int:
        i = ws(i)
        doc.pos[key] = i
        c = text[i]
        if c == "{":
            i = ws(i + 1)
            if text[i] == "}":
                return i + 1
            while True:
                name, i = scanstring(text, ws(i) + 1)
                i = ws(i) + 1  # ':'
                i = ws(value(i, key + (name,)))
                if text[i] == "}":
                    return i + 1
                i += 1  # ','
        if c == "[":
            i = ws(i + 1)
            if text[i] == "]":
                return i + 1
            n = 0
            while True:
                i = ws(value(i, key + (n,)))
                n += 1
                if text[i] == "]":
                    return i + 1
                i += 1
        if c == '"':
            return scanstring(text, i + 1)[1]
        return _SCALAR.match(text, i).end()

    value(0, ())


def _no_duplicates(pairs: list) -> dict:
    seen: dict = {}
    for k, v in pairs:
        if k in seen:
            raise ValueError(f"duplicate key {k!r}")
        seen[k] = v
    return seen


def load(path: str, data: bytes) -> tuple[_Doc, dict]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(f"not UTF-8 text (byte {e.start})", where=path) from None
    doc = _Doc(path, text)
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as e:
        raise SpecError(f"invalid JSON: {e.msg}", where=f"{path}:{e.lineno}:{e.colno}") from None
    except ValueError as e:  # duplicate key: locate its first occurrence after indexing below
        raise SpecError(f"invalid seccomp profile: {e}", where=path) from None
    except RecursionError:
        raise SpecError("invalid JSON: nested too deeply", where=path) from None
    _index(doc)
    if not isinstance(obj, dict):
        raise doc.fail((), "a seccomp profile must be a JSON object")
    return doc, obj


# ------------------------------------------------------------------ validation

def _type(doc: _Doc, key: tuple, v, want: type, what: str):
    ok = isinstance(v, want) and not (want is int and isinstance(v, bool))
    if not ok:
        raise doc.fail(key, f"{what} must be {_tname(want)}, not {_tname(type(v))}")
    return v


def _tname(t) -> str:
    return {dict: "an object", list: "a list", str: "a string", int: "an integer", bool: "true/false",
            float: "a number", type(None): "null"}.get(t, t.__name__)


def _keys(doc: _Doc, key: tuple, obj: dict, allowed: set[str]) -> None:
    for k in obj:
        if k not in allowed:
            hint = difflib.get_close_matches(k, sorted(allowed), n=1)
            raise doc.fail(key + (k,), f"unknown key {k!r}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))


def _action(doc: _Doc, key: tuple, name, errno_ret, errno_key: tuple, default_errno: int = EPERM) -> int:
    _type(doc, key, name, str, "action")
    if name in REFUSED_ACTIONS:
        raise doc.fail(key, f"action {name} {REFUSED_ACTIONS[name]}")
    if name not in ACTIONS:
        hint = difflib.get_close_matches(name, sorted(ACTIONS), n=1)
        raise doc.fail(key, f"unknown action {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
    base = ACTIONS[name]
    if errno_ret is not None:
        _type(doc, errno_key, errno_ret, int, errno_key[-1])
        if name not in ("SCMP_ACT_ERRNO", "SCMP_ACT_TRACE"):
            raise doc.fail(errno_key, f"{errno_key[-1]} only applies to SCMP_ACT_ERRNO or SCMP_ACT_TRACE")
        if not 0 <= errno_ret <= (MAX_ERRNO if name == "SCMP_ACT_ERRNO" else 0xFFFF):
            raise doc.fail(errno_key, f"{errno_key[-1]} {errno_ret} is out of range")
    if name in ("SCMP_ACT_ERRNO", "SCMP_ACT_TRACE"):
        return base | (default_errno if errno_ret is None else errno_ret)
    return base


def _errno_pair(doc: _Doc, obj: dict, key: tuple, num_key: str, name_key: str):
    """containers/common profiles carry the errno twice: errnoRet (number) and errno (name). Both must agree."""
    num = obj.get(num_key)
    name = obj.get(name_key)
    if name is None:
        return num
    import errno as errno_mod
    _type(doc, key + (name_key,), name, str, name_key)
    val = getattr(errno_mod, name, None) if name.isupper() and name.startswith("E") else None
    if not isinstance(val, int):
        raise doc.fail(key + (name_key,), f"unknown errno name {name!r}")
    if num is not None and num != val:
        raise doc.fail(key + (name_key,), f"{name_key} {name} ({val}) contradicts {num_key} {num}")
    return val


def _str_list(doc: _Doc, key: tuple, v, what: str) -> list[str]:
    _type(doc, key, v, list, what)
    for i, x in enumerate(v):
        _type(doc, key + (i,), x, str, f"{what} entry")
    return v


def _kernel_version(doc: _Doc, key: tuple, v) -> tuple[int, ...]:
    _type(doc, key, v, str, "minKernel")
    if not re.fullmatch(r"\d+\.\d+(\.\d+)?", v):
        raise doc.fail(key, f"minKernel {v!r} is not a version like '4.8'")
    return tuple(int(x) for x in v.split("."))


def _cap(doc: _Doc, key: tuple, name: str) -> str:
    bare = cap_bare(name)
    if bare not in CAP_NAMES:
        hint = difflib.get_close_matches(bare, CAP_NAMES, n=1)
        raise doc.fail(key, f"unknown capability {name!r}" + (f" (did you mean 'CAP_{hint[0]}'?)" if hint else ""))
    return bare


def _filter(doc: _Doc, key: tuple, v) -> tuple[tuple[str, ...], tuple[str, ...], tuple[int, ...] | None]:
    _type(doc, key, v, dict, key[-1])
    _keys(doc, key, v, FILTER_KEYS)
    caps = tuple(_cap(doc, key + ("caps", i), c) for i, c in enumerate(_str_list(doc, key + ("caps",),
                                                                                   v.get("caps", []), "caps")))
    arches = _str_list(doc, key + ("arches",), v.get("arches", []), "arches")
    for i, a in enumerate(arches):
        if a not in RULE_ARCHES:
            raise doc.fail(key + ("arches", i), f"unknown architecture {a!r}")
    mk = _kernel_version(doc, key + ("minKernel",), v["minKernel"]) if "minKernel" in v else None
    return caps, tuple(arches), mk


def parse(path: str, data: bytes, resolve) -> Profile:
    """Validate the whole profile (every rule, whatever its includes) and return it.

    resolve(name) -> int is libseccomp's name lookup (-1 when unknown).
    """
    doc, obj = load(path, data)
    _keys(doc, (), obj, TOP_KEYS)
    if "defaultAction" not in obj:
        raise doc.fail((), "missing defaultAction")
    d_errno = _errno_pair(doc, obj, (), "defaultErrnoRet", "defaultErrno")
    default = _action(doc, ("defaultAction",), obj["defaultAction"], d_errno, ("defaultErrnoRet",))
    default_errno = d_errno if d_errno is not None else EPERM
    if obj.get("flags"):
        _str_list(doc, ("flags",), obj["flags"], "flags")
        raise doc.fail(("flags",), f"filter flags {obj['flags']} are not supported by sbx; remove them")
    if obj.get("listenerPath"):
        raise doc.fail(("listenerPath",), "seccomp notify agents are not supported by sbx")
    prof = Profile(path=path, default_action=default)

    native_name, _ = native()
    if "architectures" in obj and "archMap" in obj:
        raise doc.fail(("archMap",), "use either architectures or archMap, not both")
    for i, a in enumerate(_str_list(doc, ("architectures",), obj.get("architectures", []), "architectures")):
        if a not in ARCHES:
            raise doc.fail(("architectures", i), f"unknown architecture {a!r}")
        prof.arches.append(a)
    for i, m in enumerate(_type(doc, ("archMap",), obj.get("archMap", []), list, "archMap")):
        k = ("archMap", i)
        _type(doc, k, m, dict, "archMap entry")
        _keys(doc, k, m, {"architecture", "subArchitectures"})
        a = _type(doc, k + ("architecture",), m.get("architecture"), str, "architecture")
        subs = _str_list(doc, k + ("subArchitectures",), m.get("subArchitectures", []), "subArchitectures")
        for j, x in enumerate([a] + subs):
            if x not in ARCHES:
                raise doc.fail(k + (("architecture",) if j == 0 else ("subArchitectures", j - 1)),
                               f"unknown architecture {x!r}")
        if a == native_name:
            prof.arches.extend(subs)

    rules = _type(doc, ("syscalls",), obj.get("syscalls", []), list, "syscalls")
    for i, r in enumerate(rules):
        k = ("syscalls", i)
        _type(doc, k, r, dict, "syscalls entry")
        _keys(doc, k, r, RULE_KEYS)
        if "names" in r and "name" in r:
            raise doc.fail(k + ("name",), "use either names or name, not both")
        if "names" in r:
            raw = _str_list(doc, k + ("names",), r["names"], "names")
            keyed = [(n, k + ("names", j)) for j, n in enumerate(raw)]
        elif "name" in r:
            keyed = [(_type(doc, k + ("name",), r["name"], str, "name"), k + ("name",))]
        else:
            raise doc.fail(k, "a syscalls entry needs names")
        if not keyed:
            raise doc.fail(k + ("names",), "names is empty")
        names = []
        for n, nk in keyed:
            if resolve(n) == -1:
                hint = difflib.get_close_matches(n, sorted(syscall_names()), n=1)
                raise doc.fail(nk, f"unknown syscall {n!r}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
            names.append((n, doc.where(nk)))
        if "action" not in r:
            raise doc.fail(k, "missing action")
        action = _action(doc, k + ("action",), r["action"], _errno_pair(doc, r, k, "errnoRet", "errno"),
                         k + ("errnoRet",), default_errno)
        args = []
        seen_idx: set[int] = set()
        for j, a in enumerate(_type(doc, k + ("args",), r.get("args") or [], list, "args")):
            ak = k + ("args", j)
            _type(doc, ak, a, dict, "args entry")
            _keys(doc, ak, a, ARG_KEYS)
            for req in ("index", "value", "op"):
                if req not in a:
                    raise doc.fail(ak, f"missing {req}")
            idx = _type(doc, ak + ("index",), a["index"], int, "index")
            if not 0 <= idx <= 5:
                raise doc.fail(ak + ("index",), f"index {idx} is not an argument number 0..5")
            if idx in seen_idx:
                # libseccomp refuses two tests of one argument in one rule; split it into two rules.
                raise doc.fail(ak + ("index",), f"argument {idx} is tested twice in one rule; use two rules")
            seen_idx.add(idx)
            vals = []
            for vk in ("value", "valueTwo"):
                v = _type(doc, ak + (vk,), a.get(vk, 0), int, vk)
                if not 0 <= v < 1 << 64:
                    raise doc.fail(ak + (vk,), f"{vk} {v} is not an unsigned 64-bit number")
                vals.append(v)
            op = _type(doc, ak + ("op",), a["op"], str, "op")
            if op not in OPS:
                hint = difflib.get_close_matches(op, sorted(OPS), n=1)
                raise doc.fail(ak + ("op",), f"unknown op {op!r}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
            args.append(Arg(idx, OPS[op], vals[0], vals[1]))
        rule = Rule(loc=_loc(k), where=doc.where(k), names=names, action=action, args=tuple(args))
        if "includes" in r:
            rule.inc_caps, rule.inc_arches, rule.min_kernel = _filter(doc, k + ("includes",), r["includes"])
        if "excludes" in r:
            rule.exc_caps, rule.exc_arches, mk = _filter(doc, k + ("excludes",), r["excludes"])
            if mk is not None:
                raise doc.fail(k + ("excludes", "minKernel"), "minKernel belongs in includes")
        prof.rules.append(rule)
    return prof


# ------------------------------------------------------------------ selection + compile

def native() -> tuple[str, set[str]]:
    m = os.uname().machine
    if m not in NATIVE:
        raise SpecError(f"seccomp: architecture {m!r} is not supported by sbx")
    return NATIVE[m]


def kernel_version() -> tuple[int, ...]:
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", os.uname().release)
    return tuple(int(x) for x in m.groups() if x is not None) if m else (0,)


def applies(rule: Rule, caps: frozenset[str], arch_aliases: set[str], kver: tuple[int, ...]) -> bool:
    """Docker's semantics: includes need every listed cap and one listed arch; excludes any of either."""
    if rule.inc_arches and not arch_aliases & set(rule.inc_arches):
        return False
    if rule.inc_caps and not set(rule.inc_caps) <= caps:
        return False
    if rule.min_kernel is not None and kver < rule.min_kernel:
        return False
    if rule.exc_arches and arch_aliases & set(rule.exc_arches):
        return False
    if rule.exc_caps and set(rule.exc_caps) & caps:
        return False
    return True


def rank(action: int) -> int:
    """Kernel precedence of an action: lower is stronger (KILL_PROCESS < KILL < TRAP < ERRNO < ... < ALLOW)."""
    a = action & 0xFFFF0000
    return a - (1 << 32) if a & 0x80000000 else a


def select(prof: Profile, caps: frozenset[str]) -> list[tuple[Rule, str, str]]:
    """The (rule, syscall, where) triples to compile, with disagreements settled or refused.

    libseccomp keeps the first unconditional rule for a syscall and quietly
    discards every other rule for it, whatever their actions (measured with
    2.5.4). Real profiles hit this: containers/common's seccomp.json allows
    setns in its main list and returns EPERM for it without CAP_SYS_ADMIN. We
    settle it the way the kernel settles stacked filters: the most restrictive
    action wins. A conditional rule stronger than an unconditional one cannot
    be expressed next to it, so that profile is refused, never half-applied.
    """
    _, aliases = native()
    aliases = aliases | {native()[0], native()[0].lower()}
    kver = kernel_version()
    by_name: dict[str, list[tuple[Rule, str]]] = {}
    for rule in prof.rules:
        if not applies(rule, caps, aliases, kver):
            continue
        for name, where in rule.names:
            by_name.setdefault(name, []).append((rule, where))
    out = []
    for name, hits in by_name.items():
        uncond = [h for h in hits if not h[0].args]
        if uncond:
            win = min(uncond, key=lambda h: rank(h[0].action))  # min() keeps the earliest of equals
            for other in hits:
                if other[0].args and rank(other[0].action) < rank(win[0].action):
                    raise SpecError(f"{other[0].loc}: syscall {name!r} has a conditional rule stronger than the "
                                    f"unconditional one in {win[0].loc} ({win[1]}); libseccomp cannot combine "
                                    f"them - make the other rule conditional too", where=other[1])
            hits = [win]
        for rule, where in hits:
            if rule.action != prof.default_action:  # equal to the default: changes nothing, libseccomp refuses it
                out.append((rule, name, where))
    return out


def _lib():
    try:
        import pyseccomp
    except (ImportError, RuntimeError, OSError) as e:
        raise SpecError(f"seccomp: libseccomp is not usable ({e}); apt-get install libseccomp2") from None
    return pyseccomp


def resolver():
    lib = _lib()
    return lambda name: lib.resolve_syscall(0, name)


def resolve_num_factory():
    lib = _lib()

    def by_num(arch: int, nr: int) -> str | None:
        try:
            return lib.resolve_syscall(arch, nr).decode()
        except ValueError:
            return None
    return by_num


_NAMES: set[str] | None = None


def syscall_names(by_num=None) -> set[str]:
    """Every syscall name libseccomp knows on the architectures sbx supports."""
    global _NAMES
    if _NAMES is None:
        by_num = by_num or resolve_num_factory()
        names: set[str] = set()
        ranges = {"SCMP_ARCH_X86_64": [range(0, 1024)], "SCMP_ARCH_X86": [range(0, 1024)],
                  "SCMP_ARCH_AARCH64": [range(0, 1024)], "SCMP_ARCH_ARM": [range(0, 1024), range(0xF0000, 0xF0010)],
                  "SCMP_ARCH_PPC64LE": [range(0, 1024)], "SCMP_ARCH_S390X": [range(0, 1024)],
                  "SCMP_ARCH_RISCV64": [range(0, 1024)]}
        for arch, rs in ranges.items():
            for r in rs:
                for nr in r:
                    n = by_num(ARCHES[arch], nr)
                    if n:
                        names.add(n)
        _NAMES = names
    return set(_NAMES)


def compile_bpf(prof: Profile, caps: frozenset[str]) -> bytes:
    lib = _lib()
    chosen = select(prof, caps)
    try:
        f = lib.SyscallFilter(prof.default_action)
    except OSError as e:
        raise SpecError(f"libseccomp refused defaultAction ({e.strerror})", where=prof.path) from None
    # A syscall from an ABI the filter does not list is killed, whole process, not just the thread.
    f.set_attr(lib.Attr.ACT_BADARCH, lib.KILL_PROCESS)
    try:
        f.set_attr(lib.Attr.CTL_OPTIMIZE, 2)  # binary tree: O(log n) per syscall on a 300-name allowlist
    except OSError:
        pass  # libseccomp < 2.5: linear filter, still correct
    for a in dict.fromkeys(prof.arches):
        try:
            f.add_arch(ARCHES[a])
        except OSError as e:
            if e.errno != 17:  # EEXIST: the native arch is always there
                raise SpecError(f"libseccomp cannot add architecture {a} ({e.strerror})", where=prof.path) from None
    for rule, name, where in chosen:
        args = [lib.Arg(a.index, a.op, a.value, a.value_two) for a in rule.args]
        try:
            f.add_rule(rule.action, name, *args)
        except OSError as e:
            raise SpecError(f"{rule.loc}: libseccomp refused the rule for {name!r} ({e.strerror})",
                            where=where) from None
    fd = os.memfd_create("sbx-seccomp", os.MFD_CLOEXEC)
    try:
        with open(fd, "wb", closefd=False) as fh:
            f.export_bpf(fh)
        size = os.lseek(fd, 0, os.SEEK_END)
        bpf = os.pread(fd, size, 0)
    finally:
        os.close(fd)
    if not bpf or len(bpf) % 8:
        raise SpecError("libseccomp produced no usable BPF program", where=prof.path)
    return bpf
