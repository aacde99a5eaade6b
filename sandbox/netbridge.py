"""Bridge networking (`--network bridge`), done entirely from the sbx parent.

Sandboxes on the bridge `sbx0` share one private subnet and reach each other
directly. The subnet defaults to 172.31.240.0/20 (chosen away from podman's
10.88.0.0/16 and docker's 172.17.0.0/16); set SBX_BRIDGE_SUBNET=a.b.c.d/N to
use another private IPv4 subnet. The bridge takes the first host address (the
sandboxes' default gateway); sandboxes get the others.

Lifecycle, as launch.py drives it:
- prepare(spec, id), before any fork: refuse if the host cannot do it; under a
  flock in the allocation store (/run/sbx/net, host-wide like sbx0): reap leftovers of dead sbx
  processes, allocate an address, create sbx0 if missing, (re)write the nft
  table `inet sbx` from the live allocations.
- attach(pid), after the sandbox unshared its namespaces: a veth pair whose
  peer is created directly inside /proc/PID/ns/net as eth0; address, link and
  default route there over a netlink socket opened in that namespace (a
  short-lived thread setns()es, opens it and exits, so no thread of sbx ever
  stays in a sandbox's namespace); then the published-port proxy starts.
- release(), always: proxy stopped, veth deleted, allocation removed, nft
  table rewritten; with no sandbox left the table and sbx0 are removed too,
  so an idle host carries nothing of sbx.
Names: every live allocation carries its sandbox's name, hostname and
--add-host lines, and the store holds one directory per sandbox (hosts/<id>/,
rewritten by rename whenever a sandbox joins or leaves the bridge) with the
`hosts` file every sandbox on the bridge sees: itself, every other live sandbox
by --name, hostname and 12-character id, its own --add-host lines. sbx binds
that directory read-only at /run/sbx-net and makes /etc/hosts a symlink into
it (sandbox.mounts), so the file a sandbox reads is always current without sbx
ever writing into a sandbox. With egress (or --dns) the same directory holds
its resolv.conf: --dns servers, else the host's own nameservers that a
sandbox can reach (not loopback, link-local or IPv6), search and options lines.

A killed sbx leaves an allocation whose owner is dead (the kernel removes the
veth with the sandbox's namespace, and the proxy dies with the process): the
next prepare() reaps it (owner = pid + start time, so a reused pid is not
mistaken for the owner). reap() does the same on demand.

Firewall (own tables `inet sbx` and `bridge sbx`, never touching anyone
else's): each sandbox's bridge port only passes frames from its own MAC and
IPv4 address (a workload with CAP_NET_RAW in its namespace cannot forge
another sandbox's address); sandboxes cannot open
connections to the host itself (input from sbx0 only for established flows):
no service of the host is reachable from the bridge, whatever address it listens
on (the gateway, the host's other addresses, 0.0.0.0) and whatever the profile
says, ports published by other sandboxes included (reach those sandboxes by name
on the bridge instead); nor be routed anywhere, except sandboxes whose profile allows egress: their
addresses are in the set @egress, forwarded (not to link-local addresses,
where cloud metadata services live) and masqueraded. ip_forward is switched on
only while an egress sandbox runs, and restored if sbx switched it.

pyroute2 is imported lazily: only bridge mode pays its import cost.
"""
from __future__ import annotations

import errno
import fcntl
import functools
import ipaddress
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

from . import syscalls as sc
from .errors import SbxError, escape
from .paths import atomic_write, ensure_private_dir
from .spec import Spec

BRIDGE = "sbx0"
VETH_PREFIX = "sbxv"  # host ends: sbxv + 11 hex of the sandbox id (IFNAMSIZ is 16 with the NUL)
NFT_TABLE = "sbx"  # in the inet family
DEFAULT_SUBNET = "172.31.240.0/20"
SUBNET_ENV = "SBX_BRIDGE_SUBNET"
CLONE_NEWNET = sc.CLONE_NEWNET
IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"


# ---------------------------------------------------------------- configuration

@dataclass(frozen=True)
class BridgeConfig:
    subnet: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address

    @property
    def prefixlen(self) -> int:
        return self.subnet.prefixlen


def config() -> BridgeConfig:
    return _config(os.environ.get(SUBNET_ENV) or DEFAULT_SUBNET)


@functools.lru_cache(maxsize=8)
def _config(text: str) -> BridgeConfig:
    try:
        net = ipaddress.IPv4Network(text, strict=True)
    except ValueError as e:
        raise SbxError(f"{SUBNET_ENV}='{escape(text)}' is not an IPv4 subnet: {e}") from None
    if not 8 <= net.prefixlen <= 29:
        raise SbxError(f"{SUBNET_ENV}={net}: prefix length must be between 8 and 29")
    if not net.is_private or net.is_loopback or net.is_link_local or net.is_multicast:
        raise SbxError(f"{SUBNET_ENV}={net} must be a private subnet (10/8, 172.16/12, 192.168/16)")
    return BridgeConfig(net, next(net.hosts()))


_VETH_RE = re.compile(VETH_PREFIX + "[0-9a-f]{11}")


def veth_name(sandbox_id: str) -> str:
    name = VETH_PREFIX + sandbox_id[:11].lower()
    if not _VETH_RE.fullmatch(name):
        raise SbxError(f"sandbox id '{escape(sandbox_id[:16])}' must start with 11 hex digits for bridge mode")
    return name


def mac_for(ip: ipaddress.IPv4Address) -> str:
    # Locally administered, derived from the address: a reused address keeps its
    # MAC, so neighbour entries cached on sbx0 for a previous sandbox stay right.
    b = ip.packed
    return "02:5b:%02x:%02x:%02x:%02x" % tuple(b)


# ---------------------------------------------------------------- state store

NET_STATE_DIR = "/run/sbx/net"


def net_dir() -> str:
    """The allocation store. sbx0 is one per host, so its store is too: not under a
    per-invocation SBX_STATE_DIR, which would let two stores hand out one address twice."""
    return NET_STATE_DIR


def _net_dir() -> str:
    ensure_private_dir(os.path.dirname(NET_STATE_DIR))
    d = ensure_private_dir(NET_STATE_DIR)
    ensure_private_dir(os.path.join(d, "alloc"))
    return d


@contextmanager
def _locked():
    """Exclusive flock over the allocation store (released by the kernel if sbx dies)."""
    d = _net_dir()
    fd = os.open(os.path.join(d, "lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield d
    finally:
        os.close(fd)


def _starttime(pid: int) -> int | None:
    from . import facts
    try:
        return facts.read_stat(pid).starttime
    except Exception:  # noqa: BLE001 - gone or unreadable
        return None


@dataclass
class _Alloc:
    ip: str
    sandbox_id: str
    owner_pid: int
    owner_start: int
    veth: str
    egress: bool

    def alive(self) -> bool:
        return _starttime(self.owner_pid) == self.owner_start


@dataclass
class _Names:
    """hosts/<id>/names.json: a bridge sandbox's names (beside its allocation record, whose format
    older sbx versions on the same host still read)."""

    sandbox_id: str
    ip: str
    name: str = ""
    hostname: str = ""
    add_hosts: list = field(default_factory=list)  # [[name, ip], ...]

    def names(self) -> list[str]:
        """How other sandboxes on the bridge call this one."""
        out = [n for n in (self.name, self.hostname if self.hostname != DEFAULT_HOSTNAME else "",
                           self.sandbox_id[:12]) if n]
        return list(dict.fromkeys(out))


DEFAULT_HOSTNAME = "sbx"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_HOST_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")


def _read_allocs(d: str, cfg: BridgeConfig) -> dict[str, _Alloc]:
    out: dict[str, _Alloc] = {}
    adir = os.path.join(d, "alloc")
    for name in os.listdir(adir):
        if name.startswith("."):
            continue
        path = os.path.join(adir, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as f:
                rec = json.loads(f.read(4096))
            a = _Alloc(**rec)
            # Both end up in nft's script text: only exactly what sbx writes is accepted.
            if str(ipaddress.IPv4Address(a.ip)) != name or not _VETH_RE.fullmatch(a.veth):
                raise ValueError("inconsistent record")
        except (OSError, ValueError, TypeError):
            _unlink(path)  # unreadable or forged: an allocation we cannot trust is no allocation
            continue
        # An address outside cfg.subnet was made under another SBX_BRIDGE_SUBNET: it is kept (its
        # sandbox still uses sbx0), and _ensure_bridge refuses the mismatch while it lives.
        out[a.ip] = a
    return out


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# ---------------------------------------------------------------- nftables

def _nft_bin() -> str:
    for cand in (shutil.which("nft"), "/usr/sbin/nft", "/sbin/nft"):
        if cand and os.access(cand, os.X_OK):
            return cand
    raise SbxError("--network bridge needs nftables (the 'nft' command) for its isolation rules; install nftables")


class _NftJob:
    """One nft transaction running in the background.

    nft spends ~25 ms per transaction, and deleting or creating links costs
    about as much in the kernel; the two are independent (rules match
    interface names, not indexes), so they run side by side. The script goes
    through a file in the 0700 store so a large ruleset cannot block a pipe.
    """

    def __init__(self, d: str, script: str):
        path = os.path.join(d, f"rules.{os.getpid()}.{threading.get_ident()}.nft")
        atomic_write(path, script.encode())
        self.path = path
        try:
            self.proc = subprocess.Popen([_nft_bin(), "-f", path], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except OSError as e:
            _unlink(path)
            raise SbxError(f"cannot run nft: {e.strerror}") from None

    def wait(self) -> None:
        try:
            _, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.abort()
            raise SbxError("nft did not finish within 20 s") from None
        finally:
            _unlink(self.path)
        if self.proc.returncode != 0:
            lines = err.decode("utf-8", "replace").strip().splitlines()
            raise SbxError("nftables refused sbx's rules: " + escape(lines[0] if lines else f"exit {self.proc.returncode}"))

    def abort(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        _unlink(self.path)


def ruleset(allocs: list[_Alloc]) -> str:
    """sbx's two tables for the live allocations, replaced in one nft transaction.

    `bridge sbx`: each sandbox port may only send from its own MAC and IPv4
    address (ARP included), and no IPv6. A workload that keeps CAP_NET_RAW in
    its namespace can forge frames; without this it could borrow an egress
    sandbox's address and get its traffic forwarded.
    `inet sbx`: host isolation, forwarding and egress NAT (module docstring).
    """
    egress_ips = sorted(a.ip for a in allocs if a.egress)
    elems = f"\n    elements = {{ {', '.join(egress_ips)} }}" if egress_ips else ""
    b = BRIDGE
    port_rules = "".join(
        f"""    iifname "{a.veth}" ether saddr != {mac_for(ipaddress.IPv4Address(a.ip))} drop
    iifname "{a.veth}" ether type ip ip saddr != {a.ip} drop
    iifname "{a.veth}" ether type arp arp saddr ip != {a.ip} drop
""" for a in sorted(allocs, key=lambda a: a.veth))
    return f"""table bridge {NFT_TABLE}
delete table bridge {NFT_TABLE}
table bridge {NFT_TABLE} {{
  chain prerouting {{
    type filter hook prerouting priority -300; policy accept;
{port_rules}    iifname "{VETH_PREFIX}*" ether type ip6 drop
  }}
}}
table inet {NFT_TABLE}
delete table inet {NFT_TABLE}
table inet {NFT_TABLE} {{
  set egress {{
    type ipv4_addr;{elems}
  }}
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname "{b}" ct state established,related accept
    iifname "{b}" drop
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname "{b}" oifname "{b}" accept
    iifname "{b}" ip daddr 169.254.0.0/16 drop
    iifname "{b}" ip saddr @egress accept
    oifname "{b}" ct state established,related accept
    iifname "{b}" drop
    oifname "{b}" drop
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr @egress oifname != "{b}" masquerade
  }}
}}
"""


def delete_script() -> str:
    return (f"table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n"
            f"table bridge {NFT_TABLE}\ndelete table bridge {NFT_TABLE}\n")


# ---------------------------------------------------------------- netlink helpers

def _iproute():
    try:
        from pyroute2 import IPRoute
    except ImportError:
        raise SbxError("--network bridge needs the pyroute2 package (pip install pyroute2)") from None
    return IPRoute


def _netlink_socket_in(nsfd: int) -> socket.socket:
    """A NETLINK_ROUTE socket bound to the namespace nsfd refers to.

    A socket belongs to the namespace it was created in, so a throwaway thread
    enters the namespace, creates it and ends: setns(CLONE_NEWNET) changes only
    the calling thread, and that thread is gone afterwards.
    """
    out: dict = {}

    def enter() -> None:
        try:
            sc.setns(nsfd, CLONE_NEWNET)
        except OSError as e:
            out["err"] = e.errno
            return
        try:
            out["sock"] = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC,
                                        socket.NETLINK_ROUTE)
        except OSError as e:
            out["err"] = e.errno

    t = threading.Thread(target=enter, name="sbx-netns")
    t.start()
    t.join()
    if "sock" not in out:
        raise SbxError(f"cannot enter the sandbox's network namespace: {os.strerror(out.get('err') or 0)}")
    return out["sock"]


def _host_ifindex(name: str) -> int | None:
    """Index of a host link from sysfs: no netlink dump of every link on the host."""
    if "/" in name or name in (".", ".."):
        return None
    try:
        with open(f"/sys/class/net/{name}/ifindex") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def _link_index(ipr, name: str) -> int | None:
    idx = ipr.link_lookup(ifname=name)
    return idx[0] if idx else None


def _del_link(ipr, name: str) -> bool:
    idx = _host_ifindex(name)
    if idx is None:
        return False
    try:
        ipr.link("del", index=idx)
    except Exception as e:  # noqa: BLE001 - pyroute2 raises NetlinkError
        if getattr(e, "code", None) != errno.ENODEV:
            raise
    return True


def _ensure_bridge(ipr, cfg: BridgeConfig, in_use: bool) -> None:
    idx = _host_ifindex(BRIDGE)
    want = (str(cfg.gateway), cfg.prefixlen)
    if idx is not None and not in_use and _is_bridge(ipr, idx):
        # Left by a killed sbx (no live sandbox on it): start from a fresh one, whatever its address.
        _del_link(ipr, BRIDGE)
        idx = None
    if idx is not None:
        link = ipr.get_links(idx)[0]
        info = link.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
        if kind != "bridge":
            raise SbxError(f"{BRIDGE} exists but is a '{kind}' link, not sbx's bridge; remove it or rename it")
        addrs = [(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=idx, family=socket.AF_INET)]
        if want not in addrs:
            have = ", ".join(f"{a}/{p}" for a, p in addrs) or "no address"
            raise SbxError(f"{BRIDGE} has {have}, but the sandbox subnet is {cfg.subnet} "
                           f"({SUBNET_ENV}); stop the sandboxes using it or set {SUBNET_ENV} to match")
        if not link["flags"] & 1:
            ipr.link("set", index=idx, state="up")
        return
    _check_overlap(ipr, cfg)
    ipr.link("add", ifname=BRIDGE, kind="bridge")
    idx = _host_ifindex(BRIDGE)
    _write_sysctl(f"/proc/sys/net/ipv6/conf/{BRIDGE}/disable_ipv6", "1")  # IPv4 only: no link-local chatter
    ipr.addr("add", index=idx, address=str(cfg.gateway), prefixlen=cfg.prefixlen)
    ipr.link("set", index=idx, state="up")


def _is_bridge(ipr, idx: int) -> bool:
    info = ipr.get_links(idx)[0].get_attr("IFLA_LINKINFO")
    return info is not None and info.get_attr("IFLA_INFO_KIND") == "bridge"


def _check_overlap(ipr, cfg: BridgeConfig) -> None:
    """Refuse a subnet the host already routes elsewhere (it would hijack that traffic)."""
    for r in ipr.get_routes(family=socket.AF_INET, table=254):
        dst_len = r["dst_len"]
        if dst_len == 0:
            continue
        dst = r.get_attr("RTA_DST")
        if dst is None:
            continue
        net = ipaddress.IPv4Network(f"{dst}/{dst_len}", strict=False)
        if net.overlaps(cfg.subnet):
            raise SbxError(f"the sandbox subnet {cfg.subnet} overlaps the host route {net}; "
                           f"choose another private subnet with {SUBNET_ENV}=...")


def _write_sysctl(path: str, value: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except FileNotFoundError:
        pass


def _read_sysctl(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


# ---------------------------------------------------------------- the plan

@dataclass
class BridgeNet:
    """What bridge mode set up for one sandbox; launch.py calls attach() and release()."""

    sandbox_id: str
    cfg: BridgeConfig
    ip: ipaddress.IPv4Address
    veth: str
    egress: bool
    ports: tuple
    proxy: object = None
    released: bool = False
    timings_ms: dict = field(default_factory=dict)
    hosts_dir: str = ""  # hosts/<id> in the store, bound read-only at /run/sbx-net
    hosts_tree: int | None = None  # its detached clone, attached by the sandbox's init
    dns: tuple = ()  # resolv.conf nameservers
    notes: list = field(default_factory=list)
    names: list = field(default_factory=list)  # what other bridge sandboxes resolve to this one

    def attach(self, pid: int) -> None:
        """Wire the sandbox (its setup process is pid, already in its own netns) into sbx0."""
        t0 = time.monotonic()
        path = f"/proc/{pid}/ns/net"
        try:
            nsfd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise SbxError(f"cannot open the sandbox's network namespace ({path}): {e.strerror}") from None
        try:
            from . import facts
            if os.fstat(nsfd).st_ino == facts.read_ns("self", ("net",)).get("net"):
                raise SbxError("the sandbox is still in the host's network namespace: refusing to wire it")
            IPRoute = _iproute()
            with IPRoute() as host:
                host.link("add", ifname=self.veth, kind="veth",
                          peer={"ifname": "eth0", "address": mac_for(self.ip), "net_ns_fd": nsfd})
                idx = _host_ifindex(self.veth)
                bridge = _host_ifindex(BRIDGE)
                if idx is None or bridge is None:
                    raise SbxError(f"{BRIDGE} or {self.veth} vanished while wiring the sandbox")
                host.link("set", index=idx, master=bridge, state="up")
            with IPRoute(use_socket=_netlink_socket_in(nsfd)) as inside:
                eth = _link_index(inside, "eth0")
                if eth is None:
                    raise SbxError("the sandbox's eth0 was not created in its namespace")
                inside.addr("add", index=eth, address=str(self.ip), prefixlen=self.cfg.prefixlen)
                inside.link("set", index=eth, state="up")
                inside.route("add", dst="0.0.0.0/0", gateway=str(self.cfg.gateway), oif=eth)
        except SbxError:
            raise
        except Exception as e:  # noqa: BLE001 - pyroute2's NetlinkError and friends, as one line
            raise SbxError(f"bridge networking: cannot wire the sandbox: {e}") from None
        finally:
            os.close(nsfd)
        self.timings_ms["attach"] = round((time.monotonic() - t0) * 1000, 2)
        if self.ports:
            from .portproxy import PortProxy
            proxy = PortProxy(tuple(self.ports), str(self.ip))
            proxy.start()
            self.proxy = proxy

    def release(self) -> None:
        if self.hosts_tree is not None:
            os.close(self.hosts_tree)
            self.hosts_tree = None
        if self.released:
            return
        self.released = True
        if self.proxy is not None:
            self.proxy.stop()
        _forget(self.ip)

    def describe(self) -> dict:
        d = {"mode": "bridge", "bridge": BRIDGE, "subnet": str(self.cfg.subnet),
             "address": f"{self.ip}/{self.cfg.prefixlen}", "gateway": str(self.cfg.gateway),
             "interface": "eth0", "mac": mac_for(self.ip), "host_veth": self.veth,
             "egress": self.egress, "nft_tables": [f"inet {NFT_TABLE}", f"bridge {NFT_TABLE}"],
             "names": self.names, "dns": list(self.dns), "host_services": "unreachable",
             "anti_spoofing": True,
             "ports": self.proxy.describe() if self.proxy is not None else
             [{"host": f"{p.host_ip}:{p.host_port}/{p.proto}", "container": p.container_port} for p in self.ports]}
        if self.timings_ms:
            d["timings_ms"] = dict(self.timings_ms)
        return d


def prepare(spec: Spec, sandbox_id: str, *, name: str | None = None) -> BridgeNet:
    """Refuse early if the host can't do bridge mode; allocate an address; bridge and firewall ready."""
    t0 = time.monotonic()
    if os.geteuid() != 0:
        raise SbxError("--network bridge needs root (it creates the sbx0 bridge, veth pairs and nftables rules); "
                       "rootless sandboxes can use --network loopback or none")
    cfg = config()
    _nft_bin()
    seen = set()
    for p in spec.ports:
        key = (p.host_ip, p.host_port, p.proto)
        if key in seen:
            raise SbxError(f"port {p.host_ip}:{p.host_port}/{p.proto} is published twice", where="-p")
        seen.add(key)
    veth = veth_name(sandbox_id)
    with _locked() as d:
        allocs, dead = _scan(d, cfg)
        if any(a.veth == veth or a.sandbox_id == sandbox_id for a in allocs.values()):
            raise SbxError(f"sandbox id {sandbox_id[:12]} already has a bridge address")
        in_use = bool(allocs)
        ip = _pick(d, cfg, allocs)
        me = os.getpid()
        rec = _Alloc(str(ip), sandbox_id, me, _starttime(me) or 0, veth, bool(spec.egress))
        atomic_write(os.path.join(d, "alloc", str(ip)), json.dumps(rec.__dict__).encode())
        allocs[str(ip)] = rec
        job = None
        names = _Names(sandbox_id, str(ip), name or "", spec.hostname, [list(h) for h in spec.add_hosts])
        try:
            hosts_dir = _hosts_dir(d, sandbox_id)
            atomic_write(os.path.join(hosts_dir, "names.json"), json.dumps(names.__dict__).encode())
            dns, notes = resolv_servers(spec)
            if spec.egress or spec.dns:
                atomic_write(os.path.join(hosts_dir, "resolv.conf"), resolv_text(dns, bool(spec.dns)), mode=0o644)
            _write_hosts(d, allocs)
            job = _firewall_job(d, allocs)
            IPRoute = _iproute()  # the import (~115 ms cold) overlaps the nft transaction
            with IPRoute() as host:
                _reap_links(host, d, dead, allocs)
                _ensure_bridge(host, cfg, in_use)
            job.wait()
            _firewall_done(d, allocs)
        except BaseException as e:
            if job is not None:
                job.abort()
            _unlink(os.path.join(d, "alloc", str(ip)))
            allocs.pop(str(ip), None)
            try:
                _write_hosts(d, allocs)
                _sync_locked(d, allocs, [])
            except Exception:  # noqa: BLE001 - the original error is the one to report
                pass
            if isinstance(e, SbxError):
                raise
            raise SbxError(f"bridge networking: cannot set up {BRIDGE}: {e}") from None
    net = BridgeNet(sandbox_id, cfg, ip, veth, bool(spec.egress), tuple(spec.ports))
    net.hosts_dir, net.dns, net.notes = hosts_dir, dns, notes
    net.names = names.names()
    try:
        net.hosts_tree = _hosts_tree(hosts_dir)
    except BaseException:
        net.release()
        raise
    net.timings_ms["prepare"] = round((time.monotonic() - t0) * 1000, 2)
    return net


def _pick(d: str, cfg: BridgeConfig, allocs: dict[str, _Alloc]) -> ipaddress.IPv4Address:
    """Next free address after the last one handed out (round robin keeps reuse rare)."""
    first = int(cfg.gateway) + 1
    last = int(cfg.subnet.broadcast_address) - 1
    size = last - first + 1
    cursor_path = os.path.join(d, "cursor")
    try:
        with open(cursor_path) as f:
            start = int(f.read().strip()) + 1
    except (OSError, ValueError):
        start = first
    if not first <= start <= last:
        start = first
    for i in range(size):
        cand = first + (start - first + i) % size
        ip = ipaddress.IPv4Address(cand)
        if str(ip) not in allocs:
            atomic_write(cursor_path, str(cand).encode())
            return ip
    raise SbxError(f"no free address left in {cfg.subnet} ({len(allocs)} sandboxes on {BRIDGE})")


def _forget(ip: ipaddress.IPv4Address) -> None:
    cfg = config()
    with _locked() as d:
        _unlink(os.path.join(d, "alloc", str(ip)))
        live, dead = _scan(d, cfg)
        _write_hosts(d, live)  # the others stop resolving us; our own directory goes
        _sync_locked(d, live, dead)  # our veth is no live allocation's any more: deleted as stray


def _scan(d: str, cfg: BridgeConfig) -> tuple[dict[str, _Alloc], list[_Alloc]]:
    """Allocations split by whether their sbx process still lives (pid + start time)."""
    allocs = _read_allocs(d, cfg)
    live = {ip: a for ip, a in allocs.items() if a.alive()}
    return live, [a for ip, a in allocs.items() if ip not in live]


def _reap_links(host, d: str, dead: list[_Alloc], live: dict[str, _Alloc]) -> None:
    """Delete the veths of dead or released sandboxes, then forget the dead allocations."""
    live_veths = {a.veth for a in live.values()}
    for a in dead:
        _del_link(host, a.veth)
    for name in _stray_veths(live_veths):
        _del_link(host, name)
    for a in dead:
        _unlink(os.path.join(d, "alloc", a.ip))


def _stray_veths(live_veths: set[str]) -> list[str]:
    # /sys/class/net is a cheap listing: no netlink dump of every link on the host.
    try:
        names = os.listdir("/sys/class/net")
    except OSError:
        return []
    return [n for n in names if n.startswith(VETH_PREFIX) and n not in live_veths]


def _firewall_job(d: str, allocs: dict[str, _Alloc]) -> _NftJob:
    if any(a.egress for a in allocs.values()):
        _forwarding_on(d)
    return _NftJob(d, ruleset(list(allocs.values())) if allocs else delete_script())


def _firewall_done(d: str, allocs: dict[str, _Alloc]) -> None:
    if not any(a.egress for a in allocs.values()):
        _forwarding_restore(d)


def _sync_locked(d: str, live: dict[str, _Alloc], dead: list[_Alloc]) -> None:
    """Bring the host in line with the live allocations; with none left, remove everything of sbx."""
    job = _firewall_job(d, live)
    try:
        stray = dead or _stray_veths({a.veth for a in live.values()})
        bridge = _host_ifindex(BRIDGE) if not live else None
        if stray or bridge is not None:
            with _iproute()() as host:
                _reap_links(host, d, dead, live)
                if bridge is not None and _is_bridge(host, bridge):  # never someone else's link named sbx0
                    _del_link(host, BRIDGE)
    except BaseException:
        job.abort()
        raise
    job.wait()
    _firewall_done(d, live)


def _forwarding_on(d: str) -> None:
    if _read_sysctl(IP_FORWARD) == "1":
        return
    atomic_write(os.path.join(d, "ip_forward.sbx"), b"0")  # remember that sbx switched it on
    _write_sysctl(IP_FORWARD, "1")
    if _read_sysctl(IP_FORWARD) != "1":
        raise SbxError("egress needs IPv4 forwarding, and net.ipv4.ip_forward could not be enabled")


def _forwarding_restore(d: str) -> None:
    marker = os.path.join(d, "ip_forward.sbx")
    if os.path.exists(marker):
        _write_sysctl(IP_FORWARD, "0")
        _unlink(marker)


def reap() -> dict:
    """Remove leftovers of dead sandboxes now (also done by every bridge start). Returns what is left."""
    if os.geteuid() != 0:
        return {"skipped": "not root"}
    cfg = config()
    with _locked() as d:
        live, dead = _scan(d, cfg)
        _write_hosts(d, live)
        _sync_locked(d, live, dead)
    return {"live": sorted(live)}


# ---------------------------------------------------------------- names: /etc/hosts and resolv.conf

def _hosts_root(d: str) -> str:
    return ensure_private_dir(os.path.join(d, "hosts"))


def _hosts_dir(d: str, sandbox_id: str) -> str:
    """hosts/<id>: world-readable (the sandbox reads it as an unmapped uid), inside the 0700 store."""
    p = os.path.join(_hosts_root(d), sandbox_id)
    try:
        os.mkdir(p, 0o755)
    except FileExistsError:
        st = os.lstat(p)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise SbxError(f"{p} is not sbx's directory") from None
    os.chmod(p, 0o755)
    return p


def _read_names(root: str, a: _Alloc) -> _Names:
    """A live allocation's names; only its id if they are missing (a sandbox of an older sbx) or malformed."""
    try:
        fd = os.open(os.path.join(root, a.sandbox_id, "names.json"), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            rec = json.loads(f.read(65536))
        n = _Names(a.sandbox_id, a.ip, str(rec.get("name") or ""), str(rec.get("hostname") or ""),
                   [[str(h), str(ipaddress.ip_address(i))] for h, i in rec.get("add_hosts") or ()])
        # Names end up in every bridge sandbox's /etc/hosts: only what resolve() accepts.
        if (n.name and not _NAME_RE.fullmatch(n.name)) or (n.hostname and not _HOST_RE.fullmatch(n.hostname)) or \
                not all(_HOST_RE.fullmatch(h) for h, _ in n.add_hosts) or rec.get("sandbox_id") != a.sandbox_id:
            raise ValueError("bad names")
        return n
    except (OSError, ValueError, TypeError, AttributeError):
        return _Names(a.sandbox_id, a.ip)


def hosts_text(me: _Names, allocs: list[_Names]) -> bytes:
    """The /etc/hosts one bridge sandbox sees: localhost, itself, every other live sandbox, its --add-host lines."""
    lines = ["# sbx: sandboxes on the bridge, kept current while they run", "127.0.0.1\tlocalhost",
             "::1\tlocalhost ip6-localhost ip6-loopback", f"{me.ip}\t{' '.join(dict.fromkeys([me.hostname] + me.names()))}"]
    for a in sorted(allocs, key=lambda a: ipaddress.IPv4Address(a.ip)):
        if a.sandbox_id != me.sandbox_id:
            lines.append(f"{a.ip}\t{' '.join(a.names())}")
    lines += [f"{ip}\t{n}" for n, ip in me.add_hosts]
    return ("\n".join(lines) + "\n").encode()


def _write_hosts(d: str, allocs: dict[str, _Alloc]) -> None:
    """Rewrite every live sandbox's hosts file (by rename: a reader sees the old or the new one); drop the rest."""
    root = _hosts_root(d)
    live = [_read_names(root, a) for a in allocs.values() if re.fullmatch(r"[0-9a-f]{64}", a.sandbox_id)]
    for a in live:
        p = os.path.join(root, a.sandbox_id)
        if os.path.isdir(p) and not os.path.islink(p):
            atomic_write(os.path.join(p, "hosts"), hosts_text(a, live), mode=0o644)
    keep = {a.sandbox_id for a in live}
    for n in os.listdir(root):
        if n not in keep and re.fullmatch(r"[0-9a-f]{64}", n):
            p = os.path.join(root, n)
            for f in ("hosts", "resolv.conf", "names.json"):
                _unlink(os.path.join(p, f))
            try:
                os.rmdir(p)
            except OSError:
                pass


def _hosts_tree(hosts_dir: str) -> int:
    """A private, read-only detached clone of the sandbox's hosts directory, for its init to attach."""
    from . import mounts
    from . import syscalls as sc
    fd = os.open(hosts_dir, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        return mounts.clone_tree(fd, recursive=False, attrs=mounts.RO_ATTRS | sc.MOUNT_ATTR_NOEXEC,
                                 propagation=sc.MS_PRIVATE)
    finally:
        os.close(fd)


RESOLV_FILES = ("/etc/resolv.conf", "/run/systemd/resolve/resolv.conf")
_RESOLV_OPTIONS = re.compile(r"(ndots|timeout|attempts):\d{1,2}|rotate|edns0|single-request|single-request-reopen|"
                             r"use-vc|no-tld-query|trust-ad|inet6|no-aaaa")


def _host_resolv() -> tuple[list[str], list[str], list[str], str]:
    """(usable nameservers, search domains, options, file) from the host's resolver config."""
    for path in RESOLV_FILES:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read(65536)
        except OSError:
            continue
        servers, search, opts = [], [], []
        for line in text.splitlines():
            parts = line.split("#", 1)[0].split()
            if not parts:
                continue
            if parts[0] == "nameserver" and len(parts) > 1:
                try:
                    ip = ipaddress.ip_address(parts[1])
                except ValueError:
                    continue
                # What a sandbox can reach: IPv4 (the bridge has no IPv6), not the host's loopback (another
                # network namespace), not link-local (the firewall drops it: cloud metadata lives there).
                if ip.version == 4 and not ip.is_loopback and not ip.is_link_local and not ip.is_unspecified:
                    servers.append(str(ip))
            elif parts[0] in ("search", "domain"):
                search = [p for p in parts[1:] if _HOST_RE.fullmatch(p)][:6]
            elif parts[0] == "options":
                opts = [p for p in parts[1:] if _RESOLV_OPTIONS.fullmatch(p)]
        if servers:
            return servers[:3], search, opts, path
    return [], [], [], ""


def resolv_servers(spec: Spec) -> tuple[tuple, list[str]]:
    """(nameservers, notes) for the sandbox's resolv.conf; empty without egress or --dns."""
    notes: list[str] = []
    if spec.dns:
        if not spec.egress:
            notes.append("--dns: this sandbox has no egress, so only a DNS server on the bridge is reachable")
        return tuple(spec.dns), notes
    if not spec.egress:
        return (), notes
    servers, _, _, _ = _host_resolv()
    if not servers:
        notes.append("dns: the host has no nameserver a sandbox can reach (only loopback, link-local or IPv6 ones); "
                     "give --dns")
    return tuple(servers), notes


def resolv_text(servers, from_flag: bool) -> bytes:
    _, search, opts, src = _host_resolv()
    lines = ["# sbx: nameservers " + ("from --dns" if from_flag else f"from {src}" if src else "unknown (give --dns)")]
    lines += [f"nameserver {s}" for s in servers]
    if search:
        lines.append("search " + " ".join(search))
    if opts:
        lines.append("options " + " ".join(opts))
    return ("\n".join(lines) + "\n").encode()
