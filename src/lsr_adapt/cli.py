"""Shared behaviour of the command-line entry points."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import NoReturn

from .errors import LsrAdaptError

log = logging.getLogger("lsr_adapt")


def exit_on_user_error(fn, *args, **kwargs):
    """Run ``fn``; a ``LsrAdaptError`` becomes one ``error: ...`` line on stderr and exit status 2."""
    try:
        return fn(*args, **kwargs)
    except LsrAdaptError as e:
        fail(e)


def fail(e: LsrAdaptError) -> NoReturn:
    """The error contract: one ``error: ...`` line on stderr (and in the log file), exit status 2."""
    log_to_files(logging.ERROR, str(e))
    print(f"error: {e}", file=sys.stderr, flush=True)
    raise SystemExit(2) from None


def log_to_files(level: int, message: str, exc_info=None) -> bool:
    """Log ``message`` to the log files only (a run's ``main.log``): the terminal shows the one
    ``error:`` line, not a second copy through the console handler (or logging's last resort).
    True if a log file took it."""
    record = log.makeRecord(log.name, level, __file__, 0, message, (), exc_info)
    handled = False
    logger: logging.Logger | None = log
    while logger is not None:
        for h in logger.handlers:
            if isinstance(h, logging.FileHandler) and record.levelno >= h.level:
                h.handle(record)
                handled = True
        logger = logger.parent if logger.propagate else None
    return handled


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the error contract: a bad or missing option is one ``error: ...`` line (naming
    the option, as argparse words it) and exit status 2, not a usage block ending in ``prog: error:``."""

    def error(self, message: str) -> NoReturn:
        fail(LsrAdaptError(f"{message} (see {self.prog} --help)"))


# Hydra's flags that take a value (``--info`` and ``--cfg`` take one word; overrides contain '=').
_VALUE_FLAGS = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--cfg", "-c",
                "--package", "-p", "--info", "--experimental-rerun"}


def check_output_dirs(argv: list[str]) -> None:
    """A ``hydra.run.dir=`` / ``hydra.sweep.dir=`` that cannot be created is one ``error:`` line and
    exit status 2 here, before Hydra (which would print its own traceback when it makes the dir).
    Nothing is created: a command refused later leaves no empty dir behind."""
    for arg in argv:
        key, sep, value = arg.lstrip("+").partition("=")
        if not sep or key not in ("hydra.run.dir", "hydra.sweep.dir") or "${" in value:
            continue
        problem = _why_not_creatable(Path(value.strip("'\"")))
        if problem:
            fail(LsrAdaptError(f"{key}={value}: cannot create it ({problem}); choose a writable directory"))


def _why_not_creatable(path: Path) -> str | None:
    """Why ``path`` cannot be made (or, existing, written) as a directory, without making anything."""
    p = path
    while not p.exists() and not p.is_symlink() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        return f"{p} is not a directory"
    if not os.access(p, os.W_OK | os.X_OK):
        return f"{p} is not writable"
    return None


# Config mappings whose keys are the user's to add: ``training.args.optim=adafactor`` means "set it",
# whether or not the composed config has the key yet (Hydra would ask for ``++``).
OPEN_SECTIONS = ("training.args.",)


def open_section_overrides(argv: list[str]) -> list[str]:
    """``training.args.X=v`` → ``++training.args.X=v`` (add or override): a user names any
    TrainingArguments field without Hydra's append syntax."""
    return [f"++{a}" if a.startswith(OPEN_SECTIONS) and "=" in a else a for a in argv]


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


def add_run_loading_args(parser, device: bool = True) -> None:
    """The options every command that rebuilds a saved run takes (predict, generate, export)."""
    parser.add_argument("--base", help="base model path/id, if not where the run loaded it from")
    if device:
        parser.add_argument("--device", help="e.g. cuda; default cpu")
    parser.add_argument("--no-fingerprint-check", action="store_true", help="load even if the base weights differ")
    parser.add_argument("--no-checksum-check", action="store_true",
                        help="load an adapter file that was edited on purpose (its checksum no longer matches)")


def run_loading_kwargs(args) -> dict:
    """The keyword arguments of ``artifacts.load_run`` that ``add_run_loading_args`` options set."""
    return {"base": args.base, "check_fingerprint": not args.no_fingerprint_check,
            "check_checksum": not args.no_checksum_check}


def quiet_hf() -> None:
    """For command-line tools: no progress bars or load reports from transformers / datasets on the
    terminal, so stdout is the answer and stderr, on bad input, the one ``error:`` line (the copy
    ``exit_on_user_error`` logs to the "lsr_adapt" logger is for log files, not the terminal)."""
    import datasets
    import transformers

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(lambda record: record.name != "lsr_adapt")
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
