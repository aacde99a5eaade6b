"""`sbx policy lint`: a corpus of broken policies, each caught at the right line and field; a fuzz test
that random YAML never produces a traceback."""
from __future__ import annotations


import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from sandbox.audit.policy import SCHEMA, lint
from tests.sbxrun import sbx

HEAD = "apiVersion: sbx/v1\nname: t\n"

# (policy body after HEAD, line of the error, text the message must contain)
CORPUS = [
    ("capabilities:\n  allowed: [SYS_ADMN]\n", 4, "did you mean SYS_ADMIN"),
    ("capabilities:\n  allowed: [CHOWN]\n  denied: [CHOWN]\n", 4, "both allowed and denied"),
    ("capabilities:\n  denied: [NOT_A_CAP]\n", 4, "unknown capability"),
    ("capabilities:\n  privileged: maybe\n", 4, "forbidden or allowed"),
    ("capabilities:\n  alowed: [CHOWN]\n", 4, "did you mean allowed"),
    ("capabilities: [CHOWN]\n", 3, "must be a mapping"),
    ("identity:\n  run_as_non_root: yes please\n", 4, "must be a bool"),
    ("identity:\n  allowed_uids: [abc]\n", 4, "not a uid range"),
    ("identity:\n  allowed_uids: ['10-5']\n", 4, "not a uid range"),
    ("identity:\n  run_as_non_root: true\n  allowed_uids: ['0-100']\n", 5, "includes uid 0"),
    ("controls:\n  no_new_privs: sometimes\n", 4, "required, optional, forbidden"),
    ("controls:\n  seccomp: 'un confined'\n", 4, "seccomp profile name"),
    ("controls:\n  read_only_root: true\n", 4, "must be a str"),
    ("controls:\n  apparmor_profiles: ['bad profile']\n", 4, "not an AppArmor profile name"),
    ("controls:\n  selinux_types: ['x:y']\n", 4, "not an SELinux type"),
    ("namespaces:\n  host_shared_allowed: [network]\n", 4, "did you mean net"),
    ("mounts:\n  denied_host_paths: [relative/path]\n", 4, "absolute path"),
    ("mounts:\n  denied_host_paths: ['/etc\"; x']\n", 4, "no quotes"),
    ("mounts:\n  rw_allowed_host_paths: ['/a/../etc']\n", 4, "'..'"),
    ("mounts:\n  runtime_sockets: sometimes\n", 4, "forbidden or allowed"),
    ("resources:\n  memory: {max: lots}\n", 4, "not a size"),
    ("resources:\n  pids: {max: -5}\n", 4, "must be > 0"),
    ("resources:\n  rlimits: {nofiles: 10}\n", 4, "did you mean nofile"),
    ("resources:\n  rlimits: {nofile: -1}\n", 4, "non-negative"),
    ("resources:\n  cpu: {required: maybe}\n", 4, "must be a bool"),
    ("network:\n  allowed_modes: [hots]\n", 4, "did you mean host"),
    ("network:\n  published_ports: '80-70000'\n", 4, "port range"),
    ("network:\n  host_network: true\n", 4, "must be a str"),
    ("waivers:\n  - check: SBX-1\n    selector: {name: x}\n    expires: 2027-01-01\n    reason: r\n", 4, "not a check ID"),
    ("waivers:\n  - check: SBX-A001\n    selector: {name: x}\n    expires: someday\n    reason: r\n", 6, "YYYY-MM-DD"),
    ("waivers:\n  - check: SBX-A001\n    selector: {color: x}\n    expires: 2027-01-01\n    reason: r\n", 5, "id/name/runtime"),
    ("waivers:\n  - check: SBX-A001\n    selector: {name: x}\n    expires: 2027-01-01\n", 4, "needs a reason"),
    ("mac:\n  network: [ipx]\n", 4, "unknown network family"),
    ("mac:\n  files: {read: ['/usr/**', 'usr']}\n", 4, "absolute path"),
    ("mac:\n  files: {write: [\"/tmp\\nx\"]}\n", 4, "no quotes, spaces, newlines"),
    ("bogus_top: 1\n", 3, "unknown key"),
    ("network: [unclosed\n", 4, "invalid YAML"),
]


@pytest.mark.parametrize("body,line,needle", CORPUS, ids=[f"c{i}" for i in range(len(CORPUS))])
def test_broken_policy_corpus(tmp_path, body, line, needle):
    f = tmp_path / "p.yaml"
    f.write_text(HEAD + body)
    policy, errors = lint(str(f))
    assert policy is None and errors, "lint accepted a broken policy"
    hit = [e for e in errors if needle in e.message]
    assert hit, [e.line() for e in errors]
    assert any(e.where.startswith(f"{f}:{line}:") for e in hit), [e.where for e in hit]


def test_corpus_is_large_enough():
    assert len(CORPUS) >= 30


def test_name_is_required_and_safe(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("apiVersion: sbx/v1\nname: 'x; rm'\n")
    _, errors = lint(str(f))
    assert any("name" in e.message for e in errors)


def test_builtin_policies_lint_clean():
    for name in ("baseline", "restricted"):
        p = sbx("policy", "lint", name)
        assert p.returncode == 0, p.stderr


def test_cli_lint_exit_and_lines(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(HEAD + "capabilities:\n  allowed: [SYS_ADMN]\n")
    p = sbx("policy", "lint", str(f))
    assert p.returncode == 1
    assert f"{f}:4:" in p.stderr and "Traceback" not in p.stderr


def _leaves(schema: dict, prefix: str = ""):
    for k, v in schema.items():
        path = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            yield from _leaves(v, path)
        else:
            yield path, v


WRONG = [7, True, 1.5, "x", None, [1], [[1]], [{"a": 1}], {"a": 1}, [None]]


def _nest(path: str, value):
    doc: dict = {"apiVersion": "sbx/v1", "name": "typed"}
    cur = doc
    parts = path.split(".")
    for part in parts[:-1]:
        cur = cur.setdefault(part, {})
    cur[parts[-1]] = value
    return doc


@pytest.mark.parametrize("path,kind", list(_leaves(SCHEMA)))
def test_every_policy_field_is_type_checked(tmp_path, path, kind):
    """`mounts: {denied_host_paths: 7}` printed "internal error: TypeError". Every field, given every
    wrong shape: errors (naming file:line and the field), never an exception."""
    import yaml
    for value in WRONG:
        f = tmp_path / "t.yaml"
        f.write_text(yaml.safe_dump(_nest(path, value)))
        policy, errors = lint(str(f))  # must not raise
        assert (policy is None) == bool(errors)
        for e in errors:
            assert e.where.startswith(str(f) + ":"), e.where


def test_wrong_type_is_named_with_its_field(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(HEAD + "mounts: {denied_host_paths: 7}\nmac: {network: true}\n")
    p = sbx("policy", "lint", str(f))
    assert p.returncode == 1 and "internal error" not in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert "mounts.denied_host_paths: must be a list of strings" in p.stderr
    assert "mac.network: must be a list of strings" in p.stderr


yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20))
yaml_values = st.recursive(yaml_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(
    st.sampled_from(sorted({p for path, _ in _leaves(SCHEMA) for p in path.split(".")} | {"x", "check", "selector"})),
    c, max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=yaml_values)
def test_fuzz_structured_never_crashes(tmp_path, doc):
    import yaml
    f = tmp_path / "fz.yaml"
    f.write_text(yaml.safe_dump(doc))
    policy, errors = lint(str(f))
    assert (policy is None) == bool(errors)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.sampled_from(list("abc:-[]{}\n #'\"&*!|>%@`0123456789")), max_size=200))
def test_fuzz_raw_text_never_crashes(tmp_path, text):
    f = tmp_path / "raw.yaml"
    f.write_text(text)
    policy, errors = lint(str(f))
    assert (policy is None) == bool(errors)
    for e in errors:
        assert e.where.startswith(str(f))


LAUGHS = "name: lol\na: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{n}: &{n} [{', '.join(['*' + p] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi"))


@pytest.mark.parametrize("verb", [("policy", "lint"), ("run", "--profile")])
def test_billion_laughs_is_refused_at_once(tmp_path, verb):
    """Nine anchors each repeating the previous nine times used to hang for minutes."""
    f = tmp_path / "lol.yaml"
    f.write_text(LAUGHS)
    args = [*verb, str(f)] + (["--", "/bin/true"] if verb[0] == "run" else [])
    p = sbx(*args, timeout=20)
    assert p.returncode in (1, 125), p.stderr
    assert f"{f}:2:" in p.stderr and "aliases are not allowed" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
