"""Profiles and flags: bad input is one line naming file:line and the field, exit 125; never a traceback."""
from __future__ import annotations

import textwrap

import pytest

from tests.sbxrun import PROFILE, sbx


def _bad(tmp_path, body: str, *flags: str):
    f = tmp_path / "p.yaml"
    f.write_text(textwrap.dedent(body))
    p = sbx("run", "--profile", str(f), *flags, "--", "/bin/true")
    assert p.returncode == 125, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    assert p.stderr.count("\n") == 1, p.stderr
    return p.stderr


def test_unknown_key_names_file_line_and_field(tmp_path):
    err = _bad(tmp_path, """\
        extends: strict
        filesystem:
          read_only: true
          tmp_sise: 10m
        """)
    assert f"{tmp_path}/p.yaml:4:3" in err and "filesystem.tmp_sise" in err and "unknown key" in err


def test_wrong_type_and_bad_size(tmp_path):
    err = _bad(tmp_path, "extends: strict\nresources:\n  pids_limit: lots\n")
    assert "p.yaml:3:" in err and "resources.pids_limit" in err
    err = _bad(tmp_path, "extends: strict\nfilesystem:\n  tmp_size: 12 parsecs\n")
    assert "p.yaml:3:" in err and "tmp_size" in err


def test_invalid_yaml_and_unknown_capability(tmp_path):
    err = _bad(tmp_path, "extends: strict\nnetwork: [unclosed\n")
    assert "p.yaml:" in err and "invalid YAML" in err
    err = _bad(tmp_path, "extends: strict\ncapabilities:\n  keep: [NET_BIND_SERVIC]\n")
    assert "p.yaml:3:" in err and "NET_BIND_SERVICE" in err  # nearest-name suggestion


def test_extends_cycle_and_missing_base(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    p = sbx("run", "--profile", str(tmp_path / "a.yaml"), "--", "/bin/true")
    assert p.returncode == 125 and "cycle" in p.stderr
    err = _bad(tmp_path, "extends: nosuchprofile\n")
    assert "no built-in profile 'nosuchprofile'" in err


def test_extends_merges_and_overrides(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("extends: strict\nhostname: mybox\nrlimits:\n  nofile: 256:256\n")
    p = sbx("run", "--profile", str(f), "--", "/bin/sh", "-c", "hostname; ulimit -n; id -u")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["mybox", "256", "65534"]


@pytest.mark.parametrize("flags,needle", [
    (("-u", "0"), "does not allow uid/gid 0"),
    (("--cap-add", "SYS_ADMIN"), "does not allow adding capabilities"),
    (("--cap-add", "SYS_ADMN"), "did you mean SYS_ADMIN"),
    (("--security-opt", "seccomp=unconfined"), "refuses seccomp=unconfined"),
    (("--security-opt", "bogus=1"), "unknown option"),
    (("--memory", "lots"), "not a size"),
    (("--network", "host"), "must be one of"),
    (("-v", "./relative:/x"), "absolute"),
    (("-v", "/tmp:/proc/x"), "cannot bind over"),
    (("-p", "8080:80"), "needs --network bridge"),
    (("--ulimit", "nofiles=1"), "unknown ulimit"),
    (("--bogus-flag",), "No such option"),
])
def test_bad_flags_are_one_line_125(flags, needle):
    p = sbx("run", "--profile", PROFILE, *flags, "--", "/bin/true")
    assert p.returncode == 125, (flags, p.stderr)
    assert needle in p.stderr, p.stderr
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr


def _capsets(*flags: str) -> dict[str, int]:
    p = sbx("run", "--profile", "default", *flags, "--", "/bin/sh", "-c", "grep ^Cap /proc/self/status")
    assert p.returncode == 0, p.stderr
    return {line.split(":")[0]: int(line.split()[1], 16) for line in p.stdout.splitlines()}


def test_default_profile_allows_cap_add_and_keeps_docker_caps_for_root():
    caps = _capsets("-u", "0", "--cap-add", "NET_ADMIN")
    eff = caps["CapEff"]
    assert eff & (1 << 12), "NET_ADMIN (12) missing"
    assert eff & (1 << 0) and eff & (1 << 10), "docker default caps CHOWN/NET_BIND_SERVICE missing"
    assert not eff & (1 << 21), "SYS_ADMIN must not be there"
    assert caps["CapPrm"] == eff and caps["CapBnd"] == eff and caps["CapInh"] == 0 and caps["CapAmb"] == 0


def test_default_profile_gives_a_non_root_workload_no_capabilities():
    """Docker gives capabilities to uid 0 only; the default profile used to hand uid 65534 all of
    them as ambient capabilities. Now they stay in its bounding set and nowhere else."""
    caps = _capsets("--cap-add", "NET_ADMIN")
    assert caps["CapEff"] == caps["CapPrm"] == caps["CapInh"] == caps["CapAmb"] == 0, caps
    assert caps["CapBnd"] & (1 << 12) and caps["CapBnd"] & (1 << 0)


def test_profile_list_and_show_from_any_directory(tmp_path):
    p = sbx("profile", "list")
    assert "strict" in p.stdout and "default" in p.stdout
    p = sbx("profile", "show", "strict")
    assert "name: strict" in p.stdout


def test_publish_spellings_parse():
    from sandbox.profiles import parse_port
    assert parse_port("8080:80").host_ip == "0.0.0.0"
    p = parse_port("[::1]:8080:80/udp")
    assert (p.host_ip, p.host_port, p.container_port, p.proto) == ("::1", 8080, 80, "udp")
    for bad in ("[::1:8080:80", "[zz]:1:2", "1:2:3:4", "0:80", "80:70000"):
        with pytest.raises(ValueError):
            parse_port(bad)


def _profile_leaves(schema: dict, prefix: str = ""):
    for k, v in schema.items():
        path = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            yield from _profile_leaves(v, path)
        else:
            yield path


@pytest.mark.parametrize("path", list(_profile_leaves(__import__("sandbox.profiles", fromlist=["SCHEMA"]).SCHEMA)))
def test_every_profile_field_survives_every_wrong_shape(tmp_path, path):
    """A profile field of the wrong shape is a located SpecError, never an internal error."""
    import yaml
    from sandbox.errors import SpecError
    from sandbox.profiles import resolve
    for value in (7, True, 1.5, "x", None, [1], [[1]], [{"a": 1}], {"a": 1}, [None], "-1", ""):
        doc: dict = {"name": "typed", "extends": "strict"} if path != "extends" else {"name": "typed"}
        cur = doc
        parts = path.split(".")
        for part in parts[:-1]:
            cur = cur.setdefault(part, {})
        cur[parts[-1]] = value
        f = tmp_path / "p.yaml"
        f.write_text(yaml.safe_dump(doc))
        try:
            resolve(["/bin/true"], profile=str(f))
        except SpecError as e:
            assert e.where and (e.where.startswith(str(f)) or e.where.startswith("/") or e.where.startswith("-")), \
                (path, value, e.where, e.message)
