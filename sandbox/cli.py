"""The `sbx` command line: a thin layer over the importable API.

Subcommands live in their own modules and are imported only when invoked, so
`sbx run` never pays for audit, policy or pyroute2 imports; the plain
`sbx run [OPTIONS] -- CMD` case does not even import click (see cmd_run).
"""
from __future__ import annotations

import os
import sys

from .errors import EXIT_REFUSED, SbxError, escape

# name -> (module, attribute). One line per verb; the module owns the verb.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("sandbox.cmd_run", "run_cmd"),
    "ps": ("sandbox.cmd_lifecycle", "ps_cmd"),
    "inspect": ("sandbox.cmd_lifecycle", "inspect_cmd"),
    "logs": ("sandbox.cmd_lifecycle", "logs_cmd"),
    "stop": ("sandbox.cmd_lifecycle", "stop_cmd"),
    "kill": ("sandbox.cmd_lifecycle", "kill_cmd"),
    "pause": ("sandbox.cmd_lifecycle", "pause_cmd"),
    "unpause": ("sandbox.cmd_lifecycle", "unpause_cmd"),
    "exec": ("sandbox.cmd_lifecycle", "exec_cmd"),
    "stats": ("sandbox.cmd_lifecycle", "stats_cmd"),
    "events": ("sandbox.cmd_lifecycle", "events_cmd"),
    "start": ("sandbox.cmd_lifecycle", "start_cmd"),
    "restart": ("sandbox.cmd_lifecycle", "restart_cmd"),
    "rm": ("sandbox.cmd_lifecycle", "rm_cmd"),
    "top": ("sandbox.cmd_verbs", "top_cmd"),
    "wait": ("sandbox.cmd_verbs", "wait_cmd"),
    "port": ("sandbox.cmd_verbs", "port_cmd"),
    "cp": ("sandbox.cmd_verbs", "cp_cmd"),
    "rename": ("sandbox.cmd_verbs", "rename_cmd"),
    "create": ("sandbox.cmd_verbs", "create_cmd"),
    "version": ("sandbox.cmd_verbs", "version_cmd"),
    "info": ("sandbox.cmd_verbs", "info_cmd"),
    "volume": ("sandbox.cmd_volume", "volume_cmd"),
    "audit": ("sandbox.audit.cli", "audit_cmd"),
    "policy": ("sandbox.audit.policy_cli", "policy_cmd"),
    "profile": ("sandbox.cmd_profile", "profile_cmd"),
    "doctor": ("sandbox.doctor", "doctor_cmd"),
    "login": ("sandbox.cmd_image", "login_cmd"),
    "logout": ("sandbox.cmd_image", "logout_cmd"),
    "pull": ("sandbox.cmd_image", "pull_cmd"),
    "images": ("sandbox.cmd_image", "images_cmd"),
    "image": ("sandbox.cmd_image", "image_cmd"),
    "rmi": ("sandbox.cmd_image", "rmi_cmd"),
}


def _available(name: str) -> bool:
    import importlib.util  # only on click's path: ~4 ms that `sbx run` need not pay
    try:
        return importlib.util.find_spec(COMMANDS[name][0]) is not None
    except ModuleNotFoundError:
        return False


def _group():
    import click

    class LazyGroup(click.Group):
        def list_commands(self, ctx: click.Context) -> list[str]:
            return sorted(n for n in COMMANDS if _available(n))

        def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
            entry = COMMANDS.get(name)
            if entry is None or not _available(name):
                return None
            import importlib
            return getattr(importlib.import_module(entry[0]), entry[1])

    @click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option("0.1.0", prog_name="sbx")
    def cli() -> None:
        """sbx: security-first sandbox runner and container auditor."""

    return cli


def _dispatch(argv: list[str]) -> int:
    if argv and argv[0] == "run":
        from . import cgwarm
        cgwarm.start(for_next_launch=True)  # first thing: the kernel's cgroup grace period runs while we import and prepare
        from .cmd_run import do_run, fast_parse
        kw = fast_parse(argv[1:])
        if kw is not None:
            return do_run(kw.pop("profile"), kw.pop("explain"), kw.pop("record"), kw.pop("cmd"), **kw)
    rv = _group().main(args=argv, prog_name="sbx", standalone_mode=False)
    return rv if isinstance(rv, int) else 0


def main(argv: list[str] | None = None) -> None:
    if argv is None:
        # The program itself (console script): skip interpreter finalization, which costs
        # ~4.5 ms of every `sbx run` (module teardown, GC). sbx registers no atexit work;
        # open files are closed where they are used, and std streams are flushed here.
        try:
            code = _main(sys.argv[1:])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if e.code is not None and not isinstance(e.code, int):
                sys.stderr.write(f"{e.code}\n")
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                if code == 0 and stream is sys.stdout:
                    code = 141  # stdout closed under us (a pipe reader went away)
        os._exit(code)
    sys.exit(_main(argv))


def _main(argv: list[str]) -> int:
    try:
        code = _dispatch(argv)
    except SbxError as e:
        sys.stderr.write(e.line() + "\n")
        sys.exit(e.code)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(141)
    except Exception as e:  # noqa: BLE001 - never a traceback at the user; SBX_DEBUG=1 shows it
        import click
        if isinstance(e, click.exceptions.Abort):
            # click turns Ctrl-C into Abort: exit as an interrupted command does (`sbx events`
            # streams until then), not as a refusal
            sys.exit(130)
        if isinstance(e, click.exceptions.NoArgsIsHelpError):
            sys.stdout.write(e.ctx.get_help() + "\n")  # bare `sbx` (or a bare group): its help, as docker
            sys.exit(0)
        if isinstance(e, click.exceptions.ClickException):
            # Bad flags are sbx refusing to run, as in docker: exit 125, one line (a command may
            # document another code for its usage errors: audit's is 2).
            ctx = getattr(e, "ctx", None)
            where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            sys.stderr.write("sbx: " + escape(_usage_message(e)) + where + "\n")
            sys.exit(getattr(getattr(ctx, "command", None), "usage_exit_code", EXIT_REFUSED))
        if os.environ.get("SBX_DEBUG"):
            raise
        sys.stderr.write(f"sbx: internal error: {escape(type(e).__name__ + ': ' + str(e))} "
                         "(SBX_DEBUG=1 for a traceback)\n")
        sys.exit(EXIT_REFUSED)
    return code


def _usage_message(e) -> str:
    """click's message, with its "did you mean" kept only for typos (compat.is_typo) and a word
    on docker flags sbx does not have."""
    import click
    if not isinstance(e, click.exceptions.NoSuchOption):
        return e.format_message()
    from . import compat
    near = compat.suggestions(e.option_name, e.possibilities)
    msg = e.message
    if near:
        msg += f" Did you mean {near[0]}?" if len(near) == 1 else f" (Possible options: {', '.join(sorted(near))})"
    extra = compat.note(e.option_name)
    return msg + (f" ({extra})" if extra else "")
