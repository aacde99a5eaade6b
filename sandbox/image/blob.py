"""Blobs: sha256 verification, and a decompressed stream whose digest (the layer's diff_id) is computed as it is read.

Compression is recognised by its magic bytes, never by the media type: docker-archive files
label plain tars `tar.gzip`. gzip (also multi-member, as pigz writes) is decompressed in-process
with zlib; zstd through the `zstd` program (Debian's zstd package), Python 3.11 has no binding.
Every stream is bounded: it raises once more than `max_bytes` come out of it (decompression bombs).
"""
from __future__ import annotations

import os
import subprocess

from ..errors import SbxError

CHUNK = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class BlobError(SbxError):
    """A blob that does not match its digest, or cannot be read/decompressed (exit 125)."""


def _sha256():
    import hashlib  # OpenSSL's sha256 (~1.5 GB/s here, 5x the builtin); images are not on the run path
    return hashlib.sha256()


def verify_fd(fd: int, digest: str, size: int | None, what: str) -> int:
    """Hash the whole file behind fd from offset 0; raise BlobError unless it is `digest` (and `size`)."""
    h = _sha256()
    n = 0
    os.lseek(fd, 0, os.SEEK_SET)
    while True:
        b = os.read(fd, CHUNK)
        if not b:
            break
        h.update(b)
        n += len(b)
        if size is not None and n > size:
            break
    got = "sha256:" + h.hexdigest()
    if size is not None and n != size:
        raise BlobError(f"{what} {digest}: {n if n <= size else 'more than ' + str(size)} bytes, the manifest says "
                        f"{size}: refusing it (nothing stored)")
    if got != digest:
        raise BlobError(f"{what} {digest}: content does not match its digest (got {got}): refusing it (nothing stored)")
    os.lseek(fd, 0, os.SEEK_SET)
    return n


def digest_bytes(data: bytes) -> str:
    h = _sha256()
    h.update(data)
    return "sha256:" + h.hexdigest()


class Stream:
    """The uncompressed bytes of a layer blob, hashed as they are read (diff_id), bounded by max_bytes."""

    def __init__(self, fd: int, max_bytes: int, what: str):
        self.fd = fd
        self.what = what
        self.max_bytes = max_bytes
        self.total = 0
        self._h = _sha256()
        self._buf = b""
        self._pos = 0
        os.lseek(fd, 0, os.SEEK_SET)
        head = os.pread(fd, 4, 0)
        self._proc: subprocess.Popen | None = None
        self._z = None
        if head.startswith(GZIP_MAGIC):
            import zlib
            self.kind = "gzip"
            self._zlib = zlib
            self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif head == ZSTD_MAGIC:
            self.kind = "zstd"
            try:
                self._proc = subprocess.Popen(["zstd", "-dcq"], stdin=fd, stdout=subprocess.PIPE,
                                              stderr=subprocess.PIPE, close_fds=True)
            except FileNotFoundError:
                raise BlobError(f"{what}: a zstd-compressed layer needs the zstd program (apt-get install zstd)") from None
        else:
            self.kind = "tar"

    # -- producing raw uncompressed chunks --------------------------------------------------------
    def _more(self) -> bytes:
        if self.kind == "tar":
            return os.read(self.fd, CHUNK)
        if self.kind == "zstd":
            assert self._proc is not None and self._proc.stdout is not None
            return self._proc.stdout.read1(CHUNK)
        return self._more_gzip()

    def _more_gzip(self) -> bytes:
        z = self._z
        while True:
            if z.unconsumed_tail:
                data = z.unconsumed_tail
            elif z.eof:
                data = z.unused_data or os.read(self.fd, CHUNK)
                while 0 < len(data) < 2:
                    more = os.read(self.fd, CHUNK)
                    if not more:
                        break
                    data += more
                if not data:
                    return b""
                if not data.startswith(GZIP_MAGIC):
                    # zero padding after the last member is tolerated (it is outside the diff_id anyway)
                    if data.strip(b"\0") or self._trailing_nonzero():
                        raise BlobError(f"{self.what}: data after the end of the gzip stream")
                    return b""
                z = self._z = self._zlib.decompressobj(16 + self._zlib.MAX_WBITS)  # next member (pigz, cat)
            else:
                data = os.read(self.fd, CHUNK)
                if not data:
                    raise BlobError(f"{self.what}: the gzip stream is truncated")
            try:
                out = z.decompress(data, CHUNK)
            except self._zlib.error as e:
                raise BlobError(f"{self.what}: corrupt gzip data ({e})") from None
            if out:
                return out

    def _trailing_nonzero(self) -> bool:
        while True:
            b = os.read(self.fd, CHUNK)
            if not b:
                return False
            if b.strip(b"\0"):
                return True

    # -- the reader interface tarstream uses ------------------------------------------------------
    def read(self, n: int) -> bytes:
        """Up to n bytes (fewer only at the end)."""
        if self._pos >= len(self._buf):
            self._buf = self._fill()
            self._pos = 0
            if not self._buf:
                return b""
        if self._pos == 0 and n >= len(self._buf):
            b, self._buf = self._buf, b""
            return b
        b = self._buf[self._pos:self._pos + n]
        self._pos += len(b)
        return b

    def _fill(self) -> bytes:
        b = self._more()
        if b:
            self.total += len(b)
            if self.total > self.max_bytes:
                raise SizeCapError(self.max_bytes, self.what)
            self._h.update(b)
        return b

    def drain(self) -> None:
        """Read to the end (the digest covers every byte, also after the tar's end blocks)."""
        while self._fill():
            pass
        self._buf, self._pos = b"", 0
        if self._proc is not None:
            err = self._proc.stderr.read(4096) if self._proc.stderr else b""
            if self._proc.wait() != 0:
                raise BlobError(f"{self.what}: zstd failed: {err.decode('utf-8', 'replace').strip()[:200]}")

    def digest(self) -> str:
        return "sha256:" + self._h.hexdigest()

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        if self._proc is not None:
            for f in (self._proc.stdout, self._proc.stderr):
                if f is not None:
                    f.close()


class SizeCapError(BlobError):
    def __init__(self, cap: int, what: str):
        super().__init__(f"{what}: more than {human(cap)} of uncompressed data: over the unpacked size cap "
                         f"(--max-size {human(cap)}); refusing it (a decompression bomb?)")


def human(n: int) -> str:
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div:
            v = n / div
            return f"{v:.0f}{unit}" if v == int(v) else f"{v:.1f}{unit}"
    return f"{n}B"
