"""State store for detached sandboxes: one 0700 directory per sandbox under <state_dir>/sandboxes.

Layout of <state_dir>/sandboxes/<id>/:
    config.json      spec (env included), name, created   (`start` re-creates from it; `rename` rewrites it)
    state.json       status, pids, exit code, times, OOM flag, verification   (rewritten atomically)
    supervisor.lock  flock held by the live supervisor for its whole life: a free lock means the
                     supervisor is gone, so the entry is shown as exited (stale) whatever state.json says
    sandbox.log*     the workload's stdout/stderr (see logfile.py-style writer in lifecycle)

Every read-modify-write and every create/remove happens under one flock on
<state_dir>/sandboxes/.lock, held for a few file operations only, so two
concurrent sbx commands never corrupt a file or both claim a name. Readers do
not lock: files are replaced by rename, so a reader sees the old or the new one.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field

from . import paths
from .errors import SbxError

_ID_RE = re.compile(r"[0-9a-f]{64}\Z")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")
MAX_JSON = 4 * 1024 * 1024

RUNNING, PAUSED, EXITED, CREATED = "running", "paused", "exited", "created"


def root() -> str:
    base = paths.ensure_private_dir(paths.state_dir())
    return paths.ensure_private_dir(os.path.join(base, "sandboxes"))


def sandbox_dir(sid: str) -> str:
    if not _ID_RE.match(sid):
        raise SbxError(f"malformed sandbox id {sid!r}")
    return os.path.join(root(), sid)


@contextlib.contextmanager
def locked():
    """The store-wide lock (short critical sections only)."""
    fd = os.open(os.path.join(root(), ".lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def check_name(name: str) -> None:
    if not _NAME_RE.match(name):
        raise SbxError(f"invalid sandbox name {name!r}: use letters, digits, '_', '.', '-' (max 128)", where="--name")
    if _ID_RE.match(name):
        raise SbxError(f"invalid sandbox name {name!r}: it looks like a sandbox id", where="--name")


def _read_json(path: str) -> dict | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        data = os.read(fd, MAX_JSON)
    finally:
        os.close(fd)
    try:
        obj = json.loads(data)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _write_json(path: str, obj: dict) -> None:
    paths.atomic_write(path, json.dumps(obj, sort_keys=True).encode())


@dataclass
class Entry:
    """One sandbox as read from the store (a snapshot; re-read to refresh)."""

    id: str
    dir: str
    config: dict
    state: dict
    alive: bool  # the supervisor still holds its lock
    extra: dict = field(default_factory=dict)

    @property
    def name(self) -> str | None:
        return self.config.get("name")

    @property
    def status(self) -> str:
        """running / paused / exited / created; a dead supervisor means exited, whatever the file says."""
        st = self.state.get("status", CREATED)
        if not self.alive and st in (RUNNING, PAUSED, CREATED) and self.state.get("supervisor_pid"):
            return EXITED
        return st

    @property
    def stale(self) -> bool:
        return not self.alive and self.state.get("status") in (RUNNING, PAUSED, CREATED) \
            and bool(self.state.get("supervisor_pid"))

    def uptime(self, now: float | None = None) -> float | None:
        """Seconds the workload ran, excluding time spent paused."""
        started = self.state.get("started_at")
        if not started:
            return None
        now = time.time() if now is None else now
        end = self.state.get("finished_at") or now
        paused = float(self.state.get("paused_total", 0.0))
        if self.state.get("paused_at") and self.status == PAUSED:
            paused += max(0.0, end - self.state["paused_at"])
        return max(0.0, end - started - paused)


def supervisor_alive(d: str) -> bool:
    try:
        fd = os.open(os.path.join(d, "supervisor.lock"), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def hold_supervisor_lock(d: str) -> int:
    """Taken by the supervisor; the kernel releases it when the supervisor dies, however it dies."""
    fd = os.open(os.path.join(d, "supervisor.lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SbxError("sandbox already has a live supervisor") from None
    return fd


def load(sid: str) -> Entry | None:
    d = os.path.join(root(), sid)
    config = _read_json(os.path.join(d, "config.json"))
    if config is None:
        return None
    st = _read_json(os.path.join(d, "state.json")) or {}
    return Entry(sid, d, config, st, supervisor_alive(d))


def ids() -> list[str]:
    try:
        names = os.listdir(root())
    except FileNotFoundError:
        return []
    return sorted(n for n in names if _ID_RE.match(n))


def entries() -> list[Entry]:
    out = []
    for sid in ids():
        e = load(sid)
        if e is not None:
            out.append(e)
    out.sort(key=lambda e: e.config.get("created", 0), reverse=True)
    return out


def resolve(ref: str) -> Entry:
    """A full id, a unique id prefix, or a name. Refuses ambiguity with one line."""
    from .errors import escape
    if not ref:
        raise SbxError("empty sandbox id or name")
    all_ = entries()
    for e in all_:
        if e.id == ref or e.name == ref:
            return e
    if re.fullmatch(r"[0-9a-f]+", ref):
        hits = [e for e in all_ if e.id.startswith(ref)]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise SbxError(f"ambiguous id prefix {ref}: matches {len(hits)} sandboxes "
                           f"({', '.join(h.id[:12] for h in hits[:5])}); give more characters")
    raise SbxError(f"no such sandbox: {escape(ref)}")


def create(sid: str, config: dict) -> str:
    """Make the sandbox's directory and config under the lock; refuses a name already in use."""
    name = config.get("name")
    if name:
        check_name(name)
    with locked():
        if name:
            for e in entries():
                if e.name == name:
                    raise SbxError(f"the name {name!r} is already in use by sandbox {e.id[:12]}; "
                                   "remove it (sbx rm) or choose another name", where="--name")
        d = sandbox_dir(sid)
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            raise SbxError(f"sandbox id {sid[:12]} already exists") from None
        _write_json(os.path.join(d, "state.json"), {"status": CREATED})
        _write_json(os.path.join(d, "config.json"), config)  # last: its presence makes the entry visible
    return d


def rename(sid: str, new: str) -> str | None:
    """Give the sandbox a new name (docker rename); returns the old one. Refuses a name in use.

    config.json is rewritten atomically under the store lock: readers see the old or the new file.
    """
    check_name(new)
    with locked():
        d = sandbox_dir(sid)
        config = _read_json(os.path.join(d, "config.json"))
        if config is None:
            raise SbxError(f"no such sandbox: {sid[:12]}")
        for e in entries():
            if e.name == new and e.id != sid:
                raise SbxError(f"the name {new!r} is already in use by sandbox {e.id[:12]}", where="rename")
        old = config.get("name")
        config["name"] = new
        if isinstance(config.get("spec"), dict) and "name" in config["spec"]:
            config["spec"]["name"] = new  # `start` and its events use the saved Spec's name (not the hostname)
        if isinstance(config.get("options"), dict) and "name" in config["options"]:
            config["options"]["name"] = new  # where run options are saved beside the Spec
        _write_json(os.path.join(d, "config.json"), config)
    return old


def update(sid: str, **changes) -> dict | None:
    """Read-modify-write state.json under the lock; None if the sandbox was removed meanwhile."""
    d = os.path.join(root(), sid)
    with locked():
        if not os.path.isdir(d):
            return None
        st = _read_json(os.path.join(d, "state.json")) or {}
        for k, v in changes.items():
            if callable(v):
                v = v(st)
            if v is _DELETE:
                st.pop(k, None)
            else:
                st[k] = v
        _write_json(os.path.join(d, "state.json"), st)
        return st


_DELETE = object()


def delete_marker() -> object:
    return _DELETE


def remove(sid: str) -> bool:
    """Remove the sandbox's directory; True if it existed."""
    d = sandbox_dir(sid)
    with locked():
        if not os.path.isdir(d):
            return False
        # Rename first so a half-removed entry never shows in ps, then delete.
        tomb = os.path.join(root(), f".rm-{sid}-{os.getpid()}")
        os.rename(d, tomb)
    shutil.rmtree(tomb, ignore_errors=True)
    return True
