"""One home for each value rule (sandbox/values.py, sandbox/namespaces.py): every layer agrees."""
from __future__ import annotations

import ast
import glob
import json
import os

import pytest

from sandbox import namespaces, speccache, values
from tests.sbxrun import ROOT, read_text, sbx


def test_memory_minimum_is_one_number_for_flags_and_cgroups():
    from sandbox.cgroups import base
    from sandbox.errors import SbxError
    from sandbox.profiles import resolve
    from sandbox.spec import Resources
    with pytest.raises(SbxError) as e:
        resolve(["/bin/true"], memory="5m")
    assert "6 MiB" in e.value.message and e.value.where == "--memory"
    with pytest.raises(SbxError) as e:
        base.validate(Resources(memory=values.MIN_MEMORY - 1))
    assert "6 MiB" in e.value.message
    base.validate(Resources(memory=values.MIN_MEMORY, memory_swap=values.MIN_MEMORY))


def test_a_bad_seccomp_file_is_refused_by_explain_already(tmp_path):
    bad = tmp_path / "s.json"
    bad.write_text('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["nope"], "action": "SCMP_ACT_ERRNO"}]}')
    p = sbx("run", "--profile", "default", "--security-opt", f"seccomp={bad}", "--explain", "--", "/bin/true")
    assert p.returncode == 125 and f"{bad}:1:" in p.stderr and "nope" in p.stderr, p.stderr
    p = sbx("run", "--profile", "default", "--security-opt", "seccomp=nosuch", "--explain", "--", "/bin/true")
    assert p.returncode == 125 and "--security-opt" in p.stderr, p.stderr


def test_a_relative_seccomp_file_is_saved_absolute(tmp_path):
    good = tmp_path / "ok.json"
    good.write_text('{"defaultAction": "SCMP_ACT_ALLOW"}')
    from sandbox.profiles import resolve
    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        spec = resolve(["/bin/true"], profile="default", security_opt=["seccomp=ok.json"])
    finally:
        os.chdir(here)
    assert spec.security.seccomp == str(good)


def test_spec_cache_is_keyed_on_the_code_that_produced_it():
    path = os.path.join(ROOT, "sandbox", "profiles.py")
    st = os.stat(path)
    before = speccache._key("strict", {})
    try:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        assert speccache._key("strict", {}) != before
    finally:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert speccache._key("strict", {}) == before


def test_cpu_lists_and_capability_names_parse_one_way():
    assert values.cpulist("3,0-1,2") == {0, 1, 2, 3}
    for bad in ("1-", "a", "3-1", "-2"):
        with pytest.raises(ValueError):
            values.cpulist(bad)
    assert values.cpulist_or_empty("garbage") == frozenset()
    assert values.cap_name("cap_net_raw") == values.cap_name("NET_RAW") == "NET_RAW"
    with pytest.raises(ValueError, match="did you mean SYS_ADMIN"):
        values.cap_name("SYS_ADMN")


def test_namespace_names_have_one_table():
    assert namespaces.PROC["mount"] == "mnt" and namespaces.proc_name("mount") == namespaces.proc_name("mnt") == "mnt"
    from sandbox import posture
    from sandbox.audit import discover, policy
    assert posture.NAMESPACES == discover.GROUP_NS == policy.NS_NAMES == namespaces.PROC_NAMES
    # No other module spells the list out.
    literal = {"user", "pid", "net", "uts", "ipc", "cgroup"}
    for path in glob.glob(os.path.join(ROOT, "sandbox", "**", "*.py"), recursive=True) + \
            glob.glob(os.path.join(ROOT, "audit", "*.py")):
        if path.endswith("namespaces.py"):
            continue
        for node in ast.walk(ast.parse(read_text(path))):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                names = {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
                assert not literal <= names, f"{os.path.relpath(path, ROOT)}:{node.lineno} lists namespace kinds"


def test_policy_accepts_both_spellings_of_the_mount_namespace(tmp_path):
    from sandbox.audit.policy import lint
    f = tmp_path / "p.yaml"
    f.write_text("apiVersion: sbx/v1\nname: p\nnamespaces: {host_shared_allowed: [mount, mnt]}\n")
    pol, errors = lint(str(f))
    assert not errors, [e.message for e in errors]
    assert json.dumps(pol.data)
