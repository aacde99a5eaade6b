"""`sbx profile list|show`: the built-in profiles shipped in the wheel."""
from __future__ import annotations

import os

import click


@click.group("profile")
def profile_cmd() -> None:
    """List and show run profiles."""


@profile_cmd.command("list")
def list_cmd() -> None:
    from .paths import builtin_dir
    from .profiles import builtin_profiles
    from .yamlmarks import load
    d = builtin_dir("profiles")
    for name in builtin_profiles():
        doc = load(os.path.join(d, name + ".yaml"))
        desc = doc.data.get("description", "") if isinstance(doc.data, dict) else ""
        click.echo(f"{name:<12} {desc}")


@profile_cmd.command("show")
@click.argument("name")
@click.option("--resolved", is_flag=True, help="Show the fully resolved Spec (extends and defaults applied).")
def show_cmd(name: str, resolved: bool) -> None:
    from .profiles import profile_path, resolve
    if resolved:
        import json
        click.echo(json.dumps(resolve(["CMD"], profile=name).to_dict(), indent=2, sort_keys=True))
        return
    path = profile_path(name)
    with open(path, encoding="utf-8") as f:
        click.echo(f.read(), nl=False)
