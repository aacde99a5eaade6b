"""`sbx volume create|ls|inspect|rm|prune`: named volumes (sandbox.volumes), docker's spelling.

Exit codes: 0 on success; every refusal (no such volume, in use, bad name) is one
line on stderr and exit 125, and the other names given are still handled.
"""
from __future__ import annotations

import json
import sys
import time

import click

from . import volumes
from .errors import EXIT_REFUSED, SbxError, escape


def _each(names, fn) -> int:
    rc = 0
    for n in names:
        try:
            fn(n)
        except SbxError as e:
            sys.stderr.write(e.line() + "\n")
            rc = e.code or EXIT_REFUSED
    return rc


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) if t else ""


@click.group("volume", help="Named volumes: data that outlives sandboxes, shared by them (-v NAME:/path).")
def volume_cmd() -> None:
    pass


@volume_cmd.command("create", help="Create a volume (a random name if none is given); print its name.")
@click.option("--label", "labels", multiple=True, help="KEY=VALUE metadata.")
@click.argument("name", required=False)
def create_cmd(labels, name) -> int:
    lab = {}
    for item in labels:
        k, eq, v = item.partition("=")
        if not eq:
            raise SbxError(f"--label {escape(item)!r} must be KEY=VALUE", where="volume create")
        lab[k] = v
    print(escape(volumes.create(name, labels=lab).name))
    return 0


@volume_cmd.command("ls", help="List volumes.")
@click.option("-q", "--quiet", is_flag=True, help="Only names.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
def ls_cmd(quiet: bool, fmt: str) -> int:
    vols = volumes.list_volumes()
    if quiet:
        for v in vols:
            print(escape(v.name))
        return 0
    if fmt == "json":
        print(json.dumps([v.describe() for v in vols], indent=2, sort_keys=True))
        return 0
    rows = [("DRIVER", "VOLUME NAME", "IN USE")]
    rows += [("local", escape(v.name), "yes" if volumes.in_use(v) else "") for v in vols]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0


@volume_cmd.command("inspect", help="Show volumes as a JSON array (mountpoint, owner, in use, used by).")
@click.argument("names", nargs=-1, required=True)
def inspect_cmd(names) -> int:
    out = []

    def one(n: str) -> None:
        v = volumes.get(n)
        if v is None:
            raise SbxError(f"no such volume: {escape(n)}", where="volume inspect")
        d = v.describe()
        d["created"] = _iso(v.created)
        out.append(d)

    rc = _each(names, one)
    print(json.dumps(out, indent=2, sort_keys=True))
    return rc


@volume_cmd.command("rm", help="Remove volumes and their data; -f even while a sandbox uses one.")
@click.option("-f", "--force", is_flag=True, help="Remove a volume in use too (the sandbox keeps an empty mount).")
@click.argument("names", nargs=-1, required=True)
def rm_cmd(force: bool, names) -> int:
    def one(n: str) -> None:
        volumes.remove(n, force=force)
        print(escape(n))

    return _each(names, one)


@volume_cmd.command("prune", help="Remove every volume that no sandbox, running or stopped, uses.")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
def prune_cmd(force: bool) -> int:
    if not force:
        if not sys.stdin.isatty():
            raise SbxError("volume prune removes data: confirm with -f (stdin is not a terminal to ask)",
                           where="volume prune")
        click.confirm("WARNING! This removes every volume not used by at least one sandbox. Continue?", abort=True)
    for n in volumes.prune():
        print(escape(n))
    return 0
