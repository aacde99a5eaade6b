"""Rootless: an unprivileged invoker gets a single-id map, or a clear refusal where a control can't be enforced."""
from __future__ import annotations

import os
import pwd

import pytest

from tests.sbxrun import sbx

USER = "sbxtest"


def _need_user():
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to the unprivileged test user")
    try:
        pwd.getpwnam(USER)
    except KeyError:
        pytest.skip(f"test user '{USER}' missing (created by .ci/setup)")
    if not os.access(os.path.realpath(os.sys.executable), os.X_OK) or \
            os.stat(os.path.realpath(os.sys.executable)).st_mode & 0o005 != 0o005:
        pytest.skip("the test interpreter is not usable by other users (venv built from a private python)")


@pytest.fixture
def tmp_path():
    # pytest's own tmp_path sits under a 0700 directory the test user cannot traverse.
    import shutil
    import tempfile
    d = tempfile.mkdtemp(prefix="sbx-rootless-", dir="/tmp")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _profile(d, extra: str = "") -> str:
    f = os.path.join(d, "rootless.yaml")
    with open(f, "w") as fh:
        fh.write("extends: strict\n" + extra)
    os.chmod(f, 0o644)
    return f


def test_rootless_with_caps_requested_refuses_without_delegation(tmp_path):
    _need_user()
    p = sbx("run", "--profile", _profile(tmp_path), "--", "/bin/true", user=USER)
    assert p.returncode == 125, p.stderr
    assert p.stderr.count("\n") == 1
    assert "deleg" in p.stderr.lower() or "cgroup" in p.stderr.lower(), p.stderr


def test_rootless_degrade_allow_runs_single_id_map_and_says_so(tmp_path):
    _need_user()
    prof = _profile(tmp_path, "degrade: allow\n")
    uid = pwd.getpwnam(USER).pw_uid
    p = sbx("run", "--profile", prof, "--", "/bin/sh", "-c",
            "id -u; cat /proc/self/uid_map; grep CapEff /proc/self/status", user=USER)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert lines[0] == "65534"
    assert lines[1].split() == ["65534", str(uid), "1"]
    assert int(lines[2].split()[1], 16) == 0
    assert "degrade" in p.stderr.lower(), "a degraded run must say so on stderr"
