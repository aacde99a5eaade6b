"""A private sbx store per test (SBX_STATE_DIR), real sandboxes in it, and cleanup that proves
nothing is left: shared by the tests/test_verbs*.py files."""
from __future__ import annotations

import json
import os
import time

import pytest

from tests.sbxrun import PROFILE, sbx as _sbx

LOOP = "while :; do sleep 0.1; done"


@pytest.fixture
def store(tmp_path):
    d = tmp_path / "state"
    env = {"SBX_STATE_DIR": str(d), "SBX_CACHE_DIR": str(tmp_path / "cache")}

    def sbx(*args, **kw):
        extra = kw.pop("env", None) or {}
        return _sbx(*args, env={**env, **extra}, **kw)

    sbx.env = env
    sbx.dir = d
    yield sbx
    ids = [i for i in sbx("ps", "-aq", "--no-trunc").stdout.split() if i]
    if ids:
        sbx("rm", "-f", *ids, timeout=120)
    left = os.listdir(d / "sandboxes") if (d / "sandboxes").exists() else []
    assert [n for n in left if not n.startswith(".")] == [], "state left behind"


def run_d(store, *args: str, script: str = LOOP) -> str:
    p = store("run", "-d", "--profile", PROFILE, *args, "--", "/bin/sh", "-c", script)
    assert p.returncode == 0, p.stderr
    sid = p.stdout.strip()
    assert len(sid) == 64
    return sid


def inspect(store, ref: str) -> dict:
    p = store("inspect", ref)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)[0]


def wait_status(store, ref: str, status: str, timeout: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        d = inspect(store, ref)
        if d["state"]["status"] == status:
            return d
        assert time.monotonic() < deadline, f"{ref} still {d['state']['status']}, wanted {status}"
        time.sleep(0.05)


def sh(store, ref: str, script: str) -> str:
    """Run a shell script inside a running sandbox (sbx exec); its stdout."""
    p = store("exec", ref, "/bin/sh", "-c", script)
    assert p.returncode == 0, p.stderr
    return p.stdout
