"""subject_from_spec (admission) vs the same Spec running live (audit): same check IDs."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.sbxrun import close_pipes

from sandbox.audit import checks as C
from sandbox.audit.scan import audit
from sandbox.audit.subject import subject_from_spec
from sandbox.spec import Bind, Security, Spec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HIGH = C.SEVERITY_RANK["high"]
# Checks whose answer the Spec fully decides (the host decides the rest: kernel, LSM presence, cgroup
# device rules, which /proc paths exist).
SPEC_DECIDED = {"SBX-A001", "SBX-A002", "SBX-A003", "SBX-A004", "SBX-A005", "SBX-A006", "SBX-A007",
                "SBX-A008", "SBX-A009", "SBX-A014", "SBX-A015", "SBX-A016", "SBX-A017", "SBX-A019",
                "SBX-A020", "SBX-A021", "SBX-A022", "SBX-A023", "SBX-A024", "SBX-A025", "SBX-A026",
                "SBX-A028", "SBX-A029", "SBX-A031", "SBX-A035", "SBX-A036", "SBX-A037", "SBX-A038"}


def _ids(findings, rank=0):
    return {f.check_id for f in findings if C.SEVERITY_RANK[f.severity] >= rank}


def test_spec_with_sys_admin_and_no_seccomp_is_flagged():
    spec = Spec(argv=("sshd", "-D"), uid=0, security=Security(capabilities=("SYS_ADMIN", "NET_ADMIN"),
                no_new_privs=False, seccomp="unconfined"))
    ids = _ids(C.run_checks(subject_from_spec(spec)))
    assert {"SBX-A002", "SBX-A003", "SBX-A006", "SBX-A008", "SBX-A009", "SBX-A021", "SBX-A038"} <= ids
    assert "SBX-A022" not in ids  # sbx never maps uid 0 to host root


def test_spec_binds_of_sensitive_paths_and_sockets():
    binds = (Bind("/etc", "/host-etc", readonly=False), Bind("/root", "/r", readonly=True))
    spec = Spec(argv=("true",), filesystem=Spec(argv=("x",)).filesystem.__class__(binds=binds))
    f = C.run_checks(subject_from_spec(spec))
    assert any(x.check_id == "SBX-A024" and x.evidence["source"] == "/etc" for x in f)
    assert any(x.check_id == "SBX-A025" and x.evidence["source"] == "/root" for x in f)


def test_strict_profile_meets_no_high_risk():
    from sandbox import resolve
    spec = resolve(["/bin/true"], profile="strict")
    f = C.run_checks(subject_from_spec(spec))
    assert not _ids(f, HIGH), [x.to_dict() for x in f if C.SEVERITY_RANK[x.severity] >= HIGH]


@pytest.mark.skipif(os.geteuid() != 0, reason="runs sbx sandboxes as root")
def test_spec_and_live_sandbox_give_the_same_ids():
    from sandbox import resolve
    flags = dict(cap_add=["SYS_ADMIN"], memory="64m", pids_limit=32)
    spec = resolve(["sleep", "30"], profile="default", **flags)
    from_spec = _ids(C.run_checks(subject_from_spec(spec))) & SPEC_DECIDED
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.Popen([sys.executable, "-m", "sandbox", "run", "--profile", "default", "--cap-add", "SYS_ADMIN",
                          "--memory", "64m", "--pids-limit", "32", "--", "sleep", "30"], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        live = []
        for _ in range(100):
            # This test's own sandbox: its init is a child of the sbx process started above
            # (other sandboxes on this host may run sleep too).
            live = [r for r in audit(runtime="sbx") if "sleep" in r.container.comms.values()
                    and any(_ppid(q) == p.pid for q in r.container.pids)]
            if live or p.poll() is not None:
                break
            time.sleep(0.05)
        if not live:
            err = p.stderr.read().decode(errors="replace") if p.poll() is not None else ""
            pytest.fail(f"sbx run did not start a sandbox: {err.strip()[-300:]}")
        r = live[0]
        assert r.container.runtime == "sbx"
        assert r.container.cgroup_path.split("/sbx/")[1].startswith(r.container.id)
        from_live = _ids(r.findings) & SPEC_DECIDED
        assert from_live == from_spec, (sorted(from_live ^ from_spec), [f.to_dict() for f in r.findings])
    finally:
        p.kill()  # the sbx parent; its sandbox dies with it (parent-death signal), then reaped
        p.wait(timeout=10)
        close_pipes(p)


def _ppid(pid) -> int | None:
    from sandbox import facts
    try:
        return facts.read_stat(pid).ppid
    except Exception:  # noqa: BLE001 - gone
        return None
