"""The run record: what was asked, what the kernel had, what was read back, how it ended."""
from __future__ import annotations

import json
import os

from .errors import SbxError


def write_record(path: str, record: dict) -> None:
    """The record at `path`, 0600, written atomically through an exclusively created temp file."""
    from .paths import atomic_write

    data = (json.dumps(record, indent=2, sort_keys=True, default=str) + "\n").encode()
    try:
        atomic_write(os.path.abspath(path), data, mode=0o600)
    except OSError as e:
        raise SbxError(f"cannot write run record: {e.strerror or e}", where=path) from None
