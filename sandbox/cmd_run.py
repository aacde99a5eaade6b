"""`sbx run`: flags -> Spec -> launch. The CLI adds nothing the API does not have."""
from __future__ import annotations

import json
import sys

import click

from .errors import SbxError


def _spec_from_flags(cmd, profile, **kw):
    from .profiles import resolve
    return resolve(cmd, profile=profile, **kw)


@click.command("run", context_settings={"ignore_unknown_options": False, "allow_interspersed_args": False})
@click.option("--profile", default="strict", show_default=True, help="Built-in profile name or a YAML path.")
@click.option("--rootfs", type=str, help="Use DIR as the root (pivot_root) instead of the host view.")
@click.option("-u", "--user", help="UID[:GID] inside the sandbox.")
@click.option("--cap-add", multiple=True)
@click.option("--cap-drop", multiple=True)
@click.option("--security-opt", multiple=True, help="apparmor=P, label=type:T,level:L, seccomp=FILE|unconfined, no-new-privileges")
@click.option("-m", "--memory")
@click.option("--memory-swap")
@click.option("--cpus", type=float)
@click.option("--cpu-shares", type=int)
@click.option("--cpuset-cpus")
@click.option("--cpuset-mems")
@click.option("--pids-limit", type=int)
@click.option("--ulimit", multiple=True, help="NAME=SOFT[:HARD]")
@click.option("--network", "--net", "network", help="none | loopback | bridge")
@click.option("-p", "--publish", multiple=True, help="[HOSTIP:]HOSTPORT:CTRPORT[/tcp|udp]")
@click.option("-e", "--env", multiple=True, help="K=V (K alone takes the caller's value)")
@click.option("--env-file", multiple=True)
@click.option("-v", "--volume", multiple=True, help="SRC:DST[:ro|rw]")
@click.option("-w", "--workdir")
@click.option("--hostname")
@click.option("--read-only", is_flag=True, default=False)
@click.option("--name")
@click.option("-d", "--detach", is_flag=True, default=False)
@click.option("--rm", is_flag=True, default=False)
@click.option("--timeout", type=float, help="Kill the whole sandbox after SEC seconds (exit 124).")
@click.option("--policy", help="Admission policy (file or built-in name).")
@click.option("--explain", is_flag=True, help="Print the resolved Spec and exit without running.")
@click.option("--record", type=click.Path(dir_okay=False), help="Write a JSON run record to FILE.")
@click.argument("cmd", nargs=-1, required=False, type=click.UNPROCESSED)
def run_cmd(profile, explain, record, cmd, **kw):
    """Run CMD in a sandbox (default profile: strict)."""
    spec = _spec_from_flags(list(cmd), profile, record=record, **kw)
    if spec.policy:
        from .admission import admit
        admit(spec)
    if explain:
        click.echo(json.dumps(spec.to_dict(), indent=2, sort_keys=True))
        return 0
    if spec.detach:
        from .lifecycle import run_detached
        sid = run_detached(spec)
        click.echo(sid)
        return 0
    from .launch import run
    result = run(spec)
    if record:
        from .record import write_record
        write_record(record, result.record)
    if result.timed_out:
        click.echo(f"sbx: --timeout {spec.timeout:g}s expired, sandbox killed", err=True)
    return result.exit_code
