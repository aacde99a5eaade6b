"""The sandbox's pid 1: reaps zombies, forwards signals, exits with the workload's status.

The workload is not pid 1, so its signal semantics stay normal (a `kill -TERM
$$` ends it with 143). Signals are taken with sigwaitinfo so we can tell a
terminal-generated signal (si_code SI_KERNEL: the tty already delivered it to
the workload's process group) from one sent by a process (forwarded once).
"""
from __future__ import annotations

import os

from . import facts
from . import syscalls as sc
from .sig import signal

SI_KERNEL = 0x80
FORWARD = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
           signal.SIGWINCH, signal.SIGCONT, signal.SIGALRM)
WAITED = set(FORWARD) | {signal.SIGCHLD}


def set_title(title: str) -> None:
    """Make this process's /proc/PID/cmdline read `title` (what setproctitle does).

    The workload can read pid 1's cmdline: it should show a name, not sbx's host
    command line. The original argv area is overwritten through /proc/self/mem;
    Python keeps its own copies of argv, so nothing in the interpreter reads it.
    Leaves the process dumpable (after a uid change its /proc files would be the
    host root's and the write refused); the caller decides what it is afterwards.
    """
    sc.set_name(title)
    start, end = facts.read_arg_area("self")
    if end <= start:
        return
    data = title.encode()[:end - start - 1].ljust(end - start, b"\0")
    sc.prctl(sc.PR_SET_DUMPABLE, 1)
    fd = os.open("/proc/self/mem", os.O_RDWR | os.O_CLOEXEC)
    try:
        os.pwrite(fd, data, start)
    finally:
        os.close(fd)


def prepare_signals() -> None:
    """Before forking the workload: block what init will wait for; default dispositions so nothing is dropped."""
    for s in WAITED:
        signal.signal(s, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_BLOCK, WAITED)


def reset_for_exec() -> None:
    """In the workload before exec: the dispositions and mask a fresh process expects.

    Python ignores SIGPIPE and SIGXFSZ; an exec'd program would inherit SIG_IGN.
    """
    for s in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP,
              signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGCHLD):
        try:
            signal.signal(s, signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


def status_to_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    return 255


def run_init(workload: int) -> int:
    """Loop until the workload exits; returns the exit code init should exit with."""
    while True:
        info = signal.sigwaitinfo(WAITED)
        if info.si_signo == signal.SIGCHLD:
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    return 255
                if pid == 0:
                    break
                if pid == workload:
                    # Our exit tears down the pid namespace: leftover daemons die with the workload, as in docker.
                    return status_to_code(status)
            continue
        if info.si_code == SI_KERNEL:
            continue
        try:
            os.kill(workload, info.si_signo)
        except ProcessLookupError:
            pass
