"""Real parts for the image tests: Debian's docker-registry on loopback (htpasswd + a self-signed openssl
certificate), images built with umoci from busybox-static and pushed with skopeo, and hand-written OCI
layouts whose layers are crafted byte by byte (what a hostile registry or archive would serve).

Nothing here imitates sbx; every archive is read by the real skopeo, every image by the real sbx CLI.
"""
from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass

import pytest
from tests.sbxrun import read_bytes

USER, PASSWORD = "sbxuser", "s3cret-Pa55"
BUSYBOX = "/bin/busybox"
APPLETS = ("sh", "true", "false", "id", "cat", "ls", "env", "pwd", "sleep", "echo", "stat", "test")


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (installed by .ci/setup: apt-get install docker-registry "
                    "apache2-utils umoci skopeo busybox-static)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Registry:
    host: str  # 127.0.0.1:PORT
    dir: str
    certs: str  # a --cert-dir holding ca.crt
    authfile: str  # logged in (for pushing)
    storage: str
    proc: subprocess.Popen

    def push(self, layout: str, tag: str, name: str) -> str:
        """skopeo copy oci:LAYOUT:TAG docker://HOST/NAME; returns the pushed manifest digest."""
        dfile = os.path.join(self.dir, "digest")
        subprocess.run(["skopeo", "copy", "-q", "--dest-authfile", self.authfile, "--dest-cert-dir", self.certs,
                        "--digestfile", dfile, f"oci:{layout}:{tag}", f"docker://{self.host}/{name}"],
                       check=True, capture_output=True, timeout=120)
        with open(dfile) as f:
            return f.read().strip()

    def blob_data(self, digest: str) -> str:
        h = digest.split(":", 1)[1]
        return os.path.join(self.storage, "docker/registry/v2/blobs/sha256", h[:2], h, "data")


@pytest.fixture(scope="session")
def registry():
    need("docker-registry", "htpasswd", "openssl", "skopeo")
    d = tempfile.mkdtemp(prefix="sbximg-reg-")
    port = _free_port()
    host = f"127.0.0.1:{port}"
    key, cert = os.path.join(d, "key.pem"), os.path.join(d, "cert.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    certs = os.path.join(d, "certs")
    os.mkdir(certs)
    shutil.copy(cert, os.path.join(certs, "ca.crt"))
    htp = subprocess.run(["htpasswd", "-Bbn", USER, PASSWORD], check=True, capture_output=True, text=True).stdout
    with open(os.path.join(d, "htpasswd"), "w") as f:
        f.write(htp)
    storage = os.path.join(d, "storage")
    with open(os.path.join(d, "config.yml"), "w") as f:
        f.write(f"""version: 0.1
log: {{level: error, accesslog: {{disabled: true}}}}
storage: {{filesystem: {{rootdirectory: {storage}}}, delete: {{enabled: true}}, cache: {{}}}}
http: {{addr: {host}, tls: {{certificate: {cert}, key: {key}}}}}
auth: {{htpasswd: {{realm: sbx-test, path: {d}/htpasswd}}}}
""")
    log = open(os.path.join(d, "registry.log"), "wb")
    proc = subprocess.Popen(["docker-registry", "serve", os.path.join(d, "config.yml")], stdout=log, stderr=log,
                            start_new_session=True)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"docker-registry did not start: {open(os.path.join(d, 'registry.log')).read()[-500:]}")
            time.sleep(0.05)
    authfile = os.path.join(d, "push-auth.json")
    with open(authfile, "w") as f:
        json.dump({"auths": {host: {"auth": base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}}}, f)
    os.chmod(authfile, 0o600)
    reg = Registry(host, d, certs, authfile, storage, proc)
    try:
        yield reg
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(d, ignore_errors=True)


# -- images built with umoci ---------------------------------------------------------------------

def busybox_rootfs(root: str, passwd: str | None = None, group: str | None = None, extra: dict | None = None) -> None:
    os.makedirs(os.path.join(root, "bin"), exist_ok=True)
    os.makedirs(os.path.join(root, "etc"), exist_ok=True)
    os.makedirs(os.path.join(root, "tmp"), exist_ok=True)
    os.chmod(os.path.join(root, "tmp"), 0o1777)
    shutil.copy(BUSYBOX, os.path.join(root, "bin", "busybox"))
    for a in APPLETS:
        p = os.path.join(root, "bin", a)
        if not os.path.lexists(p):
            os.symlink("busybox", p)
    with open(os.path.join(root, "etc", "passwd"), "w") as f:
        f.write(passwd if passwd is not None else "root:x:0:0:root:/root:/bin/sh\n"
                                                  "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
    with open(os.path.join(root, "etc", "group"), "w") as f:
        f.write(group if group is not None else "root:x:0:\nnogroup:x:65534:\n")
    for rel, content in (extra or {}).items():
        p = os.path.join(root, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(content if isinstance(content, bytes) else content.encode())


def umoci_image(layout: str, tag: str, rootfs_fill, config: list[str] | None = None) -> str:
    """A one-layer image: umoci init/new/unpack, rootfs_fill(rootfs_dir), repack, config flags."""
    need("umoci")
    if not os.path.isdir(layout):
        subprocess.run(["umoci", "init", "--layout", layout], check=True, capture_output=True)
    subprocess.run(["umoci", "new", "--image", f"{layout}:{tag}"], check=True, capture_output=True)
    bundle = tempfile.mkdtemp(prefix="sbximg-bundle-")
    shutil.rmtree(bundle)
    try:
        subprocess.run(["umoci", "unpack", "--image", f"{layout}:{tag}", bundle], check=True, capture_output=True)
        rootfs_fill(os.path.join(bundle, "rootfs"))
        subprocess.run(["umoci", "repack", "--image", f"{layout}:{tag}", bundle], check=True, capture_output=True)
    finally:
        shutil.rmtree(bundle, ignore_errors=True)
    if config:
        subprocess.run(["umoci", "config", "--image", f"{layout}:{tag}", *config], check=True, capture_output=True)
    return layout


def umoci_add_layer(layout: str, src_tag: str, tag: str, change) -> None:
    """A second layer on top of src_tag: unpack, change(rootfs), repack under a new tag."""
    bundle = tempfile.mkdtemp(prefix="sbximg-bundle-")
    shutil.rmtree(bundle)
    try:
        subprocess.run(["umoci", "unpack", "--image", f"{layout}:{src_tag}", bundle], check=True, capture_output=True)
        change(os.path.join(bundle, "rootfs"))
        subprocess.run(["umoci", "repack", "--image", f"{layout}:{tag}", bundle], check=True, capture_output=True)
    finally:
        shutil.rmtree(bundle, ignore_errors=True)


# -- crafted layers -------------------------------------------------------------------------------

class Tar:
    """Build a layer tar entry by entry (tarfile only WRITES here; sbx never uses it to read)."""

    def __init__(self, fmt=tarfile.PAX_FORMAT):
        self.buf = io.BytesIO()
        self.t = tarfile.open(fileobj=self.buf, mode="w", format=fmt)

    def add(self, name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", linkname: str = "", mode: int = 0o644,
            uid: int = 0, gid: int = 0, pax: dict | None = None, devmajor: int = 0, devminor: int = 0) -> Tar:
        ti = tarfile.TarInfo(name)
        ti.type = kind
        ti.mode = mode
        ti.uid, ti.gid = uid, gid
        ti.linkname = linkname
        ti.devmajor, ti.devminor = devmajor, devminor
        ti.mtime = 1_700_000_000
        if pax:
            ti.pax_headers = pax
        ti.size = len(data) if kind == tarfile.REGTYPE else 0
        self.t.addfile(ti, io.BytesIO(data) if ti.size else None)
        return self

    def dir(self, name: str, mode: int = 0o755) -> Tar:
        return self.add(name, tarfile.DIRTYPE, mode=mode)

    def raw(self, data: bytes) -> Tar:
        """Append hand-made bytes (headers tarfile would refuse to write)."""
        self.t.fileobj.write(data)
        self.t.offset += len(data)
        return self

    def bytes(self) -> bytes:
        self.t.close()
        return self.buf.getvalue()


def header(name: bytes, size: int, kind: bytes = b"0", *, size_field: bytes | None = None, linkname: bytes = b"") -> bytes:
    """One ustar header block, checksummed; size_field lets a test declare what it does not carry."""
    h = bytearray(512)
    h[0:len(name)] = name[:100]
    h[100:108] = b"0000644\0"
    h[108:116] = b"0000000\0"
    h[116:124] = b"0000000\0"
    h[124:136] = size_field if size_field is not None else f"{size:011o}\0".encode()
    h[136:148] = b"14000000000\0"
    h[156:157] = kind
    h[157:157 + len(linkname)] = linkname
    h[257:265] = b"ustar\x0000"
    h[148:156] = b" " * 8
    h[148:156] = f"{sum(h):06o}\0 ".encode()
    return bytes(h)


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def oci_layout(path: str, layers: list[bytes], *, tag: str = "t", config: dict | None = None,
               compress: str = "gzip", diff_ids: list[str] | None = None, tamper_layer: int | None = None) -> str:
    """A real OCI image layout (as umoci/skopeo write one) around crafted layer tars."""
    blobs = os.path.join(path, "blobs", "sha256")
    os.makedirs(blobs, exist_ok=True)

    def put(data: bytes) -> str:
        d = sha(data)
        with open(os.path.join(blobs, d.split(":")[1]), "wb") as f:
            f.write(data)
        return d

    descs = []
    for raw in layers:
        if compress == "gzip":
            data, mt = gzip.compress(raw, 1, mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip"
        elif compress == "zstd":
            data = subprocess.run(["zstd", "-q", "-c"], input=raw, capture_output=True, check=True).stdout
            mt = "application/vnd.oci.image.layer.v1.tar+zstd"
        else:
            data, mt = raw, "application/vnd.oci.image.layer.v1.tar"
        descs.append({"mediaType": mt, "digest": put(data), "size": len(data)})
    cfg = {"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
           "rootfs": {"type": "layers", "diff_ids": diff_ids or [sha(raw) for raw in layers]}}
    if config:
        cfg.update(config)
    cbytes = json.dumps(cfg).encode()
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": put(cbytes),
                           "size": len(cbytes)}, "layers": descs}
    mbytes = json.dumps(manifest).encode()
    index = {"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                               "digest": put(mbytes), "size": len(mbytes),
                                               "annotations": {"org.opencontainers.image.ref.name": tag}}]}
    with open(os.path.join(path, "index.json"), "w") as f:
        json.dump(index, f)
    with open(os.path.join(path, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    if tamper_layer is not None:
        p = os.path.join(blobs, descs[tamper_layer]["digest"].split(":")[1])
        b = bytearray(read_bytes(p))
        b[len(b) // 2] ^= 0xFF
        with open(p, "wb") as f:
            f.write(b)
    return path


def store_state(data_dir: str) -> dict:
    """What a store holds: image ids, layer dirs (complete = has layer.json), staging entries, refs."""
    def ls(*p):
        try:
            return sorted(os.listdir(os.path.join(data_dir, *p)))
        except FileNotFoundError:
            return []
    layers = ls("layers")
    refs = {}
    try:
        with open(os.path.join(data_dir, "refs.json")) as f:
            refs = json.load(f).get("refs", {})
    except FileNotFoundError:
        pass
    return {"images": ls("images"), "layers": layers, "tmp": ls("tmp"), "refs": refs,
            "incomplete": [x for x in layers if not os.path.exists(os.path.join(data_dir, "layers", x, "layer.json"))]}
