"""The `images:` policy rule: where images may come from, and whether they must be pinned by digest.

    images: {allowed_registries: [registry.example.com, "127.0.0.1:5000", quay.io/myorg], require_digest: true}

`allowed_registries` entries are HOST[:PORT], optionally with a path prefix (quay.io/myorg allows
quay.io/myorg/* only). Names are normalised first (busybox is docker.io/library/busybox), so
`docker.io` must be listed for Docker Hub; images imported from archives are `localhost/...`.
`require_digest`: the image must be named by NAME@sha256:DIGEST (or its full 64-hex id): a tag
can be moved to other content by whoever controls the registry.

Self-contained: policy.py calls lint(); conformance.evaluate() calls evaluate(). A Subject with no
image (a host-command sandbox, a container whose image is unknown) is not judged by this rule.
"""
from __future__ import annotations

import re

RULES: dict[str, tuple[str, str]] = {
    "SBX-P070": ("image from a registry the policy does not allow", "high"),
    "SBX-P071": ("image not pinned by digest but the policy requires it", "medium"),
}
SCHEMA = {"allowed_registries": "list", "require_digest": "bool"}
_ENTRY = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:]+\])(?::[0-9]{1,5})?(?:/[a-z0-9._/-]+)?$")


def lint(doc, data: dict, errors: list) -> None:
    imgs = data.get("images")
    if not isinstance(imgs, dict):
        return
    regs = imgs.get("allowed_registries")
    for i, r in enumerate(regs if isinstance(regs, list) else []):
        if not isinstance(r, str) or not _ENTRY.match(r) or "//" in r or r.endswith("/") or "/../" in r + "/":
            errors.append(doc.error(f"images.allowed_registries[{i}]",
                                    f"{r!r} is not a registry HOST[:PORT] (optionally /PATH), like quay.io/myorg"))


def _matches(name: str, entry: str) -> bool:
    host, _, prefix = entry.partition("/")
    dom, _, path = name.partition("/")
    if dom.lower() != host.lower():
        return False
    return not prefix or path == prefix or path.startswith(prefix + "/")


def evaluate(policy, s, finding) -> list:
    """Findings for the Subject's image. `finding(rule, message, **evidence)` builds one (conformance._f)."""
    rules = policy.get("images") or {}
    ref = getattr(s, "image", None)
    if not rules or not ref:
        return []
    out = []
    allowed = rules.get("allowed_registries")
    names = [n for n in [ref, *(getattr(s, "image_names", ()) or ())] if n]
    if allowed is not None:
        if not any(_matches(_repo(n), a) for n in names for a in allowed):
            out.append(finding("SBX-P070", f"image {ref} is not from an allowed registry "
                                           f"({', '.join(allowed) or 'none allowed'})", image=ref))
    if rules.get("require_digest") is True and not getattr(s, "image_pinned", False):
        out.append(finding("SBX-P071", f"image {ref} is named by a tag, which can move: use NAME@sha256:DIGEST",
                           image=ref))
    return out


def _repo(name: str) -> str:
    """The normalised repository of a reference (a bare id gives '')."""
    from sandbox.image.reference import RefError, parse_name
    try:
        return parse_name(name).repo
    except RefError:
        return ""
