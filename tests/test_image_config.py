"""The image config with Docker's semantics, the image's own passwd/group (runc's GetExecUser rules), the
layered reader that finds them through whiteouts and opaque dirs, and the `images:` policy rule.

The layered tests unpack real layers with the real unpacker into a temp dir (no store, no mocks).
"""
from __future__ import annotations

import os
import tarfile

import pytest

from sandbox.image import config as imgconfig
from sandbox.image.layered import Layered
from sandbox.image.passwd import UserError, exec_user
from tests.imagekit import Tar

PASSWD = b"""root:x:0:0:root:/root:/bin/sh
daemon:x:777:778:d:/var/d:/bin/false
app:x:4242:4343:app:/home/app:/bin/sh
evil:x:junk:0:not a number:/:/bin/sh
"""
GROUP = b"""root:x:0:
daemon:x:778:
app:x:4343:
extra:x:5000:app,daemon
wheel:x:10:root
"""


@pytest.mark.parametrize("spec,want", [
    ("", (0, 0, (10,), "/root", "root")),
    ("app", (4242, 4343, (5000,), "/home/app", "app")),
    ("daemon", (777, 778, (5000,), "/var/d", "daemon")),  # the IMAGE's daemon, not the host's uid 1
    ("4242", (4242, 4343, (5000,), "/home/app", "app")),
    ("1234", (1234, 0, (), "/", None)),  # numeric and unknown: gid 0, home /
    ("app:extra", (4242, 5000, (), "/home/app", "app")),  # explicit group: no supplementary groups
    ("app:99", (4242, 99, (), "/home/app", "app")),
    ("1234:5000", (1234, 5000, (), "/", None)),
])
def test_exec_user_follows_runc(spec, want):
    u = exec_user(spec, PASSWD, GROUP)
    assert (u.uid, u.gid, u.groups, u.home, u.name) == want


@pytest.mark.parametrize("spec,msg", [("nosuch", "not in the image's /etc/passwd"),
                                      ("app:nogroup", "not in the image's /etc/group"),
                                      ("evil", "not in the image's /etc/passwd"),  # runc would make it uid 0
                                      ("99999999999", "out of range")])
def test_exec_user_errors(spec, msg):
    with pytest.raises(UserError, match=msg):
        exec_user(spec, PASSWD, GROUP)


def test_exec_user_without_passwd_file():
    assert exec_user("", None, None).uid == 0
    assert (exec_user("1000:1000", None, None).uid, exec_user("1000:1000", None, None).gid) == (1000, 1000)
    with pytest.raises(UserError):
        exec_user("app", None, None)


def test_command_env_workdir_rules():
    cfg = imgconfig.parse({"config": {"Entrypoint": ["/ep"], "Cmd": ["a", "b"], "Env": ["A=1", "PATH=/x"],
                                      "WorkingDir": "rel/dir", "User": "app", "StopSignal": "USR1"}})
    assert imgconfig.command(cfg, []) == ["/ep", "a", "b"]
    assert imgconfig.command(cfg, ["c"]) == ["/ep", "c"]  # args replace Cmd, keep Entrypoint
    assert imgconfig.command(cfg, ["c"], entrypoint="/other") == ["/other", "c"]
    assert imgconfig.command(cfg, [], entrypoint="/other") == ["/other"]  # --entrypoint drops the image Cmd
    assert imgconfig.command(cfg, ["x"], entrypoint="") == ["x"]
    assert cfg.workdir == "/rel/dir"
    assert imgconfig.signal_number(cfg.stop_signal) == 10
    env = imgconfig.environment(cfg, ["A=2", "B=3"], home="/home/app")
    assert env == ["A=2", "PATH=/x", "B=3", "HOME=/home/app"]
    bare = imgconfig.parse({"config": {"Cmd": ["/bin/sh"]}})
    assert "PATH=" + imgconfig.DEFAULT_PATH in imgconfig.environment(bare)
    with pytest.raises(imgconfig.ConfigError, match="no Entrypoint or Cmd"):
        imgconfig.command(imgconfig.parse({}), [])


@pytest.mark.parametrize("bad,field", [
    ({"Env": "A=1"}, "Env"), ({"Env": ["novalue"]}, "Env"), ({"Cmd": [1]}, "Cmd"),
    ({"Entrypoint": ["a\0b"]}, "Entrypoint"), ({"Labels": {"a": 1}}, "Labels"), ({"StopSignal": "SIGNOPE"}, "StopSignal"),
    ({"WorkingDir": 5}, "WorkingDir"), ({"User": ["root"]}, "User"), ({"ExposedPorts": ["80"]}, "ExposedPorts"),
])
def test_hostile_config_fields_name_the_field(bad, field):
    with pytest.raises(imgconfig.ConfigError, match=field):
        imgconfig.parse({"config": bad})


def _unpack(tmp_path, name: str, tar: bytes) -> str:
    """A real layer, unpacked by sbx's unpacker into tmp_path/name."""
    from sandbox.image import blob, unpack
    root = tmp_path / name
    root.mkdir()
    f = tmp_path / (name + ".tar")
    f.write_bytes(tar)
    fd = os.open(f, os.O_RDONLY)
    rfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        unpack.unpack(blob.Stream(fd, 1 << 30, name), rfd, name, unpack.Budget(unpack.Limits()))
    finally:
        os.close(fd)
        os.close(rfd)
    return str(root)


def test_layered_reader_applies_whiteouts_opaque_dirs_and_clamped_symlinks(tmp_path):
    l1 = _unpack(tmp_path, "l1", Tar().add("etc/passwd", data=b"lower\n").add("etc/group", data=b"g-lower\n")
                 .add("opt/old", data=b"old").add("data/keep", data=b"keep").bytes())
    l2 = _unpack(tmp_path, "l2", Tar().add("etc/.wh.group").add("opt/.wh..wh..opq").add("opt/new", data=b"new")
                 .add("etc/alt", data=b"alt\n").bytes())
    l3 = _unpack(tmp_path, "l3", Tar().add("etc/passwd", tarfile.SYMTYPE, linkname="../../../../etc/alt")
                 .add("host", tarfile.SYMTYPE, linkname="/../../data").bytes())
    v = Layered([l1, l2, l3])
    assert v.read("/etc/passwd") == b"alt\n"  # a symlink in the top layer into a middle layer, '..' clamped at /
    assert v.read("/etc/group") is None  # whited out
    assert v.read("/opt/old") is None and v.read("/opt/new") == b"new"  # opaque dir
    assert v.read("/host/keep") == b"keep"  # '/..' is '/', never the host
    assert Layered([l1]).read("/etc/group") == b"g-lower\n"


def test_layered_reader_never_leaves_the_image(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("host secret")
    l1 = _unpack(tmp_path, "l1", Tar().add("esc", tarfile.SYMTYPE, linkname=str(outside))
                 .add("rel", tarfile.SYMTYPE, linkname="../" * 20 + str(outside).lstrip("/")).bytes())
    v = Layered([l1])
    assert v.read("/esc/secret") is None and v.read("/rel/secret") is None


def test_policy_images_rule_lint_and_evaluate(tmp_path):
    from sandbox.audit.conformance import evaluate
    from sandbox.audit.policy import lint
    from sandbox.audit.subject import Subject
    p = tmp_path / "p.yaml"
    p.write_text("apiVersion: sbx/v1\nname: img\nimages:\n  allowed_registries: [quay.io/myorg, 'bad/']\n")
    _, errors = lint(str(p))
    assert errors and f"{p}:4:" in errors[0].line() and "allowed_registries[1]" in errors[0].line()
    p.write_text("apiVersion: sbx/v1\nname: img\nimages:\n  allowed_registries: [quay.io/myorg, '127.0.0.1:5000']\n"
                 "  require_digest: true\n")
    pol, errors = lint(str(p))
    assert not errors

    def ids(s):
        return sorted(f.check_id for f in evaluate(pol, s))
    digest = "@sha256:" + "a" * 64
    assert ids(Subject(image="quay.io/myorg/app" + digest, image_pinned=True)) == []
    assert ids(Subject(image="quay.io/other/app" + digest, image_pinned=True)) == ["SBX-P070"]
    assert ids(Subject(image="busybox:latest")) == ["SBX-P070", "SBX-P071"]  # docker.io, and a tag
    assert ids(Subject(image="127.0.0.1:5000/x:1")) == ["SBX-P071"]
    # an id has no registry of its own: judged by the image's recorded names
    assert ids(Subject(image="a" * 64, image_names=("quay.io/myorg/app:1",), image_pinned=True)) == []
    assert ids(Subject()) == []  # no image: a host-command sandbox is not judged by this rule
