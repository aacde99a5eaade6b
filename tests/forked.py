"""Run a function in a forked child and get its JSON-able result back.

Kernel state a test changes in the child (a Landlock domain, a seccomp
filter, dropped capabilities, a cgroup it joined) dies with the child, so
the test process itself is never confined.
"""
from __future__ import annotations

import json
import os

from sandbox.errors import SbxError


def in_child(fn) -> dict:
    """fn() -> dict, run in a fork. An SbxError becomes {"sbx_error", "code", "where"};
    any other exception {"exception": "Type: message"}."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            out = fn()
        except SbxError as e:
            out = {"sbx_error": e.message, "code": e.code, "where": e.where}
        except BaseException as e:  # noqa: BLE001 - reported to the parent, never raised in the fork
            out = {"exception": f"{type(e).__name__}: {e}"}
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return json.loads(data)
