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

from tests.sbxrun import close_pipes

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


# --- helpers for the accuracy tests (tests/test_audit_accuracy.py) ------------------------------

def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (other users' /proc, runtimes)")


def podman_ready() -> None:
    """Rootful podman with the zoo image, or skip with the reason."""
    need_root()
    if shutil.which("podman") is None:
        pytest.skip("podman not installed")
    _host_tweaks()
    ensure_image()


def podman_run(name: str, flags: list[str], argv: tuple[str, ...] = ("sleep", "600"),
               user: "Rootless | None" = None, image: str | None = IMAGE) -> int:
    """`podman run -d`; returns the host pid of the container's init. Skips when podman refuses.
    image=None: `flags` name the root (--rootfs DIR)."""
    cmd = ["podman", "run", "-d", "--name", name, *ULIMITS, *flags, *([image] if image else []), *argv]
    p = user.run(cmd, timeout=120) if user else _run(cmd, timeout=120)
    if p.returncode != 0:
        pytest.skip(f"podman cannot run this container here ({' '.join(flags)}): {p.stderr.strip()[-300:]}")
    q = user.run(["podman", "inspect", "-f", "{{.State.Pid}}", name]) if user else \
        _run(["podman", "inspect", "-f", "{{.State.Pid}}", name])
    return int(q.stdout.strip())


def podman_rm(names: list[str], user: "Rootless | None" = None) -> None:
    if names:
        cmd = ["podman", "rm", "-f", "-t", "0", *names]
        user.run(cmd, timeout=120) if user else _run(cmd, timeout=120)


# A dedicated unprivileged user for rootless podman: its own subordinate id range and home.
# .ci/setup creates it too; creating it here keeps a developer's machine working.
ROOTLESS_USER = "sbxrootless"
ROOTLESS_HOME = "/var/lib/sbxrootless"
ROOTLESS_SUBIDS = "400000:65536"


@dataclass
class Rootless:
    uid: int
    gid: int
    home: str
    runtime_dir: str

    def env(self) -> dict:
        return {"HOME": self.home, "XDG_RUNTIME_DIR": self.runtime_dir, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                "LANG": "C.UTF-8"}

    def argv(self, cmd: list[str]) -> list[str]:
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups", "--", *cmd]

    def run(self, cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(cmd), capture_output=True, text=True, timeout=timeout, env=self.env(),
                              cwd=self.home)


def _ensure_line(path: str, user: str, value: str) -> None:
    try:
        with open(path) as f:
            if any(line.split(":", 1)[0] == user for line in f):
                return
    except FileNotFoundError:
        pass
    with open(path, "a") as f:
        f.write(f"{user}:{value}\n")


def rootless_user() -> Rootless:
    """The rootless podman user, ready to run the zoo image; skip with the reason when it cannot."""
    import pwd
    podman_ready()
    if shutil.which("newuidmap") is None:
        pytest.skip("newuidmap (uidmap package) not installed: rootless podman needs it")
    try:
        pw = pwd.getpwnam(ROOTLESS_USER)
    except KeyError:
        p = _run(["useradd", "--system", "--create-home", "--home-dir", ROOTLESS_HOME, "--shell",
                  "/usr/sbin/nologin", ROOTLESS_USER])
        if p.returncode != 0:
            pytest.skip(f"cannot create the rootless test user: {p.stderr.strip()}")
        pw = pwd.getpwnam(ROOTLESS_USER)
    _ensure_line("/etc/subuid", ROOTLESS_USER, ROOTLESS_SUBIDS)
    _ensure_line("/etc/subgid", ROOTLESS_USER, ROOTLESS_SUBIDS)
    os.makedirs(pw.pw_dir, exist_ok=True)
    os.chown(pw.pw_dir, pw.pw_uid, pw.pw_gid)
    rt = f"/tmp/sbx-rootless-rt-{pw.pw_uid}"
    os.makedirs(rt, mode=0o700, exist_ok=True)
    os.chown(rt, pw.pw_uid, pw.pw_gid)
    os.chmod(rt, 0o700)
    user = Rootless(pw.pw_uid, pw.pw_gid, pw.pw_dir, rt)
    if user.run(["podman", "image", "exists", IMAGE]).returncode != 0:
        with tempfile.TemporaryDirectory() as d:
            tar = os.path.join(d, "img.tar")
            p = _run(["podman", "save", "-o", tar, IMAGE], timeout=120)
            if p.returncode != 0:
                pytest.skip(f"cannot export the zoo image: {p.stderr.strip()[-300:]}")
            os.chmod(d, 0o755)
            os.chmod(tar, 0o644)
            p = user.run(["podman", "load", "-i", tar], timeout=300)
            if p.returncode != 0:
                pytest.skip(f"rootless podman cannot load an image here: {p.stderr.strip()[-300:]}")
    return user


def busybox_rootfs(root: str, extra: tuple[str, ...] = ()) -> str:
    """A minimal rootfs of busybox-static in `root` (its own directory: never the host's /)."""
    bb = shutil.which("busybox")
    if bb is None:
        pytest.skip("busybox-static not installed")
    for d in ("bin", "etc", "proc", "sys", "dev", "tmp", "usr/lib"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    shutil.copy(bb, os.path.join(root, "bin", "busybox"))
    for a in ("sh", "sleep", "cat", "ls", "id", "nc", "mount", *extra):
        dst = os.path.join(root, "bin", a)
        if not os.path.lexists(dst):
            os.symlink("busybox", dst)
    with open(os.path.join(root, "usr/lib/os-release"), "w") as f:
        f.write("ID=busybox\nNAME=busybox\n")
    return root


def oci_bundle(bundle: str, argv: list[str]) -> str:
    """An OCI bundle with ITS OWN rootfs directory and a mount namespace (HOST-NOTES pitfall:
    a root of / without a mount namespace bind-mounts / over / in the host and breaks user
    namespaces for everyone)."""
    import json
    if shutil.which("runc") is None:
        pytest.skip("runc not installed (needed to write an OCI spec)")
    os.makedirs(bundle, exist_ok=True)
    busybox_rootfs(os.path.join(bundle, "rootfs"))
    p = _run(["runc", "spec", "--bundle", bundle])
    if p.returncode != 0:
        pytest.skip(f"runc spec failed: {p.stderr.strip()}")
    path = os.path.join(bundle, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    cfg["process"]["terminal"] = False
    cfg["process"]["args"] = argv
    cfg["process"]["rlimits"] = [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
    cfg["root"] = {"path": "rootfs", "readonly": True}
    kinds = [n["type"] for n in cfg["linux"]["namespaces"]]
    assert "mount" in kinds and cfg["root"]["path"] != "/", "refusing a bundle that would bind / over / on the host"
    with open(path, "w") as f:
        json.dump(cfg, f)
    return bundle


def oci_run(runtime: str, bundle: str, cid: str) -> int:
    """Start a detached runc/crun container by id; returns its init pid (skip when the runtime cannot)."""
    if shutil.which(runtime) is None:
        pytest.skip(f"{runtime} not installed")
    _host_tweaks()  # crun refuses hybrid cgroups until hugetlb is a v1 hierarchy
    # The detached container inherits runc's stdio: a pipe would stay open as long as it runs.
    with tempfile.TemporaryFile() as err:
        try:
            p = subprocess.run([runtime, "run", "-d", "--bundle", bundle, cid], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=err, timeout=60)
        except subprocess.TimeoutExpired:
            oci_delete(runtime, cid)
            raise
        err.seek(0)
        msg = err.read().decode(errors="replace")
    if p.returncode != 0:
        oci_delete(runtime, cid)
        pytest.skip(f"{runtime} cannot start a container here: {msg.strip()[-300:]}")
    q = _run([runtime, "state", cid])
    import json
    return int(json.loads(q.stdout)["pid"])


def oci_delete(runtime: str, cid: str) -> None:
    _run([runtime, "delete", "-f", cid], timeout=60)


def spawn(argv: list[str], user: str | None = None, env: dict | None = None,
          wait_comm: str | None = None) -> subprocess.Popen:
    """Start argv in its own session (as `user` if given); wait until a descendant runs `wait_comm`."""
    import pwd
    cmd = list(argv)
    kw: dict = {}
    if user is not None:
        pw = pwd.getpwnam(user)
        cmd = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups", "--", *cmd]
        kw["cwd"] = "/tmp"
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         start_new_session=True, env=env, **kw)
    if wait_comm is not None:
        for _ in range(500):
            if descendants(p.pid, wait_comm, include_self=True):
                break
            if p.poll() is not None:
                err = p.stderr.read().decode(errors="replace") if p.stderr else ""
                pytest.skip(f"{argv[0]} exited {p.returncode}: {err.strip()[-300:]}")
            time.sleep(0.02)
        else:
            kill(p)
            pytest.skip(f"{argv[0]} did not start {wait_comm}")
    return p


def descendants(pid: int, comm: str | None = None, include_self: bool = False) -> list[int]:
    """Descendants of pid (optionally only those whose comm is `comm`), by walking /proc."""
    kids: dict[int, list[int]] = {}
    comms: dict[int, str] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                text = f.read()
        except OSError:
            continue
        rp = text.rfind(")")
        comms[int(d)] = text[text.find("(") + 1:rp]
        kids.setdefault(int(text[rp + 2:].split()[1]), []).append(int(d))
    out, todo = ([pid] if include_self else []), [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.append(k)
            todo.append(k)
    return [k for k in out if comm is None or comms.get(k) == comm]


def kill(p: subprocess.Popen) -> None:
    """Kill a process we started, its process group and every descendant (by pid: some runtimes
    start their containers in a session of their own)."""
    for pid in [p.pid, *descendants(p.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        p.wait(timeout=20)
        close_pipes(p)
    except subprocess.TimeoutExpired:
        pass


def rootless_stop(user: Rootless) -> None:
    """Stop the pause process rootless podman left holding the user's namespaces (by its pid file)."""
    try:
        with open(os.path.join(user.runtime_dir, "libpod", "tmp", "pause.pid")) as f:
            pid = int(f.read().strip())
        with open(f"/proc/{pid}/status") as f:
            uid = next(int(line.split()[1]) for line in f if line.startswith("Uid:"))
    except (OSError, ValueError, StopIteration):
        return
    if uid == user.uid:  # still that user's process, not a reused pid
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
