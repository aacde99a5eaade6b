"""Hostile input: control characters in comm/argv are escaped; processes that vanish mid-scan are skipped."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from sandbox.audit.discover import discover
from sandbox.audit.hostinfo import read_host
from sandbox.audit.scan import audit, audit_container
from tests.sbxrun import close_pipes, sbx

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="reads other processes' /proc as root")

EVIL_COMM = b"\x1b]0;pwn\x07\x1b[2J"  # set-title, bell, clear-screen: 14 bytes, fits TASK_COMM_LEN
EVIL_ARG = "\x1b[31mRED\x1b[0m\rfake\x08\x9b"
# PR_SET_NAME (15) to the hostile name, then report ready and wait. Short: the table shows 240 chars.
CHILD = "import ctypes,sys,time;ctypes.CDLL(None).prctl(15,bytes.fromhex(sys.argv[1]),0,0,0);print(1,flush=1);time.sleep(60)"


@pytest.fixture
def evil():
    p = subprocess.Popen(["unshare", "--user", "--map-root-user", "--net", "--", sys.executable, "-c", CHILD,
                          EVIL_COMM.hex(), EVIL_ARG], stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert p.stdout.readline().strip() == b"1"
        yield p
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=10)
        close_pipes(p)


def test_control_chars_are_escaped_in_table_and_json(evil):
    with open(f"/proc/{evil.pid}/comm", "rb") as f:
        assert f.read().rstrip(b"\n") == EVIL_COMM  # the kernel really holds the hostile name
    p = sbx("audit", "--pid", str(evil.pid))
    assert p.returncode == 0, p.stderr
    assert "\\x1b]0;pwn\\x07\\x1b[2J" in p.stdout  # comm, escaped
    assert "\\x1b[31mRED\\x1b[0m\\x0dfake\\x08\\x9b" in p.stdout  # argv, escaped
    for bad in ("\x1b", "\x07", "\r", "\x08", "\x9b"):
        assert bad not in p.stdout
    j = sbx("audit", "--pid", str(evil.pid), "--format", "json")
    assert j.returncode == 0, j.stderr
    doc = json.loads(j.stdout)
    c = doc["containers"][0]
    assert c["processes"] == ["\\x1b]0;pwn\\x07\\x1b[2J"]
    assert "\x1b" not in json.dumps(doc, ensure_ascii=False)


def test_process_that_exits_between_listing_and_reading_is_skipped():
    host = read_host()
    p = subprocess.Popen(["unshare", "--user", "--map-root-user", "--net", "sleep", "60"], start_new_session=True)
    try:
        for _ in range(200):
            found = [c for c in discover(host.ns) if p.pid in c.pids]
            if found:
                break
            time.sleep(0.01)
        assert found, "the namespaced sleep was not discovered"
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=10)
        close_pipes(p)
    # Listed while alive, read after it died: skipped, not a crash, not a half-filled result.
    assert audit_container(found[0], host) is None


def test_scan_survives_churn_of_short_lived_namespaced_processes():
    churn = subprocess.Popen(["sh", "-c", "while :; do unshare --user --map-root-user --net true & "
                              "unshare --user --pid --fork true & wait; done"], start_new_session=True)
    try:
        time.sleep(0.2)
        for _ in range(15):
            for r in audit():
                assert r.subject is not None or r.error
        p = sbx("audit", "--format", "json")
        assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
        json.loads(p.stdout)
    finally:
        os.killpg(churn.pid, signal.SIGKILL)
        churn.wait(timeout=10)
        close_pipes(churn)


BIDI_COMM = "ok\u202eexe\u200b".encode()  # right-to-left override + zero-width space: 11 bytes
BIDI_ARG = "run\u2066\u200dme\u2069\ufeff"


def test_bidi_and_zero_width_characters_are_escaped():
    p = subprocess.Popen(["unshare", "--user", "--map-root-user", "--net", "--", sys.executable, "-c", CHILD,
                          BIDI_COMM.hex(), BIDI_ARG], stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert p.stdout.readline().strip() == b"1"
        with open(f"/proc/{p.pid}/comm", "rb") as f:
            assert f.read().rstrip(b"\n") == BIDI_COMM  # the kernel holds the raw characters
        out = sbx("audit", "--pid", str(p.pid))
        assert out.returncode == 0, out.stderr
        assert "ok\\u202eexe\\u200b" in out.stdout
        assert "run\\u2066\\u200dme\\u2069\\ufeff" in out.stdout
        for bad in ("\u202e", "\u200b", "\u2066", "\u200d", "\u2069", "\ufeff"):
            assert bad not in out.stdout
        j = sbx("audit", "--pid", str(p.pid), "--format", "json")
        doc = json.loads(j.stdout)
        assert doc["containers"][0]["processes"] == ["ok\\u202eexe\\u200b"]
        assert "\u202e" not in json.dumps(doc, ensure_ascii=False)
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=10)
        close_pipes(p)


# A capable process that calls itself "tini" (a reaping init's name) and runs an unprivileged child.
DISGUISE = ("import ctypes,subprocess,sys,time;ctypes.CDLL(None).prctl(15,b'tini',0,0,0);"
            "c=subprocess.Popen(['setpriv','--bounding-set=-all','--inh-caps=-all','--no-new-privs','sleep','60']);"
            "print(c.pid,flush=1);time.sleep(60)")


def test_a_process_named_like_a_helper_is_still_judged():
    """Names are the process's own choice: the most privileged process is judged whatever it calls itself."""
    p = subprocess.Popen(["unshare", "--user", "--map-root-user", "--pid", "--fork", "--", sys.executable, "-c",
                          DISGUISE], stdout=subprocess.PIPE, start_new_session=True)
    try:
        p.stdout.readline()
        tini = None
        for _ in range(200):
            r = audit(pid=p.pid)
            if r and len(r[0].container.pids) >= 3:
                tini = next((q for q, c in r[0].container.comms.items() if c == "tini"), None)
                # The tree may be seen before the process renamed itself, or while its child is still a
                # forked (full-capability) interpreter that has not exec'd its capability-less sleep.
                if tini is not None and "sleep" in r[0].container.comms.values():
                    break
            time.sleep(0.02)
        assert tini is not None, r and r[0].container.comms
        r = r[0]
        assert r.container.init_pid == tini, (r.container.init_pid, r.container.comms)
        assert "SYS_ADMIN" in r.subject.cap_eff and "SBX-A002" in {f.check_id for f in r.findings}
        assert not r.container.helpers  # no host helper binary runs here
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=10)
        close_pipes(p)
