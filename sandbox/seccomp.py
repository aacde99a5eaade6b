"""Seccomp: resolve a profile reference, compile it once (cached), install it in the child.

Parent side, `prepare()`: a warm run hashes the profile bytes plus the facts
the compiled program depends on and reads the cached BPF. It imports neither
libseccomp nor the compiler (sandbox.seccomp_bpf); only a cache miss does.

Child side, `install()`: runs after no_new_privs, just before execve. It loads
the BPF with prctl(PR_SET_SECCOMP) through sandbox.syscalls: no libseccomp, no imports,
one small buffer.
"""
from __future__ import annotations

import os
import stat
import sys

from .digest import sha256
from .errors import SbxError, SpecError

BUILTINS = ("default", "strict")
CACHE_MAGIC = b"SBXBPF1\n"
MAX_PROFILE_BYTES = 4 << 20
BPF_MAXINSNS = 4096
# Bump when the compiler's output for the same input changes in a way a stat of
# seccomp_bpf.py would not catch (e.g. a change in how a wheel is installed).
COMPILER_EPOCH = b"1"


# ------------------------------------------------------------------ references

def _policies_dir() -> str:
    from .paths import builtin_dir
    return builtin_dir("policies")


def builtin_path(name: str) -> str:
    if name not in BUILTINS:
        raise SpecError(f"no built-in seccomp profile '{name}' (have: {', '.join(BUILTINS)}; or give a file path)",
                        where="seccomp")
    return os.path.join(_policies_dir(), "seccomp", f"{name}.json")


def resolve_ref(ref: str) -> str:
    if ref in BUILTINS:
        return builtin_path(ref)
    if "/" in ref or ref.endswith(".json") or os.path.exists(ref):
        return ref
    raise SpecError(f"unknown seccomp profile '{ref}' (built-ins: {', '.join(BUILTINS)}, unconfined; "
                    f"or a path to a Docker/OCI seccomp JSON file)", where="seccomp")


def _read(path: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        raise SpecError(f"cannot open seccomp profile: {e.strerror}", where=path) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SpecError("seccomp profile is not a regular file", where=path)
        if st.st_size > MAX_PROFILE_BYTES:
            raise SpecError(f"seccomp profile is larger than {MAX_PROFILE_BYTES} bytes", where=path)
        chunks = []
        total = 0
        while total <= MAX_PROFILE_BYTES:
            b = os.read(fd, 1 << 16)
            if not b:
                break
            chunks.append(b)
            total += len(b)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _caps(caps) -> frozenset[str]:
    from .values import cap_bare
    return frozenset(cap_bare(c) for c in caps)


# ------------------------------------------------------------------ cache

def _libseccomp_fact() -> bytes:
    """Which libseccomp would compile, as a cheap stat (no dlopen, no ldconfig)."""
    multiarch = getattr(sys.implementation, "_multiarch", "") or ""
    for d in (f"/lib/{multiarch}", f"/usr/lib/{multiarch}", "/usr/lib64", "/lib64", "/usr/lib", "/usr/local/lib"):
        p = os.path.join(d, "libseccomp.so.2")
        try:
            real = os.path.realpath(p)
            st = os.stat(real)
        except OSError:
            continue
        return f"{real}:{st.st_size}:{st.st_mtime_ns}".encode()
    return b"libseccomp:unknown"


def _compiler_fact() -> bytes:
    p = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seccomp_bpf.py")
    try:
        st = os.stat(p)
        return f"{st.st_size}:{st.st_mtime_ns}".encode()
    except OSError:
        return b"compiler:unknown"


def cache_key(data: bytes, caps: frozenset[str]) -> str:
    u = os.uname()
    h = sha256()
    for part in (COMPILER_EPOCH, _compiler_fact(), sha256(data).digest(), ",".join(sorted(caps)).encode(),
                 u.machine.encode(), u.release.encode(), _libseccomp_fact()):
        h.update(len(part).to_bytes(4, "little") + part)
    return h.hexdigest()


def _cache_path(key: str) -> str:
    from .paths import cache_dir
    return os.path.join(cache_dir(), "seccomp", key + ".bpf")


def _cache_get(key: str) -> bytes | None:
    """The cached program, or None if missing, foreign-owned, writable by others or corrupt."""
    from .paths import read_private
    blob = read_private(_cache_path(key), len(CACHE_MAGIC) + 32 + BPF_MAXINSNS * 8)
    if blob is None:
        return None
    head = len(CACHE_MAGIC) + 32
    if len(blob) <= head or not blob.startswith(CACHE_MAGIC):
        return None
    bpf = blob[head:]
    if sha256(bpf).digest() != blob[len(CACHE_MAGIC):head] or len(bpf) % 8:
        return None
    return bpf


def _cache_put(key: str, bpf: bytes) -> None:
    from .paths import atomic_write, cache_dir, ensure_private_dir
    try:
        ensure_private_dir(cache_dir())
        ensure_private_dir(os.path.join(cache_dir(), "seccomp"))
        atomic_write(_cache_path(key), CACHE_MAGIC + sha256(bpf).digest() + bpf, mode=0o600)
    except (OSError, SbxError):
        pass  # the cache only saves time; an unusable cache dir just means compiling every run


# ------------------------------------------------------------------ public API

def compile_file(path: str, data: bytes, caps: frozenset[str]) -> bytes:
    """Parse, validate and compile (cold path: imports libseccomp)."""
    from . import seccomp_bpf
    prof = seccomp_bpf.parse(path, data, seccomp_bpf.resolver())
    bpf = seccomp_bpf.compile_bpf(prof, caps)
    if len(bpf) // 8 > BPF_MAXINSNS:
        raise SpecError(f"compiled filter has {len(bpf) // 8} instructions, over the kernel's {BPF_MAXINSNS}",
                        where=path)
    return bpf


def prepare(ref: str, caps: frozenset[str]) -> bytes | None:
    """BPF program for a profile reference and the kept capabilities; None for 'unconfined'."""
    if ref == "unconfined":
        return None
    path = resolve_ref(ref)
    data = _read(path)
    ncaps = _caps(caps)
    key = cache_key(data, ncaps)
    bpf = _cache_get(key)
    if bpf is None:
        bpf = compile_file(path, data, ncaps)
        _cache_put(key, bpf)
    return bpf


def validate(path: str) -> None:
    """Refuse a bad profile with one line naming file:line:col and the JSON location.

    Compiles it too (with no capabilities and with all of them), because
    libseccomp's own refusals and rule conflicts are errors in the file as well.
    """
    from . import seccomp_bpf
    from .facts import CAP_NAMES
    data = _read(path)
    prof = seccomp_bpf.parse(path, data, seccomp_bpf.resolver())
    for caps in (frozenset(), frozenset(CAP_NAMES)):
        seccomp_bpf.compile_bpf(prof, caps)


def syscall_names() -> set[str]:
    from . import seccomp_bpf
    return seccomp_bpf.syscall_names()


def install(bpf: bytes) -> None:
    """Load the filter into this process (child side; no_new_privs already set).

    No imports and no libseccomp here: this runs after pivot_root and the id
    switch, where the Python installation may not be readable any more.
    """
    n = len(bpf) // 8
    if n == 0 or len(bpf) % 8 or n > BPF_MAXINSNS:
        raise SbxError(f"seccomp: refusing a malformed BPF program ({len(bpf)} bytes)")
    from . import syscalls as sc
    try:
        sc.seccomp_set_filter(bpf)
    except OSError as e:
        err = e.errno or 0
        why = {13: "no_new_privs is not set and CAP_SYS_ADMIN is missing",
               22: "the kernel rejected the program or lacks CONFIG_SECCOMP_FILTER",
               14: "bad program address"}.get(err, os.strerror(err))
        raise SbxError(f"seccomp: cannot install the filter: {why} (errno {err})") from None
