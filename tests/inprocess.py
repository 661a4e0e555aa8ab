"""`percept` run in the test's own process (for commands that need no separate process)."""

from __future__ import annotations

import contextlib
import io

from cli.main import main


def percept(*argv: str) -> tuple[int, str, str]:
    """``percept ARGV`` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse
            code = exc.code
    return code, out.getvalue(), err.getvalue()
