"""sha256 without importing hashlib on the hot path.

`import hashlib` loads OpenSSL (~13 ms here) on every `sbx run`; CPython's
built-in _sha256 gives the same digests for the small inputs we hash.
"""
from __future__ import annotations

try:
    from _sha256 import sha256
except ImportError:  # an interpreter built without it
    from hashlib import sha256

__all__ = ["sha256"]
