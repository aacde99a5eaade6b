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
"""
from __future__ import annotations

import errno
import os
import select
import time

BUF = 65536
DRAIN_TIMEOUT = 2.0  # after the sandbox ended: the pipes' writers are dying with its pid namespace


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


class Relay:
    """Pipes in place of the caller's terminal fds, and the copying between them."""

    def __init__(self, inner: dict[int, int], outer: dict[int, int], devnull_stdin: bool) -> None:
        self.inner = inner  # sandbox fd number -> the pipe end the sandbox gets
        self.outer = outer  # sandbox fd number -> the pipe end sbx keeps
        self.devnull_stdin = devnull_stdin
        self.pending = b""  # stdin bytes read from the terminal, not yet taken by the sandbox
        self.stdin_eof = False

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

    def in_child(self) -> None:
        """In the sandbox's first process: the pipes become fds 0-2 (inherited by init and the workload)."""
        for fd, end in self.inner.items():
            os.dup2(end, fd)  # dup2 clears close-on-exec on the copy
        if self.devnull_stdin:
            nul = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
            os.dup2(nul, 0)
            os.close(nul)
        for end in list(self.inner.values()) + list(self.outer.values()):
            os.close(end)

    def in_parent(self) -> None:
        for end in self.inner.values():
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
            return False
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
