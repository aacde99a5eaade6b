"""The messages between sbx and its sandbox processes, named and documented once.

Two pipes connect sbx (the parent) with every process of a starting sandbox:
the status pipe carries framed messages up (sandbox -> sbx), the control pipe
one-byte tokens down (sbx -> sandbox). Init and the workload share two more
one-way pipes of their own (GO and JOINED below). Both ends in the sandbox are
close-on-exec: no workload ever holds one.

    sbx                       setup                 init (pid 1)                 workload
     │ fork ──────────────────▶│
     │                         │ unshare user,mnt,pid,net,uts,ipc
     │                         │ fork ───────────────▶│
     │◀──────── INIT(pid) ─────│ exit                 │ waits
     │ write uid/gid maps (and attach the veth)       │
     │ ─────────── MAPS_WRITTEN ─────────────────────▶│ open sources (clone the -v trees)
     │◀──────── IDMAP(tree fds) ──────────────────────│ waits (only with idmapped binds)
     │ pidfd_getfd the trees, idmap them              │
     │ ─────────── IDMAPPED ─────────────────────────▶│ become root, hostname
     │                                                │ fork ─────────────────────────▶│ waits on GO
     │◀─────────────────────── WORKLOAD_FORKED ───────│ mounts, pivot_root, network
     │ create the cgroup, put init and workload in it │
     │ ─────────── IN_CGROUP ────────────────────────▶│ unshare cgroup (rooted at its cgroup)
     │                                                │ ─────────── GO ───────────────▶│ setns(pid 1's cgroup ns)
     │                                                │◀────────── JOINED ─────────────│
     │◀─────────────────────── INIT_CONFINED ─────────│ reaps, forwards signals        │ rlimits, Landlock, MAC,
     │◀──────────────────────────────────────────────────────── READY ─────────────────│ caps, nnp, fds, seccomp
     │ verify workload and init from /proc (fail closed: SIGKILL, exit 125)             │ parked
     │ ─────────── RELEASE ───────────────────────────────────────────────────────────▶│ execve
     │◀─────── EOF (the exec happened: the pipe is close-on-exec) or EXEC_FAILED ───────│

`sbx exec` uses the same workload half: its child waits for EXEC_IN_CGROUP,
joins the namespaces, runs the same confinement, sends READY, waits for RELEASE.
Any process that fails sends ERROR (naming its stage) and exits 125.

Messages are small dicts framed as a 2-byte length plus a marshal blob: marshal
is built into the interpreter (json costs ~7 ms of imports on every start), a
frame stays below PIPE_BUF so writes from several processes never interleave,
and only sbx's own code ever writes these pipes.
"""
from __future__ import annotations

import marshal
import os
import select
import time

from .errors import EXIT_REFUSED, SbxError

MAX_MSG = 4000  # one framed message, below PIPE_BUF
SETUP_TIMEOUT = 30.0

# Tokens, sbx -> sandbox (control pipe)
MAPS_WRITTEN = b"2"  # to init: its uid/gid maps exist; it may become root of its namespace
IN_CGROUP = b"3"  # to init: init and the workload are in the sandbox's cgroup; sbx adopted init
RELEASE = b"G"  # to the parked workload (or exec'd command): verified, exec now
EXEC_IN_CGROUP = b"1"  # to an `sbx exec` child: it is in the sandbox's cgroup
IDMAPPED = b"I"  # to init: sbx idmapped the -v trees it sent (sandbox.volumes); it may attach them

# Tokens, init <-> workload (their own pipes)
GO = b"g"  # init -> workload: the root is built and init has the sandbox's cgroup namespace
JOINED = b"j"  # workload -> init: joined that namespace (init may stop being dumpable)

# Messages, sandbox -> sbx (status pipe): the key names the message
INIT = "init"  # {"init": pid of init, host view}            from setup
WORKLOAD_FORKED = "workload"  # {"workload": "forked"}       from init
READY = "ready"  # {"ready": {"landlock_abi": N}}            from the workload, parked before execve
INIT_CONFINED = "confined"  # {"confined": "init"}           from init, before sbx may release
IDMAP = "idmap"  # {"idmap": [fd numbers in init]}            from init: its clones of -v sources, to idmap
ERROR = "error"  # {"error": text, "code", "where", "stage"}  from any process, then exit 125
EXEC_FAILED = "exec_error"  # {"exec_error": strerror, "code": 126|127, "argv0"}
PROGRESS = (INIT, WORKLOAD_FORKED, READY, INIT_CONFINED, IDMAP)


class ExecFailed(Exception):
    """The workload (or exec'd command) could not execve: 126/127 like a shell, not a refusal."""

    def __init__(self, msg: dict) -> None:
        super().__init__(msg.get(EXEC_FAILED))
        self.msg = msg

    @property
    def code(self) -> int:
        return int(self.msg.get("code", 126))


def _close(fd: int | None) -> None:
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass


class Channel:
    """The status and control pipes of one starting sandbox (or one `sbx exec`)."""

    def __init__(self) -> None:
        self.status_r, self.status_w = os.pipe2(os.O_CLOEXEC)  # sandbox -> sbx, framed messages
        self.ctl_r, self.ctl_w = os.pipe2(os.O_CLOEXEC)  # sbx -> sandbox, tokens
        self._buf = bytearray()
        self._early: list[dict] = []

    # -- the sandbox side

    def send(self, kind: str, value: object = None, **extra: object) -> None:
        obj = {kind: value, **extra}
        data = marshal.dumps(obj)
        if len(data) > MAX_MSG:
            data = marshal.dumps({k: (v[:1000] if isinstance(v, str) else v) for k, v in obj.items()})[:MAX_MSG]
        os.write(self.status_w, len(data).to_bytes(2, "big") + data)

    def wait(self, token: bytes) -> None:
        """Block until sbx sends `token`; anything else (sbx died: EOF, or refused) ends this process."""
        if os.read(self.ctl_r, 1) != token:
            os._exit(EXIT_REFUSED)  # never continue half set up

    def sbx_gone(self) -> bool:
        """EOF already on the control pipe (sbx died after its last token)."""
        return bool(select.select([self.ctl_r], [], [], 0)[0])

    def _drop(self, *names: str) -> None:
        # Each end is closed once and forgotten (-1): closing a number twice could close
        # another thread's file that reused it.
        for name in names:
            fd = getattr(self, name)
            if fd >= 0:
                _close(fd)
                setattr(self, name, -1)

    def child_close(self) -> None:
        self._drop("status_r", "ctl_w")

    # -- sbx's side

    def parent_close(self) -> None:
        self._drop("status_w", "ctl_r")

    def give(self, token: bytes) -> None:
        try:
            os.write(self.ctl_w, token)
        except BrokenPipeError:
            # Every sandbox process that could read it is gone; the launch's abort reports why.
            raise SbxError("the sandbox's processes exited during setup") from None

    def close(self) -> None:
        self._drop("status_r", "status_w", "ctl_r", "ctl_w")

    def _read(self, deadline: float | None) -> dict | None:
        """Next message; None on EOF (every sandbox-side end is closed: exec'd or dead)."""
        buf = self._buf
        while len(buf) < 2 or len(buf) < 2 + int.from_bytes(buf[:2], "big"):
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self.status_r], [], [], left)[0]:
                    raise SbxError("sandbox setup timed out")
            chunk = os.read(self.status_r, 4096)
            if not chunk:
                return None
            buf.extend(chunk)
        n = int.from_bytes(buf[:2], "big")
        blob = bytes(buf[2:2 + n])
        del buf[:2 + n]
        try:
            msg = marshal.loads(blob)
        except (ValueError, EOFError, TypeError):
            msg = None
        if not isinstance(msg, dict):
            return {ERROR: "garbled message from the sandbox", "code": EXIT_REFUSED}
        return msg

    def expect(self, kind: str) -> dict:
        """The next message of `kind`; ERROR and EXEC_FAILED are raised at once.

        Setup, init and the workload write to the same pipe, so a later message
        can overtake an earlier one (the workload's READY before setup's INIT is
        possible); such a message is kept for the expect() that wants it.
        """
        for i, m in enumerate(self._early):
            if kind in m:
                return self._early.pop(i)
        while True:
            msg = self._read(time.monotonic() + SETUP_TIMEOUT)
            if msg is None:
                raise SbxError(f"sandbox setup died before '{kind}'")
            if ERROR in msg:
                raise sandbox_error(msg)
            if EXEC_FAILED in msg:
                raise ExecFailed(msg)
            if kind in msg:
                return msg
            if not any(k in msg for k in PROGRESS):
                raise SbxError(f"sandbox setup sent an unknown message {sorted(msg)}")
            self._early.append(msg)

    def after_release(self) -> None:
        """After RELEASE: EOF means the exec happened; EXEC_FAILED and ERROR are raised."""
        msg = self._read(time.monotonic() + SETUP_TIMEOUT)
        if msg is not None and EXEC_FAILED in msg:
            raise ExecFailed(msg)
        if msg is not None and ERROR in msg:
            raise sandbox_error(msg)

    def pending_error(self, sandbox_gone: bool) -> SbxError | None:
        """The ERROR a failed sandbox process already sent, if any.

        When the sandbox is gone its last message is on its way: wait for it (up
        to 1 s; EOF comes as soon as its processes are gone). Otherwise only what
        is already in the pipe counts.
        """
        deadline = time.monotonic() + (1.0 if sandbox_gone else 0.05)
        for m in self._early:
            if ERROR in m:
                return sandbox_error(m)
        while True:
            try:
                if not sandbox_gone and len(self._buf) < 2 and not select.select([self.status_r], [], [], 0)[0]:
                    return None
                msg = self._read(deadline)
            except (SbxError, OSError):
                return None
            if msg is None:
                return None
            if ERROR in msg:
                return sandbox_error(msg)


def sandbox_error(msg: dict) -> SbxError:
    e = SbxError(msg[ERROR], code=msg.get("code", EXIT_REFUSED), where=msg.get("where"))
    e.from_sandbox = True
    return e


class Steps:
    """The stage a sandbox process is in, for its ERROR message: `step("mounts", mounts.setup, spec)`."""

    def __init__(self, first: str) -> None:
        self.name = first

    def __call__(self, name: str, fn, *args, **kw):
        self.name = name
        return fn(*args, **kw)


def die(chan: Channel, e: BaseException, stage: str) -> None:
    """Report why this sandbox process failed (one line, naming the stage) and exit 125. Never returns."""
    if os.environ.get("SBX_DEBUG"):
        try:
            import traceback  # not preloaded: after pivot_root this import may fail, and that is fine
            traceback.print_exception(e)
        except ImportError:
            pass
    try:
        if isinstance(e, SbxError):
            chan.send(ERROR, e.message, code=e.code, where=e.where, stage=stage)
        else:
            tb = e.__traceback__
            while tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            loc = f"{tb.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno}" if tb else "?"
            chan.send(ERROR, f"{stage} failed: {type(e).__name__}: {e} ({loc})", code=EXIT_REFUSED, stage=stage)
    finally:
        os._exit(EXIT_REFUSED)
