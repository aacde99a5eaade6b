"""sbx: a security-first sandbox runner.

The Python API (sandbox.api; the CLI is built on the same functions):

    import sandbox
    r = sandbox.run(["python3", "-c", "print(6 * 7)"], capture_output=True, text=True, memory="64m")
    r.exit_code, r.stdout                 # 0, '42\\n'
    spec = sandbox.resolve(["/bin/true"], profile="strict", cpus=0.5)   # a Spec, for --explain-like use
    sandbox.run(spec)                      # -> sandbox.Result

run_async() is the asyncio variant. Unknown keywords raise TypeError naming the nearest
valid one; refusals raise SbxError. sandbox/API.md is the reference (python -m sandbox.apidoc).
Heavy modules are imported on first use, never at package import.
"""
from __future__ import annotations

__all__ = ["run", "run_async", "resolve", "Spec", "Result", "SbxError", "ExitError", "PIPE", "STDOUT", "DEVNULL"]

from .errors import SbxError

_LAZY = {"run": "api", "run_async": "api", "resolve": "api", "ExitError": "api", "PIPE": "api", "STDOUT": "api",
         "DEVNULL": "api", "Spec": "spec", "Result": "launch"}


def __getattr__(name: str):
    # `import sandbox` stays as cheap as it was: `sbx run` (the CLI) imports this package first.
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'sandbox' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(f"sandbox.{mod}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
