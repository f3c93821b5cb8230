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


# Hydra's flags that take a value (``--info`` and ``--cfg`` take one word; overrides contain '=').
_VALUE_FLAGS = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--cfg", "-c",
                "--package", "-p", "--info", "--experimental-rerun"}


def flags_first(argv: list[str]) -> list[str]:
    """Move Hydra's flags ahead of the overrides.

    Hydra parses its command line with argparse, which rejects overrides that follow a flag
    (``main.py model=x --multirun model.lora.r=4,8``); users type flags anywhere.
    """
    flags, overrides = [], []
    args = iter(argv)
    for arg in args:
        if not arg.startswith("-"):  # overrides never start with '-' (they may with '+' or '~')
            overrides.append(arg)
            continue
        flags.append(arg)
        if arg in _VALUE_FLAGS:
            value = next(args, None)
            if value is None:
                continue
            (overrides if "=" in value or value.startswith("-") else flags).append(value)
    return flags + overrides
