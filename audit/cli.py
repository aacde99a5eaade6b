"""`sbx audit`: every container on this host, its real privileges, risks with stable IDs.

Exit codes: 0 ok; 1 a finding at or above --fail-on; 2 sbx could not audit (bad
input, bad flags, unreadable /proc). Never a traceback.
"""
from __future__ import annotations

import os
import sys

import click

from sandbox.errors import SbxError, escape

from .checks import SEVERITIES, SEVERITY_RANK


@click.command("audit")
@click.argument("target", required=False)
@click.option("--pid", type=int, default=None, help="Audit the container holding this host pid.")
@click.option("--runtime", default=None, help="Only containers of this runtime (sbx, podman, docker, ...).")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "sarif"]), default="table")
@click.option("--fail-on", type=click.Choice(SEVERITIES), default=None,
              help="Exit 1 when any finding is at or above this severity.")
@click.option("--policy", default=None, help="Policy file or built-in name (conformance mode).")
@click.option("--color/--no-color", "colour", default=None, help="Colour the table (default: when a tty).")
def audit_cmd(target, pid, runtime, fmt, fail_on, policy, colour):
    """Audit containers on this host (TARGET: container id, id prefix or name)."""
    import gc
    gc.disable()  # short-lived command over many small acyclic objects: see audit.scan.audit
    try:
        code = run(target, pid, runtime, fmt, fail_on, policy, colour)
    except SbxError as e:
        sys.stderr.write(e.line() + "\n")
        code = 2
    except BrokenPipeError:
        code = 2
    except Exception as e:
        if os.environ.get("SBX_DEBUG"):
            raise
        sys.stderr.write("sbx: audit failed: " + escape(f"{type(e).__name__}: {e}") + "\n")
        code = 2
    sys.stdout.flush()
    if code:
        sys.exit(code)
    return 0


audit_cmd.usage_exit_code = 2  # type: ignore[attr-defined]  # bad flags are "could not audit" (docstring)


def run(target, pid, runtime, fmt, fail_on, policy, colour) -> int:
    from . import report
    from .hostinfo import read_host
    from .scan import audit
    if os.geteuid() != 0:
        sys.stderr.write("sbx: warning: not root; other users' processes cannot be read\n")
    host = read_host()
    results = audit(ref=target, pid=pid, runtime=runtime, host=host)
    if policy is not None:
        results = report.apply_policy(results, policy)
    if (target or pid is not None) and not results:
        raise SbxError(f"no container matches {target if target else 'pid ' + str(pid)}", code=2)
    if fmt == "json":
        out = report.to_json(results, host.kernel)
    elif fmt == "sarif":
        out = report.to_sarif(results)
    else:
        use = sys.stdout.isatty() if colour is None else colour
        out = report.to_table(results, colour=use)
    sys.stdout.write(out if out.endswith("\n") else out + "\n")
    if fail_on is not None:
        limit = SEVERITY_RANK[fail_on]
        if any(SEVERITY_RANK[f.severity] >= limit for r in results for f in r.findings):
            return 1
    return 0
