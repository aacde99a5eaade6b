"""`sbx` on an enforcing SELinux kernel: Debian's kernel under qemu (tests/vm/) with Debian's
reference policy, enforcing, and a labelled guest (9p carries no labels: the harness mounts each
system tree with the context its file_contexts give it). One boot runs every check and prints
tagged sections that the tests below read.

Proves, enforcing: before sbx's module is loaded, doctor says so with the command to load it, strict
runs unlabelled and says so, a required label refuses; with the module (built offline by the real
semodule into a scratch copy of the host's store, then loaded as `semodule -i` would), strict and
`--security-opt label=type:sbx_t` run the workload as sbx_t with a per-sandbox MCS level; two
sandboxes cannot read each other's files (a tmpfs the test labels); a read that every other layer
allows is denied by SELinux alone and logged as an AVC; an unknown label or level refuses 125 before
the workload runs; the CIL that `sbx policy compile` makes from `restricted` confines a workload;
`sbx audit` reports the labels of a labelled sandbox and of an unconfined process tree; `-v ...:z`
and `:Z` relabel a bind (sbx_file_t, shared or with the sandbox's categories); and sbx's
launch itself hits no denial (every AVC of the boot is one the test provoked).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from tests import sestore
from tests.vm.harness import run_in_vm, vm_available

pytestmark = pytest.mark.vm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = os.path.join(REPO, ".venv", "bin", "python")
if not os.path.exists(PY):
    PY = sys.executable
CIL_SRC = os.path.join(REPO, "policies", "selinux", "sbx.cil")
LEVEL = re.compile(r"s0:c(\d+),c(\d+)\Z")

# T: a tmpfs the test labels inside the VM (9p carries no labels). mcs/ is sbx_file_t (what a user
# labels a rw volume with), world-writable: DAC lets every sandbox in. secret/key is shadow_t, 0644.
# mark/ receives a file from any workload that runs when it must not.
SCRIPT = r"""
sec() {{ echo "=== $1"; }}
SBX="{py} -m sandbox"
T=/run/sbx-se-test
export SBX_CACHE_DIR=/run/sbx-se-cache
sec lsm; cat /sys/kernel/security/lsm; echo
sec enforce; cat /sys/fs/selinux/enforce; echo
sec current; tr -d '\000' < /proc/self/attr/current; echo
sec bindings; /usr/bin/python3 -c 'import selinux; print(selinux.is_selinux_enabled(), selinux.security_getenforce())'
sec labels; ls -Zd /usr /usr/bin/cat /usr/lib /etc /etc/passwd /var/tmp /dev/null
mkdir -p $T/mcs $T/secret $T/mark
mount -t tmpfs -o mode=1777 tmpfs $T/mark
sec doctor0; $SBX doctor --json; echo "rc=$?"
sec strict0; $SBX run --profile strict --record $T/rec0.json -- cat /proc/self/attr/current; echo; echo "rc=$?"
sec rec0; cat $T/rec0.json
sec required0; $SBX run --security-opt label=type:sbx_t -v $T/mark:/mark:rw -- sh -c 'echo ran > /mark/required0' 2>&1; echo "rc=$?"
# What `semodule -i` does once it has built the store: write the policy, load it.
sec install; cp {policy} /etc/selinux/default/policy/policy.33 && load_policy; echo "rc=$?"
sec doctor1; $SBX doctor --json; echo "rc=$?"
sec label; $SBX run --security-opt label=type:sbx_t -- cat /proc/self/attr/current; echo; echo "rc=$?"
sec strict; $SBX run --profile strict --record $T/rec1.json -- cat /proc/self/attr/current; echo; echo "rc=$?"
sec rec1; cat $T/rec1.json
mount -t tmpfs -o mode=1777 tmpfs $T/mcs && chcon -t sbx_file_t $T/mcs
mount -t tmpfs -o mode=0755 tmpfs $T/secret && echo top-secret > $T/secret/key && chmod 0644 $T/secret/key && chcon -t shadow_t $T/secret/key
sec mcs_a; $SBX run -v $T/mcs:/data:rw -- sh -c 'umask 022; cat /proc/self/attr/current; echo; echo secret-a > /data/a; echo "rc=$?"' 2>&1
sec mcs_file; stat -c '%a %C' $T/mcs/a
sec mcs_b; $SBX run -v $T/mcs:/data -- sh -c 'cat /proc/self/attr/current; echo; cat /data/a; echo "rc=$?"' 2>&1
sec mcs_same; $SBX run --security-opt label=level:$(stat -c %C $T/mcs/a | cut -d: -f4-) -v $T/mcs:/data -- sh -c 'cat /proc/self/attr/current; echo; cat /data/a; echo "rc=$?"' 2>&1
sec mcs_host; cat $T/mcs/a
sec secret; $SBX run -v $T/secret:/data -- sh -c 'cat /data/key; echo "rc=$?"' 2>&1
sec secret_nolabel; $SBX run --security-opt label=disable -v $T/secret:/data -- sh -c 'cat /proc/self/attr/current; echo; cat /data/key; echo "rc=$?"' 2>&1
mkdir -p $T/rl $T/rlZ
mount -t tmpfs -o mode=1777 tmpfs $T/rl && chcon -t var_t $T/rl
mount -t tmpfs -o mode=1777 tmpfs $T/rlZ && chcon -t var_t $T/rlZ
sec rl_before; $SBX run -v $T/rl:/d:rw -- sh -c 'echo x > /d/f; echo "rc=$?"' 2>&1
sec rl_z; $SBX run -v $T/rl:/d:rw,z -- sh -c 'echo z > /d/f; cat /d/f; echo "rc=$?"' 2>&1
sec rl_zlabel; stat -c %C $T/rl
sec rl_Z; $SBX run -v $T/rlZ:/d:rw,Z -- sh -c 'cat /proc/self/attr/current; echo; echo Z > /d/g; echo "rc=$?"' 2>&1
sec rl_Zlabel; stat -c %C $T/rlZ
sec rl_Z_other; $SBX run -v $T/rlZ:/d -- sh -c 'cat /d/g; echo "rc=$?"' 2>&1
sec nosuch; $SBX run --security-opt label=type:nosuch_t -v $T/mark:/mark:rw -- sh -c 'echo ran > /mark/nosuch' 2>&1; echo "rc=$?"
sec badlevel; $SBX run --security-opt label=level:s0:c1,c5000 -v $T/mark:/mark:rw -- sh -c 'echo ran > /mark/badlevel' 2>&1; echo "rc=$?"
sec mark; ls -A $T/mark; echo "n=$(ls -A $T/mark | wc -l)"
sec restricted; $SBX run --security-opt label=type:sbx_restricted_t -- sh -c 'cat /proc/self/attr/current; echo; cp /bin/true /tmp/t && /tmp/t; echo "rc=$?"' 2>&1
sec restricted_sbx_t; $SBX run --security-opt label=type:sbx_t -- sh -c 'cp /bin/true /tmp/t && /tmp/t; echo "rc=$?"' 2>&1
$SBX run -d --name se-audit -- sleep 300 > $T/audit.id 2>&1
unshare --pid --fork --mount --mount-proc sleep 300 &
sleep 1
sec audit; $SBX audit --format json; echo "rc=$?"
sec pids; for p in $(pgrep -x sleep); do echo "$p $(tr -d '\000' < /proc/$p/attr/current)"; done
$SBX rm -f se-audit > /dev/null 2>&1
pkill -x unshare
sec avc; dmesg | grep 'avc: ' | sed 's/.*avc: *//'
# Left behind holding the output pipe: the harness must still end the boot (not wait 600 s).
sleep 600 &
"""


def _sections(out: str) -> dict[str, str]:
    out = out.replace("\0", "")   # SELinux contexts in attr/current end with a NUL byte
    parts = re.split(r"^=== (\w+)\n", out, flags=re.M)
    return {parts[i]: parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}


def _json_then_rc(section: str) -> tuple[dict, int]:
    body, _, rc = section.rpartition("\nrc=")
    return json.loads(body), int(rc)


@pytest.fixture(scope="module")
def boot() -> dict[str, str]:
    ok, why = vm_available()
    if not ok:
        pytest.skip(why)
    for tool in ("semodule", "load_policy", "matchpathcon"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (apt-get install policycoreutils semodule-utils selinux-utils)")
    # /var/tmp: on the root the VM shares (its /tmp is a fresh tmpfs).
    d = tempfile.mkdtemp(prefix="sbx-vm-selinux-", dir="/var/tmp")
    try:
        os.chmod(d, 0o755)
        restricted = os.path.join(d, "sbx_restricted.cil")
        p = subprocess.run([PY, "-m", "sandbox", "policy", "compile", "restricted", "--selinux", restricted],
                           capture_output=True, text=True, cwd=REPO, timeout=300)
        assert p.returncode == 0, p.stderr
        policy = sestore.build(os.path.join(d, "store"), [CIL_SRC, restricted])
        # The guest may not write the (unlabelled) repo: its sources must come compiled.
        subprocess.run([PY, "-m", "compileall", "-q", "sandbox", "audit"], cwd=REPO, check=True,
                       capture_output=True, timeout=300)
        start = time.monotonic()
        r = run_in_vm(["sh", "-c", SCRIPT.format(py=PY, policy=policy)], lsm="selinux", timeout=900,
                      env={"PYTHONDONTWRITEBYTECODE": "1"})
        wall = time.monotonic() - start
    finally:
        shutil.rmtree(d, ignore_errors=True)
    s = _sections(r.output)
    s["_setup"] = r.setup
    s["_output"] = r.output
    s["_wall"] = wall
    return s


def _label(line: str, typ: str = "sbx_t") -> str:
    """The MCS level of an sbx label line, after checking user, role and type."""
    user, role, t, level = line.split(":", 3)
    assert (user, role, t) == ("system_u", "system_r", typ), line
    m = LEVEL.match(level)
    assert m and int(m.group(1)) < int(m.group(2)) < 1024, line  # two distinct categories
    return level


def _selinux_check(doc: dict) -> dict:
    return next(c for c in doc["checks"] if c["id"] == "selinux")


def test_boot_is_enforcing_debians_policy_on_a_labelled_guest(boot):
    assert "selinux" in boot["lsm"].split(",") and "apparmor" not in boot["lsm"].split(","), boot["lsm"]
    assert boot["enforce"] == "1"
    assert "load_policy=0" in boot["_setup"], boot["_setup"]
    assert boot["current"] == "system_u:system_r:kernel_t:s0"
    assert boot["_wall"] < 600   # the script's last `sleep 600 &` still holds the output pipe
    # The distro bindings (what sbx loads, not the venv's PyPI shim) see SELinux on and enforcing.
    assert boot["bindings"] == "1 1"
    labels = {path: ctx.split(":")[2] for ctx, path in (ln.split() for ln in boot["labels"].splitlines())}
    assert labels == {"/usr": "usr_t", "/usr/bin/cat": "bin_t", "/usr/lib": "lib_t", "/etc": "etc_t",
                      "/etc/passwd": "etc_t", "/var/tmp": "var_t", "/dev/null": "null_device_t"}, boot["labels"]


def test_doctor_reports_enforcing_and_whether_sbx_module_is_loaded(boot):
    before, rc0 = _json_then_rc(boot["doctor0"])
    after, rc1 = _json_then_rc(boot["doctor1"])
    c0, c1 = _selinux_check(before), _selinux_check(after)
    assert before["facts"]["selinux_mode"] == after["facts"]["selinux_mode"] == "enforcing"
    assert (before["facts"]["selinux_type_loaded"], after["facts"]["selinux_type_loaded"]) == (False, True)
    assert c0["status"] == "warn" and "enforcing" in c0["detail"] and "not loaded" in c0["detail"], c0
    # The module as the package ships it (sandbox/builtin_policies is policies/ in a checkout).
    assert c0["fix"].startswith("sudo semodule -i "), c0
    assert os.path.realpath(c0["fix"].split()[-1]) == os.path.realpath(CIL_SRC), c0
    assert c1["status"] == "ok" and c1["detail"].startswith("enforcing; sbx_t is loaded"), c1
    # strict's SELinux layer is "if-available": a host without sbx's module can still run it.
    assert rc0 == rc1 == 0


def test_without_sbx_module_strict_runs_unlabelled_and_says_so_required_refuses(boot):
    out = boot["strict0"].splitlines()
    assert out == ["system_u:system_r:kernel_t:s0", "rc=0"], out   # never a label not in effect
    rec = json.loads(boot["rec0"])
    assert any("selinux: available but sbx_t is not in the loaded policy" in n for n in rec["notes"]), rec["notes"]
    out = boot["required0"].splitlines()
    assert out[-1] == "rc=125" and len(out) == 2 and "sbx_t" in out[0] and "semodule -i" in out[0], out


def test_workload_runs_as_sbx_t_with_a_per_sandbox_mcs_level(boot):
    assert boot["install"] == "rc=0"
    levels = []
    for name in ("label", "strict"):
        line, rc = boot[name].splitlines()
        assert rc == "rc=0", boot[name]
        levels.append(_label(line))
    rec = json.loads(boot["rec1"])
    assert rec["lsm_label"] == "system_u:system_r:sbx_t:" + levels[1]   # what sbx verified after exec
    levels.append(_label(boot["mcs_a"].splitlines()[0]))
    levels.append(_label(boot["mcs_b"].splitlines()[0]))
    assert len(set(levels)) == len(levels), levels  # each sandbox its own categories


def test_two_sandboxes_cannot_read_each_others_files(boot):
    a = boot["mcs_a"].splitlines()
    level_a = _label(a[0])
    assert a[1:] == ["rc=0"], a
    mode, ctx = boot["mcs_file"].split(" ")
    # The file A wrote carries A's level; DAC lets everyone read it (and the volume is bound to both).
    assert mode == "644" and ctx == f"system_u:object_r:sbx_file_t:{level_a}", boot["mcs_file"]
    b = boot["mcs_b"].splitlines()
    level_b = _label(b[0])
    assert b[1:] == ["cat: /data/a: Permission denied", "rc=1"], b
    same = boot["mcs_same"].splitlines()
    assert _label(same[0]) == level_a and same[1:] == ["secret-a", "rc=0"], same  # it is the level
    assert boot["mcs_host"] == "secret-a"
    assert any(re.search(r'denied\s+\{ read \} for .*name="a"', ln) and f"scontext=system_u:system_r:sbx_t:{level_b} " in ln
               and f"tcontext=system_u:object_r:sbx_file_t:{level_a} tclass=file permissive=0" in ln
               for ln in boot["avc"].splitlines()), boot["avc"]


def test_a_denial_only_selinux_explains_is_logged_as_an_avc(boot):
    # Same sandbox, same bind, same uid, DAC 0644, Landlock allowing the bind: only the label differs.
    assert boot["secret"].splitlines() == ["cat: /data/key: Permission denied", "rc=1"], boot["secret"]
    assert boot["secret_nolabel"].splitlines() == ["system_u:system_r:kernel_t:s0", "top-secret", "rc=0"], \
        boot["secret_nolabel"]
    assert any(re.search(r'denied\s+\{ read \} for .*name="key".*scontext=system_u:system_r:sbx_t:s0:c\d+,c\d+ '
                         r"tcontext=system_u:object_r:shadow_t:s0 tclass=file permissive=0", ln)
               for ln in boot["avc"].splitlines()), boot["avc"]


def test_unknown_label_is_refused_before_the_workload_runs(boot):
    for name, what in (("nosuch", "nosuch_t"), ("badlevel", "c5000")):
        out = boot[name].splitlines()
        assert out[-1] == "rc=125" and len(out) == 2, out
        assert out[0].startswith("sbx: selinux: SELinux context ") and what in out[0], out
    assert "no domain nosuch_t" in boot["nosuch"] and "level is not one the policy defines" in boot["badlevel"]
    assert boot["mark"] == "n=0", boot["mark"]   # neither workload (nor required0's) ever ran


def test_policy_compiled_cil_confines_a_workload(boot):
    out = boot["restricted"].splitlines()
    _label(out[0], "sbx_restricted_t")
    # restricted lets a workload write /tmp but execute only system paths: the copy cannot run...
    assert out[1:] == ["sh: 1: /tmp/t: Permission denied", "rc=126"], out
    # ...while under sbx_t (writable tmpfs, not noexec, Landlock allowing it) it runs.
    assert boot["restricted_sbx_t"] == "rc=0", boot["restricted_sbx_t"]
    assert any(re.search(r"denied\s+\{ execute \} for .*scontext=system_u:system_r:sbx_restricted_t:s0:c\d+,c\d+ "
                         r"tcontext=system_u:object_r:tmpfs_t:s0:c\d+,c\d+ tclass=file permissive=0", ln)
               for ln in boot["avc"].splitlines()), boot["avc"]


def test_audit_reports_the_label_of_a_sandbox_and_of_an_unconfined_tree(boot):
    doc, rc = _json_then_rc(boot["audit"])
    labels = dict(ln.split(" ", 1) for ln in boot["pids"].splitlines())
    by_runtime = {c["runtime"]: c for c in doc["containers"]}
    assert set(by_runtime) == {"sbx", "namespaced"}, [(c["runtime"], c["name"]) for c in doc["containers"]]
    sbx, bare = by_runtime["sbx"], by_runtime["namespaced"]
    assert sbx["name"] == "se-audit"
    _label(sbx["posture"]["lsm_label"])
    assert sbx["posture"]["lsm_label"] == labels[str(sbx["init_pid"])]
    assert bare["posture"]["lsm_label"] == labels[str(bare["init_pid"])] == "system_u:system_r:kernel_t:s0"
    checks = {c["runtime"]: {f["check"] for f in c["findings"]} for c in doc["containers"]}
    assert not checks["sbx"] & {"SBX-A010", "SBX-A011", "SBX-A013"}, checks["sbx"]
    assert "SBX-A011" in checks["namespaced"]   # kernel_t: unconfined
    assert rc in (0, 1, 2)


def test_z_relabels_a_bind_so_that_sbx_t_may_write_it(boot):
    # var_t: no sandbox domain may write it (DAC would: mode 1777, and it is not idmapped: root's)
    assert boot["rl_before"].splitlines()[-1] != "rc=0", boot["rl_before"]
    assert boot["rl_z"].splitlines() == ["z", "rc=0"], boot["rl_z"]
    assert boot["rl_zlabel"] == "system_u:object_r:sbx_file_t:s0", boot["rl_zlabel"]  # shared: no categories


def test_Z_relabels_with_the_sandbox_own_categories(boot):
    line, rc = boot["rl_Z"].splitlines()
    assert rc == "rc=0", boot["rl_Z"]
    level = _label(line)
    assert boot["rl_Zlabel"] == f"system_u:object_r:sbx_file_t:{level}", boot["rl_Zlabel"]
    assert boot["rl_Z_other"].splitlines() == ["cat: /d/g: Permission denied", "rc=1"], boot["rl_Z_other"]


def test_sbx_launch_hits_no_denial(boot):
    """Every AVC of the boot is one of the denials provoked above: sbx's launch into sbx_t or a
    compiled domain (transition under no_new_privs, stdio, SIGCHLD, verification) needs nothing
    that sbx.cil does not grant."""
    seen = set()
    for ln in boot["avc"].splitlines():
        m = re.search(r"denied\s+\{ ([^}]+) \} for .* scontext=(\S+) tcontext=(\S+) tclass=(\S+)", ln)
        assert m, ln
        perms, scon, tcon, tclass = m.groups()
        if scon.split(":")[2] == "sbx_t" and tcon.split(":")[2] == "var_t":
            continue  # rl_before: writing a var_t directory before :z relabels it
        seen.add((perms.strip(), scon.split(":")[2], tcon.split(":")[2], tclass))
    assert seen == {("read", "sbx_t", "sbx_file_t", "file"), ("read", "sbx_t", "shadow_t", "file"),
                    ("execute", "sbx_restricted_t", "tmpfs_t", "file"),
                    ("search", "sbx_t", "sbx_file_t", "dir")}, boot["avc"]  # rl_Z_other: another sandbox's :Z
