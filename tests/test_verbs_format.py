"""`ps --filter/--format` and `inspect --format` the way docker spells them, on real sandboxes:
every scripted field is compared with what the kernel says (/proc, the cgroup), not with itself."""
from __future__ import annotations

import json
import os

import pytest

from sandbox import paths
from tests.verbstore import inspect, run_d, store, wait_status  # noqa: F401 - store is a fixture

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="starts real sandboxes as root")


def _status(pid: int) -> dict:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def test_inspect_format_gives_the_fields_people_script_against(store):
    sid = run_d(store, "--name", "fmt", "-e", "SEED=1", "--memory", "96m", "--cpus", "0.5", "--pids-limit", "77")
    d = wait_status(store, "fmt", "running")
    p = store("inspect", "--format", "{{.State.Pid}}", "fmt")
    assert p.returncode == 0, p.stderr
    pid = int(p.stdout)
    st = _status(pid)  # the real workload: its pid namespace's pid 2 (init is 1), uid 65534 inside
    assert st["NSpid"].split()[-1] == "2" and st["Name"] == "sh"
    assert pid == d["state"]["pid"]  # today's key is still there, with the same value
    fmt = ("{{.Id}}|{{.Name}}|{{.State.Status}}|{{.State.Running}}|{{.State.ExitCode}}|{{.State.OOMKilled}}|"
           "{{.HostConfig.Memory}}|{{.HostConfig.NanoCpus}}|{{.HostConfig.PidsLimit}}|{{json .Config.Cmd}}|"
           "{{index .Config.Env 0}}|{{.Config.User}}|{{.State.StartedAt}}|{{.State.FinishedAt}}")
    out = store("inspect", "-f", fmt, sid[:12]).stdout.strip().split("|")
    assert out[:6] == [sid, "/fmt", "running", "true", "0", "false"]
    assert out[6:9] == [str(96 << 20), "500000000", "77"]
    assert json.loads(out[9]) == ["/bin/sh", "-c", "while :; do sleep 0.1; done"]
    assert "SEED=1" in d["env"] and out[10].startswith(("HOME=", "PATH=", "SEED="))
    assert out[11] == "65534:65534" and out[12].endswith("Z") and out[13] == "0001-01-01T00:00:00Z"
    # the limits are what the kernel enforces
    cg = d["cgroup"]
    if cg["version"] == "v1":
        mem_file, pids_file = (os.path.join(cg["paths"]["memory"], "memory.limit_in_bytes"),
                               os.path.join(cg["paths"]["pids"], "pids.max"))
    else:
        base = next(iter(cg["paths"].values()))
        mem_file, pids_file = os.path.join(base, "memory.max"), os.path.join(base, "pids.max")
    with open(mem_file) as f1, open(pids_file) as f2:
        assert int(f1.read()) == int(out[6]) and f2.read().strip() == out[8]
    # {{json .}} of the whole document keeps today's keys beside docker's
    whole = json.loads(store("inspect", "-f", "{{json .}}", sid).stdout)
    assert whole["State"]["Pid"] == whole["state"]["pid"] == pid and whole["id"] == whole["Id"]
    as_json = json.loads(store("inspect", "--format", "json", sid).stdout)  # docker: the default document
    assert len(as_json) == 1 and as_json[0].keys() == whole.keys() and as_json[0]["State"]["Pid"] == pid
    # exited: State.* follow
    store("kill", sid)
    wait_status(store, sid, "exited")
    out = store("inspect", "-f", "{{.State.Status}} {{.State.Running}} {{.State.Pid}} {{.State.ExitCode}}", sid)
    assert out.stdout.split() == ["exited", "false", "0", "137"]
    fin = store("inspect", "-f", "{{.State.FinishedAt}}", sid).stdout.strip()
    assert fin != "0001-01-01T00:00:00Z" and fin.endswith("Z")


def test_inspect_format_errors_are_one_line_125(store):
    run_d(store, "--name", "e1")
    for tmpl, msg in (("{{.Nope}}", "can't evaluate field Nope"), ("{{.State.Pid", "unclosed action"),
                      ("{{bogus .}}", 'function "bogus" not defined')):
        p = store("inspect", "-f", tmpl, "e1")
        assert p.returncode == 125 and p.stderr.startswith("sbx: --format: ") and p.stderr.count("\n") == 1, p.stderr
        assert msg in p.stderr and p.stdout == ""
    p = store("inspect", "-f", "{{.Id}}", "e1", "nosuch")
    assert p.returncode == 125 and len(p.stdout.split()) == 1 and "no such sandbox: nosuch" in p.stderr


def test_ps_format_fields_table_and_json(store):
    sid = run_d(store, "--name", "alpha")
    wait_status(store, "alpha", "running")
    p = store("ps", "--format", "{{.ID}} {{.Names}} {{.State}} {{.Command}} {{.Networks}} {{.Pid}}")
    assert p.returncode == 0, p.stderr
    f = p.stdout.split()
    assert f[0] == sid[:12] and f[1] == "alpha" and f[2] == "running" and f[3] == '"/bin/sh'
    assert f[-2] == "loopback" and int(f[-1]) == inspect(store, sid)["state"]["pid"]
    p = store("ps", "--no-trunc", "--format", "{{.ID}}\t{{.Command}}")
    assert p.stdout.split("\t")[0] == sid and "while :; do sleep 0.1; done" in p.stdout
    p = store("ps", "--format", "table {{.ID}}\\t{{.Names}}\\t{{.Status}}")
    lines = p.stdout.splitlines()
    assert lines[0].split() == ["SANDBOX", "ID", "NAMES", "STATUS"]
    assert lines[1].startswith(sid[:12] + "   ") and "alpha" in lines[1] and "Up " in lines[1]
    assert lines[0].index("NAMES") == lines[1].index("alpha")  # aligned columns
    row = json.loads(store("ps", "--format", "{{json .}}").stdout)
    assert row["ID"] == sid[:12] and row["Names"] == "alpha" and row["State"] == "running"
    assert row["Status"].startswith("Up ") and "Label" not in row
    assert isinstance(row["CreatedAt"], str) and row["CreatedAt"][:4].isdigit()
    # today's formats keep working
    assert json.loads(store("ps", "--format", "json").stdout)[0]["id"] == sid
    assert store("ps").stdout.splitlines()[0].split()[:3] == ["SANDBOX", "ID", "PROFILE"]
    p = store("ps", "--format", "{{.Nope}}")
    assert p.returncode == 125 and "can't evaluate field Nope" in p.stderr


def test_ps_filters_docker_semantics(store):
    a = run_d(store, "--name", "web-1")
    b = run_d(store, "--name", "web-2")
    c = run_d(store, "--name", "db", script="exit 3")
    wait_status(store, c, "exited")

    def ids(*args):
        p = store("ps", "-q", "--no-trunc", *args)
        assert p.returncode == 0, p.stderr
        return set(p.stdout.split())

    assert ids() == {a, b}
    assert ids("--filter", "name=web") == {a, b}  # a regular expression, as docker's
    assert ids("--filter", "name=^web-1$") == {a}
    assert ids("-f", "name=web-1", "-f", "name=web-2") == {a, b}  # one key: OR
    assert ids("--filter", f"id={a[:8]}") == {a}
    assert ids("--filter", "status=exited") == {c}  # docker: a status filter looks at every sandbox
    assert ids("--filter", "status=running", "--filter", "name=web-2") == {b}  # two keys: AND
    assert ids("-a", "--filter", "exited=3") == {c} and ids("-a", "--filter", "exited=0") == set()
    assert ids("--filter", "exited=3") == set()  # docker: exited= needs -a (only status= implies it)
    assert ids("--filter", "network=loopback") == {a, b}
    assert ids("-a", "--filter", f"before={b}") == {a} and ids("-a", "--filter", f"since={b}") == {c}
    assert ids("-n", "1") == {c} and ids("--latest") == {c}
    assert ids("--filter", "label=tier") == set()  # no labels saved: nothing matches, nothing fails
    assert ids("--filter", "ancestor=busybox") == set()
    for bad, msg in (("status=dead-ish", "status="), ("color=red", "KEY one of"), ("exited=x", "exit code"),
                     ("name=[", "name=")):
        p = store("ps", "--filter", bad)
        assert p.returncode == 125 and msg in p.stderr and p.stderr.count("\n") == 1, p.stderr


def _plant(store, sid: str, **spec_fields) -> None:
    """Write fields into a saved sandbox's Spec the way a newer sbx saves them (labels come with the
    lead's --label, images with `sbx run IMAGE`): the store's own atomic writer, its own lock."""
    from sandbox import state
    os.environ["SBX_STATE_DIR"] = str(store.dir)
    try:
        with state.locked():
            path = os.path.join(state.sandbox_dir(sid), "config.json")
            with open(path) as f:
                cfg = json.load(f)
            cfg["spec"].update(spec_fields)
            paths.atomic_write(path, json.dumps(cfg).encode())
    finally:
        del os.environ["SBX_STATE_DIR"]


def test_ps_label_and_ancestor_filters_match_what_a_sandbox_saved(store):
    a = run_d(store, "--name", "lab")
    b = run_d(store, "--name", "img")
    _plant(store, a, labels={"tier": "db", "team": "x"})
    _plant(store, b, image={"ref": "localhost:5000/tools:1.2", "id": "ab" * 32, "digest": "sha256:" + "cd" * 32,
                            "names": ["localhost:5000/tools:1.2"], "labels": [["tier", "web"]]})

    def ids(*args):
        return set(store("ps", "-q", "--no-trunc", *args).stdout.split())

    assert ids("--filter", "label=tier") == {a, b}  # an image's labels are the sandbox's too, as in docker
    assert ids("--filter", "label=tier=db") == {a}
    assert ids("--filter", "label=team", "--filter", "label=tier=web") == {a, b}
    assert ids("--filter", "ancestor=localhost:5000/tools:1.2") == {b}
    assert ids("--filter", "ancestor=localhost:5000/tools") == set()  # :latest is another tag
    assert ids("--filter", "ancestor=" + "ab" * 8) == {b}
    assert ids("--filter", "ancestor=sha256:" + "cd" * 32) == {b}
    p = store("ps", "--format", '{{.Names}} {{.Label "tier"}} {{.Image}} {{.Labels}}', "--filter", "label=tier")
    rows = sorted(p.stdout.splitlines())
    assert rows == ["img web localhost:5000/tools:1.2 tier=web", "lab db  team=x,tier=db"]
    assert store("inspect", "-f", '{{index .Config.Labels "tier"}} {{.Config.Image}}', "img").stdout.split() == \
        ["web", "localhost:5000/tools:1.2"]


def test_hostile_command_text_cannot_drive_the_terminal(store):
    run_d(store, "--name", "evil", script="sleep 100 # \x1b]52;c;ZXZpbA==\x07 \u202egnp.exe")
    p = store("ps", "--no-trunc", "--format", "{{.Command}}")
    assert "\x1b" not in p.stdout and "\x07" not in p.stdout and "\u202e" not in p.stdout
    assert "\\x1b]52" in p.stdout and "\\u202e" in p.stdout
    p = store("inspect", "-f", "{{.Config.Cmd}}", "evil")
    assert "\x1b" not in p.stdout and "\\x1b" in p.stdout
    assert "\x1b" not in store("ps", "--format", "{{json .}}").stdout
