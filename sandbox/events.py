"""Lifecycle events as JSON lines in <state_dir>/events.log (one size-capped rotation to events.log.1).

Writers append one line (< PIPE_BUF, so O_APPEND makes it atomic) under an
flock that also serialises rotation; readers never lock and read the rotated
file first, so a reader sees events in the order they were appended.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import time
from collections.abc import Iterator

from . import paths

MAX_BYTES = 1024 * 1024
ACTIONS = ("create", "start", "die", "oom", "pause", "unpause", "exec_start", "exec_die", "kill", "stop",
           "restart", "destroy")


def _path() -> str:
    return os.path.join(paths.ensure_private_dir(paths.state_dir()), "events.log")


def emit(action: str, sid: str, name: str | None = None, **attrs) -> None:
    """Append one event. Never raises: losing an event must not fail a lifecycle operation."""
    now = time.time_ns()
    ev = {"time": now // 1_000_000_000, "time_nano": now, "type": "sandbox", "action": action, "id": sid}
    if name:
        ev["name"] = name
    ev.update({k: v for k, v in attrs.items() if v is not None})
    line = (json.dumps(ev, sort_keys=True) + "\n").encode()[:4000]
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        p = _path()
        for _ in range(5):
            fd = os.open(p, flags, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if os.stat(p).st_ino != os.fstat(fd).st_ino:
                    continue  # rotated by another writer between our open and our lock
                if os.fstat(fd).st_size + len(line) > MAX_BYTES:
                    os.replace(p, p + ".1")  # still under the old file's lock: writers re-check the inode
                    newfd = os.open(p, flags, 0o600)
                    try:
                        os.write(newfd, line)
                    finally:
                        os.close(newfd)
                else:
                    os.write(fd, line)
                return
            finally:
                os.close(fd)
    except OSError:
        pass


def _parse(line: bytes) -> dict | None:
    try:
        ev = json.loads(line)
    except ValueError:
        return None
    return ev if isinstance(ev, dict) and "time_nano" in ev else None


def read(since: float | None = None, until: float | None = None) -> list[dict]:
    out = []
    p = _path()
    for f in (p + ".1", p):
        try:
            with open(f, "rb") as fh:
                data = fh.read(MAX_BYTES * 2)
        except FileNotFoundError:
            continue
        for line in data.splitlines():
            ev = _parse(line)
            if ev is not None and _in_window(ev, since, until):
                out.append(ev)
    return out


def _in_window(ev: dict, since: float | None, until: float | None) -> bool:
    t = ev["time_nano"] / 1e9
    return (since is None or t >= since) and (until is None or t <= until)


def follow(since: float | None = None, until: float | None = None, poll: float = 0.1) -> Iterator[dict]:
    """Past events in the window, then new ones as they are appended (until `until`, if given)."""
    for ev in read(since, until):
        yield ev
    p = _path()
    fh = open(p, "ab+")  # noqa: SIM115 - kept open across the loop; create so we can follow from empty
    try:
        fh.seek(0, os.SEEK_END)
        ino = os.fstat(fh.fileno()).st_ino
        buf = b""
        while until is None or time.time() <= until:
            chunk = fh.read()
            if chunk:
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    ev = _parse(line)
                    if ev is not None and _in_window(ev, since, until):
                        yield ev
                continue
            try:
                if os.stat(p).st_ino != ino:  # rotated: drain is done, switch to the new file
                    fh.close()
                    fh = open(p, "rb")  # noqa: SIM115
                    ino = os.fstat(fh.fileno()).st_ino
                    continue
            except FileNotFoundError:
                pass
            time.sleep(poll)
    finally:
        fh.close()


_DUR = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)\Z")


def parse_time(text: str, now: float | None = None) -> float:
    """Unix seconds from: a unix timestamp, a duration before now (10m, 2h, 30s), or an RFC 3339 time."""
    from datetime import datetime

    from .errors import SbxError
    now = time.time() if now is None else now
    t = text.strip()
    try:
        return float(t)
    except ValueError:
        pass
    m = _DUR.match(t)
    if m:
        mult = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        return now - float(m.group(1)) * mult
    try:
        dt = datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        raise SbxError(f"cannot parse time {t!r}: use a unix timestamp, a duration like 10m, or RFC 3339") from None
    if dt.tzinfo is None:
        return dt.astimezone().timestamp()
    return dt.timestamp()
