"""Without -t the workload never holds a terminal of the caller's (a real pty drives `sbx run`).

Before the relay, fds 0-2 of the workload were the caller's tty: it could turn
off the caller's echo, resize its window after exiting, or (seccomp relaxed)
push keystrokes into the caller's shell with TIOCSTI.
"""
from __future__ import annotations

import fcntl
import os
import select
import struct
import subprocess
import sys
import termios
import time

import pytest

from tests.sbxrun import ROOT

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs sbx as root")

PROBE = r"""
for fd in 0 1 2; do if [ -t $fd ]; then echo "fd$fd:tty"; else echo "fd$fd:notty"; fi; done
if (exec 3</dev/tty) 2>/dev/null; then echo devtty:open; else echo devtty:refused; fi
stty -echo 2>/dev/null && echo stty:changed || echo stty:refused
python3 - <<'EOF'
import fcntl, struct, termios
for fd in (0, 1, 2):
    try:
        fcntl.ioctl(fd, termios.TIOCSTI, b"X")
        print(f"tiocsti{fd}:injected")
    except OSError as e:
        print(f"tiocsti{fd}:{e.errno}")
    try:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 5, 7, 0, 0))
        print(f"winsz{fd}:changed")
    except OSError as e:
        print(f"winsz{fd}:{e.errno}")
EOF
read line && echo "got:$line"
"""


def _spawn_on_pty(args: list[str]):
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))

    def ctty():
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("SBX_DEBUG", None)
    p = subprocess.Popen([sys.executable, "-m", "sandbox", *args], stdin=slave, stdout=slave, stderr=slave,
                         preexec_fn=ctty, env=env, close_fds=True)
    return p, master, slave


class _Reader:
    def __init__(self, master: int) -> None:
        self.master = master
        self.out = b""

    def until(self, needle: bytes, timeout: float = 30) -> bytes:
        deadline = time.monotonic() + timeout
        while needle not in self.out and time.monotonic() < deadline:
            r, _, _ = select.select([self.master], [], [], 0.2)
            if r:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                self.out += chunk
        return self.out


def _read_until(master: int, needle: bytes, timeout: float = 30) -> bytes:
    return _Reader(master).until(needle, timeout)


def _run_probe(profile_args: list[str]) -> tuple[str, list, bytes, int]:
    p, master, slave = _spawn_on_pty(["run", *profile_args, "--", "/bin/sh", "-c", PROBE])
    before = termios.tcgetattr(slave)
    winsz_before = fcntl.ioctl(slave, termios.TIOCGWINSZ, b"\0" * 8)
    try:
        rd = _Reader(master)
        rd.until(b"winsz2:", 30)
        time.sleep(0.2)
        os.write(master, b"typed-by-user\n")
        rd.until(b"got:typed-by-user", 15)
        code = p.wait(30)
        out = rd.until(b"\0", 0.3)
        after = termios.tcgetattr(slave)
        winsz_after = fcntl.ioctl(slave, termios.TIOCGWINSZ, b"\0" * 8)
        assert after == before, "the workload changed the caller's terminal settings"
        assert winsz_after == winsz_before, "the workload changed the caller's window size"
        return out.decode(errors="replace"), after, winsz_after, code
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        os.close(master)
        os.close(slave)


@pytest.mark.parametrize("profile_args", [
    ["--profile", "strict"],
    ["--profile", "default", "--security-opt", "seccomp=unconfined"],  # nothing but the relay stops TIOCSTI here
], ids=["strict", "default-unconfined"])
def test_workload_gets_no_terminal_of_the_caller(profile_args):
    out, _, _, code = _run_probe(profile_args)
    assert code == 0, out
    for fd in (0, 1, 2):
        assert f"fd{fd}:notty" in out, out
        assert f"tiocsti{fd}:injected" not in out, out
        assert f"winsz{fd}:changed" not in out, out
    assert "devtty:refused" in out and "stty:refused" in out, out
    assert "got:typed-by-user" in out, "stdin is no longer relayed: " + out
    assert "X" not in out.replace("XDG", ""), "a keystroke was injected into the caller's terminal"


def test_terminal_interrupt_reaches_the_workload():
    """^C typed at the caller's terminal: the sandbox (a session of its own) gets it through sbx."""
    p, master, slave = _spawn_on_pty(["run", "--", "/bin/sh", "-c", "echo ready; exec sleep 30"])
    try:
        assert b"ready" in _read_until(master, b"ready", 30)
        time.sleep(0.3)
        os.write(master, b"\x03")
        assert p.wait(15) == 130
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        os.close(master)
        os.close(slave)


def test_pipes_are_handed_in_as_they_are():
    """No terminal, no relay: a pipe on stdout is the workload's stdout itself (bwrap's behaviour)."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.run([sys.executable, "-m", "sandbox", "run", "--", "/bin/sh", "-c",
                        "readlink /proc/self/fd/1; cat"], input=b"in\n", capture_output=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    first, rest = p.stdout.split(b"\n", 1)
    assert first.startswith(b"pipe:") and rest == b"in\n"


def test_exec_gets_no_terminal_of_the_caller():
    from tests.sbxrun import sbx
    p = sbx("run", "-d", "--", "/bin/sleep", "60")
    assert p.returncode == 0, p.stderr
    sid = p.stdout.strip()
    try:
        ep, master, slave = _spawn_on_pty(["exec", sid, "/bin/sh", "-c",
                                           "for fd in 0 1 2; do [ -t $fd ] && echo tty$fd || echo notty$fd; done; "
                                           "(exec 3</dev/tty) 2>/dev/null && echo devtty:open || echo devtty:refused"])
        try:
            out = _Reader(master).until(b"devtty:", 30).decode(errors="replace")
            assert ep.wait(30) == 0, out
        finally:
            if ep.poll() is None:
                ep.kill()
                ep.wait()
            os.close(master)
            os.close(slave)
        assert "notty0" in out and "notty1" in out and "notty2" in out and "devtty:refused" in out, out
    finally:
        sbx("rm", "-f", sid)


HOSTILE_OUTPUT = r"printf 'clip\033]52;c;ZXZpbA==\007 title\033]0;owned\007 clear\033[2J bidi\342\200\256txt end\n'"


def _logs_on_pty(sid: str, *extra: str) -> bytes:
    p, master, slave = _spawn_on_pty(["logs", *extra, sid])
    try:
        out = _Reader(master).until(b"end", 30)
        p.wait(30)
        return out
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        os.close(master)
        os.close(slave)


def test_logs_escape_terminal_control_sequences_on_a_terminal():
    """`sbx logs` replayed a workload's OSC 52 (clipboard write), title and clear-screen sequences to
    the reader's terminal. On a terminal they are now shown escaped; --raw and pipes get the bytes."""
    from tests.sbxrun import sbx
    p = sbx("run", "-d", "--", "/bin/sh", "-c", HOSTILE_OUTPUT)
    assert p.returncode == 0, p.stderr
    sid = p.stdout.strip()
    try:
        for _ in range(100):
            if "end" in sbx("logs", sid).stdout:
                break
            time.sleep(0.05)
        shown = _logs_on_pty(sid)
        assert b"\x1b" not in shown and b"\x07" not in shown and "\u202e".encode() not in shown, shown
        assert b"\\x1b]52;c;ZXZpbA==\\x07" in shown and b"\\u202e" in shown, shown
        raw = _logs_on_pty(sid, "--raw")
        assert b"\x1b]52;c;ZXZpbA==\x07" in raw
        piped = sbx("logs", sid)
        assert "\x1b]0;owned\x07" in piped.stdout  # not a terminal: the bytes, as docker gives them
    finally:
        sbx("rm", "-f", sid)
