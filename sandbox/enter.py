"""`sbx exec`: run a command inside a running sandbox, never more privileged than its workload.

    sbx exec (parent, host)        setns(pid) for its children; joins the child to the sandbox cgroup;
     │                              verifies the parked child from /proc; waits; relays the exit code
     └─ child (in the sandbox's pid ns)
          setns user -> mnt, net, uts, ipc, cgroup (fds opened from /proc/INIT/ns/* before any setns)
          chroot into /proc/INIT/root; then exactly the workload's stages, in launch's order:
          rlimits -> Landlock -> LSM exec label -> caps/uid -> no_new_privs -> seccomp -> parked -> execve

The BPF comes from the same seccomp.prepare() call launch makes (same profile,
same kept caps: byte-identical), Landlock from the same landlock.plan(spec);
the LSM label is the one the workload was verified to carry. The child is
verified like the workload (verify.check, plus: every namespace equals the
sandbox's) before it may exec, so a missing control kills it (fail closed).
No shell is needed: argv[0] is resolved on the sandbox's PATH and exec'd directly.
"""
from __future__ import annotations

import os
import signal

from . import facts, launch, namespaces, process, protocol, state, syscalls as sc
from .errors import SbxError, VerifyError
from .spec import Spec, spec_from_dict

# setns order: the user namespace first (it gives us the capabilities that own all the others); pid is
# entered separately (it applies to our children).
ENTER_ORDER = tuple(k for k in namespaces.KINDS if k != "pid")


def exec_in(entry: state.Entry, argv: list[str], *, env: list[str] = (), workdir: str | None = None,
            stderr=None) -> int:
    """Run argv inside the sandbox; returns its exit code (126/127 like run; 125 on refusal)."""
    from .lifecycle import open_init

    if not argv:
        raise SbxError("exec needs a command", where="exec")
    st = entry.status
    if st == state.PAUSED:
        raise SbxError(f"sandbox {entry.id[:12]} is paused; unpause it first", where="exec")
    if st != state.RUNNING:
        raise SbxError(f"sandbox {entry.id[:12]} is not running ({st})", where="exec")
    spec = spec_from_dict(entry.config["spec"])
    envd = spec.env_dict()
    for e in env:
        k, eq, v = e.partition("=")
        if not k:
            raise SbxError(f"bad -e value {e!r}: expected K=V", where="exec -e")
        envd[k] = v if eq else os.environ.get(k, "")
    pfd = open_init(entry)
    if pfd is None:
        raise SbxError(f"sandbox {entry.id[:12]} is not running (its init is gone)", where="exec")
    init_pid = entry.state["init_pid"]
    fds: dict[str, int] = {}
    root_fd = None
    try:
        try:
            for ns in ("pid",) + ENTER_ORDER:
                fds[ns] = os.open(f"/proc/{init_pid}/ns/{namespaces.PROC[ns]}", os.O_RDONLY | os.O_CLOEXEC)
            root_fd = os.open(f"/proc/{init_pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise SbxError(f"cannot open the sandbox's namespaces: {e.strerror}", where="exec") from None
        # The pid could have been recycled between open_init and the opens: re-check after.
        again = open_init(entry)
        if again is not None:
            os.close(again)
        if again is None or select_ready(pfd):
            raise SbxError(f"sandbox {entry.id[:12]} exited", where="exec")
        # The same plan function as `run`, joining: byte-identical BPF, the same Landlock rules,
        # the label the workload was verified to carry. Everything is imported before the chroot.
        plan = launch.plan(spec, entry.id, exec_label=entry.state.get("lsm_label"), joining=True)
        from . import cgroups
        cg = cgroups.open_existing(entry.id)
        rootless = bool((entry.state.get("idmap") or {}).get("rootless", os.geteuid() != 0))
        return _run(plan, entry, fds, root_fd, cg, argv, envd, workdir or spec.cwd, rootless, init_pid, stderr)
    finally:
        os.close(pfd)
        for fd in fds.values():
            os.close(fd)
        if root_fd is not None:
            os.close(root_fd)


def select_ready(pfd: int) -> bool:
    import select
    r, _, _ = select.select([pfd], [], [], 0)
    return bool(r)


def _run(plan: launch.Plan, entry: state.Entry, fds: dict[str, int], root_fd: int, cg, argv: list[str],
         env: dict[str, str], cwd: str, rootless: bool, init_pid: int, stderr) -> int:
    from . import events, stdio
    from .initproc import status_to_code

    chan = protocol.Channel()
    try:
        sc.setns(fds["pid"], sc.CLONE_NEWPID)  # our children are born in the sandbox's pid namespace
    except OSError as e:
        raise SbxError(f"cannot enter the sandbox's pid namespace: {e.strerror}", where="exec") from None
    relay = stdio.Relay.for_caller()  # the caller's terminal never reaches the sandbox
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child; never returns
        _child(plan, chan, fds, root_fd, argv, env, cwd, rootless, relay)
    chan.parent_close()
    if relay is not None:
        relay.in_parent()
    try:
        try:
            if cg is not None:
                cg.attach(pid)
            chan.give(protocol.EXEC_IN_CGROUP)
            ready = chan.expect(protocol.READY)[protocol.READY]
            _verify(plan.spec, entry, pid, init_pid, plan, cg)
            events.emit("exec_start", entry.id, entry.name, argv=list(argv)[:32], landlock_abi=ready.get("landlock_abi"))
            launch.release_and_confirm(chan, plan, pid, "exec'd command")
        except protocol.ExecFailed as e:
            launch.say(stderr, f"sbx: {e.msg.get('argv0', '')}: {e.msg.get(protocol.EXEC_FAILED)}")
            process.reap(pid)
            return e.code
        except BaseException:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.reap(pid)
            raise
        fwd = process.Forwarder()  # signals to `sbx exec` go to the exec'd command
        fwd.arm(pid)
        try:
            pidfd = os.pidfd_open(pid)
            try:
                stdio.wait(pidfd, relay, None)
            finally:
                os.close(pidfd)
            status = process.reap(pid)
            if relay is not None:
                relay.drain()
        finally:
            fwd.restore()
        code = status_to_code(status)
        events.emit("exec_die", entry.id, entry.name, exit_code=code)
        return code
    finally:
        if relay is not None:
            relay.close()
        chan.close()


def _verify(spec: Spec, entry: state.Entry, pid: int, init_pid: int, plan, cg) -> None:
    from .verify import check
    idmap = entry.state.get("idmap") or {}
    f = facts.read(pid, host_pid=os.getpid())
    v = check(spec, f, uid_map=idmap.get("uid_map") or (), gid_map=idmap.get("gid_map") or (), cgroup=cg)
    want = facts.read_ns(init_pid)
    for ns in namespaces.PROC_NAMES:
        v.need(f"same {ns} namespace as the sandbox", f.ns.get(ns) == want.get(ns) and ns in want,
               f"{f.ns.get(ns)} != {want.get(ns)}")
    if not v.ok:
        raise VerifyError("exec verification failed, command killed before exec: " + "; ".join(v.problems))


def _child(plan: launch.Plan, chan: protocol.Channel, fds: dict[str, int], root_fd: int, argv: list[str],
           env: dict[str, str], cwd: str, rootless: bool, relay) -> None:
    step = protocol.Steps("exec setup")
    try:
        step("pipes", chan.child_close)
        if relay is not None:
            step("standard streams", relay.in_child)
        step("new session", os.setsid)  # no controlling terminal, as for the workload
        # Born in the sandbox's pid namespace, our parent (outside it) reads as pid 0.
        step("parent death signal", process.die_with_parent, 0)
        step("wait for the cgroup", chan.wait, protocol.EXEC_IN_CGROUP)
        for ns in ENTER_ORDER:
            step(f"setns {ns}", sc.setns, fds[ns], namespaces.FLAG[ns])
        step("chroot", _chroot, root_fd)
        step("parent death signal", process.die_with_parent, 0)  # the id switch in setns cleared it
    except BaseException as e:  # noqa: BLE001 - a child must never unwind into the CLI
        protocol.die(chan, e, step.name)
    launch.confine_and_exec(plan, chan, argv, env, cwd, rootless=rootless)


def _chroot(root_fd: int) -> None:
    os.fchdir(root_fd)
    os.chroot(".")
