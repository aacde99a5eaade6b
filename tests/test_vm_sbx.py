"""`sbx run` end to end on kernels this host lacks (qemu harness in tests/vm/):
AppArmor active + pure cgroup v2. One boot runs every check and prints tagged sections.

Proves: the strict workload execs under sbx-default (attr/current), AppArmor denies
what no other layer would (writing the process's own /proc/self/mem), a profile
that *requires* an AppArmor profile that is not loaded is refused, and the cgroup
v2 backend enforces memory (OOM -> 137 + message), pids and cpuset through sbx, and a
JVM-style reader finds those limits in the sandbox's own read-only /sys/fs/cgroup.
"""
from __future__ import annotations

import os
import re
import sys

import pytest

from tests.vm.harness import run_in_vm, vm_available

pytestmark = pytest.mark.vm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = os.path.join(REPO, ".venv", "bin", "python")
if not os.path.exists(PY):
    PY = sys.executable
SBX = f"{PY} -m sandbox"

from tests.test_cgroup_view import READER as CGROUP_READER  # noqa: E402 - the JVM-style limits reader

MEM_PROBE = ('import errno\ntry:\n    open("/proc/self/mem", "wb")\n    print("opened")\n'
             'except OSError as e:\n    print(errno.errorcode[e.errno])\n')

# Forks until the pids cap says EAGAIN; prints "forked failed".
PIDS_PROBE = ('import os, errno, time\nok = fail = 0\nfor _ in range(20):\n    try:\n        pid = os.fork()\n'
              '    except OSError as e:\n        fail += e.errno == errno.EAGAIN\n        continue\n'
              '    if pid == 0:\n        time.sleep(3)\n        os._exit(0)\n    ok += 1\nprint(ok, fail)\n')

SCRIPT = f"""
sec() {{ echo "=== $1"; }}
export SBX_CACHE_DIR=/var/cache/sbx-vm
sec lsm; cat /sys/kernel/security/lsm; echo
sec label; {SBX} run --profile strict -- cat /proc/self/attr/current 2>&1; echo "rc=$?"
sec loaded; grep -c '^sbx-default ' /sys/kernel/security/apparmor/profiles
sec mem_confined; {SBX} run --profile strict -- /usr/bin/python3 -S  -c '{MEM_PROBE}' 2>&1
sec mem_unconfined; /usr/bin/python3 -S  -c '{MEM_PROBE}' 2>&1
sec missing_profile; {SBX} run --profile strict --security-opt apparmor=no-such-profile -- /bin/true 2>&1; echo "rc=$?"
sec status; {SBX} run --profile strict -- grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status 2>&1
sec policy_load; apparmor_parser -r "$SBX_POLICY_AA" 2>&1; echo "rc=$?"
sec policy_label; {SBX} run --profile strict --security-opt apparmor=sbx-restricted -- cat /proc/self/attr/current 2>&1
sec policy_denied; {SBX} run --profile strict --security-opt apparmor=sbx-restricted -- /bin/sh -c 'cp /bin/true /tmp/t && /tmp/t; echo "rc=$?"' 2>&1
sec policy_unconfined_ok; {SBX} run --profile strict -- /bin/sh -c 'cp /bin/true /tmp/t && /tmp/t; echo "rc=$?"' 2>&1
sec cgroup; {SBX} run --profile strict --memory 64m --memory-swap 64m --pids-limit 50 -- cat /proc/self/cgroup 2>&1
sec oom; {SBX} run --profile strict --memory 48m --memory-swap 48m -- /usr/bin/python3 -S -c "b = bytearray(300 << 20); print('survived')" 2>&1; echo "rc=$?"
sec pids; {SBX} run --profile strict --pids-limit 8 -- /usr/bin/python3 -S -c '{PIDS_PROBE}' 2>&1
sec cpuset; {SBX} run --profile strict --cpuset-cpus 1 -- grep Cpus_allowed_list /proc/self/status 2>&1
sec jvm; {SBX} run --profile strict --memory 80m --memory-swap 80m --cpus 0.5 --pids-limit 33 -- /usr/bin/python3 -S -c '{CGROUP_READER}' 2>&1
sec cgview; {SBX} run --profile strict -- /bin/sh -c 'grep " /sys/fs/cgroup" /proc/self/mountinfo; ls /sys/fs/cgroup | grep -c -E "^[0-9a-f]{{64}}$"; touch /sys/fs/cgroup/x 2>&1' 2>&1
sec leftover; ls /sys/fs/cgroup/sbx 2>/dev/null | grep -c -E '^[0-9a-f]{{64}}$'
"""


def _sections(out: str) -> dict[str, str]:
    parts = re.split(r"^=== (\w+)\n", out, flags=re.M)
    return {parts[i]: parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}


@pytest.fixture(scope="module")
def boot() -> dict[str, str]:
    ok, why = vm_available()
    if not ok:
        pytest.skip(why)
    # The policy's generated AppArmor profile, compiled on the host (validated there by apparmor_parser -Q -K);
    # /var/tmp is on the root the VM shares.
    import subprocess
    import tempfile
    d = tempfile.mkdtemp(prefix="sbx-vm-policy-", dir="/var/tmp")
    aa = os.path.join(d, "restricted.aa")
    p = subprocess.run([PY, "-m", "sandbox", "policy", "compile", "restricted", "--apparmor", aa],
                       capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stderr
    try:
        r = run_in_vm(["sh", "-c", SCRIPT], lsm="apparmor", timeout=900, env={"SBX_POLICY_AA": aa})
    finally:
        import shutil
        shutil.rmtree(d, ignore_errors=True)
    return _sections(r.output)


def test_apparmor_is_active_in_the_vm(boot):
    assert "apparmor" in boot["lsm"].split(",")


def test_strict_workload_execs_under_sbx_default(boot):
    assert boot["label"].splitlines()[0] == "sbx-default (enforce)", boot["label"]
    assert boot["label"].endswith("rc=0")
    assert boot["loaded"] == "1", "sbx loaded its own profile"


def test_apparmor_denies_what_no_other_layer_denies(boot):
    # Without AppArmor a process may open its own /proc/self/mem for writing.
    assert boot["mem_unconfined"] == "opened", boot["mem_unconfined"]
    assert boot["mem_confined"] == "EACCES", boot["mem_confined"]


def test_required_profile_not_loaded_is_refused(boot):
    out = boot["missing_profile"]
    assert out.endswith("rc=125"), out
    assert "no-such-profile" in out


def test_other_controls_hold_on_the_apparmor_kernel(boot):
    st = dict(l.split(":", 1) for l in boot["status"].splitlines())
    assert int(st["CapEff"].strip(), 16) == 0
    assert st["NoNewPrivs"].strip() == "1" and st["Seccomp"].strip() == "2"


def test_cgroup_v2_namespace_root(boot):
    # Pure v2 and a cgroup namespace: the workload sees itself at the root.
    assert boot["cgroup"] == "0::/", boot["cgroup"]


def test_cgroup_v2_memory_limit_oom_137(boot):
    out = boot["oom"]
    assert out.endswith("rc=137"), out
    assert "survived" not in out and "OOM" in out


def test_cgroup_v2_pids_limit(boot):
    ok, fail = map(int, boot["pids"].split()[-2:])
    assert ok < 8 and fail > 0, boot["pids"]  # forks beyond the cap fail with EAGAIN


def test_cgroup_v2_cpuset(boot):
    assert boot["cpuset"].split()[-1] == "1", boot["cpuset"]


def test_a_jvm_style_reader_sees_its_limits_on_cgroup_v2(boot):
    import json
    out = json.loads(boot["jvm"].splitlines()[-1])
    assert out["mounts"] == ["unified"] and out["paths"] == {"unified": "/"}, out
    assert (out["memory"], out["cpu"], out["pids"]) == (str(80 << 20), "50000 100000", "33"), out


def test_cgroup_v2_view_is_its_own_read_only_cgroup(boot):
    lines = boot["cgview"].splitlines()
    mount = [l for l in lines if " /sys/fs/cgroup " in l]
    assert len(mount) == 1 and mount[0].split()[3] == "/" and mount[0].split()[5].startswith("ro,"), lines
    assert " - cgroup2 " in mount[0]
    assert lines[1] == "0"  # no sibling sandbox cgroups in view
    assert "Read-only file system" in lines[2], lines


def test_no_sandbox_cgroup_left(boot):
    assert boot["leftover"] == "0"


def test_policy_compiled_apparmor_profile_confines_a_workload(boot):
    assert boot["policy_load"].endswith("rc=0"), boot["policy_load"]
    assert boot["policy_label"] == "sbx-restricted (enforce)", boot["policy_label"]
    # The restricted policy allows exec only from system paths: a copy in /tmp (writable, not noexec,
    # allowed by Landlock) cannot be executed under its profile, but can without it.
    assert "Permission denied" in boot["policy_denied"] and boot["policy_denied"].endswith("rc=126"), boot["policy_denied"]
    assert boot["policy_unconfined_ok"].endswith("rc=0"), boot["policy_unconfined_ok"]
