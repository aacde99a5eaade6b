"""sandbox.cgwarm: the background no-op migration that keeps the cgroup rwsem warm for the attach."""
from __future__ import annotations

import os
import time

import pytest

from sandbox import cgwarm
from tests.forked import in_child

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="writes this process's own cgroup.procs (root)")


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _wait_threads(n: int, timeout: float = 2.0) -> int:
    deadline = time.monotonic() + timeout
    while _threads() != n and time.monotonic() < deadline:
        time.sleep(0.005)
    return _threads()


def test_warmer_moves_nothing_and_stops_when_told():
    def body() -> dict:
        with open("/proc/self/cgroup") as f:
            before = f.read()
        base = _threads()
        w = cgwarm.start()
        assert w is not None, "no cgroup.procs of our own to write on this host"
        time.sleep(0.05)  # several rounds of the no-op migration
        running = _threads()
        with open("/proc/self/cgroup") as f:
            after = f.read()
        w.stop()
        return {"same_cgroup": before == after, "running": running - base,
                "after_stop": _wait_threads(base) - base}

    assert in_child(body) == {"same_cgroup": True, "running": 1, "after_stop": 0}


def test_cli_warmer_is_taken_once_and_each_launch_has_its_own():
    def body() -> dict:
        mine = cgwarm.start(for_next_launch=True)
        first, second = cgwarm.take(), cgwarm.take()
        other = cgwarm.start()
        out = {"taken": first is mine, "again": second is None, "distinct": other is not mine}
        mine.stop()
        other.stop()
        return out

    assert in_child(body) == {"taken": True, "again": True, "distinct": True}


def test_a_warmer_ends_by_itself_after_max_warm():
    def body() -> dict:
        base = _threads()
        cgwarm.MAX_WARM = 0.05
        cgwarm.start()
        return {"left": _wait_threads(base, timeout=2.0) - base}

    assert in_child(body) == {"left": 0}


def test_rootless_gets_no_warmer():
    def body() -> dict:
        os.setresuid(65534, 65534, 65534)
        return {"warmer": cgwarm.start() is None}

    assert in_child(body) == {"warmer": True}
