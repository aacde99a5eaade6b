"""Image references: `[TRANSPORT:]NAME[:TAG|@sha256:DIGEST]`, with Docker's grammar and normalisation.

Transports (podman/skopeo spelling): `docker://` (the default: a registry), `oci:DIR[:REF]`,
`oci-archive:FILE[:REF]`, `docker-archive:FILE[:REF]`. A known transport prefix wins over the
`NAME:TAG` reading, as in podman (`oci:foo` is the oci layout `foo`, not the image `oci` tag `foo`).

Names follow distribution/reference: an optional domain (has a '.' or ':' or is `localhost`),
lowercase path components, a tag of `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`, a `sha256:` digest of 64
hex digits. `busybox` becomes `docker.io/library/busybox:latest`, as docker/podman pull it.
Every string that later reaches skopeo's argv or the store's file names passed these checks.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from ..errors import SbxError, escape

TRANSPORTS = ("docker", "oci", "oci-archive", "docker-archive")
LOCAL_TRANSPORTS = ("oci", "oci-archive", "docker-archive")
DEFAULT_DOMAIN = "docker.io"
LOCAL_DOMAIN = "localhost"  # images imported from archives without a full name, as podman names them
MAX_NAME = 255

_DOMAIN_COMPONENT = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
_DOMAIN = re.compile(rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9A-Fa-f:]+\])(?::[0-9]{{1,5}})?\Z")
_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*\Z")
TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")
DIGEST_RE = re.compile(r"sha256:[a-f0-9]{64}\Z")
ID_RE = re.compile(r"[a-f0-9]{64}\Z")


class RefError(SbxError):
    """A malformed image reference (exit 125, one line)."""


@dataclass(frozen=True)
class Name:
    """A normalised registry name: domain/path[:tag][@digest]."""

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def repo(self) -> str:
        return f"{self.domain}/{self.path}"

    def __str__(self) -> str:
        s = self.repo
        if self.tag:
            s += ":" + self.tag
        if self.digest:
            s += "@" + self.digest
        return s

    def tagged(self) -> str | None:
        return f"{self.repo}:{self.tag}" if self.tag else None

    def with_digest(self, digest: str) -> str:
        return f"{self.repo}@{digest}"


@dataclass(frozen=True)
class Reference:
    """What the user asked to pull: a transport, a registry name or a local path (+ the REF part)."""

    transport: str
    name: Name | None = None  # docker transport
    path: str | None = None  # local transports: an absolute path
    local_ref: str | None = None  # the `:REF` after a local path (a tag in the layout, or a name in an archive)
    text: str = ""

    @property
    def local(self) -> bool:
        return self.transport in LOCAL_TRANSPORTS

    def skopeo(self) -> str:
        """The reference as skopeo's argv spells it (each part validated above)."""
        if self.transport == "docker":
            assert self.name is not None
            return "docker://" + str(self.name)
        return f"{self.transport}:{self.path}" + (f":{self.local_ref}" if self.local_ref else "")

    def __str__(self) -> str:
        return str(self.name) if self.transport == "docker" else self.skopeo()


def parse_name(text: str, *, default_domain: str = DEFAULT_DOMAIN, default_tag: bool = True,
               what: str = "image reference") -> Name:
    """A docker reference, normalised. Raises RefError naming what is wrong."""
    if not text or len(text) > 4096:
        raise RefError(f"invalid {what} {escape(text[:80])!r}: empty or too long")
    if text != text.strip() or any(ord(c) < 0x21 or ord(c) == 0x7F for c in text):
        raise RefError(f"invalid {what} {escape(text)!r}: spaces or control characters")
    rest, digest = text, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not DIGEST_RE.match(digest):
            raise RefError(f"invalid {what} {escape(text)!r}: the digest must be sha256: and 64 lowercase hex digits")
    tag = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1:]
        if not TAG_RE.match(tag):
            raise RefError(f"invalid {what} {escape(text)!r}: bad tag {escape(tag)!r}")
    parts = rest.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"
                           or parts[0] != parts[0].lower()):
        domain, path_parts = parts[0], parts[1:]
        if not _DOMAIN.match(domain):
            raise RefError(f"invalid {what} {escape(text)!r}: bad registry host {escape(domain)!r}")
    else:
        domain, path_parts = default_domain, parts
    if domain == "index.docker.io":
        domain = DEFAULT_DOMAIN
    for p in path_parts:
        if not _PATH_COMPONENT.match(p):
            hint = " (repository names must be lowercase)" if p.lower() != p else ""
            raise RefError(f"invalid {what} {escape(text)!r}: bad name component {escape(p)!r}{hint}")
    if domain == DEFAULT_DOMAIN and len(path_parts) == 1:
        path_parts = ["library", *path_parts]
    path = "/".join(path_parts)
    if len(domain) + 1 + len(path) > MAX_NAME:
        raise RefError(f"invalid {what} {escape(text[:80])!r}: the name is longer than {MAX_NAME} characters")
    if tag is None and digest is None and default_tag:
        tag = "latest"
    return Name(domain, path, tag, digest)


def split_transport(text: str) -> tuple[str, str]:
    """('docker', rest) for plain names and docker://; the local transports by their prefix."""
    if text.startswith("docker://"):
        return "docker", text[len("docker://"):]
    for t in ("oci-archive", "docker-archive", "oci"):
        if text.startswith(t + ":"):
            return t, text[len(t) + 1:]
    return "docker", text


def parse(text: str, cwd: str | None = None) -> Reference:
    """Parse what `sbx pull` / `sbx run` got. Local paths become absolute (relative to cwd)."""
    transport, rest = split_transport(text)
    if transport == "docker":
        return Reference("docker", name=parse_name(rest), text=text)
    if not rest:
        raise RefError(f"invalid image reference {escape(text)!r}: {transport}: needs a path")
    # skopeo's own split for these transports: the path is up to the first ':'.
    path, _, local_ref = rest.partition(":")
    if not path or "\0" in path or any(ord(c) < 0x20 for c in rest):
        raise RefError(f"invalid image reference {escape(text)!r}: bad path")
    if local_ref:
        if transport == "oci":
            if not TAG_RE.match(local_ref) and not _valid_name(local_ref):
                raise RefError(f"invalid image reference {escape(text)!r}: bad tag {escape(local_ref)!r} in the layout")
        elif not local_ref.startswith("@") and not _valid_name(local_ref) and not TAG_RE.match(local_ref):
            raise RefError(f"invalid image reference {escape(text)!r}: bad name {escape(local_ref)!r} in the archive")
    path = os.path.normpath(os.path.join(cwd or os.getcwd(), path))
    return Reference(transport, path=path, local_ref=local_ref or None, text=text)


def _valid_name(text: str) -> bool:
    try:
        parse_name(text)
    except RefError:
        return False
    return True


def local_name(text: str | None) -> Name | None:
    """The name an offline import gets: a full reference as given, a bare name under localhost/ (podman's rule)."""
    if not text:
        return None
    try:
        if TAG_RE.match(text) and "/" not in text and "." not in text and ":" not in text:
            return parse_name(f"{LOCAL_DOMAIN}/{text}".lower())
        return parse_name(text, default_domain=LOCAL_DOMAIN)
    except RefError:
        return None


def path_name(path: str) -> Name | None:
    """podman names `oci:DIR` imports localhost/DIR:latest (path components made valid)."""
    comps = [re.sub(r"[^a-z0-9._-]+", "-", c.lower()).strip("._-") for c in path.strip("/").split("/")]
    comps = [c for c in comps if c]
    if not comps:
        return None
    try:
        return parse_name(LOCAL_DOMAIN + "/" + "/".join(comps))
    except RefError:
        return None
