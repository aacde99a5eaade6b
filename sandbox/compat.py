"""What sbx says when a Docker user types a flag it does not have (imported on that error only).

Two rules for the "did you mean" hint that click offers: it is given only for what looks like a
typo of the option (a small edit distance, scaled to the length of the name), never for an
option that merely shares a word (`--stop-timeout` is not `--timeout`: one waits before SIGKILL
on stop, the other kills the whole run); and a docker flag sbx lacks is named as such.
"""
from __future__ import annotations

# docker flag -> what sbx says about it. "planned": on the roadmap (issue 17's second half);
# otherwise why sbx does not have it.
PLANNED = "planned for sbx; see the README, Coming from Docker"
DOCKER_FLAGS: dict[str, str] = {
    **{f: PLANNED for f in (
        "--tty", "-t", "--interactive", "-i", "-it", "-ti", "--tmpfs", "--device", "--sysctl",
        "--privileged", "--restart", "--stop-signal", "--stop-timeout", "--label", "-l", "--label-file",
        "--publish-all", "-P", "--init", "--attach", "-a", "--detach-keys")},
    "--gpus": "not supported: sbx gives a sandbox no devices beyond its minimal /dev",
    "--pid": "not supported: every sandbox has its own pid namespace (sharing the host's is what sbx audit flags)",
    "--ipc": "not supported: every sandbox has its own ipc namespace",
    "--uts": "not supported: every sandbox has its own uts namespace",
    "--userns": "not supported: every sandbox has its own user namespace, with no id mapped to host root",
    "--cgroupns": "not supported: every sandbox has its own cgroup namespace",
    "--link": "not supported: docker's legacy links; use --network bridge and addresses",
    "--volumes-from": "not supported: name the binds with -v",
    "--platform": "not supported: sbx runs native binaries only",
    "--oom-kill-disable": "not supported: the OOM killer is how --memory is enforced",
    "--memory-reservation": "not supported: only hard limits are enforced (and verified)",
    "--kernel-memory": "not supported: deprecated in docker, gone from cgroup v2",
    "--blkio-weight": "not supported yet",
    "--health-cmd": "not supported yet",
    "--log-driver": "not supported: logs go to the sandbox's own rotated file (sbx logs)",
    "--log-opt": "not supported: logs are capped at 2 x 10 MiB per sandbox",
}


def damerau(a: str, b: str) -> int:
    """Optimal string alignment distance (a transposition counts as one edit)."""
    d = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a) + 1):
        d[i][0] = i
    for j in range(len(b) + 1):
        d[0][j] = j
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[len(a)][len(b)]


def is_typo(typed: str, option: str) -> bool:
    """Could `typed` be a slip of the fingers for `option`? One edit per four letters, at most two."""
    a, b = typed.lstrip("-"), option.lstrip("-")
    if not a or not b:
        return False
    allowed = min(2, max(1, len(b) // 4))
    return damerau(a, b) <= allowed


def note(option: str) -> str | None:
    """One sentence about a docker flag sbx does not have, or None."""
    name = option.split("=", 1)[0]
    why = DOCKER_FLAGS.get(name)
    return f"docker's {name} is {why}" if why == PLANNED else (f"docker's {name}: {why}" if why else None)


def suggestions(typed: str, possibilities) -> list[str]:
    """The options worth suggesting for `typed`: typos only, and none for a flag docker has (its
    meaning is docker's, whatever sbx option it resembles: --gpus is not --cpus)."""
    if typed.split("=", 1)[0] in DOCKER_FLAGS:
        return []
    return [p for p in possibilities or () if is_typo(typed, p)]
