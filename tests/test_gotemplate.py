"""The --format template evaluator: Go text/template semantics on the subset docker users write,
and what it refuses (one line), tested directly (it is pure logic over plain data)."""
from __future__ import annotations

import pytest

from sandbox.errors import escape
from sandbox.gotemplate import GoMap, Template, TemplateError, docker_format, go_printf, tabwrite

DOC = {
    "Id": "abc123", "Name": "/web",
    "State": {"Status": "running", "Running": True, "Pid": 4242, "ExitCode": 0},
    "Config": {"Env": ["PATH=/bin", "A=1"], "Cmd": ["sh", "-c", "x"], "Labels": GoMap({"com.x": "1", "tier": "db"}),
               "Empty": []},
    "HostConfig": {"Memory": 536870912, "NanoCpus": 500000000, "PidsLimit": None},
    "NetworkSettings": {"Ports": GoMap({"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]})},
}


def render(t: str, data=DOC) -> str:
    return Template(t, escape=escape).render(data)


@pytest.mark.parametrize("tmpl,want", [
    ("{{.State.Pid}}", "4242"),
    ("{{.Name}}:{{.State.Status}}", "/web:running"),
    ("{{.Config.Env}}", "[PATH=/bin A=1]"),
    ("{{json .Config.Cmd}}", '["sh","-c","x"]'),
    ("{{json .State}}", '{"Status":"running","Running":true,"Pid":4242,"ExitCode":0}'),
    ('{{join .Config.Cmd " "}}', "sh -c x"),
    ('{{index .Config.Labels "com.x"}}', "1"),
    ('{{index .Config.Labels "absent"}}', ""),  # a Go map: a missing key is the zero value
    ("{{.Config.Labels.tier}}", "db"),
    ("{{.Config.Labels.absent}}", "<no value>"),
    ("{{.HostConfig.PidsLimit}}", "<nil>"),
    ("{{upper .State.Status}}", "RUNNING"),
    ("{{.State.Status | upper | lower}}", "running"),
    ('{{printf "%s=%d" .Name .State.Pid}}', "/web=4242"),
    ('{{printf "%-6s|%5.1f|%q|%x" "ab" 2.25 "q" 255}}', 'ab    |  2.2|"q"|ff'),
    ("{{if .State.Running}}up{{else}}down{{end}}", "up"),
    ("{{if not .State.Running}}down{{else if .State.Pid}}pid{{else}}x{{end}}", "pid"),
    ('{{if eq .State.Status "exited" "running"}}yes{{end}}', "yes"),
    ("{{if and .State.Running .HostConfig.Memory}}capped{{end}}", "capped"),
    ("{{range .Config.Env}}<{{.}}>{{end}}", "<PATH=/bin><A=1>"),
    ("{{range $i, $e := .Config.Cmd}}{{$i}}:{{$e}} {{end}}", "0:sh 1:-c 2:x "),
    ("{{range $p, $b := .NetworkSettings.Ports}}{{$p}}->{{(index $b 0).HostPort}}{{end}}", "80/tcp->8080"),
    ("{{range .Config.Empty}}x{{else}}none{{end}}", "none"),
    ("{{with .State}}{{.Pid}}{{end}}", "4242"),
    ("{{$n := .Name}}{{$n}}{{$.Id}}", "/webabc123"),
    ("{{len .Config.Env}}", "2"),
    ("a {{- /* comment */ -}} b", "ab"),
    ("{{ .Name -}}\n  x", "/webx"),
    ('{{"a\\tb"}}', "a\\x09b"),  # printed values are escaped; the template's own text is not
    ("{{.HostConfig.NanoCpus}}", "500000000"),
])
def test_evaluates_like_go(tmpl, want):
    assert render(tmpl) == want


@pytest.mark.parametrize("tmpl,msg", [
    ("{{.Nope}}", "can't evaluate field Nope"),
    ("{{.State.Nope}}", "fields here: ExitCode, Pid, Running, Status"),
    ("{{.Name.Deeper}}", "can't evaluate field Deeper in type str"),
    ("{{nosuch .Name}}", 'function "nosuch" not defined'),
    ("{{.Name", "unclosed action"),
    ("{{if .Name}}x", "missing {{end}}"),
    ("{{end}}", "unexpected {{end}}"),
    ("{{template \"x\"}}", "not supported"),
    ("{{$undefined}}", "undefined variable"),
    ("{{.Name 1}}", "can't give argument to non-function"),
    ("{{index .Config.Cmd 9}}", "index out of range"),
    ("{{range .Name}}{{end}}", "range can't iterate"),
    ('{{"\\q"}}', "bad escape"),
])
def test_errors_are_one_line(tmpl, msg):
    with pytest.raises(TemplateError) as ei:
        render(tmpl)
    assert msg in str(ei.value) and "\n" not in str(ei.value)


def test_no_python_is_ever_evaluated():
    # Attribute access on Python objects is not a template feature: only dict keys are fields.
    for t in ("{{.__class__}}", "{{.Name.__class__}}", "{{.State.__dict__}}", "{{print .__init__}}"):
        with pytest.raises(TemplateError):
            render(t)
    assert render("{{.x}}", {"x": "__import__('os').system('false')"}) == "__import__('os').system('false')"


def test_hostile_values_are_escaped_but_json_stays_valid():
    evil = {"Names": "a\x1b]52;c;ZXZpbA==\x07b\u202ec", "X": ["\x1b[2J"]}
    out = render("{{.Names}}", evil)
    assert "\x1b" not in out and "\u202e" not in out and "\\x1b" in out and "\\u202e" in out
    js = render("{{json .}}", evil)
    import json
    assert "\x1b" not in js and json.loads(js) == evil


def test_methods_are_only_what_the_caller_put_there():
    data = {"Label": lambda k: {"tier": "db"}.get(k, "")}
    assert render('{{.Label "tier"}}|{{.Label "x"}}', data) == "db|"
    assert render("{{json .}}", data) == "{}"  # methods are not data


def test_docker_table_prefix_and_tabwriter():
    table, body = docker_format("table {{.ID}}\\t{{.Names}}")
    assert table and body == "{{.ID}}\t{{.Names}}"
    assert docker_format("{{.ID}}\\n") == (False, "{{.ID}}\n")
    lines = tabwrite(["SANDBOX ID\tNAMES", "abc\tweb", "0123456789abc\tdb"])
    assert lines == ["SANDBOX ID      NAMES", "abc             web", "0123456789abc   db"]


def test_printf_reports_missing_and_extra_args_like_go():
    assert go_printf("%s %s", "a") == "a %!s(MISSING)"
    assert go_printf("%d", 1, 2) == "1%!(EXTRA 2)"
    assert go_printf("100%%") == "100%"


def test_output_and_nesting_are_bounded():
    big = {"L": list(range(1000))}
    with pytest.raises(TemplateError, match="too large"):
        Template("{{range .L}}{{range $.L}}{{range $.L}}xxxxxxxxxxxxxxxx{{end}}{{end}}{{end}}").render(big)
    for n in (100, 3000):  # refused while parsing: no recursion limit reached, no traceback
        with pytest.raises(TemplateError, match="nested too deeply"):
            Template("{{with .}}" * n + "x" + "{{end}}" * n).render({"a": 1})
    with pytest.raises(TemplateError, match="nested too deeply"):
        Template("{{" + "(" * 5000 + ".a" + ")" * 5000 + "}}").render({"a": 1})
