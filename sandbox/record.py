"""The run record: what was asked, what the kernel had, what was read back, how it ended."""
from __future__ import annotations

import json
import os

from .errors import SbxError


def write_record(path: str, record: dict) -> None:
    data = (json.dumps(record, indent=2, sort_keys=True, default=str) + "\n").encode()
    d = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(d, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        raise SbxError(f"cannot write run record: {e.strerror}", where=path) from None
