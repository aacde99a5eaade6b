"""Value classes for the start-up path, without the cost of `dataclasses`.

`import dataclasses` pulls in inspect, ast, dis, tokenize, enum and re: about
16 ms on these machines, and every @dataclass then exec()s generated source
(another 0.2-0.5 ms per class). On `sbx run`'s cold path that was a third of
the whole start. `@record` gives the part sbx uses (keyword/positional
__init__ with defaults and factories, __eq__, __repr__, frozen instances,
asdict/replace) by reading the class annotations once, with no code
generation (nor `typing`). Modules off the hot path (audit, doctor, lifecycle) keep dataclasses.
"""
from __future__ import annotations

TYPE_CHECKING = False  # `import typing` alone costs ~10 ms here; annotations are strings anyway
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar, dataclass_transform

    T = TypeVar("T")
else:
    def dataclass_transform(**_kw):
        """At run time a no-op: type checkers read @record as a dataclass (PEP 681), for free."""
        return lambda fn: fn

_MISSING = object()


class FrozenInstanceError(AttributeError):
    pass


class field:
    """A field with a default factory, or a default hidden from repr."""

    __slots__ = ("default", "default_factory", "repr")

    def __init__(self, *, default: Any = _MISSING, default_factory: Callable[[], Any] | None = None,
                 repr: bool = True) -> None:
        self.default = default
        self.default_factory = default_factory
        self.repr = repr


def _collect(cls: type) -> tuple[tuple[str, ...], dict[str, Any], dict[str, Callable[[], Any]], tuple[str, ...]]:
    names: list[str] = []
    defaults: dict[str, Any] = {}
    factories: dict[str, Callable[[], Any]] = {}
    hidden: list[str] = []
    for base in reversed(cls.__mro__[1:]):
        if "__record_fields__" in base.__dict__:
            for n in base.__record_fields__:
                if n not in names:
                    names.append(n)
            defaults.update(base.__record_defaults__)
            factories.update(base.__record_factories__)
    for name, ann in cls.__dict__.get("__annotations__", {}).items():
        if isinstance(ann, str) and ann.startswith(("ClassVar", "typing.ClassVar")):
            continue
        if name not in names:
            names.append(name)
        value = cls.__dict__.get(name, _MISSING)
        if isinstance(value, field):
            if value.default_factory is not None:
                factories[name] = value.default_factory
            elif value.default is not _MISSING:
                defaults[name] = value.default
            if not value.repr:
                hidden.append(name)
            if value.default is _MISSING:
                delattr(cls, name)
            else:
                setattr(cls, name, value.default)
        elif value is not _MISSING:
            defaults[name] = value
    seen_default = False
    for n in names:
        has = n in defaults or n in factories
        if seen_default and not has:
            raise TypeError(f"{cls.__name__}: field {n!r} without a default follows one with a default")
        seen_default = seen_default or has
    return tuple(names), defaults, factories, tuple(hidden)


@dataclass_transform(field_specifiers=(field,))
def record(cls: type[T] | None = None, /, *, frozen: bool = False) -> Any:
    """Class decorator: fields from annotations, like @dataclass(frozen=...) for the features sbx uses."""

    def wrap(cls: type[T]) -> type[T]:
        names, defaults, factories, hidden = _collect(cls)
        index = {n: i for i, n in enumerate(names)}
        setter = object.__setattr__

        def __init__(self, *args: Any, **kw: Any) -> None:
            if len(args) > len(names):
                raise TypeError(f"{cls.__name__}() takes {len(names)} positional arguments, {len(args)} given")
            for k in kw:
                if k not in index:
                    raise TypeError(f"{cls.__name__}() got an unexpected keyword argument {k!r}")
                if index[k] < len(args):
                    raise TypeError(f"{cls.__name__}() got multiple values for argument {k!r}")
            for i, n in enumerate(names):
                if i < len(args):
                    v = args[i]
                elif n in kw:
                    v = kw[n]
                elif n in factories:
                    v = factories[n]()
                elif n in defaults:
                    v = defaults[n]
                else:
                    raise TypeError(f"{cls.__name__}() missing required argument {n!r}")
                setter(self, n, v)
            post = getattr(self, "__post_init__", None)
            if post is not None:
                post()

        def __repr__(self) -> str:
            inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in names if n not in hidden)
            return f"{cls.__qualname__}({inner})"

        def __eq__(self, other: object) -> bool:
            if other.__class__ is not self.__class__:
                return NotImplemented
            return all(getattr(self, n) == getattr(other, n) for n in names)

        cls.__init__ = __init__  # type: ignore[misc]
        if "__repr__" not in cls.__dict__:
            cls.__repr__ = __repr__  # type: ignore[assignment]
        if "__eq__" not in cls.__dict__:
            cls.__eq__ = __eq__  # type: ignore[assignment]
        if frozen:
            def __setattr__(self, name: str, value: Any) -> None:
                raise FrozenInstanceError(f"cannot assign to field {name!r}")

            def __delattr__(self, name: str) -> None:
                raise FrozenInstanceError(f"cannot delete field {name!r}")

            def __hash__(self) -> int:
                return hash(tuple(getattr(self, n) for n in names))

            cls.__setattr__ = __setattr__  # type: ignore[assignment]
            cls.__delattr__ = __delattr__  # type: ignore[assignment]
            cls.__hash__ = __hash__  # type: ignore[assignment]
        elif "__hash__" not in cls.__dict__:
            cls.__hash__ = None  # type: ignore[assignment] - mutable and compared by value, like dataclasses
        cls.__record_fields__ = names  # type: ignore[attr-defined]
        cls.__record_defaults__ = defaults  # type: ignore[attr-defined]
        cls.__record_factories__ = factories  # type: ignore[attr-defined]
        return cls

    return wrap if cls is None else wrap(cls)


def asdict(obj: Any) -> dict:
    """Nested records become dicts; tuples, lists and dicts are copied recursively."""
    return {n: _plain(getattr(obj, n)) for n in obj.__record_fields__}


def _plain(v: Any) -> Any:
    if hasattr(type(v), "__record_fields__"):
        return asdict(v)
    if isinstance(v, (list, tuple)):
        return type(v)(_plain(x) for x in v)
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def replace(obj: T, **changes: Any) -> T:
    for k in changes:
        if k not in obj.__record_fields__:  # type: ignore[attr-defined]
            raise TypeError(f"{type(obj).__name__} has no field {k!r}")
    return type(obj)(**{n: changes[n] if n in changes else getattr(obj, n)
                        for n in obj.__record_fields__})  # type: ignore[attr-defined]
