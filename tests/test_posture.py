"""One posture model: what launch plans, what /proc shows, what audit and admission judge.

verify is posture.differences(planned, observed); audit's Subject is built from
posture.observed and admission's from posture.planned, so the three cannot
disagree on identity, capabilities, no_new_privs, seccomp or namespaces.
"""
from __future__ import annotations

import os

import pytest

from sandbox import facts, posture, state
from sandbox.spec import spec_from_dict
from tests.sbxrun import sbx

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs sbx as root")


@pytest.fixture
def strict_sandbox():
    p = sbx("run", "-d", "--profile", "strict", "--", "/bin/sleep", "60")
    assert p.returncode == 0, p.stderr
    sid = p.stdout.strip()
    yield state.resolve(sid)
    sbx("rm", "-f", sid)


def test_planned_and_observed_agree_on_a_live_sandbox(strict_sandbox):
    e = strict_sandbox
    spec = spec_from_dict(e.config["spec"])
    idmap = e.state["idmap"]
    want = posture.planned(spec, idmap["uid_map"], idmap["gid_map"])
    got = posture.observed(facts.read(e.state["pid"], host_pid=os.getpid()))
    assert posture.differences(want, got) == []
    assert got.identity.uid == 65534 and got.identity.host_uid == want.identity.host_uid != 65534
    assert not got.identity.maps_host_root()


def test_a_host_process_differs_in_every_way_that_matters(strict_sandbox):
    spec = spec_from_dict(strict_sandbox.config["spec"])
    idmap = strict_sandbox.state["idmap"]
    want = posture.planned(spec, idmap["uid_map"], idmap["gid_map"])
    got = posture.observed(facts.read(os.getpid(), host_pid=os.getpid()))  # this test process: host root, full caps
    names = {n for n, _ in posture.differences(want, got)}
    assert {"user namespace", "no host root mapping", "uid", "non-root", "capabilities CapEff",
            "no_new_privs", "seccomp", "pid namespace"} <= names, names


def test_audit_and_admission_read_the_same_posture(strict_sandbox):
    from sandbox.audit.scan import audit
    from sandbox.audit.subject import subject_from_spec
    e = strict_sandbox
    spec = spec_from_dict(e.config["spec"])
    live = [r for r in audit(runtime="sbx") if r.container.id.startswith(e.id[:12])]
    assert live, "audit did not find the sandbox"
    s = live[0].subject
    planned = subject_from_spec(spec)
    for attr in ("uid", "gid", "userns", "root_maps_host_root", "cap_eff", "cap_prm", "cap_bnd", "cap_amb",
                 "no_new_privs", "seccomp", "host_namespaces"):
        assert getattr(s, attr) == getattr(planned, attr), (attr, getattr(s, attr), getattr(planned, attr))
