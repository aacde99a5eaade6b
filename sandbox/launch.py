"""Launch: a sandbox's start, as one ordered list of named stages per process.

Process tree (host view), as with runc under conmon:

    sbx (parent: plan, id maps, cgroup, verification, wait)
     └─ init      pid 1 inside: mounts, hostname, network, its cgroup namespace; then reaps and forwards
         └─ workload  rlimits → Landlock → MAC → caps/uid → no_new_privs → fds → seccomp → parked → execve

A short-lived setup process (between sbx and init) unshares the namespaces: a
new pid namespace applies to the unsharer's children, so it forks init and
exits; sbx is a child subreaper meanwhile and adopts init. The messages between
the processes, and the order they come in, are drawn in sandbox/protocol.py.

Every stage below is one named call; a failing stage ends its process with an
ERROR message naming it (protocol.die), and sbx reports that one line, exit
125. Children never return into the caller's Python stack: every path ends in
os._exit. The workload is verified from /proc while parked before execve, and
only then released (fail closed).

Timing notes that shaped the order: the cgroup is created and joined while init
builds its mounts (the first cgroup.procs write may wait a full RCU grace
period, see cgwarm), and the workload is forked before the mounts, parked on a
pipe, so a forked interpreter's page faults overlap them.
"""
from __future__ import annotations

import _thread
import os
import sys
import time

from . import cgwarm, facts, namespaces, process, protocol
from .errors import EXIT_NOT_FOUND, EXIT_NOT_EXECUTABLE, EXIT_TIMEOUT, SbxError, VerifyError
from .protocol import Channel, ExecFailed, Steps
from .records import field, record
from .sig import signal
from .spec import RunOptions, Spec

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~5 ms of every start); mypy knows the name
if TYPE_CHECKING:  # types only: none of these is imported on the run path unless the plan needs it
    from .cgroups.base import Cgroup
    from .hostpath import HostPath
    from .landlock import Rule
    from .mac import MacPlan
    from .netbridge import BridgeNet
    from .stdio import Relay
    from .userns import IdPlan
    from .volumes import DataPlan


@record
class Result:
    """How a sandbox ended. exit_code: the workload's own, 128+N for signal N (137 for OOM),
    124 for an expired timeout. stdout/stderr: what the API captured (bytes, or str with text=True),
    else None; *_truncated: the capture hit max_output. record: the run record (verification...)."""

    exit_code: int
    sandbox_id: str
    record: dict = field(default_factory=dict, repr=False)
    oom_killed: bool = False
    timed_out: bool = False
    stdout: bytes | str | None = None
    stderr: bytes | str | None = None
    stdout_truncated: bool = False
    stderr_truncated: bool = False

    @property
    def returncode(self) -> int:
        """subprocess's name for exit_code."""
        return self.exit_code

    def __repr__(self) -> str:
        parts = [f"exit_code={self.exit_code}", f"sandbox_id={self.sandbox_id[:12]!r}"]
        for flag in ("oom_killed", "timed_out", "stdout_truncated", "stderr_truncated"):
            if getattr(self, flag):
                parts.append(f"{flag}=True")
        for name in ("stdout", "stderr"):
            v = getattr(self, name)
            if v is not None:
                parts.append(f"{name}={v[:60]!r}" + ("..." if len(v) > 60 else ""))
        return "Result(" + ", ".join(parts) + ")"


@record
class Confinement:
    """What the workload (and every `sbx exec`) applies to itself, decided in sbx before any fork."""

    seccomp_bpf: bytes | None = None
    landlock_rules: list[Rule] | None = None
    mac: MacPlan | None = None


@record
class Plan:
    """Everything sbx decided for one sandbox (the cgroup is added once setup is busy)."""

    spec: Spec
    sandbox_id: str
    confinement: Confinement
    idmap: IdPlan | None = None  # None: `sbx exec` joins a sandbox that has its maps
    cgroup: Cgroup | None = None
    net: BridgeNet | None = None
    rootfs_src: HostPath | None = None  # --rootfs and -v sources, resolved by sbx (hostpath)
    bind_srcs: list[HostPath] = field(default_factory=list)
    layer_srcs: list[HostPath] = field(default_factory=list)  # an image's layer roots in the store, bottom first
    layer_sock: tuple | None = None  # (sbx end, init end): idmapped layer trees travel to init (SCM_RIGHTS)
    data: DataPlan | None = None  # -v sources and volumes: their owners, idmapped trees, volume locks
    notes: list[str] = field(default_factory=list)
    features: dict = field(default_factory=dict)


# ============================================================ the plan (sbx, before any fork)

def plan(spec: Spec, sandbox_id: str, *, options: RunOptions | None = None, exec_label: str | None = None,
         joining: bool = False) -> Plan:
    """The one place a launch is decided, for `run` and for `exec` (joining=True: the sandbox exists).

    Everything that can fail before a process exists fails here, with one line.
    exec_label: the LSM label the running workload was verified to carry (exec reuses it).
    """
    p = Plan(spec=spec, sandbox_id=sandbox_id, confinement=Confinement())
    try:
        if not joining:
            _admit(spec, options or RunOptions())
            _check_rlimits(spec)
            _resolve_host_paths(p)
            _plan_ids(p)
        _plan_confinement(p, exec_label, joining)
        if not joining:
            _plan_data(p)
        # Before the cgroup: mkdir there waits on cgroup_mutex while cgwarm's grace period runs,
        # so everything that does not touch cgroups goes first.
        preload(p)
        if not joining:
            _check_cgroup_limits(p)
            _plan_network(p, (options or RunOptions()).name)
    except BaseException:
        release(p)
        raise
    return p


def _admit(spec: Spec, options: RunOptions) -> None:
    """Admission is part of the launch, so no entry point (CLI, API, sbx start) skips the policy."""
    if options.policy:
        from .admission import admit
        admit(spec, options)


def _check_rlimits(spec: Spec) -> None:
    from . import rlimits
    rlimits.check(spec.rlimits)


def _resolve_host_paths(p: Plan) -> None:
    fs = p.spec.filesystem
    if fs.rootfs or p.spec.image is not None:  # -v sources: _plan_data
        from . import hostpath
        p.rootfs_src = hostpath.resolve(fs.rootfs, what="--rootfs") if fs.rootfs else None
        if p.spec.image is not None:
            p.layer_srcs = [hostpath.resolve(d, what="image layer") for d in p.spec.image.layers]


def _plan_ids(p: Plan) -> None:
    from . import userns
    p.idmap = userns.plan(p.spec)


def _plan_confinement(p: Plan, exec_label: str | None, joining: bool) -> None:
    sec = p.spec.security
    c = p.confinement
    if sec.seccomp != "unconfined":
        from . import seccomp
        c.seccomp_bpf = seccomp.prepare(sec.seccomp, frozenset(sec.capabilities))
        p.features["seccomp"] = sec.seccomp
    else:
        p.notes.append("seccomp: unconfined (requested)")
    if sec.landlock != "off":
        from . import landlock
        lp = landlock.plan(p.spec)
        if lp is None:
            p.notes.append("landlock: not available")
        else:
            c.landlock_rules = lp.rules
        p.features["landlock_abi"] = landlock.abi_version()
    if sec.apparmor != "off" or sec.selinux != "off":
        from . import mac
        mp = mac.prepare(sec, p.sandbox_id)
        p.notes.extend(mp.notes)
        if mp.selinux_context and joining:
            if not exec_label:
                raise SbxError("the sandbox's SELinux label was not recorded: refusing an exec that could carry "
                               "another one", where="exec")
            mp.selinux_context = exec_label  # per-sandbox MCS categories: an exec carries the workload's
        if mp.apparmor_profile or mp.selinux_context:
            c.mac = mp


def _plan_data(p: Plan) -> None:
    """-v sources and named volumes: resolved (hostpath), their owners decided, volumes cloned (sandbox.volumes)."""
    if p.spec.filesystem.binds:
        from . import volumes
        assert p.idmap is not None
        p.data = volumes.prepare(p.spec, p.idmap, p.confinement.mac)
        p.bind_srcs = p.data.sources
        p.notes.extend(p.data.notes)


def preload(p: Plan) -> None:
    """Import in sbx everything the sandbox processes will run.

    After the id switch and pivot_root they cannot read the Python installation
    (it may live under a 0700 home, and is not in the new root), so a lazy import
    there would fail.
    """
    from . import caps, initproc, mounts, net, rlimits  # noqa: F401
    c = p.confinement
    if c.seccomp_bpf is not None:
        from . import seccomp  # noqa: F401
    if c.landlock_rules is not None:
        from . import landlock  # noqa: F401
    if c.mac is not None:
        from . import mac  # noqa: F401


def _check_cgroup_limits(p: Plan) -> None:
    if p.spec.resources.requested():
        from . import cgroups
        cgroups.check(p.sandbox_id, p.spec.resources)  # bad values refuse before anything exists


def _plan_network(p: Plan, name: str | None) -> None:
    if p.spec.network == "bridge":
        from . import netbridge  # pyroute2 is imported there, and only for bridge mode
        p.net = netbridge.prepare(p.spec, p.sandbox_id, name=name)
        p.notes.extend(p.net.notes)


def create_cgroup(p: Plan) -> None:
    """The sandbox's cgroup with every limit written (sbx does this while init builds its mounts)."""
    spec = p.spec
    if not spec.resources.requested():
        return
    from . import cgroups
    p.cgroup = cgroups.create(p.sandbox_id, spec.resources, degrade=spec.degrade)
    if p.cgroup is not None:
        for d in p.cgroup.degraded:
            p.notes.append(f"degraded: {d} not enforced (profile allows degrade)")
    p.features["cgroup"] = cgroups.detect()


def release(p: Plan) -> None:
    """Give back what the plan holds (network, cgroup, id slice, volumes); best effort, idempotent."""
    if p.data is not None:
        p.data.release()  # idmapping namespaces, volume trees, volume locks
    if p.net is not None:
        try:
            p.net.release()
        except Exception:  # noqa: BLE001 - netbridge reaps leftovers on next start
            pass
        p.net = None
    if p.cgroup is not None:
        try:
            p.cgroup.destroy()
        except Exception:  # noqa: BLE001 - reap_stale retries next start
            pass
        p.cgroup = None
    if p.idmap is not None:
        p.idmap.release()
    if p.layer_sock is not None:
        for sk in p.layer_sock:
            try:
                sk.close()
            except OSError:
                pass
        p.layer_sock = None


# ============================================================ setup (forked by sbx)

def _setup_process(p: Plan, chan: Channel, parent: int, relay: Relay | None) -> None:
    """Still in the host's pid namespace: unshare, fork init, exit. Never returns."""
    step = Steps("setup")
    try:
        step("standard streams", _use_relay, relay)  # pipes, never the caller's terminal, become fds 0-2
        step("new session", os.setsid)  # no controlling terminal: /dev/tty cannot reach the caller's
        step("signals", process.reset_signals_for_sandbox)
        step("pipes", chan.child_close)
        step("parent death signal", process.die_with_parent, parent)
        step("unshare", namespaces.unshare_for_setup)
        pid = step("fork init", os.fork)  # pid 1 of the new pid namespace
        if pid == 0:
            _init_process(p, chan)
        step("report init", chan.send, protocol.INIT, pid)
        os._exit(0)  # init is re-parented to sbx (a subreaper now), which waits for it
    except BaseException as e:  # noqa: BLE001 - a child must never unwind into the caller
        protocol.die(chan, e, step.name)


def _use_relay(relay: Relay | None) -> None:
    if relay is not None:
        relay.in_child()


# ============================================================ init (pid 1 of the sandbox)

def _init_process(p: Plan, chan: Channel) -> None:
    """pid 1 of the sandbox. Never returns.

    No parent-death signal until IN_CGROUP: setup, its parent, exits at once and
    would fire it. Until then the end of sbx shows as EOF on the control pipe.
    """
    from . import caps, mounts, net
    from .initproc import prepare_signals, run_init, set_title

    spec = p.spec
    assert p.idmap is not None
    step = Steps("init")
    try:
        step("title", set_title, "sbx-init")
        # The sandbox's files and the workload get docker's umask, not whatever the caller had
        # (a 077 caller would leave the new root untraversable for the workload's uid).
        step("umask", os.umask, 0o022)
        step("wait for id maps", chan.wait, protocol.MAPS_WRITTEN)
        layer_trees = step("image layers", _recv_layers, p) if p.layer_sock is not None else None
        # Before the id switch and any mount: with the invoker's access rights, in the copied mount tree.
        sources = step("open sources", mounts.open_sources, spec, p.rootfs_src, p.bind_srcs, p.layer_srcs,
                       layer_trees, premade=p.data.premade if p.data is not None else None,
                       net_tree=p.net.hosts_tree if p.net is not None else None)
        if p.data is not None and p.data.idmap_in_init:  # sbx idmaps our clones of the -v sources (volumes.py)
            step("report bind trees", chan.send, protocol.IDMAP, sources.tree_fds(p.data.idmap_in_init))
            step("wait for idmapped binds", chan.wait, protocol.IDMAPPED)
        step("become root of the namespace", p.idmap.become_root)
        # Dumpable until confine_init, so the workload can open our /proc/1/ns/cgroup to join it. Only
        # sbx's code runs in the sandbox until then, and sbx checks init is not dumpable before any exec.
        step("stay dumpable", process.stay_dumpable)
        step("hostname", namespaces.set_hostname, spec.hostname)
        step("signals", prepare_signals)
        go_r, go_w = step("pipes to the workload", os.pipe2, os.O_CLOEXEC)  # init -> workload: GO
        joined_r, joined_w = step("pipes from the workload", os.pipe2, os.O_CLOEXEC)  # workload -> init: JOINED
        pid = step("fork workload", os.fork)  # parked on GO; pivot_root moves its root with ours
        if pid == 0:
            for fd in (go_w, joined_r):
                os.close(fd)
            sources.close()  # O_PATH fds and mount trees of the host's: never in the workload
            _workload_process(p, chan, go_r, joined_w)
        os.close(go_r)
        os.close(joined_w)
        step("report the workload", chan.send, protocol.WORKLOAD_FORKED, "forked")  # sbx finds its host pid
        step("mounts", mounts.setup, spec, sources, rootless=p.idmap.rootless)
        step("network", net.setup_inside, spec.network)
        step("wait for the cgroup", chan.wait, protocol.IN_CGROUP)  # sbx adopted us, the workload is in it
        step("parent death signal", process.die_with_parent, os.getppid())
        step("sbx alive", _refuse_if, chan.sbx_gone)  # EOF: sbx died between its token and the line above
        # rooted at the sandbox's cgroup, mounted read-only at /sys/fs/cgroup
        step("cgroup namespace", mounts.cgroup_namespace, spec, p.sandbox_id)
        step("release the workload", os.write, go_w, protocol.GO)
        step("workload joined", _wait_joined, joined_r)  # it needed us dumpable until now
        os.close(go_w)
        os.close(chan.ctl_r)
        step("init privileges", caps.confine_init)
        if p.confinement.seccomp_bpf is not None:
            # Init runs only wait/kill/signal calls from here on; the workload's filter allows those
            # and denies the rest, so init is not a softer target than the workload it reaps.
            from . import seccomp
            step("init seccomp", seccomp.install, p.confinement.seccomp_bpf)
        step("report confined", chan.send, protocol.INIT_CONFINED, "init")
        os.close(chan.status_w)
        os._exit(run_init(pid))
    except BaseException as e:  # noqa: BLE001
        protocol.die(chan, e, step.name)


def _recv_layers(p: Plan) -> list[int]:
    """The idmapped layer trees sbx made for this sandbox's user namespace (one message, one fd each)."""
    import _socket
    import struct
    sock = p.layer_sock[1]
    n = len(p.layer_srcs)
    _, anc, _, _ = sock.recvmsg(16, _socket.CMSG_SPACE(4 * (n + 1)))
    sock.close()
    fds: list[int] = []
    for level, kind, data in anc:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds.extend(struct.unpack(f"{len(data) // 4}i", data[:len(data) - len(data) % 4]))
    if len(fds) != n:
        for fd in fds:
            os.close(fd)
        raise SbxError(f"expected {n} image layers from sbx, got {len(fds)}")
    for fd in fds:
        os.set_inheritable(fd, False)
    return fds


def _send_layers(p: Plan, init_pid: int) -> None:
    """Idmapped clones of the image's layers, mapped through the sandbox's own user namespace, to init.

    Made here (host root, init user namespace) because an idmapped mount needs CAP_SYS_ADMIN over
    the layers' filesystem; init attaches them under its staging tmpfs and stacks them.
    """
    import _socket
    import struct
    from . import mounts
    sock = p.layer_sock[0]
    nsfd = namespaces.open_ns(init_pid, "user")
    trees: list[int] = []
    try:
        trees = mounts.layer_trees(p.layer_srcs, nsfd)
        sock.sendmsg([b"L"], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, struct.pack(f"{len(trees)}i", *trees))])
    finally:
        for fd in trees:
            os.close(fd)
        os.close(nsfd)
        sock.close()


def _refuse_if(cond) -> None:
    if cond():
        os._exit(125)


def _wait_joined(fd: int) -> None:
    os.read(fd, 1)  # JOINED, or EOF if the workload died: either way it no longer needs us
    os.close(fd)


# ============================================================ the workload

def _workload_process(p: Plan, chan: Channel, go_r: int, joined_w: int) -> None:
    """Forked by init before its mounts. Joins the sandbox's cgroup namespace, then confines itself."""
    step = Steps("workload")
    try:
        env = p.spec.env_dict()
        step("wait for the root", _wait_token, go_r, protocol.GO)  # root built, in the cgroup, namespace made
        step("cgroup namespace", namespaces.join_cgroup_of_init)
        step("tell init", os.write, joined_w, protocol.JOINED)
        os.close(joined_w)
    except BaseException as e:  # noqa: BLE001
        protocol.die(chan, e, step.name)
    confine_and_exec(p, chan, list(p.spec.argv), env, p.spec.cwd)


def _wait_token(fd: int, token: bytes) -> None:
    if os.read(fd, 1) != token:
        os._exit(125)  # init failed or was killed: never continue half set up
    os.close(fd)


def confine_and_exec(p: Plan, chan: Channel, argv: list[str], env: dict[str, str], cwd: str, *,
                     rootless: bool | None = None) -> None:
    """The confinement, in order, then parked until sbx verified us, then execve. Never returns.

    Shared by the workload and `sbx exec` (sandbox.enter), so an exec'd command
    can never be confined differently from the workload. seccomp comes last:
    everything before it may need calls it blocks.
    """
    from . import caps, rlimits
    from .initproc import reset_for_exec

    spec, c = p.spec, p.confinement
    if rootless is None:
        rootless = p.idmap.rootless if p.idmap is not None else os.geteuid() != 0
    step = Steps("confine")
    report: dict = {}
    try:
        step("working directory", _chdir, cwd)
        step("rlimits", rlimits.apply, spec.rlimits)
        if c.landlock_rules is not None:
            from . import landlock
            report["landlock_abi"] = step("landlock", landlock.apply, c.landlock_rules)
        if c.mac is not None:
            from . import mac
            step("mac", mac.apply, c.mac)
        step("capabilities", caps.drop, spec.security.capabilities, spec.uid, spec.gid, rootless=rootless,
             groups=spec.groups)
        if spec.security.no_new_privs:
            step("no_new_privs", caps.set_no_new_privs)
        step("fds", process.close_inherited_fds, 3)  # nothing of the host leaks in: all but 0-2 close at exec
        exe = step("exec lookup", _resolve_exe, argv[0], env)
        if exe is None:
            chan.send(protocol.EXEC_FAILED, "not found", code=EXIT_NOT_FOUND, argv0=argv[0])
            os._exit(EXIT_NOT_FOUND)
        step("signal dispositions", reset_for_exec)
        if c.seccomp_bpf is not None:
            from . import seccomp
            step("seccomp", seccomp.install, c.seccomp_bpf)
        step("report ready", chan.send, protocol.READY, report)
        step("wait for release", chan.wait, protocol.RELEASE)
        try:
            os.execve(exe, list(argv), env)
        except OSError as e:
            code = EXIT_NOT_FOUND if e.errno == 2 else EXIT_NOT_EXECUTABLE
            chan.send(protocol.EXEC_FAILED, e.strerror, code=code, argv0=argv[0])
            os._exit(code)
    except BaseException as e:  # noqa: BLE001
        protocol.die(chan, e, step.name)


def _chdir(cwd: str) -> None:
    try:
        os.chdir(cwd)
    except OSError as e:
        raise SbxError(f"working directory {cwd} is not usable in the sandbox: {e.strerror}") from None


def _resolve_exe(argv0: str, env: dict[str, str]) -> str | None:
    """argv[0] on the sandbox's PATH (no shell): executable first, else one that exists (EACCES -> 126)."""
    if "/" in argv0:
        return argv0
    dirs = env.get("PATH", "").split(":")
    for d in dirs:
        cand = os.path.join(d or ".", argv0)
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    for d in dirs:
        cand = os.path.join(d or ".", argv0)
        if os.path.exists(cand):
            return cand
    return None


# ============================================================ sbx

class _Launch:
    """sbx's side of one launch: the processes it knows of, and its record."""

    def __init__(self, p: Plan, stderr) -> None:
        self.p = p
        self.stderr = stderr
        self.chan = Channel()
        self.setup_pid: int | None = None
        self.init_pid: int | None = None
        self.workload_pid: int | None = None
        self.relay: Relay | None = None
        self.fwd: process.Forwarder | None = None
        self.warm: cgwarm.Warmer | None = None
        self.record: dict = {}

    def start(self) -> None:
        """Fork setup, then drive the sandbox to a verified, released workload (each line one stage)."""
        p, chan = self.p, self.chan
        assert p.idmap is not None
        self.init_pid = chan.expect(protocol.INIT)[protocol.INIT]  # setup unshared and forked init
        self._write_maps()
        chan.give(protocol.MAPS_WRITTEN)
        self._idmap_binds()
        self._adopt_init()
        create_cgroup(p)  # while init builds its mounts
        self._record_cgroup()
        chan.expect(protocol.WORKLOAD_FORKED)
        self.workload_pid = self._the_workload()
        self._join_cgroup()
        chan.give(protocol.IN_CGROUP)
        self._reap_stale_cgroups()  # while the sandbox finishes its setup, not before it starts
        self.record["landlock_abi"] = chan.expect(protocol.READY)[protocol.READY].get("landlock_abi")
        self._verify_workload()
        chan.expect(protocol.INIT_CONFINED)
        self._verify_init()
        label = release_and_confirm(chan, p, self.workload_pid, "workload")
        if p.confinement.mac is not None:
            self.record["lsm_label"] = label

    def _write_maps(self) -> None:
        from . import userns
        assert self.init_pid is not None and self.p.idmap is not None
        userns.write_maps(self.init_pid, self.p.idmap)
        if self.p.layer_sock is not None:
            _send_layers(self.p, self.init_pid)  # before MAPS_WRITTEN: init takes them before its mounts
        if self.p.net is not None:
            self.p.net.attach(self.init_pid)  # the veth goes in before anything runs there
            self.record["network"] = self.p.net.describe()

    def _idmap_binds(self) -> None:
        """init's clones of the -v sources, idmapped here (only host root may), while init waits."""
        d = self.p.data
        if d is None or not d.idmap_in_init:
            return
        assert self.init_pid is not None
        n = len(d.notes)
        d.idmap_init_trees(self.init_pid, self.chan.expect(protocol.IDMAP)[protocol.IDMAP])
        self.p.notes.extend(d.notes[n:])  # a default idmap the filesystem cannot do: a note, a plain bind
        self.record["mounts"] = d.describe()
        self.chan.give(protocol.IDMAPPED)

    def _adopt_init(self) -> None:
        assert self.setup_pid is not None and self.init_pid is not None
        process.reap(self.setup_pid)  # setup exits right after forking init, re-parented to us
        self.setup_pid = None
        process.Subreaper.leave()
        if self.fwd is not None:
            self.fwd.arm(self.init_pid)

    def _record_cgroup(self) -> None:
        if self.p.cgroup is not None:
            self.record["cgroup"] = self.p.cgroup.describe()
            for note in self.p.notes:
                if note.startswith("degraded"):
                    say(self.stderr, f"sbx: warning: {note}")

    def _the_workload(self) -> int:
        assert self.init_pid is not None
        kids = facts.read_children(self.init_pid)  # host pids; init knows only its namespace's
        if len(kids) != 1:
            raise VerifyError(f"expected one workload process under the sandbox init, found {kids}")
        return kids[0]

    def _join_cgroup(self) -> None:
        cg = self.p.cgroup
        if cg is not None:
            assert self.init_pid is not None and self.workload_pid is not None
            cg.attach(self.init_pid)
            cg.attach(self.workload_pid)  # forked before init was attached
        if self.warm is not None:
            self.warm.stop()

    def _reap_stale_cgroups(self) -> None:
        if self.p.cgroup is not None:
            _reap_stale_cgroups()

    def _verify_workload(self) -> None:
        from .verify import check
        p = self.p
        assert self.init_pid is not None and self.workload_pid is not None and p.idmap is not None
        kids = facts.read_children(self.init_pid)
        if kids != [self.workload_pid]:
            raise VerifyError(f"expected one workload process ({self.workload_pid}) under the sandbox init, "
                              f"found {kids}")
        f = facts.read(self.workload_pid, host_pid=os.getpid())
        v = check(p.spec, f, uid_map=p.idmap.uid_map, gid_map=p.idmap.gid_map, cgroup=p.cgroup)
        self.record["verification"] = v.to_dict()
        if not v.ok:
            raise VerifyError("verification failed, workload killed before exec: " + "; ".join(v.problems))

    def _verify_init(self) -> None:
        from .verify import check_init
        assert self.init_pid is not None
        vi = check_init(self.init_pid, seccomp=self.p.confinement.seccomp_bpf is not None)
        if not vi.ok:
            raise VerifyError("verification failed, workload killed before exec: " + "; ".join(vi.problems))

    def abort(self, e: BaseException) -> BaseException | None:
        """Kill what exists; return the sandbox's own error if it already sent one (it is the cause)."""
        cause = None
        if not isinstance(e, KeyboardInterrupt) and not getattr(e, "from_sandbox", False):
            # A sandbox process that failed (say, init refusing a hostile rootfs) may already have said
            # why while sbx tripped over its absence (a cgroup attach, a missing child).
            cause = self.chan.pending_error(process.gone(self.init_pid))
        # Setup reports init's pid right after forking it, so an init we do not know of can only
        # exist if setup died mid-report; it then exits on the pipe's EOF.
        for pid in (self.init_pid, self.setup_pid):
            if pid is not None:
                _kill_tree(pid, self.p)
        if self.setup_pid is not None:
            process.reap(self.setup_pid)
            process.Subreaper.leave()
            self.setup_pid = None
        if self.init_pid is not None:
            process.reap(self.init_pid)  # ours by now: setup is gone and we were its subreaper
        return cause


def run(spec: Spec, *, options: RunOptions | None = None, sandbox_id: str | None = None, on_started=None,
        stderr=None, stdio=None) -> Result:
    """Run one sandbox to completion. Raises SbxError for refusals (exit 125).

    stdio: a sandbox.stdio.Relay for the sandbox's fds 0-2 (the API's capture mode), or a callable
    making one (called while no other run() forks); None hands in the caller's streams
    (terminals replaced by a relay).
    """
    sid = sandbox_id or os.urandom(32).hex()
    t0 = time.monotonic()
    warm = _warm_cgroup_lock(spec)
    try:
        p = plan(spec, sid, options=options)
    except BaseException:
        if warm is not None:
            warm.stop()
        raise
    # Every fd that exists at a fork is inherited, and the sandbox's init never execs: the ends
    # that only this sandbox may hold (its status pipe's write end, its stdout pipes' write ends,
    # init's end of the layer socket) must not exist while another thread's run() forks. They
    # live from here to the closing of our copies, under one lock.
    _fork_lock.acquire()
    locked = True
    try:
        L = _Launch(p, stderr)
    except BaseException:
        _fork_lock.release()
        release(p)
        raise
    L.warm = warm  # stopped once the sandbox is in its cgroup
    assert p.idmap is not None
    L.record = {"id": sid, "spec_digest": spec.digest(), "profile": spec.profile, "argv": list(spec.argv),
                "notes": p.notes, "features": p.features, "idmap": p.idmap.describe(), "started": time.time()}
    if p.data is not None:
        L.record["mounts"] = p.data.describe()
    L.fwd = process.Forwarder()
    parent = os.getpid()
    try:
        L.relay = stdio() if callable(stdio) else stdio
        if L.relay is None and _any_tty():
            from . import stdio as _stdio  # only an interactive caller pays for the relay
            L.relay = _stdio.Relay.for_caller()
        if p.layer_srcs and not p.idmap.rootless:
            import _socket  # not `socket`: its enum/selectors imports would cost every image start ~5 ms
            p.layer_sock = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC)
        process.Subreaper.enter()
        try:
            L.setup_pid = os.fork()
        except OSError as e:
            process.Subreaper.leave()
            if L.relay is not None:
                L.relay.in_parent()
            raise SbxError(f"fork failed: {e.strerror}") from None
        if L.setup_pid == 0:
            if p.layer_sock is not None:
                p.layer_sock[0].close()  # sbx's end
            _setup_process(p, L.chan, parent, L.relay)
        L.chan.parent_close()
        if p.layer_sock is not None:
            p.layer_sock[1].close()  # init's end
        if L.relay is not None:
            L.relay.in_parent()
        _fork_lock.release()
        locked = False
        try:
            L.start()
        except ExecFailed as e:
            say(stderr, f"sbx: {e.msg.get('argv0', '')}: {e.msg.get(protocol.EXEC_FAILED)}")
            if L.init_pid is not None:
                process.reap(L.init_pid)
            L.record.update(exit_code=e.code, finished=time.time())
            return Result(e.code, sid, L.record)
        except BaseException as e:
            cause = L.abort(e)
            if cause is not None:
                raise cause from None
            raise
        L.record["startup_ms"] = round((time.monotonic() - t0) * 1000, 2)
        if on_started is not None:
            on_started(sid, L.init_pid, L.workload_pid, record=L.record)
        assert L.init_pid is not None
        return _finish(L, _wait(L.init_pid, spec.timeout, p, L.relay))
    finally:
        if locked:
            _fork_lock.release()
        if warm is not None:
            warm.stop()
        if L.relay is not None:
            L.relay.close()
        L.fwd.restore()
        L.chan.close()
        release(p)


_fork_lock = _thread.allocate_lock()  # run(): from creating a sandbox's private fds to closing our copies


def _warm_cgroup_lock(spec: Spec):
    warm = cgwarm.take()  # the CLI starts one at its first line
    if spec.resources.requested():
        return warm or cgwarm.start()
    if warm is not None:
        warm.stop()  # no cgroup for this sandbox
    return None


def _finish(L: _Launch, waited: tuple[int, bool]) -> Result:
    from .initproc import status_to_code
    status, timed_out = waited
    p, record = L.p, L.record
    code = EXIT_TIMEOUT if timed_out else status_to_code(status)
    oom = False
    if p.cgroup is not None:
        try:
            oom = bool(p.cgroup.oom_killed())
            record["limits_hit"] = {"oom_kill": oom, "pids_max": p.cgroup.pids_max_hits()}
        except Exception as e:  # noqa: BLE001
            record["limits_hit"] = {"error": str(e)}
    if oom:
        mem = p.spec.resources.memory
        say(L.stderr, f"sbx: sandbox {p.sandbox_id[:12]} was killed by the OOM killer at its memory limit"
                         + (f" ({mem} bytes)" if mem else ""))
    record.update(exit_code=code, finished=time.time(), timed_out=timed_out, oom_killed=oom)
    return Result(code, p.sandbox_id, record, oom_killed=oom, timed_out=timed_out)


def release_and_confirm(chan: Channel, p: Plan, pid: int, what: str) -> str | None:
    """Let a verified, parked process exec; confirm it did, and check the LSM label it now carries.

    Shared by the workload and `sbx exec`. EOF on the status pipe means the exec
    happened; an exec failure raises ExecFailed, a missing label VerifyError.
    Returns the label in effect.
    """
    chan.give(protocol.RELEASE)
    chan.after_release()
    if p.confinement.mac is None:
        return None
    from . import mac
    from .verify import check_label
    label, problem = check_label(pid, mac.expected_label(p.confinement.mac))
    if problem:
        raise VerifyError(f"verification failed after exec, {what} killed: {problem}")
    return label


def _reap_stale_cgroups() -> None:
    """Remove the cgroups a SIGKILLed sbx left behind (never in the way of a new sandbox: ids are unique)."""
    from . import cgroups
    try:
        cgroups.reap_stale()
    except Exception:  # noqa: BLE001 - housekeeping must not fail a running sandbox
        pass


def say(stream, text: str) -> None:
    if not text:
        return
    stream = stream or sys.stderr
    try:
        stream.write(text + "\n")
        stream.flush()
    except (OSError, ValueError):
        pass


def _kill_tree(pid: int, p: Plan) -> None:
    # SIGKILL on init takes the whole pid namespace with it.
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if p.cgroup is not None:
        try:
            p.cgroup.kill_all()
        except Exception:  # noqa: BLE001
            pass


def _any_tty() -> bool:
    for fd in (0, 1, 2):
        try:
            if os.isatty(fd):
                return True
        except OSError:
            pass
    return False


def _wait(pid: int, timeout: float | None, p: Plan, relay: Relay | None = None) -> tuple[int, bool]:
    """Wait for the sandbox (relaying its streams, see sandbox.stdio) and enforce --timeout.

    Returns (status, timed_out).
    """
    if relay is not None:
        from . import stdio
        pidfd = os.pidfd_open(pid)
        try:
            ended = stdio.wait(pidfd, relay, timeout or None)
        finally:
            os.close(pidfd)
    else:
        ended = process.wait_exit(pid, timeout or None)
    if not ended:
        _kill_tree(pid, p)
    status = process.reap(pid)
    if relay is not None:
        relay.drain()
    return status, not ended
