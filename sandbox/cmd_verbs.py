"""More of docker's verbs: top, wait, port, cp, rename, create, version, info.

Same contract as cmd_lifecycle: a sandbox is named by id, id prefix or name; every sbx error
is one line on stderr and exit 125; data goes to stdout, escaped where a sandbox wrote it.
"""
from __future__ import annotations

import fcntl
import json
import os
import sys
import time

import click

from . import events, state
from .cmd_lifecycle import _each, _print_table
from .errors import EXIT_REFUSED, SbxError, escape

# ---------------------------------------------------------------- top

@click.command("top", help="The processes of a running sandbox as a tree: host and sandbox pids, the user "
                           "outside and inside its user namespace, state. With PS_OPTIONS, the host's ps(1) "
                           "output for them (docker's top).",
               context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True})
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.argument("ref")
@click.argument("ps_options", nargs=-1, type=click.UNPROCESSED)
def top_cmd(fmt: str, ref: str, ps_options) -> int:
    from . import facts, proctree
    e = state.resolve(ref)
    if e.status not in (state.RUNNING, state.PAUSED):
        raise SbxError(f"sandbox {e.id[:12]} is not running ({e.status})", where="top")
    init_pid = int(e.state.get("init_pid") or 0)
    from .lifecycle import open_init
    pfd = open_init(e)  # the recorded start time guards against a recycled pid
    if pfd is None:
        raise SbxError(f"sandbox {e.id[:12]} is not running (its init is gone)", where="top")
    try:
        try:
            procs = proctree.processes(init_pid)
        except facts.ProcessGone:
            raise SbxError(f"sandbox {e.id[:12]} exited", where="top") from None
    finally:
        os.close(pfd)
    if ps_options:
        return _host_ps(list(ps_options), {p.pid for p in procs})
    if fmt == "json":
        print(json.dumps([p.to_dict() for p in procs], indent=2))
    else:
        _print_table(proctree.table(procs))
    return 0


def _host_ps(args: list[str], pids: set[int]) -> int:
    """docker's way: run the host's ps with the caller's options, keep the header and our pids' rows."""
    import shutil
    import subprocess
    exe = shutil.which("ps")
    if exe is None:
        raise SbxError("ps(1) is not installed (apt-get install procps); without options sbx top needs no ps",
                       where="top")
    def ps(argv: list[str]):
        try:
            return subprocess.run([exe, *argv], capture_output=True, timeout=30)
        except subprocess.TimeoutExpired:
            raise SbxError("ps did not finish within 30 s", where="top") from None

    # As moby does: procps lists just our pids with -q; some option sets refuse it (forest views),
    # then all processes are listed and filtered by the PID column below either way.
    p = ps([*args, "-q", ",".join(map(str, sorted(pids)))]) if pids else None
    if p is None or p.returncode != 0:
        p = ps(args)
    out = p.stdout.decode("utf-8", "replace").splitlines()
    if not out or (p.returncode != 0 and p.stderr.strip()):  # procps exits 1, quietly, when nothing matched
        why = p.stderr.decode("utf-8", "replace").strip().splitlines()
        raise SbxError(f"ps {' '.join(args)} failed: {why[0] if why else 'exit ' + str(p.returncode)}", where="top")
    header = out[0].split()
    if "PID" not in header:
        raise SbxError(f"ps {' '.join(args)}: no PID column in its output (add -o pid,...)", where="top")
    col = header.index("PID")
    print(escape(out[0]))
    for line in out[1:]:
        parts = line.split(None, len(header) - 1)
        try:
            if int(parts[col]) in pids:
                print(escape(line))
        except (ValueError, IndexError):
            continue
    return 0


# ---------------------------------------------------------------- wait

def wait_exit(e: state.Entry) -> int:
    """Block until the sandbox has exited; its exit code (docker wait). A created sandbox is waited
    for until it has been started and has exited; one removed on exit (--rm) is found in the events."""
    sid = e.id
    while True:
        cur = state.load(sid)
        if cur is None:
            for ev in reversed(events.read()):
                if ev.get("id") == sid and ev.get("action") == "die":
                    return int(ev.get("exit_code", EXIT_REFUSED))
            raise SbxError(f"sandbox {sid[:12]} was removed before it exited", where="wait")
        if cur.alive:
            _block_on_supervisor(cur.dir)
            continue
        if cur.status == state.EXITED:
            code = cur.state.get("exit_code")
            return int(code) if code is not None else EXIT_REFUSED
        time.sleep(0.1)  # created, not started yet


def _block_on_supervisor(d: str) -> None:
    """Sleep until the supervisor lets go of its lock (it holds it exclusively for its whole life)."""
    try:
        fd = os.open(os.path.join(d, "supervisor.lock"), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    finally:
        os.close(fd)


@click.command("wait", help="Block until the sandboxes stop; print each one's exit code.")
@click.argument("refs", nargs=-1, required=True)
def wait_cmd(refs) -> int:
    return _each(refs, lambda e: print(wait_exit(e), flush=True))


# ---------------------------------------------------------------- port

@click.command("port", help="The published ports of a sandbox: 'CTRPORT/PROTO -> HOSTIP:HOSTPORT', or the host "
                            "addresses of one PRIVATE_PORT[/PROTO].")
@click.argument("ref")
@click.argument("private", required=False)
def port_cmd(ref: str, private: str | None) -> int:
    from .dockerview import ports_of
    e = state.resolve(ref)
    ports = ports_of(e) if e.status in (state.RUNNING, state.PAUSED) else []
    if private is None:
        for ip, hp, cp, proto in sorted(ports, key=lambda p: (p[2], p[3], p[1])):
            print(f"{cp}/{proto} -> {_addr(ip, hp)}")
        return 0
    num, _, proto = private.partition("/")
    proto = proto or "tcp"
    if not num.isdigit() or not 1 <= int(num) <= 65535 or proto not in ("tcp", "udp"):
        raise SbxError(f"bad port {escape(private)!r}: PORT[/tcp|udp]", where="port")
    hits = [p for p in ports if p[2] == int(num) and p[3] == proto]
    if not hits:
        raise SbxError(f"no public port '{int(num)}/{proto}' published for {e.id[:12]}", where="port")
    for ip, hp, _, _ in hits:
        print(_addr(ip, hp))
    return 0


def _addr(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


# ---------------------------------------------------------------- cp

def _size(text: str) -> int:
    from .profiles import parse_size
    try:
        n = parse_size(text, "--max-size")
    except ValueError as e:
        raise SbxError(str(e).replace("--max-size ", "", 1), where="--max-size") from None
    if n <= 0:
        raise SbxError("must be > 0", where="--max-size")
    return n


@click.command("cp", help="Copy files between a running sandbox and the host: sbx cp ID:SRC DST, or "
                          "sbx cp SRC ID:DST (docker's rules for directories, SRC/. and trailing slashes).")
@click.option("-L", "--follow-link", is_flag=True, help="Follow a symlink given as SRC (inside the sandbox's root).")
@click.option("-q", "--quiet", is_flag=True, help="No summary on stderr.")
@click.option("--max-size", default="1g", show_default=True,
              help="Stop copying past this many bytes (a sandbox's file can grow without end).")
@click.argument("src")
@click.argument("dst")
def cp_cmd(follow_link: bool, quiet: bool, max_size: str, src: str, dst: str) -> int:
    from . import copyfiles as cf
    if src == "-" or dst == "-":
        raise SbxError("tar streams ('-') are not supported: copy to or from a path", where="cp")
    sref, spath = cf.split_ref(src)
    dref, dpath = cf.split_ref(dst)
    if sref is not None and dref is not None:
        raise SbxError("copying between sandboxes is not supported (copy to the host first)", where="cp")
    if sref is None and dref is None:
        raise SbxError("one of SRC and DST must be a sandbox path, ID:PATH", where="cp")
    limits = cf.Limits(max_bytes=_size(max_size))
    e = state.resolve(sref if sref is not None else dref)
    root, _ = cf.open_sandbox_root(e)
    try:
        if sref is not None:
            stats = cf.copy_out(root, cf.path_arg(spath or "/"), dpath, limits, follow=follow_link)
            where = dpath
        else:
            owner = _owner(e)
            stats = cf.copy_in(root, spath, cf.path_arg(dpath or "/"), owner, limits, follow=follow_link)
            where = f"{e.name or e.id[:12]}:{dpath}"
    finally:
        os.close(root)
    if not quiet:
        sys.stderr.write(f"Successfully copied {_human(stats.bytes)} to {escape(where)}\n")
        if stats.skipped:
            sys.stderr.write(f"sbx: cp: skipped {stats.skipped} fifo(s), socket(s), device node(s) or kernel "
                             "filesystem(s): sbx cp never opens or creates those\n")
    return 0


def _owner(e: state.Entry) -> tuple[int, int] | None:
    """Who writes (and so owns) what is copied in: the sandbox's workload user, as the host knows it.
    docker gives such files to the container's root, which in docker is usually who runs the workload;
    sbx's workload is not root, and this way it can use and remove what it was given."""
    if os.geteuid() != 0:
        return None  # rootless: files are ours, which the sandbox's single-id map makes its user
    from .userns import outside
    idmap = e.state.get("idmap") or {}
    spec = e.config.get("spec") or {}
    uid, gid = int(spec.get("uid", 65534)), int(spec.get("gid", 65534))
    hu, hg = outside(idmap.get("uid_map"), uid), outside(idmap.get("gid_map"), gid)
    if hu is None or hg is None:
        raise SbxError(f"uid {uid} / gid {gid} has no id in the sandbox's user namespace", where="cp")
    return hu, hg


def _human(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.3g}{unit}" if unit != "B" else f"{n}B"
        n /= 1000
    return str(n)


# ---------------------------------------------------------------- rename

@click.command("rename", help="Give a sandbox a new name (its hostname is kept, as in docker).")
@click.argument("ref")
@click.argument("new_name")
def rename_cmd(ref: str, new_name: str) -> int:
    e = state.resolve(ref)
    old = state.rename(e.id, new_name)
    events.emit("rename", e.id, new_name, oldName=old or "")
    return 0


# ---------------------------------------------------------------- create

def _create(profile: str, explain: bool, record: str | None, cmd, **kw) -> int:
    from .cmd_run import do_run, resolve_run
    from .records import replace
    if explain:
        return do_run(profile, explain, record, cmd, **kw)
    spec, opts = resolve_run(profile, record, cmd, kw, verb="create")
    opts = replace(opts, detach=True)
    if opts.policy:
        from .admission import admit
        admit(spec, opts)  # refuse now, as `run -d` would; `start` admits again under the policy as it is then
    from .lifecycle import create_entry
    print(create_entry(spec, opts), flush=True)
    return 0


def _build_create():
    from .cmd_run import build_command
    return build_command("create", _create, "Create a sandbox from CMD and the run options without starting it; "
                                            "print its id (start it with sbx start).")


create_cmd = _build_create()


# ---------------------------------------------------------------- version / info

def _formatted(doc: dict, fmt: str | None, text) -> int:
    if fmt is None:
        sys.stdout.write(text(doc))
    elif fmt == "json":
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        from .dockerview import render
        sys.stdout.write(render(fmt, [doc]))
    return 0


@click.command("version", help="sbx's version, the kernel's, and the kernel features sbx uses.")
@click.option("-f", "--format", "fmt", default=None, metavar="FORMAT", help="json, or a Go template "
              "('{{.Client.Version}}', '{{.Kernel.Features.landlock_abi}}').")
def version_cmd(fmt: str | None) -> int:
    from . import sysinfo
    return _formatted(sysinfo.version(), fmt, sysinfo.render_version)


@click.command("info", help="Host facts sbx depends on: sandboxes, cgroup version, LSMs, Landlock ABI, user "
                            "namespace limits, state and cache paths.")
@click.option("-f", "--format", "fmt", default=None, metavar="FORMAT",
              help="json, or a Go template ('{{.Cgroup.version}}', '{{json .LSMs}}').")
def info_cmd(fmt: str | None) -> int:
    from . import sysinfo
    return _formatted(sysinfo.info(), fmt, sysinfo.render_info)
