"""Published ports (`-p [HOSTIP:]HOSTPORT:CTRPORT[/tcp|udp]`): a userspace proxy in the sbx process.

Why a userspace proxy and not nftables DNAT:
- Reaching a DNAT'd port from the host's own 127.0.0.1 needs `route_localnet=1`
  on the host, which makes 127.0.0.0/8 routable on the wire (the class of bug
  behind CVE-2020-8558). A security-first runner must not weaken the host to
  publish a port. The proxy connects from the host to the sandbox like any
  local client, so loopback, host addresses and IPv6 host addresses all work
  without touching a sysctl (not even ip_forward).
- Lifetime: the listening sockets and the relay thread live in the sbx process
  that waits for the sandbox. When sbx exits -- normally, on error or killed
  with SIGKILL -- the kernel closes them. No forwarding rule can outlive the
  sandbox and there is nothing to reap.
- A host port that is taken is refused at start with one clear line
  ("address already in use"), instead of a DNAT rule silently shadowing a host
  service.
Costs, accepted: the workload sees connections from the bridge gateway, not
the client's address, and throughput is that of one Python thread (fine for
the control and test traffic sandboxes publish; not a load balancer).

One daemon thread runs a selector loop over every listener and relay of the
sandbox. TCP half-closes are propagated; UDP flows map each client address to
a connected socket towards the sandbox and expire when idle. Buffers and flow
counts are bounded so a client cannot make sbx grow without limit.
"""
from __future__ import annotations

import errno
import ipaddress
import os
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field

from .errors import SbxError, escape
from .spec import Port

BUF = 64 * 1024  # per direction of a TCP relay
MAX_TCP = 512  # concurrent TCP relays per sandbox
MAX_UDP = 256  # concurrent UDP flows per sandbox
UDP_IDLE = 60.0  # seconds without traffic before a UDP flow is dropped
LISTEN_BACKLOG = 128


def _family(ip: str) -> int:
    return socket.AF_INET6 if ipaddress.ip_address(ip).version == 6 else socket.AF_INET


def _label(p: Port) -> str:
    host = f"[{p.host_ip}]" if ":" in p.host_ip else p.host_ip
    return f"{host}:{p.host_port}/{p.proto}"


@dataclass
class _Tcp:
    """One proxied TCP connection: client <-> sandbox."""

    client: socket.socket
    backend: socket.socket
    connected: bool = False
    up: bytearray = field(default_factory=bytearray)  # client -> sandbox
    down: bytearray = field(default_factory=bytearray)  # sandbox -> client
    client_eof: bool = False
    backend_eof: bool = False
    up_shut: bool = False
    down_shut: bool = False


@dataclass
class _UdpFlow:
    listener: socket.socket
    client_addr: tuple
    backend: socket.socket
    last: float


class PortProxy:
    """Forwards every published port of one sandbox to target_ip."""

    def __init__(self, ports: tuple[Port, ...], target_ip: str):
        self.ports = ports
        self.target_ip = target_ip
        self._sel: selectors.BaseSelector | None = None
        self._listeners: list[tuple[socket.socket, Port]] = []
        self._tcp: dict[int, _Tcp] = {}  # fd of either side -> relay
        self._udp: dict[tuple[int, tuple], _UdpFlow] = {}  # (listener fd, client addr) -> flow
        self._udp_back: dict[int, _UdpFlow] = {}  # backend fd -> flow
        self._thread: threading.Thread | None = None
        self._wake_r = self._wake_w = -1
        self._stop = False
        self.stats = {"tcp_accepted": 0, "tcp_refused": 0, "udp_flows": 0}

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Bind every host port (refusing with one line if one is taken), then start relaying."""
        try:
            for p in self.ports:
                self._listeners.append((self._bind(p), p))
        except BaseException:
            self._close_all()
            raise
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._sel.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        for s, p in self._listeners:
            self._sel.register(s, selectors.EVENT_READ, ("listen" if p.proto == "tcp" else "udp-in", p))
        self._thread = threading.Thread(target=self._loop, name="sbx-portproxy", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop = True
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
        self._thread = None
        self._close_all()

    def describe(self) -> list[dict]:
        return [{"host": _label(p), "container": f"{self.target_ip}:{p.container_port}/{p.proto}",
                 "via": "userspace-proxy"} for p in self.ports]

    def _bind(self, p: Port) -> socket.socket:
        fam = _family(p.host_ip)
        kind = socket.SOCK_STREAM if p.proto == "tcp" else socket.SOCK_DGRAM
        s = socket.socket(fam, kind | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        try:
            if kind == socket.SOCK_STREAM:
                # Lets a port be reused right after a previous sandbox's TIME_WAIT, never steals a live listener.
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if fam == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind((p.host_ip, p.host_port))
            if kind == socket.SOCK_STREAM:
                s.listen(LISTEN_BACKLOG)
        except OSError as e:
            s.close()
            raise SbxError(f"cannot publish port {escape(_label(p))}: {e.strerror}", where="-p") from None
        return s

    def _close_all(self) -> None:
        for relay in list({id(r): r for r in self._tcp.values()}.values()):
            self._tcp_close(relay)
        for flow in list(self._udp.values()):
            self._udp_close(flow)
        for s, _ in self._listeners:
            self._unregister(s)
            s.close()
        self._listeners = []
        if self._sel is not None:
            try:
                self._sel.close()
            except (OSError, ValueError):
                pass
            self._sel = None
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._wake_r = self._wake_w = -1

    # ------------------------------------------------------------ loop
    def _loop(self) -> None:
        sel = self._sel
        while not self._stop and sel is not None:
            try:
                events = sel.select(timeout=5.0)
            except (OSError, ValueError):
                return  # selector closed by stop()
            for key, mask in events:
                if self._stop:
                    return
                what, arg = key.data
                try:
                    if what == "listen":
                        self._accept(key.fileobj, arg)
                    elif what == "tcp":
                        self._tcp_event(arg, key.fileobj, mask)
                    elif what == "udp-in":
                        self._udp_in(key.fileobj, arg)
                    elif what == "udp-back":
                        self._udp_back_in(arg)
                except (OSError, ValueError, KeyError):
                    # One broken flow must not stop the others (or the sandbox).
                    if what == "tcp":
                        self._tcp_close(arg)
                    elif what == "udp-back":
                        self._udp_close(arg)
            self._udp_expire()

    # ------------------------------------------------------------ tcp
    def _accept(self, lsock: socket.socket, p: Port) -> None:
        for _ in range(64):  # drain the backlog without starving the relays
            try:
                client, _ = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    return
                raise
            if len({id(r) for r in self._tcp.values()}) >= MAX_TCP:
                self.stats["tcp_refused"] += 1
                client.close()
                continue
            client.setblocking(False)
            backend = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
            relay = _Tcp(client, backend)
            rc = backend.connect_ex((self.target_ip, p.container_port))
            if rc not in (0, errno.EINPROGRESS):
                self.stats["tcp_refused"] += 1
                self._reset(client)
                backend.close()
                continue
            self.stats["tcp_accepted"] += 1
            relay.connected = rc == 0
            self._tcp[client.fileno()] = relay
            self._tcp[backend.fileno()] = relay
            self._tcp_rearm(relay)

    @staticmethod
    def _reset(s: socket.socket) -> None:
        # RST the client, like a closed port would, instead of a clean FIN.
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        except OSError:
            pass
        s.close()

    def _tcp_event(self, r: _Tcp, sock: socket.socket, mask: int) -> None:
        if sock is r.backend and not r.connected:
            err = r.backend.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.stats["tcp_refused"] += 1
                self._tcp.pop(r.client.fileno(), None)
                self._unregister(r.client)
                self._reset(r.client)
                r.client = None  # type: ignore[assignment]
                self._tcp_close(r)
                return
            r.connected = True
        if mask & selectors.EVENT_READ:
            src_is_client = sock is r.client
            buf = r.up if src_is_client else r.down
            try:
                data = sock.recv(BUF - len(buf))
            except (BlockingIOError, InterruptedError):
                data = None
            except ConnectionResetError:
                self._tcp_close(r)
                return
            if data is not None:
                if data:
                    buf.extend(data)
                elif src_is_client:
                    r.client_eof = True
                else:
                    r.backend_eof = True
        if r.connected:
            self._flush(r.backend, r.up)
        self._flush(r.client, r.down)
        # Propagate a half-close once everything read before it was delivered.
        if r.client_eof and not r.up and not r.up_shut and r.connected:
            r.backend.shutdown(socket.SHUT_WR)
            r.up_shut = True
        if r.backend_eof and not r.down and not r.down_shut:
            r.client.shutdown(socket.SHUT_WR)
            r.down_shut = True
        if r.up_shut and r.down_shut:
            self._tcp_close(r)
            return
        self._tcp_rearm(r)

    @staticmethod
    def _flush(sock: socket.socket, buf: bytearray) -> None:
        if not buf:
            return
        try:
            n = sock.send(buf)
        except (BlockingIOError, InterruptedError):
            return
        del buf[:n]

    def _tcp_rearm(self, r: _Tcp) -> None:
        sel = self._sel
        if sel is None:
            return
        for sock, reading, out in ((r.client, not r.client_eof and len(r.up) < BUF, r.down),
                                   (r.backend, not r.backend_eof and len(r.down) < BUF, r.up)):
            if sock is r.backend and not r.connected:
                mask = selectors.EVENT_WRITE  # connect completion
            else:
                mask = (selectors.EVENT_READ if reading else 0) | (selectors.EVENT_WRITE if out else 0)
            try:
                key = sel.get_key(sock)
            except KeyError:
                key = None
            if mask == 0:
                if key is not None:
                    sel.unregister(sock)
            elif key is None:
                sel.register(sock, mask, ("tcp", r))
            elif key.events != mask:
                sel.modify(sock, mask, ("tcp", r))

    def _tcp_close(self, r: _Tcp) -> None:
        for sock in (r.client, r.backend):
            if sock is None:
                continue
            self._tcp.pop(sock.fileno(), None)
            self._unregister(sock)
            sock.close()

    def _unregister(self, sock: socket.socket) -> None:
        if self._sel is None:
            return
        try:
            self._sel.unregister(sock)
        except (KeyError, ValueError, OSError):
            pass

    # ------------------------------------------------------------ udp
    def _udp_in(self, lsock: socket.socket, p: Port) -> None:
        for _ in range(64):
            try:
                data, addr = lsock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            key = (lsock.fileno(), addr)
            flow = self._udp.get(key)
            if flow is None:
                if len(self._udp) >= MAX_UDP:
                    continue
                back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
                back.connect((self.target_ip, p.container_port))
                flow = _UdpFlow(lsock, addr, back, time.monotonic())
                self._udp[key] = flow
                self._udp_back[back.fileno()] = flow
                self._sel.register(back, selectors.EVENT_READ, ("udp-back", flow))
                self.stats["udp_flows"] += 1
            flow.last = time.monotonic()
            try:
                flow.backend.send(data)
            except (BlockingIOError, ConnectionRefusedError):
                pass  # UDP: a lost datagram is a lost datagram

    def _udp_back_in(self, flow: _UdpFlow) -> None:
        for _ in range(64):
            try:
                data = flow.backend.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionRefusedError:
                continue  # ICMP port unreachable from the sandbox: nobody listens yet
            flow.last = time.monotonic()
            try:
                flow.listener.sendto(data, flow.client_addr)
            except BlockingIOError:
                pass

    def _udp_close(self, flow: _UdpFlow) -> None:
        self._udp.pop((flow.listener.fileno(), flow.client_addr), None)
        self._udp_back.pop(flow.backend.fileno(), None)
        self._unregister(flow.backend)
        flow.backend.close()

    def _udp_expire(self) -> None:
        if not self._udp:
            return
        now = time.monotonic()
        for flow in [f for f in self._udp.values() if now - f.last > UDP_IDLE]:
            self._udp_close(flow)
