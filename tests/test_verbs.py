"""docker's verbs on real sandboxes: top, wait, port, rename, create + start, version, info.
Every answer is checked against the kernel's own (/proc, the sockets, the cgroup), not against sbx."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.sbxrun import ROOT
from tests.verbstore import LOOP, inspect, run_d, sh, store, wait_status  # noqa: F401 - store is a fixture

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="starts real sandboxes as root")


def _proc_status(pid: int) -> dict:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


# ---------------------------------------------------------------- top

def test_top_shows_the_tree_with_host_and_sandbox_pids_and_both_users(store):
    sid = run_d(store, "--name", "tree", script="sleep 300 & (sleep 301 & wait) & wait")  # no short-lived children
    d = wait_status(store, sid, "running")
    deadline = time.monotonic() + 10
    while True:
        p = store("top", "--format", "json", "tree")
        assert p.returncode == 0, p.stderr
        procs = json.loads(p.stdout)
        if {"sleep 300", "sleep 301"} <= {" ".join(x["cmd"]) for x in procs}:
            break
        assert time.monotonic() < deadline, procs
        time.sleep(0.1)
    by_pid = {x["pid"]: x for x in procs}
    init = procs[0]
    assert init["sandbox_pid"] == 1 and init["depth"] == 0 and init["pid"] == d["state"]["init_pid"]
    idmap = d["idmap"]
    for x in procs:
        st = _proc_status(x["pid"])  # the kernel's view of each row
        assert int(st["NSpid"].split()[-1]) == x["sandbox_pid"]
        assert int(st["Uid"].split()[1]) == x["uid"] and int(st["PPid"]) == x["ppid"]
        assert st["State"][0] == x["state"]
        inside = x["uid"] - next(o for i, o, c in idmap["uid_map"] if o <= x["uid"] < o + c) + \
            next(i for i, o, c in idmap["uid_map"] if o <= x["uid"] < o + c)
        assert x["sandbox_uid"] == inside
    work = by_pid[d["state"]["pid"]]
    assert work["sandbox_pid"] == 2 and work["sandbox_uid"] == 65534 and work["ppid"] == init["pid"]
    assert work["uid"] != 65534 and work["uid"] != 0  # outside, the user namespace maps it elsewhere
    s301 = next(x for x in procs if x["cmd"] == ["sleep", "301"])
    assert by_pid[s301["ppid"]]["ppid"] == work["pid"] and s301["depth"] == 3  # sh -> subshell -> sleep
    # a process joined with `sbx exec` is in the sandbox too (its host parent is outside it)
    ex = subprocess.Popen([sys.executable, "-m", "sandbox", "exec", "tree", "sleep", "302"],
                          env={**os.environ, **store.env, "PYTHONPATH": ROOT})
    try:
        deadline = time.monotonic() + 10
        while True:
            rows = store("top", "tree").stdout.splitlines()
            if any(r.endswith("sleep 302") for r in rows):
                break
            assert time.monotonic() < deadline, rows
            time.sleep(0.1)
    finally:
        ex.kill()
        ex.wait()
    head = rows[0].split()
    assert head == ["PID", "SANDBOX", "PID", "PPID", "USER", "SANDBOX", "UID", "STAT", "COMMAND"]
    assert any("\\_ sleep 300" in r for r in rows) and not any(str(os.getpid()) == r.split()[0] for r in rows)


def test_top_with_ps_options_is_the_hosts_ps_for_the_sandboxs_pids(store):
    sid = run_d(store, "--name", "psopt", script="sleep 300 & wait")  # a process set that stays put
    wait_status(store, sid, "running")
    deadline = time.monotonic() + 10
    while len(mine := {x["pid"] for x in json.loads(store("top", "--format", "json", "psopt").stdout)}) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    p = store("top", "psopt", "-o", "pid,comm")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].split() == ["PID", "COMMAND"]
    assert {int(x.split()[0]) for x in lines[1:]} == mine  # init, sh, sleep: those, and nothing of the host
    assert sorted(x.split()[1] for x in lines[1:]) == ["sbx-init", "sh", "sleep"]
    p = store("top", "psopt", "aux")
    assert p.returncode == 0 and p.stdout.splitlines()[0].split()[:2] == ["USER", "PID"]
    assert all(int(x.split()[1]) not in (1, os.getpid()) for x in p.stdout.splitlines()[1:])
    p = store("top", "psopt", "-o", "comm")
    assert p.returncode == 125 and "no PID column" in p.stderr


def test_top_escapes_a_hostile_process_name_and_refuses_a_stopped_sandbox(store):
    # argv[0] is whatever the workload says: a link named with an OSC title sequence and a bidi override
    sid = run_d(store, "--name", "evilname", script="n=\"/tmp/$(printf 'x\\033]0;pwned\\007y\\342\\200\\256')\"; "
                                                   "ln -s /bin/sleep \"$n\"; exec \"$n\" 300")
    wait_status(store, sid, "running")
    deadline = time.monotonic() + 10
    while "x\\x1b]0;pwned" not in (out := store("top", "evilname").stdout):
        assert time.monotonic() < deadline, out
        time.sleep(0.1)
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out and "\\u202e" in out
    store("kill", sid)
    wait_status(store, sid, "exited")
    p = store("top", sid)
    assert p.returncode == 125 and "not running" in p.stderr


# ---------------------------------------------------------------- wait

def test_wait_prints_each_exit_code_when_it_comes(store):
    a = run_d(store, script="sleep 0.5; exit 3")
    b = run_d(store, script="sleep 1.5; exit 0")
    t0 = time.monotonic()
    p = store("wait", a, b)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["3", "0"] and 1.0 < time.monotonic() - t0 < 10
    assert store("wait", a).stdout.strip() == "3"  # already exited: at once
    c = run_d(store, script=LOOP)
    threading.Timer(1.0, lambda: store("kill", "-s", "TERM", c)).start()
    assert store("wait", c).stdout.strip() == "143"
    p = store("wait", "nosuch", a)
    assert p.returncode == 125 and p.stdout.split() == ["3"] and "no such sandbox: nosuch" in p.stderr


def test_wait_on_a_removed_on_exit_sandbox_still_gets_its_code(store):
    sid = run_d(store, "--rm", script="sleep 1; exit 9")
    p = store("wait", sid)
    assert p.returncode == 0 and p.stdout.strip() == "9", p.stderr
    assert store("inspect", sid).returncode == 125  # gone, as asked


# ---------------------------------------------------------------- create + start

def test_create_saves_without_starting_and_start_runs_it(store, tmp_path):
    p = store("create", "--name", "later", "-e", "GREETING=hi", "--", "/bin/sh", "-c", "echo $GREETING; exit 5")
    assert p.returncode == 0, p.stderr
    sid = p.stdout.strip()
    d = inspect(store, "later")
    assert d["state"]["status"] == "created" and d["state"]["pid"] is None and d["State"]["Status"] == "created"
    assert d["id"] == sid and "GREETING=hi" in d["env"]
    assert store("ps", "-q").stdout == "" and store("ps", "-aq", "--no-trunc").stdout.split() == [sid]
    assert store("logs", "later").stdout == ""
    assert d["state"]["supervisor_pid"] is None and d["state"]["started_at"] is None  # nothing runs for it
    waiter = subprocess.Popen([sys.executable, "-m", "sandbox", "wait", "later"], stdout=subprocess.PIPE,
                              env={**os.environ, **store.env, "PYTHONPATH": ROOT}, text=True)
    time.sleep(0.5)
    assert waiter.poll() is None  # docker: waiting on a created container waits for its run
    p = store("start", "later")
    assert p.returncode == 0, p.stderr
    assert waiter.communicate(timeout=20)[0].strip() == "5"
    d = wait_status(store, "later", "exited")
    assert d["state"]["exit_code"] == 5 and store("logs", "later").stdout == "hi\n"
    evs = [json.loads(x)["action"] for x in store("events", "--until", "0s", "--format", "json",
                                                  "--filter", f"id={sid}").stdout.splitlines()]
    assert evs == ["create", "start", "die"]
    p = store("create", "--name", "later", "--", "/bin/true")
    assert p.returncode == 125 and "already in use" in p.stderr
    p = store("create", "--memory", "10XB", "--", "/bin/true")
    assert p.returncode == 125 and p.stderr.startswith("sbx: --memory: ")
    assert len(store("ps", "-aq").stdout.split()) == 1  # a refused create leaves nothing


def test_create_refuses_what_the_policy_refuses(store):
    p = store("create", "--policy", "restricted", "--cap-add", "NET_RAW", "--profile", "default", "--",
              "/bin/true")
    assert p.returncode == 125 and "policy restricted refuses this sandbox" in p.stderr, p.stderr
    assert p.stdout == "" and store("ps", "-aq").stdout == ""


# ---------------------------------------------------------------- rename

def test_rename_keeps_the_sandbox_and_reserves_the_new_name(store):
    a = run_d(store, "--name", "old")
    run_d(store, "--name", "taken")
    assert store("rename", "old", "new").returncode == 0
    d = inspect(store, "new")
    assert d["id"] == a and d["name"] == "new" and d["Name"] == "/new"
    assert store("inspect", "old").returncode == 125
    p = store("rename", "new", "taken")
    assert p.returncode == 125 and "already in use" in p.stderr
    p = store("rename", "new", "bad name!")
    assert p.returncode == 125 and "invalid sandbox name" in p.stderr
    assert sh(store, "new", "hostname").strip() == "old"  # docker keeps the hostname too
    store("kill", "new")
    wait_status(store, "new", "exited")
    evs = [json.loads(x) for x in store("events", "--until", "0s", "--format", "json", "--filter",
                                        f"id={a}").stdout.splitlines()]
    ren = next(e for e in evs if e["action"] == "rename")
    assert ren["name"] == "new" and ren["oldName"] == "old"
    assert evs[-1]["action"] == "die" and evs[-1]["name"] == "new"  # the running supervisor saw the rename
    assert store("start", "new").returncode == 0 and wait_status(store, "new", "running")["name"] == "new"


# ---------------------------------------------------------------- port

def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_port_lists_what_is_really_published(store):
    tp, up = _free_port(), _free_port()
    sid = run_d(store, "--name", "pub", "--network", "bridge", "-p", f"127.0.0.1:{tp}:8080",
                "-p", f"127.0.0.1:{up}:53/udp",
                script="exec python3 -c \"import socket; s=socket.socket(); s.bind(('0.0.0.0', 8080)); s.listen(); "
                       "c, _ = s.accept(); c.sendall(b'hello'); c.close(); import time; time.sleep(300)\"")
    wait_status(store, sid, "running")
    p = store("port", "pub")
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [f"53/udp -> 127.0.0.1:{up}", f"8080/tcp -> 127.0.0.1:{tp}"]
    assert store("port", "pub", "8080").stdout.strip() == f"127.0.0.1:{tp}"
    assert store("port", "pub", "53/udp").stdout.strip() == f"127.0.0.1:{up}"
    host, port = store("port", "pub", "8080/tcp").stdout.strip().rsplit(":", 1)
    deadline = time.monotonic() + 10
    while True:  # the address `port` gave reaches the workload
        try:
            with socket.create_connection((host, int(port)), timeout=2) as c:
                data = c.recv(10)
            if data:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert data == b"hello"
    d = inspect(store, "pub")
    assert d["NetworkSettings"]["Ports"] == {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(tp)}],
                                             "53/udp": [{"HostIp": "127.0.0.1", "HostPort": str(up)}]}
    ns = d["NetworkSettings"]
    init = str(d["state"]["init_pid"])  # the sandbox's own interface, as its network namespace has it
    link = subprocess.run(["nsenter", "-t", init, "-n", "ip", "-o", "link", "show", "eth0"], capture_output=True,
                          text=True).stdout
    addr = subprocess.run(["nsenter", "-t", init, "-n", "ip", "-4", "-o", "addr", "show", "eth0"],
                          capture_output=True, text=True).stdout
    route = subprocess.run(["nsenter", "-t", init, "-n", "ip", "-4", "route", "show", "default"],
                           capture_output=True, text=True).stdout
    assert f"link/ether {ns['MacAddress']} " in link, link
    assert f"inet {ns['IPAddress']}/{ns['IPPrefixLen']} " in addr, addr
    assert route.startswith(f"default via {ns['Gateway']} "), route
    assert ns["Networks"]["bridge"]["IPAddress"] == ns["IPAddress"]
    p = store("port", "pub", "81")
    assert p.returncode == 125 and "no public port '81/tcp'" in p.stderr
    p = store("port", "pub", "http")
    assert p.returncode == 125 and "PORT[/tcp|udp]" in p.stderr
    store("kill", "pub")
    wait_status(store, "pub", "exited")
    assert store("port", "pub").stdout == ""  # nothing is published by a stopped sandbox


# ---------------------------------------------------------------- version / info

def test_version_reports_the_kernel_and_its_features(store):
    p = store("version", "--format", "json")
    assert p.returncode == 0, p.stderr
    v = json.loads(p.stdout)
    assert v["Kernel"]["Release"] == os.uname().release and v["Client"]["Version"]
    f = v["Kernel"]["Features"]
    from sandbox import landlock
    assert f["landlock_abi"] == landlock.abi_version()
    assert f["cgroup"]["version"] == ("2" if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else "1")
    rc = subprocess.run(["unshare", "--user", "true"]).returncode
    assert f["user_namespaces"] == (rc == 0) and f["openat2"] is True and f["pidfd"] is True
    assert store("version", "-f", "{{.Kernel.Release}}").stdout.strip() == os.uname().release
    text = store("version").stdout
    assert text.startswith("Client:\n Version:") and f"Release:    {os.uname().release}" in text


def test_info_reports_host_facts_and_counts(store):
    run_d(store, "--name", "one")
    c = run_d(store, script="exit 0")
    wait_status(store, c, "exited")
    p = store("info", "--format", "json")
    assert p.returncode == 0, p.stderr
    i = json.loads(p.stdout)
    assert (i["Sandboxes"], i["SandboxesRunning"], i["SandboxesStopped"]) == (2, 1, 1)
    assert i["StateDir"] == str(store.dir) and i["CacheDir"] == store.env["SBX_CACHE_DIR"]
    with open("/proc/sys/user/max_user_namespaces") as f:
        assert i["UserNamespaces"]["max_user_namespaces"] == int(f.read())
    assert i["Cgroup"]["hybrid"] == (not os.path.exists("/sys/fs/cgroup/cgroup.controllers")
                                     and os.path.ismount("/sys/fs/cgroup/unified"))
    if os.path.exists("/sys/kernel/security/lsm"):
        with open("/sys/kernel/security/lsm") as f:
            assert i["LSMs"] == [x for x in f.read().strip().split(",") if x]
    else:
        assert i["LSMs"] is None and "securityfs is not mounted" in store("info").stdout
    assert i["NCPU"] == os.cpu_count() and "strict" in i["Profiles"]
    assert store("info", "-f", "{{.SandboxesRunning}}").stdout.strip() == "1"
    text = store("info").stdout
    assert "Sandboxes: 2\n Running: 1\n" in text and f"State Dir: {store.dir}" in text
