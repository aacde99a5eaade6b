"""Boot Debian's kernel under qemu (TCG) with the host root shared read-only, run one command.

The guest has pure cgroup v2 (every controller), securityfs, and AppArmor or
SELinux as its major LSM, so enforcement that this host's kernel cannot show
(cgroup-v2 limits, MAC confinement) is proved on a real kernel.

Output travels over a second, per-run 9p share rather than the serial console,
so the caller gets exactly the command's stdout+stderr with no kernel noise; the
console only carries markers (SBX-VM-READY, SBX-VM-EXIT=N) and is kept for
diagnosis.
"""
from __future__ import annotations

import os
import re
import selectors
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import build

QEMU = "qemu-system-x86_64"
REPO = Path(__file__).resolve().parents[2]
LSM_ARGS = {
    # Debian's kernel: AppArmor is the default major LSM, SELinux is compiled in
    # without the selinux= boot parameter, so security= picks the one we want.
    "apparmor": "apparmor=1 security=apparmor",
    "selinux": "security=selinux selinux=1 enforcing=1",
    "none": "lsm=landlock,lockdown,yama,bpf",
}
BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
}
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# lsm="selinux": the trees the guest labels (9p carries no labels). Each is shared again on its own
# 9p device, which the guest mounts with context= (one superblock, one label: what the policy's
# file_contexts give the directory itself, e.g. /usr/bin bin_t, /usr/lib lib_t, /etc etc_t) under a
# writable overlay. Parents before children: /usr's overlay is below /usr/bin's.
SELINUX_LABELLED = ("/usr", "/usr/bin", "/usr/sbin", "/usr/lib", "/usr/lib64", "/usr/libexec", "/etc", "/var")


@dataclass(frozen=True)
class VMResult:
    exit_code: int
    output: str          # the command's stdout+stderr, nothing else
    boot_seconds: float  # qemu start -> command start
    console: str = ""    # serial console (kernel messages + harness markers), for diagnosis
    setup: str = ""      # in-guest setup log (e.g. load_policy output for lsm=selinux)


class VMError(RuntimeError):
    """The VM did not boot or did not report the command's status (message has the console tail)."""


def vm_available() -> tuple[bool, str]:
    """(True, "") when a VM can be booted here; else (False, reason) to skip with."""
    if shutil.which(QEMU) is None:
        return False, f"{QEMU} not installed (apt-get install qemu-system-x86)"
    try:
        build.ensure_artifacts()
    except build.BuildError as e:
        return False, f"VM kernel/initramfs unavailable: {e}"
    return True, ""


def _script(argv: list[str], env: dict[str, str] | None, cwd: Path) -> str:
    merged = dict(BASE_ENV)
    merged.update(env or {})
    lines = [f"cd {shlex.quote(str(cwd))} || exit 125"]
    for k, v in merged.items():
        if not _ENV_NAME.match(k):
            raise ValueError(f"bad environment variable name {k!r}")
        lines.append(f"export {k}={shlex.quote(str(v))}")
    lines.append("exec " + " ".join(shlex.quote(a) for a in argv))
    return "\n".join(lines) + "\n"


def labelled_trees() -> list[tuple[str, str]]:
    """(9p tag, path) of each SELINUX_LABELLED tree this host has as a real directory."""
    return [(f"sbxl{i}", p) for i, p in enumerate(SELINUX_LABELLED)
            if os.path.isdir(p) and not os.path.islink(p)]


def qemu_argv(art: build.Artifacts, io_dir: Path, lsm: str, memory_mb: int, cpus: int) -> list[str]:
    append = f"console=ttyS0 quiet loglevel=3 panic=-1 cgroup_no_v1=all sbx.lsm={lsm} {LSM_ARGS[lsm]}"
    repo = str(REPO)
    if repo.startswith(("/tmp/", "/run/")) and " " not in repo:
        append += f" sbx.keep={repo}"  # the guest's /tmp and /run are fresh: stage 1 keeps the repo
    shares = []
    if lsm == "selinux":
        for tag, path in labelled_trees():
            shares += ["-virtfs", f"local,path={path},mount_tag={tag},security_model=none,readonly=on,multidevs=remap"]
    return [
        QEMU, "-accel", "tcg", "-cpu", "max", "-smp", str(cpus), "-m", str(memory_mb),
        # -nodefaults: no NIC (the guest needs no network), no VGA, no floppy/cdrom.
        "-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none",
        "-serial", "stdio", "-no-reboot",
        "-kernel", str(art.kernel), "-initrd", str(art.initrd), "-append", append,
        "-virtfs", f"local,path=/,mount_tag={build.ROOT_TAG},security_model=none,readonly=on,multidevs=remap",
        "-virtfs", f"local,path={io_dir},mount_tag={build.IO_TAG},security_model=none",
        *shares,
    ]


def run_in_vm(argv: list[str], *, lsm: str = "apparmor", timeout: float = 600,
              env: dict | None = None, memory_mb: int = 2048, cpus: int = 2,
              cwd: str | os.PathLike | None = None) -> VMResult:
    """Boot, run `argv` as root with cwd=the repo (host paths, same venv), power off.

    exit_code is the command's own status (127 not found, 128+N killed by signal N).
    Raises VMError if the guest never reports a status (boot failure, timeout).
    """
    if lsm not in LSM_ARGS:
        raise ValueError(f"lsm must be one of {sorted(LSM_ARGS)}, not {lsm!r}")
    if not argv:
        raise ValueError("argv is empty")
    art = build.ensure_artifacts()
    io_dir = Path(tempfile.mkdtemp(prefix="sbx-vm-io-"))
    try:
        (io_dir / "run.sh").write_text(_script(list(argv), env, Path(cwd) if cwd else REPO))
        (io_dir / "labels").write_text("".join(f"{t} {p}\n" for t, p in labelled_trees()) if lsm == "selinux" else "")
        return _boot(qemu_argv(art, io_dir, lsm, memory_mb, cpus), io_dir, timeout)
    finally:
        shutil.rmtree(io_dir, ignore_errors=True)


def _boot(cmd: list[str], io_dir: Path, timeout: float) -> VMResult:
    start = time.monotonic()
    ready_at: float | None = None
    console = bytearray()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        while True:
            left = start + timeout - time.monotonic()
            if left <= 0:
                raise VMError(f"VM timed out after {timeout:.0f}s; console tail:\n{_tail(console)}")
            if not sel.select(timeout=min(left, 1.0)):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            console += chunk
            if ready_at is None and b"SBX-VM-READY" in console:
                ready_at = time.monotonic()
        proc.wait(timeout=max(1.0, start + timeout - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise VMError(f"qemu did not exit after the guest closed its console; tail:\n{_tail(console)}")
    finally:
        sel.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    text = console.decode("utf-8", "replace")
    status = io_dir / "status"
    m = re.search(r"SBX-VM-EXIT=(\d+)", text)
    if status.exists() and status.read_text().strip().isdigit():
        code = int(status.read_text().strip())
    elif m:
        code = int(m.group(1))
    else:
        raise VMError(f"guest reported no exit status (qemu rc={proc.returncode}); console tail:\n{_tail(console)}")
    if m and int(m.group(1)) == 255 and "sbx-vm: FATAL" in text:
        raise VMError(f"guest setup failed; console tail:\n{_tail(console)}")
    output = io_dir / "output"
    setup = io_dir / "setup.log"
    return VMResult(
        exit_code=code,
        output=output.read_text(errors="replace") if output.exists() else "",
        boot_seconds=round((ready_at or time.monotonic()) - start, 2),
        console=text,
        setup=setup.read_text(errors="replace") if setup.exists() else "",
    )


def _tail(console: bytes | bytearray, lines: int = 25) -> str:
    return "\n".join(bytes(console).decode("utf-8", "replace").splitlines()[-lines:])
