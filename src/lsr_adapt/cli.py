"""Shared behaviour of the command-line entry points."""

from __future__ import annotations

import logging
import sys

from .errors import LsrAdaptError

log = logging.getLogger("lsr_adapt")


def exit_on_user_error(fn, *args, **kwargs):
    """Run ``fn``; a ``LsrAdaptError`` becomes one ``error: ...`` line on stderr and exit status 2."""
    try:
        return fn(*args, **kwargs)
    except LsrAdaptError as e:
        log.error("%s", e)
        print(f"error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
