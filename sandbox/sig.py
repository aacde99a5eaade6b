"""`signal` for the start-up path: the C module itself.

The stdlib's signal.py only wraps _signal's numbers and handlers in enums, and
importing it pulls in enum (~4 ms here) on every `sbx run`. Handlers set
through either module are the same handlers.
"""
from __future__ import annotations

import _signal as signal

__all__ = ["signal"]
