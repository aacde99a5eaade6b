"""sbx: a security-first sandbox runner.

The Python API is what the CLI uses:

    from sandbox import run, resolve
    spec = resolve(["/bin/true"], profile="strict")
    result = run(spec)          # -> sandbox.launch.Result (exit_code, record, ...)

Heavy modules are imported on first use, never at package import.
"""
from __future__ import annotations

__all__ = ["run", "resolve", "SbxError"]

from .errors import SbxError


def run(spec, **kw):
    from .launch import run as _run
    return _run(spec, **kw)


def resolve(argv, profile: str = "strict", **flags):
    from .profiles import resolve as _resolve
    return _resolve(argv, profile=profile, **flags)
