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


def data_dir() -> str:
    """Images and their unpacked layers. Root: /var/lib/sbx. Rootless: $XDG_DATA_HOME/sbx (~/.local/share/sbx)."""
    env = os.environ.get("SBX_DATA_DIR")
    if env:
        return env
    if is_root():
        return "/var/lib/sbx"
    xdg = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
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


def read_private(path: str, limit: int) -> bytes | None:
    """A cache or state file's bytes, or None unless it is a regular file of ours that nobody else
    can write (a cache planted by someone else must never decide what a sandbox gets)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022 or st.st_size > limit:
            return None
        return os.read(fd, limit + 1)
    except OSError:
        return None
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes, mode: int = 0o600) -> None:
    """Write data to path via a temp file and rename, so readers never see half a file.

    The temp file has an unguessable name and is created exclusively (O_EXCL,
    O_NOFOLLOW) in the target's own directory, so nobody can pre-create it, own
    it, or point it elsewhere with a symlink.
    """
    d = os.path.dirname(path) or "."
    for _ in range(16):
        tmp = os.path.join(d, f".{os.path.basename(path)}.{os.urandom(8).hex()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"cannot create a temporary file next to {path}")
    try:
        try:
            os.fchmod(fd, mode)  # the umask does not decide who may read it
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def builtin_dir(kind: str) -> str:
    """profiles/ or policies/ as the package sees them: sandbox/builtin_profiles and builtin_policies.

    One lookup for a checkout and an installed wheel: in the checkout those are
    symlinks to the top-level profiles/ and policies/ (the product's layout),
    in a wheel the copied data packages.
    """
    name = {"profiles": "builtin_profiles", "policies": "builtin_policies"}[kind]
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), name)
