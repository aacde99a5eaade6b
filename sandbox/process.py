"""Process control for sbx's own processes: reaping, parent-death signals, the subreaper, signal forwarding."""
from __future__ import annotations

import _thread
import os
import select
import time

from . import syscalls as sc
from .errors import EXIT_REFUSED
from .sig import signal

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
             signal.SIGWINCH)


def reap(pid: int) -> int:
    """waitpid() for `pid`, retried on EINTR; 0 if it is not (or no longer) our child."""
    while True:
        try:
            return os.waitpid(pid, 0)[1]
        except InterruptedError:
            continue
        except ChildProcessError:
            return 0


def gone(pid: int | None) -> bool:
    """Has `pid` exited (a zombie counts: it runs no more)?"""
    if pid is None:
        return True
    from . import facts
    try:
        return facts.read_stat(pid).state in ("Z", "X")
    except Exception:  # noqa: BLE001 - unreadable means gone
        return True


def wait_exit(pid: int, timeout: float | None) -> bool:
    """Wait until `pid` exits (not reaped); True if it did within `timeout` (None: forever)."""
    pidfd = os.pidfd_open(pid)
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if select.select([pidfd], [], [], left)[0]:
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
    finally:
        os.close(pidfd)


def die_with_parent(expected_parent: int) -> None:
    """SIGKILL when our parent dies; exit at once if it already did (before the signal was armed).

    A uid change clears the parent-death signal, so callers arm it again after one.
    """
    sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != expected_parent:
        os._exit(EXIT_REFUSED)


def stay_dumpable() -> None:
    """Keep our /proc files ours (not the host root's) across an id switch, until confinement."""
    sc.prctl(sc.PR_SET_DUMPABLE, 1)


def close_inherited_fds(first: int = 3) -> None:
    """Every fd from `first` on closes at exec: nothing of the host leaks into an exec'd program."""
    try:
        sc.close_range(first, 0xFFFFFFFF, sc.CLOSE_RANGE_CLOEXEC)
        return
    except OSError:
        pass
    from . import facts
    for fd in facts.list_fds("self"):
        if fd >= first:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass


class Subreaper:
    """Be a child subreaper while some launch is between forking setup and adopting its init.

    Counted, for concurrent launches from several threads; a process that was a
    subreaper already (a service manager, say) is left as it was.
    """

    _lock = _thread.allocate_lock()
    _users = 0
    _was_set = False

    @classmethod
    def enter(cls) -> None:
        with cls._lock:
            if cls._users == 0:
                cls._was_set = sc.prctl_get_int(sc.PR_GET_CHILD_SUBREAPER) != 0
                if not cls._was_set:
                    sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 1)
            cls._users += 1

    @classmethod
    def leave(cls) -> None:
        with cls._lock:
            if cls._users == 0:
                return
            cls._users -= 1
            if cls._users == 0 and not cls._was_set:
                sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 0)


class Forwarder:
    """Signals to sbx go to the sandbox's init (which forwards them to the workload).

    Installed before the first fork, so a SIGTERM that arrives while the
    sandbox is starting is not lost (nor kills sbx and, through the
    parent-death signal, the sandbox): it is held until init exists. The
    sandbox is a session of its own, so a terminal's ^C reaches only sbx, which
    passes it on. Only in the main thread (Python delivers signals only there;
    the API may run sandboxes from worker threads).
    """

    def __init__(self) -> None:
        self._owner = os.getpid()
        self.target: int | None = None
        self.pending: list[int] = []
        self.old: dict = {}
        try:
            first = signal.getsignal(FORWARDED[0])
            signal.signal(FORWARDED[0], first)
        except ValueError:
            return  # not the main thread: leave handlers alone
        for sig in FORWARDED:
            self.old[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signo, _frame) -> None:
        if os.getpid() != self._owner:
            return  # a forked sandbox process before it reset its handlers
        if self.target is None:
            self.pending.append(signo)
            return
        try:
            os.kill(self.target, signo)
        except ProcessLookupError:
            pass

    def arm(self, pid: int) -> None:
        self.target = pid
        while self.pending:
            self._on_signal(self.pending.pop(0), None)

    def restore(self) -> None:
        for sig, h in self.old.items():
            signal.signal(sig, h)
        self.old = {}


def reset_signals_for_sandbox() -> None:
    """In the first sandbox process: default handlers, and the terminal's signals ignored until init
    sets its own (it inherits these)."""
    for sig in FORWARDED:
        signal.signal(sig, signal.SIG_DFL)
    for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP, signal.SIGTSTP):
        signal.signal(sig, signal.SIG_IGN)
