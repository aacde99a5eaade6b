"""Audit orchestration: discover containers, read each init's facts once, build Subjects, run checks."""
from __future__ import annotations

from dataclasses import dataclass, field

from sandbox import facts

from . import checks as _checks
from .discover import Container, discover, runtime_states, scan_processes, select
from .hostinfo import HostInfo, read_host
from .subject import Subject, _Cache, subject_from_facts


@dataclass
class Result:
    container: Container
    subject: Subject | None
    findings: list[_checks.Finding] = field(default_factory=list)
    error: str | None = None
    risk: list[_checks.Finding] | None = None
    command: list[str] = field(default_factory=list)  # the judged process's argv (bounded, hostile)  # the catalogue's findings when `findings` holds policy violations

    @property
    def score(self) -> int:
        return _checks.score(self.findings if self.risk is None else self.risk)

    @property
    def pss(self) -> str:
        return _checks.pss_level(self.findings if self.risk is None else self.risk)

    @property
    def worst(self) -> str | None:
        return _checks.worst(self.findings)


def audit_container(c: Container, host: HostInfo, cache: _Cache | None = None) -> Result | None:
    """Full facts for the container's init only. None when it vanished mid-scan."""
    try:
        pid = c.init_pid
        status = c.init_status or facts.read_status(pid)
        ns = dict(c.init_ns) if c.init_ns else facts.read_ns(pid)
        mounts, complete = facts.read_mountinfo_ex(pid)
        pf = facts.ProcFacts(pid=pid, status=status, uid_map=facts.read_idmap(pid, "uid"),
                             gid_map=facts.read_idmap(pid, "gid"), ns=ns, mounts=mounts,
                             cgroups=c.init_cgroups or facts.read_cgroup(pid), lsm_label=facts.read_lsm_label(pid),
                             host_ns=host.ns)
        argv = facts.read_cmdline(pid, 4096)
        subj = subject_from_facts(pf, host, comms=list(c.comms.values()), name=c.display, runtime=c.runtime,
                                  group_pids=c.pids, cache=cache, mounts_complete=complete,
                                  forwarders=c.forwarders, declared_ports=c.declared_ports)
        subj.image, subj.image_pinned = c.image, c.image_pinned  # from the runtime's state (discover.enrich)
    except facts.ProcessGone:
        return None
    except OSError as e:
        return Result(c, None, [], error=f"cannot read pid {c.init_pid}: {e.strerror or e}")
    return Result(c, subj, _checks.run_checks(subj), command=argv)


def audit(ref: str | None = None, pid: int | None = None, runtime: str | None = None,
          host: HostInfo | None = None) -> list[Result]:
    """Audit every container on the host (or those selected). Worst first."""
    import gc
    # A scan allocates many small, acyclic objects: the cyclic GC only adds pauses that grow
    # with the heap (superlinear on 1000 containers). Reference counting frees them anyway.
    was = gc.isenabled()
    gc.disable()
    try:
        host = host or read_host()
        scan = scan_processes(host.ns, runtime_states())
        # API sockets are recognised by the process listening on them, at any path.
        host.add_daemon_sockets(scan.table)
        found = select(discover(host.ns, scan), ref=ref, pid=pid, runtime=runtime)
        cache = _Cache()
        results = [r for r in (audit_container(c, host, cache) for c in found) if r is not None]
    finally:
        if was:
            gc.enable()
    results.sort(key=lambda r: (r.score, -len(r.findings), r.container.runtime, r.container.init_pid))
    return results
