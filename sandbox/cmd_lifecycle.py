"""Docker-style verbs for detached sandboxes: ps, inspect, logs, stop, kill, pause, unpause, exec,
stats, events, start, restart, rm.

Exit codes: 0 on success; `exec` returns the command's own code (126/127 as for run);
every sbx error, "no such sandbox" and "ambiguous id prefix" included, is one line
on stderr and exit 125 (docker uses 125 for errors of the tool itself rather than of
the workload; sbx has no daemon, so there is no separate "daemon error" code).
A sandbox is named by its full id, a unique id prefix, or its --name.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time

import click

from . import events, state
from .errors import EXIT_REFUSED, SbxError, escape, escape_output

STOP_TIMEOUT = 10


# ---------------------------------------------------------------- helpers

def _iso(t: float | None) -> str | None:
    if not t:
        return None
    s = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t))
    return f"{s}.{int((t % 1) * 1e6):06d}Z"


def _ago(seconds: float) -> str:
    s = int(max(0, seconds))
    for unit, n in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if s >= n:
            k = s // n
            return f"{k} {unit}{'s' if k != 1 else ''}"
    return f"{s} second{'s' if s != 1 else ''}"


def _status_text(e: state.Entry, now: float) -> str:
    st = e.status
    if st in (state.RUNNING, state.PAUSED):
        up = e.uptime(now) or 0.0
        return f"Up {_ago(up)}" + (" (Paused)" if st == state.PAUSED else "")
    if st == state.EXITED:
        code = e.state.get("exit_code")
        fin = e.state.get("finished_at")
        if e.stale:
            return "Exited (supervisor gone)"
        return f"Exited ({code}) {_ago(now - fin)} ago" if fin else f"Exited ({code})"
    return "Created"


def describe(e: state.Entry) -> dict:
    """The inspect document."""
    spec = e.config.get("spec", {})
    st = e.state
    status = e.status
    return {
        "id": e.id,
        "name": e.name,
        "created": _iso(e.config.get("created")),
        "profile": spec.get("profile"),
        "argv": spec.get("argv"),
        "env": [f"{k}={v}" for k, v in spec.get("env", ())],
        "image": _image_view(spec.get("image")),
        "state": {
            "status": status,
            "running": status in (state.RUNNING, state.PAUSED),
            "paused": status == state.PAUSED,
            "stale": e.stale,
            "pid": st.get("pid") if status in (state.RUNNING, state.PAUSED) else None,
            "init_pid": st.get("init_pid") if status in (state.RUNNING, state.PAUSED) else None,
            "supervisor_pid": st.get("supervisor_pid") if e.alive else None,
            "exit_code": st.get("exit_code"),
            "oom_killed": bool(st.get("oom_killed")),
            "timed_out": bool(st.get("timed_out")),
            "error": st.get("error"),
            "started_at": _iso(st.get("started_at")),
            "finished_at": _iso(st.get("finished_at")),
            "uptime_seconds": None if e.uptime() is None else round(e.uptime(), 3),
            "paused_seconds": round(float(st.get("paused_total", 0.0))
                                    + (time.time() - st["paused_at"] if status == state.PAUSED and st.get("paused_at")
                                       else 0.0), 3),
        },
        "cgroup": st.get("cgroup"),
        "network": st.get("network"),  # bridge: address, gateway, MAC, names, published ports
        "mounts": st.get("mounts"),  # each bind's host path and the owner its files get (idmapped)
        "idmap": st.get("idmap"),
        "verification": st.get("verification"),
        "lsm_label": st.get("lsm_label"),
        "landlock_abi": st.get("landlock_abi"),
        "notes": st.get("notes"),
        "startup_ms": st.get("startup_ms"),
        "log_path": os.path.join(e.dir, "sandbox.log"),
        "spec": spec,
    }


def _image_view(img) -> dict | None:
    """An image sandbox's image, its own env and the run's env apart (`env` above is what the workload got)."""
    if not isinstance(img, dict):
        return None
    return {"ref": img.get("ref"), "id": img.get("id"), "digest": img.get("digest"), "names": img.get("names"),
            "env": img.get("env"), "run_env": img.get("run_env"), "entrypoint": img.get("entrypoint"),
            "cmd": img.get("cmd"), "user": img.get("user"), "workdir": img.get("workdir"),
            "labels": dict(img.get("labels") or ()), "stop_signal": img.get("stop_signal"),
            "exposed_ports": img.get("exposed_ports"), "notes": img.get("notes")}


def stop_signal(e: state.Entry) -> int:
    """The image's StopSignal when it has one init forwards, else SIGTERM (as Docker's default)."""
    from .initproc import FORWARD
    img = (e.config.get("spec") or {}).get("image") or {}
    name = img.get("stop_signal") if isinstance(img, dict) else None
    if isinstance(name, str):
        try:
            from .image.config import signal_number
            n = signal_number(name)
        except SbxError:
            return signal.SIGTERM
        if n in FORWARD or n == signal.SIGKILL:
            return n
    return signal.SIGTERM


def _each(refs, fn) -> int:
    """Apply fn to every named sandbox; report each failure as one line and go on (exit 125 if any)."""
    rc = 0
    for ref in refs:
        try:
            fn(state.resolve(ref))
        except SbxError as err:
            sys.stderr.write(err.line() + "\n")
            rc = err.code or EXIT_REFUSED
    return rc


def _signum(text: str) -> int:
    t = text.strip().upper()
    if t.isdigit():
        n = int(t)
        if 0 < n < signal.NSIG:
            return n
    else:
        name = t if t.startswith("SIG") else "SIG" + t
        if name in signal.Signals.__members__:
            return int(signal.Signals[name])
    raise SbxError(f"unknown signal {escape(text)!r}", where="kill -s")


def _cgroup(e: state.Entry, what: str):
    from . import cgroups
    cg = cgroups.open_existing(e.id)
    if cg is None or not cg.paths:
        raise SbxError(f"cannot {what} sandbox {e.id[:12]}: it has no cgroup (its profile requests no resource caps)")
    return cg


def _require_running(e: state.Entry, verb: str) -> None:
    if e.status not in (state.RUNNING, state.PAUSED):
        raise SbxError(f"cannot {verb} sandbox {e.id[:12]}: it is not running ({e.status})")


# ---------------------------------------------------------------- ps / inspect

@click.command("ps", help="List sandboxes (running ones; -a for all).")
@click.option("-a", "--all", "all_", is_flag=True, help="Show exited sandboxes too.")
@click.option("-q", "--quiet", is_flag=True, help="Only ids.")
@click.option("--format", "fmt", default="table", metavar="FORMAT",
              help="table, json, or a Go template as docker spells it ('{{.ID}} {{.Names}}', 'table {{.ID}}\\t"
                   "{{.Status}}', '{{json .}}').")
@click.option("-f", "--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="id, name (regex), label (K or K=V), status, ancestor, exited, network, before, since.")
@click.option("-n", "--last", "last", type=int, default=None, help="The N most recently created (any state).")
@click.option("-l", "--latest", is_flag=True, help="The most recently created (any state).")
@click.option("--no-trunc", is_flag=True, help="Full ids.")
def ps_cmd(all_: bool, quiet: bool, fmt: str, filters, last: int | None, latest: bool, no_trunc: bool) -> int:
    from . import dockerview as dv
    now = time.time()
    want = dv.parse_filters(filters, dv.PS_FILTERS, "ps --filter")
    if latest:
        last = 1
    # docker: a status filter, -n and -l look at every sandbox, not only running ones
    every = all_ or "status" in want or last is not None
    rows = [e for e in state.entries() if every or e.status in (state.RUNNING, state.PAUSED)]
    rows = dv.ps_select(rows, want)
    if last is not None:
        rows = rows[:max(0, last)]
    if quiet:
        for e in rows:
            print(e.id if no_trunc else e.id[:12])
        return 0
    if fmt not in ("table", "json"):
        sys.stdout.write(dv.render(fmt, [dv.ps_fields(e, now, trunc=not no_trunc) for e in rows], dv.ps_header()))
        return 0
    if fmt == "json":
        out = []
        for e in rows:
            d = describe(e)
            out.append({"id": e.id, "name": e.name, "profile": d["profile"], "command": d["argv"],
                        "created": d["created"], "state": d["state"]["status"], "status": _status_text(e, now),
                        "exit_code": d["state"]["exit_code"], "pid": d["state"]["pid"]})
        print(json.dumps(out, indent=2))
        return 0
    table = [("SANDBOX ID", "PROFILE", "COMMAND", "CREATED", "STATUS", "NAMES")]
    for e in rows:
        spec = e.config.get("spec", {})
        cmd = " ".join(spec.get("argv", ()))
        cmd = cmd if no_trunc or len(cmd) <= 30 else cmd[:27] + "..."
        created = e.config.get("created")
        table.append((e.id if no_trunc else e.id[:12], str(spec.get("profile", "")), f"\"{cmd}\"",
                      f"{_ago(now - created)} ago" if created else "", _status_text(e, now), e.name or ""))
    _print_table(table)
    return 0


def _print_table(rows) -> None:
    rows = [[escape(str(c)) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


@click.command("inspect", help="Show everything recorded about sandboxes, as a JSON array (sbx's keys and "
                               "docker's: Id, State.Pid, Config.Env, HostConfig.Memory, NetworkSettings.IPAddress, ...).")
@click.option("-f", "--format", "fmt", default=None, metavar="TEMPLATE",
              help="A Go template per sandbox, as docker spells it ('{{.State.Pid}}', '{{json .Config}}').")
@click.argument("refs", nargs=-1, required=True)
def inspect_cmd(fmt: str | None, refs) -> int:
    from . import dockerview as dv
    if fmt == "json":
        fmt = None  # docker: --format json is the default document
    if fmt is not None:
        dv.compile_format(fmt)  # a bad template is refused before anything is looked up
    out = []
    rc = _each(refs, lambda e: out.append(dv.inspect_doc(e)))
    if fmt is not None:
        sys.stdout.write(dv.render(fmt, out))
    else:
        print(json.dumps(out, indent=2, sort_keys=True))
    return rc


# ---------------------------------------------------------------- logs

def _records(d: str):
    from .lifecycle import log_files, parse_log_line
    for p in log_files(d):
        try:
            with open(p, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            continue
        for line in data.split(b"\n"):
            rec = parse_log_line(line)
            if rec is not None:
                yield rec


def _emit(rec, timestamps: bool, pending: dict, raw: bool = False) -> None:
    ts, stream, complete, data = rec
    out = sys.stdout.buffer if stream == "stdout" else sys.stderr.buffer
    head = pending.pop(stream, None)
    if not complete:
        pending[stream] = (head or (ts, b""))[0], (head or (ts, b""))[1] + data
        return
    if head is not None:
        ts, data = head[0], head[1] + data
    if not raw and _isatty(out):
        # The workload wrote these bytes; the reader's terminal must not obey them (OSC 52, titles, ...).
        data = escape_output(data)
    out.write((ts.encode() + b" " if timestamps else b"") + data + b"\n")
    out.flush()


def _isatty(stream) -> bool:
    try:
        return os.isatty(stream.fileno())
    except (OSError, ValueError):
        return False


def _window(recs, lo: str | None, hi: str | None):
    """The records of the lines that began inside [lo, hi] (RFC 3339 UTC stamps compare as text)."""
    start: dict[str, str] = {}
    for rec in recs:
        ts, stream, complete = rec[0], rec[1], rec[2]
        first = start.get(stream, ts)
        if complete:
            start.pop(stream, None)
        else:
            start[stream] = first
        if (lo is None or first >= lo) and (hi is None or first <= hi):
            yield rec


def _stamp_text(t_ns: int) -> str:
    from .lifecycle import _stamp
    return _stamp(t_ns).decode()


@click.command("logs", help="Print a sandbox's stdout and stderr (each to its own stream).")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output until the sandbox exits.")
@click.option("-n", "--tail", type=str, default="all", help="Only the last N lines ('all').")
@click.option("-t", "--timestamps", is_flag=True, help="Prefix each line with its time.")
@click.option("--since", default=None, help="Lines from this time on: unix time, RFC 3339, or a duration ago (10m).")
@click.option("--until", default=None, help="Lines up to this time (same forms).")
@click.option("--raw", is_flag=True, help="Bytes as written, even to a terminal (default there: control "
                                           "sequences are escaped).")
@click.argument("ref")
def logs_cmd(follow: bool, tail: str, timestamps: bool, since: str | None, until: str | None, raw: bool,
             ref: str) -> int:
    now = time.time()
    t_since = events.parse_time_ns(since, now, where="--since") if since else None
    t_until = events.parse_time_ns(until, now, where="--until") if until else None
    e = state.resolve(ref)
    if tail != "all" and not tail.isdigit():
        raise SbxError(f"--tail wants a number or 'all', got {escape(tail)!r}", where="logs")
    recs = list(_records(e.dir))
    if t_since is not None or t_until is not None:
        recs = list(_window(recs, None if t_since is None else _stamp_text(t_since),
                            None if t_until is None else _stamp_text(t_until)))
    if tail != "all":
        n = int(tail)
        # Count whole lines (F records) from the end; keep the P records that belong to them.
        kept, lines = [], 0
        for rec in reversed(recs):
            if rec[2]:
                if lines == n:
                    break
                lines += 1
            kept.append(rec)
        recs = list(reversed(kept))
    pending: dict = {}
    for rec in recs:
        _emit(rec, timestamps, pending, raw)
    if follow and (t_until is None or t_until > time.time_ns()):
        _follow(e, timestamps, pending, raw, until_ns=t_until)
    return 0


def _follow(e: state.Entry, timestamps: bool, pending: dict, raw: bool = False, until_ns: int | None = None) -> None:
    from .lifecycle import LOG_NAME, parse_log_line
    path = os.path.join(e.dir, LOG_NAME)
    try:
        f = open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        return
    hi = None if until_ns is None else _stamp_text(until_ns)
    try:
        f.seek(0, os.SEEK_END)
        buf = b""
        while True:
            chunk = f.read()
            if chunk:
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    rec = parse_log_line(line)
                    if rec is not None and (hi is None or rec[0] <= hi):
                        _emit(rec, timestamps, pending, raw)
                continue
            try:
                if os.stat(path).st_ino != os.fstat(f.fileno()).st_ino:
                    f.close()
                    f = open(path, "rb")  # noqa: SIM115 - rotated: the new file starts from 0
                    continue
            except FileNotFoundError:
                return  # removed (rm, --rm)
            if not state.supervisor_alive(e.dir) or (until_ns is not None and time.time_ns() > until_ns):
                chunk = f.read()
                if not chunk:
                    return
                buf += chunk
                continue
            time.sleep(0.1)
    finally:
        f.close()


# ---------------------------------------------------------------- stop / kill / pause

def _unpause(e: state.Entry, quiet_if_not_paused: bool = False) -> None:
    if e.status != state.PAUSED:
        if quiet_if_not_paused:
            return
        raise SbxError(f"sandbox {e.id[:12]} is not paused")
    _cgroup(e, "unpause").thaw()
    now = time.time()

    def total(st: dict) -> float:
        return float(st.get("paused_total", 0.0)) + (max(0.0, now - st["paused_at"]) if st.get("paused_at") else 0.0)

    state.update(e.id, paused_total=total, paused_at=state.delete_marker(),
                 status=lambda st: state.RUNNING if st.get("status") == state.PAUSED else st.get("status"))
    events.emit("unpause", e.id, e.name)


def stop(e: state.Entry, timeout: float) -> None:
    from .lifecycle import signal_sandbox, wait_init, wait_supervisor
    if e.status not in (state.RUNNING, state.PAUSED):
        return  # already stopped: not an error, as in docker
    if e.status == state.PAUSED:
        _unpause(e)  # a frozen task cannot act on SIGTERM
    sig = stop_signal(e)
    events.emit("kill", e.id, e.name, signal=signal.Signals(sig).name)
    sent = signal_sandbox(e, sig)
    if sent and not wait_init(e, timeout):
        events.emit("kill", e.id, e.name, signal="SIGKILL")
        signal_sandbox(e, signal.SIGKILL)
    if not wait_supervisor(e, 15.0):
        raise SbxError(f"sandbox {e.id[:12]}: the supervisor did not record the exit within 15 s")
    events.emit("stop", e.id, e.name)


@click.command("stop", help="SIGTERM (an image's StopSignal) the sandbox, wait, then SIGKILL.")
@click.option("-t", "--time", "timeout", type=float, default=STOP_TIMEOUT, show_default=True,
              help="Seconds to wait before SIGKILL.")
@click.argument("refs", nargs=-1, required=True)
def stop_cmd(timeout: float, refs) -> int:
    if timeout < 0:
        raise SbxError("-t must be >= 0", where="stop")

    def one(e):
        stop(e, timeout)
        print(escape(e.name or e.id))
    return _each(refs, one)


@click.command("kill", help="Send a signal (default SIGKILL) to the sandbox's workload.")
@click.option("-s", "--signal", "sig", default="KILL", show_default=True, help="Signal name or number.")
@click.argument("refs", nargs=-1, required=True)
def kill_cmd(sig: str, refs) -> int:
    from .lifecycle import signal_sandbox
    signo = _signum(sig)

    def one(e):
        _require_running(e, "kill")
        events.emit("kill", e.id, e.name, signal=signal.Signals(signo).name)
        if not signal_sandbox(e, signo):
            raise SbxError(f"sandbox {e.id[:12]} is not running (its init is gone)")
        if signo == signal.SIGKILL and e.status == state.PAUSED:
            _unpause(e)  # v1 freezer: a frozen task acts on SIGKILL only once thawed
        print(escape(e.name or e.id))
    return _each(refs, one)


@click.command("pause", help="Freeze every process of the sandbox (cgroup freezer).")
@click.argument("refs", nargs=-1, required=True)
def pause_cmd(refs) -> int:
    def one(e):
        if e.status == state.PAUSED:
            raise SbxError(f"sandbox {e.id[:12]} is already paused")
        _require_running(e, "pause")
        _cgroup(e, "pause").freeze()
        now = time.time()
        st = state.update(e.id, status=lambda s: state.PAUSED if s.get("status") == state.RUNNING else s.get("status"),
                          paused_at=lambda s: now if s.get("status") == state.PAUSED else s.get("paused_at"))
        if st is None or st.get("status") != state.PAUSED:
            raise SbxError(f"sandbox {e.id[:12]} exited while being paused")
        events.emit("pause", e.id, e.name)
        print(escape(e.name or e.id))
    return _each(refs, one)


@click.command("unpause", help="Thaw a paused sandbox.")
@click.argument("refs", nargs=-1, required=True)
def unpause_cmd(refs) -> int:
    def one(e):
        _unpause(e)
        print(escape(e.name or e.id))
    return _each(refs, one)


# ---------------------------------------------------------------- exec

@click.command("exec", help="Run CMD inside a running sandbox under the same confinement as its workload.",
               context_settings={"allow_interspersed_args": False})
@click.option("-e", "--env", "env", multiple=True, help="K=V added to the sandbox's environment.")
@click.option("-w", "--workdir", default=None, help="Working directory inside.")
@click.argument("ref")
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_cmd(env, workdir, ref: str, cmd) -> int:
    from .enter import exec_in
    e = state.resolve(ref)
    argv = list(cmd)
    if argv and argv[0] == "--":
        argv = argv[1:]
    return exec_in(e, argv, env=list(env), workdir=workdir)


# ---------------------------------------------------------------- stats

def _sample(entries) -> dict:
    from . import cgroups
    out = {}
    for e in entries:
        try:
            cg = cgroups.open_existing(e.id)
            if cg is None or not cg.paths:
                continue
            out[e.id] = (time.monotonic(), cg.stats())
        except (OSError, SbxError):
            continue
    return out


def _size(n: int | None) -> str:
    if n is None:
        return "--"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.4g}{unit}" if unit != "B" else f"{n}B"
        n /= 1024
    return str(n)


def _stats_rows(entries, before: dict, after: dict) -> list[dict]:
    rows = []
    for e in entries:
        if e.id not in after:
            continue
        t1, s1 = after[e.id]
        cpu = None
        if e.id in before and s1.cpu_usage_ns is not None and before[e.id][1].cpu_usage_ns is not None:
            t0, s0 = before[e.id]
            if t1 > t0:
                cpu = round((s1.cpu_usage_ns - s0.cpu_usage_ns) / ((t1 - t0) * 1e9) * 100, 2)
        mem_pct = None
        if s1.memory_current is not None and s1.memory_limit:
            mem_pct = round(s1.memory_current / s1.memory_limit * 100, 2)
        rows.append({"id": e.id, "name": e.name, "cpu_percent": cpu, "memory_usage": s1.memory_current,
                     "memory_limit": s1.memory_limit, "memory_percent": mem_pct, "memory_peak": s1.memory_peak,
                     "pids": s1.pids_current, "pids_limit": s1.pids_limit,
                     "io_read_bytes": s1.io_read_bytes, "io_write_bytes": s1.io_write_bytes})
    return rows


def _stats_table(rows) -> list[tuple]:
    t = [("SANDBOX ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "MEM %", "PIDS", "BLOCK I/O")]
    for r in rows:
        cpu = "--" if r["cpu_percent"] is None else f"{r['cpu_percent']:.2f}%"
        mem = f"{_size(r['memory_usage'])} / {_size(r['memory_limit']) if r['memory_limit'] else 'unlimited'}"
        pct = "--" if r["memory_percent"] is None else f"{r['memory_percent']:.2f}%"
        pids = "--" if r["pids"] is None else f"{r['pids']}" + (f" / {r['pids_limit']}" if r["pids_limit"] else "")
        blk = "--" if r["io_read_bytes"] is None else f"{_size(r['io_read_bytes'])} / {_size(r['io_write_bytes'])}"
        t.append((r["id"][:12], r["name"] or "", cpu, mem, pct, pids, blk))
    return t


@click.command("stats", help="Live resource usage (cpu %, memory, pids) from the sandboxes' cgroups.")
@click.option("--no-stream", is_flag=True, help="Print one sample and exit.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.option("--interval", type=float, default=1.0, show_default=True, help="Seconds between samples.")
@click.argument("refs", nargs=-1)
def stats_cmd(no_stream: bool, fmt: str, interval: float, refs) -> int:
    if interval <= 0:
        raise SbxError("--interval must be > 0", where="stats")
    if refs:
        entries = [state.resolve(r) for r in refs]
    else:
        entries = [e for e in state.entries() if e.status in (state.RUNNING, state.PAUSED)]
    before = _sample(entries)
    while True:
        time.sleep(min(interval, 0.5) if no_stream else interval)
        after = _sample(entries)
        rows = _stats_rows(entries, before, after)
        if fmt == "json":
            print(json.dumps(rows, indent=2) if no_stream else json.dumps(rows), flush=True)
        else:
            if not no_stream and sys.stdout.isatty():
                sys.stdout.write("\x1b[2J\x1b[H")  # refresh in place, like top
            _print_table(_stats_table(rows))
            sys.stdout.flush()
        if no_stream:
            return 0
        before = after
        if not refs:
            entries = [e for e in state.entries() if e.status in (state.RUNNING, state.PAUSED)]


# ---------------------------------------------------------------- events

def _event_line(ev: dict) -> str:
    t = ev["time_nano"] / 1e9
    attrs = {k: v for k, v in ev.items() if k not in ("time", "time_nano", "type", "action", "id")}
    tail = ", ".join(f"{k}={v}" for k, v in sorted(attrs.items()))
    return escape(f"{_iso(t)} {ev.get('type', 'sandbox')} {ev.get('action')} {ev.get('id')}" +
                  (f" ({tail})" if tail else ""))


@click.command("events", help="Lifecycle events (create, start, die, oom, pause, unpause, exec_start, kill, stop, "
                              "rename, destroy). Streams new events until interrupted, as docker does; with --until, "
                              "stops at that time.")
@click.option("--since", default=None, help="From this time: unix time, RFC 3339, or a duration ago (10m, 1h30m).")
@click.option("--until", default=None, help="Up to this time (same forms); the stream ends there.")
@click.option("--format", "fmt", default="text", metavar="FORMAT",
              help="text, json (sbx's keys), or a Go template over docker's fields ('{{json .}}', '{{.Action}}').")
@click.option("-f", "--follow", is_flag=True, hidden=True, help="Accepted for compatibility: events always stream.")
@click.option("--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="event=ACTION, type=container, container=ID|NAME (also id=, name=, action=).")
def events_cmd(since, until, fmt: str, follow: bool, filters) -> int:
    from . import dockerview as dv
    now = time.time()
    t_since = events.parse_time(since, now, where="--since") if since else None
    t_until = events.parse_time(until, now, where="--until") if until else None
    want = dv.parse_filters(filters, dv.EVENT_FILTERS, "events --filter")
    template = None
    if fmt not in ("text", "json"):
        template = dv.compile_format(fmt)[1]
    # docker: without --since only new events; with it, the past ones first. An --until in the past
    # prints the window and returns; otherwise the stream runs until then (or until interrupted).
    past = t_since is not None or t_until is not None
    stream = events.follow(t_since, t_until, past=past)
    for ev in stream:
        if not dv.event_matches(ev, want):
            continue
        if template is not None:
            from .gotemplate import TemplateError
            try:
                line = template.render(dv.event_doc(ev))
            except TemplateError as e:
                raise SbxError(f"template: {e}", where="--format") from None
        else:
            line = json.dumps(ev, sort_keys=True) if fmt == "json" else _event_line(ev)
        print(line, flush=True)
    return 0


# ---------------------------------------------------------------- start / restart / rm

def cleanup_cgroup(sid: str) -> None:
    """Remove a dead sandbox's cgroup (the supervisor is gone; anything left in it is killed)."""
    from . import cgroups
    from .cgroups.base import release_lock, try_lock
    fd, had = try_lock(sid)
    if fd is None and had:
        raise SbxError(f"sandbox {sid[:12]}: its cgroup is still held by a live launcher")
    try:
        cg = cgroups.open_existing(sid)
        if cg is not None and cg.paths:
            cg.destroy()
    finally:
        if fd is not None:
            release_lock(sid, fd)


def start(e: state.Entry) -> None:
    from .records import replace

    from .lifecycle import run_detached
    from .spec import options_from_dict, spec_from_dict
    if e.alive and e.status in (state.RUNNING, state.PAUSED):
        return  # already running: nothing to do, as in docker
    if e.alive:
        raise SbxError(f"sandbox {e.id[:12]} is still being started or stopped; try again")
    cleanup_cgroup(e.id)
    # Entries saved before RunOptions kept them in the spec.
    saved = e.config.get("options") or {k: e.config["spec"].get(k) for k in ("name", "policy", "remove")}
    opts = replace(options_from_dict(saved), detach=True, name=e.name)
    run_detached(spec_from_dict(e.config["spec"]), opts, sandbox_id=e.id)


@click.command("start", help="Start stopped sandboxes again from their saved spec (env included).")
@click.argument("refs", nargs=-1, required=True)
def start_cmd(refs) -> int:
    def one(e):
        start(e)
        print(escape(e.name or e.id))
    return _each(refs, one)


@click.command("restart", help="Stop (SIGTERM, wait, SIGKILL) and start again.")
@click.option("-t", "--time", "timeout", type=float, default=STOP_TIMEOUT, show_default=True)
@click.argument("refs", nargs=-1, required=True)
def restart_cmd(timeout: float, refs) -> int:
    def one(e):
        stop(e, timeout)
        start(state.load(e.id) or e)
        events.emit("restart", e.id, e.name)
        print(escape(e.name or e.id))
    return _each(refs, one)


def remove(e: state.Entry, force: bool) -> None:
    from .lifecycle import signal_sandbox, wait_supervisor
    if e.alive and not force:
        raise SbxError(f"sandbox {e.id[:12]} is {e.status}: stop it first or use rm -f")
    if e.alive:
        events.emit("kill", e.id, e.name, signal="SIGKILL")
        signal_sandbox(e, signal.SIGKILL)
        if e.status == state.PAUSED:
            try:
                _cgroup(e, "thaw").thaw()
            except (SbxError, OSError):
                pass
        if not wait_supervisor(e, 15.0):
            _kill_supervisor(e)
    cleanup_cgroup(e.id)
    if state.remove(e.id):
        events.emit("destroy", e.id, e.name)


def _kill_supervisor(e: state.Entry) -> None:
    from .lifecycle import _starttime, wait_supervisor
    pid, start_t = e.state.get("supervisor_pid"), e.state.get("supervisor_start")
    if not pid:
        return
    try:
        pfd = os.pidfd_open(pid)
    except OSError:
        return
    try:
        if _starttime(pid) == start_t:
            signal.pidfd_send_signal(pfd, signal.SIGKILL)
    finally:
        os.close(pfd)
    if not wait_supervisor(e, 10.0):
        raise SbxError(f"sandbox {e.id[:12]}: its supervisor (pid {pid}) does not exit")


@click.command("rm", help="Remove stopped sandboxes (state, cgroup); -f kills running ones first.")
@click.option("-f", "--force", is_flag=True, help="Kill a running sandbox first.")
@click.argument("refs", nargs=-1, required=True)
def rm_cmd(force: bool, refs) -> int:
    def one(e):
        remove(e, force)
        print(escape(e.name or e.id))
    return _each(refs, one)
