"""The image config (`config` of an OCI/Docker image config blob) with Docker's semantics.

    Env          the image's list, then `-e/--env-file` of the run replace by key; PATH defaults to
                 Docker's when the image sets none; HOME from the image's passwd entry unless set
    Entrypoint   kept unless --entrypoint is given; --entrypoint also drops the image's Cmd
    Cmd          replaced by the arguments after IMAGE
    WorkingDir   absolute; relative values are taken from / (as Docker does); default /
    User         resolved against the image's own /etc/passwd and /etc/group (passwd.py)
    Labels, StopSignal, ExposedPorts, Volumes  shown by inspect; StopSignal is what `stop` sends

The config is hostile input: every field is type-checked and one line names the field.
"""
from __future__ import annotations

import posixpath
from dataclasses import dataclass, field

from ..errors import SbxError, escape

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MAX_ITEMS = 4096


class ConfigError(SbxError):
    pass


@dataclass(frozen=True)
class ImageConfig:
    env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    workdir: str = "/"
    user: str = ""
    labels: dict = field(default_factory=dict)
    stop_signal: str | None = None
    exposed_ports: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"Env": list(self.env), "Entrypoint": list(self.entrypoint) if self.entrypoint is not None else None,
                "Cmd": list(self.cmd) if self.cmd is not None else None, "WorkingDir": self.workdir,
                "User": self.user, "Labels": dict(self.labels), "StopSignal": self.stop_signal,
                "ExposedPorts": list(self.exposed_ports), "Volumes": list(self.volumes)}


def _strs(v, what: str, allow_none: bool = True) -> tuple[str, ...] | None:
    if v is None and allow_none:
        return None
    if not isinstance(v, list) or len(v) > MAX_ITEMS or not all(isinstance(x, str) for x in v):
        raise ConfigError(f"image config: {what} must be a list of strings")
    for x in v:
        if "\0" in x:
            raise ConfigError(f"image config: {what} has a NUL byte")
    return tuple(v)


def _keys(v, what: str) -> tuple[str, ...]:
    if v is None:
        return ()
    if not isinstance(v, dict) or len(v) > MAX_ITEMS or not all(isinstance(k, str) for k in v):
        raise ConfigError(f"image config: {what} must be an object with string keys")
    return tuple(sorted(v))


def parse(config_blob: dict) -> ImageConfig:
    c = config_blob.get("config")
    if c is None:
        c = {}
    if not isinstance(c, dict):
        raise ConfigError("image config: 'config' must be an object")
    env = _strs(c.get("Env"), "Env") or ()
    for e in env:
        if "=" not in e or e.startswith("="):
            raise ConfigError(f"image config: Env entry {escape(e)[:80]!r} is not NAME=VALUE")
    wd = c.get("WorkingDir") or "/"
    if not isinstance(wd, str) or "\0" in wd:
        raise ConfigError("image config: WorkingDir must be a string")
    wd = posixpath.normpath(posixpath.join("/", wd))
    user = c.get("User") or ""
    if not isinstance(user, str) or "\0" in user or len(user) > 256:
        raise ConfigError("image config: User must be a short string")
    labels = c.get("Labels") or {}
    if not isinstance(labels, dict) or len(labels) > MAX_ITEMS or \
            not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise ConfigError("image config: Labels must map strings to strings")
    sig = c.get("StopSignal") or None
    if sig is not None:
        if not isinstance(sig, str):
            raise ConfigError("image config: StopSignal must be a string")
        signal_number(sig)
    return ImageConfig(env=env, entrypoint=_strs(c.get("Entrypoint"), "Entrypoint"), cmd=_strs(c.get("Cmd"), "Cmd"),
                       workdir=wd, user=user, labels=dict(labels), stop_signal=sig,
                       exposed_ports=_keys(c.get("ExposedPorts"), "ExposedPorts"),
                       volumes=_keys(c.get("Volumes"), "Volumes"))


def signal_number(sig: str) -> int:
    """SIGTERM, TERM, 15 -> 15 (Docker accepts all three spellings)."""
    import signal
    s = sig.strip().upper()
    if s.isdigit():
        n = int(s)
        if 0 < n < 65:
            return n
    else:
        name = s if s.startswith("SIG") else "SIG" + s
        v = getattr(signal, name, None)
        if isinstance(v, signal.Signals):
            return int(v)
        if name.startswith("SIGRTMIN+") and name[9:].isdigit():
            return int(signal.SIGRTMIN) + int(name[9:])
    raise ConfigError(f"image config: StopSignal {escape(sig)!r} is not a signal")


def command(cfg: ImageConfig, args: list[str], entrypoint: str | None = None) -> list[str]:
    """argv = Entrypoint + Cmd with Docker's override rules. entrypoint '' clears the image's."""
    if entrypoint is not None:
        ep = [entrypoint] if entrypoint else []
        cmd = list(args)
    else:
        ep = list(cfg.entrypoint or ())
        cmd = list(args) if args else list(cfg.cmd or ())
    argv = ep + cmd
    if not argv:
        raise ConfigError("the image has no Entrypoint or Cmd: give a command after the image name")
    return argv


def environment(cfg: ImageConfig, run_env: list[str] | tuple[str, ...] = (), home: str | None = None) -> list[str]:
    """The image's Env, then the run's -e values replacing by name; PATH and HOME defaults as Docker."""
    out: dict[str, str] = {}
    for e in cfg.env:
        k, _, v = e.partition("=")
        out[k] = v
    for e in run_env:
        k, _, v = e.partition("=")
        out[k] = v
    out.setdefault("PATH", DEFAULT_PATH)
    if home is not None:
        out.setdefault("HOME", home)
    return [f"{k}={v}" for k, v in out.items()]
