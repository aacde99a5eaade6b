"""`sbx login|logout|pull|images|image inspect|image prune|rmi`: podman's spelling and semantics.

Registry talk is skopeo's (sandbox/image/skopeo.py); verification, unpacking and the store are
sbx's own (sandbox/image/). Every error is one line and exit 125; names from images and
registries are escaped before they reach a terminal.
"""
from __future__ import annotations

import json
import os
import sys
import time

import click

from .errors import SbxError, escape

BOOL_FLAGS = ("--tls-verify",)


class _Cmd(click.Command):
    """`--tls-verify` alone means true and never eats the next word (Go's bool flags, as podman)."""

    def parse_args(self, ctx, args):
        out = []
        for a in args:
            out.append(a + "=true" if a in BOOL_FLAGS else a)
        return super().parse_args(ctx, out)


def _transport_options(f):
    f = click.option("--tls-verify", "tls_verify", type=click.BOOL, default=None,
                     help="Require HTTPS and verify the registry's certificate (default true).")(f)
    f = click.option("--cert-dir", type=click.Path(file_okay=False), default=None,
                     help="CA certificates (ca.crt, *.crt) for the registry (default: /etc/containers/certs.d/HOST:PORT).")(f)
    f = click.option("--authfile", type=click.Path(dir_okay=False), default=None,
                     help="containers-auth.json to use (default: REGISTRY_AUTH_FILE, then podman's locations).")(f)
    return f


def _opts(authfile, cert_dir, tls_verify):
    from .image.skopeo import Options
    if cert_dir is not None and not os.path.isdir(cert_dir):
        raise SbxError(f"--cert-dir {escape(cert_dir)}: not a directory")
    return Options(authfile=os.path.abspath(authfile) if authfile else None,
                   cert_dir=os.path.abspath(cert_dir) if cert_dir else None, tls_verify=tls_verify)


def _registry_arg(text: str) -> str:
    """login/logout take a registry host[:port] (a URL or an image name is reduced to its host, as podman)."""
    t = text
    for p in ("https://", "http://", "docker://"):
        if t.startswith(p):
            t = t[len(p):]
    t = t.rstrip("/")
    from .image.reference import _DOMAIN
    host = t.split("/", 1)[0]
    if not host or not _DOMAIN.match(host):
        raise SbxError(f"invalid registry {escape(text)!r}: give HOST[:PORT]")
    return t if "/" in t else host


# ---------------------------------------------------------------- login / logout

@click.command("login", cls=_Cmd, help="Log in to a registry; the credentials are checked by the registry before they are stored.")
@click.option("-u", "--username", default=None)
@click.option("-p", "--password", default=None, help="Visible to other users in ps: prefer --password-stdin.")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
@_transport_options
@click.argument("registry")
def login_cmd(username, password, password_stdin, authfile, cert_dir, tls_verify, registry) -> int:
    from .image import skopeo
    reg = _registry_arg(registry)
    opts = _opts(authfile, cert_dir, tls_verify)
    if password is not None and password_stdin:
        raise SbxError("--password and --password-stdin are mutually exclusive")
    if username is None:
        if not sys.stdin.isatty() or password_stdin:
            raise SbxError("no username: give -u USER")
        username = input("Username: ").strip()
    if not username or ":" in username or any(ord(c) < 0x20 for c in username):
        raise SbxError("invalid username (empty, or with ':' or control characters)")
    if password_stdin:
        password = sys.stdin.read().rstrip("\r\n")
    elif password is None:
        if not sys.stdin.isatty():
            raise SbxError("no password: use --password-stdin (or run on a terminal to be asked)")
        import getpass
        password = getpass.getpass("Password: ")
    else:
        sys.stderr.write("sbx: warning: a password on the command line is visible to other users; "
                         "use --password-stdin\n")
    if not password:
        raise SbxError("empty password")
    msg = skopeo.login(reg, username, password, opts)
    click.echo(escape(msg or "Login Succeeded!"))
    return 0


@click.command("logout", help="Remove the stored credentials of a registry (or --all).")
@click.option("-a", "--all", "all_", is_flag=True, help="Remove the credentials of every registry in the auth file.")
@click.option("--authfile", type=click.Path(dir_okay=False), default=None)
@click.argument("registry", required=False)
def logout_cmd(all_, authfile, registry) -> int:
    from .image import skopeo
    if all_ == bool(registry):
        raise SbxError("give a REGISTRY or --all")
    opts = _opts(authfile, None, None)
    msg = skopeo.logout(None if all_ else _registry_arg(registry), opts)
    click.echo(escape(msg))
    return 0


# ---------------------------------------------------------------- pull

def _size_arg(text: str | None, what: str) -> int | None:
    if text is None:
        return None
    from .profiles import parse_size
    try:
        v = parse_size(text)
    except ValueError as e:
        raise SbxError(f"{what} {escape(text)!r}: {e}") from None
    if v <= 0:
        raise SbxError(f"{what} must be > 0")
    return v


@click.command("pull", cls=_Cmd, help="Pull an image: REF = [docker://|oci:DIR[:TAG]|oci-archive:FILE|docker-archive:FILE]NAME[:TAG|@DIGEST].")
@_transport_options
@click.option("-q", "--quiet", is_flag=True, help="Print only the image id.")
@click.option("--max-size", default=None, metavar="SIZE", help="Cap on the image's unpacked bytes (default 32g).")
@click.option("--max-entries", type=int, default=None, metavar="N", help="Cap on the image's file count (default 2000000).")
@click.argument("ref")
def pull_cmd(authfile, cert_dir, tls_verify, quiet, max_size, max_entries, ref) -> int:
    img = do_pull(ref, _opts(authfile, cert_dir, tls_verify), quiet=quiet, max_size=max_size, max_entries=max_entries)
    click.echo(img.id)
    return 0


def do_pull(ref: str, topts, *, quiet: bool = False, max_size: str | None = None, max_entries: int | None = None):
    from .image.pull import PullOptions, pull
    from .image.unpack import Limits
    limits = Limits()
    ms = _size_arg(max_size, "--max-size")
    if ms is not None:
        limits.max_bytes = ms
    if max_entries is not None:
        if max_entries <= 0:
            raise SbxError("--max-entries must be > 0")
        limits.max_entries = max_entries
    opts = PullOptions(transport=topts, quiet=quiet, progress=sys.stderr.isatty() and not quiet, limits=limits)
    return pull(ref, opts)


# ---------------------------------------------------------------- images / inspect

def _store(create: bool = False):
    from .image.store import Store
    s = Store()
    return s.ensure() if create or s.exists() else s


def _ago(seconds: float) -> str:
    for unit, n in (("years", 365 * 86400), ("months", 30 * 86400), ("weeks", 7 * 86400), ("days", 86400),
                    ("hours", 3600), ("minutes", 60)):
        if seconds >= 2 * n:
            return f"{int(seconds // n)} {unit} ago"
    return "seconds ago" if seconds >= 1 else "now"


def _created_ts(text) -> float | None:
    if not isinstance(text, str):
        return None
    import datetime as dt
    t = text.strip()
    if t.endswith("Z"):
        t = t[:-1] + "+00:00"
    if "." in t:  # Go writes nanoseconds; fromisoformat on 3.11 takes at most 6 digits
        head, _, tail = t.partition(".")
        frac = "".join(ch for ch in tail if ch.isdigit())
        t = head + "." + (frac[:6] or "0") + tail[len(frac):]
    try:
        return dt.datetime.fromisoformat(t).timestamp()
    except ValueError:
        return None


def _rows(store):
    """One row per name (as podman); an image without a name shows once as <none>."""
    for img in store.images():
        names = img.tags or [None]
        for n in names:
            if n is None:
                repo, tag = "<none>", "<none>"
            else:
                repo, _, tag = n.rpartition(":")
            yield img, repo, tag


@click.command("images", help="List the images in the store.")
@click.option("-q", "--quiet", is_flag=True, help="Only image ids.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.option("--no-trunc", is_flag=True)
@click.option("--digests", is_flag=True, help="Show the manifest digest.")
def images_cmd(quiet, fmt, no_trunc, digests) -> int:
    store = _store()
    if not store.exists():
        imgs = []
    else:
        imgs = store.images()
    if quiet:
        seen = []
        for img in imgs:
            if img.id not in seen:
                seen.append(img.id)
                click.echo(img.id if no_trunc else img.short)
        return 0
    if fmt == "json":
        out = [{"Id": img.id, "Names": img.tags, "Digest": img.digest, "RepoDigests": img.meta.get("repo_digests", []),
                "Created": img.meta.get("created"), "Size": img.meta.get("size", 0), "Pulled": img.meta.get("pulled"),
                "Layers": len(img.layers)} for img in imgs]
        click.echo(json.dumps(out, indent=2))
        return 0
    from .image.blob import human
    now = time.time()
    head = ["REPOSITORY", "TAG"] + (["DIGEST"] if digests else []) + ["IMAGE ID", "CREATED", "SIZE"]
    table = [head]
    for img, repo, tag in (_rows(store) if imgs else ()):
        ts = _created_ts(img.meta.get("created"))
        row = [repo, tag] + ([img.digest] if digests else []) + \
              [img.id if no_trunc else img.short, _ago(now - ts) if ts else "", human(int(img.meta.get("size", 0)))]
        table.append(row)
    _table(table)
    return 0


def _table(rows) -> None:
    rows = [[escape(str(c)) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip())


def describe(store, img) -> dict:
    """podman-like inspect of one image, plus what sbx knows: layers on disk, the resolved user."""
    from .image import config as imgconfig
    from .image.layered import Layered
    from .image.passwd import UserError, exec_user
    raw = img.config()
    cfg = imgconfig.parse(raw)
    layers = []
    for d in img.layers:
        m = store.layer_meta(d)
        layers.append({"DiffID": d, "Size": m.get("size"), "Entries": m.get("entries"),
                       "Skipped": m.get("skipped_count", 0), "Path": store.layer_root(d)})
    view = Layered([store.layer_root(d) for d in img.layers])
    try:
        u = exec_user(cfg.user, view.read("/etc/passwd"), view.read("/etc/group"))
        user = {"Uid": u.uid, "Gid": u.gid, "Groups": list(u.groups), "Home": u.home, "Name": u.name}
    except UserError as e:
        user = {"Error": e.message}
    return {
        "Id": img.id, "Digest": img.digest, "RepoTags": img.tags, "RepoDigests": img.meta.get("repo_digests", []),
        "Created": raw.get("created"), "Author": raw.get("author"), "Architecture": raw.get("architecture"),
        "Os": raw.get("os"), "Size": img.meta.get("size", 0), "Source": img.meta.get("source"),
        "Config": cfg.to_dict(), "User": user,
        "RootFS": {"Type": "layers", "Layers": img.layers}, "Layers": layers,
        "ManifestType": img.meta.get("media_type"),
    }


def _image_inspect(refs) -> int:
    store = _store()
    out = []
    rc = 0
    for r in refs:
        try:
            out.append(describe(store, store.lookup(r)))
        except SbxError as e:
            sys.stderr.write(e.line() + "\n")
            rc = 125
    click.echo(json.dumps(out, indent=2))
    return rc


# ---------------------------------------------------------------- rmi / prune

def _remove(store, refs, force: bool) -> int:
    from .image.reference import parse_name
    from .image.store import sandbox_usage
    users, keep = sandbox_usage()
    rc = 0
    touched = False
    for r in refs:
        try:
            img = store.lookup(r)
        except SbxError as e:
            sys.stderr.write(e.line() + "\n")
            rc = 125
            continue
        by_id = r.removeprefix("sha256:") and img.id.startswith(r.removeprefix("sha256:"))
        name = None
        if not by_id:
            try:
                n = parse_name(r)
                name = n.tagged() if n.tagged() in img.tags else None
            except SbxError:
                name = None
            if name is None and len(img.tags) == 1:
                name = img.tags[0]  # a short name that resolved to this image's only name
        if name is not None and len(img.tags) > 1:
            store.untag(name)
            click.echo(f"Untagged: {escape(name)}")
            continue
        if by_id and len(img.tags) > 1 and not force:
            sys.stderr.write(f"sbx: image {img.short} has {len(img.tags)} names ({escape(', '.join(img.tags))}): "
                             "remove them one by one, or use -f\n")
            rc = 125
            continue
        used = users.get(img.id, [])
        if used and not force:
            sys.stderr.write(f"sbx: image {img.short} is used by sandbox {escape(', '.join(used[:5]))}: "
                             "remove the sandbox first (sbx rm), or use -f (its layers stay until then)\n")
            rc = 125
            continue
        for t in img.tags:
            click.echo(f"Untagged: {escape(t)}")
        store.delete_image(img.id)
        click.echo(f"Deleted: {img.id}")
        touched = True
    if touched:
        store.gc(keep)
    return rc


@click.command("rmi", help="Remove images (refused for an image a sandbox uses, unless -f).")
@click.option("-f", "--force", is_flag=True)
@click.argument("refs", nargs=-1, required=True)
def rmi_cmd(force, refs) -> int:
    store = _store()
    if not store.exists():
        raise SbxError(f"no such image: {escape(refs[0])} (the store is empty)")
    return _remove(store, refs, force)


def _prune(all_: bool) -> int:
    from .image.blob import human
    from .image.store import sandbox_usage
    store = _store()
    if not store.exists():
        click.echo("Total reclaimed space: 0B")
        return 0
    users, keep = sandbox_usage()
    for img in store.images():
        if img.id in users:
            continue
        if img.tags and not all_:
            continue
        store.delete_image(img.id)
        click.echo(f"Deleted: {img.id}")
    n, freed = store.gc(keep)
    click.echo(f"Removed {n} unreferenced layer{'s' if n != 1 else ''}; total reclaimed space: {human(freed)}")
    return 0


# ---------------------------------------------------------------- `sbx image ...`

@click.group("image", help="Manage images: inspect, ls, prune, pull, rm.")
def image_cmd() -> None:
    pass


@image_cmd.command("inspect", help="Show images as a JSON array (config with Docker's semantics, layers, the resolved user).")
@click.argument("refs", nargs=-1, required=True)
def image_inspect_cmd(refs) -> int:
    return _image_inspect(refs)


@image_cmd.command("prune", help="Remove images without a name (-a: every image no sandbox uses) and unreferenced layers.")
@click.option("-a", "--all", "all_", is_flag=True)
@click.option("-f", "--force", is_flag=True, help="Accepted for podman compatibility (sbx never asks).")
def image_prune_cmd(all_, force) -> int:
    return _prune(all_)


image_cmd.add_command(images_cmd, "ls")
image_cmd.add_command(pull_cmd, "pull")
image_cmd.add_command(rmi_cmd, "rm")
