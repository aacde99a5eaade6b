"""Module boundaries the architecture relies on, enforced: one ctypes module, one /proc reader."""
from __future__ import annotations

import ast
import glob
import os

from tests.sbxrun import ROOT, read_text

SOURCES = sorted(glob.glob(os.path.join(ROOT, "sandbox", "**", "*.py"), recursive=True)
                 + glob.glob(os.path.join(ROOT, "audit", "**", "*.py"), recursive=True))

# Modules that open /proc paths as handles or write them, never to read facts from them.
PROC_HANDLES = {
    "sandbox/facts.py": "the one /proc reader",
    "sandbox/userns.py": "writes uid_map/gid_map/setgroups of the sandbox's init",
    "sandbox/mac.py": "writes its own attr/exec (the LSM exec label)",
    "sandbox/initproc.py": "rewrites its own argv area through /proc/self/mem (the title)",
    "sandbox/namespaces.py": "opens init's cgroup namespace to setns into it",
    "sandbox/enter.py": "opens the sandbox's namespaces and root to setns and chroot",
    "sandbox/netbridge.py": "opens the sandbox's net namespace to move a veth into it",
    "sandbox/doctor.py": "writes a probe child's own id maps",
    "sandbox/copyfiles.py": "reopens its own O_PATH fds through /proc/self/fd (nothing swapped between check and open)",
    "sandbox/stdio.py": "reopens its own sealed memfd read-only (the API's input) through /proc/self/fd",
    "sandbox/volumes.py": "reopens an O_PATH fd it holds (a -v source to walk for :U or :z) through /proc/self/fd",
}
CALLS = {"open", "listdir", "readlink", "stat", "lstat", "scandir", "walk"}


def _rel(path: str) -> str:
    return os.path.relpath(path, ROOT)


def _proc_literal(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value.startswith("/proc")
    if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
        return str(node.values[0].value).startswith("/proc")
    return False


def test_ctypes_is_imported_by_sandbox_syscalls_only():
    offenders = []
    for path in SOURCES:
        if _rel(path) == "sandbox/syscalls.py":
            continue
        for node in ast.walk(ast.parse(read_text(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            if any(n == "ctypes" or n.startswith("ctypes.") for n in names):
                offenders.append(f"{_rel(path)}:{node.lineno}")
    assert not offenders, f"ctypes outside sandbox/syscalls.py: {offenders}"


def test_proc_is_read_through_sandbox_facts_only():
    offenders = []
    for path in SOURCES:
        rel = _rel(path)
        if rel in PROC_HANDLES:
            continue
        for node in ast.walk(ast.parse(read_text(path))):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else ""
            if name in CALLS and _proc_literal(node.args[0]):
                offenders.append(f"{rel}:{node.lineno}")
    assert not offenders, f"/proc opened outside sandbox/facts.py: {offenders}"


def test_the_scans_see_what_they_look_for():
    """Both scans find the cases they exist for (else the tests above could pass vacuously)."""
    tree = ast.parse('import ctypes\nopen(f"/proc/{pid}/stat")\nos.listdir("/proc/self/fd")\n')
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and n.args and _proc_literal(n.args[0])]
    assert len(calls) == 2
    assert any(isinstance(n, ast.Import) and n.names[0].name == "ctypes" for n in ast.walk(tree))
