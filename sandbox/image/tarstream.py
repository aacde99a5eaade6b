"""A bounded tar reader: ustar/POSIX, GNU long names and base-256 numbers, PAX extended headers.

Why not `tarfile`: its stream mode reads a PAX or GNU long-name header of any declared size into
memory in one piece (a 4 GiB header in a 4 MiB gzip is an OOM), its extraction filters differ
between 3.11 patch releases, and we need neither its extraction nor its seeking. This reader
only parses: it yields one Header at a time, the caller reads or skips that entry's data, and
every size it trusts is capped (PAX/long-name headers at 1 MiB, names at 4096 bytes by the
unpacker). Names stay bytes until the unpacker decides what they mean.
"""
from __future__ import annotations

from dataclasses import dataclass, field

BLOCK = 512
MAX_META = 1 << 20  # a PAX record set or a GNU long name/link larger than this is hostile

REG, AREG, LNK, SYM, CHR, BLK, DIR, FIFO, CONT = b"0", b"\0", b"1", b"2", b"3", b"4", b"5", b"6", b"7"
PAX, GPAX, GNU_LONGNAME, GNU_LONGLINK, GNU_SPARSE = b"x", b"g", b"L", b"K", b"S"
KIND_NAMES = {REG: "file", AREG: "file", CONT: "file", LNK: "hardlink", SYM: "symlink", CHR: "character device",
              BLK: "block device", DIR: "directory", FIFO: "fifo"}


class TarError(Exception):
    """Malformed or hostile tar structure; `entry` names the entry when one is known."""

    def __init__(self, message: str, entry: bytes | None = None):
        super().__init__(message)
        self.entry = entry


@dataclass
class Header:
    name: bytes
    type: bytes
    size: int
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: float = 0.0
    linkname: bytes = b""
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return KIND_NAMES.get(self.type, f"type {self.type!r}")

    def is_file(self) -> bool:
        return self.type in (REG, AREG, CONT)


def _num(field_: bytes, what: str, name: bytes) -> int:
    """An octal field, or GNU base-256 (first byte 0x80); negatives are refused."""
    if field_ and field_[0] & 0x80:
        if field_[0] == 0xFF:
            raise TarError(f"negative {what} in the header", name)
        v = field_[0] & 0x7F
        for b in field_[1:]:
            v = (v << 8) | b
        return v
    s = field_.split(b"\0", 1)[0].strip(b" ")
    if not s:
        return 0
    try:
        return int(s, 8)
    except ValueError:
        raise TarError(f"bad {what} field {s[:20]!r} in the header", name) from None


def _cstr(b: bytes) -> bytes:
    return b.split(b"\0", 1)[0]


class Reader:
    """Iterate a tar stream. `src.read(n)` returns up to n bytes (b'' at the end)."""

    def __init__(self, src):
        self.src = src
        self.offset = 0
        self._left = 0  # data bytes of the current entry not yet consumed (+ its padding in _pad)
        self._pad = 0
        self._global: dict[bytes, bytes] = {}
        self.ended = False

    def _exact(self, n: int, what: str, name: bytes | None = None) -> bytes:
        parts = []
        got = 0
        while got < n:
            b = self.src.read(n - got)
            if not b:
                raise TarError(f"the archive ends in the middle of {what}", name)
            parts.append(b)
            got += len(b)
        self.offset += n
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _block(self) -> bytes:
        """The next 512-byte block, or b'' at a clean end of the stream."""
        b = self.src.read(BLOCK)
        if not b:
            return b""
        if len(b) < BLOCK:
            self.offset += len(b)
            return b + self._exact(BLOCK - len(b), "a header")
        self.offset += BLOCK
        return b

    def _skip(self, n: int, name: bytes | None) -> None:
        while n:
            b = self.src.read(min(n, 1 << 20))
            if not b:
                raise TarError("the archive ends in the middle of an entry's data", name)
            n -= len(b)
            self.offset += len(b)

    def read_data(self, n: int, name: bytes) -> bytes:
        """Up to n bytes of the current entry's data (b'' when it is all read)."""
        n = min(n, self._left)
        if n <= 0:
            return b""
        b = self.src.read(n)
        if not b:
            raise TarError("the archive ends in the middle of an entry's data", name)
        self._left -= len(b)
        self.offset += len(b)
        return b

    def _finish_entry(self, name: bytes | None) -> None:
        if self._left or self._pad:
            self._skip(self._left + self._pad, name)
        self._left = self._pad = 0

    def __iter__(self):
        return self

    def __next__(self) -> Header:
        self._finish_entry(None)
        if self.ended:
            raise StopIteration
        pax: dict[bytes, bytes] = {}
        longname = longlink = None
        while True:
            blk = self._block()
            if not blk:
                # No end-of-archive blocks at all: GNU tar accepts that; so do Go and Docker.
                if pax or longname or longlink:
                    raise TarError("the archive ends after an extended header")
                self.ended = True
                raise StopIteration
            if blk == b"\0" * BLOCK:
                self.ended = True
                raise StopIteration
            h = self._parse(blk, longname)
            if h.type in (PAX, GPAX, GNU_LONGNAME, GNU_LONGLINK):
                size = h.size
                if size > MAX_META:
                    raise TarError(f"an extended header of {size} bytes (more than {MAX_META}): refusing it", h.name)
                data = self._exact(size, "an extended header", h.name)
                self._skip(-size % BLOCK, h.name)
                if h.type == GNU_LONGNAME:
                    longname = _cstr(data)
                elif h.type == GNU_LONGLINK:
                    longlink = _cstr(data)
                else:
                    recs = _pax_records(data, h.name)
                    if h.type == GPAX:
                        self._global.update(recs)
                    else:
                        pax.update(recs)
                continue
            if h.type == GNU_SPARSE or any(k.startswith(b"GNU.sparse.") for k in pax):
                raise TarError("sparse files are not supported", h.name)
            merged = {**self._global, **pax}
            self._apply_pax(h, merged, longlink)
            if h.type in (LNK, SYM, CHR, BLK, DIR, FIFO):
                h.size = 0  # header-only types carry no data whatever the size field says (as Go's archive/tar)
            self._left, self._pad = h.size, -h.size % BLOCK
            return h

    def _parse(self, blk: bytes, longname: bytes | None) -> Header:
        name = _cstr(blk[0:100])
        chk = _num(blk[148:156], "checksum", name)
        unsigned = sum(blk) - sum(blk[148:156]) + 8 * 32  # the field itself counts as spaces
        # Some old tars summed signed bytes: only then is the slow signed sum needed.
        if chk != unsigned and chk != unsigned - 256 * sum(1 for b in blk if b > 127) + \
                256 * sum(1 for b in blk[148:156] if b > 127):
            raise TarError(f"bad header checksum at byte {self.offset - BLOCK} (not a tar archive, or corrupt)", name)
        magic = blk[257:265]
        if magic[:6] == b"ustar\0":  # POSIX: the prefix field extends the name
            prefix = _cstr(blk[345:500])
            if prefix:
                name = prefix + b"/" + name
        if longname is not None:
            name = longname
        return Header(name=name, type=blk[156:157], size=_num(blk[124:136], "size", name),
                      mode=_num(blk[100:108], "mode", name), uid=_num(blk[108:116], "uid", name),
                      gid=_num(blk[116:124], "gid", name), mtime=float(_num(blk[136:148], "mtime", name)),
                      linkname=_cstr(blk[157:257]), devmajor=_num(blk[329:337], "devmajor", name),
                      devminor=_num(blk[337:345], "devminor", name))

    @staticmethod
    def _apply_pax(h: Header, pax: dict[bytes, bytes], longlink: bytes | None) -> None:
        if longlink is not None:
            h.linkname = longlink
        for k, v in pax.items():
            try:
                if k == b"path":
                    h.name = v
                elif k == b"linkpath":
                    h.linkname = v
                elif k == b"size":
                    h.size = int(v)
                elif k == b"uid":
                    h.uid = int(v)
                elif k == b"gid":
                    h.gid = int(v)
                elif k == b"mtime":
                    h.mtime = float(v)
                elif k.startswith(b"SCHILY.xattr."):
                    h.xattrs[k[len(b"SCHILY.xattr."):].decode("utf-8", "surrogateescape")] = v
            except ValueError:
                raise TarError(f"bad PAX value for {k.decode('ascii', 'replace')}", h.name) from None
            if h.size < 0 or h.uid < 0 or h.gid < 0:
                raise TarError(f"negative PAX value for {k.decode('ascii', 'replace')}", h.name)


def _pax_records(data: bytes, name: bytes) -> dict[bytes, bytes]:
    """'LEN KEY=VALUE\\n' records; LEN counts the whole record."""
    out: dict[bytes, bytes] = {}
    pos = 0
    n = len(data)
    while pos < n:
        if data[pos:pos + 1] == b"\0":
            break  # padding
        sp = data.find(b" ", pos, pos + 20)
        if sp < 0:
            raise TarError("malformed PAX record (no length)", name)
        try:
            ln = int(data[pos:sp])
        except ValueError:
            raise TarError("malformed PAX record length", name) from None
        end = pos + ln
        if ln <= sp - pos + 1 or end > n or data[end - 1:end] != b"\n":
            raise TarError("malformed PAX record", name)
        kv = data[sp + 1:end - 1]
        k, eq, v = kv.partition(b"=")
        if not eq or not k:
            raise TarError("malformed PAX record (no key)", name)
        out[k] = v
        pos = end
    return out
