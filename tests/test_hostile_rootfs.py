"""A hostile --rootfs: symlinks where sbx mounts must never send a mount (or a file) out of the root.

Each tree is built here and run through the real `sbx run`. Before mount targets
were resolved inside the root, `tmp -> ../../../..` left the host's whole mount
tree above the sandbox's / (`ls /..` listed the host's root, and without
Landlock host files could be read and written).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import subprocess

import pytest

from tests.sbxrun import sbx

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="runs sbx as root"),
    pytest.mark.skipif(not os.path.exists("/bin/busybox"), reason="busybox-static is not installed (builds the rootfs)"),
]

HOST_CANARY = "/sbx-hostile-rootfs-canary"


def make_root(base, links: dict[str, str] = (), dirs: tuple[str, ...] = ()) -> str:
    root = base / "root"
    (root / "bin").mkdir(parents=True)
    shutil.copy("/bin/busybox", root / "bin" / "busybox")
    for tool in ("sh", "ls", "cat", "echo", "stat", "test"):
        os.symlink("busybox", root / "bin" / tool)
    for d in dirs:
        (root / d).mkdir(parents=True, exist_ok=True)
    for name, target in dict(links).items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, p)
    return str(root)


@pytest.fixture(autouse=True)
def _no_canary():
    if os.path.lexists(HOST_CANARY):
        os.unlink(HOST_CANARY)
    yield
    assert not os.path.lexists(HOST_CANARY), "a write from the sandbox landed on the host's /"
    if os.path.lexists(HOST_CANARY):
        os.unlink(HOST_CANARY)


# (entry, link target, extra flags): every place sbx mounts on, with escaping link forms.
ESCAPES = [
    ("tmp", "../../../..", ()),
    ("tmp", "/", ()),
    ("tmp", ".", ()),
    ("tmp", "/../../etc", ()),
    ("proc", "/", ()),
    ("dev", "../../../../dev", ()),
    ("sys", "/", ("--profile", "default")),
]


@pytest.mark.parametrize("entry,target,flags", ESCAPES, ids=[f"{e}->{t}" for e, t, _ in ESCAPES])
def test_symlinked_mount_target_is_refused(tmp_path, entry, target, flags):
    root = make_root(tmp_path, {entry: target})
    for landlock in ("if-available", "off"):
        p = sbx("run", *flags, "--rootfs", root, "--security-opt", f"landlock={landlock}", "--",
                "/bin/sh", "-c", f"ls /..; echo pwned > /..{HOST_CANARY}")
        assert p.returncode == 125, (p.returncode, p.stdout, p.stderr)
        line = p.stderr.strip()
        assert len(line.splitlines()) == 1 and f"/{entry} is a symlink" in line and f"--rootfs {root}" in line, line
        assert "Traceback" not in p.stderr
        assert "boot" not in p.stdout and "etc" not in p.stdout, "the host's / was listed"


def test_symlink_on_the_way_to_a_bind_target_is_refused(tmp_path):
    """`run -> ../../../..` on the way to a bind target: refused, naming the component (the mount would
    otherwise land somewhere else than the path the user named, and verification looks there)."""
    root = make_root(tmp_path, {"run": "../../../.."})
    src = tmp_path / "src"
    src.mkdir()
    p = sbx("run", "--rootfs", root, "-v", f"{src}:/run{HOST_CANARY}", "--", "/bin/true")
    assert p.returncode == 125, p.stderr
    assert "/run is a symlink" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_bind_target_that_is_a_symlink_is_refused(tmp_path):
    root = make_root(tmp_path, {"data": "/etc"})
    src = tmp_path / "src"
    src.mkdir()
    p = sbx("run", "--rootfs", root, "-v", f"{src}:/data", "--", "/bin/true")
    assert p.returncode == 125
    assert "/data is a symlink" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_var_tmp_and_nested_targets(tmp_path):
    """`var/tmp -> /` (an escaping link below a real dir) as a bind target is refused too."""
    root = make_root(tmp_path, {"var/tmp": "/"})
    src = tmp_path / "src"
    src.mkdir()
    p = sbx("run", "--rootfs", root, "-v", f"{src}:/var/tmp", "--", "/bin/true")
    assert p.returncode == 125 and "/var/tmp is a symlink" in p.stderr, p.stderr


def test_sane_rootfs_still_runs_and_sees_only_itself(tmp_path):
    root = make_root(tmp_path, dirs=("tmp", "proc", "dev"))
    p = sbx("run", "--rootfs", root, "--", "/bin/sh", "-c", "ls /..; cat /proc/self/mountinfo")
    assert p.returncode == 0, p.stderr
    listing = p.stdout.splitlines()
    assert "bin" in listing and "boot" not in listing
    mountpoints = [line.split()[4] for line in listing if len(line.split()) > 5 and line.split()[0].isdigit()]
    assert mountpoints.count("/") == 1, mountpoints


# ---- fail closed: a mount table that is not what sbx built kills the workload before exec

def _run_with_tampered_mounts(kind: str, marker: str, q) -> None:
    import sandbox.mounts as m
    from sandbox import launch, syscalls as sc
    from sandbox.errors import SbxError
    from sandbox.profiles import resolve
    from sandbox.records import replace

    orig = m.setup

    def setup(spec, sources, rootless):
        orig(spec, sources, rootless=rootless)
        if kind == "stacked-root":
            sc.mount("tmpfs", "/", "tmpfs", 0, "size=1m")  # a second mount at the sandbox's /
        elif kind == "stray":
            sc.mount("tmpfs", "/home", "tmpfs", 0, "size=1m")  # somewhere sbx never mounts
    m.setup = setup
    spec = resolve(["/bin/true"], profile="strict", volume=[f"{os.path.dirname(marker)}:/out:rw"])
    spec = replace(spec, argv=("/bin/sh", "-c", "echo ran > /out/marker"))
    try:
        r = launch.run(spec)
        q.put(("ran", r.exit_code, ""))
    except SbxError as e:
        q.put(("refused", e.code, e.message))


@pytest.mark.parametrize("kind,needle", [("stacked-root", "root mount"), ("stray", "mount table")])
def test_unexpected_mount_table_fails_closed(tmp_path, kind, needle):
    os.chmod(tmp_path, 0o777)
    marker = str(tmp_path / "marker")
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_run_with_tampered_mounts, args=(kind, marker, q))
    p.start()
    p.join(60)
    kind_, code, msg = q.get(timeout=5)
    assert (kind_, code) == ("refused", 125), (kind_, code, msg)
    assert needle in msg, msg
    assert not os.path.exists(marker), "the workload ran although its mount table was wrong"


def test_host_tmp_bind_is_the_hosts_tmp_not_the_staging_mount(tmp_path):
    """`-v /tmp:/hosttmp` binds the host's /tmp; it used to carry sbx's staging tmpfs (rw copies of the root)."""
    marker = "/tmp/sbx-staging-marker-%d" % os.getpid()
    with open(marker, "w") as f:
        f.write("host\n")
    try:
        p = sbx("run", "-v", "/tmp:/hosttmp", "--", "/bin/sh", "-c",
                f"cat /hosttmp/{os.path.basename(marker)}; ls /hosttmp")
        assert p.returncode == 0, p.stderr
        names = p.stdout.split()
        assert names[0] == "host", "the host's /tmp is not what was bound"
        assert "root" not in names or os.path.isdir("/tmp/root"), "the staging tmpfs was bound"
    finally:
        os.unlink(marker)
    out = subprocess.run(["findmnt", "-n", "-o", "SOURCE", "/tmp"], capture_output=True, text=True).stdout
    assert "sbx-stage" not in out
