"""The check catalogue's contract, cgroup-path attribution, and the CLI edge without privileges."""
from __future__ import annotations

import os
import re

import pytest

from sandbox.audit import checks as C
from sandbox.audit.discover import attribute
from tests.sbxrun import sbx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H = "0123456789abcdef" * 4


def test_catalogue_ids_severities_and_mappings():
    assert len(C.CHECKS) >= 30
    ids = [c.id for c in C.CHECKS]
    assert len(ids) == len(set(ids))
    for c in C.CHECKS:
        assert re.fullmatch(r"SBX-A\d{3}", c.id)
        assert c.severity in C.SEVERITIES
        assert c.title and len(c.rationale) > 40 and c.remediation and c.reads
        assert c.cis is None or re.fullmatch(r"5\.\d{1,2}", c.cis)
        assert c.ksv is None or re.fullmatch(r"KSV\d{3}", c.ksv)
        assert c.kubescape is None or re.fullmatch(r"C-\d{4}", c.kubescape)
        assert c.pss is None or c.pss[0] in ("baseline", "restricted")
    by = C.by_id()
    # spot-check mappings that are easy to get wrong
    assert by["SBX-A001"].cis == "5.4" and by["SBX-A001"].ksv == "KSV017"
    assert by["SBX-A015"].cis == "5.9" and by["SBX-A014"].cis == "5.15" and by["SBX-A016"].cis == "5.16"
    assert by["SBX-A023"].cis == "5.31" and by["SBX-A008"].ksv == "KSV001" and by["SBX-A009"].cis == "5.21"


def test_checks_md_is_generated_from_the_catalogue():
    with open(os.path.join(ROOT, "audit", "CHECKS.md")) as f:
        assert f.read() == C.markdown(), "regenerate: python -m audit.checks --markdown > audit/CHECKS.md"


@pytest.mark.parametrize("path,runtime,ident", [
    (f"/libpod_parent/libpod-{H}", "podman", H),
    (f"/machine.slice/libpod-{H}.scope/container", "podman", H),
    (f"/system.slice/docker-{H}.scope", "docker", H),
    (f"/docker/{H}", "docker", H),
    (f"/system.slice/crio-{H}.scope", "cri-o", H),
    (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1b2c3d4e_0000_1111_2222_333344445555.slice/"
     f"cri-containerd-{H}.scope", "kubernetes", H),
    (f"/kubepods/burstable/pod1b2c3d4e-0000-1111-2222-333344445555/{H}", "kubernetes", H),
    ("/lxc.payload.web1/init.scope", "lxc", "web1"),
    ("/machine.slice/machine-db\\x2d1.scope/payload", "nspawn", "db-1"),
    ("/sbx/a1b2c3d4e5f6", "sbx", "a1b2c3d4e5f6"),
])
def test_cgroup_attribution(path, runtime, ident):
    a = attribute(path)
    assert a is not None and (a.runtime, a.id) == (runtime, ident)
    if runtime == "kubernetes":
        assert a.pod_uid == "1b2c3d4e-0000-1111-2222-333344445555"


@pytest.mark.parametrize("path", ["/", "/user.slice/user-0.slice/session-1.scope", f"/libpod_parent/libpod-conmon-{H}",
                                  "/system.slice/ssh.service"])
def test_not_a_container_cgroup(path):
    assert attribute(path) is None


def test_score_and_pss_verdict():
    f = [C.Finding("SBX-A002", "critical", "t", "m"), C.Finding("SBX-A008", "medium", "t", "m")]
    assert C.score(f) == 100 - 40 - 8
    assert C.pss_level(f) == "privileged"
    assert C.pss_level([C.Finding("SBX-A008", "medium", "t", "m")]) == "baseline"
    assert C.pss_level([C.Finding("SBX-A035", "medium", "t", "m")]) == "restricted"
    assert C.score([]) == 100


def test_cli_bad_input_is_one_line_exit_2():
    p = sbx("audit", "--format", "yaml")
    assert p.returncode != 0 and "Traceback" not in p.stderr
    p = sbx("audit", "--pid", "999999999")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to nobody")
def test_cli_as_non_root_warns_and_does_not_crash():
    p = sbx("audit", "--format", "json", user="nobody")
    assert p.returncode in (0, 2), p.stderr
    assert "Traceback" not in p.stderr and "not root" in p.stderr


def test_cis_benchmark_version_is_stated():
    assert C.CIS_DOCKER_VERSION == "1.5.0"
    md = C.markdown()
    assert "CIS Docker Benchmark v1.5.0" in md and "v1.6.0 inserted a new 5.1" in md
    m = C.by_id()["SBX-A001"].mappings()
    assert m["cis_docker"] == "5.4" and m["cis_docker_version"] == "1.5.0"
