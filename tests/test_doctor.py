"""`sbx doctor` against the real host: its facts must equal what the kernel says, and its exit
code must follow from its checks (0 = strict can run, 1 = it cannot)."""
from __future__ import annotations

import errno
import json
import os
import resource
import subprocess
import sys

import pytest
from click.testing import CliRunner

from sandbox import doctor, landlock, mac
from tests.sbxrun import ROOT, read_text


def _doctor(*args: str, preexec=None, user: int | None = None, env: dict | None = None):
    cmd = [sys.executable, "-m", "sandbox", "doctor", *args]
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    e = dict(os.environ, PYTHONPATH=ROOT, HOME="/tmp", **(env or {}))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=e, preexec_fn=preexec, cwd="/tmp")


def _json(p) -> dict:
    return json.loads(p.stdout)


def _check(rep: dict, cid: str) -> dict:
    return next(c for c in rep["checks"] if c["id"] == cid)


def _cgroup_fs() -> str:
    kind = None
    for line in read_text("/proc/self/mountinfo").splitlines():
        left, _, right = line.partition(" - ")
        if left.split()[4] == "/sys/fs/cgroup":
            kind = right.split()[0]
    return "v2" if kind == "cgroup2" else "v1"


def test_facts_match_the_host():
    p = _doctor("--json")
    rep = _json(p)
    f = rep["facts"]
    assert f["landlock_abi"] == landlock.abi_version()
    assert f["cgroup"]["version"] == _cgroup_fs()
    assert f["apparmor"] is mac.apparmor_enabled() and f["selinux"] is mac.selinux_enabled()
    if not os.path.exists("/sys/module/apparmor"):
        assert f["apparmor"] is False
    if not os.path.exists("/sys/fs/selinux/enforce"):
        assert f["selinux"] is False
    assert f["seccomp"]["actions_avail"] == read_text("/proc/sys/kernel/seccomp/actions_avail").split()
    hard_nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert f["rlimits_hard"]["nofile"] == (hard_nofile if hard_nofile != resource.RLIM_INFINITY else "unlimited")
    real_userns = subprocess.run(["unshare", "--user", "true"], capture_output=True).returncode == 0
    assert f["userns"]["create_ok"] is real_userns
    assert f["userns"]["max_user_namespaces"] == int(read_text("/proc/sys/user/max_user_namespaces"))
    assert f["kernel"] == os.uname().release
    # exit code follows the checks
    assert rep["strict_can_run"] == all(c["status"] != "fail" for c in rep["checks"])
    assert p.returncode == (0 if rep["strict_can_run"] else 1), p.stderr


def test_human_output_and_click_command():
    res = CliRunner().invoke(doctor.doctor_cmd, [], standalone_mode=False)
    assert "Landlock" in res.output and "strict profile:" in res.output
    rep = doctor.collect()
    assert res.return_value == (0 if rep.strict_ok else 1)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another uid")
def test_rootless_report_for_the_invoker():
    p = _doctor("--json", user=65534)
    rep = _json(p)
    assert rep["uid"] == 65534
    cg = _check(rep, "cgroups")
    if rep["facts"]["cgroup"]["version"] == "v1":
        # cgroup v1 cannot be delegated to an unprivileged user: strict's caps are unenforceable.
        assert cg["status"] == "fail" and "delegat" in cg["detail"] and cg["fix"]
        assert p.returncode == 1 and rep["strict_can_run"] is False
    assert p.returncode == (0 if rep["strict_can_run"] else 1)


def test_low_hard_nofile_fails_with_the_fix():
    """A real lowered hard RLIMIT_NOFILE (below strict's 1024) makes strict unrunnable."""
    def lower():
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
    p = _doctor("--json", preexec=lower)
    rep = _json(p)
    rl = _check(rep, "rlimits")
    assert rl["status"] == "fail" and "nofile" in rl["detail"] and rl["fix"]
    assert rep["facts"]["rlimits_hard"]["nofile"] == 256
    assert p.returncode == 1


def test_blocked_user_namespaces_fail_with_the_fix():
    """A real seccomp filter that refuses unshare (as container runtimes' default profiles do)
    makes the user-namespace probe fail, so doctor exits 1 and says how to fix it."""
    pyseccomp = pytest.importorskip("pyseccomp")

    def block_unshare():
        f = pyseccomp.SyscallFilter(defaction=pyseccomp.ALLOW)
        f.add_rule(pyseccomp.ERRNO(errno.EPERM), "unshare")
        f.load()
    p = _doctor("--json", preexec=block_unshare)
    rep = _json(p)
    u = _check(rep, "userns")
    assert u["status"] == "fail" and "Operation not permitted" in u["detail"] and u["fix"]
    assert "seccomp filter" in u["detail"] and "seccomp profile" in u["fix"] and "CONFIG_USER_NS" not in u["fix"]
    assert rep["facts"]["userns"]["create_ok"] is False
    assert rep["facts"]["overlay_in_userns"] is False
    assert p.returncode == 1


def test_no_landlock_is_a_warning_for_strict():
    """A host without Landlock (the kernel's ENOSYS through a seccomp filter under sbx, tests/hostsim.py):
    strict asks for Landlock only if available, so this warns but does not block."""
    from tests.hostsim import no_landlock
    p = _doctor("--json", preexec=no_landlock)
    rep = _json(p)
    ll = _check(rep, "landlock")
    assert rep["facts"]["landlock_abi"] == 0 and ll["status"] == "warn" and ll["fix"]
    assert p.returncode == (0 if rep["strict_can_run"] else 1)


def test_seccomp_probe_installs_a_real_filter_and_failure_blocks_strict():
    """When the environment forbids installing filters (a real parent filter refusing
    prctl(PR_SET_SECCOMP) and seccomp(2)), doctor's probe fails and strict is reported unrunnable."""
    assert doctor.probe_seccomp_filter() == 0
    pyseccomp = pytest.importorskip("pyseccomp")

    def block_filters():
        f = pyseccomp.SyscallFilter(defaction=pyseccomp.ALLOW)
        f.add_rule(pyseccomp.ERRNO(errno.EPERM), "prctl", pyseccomp.Arg(0, pyseccomp.EQ, 22))
        f.add_rule(pyseccomp.ERRNO(errno.EPERM), "seccomp")
        f.load()
    p = _doctor("--json", preexec=block_filters)
    rep = _json(p)
    sc = _check(rep, "seccomp")
    assert sc["status"] == "fail" and sc["fix"], sc
    assert rep["facts"]["seccomp"]["install_errno"] == "EPERM"
    assert p.returncode == 1


def _doctor_wrapped(tmp_path, outer: str) -> dict:
    """doctor run through `outer` (a command line that ends by running ./inner.sh), in throwaway
    namespaces; inner.sh runs doctor with this interpreter and checkout."""
    inner = tmp_path / "inner.sh"
    inner.write_text(f'#!/bin/sh\ncd {ROOT} && exec {sys.executable} -m sandbox doctor --json\n')
    inner.chmod(0o755)
    os.chmod(tmp_path, 0o755)
    e = dict(os.environ, PYTHONPATH=ROOT, HOME="/tmp")
    p = subprocess.run(["sh", "-c", outer.replace("INNER", str(inner))], capture_output=True, text=True,
                       timeout=60, env=e, cwd="/tmp")
    assert p.stdout, p.stderr
    return json.loads(p.stdout)


def test_a_mount_stacked_on_root_is_diagnosed_not_blamed_on_the_kernel(tmp_path):
    """The HOST-NOTES pitfall, made in a private mount namespace: a bind of / over / makes every
    process "chrooted" and unshare(CLONE_NEWUSER) fails with EPERM. doctor used to say "boot a
    kernel with CONFIG_USER_NS=y"; it names the stacked mount and the umount that fixes it."""
    rep = _doctor_wrapped(tmp_path, "unshare -m sh -c 'mount --bind / / && exec INNER'")
    u = _check(rep, "userns")
    assert u["status"] == "fail" and "stacked on top of /" in u["detail"], u
    assert "umount -l /" in u["fix"] and "CONFIG_USER_NS" not in u["fix"]


def test_a_chroot_is_diagnosed(tmp_path):
    cr = tmp_path / "cr"
    cr.mkdir()
    rep = _doctor_wrapped(tmp_path, f"unshare -m sh -c 'mount --rbind / {cr} && chroot {cr} INNER; true'")
    u = _check(rep, "userns")
    assert u["status"] == "fail" and "chrooted" in u["detail"], u
    assert "CONFIG_USER_NS" not in u["fix"]


def test_exhausted_user_namespace_limit_is_diagnosed(tmp_path):
    """ENOSPC: user.max_user_namespaces is 0 in this (real, nested) user namespace."""
    rep = _doctor_wrapped(tmp_path, "unshare -U -r sh -c 'echo 0 > /proc/sys/user/max_user_namespaces && exec INNER'")
    u = _check(rep, "userns")
    assert u["status"] == "fail" and "max_user_namespaces is 0" in u["detail"], u
    assert "sysctl -w user.max_user_namespaces=" in u["fix"]
