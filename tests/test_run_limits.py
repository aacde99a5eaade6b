"""cgroup caps through `sbx run` end to end: OOM reported as such, pids cap, cpuset, ulimits with caps,
no cgroup left behind (sbx SIGKILLed included). The backend itself is tested in test_cgroups.py."""
from __future__ import annotations

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.sbxrun import PROFILE, ROOT, run_sh, sbx

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="cgroup caps need root (or delegation)")


def _sbx_cgroups() -> set[str]:
    dirs = set()
    for base in glob.glob("/sys/fs/cgroup/*/sbx") + glob.glob("/sys/fs/cgroup/sbx"):
        for d in os.listdir(base):
            if os.path.isdir(os.path.join(base, d)):
                dirs.add(d)
    return dirs


def test_memory_hog_is_oom_killed_137_and_reported(tmp_path):
    rec = tmp_path / "r.json"
    p = sbx("run", "--profile", PROFILE, "--memory", "48m", "--memory-swap", "48m", "--record", str(rec), "--",
            "/usr/bin/python3", "-c", "x = bytearray(400 * 1024 * 1024); print('survived')", timeout=120)
    assert p.returncode == 137, (p.stdout, p.stderr)
    assert "survived" not in p.stdout
    assert "OOM" in p.stderr and "memory limit" in p.stderr
    r = json.loads(rec.read_text())
    assert r["oom_killed"] is True and r["limits_hit"]["oom_kill"] is True


def test_pids_limit_gives_eagain_and_is_counted(tmp_path):
    rec = tmp_path / "r.json"
    script = ("import os, errno\nok = fail = 0\nkids = []\n"
              "for _ in range(60):\n"
              "    try:\n        pid = os.fork()\n    except OSError as e:\n"
              "        fail += e.errno == errno.EAGAIN\n        continue\n"
              "    if pid == 0:\n        import time; time.sleep(2); os._exit(0)\n"
              "    kids.append(pid); ok += 1\n"
              "print(ok, fail)\n")
    p = sbx("run", "--profile", PROFILE, "--pids-limit", "20", "--record", str(rec), "--",
            "/usr/bin/python3", "-c", script, timeout=60)
    assert p.returncode == 0, p.stderr
    ok, fail = map(int, p.stdout.split())
    assert ok < 20 and fail > 0, (ok, fail)
    assert json.loads(rec.read_text())["limits_hit"]["pids_max"] > 0


def test_cpuset_visible_in_status():
    p = run_sh("grep Cpus_allowed_list /proc/self/status", "--cpuset-cpus", "0")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split()[-1] == "0"


def test_cpu_quota_limits_a_busy_loop():
    # Under --cpus 0.25 a busy loop gets ~25% of one cpu: measured from its own cpu time over wall time.
    script = ("import time, os\nt = time.time(); c = time.process_time()\n"
              "while time.time() - t < 1.5: pass\n"
              "print((time.process_time() - c) / (time.time() - t))\n")
    p = sbx("run", "--profile", PROFILE, "--cpus", "0.25", "--", "/usr/bin/python3", "-c", script, timeout=60)
    assert p.returncode == 0, p.stderr
    share = float(p.stdout)
    assert 0.12 <= share <= 0.40, share


def test_ulimits_and_cgroup_caps_together():
    p = run_sh("ulimit -n; cat /proc/self/cgroup | grep -c .", "--ulimit", "nofile=64:64", "--memory", "64m",
               "--memory-swap", "64m", "--pids-limit", "32")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split()[0] == "64"


def test_no_cgroup_left_after_runs_including_killed_sbx():
    before = _sbx_cgroups()
    for _ in range(10):
        assert sbx("run", "--profile", PROFILE, "--", "/bin/true").returncode == 0
    env = dict(os.environ, PYTHONPATH=ROOT)
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-m", "sandbox", "run", "--profile", PROFILE, "--", "/bin/sleep", "30"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # The next start reaps what the killed ones left (their sandboxes died with them: parent-death signal).
    time.sleep(0.5)
    assert sbx("run", "--profile", PROFILE, "--", "/bin/true").returncode == 0
    # Only sandbox ids (64 hex) whose owner lock is free count: a live sandbox (another test, a
    # detached one) holds its lock, and the cgroup backend's own tests use other names.
    leftover = {d for d in _sbx_cgroups() - before if re.fullmatch(r"[0-9a-f]{64}", d) and not _locked(d)}
    assert not leftover, f"cgroups left behind: {leftover}"


def _locked(sid: str) -> bool:
    import fcntl
    from sandbox.paths import state_dir
    path = os.path.join(state_dir(), "cgroups", sid + ".lock")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
