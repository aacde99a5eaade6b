"""Landlock on the real kernel: each test forks a child, landlocks it, and probes what it may do.

No fakes of kernel behaviour; the one test that simulates a host without
Landlock says so in its docstring.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import tempfile

import pytest

from tests.forked import in_child

from sandbox import landlock
from sandbox.errors import SbxError
from sandbox.landlock import Rule
from sandbox.spec import Bind, Filesystem, Security, Spec
from tests.sbxrun import read_text

ABI = landlock.abi_version()
needs_landlock = pytest.mark.skipif(ABI == 0, reason="kernel lacks Landlock (CONFIG_SECURITY_LANDLOCK / lsm=)")


def _errno_of(fn) -> int:
    try:
        fn()
    except OSError as e:
        return e.errno
    return 0


@pytest.fixture
def scratch():
    # /dev/shm is a writable tmpfs: the mount allows everything there, so any
    # denial below is Landlock's doing.
    d = tempfile.mkdtemp(prefix="sbx-ll-", dir="/dev/shm")
    os.mkdir(os.path.join(d, "rw"))
    os.mkdir(os.path.join(d, "ro"))
    with open(os.path.join(d, "ro", "data"), "w") as f:
        f.write("hello")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@needs_landlock
def test_denies_writes_the_mount_allows_and_keeps_reads_and_exec(scratch):
    rw, ro = os.path.join(scratch, "rw"), os.path.join(scratch, "ro")
    # control: without Landlock the tmpfs accepts the write
    with open(os.path.join(ro, "control"), "w") as f:
        f.write("x")
    os.unlink(os.path.join(ro, "control"))

    def body():
        abi = landlock.apply([Rule("/", "ro"), Rule(rw, "rw")])

        def write_ro():
            with open(os.path.join(ro, "new"), "w") as f:
                f.write("x")

        def append_ro():
            with open(os.path.join(ro, "data"), "a") as f:
                f.write("x")

        with open(os.path.join(rw, "ok"), "w") as f:
            f.write("y")
        with open(os.path.join(ro, "data")) as f:
            read = f.read()
        exe = subprocess.run(["/bin/sh", "-c", "echo exec-ok"], capture_output=True, text=True)
        return {
            "abi": abi,
            "write_ro": _errno_of(write_ro),
            "append_ro": _errno_of(append_ro),
            "mkdir_ro": _errno_of(lambda: os.mkdir(os.path.join(ro, "d"))),
            "unlink_ro": _errno_of(lambda: os.unlink(os.path.join(ro, "data"))),
            "read_ro": read,
            "read_etc": open("/etc/os-release").read(16),
            "exec": exe.stdout.strip(),
        }

    out = in_child(body)
    assert out.get("abi") == ABI, out
    assert out["write_ro"] == errno.EACCES
    assert out["append_ro"] == errno.EACCES
    assert out["mkdir_ro"] == errno.EACCES
    assert out["unlink_ro"] == errno.EACCES
    assert out["read_ro"] == "hello"
    assert out["read_etc"]
    assert out["exec"] == "exec-ok"
    assert os.path.exists(os.path.join(rw, "ok"))
    assert not os.path.exists(os.path.join(ro, "new"))


@needs_landlock
def test_wfile_allows_device_writes_but_no_creation(scratch):
    rw = os.path.join(scratch, "rw")

    def body():
        landlock.apply([Rule("/", "ro"), Rule("/dev", "wfile")])
        with open("/dev/null", "w") as f:  # O_TRUNC: needs TRUNCATE on ABI >= 3
            f.write("x")
        return {"mkdir_dev_shm": _errno_of(lambda: os.mkdir(os.path.join(rw, "x"))),
                "mknod_fifo": _errno_of(lambda: os.mkfifo(os.path.join(scratch, "fifo")))}

    out = in_child(body)
    assert out == {"mkdir_dev_shm": errno.EACCES, "mknod_fifo": errno.EACCES}, out


@needs_landlock
def test_missing_and_symlink_rule_paths_are_skipped(scratch):
    rw = os.path.join(scratch, "rw")
    link = os.path.join(scratch, "link")
    os.symlink(rw, link)

    def body():
        landlock.apply([Rule("/", "ro"), Rule(os.path.join(scratch, "absent"), "rw"), Rule(link, "rw")])
        # The symlink was not followed, so rw got no grant: fail closed.
        return {"write_via_link": _errno_of(lambda: open(os.path.join(link, "f"), "w").close())}

    assert in_child(body) == {"write_via_link": errno.EACCES}


@needs_landlock
@pytest.mark.skipif(ABI < 6, reason="Landlock ABI < 6: no signal scoping in this kernel")
def test_signal_scoping_blocks_kill_outside_domain():
    victim = subprocess.Popen(["sleep", "30"])
    try:
        def scoped():
            landlock.apply([Rule("/", "ro")])
            return {"kill": _errno_of(lambda: os.kill(victim.pid, signal.SIGTERM))}

        def unscoped():  # control: same rules, no scoping -> the signal is delivered
            landlock.apply([Rule("/", "ro")], scope_signals=False)
            return {"kill": _errno_of(lambda: os.kill(victim.pid, 0))}

        assert in_child(scoped) == {"kill": errno.EPERM}
        assert victim.poll() is None
        assert in_child(unscoped) == {"kill": 0}
    finally:
        victim.kill()
        victim.wait()


@needs_landlock
def test_children_inherit_the_domain(scratch):
    ro = os.path.join(scratch, "ro")

    def body():
        landlock.apply([Rule("/", "ro")])
        p = subprocess.run(["/bin/sh", "-c", f"echo x > {ro}/fromchild"], capture_output=True, text=True)
        return {"rc": p.returncode, "err": p.stderr}

    out = in_child(body)
    assert out["rc"] != 0 and "denied" in out["err"].lower(), out
    assert not os.path.exists(os.path.join(ro, "fromchild"))


def test_rules_follow_the_mount_plan():
    spec = Spec(argv=("true",), filesystem=Filesystem(binds=(Bind("/srv/a", "/data", readonly=False),
                                                             Bind("/srv/b", "/ref", readonly=True))))
    rules = landlock.rules_for(spec)
    assert Rule("/", "ro") in rules
    assert Rule("/tmp", "rw") in rules and Rule("/dev/shm", "rw") in rules
    assert Rule("/dev", "wfile") in rules and Rule("/proc", "wfile") in rules
    assert Rule("/data", "rw") in rules and Rule("/ref", "ro") in rules
    rw_root = Spec(argv=("true",), filesystem=Filesystem(read_only=False))
    assert Rule("/", "rw") in landlock.rules_for(rw_root)


def test_access_masks_only_use_rights_the_abi_knows():
    for abi in range(1, 8):
        known = landlock.fs_rights(abi)
        for acc in landlock.ACCESS_NAMES:
            assert landlock.access_mask(acc, abi) & ~known == 0
    assert landlock.fs_rights(1) == (1 << 13) - 1
    assert landlock.fs_rights(3) & landlock.TRUNCATE
    with pytest.raises(SbxError):
        landlock.access_mask("rwx", 3)


def test_plan_levels():
    assert landlock.plan(Spec(argv=("true",), security=Security(landlock="off"))) is None
    if ABI:
        p = landlock.plan(Spec(argv=("true",), security=Security(landlock="required")))
        assert p is not None and p.abi == ABI and Rule("/", "ro") in p.rules


def test_required_refused_on_host_without_landlock():
    """A host without Landlock, made real for a forked child (tests/hostsim.py: the kernel's ENOSYS)."""
    from tests.forked import in_child
    from tests.hostsim import no_landlock

    def probe():
        no_landlock()
        out = {"abi": landlock.abi_version()}
        try:
            landlock.plan(Spec(argv=("true",), security=Security(landlock="required")))
        except SbxError as e:
            out.update(code=e.code, message=e.message)
        out["if_available"] = landlock.plan(Spec(argv=("true",), security=Security(landlock="if-available")))
        return out
    r = in_child(probe)
    assert r["abi"] == 0 and r["code"] == 125 and "Landlock" in r["message"], r
    assert r["if_available"] is None


# The end-to-end runs isolate the Landlock stage: seccomp and cgroup caps are
# other stages with their own tests, so they are switched off in this profile.
E2E_PROFILE = """extends: strict
name: ll-e2e
security:
  seccomp: unconfined
  allow_unconfined_seccomp: true
  landlock: {level}
  apparmor: {{level: "off"}}
  selinux: {{mode: "off"}}
resources: {{memory: null, memory_swap: null, cpus: null, pids_limit: null}}
"""


def _e2e(level: str, script: str, env: dict | None = None, preexec=None):
    from tests.sbxrun import sbx
    d = tempfile.mkdtemp(prefix="sbx-ll-e2e-")
    try:
        prof = os.path.join(d, "p.yaml")
        with open(prof, "w") as f:
            f.write(E2E_PROFILE.format(level=level))
        rec = os.path.join(d, "rec.json")
        p = sbx("run", "--profile", prof, "--record", rec, "--", "/bin/sh", "-c", script, env=env, preexec=preexec)
        record = json.loads(read_text(rec)) if os.path.exists(rec) else None
        return p, record
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_required_refused_end_to_end_on_host_without_landlock():
    """`sbx run` with landlock required on a host without Landlock (the kernel's ENOSYS, through a
    seccomp filter under sbx) refuses with 125 and one line naming Landlock; if-available runs and
    records "landlock: not available"."""
    from tests.hostsim import no_landlock
    p, _ = _e2e("required", "true", preexec=no_landlock)
    assert p.returncode == 125, p.stderr
    assert "Landlock" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    p, rec = _e2e("if-available", "true", preexec=no_landlock)
    assert p.returncode == 0, p.stderr
    assert "landlock: not available" in rec["notes"]
    assert not rec.get("landlock_abi")


@needs_landlock
def test_no_environment_variable_drops_landlock():
    """The review's bypass: SBX_FAKE_NO_LANDLOCK=1 made strict run without Landlock, recorded as
    "not available" with verification ok. Now the kernel's answer is the only one."""
    from tests.sbxrun import sbx
    d = tempfile.mkdtemp(prefix="sbx-ll-env-")
    try:
        rec = os.path.join(d, "rec.json")
        p = sbx("run", "--profile", "strict", "--record", rec, "--", "/bin/sh", "-c", "cat /etc/hostname",
                env={"SBX_FAKE_NO_LANDLOCK": "1"})
        assert p.returncode == 0, p.stderr
        record = json.loads(read_text(rec))
        assert record["landlock_abi"] == ABI and "landlock: not available" not in record["notes"], record
    finally:
        shutil.rmtree(d, ignore_errors=True)


@needs_landlock
def test_sandbox_run_is_landlocked_and_workloads_still_work():
    """End to end: the workload runs under the kernel's best ABI (recorded), and normal work
    (/tmp, /dev/null with O_TRUNC, /dev/shm, POSIX mqueue path) still succeeds."""
    p, rec = _e2e("required", "echo ok > /tmp/f && cat /tmp/f && echo x > /dev/null && "
                              "touch /dev/shm/s /dev/mqueue/q && echo fine")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["ok", "fine"]
    assert rec["landlock_abi"] == ABI
    assert "landlock: not available" not in rec["notes"]
