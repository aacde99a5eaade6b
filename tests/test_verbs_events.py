"""`sbx events` streams until interrupted, as docker's does; --since/--until in docker's time
syntax; docker's filters and `{{json .}}`. `sbx logs --since/--until`. Real sandboxes, real files."""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest

from tests.sbxrun import ROOT, close_pipes
from tests.verbstore import run_d, store, wait_status  # noqa: F401 - store is a fixture

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="starts real sandboxes as root")


def _events_proc(store, *args: str) -> subprocess.Popen:
    env = {**os.environ, **store.env, "PYTHONPATH": ROOT}
    env.pop("SBX_DEBUG", None)
    return subprocess.Popen([sys.executable, "-m", "sandbox", "events", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)


def _lines(proc: subprocess.Popen, n: int, timeout: float = 15.0) -> list[str]:
    """Up to n lines within timeout (raw reads: select and a buffered readline do not mix)."""
    fd = proc.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    while buf.count(b"\n") < n and time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], 0.2)
        if r:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            buf += chunk
    return buf.decode().splitlines()[:n]


def test_events_stream_new_events_until_interrupted(store):
    old = run_d(store, script="exit 0")  # before the stream starts: docker does not replay it
    wait_status(store, old, "exited")
    proc = _events_proc(store, "--format", "{{json .}}")
    try:
        time.sleep(0.6)
        sid = run_d(store, "--name", "streamed", script="exit 4")
        wait_status(store, sid, "exited")
        got = [json.loads(x) for x in _lines(proc, 3)]
        assert [e["Action"] for e in got] == ["create", "start", "die"]
        assert all(e["id"] == sid and e["Type"] == "container" and e["Actor"]["ID"] == sid for e in got)
        assert got[2]["Actor"]["Attributes"] == {"exitCode": "4", "name": "streamed"}
        assert got[0]["status"] == "create" and got[0]["scope"] == "local" and got[0]["time"] == got[0]["timeNano"] // 10**9
        time.sleep(0.5)
        assert proc.poll() is None, "events must keep streaming with nothing to say"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=5) == 130
        assert b"Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        close_pipes(proc)


def test_events_until_in_the_future_ends_the_stream_then(store):
    t0 = time.time()
    proc = _events_proc(store, "--until", f"{t0 + 2.5:.3f}", "--format", "{{.Action}}")
    try:
        time.sleep(0.5)
        sid = run_d(store, script="exit 0")
        wait_status(store, sid, "exited")
        assert proc.wait(timeout=10) == 0
        assert 2.4 <= time.time() - t0 < 9
        assert proc.stdout.read().split() == [b"create", b"start", b"die"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        close_pipes(proc)


def test_since_until_accept_docker_time_syntax_and_filters(store):
    a = run_d(store, "--name", "first", script="exit 1")
    wait_status(store, a, "exited")
    time.sleep(1.1)
    mid = time.time()
    time.sleep(0.05)
    b = run_d(store, "--name", "second", script="exit 2")
    wait_status(store, b, "exited")

    def actions(*args):
        p = store("events", *args, "--format", "{{.Actor.Attributes.name}}:{{.Action}}")
        assert p.returncode == 0, p.stderr
        return p.stdout.split()

    rfc = datetime.fromtimestamp(mid, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"  # nanoseconds
    assert actions("--since", f"{mid:.6f}", "--until", "0s") == ["second:create", "second:start", "second:die"]
    assert actions("--since", rfc, "--until", "0s") == ["second:create", "second:start", "second:die"]
    assert actions("--since", "1h", "--until", f"{mid:.6f}") == ["first:create", "first:start", "first:die"]
    assert actions("--since", "1h30m", "--until", "0s", "--filter", "event=die") == ["first:die", "second:die"]
    assert actions("--since", "10m", "--until", "0s", "--filter", "container=second") == \
        ["second:create", "second:start", "second:die"]
    assert actions("--since", "10m", "--until", "0s", "--filter", f"container={a[:10]}",
                   "--filter", "event=start") == ["first:start"]
    assert actions("--since", "10m", "--until", "0s", "--filter", "type=container", "--filter", "event=create") == \
        ["first:create", "second:create"]
    assert actions("--since", "10m", "--until", "0s", "--filter", "type=image") == []
    # --until alone: everything logged up to then
    assert actions("--until", f"{mid:.6f}", "--filter", "event=die") == ["first:die"]
    # today's formats and filters are still there
    p = store("events", "--since", "10m", "--until", "0s", "--format", "json", "--filter", "action=die")
    assert [json.loads(x)["exit_code"] for x in p.stdout.splitlines()] == [1, 2]
    for bad, what in ((("--since", "yesterday"), "--since"), (("--until", "10 minutes"), "--until"),
                      (("--filter", "colour=red"), "events --filter"), (("--format", "{{.Nope}}", "--since", "1h",
                                                                         "--until", "0s"), "--format")):
        p = store("events", *bad)
        assert p.returncode == 125 and p.stderr.startswith(f"sbx: {what}: ") and p.stderr.count("\n") == 1, p.stderr


def test_logs_since_and_until(store):
    sid = run_d(store, script="echo one; echo err-one >&2; sleep 1.2; echo two; sleep 1.2; echo three; exec sleep 100")
    deadline = time.monotonic() + 15
    while "three" not in store("logs", sid).stdout:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    stamped = store("logs", "-t", sid).stdout.splitlines()
    t = {line.split(" ", 1)[1]: line.split(" ", 1)[0] for line in stamped}
    assert set(t) == {"one", "two", "three"}

    def logs(*args):
        p = store("logs", *args, sid)
        assert p.returncode == 0, p.stderr
        return p.stdout.split(), p.stderr.split()

    assert logs("--since", t["two"]) == (["two", "three"], [])
    assert logs("--until", t["two"]) == (["one", "two"], ["err-one"])
    assert logs("--since", t["two"], "--until", t["two"]) == (["two"], [])
    ts_two = datetime.fromisoformat(t["two"][:26] + "+00:00").timestamp()
    assert logs("--since", f"{ts_two - 0.0005:.6f}")[0] == ["two", "three"]
    assert logs("--since", "1h") == (["one", "two", "three"], ["err-one"])
    assert logs("--since", "0s") == ([], [])
    assert logs("--since", "1h", "--tail", "1") == (["three"], [])
    # --follow with --until stops there, even though the sandbox runs on
    t0 = time.monotonic()
    p = store("logs", "-f", "--until", f"{time.time() + 2:.3f}", sid)
    took = time.monotonic() - t0
    assert p.returncode == 0 and 1.5 < took < 10 and p.stdout.split() == ["one", "two", "three"], (took, p.stderr)
    assert store("logs", "-f", "--until", "1s", sid).stdout.split() == ["one", "two", "three"]  # in the past: no wait
    p = store("logs", "--since", "soon", sid)
    assert p.returncode == 125 and p.stderr.startswith("sbx: --since: cannot parse time")
