#!/usr/bin/env python3
"""Rewrite spec.serveConfigV2 of deploy/kuberay/rayservice.yaml with the output of
`percept build -c configs/kuberay.yaml --http-host 0.0.0.0`, so the two never drift.
Everything else in the manifest (comments included) is kept as written.

    make kuberay                                   # rewrite
    .venv/bin/python scripts/kuberay-manifest.py --check   # exit 1 if it is out of date

`percept build`'s warnings are passed on; one of a password written inline in the config (not a
${VAR}) makes it exit 1 without writing: the manifest is committed.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "deploy" / "kuberay" / "rayservice.yaml"
CONFIG = REPO / "configs" / "kuberay.yaml"
BUILD_ARGS = ["build", "-c", str(CONFIG.relative_to(REPO)), "--http-host", "0.0.0.0"]
_KEY = re.compile(r"^(?P<indent> *)serveConfigV2: *\|[-+]?\s*$")


# what cli/build.py's warning of a password written inline says (build.INLINE_SECRET_WARNING)
INLINE_SECRET = re.compile(r"^percept build: warning: .* holds its password as written", re.M)


def percept_build() -> str:
    """`percept build`'s Serve config. Its stderr is passed on whatever the outcome (it was kept
    back unless the build failed: the warning of a password written inline went unseen); a
    password written inline is refused: the manifest is committed, the password would be too."""
    out = subprocess.run([sys.executable, "-m", "cli", *BUILD_ARGS], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    sys.stderr.write(out.stderr)
    if out.returncode != 0:
        sys.exit(f"percept {' '.join(BUILD_ARGS)} failed ({out.returncode})")
    if INLINE_SECRET.search(out.stderr):
        sys.exit(f"{MANIFEST.relative_to(REPO)}: not written: a password is written inline in "
                 f"{CONFIG.relative_to(REPO)} (above) and the manifest is committed; write it as a ${{VAR}} and put "
                 "it in the Secret percept-secrets")
    return out.stdout


def with_serve_config(manifest: str, serve_yaml: str) -> str:
    """The manifest with the block scalar under ``serveConfigV2: |`` replaced by ``serve_yaml``."""
    lines = manifest.splitlines(keepends=True)
    for i, line in enumerate(lines):
        m = _KEY.match(line)
        if m:
            break
    else:
        raise ValueError("no `serveConfigV2: |` line in the manifest")
    indent = len(m.group("indent"))
    end = i + 1
    while end < len(lines) and (not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip(" ")) > indent):
        end += 1
    while end > i + 1 and not lines[end - 1].strip():  # blank lines before the next key stay
        end -= 1
    pad = " " * (indent + 2)
    block = [f"{pad}{ln}\n" if ln else "\n" for ln in serve_yaml.rstrip("\n").split("\n")]
    head = " " * indent + "serveConfigV2: |\n"
    return "".join(lines[:i] + [head] + block + lines[end:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if the manifest is out of date; write nothing")
    args = ap.parse_args()
    current = MANIFEST.read_text()
    updated = with_serve_config(current, percept_build())
    if args.check:
        if updated != current:
            print(f"{MANIFEST.relative_to(REPO)}: serveConfigV2 is out of date; run `make kuberay`", file=sys.stderr)
            return 1
        return 0
    if updated != current:
        MANIFEST.write_text(updated)
        print(f"updated {MANIFEST.relative_to(REPO)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
