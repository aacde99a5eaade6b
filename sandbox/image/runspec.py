"""`sbx run IMAGE`: the image's config turned into the Spec's argv, env, user and cwd (Docker's rules).

Called by profiles.resolve for an image run. The user is resolved against the IMAGE's /etc/passwd
and /etc/group (read from the store's layers on the host, by fd, whiteouts applied), never the
host's. A profile that does not allow uid 0 (strict) never runs an image's root user: an image
whose User is empty or root runs as the profile's user (65534) instead, and the Spec says so
(image.notes, shown by --explain); an explicit `-u 0` is refused as for host commands.
"""
from __future__ import annotations

from ..errors import SbxError, SpecError, escape
from ..spec import Image
from . import config as imgconfig
from .missing import ImageMissing
from .passwd import UserError, exec_user
from .reference import ID_RE

SLICE = 65536  # ids a sandbox's user namespace has (sandbox.userns)


def _pinned(text: str) -> bool:
    t = text[len("sha256:"):] if text.startswith("sha256:") else text
    return "@sha256:" in text or bool(ID_RE.match(t))


def resolve(ref: str, *, args: list[str], entrypoint: str | None, user: str | None, workdir: str | None,
            profile_env: dict[str, str], run_env: dict[str, str], allow_root: bool, profile_uid: int,
            profile_gid: int, profile_name: str, store=None) -> dict:
    """Everything the Spec takes from the image. Raises SbxError (125) with one line."""
    from .layered import Layered
    from .store import Store
    store = store or Store()
    if not store.exists():
        raise ImageMissing(ref)
    img = store.find(ref)
    if img is None:
        raise ImageMissing(ref)
    cfg = imgconfig.parse(img.config())
    roots = [store.layer_root(d) for d in img.layers]
    for d in img.layers:
        if not store.has_layer(d):
            raise SbxError(f"image {img.short}: layer {d} is missing from the store (pull the image again)")
    if len(roots) > 128:
        raise SbxError(f"image {img.short} has {len(roots)} layers; sbx stacks at most 128 (as Docker's overlay2)")
    view = Layered(roots)
    passwd, group = view.read("/etc/passwd"), view.read("/etc/group")
    spec_user = user if user else cfg.user
    try:
        u = exec_user(spec_user, passwd, group)
    except UserError as e:
        raise SpecError(f"image {escape(ref)}: {e.message}", where="-u" if user else "image config User") from None
    uid, gid, groups, home = u.uid, u.gid, u.groups, u.home
    notes = []
    if (uid == 0 or gid == 0) and not allow_root:
        if user:
            raise SpecError(f"profile '{profile_name}' does not allow uid/gid 0 in the sandbox "
                            "(set user.allow_root: true in a profile that extends it)", where="-u")
        was = f"{uid}:{gid}" + (f" ({u.name})" if u.name else "")
        notes.append(f"the image runs as root (User {cfg.user!r} is {was}); profile '{profile_name}' does not "
                     f"allow uid/gid 0, so it runs as {profile_uid}:{profile_gid}")
        uid, gid, groups = profile_uid, profile_gid, ()
        try:
            home = exec_user(str(uid), passwd, group).home
        except UserError:
            home = "/"
    for what, v in (("uid", uid), ("gid", gid)):
        if not 0 <= v < SLICE:
            raise SpecError(f"image {escape(ref)}: {what} {v} is outside the sandbox's {SLICE} ids",
                            where="-u" if user else "image config User")
    groups = tuple(g for g in groups if 0 < g < SLICE or (g == 0 and allow_root))
    env: dict[str, str] = {k: v for k, v in profile_env.items() if k not in ("PATH", "HOME")}
    merged = imgconfig.environment(cfg, [f"{k}={v}" for k, v in run_env.items()], home=home)
    for e in merged:
        k, _, v = e.partition("=")
        env[k] = v
    argv = imgconfig.command(cfg, list(args), entrypoint)
    cwd = workdir or cfg.workdir
    image = Image(
        ref=ref, id=img.id, digest=img.digest,
        names=tuple(img.tags) + tuple(img.meta.get("repo_digests", [])), pinned=_pinned(ref),
        layers=tuple(roots), diff_ids=tuple(img.layers), env=cfg.env,
        run_env=tuple(f"{k}={v}" for k, v in run_env.items()), entrypoint=cfg.entrypoint, cmd=cfg.cmd,
        user=cfg.user, workdir=cfg.workdir, labels=tuple(sorted(cfg.labels.items())), stop_signal=cfg.stop_signal,
        exposed_ports=cfg.exposed_ports, notes=tuple(notes))
    return {"image": image, "argv": tuple(argv), "env": env, "uid": uid, "gid": gid, "groups": groups, "cwd": cwd,
            "signature_files": [store.path("refs.json"), f"{img.dir}/image.json"]}
