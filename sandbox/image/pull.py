"""`sbx pull`: fetch with skopeo into a staging dir, verify every byte ourselves, unpack, then publish by rename.

The chain sbx checks, whatever skopeo already did:
  reference digest (if given) == sha256(raw manifest or index)   -- pull by digest
  index -> the linux/<arch> manifest digest, then copied BY THAT DIGEST (the tag cannot move between
           our look and skopeo's copy)
  sha256(staged manifest) == that digest; config blob: size and sha256 == the manifest's descriptor
  every layer blob: size and sha256 == its descriptor, before the unpacker reads a byte of it
  sha256(uncompressed layer) == the config's rootfs.diff_ids[i], before the layer is renamed into the store
A mismatch anywhere is exit 125 naming the blob, and the staging directory (all of it) is removed.
"""
from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..errors import SbxError, escape
from . import blob, reference, skopeo, tarstream, unpack
from .store import Image, Store, StoreError, _hex

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
           "application/vnd.docker.distribution.manifest.v1+prettyjws")
CONFIG_TYPES = ("application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json")
LAYER_TYPES = (
    "application/vnd.oci.image.layer.v1.tar", "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd", "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
)
MAX_CONFIG = 8 << 20
MAX_LAYERS = 500
GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x",
          "riscv64": "riscv64", "i686": "386"}


class PullError(SbxError):
    pass


@dataclass
class PullOptions:
    transport: skopeo.Options = field(default_factory=skopeo.Options)
    quiet: bool = False
    progress: bool = False  # a terminal: skopeo's byte counters and our per-layer lines
    limits: unpack.Limits = field(default_factory=unpack.Limits)
    workers: int = 0  # layers unpacked at once; 0 = one per CPU (at most 4)


def _say(opts: PullOptions, msg: str) -> None:
    if not opts.quiet:
        sys.stderr.write(escape(msg) + "\n")
        sys.stderr.flush()


def host_arch() -> str:
    m = os.uname().machine
    return GOARCH.get(m, m)


# -- manifests ------------------------------------------------------------------------------------

def _json(data: bytes, what: str) -> dict:
    try:
        obj = json.loads(data)
    except ValueError as e:
        raise PullError(f"{what} is not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise PullError(f"{what} is not a JSON object")
    return obj


def _descriptor(d, what: str) -> dict:
    if not isinstance(d, dict) or not isinstance(d.get("digest"), str) or not reference.DIGEST_RE.match(d["digest"]):
        raise PullError(f"{what}: a descriptor without a sha256 digest")
    size = d.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise PullError(f"{what} {d['digest']}: a descriptor without a valid size")
    return d


def kind_of(m: dict) -> str:
    mt = m.get("mediaType")
    if mt in SCHEMA1 or m.get("schemaVersion") == 1:
        return "schema1"
    if mt in (OCI_INDEX, DOCKER_LIST) or (mt is None and "manifests" in m):
        return "index"
    if mt in (OCI_MANIFEST, DOCKER_MANIFEST) or (mt is None and "config" in m and "layers" in m):
        return "manifest"
    return f"unknown ({mt})"


def select_platform(index: dict, what: str) -> dict:
    """The linux/<host arch> entry of an index (podman's choice without --platform)."""
    arch = host_arch()
    entries = index.get("manifests")
    if not isinstance(entries, list):
        raise PullError(f"{what}: an index without manifests")
    seen = []
    for e in entries:
        p = e.get("platform") if isinstance(e, dict) else None
        if not isinstance(p, dict):
            continue
        seen.append(f"{p.get('os')}/{p.get('architecture')}" + (f"/{p['variant']}" if p.get("variant") else ""))
        if p.get("os") == "linux" and p.get("architecture") == arch:
            if arch == "arm64" and p.get("variant") not in (None, "v8"):
                continue
            return _descriptor(e, what)
    raise PullError(f"{what}: no linux/{arch} image in the index (it has: {', '.join(seen[:8]) or 'none'})")


def parse_manifest(data: bytes, what: str) -> tuple[dict, list[dict]]:
    m = _json(data, what)
    k = kind_of(m)
    if k == "schema1":
        raise PullError(f"{what}: a Docker schema 1 manifest (deprecated, unsigned layers digests): not supported")
    if k != "manifest":
        raise PullError(f"{what}: not an image manifest ({k})")
    cfg = _descriptor(m.get("config"), f"{what}: config")
    if cfg.get("mediaType", CONFIG_TYPES[0]) not in CONFIG_TYPES:
        raise PullError(f"{what}: config type {cfg.get('mediaType')!r} is not a container image (an OCI artifact?)")
    layers = m.get("layers")
    if not isinstance(layers, list) or len(layers) > MAX_LAYERS:
        raise PullError(f"{what}: layers must be a list of at most {MAX_LAYERS}")
    out = []
    for i, d in enumerate(layers):
        d = _descriptor(d, f"{what}: layer {i}")
        mt = d.get("mediaType", LAYER_TYPES[1])
        if mt not in LAYER_TYPES:
            raise PullError(f"{what}: layer {d['digest']} has media type {mt!r}, which sbx does not unpack "
                            "(foreign or encrypted layers are not supported)")
        out.append(d)
    return cfg, out


def parse_config(data: bytes, nlayers: int, what: str) -> tuple[dict, list[str]]:
    c = _json(data, what)
    rootfs = c.get("rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers" or not isinstance(rootfs.get("diff_ids"), list):
        raise PullError(f"{what}: no rootfs.diff_ids")
    diff_ids = rootfs["diff_ids"]
    if len(diff_ids) != nlayers:
        raise PullError(f"{what}: {len(diff_ids)} diff_ids for {nlayers} layers")
    for d in diff_ids:
        if not isinstance(d, str) or not reference.DIGEST_RE.match(d):
            raise PullError(f"{what}: a diff_id that is not sha256: {escape(str(d))[:80]}")
    if c.get("os", "linux") != "linux":
        raise PullError(f"{what}: the image is for {escape(str(c.get('os')))}, not linux")
    return c, diff_ids


# -- offline archives: their own names --------------------------------------------------------------

class _FileSrc:
    def __init__(self, fd: int):
        self.fd = fd

    def read(self, n: int) -> bytes:
        return os.read(self.fd, n)


def _archive_member(path: str, member: bytes, limit: int = 1 << 20) -> bytes | None:
    """One small file of a tar archive (docker-archive's manifest.json, oci-archive's index.json)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        head = os.pread(fd, 4, 0)
        src = blob.Stream(fd, 1 << 40, path) if head[:2] == blob.GZIP_MAGIC or head == blob.ZSTD_MAGIC \
            else _FileSrc(fd)
        r = tarstream.Reader(src)
        for h in r:
            if h.name.lstrip(b"./") == member and h.is_file() and h.size <= limit:
                data, left = [], h.size
                while left:
                    b = r.read_data(left, h.name)
                    data.append(b)
                    left -= len(b)
                return b"".join(data)
    except (tarstream.TarError, blob.BlobError) as e:
        raise PullError(f"{path}: not a readable archive ({e})") from None
    finally:
        os.close(fd)
    return None


def local_names(ref: reference.Reference) -> list[str]:
    """What an offline import is called: docker-archive RepoTags, an oci ref.name, else podman's localhost/PATH."""
    assert ref.path is not None
    if ref.transport == "docker-archive":
        if ref.local_ref and not ref.local_ref.startswith("@"):
            n = _parse_or_none(ref.local_ref)
            return [n] if n else []
        data = _archive_member(ref.path, b"manifest.json")
        try:
            entries = json.loads(data) if data else []
        except ValueError:
            entries = []
        idx = int(ref.local_ref[1:]) if ref.local_ref and ref.local_ref[1:].isdigit() else 0
        if not isinstance(entries, list) or idx >= len(entries) or not isinstance(entries[idx], dict):
            return []
        tags = entries[idx].get("RepoTags") or []
        return [n for t in tags if isinstance(t, str) and (n := _parse_or_none(t))]
    if ref.transport == "oci":
        try:
            from .store import _read
            data = _read(os.path.join(ref.path, "index.json"), 4 << 20)
        except OSError:
            data = None
    else:
        data = _archive_member(ref.path, b"index.json", 4 << 20)
    ann = None
    try:
        idx = json.loads(data) if data else {}
        mans = idx.get("manifests", []) if isinstance(idx, dict) else []
        for m in mans:
            a = (m.get("annotations") or {}).get("org.opencontainers.image.ref.name") if isinstance(m, dict) else None
            if ref.local_ref is None and len(mans) == 1 or a == ref.local_ref:
                ann = a if isinstance(a, str) else None
                break
    except (ValueError, AttributeError):
        pass
    n = reference.local_name(ref.local_ref or ann)
    if n is None and ref.transport == "oci":
        n = reference.path_name(ref.path)
    return [n.tagged()] if n and n.tagged() else []


def _parse_or_none(text: str) -> str | None:
    try:
        return reference.parse_name(text).tagged()
    except reference.RefError:
        return None


# -- the pull ---------------------------------------------------------------------------------------

def pull(text: str, opts: PullOptions | None = None, store: Store | None = None) -> Image:
    opts = opts or PullOptions()
    ref = reference.parse(text)
    store = (store or Store()).ensure()
    store.reap()
    t0 = time.monotonic()
    with store.lock("gc", shared=True), store.staging() as st:
        blobs = os.path.join(st, "blobs")
        tmp = os.path.join(st, "tmp")
        os.mkdir(tmp, 0o700)
        repo_digests: list[str] = []
        digests: list[str] = []
        expect = None
        if ref.transport == "docker":
            name = ref.name
            assert name is not None
            opts.transport.warn_insecure(name.domain)
            what = f"{name}"
            raw = skopeo.inspect_raw(ref.skopeo(), opts.transport, what=f"pull {what}")
            top = blob.digest_bytes(raw)
            if name.digest and top != name.digest:
                raise PullError(f"pull {what}: the registry served a manifest whose digest is {top}, not {name.digest}: "
                                "refusing it (nothing stored)")
            digests.append(top)
            m = _json(raw, f"{what}: manifest")
            if kind_of(m) == "index":
                expect = select_platform(m, f"{what}: index")["digest"]
                digests.append(expect)
            else:
                expect = top
            repo_digests = [name.with_digest(d) for d in digests]
            names = [name.tagged()] if name.tagged() else []
            have = store.by_digest(expect)
            if have is not None:
                store.commit_image(have.id, None, None, {"digests": digests, "pulled": time.time()}, names, repo_digests)
                _say(opts, f"Image {have.short} is up to date ({expect})")
                return store.image(have.id) or have
            src = f"docker://{name.repo}@{expect}"  # pinned: the tag cannot move between inspect and copy
            mbytes = raw if expect == top else skopeo.inspect_raw(src, opts.transport, what=f"pull {what}")
            if blob.digest_bytes(mbytes) != expect:
                raise PullError(f"pull {what}: the registry served a manifest that is not {expect}: refusing it "
                                "(nothing stored)")
            cfg_desc, _ = parse_manifest(mbytes, f"{what}: manifest")
            _say(opts, f"Pulling {name}")
            # The download runs while we unpack: each layer starts as soon as its blob is complete.
            copy = skopeo.Copy(src, blobs, opts.transport, what=f"pull {what}",
                               progress=opts.progress and not opts.quiet, tmpdir=tmp)
            try:
                cbytes = skopeo.inspect_config(src, opts.transport, what=f"pull {what}")
                if len(cbytes) != cfg_desc["size"] or blob.digest_bytes(cbytes) != cfg_desc["digest"]:
                    raise PullError(f"pull {what}: the registry served a config that is not {cfg_desc['digest']}: "
                                    "refusing it (nothing stored)")
                img = ingest(store, blobs, st, opts=opts, expect=expect, names=names, repo_digests=repo_digests,
                             digests=digests, source=str(name), what=what, manifest=mbytes, config=cbytes,
                             wait=copy.wait, before_commit=copy.finish)
            except BaseException as e:
                err = copy.failed() if isinstance(e, SbxError) else None
                copy.kill()
                if err is not None:
                    raise err from None  # skopeo's own reason (say, a digest mismatch) says most
                raise
            copy.kill()
        else:
            if not os.path.exists(ref.path or ""):
                raise PullError(f"pull {escape(text)}: {escape(ref.path or '')} does not exist")
            names = local_names(ref)
            src = ref.skopeo()
            _say(opts, f"Pulling {src}")
            skopeo.copy_to_dir(src, blobs, opts.transport, what=f"pull {src}",
                               progress=opts.progress and not opts.quiet, tmpdir=tmp)
            img = ingest(store, blobs, st, opts=opts, expect=None, names=names, repo_digests=[],
                         digests=[], source=src, what=src)
    _say(opts, f"Pulled {img.short} in {time.monotonic() - t0:.1f}s")
    return img


def _blob_fd(blobs: str, digest: str, what: str) -> int:
    try:
        return os.open(os.path.join(blobs, _hex(digest)), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise PullError(f"{what}: blob {digest} is missing from what skopeo fetched") from None


def ingest(store: Store, blobs: str, st: str, *, opts: PullOptions, expect: str | None, names: list[str],
           repo_digests: list[str], digests: list[str], source: str, what: str, manifest: bytes | None = None,
           config: bytes | None = None, wait=None, before_commit=None) -> Image:
    """Verify a skopeo dir: copy (manifest.json + blobs by hex digest) and publish it into the store.

    manifest/config: bytes sbx fetched itself (a registry pull; still checked here), else read from
    the dir. wait(name): blocks until a blob is complete (a copy still running); before_commit():
    the copy must have ended well before the image becomes visible.
    """
    from .store import _read
    if manifest is not None:
        mbytes = manifest
    else:
        try:
            mbytes = _read(os.path.join(blobs, "manifest.json"), skopeo.MAX_MANIFEST)
        except FileNotFoundError:
            raise PullError(f"{what}: skopeo wrote no manifest") from None
    mdigest = blob.digest_bytes(mbytes)
    if expect is not None and mdigest != expect:
        raise PullError(f"{what}: the manifest fetched is {mdigest}, not the {expect} asked for: refusing it "
                        "(nothing stored)")
    if mdigest not in digests:
        digests.append(mdigest)
    cfg_desc, layer_descs = parse_manifest(mbytes, f"{what}: manifest")
    if cfg_desc["size"] > MAX_CONFIG:
        raise PullError(f"{what}: config of {cfg_desc['size']} bytes (more than {MAX_CONFIG})")
    if config is not None:
        cbytes = config
    else:
        cfd = _blob_fd(blobs, cfg_desc["digest"], what)
        try:
            blob.verify_fd(cfd, cfg_desc["digest"], cfg_desc["size"], f"{what}: config")
            cbytes = os.pread(cfd, cfg_desc["size"] + 1, 0)
        finally:
            os.close(cfd)
    if len(cbytes) != cfg_desc["size"] or blob.digest_bytes(cbytes) != cfg_desc["digest"]:
        raise PullError(f"{what}: config {cfg_desc['digest']} does not match its digest: refusing it (nothing stored)")
    config, diff_ids = parse_config(cbytes, len(layer_descs), f"{what}: config")
    image_id = _hex(cfg_desc["digest"])
    arch = config.get("architecture")
    if isinstance(arch, str) and arch and arch != host_arch():
        sys.stderr.write(f"sbx: warning: image {image_id[:12]} is for {escape(arch)}, this host is {host_arch()}\n")

    budget = unpack.Budget(opts.limits)
    n = len(layer_descs)
    jobs = list(enumerate(zip(layer_descs, diff_ids, strict=False)))
    workers = opts.workers or min(4, os.cpu_count() or 1)
    sizes: dict[str, int] = {}

    failures: list[BaseException] = []

    def one(job):
        i, (desc, diff_id) = job
        try:
            if wait is not None:
                wait(_hex(desc["digest"]))
            sizes[diff_id] = ensure_layer(store, blobs, st, desc, diff_id, budget, opts, f"{i + 1}/{n}")
        except BaseException as e:
            if not budget.aborted:
                failures.append(e)  # the first real failure, not the "stopped" of its siblings
            budget.abort()
            raise

    if workers > 1 and n > 1:
        with ThreadPoolExecutor(max_workers=min(workers, n)) as ex:
            futures = [ex.submit(one, j) for j in jobs]
            for f in futures:
                f.exception()  # wait for all: none may still write into staging when it is removed
        if failures or any(f.exception() for f in futures):
            raise failures[0] if failures else next(f.exception() for f in futures if f.exception())
    else:
        for j in jobs:
            one(j)

    if before_commit is not None:
        before_commit()
    meta = {
        "id": image_id, "digest": mdigest, "digests": sorted(set(digests)), "layers": diff_ids,
        "layer_blobs": [d["digest"] for d in layer_descs], "size": sum(sizes.values()),
        "created": config.get("created") if isinstance(config.get("created"), str) else None,
        "pulled": time.time(), "source": source, "media_type": _json(mbytes, "manifest").get("mediaType"),
    }
    return store.commit_image(image_id, mbytes, cbytes, meta, names, repo_digests)


def ensure_layer(store: Store, blobs: str, st: str, desc: dict, diff_id: str, budget: unpack.Budget,
                 opts: PullOptions, pos: str) -> int:
    """Verify the blob, and unpack it unless the store has this diff_id already. Returns the layer's size."""
    short = desc["digest"][:19]
    what = f"layer {desc['digest']}"
    fd = _blob_fd(blobs, desc["digest"], what)
    try:
        blob.verify_fd(fd, desc["digest"], desc["size"], "layer")  # before anything parses it
        h = _hex(diff_id)
        with store.lock(f"layer-{h}"):
            if store.has_layer(diff_id):
                size = int(store.layer_meta(diff_id).get("size", 0) or 0)
                if opts.progress:
                    _say(opts, f"Layer {pos} {short} already in the store")
                return size
            t0 = time.monotonic()
            work = os.path.join(st, "layer-" + h)
            os.mkdir(work, 0o700)
            os.mkdir(os.path.join(work, "root"), 0o755)
            rfd = os.open(os.path.join(work, "root"), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            stream = blob.Stream(fd, opts.limits.max_bytes, f"layer {desc['digest']}")
            try:
                report = unpack.unpack(stream, rfd, desc["digest"], budget)
                stream.drain()
            finally:
                stream.close()
                os.close(rfd)
            got = stream.digest()
            if got != diff_id:
                raise PullError(f"layer {desc['digest']}: its uncompressed content is {got}, but the image config "
                                f"says diff_id {diff_id}: refusing it (nothing stored)")
            if report.skipped:
                shown = ", ".join(f"{escape(n)} ({k})" for n, k in report.skipped[:5])
                more = f" and {len(report.skipped) - 5} more" if len(report.skipped) > 5 else ""
                sys.stderr.write(f"sbx: layer {short}: skipped {len(report.skipped)} entries sbx never creates "
                                 f"from an image (device nodes, fifos): {shown}{more}\n")
            meta = {"diff_id": diff_id, "blobs": [desc["digest"]], "media_type": desc.get("mediaType"),
                    "compression": stream.kind, "size": report.bytes, "entries": report.entries,
                    "skipped": [[n, k] for n, k in report.skipped[:100]], "skipped_count": len(report.skipped),
                    "dropped_xattrs": report.dropped_xattrs, "whiteouts": report.whiteouts,
                    "opaque_dirs": report.opaque, "unpacked": time.time(), "uid": os.geteuid()}
            from .. import paths
            paths.atomic_write(os.path.join(work, "layer.json"), json.dumps(meta, sort_keys=True).encode())
            store.publish_layer(work, diff_id)
            if opts.progress:
                _say(opts, f"Layer {pos} {short}: {blob.human(report.bytes)} in {report.entries} entries "
                           f"({time.monotonic() - t0:.2f}s)")
            return report.bytes
    except StoreError:
        raise
    finally:
        os.close(fd)
