"""Names and DNS on the bridge: sandboxes find each other by name; inspect says where they are.

Traffic stays on this machine (sbx0 and the host's own addresses); resolv.conf is
checked as a file, no DNS query leaves the host.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from tests.sbxrun import sbx
from tests.test_network import CLEAN, _env, _finish, _free_port, _gw, _line, _profile, _wait_clean

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="bridge networking needs root (CAP_NET_ADMIN on the host)")

# argv: gateway, own name, the peer's name. Serves one echo connection on 8080, then tells who connected,
# what the peer's name resolves to now, and (after a line on stdin) whether the peer is still listed.
SERVER = r"""
import socket, sys
me, peer = sys.argv[2], sys.argv[3]
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", 8080)); s.listen()
print("ready", socket.gethostbyname(me), flush=True)
c, a = s.accept(); c.sendall(b"hi " + c.recv(100)); c.close()
print("peer", a[0], socket.gethostbyname(peer), flush=True)
sys.stdin.readline()
print("listed" if peer in open("/etc/hosts").read().split() else "gone", flush=True)
"""

CLIENT = r"""
import socket, sys
c = socket.create_connection((sys.argv[2], 8080), timeout=5); c.sendall(sys.argv[3].encode())
print(c.recv(100).decode(), socket.gethostbyname(sys.argv[3]), flush=True)
"""


def _names(tag: str) -> tuple[str, str]:
    return f"sbxtn-{tag}-a-{os.getpid()}", f"sbxtn-{tag}-b-{os.getpid()}"


def _server(profile: str, a: str, b: str, flags: tuple = ()) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "sandbox", "run", "--profile", profile, "--name", a, *flags, "--",
           "/usr/bin/python3", "-c", SERVER, _gw(), a, b]
    from tests import test_network
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(),
                         text=True)
    test_network._BUF.pop(p.stdout.fileno(), None)
    return p


def test_two_bridge_sandboxes_reach_each_other_by_name(tmp_path):
    prof = _profile(tmp_path, "bridge", "network: bridge\n")
    a, b = _names("reach")
    srv = _server(prof, a, b)
    try:
        ready, ip_a = _line(srv).split()
        assert ready == "ready"
        p = subprocess.run([sys.executable, "-m", "sandbox", "run", "--profile", prof, "--name", b, "--",
                            "/usr/bin/python3", "-c", CLIENT, _gw(), a, b], capture_output=True, text=True,
                           timeout=30, env=_env())
        assert p.returncode == 0, p.stderr
        reply, ip_b = p.stdout.rsplit(" ", 1)
        assert reply == f"hi {b}"
        # the first sandbox, started before the second existed, resolves it too, to where it came from
        assert _line(srv).split() == ["peer", ip_b.strip(), ip_b.strip()]
        srv.stdin.write("check\n")
        srv.stdin.flush()
        assert _line(srv) == "gone"  # the second one ended: no longer in the first one's /etc/hosts
    finally:
        rc, _, err = _finish(srv)
    assert rc == 0, err
    assert _wait_clean() == CLEAN
    from sandbox import netbridge
    hosts = os.path.join(netbridge.net_dir(), "hosts")
    assert not os.path.isdir(hosts) or os.listdir(hosts) == []


def test_inspect_reports_address_gateway_mac_and_ports(tmp_path):
    prof = _profile(tmp_path, "bridge", "network: bridge\n")
    name = f"sbxtn-inspect-{os.getpid()}"
    port = _free_port()
    p = sbx("run", "--profile", prof, "-d", "--name", name, "-p", f"127.0.0.1:{port}:8080", "--", "sleep", "30")
    assert p.returncode == 0, p.stderr
    try:
        net = json.loads(sbx("inspect", name, check=True).stdout)[0]["network"]
    finally:
        sbx("rm", "-f", name)
    from sandbox import netbridge
    ip = net["address"].split("/")[0]
    assert net["gateway"] == _gw() and net["mac"] == netbridge.mac_for(__import__("ipaddress").IPv4Address(ip))
    assert name in net["names"] and net["host_services"] == "unreachable"
    assert [pt["host"] for pt in net["ports"]] == [f"127.0.0.1:{port}/tcp"]
    assert net["ports"][0]["container"] == f"{ip}:8080/tcp"
    assert _wait_clean() == CLEAN


def test_add_host_lines_on_and_off_the_bridge(tmp_path):
    prof = _profile(tmp_path, "bridge", "network: bridge\n")
    for flags in (("--profile", prof), ("--network", "loopback")):
        p = sbx("run", *flags, "--add-host", "db.internal:192.0.2.10", "--add-host", "v6host=2001:db8::1", "--",
                "/bin/sh", "-c", "getent hosts db.internal; getent ahosts v6host | head -1")
        assert p.returncode == 0, (flags, p.stderr)
        lines = p.stdout.split()
        assert lines[:2] == ["192.0.2.10", "db.internal"] and lines[2] == "2001:db8::1", p.stdout
    p = sbx("run", "--add-host", "bad_name:1.2.3.4", "--", "/bin/true")
    assert p.returncode == 125 and "not a host name" in p.stderr and p.stderr.count("\n") == 1
    p = sbx("run", "--add-host", "ok:999.1.1.1", "--", "/bin/true")
    assert p.returncode == 125 and "not an IP address" in p.stderr


def test_resolv_conf_for_egress_profiles_and_dns(tmp_path):
    from sandbox import netbridge
    egress = _profile(tmp_path, "egress", "network: bridge\negress: true\n")
    bridge = _profile(tmp_path, "bridge", "network: bridge\n")
    servers, _, _, _ = netbridge._host_resolv()
    p = sbx("run", "--profile", egress, "--", "/bin/cat", "/etc/resolv.conf")
    assert p.returncode == 0, p.stderr
    got = [ln.split()[1] for ln in p.stdout.splitlines() if ln.startswith("nameserver")]
    assert got == servers and all(not s.startswith("127.") for s in got), (p.stdout, servers)
    p = sbx("run", "--profile", egress, "--dns", "192.0.2.53", "--", "/bin/cat", "/etc/resolv.conf")
    assert [ln for ln in p.stdout.splitlines() if ln.startswith("nameserver")] == ["nameserver 192.0.2.53"], p.stdout
    p = sbx("run", "--profile", bridge, "--", "/bin/sh", "-c", "test -e /etc/resolv.conf; echo $?")
    assert p.stdout.strip() == "1", p.stdout  # no egress, no --dns: nothing to resolve with
    p = sbx("run", "--dns", "192.0.2.53", "--", "/bin/true")
    assert p.returncode == 125 and "--network bridge" in p.stderr and p.stderr.count("\n") == 1
    assert _wait_clean() == CLEAN


def _host_address() -> str:
    """One of the host's own non-loopback addresses (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.connect(("192.0.2.1", 9))
        return u.getsockname()[0]


PROBE = r"""
import socket, sys, errno
for host, port in zip(sys.argv[1::2], sys.argv[2::2]):
    c = socket.socket(); c.settimeout(1.5)
    try:
        c.connect((host, int(port))); print("CONNECTED")
    except socket.timeout:
        print("TIMEOUT")
    except OSError as e:
        print(errno.errorcode.get(e.errno, e.errno))
"""


ECHO = r"""
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", 8080)); s.listen()
print("ready", flush=True)
while True:
    c, a = s.accept(); c.sendall(b"hi " + c.recv(100)); c.close()
"""


def test_published_host_services_are_unreachable_from_any_bridge_sandbox(tmp_path):
    """README: a bridge sandbox never reaches a service of the host, egress or not, published ports included;
    another sandbox is reached by its name on the bridge."""
    bridge = _profile(tmp_path, "bridge", "network: bridge\n")
    egress = _profile(tmp_path, "egress", "network: bridge\negress: true\n")
    a, _ = _names("pub")
    port = _free_port()
    from tests import test_network
    srv = subprocess.Popen([sys.executable, "-m", "sandbox", "run", "--profile", bridge, "--name", a, "-p",
                            f"0.0.0.0:{port}:8080", "--", "/usr/bin/python3", "-c", ECHO],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(), text=True)
    test_network._BUF.pop(srv.stdout.fileno(), None)
    try:
        assert _line(srv) == "ready"
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:  # published: the host reaches it
            c.sendall(b"host")
            assert c.recv(100) == b"hi host"
        targets = [_gw(), str(port), _host_address(), str(port), a, "8080"]
        for prof in (bridge, egress):
            p = subprocess.run([sys.executable, "-m", "sandbox", "run", "--profile", prof, "--", "/usr/bin/python3",
                                "-c", PROBE, *targets], capture_output=True, text=True, timeout=30, env=_env())
            assert p.returncode == 0, p.stderr
            assert p.stdout.split() == ["TIMEOUT", "TIMEOUT", "CONNECTED"], (prof, p.stdout)
    finally:
        srv.terminate()  # sbx passes SIGTERM on and releases the bridge (a SIGKILLed sbx leaves it to the next reap)
        _finish(srv)
    assert _wait_clean() == CLEAN
