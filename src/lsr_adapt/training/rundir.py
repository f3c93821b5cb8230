"""One run directory, one run: where a run writes, the lock it holds, and what it refuses.

* A run dir that holds ``results.json`` is a finished run: never written again (a rerun into it
  stops with one line, and Hydra is kept from rewriting its ``.hydra/`` files and log, see
  ``register_resolvers``).
* A live run holds an exclusive lock (``filelock``, released by the OS if the process dies) on
  ``<run dir>/.lock`` for its whole life; a second process started into the same dir stops at once.
* Temp files left by a run that was killed mid-write are removed when the next run starts there.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from filelock import FileLock, Timeout
from omegaconf import DictConfig, OmegaConf

from ..distributed import is_main_process
from ..errors import LsrAdaptError, first_line
from ..iofiles import remove_stale_temp_files, write_text

log = logging.getLogger(__name__)

RESULTS = "results.json"
LOCK = ".lock"


def output_dir_of(cfg: DictConfig) -> Path:
    if cfg.get("output_dir"):
        return Path(cfg.output_dir)
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    raise LsrAdaptError("output_dir is not set: pass output_dir=... when calling train() outside a Hydra app")


def _lock(out_dir: Path) -> FileLock:
    return FileLock(str(out_dir / LOCK), timeout=0)


def in_use(out_dir: Path) -> bool:
    """Another live process holds this run dir's lock."""
    if not (out_dir / LOCK).exists():
        return False
    lock = _lock(out_dir)
    try:
        lock.acquire()
    except Timeout:
        return True
    lock.release()
    return False


def refusal(out_dir: Path) -> str | None:
    """Why no run may start in ``out_dir`` (finished, or in use by another process), or None."""
    if (out_dir / RESULTS).exists():
        return f"{out_dir} already holds a finished run ({RESULTS}); choose another output dir"
    if in_use(out_dir):
        return (f"{out_dir} is in use by another running process (it holds {out_dir / LOCK}); wait for it, "
                f"or choose another output dir")
    return None


@contextlib.contextmanager
def claim(out_dir: Path):
    """Hold ``out_dir`` for one run: refuse a finished or busy dir, lock it, clean stale temp files.
    Under torchrun / accelerate launch only rank 0 locks (every rank shares the one run dir)."""
    if (out_dir / RESULTS).exists():
        raise LsrAdaptError(refusal(out_dir))
    if not is_main_process():  # rank 0 holds the lock for all ranks
        yield
        return
    lock = _lock(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except Timeout:
        raise LsrAdaptError(refusal(out_dir) or f"{out_dir} is in use by another running process") from None
    except OSError as e:
        raise LsrAdaptError(f"cannot write the run dir {out_dir}: {e.strerror or first_line(e)}; "
                            f"choose a writable output_dir / hydra.run.dir") from None
    try:
        if (out_dir / RESULTS).exists():  # finished while we waited for the lock
            raise LsrAdaptError(refusal(out_dir))
        for stale in remove_stale_temp_files(out_dir):
            log.info("removed %s, left by a run killed while writing it", stale)
        yield
    finally:
        lock.release()


def write_config(out_dir: Path, cfg: DictConfig) -> None:
    if is_main_process():
        write_text(out_dir / "config_resolved.yaml", OmegaConf.to_yaml(cfg, resolve=True))


# -- keeping Hydra's hands off a finished or busy run dir ------------------------------------------
def _hydra_subdir(output_dir: str, subdir: str = ".hydra"):
    """``hydra.output_subdir``: Hydra's record of the command, unless the dir is finished or busy
    (then None: Hydra writes nothing there, and the run itself stops with one line)."""
    return None if refusal(Path(output_dir)) else subdir


def _hydra_log(output_dir: str, name: str) -> str:
    """``hydra.job_logging.handlers.file.filename``: the job's log, or nowhere for a finished/busy dir."""
    return os.devnull if refusal(Path(output_dir)) else str(Path(output_dir) / f"{name}.log")


def register_resolvers() -> None:
    """The resolvers conf/config.yaml uses for Hydra's own files (call before Hydra composes)."""
    for name, fn in (("lsr_adapt_subdir", _hydra_subdir), ("lsr_adapt_log", _hydra_log)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
