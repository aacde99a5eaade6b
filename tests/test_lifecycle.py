"""Detached sandboxes and the Docker verbs, against real sandboxes (root; strict profile by default).

Every test uses its own SBX_STATE_DIR so `ps` sees only its sandboxes; the
fixture removes whatever a failing test left and then asserts that no state,
cgroup or process is left behind.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.sbxrun import PROFILE, close_pipes, read_bytes, read_text, sbx as _sbx

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="lifecycle tests run sandboxes as root")

LOOP = "i=0; while :; do i=$((i+1)); sleep 0.05; done"


@pytest.fixture
def store(tmp_path):
    d = tmp_path / "state"
    env = {"SBX_STATE_DIR": str(d)}

    def sbx(*args, **kw):
        return _sbx(*args, env=env, **kw)

    sbx.env = env
    sbx.dir = d
    yield sbx
    ids = [i for i in sbx("ps", "-aq", "--no-trunc").stdout.split() if i]
    if ids:
        sbx("rm", "-f", *ids, timeout=120)
    left = os.listdir(d / "sandboxes") if (d / "sandboxes").exists() else []
    assert [n for n in left if not n.startswith(".")] == [], "state left behind"
    for sid in ids:
        assert not _cgroup_dirs(sid), f"cgroup of {sid[:12]} left behind"


def _cgroup_dirs(sid: str) -> list[str]:
    out = []
    for root in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        if not os.path.isdir(root):
            continue
        for ctrl in os.listdir(root):
            for cand in (os.path.join(root, ctrl, "sbx", sid), os.path.join(root, "sbx", sid)):
                if os.path.isdir(cand):
                    out.append(cand)
    return out


def run_d(store, *args: str, script: str | None = None, check: bool = True) -> str:
    cmd = ["run", "-d", "--profile", PROFILE, *args]
    if script is not None:
        cmd += ["--", "/bin/sh", "-c", script]
    p = store(*cmd)
    if check:
        assert p.returncode == 0, p.stderr
        sid = p.stdout.strip()
        assert len(sid) == 64 and int(sid, 16) >= 0
        return sid
    return p


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


def events(store, sid: str) -> list[dict]:
    p = store("events", "--format", "json", "--until", "0s", "--filter", f"id={sid}")  # past events, then stop
    assert p.returncode == 0, p.stderr
    return [json.loads(line) for line in p.stdout.splitlines()]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


# ---------------------------------------------------------------- run -d, logs, inspect

def test_run_detached_logs_keep_both_streams_and_inspect_records_everything(store):
    sid = run_d(store, "--name", "both", "-e", "SEED=abc",
                script="echo out-1; echo err-1 >&2; echo out-2; printf no-newline >&2; exit 7")
    d = wait_status(store, "both", "exited")
    st = d["state"]
    assert st["exit_code"] == 7 and st["oom_killed"] is False and st["started_at"] and st["finished_at"]
    assert d["id"] == sid and d["name"] == "both" and "SEED=abc" in d["env"]
    assert d["verification"]["ok"] is True and "seccomp" in d["verification"]["checked"]
    assert d["cgroup"]["paths"], "strict has resource caps: a cgroup must be recorded"
    assert d["spec"]["argv"][0] == "/bin/sh"
    logs = store("logs", sid[:10])
    assert logs.returncode == 0
    assert logs.stdout == "out-1\nout-2\n"
    assert logs.stderr == "err-1\nno-newline\n"
    tail = store("logs", "--tail", "1", "both")
    assert tail.stdout + tail.stderr == "no-newline\n"
    raw = (store.dir / "sandboxes" / sid / "sandbox.log").read_text().splitlines()
    # Two pipes: order within a stream is kept, interleaving across streams is best effort (as in docker).
    tagged = [line.split(" ", 3)[1:] for line in raw]
    assert [t[2] for t in tagged if t[0] == "stdout"] == ["out-1", "out-2"]
    assert [t[2] for t in tagged if t[0] == "stderr"] == ["err-1", "no-newline"]
    mode = os.stat(store.dir / "sandboxes" / sid).st_mode & 0o777
    assert mode == 0o700
    for f in ("config.json", "state.json", "sandbox.log"):
        assert os.stat(store.dir / "sandboxes" / sid / f).st_mode & 0o777 == 0o600
    # ps: hidden without -a once exited, shown with it
    assert sid[:12] not in store("ps").stdout
    rows = json.loads(store("ps", "-a", "--format", "json").stdout)
    assert [r["state"] for r in rows if r["id"] == sid] == ["exited"]


def test_run_detached_refusals_are_one_line_125_and_exec_failures_keep_their_code(store):
    p = run_d(store, "--name", "bad", "--", "/nonexistent/cmd", check=False)
    assert p.returncode == 127 and p.stdout == "" and len(p.stderr.strip().splitlines()) == 1, p.stderr
    p = run_d(store, "--name", "bad", script="true", check=False)  # the failed one keeps its name
    assert p.returncode == 125 and "already in use" in p.stderr
    p = run_d(store, "--name", "bad name!", script="true", check=False)
    assert p.returncode == 125 and "--name" in p.stderr and "Traceback" not in p.stderr
    for verb in ("inspect", "logs", "stop", "kill", "pause", "unpause", "start", "rm"):
        p = store(verb, "no-such-thing")
        assert p.returncode == 125 and p.stderr.strip() == "sbx: no such sandbox: no-such-thing", (verb, p.stderr)
    p = store("exec", "no-such-thing", "true")
    assert p.returncode == 125


def test_rm_flag_removes_state_on_exit(store):
    sid = run_d(store, "--rm", script="echo bye")
    deadline = time.monotonic() + 10
    while (store.dir / "sandboxes" / sid).exists():
        assert time.monotonic() < deadline, "--rm did not remove the state"
        time.sleep(0.05)
    assert not _cgroup_dirs(sid)
    assert [e["action"] for e in events(store, sid)] == ["create", "start", "die", "destroy"]


# ---------------------------------------------------------------- stop, kill, events

def test_stop_kills_a_term_ignoring_workload_after_the_timeout_and_events_are_in_order(store):
    sid = run_d(store, "--name", "stubborn", script="trap '' TERM; echo ready; " + LOOP)
    t0 = time.monotonic()
    p = store("stop", "-t", "1", "stubborn")
    took = time.monotonic() - t0
    assert p.returncode == 0, p.stderr
    assert 1.0 <= took < 8, took
    d = inspect(store, sid)
    assert d["state"]["status"] == "exited" and d["state"]["exit_code"] == 137
    evs = events(store, sid)
    assert [e["action"] for e in evs] == ["create", "start", "kill", "kill", "die", "stop"]
    assert [e.get("signal") for e in evs if e["action"] == "kill"] == ["SIGTERM", "SIGKILL"]
    assert evs[4]["exit_code"] == 137
    times = [e["time_nano"] for e in evs]
    assert times == sorted(times)
    # --since/--until select a window; text format names the action and id
    mid = evs[2]["time_nano"] / 1e9
    p = store("events", "--format", "json", "--since", f"{mid:.9f}", "--until", "0s", "--filter", f"id={sid}")
    assert [json.loads(x)["action"] for x in p.stdout.splitlines()] == ["kill", "kill", "die", "stop"]
    p = store("events", "--until", f"{mid - 1e-6:.9f}", "--filter", "name=stubborn")
    assert [x.split()[2] for x in p.stdout.splitlines()] == ["create", "start"]


def test_stop_of_a_cooperative_workload_gives_143_and_kill_sends_the_signal(store):
    sid = run_d(store, script=LOOP)
    t0 = time.monotonic()
    assert store("stop", "-t", "10", sid).returncode == 0
    assert time.monotonic() - t0 < 5
    assert inspect(store, sid)["state"]["exit_code"] == 143
    sid2 = run_d(store, script="trap 'echo got-usr1; exit 42' USR1; " + LOOP)
    time.sleep(0.3)  # let the shell install its trap
    assert store("kill", "-s", "USR1", sid2).returncode == 0
    d = wait_status(store, sid2, "exited")
    assert d["state"]["exit_code"] == 42
    assert "got-usr1" in store("logs", sid2).stdout
    p = store("kill", "-s", "NOPE", sid2)
    assert p.returncode == 125 and "unknown signal" in p.stderr
    sid3 = run_d(store, script=LOOP)
    assert store("kill", sid3).returncode == 0
    assert wait_status(store, sid3, "exited")["state"]["exit_code"] == 137


def test_events_follow_streams_new_events(store):
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandbox", "events", "-f", "--format", "json", "--since", str(time.time())],
        stdout=subprocess.PIPE, env={**os.environ, **store.env, "PYTHONPATH": os.getcwd()}, text=True)
    try:
        time.sleep(0.5)
        sid = run_d(store, script="exit 3")
        wait_status(store, sid, "exited")
        got = []
        deadline = time.monotonic() + 10
        while len(got) < 3 and time.monotonic() < deadline:
            got.append(json.loads(proc.stdout.readline()))
        assert [e["action"] for e in got] == ["create", "start", "die"] and got[2]["exit_code"] == 3
    finally:
        proc.kill()
        proc.wait()
        close_pipes(proc)


# ---------------------------------------------------------------- pause

def test_pause_stops_progress_and_unpause_resumes_it(store, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    os.chmod(data, 0o777)
    os.chmod(tmp_path, 0o755)
    sid = run_d(store, "-v", f"{data}:/data:rw",
                script="i=0; while :; do i=$((i+1)); echo $i > /data/c.tmp; mv /data/c.tmp /data/c; sleep 0.02; done")
    counter = data / "c"
    deadline = time.monotonic() + 10
    while not counter.exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert store("pause", sid).returncode == 0
    d = inspect(store, sid)
    assert d["state"]["status"] == "paused" and d["state"]["paused"] is True
    a = int(counter.read_text())
    time.sleep(0.8)
    b = int(counter.read_text())
    assert a == b, "a paused sandbox made progress"
    up_paused = inspect(store, sid)["state"]
    assert up_paused["paused_seconds"] >= 0.7
    p = store("exec", sid, "true")
    assert p.returncode == 125 and "paused" in p.stderr
    assert store("pause", sid).returncode == 125  # already paused
    assert store("unpause", sid).returncode == 0
    # The thawed shell runs again at the scheduler's pace (slow on a loaded 2-core box): bounded wait.
    deadline = time.monotonic() + 10
    while (c := int(counter.read_text())) <= b and time.monotonic() < deadline:
        time.sleep(0.05)
    assert c > b, "unpause did not resume the workload"
    st = inspect(store, sid)["state"]
    assert st["status"] == "running" and st["paused_seconds"] >= 0.7
    # uptime excludes the paused time
    started = datetime.fromisoformat(st["started_at"].replace("Z", "+00:00")).timestamp()
    assert st["uptime_seconds"] <= time.time() - started - 0.7
    assert [e["action"] for e in events(store, sid)][-2:] == ["pause", "unpause"]
    assert store("unpause", sid).returncode == 125  # not paused
    # stop works from paused too
    assert store("pause", sid).returncode == 0
    assert store("stop", "-t", "5", sid).returncode == 0
    assert inspect(store, sid)["state"]["exit_code"] == 143


# ---------------------------------------------------------------- exec

def _status(text: str) -> dict:
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines()) if v}


def test_exec_runs_under_the_same_confinement_as_the_workload(store):
    sid = run_d(store, "-e", "SEED=s1", script=LOOP)
    d = inspect(store, sid)
    wl = d["state"]["pid"]
    wl_status = _status(read_text(f"/proc/{wl}/status"))
    p = store("exec", sid, "cat", "/proc/self/status")
    assert p.returncode == 0, p.stderr
    ex = _status(p.stdout)
    for k in ("CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb"):
        assert ex[k] == "0000000000000000" == wl_status[k], k
    assert ex["NoNewPrivs"] == "1"
    if d["spec"]["security"]["seccomp"] != "unconfined":
        assert ex["Seccomp"] == "2" and int(ex["Seccomp_filters"]) >= 1
    assert ex["Uid"].split()[0] == "65534" and ex["Gid"].split()[0] == "65534"
    # same namespaces: compare inode numbers read from inside with the workload's from the host
    p = store("exec", sid, "sh", "-c", "for n in pid mnt net uts ipc user cgroup; do readlink /proc/self/ns/$n; done")
    assert p.returncode == 0, p.stderr
    inside = p.stdout.split()
    host = [os.readlink(f"/proc/{wl}/ns/{n}") for n in ("pid", "mnt", "net", "uts", "ipc", "user", "cgroup")]
    assert inside == host
    assert os.readlink(f"/proc/{wl}/ns/pid") != os.readlink("/proc/self/ns/pid")
    # same cgroup (counted against the sandbox's pids limit)
    cg = store("exec", sid, "cat", "/proc/self/cgroup").stdout
    assert sid in read_text(f"/proc/{wl}/cgroup") and "/" in cg
    # env from the saved spec plus -e; exit code relayed; 127 for a missing command
    p = store("exec", "-e", "EXTRA=x", sid, "sh", "-c", 'echo "$SEED-$EXTRA"; exit 5')
    assert p.returncode == 5 and p.stdout.strip() == "s1-x"
    p = store("exec", sid, "--", "no-such-binary")
    assert p.returncode == 127 and "not found" in p.stderr
    # the read-only root stays read-only
    p = store("exec", sid, "sh", "-c", "touch /usr/x 2>/dev/null; echo $?")
    assert p.stdout.strip() != "0"
    acts = [e["action"] for e in events(store, sid)]
    assert acts.count("exec_start") == 5 and "exec_die" in acts


def test_exec_needs_no_shell_in_the_sandbox(store, tmp_path):
    if not os.path.exists("/bin/busybox"):
        pytest.skip("busybox-static is not installed (needed to build a shell-less rootfs)")
    root = tmp_path / "rootfs"
    root.mkdir()
    os.chmod(tmp_path, 0o755)
    shutil.copy("/bin/busybox", root / "busybox")
    sid = run_d(store, "--rootfs", str(root), "-e", "PATH=/", "--", "/busybox", "sleep", "60")
    p = store("exec", sid, "/busybox", "sh", "-c", "true")  # busybox has sh built in, the rootfs has no /bin/sh
    assert p.returncode == 0, p.stderr
    assert not (root / "bin").exists()
    p = store("exec", sid, "/busybox", "cat", "/proc/self/status")
    assert p.returncode == 0, p.stderr
    ex = _status(p.stdout)
    assert ex["CapEff"] == "0000000000000000" and ex["NoNewPrivs"] == "1" and ex["Uid"].split()[0] == "65534"
    p = store("exec", sid, "sh")
    assert p.returncode == 127


# ---------------------------------------------------------------- start / restart / names / prefixes

def test_start_recreates_the_sandbox_with_the_same_env(store):
    sid = run_d(store, "--name", "seeded", "-e", "SEED=42-xyz", script='echo "seed=$SEED"')
    wait_status(store, "seeded", "exited")
    assert store("start", "seeded").returncode == 0
    d = wait_status(store, "seeded", "exited")
    assert d["id"] == sid and d["state"]["exit_code"] == 0
    assert store("logs", "seeded").stdout == "seed=42-xyz\nseed=42-xyz\n"
    acts = [e["action"] for e in events(store, sid)]
    assert acts == ["create", "start", "die", "start", "die"]
    sid2 = run_d(store, script=LOOP)
    pid1 = inspect(store, sid2)["state"]["pid"]
    assert store("restart", "-t", "2", sid2).returncode == 0
    d = inspect(store, sid2)
    assert d["state"]["status"] == "running" and d["state"]["pid"] != pid1
    assert not alive(pid1) or read_text(f"/proc/{pid1}/cmdline") == ""


def test_prefixes_names_and_ambiguity(store):
    a = run_d(store, "--name", "alpha", script="true")
    p = store("inspect", a[:6])
    assert p.returncode == 0 and json.loads(p.stdout)[0]["id"] == a
    # Two real entries sharing a prefix: created through the store itself.
    from sandbox import state
    os.environ["SBX_STATE_DIR"] = str(store.dir)
    try:
        for sid in ("ab" * 32, "ab" + "cd" * 31):
            state.create(sid, {"id": sid, "name": None, "created": time.time(), "spec": {"argv": ["x"]}})
    finally:
        del os.environ["SBX_STATE_DIR"]
    p = store("inspect", "aba")
    assert p.returncode == 0 and json.loads(p.stdout)[0]["id"] == "ab" * 32
    p = store("inspect", "ab")
    assert p.returncode == 125 and "ambiguous id prefix ab" in p.stderr
    assert store("rm", "ab" * 32, "ab" + "cd" * 31).returncode == 0
    # names are unique even under concurrency: exactly one of 4 racing creators wins
    with ThreadPoolExecutor(4) as ex:
        res = list(ex.map(lambda _: run_d(store, "--name", "race", script=LOOP, check=False), range(4)))
    assert sorted(r.returncode for r in res) == [0, 125, 125, 125], [r.stderr for r in res]


# ---------------------------------------------------------------- stats

def test_stats_reports_cgroup_usage(store):
    sid = run_d(store, script="while :; do :; done")
    p = store("stats", "--no-stream", "--format", "json", sid)
    assert p.returncode == 0, p.stderr
    (row,) = json.loads(p.stdout)
    assert row["id"] == sid and row["pids"] >= 2 and row["memory_usage"] > 0
    assert row["memory_limit"] == 512 * 1024 * 1024 and row["pids_limit"] == 256
    assert row["cpu_percent"] is not None and 20 <= row["cpu_percent"] <= 110  # --cpus 1.0, busy loop
    p = store("stats", "--no-stream")
    assert sid[:12] in p.stdout and "MEM USAGE / LIMIT" in p.stdout


# ---------------------------------------------------------------- crash safety and concurrency

def test_killed_supervisor_leaves_nothing_after_ps_and_rm(store):
    sid = run_d(store, script=LOOP)
    st = inspect(store, sid)["state"]
    sup, init, wl = st["supervisor_pid"], st["init_pid"], st["pid"]
    assert all(alive(p) for p in (sup, init, wl))
    os.kill(sup, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while alive(wl) or alive(init):
        assert time.monotonic() < deadline, "sandbox survived its supervisor"
        time.sleep(0.05)
    rows = json.loads(store("ps", "-a", "--format", "json").stdout)
    assert [r["state"] for r in rows if r["id"] == sid] == ["exited"]
    assert "supervisor gone" in store("ps", "-a").stdout
    assert store("rm", sid).returncode == 0
    assert not (store.dir / "sandboxes" / sid).exists()
    assert not _cgroup_dirs(sid)
    assert not os.path.exists(store.dir / "cgroups" / f"{sid}.lock")
    # SIGKILL the `sbx run -d` CLI itself while it waits for the start: rm -f still cleans everything.
    cli = subprocess.Popen([sys.executable, "-m", "sandbox", "run", "-d", "--profile", PROFILE, "--", "/bin/sh", "-c",
                            LOOP], env={**os.environ, **store.env, "PYTHONPATH": os.getcwd()},
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.25)
    cli.kill()
    cli.wait()
    close_pipes(cli)
    time.sleep(1.0)
    ids = store("ps", "-aq", "--no-trunc").stdout.split()
    assert store("rm", "-f", *ids).returncode == 0 if ids else True
    assert not os.listdir(store.dir / "sandboxes") or \
        all(n.startswith(".") for n in os.listdir(store.dir / "sandboxes"))
    assert not any(_cgroup_dirs(s) for s in ids)


def test_rm_refuses_a_running_sandbox_and_rm_f_cleans_it(store):
    sid = run_d(store, script=LOOP)
    wl = inspect(store, sid)["state"]["pid"]
    p = store("rm", sid)
    assert p.returncode == 125 and "rm -f" in p.stderr
    assert store("rm", "-f", sid).returncode == 0
    assert not alive(wl) or read_text(f"/proc/{wl}/cmdline") == ""
    assert not (store.dir / "sandboxes" / sid).exists() and not _cgroup_dirs(sid)
    assert [e["action"] for e in events(store, sid)][-3:] == ["kill", "die", "destroy"]


N_CONCURRENT = int(os.environ.get("SBX_TEST_CONCURRENT", "50"))


def test_many_concurrent_run_d_and_rm_f_leave_nothing_behind(store):
    with ThreadPoolExecutor(N_CONCURRENT) as ex:
        res = list(ex.map(lambda i: run_d(store, "--name", f"c{i}", script=LOOP, check=False),
                          range(N_CONCURRENT)))
    bad = [r.stderr for r in res if r.returncode != 0]
    assert not bad, bad[:3]
    ids = [r.stdout.strip() for r in res]
    assert len(set(ids)) == N_CONCURRENT
    pids = []
    for sid in ids:
        st = json.loads((store.dir / "sandboxes" / sid / "state.json").read_text())
        assert st["status"] == "running"
        pids += [st["supervisor_pid"], st["init_pid"], st["pid"]]
    with ThreadPoolExecutor(N_CONCURRENT) as ex:
        res = list(ex.map(lambda s: store("rm", "-f", s, timeout=120), ids))
    assert all(r.returncode == 0 for r in res), [r.stderr for r in res if r.returncode][:3]
    assert [n for n in os.listdir(store.dir / "sandboxes") if not n.startswith(".")] == []
    assert not any(_cgroup_dirs(s) for s in ids)
    time.sleep(0.2)
    assert not [p for p in pids if alive(p) and read_text(f"/proc/{p}/cmdline")], "processes left behind"
    assert not [n for n in os.listdir(store.dir / "cgroups") if n.endswith(".lock")]


# ---------------------------------------------------------------- log rotation (the writer itself, real files)

def test_log_writer_rotates_at_the_cap_and_keeps_streams(tmp_path):
    from sandbox.lifecycle import LogWriter, log_files, parse_log_line
    w = LogWriter(str(tmp_path), max_bytes=65536, files=2)
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    import threading
    t = threading.Thread(target=w.pump, args=({r1: b"stdout", r2: b"stderr"},))
    t.start()
    for i in range(3000):
        os.write(w1 if i % 2 == 0 else w2, b"line %d\n" % i)
    os.write(w1, b"x" * 40000)  # one long line without newline: split into P records, closed by EOF
    os.close(w1)
    os.close(w2)
    t.join(10)
    w.close()
    files = log_files(str(tmp_path))
    assert [os.path.basename(f) for f in files] == ["sandbox.log.1", "sandbox.log"]
    assert all(os.path.getsize(f) <= 65536 + 16500 for f in files)
    assert not os.path.exists(tmp_path / "sandbox.log.2")
    recs = [parse_log_line(x) for f in files for x in read_bytes(f).splitlines()]
    assert all(r is not None for r in recs)
    tail = [r for r in recs if r[1] == "stdout"][-3:]
    assert [r[2] for r in tail] == [False, False, True] and sum(len(r[3]) for r in tail) == 40000


def test_logs_follow_prints_new_lines_and_ends_when_the_sandbox_exits(store):
    sid = run_d(store, script="echo first; sleep 0.6; echo second >&2; sleep 0.3; echo third")
    t0 = time.monotonic()
    p = store("logs", "-f", "-t", sid, timeout=20)
    assert p.returncode == 0, p.stderr
    assert time.monotonic() - t0 >= 0.5, "logs -f returned before the sandbox exited"
    assert [line.split(" ", 1)[1] for line in p.stdout.splitlines()] == ["first", "third"]
    assert p.stderr.split(" ", 1)[1] == "second\n" and p.stderr.startswith("20")
