"""Profiles: load YAML (with `extends:`), validate, merge flags, produce the Spec.

Unknown keys are rejected and every error names file:line:column and the
field, so a typo never silently weakens a sandbox.
"""
from __future__ import annotations

import os
import re
from .paths import builtin_dir
from .records import replace

from .errors import SpecError
from .facts import CAP_NAMES
from .spec import (IF_AVAILABLE, LEVELS, NETWORK_MODES, Bind, Filesystem, Port, Resources, Rlimit,
                   Security, Spec)
from .values import MIN_MEMORY, cap_name, cpulist, parse_size
from .yamlmarks import Doc, check_schema, get_path, load

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# key -> kind. Nested dicts are sub-schemas. Kinds: str, bool, int, num, size, list, map, level, caps, rlimits.
SCHEMA: dict = {
    "name": "str", "description": "str", "extends": "str",
    "user": {"uid": "int", "gid": "int", "allow_root": "bool"},
    "hostname": "str", "cwd": "str", "env": "map", "timeout": "num",
    "filesystem": {
        "rootfs": "str?", "read_only": "bool", "tmp_size": "size", "shm_size": "size", "sys": "bool",
        "binds": "list", "binds_readonly_default": "bool", "etc": "list",
        "masked_paths": "list", "readonly_paths": "list",
    },
    "network": "str", "egress": "bool",
    "capabilities": {"keep": "caps", "allow_add": "bool"},
    "security": {
        "no_new_privs": "bool", "seccomp": "str", "allow_unconfined_seccomp": "bool", "landlock": "level",
        "apparmor": {"profile": "str?", "level": "level"},
        "selinux": {"type": "str?", "level": "str?", "mode": "level"},
    },
    "resources": {
        "memory": "size?", "memory_swap": "size?", "cpus": "num?", "cpu_period": "int", "cpu_shares": "int?",
        "cpuset_cpus": "str?", "cpuset_mems": "str?", "pids_limit": "int?",
    },
    "rlimits": "rlimits",
    "degrade": "str",
}

_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_HOSTNAME_FQDN = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                            r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
_ENVKEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_rlimit(name: str, v) -> Rlimit:
    def one(x) -> int:
        if isinstance(x, bool):
            raise ValueError("not a number")
        if isinstance(x, int):
            return x
        x = str(x).strip()
        if x in ("unlimited", "-1", "infinity"):
            return -1
        return int(x) if x.isdigit() else parse_size(x)
    if isinstance(v, int) and not isinstance(v, bool):
        return Rlimit(name, v, v)
    s = str(v)
    soft, _, hard = s.partition(":")
    try:
        return Rlimit(name, one(soft), one(hard) if hard else one(soft))
    except ValueError:
        raise ValueError(f"ulimit {name}='{v}' must be SOFT[:HARD] numbers or 'unlimited'") from None


def builtin_profiles() -> list[str]:
    d = builtin_dir("profiles")
    return sorted(f[:-5] for f in os.listdir(d) if f.endswith(".yaml"))


def builtin_or_path(ref: str, kind: str, relative_to: str | None = None) -> str:
    """A bare name ('strict') is a built-in YAML of `kind` (profiles/policies); anything with a slash
    or a .yaml suffix is a path (relative to the file that names it, for `extends:`)."""
    if "/" in ref or ref.endswith((".yaml", ".yml")):
        if relative_to and not os.path.isabs(ref):
            return os.path.join(os.path.dirname(relative_to), ref)
        return ref
    what, flag = {"profiles": ("profile", "--profile"), "policies": ("policy", "--policy")}[kind]
    if not re.match(r"^[A-Za-z0-9_.-]+$", ref):
        raise SpecError(f"bad {what} name '{ref}'", where=flag)
    d = builtin_dir(kind)
    path = os.path.join(d, ref + ".yaml")
    if not os.path.exists(path):
        have = sorted(f[:-5] for f in os.listdir(d) if f.endswith(".yaml"))
        raise SpecError(f"no built-in {what} '{ref}' (have: {', '.join(have)})", where=flag)
    return path


def profile_path(ref: str, relative_to: str | None = None) -> str:
    return builtin_or_path(ref, "profiles", relative_to)


_PROFILE_KINDS = {
    "level": (lambda x: x in LEVELS, f"one of {', '.join(LEVELS)}"),
    "caps": (lambda x: isinstance(x, list), "a list of capabilities"),
    "rlimits": (lambda x: isinstance(x, dict), "a mapping of name: SOFT[:HARD]"),
}


def _semantic(doc: Doc):
    def check(key: str, kind: str, v) -> list[SpecError]:
        from .rlimits import NAMES
        out = []
        if kind == "size":
            try:
                parse_size(v, key.rsplit(".", 1)[-1])
            except ValueError as e:
                out.append(doc.error(key, str(e)))
        elif kind == "caps":
            for i, c in enumerate(v):
                try:
                    cap_name(c)
                except ValueError as e:
                    out.append(doc.error(f"{key}[{i}]", str(e)))
        elif kind == "rlimits":
            for rk, rv in v.items():
                if rk not in NAMES:
                    out.append(doc.error(f"{key}.{rk}", f"unknown rlimit (known: {', '.join(sorted(NAMES))})"))
                    continue
                try:
                    parse_rlimit(rk, rv)
                except ValueError as e:
                    out.append(doc.error(f"{key}.{rk}", str(e)))
        elif kind == "map":
            for mk, mv in v.items():
                if not isinstance(mv, (str, int, float)) or isinstance(mv, bool):
                    out.append(doc.error(f"{key}.{mk}", "must be a string"))
        return out
    return check


def _validate(doc: Doc, data, schema: dict, prefix: str) -> None:
    errors = check_schema(doc, data, schema, prefix, kinds=_PROFILE_KINDS, semantic=_semantic(doc))
    if errors:
        raise errors[0]


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def load_profile(ref: str, _seen: tuple[str, ...] = (), _rel: str | None = None) -> tuple[dict, list[Doc]]:
    """Load a profile and everything it extends; returns merged data and the docs (for error locations)."""
    path = profile_path(ref, _rel)
    real = os.path.realpath(path)
    if real in _seen:
        raise SpecError(f"extends cycle: {' -> '.join(_seen + (real,))}", where=path)
    doc = load(path)
    if not isinstance(doc.data, dict):
        raise doc.error("", "a profile must be a mapping")
    _validate(doc, doc.data, SCHEMA, "")
    data = doc.data
    docs = [doc]
    if "extends" in data:
        base, bdocs = load_profile(data["extends"], _seen + (real,), path)
        docs = bdocs + docs
        data = _merge(base, {k: v for k, v in data.items() if k != "extends"})
    return data, docs


def profile_chain(ref: str) -> list[str]:
    """Every file a profile reads through `extends:` (for cache validation)."""
    _, docs = load_profile(ref)
    return [d.path for d in docs]


BIND_OPTIONS = ("ro", "rw", "idmap", "noidmap", "U", "z", "Z")
MOUNT_KEYS = ("type", "source", "src", "target", "destination", "dst", "readonly", "ro", "idmap", "U", "chown",
              "relabel")
_VOLUME_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def _nearest(word: str, choices) -> str:
    import difflib
    near = difflib.get_close_matches(word, list(choices), 1)
    return f" (did you mean '{near[0]}'?)" if near else ""


def _bind(text: str, src: str, dst: str, readonly: bool, *, idmap: bool | None = None, chown: bool = False,
          relabel: str | None = None) -> Bind:
    """The checks -v and --mount share: what the source names, where the target may be."""
    if not src:
        raise ValueError(f"'{text}': no source (anonymous volumes are not supported: name one, NAME:{dst or '/path'})")
    if src.startswith("/"):
        kind, source = "bind", os.path.abspath(src)
    elif _VOLUME_NAME.match(src):
        kind, source = "volume", src
    else:
        raise ValueError(f"'{text}': source '{src}' is neither an absolute path nor a volume name "
                         "([A-Za-z0-9][A-Za-z0-9_.-]*)")
    if kind == "volume" and idmap is False:
        raise ValueError(f"'{text}': a volume is always idmapped (its files belong to sbx's volume owner); "
                         "noidmap is for host paths")
    if not dst.startswith("/") or ".." in dst.split("/"):
        raise ValueError(f"'{text}': destination must be an absolute path without '..'")
    if os.path.normpath(dst) in ("/", "/proc", "/dev", "/sys") or dst.startswith(("/proc/", "/dev/", "/sys/")):
        raise ValueError(f"'{text}': cannot bind over {dst}")
    return Bind(source, os.path.normpath(dst), readonly, kind=kind, idmap=idmap, chown=chown, relabel=relabel)


def parse_bind(text: str, default_ro: bool) -> Bind:
    """-v SRC:DST[:OPT,...]: SRC an absolute host path or a volume name; OPT ro, rw, idmap, noidmap, U, z, Z."""
    parts = text.split(":")
    if len(parts) == 2:
        src, dst, opts = parts[0], parts[1], []
    elif len(parts) == 3:
        src, dst = parts[0], parts[1]
        opts = parts[2].split(",")
    else:
        raise ValueError(f"bind '{text}' must be SRC:DST[:OPTIONS] (options: {', '.join(BIND_OPTIONS)})")
    seen: set[str] = set()
    for o in opts:
        if o not in BIND_OPTIONS:
            raise ValueError(f"bind '{text}': unknown option '{o}'{_nearest(o, BIND_OPTIONS)} "
                             f"(options: {', '.join(BIND_OPTIONS)})")
        if o in seen:
            raise ValueError(f"bind '{text}': option '{o}' given twice")
        seen.add(o)
    for a, b in (("ro", "rw"), ("idmap", "noidmap"), ("z", "Z")):
        if a in seen and b in seen:
            raise ValueError(f"bind '{text}': '{a}' and '{b}' contradict each other")
    readonly = default_ro if not seen & {"ro", "rw"} else "ro" in seen
    idmap = True if "idmap" in seen else (False if "noidmap" in seen else None)
    relabel = "z" if "z" in seen else ("Z" if "Z" in seen else None)
    return _bind(f"bind {text}", src, dst, readonly, idmap=idmap, chown="U" in seen, relabel=relabel)


def _truth(text: str, key: str, v: str | None) -> bool:
    if v is None or v.lower() in ("true", "1", "yes"):
        return True
    if v.lower() in ("false", "0", "no"):
        return False
    raise ValueError(f"mount '{text}': {key}={v} must be true or false")


def parse_mount(text: str, default_ro: bool) -> Bind:
    """--mount type=bind|volume,source=S,target=T[,readonly][,idmap][,U=true][,relabel=shared|private]."""
    kv: dict[str, str | None] = {}
    for item in text.split(","):
        if not item:
            continue
        k, eq, v = item.partition("=")
        k = k.strip()
        if k not in MOUNT_KEYS:
            raise ValueError(f"mount '{text}': unknown key '{k}'{_nearest(k, MOUNT_KEYS)} "
                             f"(keys: type, source, target, readonly, idmap, U, relabel)")
        canon = {"src": "source", "destination": "target", "dst": "target", "ro": "readonly", "chown": "U"}.get(k, k)
        if canon in kv:
            raise ValueError(f"mount '{text}': '{canon}' given twice")
        kv[canon] = v if eq else None
    typ = kv.get("type") or "volume"  # docker's default
    if typ not in ("bind", "volume"):
        raise ValueError(f"mount '{text}': type={typ} is not supported (bind or volume)")
    src, dst = kv.get("source") or "", kv.get("target") or ""
    if not dst:
        raise ValueError(f"mount '{text}': target= is required")
    if typ == "bind" and not src.startswith("/"):
        raise ValueError(f"mount '{text}': type=bind needs an absolute source path")
    if typ == "volume" and src.startswith("/"):
        raise ValueError(f"mount '{text}': type=volume needs a volume name, not a path (use type=bind)")
    readonly = _truth(text, "readonly", kv["readonly"]) if "readonly" in kv else default_ro
    idmap = _truth(text, "idmap", kv["idmap"]) if "idmap" in kv else None
    relabel = None
    if "relabel" in kv:
        relabel = {"shared": "z", "private": "Z"}.get(kv["relabel"] or "")
        if relabel is None:
            raise ValueError(f"mount '{text}': relabel must be shared or private")
    return _bind(f"mount {text}", src, dst, readonly, idmap=idmap,
                 chown=_truth(text, "U", kv["U"]) if "U" in kv else False, relabel=relabel)


def parse_add_host(text: str) -> tuple[str, str]:
    """--add-host NAME:IP (docker's spelling; NAME=IP too). The IP may be IPv6."""
    import ipaddress
    sep = "=" if "=" in text else ":"
    name, _, ip = text.partition(sep)
    if not _HOSTNAME_FQDN.match(name):
        raise ValueError(f"add-host '{text}': '{name}' is not a host name")
    try:
        return name, str(ipaddress.ip_address(ip.strip("[]")))
    except ValueError:
        raise ValueError(f"add-host '{text}' must be NAME:IP ('{ip}' is not an IP address)") from None


def parse_dns(text: str) -> str:
    import ipaddress
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ValueError(f"dns '{text}' is not an IP address") from None


def parse_port(text: str) -> Port:
    proto = "tcp"
    body = text
    if "/" in text:
        body, proto = text.rsplit("/", 1)
    if proto not in ("tcp", "udp"):
        raise ValueError(f"port '{text}': protocol must be tcp or udp")
    if body.startswith("["):  # [IPv6]:HOSTPORT:CTRPORT
        ip6, sep, rest = body[1:].partition("]:")
        parts = [ip6] + rest.split(":") if sep else ["", "x"]
    else:
        parts = body.split(":")
    try:
        if len(parts) == 2:
            ip, hp, cp = "0.0.0.0", int(parts[0]), int(parts[1])
        elif len(parts) == 3:
            ip, hp, cp = parts[0] or "0.0.0.0", int(parts[1]), int(parts[2])
        else:
            raise ValueError
    except ValueError:
        raise ValueError(f"port '{text}' must be [HOSTIP:]HOSTPORT:CTRPORT[/tcp|udp]") from None
    for p in (hp, cp):
        if not 1 <= p <= 65535:
            raise ValueError(f"port '{text}': {p} is out of range")
    import ipaddress
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        raise ValueError(f"port '{text}': '{ip}' is not an IP address") from None
    return Port(ip, hp, cp, proto)


def parse_env_file(path: str) -> list[tuple[str, str]]:
    out = []
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                line = line.rstrip("\n")
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                k, sep, v = line.partition("=")
                if not _ENVKEY.match(k.strip()):
                    raise SpecError(f"bad variable name '{k.strip()}'", where=f"{path}:{n}")
                if not sep:
                    if k.strip() in os.environ:  # docker: a bare NAME takes the caller's value
                        out.append((k.strip(), os.environ[k.strip()]))
                    continue
                out.append((k.strip(), v))
    except OSError as e:
        raise SpecError(f"cannot read env file: {e.strerror}", where=path) from None
    except UnicodeDecodeError:
        raise SpecError("env file is not UTF-8", where=path) from None
    return out


def _flag_error(flag: str, msg: str) -> SpecError:
    return SpecError(msg, where=flag)


# Every flag resolve() reads, by the CLI's dest names (sandbox.cmd_run.OPTIONS, less the run options of
# spec.RUN_OPTION_FLAGS, which cmd_run takes out first): anything else is a typo, and a silently dropped
# `memroy=` would be a sandbox without its memory cap.
FLAGS = frozenset({
    "user", "cap_add", "cap_drop", "security_opt", "memory", "memory_swap", "cpus", "cpu_shares", "cpuset_cpus",
    "cpuset_mems", "pids_limit", "ulimit", "network", "publish", "add_host", "dns", "env", "env_file", "volume",
    "mount", "workdir", "hostname", "read_only", "rootfs", "timeout", "entrypoint", "image",
    "hostname_default",  # the CLI's --name, the hostname when none is given (the name itself is a run option)
})


def check_flags(func: str, flags, known=FLAGS, also=()) -> None:
    """TypeError for the first keyword `func` does not know, naming the nearest valid one
    (among `known` and `also`, the function's own keyword parameters)."""
    for k in flags:
        if k not in known:
            raise TypeError(f"{func}() got an unexpected keyword argument {k!r}{_nearest(k, set(known) | set(also))}")


def check_argv(func: str, argv) -> tuple[str, ...]:
    """A command is a list of arguments: a string would be split into characters (or need a shell)."""
    if isinstance(argv, (str, bytes)):
        raise TypeError(f"{func}(): the command must be a list of arguments, not a string ({str(argv)[:40]!r}); "
                        "split it yourself, or pass shlex=True to split it like a POSIX shell would")
    try:
        out = tuple(argv)
    except TypeError:
        raise TypeError(f"{func}(): the command must be a list of strings, not {type(argv).__name__}") from None
    for a in out:
        if not isinstance(a, str):
            raise TypeError(f"{func}(): every argument must be a str, got {type(a).__name__} {a!r}")
    return out


def resolve(argv, profile: str = "strict", **flags) -> Spec:
    """Profile YAML (+extends) + flags -> Spec. Flags use the CLI's names (memory='512m', cap_add=[...], ...)."""
    check_flags("resolve", flags)
    argv = check_argv("resolve", argv)
    data, docs = load_profile(profile)
    doc = docs[-1]

    def where(key: str) -> Doc:
        for d in reversed(docs):
            if d.where(key) != d.path or key in d.marks:
                return d
        return doc

    def g(path: str, default=None):
        return get_path(data, path, default)

    user = g("user", {}) or {}
    uid = user.get("uid", 65534)
    gid = user.get("gid", uid)
    allow_root = bool(user.get("allow_root", False))
    image_ref = flags.get("image")
    if flags.get("user") and not image_ref:  # an image's -u may be a name: resolved in its own passwd
        u = str(flags["user"])
        a, _, b = u.partition(":")
        try:
            uid = int(a)
            gid = int(b) if b else uid
        except ValueError:
            raise _flag_error("-u", f"'{u}' must be UID[:GID] numbers") from None
    for what, v in (("uid", uid), ("gid", gid)):
        if not isinstance(v, int) or not 0 <= v < 65536:
            raise _flag_error("-u", f"{what} {v} must be between 0 and 65535")
    if (uid == 0 or gid == 0) and not allow_root:
        raise _flag_error("-u", f"profile '{g('name', profile)}' does not allow uid/gid 0 in the sandbox "
                                "(set user.allow_root: true in a profile that extends it)")

    # Environment: clean, never the host's. The profile's, then what the run sets (kept apart for images).
    env: dict[str, str] = {"PATH": DEFAULT_PATH, "HOME": "/tmp"}
    env.update({k: str(v) for k, v in (g("env", {}) or {}).items()})
    run_env: dict[str, str] = {}
    if flags.get("env_file"):
        for f in flags["env_file"]:
            run_env.update(parse_env_file(f))
    for e in flags.get("env") or ():
        k, sep, v = e.partition("=")
        if not _ENVKEY.match(k):
            raise _flag_error("-e", f"bad variable name '{k}'")
        if not sep:
            if k in os.environ:
                run_env[k] = os.environ[k]
            continue
        run_env[k] = v
    profile_env = dict(env)
    env.update(run_env)

    fsd = g("filesystem", {}) or {}
    default_ro = bool(fsd.get("binds_readonly_default", True))
    binds = []
    for i, b in enumerate(fsd.get("binds", []) or []):
        try:
            binds.append(parse_bind(str(b), default_ro))
        except ValueError as e:
            raise where("filesystem.binds").error(f"filesystem.binds[{i}]", str(e)) from None
    for b in flags.get("volume") or ():
        try:
            binds.append(parse_bind(b, default_ro))
        except ValueError as e:
            raise _flag_error("-v", str(e)) from None
    for b in flags.get("mount") or ():
        try:
            binds.append(parse_mount(b, default_ro))
        except ValueError as e:
            raise _flag_error("--mount", str(e)) from None
    targets = [b.target for b in binds]
    for t in targets:
        if targets.count(t) > 1:
            raise _flag_error("-v", f"two binds target {t}")
    read_only = bool(fsd.get("read_only", True)) or bool(flags.get("read_only"))
    rootfs = flags.get("rootfs") or fsd.get("rootfs")
    try:
        filesystem = Filesystem(
            rootfs=os.path.abspath(rootfs) if rootfs else None,
            read_only=read_only,
            tmp_size=parse_size(fsd.get("tmp_size", "64m")),
            shm_size=parse_size(fsd.get("shm_size", "64m")),
            sys=bool(fsd.get("sys", False)),
            binds=tuple(binds),
            etc_files=tuple(str(x) for x in fsd.get("etc", []) or []),
            masked_paths=tuple(str(x) for x in fsd.get("masked_paths", []) or []),
            readonly_paths=tuple(str(x) for x in fsd.get("readonly_paths", []) or []),
        )
    except ValueError as e:
        raise doc.error("filesystem", str(e)) from None

    network = flags.get("network") or g("network", "loopback")
    if network not in NETWORK_MODES:
        src = "--network" if flags.get("network") else where("network").where("network")
        raise SpecError(f"network '{network}' must be one of {', '.join(NETWORK_MODES)}", where=src)
    ports = []
    for p in flags.get("publish") or ():
        try:
            ports.append(parse_port(p))
        except ValueError as e:
            raise _flag_error("-p", str(e)) from None
    if ports and network != "bridge":
        raise _flag_error("-p", f"publishing ports needs --network bridge (this sandbox's network is '{network}')")
    add_hosts = []
    for h in flags.get("add_host") or ():
        try:
            add_hosts.append(parse_add_host(h))
        except ValueError as e:
            raise _flag_error("--add-host", str(e)) from None
    dns = []
    for d in flags.get("dns") or ():
        try:
            dns.append(parse_dns(d))
        except ValueError as e:
            raise _flag_error("--dns", str(e)) from None
    if dns and network != "bridge":
        raise _flag_error("--dns", f"a DNS server is reachable only with --network bridge (this sandbox's network "
                                   f"is '{network}')")

    capd = g("capabilities", {}) or {}
    keep = {cap_name(c) for c in capd.get("keep", []) or []}
    if "ALL" in keep:
        keep = set(CAP_NAMES)
    adds = []
    for c in flags.get("cap_add") or ():
        try:
            adds.append(cap_name(c))
        except ValueError as e:
            raise _flag_error("--cap-add", str(e)) from None
    if adds and not capd.get("allow_add", False):
        raise _flag_error("--cap-add", f"profile '{g('name', profile)}' does not allow adding capabilities")
    keep |= set(CAP_NAMES) if "ALL" in adds else set(adds)
    for c in flags.get("cap_drop") or ():
        try:
            n = cap_name(c)
        except ValueError as e:
            raise _flag_error("--cap-drop", str(e)) from None
        keep = set() if n == "ALL" else keep - {n}

    secd = g("security", {}) or {}
    aad = secd.get("apparmor", {}) or {}
    sed = secd.get("selinux", {}) or {}
    sec = Security(
        capabilities=tuple(sorted(keep, key=CAP_NAMES.index)),
        no_new_privs=bool(secd.get("no_new_privs", True)),
        seccomp=str(secd.get("seccomp", "strict")),
        seccomp_allow_unconfined=bool(secd.get("allow_unconfined_seccomp", False)),
        landlock=secd.get("landlock", IF_AVAILABLE),
        apparmor_profile=aad.get("profile", "sbx-default"),
        apparmor=aad.get("level", IF_AVAILABLE),
        selinux_type=sed.get("type", "sbx_t"),
        selinux_level=sed.get("level"),
        selinux=sed.get("mode", IF_AVAILABLE),
    )
    sec = _security_opts(sec, flags.get("security_opt") or (), g("name", profile))
    try:
        sec = replace(sec, seccomp=_seccomp_ref(sec.seccomp))
    except SpecError as e:
        if e.where != "seccomp":
            raise  # located in the seccomp file itself
        if any(str(o).startswith("seccomp=") for o in flags.get("security_opt") or ()):
            raise _flag_error("--security-opt", e.message) from None
        raise where("security.seccomp").error("security.seccomp", e.message) from None

    resd = dict(g("resources", {}) or {})

    def pick(flag: str, opt: str, key: str, conv):
        """A flag's value (a bad one blamed on the flag), else the profile's (blamed on its file:line)."""
        v = flags.get(flag)
        if v is not None and v != "":
            try:
                return conv(v, opt)
            except ValueError as e:
                raise _flag_error(opt, str(e).replace(f"{opt} ", "", 1)) from None
        v = resd.get(key)
        try:
            return conv(v, key) if v is not None else None
        except ValueError as e:
            raise where(f"resources.{key}").error(f"resources.{key}", str(e)) from None

    def cpuset(v, what):
        return _cpuset(v, what)

    res = Resources(
        memory=pick("memory", "--memory", "memory", _size_or_none),
        memory_swap=pick("memory_swap", "--memory-swap", "memory_swap", _size_or_none),
        cpus=pick("cpus", "--cpus", "cpus", _float_or_none),
        cpu_period=int(resd.get("cpu_period", 100_000)),
        cpu_shares=pick("cpu_shares", "--cpu-shares", "cpu_shares", _int_or_none),
        cpuset_cpus=pick("cpuset_cpus", "--cpuset-cpus", "cpuset_cpus", cpuset),
        cpuset_mems=pick("cpuset_mems", "--cpuset-mems", "cpuset_mems", cpuset),
        pids_limit=pick("pids_limit", "--pids-limit", "pids_limit", _int_or_none),
    )
    def blame(flag: str, opt: str, key: str, msg: str) -> SpecError:
        if flags.get(flag) not in (None, ""):
            return _flag_error(opt, msg)
        return where(f"resources.{key}").error(f"resources.{key}", msg)

    if res.memory is not None and res.memory != -1 and res.memory < MIN_MEMORY:
        raise blame("memory", "--memory", "memory",
                    f"memory limit below {MIN_MEMORY >> 20} MiB cannot start a process (docker's minimum too)")
    if res.memory_swap not in (None, -1) and res.memory not in (None, -1) and res.memory_swap < res.memory:
        raise blame("memory_swap", "--memory-swap", "memory_swap",
                    "memory-swap is the total of memory and swap: it must be >= --memory")
    if res.cpus is not None and res.cpus <= 0:
        raise blame("cpus", "--cpus", "cpus", "must be > 0")
    if res.pids_limit is not None and res.pids_limit == 0:
        raise blame("pids_limit", "--pids-limit", "pids_limit", "must be > 0 (or -1 for unlimited)")

    rl = {k: parse_rlimit(k, v) for k, v in (g("rlimits", {}) or {}).items()}
    for u in flags.get("ulimit") or ():
        name, sep, val = u.partition("=")
        if not sep:
            raise _flag_error("--ulimit", f"'{u}' must be NAME=SOFT[:HARD]")
        from .rlimits import NAMES
        if name not in NAMES:
            raise _flag_error("--ulimit", f"unknown ulimit '{name}' (known: {', '.join(sorted(NAMES))})")
        try:
            rl[name] = parse_rlimit(name, val)
        except ValueError as e:
            raise _flag_error("--ulimit", str(e)) from None

    degrade = g("degrade", "deny")
    if degrade not in ("allow", "deny"):
        raise where("degrade").error("degrade", "must be allow or deny")

    hostname = flags.get("hostname") or g("hostname")
    if hostname is not None and not _HOSTNAME.match(str(hostname)):
        raise _flag_error("--hostname", f"'{hostname}' is not a valid hostname")
    name = flags.get("hostname_default")  # the run's --name, as docker users expect it for the hostname
    timeout = flags.get("timeout") if flags.get("timeout") is not None else g("timeout")
    if timeout is not None and timeout <= 0:
        raise _flag_error("--timeout", "must be > 0 seconds")

    image = None
    groups: tuple[int, ...] = ()
    cwd = flags.get("workdir") or g("cwd", "/")
    if image_ref:
        if filesystem.rootfs:
            raise _flag_error("--rootfs", "an image sandbox has the image as its root: --rootfs cannot be combined")
        from .image import runspec
        r = runspec.resolve(image_ref, args=list(argv), entrypoint=flags.get("entrypoint"), user=flags.get("user"),
                            workdir=flags.get("workdir"), profile_env=profile_env, run_env=run_env,
                            allow_root=allow_root, profile_uid=uid, profile_gid=gid,
                            profile_name=str(g("name", profile)))
        image, argv, env, uid, gid, groups, cwd = (r["image"], r["argv"], r["env"], r["uid"], r["gid"], r["groups"],
                                                    r["cwd"])
    elif flags.get("entrypoint") is not None:
        raise _flag_error("--entrypoint", "--entrypoint is for images (sbx run [OPTIONS] IMAGE [ARG...])")
    argv = tuple(argv)
    if not argv:
        raise _flag_error("CMD", "no command given (usage: sbx run [OPTIONS] -- CMD [ARG...])")
    spec = Spec(
        argv=argv,
        profile=str(g("name", profile)),
        uid=uid, gid=gid, groups=groups, allow_root=allow_root,
        env=tuple(sorted(env.items())),
        cwd=cwd,
        image=image,
        hostname=hostname or (name or "sbx"),
        filesystem=filesystem,
        network=network,
        ports=tuple(ports),
        egress=bool(g("egress", False)),
        add_hosts=tuple(add_hosts),
        dns=tuple(dns),
        security=sec,
        resources=res,
        rlimits=tuple(rl[k] for k in sorted(rl)),
        timeout=timeout,
        degrade=degrade == "allow",
    )
    return replace(spec, profile_digest=_profile_digest(docs))


def _profile_digest(docs: list[Doc]) -> str:
    """Digest of the profile chain's content (not just its paths), for the run record."""
    import json
    from .digest import sha256
    h = sha256()
    for d in docs:
        h.update(d.path.encode() + b"\0" + json.dumps(d.data, sort_keys=True, default=str).encode() + b"\0")
    return h.hexdigest()[:16]


def _size_or_none(v, what: str):
    if v is None:
        return None
    return parse_size(v, what)


def _int_or_none(v, what: str):
    if v is None:
        return None
    try:
        return int(v)
    except (TypeError, ValueError):
        raise ValueError(f"{what} '{v}' must be an integer") from None


def _float_or_none(v, what: str):
    if v is None:
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{what} '{v}' must be a number") from None


def _cpuset(v, what: str):
    if v is None:
        return None
    v = str(v).replace(" ", "")
    try:
        if not cpulist(v):
            raise ValueError
    except ValueError:
        raise ValueError(f"'{v}' must be a list like 0-2,4") from None
    return v


def _security_opts(sec: Security, opts, profile_name: str) -> Security:
    for opt in opts:
        key, sep, val = opt.partition("=")
        if key == "no-new-privileges":
            if sep and val not in ("true", "1"):
                if val in ("false", "0"):
                    raise _flag_error("--security-opt", "no-new-privileges cannot be turned off in sbx")
                raise _flag_error("--security-opt", f"no-new-privileges takes true/false, not '{val}'")
            sec = replace(sec, no_new_privs=True)
        elif key == "seccomp" and sep:
            if val == "unconfined" and not sec.seccomp_allow_unconfined:
                raise _flag_error("--security-opt", f"profile '{profile_name}' refuses seccomp=unconfined")
            sec = replace(sec, seccomp=val)
        elif key == "apparmor" and sep:
            if val == "unconfined":
                sec = replace(sec, apparmor="off", apparmor_profile=None)
            else:
                if not re.match(r"^[A-Za-z0-9_.:/-]+$", val):
                    raise _flag_error("--security-opt", f"bad AppArmor profile name '{val}'")
                sec = replace(sec, apparmor_profile=val, apparmor="required")
        elif key == "label" and sep:
            if val == "disable":
                sec = replace(sec, selinux="off")
                continue
            # A level holds commas itself (s0:c1,c2): split only before the next "key:".
            for part in re.split(r",(?=(?:type|level|user|role):)", val):
                lk, _, lv = part.partition(":")
                if not re.match(r"^[A-Za-z0-9_.:,-]+$", lv or "-"):
                    raise _flag_error("--security-opt", f"bad SELinux label part '{part}'")
                if lk == "type":
                    sec = replace(sec, selinux_type=lv, selinux="required")
                elif lk == "level":
                    sec = replace(sec, selinux_level=lv, selinux="required")
                else:
                    raise _flag_error("--security-opt", f"label option '{lk}' must be type or level")
        elif key == "landlock" and sep and val in ("required", "if-available", "off"):
            sec = replace(sec, landlock=val)
        else:
            raise _flag_error("--security-opt", f"unknown option '{opt}' (apparmor=P, label=type:T,level:L, "
                                                "seccomp=FILE|unconfined, no-new-privileges, landlock=LEVEL)")
    return sec


def new_id() -> str:
    return os.urandom(32).hex()


def _seccomp_ref(ref: str) -> str:
    """A seccomp reference is checked now, so --explain never shows a Spec launch would refuse:
    a built-in name, unconfined, or a file that parses and compiles (its path made absolute)."""
    from . import seccomp
    if ref == "unconfined" or ref in seccomp.BUILTINS:
        return ref
    path = os.path.abspath(seccomp.resolve_ref(ref))
    seccomp.validate(path)
    return path
