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


def run(spec, *, name: str | None = None, policy: str | None = None, **kw):
    """Run the sandbox `spec` (from resolve()) to completion; returns a launch.Result.

    name and policy are run options: the policy (built-in name or YAML path) is
    enforced at admission inside the launch.
    """
    from .launch import run as _run
    from .spec import run_options
    opts = run_options({k: v for k, v in (("name", name), ("policy", policy)) if v is not None})
    return _run(spec, options=opts, **kw)


def resolve(argv, profile: str = "strict", **flags):
    """Profile + flags (the CLI's names: memory="512m", cap_add=[...]) -> Spec."""
    from .profiles import resolve as _resolve
    from .spec import RUN_OPTION_FLAGS
    for k in flags:
        if k in RUN_OPTION_FLAGS:
            raise TypeError(f"resolve() got the run option {k!r}: give it to run(spec, {k}=...) instead")
    return _resolve(argv, profile=profile, **flags)
