"""Enforcement on kernels this host lacks: pure cgroup v2 and AppArmor, under qemu.

The AppArmor kernel is booted once (module-scoped fixture); a shell script runs every check
in that boot and prints tagged sections that the tests below read. The SELinux boot
(enforcing, labelled guest) is tests/test_vm_selinux.py's.
"""
from __future__ import annotations

import os
import re
import sys

import pytest

from tests.vm.harness import VMResult, run_in_vm, vm_available

pytestmark = pytest.mark.vm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = os.path.join(REPO, ".venv", "bin", "python")
if not os.path.exists(PY):
    PY = sys.executable

PROFILE = "sbx-vmtest"
# Allows running binaries and reading libraries and one marker file; everything
# else (e.g. /etc/hostname, writing /tmp) is denied by AppArmor's default deny.
PROFILE_TEXT = f"""
profile {PROFILE} flags=(enforce) {{
  /usr/bin/** mrix,
  /usr/lib/** mr,
  /usr/lib64/** mr,
  /etc/ld.so.cache r,
  /proc/*/attr/** r,
  /tmp/sbx-vm-allowed r,
}}
"""

APPARMOR_SCRIPT = f"""
sec() {{ echo "=== $1"; }}
sec controllers; cat /sys/fs/cgroup/cgroup.controllers
sec cgroupfs; stat -f -c %T /sys/fs/cgroup
sec v1mounts; grep -c ' cgroup ' /proc/self/mounts
sec lsm; cat /sys/kernel/security/lsm; echo
sec parser
cat > /tmp/{PROFILE}.aa <<'EOF'
{PROFILE_TEXT}
EOF
apparmor_parser -r /tmp/{PROFILE}.aa 2>&1; echo "rc=$?"
grep -c '^{PROFILE} ' /sys/kernel/security/apparmor/profiles
echo allowed-content > /tmp/sbx-vm-allowed
sec unconfined_current; cat /proc/self/attr/current
sec aaexec_current; aa-exec -p {PROFILE} -- sh -c 'cat /proc/self/attr/current' 2>&1
sec attrexec_current; sh -c 'echo "exec {PROFILE}" > /proc/self/attr/exec && exec cat /proc/self/attr/current' 2>&1
sec allowed_read; aa-exec -p {PROFILE} -- cat /tmp/sbx-vm-allowed 2>&1; echo "rc=$?"
sec denied_read; aa-exec -p {PROFILE} -- cat /etc/hostname 2>&1; echo "rc=$?"
sec denied_write; aa-exec -p {PROFILE} -- sh -c 'echo x > /tmp/sbx-vm-denied' 2>&1; echo "rc=$?"
sec unconfined_read; cat /etc/hostname >/dev/null 2>&1; echo "rc=$?"
sec denied_errno
aa-exec -p {PROFILE} -- /usr/bin/python3 -S -c '
import errno
try:
    open("/etc/hostname")
    print("opened")
except OSError as e:
    print(errno.errorcode[e.errno])
' 2>&1
sec import_sandbox
{PY} -c 'import sandbox, sandbox.facts, sandbox.spec; print("ok", sandbox.__file__)' 2>&1
sec stderr; echo to-stderr >&2
exit 7
"""

def _sections(out: str) -> dict[str, str]:
    parts = re.split(r"^=== (\w+)\n", out, flags=re.M)
    return {parts[i]: parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}


def _need_vm() -> None:
    ok, why = vm_available()
    if not ok:
        pytest.skip(why)


@pytest.fixture(scope="module")
def apparmor_boot() -> tuple[VMResult, dict[str, str]]:
    _need_vm()
    r = run_in_vm(["sh", "-c", APPARMOR_SCRIPT], lsm="apparmor", timeout=300)
    return r, _sections(r.output)


def test_harness_returns_status_and_output(apparmor_boot):
    r, s = apparmor_boot
    assert r.exit_code == 7, r.output
    assert s["stderr"] == "to-stderr"
    # Only the command's own output: no kernel log lines, no harness markers.
    assert "SBX-VM" not in r.output and not re.search(r"^\[\s*\d+\.\d+\]", r.output, re.M)
    assert "SBX-VM-EXIT=7" in r.console
    assert 0 < r.boot_seconds < 120


def test_pure_cgroup_v2_with_controllers(apparmor_boot):
    _, s = apparmor_boot
    assert {"cpu", "memory", "pids", "cpuset"} <= set(s["controllers"].split())
    assert s["cgroupfs"] == "cgroup2fs"
    assert s["v1mounts"] == "0"


def test_apparmor_is_the_active_lsm(apparmor_boot):
    _, s = apparmor_boot
    assert "apparmor" in s["lsm"].split(",")
    assert s["unconfined_current"] == "unconfined"


def test_apparmor_profile_loads(apparmor_boot):
    _, s = apparmor_boot
    lines = s["parser"].splitlines()
    assert lines[-2:] == ["rc=0", "1"], s["parser"]


def test_aa_exec_confines_the_workload(apparmor_boot):
    _, s = apparmor_boot
    assert s["aaexec_current"] == f"{PROFILE} (enforce)"


def test_attr_exec_confines_the_workload(apparmor_boot):
    _, s = apparmor_boot
    assert s["attrexec_current"] == f"{PROFILE} (enforce)"


def test_profile_allows_what_it_lists(apparmor_boot):
    _, s = apparmor_boot
    assert s["allowed_read"].splitlines() == ["allowed-content", "rc=0"]


def test_profile_denies_other_paths(apparmor_boot):
    _, s = apparmor_boot
    assert s["unconfined_read"] == "rc=0"   # the file is readable without the profile
    assert "Permission denied" in s["denied_read"] and s["denied_read"].endswith("rc=1")
    assert "Permission denied" in s["denied_write"] and not s["denied_write"].endswith("rc=0")
    assert s["denied_errno"] == "EACCES"


def test_sandbox_imports_inside_vm(apparmor_boot):
    _, s = apparmor_boot
    assert s["import_sandbox"] == f"ok {REPO}/sandbox/__init__.py"


def test_cgroup_suite_passes_on_cgroup_v2():
    path = os.path.join(REPO, "tests", "test_cgroups.py")
    if not os.path.exists(path):
        pytest.skip("tests/test_cgroups.py does not exist yet")
    _need_vm()
    r = run_in_vm([PY, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-rs", "tests/test_cgroups.py"],
                  lsm="apparmor", timeout=900)
    assert r.exit_code == 0, r.output[-4000:]
    m = re.search(r"(\d+) passed", r.output)
    assert m and int(m.group(1)) > 0, r.output[-4000:]


def test_initramfs_holds_init_busybox_modules_and_console():
    # Read back with the real cpio tool: proves our newc writer emits what the kernel unpacks.
    import gzip
    import shutil
    import subprocess

    from tests.vm import build
    _need_vm()
    if shutil.which("cpio") is None:
        pytest.skip("cpio not installed")
    art = build.ensure_artifacts()
    p = subprocess.run(["cpio", "-itv", "--quiet"], input=gzip.decompress(art.initrd.read_bytes()),
                       capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    listing = p.stdout.decode().splitlines()
    names = {line.split()[-1]: line for line in listing}
    assert names["init"].startswith("-rwxr-xr-x")
    assert names["bin/busybox"].startswith("-rwxr-xr-x")
    assert names["dev/console"].startswith("crw")
    mods = {n.rsplit("/", 1)[-1][:-3] for n in names if n.startswith("lib/sbxmod/")}
    assert mods == {m for m in build.MODULES if (art.kernel.parent / "modules" / f"{m}.ko").exists()}
    assert {"9p", "9pnet_virtio", "overlay"} <= mods
