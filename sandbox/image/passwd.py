"""config.User resolved against the IMAGE's /etc/passwd and /etc/group (runc's GetExecUser rules), never the host's.

    ""         uid 0 (looked up in passwd: its gid and home), groups that list its name
    NAME       passwd entry by name (error if there is none); its gid; groups that list NAME
    UID        passwd entry by uid if there is one, else uid=UID gid=0 home=/
    U:G        as above for U; G by name (error if none) or number; no supplementary groups
One difference from runc, on purpose: a line whose uid or gid field is not a number is skipped
(runc reads it as 0, so a hostile `app:x:junk:...` line would make user `app` root).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import SbxError, escape

MAX_ID = (1 << 31) - 1


class UserError(SbxError):
    pass


@dataclass(frozen=True)
class ExecUser:
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str
    name: str | None = None  # the passwd name, when the spec matched one


def _id(s: str) -> int | None:
    if not s.isdigit() or len(s) > 10:
        return None
    v = int(s)
    return v if v <= MAX_ID else None


def parse_passwd(data: bytes | None) -> list[tuple[str, int, int, str]]:
    out = []
    for line in (data or b"").decode("utf-8", "replace").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        f = line.split(":")
        if len(f) < 4:
            continue
        uid, gid = _id(f[2]), _id(f[3])
        if uid is None or gid is None:
            continue
        out.append((f[0], uid, gid, f[5] if len(f) > 5 else ""))
    return out


def parse_group(data: bytes | None) -> list[tuple[str, int, list[str]]]:
    out = []
    for line in (data or b"").decode("utf-8", "replace").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        f = line.split(":")
        if len(f) < 3:
            continue
        gid = _id(f[2])
        if gid is None:
            continue
        members = [m.strip() for m in f[3].split(",")] if len(f) > 3 and f[3] else []
        out.append((f[0], gid, [m for m in members if m]))
    return out


def exec_user(spec: str, passwd: bytes | None, group: bytes | None) -> ExecUser:
    """Resolve config.User (or a -u override) for an image whose files are given."""
    spec = spec or ""
    user_arg, _, group_arg = spec.partition(":")
    users = parse_passwd(passwd)
    uid_arg = _id(user_arg) if user_arg else None
    if user_arg.isdigit() and uid_arg is None:
        raise UserError(f"user {escape(spec)!r}: uid out of range")
    uid, gid, home, name = 0, 0, "/", None
    if not user_arg:
        match = next((u for u in users if u[1] == 0), None)
    elif uid_arg is not None:
        match = next((u for u in users if u[1] == uid_arg), None)
    else:
        match = next((u for u in users if u[0] == user_arg), None)
        if match is None:
            raise UserError(f"user {escape(user_arg)!r} is not in the image's /etc/passwd")
    if match is not None:
        name, uid, gid, home = match[0], match[1], match[2], match[3] or "/"
    elif uid_arg is not None:
        uid = uid_arg
    groups: tuple[int, ...] = ()
    grp = parse_group(group)
    if group_arg:
        gid_arg = _id(group_arg)
        hit = next((g for g in grp if (g[1] == gid_arg if gid_arg is not None else g[0] == group_arg)), None)
        if hit is not None:
            gid = hit[1]
        elif gid_arg is not None:
            gid = gid_arg
        elif group_arg.isdigit():
            raise UserError(f"user {escape(spec)!r}: gid out of range")
        else:
            raise UserError(f"group {escape(group_arg)!r} is not in the image's /etc/group")
    elif name is not None:
        groups = tuple(sorted({g[1] for g in grp if name in g[2]}))
    return ExecUser(uid, gid, groups, home, name)
