"""Docker's spelling of sbx's records: what `ps --format`, `inspect --format`, `events --format`
and `ps --filter` see, so the templates and filters people already script work.

Sandboxes keep their own JSON keys (lower case, as `inspect` always printed them); the
Docker fields (`Id`, `State.Pid`, `HostConfig.Memory`, ...) are added beside them, computed
from the same saved Spec and state. A dict here is a Go struct for the template evaluator (an
unknown field is an error); a GoMap is a Go map (labels, ports: a missing key is empty).
"""
from __future__ import annotations

import re
import time

from . import state
from .errors import SbxError, escape
from .gotemplate import GoMap

ZERO_TIME = "0001-01-01T00:00:00Z"  # Go's zero time, as docker prints a time that never happened


class WithJSON(dict):
    """A template struct whose `json` rendering differs from its field names (docker's events:
    template fields Status/ID/Time, JSON keys status/id/time)."""

    def __init__(self, fields: dict, json_value: dict) -> None:
        super().__init__(fields)
        self.json_value = json_value


def rfc3339(t: float | None) -> str:
    if not t:
        return ZERO_TIME
    ns = int(round(t * 1e9))
    s, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s)) + f".{frac:09d}Z"


def human_duration(seconds: float) -> str:
    """docker's units.HumanDuration."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    m = int(seconds / 60)
    if m == 1:
        return "About a minute"
    if m < 60:
        return f"{m} minutes"
    h = int(round(seconds / 3600))
    if h == 1:
        return "About an hour"
    if h < 48:
        return f"{h} hours"
    if h < 24 * 7 * 2:
        return f"{h // 24} days"
    if h < 24 * 30 * 2:
        return f"{h // 24 // 7} weeks"
    if h < 24 * 365 * 2:
        return f"{h // 24 // 30} months"
    return f"{h // 24 // 365} years"


# ---------------------------------------------------------------- what a saved sandbox carries

def labels_of(config: dict) -> dict[str, str]:
    """The sandbox's labels: its image's, then its own (a run's label wins, as in docker).

    Accepts the shapes a saved Spec may hold (a mapping, or K/V pairs); none yet is an empty map.
    """
    spec = config.get("spec") or {}
    out: dict[str, str] = {}
    for src in ((spec.get("image") or {}).get("labels") if isinstance(spec.get("image"), dict) else None,
                spec.get("labels"), config.get("labels")):
        if isinstance(src, dict):
            out.update({str(k): str(v) for k, v in src.items()})
        elif isinstance(src, (list, tuple)):
            for pair in src:
                if isinstance(pair, (list, tuple)) and len(pair) == 2:
                    out[str(pair[0])] = str(pair[1])
    return out


def image_of(config: dict) -> dict:
    img = (config.get("spec") or {}).get("image")
    return img if isinstance(img, dict) else {}


def ports_of(e: state.Entry) -> list[tuple[str, int, int, str]]:
    """(host_ip, host_port, container_port, proto): as bound when the sandbox recorded it, else as asked."""
    out = []
    for p in (e.config.get("spec") or {}).get("ports") or ():
        try:
            out.append((str(p["host_ip"]), int(p["host_port"]), int(p["container_port"]), str(p.get("proto", "tcp"))))
        except (KeyError, TypeError, ValueError):
            continue
    bound = ((e.state.get("network") or {}).get("ports") if isinstance(e.state.get("network"), dict) else None) or ()
    actual = []
    for b in bound:
        # portproxy records {"host": "IP:PORT/proto", "container": "IP:PORT/proto"}
        try:
            hip, _, rest = str(b["host"]).rpartition(":")
            hport, _, proto = rest.partition("/")
            cport = int(str(b["container"]).rsplit(":", 1)[1].split("/")[0])
            actual.append((hip.strip("[]"), int(hport), cport, proto or "tcp"))
        except (KeyError, TypeError, ValueError, IndexError):
            continue
    return actual or out


def ports_text(ports) -> str:
    return ", ".join(f"{ip}:{hp}->{cp}/{proto}" for ip, hp, cp, proto in ports)


# ---------------------------------------------------------------- inspect

def inspect_doc(e: state.Entry) -> dict:
    """today's `inspect` document, plus docker's fields beside it."""
    from .cmd_lifecycle import describe
    d = describe(e)
    spec = e.config.get("spec") or {}
    st = e.state
    status = e.status
    running = status in (state.RUNNING, state.PAUSED)
    argv = list(spec.get("argv") or [])
    res = spec.get("resources") or {}
    fs = spec.get("filesystem") or {}
    sec = spec.get("security") or {}
    net = st.get("network") if isinstance(st.get("network"), dict) else {}
    img = image_of(e.config)
    ports = ports_of(e)
    port_map = GoMap()
    bindings = GoMap()
    for ip, hp, cp, proto in ports:
        port_map.setdefault(f"{cp}/{proto}", []).append({"HostIp": ip, "HostPort": str(hp)})
        bindings.setdefault(f"{cp}/{proto}", []).append({"HostIp": ip, "HostPort": str(hp)})
    addr, _, plen = str(net.get("address") or "").partition("/")
    endpoint = {"IPAddress": addr, "IPPrefixLen": int(plen) if plen.isdigit() else 0,
                "Gateway": str(net.get("gateway") or ""), "MacAddress": str(net.get("mac") or "")}
    cpus = res.get("cpus")
    period = int(res.get("cpu_period") or 100_000)
    binds = [f"{b.get('source')}:{b.get('target')}:{'ro' if b.get('readonly', True) else 'rw'}"
             for b in fs.get("binds") or ()]
    secopt = [f"seccomp={sec.get('seccomp')}", f"landlock={sec.get('landlock')}"]
    if sec.get("no_new_privs", True):
        secopt.append("no-new-privileges")
    docker = {
        "Id": e.id,
        "Created": rfc3339(e.config.get("created")),
        "Path": argv[0] if argv else "",
        "Args": argv[1:],
        "State": {
            "Status": status,
            "Running": status == state.RUNNING or status == state.PAUSED,
            "Paused": status == state.PAUSED,
            "Restarting": False,
            "OOMKilled": bool(st.get("oom_killed")),
            "Dead": False,
            "Pid": int(st.get("pid") or 0) if running else 0,
            "ExitCode": int(st.get("exit_code") or 0) if not running else 0,
            "Error": str(st.get("error") or ""),
            "StartedAt": rfc3339(st.get("started_at")),
            "FinishedAt": rfc3339(st.get("finished_at")),
        },
        "Image": str(img.get("id") or ""),
        "Name": "/" + (e.name or e.id[:12]),
        "RestartCount": 0,
        "Driver": "overlay" if fs.get("rootfs") or img else "tmpfs",
        "Platform": "linux",
        "AppArmorProfile": str(st.get("lsm_label") or "") if sec.get("apparmor") != "off" else "",
        "LogPath": d["log_path"],
        "Mounts": [{"Type": "bind", "Source": b.get("source"), "Destination": b.get("target"),
                    "Mode": "ro" if b.get("readonly", True) else "rw", "RW": not b.get("readonly", True),
                    "Propagation": "rprivate"} for b in fs.get("binds") or ()],
        "Config": {
            "Hostname": str(spec.get("hostname") or ""),
            "User": f"{spec.get('uid')}:{spec.get('gid')}",
            "Env": d["env"],
            "Cmd": argv,
            "Entrypoint": None,
            "Image": str(img.get("ref") or ""),
            "WorkingDir": str(spec.get("cwd") or "/"),
            "Labels": GoMap(labels_of(e.config)),
            "Tty": False,
            "OpenStdin": False,
            "StopSignal": "SIGTERM",
        },
        "HostConfig": {
            "Memory": _num(res.get("memory")),
            "MemorySwap": _num(res.get("memory_swap")),
            "NanoCpus": int(round(float(cpus) * 1e9)) if cpus else 0,
            "CpuPeriod": period if cpus else 0,
            "CpuQuota": int(round(float(cpus) * period)) if cpus else 0,
            "CpuShares": _num(res.get("cpu_shares")),
            "CpusetCpus": str(res.get("cpuset_cpus") or ""),
            "CpusetMems": str(res.get("cpuset_mems") or ""),
            "PidsLimit": res.get("pids_limit"),
            "ReadonlyRootfs": bool(fs.get("read_only", True)),
            "Binds": binds,
            "NetworkMode": str(spec.get("network") or ""),
            "PortBindings": bindings,
            "Privileged": False,
            "CapAdd": list(sec.get("capabilities") or ()),
            "CapDrop": ["ALL"],  # sbx empties every set and keeps only CapAdd
            "SecurityOpt": secopt,
            "Ulimits": [{"Name": r.get("name"), "Soft": r.get("soft"), "Hard": r.get("hard")}
                        for r in spec.get("rlimits") or ()],
            "AutoRemove": bool(_run_option(e.config, "remove")),
            "Init": True,  # sbx always runs its own init as pid 1
            "ShmSize": _num(fs.get("shm_size")),
            "MaskedPaths": list(fs.get("masked_paths") or ()),
            "ReadonlyPaths": list(fs.get("readonly_paths") or ()),
            "UsernsMode": "private",
        },
        "NetworkSettings": {
            **endpoint,
            "Ports": port_map,
            "Networks": GoMap({str(spec.get("network") or "none"): dict(endpoint)}),
        },
    }
    d.update(docker)
    return d


def _run_option(config: dict, key: str):
    """A run option (--rm, --policy, ...): saved beside the Spec (config "options") or, by older sbx, in it."""
    opts = config.get("options")
    if isinstance(opts, dict) and key in opts:
        return opts[key]
    return (config.get("spec") or {}).get(key)


def _num(v) -> int:
    try:
        return int(v) if v is not None else 0
    except (TypeError, ValueError):
        return 0


# ---------------------------------------------------------------- ps

PS_HEADERS = {"ID": "SANDBOX ID", "Image": "IMAGE", "Command": "COMMAND", "CreatedAt": "CREATED AT",
              "RunningFor": "CREATED", "Ports": "PORTS", "State": "STATE", "Status": "STATUS", "Names": "NAMES",
              "Labels": "LABELS", "Label": "LABEL", "Mounts": "MOUNTS", "Networks": "NETWORKS",
              "LocalVolumes": "LOCAL VOLUMES", "Profile": "PROFILE", "Pid": "PID"}


def _ellipsis(s: str, n: int) -> str:
    return s if len(s) <= n else s[:n - 1] + "\u2026"


def ps_fields(e: state.Entry, now: float, trunc: bool = True) -> dict:
    from .cmd_lifecycle import _status_text
    spec = e.config.get("spec") or {}
    cmd = " ".join(spec.get("argv") or ())
    created = e.config.get("created")
    labels = labels_of(e.config)
    img = image_of(e.config)
    status = e.status
    fields = {
        "ID": e.id[:12] if trunc else e.id,
        "Image": str(img.get("ref") or ""),
        "Command": '"' + (_ellipsis(cmd, 20) if trunc else cmd).replace("\\", "\\\\").replace('"', '\\"') + '"',
        "CreatedAt": time.strftime("%Y-%m-%d %H:%M:%S %z %Z", time.localtime(created)) if created else "",
        "RunningFor": (human_duration(now - created) + " ago") if created else "",
        "Ports": ports_text(ports_of(e)),
        "State": status,
        "Status": _status_text(e, now),
        "Names": e.name or "",
        "Labels": ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
        "Mounts": ",".join(_ellipsis(str(b.get("source")), 15) if trunc else str(b.get("source"))
                           for b in (spec.get("filesystem") or {}).get("binds") or ()),
        "Networks": str(spec.get("network") or ""),
        "LocalVolumes": "0",
        "Profile": str(spec.get("profile") or ""),
        "Pid": str(e.state.get("pid") or "") if status in (state.RUNNING, state.PAUSED) else "",
    }
    plain = dict(fields)
    fields["Label"] = lambda key: labels.get(str(key), "")
    return WithJSON(fields, plain)


def ps_header() -> dict:
    h = dict(PS_HEADERS)
    h["Label"] = lambda key=None: "LABEL"
    return WithJSON(h, {k: v for k, v in PS_HEADERS.items() if k != "Label"})


PS_FILTERS = ("id", "name", "label", "status", "ancestor", "exited", "network", "before", "since")
STATUSES = ("created", "restarting", "running", "removing", "paused", "exited", "dead")


def parse_filters(items, allowed: tuple[str, ...], where: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for f in items:
        k, eq, v = f.partition("=")
        k = k.strip().lower()
        if not eq or k not in allowed:
            raise SbxError(f"invalid filter {escape(f)!r} (use KEY=VALUE with KEY one of {', '.join(allowed)})",
                           where=where)
        out.setdefault(k, []).append(v)
    return out


def ps_select(entries: list[state.Entry], filters: dict[str, list[str]]) -> list[state.Entry]:
    """docker's rules: values of one key are OR'd, different keys AND'd."""
    for v in filters.get("status", ()):
        if v not in STATUSES:
            raise SbxError(f"invalid filter 'status={escape(v)}' (one of {', '.join(STATUSES)})", where="ps --filter")
    for v in filters.get("exited", ()):
        if not v.lstrip("-").isdigit():
            raise SbxError(f"invalid filter 'exited={escape(v)}': an exit code", where="ps --filter")
    names = []
    for v in filters.get("name", ()):
        try:
            names.append(re.compile(v))
        except re.error as err:
            raise SbxError(f"invalid filter 'name={escape(v)}': {err}", where="ps --filter") from None
    by_ref = {}
    for k in ("before", "since"):
        for v in filters.get(k, ()):
            by_ref[(k, v)] = state.resolve(v).config.get("created") or 0

    def one(e: state.Entry) -> bool:
        checks = {
            "id": lambda v: e.id.startswith(v),
            "status": lambda v: e.status == v,
            "label": lambda v: _label_match(labels_of(e.config), v),
            "ancestor": lambda v: _ancestor_match(image_of(e.config), v),
            "exited": lambda v: e.status == state.EXITED and str(e.state.get("exit_code")) == str(int(v)),
            "network": lambda v: str((e.config.get("spec") or {}).get("network")) == v,
            "before": lambda v: (e.config.get("created") or 0) < by_ref[("before", v)],
            "since": lambda v: (e.config.get("created") or 0) > by_ref[("since", v)],
        }
        for k, vals in filters.items():
            if k == "name":
                if not any(r.search(e.name or "") for r in names):
                    return False
            elif not any(checks[k](v) for v in vals):
                return False
        return True

    return [e for e in entries if one(e)]


def _label_match(labels: dict[str, str], want: str) -> bool:
    k, eq, v = want.partition("=")
    return k in labels and (not eq or labels[k] == v)


def _ancestor_match(img: dict, want: str) -> bool:
    """An image named as the user named it, by one of its names (`busybox` means `busybox:latest`),
    by its id (or a prefix of 12+ hex digits), or by its manifest digest."""
    if not img:
        return False

    def norm(r: str) -> str:
        r = r.strip()
        for p in ("docker.io/library/", "docker.io/"):
            if r.startswith(p):
                r = r[len(p):]
        last = r.rsplit("/", 1)[-1]
        return r if ":" in last or "@" in r else r + ":latest"

    names = {norm(str(n)) for n in [img.get("ref") or "", *(img.get("names") or ())] if n}
    if norm(want) in names:
        return True
    w = want.split(":", 1)[1] if want.startswith("sha256:") else want
    iid = str(img.get("id") or "")
    if len(w) >= 12 and re.fullmatch(r"[0-9a-f]+", w) and iid.startswith(w):
        return True
    return bool(img.get("digest")) and want in (img.get("digest"), f"sha256:{img.get('digest')}") or \
        any(str(n).endswith("@" + want) for n in names)


# ---------------------------------------------------------------- events

def event_doc(ev: dict) -> WithJSON:
    """docker's events.Message for one sbx event (template fields Go-spelled, JSON keys docker's)."""
    attrs = GoMap()
    for k, v in sorted(ev.items()):
        if k in ("time", "time_nano", "type", "action", "id"):
            continue
        attrs["exitCode" if k == "exit_code" else k] = v if isinstance(v, str) else \
            " ".join(map(str, v)) if isinstance(v, list) else str(v)
    t_ns = int(ev.get("time_nano") or 0)
    action = str(ev.get("action") or "")
    sid = str(ev.get("id") or "")
    actor = {"ID": sid, "Attributes": attrs}
    fields = {"Status": action, "ID": sid, "From": "", "Type": "container", "Action": action,
              "Actor": actor, "Scope": "local", "Time": t_ns // 1_000_000_000, "TimeNano": t_ns}
    js = {"status": action, "id": sid, "from": "", "Type": "container", "Action": action,
          "Actor": {"ID": sid, "Attributes": dict(attrs)}, "scope": "local",
          "time": t_ns // 1_000_000_000, "timeNano": t_ns}
    return WithJSON(fields, js)


EVENT_FILTERS = ("event", "type", "container", "id", "name", "action")


def event_matches(ev: dict, filters: dict[str, list[str]]) -> bool:
    def one(k: str, v: str) -> bool:
        if k in ("event", "action"):
            return ev.get("action") == v
        if k == "type":
            return v in ("container", "sandbox")
        if k == "id":
            return str(ev.get("id") or "").startswith(v)
        if k == "name":
            return ev.get("name") == v
        # container=: an id, an id prefix, or a name, as docker matches the actor
        return bool(v) and (str(ev.get("id") or "").startswith(v) or ev.get("name") == v)
    return all(any(one(k, v) for v in vals) for k, vals in filters.items())


# ---------------------------------------------------------------- --format

def compile_format(fmt: str, where: str = "--format"):
    """(is_table, Template) for a docker-style --format; a bad template is one line, exit 125."""
    from .gotemplate import Template, TemplateError, docker_format
    is_table, body = docker_format(fmt)
    try:
        return is_table, Template(body, escape=escape)
    except TemplateError as e:
        raise SbxError(f"template parsing error: {e}", where=where) from None


def render(fmt: str, items, header=None, where: str = "--format") -> str:
    """Every item through the template, one per line; `table ...` adds the header row and aligns
    columns like docker's tabwriter. Values are escaped (hostile names cannot drive the terminal)."""
    from .gotemplate import TemplateError, tabwrite
    is_table, tpl = compile_format(fmt, where)
    out: list[str] = []
    try:
        if is_table and header is not None:
            out.append(tpl.render(header))
        for it in items:
            out.append(tpl.render(it))
    except TemplateError as e:
        raise SbxError(f"template: {e}", where=where) from None
    if is_table:
        lines = "\n".join(out).split("\n")
        return "\n".join(tabwrite(lines)) + "\n" if out else ""
    return "".join(s + "\n" for s in out)
