"""The sandbox's standard streams: never a terminal of the caller's.

A workload that holds the caller's tty can change its line discipline, echo and
window size for after it exits, and (where seccomp allows TIOCSTI) type into the
caller's shell. So, as docker does without -t, every one of fds 0-2 that is a
terminal is replaced by a pipe that sbx relays; the sandbox also starts a new
session (setsid in the setup process), so it has no controlling terminal and
/dev/tty cannot be opened in it. Streams that are not terminals (pipes, files,
/dev/null) are handed in as they are, as bwrap does: they reach nothing else.

A terminal stdin is relayed only while sbx is in the terminal's foreground
process group; a background sbx gives the sandbox /dev/null instead of
stopping on SIGTTIN for input nobody typed for it.

Capture mode (the Python API, `Relay.for_api`): each of fds 0-2 can be captured
into a bounded buffer, streamed to a file object, handed a file with a real fd
directly, or /dev/null. Input bytes are given as a sealed, read-only memfd, not a
pipe: a pipe's write end held by sbx would be inherited by every sandbox another
thread starts meanwhile (fork copies all fds), and the workload would never see
EOF. Output beyond max_output is read and dropped (`truncated`), so a chatty or
hostile workload cannot grow the caller's memory, nor block on a full pipe.
"""
from __future__ import annotations

import errno
import os
import select
import time

BUF = 65536
PIPE, STDOUT, DEVNULL = -1, -2, -3  # subprocess's values, so subprocess.PIPE etc. work too
DRAIN_TIMEOUT = 2.0  # after the sandbox ended: the pipes' writers are dying with its pid namespace


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


class Relay:
    """Pipes in place of the caller's terminal fds, and the copying between them."""

    def __init__(self, inner: dict[int, int], outer: dict[int, int], devnull_stdin: bool,
                 sinks: dict | None = None) -> None:
        self.inner = inner  # sandbox fd number -> the pipe end (or file) the sandbox gets
        self.outer = outer  # sandbox fd number -> the pipe end sbx keeps
        self.devnull_stdin = devnull_stdin
        self.pending = b""  # stdin bytes read from the terminal, not yet taken by the sandbox
        self.stdin_eof = False
        self.sinks: dict = sinks or {}  # sandbox fd -> _Sink (capture mode); others go to our own fd of that number

    @classmethod
    def for_caller(cls) -> Relay | None:
        """None when no std stream is a terminal (the common, scripted case costs nothing)."""
        ttys = [fd for fd in (0, 1, 2) if _isatty(fd)]
        if not ttys:
            return None
        inner: dict[int, int] = {}
        outer: dict[int, int] = {}
        devnull_stdin = False
        for fd in ttys:
            if fd == 0:
                try:
                    foreground = os.tcgetpgrp(0) == os.getpgrp()
                except OSError:
                    foreground = False
                if not foreground:
                    devnull_stdin = True
                    continue
                r, w = os.pipe2(os.O_CLOEXEC)
                inner[0], outer[0] = r, w
                os.set_blocking(w, False)
            else:
                r, w = os.pipe2(os.O_CLOEXEC)
                inner[fd], outer[fd] = w, r
        return cls(inner, outer, devnull_stdin)

    @classmethod
    def for_api(cls, *, stdin=None, input: bytes | None = None, stdout=None, stderr=None, text: bool = False,
                max_output: int | None = None) -> Relay:
        """The API's streams. stdin: None (the caller's), DEVNULL or a file with fileno(); input: bytes.
        stdout/stderr: None (the caller's), PIPE (captured), DEVNULL, a file with fileno() (handed in),
        or any object with write() (streamed; str when text); stderr=STDOUT joins stdout."""
        inner: dict[int, int] = {}
        outer: dict[int, int] = {}
        sinks: dict[int, _Sink] = {}
        try:
            if input is not None:
                inner[0] = _sealed(input)
            elif stdin == DEVNULL:
                inner[0] = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
            elif stdin is not None:
                inner[0] = _dup_of(stdin, "stdin")
            if 0 not in inner and _isatty(0):
                inner[0] = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)  # a program's terminal is not for it
            for fd, target in ((1, stdout), (2, stderr)):
                name = "stdout" if fd == 1 else "stderr"
                if fd == 2 and target == STDOUT:
                    inner[2] = os.dup(inner[1]) if 1 in inner else os.dup(1)  # fd 1 is no terminal here
                elif target is None:
                    if _isatty(fd):  # the caller's terminal: relayed, as in the CLI
                        r, w = os.pipe2(os.O_CLOEXEC)
                        inner[fd], outer[fd] = w, r
                elif target == DEVNULL:
                    inner[fd] = os.open("/dev/null", os.O_WRONLY | os.O_CLOEXEC)
                elif isinstance(target, int) and not isinstance(target, bool) and target >= 0:
                    inner[fd] = os.dup(target)
                elif target == PIPE or not _has_fileno(target):
                    if target != PIPE and not callable(getattr(target, "write", None)):
                        raise TypeError(f"{name} must be None, PIPE, DEVNULL, STDOUT (stderr only), a file or an "
                                        f"object with write(), not {type(target).__name__}")
                    r, w = os.pipe2(os.O_CLOEXEC)
                    inner[fd], outer[fd] = w, r
                    sinks[fd] = _Sink(None if target == PIPE else target, text, max_output if target == PIPE else None)
                else:
                    inner[fd] = _dup_of(target, name)
        except BaseException:
            for end in list(inner.values()) + list(outer.values()):
                os.close(end)
            raise
        relay = cls(inner, outer, False, sinks)
        relay.stdin_eof = True  # never read the caller's fd 0
        return relay

    def output(self, fd: int) -> tuple[bytes | str | None, bool]:
        """What capture mode kept of fd 1 or 2 (None unless PIPE) and whether max_output cut it."""
        sink = self.sinks.get(fd)
        if sink is None or sink.target is not None:
            return None, False
        return sink.value(), sink.truncated

    def in_child(self) -> None:
        """In the sandbox's first process: the pipes become fds 0-2 (inherited by init and the workload)."""
        for fd, end in self.inner.items():
            os.dup2(end, fd)  # dup2 clears close-on-exec on the copy
        if self.devnull_stdin:
            nul = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
            os.dup2(nul, 0)
            os.close(nul)
        for end in set(self.inner.values()) | set(self.outer.values()):
            if end > 2:
                os.close(end)

    def in_parent(self) -> None:
        for end in set(self.inner.values()):
            os.close(end)
        self.inner = {}

    def close(self) -> None:
        for end in self.outer.values():
            try:
                os.close(end)
            except OSError:
                pass
        self.outer = {}

    # -- copying

    def read_fds(self) -> list[int]:
        fds = [end for fd, end in self.outer.items() if fd != 0]
        if 0 in self.outer and not self.pending and not self.stdin_eof:
            fds.append(0)  # the caller's terminal
        return fds

    def write_fds(self) -> list[int]:
        return [self.outer[0]] if 0 in self.outer and self.pending else []

    def handle(self, readable: list[int], writable: list[int]) -> None:
        for fd, end in list(self.outer.items()):
            if fd != 0 and end in readable:
                self._copy_out(fd, end)
        if 0 in readable and 0 in self.outer:
            try:
                data = os.read(0, BUF)
            except OSError:
                data = b""
            if data:
                self.pending += data
            else:
                self._end_stdin()
        if 0 in self.outer and self.outer[0] in writable and self.pending:
            try:
                n = os.write(self.outer[0], self.pending)
                self.pending = self.pending[n:]
            except BlockingIOError:
                pass
            except OSError:  # EPIPE: the sandbox closed its stdin
                self.pending = b""
                self._end_stdin()
        if self.stdin_eof and not self.pending and 0 in self.outer:
            os.close(self.outer.pop(0))

    def _end_stdin(self) -> None:
        self.stdin_eof = True

    def _copy_out(self, fd: int, end: int) -> bool:
        try:
            data = os.read(end, BUF)
        except OSError:
            data = b""
        if not data:
            os.close(self.outer.pop(fd))
            if fd in self.sinks:
                self.sinks[fd].close()
            return False
        if fd in self.sinks:
            self.sinks[fd].write(data)
            return True
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(fd, view):]
            except InterruptedError:
                continue
            except OSError as e:
                if e.errno == errno.EAGAIN:
                    select.select([], [fd], [], 1.0)
                    continue
                break  # the caller's terminal went away: drop the output, keep draining
        return True

    def drain(self) -> None:
        """After the sandbox ended: copy what is left in the output pipes, until EOF (bounded)."""
        if 0 in self.outer:
            os.close(self.outer.pop(0))
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while any(fd != 0 for fd in self.outer):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            r, _, _ = select.select(self.read_fds(), [], [], left)
            for fd, end in list(self.outer.items()):
                if end in r:
                    self._copy_out(fd, end)
        self.close()


class _Sink:
    """Where one captured stream goes: a bounded buffer (target None), or target.write()."""

    def __init__(self, target, text: bool, limit: int | None) -> None:
        self.target = target
        self.limit = limit
        self.buf = bytearray()
        self.truncated = False
        self.decoder = None
        if text:
            import codecs
            self.decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def write(self, data: bytes) -> None:
        if self.target is None:
            room = len(data) if self.limit is None else max(0, self.limit - len(self.buf))
            if room < len(data):
                self.truncated = True
            self.buf += data[:room]
            return
        try:
            self.target.write(self.decoder.decode(data) if self.decoder is not None else data)
        except (OSError, ValueError):
            pass  # the caller's file went away: keep draining, as for a terminal

    def close(self) -> None:
        if self.target is not None and self.decoder is not None:
            try:
                self.target.write(self.decoder.decode(b"", final=True))
            except (OSError, ValueError):
                pass

    def value(self) -> bytes | str:
        data = bytes(self.buf)
        return data.decode("utf-8", "replace") if self.decoder is not None else data


def _has_fileno(obj) -> bool:
    try:
        return isinstance(obj.fileno(), int)
    except (AttributeError, OSError, ValueError):
        return False  # io.BytesIO and friends: UnsupportedOperation is an OSError and a ValueError


def _dup_of(obj, what: str) -> int:
    if isinstance(obj, int) and obj >= 0:
        return os.dup(obj)
    if _has_fileno(obj):
        flush = getattr(obj, "flush", None)
        if callable(flush):
            flush()  # what the caller wrote before must come before the sandbox's output
        return os.dup(obj.fileno())
    raise TypeError(f"{what} must be a file object with fileno() or an fd, not {type(obj).__name__}")


def _sealed(data: bytes) -> int:
    """A read-only fd of a memfd holding data, sealed against any change (the workload's stdin)."""
    import fcntl
    fd = os.memfd_create("sbx-input", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
                    | fcntl.F_SEAL_WRITE)
        ro = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)  # a fresh, read-only open at offset 0
    finally:
        os.close(fd)
    return ro


def wait(pidfd: int, relay: Relay | None, timeout: float | None) -> bool:
    """Relay the sandbox's streams until pidfd is readable (True) or timeout passes (False)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        rfds = [pidfd] + (relay.read_fds() if relay else [])
        wfds = relay.write_fds() if relay else []
        try:
            r, w, _ = select.select(rfds, wfds, [], left)
        except InterruptedError:
            continue
        if pidfd in r:
            return True
        if relay is not None:
            relay.handle(r, w)
        if deadline is not None and time.monotonic() >= deadline:
            return False
