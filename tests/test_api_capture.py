"""The Python API for programs: subprocess.run's manners, and no silent typo.

Real sandboxes (strict) from this interpreter; nothing is mocked.
"""
from __future__ import annotations

import asyncio
import inspect
import io
import os
import subprocess
import sys
import threading
import time

import pytest

import sandbox
from sandbox import DEVNULL, PIPE, STDOUT
from tests.sbxrun import PROFILE, ROOT

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs sbx as root")


def sh(script: str, **kw) -> sandbox.Result:
    return sandbox.run(["/bin/sh", "-c", script], profile=PROFILE, **kw)


def test_capture_output_bytes_and_text():
    r = sh("echo out; echo err >&2; exit 3", capture_output=True)
    assert (r.exit_code, r.returncode, r.stdout, r.stderr) == (3, 3, b"out\n", b"err\n")
    r = sh("printf 'caf\\303\\251 \\377'", capture_output=True, text=True)
    assert r.stdout == "café \ufffd" and r.stderr == ""  # undecodable bytes are replaced, never raised
    assert r.record["verification"]["ok"] is True  # the same confinement and verification as the CLI


def test_input_reaches_stdin_and_ends_with_eof():
    r = sh("cat; echo; cat", input=b"abc", capture_output=True)
    assert r.stdout == b"abc\n", r  # the second cat saw EOF at once
    r = sh("cat; echo done", input="héllo\n", capture_output=True, text=True)
    assert r.stdout == "héllo\ndone\n"
    r = sh("cat > /dev/null; ls -l /proc/self/fd/0; echo x > /proc/self/fd/0", input=b"data", capture_output=True,
           text=True)
    assert r.exit_code != 0 and "memfd:sbx-input" in r.stdout  # a sealed, read-only file: nothing to write back


def test_streams_to_file_objects_files_and_devnull(tmp_path):
    raw_out, raw_err = io.BytesIO(), io.BytesIO()
    r = sh("echo one; echo two >&2", stdout=raw_out, stderr=raw_err)
    assert (raw_out.getvalue(), raw_err.getvalue()) == (b"one\n", b"two\n") and r.stdout is None and r.stderr is None
    buf = io.StringIO()
    sh("echo one", stdout=buf, text=True)
    assert buf.getvalue() == "one\n"
    path = tmp_path / "out.txt"
    with open(path, "wb") as f:
        f.write(b"before\n")
        sh("echo inside; echo also >&2", stdout=f, stderr=STDOUT)
    assert path.read_bytes() == b"before\ninside\nalso\n"
    r = sh("echo gone; echo kept >&2", stdout=DEVNULL, stderr=PIPE)
    assert r.stdout is None and r.stderr == b"kept\n"
    r = sh("echo a; echo b >&2", stdout=PIPE, stderr=STDOUT)
    assert r.stdout == b"a\nb\n"
    r = sh("cat", stdin=DEVNULL, capture_output=True)
    assert r.stdout == b""


def test_output_is_capped_and_the_workload_is_not_stuck():
    r = sh("head -c 20000000 /dev/zero; echo tail >&2", capture_output=True, max_output=1000)
    assert r.exit_code == 0 and len(r.stdout) == 1000 and r.stdout_truncated is True
    assert r.stderr == b"tail\n" and r.stderr_truncated is False
    assert "stdout_truncated=True" in repr(r)


def test_timeout_kills_the_sandbox_and_says_so():
    r = sh("echo started; sleep 30", capture_output=True, timeout=0.5)
    assert r.timed_out and r.exit_code == 124 and r.stdout == b"started\n"


def test_check_raises_with_the_result():
    with pytest.raises(sandbox.ExitError) as e:
        sh("exit 7", check=True)
    assert e.value.result.exit_code == 7


def test_typos_and_strings_are_refused_with_the_nearest_name():
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'memroy' \(did you mean 'memory'\?\)"):
        sandbox.run(["/bin/true"], memroy="64m")
    with pytest.raises(TypeError, match=r"'capture_ouput' \(did you mean 'capture_output'\?\)"):
        sandbox.run(["/bin/true"], capture_ouput=True)
    with pytest.raises(TypeError, match="'pid_limit'.*'pids_limit'"):
        sandbox.resolve(["/bin/true"], pid_limit=5)
    with pytest.raises(TypeError, match="not a string"):
        sandbox.run("echo hi")
    with pytest.raises(TypeError, match="not a string"):
        sandbox.resolve("echo hi")
    with pytest.raises(TypeError, match="every argument must be a str"):
        sandbox.run(["/bin/echo", 3])
    with pytest.raises(TypeError, match="stdout must be"):
        sandbox.run(["/bin/true"], stdout=object())
    r = sandbox.run("echo 'two words' three", shlex=True, capture_output=True)
    assert r.stdout == b"two words three\n"


def test_options_take_python_values():
    r = sandbox.run(["/bin/sh", "-c", "echo $A $B; ls /s | head -1"], env={"A": "1", "B": "two"}, memory="64m",
                    pids_limit=9, volume="/usr/share:/s", capture_output=True, text=True)
    assert r.stdout.split()[:2] == ["1", "two"] and r.stdout.split()[2] == sorted(os.listdir("/usr/share"))[0], r
    spec = sandbox.resolve(["/bin/true"], cpus=0.5, cap_drop="ALL", env=["X=1"], memory="64m", pids_limit=9,
                           volume="/usr/share:/s", ulimit="nofile=64")
    assert spec.resources.cpus == 0.5 and ("X", "1") in spec.env and spec.resources.memory == 64 << 20
    assert spec.resources.pids_limit == 9 and spec.filesystem.binds[0].target == "/s"
    assert [(r.name, r.soft) for r in spec.rlimits if r.name == "nofile"] == [("nofile", 64)]
    with pytest.raises(TypeError, match="build a Spec"):
        sandbox.run(spec, memory="64m")
    with pytest.raises(TypeError, match="'memroy'"):
        sandbox.run(spec, memroy="64m")  # a typo is named even where options do not apply


def test_spec_and_result_are_exported_with_a_short_repr():
    from sandbox.launch import Result
    from sandbox.spec import Spec
    assert sandbox.Spec is Spec and sandbox.Result is Result
    spec = sandbox.resolve(["/bin/true"], memory="64m")
    assert repr(spec) == ("Spec(argv=['/bin/true'], profile='strict', uid=65534, network='loopback', memory=67108864, "
                          "cpus=1.0, pids_limit=256)")
    r = sandbox.run(spec, capture_output=True)
    assert repr(r) == f"Result(exit_code=0, sandbox_id={r.sandbox_id[:12]!r}, stdout=b'', stderr=b'')"
    assert len(repr(sandbox.run(["/bin/sh", "-c", "seq 1000"], capture_output=True))) < 200


def test_signatures_and_docstrings_say_what_run_does():
    sig = inspect.signature(sandbox.run)
    for name in ("capture_output", "input", "timeout", "text", "stdout", "stderr", "max_output", "shlex", "check"):
        assert name in sig.parameters and sig.parameters[name].kind is inspect.Parameter.KEYWORD_ONLY
        assert name in sandbox.run.__doc__
    assert sig.return_annotation == "Result"
    assert "TypeError" in sandbox.run.__doc__ and sandbox.run_async.__doc__ and sandbox.resolve.__doc__


def test_the_reference_page_is_generated_from_the_code():
    p = subprocess.run([sys.executable, "-m", "sandbox.apidoc"], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": ROOT})
    assert p.returncode == 0, p.stderr
    with open(os.path.join(ROOT, "sandbox", "API.md")) as f:
        assert f.read() == p.stdout, "sandbox/API.md is stale: python -m sandbox.apidoc > sandbox/API.md"
    assert "## sandbox.run" in p.stdout and "capture_output" in p.stdout


def test_concurrent_runs_get_their_own_eof():
    """Thread A's stdin must end although thread B's sandbox (forked meanwhile) lives on:
    inherited pipe ends would keep A's `cat` waiting until B ended."""
    done = {}

    def long():
        done["b"] = sandbox.run(["sleep", "20"], timeout=20)

    b = threading.Thread(target=long)
    b.start()
    try:
        time.sleep(0.3)  # B's sandbox exists and holds every fd it inherited
        for _ in range(3):
            r = sandbox.run(["cat"], input=b"x" * 100000, capture_output=True, timeout=10)
            assert r.exit_code == 0 and len(r.stdout) == 100000 and not r.timed_out
        assert b.is_alive()  # A finished while B still ran
    finally:
        pid = _init_of_sleep()
        if pid:
            os.kill(pid, 9)
        b.join(30)


def _init_of_sleep() -> int | None:
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    if f.read() == b"sleep\x0020\x00":
                        with open(f"/proc/{name}/stat") as s:
                            return int(s.read().rsplit(")", 1)[1].split()[1])  # its parent: the sandbox's init
            except OSError:
                continue
    return None


def test_run_async_runs_several_and_cancel_kills():
    async def main():
        rs = await asyncio.gather(*(sandbox.run_async(["/bin/sh", "-c", f"echo {i}"], capture_output=True)
                                    for i in range(4)))
        assert sorted(r.stdout for r in rs) == [b"0\n", b"1\n", b"2\n", b"3\n"]
        t = asyncio.create_task(sandbox.run_async(["sleep", "30"]))
        await asyncio.sleep(1.0)
        t0 = time.monotonic()
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        return time.monotonic() - t0

    took = asyncio.run(main())
    assert took < 15  # killed, not waited out (30 s)
    assert _init_of_sleep() is None


def test_every_cli_flag_is_an_api_option_and_nothing_else_is():
    from sandbox import api
    from sandbox.cmd_run import OPTIONS
    from sandbox.profiles import FLAGS
    from sandbox.spec import RUN_OPTION_FLAGS
    dests = {dest for _, dest, _, _, _ in OPTIONS} - {"profile", "explain", "pull"} - set(RUN_OPTION_FLAGS)
    # resolve() reads exactly the CLI's flags (run options are taken out first): none silently dropped
    assert dests == FLAGS - {"image", "hostname_default"}
    assert api.OPTIONS == FLAGS - {"hostname_default"} | {"name", "policy", "record"}
    with pytest.raises(TypeError, match="run option 'name'"):
        sandbox.resolve(["/bin/true"], name="x")
    with pytest.raises(TypeError, match="'hostname_default'"):
        sandbox.run(["/bin/true"], hostname_default="x")
