"""The resolved Spec: the single truth every launch stage, verify and admission read.

Frozen records (sandbox.records), built only by sandbox.profiles from profile YAML + flags.
Nothing downstream re-reads a profile or a flag.
"""
from __future__ import annotations

from .digest import sha256
from .records import asdict, field, record

# Requirement levels for controls that depend on the host (LSMs, Landlock).
REQUIRED = "required"
IF_AVAILABLE = "if-available"
OFF = "off"
LEVELS = (REQUIRED, IF_AVAILABLE, OFF)

NETWORK_MODES = ("none", "loopback", "bridge")


BIND_KINDS = ("bind", "volume")
RELABELS = ("z", "Z")  # SELinux: shared (s0) or private (this sandbox's categories), as podman's :z / :Z


@record(frozen=True)
class Bind:
    """A -v/--mount entry. kind "bind": source is an absolute host path; "volume": a volume name
    (sandbox.volumes keeps the data; resolved to its directory at launch, created if missing).

    idmap None lets sbx decide (writable binds of a non-root owner and volumes are idmapped:
    files the workload writes belong on the host to that owner); True is `:idmap`, False `:noidmap`.
    chown is `:U` (the source's files are given to the owner the sandbox writes as).
    """

    source: str
    target: str
    readonly: bool = True
    kind: str = "bind"
    idmap: bool | None = None
    chown: bool = False
    relabel: str | None = None


@record(frozen=True)
class Port:
    host_ip: str
    host_port: int
    container_port: int
    proto: str = "tcp"


@record(frozen=True)
class Rlimit:
    name: str  # lower-case, without RLIMIT_ (nofile, nproc, core, fsize, ...)
    soft: int  # -1 means unlimited
    hard: int


@record(frozen=True)
class Resources:
    """cgroup caps. None means "not requested"; -1 means explicitly unlimited."""

    memory: int | None = None  # bytes
    memory_swap: int | None = None  # bytes, docker semantics: memory+swap total, -1 unlimited
    cpus: float | None = None  # quota/period
    cpu_period: int = 100_000  # microseconds
    cpu_shares: int | None = None  # v1 shares; v2 weight converted like runc
    cpuset_cpus: str | None = None
    cpuset_mems: str | None = None
    pids_limit: int | None = None

    def requested(self) -> bool:
        return any(
            v is not None
            for v in (self.memory, self.memory_swap, self.cpus, self.cpu_shares,
                      self.cpuset_cpus, self.cpuset_mems, self.pids_limit)
        )


@record(frozen=True)
class Security:
    capabilities: tuple[str, ...] = ()  # kept caps, upper-case without CAP_ ("NET_BIND_SERVICE")
    no_new_privs: bool = True
    seccomp: str = "strict"  # built-in name, a file path, or "unconfined"
    seccomp_allow_unconfined: bool = False
    landlock: str = IF_AVAILABLE  # required | if-available | off
    apparmor_profile: str | None = None
    apparmor: str = IF_AVAILABLE
    selinux_type: str | None = None
    selinux_level: str | None = None  # None: per-sandbox MCS categories
    selinux: str = IF_AVAILABLE


@record(frozen=True)
class Filesystem:
    rootfs: str | None = None  # None: host-view root built from the host's /usr, /bin, /lib*, safe /etc
    read_only: bool = True
    tmp_size: int = 64 * 1024 * 1024
    shm_size: int = 64 * 1024 * 1024
    sys: bool = False  # mount a read-only sysfs
    binds: tuple[Bind, ...] = ()
    etc_files: tuple[str, ...] = ()  # host /etc entries visible in host-view mode
    masked_paths: tuple[str, ...] = ()
    readonly_paths: tuple[str, ...] = ()


@record(frozen=True)
class Image:
    """The image an image sandbox runs (`sbx run IMAGE`): what sbx pulled, verified and resolved.

    layers are the unpacked layer roots in the store, bottom first; env is the image's own Env
    (metadata: the Spec's env is the merged result, run_env what the run itself set).
    """

    ref: str  # as the user named it
    id: str  # config digest hex
    digest: str = ""  # manifest digest
    names: tuple[str, ...] = ()
    pinned: bool = False  # named by digest or full id
    layers: tuple[str, ...] = ()
    diff_ids: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    run_env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    user: str = ""  # config.User
    workdir: str = "/"
    labels: tuple[tuple[str, str], ...] = ()
    stop_signal: str | None = None
    exposed_ports: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()  # e.g. "runs as 65534: the profile does not allow the image's root user"


@record(frozen=True)
class Spec:
    argv: tuple[str, ...]
    profile: str = "strict"
    profile_digest: str = ""
    uid: int = 65534
    gid: int = 65534
    groups: tuple[int, ...] = ()  # supplementary groups (an image user's, from the image's /etc/group)
    allow_root: bool = False  # may -u choose uid 0 inside the namespace?
    env: tuple[tuple[str, str], ...] = ()
    cwd: str = "/"
    hostname: str = "sbx"
    filesystem: Filesystem = field(default_factory=Filesystem)
    network: str = "loopback"
    ports: tuple[Port, ...] = ()
    egress: bool = False
    add_hosts: tuple[tuple[str, str], ...] = ()  # --add-host NAME:IP, in the sandbox's /etc/hosts
    dns: tuple[str, ...] = ()  # --dns IP: resolv.conf nameservers (bridge only)
    security: Security = field(default_factory=Security)
    resources: Resources = field(default_factory=Resources)
    rlimits: tuple[Rlimit, ...] = ()
    timeout: float | None = None
    degrade: bool = False  # profile says `degrade: allow`: unenforceable caps are recorded, not refused
    image: Image | None = None  # None: host view or --rootfs

    def to_dict(self) -> dict:
        return asdict(self)

    def __repr__(self) -> str:
        """The few fields that tell sandboxes apart; to_dict() (or `sbx run --explain`) has them all."""
        r = self.resources
        parts = [f"argv={list(self.argv)!r}", f"profile={self.profile!r}", f"uid={self.uid}",
                 f"network={self.network!r}"]
        for name, v in (("memory", r.memory), ("cpus", r.cpus), ("pids_limit", r.pids_limit),
                        ("timeout", self.timeout)):
            if v is not None:
                parts.append(f"{name}={v!r}")
        if self.filesystem.binds:
            parts.append(f"binds={len(self.filesystem.binds)}")
        return "Spec(" + ", ".join(parts) + ")"

    def digest(self) -> str:
        return sha256(canonical(self.to_dict())).hexdigest()

    def env_dict(self) -> dict[str, str]:
        return dict(self.env)


@record(frozen=True)
class RunOptions:
    """How one run of a sandbox is handled, beside the Spec (which describes the sandbox only):
    so the Spec's digest is the same for `--record a.json` and `--record b.json`."""

    name: str | None = None
    policy: str | None = None  # admission policy (built-in name or absolute path), checked inside launch
    detach: bool = False
    remove: bool = False  # --rm
    record: str | None = None  # --record FILE (written by the CLI)

    def to_dict(self) -> dict:
        return asdict(self)


RUN_OPTION_FLAGS = {"name": "name", "policy": "policy", "detach": "detach", "rm": "remove", "record": "record"}
LEGACY_SPEC_KEYS = ("name", "policy", "detach", "remove", "record")  # in specs saved before RunOptions


_NAME_FIRST = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_NAME_CHARS = _NAME_FIRST | frozenset("_.-")


def run_options(flags: dict) -> RunOptions:
    """Take the run options (--name, --policy, -d, --rm, --record; the CLI's names) out of `flags`."""
    from .errors import SpecError
    got = {RUN_OPTION_FLAGS[k]: flags.pop(k) for k in list(flags) if k in RUN_OPTION_FLAGS}
    name = got.get("name")
    # [A-Za-z0-9][A-Za-z0-9_.-]{0,127}, checked without `re` (~4 ms of every start to import)
    if name is not None and not (isinstance(name, str) and 0 < len(name) <= 128 and name[0] in _NAME_FIRST
                                 and _NAME_CHARS.issuperset(name)):
        raise SpecError(f"'{name}' must match [A-Za-z0-9][A-Za-z0-9_.-]*", where="--name")
    policy = got.get("policy")
    if policy and ("/" in policy or policy.endswith((".yaml", ".yml"))):
        import os
        policy = os.path.abspath(policy)  # `sbx start` re-checks the same file from any directory
    return RunOptions(name=name, policy=policy or None, detach=bool(got.get("detach")),
                      remove=bool(got.get("remove")), record=got.get("record"))


def options_from_dict(d: dict | None) -> RunOptions:
    d = d or {}
    return RunOptions(**{k: d.get(k) for k in ("name", "policy", "record")},
                      detach=bool(d.get("detach")), remove=bool(d.get("remove")))


def canonical(v) -> bytes:
    """A deterministic byte encoding of plain data (dict keys sorted), for digests.

    repr() of str/int/float/bool/None is stable across CPython versions; json
    would do too but costs its import (json -> re -> enum, ~7 ms) on every run.
    """
    return repr(_sorted(v)).encode()


def _sorted(v):
    if isinstance(v, dict):
        return tuple(sorted((str(k), _sorted(x)) for k, x in v.items()))
    if isinstance(v, (list, tuple)):
        return tuple(_sorted(x) for x in v)
    return v


def spec_from_dict(d: dict) -> Spec:
    """Inverse of Spec.to_dict, for saved sandboxes (`sbx start`) and the spec cache."""
    fs = dict(d["filesystem"])
    fs["binds"] = tuple(Bind(**b) for b in fs.get("binds", ()))
    for k in ("etc_files", "masked_paths", "readonly_paths"):
        fs[k] = tuple(fs.get(k, ()))
    sec = dict(d["security"])
    sec["capabilities"] = tuple(sec.get("capabilities", ()))
    out = {k: v for k, v in d.items() if k not in LEGACY_SPEC_KEYS}
    out["argv"] = tuple(d["argv"])
    out["env"] = tuple(tuple(p) for p in d.get("env", ()))
    out["filesystem"] = Filesystem(**fs)
    out["security"] = Security(**sec)
    out["resources"] = Resources(**d["resources"])
    out["rlimits"] = tuple(Rlimit(**r) for r in d.get("rlimits", ()))
    out["ports"] = tuple(Port(**p) for p in d.get("ports", ()))
    out["groups"] = tuple(d.get("groups", ()))
    img = d.get("image")
    if img is not None:
        img = dict(img)
        for k in ("names", "layers", "diff_ids", "env", "run_env", "exposed_ports", "notes"):
            img[k] = tuple(img.get(k, ()))
        for k in ("entrypoint", "cmd"):
            img[k] = tuple(img[k]) if img.get(k) is not None else None
        img["labels"] = tuple(tuple(p) for p in img.get("labels", ()))
        out["image"] = Image(**img)
    out["add_hosts"] = tuple(tuple(p) for p in d.get("add_hosts", ()))
    out["dns"] = tuple(d.get("dns", ()))
    return Spec(**out)
