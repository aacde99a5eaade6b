"""Images, side by side with podman in one run (ratios; medians):

  1. warm start: `sbx run --profile strict IMAGE /bin/true` vs `podman run --rm IMAGE /bin/true` (same image)
     and vs `sbx run --profile strict --rootfs TREE -- /bin/true` (the same tree, unpacked)
     targets: <= 0.3x podman, <= 1.3x --rootfs
  2. pull + unpack of a ~200 MiB image from a loopback registry (docker-registry, TLS + htpasswd):
     `sbx pull` into an empty store vs `podman pull` into an empty store       target: <= 1.0x
  3. disk: what ten running sandboxes of one image add to the store (target: no copy of its layers)

podman gets its own --root/--runroot under the bench's temp dir (nothing of the host's storage is
touched) and the ulimits this host needs. Every image is built here (busybox-static, umoci) and
pushed with skopeo; nothing is downloaded.

    sudo .venv/bin/python bench/images.py [--n 15] [--pull-n 3] [--size-mib 200]
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import ROOT, SBX, busybox_rootfs, interleaved, med_ms, require, table

ULIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
USER, PASSWORD = "bench", "bench-pass"


def run(*argv, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run(list(argv), capture_output=True, **kw)
    if p.returncode != 0:
        raise SystemExit(f"failed ({p.returncode}): {' '.join(argv)}\n{p.stderr.decode()[-2000:]}")
    return p


def registry(d: str) -> tuple[subprocess.Popen, str, str, str]:
    """docker-registry on a loopback port with htpasswd auth and a self-signed certificate."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    host = f"127.0.0.1:{port}"
    key, cert, certs = f"{d}/key.pem", f"{d}/cert.pem", f"{d}/certs"
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "1",
        "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1")
    os.makedirs(certs)
    shutil.copy(cert, f"{certs}/ca.crt")
    with open(f"{d}/htpasswd", "w") as f:
        f.write(run("htpasswd", "-Bbn", USER, PASSWORD).stdout.decode())
    with open(f"{d}/reg.yml", "w") as f:
        f.write(f"version: 0.1\nlog: {{level: error, accesslog: {{disabled: true}}}}\n"
                f"storage: {{filesystem: {{rootdirectory: {d}/regdata}}}}\n"
                f"http: {{addr: {host}, tls: {{certificate: {cert}, key: {key}}}}}\n"
                f"auth: {{htpasswd: {{realm: bench, path: {d}/htpasswd}}}}\n")
    proc = subprocess.Popen(["docker-registry", "serve", f"{d}/reg.yml"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    auth = f"{d}/auth.json"
    with open(auth, "w") as f:
        json.dump({"auths": {host: {"auth": base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}}}, f)
    os.chmod(auth, 0o600)
    return proc, host, certs, auth


def umoci_layer(layout: str, src: str | None, tag: str, fill) -> None:
    bundle = tempfile.mkdtemp(prefix="sbxbench-bundle-")
    shutil.rmtree(bundle)
    if src is None:
        if not os.path.isdir(layout):
            run("umoci", "init", "--layout", layout)
        run("umoci", "new", "--image", f"{layout}:{tag}")
        src = tag
    run("umoci", "unpack", "--image", f"{layout}:{src}", bundle)
    fill(os.path.join(bundle, "rootfs"))
    run("umoci", "repack", "--image", f"{layout}:{tag}", bundle)
    shutil.rmtree(bundle)


def big_fill(mib: int, seed: int):
    """~mib MiB: a few large half-compressible files and many small ones (a language runtime's shape)."""
    def fill(root: str) -> None:
        rnd = random.Random(seed)
        d = os.path.join(root, f"opt/pkg{seed}")
        os.makedirs(d, exist_ok=True)
        big = mib * 3 // 4
        for i in range(big):  # 1 MiB at a time, a new file every 16 MiB
            with open(os.path.join(d, f"blob{i // 16}.bin"), "ab") as f:
                f.write(rnd.randbytes(1 << 19) + bytes(1 << 19))  # ~50% compressible
        small = (mib - big) << 20
        n = 0
        while small > 0:
            sub = os.path.join(d, f"lib{n % 100:02d}")
            os.makedirs(sub, exist_ok=True)
            size = rnd.randint(512, 16384)
            with open(os.path.join(sub, f"m{n:05d}.py"), "wb") as f:
                f.write(rnd.randbytes(size // 2) * 2)
            small -= size
            n += 1
    return fill


def du_kib(path: str) -> int:
    return int(run("du", "-sk", "-x", path).stdout.split()[0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=15)
    ap.add_argument("--pull-n", type=int, default=3)
    ap.add_argument("--size-mib", type=int, default=200)
    a = ap.parse_args()
    require("podman", "skopeo", "umoci", "docker-registry", "htpasswd", "openssl", "busybox")
    if os.geteuid() != 0:
        raise SystemExit("run as root (podman's storage and sbx's idmapped layers)")
    d = tempfile.mkdtemp(prefix="sbxbench-img-")
    proc = None
    pod = ["podman", "--root", f"{d}/podman-root", "--runroot", f"{d}/podman-run", "--storage-driver", "overlay"]
    # PYTHONPATH: this checkout's sbx even when .venv's editable install points at another worktree
    env = dict(os.environ, SBX_DATA_DIR=f"{d}/sbx-store", SBX_STATE_DIR=f"{d}/sbx-state", PYTHONPATH=ROOT)
    try:
        proc, host, certs, auth = registry(d)
        tls = ["--cert-dir", certs, "--authfile", auth]
        layout = f"{d}/oci"
        # the small image for start times: busybox-static, as the peers' bundles
        umoci_layer(layout, None, "bb", lambda r: busybox_rootfs(r))
        run("umoci", "config", "--image", f"{layout}:bb", "--config.cmd", "/bin/true")
        tree = f"{d}/tree"
        run("umoci", "unpack", "--image", f"{layout}:bb", f"{d}/bundle")
        shutil.move(f"{d}/bundle/rootfs", tree)
        # the ~200 MiB image: busybox + five layers
        per = a.size_mib // 5
        prev = "bb"
        for i in range(5):
            umoci_layer(layout, prev, f"big{i}", big_fill(per, i))
            prev = f"big{i}"
        for tag, name in (("bb", "bench/bb:1"), (prev, "bench/big:1")):
            run("skopeo", "copy", "-q", "--dest-cert-dir", certs, "--dest-authfile", auth, f"oci:{layout}:{tag}",
                f"docker://{host}/{name}")
        small = f"{host}/bench/bb:1"
        run(*SBX, "pull", "-q", *tls, small, env=env)
        run(*pod, "pull", "-q", *tls, small)

        # 1. warm start, interleaved
        cmds = {
            "sbx run IMAGE": [*SBX, "run", "--profile", "strict", small, "/bin/true"],
            "sbx run --rootfs TREE": [*SBX, "run", "--profile", "strict", "--rootfs", tree, "--", "/bin/true"],
            "podman run --rm": [*pod, "run", "--rm", *ULIMITS, small, "/bin/true"],
            "podman run --rm --network none": [*pod, "run", "--rm", "--network", "none", *ULIMITS, small, "/bin/true"],
        }
        res = interleaved(cmds, a.n, env=env)
        base_pod = med_ms(res["podman run --rm"])
        base_rootfs = med_ms(res["sbx run --rootfs TREE"])
        img = med_ms(res["sbx run IMAGE"])
        rows = [(k, f"{med_ms(v):.1f}", f"{med_ms(v) / base_pod:.2f}x", f"{med_ms(v) / base_rootfs:.2f}x")
                for k, v in res.items()]
        print(f"warm start, {a.n} interleaved runs each (medians)")
        print(table(rows, ("command", "ms", "vs podman run", "vs sbx --rootfs")))
        print(f"sbx run IMAGE: {img / base_pod:.2f}x podman (target <= 0.3x), "
              f"{img / base_rootfs:.2f}x --rootfs (target <= 1.3x)\n")

        # 2. pull + unpack into empty stores, alternating
        big = f"{host}/bench/big:1"
        sbx_t, pod_t = [], []
        for _ in range(a.pull_n):
            shutil.rmtree(f"{d}/pull-store", ignore_errors=True)
            t = time.perf_counter()
            run(*SBX, "pull", "-q", *tls, big, env=dict(env, SBX_DATA_DIR=f"{d}/pull-store"))
            sbx_t.append(time.perf_counter() - t)
            subprocess.run([*pod, "rmi", "-af"], capture_output=True)
            t = time.perf_counter()
            run(*pod, "pull", "-q", *tls, big)
            pod_t.append(time.perf_counter() - t)
        layers = os.path.join(d, "pull-store", "layers")
        unpacked = du_kib(layers) // 1024
        s, p = med_ms(sbx_t), med_ms(pod_t)
        print(f"pull + unpack of {big} ({unpacked} MiB unpacked, 6 layers), {a.pull_n} runs each (medians)")
        print(table([("sbx pull", f"{s:.0f}", f"{s / p:.2f}x"), ("podman pull", f"{p:.0f}", "1.00x")],
                    ("command", "ms", "vs podman")))
        print(f"target <= 1.0x: {s / p:.2f}x\n")

        # 3. disk: ten running sandboxes of the big image
        run(*SBX, "pull", "-q", *tls, big, env=env)
        store = env["SBX_DATA_DIR"]
        before = du_kib(store)
        ids = [run(*SBX, "run", "-d", "--profile", "strict", "--entrypoint", "/bin/sleep", big, "60",
                   env=env).stdout.decode().strip() for _ in range(10)]
        after = du_kib(store)
        state = du_kib(env["SBX_STATE_DIR"])
        run(*SBX, "rm", "-f", *ids, env=env)
        pids = [run(*pod, "run", "-d", *ULIMITS, "--network", "none", "--entrypoint", "/bin/sleep", big, "60")
                .stdout.decode().strip() for _ in range(10)]
        pod_disk = du_kib(f"{d}/podman-root/overlay")
        subprocess.run([*pod, "rm", "-f", "-t", "0", *pids], capture_output=True)
        pod_after = du_kib(f"{d}/podman-root/overlay")
        print("disk of ten running sandboxes of the big image")
        print(table([("sbx store", before, after, after - before), ("sbx state (10 sandboxes)", "", state, ""),
                     ("podman overlay storage", pod_after, pod_disk, pod_disk - pod_after)],
                    ("", "KiB before", "KiB with 10 running", "added")))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()
        subprocess.run([*pod, "rm", "-af", "-t", "0"], capture_output=True)
        subprocess.run([*pod, "rmi", "-af"], capture_output=True)
        subprocess.run(["umount", "-R", f"{d}/podman-root/overlay"], capture_output=True)
        subprocess.run([*SBX, "rm", "-f", *[i for i in subprocess.run([*SBX, "ps", "-aq"], capture_output=True,
                                                                       env=env).stdout.decode().split()]],
                       capture_output=True, env=env)
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
