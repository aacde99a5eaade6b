"""Images against real parts: Debian's docker-registry on loopback (htpasswd auth, a self-signed openssl
certificate), images built by umoci from busybox-static and pushed with skopeo, `podman save` archives.

login right/wrong and logout, containers-auth.json where podman reads it, pull by tag and by digest, TLS
refused without the CA, certs.d, --tls-verify=false, offline imports (oci:, oci-archive:, docker-archive:),
a tampered registry blob, two concurrent pulls, a pull killed with SIGKILL, rmi and GC, prune, the store's
permissions, a rootless pull, and inspect with Docker's config semantics.
"""
from __future__ import annotations

import base64
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from tests.imagekit import PASSWORD, USER, Tar, busybox_rootfs, need, oci_layout, registry, store_state  # noqa: F401
from tests.imagekit import umoci_add_layer, umoci_image
from tests.sbxrun import ROOT, close_pipes, read_bytes, sbx

APP_PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:4242:4343:app:/home/app:/bin/sh\n"
APP_GROUP = "root:x:0:\napp:x:4343:\nextra:x:5000:app\nother:x:5001:root\n"


@pytest.fixture(scope="module")
def pushed(registry, tmp_path_factory):
    """test/base:1 (busybox, one layer), test/app:1 (base + a second layer, a full config), pushed."""
    need("umoci", "skopeo")
    d = tmp_path_factory.mktemp("layouts")
    layout = str(d / "oci")
    umoci_image(layout, "base", lambda r: busybox_rootfs(r, APP_PASSWD, APP_GROUP))

    def second(r):
        os.makedirs(os.path.join(r, "work"))
        with open(os.path.join(r, "work", "hello"), "w") as f:
            f.write("from the app layer\n")
        os.unlink(os.path.join(r, "bin", "false"))  # a whiteout in the second layer

    umoci_add_layer(layout, "base", "app", second)
    subprocess.run(["umoci", "config", "--image", f"{layout}:app", "--config.user", "app",
                    "--config.env", "FOO=bar", "--config.env", "PATH=/bin", "--config.workingdir", "/work",
                    "--config.entrypoint", "/bin/sh", "--config.cmd", "-c", "--config.cmd", "id",
                    "--config.label", "org.example=yes", "--config.stopsignal", "SIGUSR1",
                    "--config.exposedports", "8080/tcp"], check=True, capture_output=True)
    base = registry.push(layout, "base", "test/base:1")
    app = registry.push(layout, "app", "test/app:1")
    return {"layout": layout, "base": base, "app": app, "dir": str(d)}


@pytest.fixture
def env(tmp_path, registry):
    """A private store and auth file per test; the CLI with the registry's CA."""
    data = tmp_path / "store"
    e = {"SBX_DATA_DIR": str(data), "REGISTRY_AUTH_FILE": registry.authfile, "XDG_RUNTIME_DIR": str(tmp_path)}

    def run(*args, **kw):
        return sbx(*args, env={**e, **kw.pop("env", {})}, timeout=kw.pop("timeout", 120), **kw)

    run.data = str(data)
    run.env = e
    run.tls = ["--cert-dir", registry.certs]
    return run


def test_login_wrong_password_is_refused_with_the_registrys_reason_and_nothing_written(registry, tmp_path):
    auth = tmp_path / "auth.json"
    p = sbx("login", "--authfile", str(auth), "--cert-dir", registry.certs, "-u", USER, "--password-stdin",
            registry.host, input="wrong\n")
    assert p.returncode == 125, p.stderr
    assert p.stderr.count("\n") == 1 and "invalid username/password" in p.stderr, p.stderr
    assert not auth.exists()


def test_login_checks_then_stores_where_podman_reads_it(registry, tmp_path):
    auth = tmp_path / "auth.json"
    p = sbx("login", "--authfile", str(auth), "--cert-dir", registry.certs, "-u", USER, "--password-stdin",
            registry.host, input=PASSWORD + "\n")
    assert p.returncode == 0, p.stderr
    st = os.stat(auth)
    assert st.st_mode & 0o777 == 0o600
    data = json.loads(auth.read_text())
    assert base64.b64decode(data["auths"][registry.host]["auth"]).decode() == f"{USER}:{PASSWORD}"
    if shutil.which("podman"):
        g = subprocess.run(["podman", "login", "--authfile", str(auth), "--get-login", registry.host],
                           capture_output=True, text=True, timeout=60)
        assert g.returncode == 0 and g.stdout.strip() == USER, g.stderr
    # logout removes the entry; a second logout says it is not logged in (125)
    assert sbx("logout", "--authfile", str(auth), registry.host).returncode == 0
    assert registry.host not in json.loads(auth.read_text()).get("auths", {})
    p = sbx("logout", "--authfile", str(auth), registry.host)
    assert p.returncode == 125 and "not logged in" in p.stderr.lower(), p.stderr


def test_login_default_location_and_registry_auth_file(registry, tmp_path):
    # podman's default for the primary file: $XDG_RUNTIME_DIR/containers/auth.json
    rt = tmp_path / "rt"
    rt.mkdir(mode=0o700)
    env = {"XDG_RUNTIME_DIR": str(rt)}
    p = sbx("login", "--cert-dir", registry.certs, "-u", USER, "--password-stdin", registry.host,
            input=PASSWORD, env=env)
    assert p.returncode == 0, p.stderr
    default = rt / "containers" / "auth.json"
    assert default.exists() and os.stat(default).st_mode & 0o777 == 0o600
    # REGISTRY_AUTH_FILE wins over the default, as for podman and skopeo
    other = tmp_path / "other.json"
    p = sbx("login", "--cert-dir", registry.certs, "-u", USER, "--password-stdin", registry.host,
            input=PASSWORD, env={**env, "REGISTRY_AUTH_FILE": str(other)})
    assert p.returncode == 0 and other.exists(), p.stderr
    p = sbx("logout", "--all", env=env)
    assert p.returncode == 0, p.stderr
    assert json.loads(default.read_text()).get("auths", {}) == {}


def test_tls_is_verified_by_default_and_refused_without_the_ca(registry, env, pushed, tmp_path):
    p = env("pull", f"{registry.host}/test/base:1")
    assert p.returncode == 125 and ("x509" in p.stderr or "certificate" in p.stderr), p.stderr
    auth = tmp_path / "auth.json"
    p = sbx("login", "--authfile", str(auth), "-u", USER, "--password-stdin", registry.host, input=PASSWORD)
    assert p.returncode == 125 and "certificate signed by unknown authority" in p.stderr, p.stderr
    assert not auth.exists()
    st = store_state(env.data)
    assert st["images"] == [] and st["layers"] == [] and st["tmp"] == []


def test_certs_d_is_used_without_flags(registry, env, pushed):
    d = f"/etc/containers/certs.d/{registry.host}"
    if os.path.exists(d) or os.geteuid() != 0:
        pytest.skip(f"{d} exists already or not root")
    os.makedirs(d)
    try:
        shutil.copy(os.path.join(registry.certs, "ca.crt"), os.path.join(d, "ca.crt"))
        p = env("pull", "-q", f"{registry.host}/test/base:1")
        assert p.returncode == 0, p.stderr
    finally:
        shutil.rmtree(d)


def test_tls_verify_false_works_and_warns(registry, env, pushed):
    p = env("pull", "--tls-verify=false", f"{registry.host}/test/base:1")
    assert p.returncode == 0, p.stderr
    assert "warning: TLS verification is off" in p.stderr


def test_pull_needs_credentials(registry, env, pushed, tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text('{"auths": {}}')
    p = env("pull", "--authfile", str(empty), *env.tls, f"{registry.host}/test/base:1")
    assert p.returncode == 125 and ("unauthorized" in p.stderr or "authentication required" in p.stderr), p.stderr


def test_pull_by_tag_then_by_digest_and_a_wrong_digest(registry, env, pushed):
    p = env("pull", *env.tls, f"{registry.host}/test/base:1")
    assert p.returncode == 0, p.stderr
    image_id = p.stdout.strip()
    cfg = json.loads(subprocess.run(["skopeo", "inspect", "--raw", "--config", "--cert-dir", registry.certs,
                                     "--authfile", registry.authfile, f"docker://{registry.host}/test/base:1"],
                                    capture_output=True, check=True).stdout)
    import hashlib
    raw_cfg = subprocess.run(["skopeo", "inspect", "--raw", "--config", "--cert-dir", registry.certs, "--authfile",
                              registry.authfile, f"docker://{registry.host}/test/base:1"],
                             capture_output=True, check=True).stdout
    assert image_id == hashlib.sha256(raw_cfg).hexdigest()  # the id is the config digest, as podman's
    assert cfg["rootfs"]["type"] == "layers"
    # by digest: same image, up to date, its repo digest recorded
    p = env("pull", *env.tls, f"{registry.host}/test/base@{pushed['base']}")
    assert p.returncode == 0 and p.stdout.strip() == image_id, p.stderr
    info = json.loads(env("image", "inspect", f"{registry.host}/test/base@{pushed['base']}").stdout)[0]
    assert f"{registry.host}/test/base@{pushed['base']}" in info["RepoDigests"]
    assert info["Digest"] == pushed["base"]
    # a digest the registry does not have
    p = env("pull", *env.tls, f"{registry.host}/test/base@sha256:{'0' * 64}")
    assert p.returncode == 125 and "manifest unknown" in p.stderr.lower(), p.stderr


def test_tampered_registry_blob_is_refused_and_nothing_stored(registry, env, tmp_path):
    layout = oci_layout(str(tmp_path / "t"), [Tar().add("data", data=os.urandom(50000)).bytes()])
    digest = registry.push(layout, "t", "test/tampered:1")
    manifest = json.loads(subprocess.run(["skopeo", "inspect", "--raw", "--cert-dir", registry.certs, "--authfile",
                                          registry.authfile, f"docker://{registry.host}/test/tampered@{digest}"],
                                         capture_output=True, check=True).stdout)
    blob = registry.blob_data(manifest["layers"][0]["digest"])
    data = bytearray(read_bytes(blob))
    data[len(data) // 2] ^= 0xFF
    with open(blob, "wb") as f:
        f.write(data)
    p = env("pull", *env.tls, f"{registry.host}/test/tampered:1")
    assert p.returncode == 125, p.stderr
    assert "did not match" in p.stderr or "does not match" in p.stderr, p.stderr
    st = store_state(env.data)
    assert st["images"] == [] and st["layers"] == [] and st["tmp"] == [] and st["refs"] == {}


def test_offline_imports_oci_dir_oci_archive_and_docker_archive(env, pushed, tmp_path):
    layout = pushed["layout"]
    p = env("pull", "-q", f"oci:{layout}:base")
    assert p.returncode == 0, p.stderr
    base_id = p.stdout.strip()
    arch = tmp_path / "base-oci.tar"
    subprocess.run(["skopeo", "copy", "-q", f"oci:{layout}:base", f"oci-archive:{arch}:base"], check=True)
    p = env("pull", "-q", f"oci-archive:{arch}")
    assert p.returncode == 0 and p.stdout.strip() == base_id, p.stderr
    darch = tmp_path / "app-docker.tar"
    subprocess.run(["skopeo", "copy", "-q", f"oci:{layout}:app", f"docker-archive:{darch}:example.com/team/app:2"],
                   check=True)
    p = env("pull", "-q", f"docker-archive:{darch}")
    assert p.returncode == 0, p.stderr
    names = json.loads(env("images", "--format", "json").stdout)
    tags = {n for img in names for n in img["Names"]}
    assert {"localhost/base:latest", "example.com/team/app:2"} <= tags, tags
    st = store_state(env.data)
    assert len(st["layers"]) == 2 and st["tmp"] == [], st  # the base layer is shared, not stored twice


def test_podman_save_archive_imports_with_podmans_id_and_name(env, tmp_path):
    need("podman")
    root = tmp_path / "rootfs"
    busybox_rootfs(str(root))
    tarball = tmp_path / "rootfs.tar"
    subprocess.run(["tar", "-C", str(root), "-cf", str(tarball), "."], check=True)
    name = f"localhost/sbximg-save-{os.getpid()}:1"
    subprocess.run(["podman", "import", "-q", str(tarball), name], check=True, capture_output=True, timeout=120)
    try:
        pid = subprocess.run(["podman", "image", "inspect", "--format", "{{.Id}}", name], check=True,
                             capture_output=True, text=True).stdout.strip()
        saved = tmp_path / "saved.tar"
        subprocess.run(["podman", "save", "-o", str(saved), name], check=True, capture_output=True, timeout=120)
    finally:
        subprocess.run(["podman", "rmi", "-f", name], capture_output=True, timeout=120)
    p = env("pull", "-q", f"docker-archive:{saved}")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == pid
    info = json.loads(env("image", "inspect", pid[:12]).stdout)[0]
    assert info["RepoTags"] == [name]
    root_layer = info["Layers"][0]["Path"]
    assert os.path.isfile(os.path.join(root_layer, "bin", "busybox"))


def test_two_concurrent_pulls_of_one_image(registry, env, pushed):
    cmd = [sys.executable, "-m", "sandbox", "pull", "-q", *env.tls, f"{registry.host}/test/app:1"]
    e = {**os.environ, **env.env, "PYTHONPATH": ROOT}
    procs = [subprocess.Popen(cmd, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    assert outs[0][0] == outs[1][0]
    st = store_state(env.data)
    assert len(st["images"]) == 1 and len(st["layers"]) == 2 and st["incomplete"] == [] and st["tmp"] == [], st


def _many_files_layout(path: str, n: int = 20000) -> str:
    t = Tar()
    for i in range(n):
        t.add(f"d{i % 50:02d}/f{i:05d}", data=b"x" * 64)
    return oci_layout(path, [Tar().add("first", data=b"1").bytes(), t.bytes()])


def test_a_pull_killed_with_sigkill_leaves_nothing_half_visible(env, tmp_path):
    layout = _many_files_layout(str(tmp_path / "big"))
    e = {**os.environ, **env.env, "PYTHONPATH": ROOT}
    proc = subprocess.Popen([sys.executable, "-m", "sandbox", "pull", "-q", f"oci:{layout}:t"], env=e,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    tmp = os.path.join(env.data, "tmp")
    deadline = time.monotonic() + 60
    killed_during_unpack = False
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            staged = [os.path.join(tmp, d) for d in os.listdir(tmp) if d.startswith("pull-") and not d.endswith(".lock")]
            if any(x.startswith("layer-") and len(os.listdir(os.path.join(s, x, "root"))) > 10
                   for s in staged for x in os.listdir(s)):
                killed_during_unpack = True
                break
        except (FileNotFoundError, NotADirectoryError):
            pass
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    close_pipes(proc)
    assert killed_during_unpack, "the pull finished before it could be killed"
    time.sleep(0.2)
    st = store_state(env.data)
    assert st["images"] == [] and st["refs"] == {} and st["incomplete"] == [], st
    assert st["tmp"], "the killed pull's staging should still be there (reaped later)"
    ls = env("images", "-q")
    assert ls.returncode == 0 and ls.stdout == ""
    # no skopeo (or zstd) left running for the dead pull
    left = subprocess.run(["pgrep", "-f", tmp], capture_output=True, text=True)
    assert left.stdout == "", left.stdout
    p = env("image", "prune")
    assert p.returncode == 0, p.stderr
    st = store_state(env.data)
    assert st["tmp"] == [] and st["layers"] == [], st
    p = env("pull", "-q", f"oci:{layout}:t")
    assert p.returncode == 0, p.stderr
    st = store_state(env.data)
    assert len(st["images"]) == 1 and len(st["layers"]) == 2 and st["tmp"] == []


def test_rmi_untags_deletes_and_collects_unshared_layers(registry, env, pushed):
    assert env("pull", "-q", *env.tls, f"{registry.host}/test/base:1").returncode == 0
    app = env("pull", "-q", *env.tls, f"{registry.host}/test/app:1").stdout.strip()
    base_id = env("pull", "-q", f"oci:{pushed['layout']}:base").stdout.strip()  # a second name for base
    st = store_state(env.data)
    assert len(st["images"]) == 2 and len(st["layers"]) == 2
    # by id with two names: refused without -f
    p = env("rmi", base_id[:12])
    assert p.returncode == 125 and "2 names" in p.stderr, p.stderr
    # by one of its names: only that name goes
    p = env("rmi", "localhost/base:latest")
    assert p.returncode == 0 and "Untagged: localhost/base:latest" in p.stdout, p.stdout
    assert len(store_state(env.data)["images"]) == 2
    # the app goes; the layer it shares with base stays
    p = env("rmi", f"{registry.host}/test/app:1")
    assert p.returncode == 0 and f"Deleted: {app}" in p.stdout, p.stdout
    st = store_state(env.data)
    assert st["images"] == [base_id] and len(st["layers"]) == 1, st
    p = env("rmi", "test/base:1")  # a short name of a registry image
    assert p.returncode == 0, p.stderr
    st = store_state(env.data)
    assert st["images"] == [] and st["layers"] == [] and st["refs"] == {} and st["tmp"] == [], st
    p = env("rmi", "nothere:1")
    assert p.returncode == 125 and "no such image" in p.stderr


def test_prune_removes_a_tag_that_moved_and_its_layers(registry, env, tmp_path):
    l1 = oci_layout(str(tmp_path / "a"), [Tar().add("v", data=b"one").bytes()])
    l2 = oci_layout(str(tmp_path / "b"), [Tar().add("v", data=b"two").bytes()])
    registry.push(l1, "t", "test/moving:1")
    first = env("pull", "-q", *env.tls, f"{registry.host}/test/moving:1").stdout.strip()
    registry.push(l2, "t", "test/moving:1")
    second = env("pull", "-q", *env.tls, f"{registry.host}/test/moving:1").stdout.strip()
    assert first and second and first != second
    table = env("images").stdout
    assert "<none>" in table and first[:12] in table
    p = env("image", "prune")
    assert p.returncode == 0 and f"Deleted: {first}" in p.stdout, p.stdout
    st = store_state(env.data)
    assert st["images"] == [second] and len(st["layers"]) == 1
    p = env("image", "prune", "-a")
    assert p.returncode == 0
    assert store_state(env.data)["layers"] == []


def test_images_listing_formats(registry, env, pushed):
    assert env("pull", "-q", *env.tls, f"{registry.host}/test/app:1").returncode == 0
    q = env("images", "-q").stdout.split()
    js = json.loads(env("images", "--format", "json").stdout)
    assert len(q) == 1 and js[0]["Id"].startswith(q[0]) and js[0]["Names"] == [f"{registry.host}/test/app:1"]
    table = env("images").stdout.splitlines()
    assert table[0].split()[:4] == ["REPOSITORY", "TAG", "IMAGE", "ID"]
    assert table[1].split()[:3] == [f"{registry.host}/test/app", "1", q[0]]


def test_inspect_has_dockers_config_semantics_and_the_images_own_user(registry, env, pushed):
    assert env("pull", "-q", *env.tls, f"{registry.host}/test/app:1").returncode == 0
    info = json.loads(env("image", "inspect", "test/app:1").stdout)[0]
    c = info["Config"]
    assert c["Env"] == ["FOO=bar", "PATH=/bin"] and c["WorkingDir"] == "/work"
    assert c["Entrypoint"] == ["/bin/sh"] and c["Cmd"] == ["-c", "id"]
    assert c["Labels"] == {"org.example": "yes"} and c["StopSignal"] == "SIGUSR1"
    assert c["ExposedPorts"] == ["8080/tcp"] and c["User"] == "app"
    # 'app' is resolved in the IMAGE's /etc/passwd and /etc/group (the host has no such user)
    with pytest.raises(KeyError):
        pwd.getpwnam("app")
    assert info["User"] == {"Uid": 4242, "Gid": 4343, "Groups": [5000], "Home": "/home/app", "Name": "app"}
    assert len(info["Layers"]) == 2
    top = info["Layers"][1]["Path"]
    st = os.stat(os.path.join(top, "bin", "false"), follow_symlinks=False)
    assert (st.st_mode & 0o170000, st.st_rdev) == (0o020000, 0)  # the deleted applet is an overlay whiteout


def test_store_is_private(registry, env, pushed):
    assert env("pull", "-q", *env.tls, f"{registry.host}/test/base:1").returncode == 0
    for sub in ("", "layers", "images", "tmp", "locks"):
        st = os.stat(os.path.join(env.data, sub))
        assert st.st_mode & 0o777 == 0o700 and st.st_uid == os.geteuid(), sub
    refs = os.path.join(env.data, "refs.json")
    assert os.stat(refs).st_mode & 0o777 == 0o600
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("sbxtest")
        except KeyError:
            return
        p = subprocess.run(["setpriv", "--reuid=sbxtest", "--regid=nogroup", "--clear-groups", "ls",
                            os.path.join(env.data, "layers")], capture_output=True, text=True)
        assert p.returncode != 0 and "Permission denied" in p.stderr


def test_rootless_pull_into_the_users_xdg_data_dir(pushed):
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to the unprivileged test user")
    try:
        pw = pwd.getpwnam("sbxtest")
    except KeyError:
        pytest.skip("test user 'sbxtest' missing (created by .ci/setup)")
    if os.stat(os.path.realpath(sys.executable)).st_mode & 0o005 != 0o005:
        pytest.skip("the test interpreter is not usable by other users")
    work = tempfile.mkdtemp(prefix="sbximg-rootless-", dir="/tmp")
    try:
        os.chmod(work, 0o755)
        layout = os.path.join(work, "oci")
        shutil.copytree(pushed["layout"], layout)
        subprocess.run(["chmod", "-R", "a+rX", layout], check=True)
        xdg = os.path.join(work, "xdg")
        os.mkdir(xdg)
        os.chown(xdg, pw.pw_uid, pw.pw_gid)
        p = sbx("pull", "-q", f"oci:{layout}:app", user="sbxtest",
                env={"XDG_DATA_HOME": xdg, "SBX_DATA_DIR": ""})
        assert p.returncode == 0, p.stderr
        data = os.path.join(xdg, "sbx")
        st = os.stat(data)
        assert st.st_uid == pw.pw_uid and st.st_mode & 0o777 == 0o700
        layers = os.listdir(os.path.join(data, "layers"))
        assert len(layers) == 2
        for h in layers:
            for dirpath, dirs, files in os.walk(os.path.join(data, "layers", h, "root")):
                for n in dirs + files:
                    assert os.lstat(os.path.join(dirpath, n)).st_uid == pw.pw_uid
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_bad_references_are_one_line_refusals(env):
    for ref in ("UPPER/case:1", "a b", "x@sha256:abc", "oci:", "name:bad!tag", "\x1b[31mred"):
        p = env("pull", ref)
        assert p.returncode == 125 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr, (ref, p.stderr)
        assert "\x1b" not in p.stderr
    p = env("pull", "oci:/nonexistent/dir:t")
    assert p.returncode == 125 and "does not exist" in p.stderr
