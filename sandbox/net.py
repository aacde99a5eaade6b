"""Network stage. `none`: no interface up. `loopback`: lo up (strict's default).

Loopback needs only one ioctl, so pyroute2 (125 ms to import) is left for the
bridge mode, which imports it lazily.
"""
from __future__ import annotations

import fcntl
import os
import struct

from . import syscalls as sc
from .errors import SbxError

AF_INET = 2
SOCK_DGRAM = 2
SOCK_CLOEXEC = 0o2000000
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1


def loopback_up() -> None:
    # A raw socket(2) through libc: the socket module (or even its _socket extension) costs an
    # import on every start for one ioctl.
    try:
        fd = sc.socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0)
    except OSError as e:
        raise SbxError(f"cannot bring up loopback in the sandbox: {e.strerror}") from None
    try:
        req = struct.pack("16sh14x", b"lo", 0)
        flags = struct.unpack("16sh14x", fcntl.ioctl(fd, SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(fd, SIOCSIFFLAGS, struct.pack("16sh14x", b"lo", flags | IFF_UP))
    except OSError as e:
        raise SbxError(f"cannot bring up loopback in the sandbox: {e.strerror}") from None
    finally:
        os.close(fd)


def setup_inside(mode: str) -> None:
    """Called in the sandbox's init, inside its new network namespace."""
    if mode in ("loopback", "bridge"):
        loopback_up()
