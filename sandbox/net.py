"""Network stage. `none`: no interface up. `loopback`: lo up (strict's default).

Loopback needs only one ioctl, so pyroute2 (125 ms to import) is left for the
bridge mode, which imports it lazily.
"""
from __future__ import annotations

import _socket  # the C module: socket.py imports enum and selectors (~6 ms) for nothing we use here
import fcntl
import struct

from .errors import SbxError

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1


def loopback_up() -> None:
    s = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM, 0)
    try:
        req = struct.pack("16sh14x", b"lo", 0)
        flags = struct.unpack("16sh14x", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sh14x", b"lo", flags | IFF_UP))
    except OSError as e:
        raise SbxError(f"cannot bring up loopback in the sandbox: {e.strerror}") from None
    finally:
        s.close()


def setup_inside(mode: str) -> None:
    """Called in the sandbox's init, inside its new network namespace."""
    if mode in ("loopback", "bridge"):
        loopback_up()
