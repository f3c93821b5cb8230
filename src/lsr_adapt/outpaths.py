"""Where a command may write: checked before any model loads, each refusal one ``LsrAdaptError`` line.

The rule the commands share (predict, export, report): no command writes inside a finished run
dir (one holding ``results.json``) or over its own input; outputs go to a path the user names or
to a fresh default beside the input. These checks run first, so a refused command has written
nothing and loaded nothing.

It also names the files of a run dir (``RESULTS``, ``RUN_CONFIG``, the adapter's files, Hydra's
record, a failed sweep job's record): each spelled here once, imported everywhere else.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import LsrAdaptError

# -- the files of a run dir, named once: every module in src/ imports them from here --------------
RESULTS = "results.json"  # what makes a directory a finished run (training/results.py writes it last)
RUN_CONFIG = "config_resolved.yaml"  # the run's resolved config: in the run dir, and in each checkpoint
FAILED = "failed.json"  # a --multirun job's failure (sweep_status), never beside a results.json
HYDRA_RECORD = ".hydra"  # Hydra's record of the command (hydra.output_subdir), unless kept from it
HYDRA_OVERRIDES = "overrides.yaml"  # inside HYDRA_RECORD: the command's overrides
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
LSR_ADAPT_CONFIG = "lsr_adapt_config.json"  # lsr-adapt's record beside peft's config (the peft layout)
LEGACY_WEIGHTS = "adapter_model.bin"


def _abs(path) -> Path:
    """``path`` made absolute without requiring it to exist (symlinks of existing parts resolved)."""
    return Path(os.path.abspath(Path(path).expanduser())).resolve()


def finished_run_of(path) -> Path | None:
    """The finished run dir ``path`` is, or lies inside (nearest first), or None."""
    p = _abs(path)
    for d in (p, *p.parents):
        if (d / RESULTS).is_file():
            return d
    return None


def is_inside(path, root) -> bool:
    """``path`` is ``root`` or below it (both made absolute)."""
    p, r = _abs(path), _abs(root)
    return p == r or r in p.parents


def _check_parents(path: Path, flag: str) -> None:
    """The nearest existing ancestor of ``path`` is a writable directory (so the write cannot fail
    half-way for a reason known now): a regular file in the way or a read-only dir is one line."""
    for d in _abs(path).parents:
        if d.exists():
            if not d.is_dir():
                raise LsrAdaptError(f"{flag} {path}: {d} is a file, not a directory; choose another path")
            if not os.access(d, os.W_OK | os.X_OK):
                raise LsrAdaptError(f"{flag} {path}: cannot write in {d} (permission denied); choose another path")
            return


def _finished_refusal(flag: str, path, run: Path, suggestion: str) -> LsrAdaptError:
    return LsrAdaptError(f"{flag} {path}: inside the finished run dir {run}, which is never changed; "
                         f"write it elsewhere, e.g. {flag} {suggestion}")


def check_output_file(path, flag: str = "--out", *, inputs=(), protect=()) -> Path:
    """An output file ``path`` that may be written: not a directory, not inside a finished run dir
    or a ``protect``-ed dir (the command's source run), not one of its ``inputs``, its parent
    creatable and writable."""
    path = Path(path)
    if str(path).strip() == "":
        raise LsrAdaptError(f"{flag} '': give a file path")
    if path.is_dir():
        raise LsrAdaptError(f"{flag} {path}: a directory; give a file path")
    for f in inputs:
        if f is not None and _abs(f) == _abs(path):
            raise LsrAdaptError(f"{flag} {path}: that is the input file; write the output to another path")
    for root in [finished_run_of(path.parent), *[_abs(r) for r in protect if r is not None]]:
        if root is not None and is_inside(path, root):
            raise _finished_refusal(flag, path, root, root.parent / f"{root.name}-{path.name}")
    _check_parents(path, flag)
    return path


def check_output_dir(path, flag: str = "--out", *, sources=(), overwrite: bool = False,
                     replaceable: str | None = None) -> Path:
    """An output directory ``path`` that may be created (or, with ``overwrite``, replaced).

    Refused: a regular file; the source dir (``sources``), a dir inside it or one holding it; a
    finished run dir, anything inside one, or (to be replaced) a dir holding one; with
    ``replaceable`` (a file name such as ``export_report.json``), a non-empty existing dir that
    this command did not write (it lacks that file), since replacing it deletes its files."""
    path = Path(path)
    if str(path).strip() == "":
        raise LsrAdaptError(f"{flag} '': give a directory path")
    if path.exists() and not path.is_dir():
        raise LsrAdaptError(f"{flag} {path}: a file, not a directory; choose another output directory")
    for src in sources:
        if src is None:
            continue
        if is_inside(path, src) or is_inside(src, path):
            raise LsrAdaptError(f"{flag} {path}: it {'is' if _abs(path) == _abs(src) else 'overlaps'} the source "
                                f"{src}, which is never changed; choose a directory outside it, e.g. "
                                f"{flag} {_abs(src).parent / (_abs(src).name + '-export')}")
    run = finished_run_of(path)
    if run is not None:
        raise _finished_refusal(flag, path, run, run.parent / f"{run.name}-{path.name}")
    if path.is_dir() and overwrite:
        inner = next((p.parent for p in path.rglob(RESULTS)), None)
        if inner is not None:
            raise LsrAdaptError(f"{flag} {path} --overwrite: it holds the finished run {inner}, which replacing "
                                f"it would delete; choose another output directory")
        if replaceable and any(path.iterdir()) and not (path / replaceable).is_file():
            raise LsrAdaptError(f"{flag} {path} --overwrite: not an output of this command (no {replaceable}); "
                                f"--overwrite replaces only an earlier output or an empty directory")
    _check_parents(path, flag)
    return path
