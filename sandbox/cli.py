"""The `sbx` command line: a thin layer over the importable API.

Subcommands live in their own modules and are imported only when invoked, so
`sbx run` never pays for audit, policy or pyroute2 imports.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys

import click

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
    "audit": ("audit.cli", "audit_cmd"),
    "policy": ("audit.policy_cli", "policy_cmd"),
    "profile": ("sandbox.cmd_profile", "profile_cmd"),
    "doctor": ("sandbox.doctor", "doctor_cmd"),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(n for n in COMMANDS if self._available(n))

    @staticmethod
    def _available(name: str) -> bool:
        mod = COMMANDS[name][0]
        return importlib.util.find_spec(mod) is not None

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        entry = COMMANDS.get(name)
        if entry is None:
            return None
        try:
            module = importlib.import_module(entry[0])
        except ModuleNotFoundError as e:
            if e.name == entry[0]:
                return None  # verb not built into this version
            raise
        return getattr(module, entry[1])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option("0.1.0", prog_name="sbx")
def cli() -> None:
    """sbx: security-first sandbox runner and container auditor."""


def main(argv: list[str] | None = None) -> None:
    try:
        rv = cli.main(args=argv, prog_name="sbx", standalone_mode=False)
    except SbxError as e:
        click.echo(e.line(), err=True)
        sys.exit(e.code)
    except click.exceptions.Abort:
        click.echo("sbx: aborted", err=True)
        sys.exit(EXIT_REFUSED)
    except click.exceptions.ClickException as e:
        # Bad flags are sbx refusing to run, as in docker: exit 125, one line.
        msg = e.format_message()
        ctx = getattr(e, "ctx", None)
        where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        click.echo("sbx: " + escape(msg) + where, err=True)
        sys.exit(EXIT_REFUSED)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(141)
    except Exception as e:  # noqa: BLE001 - never a traceback at the user; SBX_DEBUG=1 shows it
        import os
        if os.environ.get("SBX_DEBUG"):
            raise
        click.echo(f"sbx: internal error: {escape(type(e).__name__ + ': ' + str(e))} (SBX_DEBUG=1 for a traceback)",
                   err=True)
        sys.exit(EXIT_REFUSED)
    sys.exit(rv if isinstance(rv, int) else 0)
