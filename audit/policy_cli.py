"""`sbx policy lint|compile|check|list`."""
from __future__ import annotations

import click

from sandbox.errors import SbxError, escape


@click.group("policy")
def policy_cmd() -> None:
    """Lint, compile and check policy files (YAML written by security teams)."""


@policy_cmd.command("list")
def list_cmd() -> None:
    """Built-in policies."""
    from .policy import builtin_names, load_policy
    for n in builtin_names():
        click.echo(f"{n:<12} {load_policy(n).get('description', '')}")


@policy_cmd.command("lint")
@click.argument("ref")
def lint_cmd(ref: str) -> int:
    """Check a policy file (or built-in NAME); every error as FILE:LINE:COL: message. Exit 1 on errors."""
    from .policy import lint, policy_path
    policy, errors = lint(policy_path(ref))
    for e in errors:
        click.echo(escape(f"{e.where}: {e.message}"), err=True)
    if errors:
        click.echo(f"{len(errors)} error(s)", err=True)
        return 1
    click.echo(f"{policy_path(ref)}: ok ({policy.name})")
    return 0


@policy_cmd.command("compile")
@click.argument("ref")
@click.option("--apparmor", "apparmor", type=click.Path(dir_okay=False), help="Write an AppArmor profile here.")
@click.option("--selinux", "selinux", type=click.Path(dir_okay=False), help="Write a SELinux CIL module here.")
@click.option("--seccomp", "seccomp_out", type=click.Path(dir_okay=False), help="Write Docker/OCI seccomp JSON here.")
def compile_cmd(ref: str, apparmor: str | None, selinux: str | None, seccomp_out: str | None) -> int:
    """Generate MAC and seccomp artifacts, each validated by the real toolchain before it is written."""
    from .policy import load_policy
    from .policy_compile import compile_all
    if not (apparmor or selinux or seccomp_out):
        raise SbxError("nothing to compile: give --apparmor, --selinux and/or --seccomp")
    for path in compile_all(load_policy(ref), apparmor=apparmor, selinux=selinux, seccomp_out=seccomp_out):
        click.echo(f"wrote {path}")
    return 0


@policy_cmd.command("check")
@click.argument("ref")
@click.argument("target")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
def check_cmd(ref: str, target: str, fmt: str) -> int:
    """Does TARGET satisfy the policy? TARGET: a running container id/name, pid:N, or profile:NAME|FILE."""
    from .conformance import check_target
    from .policy import load_policy
    findings = check_target(load_policy(ref), target)
    if fmt == "json":
        import json
        click.echo(json.dumps([f.to_dict() for f in findings], indent=2))
    else:
        if not findings:
            click.echo(f"{escape(target)}: conforms to policy {ref}")
        for f in findings:
            click.echo(escape(f"{f.check_id}  {f.severity:<8} {f.message}"))
    return 1 if any(not getattr(f, "waived", False) for f in findings) else 0
