"""Launch orchestration: the whole sandbox start, stage by stage.

Process tree (host view), as with runc under conmon:

    sbx (parent: cgroup, id maps, verification, wait)
     └─ init   (pid 1 inside: mounts, hostname, network; once attached to the cgroup,
         │      a new cgroup namespace; then reaps and forwards signals)
         └─ workload (rlimits → Landlock → MAC → caps/uid → no_new_privs → seccomp → parked → execve)

Init comes from a short-lived setup child: it unshares every namespace but
cgroup (a new pid namespace only applies to the unsharer's children), forks
init and exits; init waits for its id maps and switches to the namespace's
root. sbx is a child subreaper while that happens, so init is re-parented to
sbx; sbx waits for init directly, and no third Python process lives as long as
the sandbox.

The sandbox's cgroup is created and init and the workload attached while init
builds its mounts: the first cgroup.procs write can wait a full RCU grace period
in the kernel (see cgwarm), and this way the sandbox's own setup runs meanwhile.
Init forks the workload before its mounts, parked on a pipe (a forked
interpreter's first steps are page faults; they overlap the mounts), and lets it
go only after the attach and init's new cgroup namespace (rooted at the
sandbox's cgroup), which the workload joins. Nothing of the workload runs
outside its cgroup.

Setup is synchronised with pipes, never sleeps. Children never return into the
caller's Python stack: every path ends in os._exit, errors travel to the parent
as one message on the status pipe. The parent verifies the parked workload
from /proc and only then lets it exec (fail closed).
"""
from __future__ import annotations

import _thread
import marshal
import os
import select
import sys
import time
from .records import field, record

from . import cgwarm, facts, syscalls as sc
from .sig import signal
from .errors import EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND, EXIT_REFUSED, EXIT_TIMEOUT, SbxError, VerifyError
from .spec import Spec

SETUP_TIMEOUT = 30.0
MAX_MSG = 4000  # one status message, framed, stays below PIPE_BUF
NS_ORDER = ("user", "mount", "pid", "net", "uts", "ipc", "cgroup")


@record
class Result:
    exit_code: int
    sandbox_id: str
    record: dict = field(default_factory=dict)
    oom_killed: bool = False
    timed_out: bool = False


@record
class Plan:
    """What the parent decided for this sandbox (before the first fork; the cgroup, after it)."""

    spec: Spec
    sandbox_id: str
    idmap: object
    cgroup: object = None
    seccomp_bpf: bytes | None = None
    landlock_rules: list | None = None
    mac: object = None
    net: object = None  # bridge networking plan: .attach(init_pid) after unshare, .release() at the end
    rootfs_src: object = None  # hostpath.HostPath of --rootfs, resolved by sbx
    bind_srcs: list = field(default_factory=list)  # hostpath.HostPath of each -v source
    notes: list[str] = field(default_factory=list)
    features: dict = field(default_factory=dict)


# ---------------------------------------------------------------- child side

class _Chan:
    """The two pipes every sandbox process shares with the parent.

    Status messages are small dicts of str/int/None, framed as a 2-byte length
    plus a marshal blob: marshal is built in (json would cost ~7 ms of imports
    per start), and only sbx's own code ever holds the write end: it is
    close-on-exec, so no workload inherits it.
    """

    def __init__(self) -> None:
        self.status_r, self.status_w = os.pipe2(os.O_CLOEXEC)  # sandbox -> parent, framed messages
        self.ctl_r, self.ctl_w = os.pipe2(os.O_CLOEXEC)  # parent -> sandbox, one-byte tokens

    def send(self, obj: dict) -> None:
        data = marshal.dumps(obj)
        if len(data) > MAX_MSG:
            data = marshal.dumps({k: (v[:1000] if isinstance(v, str) else v) for k, v in obj.items()})[:MAX_MSG]
        os.write(self.status_w, len(data).to_bytes(2, "big") + data)  # < PIPE_BUF: atomic with several writers

    def wait_token(self, expect: bytes) -> None:
        b = os.read(self.ctl_r, 1)
        if b != expect:
            os._exit(EXIT_REFUSED)  # parent gone or refused: never continue half set up

    def child_close(self) -> None:
        for fd in (self.status_r, self.ctl_w):
            _close(fd)

    def parent_close(self) -> None:
        for fd in (self.status_w, self.ctl_r):
            _close(fd)


def _close(fd: int | None) -> None:
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass


def _die(chan: _Chan, e: BaseException, stage: str) -> None:
    if os.environ.get("SBX_DEBUG"):
        try:
            import traceback  # not preloaded: after pivot_root this import may fail, and that is fine
            traceback.print_exception(e)
        except ImportError:
            pass
    try:
        if isinstance(e, SbxError):
            chan.send({"error": e.message, "code": e.code, "where": e.where, "stage": stage})
        else:
            tb = e.__traceback__
            while tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            loc = f"{tb.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno}" if tb else "?"
            chan.send({"error": f"{stage} failed: {type(e).__name__}: {e} ({loc})", "code": EXIT_REFUSED, "stage": stage})
    finally:
        os._exit(EXIT_REFUSED)


def _pdeathsig(expected_parent: int) -> None:
    sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != expected_parent:
        os._exit(EXIT_REFUSED)  # parent died before we armed the signal


def _setup_child(plan: Plan, chan: _Chan, parent: int, relay) -> None:
    """First child: still in the host pid namespace. Unshares, forks init, exits. Never returns."""
    stage = "setup"
    try:
        if relay is not None:
            relay.in_child()  # pipes, not the caller's terminal, become fds 0-2
        os.setsid()  # no controlling terminal: /dev/tty cannot reach the caller's
        for sig in _FORWARD:
            signal.signal(sig, signal.SIG_DFL)  # not sbx's forwarding handlers
        for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP, signal.SIGTSTP):
            signal.signal(sig, signal.SIG_IGN)  # inherited by init, which sets its own
        chan.child_close()
        _pdeathsig(parent)
        flags = 0
        for ns in NS_ORDER:
            if ns != "cgroup":  # init does that one, once it is in the sandbox's cgroup
                flags |= sc.NS_FLAGS[ns]
        stage = "unshare"
        sc.unshare(flags)
        stage = "fork init"
        pid = os.fork()  # pid 1 of the new pid namespace; it waits for its id maps itself
        if pid == 0:
            _init_child(plan, chan)
        chan.send({"init": pid})
        os._exit(0)  # init is re-parented to sbx (a subreaper now), which waits for it
    except BaseException as e:  # noqa: BLE001 - a child must never unwind into the caller
        _die(chan, e, stage)


def _init_child(plan: Plan, chan: _Chan) -> None:
    """pid 1 of the sandbox. Never returns.

    No parent-death signal until token 3: the setup process that forked us exits
    right away, and a parent-death signal would fire then. Until token 3, the
    end of sbx shows as EOF on the control pipe (wait_token exits on it).
    """
    from . import caps, mounts, net
    from .initproc import prepare_signals, run_init, set_title

    stage = "init"
    spec = plan.spec
    try:
        set_title("sbx-init")
        # The sandbox's files and the workload get docker's umask, not whatever the caller had
        # (a 077 caller would leave the new root untraversable for the workload's uid).
        os.umask(0o022)
        chan.wait_token(b"2")  # sbx wrote our uid/gid maps
        stage = "open sources"
        sources = mounts.open_sources(spec, plan.rootfs_src, plan.bind_srcs)  # before any mount or id switch
        stage = "id switch"
        if not plan.idmap.rootless:
            os.setresgid(0, 0, 0)
            os.setresuid(0, 0, 0)
            os.setgroups([])
        # Dumpable until confine_init, so the workload can open our /proc/1/ns/cgroup to join it
        # (after a uid switch our /proc files would be the host root's). Only sbx's own code runs
        # in the sandbox before then, and sbx checks that init is not dumpable before any exec.
        sc.prctl(sc.PR_SET_DUMPABLE, 1)
        stage = "hostname"
        sc.sethostname(spec.hostname)
        # The workload is forked now, parked on a pipe of ours: its start after fork (page faults
        # of a forked interpreter) overlaps our mounts. pivot_root moves its root and cwd with ours.
        prepare_signals()
        go_r, go_w = os.pipe2(os.O_CLOEXEC)  # init -> workload: root built, cgroup attached
        ns_r, ns_w = os.pipe2(os.O_CLOEXEC)  # workload -> init: it joined our cgroup namespace
        stage = "fork workload"
        pid = os.fork()
        if pid == 0:
            for fd in (go_w, ns_r):
                _close(fd)
            sources.close()  # O_PATH fds into the host's tree: never in the workload
            _workload(plan, chan, go_r, ns_w)
        _close(go_r)
        _close(ns_w)
        chan.send({"workload": "forked"})  # sbx finds its host pid as our one child
        stage = "mounts"
        mounts.setup(spec, sources, rootless=plan.idmap.rootless)
        stage = "network"
        net.setup_inside(spec.network)
        chan.wait_token(b"3")  # sbx adopted us (setup is reaped), put us and the workload in the cgroup
        sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)  # sbx is our parent now
        if select.select([chan.ctl_r], [], [], 0)[0]:
            os._exit(EXIT_REFUSED)  # EOF: sbx died between the token and the line above
        stage = "cgroup namespace"
        sc.unshare(sc.CLONE_NEWCGROUP)  # rooted at the sandbox's cgroup; the workload joins it
        os.write(go_w, b"g")
        _close(go_w)
        _close(chan.ctl_r)
        os.read(ns_r, 1)  # the workload joined (or died: EOF); it needed us dumpable until now
        _close(ns_r)
        stage = "init privileges"
        caps.confine_init()
        chan.send({"confined": "init"})  # sbx lets the workload exec only after this
        _close(chan.status_w)
        os._exit(run_init(pid))
    except BaseException as e:  # noqa: BLE001
        _die(chan, e, stage)


def _resolve_exe(argv0: str, env: dict[str, str]) -> str:
    if "/" in argv0:
        return argv0
    for d in env.get("PATH", "").split(":"):
        cand = os.path.join(d or ".", argv0)
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    for d in env.get("PATH", "").split(":"):
        cand = os.path.join(d or ".", argv0)
        if os.path.exists(cand):
            return cand  # exists but not executable: execve reports EACCES -> 126
    raise FileNotFoundError(argv0)


def _workload(plan: Plan, chan: _Chan, go_r: int, ns_w: int) -> None:
    """The workload process. Never returns.

    Forked by init before its mounts; waits until init has built the root, sbx has
    put this process in the sandbox's cgroup and init has the sandbox's cgroup
    namespace (rooted there), joins that namespace, tells init, and confines itself.
    """
    spec = plan.spec
    stage = "workload"
    try:
        env = spec.env_dict()
        if os.read(go_r, 1) != b"g":
            os._exit(EXIT_REFUSED)  # init failed or was killed: never continue half set up
        _close(go_r)
        stage = "cgroup namespace"
        fd = os.open("/proc/1/ns/cgroup", os.O_RDONLY | os.O_CLOEXEC)  # the sandbox's /proc: 1 is init
        try:
            sc.setns(fd, sc.CLONE_NEWCGROUP)
        finally:
            os.close(fd)
        os.write(ns_w, b"j")
        _close(ns_w)
    except BaseException as e:  # noqa: BLE001
        _die(chan, e, stage)
    confine_and_exec(plan, chan, list(spec.argv), env, spec.cwd, rootless=plan.idmap.rootless)


def confine_and_exec(plan: Plan, chan: _Chan, argv: list[str], env: dict[str, str], cwd: str, *,
                     rootless: bool) -> None:
    """The last stages, in order, then parked until the parent verified us, then execve. Never returns.

    Shared by the workload and `sbx exec` (sandbox.enter), so an exec'd command can never be
    confined differently from the workload: rlimits -> Landlock -> MAC label -> caps/uid ->
    no_new_privs -> fds -> seccomp (last, just before exec).
    """
    from . import caps, rlimits
    from .initproc import reset_for_exec

    spec = plan.spec
    stage = "cwd"
    report: dict = {}
    try:
        try:
            os.chdir(cwd)
        except OSError as e:
            raise SbxError(f"working directory {cwd} is not usable in the sandbox: {e.strerror}") from None
        stage = "rlimits"
        rlimits.apply(spec.rlimits)
        if plan.landlock_rules is not None:
            stage = "landlock"
            from . import landlock
            report["landlock_abi"] = landlock.apply(plan.landlock_rules)
        if plan.mac is not None:
            stage = "mac"
            from . import mac
            mac.apply(plan.mac)
        stage = "capabilities"
        caps.drop(spec.security.capabilities, spec.uid, spec.gid, rootless=rootless)
        if spec.security.no_new_privs:
            stage = "no_new_privs"
            caps.set_no_new_privs()
        stage = "fds"
        # Nothing of the host leaks in: every inherited fd but 0-2 closes at exec.
        _close_range_cloexec(3)
        stage = "exec lookup"
        try:
            exe = _resolve_exe(argv[0], env)
        except FileNotFoundError:
            chan.send({"exec_error": "not found", "code": EXIT_NOT_FOUND, "argv0": argv[0]})
            os._exit(EXIT_NOT_FOUND)
        reset_for_exec()
        if plan.seccomp_bpf is not None:
            stage = "seccomp"
            from . import seccomp
            seccomp.install(plan.seccomp_bpf)
        chan.send({"ready": report})
        chan.wait_token(b"G")
        try:
            os.execve(exe, list(argv), env)
        except OSError as e:
            code = EXIT_NOT_FOUND if e.errno == 2 else EXIT_NOT_EXECUTABLE
            chan.send({"exec_error": e.strerror, "code": code, "argv0": argv[0]})
            os._exit(code)
    except BaseException as e:  # noqa: BLE001
        _die(chan, e, stage)


def _close_range_cloexec(first: int) -> None:
    try:
        import ctypes
        CLOSE_RANGE_CLOEXEC = 1 << 2
        if sc.libc().syscall(ctypes.c_long(436), ctypes.c_uint(first), ctypes.c_uint(0xFFFFFFFF),
                             ctypes.c_uint(CLOSE_RANGE_CLOEXEC)) == 0:
            return
    except OSError:
        pass
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd >= first:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass


# ---------------------------------------------------------------- parent side

def prepare(spec: Spec, sandbox_id: str) -> Plan:
    """Everything that can fail before a process exists: refuse early, with one line."""
    from . import rlimits, userns

    if spec.policy:
        # Admission belongs to the launch itself, so no entry point (CLI, API, `sbx start`,
        # a supervisor) can start a sandbox its policy refuses.
        from .admission import admit
        admit(spec)
    rlimits.check(spec.rlimits)
    fs = spec.filesystem
    rootfs_src, bind_srcs = None, []
    if fs.rootfs or fs.binds:
        from . import hostpath
        rootfs_src = hostpath.resolve(fs.rootfs, what="--rootfs") if fs.rootfs else None
        bind_srcs = [hostpath.resolve(b.source, what="-v") for b in fs.binds]
    idmap = userns.plan(spec)
    plan = Plan(spec=spec, sandbox_id=sandbox_id, idmap=idmap, rootfs_src=rootfs_src, bind_srcs=bind_srcs)
    try:
        _prepare_security(plan)
        # Before the cgroup: mkdir there waits on cgroup_mutex while cgwarm's grace period runs,
        # so everything that does not touch cgroups goes first.
        _preload(plan)
        if spec.resources.requested():
            from . import cgroups
            cgroups.check(sandbox_id, spec.resources)  # bad values refuse before anything exists
        if spec.network == "bridge":
            from . import netbridge  # pyroute2 is imported there, and only for bridge mode
            plan.net = netbridge.prepare(spec, sandbox_id)
    except BaseException:
        release(plan)
        raise
    return plan


def create_cgroup(plan: Plan) -> None:
    """The sandbox's cgroup with every limit written (run() calls this once the setup child is busy)."""
    spec = plan.spec
    if not spec.resources.requested():
        return
    from . import cgroups
    plan.cgroup = cgroups.create(plan.sandbox_id, spec.resources, degrade=spec.degrade)
    if plan.cgroup is not None and getattr(plan.cgroup, "degraded", None):
        for d in plan.cgroup.degraded:
            plan.notes.append(f"degraded: {d} not enforced (profile allows degrade)")
    plan.features["cgroup"] = cgroups.detect()


def _preload(plan: Plan) -> None:
    """Import in the parent everything the sandbox processes will run.

    After the id switch and pivot_root the children cannot read the Python
    installation (it may live under a 0700 home, and is not in the new root),
    so a lazy import there would fail.
    """
    from . import caps, initproc, mounts, net, rlimits  # noqa: F401
    if plan.seccomp_bpf is not None:
        from . import seccomp  # noqa: F401
    if plan.landlock_rules is not None:
        from . import landlock  # noqa: F401
    if plan.mac is not None:
        from . import mac  # noqa: F401


def _prepare_security(plan: Plan) -> None:
    spec = plan.spec
    sec = spec.security
    if sec.seccomp != "unconfined":
        from . import seccomp
        plan.seccomp_bpf = seccomp.prepare(sec.seccomp, frozenset(sec.capabilities))
        plan.features["seccomp"] = sec.seccomp
    else:
        plan.notes.append("seccomp: unconfined (requested)")
    if sec.landlock != "off":
        from . import landlock
        lp = landlock.plan(spec)
        if lp is None:
            plan.notes.append("landlock: not available")
        else:
            plan.landlock_rules = lp.rules if hasattr(lp, "rules") else lp
        plan.features["landlock_abi"] = landlock.abi_version()
    if sec.apparmor != "off" or sec.selinux != "off":
        from . import mac
        mp = mac.prepare(sec, plan.sandbox_id)
        plan.notes.extend(getattr(mp, "notes", []) or [])
        if getattr(mp, "apparmor_profile", None) or getattr(mp, "selinux_context", None):
            plan.mac = mp


def release(plan: Plan) -> None:
    if plan.net is not None:
        try:
            plan.net.release()
        except Exception:  # noqa: BLE001 - best effort; netbridge reaps leftovers on next start
            pass
        plan.net = None
    if plan.cgroup is not None:
        try:
            plan.cgroup.destroy()
        except Exception:  # noqa: BLE001 - best effort; reap_stale retries next start
            pass
        plan.cgroup = None
    plan.idmap.release()


def _read_msg(fd: int, buf: bytearray, deadline: float | None) -> dict | None:
    """Next message from the status pipe; None on EOF."""
    while len(buf) < 2 or len(buf) < 2 + int.from_bytes(buf[:2], "big"):
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SbxError("sandbox setup timed out")
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                raise SbxError("sandbox setup timed out")
        chunk = os.read(fd, 4096)
        if not chunk:
            return None
        buf.extend(chunk)
    n = int.from_bytes(buf[:2], "big")
    blob = bytes(buf[2:2 + n])
    del buf[:2 + n]
    try:
        msg = marshal.loads(blob)
    except (ValueError, EOFError, TypeError):
        msg = None
    if not isinstance(msg, dict):
        return {"error": "garbled message from the sandbox", "code": EXIT_REFUSED}
    return msg


def _expect(chan: _Chan, buf: bytearray, key: str, early: list[dict]) -> dict:
    """The next message carrying `key`.

    Setup and the workload write to the same pipe from different processes, so
    the workload's "ready" can overtake setup's "init" (setup reports the init
    pid only after forking it). Such an early message is kept in `early` for
    the later _expect that wants it; errors are raised at once.
    """
    for i, m in enumerate(early):
        if key in m:
            return early.pop(i)
    while True:
        msg = _read_msg(chan.status_r, buf, time.monotonic() + SETUP_TIMEOUT)
        if msg is None:
            raise SbxError(f"sandbox setup died before '{key}'")
        if "error" in msg:
            raise _sandbox_error(msg)
        if "exec_error" in msg:
            raise _ExecError(msg)
        if key in msg:
            return msg
        if not any(k in msg for k in ("init", "workload", "ready", "confined")):
            raise SbxError(f"sandbox setup sent an unknown message {sorted(msg)}")
        early.append(msg)


def _pending_error(chan: _Chan, buf: bytearray, init_pid: int | None) -> SbxError | None:
    """The error a failed sandbox process already sent, if any.

    If init is gone, its last message is on its way: wait for it (up to 1 s,
    EOF comes as soon as the namespace's processes are gone). If init still
    runs, only what is already in the pipe counts.
    """
    gone = init_pid is None
    if not gone:
        try:
            gone = facts.read_stat(init_pid).state in ("Z", "X")
        except Exception:  # noqa: BLE001 - unreadable means gone
            gone = True
    deadline = time.monotonic() + (1.0 if gone else 0.05)
    while True:
        try:
            if not gone and not select.select([chan.status_r], [], [], 0)[0] and len(buf) < 2:
                return None
            msg = _read_msg(chan.status_r, buf, deadline)
        except (SbxError, OSError):
            return None
        if msg is None:
            return None
        if "error" in msg:
            return _sandbox_error(msg)


def _sandbox_error(msg: dict) -> SbxError:
    e = SbxError(msg["error"], code=msg.get("code", EXIT_REFUSED), where=msg.get("where"))
    e.from_sandbox = True
    return e


def release_and_confirm(chan: _Chan, buf: bytearray, plan: Plan, pid: int, what: str) -> str | None:
    """Let a verified, parked process exec; confirm it did, and check the LSM label it now carries.

    Shared by the workload and `sbx exec`. EOF on the status pipe means the exec
    happened (the process's end is close-on-exec); an exec failure raises
    _ExecError, a missing label VerifyError. Returns the label in effect.
    """
    os.write(chan.ctl_w, b"G")
    msg = _read_msg(chan.status_r, buf, time.monotonic() + SETUP_TIMEOUT)
    if msg is not None and "exec_error" in msg:
        raise _ExecError(msg)
    if msg is not None and "error" in msg:
        raise SbxError(msg["error"], code=msg.get("code", EXIT_REFUSED))
    if plan.mac is None:
        return None
    from . import mac
    from .verify import check_label
    label, problem = check_label(pid, mac.expected_label(plan.mac))
    if problem:
        raise VerifyError(f"verification failed after exec, {what} killed: {problem}")
    return label


class _ExecError(Exception):
    def __init__(self, msg: dict):
        self.msg = msg


def run(spec: Spec, *, sandbox_id: str | None = None, on_started=None, stderr=None) -> Result:
    """Run one sandbox to completion. Raises SbxError for refusals (exit 125)."""
    sid = sandbox_id or os.urandom(32).hex()
    t0 = time.monotonic()
    warm = cgwarm.take()  # the CLI starts one at its first line
    if spec.resources.requested():
        warm = warm or cgwarm.start()
    elif warm is not None:
        warm.stop()  # no cgroup for this sandbox
        warm = None
    try:
        plan = prepare(spec, sid)
    except BaseException:
        if warm is not None:
            warm.stop()
        raise
    record: dict = {"id": sid, "spec_digest": spec.digest(), "profile": spec.profile, "argv": list(spec.argv),
                    "notes": plan.notes, "features": plan.features, "idmap": plan.idmap.describe(),
                    "started": time.time()}
    chan = _Chan()
    parent = os.getpid()
    relay = None
    if _any_tty():
        from . import stdio  # only an interactive caller pays for the relay
        relay = stdio.Relay.for_caller()
    fwd = _Forwarder()
    _subreaper(True)
    try:
        setup_pid = os.fork()
    except OSError as e:
        _subreaper(False)
        fwd.restore()
        if relay is not None:
            relay.in_parent()
            relay.close()
        release(plan)
        raise SbxError(f"fork failed: {e.strerror}") from None
    if setup_pid == 0:
        _setup_child(plan, chan, parent, relay)
    chan.parent_close()
    if relay is not None:
        relay.in_parent()
    buf = bytearray()
    early: list[dict] = []
    init_pid = workload_pid = None
    setup_alive = True
    timed_out = False
    try:
        try:
            init_pid = _expect(chan, buf, "init", early)["init"]  # setup unshared and forked init
            from . import userns
            userns.write_maps(init_pid, plan.idmap)
            if plan.net is not None:
                plan.net.attach(init_pid)  # veth into the new net namespace, before anything runs there
                record["network"] = plan.net.describe()
            os.write(chan.ctl_w, b"2")
            _reap(setup_pid)  # setup exits right after forking init, which is now re-parented to us
            setup_alive = False
            _subreaper(False)
            fwd.arm(init_pid)
            # Init builds its mounts while we create the cgroup; its workload waits for token 3.
            create_cgroup(plan)
            if plan.cgroup is not None:
                record["cgroup"] = plan.cgroup.describe()
                for note in plan.notes:
                    if note.startswith("degraded"):
                        _print(stderr, f"sbx: warning: {note}")
            _expect(chan, buf, "workload", early)
            kids = facts.read_children(init_pid)  # host pids; init knows only its own namespace's
            if len(kids) != 1:
                raise VerifyError(f"expected one workload process under the sandbox init, found {kids}")
            workload_pid = kids[0]
            if plan.cgroup is not None:
                plan.cgroup.attach(init_pid)
                plan.cgroup.attach(workload_pid)  # forked before init was attached
            if warm is not None:
                warm.stop()
            os.write(chan.ctl_w, b"3")
            if plan.cgroup is not None:
                _reap_stale_cgroups()  # while the sandbox finishes its setup, not before it starts
            ready = _expect(chan, buf, "ready", early)["ready"]
            record["landlock_abi"] = ready.get("landlock_abi")
            kids = facts.read_children(init_pid)
            if kids != [workload_pid]:
                raise VerifyError(f"expected one workload process ({workload_pid}) under the sandbox init, "
                                  f"found {kids}")
            f = facts.read(workload_pid, host_pid=parent)
            from .verify import check, check_init
            v = check(spec, f, host_uid=plan.idmap.host_uid(spec.uid), host_gid=plan.idmap.host_gid(spec.gid),
                      seccomp_expected=plan.seccomp_bpf is not None, cgroup=plan.cgroup)
            record["verification"] = v.to_dict()
            if not v.ok:
                raise VerifyError("verification failed, workload killed before exec: " + "; ".join(v.problems))
            _expect(chan, buf, "confined", early)
            vi = check_init(init_pid)
            if not vi.ok:
                raise VerifyError("verification failed, workload killed before exec: " + "; ".join(vi.problems))
            label = release_and_confirm(chan, buf, plan, workload_pid, "workload")
            if plan.mac is not None:
                record["lsm_label"] = label
        except _ExecError as e:
            code = e.msg.get("code", EXIT_NOT_EXECUTABLE)
            _print(stderr, f"sbx: {e.msg.get('argv0', '')}: {e.msg.get('exec_error')}")
            _reap(init_pid)
            record.update(exit_code=code, finished=time.time())
            return Result(code, sid, record)
        except BaseException as e:
            # A sandbox process that failed (say, init refusing a hostile rootfs) may already have
            # said why while sbx tripped over its absence (a cgroup attach, a missing child): its
            # own message is the one to report.
            cause = _pending_error(chan, buf, init_pid) if isinstance(e, SbxError) and not e.from_sandbox \
                else None
            # Setup reports init's pid right after forking it, so an init we do not know of can
            # only exist if setup died mid-report; it then exits on the pipe's EOF.
            for p in (init_pid, setup_pid if setup_alive else None):
                if p is not None:
                    _kill_tree(p, plan)
            if setup_alive:
                _reap(setup_pid)
                _subreaper(False)
            if init_pid is not None:
                _reap(init_pid)  # ours by now: setup is gone and we were its subreaper
            if cause is not None:
                raise cause from None
            raise
        record["startup_ms"] = round((time.monotonic() - t0) * 1000, 2)
        if on_started is not None:
            on_started(sid, init_pid, workload_pid, record=record)
        status, timed_out = _wait(init_pid, spec.timeout, plan, relay)
        from .initproc import status_to_code
        code = EXIT_TIMEOUT if timed_out else status_to_code(status)
        oom = False
        if plan.cgroup is not None:
            try:
                oom = bool(plan.cgroup.oom_killed())
                hits = plan.cgroup.pids_max_hits()
                record["limits_hit"] = {"oom_kill": oom, "pids_max": hits}
            except Exception as e:  # noqa: BLE001
                record["limits_hit"] = {"error": str(e)}
        if oom:
            mem = spec.resources.memory
            _print(stderr, f"sbx: sandbox {sid[:12]} was killed by the OOM killer at its memory limit"
                           + (f" ({mem} bytes)" if mem else ""))
        record.update(exit_code=code, finished=time.time(), timed_out=timed_out, oom_killed=oom)
        return Result(code, sid, record, oom_killed=oom, timed_out=timed_out)
    finally:
        if warm is not None:
            warm.stop()
        if relay is not None:
            relay.close()
        fwd.restore()
        _close(chan.ctl_w)
        _close(chan.status_r)
        release(plan)


def _reap_stale_cgroups() -> None:
    """Remove the cgroups a SIGKILLed sbx left behind.

    Done while init and the workload finish their setup (the parent only waits
    then) rather than before the start: leftovers never collide with a new
    sandbox (ids are unique), so nothing needs them gone first.
    """
    from . import cgroups
    try:
        cgroups.reap_stale()
    except Exception:  # noqa: BLE001 - housekeeping must not fail a running sandbox
        pass


def _print(stream, text: str) -> None:
    if not text:
        return
    stream = stream or sys.stderr
    try:
        stream.write(text + "\n")
        stream.flush()
    except (OSError, ValueError):
        pass


def _kill_tree(pid: int, plan: Plan) -> None:
    # SIGKILL on init takes the whole pid namespace with it.
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if plan.cgroup is not None:
        try:
            plan.cgroup.kill_all()
        except Exception:  # noqa: BLE001
            pass


_reaper = {"users": 0, "was_set": False}
_reaper_lock = _thread.allocate_lock()


def _subreaper(on: bool) -> None:
    """Be a child subreaper while some run() is between forking setup and adopting its init.

    Counted, for concurrent run() calls from several threads; a process that was
    a subreaper already (a service manager, say) is left as it was.
    """
    with _reaper_lock:
        before = _reaper["users"]
        after = max(0, before + (1 if on else -1))
        _reaper["users"] = after
        if before == 0 and after > 0:
            _reaper["was_set"] = _is_subreaper()
            if not _reaper["was_set"]:
                sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 1)
        elif before > 0 and after == 0 and not _reaper["was_set"]:
            sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 0)


def _is_subreaper() -> bool:
    import ctypes
    val = ctypes.c_int(0)
    sc.libc().prctl(ctypes.c_int(sc.PR_GET_CHILD_SUBREAPER), ctypes.byref(val), 0, 0, 0)
    return bool(val.value)


def _reap(pid: int) -> int:
    while True:
        try:
            return os.waitpid(pid, 0)[1]
        except InterruptedError:
            continue
        except ChildProcessError:
            return 0


_FORWARD = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
            signal.SIGWINCH)


class _Forwarder:
    """Signals to sbx go to the sandbox's init (which forwards them to the workload).

    Installed before the first fork, so a SIGTERM that arrives while the
    sandbox is starting is not lost (nor kills sbx and, through the
    parent-death signal, the sandbox): it is held until init exists.
    Only in the main thread (the API may run sandboxes from worker threads).
    """

    def __init__(self) -> None:
        self._owner = os.getpid()
        self.target: int | None = None
        self.pending: list[int] = []
        self.old: dict = {}
        try:
            first = signal.getsignal(_FORWARD[0])
            signal.signal(_FORWARD[0], first)
        except ValueError:
            return  # not the main thread: Python delivers signals only there, leave handlers alone
        for sig in _FORWARD:
            self.old[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signo, _frame) -> None:
        if os.getpid() != self._owner:
            return  # a forked sandbox process before it reset its handlers
        # The sandbox is a session of its own: a terminal's ^C reaches only sbx, which passes it on.
        if self.target is None:
            self.pending.append(signo)
            return
        try:
            os.kill(self.target, signo)
        except ProcessLookupError:
            pass

    def arm(self, init_pid: int) -> None:
        self.target = init_pid
        while self.pending:
            self._on_signal(self.pending.pop(0), None)

    def restore(self) -> None:
        for sig, h in self.old.items():
            signal.signal(sig, h)
        self.old = {}


def _any_tty() -> bool:
    for fd in (0, 1, 2):
        try:
            if os.isatty(fd):
                return True
        except OSError:
            pass
    return False


def _wait(pid: int, timeout: float | None, plan: Plan, relay=None) -> tuple[int, bool]:
    """Wait for the sandbox (relaying its streams, see sandbox.stdio) and enforce --timeout.

    Returns (status, timed_out).
    """
    pidfd = os.pidfd_open(pid)
    try:
        if relay is not None:
            from . import stdio
            ended = stdio.wait(pidfd, relay, timeout or None)
        else:
            deadline = time.monotonic() + timeout if timeout else None
            while True:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                if select.select([pidfd], [], [], left)[0]:
                    ended = True
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    ended = False
                    break
        if not ended:
            _kill_tree(pid, plan)
        status = _reap(pid)
        if relay is not None:
            relay.drain()
        return status, not ended
    finally:
        os.close(pidfd)
