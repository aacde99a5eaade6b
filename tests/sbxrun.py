"""Helpers to drive the real `sbx` CLI from tests (a new interpreter each time, as a user would)."""
from __future__ import annotations

import os
import pwd
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# SBX_TEST_PROFILE lets a developer run the suite against another profile; CI always uses strict.
PROFILE = os.environ.get("SBX_TEST_PROFILE", "strict")


def sbx(*args: str, input: str | bytes | None = None, timeout: float = 60, user: str | None = None,
        env: dict | None = None, check: bool = False, preexec=None) -> subprocess.CompletedProcess:
    """Run `python -m sandbox ARGS`; returns CompletedProcess with text stdout/stderr."""
    cmd = [sys.executable, "-m", "sandbox", *args]
    full_env = dict(os.environ)
    full_env.pop("SBX_DEBUG", None)
    full_env["PYTHONPATH"] = ROOT
    if env:
        full_env.update(env)
    kw = {}
    if preexec is not None:
        kw["preexec_fn"] = preexec
    if user is not None:
        pw = pwd.getpwnam(user)
        cmd = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups", *cmd]
        full_env["HOME"] = "/tmp"
        full_env["XDG_RUNTIME_DIR"] = f"/tmp/sbx-test-rt-{pw.pw_uid}"
        kw["cwd"] = "/tmp"
    if isinstance(input, str):
        input = input.encode()
    p = subprocess.run(cmd, input=input, capture_output=True, timeout=timeout, env=full_env, **kw)
    out = subprocess.CompletedProcess(p.args, p.returncode, p.stdout.decode("utf-8", "replace"),
                                      p.stderr.decode("utf-8", "replace"))
    if check and out.returncode != 0:
        raise AssertionError(f"sbx {' '.join(args)} -> {out.returncode}\nstdout: {out.stdout}\nstderr: {out.stderr}")
    return out


def run_sh(script: str, *flags: str, profile: str | None = None, **kw) -> subprocess.CompletedProcess:
    return sbx("run", "--profile", profile or PROFILE, *flags, "--", "/bin/sh", "-c", script, **kw)


def status_field(text: str, key: str) -> str:
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"{key} not in status output:\n{text}")


def read_text(path) -> str:
    """A file's text, closed at once (the suite turns every ResourceWarning into an error)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def read_bytes(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def close_pipes(p) -> None:
    """Close a Popen's pipes once the process is reaped (the suite errors on unclosed files)."""
    for s in (p.stdin, p.stdout, p.stderr):
        if s is not None:
            try:
                s.close()
            except OSError:
                pass
