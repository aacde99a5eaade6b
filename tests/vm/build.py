"""Build (and cache) the kernel + initramfs the VM harness boots.

The kernel is Debian's own `linux-image-*-amd64` package (AppArmor is its default
LSM, SELinux is compiled in, cgroup v2 works with every controller), fetched with
`apt-get download` so no extra registry or mirror is involved. The initramfs is a
newc cpio written here in Python from busybox-static and the 9p/overlay modules,
so the build needs neither root nor a staging tree.

Everything lands in tests/vm/.cache/ (git-ignored; SBX_VM_CACHE overrides it),
keyed by the package name and a digest of what goes into the initramfs.
"""
from __future__ import annotations

import fcntl
import gzip
import hashlib
import io
import lzma
import os
import platform
import re
import shutil
import struct
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

# Insert order matters: each depends on the ones before it.
MODULES = (
    "virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci",
    "netfs", "fscache", "9pnet", "9pnet_virtio", "9p", "overlay",
)

BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
STAGE_DIR = "/run/sbxvm"          # inside the guest: tmpfs holding busybox + the io share
IO_TAG = "sbxio"                 # 9p tag of the per-run read-write exchange directory
ROOT_TAG = "hostroot"            # 9p tag of the host root (read-only)


class BuildError(RuntimeError):
    """The kernel or initramfs cannot be had on this host; the message says why."""


@dataclass(frozen=True)
class Artifacts:
    kernel: Path        # vmlinuz
    initrd: Path        # gzip'd newc cpio
    package: str        # e.g. linux-image-6.1.0-56-amd64
    release: str        # e.g. 6.1.0-56-amd64


def cache_dir() -> Path:
    env = os.environ.get("SBX_VM_CACHE")
    return Path(env) if env else Path(__file__).resolve().parent / ".cache"


def _run(argv: list[str], cwd: Path | None = None, timeout: float = 600) -> str:
    try:
        p = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise BuildError(f"{argv[0]} not found (install it)") from None
    except subprocess.TimeoutExpired:
        raise BuildError(f"{' '.join(argv)} timed out after {timeout:.0f}s") from None
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        raise BuildError(f"{' '.join(argv)} failed ({p.returncode}): {' | '.join(tail)}")
    return p.stdout


def kernel_package() -> str:
    """The versioned image package the `linux-image-amd64` metapackage currently names."""
    forced = os.environ.get("SBX_VM_KERNEL_PKG")
    if forced:
        return forced
    out = _run(["apt-cache", "depends", "linux-image-amd64"], timeout=60)
    for m in re.finditer(r"Depends:\s*(linux-image-[0-9][\w.+-]*-amd64)", out):
        return m.group(1)
    raise BuildError("apt-cache depends linux-image-amd64 names no linux-image-*-amd64 package")


def _fetch_deb(pkg: str, dest: Path) -> Path:
    debs = sorted(dest.glob(f"{pkg}_*.deb"))
    if debs:
        return debs[-1]
    _run(["apt-get", "download", pkg], cwd=dest)
    debs = sorted(dest.glob(f"{pkg}_*.deb"))
    if not debs:
        raise BuildError(f"apt-get download {pkg} produced no .deb in {dest}")
    return debs[-1]


def _extract_kernel(deb: Path, dest: Path) -> tuple[Path, str]:
    """Pull vmlinuz and the wanted .ko files out of the .deb (nothing else, no tar paths trusted)."""
    done = dest / "complete"
    if done.exists():
        release = done.read_text().strip()
        return dest / "vmlinuz", release
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "modules").mkdir(parents=True)
    want = set(MODULES)
    release = ""
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name = member.name.lstrip("./")
                m = re.fullmatch(r"boot/vmlinuz-(.+)", name)
                if m:
                    release = m.group(1)
                    (dest / "vmlinuz").write_bytes(tar.extractfile(member).read())
                    continue
                m = re.fullmatch(r"(?:usr/)?lib/modules/[^/]+/kernel/.*/([\w-]+)\.ko(\.xz)?", name)
                if m and m.group(1) in want:
                    data = tar.extractfile(member).read()
                    if m.group(2):
                        data = lzma.decompress(data)   # busybox insmod takes plain ELF
                    (dest / "modules" / f"{m.group(1)}.ko").write_bytes(data)
    finally:
        proc.stdout.close()
        rc = proc.wait()
    if rc != 0 or not release:
        raise BuildError(f"dpkg-deb --fsys-tarfile {deb.name} failed or held no boot/vmlinuz-*")
    done.write_text(release + "\n")
    return dest / "vmlinuz", release


def _busybox() -> Path:
    for cand in BUSYBOX_CANDIDATES:
        p = Path(cand)
        # A dynamic busybox would need the host's libc inside the initramfs.
        if p.is_file() and _is_static_elf64(p):
            return p
    raise BuildError("no static busybox found (apt-get install busybox-static)")


def _is_static_elf64(path: Path) -> bool:
    """True for a 64-bit little-endian ELF without a PT_INTERP program header."""
    with open(path, "rb") as f:
        eh = f.read(64)
        if len(eh) < 64 or eh[:4] != b"\x7fELF" or eh[4] != 2 or eh[5] != 1:
            return False
        phoff, = struct.unpack_from("<Q", eh, 32)
        phentsize, phnum = struct.unpack_from("<HH", eh, 54)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    PT_INTERP = 3
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != PT_INTERP for i in range(phnum))


INIT_TEMPLATE = r"""#!/bin/busybox sh
# Stage 1 (initramfs): build the guest root from the host root and hand over to stage 2.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
say() { echo "sbx-vm: $*" > /dev/console; }
die() { say "FATAL: $*"; echo "SBX-VM-EXIT=255" > /dev/console; echo o > /proc/sysrq-trigger; poweroff -f; }
for m in @MODULES@; do
  [ -f /lib/sbxmod/$m.ko ] && { insmod /lib/sbxmod/$m.ko 2>/dev/null || say "insmod $m failed"; }
done
lsm=none
keep=
for w in $(cat /proc/cmdline); do case "$w" in sbx.lsm=*) lsm=${w#sbx.lsm=};; sbx.keep=*) keep=${w#sbx.keep=};; esac; done
mkdir -p /lower /upper /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose @ROOT_TAG@ /lower || die "9p host root"
# tmpfs upper: the guest may write anywhere (pytest caches in the repo) without touching the host.
mount -t tmpfs -o mode=0755 tmpfs /upper || die "tmpfs upper"
mkdir -p /upper/u /upper/w
mount -t overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w overlay /newroot || die "overlay"
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
mount --move /dev /newroot/dev
mount -t securityfs securityfs /newroot/sys/kernel/security || say "securityfs not mounted"
# Pure cgroup v2: the kernel runs with cgroup_no_v1=all and nothing mounts v1.
mount -t cgroup2 cgroup2 /newroot/sys/fs/cgroup || die "cgroup2"
if [ "$lsm" = selinux ]; then
  mount -t selinuxfs selinuxfs /newroot/sys/fs/selinux || say "selinuxfs not mounted"
fi
# The repo may itself live under /tmp or /run (a CI clone): keep it visible over the fresh tmpfs.
if [ -n "$keep" ] && [ -d "/newroot$keep" ]; then
  mkdir -p /hold && mount --bind "/newroot$keep" /hold || die "hold $keep"
fi
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /newroot/tmp
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /newroot/run
if [ -n "$keep" ] && [ -d /hold ]; then
  mkdir -p "/newroot$keep" && mount --move /hold "/newroot$keep" || die "keep $keep"
fi
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /newroot/dev/pts
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /newroot/dev/shm
mkdir -p /newroot@STAGE@/bin /newroot@STAGE@/io /newroot@STAGE@/lab
cp /bin/busybox /newroot@STAGE@/bin/busybox
cp /stage2 /newroot@STAGE@/bin/stage2
# switch_root (not chroot) so the overlay is the namespace root: AppArmor names
# paths relative to it, and a chroot would make every path /newroot/...
exec switch_root /newroot @STAGE@/bin/busybox sh @STAGE@/bin/stage2 "$lsm"
"""

STAGE2_TEMPLATE = r"""# Stage 2 (pid 1 in the guest root): run the command, report, power off.
BB=@STAGE@/bin/busybox
lsm="$1"
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
say() { echo "sbx-vm: $*" > /dev/console; }
off() { $BB sync; echo o > /proc/sysrq-trigger; $BB poweroff -f; }
IO=@STAGE@/io
LOG=@STAGE@/setup.log
ioopts=trans=virtio,version=9p2000.L,msize=512000
if [ "$lsm" = selinux ]; then
  # Debian's reference policy from the host's /etc/selinux, enforcing (enforcing=1 on the cmdline
  # overrides the host config's SELINUX=permissive).
  load_policy -i > $LOG 2>&1; echo "load_policy=$?" >> $LOG
  # 9p carries no labels: on the unlabeled_t share not even the kernel's domain may create files.
  ioopts="$ioopts,context=system_u:object_r:var_t:s0"
fi
$BB mount -t 9p -o "$ioopts" @IO_TAG@ $IO || { say "FATAL: 9p io share"; echo "SBX-VM-EXIT=255" > /dev/console; off; }
if [ "$lsm" = selinux ]; then
  # Label the guest as a real SELinux host is labelled. 9p carries no labels, so the shared root is
  # unlabeled_t throughout, and nothing (not even the kernel's domain) may copy such files up into
  # the overlay's tmpfs. Each system tree listed in $IO/labels ("TAG PATH") is shared again on its
  # own 9p device, mounted with context= set to what the policy's file_contexts give PATH itself
  # (/usr/bin bin_t, /usr/lib lib_t, /etc etc_t, ...), and gets its own writable overlay at PATH.
  $BB mount -t tmpfs -o mode=0700 tmpfs @STAGE@/lab
  $BB awk '{print $2}' $IO/labels > $LOG.paths
  matchpathcon -n $($BB cat $LOG.paths) > $LOG.ctx 2>>$LOG
  $BB paste -d ' ' $IO/labels $LOG.ctx | while read -r tag path ctx; do
    L=@STAGE@/lab/$tag
    $BB mkdir -p $L/l $L/u $L/w
    chcon "$ctx" $L/u  # the overlay's top directory is the upper one: label it as the tree
    $BB mount -t 9p -o "trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose,context=$ctx" "$tag" $L/l >> $LOG 2>&1 &&
      $BB mount -t overlay -o "lowerdir=$L/l,upperdir=$L/u,workdir=$L/w" overlay "$path" >> $LOG 2>&1 &&
      echo "label $path $ctx" >> $LOG || echo "label $path failed" >> $LOG
  done
  # devtmpfs nodes were made before the policy was loaded; a real boot's udev/restorecon labels them.
  restorecon -R /dev >> $LOG 2>&1; echo "restorecon_dev=$?" >> $LOG
fi
[ -f $LOG ] && $BB cp $LOG $IO/setup.log
$BB hostname sbx-vm
echo SBX-VM-READY > /dev/console
if [ "$lsm" = selinux ]; then
  # Output through a pipe, as from a terminal or a CI runner: an inherited fd on a file that a
  # confined domain may not write (the io share) is closed by SELinux at its exec, so a sandbox's
  # output would vanish.
  { /bin/sh $IO/run.sh < /dev/null 2>&1; echo "$?" > @STAGE@/rc; } | $BB cat > $IO/output &
  cat=$!
  # Wait for the command, not for cat: a process the command left behind may still hold the pipe.
  while [ ! -s @STAGE@/rc ]; do $BB usleep 200000; done
  rc=$($BB cat @STAGE@/rc)
  for i in 1 2 3 4 5 6 7 8 9 10; do $BB kill -0 $cat 2>/dev/null || break; $BB usleep 200000; done
  $BB kill -9 -1 2>/dev/null  # then end whatever is left (all but pid 1, this shell)
  wait
else
  /bin/sh $IO/run.sh < /dev/null > $IO/output 2>&1
  rc=$?
fi
echo "$rc" > $IO/status
$BB sync
$BB umount @STAGE@/io
echo "SBX-VM-EXIT=$rc" > /dev/console
off
"""


def _render(template: str) -> str:
    return (template.replace("@MODULES@", " ".join(MODULES)).replace("@STAGE@", STAGE_DIR)
            .replace("@IO_TAG@", IO_TAG).replace("@ROOT_TAG@", ROOT_TAG))


class _Cpio:
    """Minimal newc writer: enough for dirs, files and the /dev/console node."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        nb = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(nb), 0]
        self.ino += 1
        hdr = b"070701" + b"".join(b"%08X" % f for f in fields)
        self.buf.write(hdr + nb)
        self.buf.write(b"\0" * (-(len(hdr) + len(nb)) % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-len(data) % 4))

    def dir(self, name: str) -> None:
        self._entry(name, 0o040755)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, 0o100000 | perm, data)

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._entry(name, 0o020600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self.buf.getvalue()


def _initrd(modules: Path, busybox: Path) -> bytes:
    c = _Cpio()
    for d in ("bin", "dev", "proc", "sys", "lib", "lib/sbxmod"):
        c.dir(d)
    # The kernel opens /dev/console for init before devtmpfs exists.
    c.chardev("dev/console", 5, 1)
    c.file("bin/busybox", busybox.read_bytes(), 0o755)
    c.file("init", _render(INIT_TEMPLATE).encode(), 0o755)
    c.file("stage2", _render(STAGE2_TEMPLATE).encode(), 0o644)
    for m in MODULES:
        ko = modules / f"{m}.ko"
        if ko.exists():   # absent = built into this kernel
            c.file(f"lib/sbxmod/{m}.ko", ko.read_bytes())
    return gzip.compress(c.finish(), compresslevel=6, mtime=0)


_built: dict[Path, Artifacts] = {}


def ensure_artifacts() -> Artifacts:
    """Download/extract the kernel and build the initramfs once; later calls hit the cache."""
    known = _built.get(cache_dir())
    if known is not None and known.kernel.exists() and known.initrd.exists():
        return known   # skip apt-cache and hashing busybox again in this process
    if platform.machine() != "x86_64":
        raise BuildError(f"the VM harness boots an amd64 kernel; this host is {platform.machine()}")
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # parallel pytest runs share one build
        pkg = kernel_package()
        deb = _fetch_deb(pkg, root)
        kernel, release = _extract_kernel(deb, root / pkg)
        busybox = _busybox()
        h = hashlib.sha256()
        h.update(_render(INIT_TEMPLATE).encode())
        h.update(_render(STAGE2_TEMPLATE).encode())
        h.update(hashlib.sha256(busybox.read_bytes()).digest())
        h.update(release.encode())
        initrd = root / pkg / f"initrd-{h.hexdigest()[:12]}.gz"
        if not initrd.exists():
            tmp = initrd.with_suffix(".tmp")
            tmp.write_bytes(_initrd(root / pkg / "modules", busybox))
            os.replace(tmp, initrd)
        art = Artifacts(kernel=kernel, initrd=initrd, package=pkg, release=release)
    _built[cache_dir()] = art
    return art
