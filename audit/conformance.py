"""Policy rules as checks on a Subject: the same engine for admission (a Spec) and conformance (a live container).

A policy is a set of parametrised checks with stable IDs (SBX-Pxxx). They read
only the Subject (audit.subject), exactly like the risk catalogue in
audit.checks, and decide through the same predicates (audit.predicates: what
"privileged" is, which mounts really expose a host path, which runtime sockets
the process can use), so `sbx run --policy`, `sbx audit --policy`,
`sbx policy check` and the risk findings can never disagree.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field, replace

from sandbox import namespaces

from . import predicates as P
from .checks import Finding
from .policy import Policy
from .policy_images import RULES as _IMAGE_RULES
from .subject import Subject

CRITICAL, HIGH, MEDIUM, LOW, INFO = "critical", "high", "medium", "low", "info"

# ID -> (title, severity). Stable: documented in policies/POLICY.md.
RULES: dict[str, tuple[str, str]] = {
    "SBX-P001": ("capability not in the policy's allowed set", HIGH),
    "SBX-P002": ("capability the policy always denies", CRITICAL),
    "SBX-P003": ("privileged container (full capability bounding set)", CRITICAL),
    "SBX-P010": ("runs as root but the policy requires non-root", HIGH),
    "SBX-P011": ("uid outside the policy's allowed ranges", MEDIUM),
    "SBX-P012": ("no user namespace (or uid 0 is host root) but the policy requires one", HIGH),
    "SBX-P020": ("writable root filesystem but the policy requires read-only", MEDIUM),
    "SBX-P021": ("no_new_privs not set but the policy requires it", HIGH),
    "SBX-P022": ("seccomp filter missing or not the required profile", HIGH),
    "SBX-P023": ("Landlock required but not applied", MEDIUM),
    "SBX-P024": ("LSM label not in the policy's allowed list", HIGH),
    "SBX-P030": ("namespace shared with the host that the policy does not allow", CRITICAL),
    "SBX-P040": ("host path the policy denies is mounted", CRITICAL),
    "SBX-P041": ("container runtime socket mounted", CRITICAL),
    "SBX-P042": ("host path mounted read-write outside the policy's rw allow-list", HIGH),
    "SBX-P050": ("memory limit missing or above the policy maximum", MEDIUM),
    "SBX-P051": ("pids limit missing or above the policy maximum", MEDIUM),
    "SBX-P052": ("cpu limit missing or above the policy maximum", LOW),
    "SBX-P053": ("rlimit above the policy ceiling", LOW),
    "SBX-P060": ("network mode not allowed by the policy", HIGH),
    "SBX-P061": ("published port outside the policy's range", MEDIUM),
    "SBX-P062": ("listening on all interfaces where the policy forbids it", MEDIUM),
    **_IMAGE_RULES,  # SBX-P070/P071: the images: rule (audit/policy_images.py)
    "SBX-P099": ("waiver expired", LOW),
}


def _f(rule: str, message: str, **evidence) -> Finding:
    title, sev = RULES[rule]
    return Finding(check_id=rule, severity=sev, title=title, message=message, evidence=evidence)


def _under(path: str, prefix: str) -> bool:
    prefix = prefix.rstrip("/") or "/"
    if prefix == "/":
        return path == "/"
    return path == prefix or path.startswith(prefix + "/")


def evaluate(policy: Policy, s: Subject, *, spec=None) -> list[Finding]:
    """Every violation of `policy` by subject `s`. `spec` (admission) adds what /proc cannot show."""
    out: list[Finding] = []
    caps = set(s.cap_eff | s.cap_prm | s.cap_amb | s.cap_bnd)
    allowed = policy.allowed_caps()
    if allowed is not None:
        extra = sorted(caps - allowed)
        if extra:
            out.append(_f("SBX-P001", f"capabilities {', '.join(extra)} are not in the allowed set "
                                      f"({', '.join(sorted(allowed)) or 'none'})", caps=extra))
    bad = sorted(caps & policy.denied_caps())
    if bad:
        out.append(_f("SBX-P002", f"denied capabilities present: {', '.join(bad)}", caps=bad))
    signs = P.privileged_signs(s)
    if policy.get("capabilities.privileged") == "forbidden" and signs:
        out.append(_f("SBX-P003", "privileged: full capability bounding set with " + ", ".join(signs), signs=signs))

    # uids are the container's own (inside its user namespace): what `--user` and runAsUser say.
    if policy.get("identity.run_as_non_root") is True and s.uid == 0:
        out.append(_f("SBX-P010", "the workload's uid is 0" + (f" (host uid {s.host_uid})" if s.userns else ""),
                      uid=0, host_uid=s.host_uid))
    ranges = policy.uid_ranges()
    if ranges and s.uid is not None and not any(lo <= s.uid <= hi for lo, hi in ranges):
        out.append(_f("SBX-P011", f"uid {s.uid} is outside {', '.join(f'{a}-{b}' for a, b in ranges)}",
                      uid=s.uid, host_uid=s.host_uid))
    if policy.get("identity.userns_required") is True and (not s.userns or s.root_maps_host_root):
        out.append(_f("SBX-P012", "no private user namespace" if not s.userns else "an id maps to host root"))

    if policy.get("controls.read_only_root") == "required" and s.root_readonly is False:
        out.append(_f("SBX-P020", "the root filesystem is writable"))
    if policy.get("controls.no_new_privs") == "required" and s.no_new_privs is False:
        out.append(_f("SBX-P021", "NoNewPrivs is 0"))
    sc = policy.get("controls.seccomp")
    if sc not in (None, "optional"):
        if s.seccomp != 2:
            out.append(_f("SBX-P022", f"seccomp mode is {s.seccomp} (no filter)", seccomp=s.seccomp))
        elif sc != "any" and spec is not None and spec.security.seccomp != sc:
            out.append(_f("SBX-P022", f"seccomp profile is {spec.security.seccomp!r}, the policy requires {sc!r}"))
    if policy.get("controls.landlock") == "required" and spec is not None and spec.security.landlock == "off":
        out.append(_f("SBX-P023", "Landlock is switched off"))
    aa = policy.get("controls.apparmor_profiles") or []
    se = policy.get("controls.selinux_types") or []
    if (aa or se) and s.mac_enabled:
        label = s.lsm_label or ""
        se_type = label.split(":")[2] if label.count(":") >= 3 else None
        aa_name = label.split(" (")[0] if label else None
        if not ((aa and aa_name in aa) or (se and se_type in se)):
            out.append(_f("SBX-P024", f"LSM label {label or 'none'!r} is not allowed", label=label))

    shared_ok = {namespaces.proc_name(n) or n for n in policy.get("namespaces.host_shared_allowed", []) or []}
    for ns in sorted(set(s.host_namespaces) - shared_ok - {"time"}):
        out.append(_f("SBX-P030", f"{ns} namespace is shared with the host", namespace=ns))

    denied = policy.get("mounts.denied_host_paths", []) or []
    rw_ok = policy.get("mounts.rw_allowed_host_paths", []) or []
    for m in P.host_binds(s):
        hit = next((d for d in denied if _under(m.source, d)), None)
        if hit:
            out.append(_f("SBX-P040", f"host path {m.source} mounted at {m.target} (policy denies {hit})",
                          source=m.source, target=m.target))
        elif not m.readonly and m.target != "/" and not any(_under(m.source, p) for p in rw_ok):
            out.append(_f("SBX-P042", f"host path {m.source} is mounted read-write at {m.target}",
                          source=m.source, target=m.target))
    if policy.get("mounts.runtime_sockets") == "forbidden":
        for m, k, _ in P.reachable_sockets(s):
            out.append(_f("SBX-P041", f"{k.runtime} runtime socket reachable at {k.path}",
                          socket=k.runtime, target=m.target))

    out += _resources(policy, s, spec)

    modes = policy.get("network.allowed_modes")
    host_net = P.host_network(s)
    if host_net and policy.get("network.host_network") == "forbidden" and "net" not in shared_ok:
        if not any(f.check_id == "SBX-P030" and f.evidence.get("namespace") == "net" for f in out):
            out.append(_f("SBX-P060", "the container uses the host network"))
    elif modes and s.network and s.network not in modes and s.network != "private":
        out.append(_f("SBX-P060", f"network mode {s.network!r} is not in {', '.join(modes)}", mode=s.network))
    pr = policy.port_range()
    for p in s.published_ports:
        host_port = P.host_port(p)
        if host_port is None:
            continue
        if pr and not pr[0] <= host_port <= pr[1]:
            out.append(_f("SBX-P061", f"published port {p} is outside {pr[0]}-{pr[1]}", port=p))
    if policy.get("network.bind_all_interfaces") == "forbidden":
        for lst in list(s.listeners_all_interfaces) + P.wildcard_ports(s):
            out.append(_f("SBX-P062", f"{lst} listens on all interfaces", listener=lst))
    from .policy_images import evaluate as _images
    out += _images(policy, s, _f)
    return out


def _resources(policy: Policy, s: Subject, spec) -> list[Finding]:
    from sandbox.values import parse_size
    out = []
    # (policy key, rule, what the Subject measured, how the policy writes its maximum, how to show it)
    for key, rule, have, parse, show in (
            ("memory", "SBX-P050", s.memory_limit, parse_size, str),
            ("pids", "SBX-P051", s.pids_limit, int, str),
            ("cpu", "SBX-P052", s.cpu_limit, float, lambda v: f"{v:g}")):
        want = policy.get(f"resources.{key}") or {}
        if not want:
            continue
        if have is None:
            if want.get("required"):
                out.append(_f(rule, f"no {key} limit"))
        elif want.get("max") is not None and have > parse(want["max"]):
            out.append(_f(rule, f"{key} limit {show(have)} is above {want['max']}", limit=have))
    ceilings = policy.get("resources.rlimits") or {}
    if ceilings and spec is not None:
        have = {r.name: r for r in spec.rlimits}
        for name, ceiling in ceilings.items():
            r = have.get(name)
            if r is None or r.hard < 0 or r.hard > ceiling:
                shown = "unset" if r is None else ("unlimited" if r.hard < 0 else str(r.hard))
                out.append(_f("SBX-P053", f"rlimit {name} hard limit {shown} is above the ceiling {ceiling}",
                              rlimit=name))
    return out


@dataclass
class Outcome:
    """Findings after waivers: what still counts, what a waiver covered, which waivers expired."""

    findings: list[Finding] = field(default_factory=list)
    waived: list[tuple[Finding, str]] = field(default_factory=list)


def apply_waivers(policy: Policy, findings: list[Finding], target: dict,
                  today: _dt.date | None = None) -> Outcome:
    out = Outcome()
    live = []
    for w in policy.waivers:
        if not w.matches(target):
            continue
        if w.expired(today):
            out.findings.append(_f("SBX-P099", f"waiver for {w.check} expired on {w.expires.isoformat()} "
                                               f"({w.reason}); it no longer applies", check=w.check))
        else:
            live.append(w)
    for f in findings:
        w = next((w for w in live if w.check == f.check_id), None)
        if w is None:
            out.findings.append(f)
        else:
            out.waived.append((replace(f, evidence={**f.evidence, "waived_until": w.expires.isoformat()}), w.reason))
    return out


def conform_results(results, policy: Policy) -> list:
    """`sbx audit --policy`: replace each container's risk findings by the policy's violations, waivers applied."""
    for r in results:
        if r.subject is None:
            continue
        c = r.container
        target = {"id": getattr(c, "cid", "") or "", "name": getattr(c, "display", "") or "",
                  "runtime": getattr(c, "runtime", "") or "", "pid": str(getattr(c, "init_pid", ""))}
        outcome = apply_waivers(policy, evaluate(policy, r.subject), target)
        r.findings = outcome.findings
        r.waived = outcome.waived
    return results


def check_target(policy: Policy, target: str) -> list[Finding]:
    """`sbx policy check`: TARGET is profile:NAME|FILE (admission view), pid:N, or a container id/name."""
    from sandbox.errors import SbxError
    if target.startswith("profile:"):
        from sandbox.profiles import resolve

        from .subject import subject_from_spec
        spec = resolve(["/bin/true"], profile=target[len("profile:"):])
        found = evaluate(policy, subject_from_spec(spec), spec=spec)
        return apply_waivers(policy, found, {"name": "", "runtime": "sbx"}).findings
    from .scan import audit
    pid = None
    ref: str | None = target
    if target.startswith("pid:"):
        try:
            pid, ref = int(target[4:]), None
        except ValueError:
            raise SbxError(f"bad target {target!r}: pid:N needs a number") from None
    results = audit(ref=ref, pid=pid)
    if not results:
        raise SbxError(f"no running container matches {target!r} (for a profile use profile:NAME)", code=2)
    conform_results(results, policy)
    return [f for r in results for f in r.findings]
