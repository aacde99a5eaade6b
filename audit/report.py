"""Render audit results: a human table, JSON (versioned schema), SARIF 2.1.0.

Every string that came from a container (process names, paths, labels, ids) is
escaped before it reaches a terminal: sandbox.errors.escape turns control
characters into \\xNN and bidi/zero-width characters into \\uNNNN, so a hostile
comm can neither drive the terminal nor reorder or hide text. JSON and SARIF
carry the escaped text too, so piping them to a terminal is equally safe.

The table fits 80 columns: one summary line per container, details wrapped.
"""
from __future__ import annotations

import hashlib
import json
import re
import textwrap
from typing import TYPE_CHECKING

from sandbox.errors import escape

from . import checks as _checks

if TYPE_CHECKING:
    from .scan import Result

JSON_SCHEMA_VERSION = "1"
TOOL_VERSION = "0.1.0"
SARIF_LEVEL = {"critical": "error", "high": "error", "medium": "warning", "low": "note", "info": "note"}
SARIF_SCORE = {"critical": "9.5", "high": "8.0", "medium": "5.5", "low": "3.0", "info": "0.0"}
COLOURS = {"critical": "\x1b[1;31m", "high": "\x1b[31m", "medium": "\x1b[33m", "low": "\x1b[36m", "info": "\x1b[2m"}
RESET = "\x1b[0m"


# Anything sandbox.errors.escape rewrites: control characters, then the bidi/zero-width set.
_CTRL = re.compile("[\x00-\x1f\x7f-\x9f\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f"
                   "\u200b-\u200f\u2028-\u202e\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff9-\ufffb"
                   "\U0001d173-\U0001d17a\U000e0000-\U000e007f]")
WIDTH = 80


def _e(text: str) -> str:
    # Most strings are clean: test with one regex scan before the per-character escape.
    return escape(text) if _CTRL.search(text) else text


def _esc(v):
    """Escape every string in a JSON-able value."""
    if isinstance(v, str):
        return _e(v)
    if isinstance(v, dict):
        return {_e(str(k)): _esc(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, set, frozenset)):
        return [_esc(x) for x in (sorted(v) if isinstance(v, (set, frozenset)) else v)]
    return v


def container_dict(r: Result) -> dict:
    c = r.container
    s = r.subject
    return _esc({
        "id": c.id,
        "name": c.name,
        "runtime": c.runtime,
        "init_pid": c.init_pid,
        "pids": c.pids,
        "processes": sorted(set(c.comms.values())),
        "command": r.command,
        "cgroup": c.cgroup_path,
        "labels": c.labels,
        "helpers": {str(pid): h for pid, h in sorted(c.helpers.items())},
        "image": None if not c.image else {"ref": c.image, "id": c.image_id, "pinned": c.image_pinned},
        "score": r.score,
        "pss": r.pss,
        "worst": r.worst,
        "error": r.error,
        "posture": None if s is None else {
            # uid/gid: inside the container's user namespace; host_uid/host_gid: the same ids as the host sees them.
            "uid": s.uid, "host_uid": s.host_uid, "gid": s.gid, "host_gid": s.host_gid,
            "userns": s.userns, "root_maps_host_root": s.root_maps_host_root,
            "cap_eff": sorted(s.cap_eff), "cap_bnd": sorted(s.cap_bnd), "cap_amb": sorted(s.cap_amb),
            "no_new_privs": s.no_new_privs, "seccomp": s.seccomp, "lsm_label": s.lsm_label,
            "host_namespaces": sorted(s.host_namespaces), "root_readonly": s.root_readonly,
            "memory_limit": s.memory_limit, "pids_limit": s.pids_limit, "cpu_limit": s.cpu_limit,
            "network": s.network, "published_ports": list(s.published_ports),
            "mounts_complete": s.mounts_complete,
        },
        "findings": [f.to_dict() for f in r.findings],
    })


def summary(results: list[Result]) -> dict:
    counts = {s: 0 for s in reversed(_checks.SEVERITIES)}
    for r in results:
        for f in r.findings:
            counts[f.severity] += 1
    return {"containers": len(results), "findings": counts}


def to_json(results: list[Result], host_kernel: str = "") -> str:
    """Schema v1: {schema_version, tool, kernel, summary, containers:[{id,name,runtime,init_pid,pids,
    processes,command,cgroup,labels,helpers,image,score,pss,worst,error,posture,findings:[{check,severity,title,message,evidence}]}]}"""
    doc = {
        "schema_version": JSON_SCHEMA_VERSION,
        "tool": {"name": "sbx audit", "version": TOOL_VERSION},
        "kernel": escape(host_kernel),
        "summary": summary(results),
        "containers": [container_dict(r) for r in results],
    }
    # No indent: the C encoder is ~10x faster on a thousand containers; pipe through `jq` to read.
    return json.dumps(doc)


def sarif_rules() -> list[dict]:
    rules = []
    for c in _checks.CHECKS:
        tags = ["security", "container"]
        if c.cis:
            tags.append(f"CIS-Docker-{c.cis}")
        if c.pss:
            tags.append(f"PSS-{c.pss[0]}")
        rules.append({
            "id": c.id,
            "name": "".join(w.capitalize() for w in c.title.replace("/", " ").replace("'", "").split()),
            "shortDescription": {"text": c.title},
            "fullDescription": {"text": c.rationale},
            "help": {"text": f"{c.rationale}\nRemediation: {c.remediation}",
                     "markdown": f"{c.rationale}\n\n**Remediation:** {c.remediation}"},
            "defaultConfiguration": {"level": SARIF_LEVEL[c.severity]},
            "properties": {"severity": c.severity, "security-severity": SARIF_SCORE[c.severity],
                           "tags": tags, "reads": list(c.reads), "mappings": c.mappings()},
        })
    return rules


def _artifact(c) -> str:
    """A stable, relative URI naming the container: code scanning needs a physical location."""
    from urllib.parse import quote
    return f"containers/{quote(c.runtime, safe='')}/{quote(c.display, safe='')}"


def _fingerprint(c, f, seen: dict[str, int]) -> str:
    """Unique per finding and stable across scans: container, check, and what the finding is about."""
    base = f"{c.runtime}\0{c.id}\0{f.check_id}\0{f.message}"
    h = hashlib.sha256(base.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    n = seen.get(h, 0)
    seen[h] = n + 1
    return f"{h}:{n}" if n else h


def to_sarif(results: list[Result]) -> str:
    rules = sarif_rules()
    index = {r["id"]: i for i, r in enumerate(rules)}
    out = []
    seen: dict[str, int] = {}
    for r in results:
        c = r.container
        fq = escape(f"{c.runtime}/{c.display}")
        uri = _artifact(c)
        for f in r.findings:
            if f.check_id not in index:
                # A policy rule (conformance mode): one rule per policy check id seen.
                index[f.check_id] = len(rules)
                rules.append({"id": f.check_id, "name": f.check_id.replace("-", ""),
                              "shortDescription": {"text": escape(f.title)},
                              "help": {"text": escape(f.title)},
                              "defaultConfiguration": {"level": SARIF_LEVEL.get(f.severity, "warning")},
                              "properties": {"severity": f.severity, "source": "policy"}})
            out.append({
                "ruleId": f.check_id,
                "ruleIndex": index[f.check_id],
                "level": SARIF_LEVEL.get(f.severity, "warning"),
                "message": {"text": escape(f"{c.display}: {f.message}")},
                "locations": [{
                    "physicalLocation": {"artifactLocation": {"uri": uri, "uriBaseId": "SBXAUDIT"},
                                         "region": {"startLine": 1}},
                    "logicalLocations": [{"name": escape(c.display), "fullyQualifiedName": fq, "kind": "object"}]}],
                "partialFingerprints": {"sbxFinding/v1": _fingerprint(c, f, seen)},
                "properties": {"severity": f.severity, "container": _esc({"id": c.id, "name": c.name,
                               "runtime": c.runtime, "init_pid": c.init_pid}), "evidence": _esc(f.evidence)},
            })
    doc = {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "sbx-audit", "version": TOOL_VERSION, "informationUri":
                                "https://github.com/sbx/sbx", "rules": rules,
                                "properties": {"cisDockerBenchmarkVersion": _checks.CIS_DOCKER_VERSION}}},
            "originalUriBaseIds": {"SBXAUDIT": {"description": {
                "text": "Containers audited on this host: containers/RUNTIME/NAME"}}},
            "results": out,
        }],
    }
    return json.dumps(doc)


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[:max(0, width - 3)] + "..."


def _counts(findings) -> str:
    by: dict[str, int] = {}
    for f in findings:
        by[f.severity] = by.get(f.severity, 0) + 1
    return " ".join(f"{by[k]}{k[0].upper()}" for k in reversed(_checks.SEVERITIES) if by.get(k)) or "clean"


def to_table(results: list[Result], colour: bool = False, width: int = WIDTH) -> str:
    """Grouped by container, worst first; every line fits `width` columns (colour codes aside).

    One summary line per container (runtime, name, judged pid, score, PSS level, finding
    counts as 2C 1H 3M ...), then its command, processes and findings, wrapped.
    """
    if not results:
        return "no containers found\n"
    width = max(60, width)
    lines = []
    for r in results:
        c = r.container
        tail = f"  pid {c.init_pid}  score {r.score}/100  pss {r.pss}  {_counts(r.findings)}"
        head = f"{escape(c.runtime)} "
        lines.append(head + _fit(escape(c.display), width - len(head) - len(tail)) + tail)
        if c.image:
            lines.append(_fit(f"  image {escape(c.image)}" + (f" ({escape(c.image_id[:12])})" if c.image_id else ""),
                              width))
        if r.command:
            cmd = escape(" ".join(r.command))
            got = textwrap.wrap(cmd, width, initial_indent="  $ ", subsequent_indent="    ", max_lines=4,
                                placeholder=" ...", drop_whitespace=True) or ["  $"]
            lines.extend(got)
        procs = ", ".join(escape(x) for x in sorted(set(c.comms.values()))[:8])
        if procs:
            lines.extend(textwrap.wrap(f"processes: {procs}", width, initial_indent="  ", subsequent_indent="    ",
                                       max_lines=2, placeholder=" ..."))
        if r.error:
            lines.extend(textwrap.wrap(f"! {escape(r.error)}", width, initial_indent="  ", subsequent_indent="    "))
        if not r.findings:
            lines.append("  (no findings)")
        for f in r.findings:
            sev = f.severity.upper().ljust(8)
            prefix = f"  {sev} {f.check_id}  "
            body = textwrap.wrap(f"{escape(f.title)}: {escape(f.message)}", width, initial_indent=prefix,
                                 subsequent_indent=" " * len(prefix), max_lines=8, placeholder=" ...")
            if colour and body:
                body[0] = body[0].replace(sev, COLOURS[f.severity] + sev + RESET, 1)
            lines.extend(body)
        lines.append("")
    s = summary(results)["findings"]
    lines.extend(textwrap.wrap(f"{len(results)} container(s); " + ", ".join(f"{n} {k}" for k, n in s.items() if n),
                               width))
    return "\n".join(lines) + "\n"


def apply_policy(results: list[Result], policy_ref: str) -> list[Result]:
    """Conformance (`--policy`): each container's findings become the policy's violations, waivers applied.

    The policy engine lives in audit.policy / audit.conformance; this is the one hook audit calls.
    """
    from .conformance import conform_results
    from .policy import load_policy
    policy = load_policy(policy_ref)
    for r in results:
        r.risk = list(r.findings)
    out = conform_results(results, policy)
    for r in out:
        r.findings.sort(key=lambda f: (-_checks.SEVERITY_RANK.get(f.severity, 0), f.check_id))
    return out
