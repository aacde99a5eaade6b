"""YAML loading that remembers where every value came from (file:line:column).

Profile and policy errors must name the file, line and field, so we compose
the node graph ourselves instead of using yaml.safe_load.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from .errors import SpecError

MAX_BYTES = 1 << 20


@dataclass
class Doc:
    """Plain data plus a side table: dotted key path -> (line, column), 1-based."""

    data: object
    path: str
    marks: dict[str, tuple[int, int]] = field(default_factory=dict)

    def where(self, key: str) -> str:
        while key:
            if key in self.marks:
                line, col = self.marks[key]
                return f"{self.path}:{line}:{col}"
            key = key.rpartition(".")[0]
        return self.path

    def error(self, key: str, message: str) -> SpecError:
        return SpecError(f"{key}: {message}" if key else message, where=self.where(key))


def _construct(node, key: str, marks: dict, depth: int = 0):
    import yaml

    if depth > 50:
        raise SpecError("nesting too deep", where=f"{node.start_mark.line + 1}:{node.start_mark.column + 1}")
    marks[key] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        out = {}
        for knode, vnode in node.value:
            if not isinstance(knode, yaml.ScalarNode):
                raise SpecError("mapping keys must be plain names",
                                where=f"{knode.start_mark.line + 1}:{knode.start_mark.column + 1}")
            k = str(knode.value)
            sub = f"{key}.{k}" if key else k
            if k in out:
                raise _Located(sub, "duplicate key", knode)
            marks[sub] = (knode.start_mark.line + 1, knode.start_mark.column + 1)
            out[k] = _construct(vnode, sub, marks, depth + 1)
            marks[sub] = (knode.start_mark.line + 1, knode.start_mark.column + 1)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(v, f"{key}[{i}]", marks, depth + 1) for i, v in enumerate(node.value)]
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    except yaml.YAMLError as e:
        raise _Located(key, f"bad value: {getattr(e, 'problem', e)}", node) from None
    finally:
        loader.dispose()


class _Located(Exception):
    def __init__(self, key: str, msg: str, node):
        self.key, self.msg, self.node = key, msg, node


class _AliasRefused(Exception):
    def __init__(self, mark) -> None:
        self.mark = mark


_LOADER = None


def _loader_class():
    """SafeLoader that refuses anchors and aliases as it meets them (built once, on first use:
    yaml is imported lazily). Refusing at the first anchor keeps a "billion laughs" document
    from costing anything."""
    global _LOADER
    if _LOADER is None:
        import yaml

        class NoAliasLoader(yaml.SafeLoader):
            def compose_node(self, parent, index):
                ev = self.peek_event()
                if isinstance(ev, yaml.AliasEvent) or getattr(ev, "anchor", None) is not None:
                    raise _AliasRefused(ev.start_mark)
                return super().compose_node(parent, index)

        _LOADER = NoAliasLoader
    return _LOADER


def load(path: str, text: str | None = None) -> Doc:
    """Parse a YAML file into a Doc. Any problem -> SpecError naming path:line:col."""
    import yaml

    if text is None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                raw = os.read(fd, MAX_BYTES + 1)
            finally:
                os.close(fd)
        except OSError as e:
            raise SpecError(f"cannot read: {e.strerror}", where=path) from None
        if len(raw) > MAX_BYTES:
            raise SpecError(f"file larger than {MAX_BYTES} bytes", where=path)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise SpecError(f"not UTF-8 (byte {e.start})", where=path) from None
    try:
        node = yaml.compose(text, Loader=_loader_class())
    except _AliasRefused as e:
        raise SpecError("YAML anchors and aliases are not allowed here (a profile or policy needs none, and "
                        "nested aliases expand exponentially)", where=f"{path}:{e.mark.line + 1}:{e.mark.column + 1}") \
            from None
    except yaml.MarkedYAMLError as e:
        m = e.problem_mark or e.context_mark
        where = f"{path}:{m.line + 1}:{m.column + 1}" if m else path
        raise SpecError(f"invalid YAML: {e.problem or e.context}", where=where) from None
    except yaml.YAMLError as e:
        raise SpecError(f"invalid YAML: {e}", where=path) from None
    except RecursionError:
        raise SpecError("invalid YAML: nesting too deep", where=path) from None
    marks: dict[str, tuple[int, int]] = {}
    if node is None:
        return Doc({}, path, marks)
    try:
        data = _construct(node, "", marks)
    except _Located as e:
        m = e.node.start_mark
        raise SpecError(f"{e.key}: {e.msg}", where=f"{path}:{m.line + 1}:{m.column + 1}") from None
    except SpecError as e:
        e.where = f"{path}:{e.where}" if e.where else path
        raise
    except RecursionError:
        raise SpecError("invalid YAML: nesting too deep", where=path) from None
    return Doc(data, path, marks)


def get_path(data, dotted: str, default=None):
    """data["a"]["b"] for "a.b", or default when any step is missing or not a mapping."""
    cur = data
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return default
        cur = cur[part]
    return cur


# Schema kinds shared by profiles and policies: name -> (accepts?, what to say when not).
BASE_KINDS: dict = {
    "str": (lambda x: isinstance(x, str), "a str"),
    "bool": (lambda x: isinstance(x, bool), "a bool"),
    "int": (lambda x: isinstance(x, int) and not isinstance(x, bool), "an integer"),
    "num": (lambda x: isinstance(x, (int, float)) and not isinstance(x, bool), "a number"),
    "size": (lambda x: isinstance(x, (int, str)) and not isinstance(x, bool), "a size like 64m"),
    "list": (lambda x: isinstance(x, list), "a list"),
    "map": (lambda x: isinstance(x, dict), "a mapping"),
}


def check_schema(doc: Doc, data, schema: dict, prefix: str = "", kinds: dict | None = None,
                 semantic=None) -> list[SpecError]:
    """Every unknown key and wrongly typed value under `data`, each located at file:line:col.

    schema: key -> kind name (a trailing "?" allows null) or a nested schema dict.
    kinds: extra kind names -> (accepts?, expectation text), on top of BASE_KINDS.
    semantic(key, kind, value) -> list[SpecError]: deeper checks for a value of the right type.
    """
    import difflib

    table = {**BASE_KINDS, **(kinds or {})}
    errors: list[SpecError] = []

    def walk(data, schema: dict, prefix: str) -> None:
        if not isinstance(data, dict):
            errors.append(doc.error(prefix, "must be a mapping"))
            return
        for k, v in data.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if k not in schema:
                near = difflib.get_close_matches(str(k), list(schema), 1)
                hint = f" (did you mean {near[0]}?)" if near else ""
                errors.append(doc.error(key, f"unknown key{hint} (known here: {', '.join(sorted(schema))})"))
                continue
            kind = schema[k]
            if isinstance(kind, dict):
                walk(v, kind, key)
                continue
            optional = kind.endswith("?")
            kind = kind.rstrip("?")
            if v is None and optional:
                continue
            accepts, expect = table[kind]
            if not accepts(v):
                errors.append(doc.error(key, f"must be {expect}, got {type(v).__name__} {v!r}"[:300]))
            elif semantic is not None:
                errors.extend(semantic(key, kind, v))

    walk(data, schema, prefix)
    return errors
