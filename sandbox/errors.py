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


def escape(text: str) -> str:
    """Escape control characters so hostile names cannot drive the terminal."""
    out = []
    for ch in text:
        o = ord(ch)
        if o < 0x20 or o == 0x7F or 0x80 <= o < 0xA0:
            out.append(f"\\x{o:02x}")
        else:
            out.append(ch)
    return "".join(out)
