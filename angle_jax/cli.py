"""Shared command-line plumbing: one-line errors with exit code 2, name listings."""
from __future__ import annotations

import argparse
import sys

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr and exit code 2; `epilog_fn` is
    called only when help is shown (listing envs imports gymnax, and so JAX)."""

    def __init__(self, *args, epilog_fn=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.epilog_fn = epilog_fn

    def format_help(self):
        if self.epilog_fn is not None and self.epilog is None:
            self.epilog = self.epilog_fn()
        return super().format_help()

    def error(self, message):  # noqa: D401 - argparse API
        fail(message, self.prog)


def fail(message: str, prog: str | None = None, code: int = EXIT_BAD_INPUT):
    prog = prog or sys.argv[0].rsplit("/", 1)[-1]
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)
