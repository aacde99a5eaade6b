"""The first things a docker user gets wrong, answered in one line that names the right thing."""
from __future__ import annotations

import os

import pytest

from tests.sbxrun import PROFILE, sbx

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="starts a real sandbox as root")


def test_bare_sbx_prints_its_help_not_an_escaped_line():
    p = sbx()
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("Usage: sbx") and "\\x0a" not in p.stdout + p.stderr
    for verb in ("run", "ps", "top", "cp", "wait", "port", "rename", "create", "version", "info"):
        assert f"\n  {verb} " in p.stdout, verb
    assert p.stderr == ""


@ROOT_ONLY
def test_run_without_a_command_is_a_usage_error_even_with_a_cached_spec(tmp_path):
    # The spec cache is keyed by the flags, not the command: after one run with these flags, a bare
    # `sbx run` with the same flags found a cached Spec and crashed in launch (IndexError).
    env = {"SBX_CACHE_DIR": str(tmp_path / "cache"), "SBX_STATE_DIR": str(tmp_path / "state")}
    ok = sbx("run", "--profile", PROFILE, "--", "/bin/true", env=env)
    assert ok.returncode == 0, ok.stderr
    assert os.listdir(tmp_path / "cache" / "specs"), "the first run must have cached its spec"
    for args in (("run", "--profile", PROFILE), ("run", "--profile", PROFILE, "--"), ("run",), ("run", "-d"),
                 ("create",)):
        p = sbx(*args, env=env)
        assert p.returncode == 125, (args, p.stderr)
        assert "no command given" in p.stderr and "usage: sbx" in p.stderr, p.stderr
        assert "IndexError" not in p.stderr and "internal error" not in p.stderr and p.stderr.count("\n") == 1


@pytest.mark.parametrize("flags,flag,msg", [
    (("--memory", "10XB"), "--memory", "'10XB' is not a size"),
    (("-m", "1k"), "--memory", "below 6 MiB"),
    (("--memory-swap", "zz"), "--memory-swap", "'zz' is not a size"),
    (("--cpuset-cpus", "a-b"), "--cpuset-cpus", "must be a list like 0-2,4"),
    (("--cpus", "0"), "--cpus", "must be > 0"),
    (("--pids-limit", "0"), "--pids-limit", "must be > 0"),
])
def test_a_bad_flag_value_is_blamed_on_the_flag_not_the_profile(tmp_path, flags, flag, msg):
    p = sbx("run", "--profile", "strict", *flags, "--", "/bin/true", env={"SBX_CACHE_DIR": str(tmp_path)})
    assert p.returncode == 125
    assert p.stderr.startswith(f"sbx: {flag}: ") and msg in p.stderr, p.stderr
    assert "strict.yaml" not in p.stderr


def test_a_bad_profile_value_is_still_blamed_on_its_file_and_line(tmp_path):
    prof = tmp_path / "p.yaml"
    prof.write_text("extends: strict\nresources:\n  cpuset_cpus: \"x-y\"\n")
    p = sbx("run", "--profile", str(prof), "--", "/bin/true", env={"SBX_CACHE_DIR": str(tmp_path / "c")})
    assert p.returncode == 125 and f"{prof}:3:" in p.stderr and "resources.cpuset_cpus" in p.stderr, p.stderr
    # ... and a flag given for that key wins over it, without blaming the file
    p = sbx("run", "--profile", str(prof), "--cpuset-cpus", "zz", "--", "/bin/true",
            env={"SBX_CACHE_DIR": str(tmp_path / "c")})
    assert p.stderr.startswith("sbx: --cpuset-cpus: ") and str(prof) not in p.stderr, p.stderr


@pytest.mark.parametrize("typed,suggested", [
    ("--memroy", "--memory"),
    ("--cpu-share", "--cpu-shares"),
    ("--hostnme", "--hostname"),
    ("--volumes", "--volume"),
])
def test_did_you_mean_for_typos(typed, suggested):
    p = sbx("run", typed, "1", "--", "/bin/true")
    assert p.returncode == 125 and f"Did you mean {suggested}?" in p.stderr, p.stderr


@pytest.mark.parametrize("typed,other", [
    ("--stop-timeout", "--timeout"),  # waits before SIGKILL on stop; --timeout kills the whole run
    ("--gpus", "--cpus"),  # a docker flag is never read as a typo of another option
    ("--ip", "--rm"),
    ("--label", "--name"),
])
def test_did_you_mean_never_offers_an_option_with_another_meaning(typed, other):
    p = sbx("run", typed, "1", "--", "/bin/true")
    assert p.returncode == 125 and f"No such option '{typed}'" in p.stderr, p.stderr
    assert other not in p.stderr.split("No such option", 1)[1].split("(see")[0].replace(typed, ""), p.stderr
    assert "Did you mean" not in p.stderr


def test_docker_flags_sbx_lacks_are_named_as_such():
    p = sbx("run", "--stop-timeout", "3", "--", "/bin/true")
    assert "docker's --stop-timeout is planned for sbx" in p.stderr, p.stderr
    p = sbx("run", "--pid", "host", "--", "/bin/true")
    assert "own pid namespace" in p.stderr, p.stderr


def test_audit_uses_its_documented_exit_codes():
    # audit's docstring and the README: 0 ok, 1 a finding at or above --fail-on, 2 could not audit
    for args in (("audit", "--bogus"), ("audit", "--format", "xml"), ("audit", "--pid", "abc"),
                 ("audit", "--fail-on", "urgent")):
        p = sbx(*args)
        assert p.returncode == 2, (args, p.returncode, p.stderr)
        assert p.stderr.startswith("sbx: ") and p.stderr.count("\n") == 1, p.stderr
    assert sbx("audit", "--help").returncode == 0
    p = sbx("audit", "no-such-container-anywhere")
    assert p.returncode == 2 and "no container matches" in p.stderr
    # every other verb keeps docker's 125 for its usage errors
    assert sbx("ps", "--bogus").returncode == 125
