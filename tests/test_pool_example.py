"""sandbox/examples/pool.py, the worker pool of the README, runs in CI: 100 snippets, each in its own
sandbox with a timeout and a memory cap, every result reported and as expected."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.sbxrun import ROOT

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs sbx as root")


def test_pool_example_runs_100_snippets_with_timeouts_and_memory_caps():
    p = subprocess.run([sys.executable, os.path.join(ROOT, "sandbox", "examples", "pool.py"), "--json", "--workers", "2"],
                       capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": ROOT})
    out = json.loads(p.stdout)
    results = out["results"]
    assert len(results) == 100 and sorted(r["i"] for r in results) == list(range(100))
    bad = [r for r in results if not r["ok"]]
    assert not bad, bad[:3]
    assert p.returncode == 0, p.stderr
    outcomes = [r["outcome"] for r in results]
    assert outcomes.count("timeout") == 4 and outcomes.count("oom") == 4 and outcomes.count("ok") == 92
    assert {r["exit_code"] for r in results if r["outcome"] == "timeout"} == {124}
    assert {r["exit_code"] for r in results if r["outcome"] == "oom"} == {137}
    assert len({r["sandbox"] for r in results}) == 100  # one sandbox each
