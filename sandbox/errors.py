"""One error type per layer, rendered once at the CLI edge as a single line."""
from __future__ import annotations

# Exit codes follow docker/podman and timeout(1).
EXIT_TIMEOUT = 124
EXIT_REFUSED = 125
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127


class SbxError(Exception):
    """A refusal or failure of sbx itself: one line for the user, an exit code.

    `where` names the file:line or the control concerned, so the message can be
    read without a traceback.
    """

    def __init__(self, message: str, code: int = EXIT_REFUSED, where: str | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.where = where
        self.from_sandbox = False  # sent by a sandbox process (launch prefers those as the cause)

    def line(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        return "sbx: " + escape(text)


class SpecError(SbxError):
    """Bad profile, policy or flag input."""


class VerifyError(SbxError):
    """A requested control was found missing after launch (fail closed)."""


# Characters that reorder or hide text without being control characters: bidi embeddings,
# overrides and isolates (the "Trojan Source" set), zero-width spaces/joiners, line and
# paragraph separators, invisible fillers, tag characters. A hostile name could otherwise
# make a terminal show "sbx-init" for "tini\u202e" or hide a suffix entirely.
_INVISIBLE_RANGES = (
    (0x200B, 0x200F), (0x2028, 0x202E), (0x2060, 0x206F), (0x180B, 0x180F), (0xFE00, 0xFE0F),
    (0xFFF9, 0xFFFB), (0x1D173, 0x1D17A), (0xE0000, 0xE007F),
)
_INVISIBLE = frozenset({0x00AD, 0x034F, 0x061C, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x3164, 0xFEFF, 0xFFA0})


def invisible(o: int) -> bool:
    """Is code point `o` a bidi control, zero-width or otherwise invisible formatting character?"""
    if o < 0xAD:
        return False
    return o in _INVISIBLE or any(lo <= o <= hi for lo, hi in _INVISIBLE_RANGES)


def escape(text: str) -> str:
    """Escape control, bidi and zero-width characters so hostile names cannot drive or fool the terminal.

    Control characters become \\xNN, the invisible/bidi ones \\uNNNN (\\UNNNNNNNN above the BMP).
    """
    out = []
    for ch in text:
        o = ord(ch)
        if o < 0x20 or o == 0x7F or 0x80 <= o < 0xA0:
            out.append(f"\\x{o:02x}")
        elif o >= 0xAD and invisible(o):
            out.append(f"\\u{o:04x}" if o <= 0xFFFF else f"\\U{o:08x}")
        else:
            out.append(ch)
    return "".join(out)


def escape_output(data: bytes) -> bytes:
    """A workload's output made safe for the reader's terminal (`sbx logs` on a tty).

    Escape sequences (ESC: OSC 52 clipboard writes, titles, screen clears), every
    other C0/C1 control but tab, DEL, bytes that are not UTF-8, and the
    invisible/bidi code points are shown as \\xNN / \\uNNNN; newlines are the
    caller's line breaks and never reach here.
    """
    text = data.decode("utf-8", "surrogateescape")
    out = []
    for ch in text:
        o = ord(ch)
        if 0xDC80 <= o <= 0xDCFF:  # a byte that was not valid UTF-8
            out.append(f"\\x{o - 0xDC00:02x}")
        elif (o < 0x20 and ch != "\t") or o == 0x7F:
            out.append(f"\\x{o:02x}")
        elif 0x80 <= o < 0xA0 or invisible(o):
            out.append(f"\\u{o:04x}" if o <= 0xFFFF else f"\\U{o:08x}")
        else:
            out.append(ch)
    return "".join(out).encode("utf-8")
