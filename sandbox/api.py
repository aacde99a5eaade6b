"""The Python API for programs: `run` (and `run_async`) in the spirit of subprocess.run.

    import sandbox
    r = sandbox.run(["python3", "-c", "print(6 * 7)"], capture_output=True, text=True,
                    memory="64m", timeout=5)
    r.exit_code, r.stdout            # (0, '42\\n')

Every keyword is checked: an unknown one is a TypeError naming the nearest valid
name (a misspelled `memroy=` never runs a sandbox without its memory cap), and
a command must be a list of arguments (a string is split only with shlex=True).
Options are the `sbx run` flags by their long names (memory, cpus, pids_limit,
network, volume, mount, env, user, cap_add, ...), with Python values: a list
where the flag may repeat (a single string is one item), a dict for env.

Sandboxes are independent: run() may be called from several threads at once
(see sandbox/examples/pool.py); each call forks its own sandbox and waits for it.
"""
from __future__ import annotations

from _thread import _local

from .stdio import DEVNULL, PIPE, STDOUT

TYPE_CHECKING = False  # typing costs ~10 ms to import; annotations are strings
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import IO, Any

    from .launch import Result
    from .spec import Spec

# (OPTIONS, the accepted option names, is computed on access: module __getattr__ below.)
__all__ = ["run", "run_async", "resolve", "PIPE", "STDOUT", "DEVNULL", "DEFAULT_MAX_OUTPUT", "ExitError"]

DEFAULT_MAX_OUTPUT = 16 * 1024 * 1024  # per captured stream; the rest is read and dropped

# `sbx run` flags that may be given more than once (a list in Python).
_MULTI = frozenset({"cap_add", "cap_drop", "security_opt", "ulimit", "publish", "add_host", "dns", "env",
                    "env_file", "volume", "mount"})
# Run options (spec.RunOptions) that run() takes: how this run is handled, not the sandbox. -d and --rm
# belong to the CLI's detached supervisor.
_RUN_OPTIONS = frozenset({"name", "policy", "record"})
_INTERNAL = frozenset({"hostname_default"})  # resolve()'s, set from name


_hooks = _local()  # per thread: run_async's on_started hook for the run() it makes


def _options() -> frozenset[str]:
    """run()'s options: resolve()'s and the run options."""
    return _spec_options() | _RUN_OPTIONS


def _spec_options() -> frozenset[str]:
    """resolve()'s options: the `sbx run` flags that describe the sandbox."""
    from .profiles import FLAGS
    return FLAGS - _INTERNAL


def __getattr__(name: str):
    if name == "OPTIONS":
        return _options()
    raise AttributeError(name)


class _Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, text: str) -> None:
        self.lines.extend(t for t in text.splitlines() if t)

    def flush(self) -> None:
        pass


class ExitError(Exception):
    """run(..., check=True) and the workload did not exit 0 (subprocess's CalledProcessError)."""

    def __init__(self, result: Result) -> None:
        self.result = result
        super().__init__(f"sandbox {result.sandbox_id[:12]} exited with {result.exit_code}")


_OWN = {"run": ("profile", "input", "capture_output", "stdin", "stdout", "stderr", "text", "timeout", "check",
                 "max_output", "shlex"),
        "resolve": ("profile", "shlex")}


def _flags(func: str, options: dict) -> dict:
    from .profiles import check_flags
    if func == "resolve":
        for k in options:
            if k in _RUN_OPTIONS or k in ("detach", "rm"):
                raise TypeError(f"resolve() got the run option {k!r}: give it to run(spec, {k}=...) instead")
    check_flags(func, options, _spec_options(), _OWN[func] + tuple(_RUN_OPTIONS))
    out = {}
    for k, v in options.items():
        if k == "env" and isinstance(v, dict):
            v = [f"{ek}={ev}" for ek, ev in v.items()]
        elif k in _MULTI and isinstance(v, str):
            v = [v]
        elif k in _MULTI and v is not None:
            v = list(v)
        out[k] = v
    return out


def _argv(func: str, cmd, use_shlex: bool) -> list[str]:
    from .profiles import check_argv
    if isinstance(cmd, str) and use_shlex:
        import shlex
        return shlex.split(cmd)
    return list(check_argv(func, cmd))


def resolve(cmd: Sequence[str] | str, profile: str = "strict", *, shlex: bool = False, **options: Any) -> Spec:
    """Build the Spec `run` would use: the profile (a built-in name or a YAML path) plus options.

    Same checks as run(): unknown options are a TypeError, a string command needs shlex=True,
    bad values raise SbxError (exit code 125 in the CLI) naming the flag or the file:line.
    """
    return _resolve("resolve", cmd, profile, shlex, options)


def _resolve(func: str, cmd, profile: str, use_shlex: bool, options: dict, name: str | None = None) -> Spec:
    from .profiles import resolve as _profiles_resolve
    flags = _flags(func, options)
    if name is not None:
        flags["hostname_default"] = name  # as `sbx run --name`: the hostname unless one is given
    return _profiles_resolve(_argv(func, cmd, use_shlex), profile=profile, **flags)


def run(cmd: Sequence[str] | str | Spec, *, profile: str = "strict", input: bytes | str | None = None,
        capture_output: bool = False, stdin: IO | int | None = None, stdout: IO | int | None = None,
        stderr: IO | int | None = None, text: bool = False, timeout: float | None = None, check: bool = False,
        max_output: int | None = DEFAULT_MAX_OUTPUT, shlex: bool = False, **options: Any) -> Result:
    """Run cmd in a sandbox and wait for it; return a Result (exit_code, stdout, stderr, record...).

    cmd: a list of arguments, a Spec from resolve() (then no options), or a string with shlex=True.
    profile: "strict" (default), "default" or a profile YAML path.
    input: bytes (or str) given as the workload's stdin: a sealed read-only file, so it ends with EOF
        even while other threads start sandboxes (a pipe's write end would be inherited by them).
    capture_output: stdout and stderr captured into Result.stdout/.stderr (same as stdout=PIPE, stderr=PIPE).
    stdin/stdout/stderr: None (this process's own; a terminal is never handed in), PIPE, DEVNULL,
        STDOUT (stderr only), a file object with fileno() (handed in), or any object with write()
        (streamed as the output arrives).
    text: captured and streamed output as str (UTF-8, undecodable bytes replaced); input may be str.
    timeout: seconds; the whole sandbox is killed then and the Result has timed_out=True, exit_code 124.
    check: raise ExitError if the exit code is not 0.
    max_output: bytes kept per captured stream (None: no cap); beyond it output is dropped and
        Result.stdout_truncated/stderr_truncated is set.
    **options: `sbx run` flags by their long names: memory="64m", cpus=0.5, pids_limit=32, network="bridge",
        volume=["data:/data:rw"], env={"K": "V"}, user="1000", ... (see sandbox.api.OPTIONS); the run
        options name, policy (admission, enforced inside the launch) and record (a file) also with a Spec.
    sbx's own messages (the OOM killer struck, a command not found) are in Result.record["messages"],
    not on this process's stderr.
    Raises SbxError when sbx refuses the sandbox (bad option value, policy, host lacks a control),
    TypeError for an unknown keyword or a string command.
    """
    from .profiles import check_flags
    from .records import replace
    from .spec import Spec, run_options

    check_flags("run", options, _options(), _OWN["run"])
    opts = run_options({k: options.pop(k) for k in list(options) if k in _RUN_OPTIONS})
    if isinstance(cmd, Spec):
        if options:
            raise TypeError(f"run(): options ({', '.join(sorted(options))}) build a Spec; pass them to "
                            "resolve(), or give run() a command instead of a Spec")
        spec = cmd
    else:
        spec = _resolve("run", cmd, profile, shlex, options, opts.name)
    if timeout is not None:
        if timeout <= 0:
            raise ValueError("timeout must be > 0 seconds")
        spec = replace(spec, timeout=float(timeout))
    if capture_output:
        if stdout is not None or stderr is not None:
            raise ValueError("capture_output may not be used with stdout or stderr")
        stdout = stderr = PIPE
    if input is not None:
        if stdin is not None:
            raise ValueError("stdin and input arguments may not both be used")
        if isinstance(input, str):
            input = input.encode()
        if not isinstance(input, (bytes, bytearray, memoryview)):
            raise TypeError(f"input must be bytes (or str), not {type(input).__name__}")
    if max_output is not None and max_output < 0:
        raise ValueError("max_output must be >= 0 or None")

    from . import launch
    from . import stdio as _stdio
    made: list = []

    def relay():
        if stdin is None and input is None and stdout is None and stderr is None:
            return None
        made.append(_stdio.Relay.for_api(stdin=stdin, input=bytes(input) if input is not None else None,
                                         stdout=stdout, stderr=stderr, text=text, max_output=max_output))
        return made[0]

    said = _Lines()  # sbx's own one-line messages (OOM kill, command not found...): the record's, not our stderr
    result = launch.run(spec, options=opts, stdio=relay, on_started=getattr(_hooks, "on_started", None),
                        stderr=said)
    result.record["messages"] = said.lines
    if made:
        result.stdout, result.stdout_truncated = made[0].output(1)
        result.stderr, result.stderr_truncated = made[0].output(2)
    if opts.record:
        from .record import write_record
        write_record(opts.record, result.record)
    if check and result.exit_code != 0:
        raise ExitError(result)
    return result


async def run_async(cmd: Sequence[str] | str | Spec, **kwargs: Any) -> Result:
    """run() for asyncio: the sandbox runs from a worker thread; the event loop stays free.

    Same arguments as run(). Cancelling the awaiting task kills the sandbox (SIGKILL to its
    init, which takes the whole sandbox with it) and then raises CancelledError.
    """
    import asyncio
    loop = asyncio.get_running_loop()
    started: dict = {}
    fut = loop.run_in_executor(None, lambda: _run_tracked(cmd, kwargs, started))
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        started["cancel"] = True  # a sandbox still starting is killed as soon as it has an init
        _kill(started)
        try:
            await fut
        except Exception:  # noqa: BLE001 - it was cancelled; its own end does not matter now
            pass
        raise


def _kill(started: dict) -> None:
    import os

    from .sig import signal
    pid = started.get("init")
    if pid is not None:
        try:
            os.kill(pid, signal.SIGKILL)  # our child until we reap it: the pid cannot be someone else's
        except ProcessLookupError:
            pass


def _run_tracked(cmd, kwargs: dict, started: dict) -> Result:
    """run() in a worker thread, noting the sandbox's init pid (for cancellation) as it starts."""
    def on_started(_sid, init_pid, _workload, record=None):
        started["init"] = init_pid
        if started.get("cancel"):
            _kill(started)

    _hooks.on_started = on_started
    try:
        return run(cmd, **kwargs)
    finally:
        _hooks.on_started = None
