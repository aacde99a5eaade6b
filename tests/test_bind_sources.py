"""-v sources: sbx follows only symlinks owned by root or the invoking user.

A sandbox with a shared read-write volume can plant `cache -> /etc` in it; a
later `-v vol/cache:/cache` must not bind the host's /etc. The same holds for a
symlink another local user planted.
"""
from __future__ import annotations

import os
import pwd
import subprocess

import pytest

from tests.sbxrun import sbx

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs sbx as root")


@pytest.fixture
def world(tmp_path_factory):
    """A world-writable (not sticky) directory another user can reach: pytest's own tmp is 0700."""
    import shutil
    import tempfile
    d = tempfile.mkdtemp(prefix="sbx-bindsrc-", dir="/tmp")
    os.chmod(d, 0o777)
    yield __import__("pathlib").Path(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def shared(tmp_path):
    os.chmod(tmp_path, 0o755)
    vol = tmp_path / "vol"
    vol.mkdir()
    os.chmod(vol, 0o777)
    return vol


def test_symlink_planted_by_a_sandbox_in_a_shared_volume_is_refused(shared):
    p = sbx("run", "-v", f"{shared}:/data:rw", "--", "/bin/sh", "-c", "ln -s /etc /data/cache")
    assert p.returncode == 0, p.stderr
    link = shared / "cache"
    assert os.path.islink(link) and os.lstat(link).st_uid not in (0, os.getuid())
    p = sbx("run", "-v", f"{shared}/cache:/cache", "--", "/bin/sh", "-c", "cat /cache/shadow; ls /cache")
    assert p.returncode == 125, (p.stdout, p.stderr)
    assert "is a symlink owned by uid" in p.stderr and f"{shared}/cache" in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    assert "passwd" not in p.stdout
    # Deeper in the path, too: vol/cache/ssl would walk through the planted link.
    p = sbx("run", "-v", f"{shared}/cache/ssl:/ssl", "--", "/bin/true")
    assert p.returncode == 125 and "is a symlink owned by uid" in p.stderr, p.stderr


def test_symlink_of_another_local_user_is_refused(world):
    try:
        pw = pwd.getpwnam("sbxtest")
    except KeyError:
        pytest.skip("the sbxtest user (made by .ci/setup) is missing")
    link = world / "theirs"
    subprocess.run(["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups",
                    "ln", "-s", "/root", str(link)], check=True)
    assert os.lstat(link).st_uid == pw.pw_uid
    p = sbx("run", "-v", f"{link}:/x", "--", "/bin/true")
    assert p.returncode == 125, p.stderr
    assert f"owned by uid {pw.pw_uid}" in p.stderr, p.stderr


def test_own_and_root_symlinks_are_followed(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "f").write_text("ok\n")
    os.symlink(real, tmp_path / "mine")
    os.chmod(tmp_path, 0o755)
    os.chmod(real, 0o755)
    os.chmod(real / "f", 0o644)
    p = sbx("run", "-v", f"{tmp_path}/mine:/m", "--", "/bin/cat", "/m/f")
    assert p.returncode == 0 and p.stdout == "ok\n", p.stderr


def test_rootfs_through_a_foreign_symlink_is_refused(world):
    try:
        pw = pwd.getpwnam("sbxtest")
    except KeyError:
        pytest.skip("the sbxtest user (made by .ci/setup) is missing")
    link = world / "rootfs"
    subprocess.run(["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups",
                    "ln", "-s", "/", str(link)], check=True)
    p = sbx("run", "--rootfs", str(link), "--", "/bin/true")
    assert p.returncode == 125 and f"owned by uid {pw.pw_uid}" in p.stderr, p.stderr
