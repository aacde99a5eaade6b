"""The one error `sbx run IMAGE` needs on its warm path, in a module that imports nothing heavy.

(runspec imports the config, passwd and reference modules, ~17 ms with dataclasses and re; a
spec-cache hit must not pay that just to name the exception it might catch.)
"""
from __future__ import annotations

from ..errors import SbxError, escape


class ImageMissing(SbxError):
    def __init__(self, ref: str):
        super().__init__(f"no image {escape(ref)} in the store (sbx pull {escape(ref)}, or --pull=missing)")
        self.ref = ref
