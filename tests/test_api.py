"""The Python API: many sandboxes from one interpreter, same confinement as the CLI."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from sandbox import SbxError, resolve, run
from tests.forked import in_child
from tests.sbxrun import PROFILE, ROOT, run_sh

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs sbx as root")


def test_many_sandboxes_from_one_interpreter_each_verified():
    spec = resolve(["/bin/true"], profile=PROFILE)
    ids = set()
    for _ in range(5):
        r = run(spec)
        assert r.exit_code == 0
        assert r.record["verification"]["ok"] is True
        ids.add(r.sandbox_id)
    assert len(ids) == 5


def test_api_refusal_is_an_sbxerror_not_a_crash():
    from sandbox import SbxError
    with pytest.raises(SbxError) as e:
        resolve(["/bin/true"], profile=PROFILE, cap_add=["SYS_ADMIN"])
    assert e.value.code == 125


def test_user_flag_within_profile():
    p = run_sh("id -u; id -g", "-u", "1000:1001")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["1000", "1001"]


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def test_sandbox_tree_is_sbx_then_init_then_workload():
    """As runc under conmon: once the sandbox runs, sbx's one child is the sandbox's init.

    The setup process that unshared the namespaces and forked init is gone (sbx adopted
    init as a child subreaper), so no third Python process lives as long as the sandbox.
    """
    env = {**os.environ, "PYTHONPATH": ROOT}
    env.pop("SBX_DEBUG", None)
    p = subprocess.Popen([sys.executable, "-m", "sandbox", "run", "--profile", PROFILE, "--", "sleep", "30"],
                         env=env)
    try:
        deadline = time.monotonic() + 20
        kids: list[int] = []
        while time.monotonic() < deadline:
            kids = _children(p.pid)
            # the workload is forked before exec (named like init until then): wait for the exec
            if len(kids) == 1 and [_comm(k) for k in _children(kids[0])] == ["sleep"]:
                break
            time.sleep(0.05)
        assert [_comm(k) for k in kids] == ["sbx-init"], kids
        assert [_comm(k) for k in _children(kids[0])] == ["sleep"]
    finally:
        p.kill()
        p.wait()


def test_failed_start_leaves_no_child_and_no_subreaper():
    """A start that fails after the fork (here: the kernel refuses a cpuset) reaps everything it
    made and stops being a child subreaper, so an API caller is left as it was."""
    def attempt() -> dict:
        from sandbox import syscalls as sc
        spec = resolve(["/bin/true"], profile=PROFILE, cpuset_cpus="1023")  # valid syntax, no such CPU
        try:
            run(spec)
            outcome = "ran"
        except SbxError as e:
            outcome = e.code
        try:
            children = "some" if os.waitpid(-1, os.WNOHANG) != (0, 0) else "running"
        except ChildProcessError:
            children = "none"
        return {"outcome": outcome, "children": children, "subreaper": sc.prctl_get_int(sc.PR_GET_CHILD_SUBREAPER) != 0}

    assert in_child(attempt) == {"outcome": 125, "children": "none", "subreaper": False}
