"""Cache of resolved Specs, so a warm `sbx run` neither imports yaml nor parses profiles.

The key covers everything resolve() reads besides the profile files (flags,
cwd for relative paths, env values that bare `-e NAME` would copy); the entry
records (path, inode, size, mtime) of every profile file in the extends chain
and of env files, and is used only while all of them are unchanged. Only
successful resolutions are cached: errors are always recomputed.

Entries are marshal blobs, not JSON: marshal is built into the interpreter,
json costs ~7 ms of imports. The cache lives in sbx's private 0700 directory
and a blob that does not load is simply recomputed.
"""
from __future__ import annotations

import marshal
import os

from . import paths
from .digest import sha256
from .records import replace
from .spec import Spec, canonical, spec_from_dict

# The modules whose code turns flags and profiles into a Spec: an entry is valid only for the
# exact files (inode, size, mtime) that produced it, so a change of code never needs a version bump.
PRODUCERS = ("profiles.py", "spec.py", "values.py", "yamlmarks.py", "records.py", "speccache.py", "seccomp.py")
MAX_ENTRY = 1 << 20


def _stat_sig(path: str) -> list:
    st = os.stat(path)
    return [path, st.st_ino, st.st_size, st.st_mtime_ns]


def _key(profile: str, flags: dict) -> str:
    bare_env = {e: os.environ.get(e) for e in (flags.get("env") or ()) if "=" not in e}
    blob = canonical([_code(), profile, os.getcwd(), sorted((k, repr(v)) for k, v in flags.items()), bare_env,
                      os.geteuid()])
    return sha256(blob).hexdigest()


def _code() -> list:
    here = os.path.dirname(os.path.abspath(__file__))
    out = []
    for name in PRODUCERS:
        try:
            out.append(_stat_sig(os.path.join(here, name)))
        except OSError:
            out.append([name])
    return out


def _dir() -> str:
    return os.path.join(paths.cache_dir(), "specs")


def resolve(argv, profile: str, **flags) -> Spec:
    # An image run's argv comes from the image config and the arguments together: part of the key.
    image = bool(flags.get("image"))
    key = _key(profile, {**flags, "_argv": tuple(argv), "_store": paths.data_dir()} if image else flags)
    path = os.path.join(_dir(), key + ".bin")
    try:
        blob = paths.read_private(path, MAX_ENTRY)
        if blob is None:
            raise ValueError("no usable entry")
        entry = marshal.loads(blob)
        if all(_stat_sig(s[0]) == s for s in entry["files"]):
            spec = spec_from_dict(entry["spec"])
            return spec if image else replace(spec, argv=tuple(argv))
    except (OSError, ValueError, EOFError, KeyError, TypeError, IndexError):
        pass
    from .profiles import profile_chain
    from .profiles import resolve as slow_resolve
    spec = slow_resolve(argv, profile=profile, **flags)
    try:
        files = [_stat_sig(p) for p in profile_chain(profile)] + [_stat_sig(p) for p in flags.get("env_file") or ()]
        if spec.image is not None:
            # refs.json (a tag moved, an image removed) and the image's record: any change recomputes
            from .image.store import Store
            st = Store()
            files += [_stat_sig(st.path("refs.json")), _stat_sig(st.path("images", spec.image.id, "image.json"))]
        paths.ensure_private_dir(paths.cache_dir())
        paths.ensure_private_dir(_dir())
        paths.atomic_write(path, marshal.dumps({"files": files, "spec": spec.to_dict()}))
    except OSError:
        pass  # a cache that cannot be written only costs time
    return spec
