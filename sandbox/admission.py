"""Admission: the resolved Spec is checked against a policy before anything starts.

The Spec becomes a Subject (what the sandbox WILL look like) and the policy's
rules run on it: the same engine `sbx audit --policy` runs on live containers.
"""
from __future__ import annotations

from .errors import SbxError


def admit(spec, options) -> list:
    """Raise SbxError (125) naming the first violated rule and the offending value; return waived findings."""
    from sandbox.audit.conformance import apply_waivers, evaluate
    from sandbox.audit.policy import load_policy
    from sandbox.audit.subject import subject_from_spec

    policy = load_policy(options.policy)
    findings = evaluate(policy, subject_from_spec(spec, name=options.name or ""), spec=spec)
    outcome = apply_waivers(policy, findings, {"name": options.name or "", "runtime": "sbx"})
    if outcome.findings:
        f = outcome.findings[0]
        more = f" (+{len(outcome.findings) - 1} more)" if len(outcome.findings) > 1 else ""
        raise SbxError(f"policy {policy.name} refuses this sandbox: {f.check_id} {f.message}{more}",
                       where=policy.path)
    return outcome.waived
