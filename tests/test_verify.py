"""Fail closed: when a stage silently does not apply its control, verification must catch it,
kill the workload before it runs, and refuse with 125 naming the control.

The fault is injected into sbx (a stage replaced by a no-op in a forked child of
this test process) - the kernel state that verification reads is real.
"""
from __future__ import annotations

import os
import multiprocessing as mp

import pytest
from tests.sbxrun import read_text

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs sbx as root")


def _run_with_broken_stage(stage: str, marker: str, q) -> None:
    from sandbox import caps, launch
    from sandbox.errors import SbxError
    from sandbox.profiles import resolve
    from tests.sbxrun import PROFILE

    if stage == "caps":
        caps.drop = lambda *a, **k: None
    elif stage == "nnp":
        caps.set_no_new_privs = lambda: None
    elif stage == "seccomp":
        from sandbox import seccomp
        seccomp.install = lambda bpf: None
    elif stage == "init":
        caps.confine_init = lambda: None  # init would keep its full capability set and stay dumpable
    elif stage == "readonly":
        from sandbox.records import replace
        import sandbox.mounts as m
        orig = m.setup
        def setup(spec, sources, rootless):
            return orig(replace(spec, filesystem=replace(spec.filesystem, read_only=False)), sources, rootless=rootless)
        m.setup = setup
    spec = resolve(["/bin/sh", "-c", f"echo ran > {marker}"], profile=PROFILE, volume=[f"{os.path.dirname(marker)}:/out:rw"])
    from sandbox.records import replace
    spec = replace(spec, argv=("/bin/sh", "-c", "echo ran > /out/marker"))
    try:
        r = launch.run(spec)
        q.put(("ran", r.exit_code, ""))
    except SbxError as e:
        q.put(("refused", e.code, e.message))


@pytest.mark.parametrize("stage,needle", [
    ("caps", "capabilities"),
    ("nnp", "no_new_privs"),
    ("seccomp", "seccomp"),
    ("readonly", "read-only root"),
    ("init", "init keeps capabilities"),
])
def test_missing_control_kills_workload_before_exec(tmp_path, stage, needle):
    os.chmod(tmp_path, 0o777)
    marker = str(tmp_path / "marker")
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_run_with_broken_stage, args=(stage, marker, q))
    p.start()
    p.join(60)
    kind, code, msg = q.get(timeout=5)
    assert kind == "refused" and code == 125, (kind, code, msg)
    assert needle in msg, msg
    assert not os.path.exists(marker), "the workload ran although verification failed"


def test_intact_stages_pass_verification(tmp_path):
    os.chmod(tmp_path, 0o777)
    marker = str(tmp_path / "marker")
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_run_with_broken_stage, args=("none", marker, q))
    p.start()
    p.join(60)
    kind, code, msg = q.get(timeout=5)
    assert (kind, code) == ("ran", 0), msg
    assert read_text(marker).strip() == "ran"
