"""Files sbx writes and reads back: nobody else can own them, plant them, or switch a control with them."""
from __future__ import annotations

import ast
import glob
import json
import marshal
import os
import pwd
import shutil
import stat
import tempfile

import pytest

from tests.forked import in_child
from tests.sbxrun import ROOT, read_bytes, read_text, sbx, status_field

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs sbx as root")


def _sbxtest() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("sbxtest")
    except KeyError:
        pytest.skip("the sbxtest user (made by .ci/setup) is missing")


@pytest.fixture
def world():
    d = tempfile.mkdtemp(prefix="sbx-state-", dir="/tmp")
    os.chmod(d, 0o777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_record_temp_file_cannot_be_precreated_by_another_user(world):
    """--record used to write through `.NAME.PID.tmp` without O_EXCL: another user who created that
    name first owned the record. The record is now always a fresh 0600 file of the invoker's."""
    pw = _sbxtest()
    target = os.path.join(world, "rec.json")

    def attempt():
        from sandbox.record import write_record
        planted = os.path.join(world, f".rec.json.{os.getpid()}.tmp")
        fd = os.open(planted, os.O_CREAT | os.O_WRONLY, 0o666)
        os.fchmod(fd, 0o666)
        os.close(fd)
        os.chown(planted, pw.pw_uid, pw.pw_gid)  # what the other user would have done beforehand
        write_record(target, {"ok": True})
        st = os.stat(target)
        return {"uid": st.st_uid, "mode": stat.S_IMODE(st.st_mode), "planted_size": os.path.getsize(planted)}

    r = in_child(attempt)
    assert r == {"uid": 0, "mode": 0o600, "planted_size": 0}, r
    assert json.loads(read_text(target)) == {"ok": True}
    leftovers = [n for n in os.listdir(world) if n.endswith(".tmp") and ".rec.json." in n]
    assert len(leftovers) == 1  # only the planted one; ours was renamed into place


def test_record_through_cli_is_0600(tmp_path):
    rec = tmp_path / "r.json"
    p = sbx("run", "--record", str(rec), "--", "/bin/true")
    assert p.returncode == 0, p.stderr
    assert stat.S_IMODE(os.stat(rec).st_mode) == 0o600 and json.loads(read_text(rec))["exit_code"] == 0


@pytest.mark.parametrize("plant", ["foreign-owner", "world-writable"])
def test_planted_spec_cache_entry_is_ignored(tmp_path, plant):
    """A spec cache entry sbx did not write (another owner, or writable by others) never decides the
    Spec: a forged one asking for no seccomp and no Landlock under strict is recomputed instead."""
    cache = tmp_path / "cache"
    env = {"SBX_CACHE_DIR": str(cache)}
    args = ("run", "--profile", "strict", "--", "/bin/sh", "-c", "cat /proc/self/status")
    p = sbx(*args, env=env)
    assert p.returncode == 0 and status_field(p.stdout, "Seccomp") == "2", p.stderr
    entries = glob.glob(str(cache / "specs" / "*.bin"))
    assert len(entries) == 1
    entry = marshal.loads(read_bytes(entries[0]))
    entry["spec"]["security"]["seccomp"] = "unconfined"
    entry["spec"]["security"]["landlock"] = "off"
    with open(entries[0], "wb") as f:
        f.write(marshal.dumps(entry))
    if plant == "foreign-owner":
        pw = _sbxtest()
        os.chown(entries[0], pw.pw_uid, pw.pw_gid)
    else:
        os.chmod(entries[0], 0o666)
    p = sbx(*args, env=env)
    assert p.returncode == 0, p.stderr
    assert status_field(p.stdout, "Seccomp") == "2", "a planted spec cache entry switched seccomp off"


# Every environment variable sbx's own code reads, and why none of them can weaken a control.
ALLOWED_ENV = {
    "SBX_DEBUG": "prints tracebacks of sbx's own failures; changes no decision",
    "SBX_STATE_DIR": "where sbx keeps its 0700 state (ownership checked); no control",
    "SBX_CACHE_DIR": "where the spec/BPF caches live; entries not privately owned are ignored",
    "XDG_RUNTIME_DIR": "rootless default for the state dir",
    "XDG_CACHE_HOME": "rootless default for the cache dir",
    "SBX_DATA_DIR": "where the image store lives (0700, ownership checked); every blob is verified wherever it is",
    "XDG_DATA_HOME": "rootless default for the image store",
    "SBX_BRIDGE_SUBNET": "the bridge's address range; isolation rules do not depend on it",
}
# Modules that copy a caller's variable into the sandbox for a bare `-e NAME` (docker semantics).
ENV_PASSTHROUGH = {"sandbox/profiles.py", "sandbox/enter.py", "sandbox/speccache.py"}


def _env_reads(path: str) -> tuple[set[str], bool]:
    tree = ast.parse(read_text(path), path)
    consts, dynamic = set(), False
    for node in ast.walk(tree):
        target = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            f = node.func
            if not ((f.attr == "get" and isinstance(f.value, ast.Attribute) and f.value.attr == "environ")
                    or f.attr == "getenv"):
                continue
            target = node.args[0] if node.args else None
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) and node.value.attr == "environ":
            target = node.slice
        elif isinstance(node, ast.Compare) and any(isinstance(c, ast.Attribute) and c.attr == "environ"
                                                   for c in node.comparators):
            target = node.left
        else:
            continue
        if isinstance(target, ast.Constant) and isinstance(target.value, str):
            consts.add(target.value)
        elif isinstance(target, ast.Name) and target.id.isupper():
            consts.add(_module_const(tree, target.id))
        else:
            dynamic = True
    return consts, dynamic


def _module_const(tree: ast.Module, name: str) -> str:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            if isinstance(node.value, ast.Constant):
                return str(node.value.value)
    return f"<{name}>"


def test_no_environment_variable_can_switch_a_control():
    """Structural guard for the SBX_FAKE_NO_LANDLOCK finding: every variable read is listed above with
    its reason, and only the -e passthrough reads a caller-chosen name."""
    found: dict[str, set[str]] = {}
    for path in glob.glob(os.path.join(ROOT, "sandbox", "**", "*.py"), recursive=True) + \
            glob.glob(os.path.join(ROOT, "audit", "**", "*.py"), recursive=True):
        rel = os.path.relpath(path, ROOT)
        consts, dynamic = _env_reads(path)
        for c in consts:
            found.setdefault(c, set()).add(rel)
        if dynamic:
            assert rel in ENV_PASSTHROUGH, f"{rel} reads an environment variable by a computed name"
    unknown = {k: v for k, v in found.items() if k not in ALLOWED_ENV}
    assert not unknown, f"environment variables read without a stated reason: {unknown}"
    assert "SBX_DEBUG" in found  # the scan itself works
