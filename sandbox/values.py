"""Value rules shared by profiles, flags, policies, seccomp profiles, cgroups, verify and audit: one home each.

Pure functions of their input, no imports beyond the standard library's
cheapest, because the cgroup backend and verify use them on `sbx run`'s path.
"""
from __future__ import annotations

from .facts import CAP_NAMES

MIN_MEMORY = 6 * 1024 * 1024  # docker's minimum; below it a process cannot start (cgroups and profiles)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(v, what: str = "size") -> int:
    """Docker-style sizes: 512m, 1g, 1.5G, 64MiB, 1048576; -1 means unlimited. ValueError otherwise."""
    if isinstance(v, bool):
        raise ValueError(f"{what} must be a size like 512m, not a boolean")
    if isinstance(v, int):
        if v < -1:
            raise ValueError(f"{what} must be >= 0 or -1 (unlimited)")
        return v
    if isinstance(v, str):
        t = v.strip().lower()
        if t == "-1":
            return -1
        for suffix in ("ib", "b"):
            if t.endswith(suffix) and len(t) > len(suffix):
                t = t[:-len(suffix)]
                break
        unit = t[-1:] if t[-1:] in _UNITS and t[-1:] != "" else ""
        num = t[:-1] if unit else t
        num = num.strip()
        if num and num.replace(".", "", 1).isdigit():
            return int(float(num) * _UNITS[unit])
    raise ValueError(f"{what} '{v}' is not a size (examples: 64m, 1g, 1048576, -1)")


def cpulist(text: str) -> frozenset[int]:
    """The kernel's cpu/node list syntax: '0-2,4' -> {0, 1, 2, 4}. ValueError if malformed."""
    out: set[int] = set()
    for part in str(text).strip().split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"{text!r} is not a list like 0-2,4")
        a = int(lo)
        b = int(hi) if sep else a
        if b < a or b > 1 << 16:
            raise ValueError(f"{text!r} is not a list like 0-2,4")
        out.update(range(a, b + 1))
    return frozenset(out)


def cpulist_or_empty(text: str | None) -> frozenset[int]:
    """As cpulist, for values read back from the kernel: unparsable or missing is the empty set."""
    try:
        return cpulist(text or "")
    except ValueError:
        return frozenset()


def cap_name(c) -> str:
    """'cap_net_raw', 'NET_RAW' -> 'NET_RAW'; 'ALL' stays. ValueError (with a did-you-mean) otherwise."""
    if not isinstance(c, str):
        raise ValueError(f"capability must be a name, got {c!r}")
    n = c.strip().upper()
    if n.startswith("CAP_"):
        n = n[4:]
    if n == "ALL":
        return n
    if n not in CAP_NAMES:
        import difflib
        near = difflib.get_close_matches(n, CAP_NAMES, 1)
        raise ValueError(f"unknown capability '{c}'" + (f" (did you mean {near[0]}?)" if near else ""))
    return n


def cap_bare(c: str) -> str:
    """The name without CAP_, upper-case, without judging it (for lookups of names already checked)."""
    n = str(c).strip().upper()
    return n[4:] if n.startswith("CAP_") else n
