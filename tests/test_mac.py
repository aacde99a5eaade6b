"""AppArmor / SELinux exec labels against this host's real LSM state and real toolchains.

This host runs neither LSM (AppArmor not built in, SELinux built in but
disabled), so the tests here prove: the real kernel state is read correctly,
required-but-absent refuses (125, naming the LSM), if-available records
"not available" and claims no label, the real libselinux/procattr calls fail
into SbxError, and our policy sources compile with the real toolchains.
Enforcement on a real AppArmor kernel is exercised below and on an enforcing SELinux kernel by
tests/test_vm_selinux.py, both under the qemu harness (tests/vm/).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from tests import sestore
from tests.forked import in_child

from sandbox import mac
from sandbox.errors import SbxError
from sandbox.spec import Security
from tests.sbxrun import read_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AA_SRC = os.path.join(ROOT, "policies", "apparmor", "sbx-default")
CIL_SRC = os.path.join(ROOT, "policies", "selinux", "sbx.cil")
AA_ON = mac.apparmor_enabled()
SE_ON = mac.selinux_enabled()


# ---------------------------------------------------------------- host state

def test_apparmor_state_matches_kernel():
    param = "/sys/module/apparmor/parameters/enabled"
    kernel_says = os.path.exists(param) and read_text(param).strip() == "Y"
    if os.path.exists("/sys/kernel/security/lsm"):
        kernel_says = kernel_says and "apparmor" in read_text("/sys/kernel/security/lsm").split(",")
    assert AA_ON == kernel_says


def test_selinux_state_uses_real_bindings_not_the_pypi_shim():
    se = mac.libselinux()
    if se is None:
        pytest.skip("no libselinux Python bindings on this host (python3-selinux)")
    # The venv's PyPI 'selinux' is a shim without setexeccon; we must have the real SWIG module.
    assert hasattr(se, "setexeccon") and hasattr(se, "security_check_context")
    assert SE_ON == (se.is_selinux_enabled() == 1)
    assert SE_ON == os.path.exists("/sys/fs/selinux/enforce")


def test_profiles_listing_parse():
    text = "sbx-default (enforce)\n/usr/bin/man (complain)\nname with space (enforce)\n"
    assert mac.parse_profiles(text) == {"sbx-default", "/usr/bin/man", "name with space"}


# ---------------------------------------------------------------- levels

@pytest.mark.skipif(AA_ON, reason="AppArmor is enabled here; the refusal needs a host without it")
def test_apparmor_required_refused_on_host_without_it():
    with pytest.raises(SbxError) as ei:
        mac.prepare(Security(apparmor="required", apparmor_profile="sbx-default", selinux="off"), "id1")
    assert ei.value.code == 125 and "AppArmor" in ei.value.line()


@pytest.mark.skipif(SE_ON, reason="SELinux is enabled here; the refusal needs a host without it")
def test_selinux_required_refused_on_host_without_it():
    with pytest.raises(SbxError) as ei:
        mac.prepare(Security(apparmor="off", selinux="required", selinux_type="sbx_t"), "id1")
    assert ei.value.code == 125 and "SELinux" in ei.value.line()


@pytest.mark.skipif(AA_ON or SE_ON, reason="needs a host without AppArmor and SELinux")
def test_if_available_records_not_available_and_claims_no_label():
    plan = mac.prepare(Security(apparmor="if-available", apparmor_profile="sbx-default",
                                selinux="if-available", selinux_type="sbx_t"), "id1")
    assert plan.apparmor_profile is None and plan.selinux_context is None
    assert plan.notes == ["apparmor: not available", "selinux: not available"]
    assert mac.expected_label(plan) is None
    assert plan.to_dict()["notes"] == plan.notes


def test_off_means_nothing():
    plan = mac.prepare(Security(apparmor="off", selinux="off"), "id1")
    assert plan == mac.MacPlan()


def test_bad_level_is_one_line_error():
    with pytest.raises(SbxError) as ei:
        mac.prepare(Security(apparmor="maybe"), "id1")
    assert "apparmor" in ei.value.line() and "\n" not in ei.value.line()


def test_mcs_levels_are_two_distinct_random_categories():
    seen = set()
    for _ in range(200):
        lvl = mac.mcs_level()
        sens, cats = lvl.split(":")
        a, b = (int(c[1:]) for c in cats.split(","))
        assert sens == "s0" and 0 <= a < b < mac.MCS_CATEGORIES
        seen.add(lvl)
    assert len(seen) > 150  # random per sandbox, not a constant


def test_expected_label():
    assert mac.expected_label(mac.MacPlan(apparmor_profile="sbx-default")) == "sbx-default"
    ctx = "system_u:system_r:sbx_t:s0:c1,c2"
    assert mac.expected_label(mac.MacPlan(selinux_context=ctx)) == ctx


# ---------------------------------------------------------------- apply on the real kernel

@pytest.mark.skipif(SE_ON, reason="SELinux enabled: setexeccon would succeed")
def test_setexeccon_failure_becomes_sbxerror():
    """The real libselinux setexeccon on a kernel without SELinux fails (EINVAL from procattr);
    apply() must turn that into one SbxError naming SELinux, never a traceback."""
    if mac.libselinux() is None:
        pytest.skip("no libselinux Python bindings on this host")
    out = in_child(lambda: mac.apply(mac.MacPlan(selinux_context="system_u:system_r:sbx_t:s0:c1,c2")))
    assert out.get("code") == 125 and out.get("where") == "selinux", out
    assert "setexeccon" in out["sbx_error"]


@pytest.mark.skipif(AA_ON, reason="AppArmor enabled: the exec profile write would succeed")
def test_apparmor_exec_write_failure_becomes_sbxerror():
    out = in_child(lambda: mac.apply(mac.MacPlan(apparmor_profile="sbx-default")))
    assert out.get("code") == 125 and out.get("where") == "apparmor", out
    assert "sbx-default" in out["sbx_error"]


# ---------------------------------------------------------------- policy sources, real toolchains

def _aa_parser() -> str:
    p = shutil.which("apparmor_parser") or "/sbin/apparmor_parser"
    if not os.path.exists(p):
        pytest.skip("apparmor_parser not installed (apt-get install apparmor)")
    return p


def test_apparmor_profile_compiles_and_a_broken_one_does_not(tmp_path):
    parser = _aa_parser()
    p = subprocess.run([parser, "-Q", "-K", AA_SRC], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    text = read_text(AA_SRC)
    assert "profile sbx-default" in text and "deny mount" in text
    broken = tmp_path / "broken"
    broken.write_text(text.replace("deny mount,", "deny mount"))  # missing comma: a syntax error
    p = subprocess.run([parser, "-Q", "-K", str(broken)], capture_output=True, text=True, timeout=60)
    assert p.returncode != 0


def test_apparmor_profile_compiled_form_denies_what_we_promise():
    """Dump the compiled policy's preprocessed text and check the key denials survive includes."""
    parser = _aa_parser()
    p = subprocess.run([parser, "-p", AA_SRC], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    for rule in ("deny mount,", "deny network raw,", "deny @{PROC}/sys/** w,", "deny /sys/** wklx,",
                 "signal (send, receive) peer=sbx-default,"):
        assert rule in p.stdout


@pytest.fixture(scope="module")
def sbx_store():
    """A scratch copy of the host's real policy store with sbx.cil installed (the host's is untouched)."""
    scratch = tempfile.mkdtemp(prefix="sbx-se-store-")
    try:
        sestore.build(scratch, [CIL_SRC])
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def test_cil_module_installs_into_a_scratch_copy_of_the_real_policy_store(sbx_store):
    listed = subprocess.run(["semodule", "-p", sbx_store, "-l"], capture_output=True, text=True, timeout=60)
    assert "sbx" in listed.stdout.split()
    assert os.path.getsize(os.path.join(sbx_store, "etc/selinux/default/policy/policy.33")) > 0


def test_broken_cil_module_is_rejected_by_the_same_toolchain(sbx_store):
    policy = os.path.join(sbx_store, "etc/selinux/default/policy/policy.33")
    before = os.stat(policy).st_mtime_ns
    bad_dir = tempfile.mkdtemp(prefix="sbx-bad-cil-")
    try:
        # same module name as ours, naming a type the policy lacks
        bad = os.path.join(bad_dir, "sbx.cil")
        with open(bad, "w") as f:
            f.write(read_text(CIL_SRC).replace("(tmpfs_t tmp_t sbx_file_t)", "(tmpfs_t nosuch_t sbx_file_t)"))
        p = subprocess.run(["semodule", "-p", sbx_store, "-n", "-i", bad], capture_output=True, text=True,
                           timeout=120)
    finally:
        shutil.rmtree(bad_dir, ignore_errors=True)
    assert p.returncode != 0 and "resolve" in (p.stderr + p.stdout).lower()
    assert os.stat(policy).st_mtime_ns == before  # the failed install changed nothing


# ---------------------------------------------------------------- end to end through sbx run

E2E = """extends: strict
name: mac-e2e
security:
  seccomp: unconfined
  allow_unconfined_seccomp: true
  apparmor: {{profile: sbx-default, level: {aa}}}
  selinux: {{type: sbx_t, mode: {se}}}
resources: {{memory: null, memory_swap: null, cpus: null, pids_limit: null}}
"""


def _run(aa: str, se: str, *flags: str):
    from tests.sbxrun import sbx
    d = tempfile.mkdtemp(prefix="sbx-mac-e2e-")
    try:
        prof = os.path.join(d, "p.yaml")
        with open(prof, "w") as f:
            f.write(E2E.format(aa=aa, se=se))
        rec = os.path.join(d, "rec.json")
        p = sbx("run", "--profile", prof, "--record", rec, *flags, "--", "/bin/sh", "-c",
                "cat /proc/self/attr/current; echo; echo done")
        return p, (json.loads(read_text(rec)) if os.path.exists(rec) else None)
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.skipif(AA_ON or SE_ON, reason="needs a host without AppArmor and SELinux")
def test_run_refuses_required_lsms_and_records_unavailable_ones():
    p, _ = _run("required", "if-available")
    assert p.returncode == 125 and "AppArmor" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    p, _ = _run("if-available", "required")
    assert p.returncode == 125 and "SELinux" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    p, _ = _run("if-available", "if-available", "--security-opt", "apparmor=sbx-default")
    assert p.returncode == 125 and "AppArmor" in p.stderr, p.stderr
    p, rec = _run("if-available", "if-available")
    assert p.returncode == 0, p.stderr
    assert "done" in p.stdout
    assert "apparmor: not available" in rec["notes"] and "selinux: not available" in rec["notes"]
    # never claim a label: nothing in the record names sbx-default or sbx_t as in effect
    blob = json.dumps({k: v for k, v in rec.items() if k not in ("spec", "argv")})
    assert "sbx_t:" not in blob


# ---------------------------------------------------------------- a real AppArmor kernel (qemu)

VM_SCRIPT = r"""
cd {repo}
PY={py}
echo "LSM=$(cat /sys/kernel/security/lsm)"
grep -c '^sbx-default ' /sys/kernel/security/apparmor/profiles | sed 's/^/PRELOADED=/'
$PY -m sandbox run --record {d}/rec.json -- /bin/sh -c '
  echo "LABEL=$(cat /proc/self/attr/current)"
  echo "exec sbx-default" > /proc/self/attr/apparmor/exec 2>/dev/null && echo ATTRW=ok || echo ATTRW=denied
  echo hi > /tmp/x && echo TMP=ok'
echo "RUN=$?"
$PY -m sandbox run --profile {d}/noaa.yaml -- /bin/sh -c '
  echo "LABEL_OFF=$(cat /proc/self/attr/current)"
  (exec 3>/proc/self/attr/apparmor/exec) 2>/dev/null && echo ATTRW_OFF=opened || echo ATTRW_OFF=denied'
$PY -m sandbox run --security-opt apparmor=nosuch -- true 2>{d}/nosuch.err; echo "NOSUCH=$?"
$PY -m sandbox doctor --json > {d}/doctor.json; echo "DOCTOR=$?"
"""


@pytest.mark.vm
def test_apparmor_confinement_on_a_real_apparmor_kernel():
    """Boot Debian's AppArmor kernel (qemu, host root read-only): strict loads sbx-default by
    itself, the workload runs under it (attr/current), the profile denies what neither mounts
    nor Landlock deny (writing its own attr/exec), a named profile that is not loaded refuses 125,
    and doctor sees AppArmor and cgroup v2."""
    from tests.vm import harness
    ok, why = harness.vm_available()
    if not ok:
        pytest.skip(why)
    d = tempfile.mkdtemp(prefix="sbx-mac-vm-", dir="/var/tmp")  # on the shared root, not a tmpfs
    try:
        os.chmod(d, 0o755)
        with open(os.path.join(d, "noaa.yaml"), "w") as f:
            f.write('extends: strict\nname: noaa\nsecurity:\n  apparmor: {level: "off"}\n')
        script = os.path.join(d, "t.sh")
        with open(script, "w") as f:
            f.write(VM_SCRIPT.format(repo=ROOT, py=sys.executable, d=d))
        r = harness.run_in_vm(["sh", script], lsm="apparmor", timeout=600)
        # the guest writes through an overlay: read its files from the command's output instead
        out = dict(line.split("=", 1) for line in r.output.splitlines() if "=" in line and line[:1].isupper())
    finally:
        shutil.rmtree(d, ignore_errors=True)
    assert "apparmor" in out["LSM"].split(","), r.output
    assert out["PRELOADED"] == "0"  # sbx loaded it, nobody else
    assert out["RUN"] == "0", r.output
    assert out["LABEL"] == "sbx-default (enforce)"
    assert out["ATTRW"] == "denied" and out["TMP"] == "ok"
    assert out["LABEL_OFF"] == "unconfined" and out["ATTRW_OFF"] == "opened"
    assert out["NOSUCH"] == "125"
    assert out["DOCTOR"] == "0"
