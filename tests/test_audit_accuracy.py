"""Issue 14: `sbx audit` against real runtimes whose configuration is known (see tests/zoo.py).

Each test starts the runtime for real (podman with --uidmap, rootless podman, bwrap and
firejail as root, runc/crun by id, systemd-nspawn without machined, an unprivileged user's
`unshare -r`, a padded mount table, sbx's own strict sandbox) and checks the verdict.
Everything started here is stopped here, by name or by pid.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

import zoo as Z
from sandbox.audit import checks as C
from sandbox.audit.scan import audit
from sandbox import facts
from tests.sbxrun import read_bytes, sbx

HIGH = C.SEVERITY_RANK["high"]
CRIT = C.SEVERITY_RANK["critical"]
PREFIX = f"sbxacc-{uuid.uuid4().hex[:6]}"


def _ids(r, min_rank: int = 0) -> set[str]:
    return {f.check_id for f in r.findings if C.SEVERITY_RANK[f.severity] >= min_rank}


def _one(ref: str | None = None, pid: int | None = None, tries: int = 100):
    """The audit result for a container (retried briefly: a runtime may still be starting it)."""
    for _ in range(tries):
        got = audit(ref=ref, pid=pid)
        if got:
            return got[0]
        time.sleep(0.05)
    raise AssertionError(f"no container matches {ref or pid}")


def _dump(r) -> list:
    return [(f.severity, f.check_id, f.message) for f in r.findings]


# --- uid semantics -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def podman_uidmaps():
    Z.podman_ready()
    names = {"shift": f"{PREFIX}-uidshift", "root1000": f"{PREFIX}-uid1000root"}
    # A root directory owned by the mapped container root (on a path it can traverse): podman's
    # image layers cannot be mounted for a map that sends an id to host root, a plain --rootfs can.
    top = tempfile.mkdtemp(prefix=f"{PREFIX}-", dir="/tmp")
    os.chmod(top, 0o755)
    rootfs = Z.busybox_rootfs(os.path.join(top, "rootfs"))
    for d in ("run", "var"):
        os.makedirs(os.path.join(rootfs, d), exist_ok=True)
    for f in ("resolv.conf", "hosts", "hostname"):
        open(os.path.join(rootfs, "etc", f), "a").close()
    subprocess.run(["chown", "-R", "300000:300000", rootfs], check=True)
    try:
        pids = {
            # every id shifted: container root is host 300000
            "shift": Z.podman_run(names["shift"], ["--uidmap", "0:300000:65536", "--gidmap", "0:300000:65536"]),
            # container uid 1000 is host root (and nothing else maps to 0)
            "root1000": Z.podman_run(names["root1000"], [
                "--uidmap", "0:300000:1000", "--uidmap", "1000:0:1", "--uidmap", "1001:301001:64535",
                "--gidmap", "0:300000:65536", "--user", "1000:1000", "--cap-add", "SYS_ADMIN",
                "--rootfs", rootfs], image=None),
        }
        yield names, pids
    finally:
        Z.podman_rm(list(names.values()))
        shutil.rmtree(top, ignore_errors=True)


def test_uidmap_reports_inside_uid_and_host_uid(podman_uidmaps):
    names, pids = podman_uidmaps
    r = _one(names["shift"])
    s = r.subject
    assert (s.uid, s.host_uid) == (0, 300000), (s.uid, s.host_uid)
    assert s.userns and not s.root_maps_host_root
    assert "SBX-A021" in _ids(r)  # root inside its user namespace
    assert "SBX-A022" not in _ids(r)  # ... which is not host root
    doc = json.loads(sbx("audit", names["shift"], "--format", "json").stdout)
    posture = doc["containers"][0]["posture"]
    assert (posture["uid"], posture["host_uid"]) == (0, 300000)


def test_inside_uid_that_is_host_root_is_not_confined(podman_uidmaps):
    names, _ = podman_uidmaps
    r = _one(names["root1000"])
    s = r.subject
    assert (s.uid, s.host_uid) == (1000, 0), (s.uid, s.host_uid)
    assert s.root_maps_host_root
    assert "SBX-A021" not in _ids(r)  # uid 1000 inside is not "root inside"
    a022 = [f for f in r.findings if f.check_id == "SBX-A022"]
    assert a022 and a022[0].severity == "high", _dump(r)
    # a host-root process's capabilities are not "confined by a user namespace"
    if "SYS_ADMIN" in s.cap_eff:
        assert any(f.check_id == "SBX-A002" and f.severity == "critical" for f in r.findings), _dump(r)


# --- sbx's own strict sandbox ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def strict_sandbox():
    Z.need_root()
    p = sbx("run", "-d", "--profile", "strict", "--name", f"{PREFIX}-strict", "--", "sleep", "120")
    if p.returncode != 0:
        pytest.skip(f"sbx cannot start a strict sandbox here: {p.stderr.strip()[-300:]}")
    sid = p.stdout.strip().splitlines()[-1]
    try:
        yield sid
    finally:
        sbx("rm", "-f", sid)


def test_sbx_strict_sandbox_passes_fail_on_high(strict_sandbox):
    p = sbx("audit", strict_sandbox, "--fail-on", "high")
    assert p.returncode == 0, p.stdout + p.stderr
    r = _one(strict_sandbox)
    assert r.container.runtime == "sbx"
    # /sys/firmware does not exist in its mount view (no /sys at all): not "unmasked"
    assert not os.path.exists(f"/proc/{r.container.init_pid}/root/sys/firmware")
    assert "/sys/firmware" not in r.subject.proc_masks_missing


def test_sbx_strict_sandbox_passes_the_restricted_policy(strict_sandbox):
    p = sbx("audit", strict_sandbox, "--policy", "restricted", "--fail-on", "low")
    assert p.returncode == 0, p.stdout + p.stderr
    r = _one(strict_sandbox)
    assert r.subject.uid == 65534 and r.subject.host_uid != 65534  # nobody inside, a high host uid outside


# --- which process is judged: bwrap and firejail as root ---------------------------------------------

def _workload(p, comm: str = "sleep") -> int:
    kids = Z.descendants(p.pid, comm, include_self=True)
    assert kids, f"no {comm} under pid {p.pid}"
    return kids[-1]


def test_full_capability_workload_under_bwrap_is_flagged():
    Z.need_root()
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap not installed")
    p = Z.spawn(["bwrap", "--bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-pid", "--unshare-net",
                 "--cap-add", "ALL", "--uid", "0", "--", "sleep", "300"], wait_comm="sleep")
    try:
        work = _workload(p)
        r = _one(pid=work)
        assert "SYS_ADMIN" in r.subject.cap_eff
        assert any(f.check_id == "SBX-A002" and f.severity == "critical" for f in r.findings), _dump(r)
        assert r.container.init_pid == work  # the workload, not bwrap's own (capability-less) init
        assert "bwrap" in r.container.helpers.values()
    finally:
        Z.kill(p)


def test_bwrap_workload_that_is_host_root_inside_a_user_namespace():
    """bwrap run by root with --unshare-all --uid 1000 maps inside uid 1000 to host uid 0. The workload has
    no capabilities, yet as host root it passes the kernel's /proc/sys check (done on the host euid):
    it can write host sysctls. Proven with a no-op write of core_pattern, then judged the same way."""
    Z.need_root()
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap not installed")
    base = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-all", "--uid", "1000", "--"]
    with open("/proc/sys/kernel/core_pattern") as f:
        cur = f.read().rstrip("\n")
    proof = subprocess.run([*base, "sh", "-c", 'printf "%s\\n" "$1" > /proc/sys/kernel/core_pattern && echo wrote',
                            "sh", cur], capture_output=True, text=True, timeout=30)
    p = Z.spawn([*base, "sleep", "300"], wait_comm="sleep")
    try:
        work = _workload(p)
        r = _one(pid=work)
        s = r.subject
        assert r.container.init_pid == work
        assert (s.uid, s.host_uid) == (1000, 0) and s.cap_eff == frozenset() and s.root_maps_host_root
        a029 = [f for f in r.findings if f.check_id == "SBX-A029"]
        if proof.stdout.strip() == "wrote":
            assert a029 and a029[0].severity == "high", _dump(r)
        else:  # a kernel that refuses it: then the audit must not claim it
            assert not a029 or a029[0].severity != "high", (proof.stderr, _dump(r))
        assert any(f.check_id == "SBX-A022" and f.severity == "high" for f in r.findings)
    finally:
        Z.kill(p)


def test_firejail_judges_the_workload_not_its_unconfined_helper():
    Z.need_root()
    if shutil.which("firejail") is None:
        pytest.skip("firejail not installed (apt install firejail)")
    p = Z.spawn(["firejail", "--quiet", "--", "sleep", "300"], wait_comm="sleep")
    try:
        work = _workload(p)
        helper = facts.read_stat(work).ppid
        # firejail's own process in the sandbox keeps every capability and no seccomp ...
        assert "SYS_ADMIN" in facts.caps_to_names(facts.read_status(helper).cap_eff)
        r = _one(pid=work)
        assert r.container.init_pid == work and r.container.helpers.get(helper) == "firejail"
        # ... the workload has seccomp and no SYS_ADMIN: none of the helper's criticals. (A host runtime
        # socket that root reaches at its real path on the host's root is the workload's own: allowed.)
        assert r.subject.seccomp == 2 and "SYS_ADMIN" not in r.subject.cap_eff
        assert not _ids(r, CRIT) - {"SBX-A023"}, _dump(r)
        assert not {"SBX-A002", "SBX-A009", "SBX-A008"} & _ids(r), _dump(r)
        # firejail's masks (empty read-only files and dirs over /etc/shadow, /proc/kallsyms, ...) expose nothing
        masks = [m for m in r.subject.mounts if m.bind and m.source.startswith("/run/firejail/firejail.ro.")]
        assert masks and all(m.mask for m in masks)
        flagged = [f for f in r.findings if f.check_id in ("SBX-A024", "SBX-A025", "SBX-A042")
                   and "firejail.ro." in f.evidence.get("source", "")]
        assert not flagged, flagged
        # the host's own /etc, /usr shown at their own place in a tree on the host's root: the root finding covers it
        assert not [f for f in r.findings if f.check_id == "SBX-A025" and f.evidence.get("source") == "/etc"]
    finally:
        Z.kill(p)


# --- runtime API sockets recognised by the process listening on them ------------------------------------

@pytest.fixture(scope="module")
def api_service():
    """Two `podman system service`s on paths no list of standard paths has, in one directory."""
    Z.podman_ready()
    d = tempfile.mkdtemp(prefix=f"{PREFIX}-api-", dir="/tmp")
    os.chmod(d, 0o755)
    socks = [os.path.join(d, "api.sock"), os.path.join(d, "second.sock")]
    procs = [Z.spawn(["podman", "system", "service", "--time=0", f"unix://{x}"]) for x in socks]
    try:
        for _ in range(200):
            if all(os.path.exists(x) for x in socks):
                break
            time.sleep(0.05)
        else:
            pytest.skip("podman system service did not create its socket")
        for x in socks:
            os.chmod(x, 0o600)  # root only (podman's own default, made explicit)
        yield d, socks[0]
    finally:
        for p in procs:
            Z.kill(p)
        shutil.rmtree(d, ignore_errors=True)


def test_api_socket_on_a_custom_path_is_recognised_by_its_listener(api_service):
    d, sock = api_service
    name = f"{PREFIX}-apisock"
    try:
        Z.podman_run(name, ["-v", f"{d}:/engine"])
        r = _one(name)
        hits = {f.evidence["path"]: f for f in r.findings if f.check_id == "SBX-A023"}
        # both sockets behind the one bind mount, each found by the podman service listening on it
        assert set(hits) == {"/engine/api.sock", "/engine/second.sock"}, _dump(r)
        assert all(f.severity == "critical" and f.evidence["runtime"] == "podman" for f in hits.values())
    finally:
        Z.podman_rm([name])


# --- an unprivileged user's user-namespace tree -------------------------------------------------------

KERNEL_DENIED = {"SBX-A001", "SBX-A023", "SBX-A029", "SBX-A030", "SBX-A032", "SBX-A033", "SBX-A034"}


def test_unprivileged_unshare_does_not_trip_the_critical_gate(api_service):
    """sbxtest's `unshare -r` on the host's root sees a root-only API socket, the host's rw cgroup v1
    hierarchies (release_agent), /dev with the disks, a rw /proc/sys and /sys: the kernel lets its host
    uid use none of it, so none of it is critical or high."""
    _, sock = api_service
    import pwd
    try:
        pw = pwd.getpwnam("sbxtest")
    except KeyError:
        pytest.skip("the sbxtest user (created by .ci/setup) is missing")
    p = Z.spawn(["unshare", "-r", "--", "sleep", "300"], user="sbxtest", wait_comm="sleep")
    try:
        work = _workload(p)
        r = _one(pid=work)
        s = r.subject
        assert (s.uid, s.host_uid) == (0, pw.pw_uid) and s.userns and not s.root_maps_host_root
        assert s.root_is_host_root and s.cgroup_v1_release_agent  # the objects are really in view ...
        assert any(k.runtime == "podman" and k.path == sock for m in s.mounts for k in m.all_sockets())
        bad = {f.check_id for f in r.findings if C.SEVERITY_RANK[f.severity] >= HIGH} & KERNEL_DENIED
        assert not bad, _dump(r)  # ... and none is reachable
        assert not _ids(r, CRIT), _dump(r)
        seen = [f for f in r.findings if f.check_id == "SBX-A023"]
        assert seen and seen[0].severity == "info" and seen[0].evidence["reachable"] is False
        gate = sbx("audit", "--pid", str(work), "--fail-on", "critical")
        assert gate.returncode == 0, gate.stdout + gate.stderr
    finally:
        Z.kill(p)


def test_unprivileged_unshare_as_root_is_still_critical(api_service):
    """The same tree run by root: the socket is reachable, and critical."""
    _, sock = api_service
    p = Z.spawn(["unshare", "--user", "--map-user=0", "--map-group=0", "--", "sleep", "300"], wait_comm="sleep")
    try:
        work = _workload(p)
        r = _one(pid=work)
        assert r.subject.host_uid == 0 and r.subject.root_maps_host_root
        hits = [f for f in r.findings if f.check_id == "SBX-A023" and f.evidence.get("path") == sock]
        assert hits and hits[0].severity == "critical", _dump(r)
    finally:
        Z.kill(p)


# --- discovery and names -------------------------------------------------------------------------------

def test_rootless_podman_is_recognised_with_its_name_and_ids():
    user = Z.rootless_user()
    name = f"{PREFIX}-rootless"
    try:
        # --network none: slirp4netns needs /dev/net/tun, which this host keeps root-only (0600)
        pid = Z.podman_run(name, ["--network", "none"], user=user)
        r = _one(name)
        c, s = r.container, r.subject
        assert c.runtime == "podman" and c.name == name and len(c.id) == 64, (c.runtime, c.name, c.id)
        assert c.init_pid == pid and "conmon" not in c.comms.values()  # conmon is the monitor, not the workload
        assert (s.uid, s.host_uid) == (0, user.uid) and s.userns and not s.root_maps_host_root
        assert "SBX-A021" in _ids(r) and "SBX-A022" not in _ids(r)
        assert not _ids(r, CRIT), _dump(r)
        # its pause process (catatonit -P holding the user namespace) is named and has nothing critical
        pause = [x for x in audit(runtime="podman") if x.container.name == "rootless-pause"
                 and x.subject.host_uid == user.uid]
        assert pause, "rootless podman's pause process was not found"
        assert not _ids(pause[0], CRIT), _dump(pause[0])
        assert not {f.check_id for f in pause[0].findings if C.SEVERITY_RANK[f.severity] >= HIGH} & KERNEL_DENIED
        gate = sbx("audit", "--pid", str(pause[0].container.init_pid), "--fail-on", "critical")
        assert gate.returncode == 0, gate.stdout
    finally:
        Z.podman_rm([name], user=user)
        Z.rootless_stop(user)


@pytest.mark.parametrize("runtime", ["runc", "crun"])
def test_oci_runtime_container_is_found_by_its_id(runtime, tmp_path):
    Z.need_root()
    cid = f"{PREFIX}-{runtime}"
    bundle = Z.oci_bundle(str(tmp_path / "bundle"), ["sleep", "300"])
    pid = Z.oci_run(runtime, bundle, cid)
    try:
        r = _one(cid)
        assert (r.container.runtime, r.container.id, r.container.name) == (runtime, cid, cid)
        assert r.container.init_pid == pid
        p = sbx("audit", cid, "--format", "json")
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["containers"][0]["id"] == cid
    finally:
        Z.oci_delete(runtime, cid)
    # the pitfall never happened: user namespaces still work for everyone
    assert subprocess.run(["unshare", "--user", "--map-root-user", "true"]).returncode == 0


def test_container_without_namespaces_of_its_own_is_found():
    """A podman container whose workload left for the host's mount namespace too: every namespace is
    the host's, and only its cgroup (and podman's state) say it is a container. (nsenter targets this
    test's own process: pid 1 of this VM does not let even root open its namespace links.)"""
    Z.podman_ready()
    name = f"{PREFIX}-nons"
    try:
        Z.podman_run(name, ["--privileged", "--pid=host", "--network=host", "--ipc=host", "--uts=host",
                            "--cgroupns=host", "--userns=host"],
                     argv=("/bin/busybox", "nsenter", "-t", str(os.getpid()), "-m", "--", "/bin/sleep", "300"))
        for _ in range(100):
            r = audit(ref=name)
            if r and r[0].subject.host_namespaces >= {"mnt", "pid", "net", "user"}:
                break
            time.sleep(0.05)
        assert r, "a container sharing every namespace with the host was not found"
        s = r[0].subject
        assert s.host_namespaces >= {"mnt", "pid", "net", "ipc", "uts", "user", "cgroup"}, s.host_namespaces
        assert r[0].container.runtime == "podman" and r[0].container.name == name
        assert "SBX-A019" in _ids(r[0], HIGH)  # the host's mount namespace
    finally:
        Z.podman_rm([name])


@pytest.fixture(scope="module")
def nspawn_machine():
    """systemd-nspawn without machined (--register=no). nspawn refuses to clean its /run state on a
    disk-backed /run, so it runs in a private mount namespace with a tmpfs there (only its own view)."""
    Z.need_root()
    if shutil.which("systemd-nspawn") is None:
        pytest.skip("systemd-nspawn not installed (apt install systemd-container)")
    top = tempfile.mkdtemp(prefix=f"{PREFIX}-nsp-", dir="/tmp")
    root = Z.busybox_rootfs(os.path.join(top, "rootfs"))
    machine = f"{PREFIX}-nsp"
    script = ("mkdir -p /run/systemd/nspawn && mount -t tmpfs tmpfs /run/systemd/nspawn && "
              f"exec systemd-nspawn -q --register=no --keep-unit -D {root} -M {machine} /bin/sleep 300")
    p = Z.spawn(["unshare", "-m", "--propagation", "private", "sh", "-c", script], wait_comm="sleep")
    try:
        yield machine, _workload(p)
    finally:
        Z.kill(p)
        shutil.rmtree(top, ignore_errors=True)


def test_nspawn_without_machined_is_recognised(nspawn_machine):
    machine, work = nspawn_machine
    r = _one(machine)
    assert (r.container.runtime, r.container.name) == ("nspawn", machine)
    assert r.container.init_pid == work
    assert "systemd-nspawn" not in {r.container.comms.get(r.container.init_pid)}


def test_nspawn_covered_mounts_and_private_peer_groups_are_not_reported(nspawn_machine):
    machine, work = nspawn_machine
    r = _one(pid=work)
    raw = facts.read_mountinfo(work)
    # nspawn mounts /run/host/os-release rw, then covers /run/host with a read-only tmpfs ...
    covered = [m for m in raw if m.mountpoint == "/run/host/os-release" and not m.readonly]
    seen = {(m.target, m.readonly) for m in r.subject.mounts}
    assert covered and ("/run/host/os-release", False) not in seen
    assert not [f for f in r.findings if f.check_id == "SBX-A024" and f.evidence["target"].startswith("/run/host")]
    # ... and every mount of it is shared, but in peer groups no host mount is in
    host_groups = {g for m in facts.read_mountinfo(1) for g in (m.peer_group, m.master) if g is not None}
    assert any(m.peer_group is not None for m in raw)
    # (nspawn runs under `unshare --propagation private`: its peer groups are new, never the host's)
    assert not any(m.peer_group in host_groups for m in raw if m.peer_group is not None)
    assert "SBX-A027" not in _ids(r), _dump(r)
    assert not any(m.shared for m in r.subject.mounts)


# --- mount tables over the old 4 MiB read cap -----------------------------------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAD_SCRIPT = r"""
import os, sys, time
from sandbox import syscalls as S
top, n = sys.argv[1], int(sys.argv[2])
S.mount("none", "/", None, S.MS_REC | S.MS_PRIVATE)
S.mount("padding", top, "tmpfs")
# mountinfo escapes each space as \040: 4095-byte sources and ~3.8 KB paths of spaces make ~30 KB lines
src = " " * 4000
deep = "/".join([" " * 250] * 15)
for i in range(n):
    d = os.path.join(top, f"{i:05d}", deep)
    os.makedirs(d)
    S.mount(src, d, "tmpfs")
# the one that matters comes last: the host's /etc, writable
os.makedirs(os.path.join(top, "zz-etc"))
S.mount("/etc", os.path.join(top, "zz-etc"), None, S.MS_BIND)
print("ready", flush=True)
time.sleep(300)
"""


def _padded(n: int):
    Z.need_root()
    top = tempfile.mkdtemp(prefix=f"{PREFIX}-pad-", dir="/tmp")
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.Popen(["unshare", "--mount", "--", sys.executable, "-c", PAD_SCRIPT, top, str(n)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, env=env)
    line = p.stdout.readline().strip()
    if line != b"ready":
        err = p.stderr.read().decode(errors="replace")
        Z.kill(p)
        shutil.rmtree(top, ignore_errors=True)
        pytest.skip(f"cannot build a padded mount table here: {err.strip()[-300:]}")
    return p, top


def test_mount_table_over_4_mib_is_read_to_the_end():
    p, top = _padded(200)
    try:
        raw = read_bytes(f"/proc/{p.pid}/mountinfo")
        assert len(raw) > 4 * 1024 * 1024
        assert raw.rstrip().endswith(b"zz-etc" + raw.rstrip().rsplit(b"zz-etc", 1)[1])  # the bind is last
        r = _one(pid=p.pid)
        hits = [f for f in r.findings if f.check_id == "SBX-A024" and f.evidence["source"] == "/etc"]
        assert hits and hits[0].evidence["target"] == os.path.join(top, "zz-etc"), _dump(r)
        assert r.subject.mounts_complete and "SBX-A043" not in _ids(r)
    finally:
        Z.kill(p)
        shutil.rmtree(top, ignore_errors=True)


def test_mount_table_over_the_read_limit_is_reported_incomplete():
    n = 16 * 1024 * 1024 // (30 * 1024) + 200  # past facts.MAX_MOUNTINFO (16 MiB)
    p, top = _padded(n)
    try:
        assert os.path.getsize(f"/proc/{p.pid}/mountinfo") == 0  # (procfs reports 0: size is only known by reading)
        r = _one(pid=p.pid)
        assert not r.subject.mounts_complete
        hits = [f for f in r.findings if f.check_id == "SBX-A043"]
        assert hits and hits[0].severity == "high", _dump(r)
        gate = sbx("audit", "--pid", str(p.pid), "--fail-on", "high", "--format", "json")
        assert gate.returncode == 1
        assert json.loads(gate.stdout)["containers"][0]["posture"]["mounts_complete"] is False
    finally:
        Z.kill(p)
        shutil.rmtree(top, ignore_errors=True)


# --- published ports --------------------------------------------------------------------------------

def _free_port(lo: int, hi: int) -> int:
    import random
    for _ in range(200):
        port = random.randint(lo, hi)
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
                return port
            except OSError:
                continue
    pytest.skip(f"no free port in {lo}-{hi}")


def test_podman_published_ports_are_read_from_its_forwarder():
    Z.podman_ready()
    name = f"{PREFIX}-ports"
    low, high = _free_port(600, 999), _free_port(20000, 40000)
    try:
        Z.podman_run(name, ["-p", f"{low}:80", "-p", f"127.0.0.1:{high}:81"])
        r = _one(name)
        ports = set(r.subject.published_ports)
        assert {f"0.0.0.0:{low}/tcp", f"127.0.0.1:{high}/tcp"} <= ports, ports
        a040 = [f for f in r.findings if f.check_id == "SBX-A040"]
        assert a040 and a040[0].evidence["ports"] == [f"0.0.0.0:{low}/tcp"]
        a039 = [f for f in r.findings if f.check_id == "SBX-A039" and "ports" in f.evidence]
        assert a039 and a039[0].evidence["ports"] == [f"0.0.0.0:{low}/tcp"]  # not the 127.0.0.1 one
    finally:
        Z.podman_rm([name])


def test_sbx_published_ports_are_read_from_its_proxy():
    Z.need_root()
    lo, wild = _free_port(20000, 40000), _free_port(40001, 60000)
    p = sbx("run", "-d", "--profile", "strict", "--network", "bridge", "-p", f"127.0.0.1:{lo}:80",
            "-p", f"{wild}:81", "--", "sleep", "120")
    if p.returncode != 0:
        pytest.skip(f"sbx cannot publish ports here: {p.stderr.strip()[-300:]}")
    sid = p.stdout.strip().splitlines()[-1]
    try:
        r = _one(sid)
        ports = set(r.subject.published_ports)
        assert {f"127.0.0.1:{lo}->80/tcp", f"0.0.0.0:{wild}->81/tcp"} <= ports, ports
        a039 = [f for f in r.findings if f.check_id == "SBX-A039" and "ports" in f.evidence]
        assert a039 and a039[0].evidence["ports"] == [f"0.0.0.0:{wild}->81/tcp"]
        pol = sbx("audit", sid, "--policy", "restricted", "--format", "json")
        # restricted allows 1024-65535 and binding all interfaces: nothing about these ports
        assert not [f for c in json.loads(pol.stdout)["containers"] for f in c["findings"]
                    if f["check"] in ("SBX-P061", "SBX-P062")]
    finally:
        sbx("rm", "-f", sid)


# --- the built-in baseline policy is PSS baseline ------------------------------------------------------

def test_baseline_policy_matches_pod_security_baseline():
    Z.podman_ready()
    plain, raw = f"{PREFIX}-plain", f"{PREFIX}-netraw"
    try:
        Z.podman_run(plain, [])
        Z.podman_run(raw, ["--cap-add", "NET_RAW"])
        res = {x.container.name: x for x in audit(runtime="podman") if x.container.name in (plain, raw)}
        from sandbox.audit.report import apply_policy
        res = {x.container.name: x for x in apply_policy(list(res.values()), "baseline")}
        # podman's defaults: its generated resolv.conf/hosts/hostname/.containerenv are not hostPath
        # volumes, and the user/cgroup namespaces are not baseline controls
        assert not res[plain].findings, _dump(res[plain])
        # PSS baseline does not allow adding NET_RAW
        assert [f for f in res[raw].findings if f.check_id == "SBX-P001" and "NET_RAW" in f.evidence["caps"]]
    finally:
        Z.podman_rm([plain, raw])


def test_propagation_shared_with_the_host_is_still_reported():
    """The true positive next to nspawn's private peer groups: a host mount made shared and bound
    into a podman container with :shared is in the host's peer group."""
    Z.podman_ready()
    d = tempfile.mkdtemp(prefix=f"{PREFIX}-shared-", dir="/tmp")
    name = f"{PREFIX}-shared"
    subprocess.run(["mount", "--bind", d, d], check=True)
    try:
        subprocess.run(["mount", "--make-shared", d], check=True)
        Z.podman_run(name, ["-v", f"{d}:/data:shared"])
        r = _one(name)
        hits = [f for f in r.findings if f.check_id == "SBX-A027"]
        assert hits and "/data" in hits[0].evidence["targets"], _dump(r)
    finally:
        Z.podman_rm([name])
        subprocess.run(["umount", "-l", d])
        shutil.rmtree(d, ignore_errors=True)
