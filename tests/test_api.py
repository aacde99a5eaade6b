"""The Python API: many sandboxes from one interpreter, same confinement as the CLI."""
from __future__ import annotations

import os

import pytest

from sandbox import resolve, run
from tests.sbxrun import PROFILE, run_sh

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
