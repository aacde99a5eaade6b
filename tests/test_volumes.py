"""Volumes that keep their owners: idmapped -v binds and named volumes, on the real kernel.

Every sandbox of a root invoker has its own host id range; through an idmapped
mount its workload writes as one host owner, so successive sandboxes (other
ranges) share the files, and the host sees the owner it expects.
"""
from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import time

import pytest

import sandbox
from sandbox import userns, volumes
from tests.sbxrun import PROFILE, read_text, sbx

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs sbx as root")

USER = "sbxtest"


def _user():
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        pytest.skip(f"the {USER} user (made by .ci/setup) is missing")


@pytest.fixture
def vol():
    name = f"sbxtest-{os.getpid()}-{os.urandom(3).hex()}"
    yield name
    sbx("volume", "rm", "-f", name)


@pytest.fixture
def hostdir():
    """A directory the sandbox's ids can reach (pytest's tmp is under a 0700 directory)."""
    d = tempfile.mkdtemp(prefix="sbx-vol-", dir="/var/tmp")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _run(cmd: str, *volumes_: str, **kw) -> sandbox.Result:
    return sandbox.run(["/bin/sh", "-c", cmd], profile=PROFILE, volume=list(volumes_), capture_output=True, text=True,
                       **kw)


def _two_ranges(first: sandbox.Result, again) -> sandbox.Result:
    """Run `again` until it lands in another id slice than `first` (slices are picked at random)."""
    for _ in range(5):
        r = again()
        if r.record["idmap"]["uid_map"] != first.record["idmap"]["uid_map"]:
            return r
    pytest.fail("five runs in a row got the same id slice")


def test_two_sandboxes_with_different_id_ranges_share_a_volume_and_edit_each_others_files(vol):
    a = _run("echo from-a > /data/a; mkdir /data/d; echo x > /data/d/f; id -u", f"{vol}:/data:rw")
    assert a.exit_code == 0, a
    b = _two_ranges(a, lambda: _run("echo from-b >> /data/a; echo b > /data/b; rm /data/d/f; rmdir /data/d; "
                                    "cat /data/a", f"{vol}:/data:rw"))
    assert b.exit_code == 0, (b, b.record.get("messages"))
    assert b.stdout.splitlines() == ["from-a", "from-b"]
    # and back: the first one's kind of sandbox edits what the second wrote
    c = _two_ranges(b, lambda: _run("echo c >> /data/b; cat /data/b; ls -n /data", f"{vol}:/data:rw", user="1000"))
    assert c.exit_code == 0, c
    assert c.stdout.splitlines()[:2] == ["b", "c"]
    owner = userns.volume_owner()
    data = volumes.get(vol).data
    for name in ("a", "b"):
        st = os.lstat(os.path.join(data, name))
        assert (st.st_uid, st.st_gid) == owner, (name, st.st_uid, owner)
    # no sandbox's own range owns them: the volume owner is outside every slice a sandbox gets
    for r in (a, b, c):
        (_, start, count), = r.record["idmap"]["uid_map"]
        assert not start <= owner[0] < start + count


def test_bind_files_belong_to_the_source_owner_on_the_host(hostdir):
    pw = _user()
    os.chown(hostdir, pw.pw_uid, pw.pw_gid)
    a = _run("echo one > /w/f; mkdir /w/sub; ln -s f /w/l; grep ' /w ' /proc/self/mountinfo", f"{hostdir}:/w:rw")
    assert a.exit_code == 0, a
    assert "idmapped" in a.stdout, a.stdout
    b = _two_ranges(a, lambda: _run("echo two >> /w/f; touch /w/sub/g; cat /w/f", f"{hostdir}:/w:rw"))
    assert b.exit_code == 0 and b.stdout.split() == ["one", "two"], b
    for rel in ("f", "sub", "l", "sub/g"):
        st = os.lstat(os.path.join(hostdir, rel))
        assert (st.st_uid, st.st_gid) == (pw.pw_uid, pw.pw_gid), rel
    assert b.record["mounts"][0]["owner"] == {"uid": pw.pw_uid, "gid": pw.pw_gid}


def test_setuid_bits_are_refused_so_no_file_runs_as_the_owner(hostdir):
    # Through the idmapped mount the workload writes as the directory's owner; a setuid file it
    # left there would give anyone on the host that owner's identity. strict's seccomp refuses it.
    pw = _user()
    os.chown(hostdir, pw.pw_uid, pw.pw_gid)
    r = _run("cp /bin/true /w/t; chmod u+s /w/t; echo u=$?; chmod g+s /w/t; echo g=$?; "
             "python3 -c 'import os; os.chmod(\"/w/t\", 0o6755)'; echo py=$?; chmod 700 /w/t; echo plain=$?",
             f"{hostdir}:/w:rw")
    assert r.exit_code == 0, r
    assert r.stdout.split() == ["u=1", "g=1", "py=1", "plain=0"], r.stdout
    st = os.lstat(os.path.join(hostdir, "t"))
    assert st.st_uid == pw.pw_uid and not st.st_mode & (stat.S_ISUID | stat.S_ISGID)


def test_root_owned_source_stays_a_plain_bind_and_idmap_of_it_is_refused(hostdir):
    assert os.stat(hostdir).st_uid == 0
    os.chmod(hostdir, 0o777)
    r = _run("touch /w/f; grep ' /w ' /proc/self/mountinfo", f"{hostdir}:/w:rw")
    assert r.exit_code == 0 and "idmapped" not in r.stdout
    assert os.lstat(os.path.join(hostdir, "f")).st_uid not in (0, os.getuid())  # the sandbox's own range, as before
    assert any("belongs to root" in n for n in r.record["notes"]), r.record["notes"]
    p = sbx("run", "--profile", PROFILE, "-v", f"{hostdir}:/w:rw,idmap", "--", "/bin/true")
    assert p.returncode == 125 and p.stderr.count("\n") == 1, p.stderr
    assert "belongs to root" in p.stderr and "never lets a sandbox write as that" in p.stderr and ":U" in p.stderr


def test_files_a_plain_bind_left_in_a_sandbox_range_are_not_mapped_to(hostdir):
    # An owner from the sandbox id pool is some sandbox's own id: writing as it is refused like root.
    os.chmod(hostdir, 0o777)
    r = _run("mkdir /w/left; echo x > /w/left/f", f"{hostdir}:/w:rw")  # root-owned: plain bind, range-owned files
    assert r.exit_code == 0, r
    left = os.path.join(hostdir, "left")
    base, nslots = userns.pool()
    assert base <= os.stat(left).st_uid < base + nslots * userns.SLICE
    r = _run("echo y >> /w/f; echo z > /w/g", f"{left}:/w:rw")
    assert r.exit_code != 0 and any("a sandbox's own id range" in n for n in r.record["notes"]), r
    r = _run("echo y >> /w/f; echo z > /w/g; cat /w/f", f"{left}:/w:rw,U")
    assert r.stdout.split() == ["x", "y"], r
    assert os.stat(left).st_uid == os.stat(os.path.join(left, "g")).st_uid == userns.volume_owner()[0]


def test_U_hands_a_root_owned_directory_to_the_volume_owner(hostdir):
    os.makedirs(os.path.join(hostdir, "deep", "er"))
    with open(os.path.join(hostdir, "deep", "f"), "w") as f:
        f.write("x\n")
    os.symlink("/etc/passwd", os.path.join(hostdir, "deep", "l"))
    etc_before = os.lstat("/etc/passwd")
    r = _run("echo y >> /w/deep/f; touch /w/deep/er/new; cat /w/deep/f", f"{hostdir}:/w:rw,U")
    assert r.exit_code == 0 and r.stdout.split() == ["x", "y"], r
    owner = userns.volume_owner()
    for rel in ("", "deep", "deep/er", "deep/f", "deep/l", "deep/er/new"):
        st = os.lstat(os.path.join(hostdir, rel))
        assert (st.st_uid, st.st_gid) == owner, rel
    after = os.lstat("/etc/passwd")
    assert (after.st_uid, after.st_gid) == (etc_before.st_uid, etc_before.st_gid) == (0, 0)  # the link, not its target


def test_read_only_binds_are_not_idmapped_unless_asked(hostdir):
    pw = _user()
    os.chown(hostdir, pw.pw_uid, pw.pw_gid)
    with open(os.path.join(hostdir, "secret"), "w") as f:
        f.write("s\n")
    os.chown(os.path.join(hostdir, "secret"), pw.pw_uid, pw.pw_gid)
    os.chmod(os.path.join(hostdir, "secret"), 0o600)
    r = _run("cat /w/secret", f"{hostdir}:/w:ro")
    assert r.exit_code != 0 and "Permission denied" in r.stderr  # the owner's 0600 file stays the owner's
    r = _run("cat /w/secret; touch /w/x", f"{hostdir}:/w:ro,idmap")
    assert r.stdout == "s\n" and "Read-only file system" in r.stderr


def test_a_named_volume_survives_rm_of_its_sandbox(vol):
    name = f"sbxtest-keep-{os.getpid()}"
    p = sbx("run", "--profile", PROFILE, "-d", "--name", name, "-v", f"{vol}:/data:rw", "--", "/bin/sh", "-c",
            "echo kept > /data/f; sleep 30")
    assert p.returncode == 0, p.stderr
    try:
        f = os.path.join(volumes.get(vol).data, "f")
        for _ in range(200):
            if os.path.exists(f):
                break
            time.sleep(0.05)
        info = json.loads(sbx("volume", "inspect", vol, check=True).stdout)[0]
        assert info["in_use"] is True and name in info["used_by"]
    finally:
        rm = sbx("rm", "-f", name)
    assert rm.returncode == 0, rm.stderr
    assert sbx("volume", "ls", "-q").stdout.split().count(vol) == 1
    r = _run("cat /data/f", f"{vol}:/data")
    assert r.stdout == "kept\n", r
    info = json.loads(sbx("volume", "inspect", vol, check=True).stdout)[0]
    assert info["in_use"] is False and info["used_by"] == []


def test_a_volume_in_use_is_not_removed_without_force(vol):
    proc = subprocess.Popen(["python3", "-c", "import sandbox, sys; sandbox.run(['sleep', '30'], volume=[sys.argv[1]])",
                             f"{vol}:/data"], env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(
                                 os.path.abspath(__file__)))})
    try:
        for _ in range(200):
            v = volumes.get(vol)
            if v is not None and volumes.in_use(v):
                break
            time.sleep(0.05)
        else:
            pytest.fail("the sandbox never took its volume")
        p = sbx("volume", "rm", vol)
        assert p.returncode == 125 and "in use" in p.stderr and p.stderr.count("\n") == 1, p.stderr
        assert volumes.get(vol) is not None
        p = sbx("volume", "prune", "-f")
        assert p.returncode == 0 and vol not in p.stdout.split()
        p = sbx("volume", "rm", "-f", vol)
        assert p.returncode == 0 and p.stdout.strip() == vol, p.stderr
        assert volumes.get(vol) is None
    finally:
        proc.kill()
        proc.wait()


def test_a_symlink_planted_in_a_volume_never_redirects_a_later_mount(vol, hostdir):
    r = _run("ln -s /etc /data/cache; ln -s / /data/sub; mkdir /data/real", f"{vol}:/data:rw")
    assert r.exit_code == 0, r
    data = volumes.get(vol).data
    assert os.lstat(os.path.join(data, "cache")).st_uid == userns.volume_owner()[0]
    # 1. a bind through the store path: refused, whoever owns the link
    p = sbx("run", "--profile", PROFILE, "-v", f"{data}/cache:/c", "--", "/bin/cat", "/c/shadow")
    assert p.returncode == 125 and "inside sbx's volume store" in p.stderr and p.stderr.count("\n") == 1, p.stderr
    p = sbx("run", "--profile", PROFILE, "-v", f"{data}/cache/ssl:/c", "--", "/bin/true")
    assert p.returncode == 125 and "volume store" in p.stderr, p.stderr
    # 2. a later mount onto the planted link (inside the volume) lands nowhere else: refused
    p = sbx("run", "--profile", PROFILE, "-v", f"{vol}:/data", "-v", f"{hostdir}:/data/cache", "--", "/bin/true")
    assert p.returncode == 125 and "/data/cache is a symlink" in p.stderr, p.stderr
    # 3. nor through a planted link on the way
    p = sbx("run", "--profile", PROFILE, "-v", f"{vol}:/data", "-v", f"{hostdir}:/data/sub/etc/x", "--", "/bin/true")
    assert p.returncode == 125 and "symlink" in p.stderr, p.stderr
    assert not os.path.exists("/etc/x")
    # the honest nesting still works
    p = sbx("run", "--profile", PROFILE, "-v", f"{vol}:/data", "-v", f"{hostdir}:/data/real", "--", "/bin/sh", "-c",
            "grep -c ' /data' /proc/self/mountinfo")
    assert p.returncode == 0 and p.stdout.strip() == "2", p.stderr


def test_removing_a_volume_never_follows_what_a_sandbox_left_in_it(vol, hostdir):
    victim = os.path.join(hostdir, "victim")
    with open(victim, "w") as f:
        f.write("keep\n")
    r = _run(f"mkdir -p /data/a/b/c; ln -s {hostdir} /data/a/link; ln -s {victim} /data/a/b/file; "
             "mkdir /data/locked; touch /data/locked/f; chmod 0 /data/locked; "
             "i=0; d=/data/deep; while [ $i -lt 200 ]; do d=$d/d; i=$((i+1)); done; mkdir -p $d",
             f"{vol}:/data:rw")
    assert r.exit_code == 0, r
    p = sbx("volume", "rm", vol)
    assert p.returncode == 0, p.stderr
    assert read_text(victim) == "keep\n" and os.path.isdir(hostdir)
    assert not os.path.exists(os.path.join(volumes.store_dir(), vol))


def test_volume_commands(vol):
    p = sbx("volume", "create", "--label", "team=data", vol)
    assert p.returncode == 0 and p.stdout.strip() == vol, p.stderr
    p = sbx("volume", "create", vol)
    assert p.returncode == 125 and "exists already" in p.stderr
    assert vol in sbx("volume", "ls", "-q").stdout.split()
    table = sbx("volume", "ls").stdout
    assert table.splitlines()[0].split() == ["DRIVER", "VOLUME", "NAME", "IN", "USE"]
    info = json.loads(sbx("volume", "inspect", vol).stdout)[0]
    assert info["labels"] == {"team": "data"} and info["mountpoint"].endswith(f"/volumes/{vol}/_data")
    d = os.path.dirname(info["mountpoint"])
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700 and stat.S_IMODE(os.stat(volumes.store_dir()).st_mode) == 0o700
    for bad in ("../x", "-x", "a/b", "x" * 200):
        p = sbx("volume", "create", bad)
        assert p.returncode in (2, 125) and p.stderr.count("\n") == 1, (bad, p.stderr)
    p = sbx("volume", "inspect", vol, "no-such-volume-here")
    assert p.returncode == 125 and "no such volume" in p.stderr and json.loads(p.stdout)[0]["name"] == vol
    p = sbx("volume", "prune")
    assert p.returncode == 125 and "-f" in p.stderr  # no terminal to ask: data is not removed unconfirmed
    assert vol in sbx("volume", "prune", "-f").stdout.split()


@pytest.mark.parametrize("flag,needle", [
    (("-v", "data:/d:rox"), "unknown option 'rox' (did you mean 'ro'?)"),
    (("-v", "data:/d:ro,rw"), "contradict"),
    (("-v", "./rel:/d"), "neither an absolute path nor a volume name"),
    (("-v", "data:/d:z"), "SELinux is not enabled"),
    (("-v", "/etc:/d:z"), "refusing to relabel /etc, a system directory"),
    (("-v", "/usr/share:/d:Z"), "refusing to relabel /usr/share"),
    (("--mount", "type=volume,src=data,target=/d,readonyl"), "unknown key 'readonyl' (did you mean 'readonly'?)"),
    (("--mount", "type=tmpfs,target=/d"), "type=tmpfs is not supported"),
    (("--mount", "type=bind,source=data,target=/d"), "absolute source path"),
    (("--mount", "type=volume,source=data"), "target= is required"),
    (("-v", "data:/d", "-v", "other:/d"), "two binds target /d"),
])
def test_bad_bind_options_are_one_line_125(flag, needle):
    from sandbox import mac
    if "SELinux" in needle and mac.selinux_enabled():
        pytest.skip("SELinux is on here: tests/test_vm_selinux.py relabels for real")
    p = sbx("run", "--profile", PROFILE, *flag, "--", "/bin/true")
    assert p.returncode == 125, (flag, p.stderr)
    assert needle in p.stderr and p.stderr.count("\n") == 1, p.stderr


def test_mount_flag_makes_the_same_bind_as_v(vol):
    p = sbx("run", "--profile", PROFILE, "--explain", "--mount", f"type=volume,source={vol},target=/d",
            "--mount", "type=bind,src=/usr/share,dst=/s,readonly,idmap=false", "-v", f"{vol}:/e:rw", "--", "true")
    assert p.returncode == 0, p.stderr
    binds = json.loads(p.stdout)["filesystem"]["binds"]
    # -v entries first, then --mount ones (each in the order given)
    assert [(b["kind"], b["source"], b["target"], b["readonly"], b["idmap"]) for b in binds] == [
        ("volume", vol, "/e", False, None), ("volume", vol, "/d", True, None),
        ("bind", "/usr/share", "/s", True, False)]
    p = sbx("run", "--profile", PROFILE, "-v", f"{vol}:/e:noidmap", "--", "true")
    assert p.returncode == 125 and "always idmapped" in p.stderr, p.stderr


def test_explain_says_the_caps_of_writable_places():
    p = sbx("run", "--profile", PROFILE, "--explain", "-v", "/var/tmp:/scratch:rw", "--", "true")
    assert p.returncode == 0, p.stderr
    places = {w["path"]: w for w in json.loads(p.stdout)["writable"]}
    assert places["/tmp"]["cap_bytes"] == 64 << 20 and places["/dev/shm"]["cap_bytes"] == 16 << 20
    assert places["/"]["kind"] == "read-only"
    assert places["/scratch"]["cap_bytes"] is None and "not capped by sbx" in places["/scratch"]["note"]
    p = sbx("run", "--profile", "default", "--explain", "--", "true")
    assert json.loads(p.stdout)["writable"][3] == {"path": "/", "kind": "tmpfs", "cap_bytes": 4 << 20}


def _rootless_ok():
    pw = _user()
    py = os.path.realpath(os.sys.executable)
    if os.stat(py).st_mode & 0o005 != 0o005:
        pytest.skip("the test interpreter is not usable by other users")
    return pw


def test_rootless_files_belong_to_the_invoker(tmp_path_factory):
    pw = _rootless_ok()
    d = tempfile.mkdtemp(prefix="sbx-rl-vol-", dir="/tmp")
    os.chmod(d, 0o755)
    home = tempfile.mkdtemp(prefix="sbx-rl-home-", dir="/tmp")
    try:
        os.chown(d, pw.pw_uid, pw.pw_gid)
        os.chown(home, pw.pw_uid, pw.pw_gid)
        prof = os.path.join(home, "rl.yaml")
        with open(prof, "w") as f:
            f.write("extends: strict\ndegrade: allow\n")
        os.chmod(prof, 0o644)
        env = {"XDG_DATA_HOME": home}
        p = sbx("run", "--profile", prof, "-v", f"{d}:/w:rw", "-v", "rlvol:/v:rw", "--", "/bin/sh", "-c",
                "echo a > /w/a; echo b > /v/b; cat /v/b", user=USER, env=env)
        assert p.returncode == 0, p.stderr
        p = sbx("run", "--profile", prof, "-v", "rlvol:/v:rw", "--", "/bin/sh", "-c",
                "echo c >> /v/b; cat /v/b; ln -s /tmp /v/link", user=USER, env=env)
        assert p.returncode == 0 and p.stdout.split() == ["b", "c"], p.stderr
        # The sandbox wrote as the invoker, so its symlink is the invoker's: only the store rule stops it.
        vdata = os.path.join(home, "sbx", "volumes", "rlvol", "_data")
        assert os.lstat(os.path.join(vdata, "link")).st_uid == pw.pw_uid
        p = sbx("run", "--profile", prof, "-v", f"{vdata}/link:/x", "--", "/bin/true", user=USER, env=env)
        assert p.returncode == 125 and "inside sbx's volume store" in p.stderr, p.stderr
        st = os.lstat(os.path.join(d, "a"))
        assert (st.st_uid, st.st_gid) == (pw.pw_uid, pw.pw_gid)
        st = os.lstat(os.path.join(vdata, "b"))
        assert (st.st_uid, st.st_gid) == (pw.pw_uid, pw.pw_gid)
        assert stat.S_IMODE(os.stat(os.path.join(home, "sbx", "volumes")).st_mode) == 0o700
        p = sbx("volume", "rm", "rlvol", user=USER, env=env)
        assert p.returncode == 0 and not os.path.exists(vdata), p.stderr
    finally:
        shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)


def test_policies_treat_a_named_volume_as_data_not_a_host_path(vol, hostdir):
    # restricted refuses read-write host paths (SBX-P042); a named volume is sbx's own data, as a PVC is.
    p = sbx("run", "--profile", PROFILE, "--policy", "restricted", "-v", f"{vol}:/d:rw", "--", "/bin/sh", "-c",
            "echo ok > /d/x; cat /d/x")
    assert p.returncode == 0 and p.stdout == "ok\n", p.stderr
    p = sbx("run", "--profile", PROFILE, "--policy", "restricted", "-v", f"{hostdir}:/d:rw", "--", "/bin/true")
    assert p.returncode == 125 and "SBX-P042" in p.stderr, p.stderr
