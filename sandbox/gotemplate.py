"""A small, safe evaluator for the Go text/template subset Docker users put in `--format`.

What it understands: text and `{{ }}` actions with `{{-`/`-}}` trimming and `{{/* */}}`
comments; field paths (`.State.Pid`, `$`, `$v.Name`, `(pipeline).Field`); pipelines with
`|`; string ("..", `..`), number, true/false/nil literals; `if`/`else if`/`else`, `range`
(with `$i, $v :=`), `with` and `end`; the functions Docker adds (json, join, split, lower,
upper, title, truncate, pad, println) and the Go builtins people use (index, len, printf,
print, eq, ne, lt, le, gt, ge, and, or, not).

Nothing is ever evaluated as Python: the template is parsed into a small tree and walked
over plain data (dicts, lists, strings, numbers). The only callables reached are the ones a
caller puts into that data on purpose (`.Label "key"` in `sbx ps`).

Data model, as Docker's: a plain dict is a Go *struct* (a field it does not have is an
error, naming the fields it has); a `GoMap` is a Go *map* (a missing key prints
`<no value>`, `index` gives ""). Every error is a TemplateError with one line of text.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable


class TemplateError(Exception):
    """A template that does not parse or does not evaluate; one line, for `sbx: --format: ...`."""


class GoMap(dict):
    """User data keyed by arbitrary strings (labels, ports): missing keys are not errors."""


NO_VALUE = "<no value>"
_MAX_OUTPUT = 16 * 1024 * 1024  # a `range` over a hostile sandbox's data must not eat the host's memory
_MAX_DEPTH = 64


# ---------------------------------------------------------------- lexer

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<str>"(?:[^"\\\n]|\\.)*")
  | (?P<raw>`[^`]*`)
  | (?P<decl>:=)
  | (?P<assign>=)
  | (?P<punct>[|(),])
  | (?P<var>\$[A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+)
  | (?P<dot>\.)
  | (?P<num>[-+]?(?:0[xX][0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?))
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
""", re.X)


def _lex(src: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(src):
        m = _TOKEN.match(src, i)
        if m is None:
            raise TemplateError(f"unexpected {src[i]!r} in action {{{{{src}}}}}")
        kind = m.lastgroup or ""
        text = m.group()
        i = m.end()
        if kind == "ws":
            continue
        if kind == "field" and out and out[-1][0] == "close":
            kind = "chain"  # (pipeline).Field
        if text == ")":
            kind = "close"
        elif text == "(":
            kind = "open"
        elif kind == "punct":
            kind = text
        out.append((kind, text))
    return out


def _split_actions(src: str) -> list[tuple[str, str]]:
    """[("text", s) | ("action", inner)] with trim markers applied."""
    parts: list[tuple[str, str]] = []
    i = 0
    while True:
        j = src.find("{{", i)
        if j < 0:
            parts.append(("text", src[i:]))
            return parts
        text = src[i:j]
        k = j + 2
        if src.startswith("- ", k) or src.startswith("-\t", k) or src.startswith("-\n", k):
            text = text.rstrip()
            k += 1
        parts.append(("text", text))
        end = _action_end(src, k)
        inner = src[k:end]
        i = end + 2
        if inner.endswith((" -", "\t-", "\n-")):
            inner = inner[:-1]
            n = i
            while n < len(src) and src[n] in " \t\r\n":
                n += 1
            i = n
        inner = inner.strip()
        if inner.startswith("/*"):
            if not inner.endswith("*/"):
                raise TemplateError("unclosed comment")
            continue
        parts.append(("action", inner))


def _action_end(src: str, k: int) -> int:
    """Index of the '}}' closing the action that starts at k (quotes may hold braces)."""
    i = k
    while i < len(src):
        c = src[i]
        if c == '"':
            i += 1
            while i < len(src) and src[i] != '"':
                if src[i] == "\\":
                    i += 1
                elif src[i] == "\n":
                    raise TemplateError("unterminated quoted string")
                i += 1
        elif c == "`":
            e = src.find("`", i + 1)
            if e < 0:
                raise TemplateError("unterminated raw quoted string")
            i = e
        elif src.startswith("}}", i):
            return i
        i += 1
    raise TemplateError("unclosed action (missing '}}')")


# ---------------------------------------------------------------- parser

class _Parser:
    def __init__(self, src: str) -> None:
        self.parts = _split_actions(src)
        self.pos = 0
        self.depth = 0

    def parse(self) -> list:
        nodes, stop = self._list(())
        if stop is not None:
            raise TemplateError(f"unexpected {{{{{stop[0]}}}}}")
        return nodes

    def _list(self, stops: tuple[str, ...]):
        nodes: list = []
        while self.pos < len(self.parts):
            kind, body = self.parts[self.pos]
            self.pos += 1
            if kind == "text":
                if body:
                    nodes.append(("text", body))
                continue
            toks = _lex(body)
            if not toks:
                raise TemplateError("missing value for command")
            head = toks[0]
            if head[0] == "ident" and head[1] in ("end", "else"):
                if head[1] not in stops:
                    raise TemplateError(f"unexpected {{{{{head[1]}}}}}")
                return nodes, (head[1], toks[1:])
            if head[0] == "ident" and head[1] in ("if", "range", "with"):
                nodes.append(self._control(head[1], toks[1:]))
                continue
            if head[0] == "ident" and head[1] in ("define", "template", "block", "break", "continue"):
                raise TemplateError(f"{{{{{head[1]}}}}} is not supported by sbx's --format")
            nodes.append(("action", _Pipe.parse(toks)))
        if stops:
            raise TemplateError("unexpected end of template (missing {{end}})")
        return nodes, None

    def _control(self, word: str, toks):
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise TemplateError("template nested too deeply")
        try:
            return self._control_body(word, toks)
        finally:
            self.depth -= 1

    def _control_body(self, word: str, toks):
        pipe = _Pipe.parse(toks, allow_decl=True, pair=word == "range")
        body, stop = self._list(("end", "else"))
        other: list = []
        assert stop is not None
        if stop[0] == "else":
            rest = stop[1]
            if rest and rest[0] == ("ident", "if") and word == "if":
                other = [self._control("if", rest[1:])]
                return (word, pipe, body, other)  # the nested if consumed the shared {{end}}
            if rest:
                raise TemplateError(f"unexpected tokens after {{{{else}}}} in {{{{{word}}}}}")
            other, stop = self._list(("end",))
            if stop is None or stop[1]:
                raise TemplateError(f"bad {{{{end}}}} of {{{{{word}}}}}")
        elif stop[1]:
            raise TemplateError("unexpected tokens after {{end}}")
        return (word, pipe, body, other)


class _Pipe:
    def __init__(self, decl: list[str], cmds: list[list]) -> None:
        self.decl = decl
        self.cmds = cmds

    @staticmethod
    def parse(toks, allow_decl: bool = True, pair: bool = False, depth: int = 0) -> _Pipe:
        if depth > _MAX_DEPTH:
            raise TemplateError("template nested too deeply")
        decl: list[str] = []
        # $x := ... | $i, $v := ...
        if allow_decl and toks and toks[0][0] == "var":
            if len(toks) > 1 and toks[1][0] in ("decl", "assign"):
                decl, toks = [toks[0][1]], toks[2:]
            elif pair and len(toks) > 3 and toks[1][0] == "," and toks[2][0] == "var" and toks[3][0] in ("decl", "assign"):
                decl, toks = [toks[0][1], toks[2][1]], toks[4:]
        cmds: list[list] = [[]]
        i = 0
        while i < len(toks):
            kind, text = toks[i]
            if kind == "|":
                if not cmds[-1]:
                    raise TemplateError("missing command before '|'")
                cmds.append([])
                i += 1
                continue
            if kind == "open":
                parens, j = 1, i + 1
                while j < len(toks) and parens:
                    parens += {"open": 1, "close": -1}.get(toks[j][0], 0)
                    j += 1
                if parens:
                    raise TemplateError("unclosed left paren")
                inner = _Pipe.parse(toks[i + 1:j - 1], allow_decl=False, depth=depth + 1)
                chain = ()
                if j < len(toks) and toks[j][0] == "chain":
                    chain = tuple(toks[j][1].split(".")[1:])
                    j += 1
                cmds[-1].append(("pipe", inner, chain))
                i = j
                continue
            cmds[-1].append(_operand(kind, text))
            i += 1
        if not cmds[-1]:
            raise TemplateError("missing value for command")
        return _Pipe(decl, cmds)


def _operand(kind: str, text: str):
    if kind == "field":
        return ("field", tuple(text.split(".")[1:]))
    if kind == "dot":
        return ("dot",)
    if kind == "var":
        name, *path = text.split(".")
        return ("var", name, tuple(path))
    if kind == "str":
        return ("lit", _unquote(text))
    if kind == "raw":
        return ("lit", text[1:-1])
    if kind == "num":
        try:
            return ("lit", int(text, 0))
        except ValueError:
            try:
                return ("lit", float(text))
            except ValueError:
                raise TemplateError(f"bad number {text}") from None
    if kind == "ident":
        if text in ("true", "false"):
            return ("lit", text == "true")
        if text == "nil":
            return ("lit", None)
        return ("func", text)
    raise TemplateError(f"unexpected {text!r}")


_ESC = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\",
        "'": "'", '"': '"'}
_HEX = {"x": 2, "u": 4, "U": 8}


def _unquote(text: str) -> str:
    """A Go interpreted string literal (with its quotes) -> its value."""
    body, out, i = text[1:-1], [], 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        e = body[i + 1:i + 2]
        try:
            if e in _ESC:
                out.append(_ESC[e])
                i += 2
            elif e in _HEX:
                n = _HEX[e]
                out.append(chr(int(body[i + 2:i + 2 + n], 16)) if len(body[i + 2:i + 2 + n]) == n else "")
                if len(body[i + 2:i + 2 + n]) != n:
                    raise ValueError
                i += 2 + n
            elif e.isdigit():
                out.append(chr(int(body[i + 1:i + 4], 8)))
                i += 4
            else:
                raise ValueError
        except ValueError:
            raise TemplateError(f"bad escape in string literal {text}") from None
    return "".join(out)


# ---------------------------------------------------------------- values

def go_str(v) -> str:
    """A value as Go's fmt %v prints it."""
    if v is None:
        return "<nil>"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return v
    if isinstance(v, float):
        if v == int(v) and abs(v) < 1e21:
            return str(int(v))
        return repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, dict):
        return "map[" + " ".join(f"{go_str(k)}:{go_str(v[k])}" for k in sorted(v, key=str)) + "]"
    if isinstance(v, (list, tuple)):
        return "[" + " ".join(go_str(x) for x in v) + "]"
    return str(v)


def _truth(v) -> bool:
    if v is None or v is False:
        return False
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return v != 0
    if isinstance(v, (str, list, tuple, dict)):
        return len(v) > 0
    return True


def _plain(v, depth: int = 0):
    """Data as JSON sees it: a struct's own JSON view where it has one, methods left out."""
    if depth > _MAX_DEPTH:
        raise TemplateError("json: data nested too deeply")
    v = getattr(v, "json_value", v)
    if isinstance(v, dict):
        return {str(k): _plain(x, depth + 1) for k, x in v.items() if not callable(x)}
    if isinstance(v, (list, tuple)):
        return [_plain(x, depth + 1) for x in v]
    return None if callable(v) else v


def to_json(v) -> str:
    """Docker's `json` function: compact, no HTML escaping; non-ASCII as \\uXXXX so nothing can
    reach the terminal raw."""
    try:
        return json.dumps(_plain(v), separators=(",", ":"))
    except (TypeError, ValueError) as e:
        raise TemplateError(f"json: {e}") from None


_VERB = re.compile(r"%([-+# 0]*)(\d+|\*)?(?:\.(\d+))?([a-zA-Z%])")


def go_printf(fmt: str, *args) -> str:
    out = []
    pos = 0
    ai = 0
    for m in _VERB.finditer(fmt):
        out.append(fmt[pos:m.start()])
        pos = m.end()
        flags, width, prec, verb = m.groups()
        if verb == "%":
            out.append("%")
            continue
        if width == "*":
            width = str(args[ai]) if ai < len(args) else ""
            ai += 1
        if ai >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        a = args[ai]
        ai += 1
        spec = flags.replace("#", "") + (width or "") + (f".{prec}" if prec is not None else "")
        try:
            if verb in "sv":
                s = go_str(a)
                out.append(format(s, _pyalign(flags, width, prec)))
            elif verb == "q":
                out.append(format(json.dumps(go_str(a)), _pyalign(flags, width, None)))
            elif verb == "d":
                out.append(format(int(a), spec + "d"))
            elif verb in "xXob":
                out.append(format(int(a), spec + verb))
            elif verb in "feEgG":
                out.append(format(float(a), spec + verb))
            elif verb == "t":
                out.append(format(go_str(bool(a)), _pyalign(flags, width, None)))
            else:
                out.append(f"%!{verb}({go_str(a)})")
        except (TypeError, ValueError):
            out.append(f"%!{verb}({go_str(a)})")
    out.append(fmt[pos:])
    if ai < len(args):
        out.append("%!(EXTRA " + ", ".join(go_str(a) for a in args[ai:]) + ")")
    return "".join(out)


def _pyalign(flags: str, width: str | None, prec: str | None) -> str:
    return ("<" if "-" in flags else ">") + (width or "") + (f".{prec}" if prec is not None else "")


def _index(v, *keys):
    for k in keys:
        if isinstance(v, dict):
            v = v.get(k, "") if isinstance(v, GoMap) else _struct_field(v, str(k))
        elif isinstance(v, (list, tuple, str)):
            if not isinstance(k, int) or isinstance(k, bool):
                raise TemplateError(f"index: cannot index a list with {go_str(k)!r}")
            if not 0 <= k < len(v):
                raise TemplateError(f"index: index out of range: {k}")
            v = v[k]
        elif v is None:
            raise TemplateError("index of untyped nil")
        else:
            raise TemplateError(f"index: can't index item of type {type(v).__name__}")
    return v


def _cmp(name: str):
    ops = {"eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "lt": lambda a, b: a < b,
           "le": lambda a, b: a <= b, "gt": lambda a, b: a > b, "ge": lambda a, b: a >= b}
    op = ops[name]

    def f(a, *bs):
        if not bs:
            raise TemplateError(f"{name}: missing argument for comparison")
        if name == "eq":
            return any(op(a, b) for b in bs)
        try:
            return op(a, bs[0])
        except TypeError:
            raise TemplateError(f"{name}: incompatible types for comparison") from None
    return f


def _truncate(s, n):
    s = go_str(s)
    return s[:int(n)] if len(s) > int(n) else s


def _len(v):
    if isinstance(v, (str, list, tuple, dict)):
        return len(v)
    raise TemplateError(f"len of {type(v).__name__}")


def _join(v, sep=" "):
    if isinstance(v, str):
        return v
    if not isinstance(v, (list, tuple)):
        raise TemplateError("join: not a list")
    return str(sep).join(go_str(x) for x in v)


FUNCS: dict[str, Callable] = {
    "json": to_json,
    "join": _join,
    "split": lambda s, sep: go_str(s).split(go_str(sep)),
    "lower": lambda s: go_str(s).lower(),
    "upper": lambda s: go_str(s).upper(),
    "title": lambda s: go_str(s).title(),
    "truncate": _truncate,
    "pad": lambda s, pre, post: " " * int(pre) + go_str(s) + " " * int(post),
    "println": lambda *a: " ".join(go_str(x) for x in a) + "\n",
    "print": lambda *a: "".join(go_str(x) for x in a),
    "printf": lambda fmt, *a: go_printf(go_str(fmt), *a),
    "index": _index,
    "len": _len,
    "not": lambda v: not _truth(v),
    "and": lambda *a: next((x for x in a if not _truth(x)), a[-1] if a else None),
    "or": lambda *a: next((x for x in a if _truth(x)), a[-1] if a else None),
    **{n: _cmp(n) for n in ("eq", "ne", "lt", "le", "gt", "ge")},
}


def _struct_field(v: dict, name: str):
    if name in v:
        return v[name]
    known = ", ".join(sorted(str(k) for k in v if str(k)[:1].isupper())) or ", ".join(sorted(map(str, v)))
    raise TemplateError(f"can't evaluate field {name}: no such field (fields here: {known})")


def _field(v, path: tuple[str, ...], shown: str):
    for i, name in enumerate(path):
        if isinstance(v, GoMap):
            if name not in v and i < len(path) - 1:
                raise TemplateError(f"at <{shown}>: nil pointer evaluating .{name}")
            v = v.get(name, NO_VALUE)
        elif isinstance(v, dict):
            try:
                v = _struct_field(v, name)
            except TemplateError as e:
                raise TemplateError(f"at <{shown}>: {e}") from None
        elif v is None:
            raise TemplateError(f"at <{shown}>: nil pointer evaluating .{name}")
        else:
            raise TemplateError(f"at <{shown}>: can't evaluate field {name} in type {type(v).__name__}")
    return v


# ---------------------------------------------------------------- execution

class _Exec:
    def __init__(self, root, escape: Callable[[str], str]) -> None:
        self.root = root
        self.escape = escape
        self.out: list[str] = []
        self.size = 0
        self.depth = 0

    def emit(self, s: str) -> None:
        self.size += len(s)
        if self.size > _MAX_OUTPUT:
            raise TemplateError("output too large")
        self.out.append(s)

    def walk(self, nodes, dot, scope: dict) -> None:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise TemplateError("template nested too deeply")
        try:
            for n in nodes:
                kind = n[0]
                if kind == "text":
                    self.emit(n[1])
                elif kind == "action":
                    v = self.pipe(n[1], dot, scope)
                    if not n[1].decl:
                        self.emit(self.escape(go_str(v)))
                elif kind == "if":
                    inner = dict(scope)
                    if _truth(self.pipe(n[1], dot, inner)):
                        self.walk(n[2], dot, inner)
                    else:
                        self.walk(n[3], dot, inner)
                elif kind == "with":
                    inner = dict(scope)
                    v = self.pipe(n[1], dot, inner)
                    if _truth(v):
                        self.walk(n[2], v, inner)
                    else:
                        self.walk(n[3], dot, inner)
                elif kind == "range":
                    self.range(n, dot, scope)
        finally:
            self.depth -= 1

    def range(self, n, dot, scope: dict) -> None:
        pipe = n[1]
        v = self.pipe(_Pipe([], pipe.cmds), dot, scope)
        if v is None:
            items = []
        elif isinstance(v, dict):
            items = [(k, v[k]) for k in sorted(v, key=str)]
        elif isinstance(v, (list, tuple)):
            items = list(enumerate(v))
        elif isinstance(v, int) and not isinstance(v, bool):
            items = [(i, i) for i in range(min(v, 100_000))]
        else:
            raise TemplateError(f"range can't iterate over {go_str(v)}")
        if not items:
            self.walk(n[3], dot, scope)
            return
        for k, x in items:
            inner = dict(scope)
            if len(pipe.decl) == 1:
                inner[pipe.decl[0]] = x
            elif len(pipe.decl) == 2:
                inner[pipe.decl[0]], inner[pipe.decl[1]] = k, x
            self.walk(n[2], x, inner)

    def pipe(self, p: _Pipe, dot, scope: dict):
        v = None
        for i, cmd in enumerate(p.cmds):
            v = self.command(cmd, dot, scope, (v,) if i else None)
        for name in p.decl[:1]:
            scope[name] = v
        return v

    def command(self, cmd: list, dot, scope: dict, piped):
        head = cmd[0]
        if head[0] == "func":
            fn = FUNCS.get(head[1])
            if fn is None:
                raise TemplateError(f'function "{head[1]}" not defined')
            args = [self.arg(a, dot, scope) for a in cmd[1:]] + list(piped or ())
            try:
                return fn(*args)
            except TemplateError:
                raise
            except (TypeError, ValueError, IndexError, KeyError) as e:
                raise TemplateError(f"error calling {head[1]}: {e}") from None
        v = self.arg(head, dot, scope)
        extra = [self.arg(a, dot, scope) for a in cmd[1:]] + list(piped or ())
        if callable(v):  # a method the caller put in the data on purpose (.Label "key")
            try:
                return v(*extra)
            except TypeError as e:
                raise TemplateError(f"wrong number of args: {e}") from None
        if extra:
            raise TemplateError(f"can't give argument to non-function {_shown(head)}")
        return v

    def arg(self, a, dot, scope: dict):
        kind = a[0]
        if kind == "lit":
            return a[1]
        if kind == "dot":
            return dot
        if kind == "field":
            return _field(dot, a[1], "." + ".".join(a[1]))
        if kind == "var":
            name = a[1]
            if name == "$":
                base = self.root
            elif name in scope:
                base = scope[name]
            else:
                raise TemplateError(f"undefined variable: {name}")
            return _field(base, a[2], name + "".join("." + p for p in a[2]))
        if kind == "pipe":
            v = self.pipe(a[1], dot, scope)
            return _field(v, a[2], "(...)." + ".".join(a[2])) if a[2] else v
        if kind == "func":
            fn = FUNCS.get(a[1])
            if fn is None:
                raise TemplateError(f'function "{a[1]}" not defined')
            try:
                return fn()
            except TypeError:
                raise TemplateError(f"{a[1]} needs arguments") from None
        raise TemplateError(f"unexpected {kind}")


def _shown(a) -> str:
    if a[0] == "field":
        return "." + ".".join(a[1])
    if a[0] == "lit":
        return go_str(a[1])
    return a[0]


class Template:
    """A parsed template; render(data) -> str. `escape` is applied to every value printed
    (never to the template's own text), so data cannot carry terminal controls."""

    def __init__(self, src: str, escape: Callable[[str], str] | None = None) -> None:
        if len(src) > 64 * 1024:
            raise TemplateError("template too long")
        self.src = src
        self.escape = escape or (lambda s: s)
        self.nodes = _Parser(src).parse()

    def render(self, data) -> str:
        ex = _Exec(data, self.escape)
        ex.walk(self.nodes, data, {"$": data})
        return "".join(ex.out)


# ---------------------------------------------------------------- Docker's `table` and tabwriter

def docker_format(fmt: str) -> tuple[bool, str]:
    """(is_table, template text) the way docker's formatter prepares `--format`: a `table`
    prefix, surrounding spaces trimmed, the two-character sequences \\t and \\n made real."""
    table = fmt.startswith("table")
    body = fmt[len("table"):] if table else fmt
    body = body.strip(" ").replace("\\t", "\t").replace("\\n", "\n")
    return table, body


def tabwrite(lines: list[str], minwidth: int = 10, padding: int = 3) -> list[str]:
    """Align tab-separated cells like Go's tabwriter as docker configures it (10, 1, 3, ' ')."""
    rows = [ln.split("\t") for ln in lines]
    widths: dict[int, int] = {}
    for r in rows:
        for i, cell in enumerate(r[:-1]):  # the text after the last tab is not a column
            widths[i] = max(widths.get(i, 0), len(cell) + padding, minwidth)
    out = []
    for r in rows:
        cells = [c.ljust(widths[i]) for i, c in enumerate(r[:-1])] + [r[-1]]
        out.append("".join(cells).rstrip(" ") if r[-1] == "" else "".join(cells))
    return out
