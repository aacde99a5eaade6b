"""The content-addressed image store (root: /var/lib/sbx; rootless: $XDG_DATA_HOME/sbx), every directory 0700.

    layers/<diff_id hex>/root/        one layer unpacked once (overlay-format whiteouts), shared
                                      read-only by every image and sandbox that has it
    layers/<diff_id hex>/layer.json   its size, entry count, what was skipped, the blobs it came from
    images/<config digest hex>/       manifest.json and config.json exactly as verified, image.json
    refs.json                         NAME:TAG -> image id
    tmp/                              staging: pull-*.lock (flock held by the live pull) + pull-*/
    locks/                            store.lock (short critical sections), gc.lock, layer-<hex>.lock

Visibility is by rename only: a layer is unpacked and verified under tmp/ and renamed into
layers/ in one step, an image directory likewise, refs.json is replaced atomically. So a pull
killed at any point (SIGKILL included) leaves nothing half-visible: at worst a complete,
verified but unreferenced layer, which the next prune collects, and a staging directory whose
lock is free, which the next pull or prune removes.

Concurrency: a pull holds gc.lock shared for its whole life and layer-<hex>.lock while it
unpacks that layer (a second pull of the same image waits there and then reuses the layer);
rmi/prune take gc.lock exclusive, so garbage collection never removes a layer a running pull
has just unpacked but not yet referenced.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import stat
import time
from dataclasses import dataclass

from .. import paths
from ..errors import SbxError, escape
from . import reference

MAX_META = 8 << 20


class StoreError(SbxError):
    pass


def _read(path: str, limit: int = MAX_META) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        chunks, left = [], limit + 1
        while left > 0:
            b = os.read(fd, min(left, 1 << 20))
            if not b:
                break
            chunks.append(b)
            left -= len(b)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limit:
        raise StoreError(f"{path}: larger than {limit} bytes")
    return data


def _read_json(path: str) -> dict | None:
    try:
        obj = json.loads(_read(path))
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _write_json(path: str, obj: dict) -> None:
    paths.atomic_write(path, json.dumps(obj, sort_keys=True, indent=1).encode())


def _rmtree(path: str) -> None:
    """Remove a tree we own; rootless, a read-only directory from an image is made writable first."""
    def onerror(func, p, exc):
        if isinstance(exc[1], PermissionError):
            parent = os.path.dirname(p)
            with contextlib.suppress(OSError):
                st = os.lstat(parent)
                if stat.S_ISDIR(st.st_mode):
                    os.chmod(parent, 0o700)
            with contextlib.suppress(OSError):
                if os.path.isdir(p) and not os.path.islink(p):
                    os.chmod(p, 0o700)
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    os.unlink(p)
    shutil.rmtree(path, onerror=onerror)
    if os.path.lexists(path):
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class Image:
    id: str  # hex of the config digest (podman's and Docker's image id)
    dir: str
    meta: dict
    tags: list[str]

    @property
    def short(self) -> str:
        return self.id[:12]

    @property
    def digest(self) -> str:
        return self.meta.get("digest", "")

    @property
    def layers(self) -> list[str]:
        return list(self.meta.get("layers", []))

    def config(self) -> dict:
        data = _read_json(os.path.join(self.dir, "config.json"))
        if data is None:
            raise StoreError(f"image {self.short}: config.json is missing or unreadable (store damaged?)")
        return data

    def manifest(self) -> dict:
        return _read_json(os.path.join(self.dir, "manifest.json")) or {}


class Store:
    def __init__(self, root: str | None = None):
        self.root = root or paths.data_dir()

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def ensure(self) -> Store:
        paths.ensure_private_dir(self.root)
        for d in ("layers", "images", "tmp", "locks"):
            p = self.path(d)
            with contextlib.suppress(FileExistsError):
                os.mkdir(p, 0o700)
            st = os.lstat(p)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
                raise StoreError(f"{p} is not a directory owned by uid {os.geteuid()}: refusing to use the store")
        return self

    def exists(self) -> bool:
        return os.path.isdir(self.path("images"))

    # -- locks ----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, name: str, shared: bool = False):
        fd = os.open(self.path("locks", name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # -- staging --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def staging(self, kind: str = "pull"):
        """A private directory under tmp/, removed on exit; its flock tells reap() that its owner lives."""
        name = f"{kind}-{os.getpid()}-{os.urandom(4).hex()}"
        lock = self.path("tmp", name + ".lock")
        lfd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        fcntl.flock(lfd, fcntl.LOCK_EX)
        d = self.path("tmp", name)
        try:
            os.mkdir(d, 0o700)
            yield d
        finally:
            with contextlib.suppress(FileNotFoundError):
                _rmtree(d)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock)
            os.close(lfd)

    def reap(self) -> int:
        """Remove staging left by dead pulls (their lock is free) and GC tombs. Returns how many."""
        n = 0
        tmp = self.path("tmp")
        try:
            names = os.listdir(tmp)
        except FileNotFoundError:
            return 0
        for name in names:
            if name.endswith(".lock"):
                continue
            p = os.path.join(tmp, name)
            lock = p + ".lock"
            try:
                fd = os.open(lock, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                fd = None  # a tomb (rm-*, gc-*), or staging whose lock a reaper already removed
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue  # its pull is alive
            try:
                if os.path.isdir(p) and not os.path.islink(p):
                    _rmtree(p)
                elif os.path.lexists(p):
                    os.unlink(p)
                n += 1
                if fd is not None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(lock)
            finally:
                if fd is not None:
                    os.close(fd)
        # locks whose directory is gone (killed between creating the lock and the directory)
        for name in names:
            if name.endswith(".lock") and name[:-5] not in names:
                p = os.path.join(tmp, name)
                try:
                    fd = os.open(p, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
                except FileNotFoundError:
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    if not os.path.lexists(p[:-5]):
                        os.unlink(p)
                except BlockingIOError:
                    pass
                finally:
                    os.close(fd)
        return n

    # -- layers ---------------------------------------------------------------------------------
    def layer_dir(self, diff_id: str) -> str:
        return self.path("layers", _hex(diff_id))

    def layer_root(self, diff_id: str) -> str:
        return os.path.join(self.layer_dir(diff_id), "root")

    def has_layer(self, diff_id: str) -> bool:
        return os.path.isfile(os.path.join(self.layer_dir(diff_id), "layer.json"))

    def layer_meta(self, diff_id: str) -> dict:
        return _read_json(os.path.join(self.layer_dir(diff_id), "layer.json")) or {}

    def publish_layer(self, staged: str, diff_id: str) -> bool:
        """Rename a verified layer into place; False if an equal one is already there."""
        try:
            os.rename(staged, self.layer_dir(diff_id))
            return True
        except OSError as e:
            if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                return False
            raise

    # -- images and refs ------------------------------------------------------------------------
    def refs(self) -> dict[str, str]:
        data = _read_json(self.path("refs.json")) or {}
        refs = data.get("refs", {})
        return {k: v for k, v in refs.items() if isinstance(k, str) and isinstance(v, str)
                and reference.ID_RE.match(v)} if isinstance(refs, dict) else {}

    def _write_refs(self, refs: dict[str, str]) -> None:
        _write_json(self.path("refs.json"), {"refs": dict(sorted(refs.items()))})

    def image(self, image_id: str, refs: dict[str, str] | None = None) -> Image | None:
        if not reference.ID_RE.match(image_id):
            return None
        d = self.path("images", image_id)
        meta = _read_json(os.path.join(d, "image.json"))
        if meta is None:
            return None
        refs = self.refs() if refs is None else refs
        return Image(image_id, d, meta, sorted(k for k, v in refs.items() if v == image_id))

    def images(self) -> list[Image]:
        refs = self.refs()
        try:
            ids = os.listdir(self.path("images"))
        except FileNotFoundError:
            return []
        out = [img for i in ids if (img := self.image(i, refs)) is not None]
        out.sort(key=lambda im: im.meta.get("pulled", 0), reverse=True)
        return out

    def by_digest(self, digest: str) -> Image | None:
        for img in self.images():
            if img.digest == digest or digest in img.meta.get("digests", []):
                if all(self.has_layer(d) for d in img.layers):
                    return img
        return None

    def lookup(self, text: str) -> Image:
        """An id (or unique prefix, 'sha256:' optional), NAME[:TAG], NAME@DIGEST, or a short name."""
        img = self.find(text)
        if img is None:
            raise StoreError(f"no such image: {escape(text)} (see 'sbx images')")
        return img

    def find(self, text: str) -> Image | None:
        t = text[len("sha256:"):] if text.startswith("sha256:") else text
        images = self.images()
        if 3 <= len(t) <= 64 and all(c in "0123456789abcdef" for c in t):
            hits = [im for im in images if im.id.startswith(t)]
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                raise StoreError(f"ambiguous image id prefix {t}: matches {len(hits)} images; give more characters")
        try:
            name = reference.parse_name(text)
        except reference.RefError:
            return None
        refs = self.refs()
        if name.digest:
            for im in images:
                if name.with_digest(name.digest) in im.meta.get("repo_digests", []):
                    return im
            return None
        tagged = name.tagged()
        if tagged in refs:
            return self.image(refs[tagged], refs)
        # A short name (no registry given) also matches a local import or a registry image by its path,
        # as podman resolves local short names: `bb` finds localhost/bb:latest, `test/bb:1` HOST/test/bb:1.
        if _has_domain(text):
            return None
        short_path = name.path[len("library/"):] if name.domain == reference.DEFAULT_DOMAIN and \
            name.path.startswith("library/") and "library/" not in text else name.path
        hits = sorted({v for k, v in refs.items() if _short_match(k, short_path, name.tag or "latest")})
        if len(hits) == 1:
            return self.image(hits[0], refs)
        if len(hits) > 1:
            matches = sorted(k for k, v in refs.items() if _short_match(k, short_path, name.tag or "latest"))
            raise StoreError(f"short name {escape(text)} matches several images ({', '.join(matches[:4])}); "
                             "give the full name")
        return None

    def commit_image(self, image_id: str, manifest: bytes | None, config: bytes | None, meta: dict,
                     names: list[str], repo_digests: list[str]) -> Image:
        """Make the image visible (rename), then point its names at it (atomic refs.json).

        manifest/config None: the image is known to be there already; only names and digests change.
        """
        with self.lock("store"):
            d = self.path("images", image_id)
            if not os.path.isfile(os.path.join(d, "image.json")):
                if manifest is None or config is None:
                    raise StoreError(f"image {image_id[:12]} was removed meanwhile; pull again")
                with self.staging("image") as st:
                    paths.atomic_write(os.path.join(st, "manifest.json"), manifest)
                    paths.atomic_write(os.path.join(st, "config.json"), config)
                    _write_json(os.path.join(st, "image.json"), {**meta, "repo_digests": sorted(set(repo_digests))})
                    try:
                        os.rename(st, d)
                    except OSError as e:
                        if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                            raise
                        _rmtree(d)  # a husk without image.json (cannot be: rename is atomic) -- replace it
                        os.rename(st, d)
                    os.mkdir(st, 0o700)  # staging() removes it
            else:
                old = _read_json(os.path.join(d, "image.json")) or meta
                old["repo_digests"] = sorted(set(old.get("repo_digests", [])) | set(repo_digests))
                old["digests"] = sorted(set(old.get("digests", [])) | set(meta.get("digests", [])))
                old["pulled"] = meta.get("pulled", time.time())
                _write_json(os.path.join(d, "image.json"), old)
            if names:
                refs = self.refs()
                for n in names:
                    refs[n] = image_id
                self._write_refs(refs)
        img = self.image(image_id)
        assert img is not None
        return img

    def tag(self, image_id: str, names: list[str]) -> None:
        with self.lock("store"):
            refs = self.refs()
            for n in names:
                refs[n] = image_id
            self._write_refs(refs)

    # -- removal and GC -------------------------------------------------------------------------
    def untag(self, name: str) -> str | None:
        with self.lock("store"):
            refs = self.refs()
            iid = refs.pop(name, None)
            if iid is not None:
                self._write_refs(refs)
            return iid

    def delete_image(self, image_id: str) -> bool:
        """Drop the image record and every name pointing at it (its layers go at the next gc())."""
        with self.lock("store"):
            refs = self.refs()
            kept = {k: v for k, v in refs.items() if v != image_id}
            if kept != refs:
                self._write_refs(kept)
            d = self.path("images", image_id)
            if not os.path.isdir(d):
                return False
            tomb = self.path("tmp", f"rm-{image_id}-{os.getpid()}")
            os.rename(d, tomb)
        _rmtree(tomb)
        return True

    def gc(self, keep_layers: set[str] | None = None) -> tuple[int, int]:
        """Remove layers no image (and no sandbox in keep_layers) references. Returns (layers, bytes)."""
        freed = count = 0
        with self.lock("gc"):
            with self.lock("store"):
                wanted = {_hex(d) for img in self.images() for d in img.layers}
                wanted |= {_hex(d) for d in (keep_layers or ())}
                try:
                    present = os.listdir(self.path("layers"))
                except FileNotFoundError:
                    present = []
                doomed = []
                for h in present:
                    if h in wanted:
                        continue
                    meta = _read_json(os.path.join(self.path("layers", h), "layer.json")) or {}
                    freed += int(meta.get("size", 0) or 0)
                    tomb = self.path("tmp", f"gc-{h}-{os.getpid()}")
                    os.rename(self.path("layers", h), tomb)  # gone from layers/ in one step
                    doomed.append(tomb)
                    count += 1
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.path("locks", f"layer-{h}.lock"))
            for tomb in doomed:
                _rmtree(tomb)
            self.reap()
        return count, freed


def _hex(digest: str) -> str:
    h = digest[len("sha256:"):] if digest.startswith("sha256:") else digest
    if not reference.ID_RE.match(h):
        raise StoreError(f"malformed digest {escape(digest)!r}")
    return h


def _has_domain(text: str) -> bool:
    first, sep, _ = text.partition("/")
    return bool(sep) and ("." in first or ":" in first or first == "localhost")


def _short_match(ref: str, path: str, tag: str) -> bool:
    try:
        n = reference.parse_name(ref)
    except reference.RefError:
        return False
    if n.tag != tag:
        return False
    p = n.path
    return p == path or p.endswith("/" + path) or (n.domain == reference.DEFAULT_DOMAIN and p == "library/" + path)


def sandbox_usage() -> tuple[dict[str, list[str]], set[str]]:
    """Which sandboxes (by name or short id) use which image id, and every layer some sandbox stacks.

    A sandbox's config.json holds its Spec, whose `image` (sbx run IMAGE) names the image id and
    its diff_ids; gc() keeps those layers until `sbx rm` removes the sandbox, even after `rmi -f`.
    """
    from .. import state
    users: dict[str, list[str]] = {}
    layers: set[str] = set()
    try:
        entries = state.entries()
    except (SbxError, OSError):
        return users, layers
    for e in entries:
        spec = e.config.get("spec")
        img = spec.get("image") if isinstance(spec, dict) else None
        if not isinstance(img, dict):
            continue
        iid = img.get("id")
        if isinstance(iid, str):
            users.setdefault(iid, []).append(e.name or e.id[:12])
        for d in img.get("diff_ids", []) or []:
            if isinstance(d, str) and reference.DIGEST_RE.match(d):
                layers.add(d)
    return users, layers
