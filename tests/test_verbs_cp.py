"""`sbx cp` between the host and a running sandbox: docker's rules, and a hostile sandbox that
plants symlinks and swaps them while we copy. Nothing may be read from or written to the host
outside DST; what the sandbox offers that is not a file (fifos, devices, /proc) is never opened."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.verbstore import inspect, run_d, sh, store, wait_status  # noqa: F401 - store is a fixture

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="starts real sandboxes as root")

TREE = ("mkdir -p /tmp/d/sub && echo top > /tmp/d/f && echo deep > /tmp/d/sub/g && chmod 4755 /tmp/d/f "
        "&& ln -s /etc/hostname /tmp/d/abs && ln -s sub/g /tmp/d/rel && mkfifo /tmp/d/pipe && ")


def _walk(root: str) -> dict[str, os.stat_result]:
    """Every entry under root, by relative path, never following a symlink."""
    out = {}
    for dirpath, dirs, files in os.walk(root, followlinks=False):
        for n in dirs + files:
            p = os.path.join(dirpath, n)
            out[os.path.relpath(p, root)] = os.lstat(p)
    return out


def _one_line_refusal(p) -> None:
    assert p.returncode == 125 and p.stderr.startswith("sbx: cp: ") and p.stderr.count("\n") == 1, p.stderr


# ---------------------------------------------------------------- docker's rules, both ways

def test_cp_follows_dockers_rules_out_of_a_sandbox(store, tmp_path):
    # default, not strict: strict's seccomp refuses setuid bits (chmod 4755), and this checks cp drops one
    run_d(store, "--name", "box", "--profile", "default", script=TREE + "exec sleep 300")
    wait_status(store, "box", "running")
    sh(store, "box", "test -p /tmp/d/pipe")
    out = tmp_path / "out"
    out.mkdir()
    # SRC dir, DST missing: DST becomes the directory
    p = store("cp", "box:/tmp/d", str(out / "new"))
    assert p.returncode == 0, p.stderr
    assert "Successfully copied" in p.stderr and "skipped 1 fifo" in p.stderr
    got = _walk(str(out / "new"))
    assert sorted(got) == ["abs", "f", "rel", "sub", "sub/g"]  # the fifo was neither opened nor created
    assert (out / "new" / "f").read_text() == "top\n" and (out / "new" / "sub" / "g").read_text() == "deep\n"
    assert stat.S_IMODE(got["f"].st_mode) == 0o755  # setuid dropped: root-owned on the host, it would escalate
    assert os.readlink(out / "new" / "abs") == "/etc/hostname" and stat.S_ISLNK(got["abs"].st_mode)
    assert os.readlink(out / "new" / "rel") == "sub/g"
    # SRC dir, DST an existing dir: DST/basename; SRC/. : the contents
    assert store("cp", "box:/tmp/d", str(out)).returncode == 0 and (out / "d" / "sub" / "g").exists()
    (out / "flat").mkdir()
    assert store("cp", "box:/tmp/d/.", str(out / "flat")).returncode == 0
    assert sorted(os.listdir(out / "flat")) == ["abs", "f", "rel", "sub"]
    # SRC file: into a dir, onto a file (replaced), to a new name; relative sandbox paths start at /
    (out / "old").write_text("old contents that are longer\n")
    assert store("cp", "box:tmp/d/f", str(out / "old")).returncode == 0
    assert (out / "old").read_text() == "top\n"
    assert store("cp", "box:/tmp/d/sub/g", str(out) + "/").returncode == 0 and (out / "g").read_text() == "deep\n"
    # a symlink SRC is copied as a link; -L follows it, inside the sandbox's root
    assert store("cp", "box:/tmp/d/abs", str(out / "l1")).returncode == 0 and os.readlink(out / "l1") == "/etc/hostname"
    assert store("cp", "-L", "box:/tmp/d/abs", str(out / "l2")).returncode == 0
    assert (out / "l2").read_text().strip() == sh(store, "box", "cat /etc/hostname").strip() == "box"
    # refusals, one line each
    _one_line_refusal(store("cp", "box:/tmp/d/f", str(out / "missing") + "/"))
    _one_line_refusal(store("cp", "box:/tmp/d", str(out / "old")))
    _one_line_refusal(store("cp", "box:/tmp/nope", str(out)))
    _one_line_refusal(store("cp", "box:/tmp/d/f", str(tmp_path / "no" / "such" / "dir")))
    _one_line_refusal(store("cp", "box:/tmp/d/f/", str(out)))
    _one_line_refusal(store("cp", "box:/proc/self/status", str(out)))
    _one_line_refusal(store("cp", "box:/dev/null", str(out)))
    _one_line_refusal(store("cp", "box:/tmp/d/pipe", str(out)))
    _one_line_refusal(store("cp", "box:/tmp/d", "box:/tmp/e"))
    _one_line_refusal(store("cp", str(out), str(tmp_path)))
    _one_line_refusal(store("cp", "box:/tmp/d", "-"))
    assert not [n for n in _walk(str(out)) if ".sbx-cp-" in n], "no temporary file left behind"


def test_cp_into_a_sandbox_writes_as_its_user_where_it_may_write(store, tmp_path):
    sid = run_d(store, "--name", "inbox", script="exec sleep 300")
    wait_status(store, sid, "running")
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a").write_text("alpha\n")
    (src / "sub" / "b").write_text("beta\n")
    os.chmod(src / "a", 0o4750)
    os.symlink("/etc/shadow", src / "shadowlink")  # copied as a link: the host's shadow is never read
    os.mkfifo(src / "fifo")
    p = store("cp", str(src), "inbox:/tmp/")
    assert p.returncode == 0, p.stderr
    listing = sh(store, "inbox", "cd /tmp/src && ls -ln . sub && cat a sub/b && readlink shadowlink")
    assert "alpha\nbeta\n/etc/shadow\n" in listing and "fifo" not in listing
    for line in listing.splitlines():
        if line[:1] and line[0] in "-dl" and len(line.split()) > 4:
            assert line.split()[2:4] == ["65534", "65534"], line  # the workload's own files
    assert sh(store, "inbox", "stat -c %a /tmp/src/a").strip() == "750"
    assert sh(store, "inbox", "echo more >> /tmp/src/a && rm -r /tmp/src/sub && echo ok").strip() == "ok"
    # docker's rules the other way: a file to a new name, into a dir, SRC/. merges
    assert store("cp", str(src / "a"), "inbox:/tmp/renamed").returncode == 0
    assert sh(store, "inbox", "cat /tmp/renamed") == "alpha\n"
    assert store("cp", str(src) + "/.", "inbox:/tmp/merged").returncode == 0
    assert sorted(sh(store, "inbox", "ls /tmp/merged").split()) == ["a", "shadowlink", "sub"]
    # the sandbox's own mounts decide: its root is read-only, /tmp is size-capped
    _one_line_refusal(p := store("cp", str(src / "a"), "inbox:/etc/a"))
    assert "Read-only file system" in p.stderr
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate(200 << 20)
    p = store("cp", str(big), "inbox:/tmp/big")
    _one_line_refusal(p)
    assert "No space left on device" in p.stderr
    assert ".sbx-cp-" not in sh(store, "inbox", "ls -a /tmp")  # the partial temp file was removed
    _one_line_refusal(store("cp", str(src / "a"), "inbox:/tmp/nodir/"))
    store("kill", sid)
    wait_status(store, sid, "exited")
    p = store("cp", str(src / "a"), "inbox:/tmp/x")
    _one_line_refusal(p)
    assert "not running" in p.stderr


# ---------------------------------------------------------------- a hostile sandbox

SWAP_OUT = """
mkdir -p /tmp/t/sub && echo inside > /tmp/t/sub/file && echo payload > /tmp/t/plain
ln -s {victim} /tmp/t/hostlink
ln -s ../../../../../../../.. /tmp/t/up
ln -s /proc/1/root /tmp/t/magic
mkfifo /tmp/t/fifo
mkdir -p /tmp/real/deeper && echo real > /tmp/real/deeper/x
ln -s {victim} /tmp/evil
i=0
while :; do
  i=$((i+1))
  ln -sfn {victim} /tmp/t/new && mv -T /tmp/t/new /tmp/t/sub
  rm -f /tmp/t/sub; mkdir -p /tmp/t/sub; echo "inside $i" > /tmp/t/sub/file
  ln -sfn / /tmp/t/new && mv -T /tmp/t/new /tmp/t/sub 2>/dev/null
  rm -f /tmp/t/sub; mkdir -p /tmp/t/sub; echo "inside $i" > /tmp/t/sub/file
done
"""


def _victim(tmp_path):
    v = tmp_path / "victim"
    v.mkdir()
    (v / "sentinel").write_text("host secret\n")
    os.chmod(tmp_path, 0o755)
    return v


def test_cp_out_of_a_hostile_sandbox_writes_only_under_dst_and_reads_nothing_of_the_host(store, tmp_path):
    victim = _victim(tmp_path)
    (victim / "demo").write_text("host secret\n")
    sid = run_d(store, "--name", "hostile", script=SWAP_OUT.format(victim=victim))
    wait_status(store, sid, "running")
    sh(store, "hostile", "test -L /tmp/evil && test -p /tmp/t/fifo")
    init = inspect(store, sid)["state"]["init_pid"]
    # The attack is real: resolved by path from the host, the sandbox's absolute link leads to the host.
    with open(f"/proc/{init}/root/tmp/evil/demo") as f:
        assert f.read() == "host secret\n"
    before = _walk(str(victim))  # the sentinel's atime too: unread since it was written, a read would move it
    results = []
    for i in range(12):
        dst = tmp_path / f"dst{i}"
        p = store("cp", "hostile:/tmp/t", str(dst))
        results.append(p)
        assert p.returncode in (0, 125), p.stderr
        if p.returncode == 125:
            _one_line_refusal(p)
            continue
        for rel, st in _walk(str(dst)).items():
            full = dst / rel
            assert os.path.realpath(full.parent).startswith(str(dst)), rel  # no directory on the way was a link
            assert not (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) or stat.S_ISFIFO(st.st_mode)), rel
            if stat.S_ISREG(st.st_mode):
                assert full.read_text() != "host secret\n", rel  # nothing of the host was read
        assert os.readlink(dst / "hostlink") == str(victim) and os.readlink(dst / "magic") == "/proc/1/root"
        sub = dst / "sub"
        if not sub.is_symlink():
            assert (sub / "file").read_text().startswith("inside")
    assert any(p.returncode == 0 for p in results)
    # a link given as SRC, followed (-L or a trailing slash), resolves inside the sandbox's root
    p = store("cp", "-L", "hostile:/tmp/evil", str(tmp_path / "viaL"))
    _one_line_refusal(p)  # the victim's path does not exist in the sandbox
    assert not (tmp_path / "viaL").exists()
    assert store("cp", "hostile:/tmp/t/up/", str(tmp_path / "viaup")).returncode == 125 or \
        not (tmp_path / "viaup" / "sentinel").exists()
    p = store("cp", "-L", "hostile:/tmp/t/magic", str(tmp_path / "viamagic"))
    _one_line_refusal(p)  # a /proc magic link is never followed
    assert _walk(str(victim)) == before, "the host's files were touched"


SWAP_IN = """
mkdir -p /tmp/land
ln -s {victim} /tmp/static
ln -s /proc/1/root/tmp /tmp/magic
while :; do
  ln -sfn {victim} /tmp/new && mv -T /tmp/new /tmp/d
  rm -f /tmp/d; mkdir -p /tmp/d
  ln -sfn ../../../../../../{victim_rel} /tmp/new && mv -T /tmp/new /tmp/d
  rm -f /tmp/d; mkdir -p /tmp/d
done
"""


@pytest.fixture
def open_victim():
    """A host directory anyone may write to, on a path anyone may walk: only sbx's resolution keeps
    a sandbox's writes out of it (the sandbox user's own permissions would not)."""
    import shutil
    import tempfile
    top = tempfile.mkdtemp(prefix="sbx-cp-victim-", dir="/tmp")
    os.chmod(top, 0o755)
    v = os.path.join(top, "victim")
    os.mkdir(v)
    os.chmod(v, 0o777)
    with open(os.path.join(v, "sentinel"), "w") as f:
        f.write("host secret\n")
    yield Path(v)
    shutil.rmtree(top)


def test_cp_into_a_hostile_sandbox_never_lands_on_the_host(store, tmp_path, open_victim):
    victim = open_victim
    before = _walk(str(victim))
    src = tmp_path / "payload"
    src.write_text("from the host\n")
    sid = run_d(store, "--name", "swapper", script=SWAP_IN.format(victim=victim, victim_rel=str(victim).lstrip("/")))
    wait_status(store, sid, "running")
    sh(store, "swapper", "test -L /tmp/static")
    init = inspect(store, sid)["state"]["init_pid"]
    # The attack is real: a write by path through /proc/PID/root follows the link onto the host.
    with open(f"/proc/{init}/root/tmp/static/naive", "w") as f:
        f.write("x")
    assert (victim / "naive").exists()
    os.unlink(victim / "naive")
    p = store("cp", str(src), "swapper:/tmp/static/x")
    _one_line_refusal(p)
    p = store("cp", str(src), "swapper:/tmp/magic/x")
    _one_line_refusal(p)
    ok = 0
    for i in range(15):
        p = store("cp", str(src), f"swapper:/tmp/d/x{i}")
        assert p.returncode in (0, 125), p.stderr
        if p.returncode:
            _one_line_refusal(p)
        ok += p.returncode == 0
    assert _walk(str(victim)) == before, "a write landed on the host"
    # what succeeded landed in the sandbox (or was removed with /tmp/d by its own loop)
    assert store("cp", str(src), "swapper:/tmp/land/").returncode == 0
    assert sh(store, "swapper", "cat /tmp/land/payload") == "from the host\n"


# ---------------------------------------------------------------- bounds

def test_cp_sizes_are_bounded(store, tmp_path):
    sid = run_d(store, "--name", "grower",
                script="head -c 3145728 /dev/zero > /tmp/three; (while :; do head -c 65536 /dev/zero; done) > "
                       "/tmp/grow 2>/dev/null; exec sleep 300")
    wait_status(store, sid, "running")
    sh(store, "grower", "test $(stat -c %s /tmp/three) = 3145728")
    dst = tmp_path / "dst"
    dst.mkdir()
    p = store("cp", "--max-size", "1m", "grower:/tmp/three", str(dst / "three"))
    _one_line_refusal(p)
    assert "exceeds --max-size 1048576 bytes" in p.stderr
    assert os.listdir(dst) == [], "neither the file nor a temporary may be left"
    assert store("cp", "--max-size", "4m", "grower:/tmp/three", str(dst / "three")).returncode == 0
    assert os.path.getsize(dst / "three") == 3145728
    # a file that grows (up to the sandbox's /tmp cap) is cut at the bound, never read to its end
    p = store("cp", "--max-size", "2m", "grower:/tmp/grow", str(dst / "grow"))
    _one_line_refusal(p)
    assert not (dst / "grow").exists()
    p = store("cp", "--max-size", "lots", "grower:/tmp/three", str(dst))
    assert p.returncode == 125 and p.stderr == "sbx: --max-size: 'lots' is not a size (examples: 64m, 1g, 1048576, -1)\n"
    # /dev holds device nodes and kernel file systems: none is opened or created
    p = store("cp", "grower:/dev", str(dst / "dev"))
    assert p.returncode == 0, p.stderr
    for rel, st in _walk(str(dst / "dev")).items():
        assert not (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)), rel
    assert "skipped" in p.stderr
