"""Seccomp on the real kernel: filters installed in forked children, errnos read back from real syscalls."""
from __future__ import annotations

import ctypes
import errno
import json
import os
import subprocess
import sys

import pytest

from sandbox import seccomp
from tests.sbxrun import read_bytes, read_text
from sandbox.errors import SbxError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBC = ctypes.CDLL(None, use_errno=True)

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
SIGCHLD = 17
TIOCSTI = 0x5412
MS_REC, MS_PRIVATE = 0x4000, 0x40000


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SBX_CACHE_DIR", str(tmp_path / "cache"))


def nr(name: str) -> int:
    import pyseccomp
    n = pyseccomp.resolve_syscall(0, name)
    assert n >= 0, name
    return n


def sc(name: str, *args) -> int:
    """Raw syscall; returns the result or -errno."""
    cargs = [ctypes.c_char_p(a) if isinstance(a, bytes) else ctypes.c_long(a) for a in args]
    r = LIBC.syscall(ctypes.c_long(nr(name)), *cargs)
    return -ctypes.get_errno() if r == -1 else r


def in_child(fn, bpf: bytes | None, *, mount_ns: bool = True) -> dict:
    """Run fn() in a forked child (own session and mount ns), under bpf if given; return its JSON result."""
    import prctl
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(r)
            os.setsid()  # no controlling tty: vhangup/TIOCSTI cannot touch the terminal running pytest
            if mount_ns:
                assert LIBC.unshare(CLONE_NEWNS) == 0
                assert LIBC.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) == 0
            prctl.set_no_new_privs(1)
            if bpf is not None:
                seccomp.install(bpf)
            out = fn()
            os.write(w, json.dumps(out).encode())
        except BaseException as e:  # noqa: BLE001 - report anything to the parent, never return into pytest
            os.write(w, json.dumps({"__error__": repr(e)}).encode())
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    while b := os.read(r, 65536):
        chunks.append(b)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    res = json.loads(b"".join(chunks) or b"{}")
    assert "__error__" not in res, res
    assert os.waitstatus_to_exitcode(status) == 0
    return res


def _fork_clone_newuser() -> int:
    r = sc("clone", CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0)
    if r == 0:
        os._exit(0)  # the new child: leave at once
    if r > 0:
        os.waitpid(r, 0)
        return 0
    return r


def blocked_calls(tmpdir: str) -> dict:
    """Each call with arguments that succeed, or fail with another errno, when no filter is installed.

    Side effects stay in the child: keys go to its process keyring, mounts to its private mount ns,
    TIOCSTI to its own pty, vhangup has no controlling tty (setsid) to hang up.
    """
    pty_m, pty_s = os.openpty()
    uts = os.open("/proc/self/ns/uts", os.O_RDONLY)
    res = {
        "clone(CLONE_NEWUSER)": _fork_clone_newuser(),
        "setns(uts)": sc("setns", uts, 0),
        "mount(tmpfs)": sc("mount", b"none", tmpdir.encode(), b"tmpfs", 0, 0),
        "umount2(missing)": sc("umount2", b"/nonexistent-sbx", 0),
        "pivot_root(., .)": sc("pivot_root", b".", b"."),
        "fsopen(tmpfs)": sc("fsopen", b"tmpfs", 0),
        "fspick(/)": sc("fspick", -100, b"/", 0),
        "open_tree(/)": sc("open_tree", -100, b"/", 0),
        "fsmount(-1)": sc("fsmount", -1, 0, 0),
        "fsconfig(-1)": sc("fsconfig", -1, 0, 0, 0, 0),
        "move_mount(-1)": sc("move_mount", -1, b"", -1, b"", 0),
        "mount_setattr(-1)": sc("mount_setattr", -1, b"", 0, 0, 0),
        "keyctl(process keyring)": sc("keyctl", 0, -2, 1),
        "add_key(user)": sc("add_key", b"user", b"sbx-test", b"x", 1, -2),
        "request_key(missing)": sc("request_key", b"user", b"sbx-missing", 0, 0),
        "bpf(bad cmd)": sc("bpf", 999, 0, 0),
        "perf_event_open(NULL)": sc("perf_event_open", 0, 0, -1, -1, 0),
        "io_uring_setup(NULL)": sc("io_uring_setup", 1, 0),
        "io_uring_enter(-1)": sc("io_uring_enter", -1, 0, 0, 0, 0, 0),
        "io_uring_register(-1)": sc("io_uring_register", -1, 0, 0, 0),
        "userfaultfd(0)": sc("userfaultfd", 0),
        "name_to_handle_at(NULL)": sc("name_to_handle_at", -100, b"/", 0, 0, 0),
        "open_by_handle_at(-1)": sc("open_by_handle_at", -1, 0, 0),
        "kexec_file_load(-1)": sc("kexec_file_load", -1, -1, 0, 0, 0),
        "kexec_load(bad)": sc("kexec_load", 0, 1000, 0, 0xFFFF0000),
        "init_module(NULL)": sc("init_module", 0, 0, b""),
        "finit_module(-1)": sc("finit_module", -1, b"", 0),
        "delete_module(missing)": sc("delete_module", b"sbx_no_such_module", 0),
        "reboot(bad magic)": sc("reboot", 0, 0, 0, 0),
        "settimeofday(NULL)": sc("settimeofday", 0, 0),
        "clock_settime(MONOTONIC)": sc("clock_settime", 1, 0),
        "clock_adjtime(NULL)": sc("clock_adjtime", 0, 0),
        "adjtimex(NULL)": sc("adjtimex", 0),
        "swapon(missing)": sc("swapon", b"/nonexistent-sbx", 0),
        "swapoff(missing)": sc("swapoff", b"/nonexistent-sbx"),
        "ptrace(GETREGS, 1)": sc("ptrace", 12, 1, 0, 0),
        "process_vm_readv(self)": sc("process_vm_readv", os.getpid(), 0, 0, 0, 0, 0),
        "process_vm_writev(self)": sc("process_vm_writev", os.getpid(), 0, 0, 0, 0, 0),
        "personality(ADDR_NO_RANDOMIZE)": sc("personality", 0x0040000),
        "acct(missing)": sc("acct", b"/nonexistent-sbx/acct"),
        "quotactl(NULL)": sc("quotactl", 0, 0, 0, 0),
        "vhangup()": sc("vhangup"),
        "syslog(SIZE_BUFFER)": sc("syslog", 10, 0, 0),
        "chroot(/)": sc("chroot", b"/"),
        "ioctl(TIOCSTI)": sc("ioctl", pty_s, TIOCSTI, b"x"),
        "ioctl(TIOCSTI|1<<32)": sc("ioctl", pty_s, (1 << 32) | TIOCSTI, b"x"),
        "socket(AF_VSOCK)": sc("socket", 40, 1, 0),
        "socket(AF_PACKET)": sc("socket", 17, 3, 0),
        "clone3(NULL)": sc("clone3", 0, 0),
        "vmsplice(-1)": sc("vmsplice", -1, 0, 0, 0),
        "io_setup(1)": _io_setup(),
        "io_destroy(0)": sc("io_destroy", 0),
        "io_submit(0)": sc("io_submit", 0, 0, 0),
        "io_cancel(0)": sc("io_cancel", 0, 0, 0),
        "io_getevents(0)": sc("io_getevents", 0, 0, 0, 0, 0),
        "io_pgetevents(0)": sc("io_pgetevents", 0, 0, 0, 0, 0, 0),
    }
    for fd in (pty_m, pty_s, uts):
        os.close(fd)
    # Last: once in a new user namespace the process has no privilege left over the host's objects.
    res["unshare(CLONE_NEWUSER)"] = sc("unshare", CLONE_NEWUSER)
    return res


def _io_setup() -> int:
    """One AIO context (unfiltered: 0). Native AIO reserves from the host-wide fs.aio-max-nr."""
    ctx = ctypes.c_ulong(0)
    r = LIBC.syscall(ctypes.c_long(nr("io_setup")), ctypes.c_long(1), ctypes.byref(ctx))
    return -ctypes.get_errno() if r == -1 else r


@pytest.fixture(scope="module")
def strict_bpf(tmp_path_factory) -> bytes:
    os.environ["SBX_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    try:
        return seccomp.prepare("strict", frozenset())
    finally:
        del os.environ["SBX_CACHE_DIR"]


def test_strict_blocks_each_call_with_the_filters_errno(strict_bpf, tmp_path):
    control = in_child(lambda: blocked_calls(str(tmp_path)), None)
    filtered = in_child(lambda: blocked_calls(str(tmp_path)), strict_bpf)
    expected = {k: -errno.EPERM for k in control}
    expected["clone3(NULL)"] = -errno.ENOSYS
    assert filtered == expected, {k: (control[k], filtered[k]) for k in filtered if filtered[k] != expected[k]}
    # Unfiltered the same calls succeed or fail differently: the EPERM above is the filter's.
    same = {k for k in control if control[k] == expected[k]}
    assert not same, {k: control[k] for k in same}


def harmless_calls() -> dict:
    pty_m, pty_s = os.openpty()
    import termios
    out = {
        "personality(query)": sc("personality", 0xFFFFFFFF) >= 0,
        "personality(PER_LINUX)": sc("personality", 0) >= 0,
        "tcgetattr": bool(termios.tcgetattr(pty_s)),
        "socket(AF_UNIX)": sc("socket", 1, 1, 0) >= 0,
        "socket(AF_INET)": sc("socket", 2, 2, 0) >= 0,
        "socket(AF_INET6)": sc("socket", 10, 2, 0) >= 0 or sc("socket", 10, 2, 0) == -errno.EAFNOSUPPORT,
        "getppid": sc("getppid") > 0,
    }
    os.close(pty_m)
    os.close(pty_s)
    return out


def test_strict_keeps_ordinary_calls(strict_bpf):
    res = in_child(harmless_calls, strict_bpf)
    assert all(res.values()), res


WORKLOAD = r"""
set -e
echo ok
ls / >/dev/null
d=$(mktemp -d); printf 'b\na\n' > "$d/f"; sort "$d/f" | tr -d '\n'; echo; cp "$d/f" "$d/g"; mkfifo "$d/p"
rm -r "$d"
python3 -c 'import threading, subprocess, socket, json, hashlib, tempfile, multiprocessing
t = threading.Thread(target=lambda: None); t.start(); t.join()
socket.socketpair()
print(subprocess.run(["/bin/echo", "py"], capture_output=True, text=True).stdout.strip())
with multiprocessing.Pool(2) as p: print(sum(p.map(abs, [-1, -2])))'
"""


@pytest.mark.parametrize("ref", ["strict", "default"])
def test_shell_coreutils_python_work_under(ref):
    bpf = seccomp.prepare(ref, frozenset({"CHOWN", "SETUID", "SETGID"}) if ref == "default" else frozenset())

    def run():
        p = subprocess.run(["/bin/sh", "-c", WORKLOAD], capture_output=True, text=True, timeout=60)
        return {"rc": p.returncode, "out": p.stdout, "err": p.stderr[-2000:],
                "status": [ln for ln in open("/proc/self/status") if ln.startswith("Seccomp")]}
    res = in_child(run, bpf)
    assert res["rc"] == 0, res
    assert res["out"].split() == ["ok", "ab", "py", "3"], res
    assert "Seccomp:\t2\n" in res["status"]


def test_default_blocks_without_caps_and_allows_ptrace(tmp_path):
    bpf = seccomp.prepare("default", frozenset({"CHOWN", "SYS_CHROOT"}))

    def calls():
        return {"unshare": sc("unshare", CLONE_NEWUSER), "mount": sc("mount", b"none", str(tmp_path).encode(),
                                                                     b"tmpfs", 0, 0),
                "keyctl": sc("keyctl", 0, -2, 1), "bpf": sc("bpf", 999, 0, 0), "clone3": sc("clone3", 0, 0),
                "io_uring_setup": sc("io_uring_setup", 1, 0), "ptrace": sc("ptrace", 12, 1, 0, 0),
                "chroot": sc("chroot", b"/"), "personality": sc("personality", 0x0040000)}
    res = in_child(calls, bpf)
    assert res == {"unshare": -1, "mount": -1, "keyctl": -1, "bpf": -1, "clone3": -errno.ENOSYS,
                   "io_uring_setup": -1, "ptrace": -errno.ESRCH,  # reached the kernel: not attached to pid 1
                   "chroot": 0,  # CAP_SYS_CHROOT kept: the cap-conditional rule applies
                   "personality": -1}


def test_default_with_sys_admin_lets_namespaces_through():
    bpf = seccomp.prepare("default", frozenset({"SYS_ADMIN"}))
    res = in_child(lambda: {"unshare": sc("unshare", CLONE_NEWUSER), "clone3": sc("clone3", 0, 0)}, bpf)
    assert res == {"unshare": 0, "clone3": -errno.EINVAL}  # both reached the kernel


DOCKER_STYLE = {
    "defaultAction": "SCMP_ACT_ERRNO",
    "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "syscalls": [
        {"names": ["read", "write", "exit_group", "getppid"], "action": "SCMP_ACT_ALLOW"},
        {"name": "mount", "action": "SCMP_ACT_ALLOW", "args": [], "includes": {"caps": ["CAP_SYS_ADMIN"]},
         "comment": "legacy single-name form"},
        {"names": ["chroot"], "action": "SCMP_ACT_ALLOW", "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
        {"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38, "includes": {"arches": ["amd64"]}},
        {"names": ["gettid"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["s390x"]}},
        {"names": ["kcmp"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "99.0"}},
    ],
}


def test_docker_profile_includes_excludes_by_caps(tmp_path):
    p = tmp_path / "docker.json"
    p.write_text(json.dumps(DOCKER_STYLE))
    seccomp.validate(str(p))
    without = seccomp.prepare(str(p), frozenset())
    with_admin = seccomp.prepare(str(p), frozenset({"SYS_ADMIN"}))
    assert without != with_admin
    from sandbox import seccomp_bpf
    prof = seccomp_bpf.parse(str(p), p.read_bytes(), seccomp_bpf.resolver())
    names = lambda caps: sorted(n for _, n, _ in seccomp_bpf.select(prof, caps))  # noqa: E731
    assert names(frozenset()) == ["chroot", "exit_group", "getpid", "getppid", "read", "write"]
    assert names(frozenset({"SYS_ADMIN"})) == ["exit_group", "getpid", "getppid", "mount", "read", "write"]
    res = in_child(lambda: {"getpid": sc("getpid"), "chroot": sc("chroot", b"/")}, with_admin, mount_ns=False)
    assert res == {"getpid": -errno.ENOSYS, "chroot": -errno.EPERM}


def test_disagreeing_rules_most_restrictive_wins(tmp_path):
    """libseccomp would keep the first unconditional rule silently; we apply the kernel's precedence."""
    p = tmp_path / "conflict.json"
    p.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["getppid", "getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
        {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 5},  # same strength: the first stays
        {"names": ["getpid"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]},
        {"names": ["chroot"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["chroot"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}))
    bpf = seccomp.prepare(str(p), frozenset())
    res = in_child(lambda: {"getppid": sc("getppid"), "getpid": sc("getpid"), "chroot": sc("chroot", b"/")}, bpf,
                   mount_ns=False)
    assert res == {"getppid": -errno.EPERM, "getpid": -errno.EPERM, "chroot": -errno.EACCES}


PODMAN_PROFILE = "/usr/share/containers/seccomp.json"


def test_podman_profile_reusable_unchanged():
    if not os.path.exists(PODMAN_PROFILE):
        pytest.skip(f"{PODMAN_PROFILE} not installed (apt-get install podman / golang-github-containers-common)")
    seccomp.validate(PODMAN_PROFILE)
    bpf = seccomp.prepare(PODMAN_PROFILE, frozenset({"CHOWN", "SETUID", "SETGID", "SYS_CHROOT"}))
    res = in_child(lambda: {"setns": sc("setns", os.open("/proc/self/ns/uts", os.O_RDONLY), 0),
                            "unshare": sc("unshare", CLONE_NEWUSER), "getppid": sc("getppid") > 0,
                            "kexec_load": sc("kexec_load", 0, 1000, 0, 0xFFFF0000),
                            "io_uring_setup": sc("io_uring_setup", 1, 0)}, bpf)
    # setns: its allowlist and its EPERM-without-CAP_SYS_ADMIN rule disagree; the stronger one applies.
    # unshare is in podman's allowlist; kexec_load has an explicit EPERM rule; io_uring_setup is not
    # listed at all and gets the profile's defaultErrnoRet (ENOSYS).
    assert res == {"setns": -errno.EPERM, "unshare": 0, "getppid": True, "kexec_load": -errno.EPERM,
                   "io_uring_setup": -errno.ENOSYS}


def test_cap_names_accept_both_spellings():
    assert seccomp.prepare("default", frozenset({"CAP_SYS_ADMIN"})) == seccomp.prepare("default",
                                                                                       frozenset({"SYS_ADMIN"}))


BAD = [
    # (file text, location that must appear, words that must appear)
    ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [\n {"names": ["read", "raed"], "action": "SCMP_ACT_ALLOW"}]}',
     ":2:21", "syscalls[0].names[1]: unknown syscall 'raed' (did you mean 'read'?)"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALOW"}]}',
     ":1:80", "syscalls[0].action: unknown action 'SCMP_ACT_ALOW' (did you mean 'SCMP_ACT_ALLOW'?)"),
    ('{"defaultAction": "SCMP_ACT_ERRNO",\n "syscalls": [}', ":2:15", "invalid JSON"),
    ('', ":1:1", "invalid JSON"),
    ('[]', ":1:1", "must be a JSON object"),
    ('{"defaultAction": 1}', ":1:19", "defaultAction: action must be a string, not an integer"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": {}}', ":1:49", "syscalls: syscalls must be a list"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": "read", "action": "SCMP_ACT_ALLOW"}]}',
     ":1:60", "syscalls[0].names: names must be a list, not a string"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": [7], "action": "SCMP_ACT_ALLOW"}]}',
     ":1:61", "syscalls[0].names[0]: names entry must be a string"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"]}]}', ":1:50", "missing action"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", '
     '"args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQUAL"}]}]}', ":1:138", "unknown op 'SCMP_CMP_EQUAL'"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", '
     '"args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]}', ":1:117", "index 6 is not an argument number"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", '
     '"args": [{"index": 0, "value": -1, "op": "SCMP_CMP_EQ"}]}]}', ":1:129", "not an unsigned 64-bit"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", '
     '"args": [{"index": true, "value": 1, "op": "SCMP_CMP_EQ"}]}]}', ":1:117", "index must be an integer"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO", '
     '"errnoRet": 5000}]}', ":1:110", "errnoRet 5000 is out of range"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", '
     '"includes": {"caps": ["CAP_SYS_ADMN"]}}]}', ":1:120", "unknown capability 'CAP_SYS_ADMN' (did you mean"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", '
     '"includes": {"arches": ["vax"]}}]}', ":1:122", "unknown architecture 'vax'"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", '
     '"includes": {"minKernel": "four"}}]}', ":1:124", "minKernel 'four'"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_65"]}', ":1:55", "unknown architecture"),
    ('{"defaultaction": "SCMP_ACT_ERRNO"}', ":1:19", "unknown key 'defaultaction' (did you mean 'defaultAction'?)"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", '
     '"arg": []}]}', ":1:105", "syscalls[0].arg: unknown key 'arg' (did you mean 'args'?)"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "defaultAction": "SCMP_ACT_ALLOW"}', "", "duplicate key 'defaultAction'"),
    ('{"defaultAction": "SCMP_ACT_NOTIFY"}', ":1:19", "needs a seccomp agent"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "flags": ["SECCOMP_FILTER_FLAG_LOG"]}', ":1:46", "not supported"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["ioctl"], "action": "SCMP_ACT_ALLOW"},\n'
     ' {"names": ["ioctl"], "action": "SCMP_ACT_ERRNO", "errnoRet": 5, "args": [{"index": 1, "value": 21522, '
     '"op": "SCMP_CMP_EQ"}]}]}', ":2:13", "syscalls[1]: syscall 'ioctl' has a conditional rule stronger than the unconditional one"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", '
     '"args": [{"index": 0, "value": 1, "op": "SCMP_CMP_GT"}, {"index": 0, "value": 9, "op": "SCMP_CMP_LT"}]}]}',
     ":1:164", "argument 0 is tested twice"),
    (b'\xff\xfe{}', "", "not UTF-8"),
]


@pytest.mark.parametrize("text,loc,words", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_profiles_refused_with_location(tmp_path, text, loc, words):
    p = tmp_path / "bad.json"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    for call in (lambda: seccomp.validate(str(p)), lambda: seccomp.prepare(str(p), frozenset())):
        with pytest.raises(SbxError) as ei:
            call()
        e = ei.value
        assert e.code == 125
        line = e.line()
        assert line.startswith(f"sbx: {p}{loc}: "), line
        assert words in line, line
        assert "\n" not in line
    assert not os.path.exists(os.path.join(os.environ["SBX_CACHE_DIR"], "seccomp")) or \
        not os.listdir(os.path.join(os.environ["SBX_CACHE_DIR"], "seccomp"))


def test_unknown_reference_and_missing_file():
    with pytest.raises(SbxError, match="unknown seccomp profile 'strcit'"):
        seccomp.prepare("strcit", frozenset())
    with pytest.raises(SbxError, match="cannot open seccomp profile"):
        seccomp.prepare("/nonexistent/x.json", frozenset())
    with pytest.raises(SbxError, match="not a regular file"):
        seccomp.prepare("/dev/", frozenset())
    assert seccomp.prepare("unconfined", frozenset()) is None


def test_builtins_validate_and_names():
    for name in seccomp.BUILTINS:
        path = seccomp.builtin_path(name)
        assert path.endswith(f"policies/seccomp/{name}.json") and os.path.isfile(path)
        seccomp.validate(path)
    names = seccomp.syscall_names()
    assert {"read", "clone3", "io_uring_setup", "socketcall", "arm_fadvise64_64"} <= names
    assert "raed" not in names


def test_cli_refuses_bad_profile_in_one_line(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('{"defaultAction": "SCMP_ACT_ERRNO",\n "syscalls": [{"names": ["nosuchcall"], '
                 '"action": "SCMP_ACT_ALLOW"}]}')
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-m", "sandbox", "run", "--profile", "default", "--security-opt",
                        f"seccomp={p}", "--", "/bin/true"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 125, r
    assert r.stderr.strip().splitlines() == [f"sbx: {p}:2:26: syscalls[0].names[0]: unknown syscall 'nosuchcall' (did you mean 'socketcall'?)"]


CACHE_PROBE = r"""
import json, sys, time
t = time.perf_counter()
from sandbox import seccomp
bpf = seccomp.prepare(sys.argv[1], frozenset())
dt = time.perf_counter() - t
print(json.dumps({"dt": dt, "len": len(bpf), "pyseccomp": "pyseccomp" in sys.modules,
                  "compiler": "sandbox.seccomp_bpf" in sys.modules}))
"""


def _probe(ref: str, cache: str) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT, SBX_CACHE_DIR=cache)
    p = subprocess.run([sys.executable, "-c", CACHE_PROBE, ref], capture_output=True, text=True, env=env, timeout=60,
                       cwd=ROOT)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_warm_cache_skips_libseccomp_and_is_faster(tmp_path):
    cache = str(tmp_path / "c")
    cold = _probe("strict", cache)
    warm = [_probe("strict", cache) for _ in range(3)]
    assert cold["pyseccomp"] and cold["compiler"]
    for w in warm:
        assert not w["pyseccomp"] and not w["compiler"], w
        assert w["len"] == cold["len"]
    assert min(w["dt"] for w in warm) < cold["dt"] / 3, (cold, warm)
    d = os.path.join(cache, "seccomp")
    assert os.stat(d).st_mode & 0o777 == 0o700
    (entry,) = os.listdir(d)
    assert os.stat(os.path.join(d, entry)).st_mode & 0o777 == 0o600


def test_corrupt_or_foreign_cache_entry_is_rebuilt(tmp_path):
    good = seccomp.prepare("strict", frozenset())
    d = os.path.join(os.environ["SBX_CACHE_DIR"], "seccomp")
    (entry,) = os.listdir(d)
    path = os.path.join(d, entry)
    blob = read_bytes(path)
    for bad in (b"", b"garbage", blob[:-8], blob[:-1] + bytes([blob[-1] ^ 1])):
        with open(path, "wb") as f:
            f.write(bad)
        assert seccomp.prepare("strict", frozenset()) == good
        assert read_bytes(path) == blob
    os.chmod(path, 0o666)  # writable by others: not trusted, rebuilt and rewritten 0600
    assert seccomp.prepare("strict", frozenset()) == good
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_cache_key_covers_profile_caps_and_libseccomp(tmp_path):
    data = read_bytes(seccomp.builtin_path("strict"))
    k = seccomp.cache_key(data, frozenset())
    assert k == seccomp.cache_key(data, frozenset())
    assert k != seccomp.cache_key(data + b" ", frozenset())
    assert k != seccomp.cache_key(data, frozenset({"SYS_ADMIN"}))
    assert b"libseccomp.so.2" in seccomp._libseccomp_fact()


def test_install_refuses_malformed_programs():
    for bad in (b"", b"1234567", b"\x00" * (8 * 4097)):
        with pytest.raises(SbxError, match="malformed BPF"):
            seccomp.install(bad)

    def kernel_rejects():
        try:
            seccomp.install(b"\xff\xff\x00\x00\x00\x00\x00\x00")  # invalid opcode: the kernel's checker says no
        except SbxError as e:
            return {"err": e.line()}
        return {"err": None}
    res = in_child(kernel_rejects, None, mount_ns=False)
    assert res["err"] and "kernel rejected the program" in res["err"]


def test_install_without_no_new_privs_fails_closed(strict_bpf):
    """An unprivileged process without no_new_privs cannot load a filter: we must say so, not carry on."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)  # no caps left, no_new_privs never set
            try:
                seccomp.install(strict_bpf)
                msg = "installed"
            except SbxError as e:
                msg = e.line()
            os.write(w, msg.encode())
        finally:
            os._exit(0)
    os.close(w)
    msg = os.read(r, 4096).decode()
    os.close(r)
    os.waitpid(pid, 0)
    assert "no_new_privs is not set" in msg, msg


STRICT_NEVER = """unshare setns mount umount umount2 pivot_root fsopen fsmount move_mount open_tree mount_setattr fspick
fsconfig keyctl add_key request_key bpf perf_event_open io_uring_setup io_uring_enter io_uring_register userfaultfd
open_by_handle_at name_to_handle_at kexec_load kexec_file_load init_module finit_module delete_module reboot
settimeofday stime clock_settime clock_adjtime adjtimex swapon swapoff ptrace process_vm_readv process_vm_writev
acct quotactl quotactl_fd lookup_dcookie vhangup syslog uselib chroot kcmp pidfd_getfd iopl ioperm modify_ldt
fanotify_init create_module nfsservctl sethostname setdomainname
io_setup io_destroy io_submit io_cancel io_getevents io_pgetevents vmsplice""".split()


def test_strict_json_never_allows_the_dangerous_set():
    """Static check over every rule of strict.json (the kernel tests above cover the ones callable here)."""
    from sandbox import seccomp_bpf
    path = seccomp.builtin_path("strict")
    prof = seccomp_bpf.parse(path, read_bytes(path), seccomp_bpf.resolver())
    allowed = {}
    for rule in prof.rules:
        if rule.action == seccomp_bpf.ACTIONS["SCMP_ACT_ALLOW"]:
            for name, where in rule.names:
                allowed.setdefault(name, []).append((where, rule.args))
    assert not set(STRICT_NEVER) & set(allowed), sorted(set(STRICT_NEVER) & set(allowed))
    assert all(args for _, args in allowed["clone"]) and all(args for _, args in allowed["personality"])
    assert all(args for _, args in allowed["socket"]) and all(args for _, args in allowed["ioctl"])
    assert not prof.arches  # native ABI only: 32-bit and x32 syscalls hit the kill-process bad-arch action


def test_strict_sandbox_cannot_exhaust_the_hosts_aio_contexts():
    """One io_setup(65536) from an unfiltered process takes the host-wide fs.aio-max-nr (65536 here):
    every host program using native AIO then fails while it runs. Under strict it gets EPERM."""
    from tests.sbxrun import sbx
    script = ("import ctypes; l=ctypes.CDLL(None, use_errno=True); c=ctypes.c_ulong(0); "
              "r=l.syscall(206, 65536, ctypes.byref(c)); print(r, ctypes.get_errno())")
    before = int(read_text("/proc/sys/fs/aio-nr"))
    p = sbx("run", "--profile", "strict", "--", "/usr/bin/python3", "-c", script)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["-1", str(errno.EPERM)], p.stdout
    assert int(read_text("/proc/sys/fs/aio-nr")) == before
