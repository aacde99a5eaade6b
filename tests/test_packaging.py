"""The installed wheel works on its own: CI exercises the package's path, not only the checkout's."""
from __future__ import annotations

import glob
import os
import subprocess
import sys
import zipfile

import pytest

from tests.sbxrun import ROOT


@pytest.fixture(scope="module")
def wheel_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                        str(out), ROOT], capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        pytest.fail(f"building the wheel failed: {p.stderr[-800:]}")
    wheels = glob.glob(str(out / "sbx-*.whl"))
    assert len(wheels) == 1, wheels
    target = tmp_path_factory.mktemp("site")
    p = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                        wheels[0]], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    os.chmod(target, 0o755)
    return wheels[0], str(target)


def _from_wheel(site: str, *args: str, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=site)  # the installed copy, ahead of the checkout's path entry
    env.pop("SBX_DEBUG", None)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd="/", timeout=120, **kw)


def test_the_wheel_has_one_import_namespace_and_its_data(wheel_dir):
    whl, _ = wheel_dir
    names = zipfile.ZipFile(whl).namelist()
    tops = {n.split("/")[0] for n in names if not n.startswith("sbx-")}
    assert tops == {"sandbox"}, tops  # no top-level `audit` (Debian's python3-audit owns that name)
    for needed in ("sandbox/audit/checks.py", "sandbox/builtin_profiles/strict.yaml",
                   "sandbox/builtin_policies/seccomp/strict.json", "sandbox/builtin_policies/selinux/sbx.cil",
                   "sandbox/builtin_policies/restricted.yaml"):
        assert needed in names, needed


def test_the_installed_package_runs_from_anywhere(wheel_dir):
    _, site = wheel_dir
    p = _from_wheel(site, "-c", "import sandbox, sandbox.audit.checks as c; print(sandbox.__file__); print(c.__file__)")
    assert p.returncode == 0, p.stderr
    assert all(line.startswith(site) for line in p.stdout.split()), p.stdout  # not the checkout
    p = _from_wheel(site, "-m", "sandbox", "profile", "list")
    assert p.returncode == 0 and "strict" in p.stdout and "default" in p.stdout, p.stderr
    p = _from_wheel(site, "-m", "sandbox", "policy", "list")
    assert p.returncode == 0 and "restricted" in p.stdout, p.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="runs sbx as root")
def test_a_strict_sandbox_from_the_installed_package(wheel_dir):
    _, site = wheel_dir
    p = _from_wheel(site, "-m", "sandbox", "run", "--profile", "strict", "--", "/bin/sh", "-c",
                    "grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status")
    assert p.returncode == 0, p.stderr
    assert "NoNewPrivs:\t1" in p.stdout and "Seccomp:\t2" in p.stdout, p.stdout
