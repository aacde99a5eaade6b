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
           "restart", "rename", "destroy")


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


def follow(since: float | None = None, until: float | None = None, poll: float = 0.1,
           past: bool = True) -> Iterator[dict]:
    """Events in the window as they are appended, until `until` (forever without it).

    past: first the events already logged (from `since`); else only new ones. The live file is
    opened before anything is read, so no event falls between the past and the stream.
    """
    p = _path()
    fh = open(p, "ab+")
    try:
        ino = os.fstat(fh.fileno()).st_ino
        if past:
            try:
                if os.stat(p + ".1").st_ino != ino:  # not the file we hold (rotated since our open)
                    with open(p + ".1", "rb") as old:
                        for line in old.read(MAX_BYTES * 2).splitlines():
                            ev = _parse(line)
                            if ev is not None and _in_window(ev, since, until):
                                yield ev
            except FileNotFoundError:
                pass
            fh.seek(0)
        else:
            fh.seek(0, os.SEEK_END)
        buf = b""
        last_pass = False
        while True:
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
                    fh = open(p, "rb")
                    ino = os.fstat(fh.fileno()).st_ino
                    continue
            except FileNotFoundError:
                pass
            if last_pass:
                return
            if until is not None and time.time() > until:
                last_pass = True  # one more read: an event stamped before `until` may land just after it
                continue
            time.sleep(poll)
    finally:
        fh.close()


# Go's time.ParseDuration units, as docker's --since/--until take them ("1h30m", "1.5h", "300ms").
_DUR_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|ms|s|m|h|d)")
_DUR_MULT = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float | None:
    """Seconds of a Go-style duration ("10m", "1h30m", "2.5s"), or None if it is not one."""
    t = text.strip()
    if not t:
        return None
    pos, total = 0, 0.0
    while pos < len(t):
        m = _DUR_PART.match(t, pos)
        if m is None:
            return None
        total += float(m.group(1)) * _DUR_MULT[m.group(2)]
        pos = m.end()
    return total


def parse_time(text: str, now: float | None = None, where: str = "--since") -> float:
    """Unix seconds from what docker's --since/--until accept: a unix timestamp (with fractional
    seconds), a Go duration before now (10m, 1h30m), or an RFC 3339 / ISO 8601 time (a date alone,
    or a time without a zone, is local time)."""
    t = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        return float(t)
    return parse_time_ns(t, now, where) / 1e9


def parse_time_ns(text: str, now: float | None = None, where: str = "--since") -> int:
    """parse_time in integer nanoseconds: exact for an RFC 3339 stamp (as `sbx logs -t` prints)."""
    from datetime import datetime

    from .errors import SbxError, escape
    now = time.time() if now is None else now
    t = text.strip()
    m = re.fullmatch(r"(\d+)(?:\.(\d+))?", t)
    if m:
        return int(m.group(1)) * 1_000_000_000 + int((m.group(2) or "0")[:9].ljust(9, "0"))
    d = parse_duration(t)
    if d is not None:
        return int((now - d) * 1e9)
    frac_ns = 0
    iso = t.replace("Z", "+00:00").replace("z", "+00:00")
    m = re.fullmatch(r"(.*T\d\d:\d\d:\d\d)\.(\d+)(.*)", iso)
    if m:  # RFC 3339 allows nanoseconds; Python's parser takes at most microseconds: split them off
        iso, frac_ns = m.group(1) + m.group(3), int(m.group(2)[:9].ljust(9, "0"))
    try:
        dt = datetime.fromisoformat(iso)
    except ValueError:
        raise SbxError(f"cannot parse time {escape(t)!r}: use a unix timestamp, a duration like 10m or 1h30m, "
                       "or RFC 3339 (2006-01-02T15:04:05Z)", where=where) from None
    if dt.tzinfo is None:
        dt = dt.astimezone()
    return int(dt.timestamp()) * 1_000_000_000 + frac_ns
