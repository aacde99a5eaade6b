"""`sbx audit` against a real podman zoo and a bare unshare tree (see tests/zoo.py)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from sandbox.audit import checks as C
from sandbox.audit.hostinfo import read_host
from sandbox.audit.scan import audit
from sandbox import facts
from tests.sbxrun import close_pipes, sbx
from zoo import zoo  # noqa: F401 - session fixture

pytestmark = pytest.mark.podman

HIGH = C.SEVERITY_RANK["high"]


@pytest.fixture(scope="module")
def results(zoo):  # noqa: F811
    res = audit()
    by_name = {r.container.name: r for r in res if r.container.name}
    by_pid = {p: r for r in res for p in r.container.pids}
    return zoo, res, by_name, by_pid


def _ids(r, min_rank: int = 0) -> set[str]:
    return {f.check_id for f in r.findings if C.SEVERITY_RANK[f.severity] >= min_rank}


# suffix -> the critical/high finding each risky container must get
EXPECTED = {
    "priv": "SBX-A001",
    "sysadmin": "SBX-A002",
    "pidhost": "SBX-A014",
    "nethost": "SBX-A015",
    "rootbind": "SBX-A024",
    "sock": "SBX-A023",
}


@pytest.mark.parametrize("suffix", sorted(EXPECTED))
def test_risky_container_gets_its_finding(results, suffix):
    zoo, _, by_name, _ = results
    r = by_name[zoo.names[suffix]]
    assert r.container.runtime == "podman"
    assert len(r.container.id) == 64
    assert EXPECTED[suffix] in _ids(r, HIGH), [f.to_dict() for f in r.findings]
    assert r.pss == "privileged"


def test_severities_of_the_worst(results):
    zoo, _, by_name, _ = results
    crit = C.SEVERITY_RANK["critical"]
    for suffix in ("priv", "sysadmin", "rootbind", "sock"):
        assert EXPECTED[suffix] in _ids(by_name[zoo.names[suffix]], crit), suffix
    # -v /:/host is the host root read-write: critical, with the podman socket under it found by inode
    rb = by_name[zoo.names["rootbind"]]
    assert any(f.check_id == "SBX-A024" and f.severity == "critical" and f.evidence["source"] == "/"
               for f in rb.findings)
    sock = [f for f in by_name[zoo.names["sock"]].findings if f.check_id == "SBX-A023"]
    # mounted as /var/run/docker.sock but it is podman's socket: matched by device+inode, not by name
    assert sock and sock[0].evidence["runtime"] == "podman" and sock[0].evidence["path"] == "/var/run/docker.sock"


def test_tight_container_has_nothing_high(results):
    zoo, _, by_name, _ = results
    r = by_name[zoo.names["tight"]]
    assert not _ids(r, HIGH), [f.to_dict() for f in r.findings if C.SEVERITY_RANK[f.severity] >= HIGH]
    s = r.subject
    assert s.uid == 1000 and s.no_new_privs is True and s.root_readonly is True
    assert s.cap_eff == frozenset() and s.seccomp == 2
    assert s.memory_limit == 64 * 1024 * 1024 and s.pids_limit == 64 and s.cpu_limit == pytest.approx(0.5)
    assert r.score > by_name[zoo.names["sysadmin"]].score


def test_unshare_tree_is_a_namespaced_container(results):
    zoo, _, _, by_pid = results
    r = by_pid[zoo.pid_of("unshare")]
    c = r.container
    assert c.runtime == "namespaced"
    assert len(c.pids) == 2  # unshare and its forked child form one tree
    assert c.init_pid != zoo.pid_of("unshare")  # judged: the child in the new pid namespace
    assert facts.read_ns(c.init_pid)["pid"] != read_host().ns["pid"]
    ids = _ids(r, HIGH)
    assert {"SBX-A022", "SBX-A026"} <= ids  # uid 0 is host root; the tree runs on the host's /
    assert "net" not in r.subject.host_namespaces and "user" not in r.subject.host_namespaces


def test_host_processes_are_not_containers(results):
    _, res, _, _ = results
    assert os.getpid() not in {p for r in res for p in r.container.pids}
    assert 1 not in {r.container.init_pid for r in res}


def test_filters_name_pid_runtime(zoo):  # noqa: F811
    name = zoo.names["tight"]
    assert [r.container.name for r in audit(ref=name)] == [name]
    by_pid = audit(pid=zoo.pid_of("priv"))
    assert [r.container.name for r in by_pid] == [zoo.names["priv"]]
    assert all(r.container.runtime == "podman" for r in audit(runtime="podman"))
    cid = by_pid[0].container.id
    assert [r.container.id for r in audit(ref=cid[:12])] == [cid]


def test_symlinks_inside_the_container_stay_inside(zoo):  # noqa: F811
    name = zoo.names["rootbind"]
    pid = zoo.pid_of("rootbind")
    # A container-planted link that would point at the host's root if followed from the host.
    subprocess.run(["podman", "exec", name, "/bin/busybox", "ln", "-sf", "/../../../../", "/up"], check=True)
    subprocess.run(["podman", "exec", name, "/bin/busybox", "ln", "-sf", f"/proc/{os.getpid()}/root", "/magic"], check=True)
    st = facts.stat_in_root(pid, "/up/run/.containerenv")
    assert st is not None  # resolved to the container's own /run/.containerenv
    assert not os.path.exists("/run/.containerenv") or os.stat("/run/.containerenv").st_ino != st.st_ino
    # A /proc/PID/root magic link is refused (RESOLVE_NO_MAGICLINKS), never followed to our root.
    assert facts.stat_in_root(pid, "/magic/etc") is None


def test_cli_json_schema_is_stable(zoo):  # noqa: F811
    p = sbx("audit", "--format", "json", "--runtime", "podman")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["schema_version"] == "1"
    assert set(doc) == {"schema_version", "tool", "kernel", "summary", "containers"}
    assert set(doc["summary"]) == {"containers", "findings"}
    mine = [c for c in doc["containers"] if (c["name"] or "").startswith(zoo.prefix)]
    assert len(mine) == len(zoo.names)
    for c in mine:
        assert set(c) == {"id", "name", "runtime", "init_pid", "pids", "processes", "command", "cgroup", "labels",
                          "helpers", "score", "pss", "worst", "error", "posture", "findings", "image"}
        assert c["image"] is None or set(c["image"]) == {"ref", "id", "pinned"}
        assert 0 <= c["score"] <= 100 and c["pss"] in ("restricted", "baseline", "privileged")
        for f in c["findings"]:
            assert set(f) == {"check", "severity", "title", "message", "evidence"}
            assert f["check"] in C.by_id() and f["severity"] in C.SEVERITIES


def test_cli_sarif_is_valid(zoo):  # noqa: F811
    p = sbx("audit", "--format", "sarif", zoo.names["priv"])
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["version"] == "2.1.0" and "sarif-2.1.0" in doc["$schema"]
    run = doc["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    ids = [r["id"] for r in rules]
    assert len(ids) == len(set(ids)) == len(C.CHECKS)
    for r in rules:
        assert r["shortDescription"]["text"] and r["help"]["text"]
        assert r["defaultConfiguration"]["level"] in ("error", "warning", "note")
        assert "mappings" in r["properties"]
    assert run["results"]
    for res in run["results"]:
        assert res["ruleId"] in ids and rules[res["ruleIndex"]]["id"] == res["ruleId"]
        assert res["level"] in ("error", "warning", "note") and res["message"]["text"]
        loc = res["locations"][0]["logicalLocations"][0]
        assert loc["name"] == zoo.names["priv"]


def test_cli_fail_on_exit_codes(zoo):  # noqa: F811
    assert sbx("audit", zoo.names["tight"], "--fail-on", "high").returncode == 0
    assert sbx("audit", zoo.names["priv"], "--fail-on", "critical").returncode == 1
    assert sbx("audit", zoo.names["tight"], "--fail-on", "info").returncode == 1  # it has low/medium ones
    p = sbx("audit", "no-such-container-xyz")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    p = sbx("audit", zoo.names["priv"], "--policy", "restricted", "--fail-on", "high")
    assert p.returncode == 1 and "SBX-P" in p.stdout, p.stdout + p.stderr  # conformance: policy violations
    p = sbx("audit", "--policy", "no-such-policy")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr


def test_cli_table_groups_worst_first(zoo):  # noqa: F811
    p = sbx("audit", "--runtime", "podman")
    assert p.returncode == 0, p.stderr
    heads = [ln for ln in p.stdout.splitlines() if ln.startswith("podman ")]
    scores = [int(h.split("score ")[1].split("/")[0]) for h in heads]
    assert scores == sorted(scores)
    assert "\x1b[" not in p.stdout  # not a tty: no colour


def test_listener_on_all_host_interfaces(zoo):  # noqa: F811
    name = zoo.names["nethost"]
    port = 20000 + os.getpid() % 20000
    subprocess.run(["podman", "exec", "-d", name, "/bin/busybox", "nc", "-l", "-p", str(port)], check=True)
    want = {f"tcp/0.0.0.0:{port}", f"tcp6/:::{port}"}
    for _ in range(100):
        r = audit(ref=name)[0]
        hits = [f for f in r.findings if f.check_id == "SBX-A039"]
        if hits and want & set(hits[0].evidence["listeners"]):
            break
        time.sleep(0.05)
    assert hits and hits[0].severity == "medium", [f.to_dict() for f in r.findings]
    assert want & set(hits[0].evidence["listeners"])
    # the host's own listeners (sshd, the harness) are not pinned on this container
    assert all(x.endswith(f":{port}") for x in hits[0].evidence["listeners"])


def test_sshd_inside_a_namespaced_tree_and_colour():
    child = "import ctypes,time;ctypes.CDLL(None).prctl(15,b'sshd',0,0,0);print(1,flush=1);time.sleep(60)"
    p = subprocess.Popen(["unshare", "--user", "--map-root-user", "--net", "--", sys.executable, "-c", child],
                         stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert p.stdout.readline().strip() == b"1"
        r = audit(pid=p.pid)[0]
        assert "SBX-A038" in _ids(r)
        out = sbx("audit", "--pid", str(p.pid), "--color")
        assert "\x1b[1;31mCRITICAL" in out.stdout or "\x1b[31mHIGH" in out.stdout
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=10)
        close_pipes(p)


def test_cli_sarif_meets_code_scanning_requirements(zoo):  # noqa: F811
    """GitHub code scanning rejects results without a location and merges results with equal fingerprints."""
    p = sbx("audit", "--format", "sarif")
    assert p.returncode == 0, p.stderr
    run = json.loads(p.stdout)["runs"][0]
    results = run["results"]
    assert len(results) > 50
    prints = [r["partialFingerprints"]["sbxFinding/v1"] for r in results]
    assert len(prints) == len(set(prints))
    for r in results:
        loc = r["locations"][0]["physicalLocation"]
        assert loc["artifactLocation"]["uri"].startswith("containers/") and loc["region"]["startLine"] == 1
    assert run["tool"]["driver"]["properties"]["cisDockerBenchmarkVersion"] == C.CIS_DOCKER_VERSION
    # the same scan again gives the same fingerprints (stable across runs)
    again = json.loads(sbx("audit", "--format", "sarif").stdout)["runs"][0]["results"]
    mine = {r["partialFingerprints"]["sbxFinding/v1"] for r in results if zoo.prefix in r["message"]["text"]}
    assert mine and mine <= {r["partialFingerprints"]["sbxFinding/v1"] for r in again}


def test_cli_table_fits_80_columns(zoo):  # noqa: F811
    p = sbx("audit")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    wide = [ln for ln in lines if len(ln) > 80]
    assert not wide, wide[:5]
    heads = [ln for ln in lines if ln and not ln.startswith(" ")]
    mine = [h for h in heads if zoo.prefix in h]
    assert len(mine) == len(zoo.names)  # one summary line per container
    assert all(" score " in h and " pss " in h for h in mine)
