"""`sbx run --policy`: admission refuses before anything starts, naming the rule and the offending value."""
from __future__ import annotations

import datetime as dt
import os

import pytest

from tests.sbxrun import sbx

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs sbx as root")


def test_restricted_refuses_cap_add_sys_admin(tmp_path):
    marker = tmp_path / "ran"
    p = sbx("run", "--profile", "default", "--policy", "restricted", "--cap-add", "SYS_ADMIN", "--",
            "/bin/touch", str(marker))
    assert p.returncode == 125
    assert "SBX-P00" in p.stderr and "SYS_ADMIN" in p.stderr and "restricted" in p.stderr
    assert p.stderr.count("\n") == 1
    assert not marker.exists()


def test_restricted_refuses_a_bind_of_var_run():
    p = sbx("run", "--profile", "strict", "--policy", "restricted", "-v", "/var/run:/x", "--", "/bin/true")
    assert p.returncode == 125
    assert "SBX-P040" in p.stderr and "/var/run" in p.stderr


def test_strict_conforms_to_restricted_and_runs():
    p = sbx("run", "--profile", "strict", "--policy", "restricted", "--", "/bin/sh", "-c", "echo admitted")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "admitted"


def test_policy_resource_ceiling(tmp_path):
    pol = tmp_path / "small.yaml"
    pol.write_text("apiVersion: sbx/v1\nname: small\nresources:\n  memory: {required: true, max: 128m}\n")
    p = sbx("run", "--profile", "strict", "--policy", str(pol), "--", "/bin/true")
    assert p.returncode == 125 and "SBX-P050" in p.stderr
    p = sbx("run", "--profile", "strict", "--policy", str(pol), "--memory", "64m", "--memory-swap", "64m", "--",
            "/bin/true")
    assert p.returncode == 0, p.stderr


def test_waiver_applies_until_it_expires(tmp_path):
    future = (dt.date.today() + dt.timedelta(days=30)).isoformat()
    past = (dt.date.today() - dt.timedelta(days=1)).isoformat()
    body = ("apiVersion: sbx/v1\nname: w\nresources:\n  memory: {{required: true, max: 128m}}\n"
            "waivers:\n  - check: SBX-P050\n    selector: {{name: \"legacy-*\"}}\n    expires: {exp}\n"
            "    reason: migrating\n")
    pol = tmp_path / "w.yaml"
    pol.write_text(body.format(exp=future))
    ok = sbx("run", "--profile", "strict", "--policy", str(pol), "--name", "legacy-1", "--", "/bin/true")
    assert ok.returncode == 0, ok.stderr
    other = sbx("run", "--profile", "strict", "--policy", str(pol), "--name", "new-1", "--", "/bin/true")
    assert other.returncode == 125 and "SBX-P050" in other.stderr
    pol.write_text(body.format(exp=past))
    expired = sbx("run", "--profile", "strict", "--policy", str(pol), "--name", "legacy-1", "--", "/bin/true")
    assert expired.returncode == 125 and ("SBX-P050" in expired.stderr or "SBX-P099" in expired.stderr)


def test_python_api_is_admitted_too(tmp_path):
    """Admission used to run only in the CLI: the API started what the policy refuses."""
    from tests.forked import in_child

    def attempt():
        from sandbox import resolve, run
        spec = resolve(["/bin/touch", str(tmp_path / "ran")], profile="default", cap_add=("SYS_ADMIN",), user="0")
        r = run(spec, policy="restricted")
        return {"exit_code": r.exit_code}
    os.chmod(tmp_path, 0o777)
    r = in_child(attempt)
    assert r.get("code") == 125 and "SBX-P00" in r.get("sbx_error", ""), r
    assert not (tmp_path / "ran").exists()


def test_start_rechecks_the_saved_policy(tmp_path):
    pol = tmp_path / "p.yaml"
    pol.write_text("apiVersion: sbx/v1\nname: p\nresources:\n  memory: {required: true, max: 1g}\n")
    p = sbx("run", "-d", "--profile", "strict", "--policy", str(pol), "--", "/bin/sleep", "30")
    assert p.returncode == 0, p.stderr
    sid = p.stdout.strip()
    try:
        assert sbx("stop", "-t", "1", sid).returncode == 0
        pol.write_text("apiVersion: sbx/v1\nname: p\nresources:\n  memory: {required: true, max: 128m}\n")
        p = sbx("start", sid)
        assert p.returncode == 125 and "SBX-P050" in p.stderr, (p.stdout, p.stderr)
        ps = sbx("ps", "-a")
        line = next(x for x in ps.stdout.splitlines() if x.startswith(sid[:12]))
        assert "exited" in line.lower() and "up " not in line.lower(), line
    finally:
        sbx("rm", "-f", sid)
