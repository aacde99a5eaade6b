"""Before/after of a start-up optimisation: two revisions of sbx and runc, interleaved, one run.

Ratios to runc from separate runs drift with the machine (runc alone moved 20-29 ms
between runs here); this puts both sbx trees and runc in the same interleaved loop, so
the before/after difference is measured under the same conditions.

    sudo .venv/bin/python bench/ab_startup.py REV [--after REV2] [--n 30]

REV (and REV2, default: the working tree) are checked out into temporary git
worktrees and byte-compiled; both run with this venv's interpreter and packages
(`python -c 'from sandbox.cli import main; main()' run --profile strict -- /bin/true`).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import interleaved, med_ms, require, table  # noqa: E402
from bench.startup import oci_bundle  # noqa: E402


def worktree(rev: str, parent: str) -> str:
    path = os.path.join(parent, rev.replace("/", "_"))
    subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", path, rev], check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(path, "sandbox")], check=True,
                   capture_output=True)
    return path


def sbx_cmd(tree: str) -> list[str]:
    code = f"import sys; sys.path.insert(0, {tree!r}); sys.argv[0] = 'sbx'; from sandbox.cli import main; main()"
    return [sys.executable, "-c", code, "run", "--profile", "strict", "--", "/bin/true"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("before")
    ap.add_argument("--after", default=None, help="a revision (default: the working tree)")
    ap.add_argument("--n", type=int, default=30)
    a = ap.parse_args()
    require("runc", "busybox")
    with tempfile.TemporaryDirectory() as wt, tempfile.TemporaryDirectory() as bundle:
        trees = []
        try:
            before = worktree(a.before, wt)
            trees.append(before)
            after = ROOT
            if a.after:
                after = worktree(a.after, wt)
                trees.append(after)
            cmds = {f"sbx {a.before}": sbx_cmd(before), f"sbx {a.after or 'working tree'}": sbx_cmd(after),
                    "runc": ["runc", "run", "-b", oci_bundle(bundle, "runc"), f"bench-ab-{os.getpid()}"]}
            res = interleaved(cmds, a.n)
        finally:
            for t in trees:
                subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", t], capture_output=True)
    base = med_ms(res["runc"])
    print(f"P1 before/after, median of {a.n}, interleaved")
    print(table([(k, f"{med_ms(v):.1f}", f"{med_ms(v) / base:.2f}x") for k, v in res.items()],
                ("runtime", "median ms", "vs runc")))


if __name__ == "__main__":
    main()
