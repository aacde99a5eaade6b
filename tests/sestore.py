"""A scratch copy of the host's real SELinux policy store, with modules installed into it by the real
`semodule` (the host's own store and policy are never touched)."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

STORE = "/var/lib/selinux/default"
POLICY = "etc/selinux/default/policy/policy.33"  # inside the scratch root


def build(root: str, modules: list[str]) -> str:
    """Copy the store and /etc/selinux under `root`, install `modules`; returns the built policy's path.
    Skips when this host has no policy store or semodule."""
    if not os.path.isdir(STORE) or not shutil.which("semodule"):
        pytest.skip("no SELinux policy store / semodule (apt-get install selinux-policy-default semodule-utils)")
    os.makedirs(os.path.join(root, "var/lib/selinux"), exist_ok=True)
    shutil.copytree(STORE, os.path.join(root, "var/lib/selinux/default"), symlinks=True)
    shutil.copytree("/etc/selinux", os.path.join(root, "etc/selinux"), symlinks=True)
    argv = ["semodule", "-p", root, "-n"]
    for m in modules:
        argv += ["-i", m]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr
    return os.path.join(root, POLICY)
