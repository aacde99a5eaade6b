"""Detached sandboxes: `sbx run -d` forks a small per-sandbox supervisor, daemonless.

    sbx run -d (CLI)                          returns the id once the workload runs and is verified
     └─ (intermediate, setsid, exits)         so the supervisor is re-parented and has no terminal
         └─ sbx-supervisor                    launch.run(spec): parent of the sandbox, holds its locks
             ├─ log pump thread               the workload's stdout/stderr pipes -> sandbox.log (rotated)
             └─ init -> workload               (launch.py's tree)

The supervisor holds <dir>/supervisor.lock for its whole life: if it is killed
the lock frees, `ps` shows the entry as exited and `rm` cleans it (the sandbox
itself dies with it: every sandbox process has a parent-death signal). It
reports started/failed to the CLI over a pipe, records state and events, and
forwards SIGTERM/SIGINT/SIGHUP/... to the sandbox's init (launch._wait does).

Log format: one record per line, as in the CRI log format:
    <RFC 3339 nano UTC> <stdout|stderr> <F|P> <bytes>
P marks a partial line (longer than LINE_MAX, or cut by EOF is still F);
readers join P records to the next F of the same stream.
"""
from __future__ import annotations

import json
import os
import select
import signal
import sys
import threading
import time

from . import events, state
from .errors import EXIT_REFUSED, SbxError
from .spec import RunOptions, Spec

LOG_NAME = "sandbox.log"
LOG_MAX_BYTES = 10 * 1024 * 1024  # per file
LOG_FILES = 2  # sandbox.log + sandbox.log.1: at most 20 MiB per sandbox
LINE_MAX = 16 * 1024
START_TIMEOUT = 90.0  # launch's own setup timeout is 30 s; this only guards a wedged supervisor


# ---------------------------------------------------------------- logs

def _stamp(t_ns: int) -> bytes:
    s, ns = divmod(t_ns, 1_000_000_000)
    return (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s)) + f".{ns:09d}Z").encode()


class LogWriter:
    """Writes stream-tagged lines to <dir>/sandbox.log, rotating at max_bytes, keeping `files` files."""

    def __init__(self, d: str, max_bytes: int = LOG_MAX_BYTES, files: int = LOG_FILES) -> None:
        self.path = os.path.join(d, LOG_NAME)
        self.max_bytes = max_bytes
        self.files = max(1, files)
        self.fd = self._open()
        self.size = os.fstat(self.fd).st_size
        self.last_err = b""

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)

    def _rotate(self) -> None:
        os.close(self.fd)
        for i in range(self.files - 1, 0, -1):
            src = self.path if i == 1 else f"{self.path}.{i - 1}"
            try:
                os.replace(src, f"{self.path}.{i}")
            except FileNotFoundError:
                pass
        if self.files == 1:
            os.unlink(self.path)
        self.fd = self._open()
        self.size = 0

    def write(self, stream: bytes, tag: bytes, data: bytes) -> None:
        rec = b"%s %s %s %s\n" % (_stamp(time.time_ns()), stream, tag, data)
        if self.size and self.size + len(rec) > self.max_bytes:
            self._rotate()
        view = memoryview(rec)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        self.size += len(rec)
        if stream == b"stderr" and tag == b"F" and data:
            self.last_err = data

    def pump(self, fds: dict[int, bytes]) -> None:
        """Copy each pipe (fd -> stream name) into the log until every pipe reaches EOF."""
        bufs = {fd: b"" for fd in fds}
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        live = set(fds)
        while live:
            for fd, _ in poller.poll():
                try:
                    chunk = os.read(fd, 65536)
                except InterruptedError:
                    continue
                except OSError:
                    chunk = b""
                stream = fds[fd]
                if not chunk:
                    if bufs[fd]:
                        self.write(stream, b"F", bufs[fd])
                        bufs[fd] = b""
                    poller.unregister(fd)
                    live.discard(fd)
                    os.close(fd)
                    continue
                buf = bufs[fd] + chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    self._emit_line(stream, line)
                while len(buf) > LINE_MAX:
                    self.write(stream, b"P", buf[:LINE_MAX])
                    buf = buf[LINE_MAX:]
                bufs[fd] = buf

    def _emit_line(self, stream: bytes, line: bytes) -> None:
        while len(line) > LINE_MAX:
            self.write(stream, b"P", line[:LINE_MAX])
            line = line[LINE_MAX:]
        self.write(stream, b"F", line)

    def close(self) -> None:
        os.close(self.fd)


def log_files(d: str) -> list[str]:
    """Oldest first."""
    base = os.path.join(d, LOG_NAME)
    rotated = []
    for name in os.listdir(d):
        if name.startswith(LOG_NAME + ".") and name[len(LOG_NAME) + 1:].isdigit():
            rotated.append((int(name[len(LOG_NAME) + 1:]), os.path.join(d, name)))
    out = [p for _, p in sorted(rotated, reverse=True)]
    if os.path.exists(base):
        out.append(base)
    return out


def parse_log_line(line: bytes) -> tuple[str, str, bool, bytes] | None:
    """(timestamp, stream, complete, data) from one record; None for a malformed one."""
    parts = line.split(b" ", 3)
    if len(parts) < 3 or parts[1] not in (b"stdout", b"stderr") or parts[2] not in (b"F", b"P"):
        return None
    return parts[0].decode("ascii", "replace"), parts[1].decode(), parts[2] == b"F", \
        (parts[3] if len(parts) == 4 else b"")


# ---------------------------------------------------------------- run -d

def run_detached(spec: Spec, options: RunOptions | None = None, *, sandbox_id: str | None = None) -> str:
    """Start spec in the background; return its id once the workload runs and is verified.

    sandbox_id: re-create an existing (stopped) sandbox from its saved entry (`sbx start`).
    Raises SbxError (the supervisor's refusal, as one line) if the sandbox does not start.
    """

    options = options or RunOptions()
    if options.policy:
        # Refuse before any state exists (the supervisor's launch admits again): a fresh sandbox is
        # not created, a stopped one (`sbx start`) stays stopped, under the policy as it is now.
        from .admission import admit
        admit(spec, options)
    if sandbox_id is None:
        sid = create_entry(spec, options)
        d = state.sandbox_dir(sid)
    else:
        sid = sandbox_id
        d = state.sandbox_dir(sid)
    r, w = os.pipe2(os.O_CLOEXEC)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child; never returns into the CLI's stack
        code = EXIT_REFUSED
        try:
            os.close(r)
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
            code = _supervise(spec, options, sid, d, w)
        except BaseException:  # noqa: BLE001
            if os.environ.get("SBX_DEBUG"):
                import traceback
                traceback.print_exc()
        os._exit(code)
    os.close(w)
    try:
        while True:
            try:
                os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue
        msg = _read_report(r, time.monotonic() + START_TIMEOUT)
    finally:
        os.close(r)
    if msg is None:
        raise SbxError(f"sandbox {sid[:12]}: the supervisor died before the workload started")
    if "error" in msg:
        raise SbxError(msg["error"], code=int(msg.get("code", EXIT_REFUSED)))
    return sid


def create_entry(spec: Spec, options: RunOptions | None = None) -> str:
    """Save a sandbox without starting it (`sbx create`; `run -d` starts it next). Returns its id."""
    from .profiles import new_id
    options = options or RunOptions()
    sid = new_id()
    config = {"id": sid, "name": options.name, "created": time.time(), "spec": spec.to_dict(),
              "options": options.to_dict()}
    state.create(sid, config)
    events.emit("create", sid, options.name)
    return sid


def _read_report(fd: int, deadline: float) -> dict | None:
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            return {"error": "timed out waiting for the sandbox to start"}
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            return None
        buf += chunk
    try:
        return json.loads(buf.split(b"\n", 1)[0])
    except ValueError:
        return None


def _close_fds_except(keep: set[int]) -> None:
    from . import facts
    for fd in facts.list_fds("self"):
        if fd > 2 and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def _starttime(pid: int) -> int | None:
    from . import facts
    try:
        return facts.read_stat(pid).starttime
    except Exception:  # noqa: BLE001 - gone already
        return None


def _supervise(spec: Spec, options: RunOptions, sid: str, d: str, report_fd: int) -> int:
    """The supervisor's body (in the grandchild). Returns its exit code."""
    from . import syscalls as sc

    _close_fds_except({report_fd})
    # The caller's umask is kept, as for a foreground run: mounts.py creates the sandbox's root dirs
    # under it (a 077 umask makes them untraversable for the sandbox uid). State files set their own modes.
    os.chdir("/")
    try:
        sc.set_name("sbx-supervisor")
    except Exception:  # noqa: BLE001 - cosmetic
        pass
    report = {"fd": report_fd}

    def send(obj: dict) -> None:
        fd = report.pop("fd", None)
        if fd is None:
            return
        try:
            os.write(fd, (json.dumps(obj) + "\n").encode())
        except OSError:
            pass  # the CLI went away: the sandbox runs on, as docker's would
        os.close(fd)

    try:
        lock_fd = state.hold_supervisor_lock(d)
    except SbxError as e:
        send({"error": e.line()[5:], "code": e.code})
        return EXIT_REFUSED
    devnull = os.open("/dev/null", os.O_RDWR)
    os.dup2(devnull, 0)
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    os.dup2(out_w, 1)  # dup2 clears close-on-exec: the workload inherits these as its stdout/stderr
    os.dup2(err_w, 2)
    for fd in (devnull, out_w, err_w):
        os.close(fd)
    writer = LogWriter(d)
    pump = threading.Thread(target=writer.pump, args=({out_r: b"stdout", err_r: b"stderr"},), daemon=True)
    pump.start()
    # Python would ignore SIGPIPE anyway; SIGTERM etc. before the sandbox is up just end us (and it, by pdeathsig).
    drop = state.delete_marker()
    state.update(sid, status=state.CREATED, supervisor_pid=os.getpid(), supervisor_start=_starttime(os.getpid()),
                 started_at=drop, finished_at=drop, exit_code=drop, oom_killed=False, paused_at=drop,
                 paused_total=0.0, error=drop, pid=drop, init_pid=drop, init_start=drop, timed_out=drop,
                 network=drop)
    started = {}

    def on_started(_sid, init_pid, workload_pid, record=None):
        record = record if isinstance(record, dict) else {}
        started["t"] = time.time()
        state.update(sid, status=state.RUNNING, pid=workload_pid, init_pid=init_pid,
                     init_start=_starttime(init_pid), started_at=started["t"],
                     verification=record.get("verification"), cgroup=record.get("cgroup"),
                     idmap=record.get("idmap"), notes=record.get("notes"), features=record.get("features"),
                     startup_ms=record.get("startup_ms"), lsm_label=record.get("lsm_label"),
                     landlock_abi=record.get("landlock_abi"), network=record.get("network"),
                     mounts=record.get("mounts"))
        events.emit("start", sid, _current_name(sid, options.name))
        send({"started": sid})

    from . import launch
    error = None
    oom = timed_out = False
    try:
        result = launch.run(spec, options=options, sandbox_id=sid, on_started=on_started)
        code, oom, timed_out = result.exit_code, result.oom_killed, result.timed_out
    except SbxError as e:
        code, error = e.code, e.line()
    except BaseException as e:  # noqa: BLE001 - the supervisor must always record an end
        code, error = EXIT_REFUSED, f"sbx: supervisor failed: {type(e).__name__}: {e}"
    if error:
        try:
            os.write(2, (error + "\n").encode())
        except OSError:
            pass
    # Our copies of the pipes go; the pump sees EOF once the sandbox's (dead) processes released theirs.
    nul = os.open("/dev/null", os.O_WRONLY)
    os.dup2(nul, 1)
    os.dup2(nul, 2)
    os.close(nul)
    pump.join(5.0)
    finished = time.time()

    def paused_total(st: dict) -> float:
        total = float(st.get("paused_total", 0.0))
        if st.get("paused_at"):
            total += max(0.0, finished - st["paused_at"])
        return total

    state.update(sid, status=state.EXITED, exit_code=code, finished_at=finished, oom_killed=oom,
                 timed_out=timed_out, error=error or state.delete_marker(), paused_total=paused_total,
                 paused_at=state.delete_marker())
    name = _current_name(sid, options.name)  # `sbx rename` may have renamed it while it ran
    if oom:
        events.emit("oom", sid, name)
    events.emit("die", sid, name, exit_code=code)
    if "t" not in started:
        why = error[5:] if error and error.startswith("sbx: ") else None
        if why is None:
            last = writer.last_err.decode("utf-8", "replace")
            why = f"sandbox {sid[:12]} exited with {code} before it started" + (f": {last}" if last else "")
        send({"error": why, "code": code})
    writer.close()
    if options.remove:
        if state.remove(sid):
            events.emit("destroy", sid, name)
    os.close(lock_fd)
    return 0


def _current_name(sid: str, default: str | None) -> str | None:
    e = state.load(sid)
    return e.name if e is not None else default


# ---------------------------------------------------------------- signals to a running sandbox

def open_init(entry: state.Entry) -> int | None:
    """A pidfd for the sandbox's init, or None if it is gone. The recorded start time guards pid reuse."""
    pid, start = entry.state.get("init_pid"), entry.state.get("init_start")
    if not pid or start is None:
        return None
    try:
        pfd = os.pidfd_open(pid)
    except OSError:
        return None
    if _starttime(pid) != start:
        os.close(pfd)
        return None
    return pfd


def signal_sandbox(entry: state.Entry, sig: int) -> bool:
    """Send sig to the sandbox's init (which forwards it to the workload; SIGKILL ends the whole sandbox)."""
    pfd = open_init(entry)
    if pfd is None:
        return False
    try:
        signal.pidfd_send_signal(pfd, sig)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(pfd)


def wait_supervisor(entry: state.Entry, timeout: float) -> bool:
    """Wait until the supervisor has recorded the end and exited (its lock frees). True if it did."""
    deadline = time.monotonic() + timeout
    while state.supervisor_alive(entry.dir):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def wait_init(entry: state.Entry, timeout: float) -> bool:
    """Wait for the sandbox's init to exit; True if it did within timeout."""
    pfd = open_init(entry)
    if pfd is None:
        return True
    try:
        r, _, _ = select.select([pfd], [], [], max(0.0, timeout))
        return bool(r)
    finally:
        os.close(pfd)
