"""The one place sbx runs skopeo: registry login/logout, raw manifests, and copying an image into a staging dir.

Why skopeo (Debian's package, podman's own stack, containers/image): it already implements the
distribution protocol, bearer-token and basic auth, the containers-auth.json file (checked
against the registry before it is written; 0600, O_EXCL temp file + rename; REGISTRY_AUTH_FILE
and podman's default locations), `/etc/containers/certs.d/HOST:PORT` and `--cert-dir`, mirrors
and proxies, and verifies each blob's digest while it downloads. sbx verifies everything again
itself before anything reaches the store (store.py), so skopeo is trusted for transport, not for
integrity.

Every argument comes from a validated Reference or a path sbx made; no shell is involved. skopeo
dies with sbx (PR_SET_PDEATHSIG), so a killed pull leaves no download running.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass

from ..errors import SbxError, escape

MAX_MANIFEST = 4 << 20


class RegistryError(SbxError):
    """skopeo (or the registry behind it) refused: one line with the registry's reason."""


@dataclass(frozen=True)
class Options:
    """What podman calls the common transport flags; None means skopeo's (podman's) default."""

    authfile: str | None = None
    cert_dir: str | None = None
    tls_verify: bool | None = None  # None: on, with certs.d

    def warn_insecure(self, what: str) -> None:
        if self.tls_verify is False:
            sys.stderr.write(f"sbx: warning: TLS verification is off for {escape(what)} (--tls-verify=false): "
                             "the registry's identity is not checked and credentials may be sent in the clear\n")


def binary() -> str:
    path = shutil.which("skopeo")
    if not path:
        raise SbxError("skopeo is not installed (it talks to registries for sbx): apt-get install skopeo")
    return path


def _pdeathsig() -> None:
    from .. import syscalls
    syscalls.prctl(syscalls.PR_SET_PDEATHSIG, signal.SIGKILL)


def _reason(stderr: bytes) -> str:
    """skopeo's fatal line is logrus text: level=fatal msg="..."; keep only the message."""
    text = stderr.decode("utf-8", "replace")
    msgs = re.findall(r'level=(?:fatal|error) msg="((?:[^"\\]|\\.)*)"', text)
    if msgs:
        msg = msgs[-1].encode().decode("unicode_escape", "replace") if "\\" in msgs[-1] else msgs[-1]
    else:
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        msg = lines[-1] if lines else "failed"
        msg = re.sub(r"^Error:\s*", "", msg)
    msg = " ".join(msg.replace("* ", "").split())  # Go's multi-error lists: one line
    return msg[:600]


def _run(args: list[str], *, what: str, input: bytes | None = None, env: dict | None = None,
         stdout=subprocess.PIPE, timeout: float | None = None) -> subprocess.CompletedProcess:
    try:
        p = subprocess.run([binary(), *args], input=input, stdout=stdout, stderr=subprocess.PIPE,
                           env=env, preexec_fn=_pdeathsig, timeout=timeout, close_fds=True)
    except subprocess.TimeoutExpired:
        raise RegistryError(f"{what}: no answer within {timeout:.0f}s") from None
    if p.returncode != 0:
        raise RegistryError(f"{what}: {_reason(p.stderr or b'')}")
    return p


def _tls_args(opts: Options, prefix: str = "") -> list[str]:
    out = []
    if opts.cert_dir:
        out.append(f"--{prefix}cert-dir={opts.cert_dir}")
    if opts.tls_verify is not None:
        out.append(f"--{prefix}tls-verify={'true' if opts.tls_verify else 'false'}")
    return out


def _auth_args(opts: Options, prefix: str = "") -> list[str]:
    return [f"--{prefix}authfile={opts.authfile}"] if opts.authfile else []


def login(registry: str, user: str, password: str, opts: Options) -> str:
    """Checks the credentials against the registry, then stores them (skopeo login: containers-auth.json)."""
    opts.warn_insecure(registry)
    p = _run(["login", *_auth_args(opts), *_tls_args(opts), "--username", user, "--password-stdin", "--", registry],
             what=f"login to {registry}", input=password.encode(), timeout=120)
    return p.stdout.decode("utf-8", "replace").strip()


def logout(registry: str | None, opts: Options) -> str:
    args = ["logout", *_auth_args(opts)]
    args += ["--all"] if registry is None else ["--", registry]
    p = _run(args, what=f"logout from {registry or 'every registry'}", timeout=60)
    return p.stdout.decode("utf-8", "replace").strip()


def inspect_raw(ref: str, opts: Options, what: str) -> bytes:
    """The manifest (or index) exactly as the registry serves it; bounded."""
    p = _run(["inspect", "--raw", "--retry-times=1", *_auth_args(opts), *_tls_args(opts), "--", ref],
             what=what, timeout=300)
    if len(p.stdout) > MAX_MANIFEST:
        raise RegistryError(f"{what}: the manifest is larger than {MAX_MANIFEST} bytes")
    return p.stdout


def inspect_config(ref: str, opts: Options, what: str) -> bytes:
    """The config blob of a (pinned) image, as the registry serves it; sbx checks its digest."""
    p = _run(["inspect", "--raw", "--config", "--retry-times=1", *_auth_args(opts), *_tls_args(opts), "--", ref],
             what=what, timeout=300)
    if len(p.stdout) > MAX_MANIFEST * 2:
        raise RegistryError(f"{what}: the config is larger than {MAX_MANIFEST * 2} bytes")
    return p.stdout


def _copy_args(src: str, dest_dir: str, opts: Options, progress: bool) -> list[str]:
    args = ["copy", "--retry-times=1", *_auth_args(opts, "src-"), *_tls_args(opts, "src-")]
    if not progress:
        args.append("--quiet")
    return args + ["--", src, "dir:" + dest_dir]


def _copy_env(tmpdir: str) -> dict:
    env = dict(os.environ)
    env["TMPDIR"] = tmpdir  # archives are extracted there: inside the store, reaped with the staging dir
    return env


def copy_to_dir(src: str, dest_dir: str, opts: Options, *, what: str, progress: bool, tmpdir: str) -> None:
    """skopeo copy SRC dir:DEST (blobs named by hex digest + manifest.json), TMPDIR inside the store."""
    _run(_copy_args(src, dest_dir, opts, progress), what=what, env=_copy_env(tmpdir),
         stdout=(sys.stderr.fileno() if progress else subprocess.DEVNULL))


class Copy:
    """A running `skopeo copy SRC dir:DEST`, for unpacking each blob as soon as it is complete.

    skopeo's dir: destination writes a blob to a temporary name and renames it to its digest when
    it is whole, so a blob under its final name can be read (sbx still verifies it). wait()
    returns once that file exists, or raises once skopeo has failed (with skopeo's reason).
    """

    def __init__(self, src: str, dest_dir: str, opts: Options, *, what: str, progress: bool, tmpdir: str):
        self.what = what
        self.dest = dest_dir
        self.proc = subprocess.Popen([binary(), *_copy_args(src, dest_dir, opts, progress)], env=_copy_env(tmpdir),
                                     stdout=(sys.stderr.fileno() if progress else subprocess.DEVNULL),
                                     stderr=subprocess.PIPE, preexec_fn=_pdeathsig, close_fds=True)
        self._err: bytes | None = None

    def failed(self) -> RegistryError | None:
        rc = self.proc.poll()
        if rc is None or rc == 0:
            return None
        return RegistryError(f"{self.what}: {_reason(self._stderr())}")

    def _stderr(self) -> bytes:
        if self._err is None:
            self._err = self.proc.stderr.read() if self.proc.stderr else b""
        return self._err

    def wait(self, name: str) -> None:
        import time
        path = os.path.join(self.dest, name)
        delay = 0.002
        while not os.path.exists(path):
            rc = self.proc.poll()
            if rc is not None and not os.path.exists(path):
                raise self.failed() or RegistryError(f"{self.what}: skopeo finished without blob {name}")
            time.sleep(delay)
            delay = min(delay * 2, 0.02)

    def finish(self) -> None:
        self.proc.wait()
        err = self.failed()
        if err is not None:
            raise err
        self._stderr()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()
