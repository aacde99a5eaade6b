"""`sbx run IMAGE` with real images (umoci from busybox-static, imported with the real `sbx pull`) in real
sandboxes: every config field with Docker's semantics, strict non-root for a root image, files keeping
their image owners through idmapped mounts, setuid bits granting nothing, layers shared (never copied),
the -- hint, --pull, admission by the images: rule, rmi of an image in use, start re-creating with the
image's and the run's env, StopSignal, a hostile image's symlinked mountpoint, a rootless image run.
"""
from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

import pytest

from tests.imagekit import Tar, busybox_rootfs, need, oci_layout, store_state, umoci_image
from tests.sbxrun import sbx as _sbx

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="image sandboxes are started as root here "
                                                          "(the rootless case has its own test)")

PASSWD = ("root:x:0:0:root:/root:/bin/sh\napp:x:4242:4343:app:/home/app:/bin/sh\n"
          "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
GROUP = "root:x:0:\napp:x:4343:\nextra:x:5000:app\nnogroup:x:65534:\n"


def _fill(root: str) -> None:
    busybox_rootfs(root, PASSWD, GROUP)
    os.makedirs(os.path.join(root, "home", "app"))
    owned = os.path.join(root, "home", "app", "owned")
    with open(owned, "w") as f:
        f.write("mine\n")
    os.chown(owned, 4242, 4343)
    os.chown(os.path.join(root, "home", "app"), 4242, 4343)
    os.makedirs(os.path.join(root, "work"))
    os.makedirs(os.path.join(root, "sbin"))
    suid = os.path.join(root, "sbin", "id")  # busybox runs the applet named by argv[0]
    shutil.copy("/bin/busybox", suid)
    os.chmod(suid, 0o4755)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    need("umoci", "skopeo")
    d = tmp_path_factory.mktemp("imgs")
    layout = str(d / "oci")
    umoci_image(layout, "cfg", _fill, ["--config.entrypoint", "/bin/sh", "--config.entrypoint", "-c",
                                       "--config.cmd", "echo default-cmd", "--config.env", "FOO=bar",
                                       "--config.env", "PATH=/bin:/sbin", "--config.workingdir", "/work",
                                       "--config.user", "app", "--config.label", "team=imgs",
                                       "--config.stopsignal", "SIGUSR1", "--config.exposedports", "8080/tcp"])
    umoci_image(layout, "root", _fill, ["--config.cmd", "id"])
    hostile = oci_layout(str(d / "hostile"), [Tar().add("tmp", tarfile.SYMTYPE, linkname="/etc")
                                              .add("bin/true", data=b"#!/bin/sh\n", mode=0o755).bytes()],
                         config={"config": {"Cmd": ["/bin/true"]}})
    data = str(d / "store")
    env = {"SBX_DATA_DIR": data}
    for ref in (f"oci:{layout}:cfg", f"oci:{layout}:root", f"oci:{hostile}:t"):
        p = _sbx("pull", "-q", ref, env=env, timeout=120)
        assert p.returncode == 0, p.stderr
    return {"layout": layout, "data": data, "dir": str(d)}


@pytest.fixture
def sbx(images, tmp_path):
    """The CLI with the module's image store and a private state dir; removes its sandboxes after."""
    env = {"SBX_DATA_DIR": images["data"], "SBX_STATE_DIR": str(tmp_path / "state")}

    def run(*args, **kw):
        return _sbx(*args, env={**env, **kw.pop("env", {})}, timeout=kw.pop("timeout", 120), **kw)

    run.env = env
    yield run
    ids = [i for i in run("ps", "-aq", "--no-trunc").stdout.split() if i]
    if ids:
        run("rm", "-f", *ids)


def ok(p) -> str:
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    return p.stdout


def test_entrypoint_cmd_env_workdir_user_with_dockers_rules(sbx):
    assert ok(sbx("run", "localhost/cfg")).strip() == "default-cmd"  # Entrypoint + Cmd
    out = ok(sbx("run", "localhost/cfg", 'id; pwd; echo "$FOO $HOME $PATH"')).splitlines()  # args replace Cmd
    assert out[0] == "uid=4242(app) gid=4343(app) groups=5000(extra)"  # the IMAGE's passwd and group
    assert out[1] == "/work"
    assert out[2] == "bar /home/app /bin:/sbin"
    with pytest.raises(KeyError):
        pwd.getpwnam("app")  # never the host's users: the host has no 'app'
    out = ok(sbx("run", "-e", "FOO=run", "-w", "/tmp", "localhost/cfg", 'echo "$FOO $(pwd)"')).strip()
    assert out == "run /tmp"  # -e and -w override the image
    assert ok(sbx("run", "--entrypoint", "/bin/echo", "localhost/cfg")).strip() == ""  # drops the image's Cmd
    assert ok(sbx("run", "--entrypoint", "/bin/echo", "localhost/cfg", "a", "b")).strip() == "a b"
    assert ok(sbx("run", "-u", "nobody", "localhost/cfg", "id -u; echo $HOME")).split() == ["65534", "/nonexistent"]
    assert ok(sbx("run", "-w", "/not/in/the/image", "localhost/cfg", "pwd")).strip() == "/not/in/the/image"


def test_strict_runs_a_root_image_as_nobody_and_explain_says_so(sbx):
    assert ok(sbx("run", "localhost/root")).strip() == "uid=65534(nobody) gid=65534(nogroup)"
    spec = json.loads(ok(sbx("run", "--explain", "localhost/root")))
    assert (spec["uid"], spec["gid"]) == (65534, 65534)
    assert any("runs as root" in n and "65534:65534" in n for n in spec["image"]["notes"]), spec["image"]["notes"]
    p = sbx("run", "-u", "0", "localhost/root")
    assert p.returncode == 125 and "does not allow uid/gid 0" in p.stderr


def test_files_keep_their_image_owners_through_idmapped_mounts(sbx):
    script = "stat -c '%u:%g %a %n' /home/app/owned /home/app /etc/passwd /sbin/id; cat /proc/self/uid_map"
    out = ok(sbx("run", "localhost/cfg", script)).splitlines()
    assert out[0] == "4242:4343 644 /home/app/owned"
    assert out[1].startswith("4242:4343 ") and out[2].startswith("0:0 ")
    assert out[3] == "0:0 4755 /sbin/id"
    inside, host, count = map(int, out[4].split())
    assert inside == 0 and count == 65536 and host >= 65536  # each sandbox its own host range, no host root
    # the workload can write its own files (image owner = its uid) but the root stays read-only
    p = sbx("run", "localhost/cfg", "echo x >> /home/app/owned")
    assert p.returncode != 0 and "Read-only file system" in p.stderr


def test_setuid_bits_in_an_image_grant_nothing(sbx):
    # /sbin/id is a setuid-root busybox in the image; nosuid and the user namespace keep it the caller's
    out = ok(sbx("run", "--entrypoint", "/sbin/id", "localhost/root")).strip()
    assert out.startswith("uid=65534") and "euid" not in out, out


def test_layers_are_shared_never_copied(sbx, images):
    def du(path):
        return int(subprocess.run(["du", "-sk", path], capture_output=True, text=True, check=True).stdout.split()[0])
    before = store_state(images["data"])
    size = du(images["data"])
    ids = [ok(sbx("run", "-d", "localhost/cfg", "sleep 30")).strip() for _ in range(4)]
    try:
        after = store_state(images["data"])
        assert after["layers"] == before["layers"] and after["tmp"] == []
        assert du(images["data"]) - size < 64  # KiB: nothing per sandbox in the store
        for sid in ids:
            info = json.loads(ok(sbx("inspect", sid)))[0]
            assert info["state"]["status"] == "running", info["state"]
    finally:
        sbx("rm", "-f", *ids)


def test_run_of_a_host_path_or_command_gets_the_double_dash_hint(sbx):
    p = sbx("run", "/bin/true")
    assert p.returncode == 125 and "-- /bin/true" in p.stderr and p.stderr.count("\n") == 1, p.stderr
    p = sbx("run", "true")
    assert p.returncode == 125 and "-- true" in p.stderr and "host command" in p.stderr, p.stderr
    assert ok(sbx("run", "--", "/bin/true")) == ""  # the host view is unchanged


def test_pull_policies(sbx, images, tmp_path):
    data = str(tmp_path / "other-store")
    env = {"SBX_DATA_DIR": data}
    ref = f"oci:{images['layout']}:root"
    p = sbx("run", "--pull=never", "localhost/root", env=env)
    assert p.returncode == 125 and "no image" in p.stderr
    p = sbx("run", ref, env=env)  # missing (the default): pulled, then run
    assert p.returncode == 0 and p.stdout.strip().startswith("uid=65534"), p.stderr
    p = sbx("run", "--pull=always", ref, env=env)
    assert p.returncode == 0 and "Pulling" in p.stderr, p.stderr
    p = sbx("run", "--pull=sometimes", ref, env=env)
    assert p.returncode == 125 and "--pull" in p.stderr
    assert len(store_state(data)["images"]) == 1


def test_admission_by_the_images_rule(sbx, tmp_path, images):
    pol = tmp_path / "p.yaml"
    pol.write_text("apiVersion: sbx/v1\nname: imgs\nimages: {allowed_registries: [quay.io], require_digest: true}\n")
    p = sbx("run", "--policy", str(pol), "localhost/root")
    assert p.returncode == 125 and "SBX-P070" in p.stderr, p.stderr
    pol.write_text("apiVersion: sbx/v1\nname: imgs\nimages: {allowed_registries: [localhost], require_digest: true}\n")
    p = sbx("run", "--policy", str(pol), "localhost/root")
    assert p.returncode == 125 and "SBX-P071" in p.stderr, p.stderr
    iid = ok(sbx("images", "-q", "--no-trunc")).split()
    full = json.loads(ok(sbx("image", "inspect", "localhost/root")))[0]["Id"]
    assert full in iid
    p = sbx("run", "--policy", str(pol), full)  # the full id is content-addressed: pinned
    assert p.returncode == 0, p.stderr


def test_rmi_refuses_an_image_in_use_and_gc_keeps_its_layers(sbx, images, tmp_path):
    data = str(tmp_path / "own-store")
    env = {"SBX_DATA_DIR": data}
    assert sbx("pull", "-q", f"oci:{images['layout']}:root", env=env).returncode == 0
    sid = ok(sbx("run", "-d", "localhost/root", "sleep", "30", env=env)).strip()
    p = sbx("rmi", "localhost/root", env=env)
    assert p.returncode == 125 and "used by sandbox" in p.stderr, p.stderr
    p = sbx("rmi", "-f", "localhost/root", env=env)
    assert p.returncode == 0, p.stderr
    st = store_state(data)
    assert st["images"] == [] and len(st["layers"]) == 1  # the running sandbox still stacks it
    ok(sbx("image", "prune", "-a", env=env))
    assert len(store_state(data)["layers"]) == 1
    info = json.loads(ok(sbx("inspect", sid, env=env)))[0]
    assert info["state"]["status"] == "running"
    ok(sbx("rm", "-f", sid, env=env))
    ok(sbx("image", "prune", env=env))
    assert store_state(data)["layers"] == []


def test_inspect_keeps_image_env_and_run_env_apart_and_start_recreates_both(sbx):
    sid = ok(sbx("run", "-d", "-e", "RUNVAR=1", "localhost/cfg", 'echo "$FOO $RUNVAR"; sleep 30')).strip()
    info = json.loads(ok(sbx("inspect", sid)))[0]
    assert info["image"]["env"] == ["FOO=bar", "PATH=/bin:/sbin"]
    assert info["image"]["run_env"] == ["RUNVAR=1"]
    assert "FOO=bar" in info["env"] and "RUNVAR=1" in info["env"]
    assert info["image"]["labels"] == {"team": "imgs"} and info["image"]["exposed_ports"] == ["8080/tcp"]
    ok(sbx("stop", "-t", "5", sid))
    ok(sbx("start", sid))
    deadline = time.monotonic() + 10
    logs = ""
    while time.monotonic() < deadline and logs.count("bar 1") < 2:
        logs = sbx("logs", sid).stdout
        time.sleep(0.1)
    assert logs.count("bar 1") == 2, logs  # both runs had the image's and the run's env


def test_stop_sends_the_images_stop_signal(sbx):
    sid = ok(sbx("run", "-d", "localhost/cfg", "trap 'echo got-usr1; exit 3' USR1; while :; do sleep 0.1; done")).strip()
    time.sleep(0.5)
    t0 = time.monotonic()
    ok(sbx("stop", "-t", "10", sid))
    assert time.monotonic() - t0 < 8  # ended by SIGUSR1, not by the SIGKILL after -t
    assert "got-usr1" in sbx("logs", sid).stdout
    info = json.loads(ok(sbx("inspect", sid)))[0]
    assert info["state"]["exit_code"] == 3


def test_a_hostile_image_symlinked_mountpoint_is_refused(sbx):
    p = sbx("run", "localhost/t")
    assert p.returncode == 125, (p.stdout, p.stderr)
    assert "/tmp is a symlink" in p.stderr and "image localhost/t" in p.stderr, p.stderr


def test_writable_root_profile_gets_a_private_upper_layer(sbx, images):
    # app owns /home/app in the image: its writes go to the sandbox's own upper layer
    out = ok(sbx("run", "--profile", "default", "localhost/cfg", "echo hi > /home/app/new && cat /home/app/new"))
    assert out.strip() == "hi"
    p = sbx("run", "--profile", "default", "localhost/cfg", "echo x > /etc/passwd")  # root's file: not app's
    assert p.returncode != 0 and "Permission denied" in p.stderr
    # nothing of it reached the shared layers
    for h in store_state(images["data"])["layers"]:
        assert not os.path.exists(os.path.join(images["data"], "layers", h, "root", "home", "app", "new"))


def test_rootless_image_run(images):
    try:
        pw = pwd.getpwnam("sbxtest")
    except KeyError:
        pytest.skip("test user 'sbxtest' missing (created by .ci/setup)")
    if os.stat(os.path.realpath(sys.executable)).st_mode & 0o005 != 0o005:
        pytest.skip("the test interpreter is not usable by other users")
    work = tempfile.mkdtemp(prefix="sbximg-rootless-run-", dir="/tmp")
    try:
        os.chmod(work, 0o755)
        layout = os.path.join(work, "oci")
        shutil.copytree(images["layout"], layout)
        subprocess.run(["chmod", "-R", "a+rX", layout], check=True)
        xdg = os.path.join(work, "xdg")
        os.mkdir(xdg)
        os.chown(xdg, pw.pw_uid, pw.pw_gid)
        prof = os.path.join(work, "p.yaml")
        with open(prof, "w") as f:
            f.write("extends: strict\ndegrade: allow\n")  # cgroup v1 cannot be delegated here
        os.chmod(prof, 0o644)
        env = {"XDG_DATA_HOME": xdg, "SBX_DATA_DIR": "", "SBX_STATE_DIR": ""}
        p = _sbx("pull", "-q", f"oci:{layout}:cfg", user="sbxtest", env=env, timeout=120)
        assert p.returncode == 0, p.stderr
        p = _sbx("run", "--profile", prof, "localhost/cfg", "id -u; cat /home/app/owned; cat /proc/self/uid_map",
                 user="sbxtest", env=env, timeout=120)
        assert p.returncode == 0, p.stderr
        out = p.stdout.split()
        assert out[:2] == ["4242", "mine"]
        assert out[2:] == ["4242", str(pw.pw_uid), "1"]  # the single-id map of an unprivileged invoker
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_audit_shows_the_image_of_an_sbx_sandbox_and_flags_a_mutable_tag(sbx, images):
    sid = ok(sbx("run", "-d", "localhost/cfg", "sleep 30")).strip()
    full = json.loads(ok(sbx("image", "inspect", "localhost/cfg")))[0]["Id"]
    pinned = ok(sbx("run", "-d", full, "sleep 30")).strip()
    doc = json.loads(sbx("audit", "--format", "json").stdout)
    by_id = {c["id"]: c for c in doc["containers"]}
    c = by_id[sid]
    assert c["image"] == {"ref": "localhost/cfg", "id": full, "pinned": False}
    assert any(f["check"] == "SBX-A050" and "'latest'" in f["message"] for f in c["findings"]), c["findings"]
    assert by_id[pinned]["image"]["pinned"] is True
    assert not any(f["check"] == "SBX-A050" for f in by_id[pinned]["findings"])
    table = sbx("audit", sid).stdout
    assert f"image localhost/cfg ({full[:12]})" in table


def test_audit_shows_a_podman_containers_image(tmp_path):
    need("podman")
    root = tmp_path / "rootfs"
    busybox_rootfs(str(root))
    tarball = tmp_path / "rootfs.tar"
    subprocess.run(["tar", "-C", str(root), "-cf", str(tarball), "."], check=True)
    tag = f"localhost/sbximg-audit-{os.getpid()}:7"
    name = f"sbximg-audit-{os.getpid()}"
    subprocess.run(["podman", "import", "-q", str(tarball), tag], check=True, capture_output=True, timeout=120)
    try:
        subprocess.run(["podman", "run", "-d", "--name", name, "--ulimit", "nofile=1024:1024", "--ulimit",
                        "nproc=1024:1024", tag, "sleep", "60"], check=True, capture_output=True, timeout=120)
        doc = json.loads(_sbx("audit", name, "--format", "json").stdout)
        c = doc["containers"][0]
        assert c["runtime"] == "podman" and c["image"]["ref"] == tag, c["image"]
        assert any(f["check"] == "SBX-A050" for f in c["findings"])
    finally:
        subprocess.run(["podman", "rm", "-f", "-t", "0", name], capture_output=True, timeout=120)
        subprocess.run(["podman", "rmi", "-f", tag], capture_output=True, timeout=120)


def test_a_store_without_idmapped_mount_support_is_a_refusal_not_a_fallback(sbx, images, tmp_path):
    """ramfs cannot be idmapped: without idmapping the image's files would show as nobody (or as
    the workload's own uid); sbx refuses instead of running with the wrong owners."""
    mnt = tmp_path / "ramfs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "ramfs", "ramfs", str(mnt)], check=True)
    try:
        env = {"SBX_DATA_DIR": str(mnt / "store")}
        assert sbx("pull", "-q", f"oci:{images['layout']}:root", env=env).returncode == 0
        p = sbx("run", "localhost/root", env=env)
        assert p.returncode == 125 and "idmapped mount" in p.stderr and p.stderr.count("\n") == 1, p.stderr
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
