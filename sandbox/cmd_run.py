"""`sbx run`: flags -> Spec -> launch. The CLI adds nothing the API does not have.

    sbx run [OPTIONS] -- CMD [ARG...]        a host command (host view, or --rootfs DIR)
    sbx run [OPTIONS] IMAGE [ARG...]         an image: its Entrypoint + Cmd (ARGs replace Cmd)

An argument list that starts with `--` is a host command; otherwise the first word is an image
reference (podman's and Docker's spelling). `sbx run /bin/true` is answered with a hint.

The option table below drives both the click command (help, error messages)
and a small click-free parser used for the common case, because importing
click costs ~20-30 ms of a ~90 ms cold start. Anything the fast parser does not
recognise (help, typos, odd spellings) falls back to click for its messages.
"""
from __future__ import annotations

# (names, dest, kind, type, help). kind: "flag" | "value" | "multi".
OPTIONS: tuple[tuple[tuple[str, ...], str, str, type, str], ...] = (
    (("--profile",), "profile", "value", str, "Built-in profile name or a YAML path (default: strict)."),
    (("--rootfs",), "rootfs", "value", str, "Use DIR as the root (pivot_root) instead of the host view."),
    (("-u", "--user"), "user", "value", str, "UID[:GID] inside the sandbox."),
    (("--cap-add",), "cap_add", "multi", str, "Add a capability (profiles that allow it)."),
    (("--cap-drop",), "cap_drop", "multi", str, "Drop a capability."),
    (("--security-opt",), "security_opt", "multi", str,
     "apparmor=P, label=type:T,level:L, seccomp=FILE|unconfined, no-new-privileges, landlock=LEVEL"),
    (("-m", "--memory"), "memory", "value", str, "Memory limit (e.g. 512m)."),
    (("--memory-swap",), "memory_swap", "value", str, "Memory+swap total (-1 unlimited)."),
    (("--cpus",), "cpus", "value", float, "CPU quota in cores."),
    (("--cpu-shares",), "cpu_shares", "value", int, "Relative CPU weight (soft)."),
    (("--cpuset-cpus",), "cpuset_cpus", "value", str, "CPUs allowed (0-2,4)."),
    (("--cpuset-mems",), "cpuset_mems", "value", str, "Memory nodes allowed."),
    (("--pids-limit",), "pids_limit", "value", int, "Max processes."),
    (("--ulimit",), "ulimit", "multi", str, "NAME=SOFT[:HARD]"),
    (("--network", "--net"), "network", "value", str, "none | loopback | bridge"),
    (("-p", "--publish"), "publish", "multi", str, "[HOSTIP:]HOSTPORT:CTRPORT[/tcp|udp]"),
    (("--add-host",), "add_host", "multi", str, "NAME:IP line for the sandbox's /etc/hosts."),
    (("--dns",), "dns", "multi", str, "DNS server for the sandbox's resolv.conf (bridge)."),
    (("-e", "--env"), "env", "multi", str, "K=V (K alone takes the caller's value)"),
    (("--env-file",), "env_file", "multi", str, "File of K=V lines."),
    (("-v", "--volume"), "volume", "multi", str,
     "SRC:DST[:OPTS]: SRC a host path or a volume name; OPTS ro|rw, idmap|noidmap, U, z|Z."),
    (("--mount",), "mount", "multi", str,
     "type=bind|volume,source=S,target=T[,readonly][,idmap][,U=true][,relabel=shared|private]"),
    (("-w", "--workdir"), "workdir", "value", str, "Working directory inside."),
    (("--hostname",), "hostname", "value", str, "Hostname inside."),
    (("--read-only",), "read_only", "flag", bool, "Read-only root (strict has it already)."),
    (("--name",), "name", "value", str, "Name for the sandbox."),
    (("-d", "--detach"), "detach", "flag", bool, "Run in the background; print the id."),
    (("--rm",), "rm", "flag", bool, "Remove the sandbox's state when it exits."),
    (("--timeout",), "timeout", "value", float, "Kill the whole sandbox after SEC seconds (exit 124)."),
    (("--policy",), "policy", "value", str, "Admission policy (file or built-in name)."),
    (("--explain",), "explain", "flag", bool, "Print the resolved Spec and exit without running."),
    (("--record",), "record", "value", str, "Write a JSON run record to FILE."),
    (("--entrypoint",), "entrypoint", "value", str, "Image runs: replace the image's Entrypoint (and drop its Cmd)."),
    (("--pull",), "pull", "value", str, "Image runs: missing (default) | always | never."),
)
PULL_POLICIES = ("missing", "always", "never")


# option name -> (dest, kind, type)
_BY_NAME: dict[str, tuple[str, str, type]] = {n: (dest, kind, typ) for names, dest, kind, typ, _ in OPTIONS
                                             for n in names}


def fast_parse(args: list[str]) -> dict | None:
    """Parse `run` arguments without click; None means "let click handle it" (help, errors, oddities)."""
    kw: dict = {dest: (() if kind == "multi" else (False if kind == "flag" else None))
                for _, dest, kind, _, _ in OPTIONS}
    kw["image"] = None
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            kw["cmd"] = args[i + 1:]
            break
        if not a.startswith("-") or a == "-":
            kw["image"] = a
            kw["cmd"] = args[i + 1:]
            break
        name, eq, val = a.partition("=") if a.startswith("--") else (a, "", "")
        opt = _BY_NAME.get(name)
        if opt is None:
            return None
        dest, kind, typ = opt
        if kind == "flag":
            if eq:
                return None
            kw[dest] = True
            i += 1
            continue
        if not eq:
            if i + 1 >= len(args):
                return None
            val = args[i + 1]
            i += 2
        else:
            i += 1
        try:
            typed = typ(val)
        except ValueError:
            return None
        if kind == "multi":
            kw[dest] = kw[dest] + (typed,)
        else:
            kw[dest] = typed
    else:
        kw["cmd"] = []
    kw["profile"] = kw["profile"] or "strict"
    return kw


def resolve_run(profile: str, record: str | None, cmd, kw: dict, verb: str = "run"):
    """(Spec, RunOptions) from run's flags, for `run` and `create`."""
    from .spec import run_options
    if not cmd and not kw.get("image"):
        # A usage error, refused before the spec cache (whose entry for these flags would carry no argv).
        from .errors import SpecError
        raise SpecError(f"no command given (usage: sbx {verb} [OPTIONS] -- CMD [ARG...] | IMAGE [ARG...])",
                        where=verb)
    from .speccache import resolve

    kw["record"] = record
    opts = run_options(kw)  # beside the Spec: they change how this run is handled, not the sandbox
    kw["hostname_default"] = opts.name
    pull = kw.pop("pull", None)
    image = kw.get("image")
    if not image:
        kw.pop("image", None)
        if pull is not None:
            from .errors import SpecError
            raise SpecError("--pull is for images (sbx run [OPTIONS] IMAGE [ARG...])", where="--pull")
        spec = resolve(list(cmd), profile=profile, **kw)
    else:
        spec = _resolve_image(resolve, image, pull, list(cmd), profile, kw)
    return spec, opts


def do_run(profile: str, explain: bool, record: str | None, cmd, **kw) -> int:
    spec, opts = resolve_run(profile, record, cmd, kw)
    if explain:
        if opts.policy:
            from .admission import admit
            admit(spec, opts)  # launch admits again for real; --explain says now whether it would
        import json
        from .mounts import writable_places
        # The Spec as it is, plus the run's options beside it (not part of the Spec or its digest), and
        # what its mount plan lets the workload fill (the caps of its writable places).
        print(json.dumps({**spec.to_dict(), "run_options": opts.to_dict(), "writable": writable_places(spec)},
                         indent=2, sort_keys=True))
        return 0
    if opts.detach:
        from .lifecycle import run_detached
        print(run_detached(spec, opts), flush=True)
        return 0
    from .launch import run
    result = run(spec, options=opts)
    if record:
        from .record import write_record
        write_record(record, result.record)
    if result.timed_out:
        import sys
        sys.stderr.write(f"sbx: --timeout {spec.timeout:g}s expired, sandbox killed\n")
    return result.exit_code


def _resolve_image(resolve, ref: str, pull: str | None, cmd: list[str], profile: str, kw: dict):
    """--pull: missing (the default: pull unless the store has it), always, never. A host path gets a hint.

    The warm path is one spec-cache hit: the cache entry is valid only while refs.json and the
    image's record are unchanged, so a hit means the image is in the store.
    """
    from .errors import SpecError, escape
    policy = pull or "missing"
    if policy not in PULL_POLICIES:
        raise SpecError(f"--pull={escape(policy)}: use missing, always or never", where="--pull")
    if ref.startswith(("/", "./", "../")):
        raise SpecError(f"{escape(ref)} is a path, not an image: to run a host command write "
                        f"`sbx run [OPTIONS] -- {escape(ref)} ...`", where="IMAGE")
    from .image.missing import ImageMissing
    if ref.startswith(("docker://", "oci:", "oci-archive:", "docker-archive:")):
        kw["image"] = _transport_ref(ref, policy)
        return resolve(cmd, profile=profile, **kw)
    if policy != "always":
        try:
            return resolve(cmd, profile=profile, **kw)
        except ImageMissing:
            if policy == "never":
                raise
    if pull is None and "/" not in ref and ":" not in ref and "@" not in ref:
        import shutil
        if shutil.which(ref):
            raise SpecError(f"no image {escape(ref)} in the store, and {escape(ref)} is a host command: to run it "
                            f"write `sbx run [OPTIONS] -- {escape(ref)} ...`; to pull the image give --pull=missing",
                            where="IMAGE")
    import sys
    from .cmd_image import do_pull
    from .image.skopeo import Options
    from .image.reference import RefError
    try:
        do_pull(ref, Options())
    except RefError as e:
        raise SpecError(e.message + "; to run a host command write `sbx run [OPTIONS] -- CMD ...`",
                        where="IMAGE") from None
    return resolve(cmd, profile=profile, **kw)


def _transport_ref(ref: str, policy: str) -> str:
    """`sbx run docker://NAME` is NAME; an archive or layout is imported (unless the store has its name)."""
    import sys
    from .cmd_image import do_pull
    from .image import reference
    from .image.skopeo import Options
    parsed = reference.parse(ref)
    if not parsed.local:
        name = str(parsed.name)
        if policy == "always":
            do_pull(name, Options())
        return name
    from .image.pull import local_names
    from .image.store import Store
    if policy != "always":
        names = local_names(parsed)
        store = Store()
        if names and store.exists() and store.find(names[0]) is not None:
            return names[0]
        if policy == "never":
            from .image.missing import ImageMissing
            raise ImageMissing(ref)
    return do_pull(ref, Options()).id


def build_command(name: str, run, help: str):
    """A click command with run's option table (`run`, and `create`, which saves instead of starting).

    Either form is accepted: `-- CMD [ARG...]` (a host command) or `IMAGE [ARG...]`.
    """
    import click

    class RunCommand(click.Command):
        def parse_args(self, ctx, args):
            # click drops the `--` marker; whether it came before the first word decides host vs image
            ctx.meta["sbx_image_mode"] = _first_word_is_image(args)
            return super().parse_args(ctx, args)

    def callback(**kw):
        cmd = list(kw.pop("cmd"))
        kw["image"] = None
        if click.get_current_context().meta.get("sbx_image_mode") and cmd:
            kw["image"], cmd = cmd[0], cmd[1:]
        return run(kw.pop("profile") or "strict", kw.pop("explain"), kw.pop("record"), cmd, **kw)

    params = [click.Argument(["cmd"], nargs=-1, required=False, type=click.UNPROCESSED)]
    for names, dest, kind, typ, hlp in OPTIONS:
        decls = list(names) + [dest]
        if kind == "flag":
            params.append(click.Option(decls, is_flag=True, default=False, help=hlp))
        else:
            params.append(click.Option(decls, multiple=kind == "multi", type=typ, help=hlp))
    return RunCommand(name, callback=callback, params=params, help=help,
                      context_settings={"allow_interspersed_args": False})


def _build_click():
    return build_command("run", do_run, "Run `-- CMD` (a host command) or `IMAGE [ARG...]` in a sandbox "
                                        "(default profile: strict).")


def _first_word_is_image(args: list[str]) -> bool:
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            return False
        if not a.startswith("-") or a == "-":
            return True
        opt = _BY_NAME.get(a.partition("=")[0] if a.startswith("--") else a)
        if opt is not None and opt[1] != "flag" and "=" not in a:
            i += 2
        else:
            i += 1
    return False


def __getattr__(name: str):
    # cli.py's COMMANDS table asks for `run_cmd`; built on demand so the fast path never imports click.
    if name == "run_cmd":
        return _build_click()
    raise AttributeError(name)
