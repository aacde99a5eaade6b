"""Hostile layers: every class of the runc/umoci/Docker unpacker CVEs, served as real OCI layouts to the real
`sbx pull` (skopeo reads the layout; sbx verifies and unpacks). Each refusal is exit 125 naming the entry;
nothing outside the store changes (a canary directory next to it is checked after every test), and the
store is left without an image, a layer or a staging directory.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import tarfile

import pytest

from tests.imagekit import Tar, header, need, oci_layout, sha, store_state
from tests.sbxrun import read_text, sbx


@pytest.fixture
def box(tmp_path):
    need("skopeo")
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "victim").write_text("original\n")
    data = tmp_path / "store"

    class Box:
        def __init__(self):
            self.canary = str(canary)
            self.data = str(data)
            self.n = 0

        def layout(self, *layers: bytes, **kw) -> str:
            self.n += 1
            return oci_layout(str(tmp_path / f"layout{self.n}"), list(layers), **kw)

        def pull(self, layout: str, *flags: str, tag: str = "t"):
            return sbx("pull", *flags, f"oci:{layout}:{tag}", env={"SBX_DATA_DIR": self.data}, timeout=120)

        def state(self) -> dict:
            return store_state(self.data)

        def layer_root(self, raw: bytes) -> str:
            return os.path.join(self.data, "layers", hashlib.sha256(raw).hexdigest(), "root")

    b = Box()
    yield b
    # nothing outside the store changed, whatever the test did
    assert sorted(os.listdir(canary)) == ["victim"], os.listdir(canary)
    assert (canary / "victim").read_text() == "original\n"
    assert not os.path.islink(canary / "victim")


def refused(b, p, entry: str, *words: str) -> None:
    assert p.returncode == 125, (p.returncode, p.stdout, p.stderr)
    line = p.stderr.strip().splitlines()[-1]
    assert entry in line, line
    for w in words:
        assert w in line, line
    assert "Traceback" not in p.stderr
    st = b.state()
    assert st["images"] == [] and st["layers"] == [] and st["tmp"] == [] and st["refs"] == {}, st


def test_dotdot_traversal_is_refused_naming_the_entry(box):
    name = "a/../../../../../../../../../.." + box.canary + "/evil"
    p = box.pull(box.layout(Tar().add("ok", data=b"x").add(name, data=b"pwned").bytes()))
    refused(box, p, "evil", "'..'")


def test_absolute_path_is_refused(box):
    p = box.pull(box.layout(Tar().add(box.canary + "/evil", data=b"pwned").bytes()))
    refused(box, p, box.canary + "/evil", "absolute")


@pytest.mark.parametrize("target", ["abs", "rel"])
def test_writing_through_a_planted_symlink_is_refused(box, target):
    link = box.canary if target == "abs" else "../" * 12 + box.canary.lstrip("/")
    layer = Tar().add("esc", tarfile.SYMTYPE, linkname=link).add("esc/victim", data=b"pwned").bytes()
    refused(box, box.pull(box.layout(layer)), "esc/victim", "symlink")


def test_directory_replaced_by_symlink_then_written_through_is_refused(box):
    layer = Tar().dir("d").add("d/ok", data=b"1").add("d", tarfile.SYMTYPE, linkname=box.canary) \
        .add("d/victim", data=b"pwned").bytes()
    refused(box, box.pull(box.layout(layer)), "d/victim", "symlink")


def test_a_file_over_a_planted_symlink_replaces_the_link_never_its_target(box):
    layer = Tar().add("victim", tarfile.SYMTYPE, linkname=box.canary + "/victim") \
        .add("victim", data=b"pwned\n").bytes()
    p = box.pull(box.layout(layer))
    assert p.returncode == 0, p.stderr
    f = os.path.join(box.layer_root(layer), "victim")
    assert not os.path.islink(f) and read_text(f) == "pwned\n"


@pytest.mark.parametrize("how", ["absolute", "dotdot", "through-symlink", "missing"])
def test_hardlink_outside_the_layer_is_refused(box, how):
    t = Tar()
    if how == "absolute":
        t.add("hl", tarfile.LNKTYPE, linkname=box.canary + "/victim")
        words = ("absolute",)
    elif how == "dotdot":
        t.add("hl", tarfile.LNKTYPE, linkname="../" * 12 + box.canary.lstrip("/") + "/victim")
        words = ("'..'",)
    elif how == "through-symlink":
        t.add("esc", tarfile.SYMTYPE, linkname=box.canary).add("hl", tarfile.LNKTYPE, linkname="esc/victim")
        words = ("symlink",)
    else:
        t.add("hl", tarfile.LNKTYPE, linkname="not/here")
        words = ("does not",)
    refused(box, box.pull(box.layout(t.bytes())), "hl", *words)


def test_hardlink_inside_the_layer_is_a_real_link(box):
    layer = Tar().add("bin/a", data=b"same", mode=0o755).add("bin/b", tarfile.LNKTYPE, linkname="bin/a").bytes()
    assert box.pull(box.layout(layer)).returncode == 0
    r = box.layer_root(layer)
    assert os.stat(os.path.join(r, "bin/a")).st_ino == os.stat(os.path.join(r, "bin/b")).st_ino


@pytest.mark.parametrize("entry", ["esc/.wh.victim", "esc/.wh..wh..opq"])
def test_whiteouts_through_a_symlink_are_refused(box, entry):
    layer = Tar().add("esc", tarfile.SYMTYPE, linkname=box.canary).add(entry).bytes()
    refused(box, box.pull(box.layout(layer)), entry, "symlink")


@pytest.mark.parametrize("entry,word", [(".wh..", "'..'"), ("a/../.wh.x", "'..'"), (".wh.", "whiteout")])
def test_malformed_whiteouts_are_refused(box, entry, word):
    refused(box, box.pull(box.layout(Tar().add(entry).bytes())), entry, word)


def test_devices_and_fifos_are_skipped_and_said(box):
    layer = Tar().add("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3) \
        .add("dev/sda", tarfile.BLKTYPE, devmajor=8, devminor=0).add("run/fifo", tarfile.FIFOTYPE) \
        .add("etc/ok", data=b"fine").bytes()
    p = box.pull(box.layout(layer))
    assert p.returncode == 0, p.stderr
    assert "skipped 3" in p.stderr and "dev/null (character device)" in p.stderr and "run/fifo (fifo)" in p.stderr
    r = box.layer_root(layer)
    assert not os.path.lexists(os.path.join(r, "dev/null")) and not os.path.lexists(os.path.join(r, "dev/sda"))
    assert not os.path.lexists(os.path.join(r, "run/fifo"))
    assert read_text(os.path.join(r, "etc/ok")) == "fine"


def test_size_cap_is_named(box):
    layer = Tar().add("small", data=b"x" * 1000).add("big", data=b"\0" * (3 << 20)).bytes()
    p = box.pull(box.layout(layer), "--max-size", "2m")
    refused(box, p, "big", "--max-size 2MiB")


def test_declared_size_over_the_default_cap_is_refused_before_reading(box):
    # a header claiming 40 GiB and carrying nothing: the cap is checked on the header, not after 32 GiB
    layer = header(b"huge", 40 << 30, size_field=b"\x80" + (40 << 30).to_bytes(11, "big")) + b"\0" * 1024
    p = box.pull(box.layout(layer))
    refused(box, p, "huge", "--max-size 32GiB")


def test_decompression_bomb_is_stopped_by_the_stream_cap(box):
    # 64 MiB of zeros gzip to ~64 KiB; the stream itself stops at the cap (here 8 MiB)
    layer = Tar().add("zeros", data=b"\0" * (64 << 20)).bytes()
    p = box.pull(box.layout(layer), "--max-size", "8m")
    assert p.returncode == 125, p.stderr
    assert "--max-size 8MiB" in p.stderr and "zeros" in p.stderr
    st = box.state()
    assert st["layers"] == [] and st["tmp"] == [] and st["images"] == []


def test_entry_count_cap_is_named(box):
    t = Tar()
    for i in range(60):
        t.add(f"f{i:03d}", data=b"")
    p = box.pull(box.layout(t.bytes()), "--max-entries", "50")
    refused(box, p, "f050", "--max-entries 50")


@pytest.mark.parametrize("kind", [b"x", b"L", b"K"])
def test_oversized_extended_headers_are_refused_without_buffering(box, kind):
    # tarfile would allocate the declared 2 GiB in one read; sbx refuses the header at 1 MiB
    layer = header(b"././@LongLink", 2 << 30, kind) + b"\0" * 4096
    p = box.pull(box.layout(layer))
    refused(box, p, "@LongLink", "extended header")


def test_garbage_is_a_one_line_refusal(box):
    p = box.pull(box.layout(os.urandom(4096)))
    assert p.returncode == 125 and "checksum" in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert box.state()["layers"] == []


def test_truncated_layer_is_refused(box):
    raw = Tar().add("f", data=b"y" * 5000).bytes()[:1536]
    p = box.pull(box.layout(raw))
    assert p.returncode == 125 and "'f'" in p.stderr and "ends in the middle" in p.stderr, p.stderr


def test_image_xattrs_overlay_and_security_are_dropped_user_kept(box):
    pax = {"SCHILY.xattr.trusted.overlay.redirect": "/etc", "SCHILY.xattr.user.overlay.opaque": "y",
           "SCHILY.xattr.security.capability": "\x01\x00\x00\x02\x00\x20\x00\x00", "SCHILY.xattr.user.keep": "v"}
    layer = Tar().add("d", tarfile.DIRTYPE, mode=0o755, pax=pax).add("d/f", data=b"x", pax=pax).bytes()
    p = box.pull(box.layout(layer))
    assert p.returncode == 0, p.stderr
    r = box.layer_root(layer)
    for rel in ("d", "d/f"):
        names = set(os.listxattr(os.path.join(r, rel), follow_symlinks=False))
        assert names == {"user.keep"}, (rel, names)


def test_setuid_bits_and_owners_are_kept_on_disk_inside_the_private_store(box):
    layer = Tar().add("bin/su", data=b"#!", mode=0o4755, uid=0).add("home/app/f", data=b"a", uid=4242, gid=4343).bytes()
    assert box.pull(box.layout(layer)).returncode == 0
    r = box.layer_root(layer)
    st = os.stat(os.path.join(r, "bin/su"))
    assert st.st_mode & 0o7777 == 0o4755
    st = os.stat(os.path.join(r, "home/app/f"))
    assert (st.st_uid, st.st_gid) == (4242, 4343)
    # the store is 0700 all the way: no host user reaches a setuid file of an image
    for d in (box.data, os.path.join(box.data, "layers")):
        assert os.stat(d).st_mode & 0o777 == 0o700


def test_whiteouts_and_opaque_dirs_hide_lower_layers_in_a_real_overlay(box, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting overlayfs in the init namespace needs root")
    l1 = Tar().add("a/x", data=b"x").add("a/y", data=b"y").add("b/z", data=b"z").add("keep", data=b"k").bytes()
    l2 = Tar().add("a/.wh.x").add("b/.wh..wh..opq").add("b/new", data=b"n").add(".wh.keep").add("keep", data=b"2") \
        .bytes()
    p = box.pull(box.layout(l1, l2))
    assert p.returncode == 0, p.stderr
    r1, r2 = box.layer_root(l1), box.layer_root(l2)
    st = os.stat(os.path.join(r2, "a/x"), follow_symlinks=False)
    assert (st.st_mode & 0o170000, st.st_rdev) == (0o020000, 0)  # overlay's whiteout: a 0/0 character device
    assert os.getxattr(os.path.join(r2, "b"), "trusted.overlay.opaque") == b"y"
    assert os.getxattr(os.path.join(r2, "b"), "user.overlay.opaque") == b"y"
    assert read_text(os.path.join(r2, "keep")) == "2"  # the same layer's own file wins over its whiteout
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    out = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                          f"mount -t overlay overlay -o ro,lowerdir={r2}:{r1} {mnt} && cd {mnt} && find . | sort"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [".", "./a", "./a/y", "./b", "./b/new", "./keep"], out.stdout


def test_tampered_layer_blob_is_refused_and_nothing_stored(box):
    layer = Tar().add("f", data=b"content" * 1000).bytes()
    p = box.pull(box.layout(layer, tamper_layer=0))
    assert p.returncode == 125, p.stderr
    assert "digest" in p.stderr.lower() and "Traceback" not in p.stderr
    st = box.state()
    assert st["images"] == [] and st["layers"] == [] and st["tmp"] == []


def test_diff_id_mismatch_is_refused_by_sbx(box):
    # skopeo copies this happily (it does not check diff_ids for a dir: copy); sbx's own check refuses it
    layer = Tar().add("f", data=b"real").bytes()
    p = box.pull(box.layout(layer, diff_ids=[sha(b"something else")]))
    assert p.returncode == 125 and "diff_id" in p.stderr, p.stderr
    st = box.state()
    assert st["images"] == [] and st["layers"] == [] and st["tmp"] == []


def test_sbx_verifies_blobs_itself_not_only_skopeo(box, tmp_path):
    """Bytes changed after skopeo's copy (its check passed) are still refused by sbx's own sha256."""
    from sandbox.image import pull as imgpull
    from sandbox.image.blob import BlobError
    from sandbox.image.store import Store
    layer = Tar().add("f", data=os.urandom(20000)).bytes()
    layout = box.layout(layer)
    staged = tmp_path / "staged"
    subprocess.run(["skopeo", "copy", "-q", f"oci:{layout}:t", f"dir:{staged}"], check=True, capture_output=True)
    blobs = [f for f in os.listdir(staged) if len(f) == 64 and os.path.getsize(staged / f) > 1000]
    assert len(blobs) == 1
    data = bytearray((staged / blobs[0]).read_bytes())
    data[100] ^= 1
    (staged / blobs[0]).write_bytes(bytes(data))
    store = Store(box.data).ensure()
    with store.staging() as st, pytest.raises(BlobError, match="does not match its digest"):
        imgpull.ingest(store, str(staged), st, opts=imgpull.PullOptions(quiet=True), expect=None, names=[],
                       repo_digests=[], digests=[], source="test", what="test")
    s = box.state()
    assert s["images"] == [] and s["layers"] == [] and s["tmp"] == []


def test_zstd_and_uncompressed_layers(box):
    need("zstd")
    a = Tar().add("z", data=b"zstd layer").bytes()
    b = Tar().add("u", data=b"plain layer").bytes()
    assert box.pull(box.layout(a, compress="zstd")).returncode == 0
    assert box.pull(box.layout(b, compress="none")).returncode == 0
    assert read_text(os.path.join(box.layer_root(a), "z")) == "zstd layer"
    assert read_text(os.path.join(box.layer_root(b), "u")) == "plain layer"


def test_read_only_directories_of_an_image_unpack_and_keep_their_mode(box):
    layer = Tar().dir("ro", mode=0o555).add("ro/inside", data=b"i").bytes()
    assert box.pull(box.layout(layer)).returncode == 0
    r = box.layer_root(layer)
    assert os.stat(os.path.join(r, "ro")).st_mode & 0o777 == 0o555
    assert read_text(os.path.join(r, "ro/inside")) == "i"


@pytest.mark.parametrize("order", ["whiteout-first", "whiteout-last"])
def test_a_directory_whited_out_and_recreated_in_one_layer_hides_the_lower_one(box, tmp_path, order):
    """OCI: a whiteout hides the lower layers' entry, never the same layer's: the new dir must be opaque."""
    if os.geteuid() != 0:
        pytest.skip("mounting overlayfs in the init namespace needs root")
    l1 = Tar().add("opt/old", data=b"old").add("keep", data=b"k").bytes()
    t = Tar()
    if order == "whiteout-first":
        t.add(".wh.opt").add("opt/new", data=b"new")
    else:
        t.add("opt/new", data=b"new").add(".wh.opt")
    l2 = t.bytes()
    assert box.pull(box.layout(l1, l2)).returncode == 0
    r1, r2 = box.layer_root(l1), box.layer_root(l2)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    out = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                          f"mount -t overlay overlay -o ro,lowerdir={r2}:{r1} {mnt} && cd {mnt} && find . | sort"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [".", "./keep", "./opt", "./opt/new"], out.stdout
