"""Where sbx keeps state and caches, and how it writes them (0700/0600, atomic)."""
from __future__ import annotations

import os
import stat

from .errors import SbxError


def is_root() -> bool:
    return os.geteuid() == 0


def state_dir() -> str:
    """Root: /run/sbx. Rootless: $XDG_RUNTIME_DIR/sbx (fallback /tmp/sbx-UID)."""
    env = os.environ.get("SBX_STATE_DIR")
    if env:
        return env
    if is_root():
        return "/run/sbx"
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    return os.path.join(xdg, "sbx") if xdg else f"/tmp/sbx-{os.getuid()}"


def cache_dir() -> str:
    env = os.environ.get("SBX_CACHE_DIR")
    if env:
        return env
    if is_root():
        return "/var/cache/sbx"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "sbx")


def ensure_private_dir(path: str) -> str:
    """Create path (and parents) with 0700; refuse a symlink or a dir owned by someone else."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise SbxError(f"{path} is not a directory (refusing to use it for sbx state)")
    if st.st_uid != os.geteuid():
        raise SbxError(f"{path} is owned by uid {st.st_uid}, not {os.geteuid()}: refusing to use it")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def atomic_write(path: str, data: bytes, mode: int = 0o600) -> None:
    """Write data to path via a temp file and rename, so readers never see half a file."""
    d = os.path.dirname(path) or "."
    tmp = os.path.join(d, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
