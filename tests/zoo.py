"""A podman zoo for `sbx audit` tests: real containers with known risks, and a bare unshare tree.

No registry access: the image is a busybox-static rootfs imported with
`podman import`. Host tweaks podman needs on this VM (HOST-NOTES): hugetlb as a
v1 hierarchy, and low nofile/nproc ulimits. Everything is torn down at the end,
by name (containers) and by our own process group (the unshare tree).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field

import pytest

IMAGE = "localhost/sbxzoo-bb"
ULIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
SOCKET = "/run/podman/podman.sock"

# name suffix -> extra `podman run` flags. The expected finding IDs live in the tests.
CONTAINERS: dict[str, list[str]] = {
    "priv": ["--privileged"],
    "sysadmin": ["--cap-add", "SYS_ADMIN"],
    "pidhost": ["--pid=host"],
    "nethost": ["--network=host"],
    "rootbind": ["-v", "/:/host"],
    "sock": ["-v", f"{SOCKET}:/var/run/docker.sock"],
    "tight": ["--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--read-only", "--memory", "64m",
              "--pids-limit", "64", "--cpus", "0.5", "--user", "1000:1000"],
}


@dataclass
class Zoo:
    prefix: str
    names: dict[str, str] = field(default_factory=dict)  # suffix -> container name
    pids: dict[str, int] = field(default_factory=dict)  # suffix -> host pid of the container's init
    unshare: subprocess.Popen | None = None
    service: subprocess.Popen | None = None

    def pid_of(self, suffix: str) -> int:
        return self.pids[suffix]


def _run(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def _host_tweaks() -> None:
    hug = "/sys/fs/cgroup/hugetlb"
    if os.path.isdir("/sys/fs/cgroup/memory") and not os.path.ismount(hug):
        os.makedirs(hug, exist_ok=True)
        _run(["mount", "-t", "cgroup", "-o", "hugetlb", "cgroup", hug])


def ensure_image() -> None:
    if _run(["podman", "image", "exists", IMAGE]).returncode == 0:
        return
    bb = shutil.which("busybox")
    if bb is None:
        pytest.skip("busybox-static not installed (needed to build the zoo image)")
    with tempfile.TemporaryDirectory() as d:
        root = os.path.join(d, "root")
        os.makedirs(os.path.join(root, "bin"))
        shutil.copy(bb, os.path.join(root, "bin", "busybox"))
        for a in ("sh", "sleep", "cat", "ls", "nc", "id"):
            os.symlink("busybox", os.path.join(root, "bin", a))
        tar = os.path.join(d, "rootfs.tar")
        _run(["tar", "-C", root, "-cf", tar, "."])
        p = _run(["podman", "import", tar, IMAGE], timeout=120)
        if p.returncode != 0:
            pytest.skip(f"podman cannot import an image here: {p.stderr.strip()[-300:]}")


def _start_service(zoo: Zoo) -> None:
    """A real runtime API socket: podman's own service on its standard path."""
    if os.path.exists(SOCKET):
        return
    os.makedirs(os.path.dirname(SOCKET), exist_ok=True)
    zoo.service = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{SOCKET}"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    for _ in range(100):
        if os.path.exists(SOCKET):
            return
        time.sleep(0.05)
    pytest.skip("podman system service did not create its socket")


def start() -> Zoo:
    if os.geteuid() != 0:
        pytest.skip("the podman zoo needs root (rootful podman, reading other processes' /proc)")
    if shutil.which("podman") is None:
        pytest.skip("podman not installed")
    _host_tweaks()
    ensure_image()
    zoo = Zoo(prefix=f"sbxzoo-{uuid.uuid4().hex[:6]}")
    try:
        _start_service(zoo)
        for suffix, flags in CONTAINERS.items():
            name = f"{zoo.prefix}-{suffix}"
            p = _run(["podman", "run", "-d", "--name", name, *ULIMITS, *flags, IMAGE, "sleep", "600"])
            if p.returncode != 0:
                stop(zoo)
                pytest.skip(f"podman cannot run containers here ({' '.join(flags)}): {p.stderr.strip()[-300:]}")
            zoo.names[suffix] = name
            pid = _run(["podman", "inspect", "-f", "{{.State.Pid}}", name]).stdout.strip()
            zoo.pids[suffix] = int(pid)
        zoo.unshare = subprocess.Popen(
            ["unshare", "--user", "--map-root-user", "--pid", "--fork", "--mount-proc", "--net", "sleep", "600"],
            start_new_session=True)
        zoo.pids["unshare"] = zoo.unshare.pid
        _wait_ns_child(zoo.unshare.pid)
    except BaseException:
        stop(zoo)
        raise
    return zoo


def _wait_ns_child(pid: int) -> None:
    """Wait until unshare has forked its child (in the new pid namespace)."""
    for _ in range(200):
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                if f.read().split():
                    return
        except OSError:
            return
        time.sleep(0.01)


def stop(zoo: Zoo) -> None:
    if zoo.names:
        _run(["podman", "rm", "-f", "-t", "0", *zoo.names.values()], timeout=120)
    if zoo.unshare is not None:
        try:
            os.killpg(zoo.unshare.pid, signal.SIGKILL)  # our own session: unshare and its namespaced child
        except ProcessLookupError:
            pass
        zoo.unshare.wait(timeout=10)
    if zoo.service is not None:
        try:
            os.killpg(zoo.service.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            zoo.service.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(zoo.service.pid, signal.SIGKILL)
            zoo.service.wait(timeout=10)


@pytest.fixture(scope="session")
def zoo():
    z = start()
    try:
        yield z
    finally:
        stop(z)
