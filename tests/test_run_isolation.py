"""`sbx run --profile strict`: each isolation property, checked from inside against the real kernel."""
from __future__ import annotations

import json
import os
import re
import subprocess
import threading

import pytest

from tests.sbxrun import PROFILE, read_text, run_sh, sbx, status_field

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="these tests run sbx as root (the rootless ones are separate)")


def test_workload_is_not_root_and_no_id_maps_to_host_root():
    p = run_sh("id -u; id -g; cat /proc/self/uid_map; echo --; cat /proc/self/gid_map")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.split("\n")
    assert lines[0] == "65534" and lines[1] == "65534"
    uid_map, gid_map = p.stdout.split("\n", 2)[2].split("--\n")
    for m in (uid_map, gid_map):
        rows = [list(map(int, l.split())) for l in m.strip().splitlines()]
        assert rows, "no id map"
        for inside, outside, count in rows:
            assert outside != 0 and not (outside <= 0 < outside + count), f"maps to host root: {rows}"


def test_concurrent_sandboxes_get_disjoint_host_id_ranges():
    outs: list[str] = []

    def one():
        outs.append(run_sh("cat /proc/self/uid_map; sleep 1").stdout)
    ts = [threading.Thread(target=one) for _ in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    ranges = []
    for o in outs:
        inside, outside, count = map(int, o.split())
        ranges.append((outside, outside + count))
    assert len(ranges) == 3
    ranges.sort()
    for a, b in zip(ranges, ranges[1:]):
        assert a[1] <= b[0], f"overlapping host id ranges: {ranges}"


def test_capability_sets_empty_and_no_new_privs():
    p = run_sh("cat /proc/self/status")
    assert p.returncode == 0, p.stderr
    for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status_field(p.stdout, key), 16) == 0, key
    assert status_field(p.stdout, "NoNewPrivs") == "1"


def test_own_namespaces_for_every_kind():
    host = {k: os.readlink(f"/proc/self/ns/{k}") for k in ("user", "pid", "mnt", "net", "uts", "ipc", "cgroup")}
    p = run_sh("for n in user pid mnt net uts ipc cgroup; do echo $n $(readlink /proc/self/ns/$n); done")
    assert p.returncode == 0, p.stderr
    inside = dict(l.split(" ", 1) for l in p.stdout.strip().splitlines())
    for k, v in host.items():
        assert inside[k] != v, f"{k} namespace shared with the host"


def test_pid_namespace_shows_only_the_sandbox_and_init_is_not_the_workload():
    p = run_sh("echo $$; ls /proc | grep -E '^[0-9]+$' | sort -n | tr '\\n' ' '; echo; cat /proc/1/comm")
    assert p.returncode == 0, p.stderr
    me, pids, init = p.stdout.strip().splitlines()
    assert me != "1", "the workload must not be pid 1"
    # Only init, the shell and the pipeline's own processes: a fresh pid space counting from 1.
    assert set(map(int, pids.split())) <= set(range(1, 12)), f"host processes visible: {pids}"
    assert init.strip() == "sbx-init"


def test_signal_semantics_kill_self_term_is_143():
    assert run_sh("kill -TERM $$").returncode == 143


def test_sigterm_to_sbx_is_forwarded_to_the_workload():
    cmd = [os.sys.executable, "-m", "sandbox", "run", "--profile", PROFILE, "--",
           "/bin/sh", "-c", "trap 'echo got-term; exit 3' TERM; echo started; while :; do sleep 0.1; done"]
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    assert proc.stdout.readline().strip() == "started"
    proc.terminate()
    out, err = proc.communicate(timeout=20)
    assert "got-term" in out, err
    assert proc.returncode == 3


def test_zombies_are_reaped_by_init():
    # The orphaned grandchild exits; init must reap it (no Z state left).
    p = run_sh("(sleep 0.2 &) ; sleep 0.6; grep -l '^State:.*Z' /proc/[0-9]*/status 2>/dev/null | wc -l")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "0"


def test_hostname_is_per_sandbox():
    host = os.uname().nodename
    p = run_sh("hostname", "--hostname", "box1")
    assert p.stdout.strip() == "box1"
    assert os.uname().nodename == host


def test_strict_network_is_loopback_only():
    p = run_sh("cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["lo"]


def test_read_only_root_and_writable_size_capped_tmp():
    p = run_sh("touch /newfile 2>&1; echo rc=$?; echo hi > /tmp/x && cat /tmp/x; df -k /tmp | tail -1")
    assert "Read-only file system" in p.stdout and "rc=1" in p.stdout
    assert "hi" in p.stdout
    size_kb = int(p.stdout.strip().splitlines()[-1].split()[1])
    assert size_kb == 64 * 1024, f"/tmp is not the 64m tmpfs: {size_kb} KiB"


def test_proc_sys_read_only_and_masked_paths_empty():
    p = run_sh("echo x 2>&1 > /proc/sys/kernel/hostname; echo rc=$?")
    assert "rc=0" not in p.stdout and "Read-only file system" in p.stdout + p.stderr, p.stdout + p.stderr
    masked = [m for m in ("/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/interrupts", "/proc/sched_debug")
              if os.path.exists(m)]
    assert masked, "no maskable /proc file on this kernel"
    script = "; ".join(f"echo {m} $(cat {m} 2>/dev/null | wc -c)" for m in masked)
    p = run_sh(script)
    for line in p.stdout.strip().splitlines():
        path, size = line.split()
        assert size == "0", f"{path} is not masked ({size} bytes readable)"


def test_host_private_dirs_are_not_visible():
    p = run_sh("find /home /run /var /root -mindepth 1 2>/dev/null | wc -l; test -e /etc/shadow && echo shadow")
    assert p.stdout.strip().splitlines()[0] == "0", p.stdout
    assert "shadow" not in p.stdout


def test_minimal_dev():
    p = run_sh("ls /dev | sort | tr '\\n' ' '; echo; echo x > /dev/null && echo null-ok; head -c 4 /dev/urandom | wc -c")
    assert p.returncode == 0, p.stderr
    names = set(p.stdout.splitlines()[0].split())
    assert {"null", "zero", "full", "random", "urandom", "tty", "pts", "shm"} <= names
    assert not names & {"sda", "vda", "mem", "kmsg", "port"}, names
    assert "null-ok" in p.stdout


def test_bind_mounts_default_ro_in_strict_and_rw_when_asked(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(d, 0o777)
    (d / "in.txt").write_text("hello")
    p = run_sh("cat /data/in.txt; touch /data/new 2>&1; echo rc=$?", "-v", f"{d}:/data")
    assert "hello" in p.stdout and "rc=1" in p.stdout, p.stdout + p.stderr
    p = run_sh("touch /data/new && echo made", "-v", f"{d}:/data:rw")
    assert "made" in p.stdout, p.stderr
    assert (d / "new").exists()


def test_env_is_clean_and_flags_set_it(tmp_path):
    envf = tmp_path / "e.env"
    envf.write_text("# comment\nFROM_FILE=yes\n")
    p = sbx("run", "--profile", PROFILE, "-e", "A=1", "--env-file", str(envf), "--", "/usr/bin/env",
            env={"SECRET_HOST_VAR": "leak"})
    assert p.returncode == 0, p.stderr
    env = dict(l.split("=", 1) for l in p.stdout.strip().splitlines())
    assert "SECRET_HOST_VAR" not in env
    assert env["A"] == "1" and env["FROM_FILE"] == "yes"
    assert env["PATH"].startswith("/usr/local/bin")


def test_stdin_passes_through():
    p = sbx("run", "--profile", PROFILE, "--", "/bin/cat", input="through the sandbox\n")
    assert p.stdout == "through the sandbox\n"


@pytest.mark.parametrize("script,code", [("exit 0", 0), ("exit 7", 7), ("kill -KILL $$", 137), ("kill -INT $$", 130)])
def test_exit_code_table(script, code):
    assert run_sh(script).returncode == code


def test_not_found_127_and_not_executable_126():
    p = sbx("run", "--profile", PROFILE, "--", "no-such-command-xyz")
    assert p.returncode == 127 and "not found" in p.stderr
    p = sbx("run", "--profile", PROFILE, "--", "/etc/hostname")
    assert p.returncode == 126


def test_timeout_kills_the_whole_sandbox_with_124():
    p = run_sh("sleep 30 & sleep 30", "--timeout", "1", timeout=20)
    assert p.returncode == 124
    assert "timeout" in p.stderr


def test_rlimits_defaults_and_flag():
    p = run_sh("ulimit -n; ulimit -c; ulimit -Hn")
    assert p.stdout.split() == ["1024", "0", "1024"], p.stdout
    p = run_sh("ulimit -n; ulimit -Hn", "--ulimit", "nofile=100:200")
    assert p.stdout.split() == ["100", "200"]


def test_ulimit_above_inherited_hard_limit_is_a_clear_125():
    import resource
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        pytest.skip("this host has no hard RLIMIT_NOFILE to exceed")
    p = run_sh("true", "--ulimit", f"nofile={hard + 1}:{hard + 1}")
    assert p.returncode == 125
    assert p.stderr.count("\n") == 1 and "--ulimit" in p.stderr and "hard limit" in p.stderr


def test_explain_prints_the_resolved_spec_without_running(tmp_path):
    marker = tmp_path / "ran"
    p = sbx("run", "--profile", PROFILE, "--explain", "--memory", "256m", "--", "/bin/touch", str(marker))
    assert p.returncode == 0, p.stderr
    spec = json.loads(p.stdout)
    assert spec["resources"]["memory"] == 256 * 1024 * 1024
    assert spec["uid"] == 65534 and spec["security"]["capabilities"] == []
    assert not marker.exists()


def test_record_has_verification_and_effective_state(tmp_path):
    rec = tmp_path / "rec.json"
    p = sbx("run", "--profile", PROFILE, "--record", str(rec), "--", "/bin/true")
    assert p.returncode == 0, p.stderr
    r = json.loads(rec.read_text())
    assert oct(os.stat(rec).st_mode & 0o777) == "0o600"
    assert r["exit_code"] == 0 and r["verification"]["ok"] is True
    assert r["verification"]["effective"]["cap_eff"] == []
    assert r["verification"]["effective"]["no_new_privs"] == 1
    assert re.fullmatch(r"[0-9a-f]{64}", r["spec_digest"])
    assert "read-only root" in r["verification"]["checked"]


def test_rootfs_mode_pivots_into_the_directory(tmp_path):
    bb = "/bin/busybox"
    if not os.path.exists(bb):
        pytest.skip("busybox-static is not installed (needed to build a rootfs)")
    root = tmp_path / "rootfs"
    (root / "bin").mkdir(parents=True)
    os.chmod(tmp_path, 0o755)
    subprocess.run(["cp", bb, str(root / "bin" / "busybox")], check=True)
    for tool in ("sh", "ls", "cat", "id", "touch"):
        os.symlink("busybox", root / "bin" / tool)
    (root / "marker").write_text("inside-rootfs")
    p = sbx("run", "--profile", PROFILE, "--rootfs", str(root), "-e", "PATH=/bin", "--",
            "/bin/sh", "-c", "cat /marker; ls /; touch /x 2>&1; echo rc=$?; id -u")
    assert p.returncode == 0, p.stderr
    assert "inside-rootfs" in p.stdout and "rc=1" in p.stdout and p.stdout.strip().endswith("65534")
    assert not (root / "x").exists() and not (root / "tmp").exists(), "the user's rootfs must not be written"


def test_sandbox_init_keeps_only_cap_kill_and_is_not_readable_by_the_workload():
    p = run_sh("grep -E '^(CapEff|CapBnd|CapInh|CapAmb|NoNewPrivs|Seccomp):' /proc/1/status; "
               "echo \"cmdline:$(tr '\\0' ' ' < /proc/1/cmdline | tr -s ' ')\"; "
               "cat /proc/1/environ >/dev/null 2>&1 && echo environ-readable || echo environ-denied")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    # pid 1's command line is a name, not sbx's host command line (paths, flags, profile files).
    assert [l for l in lines if l.startswith("cmdline:")] == ["cmdline:sbx-init "], lines
    st = dict(l.split(":", 1) for l in lines[:-1] if not l.startswith("cmdline:"))
    assert int(st["CapEff"], 16) == 1 << 5 and int(st["CapBnd"], 16) == 1 << 5  # CAP_KILL only
    assert int(st["CapInh"], 16) == 0 and int(st["CapAmb"], 16) == 0
    assert st["NoNewPrivs"].strip() == "1"
    assert st["Seccomp"].strip() == "2"  # init carries the workload's filter too
    assert p.stdout.strip().endswith("environ-denied")


def test_parked_workload_holds_no_bind_source_fd(tmp_path):
    """The workload is forked while init holds O_PATH fds of the bind sources (host paths).
    Read its fds while it is parked before exec (at verification): none may name a source.
    After exec nothing beyond stdio is left either."""
    from tests.forked import in_child

    src = tmp_path / "src"
    src.mkdir()

    def attempt() -> dict:
        from sandbox import launch, resolve, verify
        seen: list[str] = []
        orig = verify.check

        def check(spec, f, **kw):
            fd_dir = f"/proc/{f.pid}/fd"
            seen.extend(os.readlink(os.path.join(fd_dir, n)) for n in os.listdir(fd_dir))
            return orig(spec, f, **kw)
        verify.check = check
        after: list[str] = []

        def started(_sid, _init, workload, record=None):
            # The exec happened (release_and_confirm saw it): the workload's fd table, read from outside
            # (reading it from a shell inside races with the shell's own pipeline fds).
            after.extend(sorted(os.listdir(f"/proc/{workload}/fd"), key=int))
        spec = resolve(["/bin/sleep", "1"], profile=PROFILE, volume=[f"{src}:/out:rw"])
        return {"code": launch.run(spec, on_started=started).exit_code, "seen": seen, "after": after}

    os.chmod(tmp_path, 0o755)
    os.chmod(src, 0o777)
    got = in_child(attempt)
    assert got.get("code") == 0, got
    assert got["seen"], "verification did not run"
    assert not [l for l in got["seen"] if l.startswith(str(tmp_path))], got["seen"]
    assert got["after"] == ["0", "1", "2"], got["after"]


def test_spec_digest_is_the_sandbox_not_the_run_options(tmp_path):
    """--record a.json vs b.json (or --name, --rm) are run options beside the Spec: the digest stays."""
    digests = set()
    for i, extra in enumerate((("--record", str(tmp_path / "a.json")), ("--record", str(tmp_path / "b.json")))):
        p = sbx("run", "--profile", PROFILE, *extra, "--", "/bin/true")
        assert p.returncode == 0, p.stderr
        digests.add(json.loads(read_text(extra[1]))["spec_digest"])
    assert len(digests) == 1, digests
    p = sbx("run", "--profile", PROFILE, "--explain", "--name", "x1", "--rm", "--", "/bin/true")
    out = json.loads(p.stdout)
    assert out["run_options"]["name"] == "x1" and out["run_options"]["remove"] is True
    assert "name" not in out and "remove" not in out
