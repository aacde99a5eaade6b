"""sandbox.records: the dataclass subset the start-up path uses, without importing dataclasses."""
from __future__ import annotations

import subprocess
import sys

import pytest

from sandbox.records import FrozenInstanceError, asdict, field, record, replace
from sandbox.spec import Filesystem, Security, Spec, spec_from_dict


@record(frozen=True)
class Point:
    x: int
    y: int = 0
    tags: tuple[str, ...] = ()


@record
class Bag:
    items: list[int] = field(default_factory=list)
    secret: str | None = field(default=None, repr=False)


def test_init_defaults_and_factories_are_per_instance():
    assert Point(1) == Point(1, 0, ())
    assert Point(1, y=2).y == 2
    a, b = Bag(), Bag()
    a.items.append(1)
    assert b.items == []  # a factory, not a shared default


def test_bad_arguments_raise_like_dataclasses():
    with pytest.raises(TypeError, match="missing required argument 'x'"):
        Point()
    with pytest.raises(TypeError, match="unexpected keyword argument 'z'"):
        Point(1, z=3)
    with pytest.raises(TypeError, match="multiple values"):
        Point(1, x=2)
    with pytest.raises(TypeError, match="positional arguments"):
        Point(1, 2, (), 4)


def test_frozen_eq_hash_repr():
    p = Point(1, 2)
    with pytest.raises(FrozenInstanceError):
        p.x = 5
    with pytest.raises(AttributeError):
        del p.y
    assert p == Point(1, 2) and p != Point(2, 1) and p != (1, 2)
    assert hash(p) == hash(Point(1, 2))
    assert repr(p) == "Point(x=1, y=2, tags=())"
    assert "secret" not in repr(Bag(secret="s"))
    with pytest.raises(TypeError):
        hash(Bag())  # mutable records are unhashable, as with dataclasses


def test_replace_and_asdict_roundtrip_a_spec():
    spec = Spec(argv=("/bin/true",), filesystem=Filesystem(tmp_size=1), security=Security(capabilities=("KILL",)))
    assert spec_from_dict(asdict(spec)) == spec
    s2 = replace(spec, argv=("x",))
    assert s2.argv == ("x",) and s2.filesystem is spec.filesystem
    with pytest.raises(TypeError, match="no field 'nope'"):
        replace(spec, nope=1)
    assert spec.digest() == Spec(argv=("/bin/true",), filesystem=Filesystem(tmp_size=1),
                                 security=Security(capabilities=("KILL",))).digest()
    assert spec.digest() != s2.digest()


def test_default_after_required_is_rejected():
    with pytest.raises(TypeError, match="without a default follows"):
        @record
        class Bad:
            a: int = 1
            b: int


def test_run_hot_path_imports_none_of_the_heavy_modules():
    # The reason records exist: `sbx run` must not pay for these (see bench/startup.py).
    code = ("import sys; from sandbox import cmd_run, speccache, launch, verify, cgroups, mounts, caps, seccomp, "
            "landlock, net, initproc, rlimits, userns; "
            "print(' '.join(sorted(m for m in ('dataclasses', 'json', 're', 'enum', 'typing', 'inspect', "
            "'socket', '_socket', 'resource', 'signal', 'threading', 'traceback', 'importlib.util', 'click', 'yaml', 'prctl') if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"heavy modules imported on the run path: {out}"
