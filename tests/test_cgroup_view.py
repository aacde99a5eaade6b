"""Limits a runtime can read: the sandbox's own cgroup, read-only, at /sys/fs/cgroup.

JVMs, Go and Node size their heaps and thread pools from the cgroup files they
find through /proc/self/mountinfo and /proc/self/cgroup. READER does what they
do (the JVM's CgroupSubsystemFactory: cgroup mounts from mountinfo, the
process's path from /proc/self/cgroup, joined under the mount's root) and
prints the limits it finds. This host is cgroup v1 (hybrid); tests/test_vm_sbx.py
runs the same reader on a pure cgroup v2 kernel.
"""
from __future__ import annotations

import json
import os

import pytest

from tests.sbxrun import PROFILE, sbx

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs sbx as root")

READER = r'''
import json, os
mounts = {}
for line in open("/proc/self/mountinfo"):
    pre, _, post = line.partition(" - ")
    f = pre.split()
    fstype, _src, sopts = post.split()[:3]
    if fstype == "cgroup2":
        mounts["unified"] = (f[3], f[4])
    elif fstype == "cgroup":
        for c in sopts.split(","):
            if c in ("memory", "cpu", "pids", "cpuacct"):
                mounts[c] = (f[3], f[4])
paths = {}
for line in open("/proc/self/cgroup"):
    h, ctrls, path = line.rstrip("\n").split(":", 2)
    for c in (ctrls.split(",") if ctrls else ["unified"]):
        paths[c] = path
def file(ctrl, name):
    root, mp = mounts[ctrl]
    rel = os.path.relpath(paths[ctrl], root)
    p = os.path.normpath(os.path.join(mp, rel, name))
    return open(p).read().strip()
out = {"mounts": sorted(mounts), "paths": paths}
if "unified" in mounts and "memory" not in mounts:
    out["memory"] = file("unified", "memory.max")
    out["cpu"] = file("unified", "cpu.max")
    out["pids"] = file("unified", "pids.max")
else:
    out["memory"] = file("memory", "memory.limit_in_bytes")
    out["cpu"] = file("cpu", "cpu.cfs_quota_us") + " " + file("cpu", "cpu.cfs_period_us")
    out["pids"] = file("pids", "pids.max")
print(json.dumps(out))
'''


def _read(*flags: str) -> dict:
    p = sbx("run", "--profile", PROFILE, *flags, "--", "/usr/bin/python3", "-S", "-c", READER)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_a_jvm_style_reader_sees_its_memory_and_cpu_limits():
    out = _read("--memory", "96m", "--memory-swap", "96m", "--cpus", "0.5", "--pids-limit", "42")
    assert out["memory"] == str(96 << 20), out
    assert out["cpu"] == "50000 100000", out
    assert out["pids"] == "42", out
    assert set(out["paths"].values()) == {"/"}  # the namespace root is the sandbox's own cgroup


def test_only_its_own_cgroup_is_visible_and_nothing_can_be_written():
    sid_probe = ("import os, errno\n"
                 "print(sorted(os.listdir('/sys/fs/cgroup')))\n"
                 "mem = '/sys/fs/cgroup/memory'\n"
                 "print(sorted(d for d in os.listdir(mem) if os.path.isdir(os.path.join(mem, d))))\n"
                 "print(os.path.realpath(mem + '/..'))\n"
                 "for p in (mem + '/memory.limit_in_bytes', mem + '/x', '/sys/fs/cgroup/y'):\n"
                 "    try:\n"
                 "        open(p, 'w').write('1')\n"
                 "        print('wrote', p)\n"
                 "    except OSError as e:\n"
                 "        print(errno.errorcode[e.errno])\n"
                 "for l in open('/proc/self/mountinfo'):\n"
                 "    f = l.split()\n"
                 "    if f[4].startswith('/sys/fs/cgroup'):\n"
                 "        print(f[3], f[4], f[5].split(',')[0])\n")
    p = sbx("run", "--profile", PROFILE, "--", "/usr/bin/python3", "-S", "-c", sid_probe)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    top = eval(lines[0])
    assert "memory" in top and "pids" in top and "unified" not in top  # only hierarchies it has a cgroup in
    assert eval(lines[1]) == []
    assert lines[2] == "/sys/fs/cgroup"
    assert lines[3:6] == ["EROFS", "EROFS", "EROFS"], lines
    mounts = [ln.split() for ln in lines[6:]]
    assert mounts and all(root == "/" and opt == "ro" for root, _mp, opt in mounts), mounts


def test_the_mounts_pass_verification_and_are_in_the_record(tmp_path):
    rec = tmp_path / "r.json"
    p = sbx("run", "--profile", PROFILE, "--record", str(rec), "--", "/bin/true")
    assert p.returncode == 0, p.stderr
    v = json.loads(rec.read_text())["verification"]
    assert v["ok"] is True and "read-only /sys/fs/cgroup" in v["checked"], v["checked"]


def test_without_a_cgroup_of_its_own_nothing_is_mounted(tmp_path):
    prof = tmp_path / "nolimits.yaml"
    prof.write_text("extends: strict\nresources: {memory: null, memory_swap: null, cpus: null, pids_limit: null}\n")
    p = sbx("run", "--profile", str(prof), "--", "/bin/sh", "-c", "ls -A /sys/fs/cgroup 2>&1; grep -c cgroup "
            "/proc/self/mountinfo")
    assert p.returncode == 1 or p.stdout.split()[-1] == "0", (p.stdout, p.stderr)  # grep -c prints 0, exits 1
    assert "memory" not in p.stdout
