"""`sbx run`: flags -> Spec -> launch. The CLI adds nothing the API does not have.

The option table below drives both the click command (help, error messages)
and a small click-free parser used for the common case, because importing
click costs ~20-30 ms of a ~90 ms cold start. Anything the fast parser does not
recognise (help, typos, odd spellings) falls back to click for its messages.
"""
from __future__ import annotations

# (names, dest, kind, type, help). kind: "flag" | "value" | "multi".
OPTIONS: tuple[tuple[tuple[str, ...], str, str, type, str], ...] = (
    (("--profile",), "profile", "value", str, "Built-in profile name or a YAML path (default: strict)."),
    (("--rootfs",), "rootfs", "value", str, "Use DIR as the root (pivot_root) instead of the host view."),
    (("-u", "--user"), "user", "value", str, "UID[:GID] inside the sandbox."),
    (("--cap-add",), "cap_add", "multi", str, "Add a capability (profiles that allow it)."),
    (("--cap-drop",), "cap_drop", "multi", str, "Drop a capability."),
    (("--security-opt",), "security_opt", "multi", str,
     "apparmor=P, label=type:T,level:L, seccomp=FILE|unconfined, no-new-privileges, landlock=LEVEL"),
    (("-m", "--memory"), "memory", "value", str, "Memory limit (e.g. 512m)."),
    (("--memory-swap",), "memory_swap", "value", str, "Memory+swap total (-1 unlimited)."),
    (("--cpus",), "cpus", "value", float, "CPU quota in cores."),
    (("--cpu-shares",), "cpu_shares", "value", int, "Relative CPU weight (soft)."),
    (("--cpuset-cpus",), "cpuset_cpus", "value", str, "CPUs allowed (0-2,4)."),
    (("--cpuset-mems",), "cpuset_mems", "value", str, "Memory nodes allowed."),
    (("--pids-limit",), "pids_limit", "value", int, "Max processes."),
    (("--ulimit",), "ulimit", "multi", str, "NAME=SOFT[:HARD]"),
    (("--network", "--net"), "network", "value", str, "none | loopback | bridge"),
    (("-p", "--publish"), "publish", "multi", str, "[HOSTIP:]HOSTPORT:CTRPORT[/tcp|udp]"),
    (("-e", "--env"), "env", "multi", str, "K=V (K alone takes the caller's value)"),
    (("--env-file",), "env_file", "multi", str, "File of K=V lines."),
    (("-v", "--volume"), "volume", "multi", str, "SRC:DST[:ro|rw]"),
    (("-w", "--workdir"), "workdir", "value", str, "Working directory inside."),
    (("--hostname",), "hostname", "value", str, "Hostname inside."),
    (("--read-only",), "read_only", "flag", bool, "Read-only root (strict has it already)."),
    (("--name",), "name", "value", str, "Name for the sandbox."),
    (("-d", "--detach"), "detach", "flag", bool, "Run in the background; print the id."),
    (("--rm",), "rm", "flag", bool, "Remove the sandbox's state when it exits."),
    (("--timeout",), "timeout", "value", float, "Kill the whole sandbox after SEC seconds (exit 124)."),
    (("--policy",), "policy", "value", str, "Admission policy (file or built-in name)."),
    (("--explain",), "explain", "flag", bool, "Print the resolved Spec and exit without running."),
    (("--record",), "record", "value", str, "Write a JSON run record to FILE."),
)


# option name -> (dest, kind, type)
_BY_NAME: dict[str, tuple[str, str, type]] = {n: (dest, kind, typ) for names, dest, kind, typ, _ in OPTIONS
                                             for n in names}


def fast_parse(args: list[str]) -> dict | None:
    """Parse `run` arguments without click; None means "let click handle it" (help, errors, oddities)."""
    kw: dict = {dest: (() if kind == "multi" else (False if kind == "flag" else None))
                for _, dest, kind, _, _ in OPTIONS}
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            kw["cmd"] = args[i + 1:]
            break
        if not a.startswith("-") or a == "-":
            kw["cmd"] = args[i:]
            break
        name, eq, val = a.partition("=") if a.startswith("--") else (a, "", "")
        opt = _BY_NAME.get(name)
        if opt is None:
            return None
        dest, kind, typ = opt
        if kind == "flag":
            if eq:
                return None
            kw[dest] = True
            i += 1
            continue
        if not eq:
            if i + 1 >= len(args):
                return None
            val = args[i + 1]
            i += 2
        else:
            i += 1
        try:
            typed = typ(val)
        except ValueError:
            return None
        if kind == "multi":
            kw[dest] = kw[dest] + (typed,)
        else:
            kw[dest] = typed
    else:
        kw["cmd"] = []
    kw["profile"] = kw["profile"] or "strict"
    return kw


def do_run(profile: str, explain: bool, record: str | None, cmd, **kw) -> int:
    if not cmd:
        # A usage error, refused before the spec cache (whose entry for these flags would carry no argv).
        from .errors import SpecError
        raise SpecError("no command given (usage: sbx run [OPTIONS] [--] CMD [ARG...])", where="run")
    from .speccache import resolve

    spec = resolve(list(cmd), profile=profile, record=record, **kw)
    if explain:
        if spec.policy:
            from .admission import admit
            admit(spec)  # launch admits again for real; --explain says now whether it would
        import json
        print(json.dumps(spec.to_dict(), indent=2, sort_keys=True))
        return 0
    if spec.detach:
        from .lifecycle import run_detached
        print(run_detached(spec), flush=True)
        return 0
    from .launch import run
    result = run(spec)
    if record:
        from .record import write_record
        write_record(record, result.record)
    if result.timed_out:
        import sys
        sys.stderr.write(f"sbx: --timeout {spec.timeout:g}s expired, sandbox killed\n")
    return result.exit_code


def build_command(name: str, run, help: str):
    """A click command with run's option table (`run`, and `create`, which saves instead of starting)."""
    import click

    def callback(**kw):
        return run(kw.pop("profile") or "strict", kw.pop("explain"), kw.pop("record"), kw.pop("cmd"), **kw)

    params = [click.Argument(["cmd"], nargs=-1, required=False, type=click.UNPROCESSED)]
    for names, dest, kind, typ, hlp in OPTIONS:
        decls = list(names) + [dest]
        if kind == "flag":
            params.append(click.Option(decls, is_flag=True, default=False, help=hlp))
        else:
            params.append(click.Option(decls, multiple=kind == "multi", type=typ, help=hlp))
    return click.Command(name, callback=callback, params=params, help=help,
                         context_settings={"allow_interspersed_args": False})


def _build_click():
    return build_command("run", do_run, "Run CMD in a sandbox (default profile: strict).")


def __getattr__(name: str):
    # cli.py's COMMANDS table asks for `run_cmd`; built on demand so the fast path never imports click.
    if name == "run_cmd":
        return _build_click()
    raise AttributeError(name)
