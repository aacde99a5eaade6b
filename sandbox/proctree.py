"""`sbx top`: the processes of a sandbox, as a tree, from /proc (through facts, the one reader).

A sandbox's processes are exactly those in its pid namespace (init's /proc/PID/ns/pid), found
among all host pids: that covers `sbx exec`'d commands too, whose host parent is outside the
sandbox. Each row has the host pid and the pid inside, the user as the host sees it and as the
sandbox does (through its uid_map), the state letter and the command line. Everything a
process says about itself (comm, argv) is hostile text: escaped before it is printed.
"""
from __future__ import annotations

import pwd

from . import facts
from .records import record

MAX_PROCS = 8192  # a fork-bombing sandbox is capped by its pids limit; this bounds the listing anyway


@record
class Proc:
    pid: int  # host
    spid: int | None  # inside the sandbox's pid namespace
    ppid: int  # host
    uid: int  # effective, as the host sees it
    inside_uid: int | None  # the same uid inside the sandbox's user namespace
    gid: int
    inside_gid: int | None
    state: str
    comm: str
    cmdline: list[str]
    depth: int = 0

    def to_dict(self) -> dict:
        return {"pid": self.pid, "sandbox_pid": self.spid, "ppid": self.ppid, "uid": self.uid,
                "sandbox_uid": self.inside_uid, "gid": self.gid, "sandbox_gid": self.inside_gid,
                "user": user_name(self.uid), "state": self.state, "comm": self.comm, "cmd": self.cmdline,
                "depth": self.depth}


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def sandbox_pids(init_pid: int) -> list[int]:
    """Host pids in init's pid namespace (init first)."""
    want = facts.read_ns(init_pid, ("pid",)).get("pid")
    if want is None:
        raise facts.ProcessGone(str(init_pid))
    out = []
    for pid in facts.list_pids():
        try:
            if facts.read_ns(pid, ("pid",)).get("pid") == want:
                out.append(pid)
        except (facts.ProcessGone, OSError):
            continue
        if len(out) >= MAX_PROCS:
            break
    return out


def processes(init_pid: int) -> list[Proc]:
    """The sandbox's processes in tree order (a process after its parent; depth set)."""
    uid_map = facts.read_idmap(init_pid, "uid")
    gid_map = facts.read_idmap(init_pid, "gid")
    procs: dict[int, Proc] = {}
    for pid in sandbox_pids(init_pid):
        try:
            st = facts.read_status(pid)
            stat = facts.read_stat(pid)
            cmd = facts.read_cmdline(pid)
        except (facts.ProcessGone, OSError):
            continue  # exited while we looked
        procs[pid] = Proc(pid=pid, spid=st.nspid[-1] if st.nspid else None, ppid=stat.ppid, uid=st.uid[1],
                          inside_uid=facts.inside_id(uid_map, st.uid[1]), gid=st.gid[1],
                          inside_gid=facts.inside_id(gid_map, st.gid[1]), state=stat.state, comm=stat.comm,
                          cmdline=cmd)
    kids: dict[int, list[int]] = {}
    roots = []
    for p in procs.values():
        if p.ppid in procs and p.ppid != p.pid:
            kids.setdefault(p.ppid, []).append(p.pid)
        else:
            roots.append(p.pid)  # init, and exec'd commands (their parent is `sbx exec`, outside)
    out: list[Proc] = []
    seen: set[int] = set()
    stack = [(pid, 0) for pid in sorted(roots, reverse=True)]
    while stack:
        pid, depth = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        p = procs[pid]
        p.depth = depth
        out.append(p)
        stack.extend((c, depth + 1) for c in sorted(kids.get(pid, ()), reverse=True))
    return out


def table(procs: list[Proc]) -> list[tuple[str, ...]]:
    rows = [("PID", "SANDBOX PID", "PPID", "USER", "SANDBOX UID", "STAT", "COMMAND")]
    for p in procs:
        cmd = " ".join(p.cmdline) if p.cmdline else f"[{p.comm}]"
        tree = ("    " * (p.depth - 1) + " \\_ ") if p.depth else ""
        rows.append((str(p.pid), "-" if p.spid is None else str(p.spid), str(p.ppid), user_name(p.uid),
                     "-" if p.inside_uid is None else str(p.inside_uid), p.state, tree + cmd))
    return rows
