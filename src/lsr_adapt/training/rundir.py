"""One run directory, one run: where a run writes, the lock it holds, and what it refuses.

* A run dir that holds ``results.json`` is a finished run: never written again (a rerun into it
  stops with one line, and Hydra is kept from rewriting its ``.hydra/`` files, see
  ``register_resolvers``; the job's log is written only once a run owns its dir, ``runlog``).
* A run dir that holds checkpoints is an interrupted run: the same command continues it; another
  config is refused (``checkpoints.resume_checkpoint``) and writes nothing there either. Hydra's
  record of the command that started it is kept as it was.
* A live run holds an exclusive lock (``filelock``, released by the OS if the process dies) on
  ``<run dir>/.lock`` for its whole life; a second process started into the same dir stops at once.
* Temp files left by a run that was killed mid-write are removed when the next run starts there
  (``start_records``: after the resume decision, so a refused command removes nothing).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from filelock import FileLock, Timeout
from omegaconf import OmegaConf

from .. import runlog
from ..distributed import is_main_process
from ..errors import LsrAdaptError, RunDirRefused, first_line
from ..iofiles import remove_stale_temp_files, write_text
from ..outpaths import HYDRA_RECORD, RESULTS, RUN_CONFIG
from .checkpoints import checkpoint_dirs

log = logging.getLogger(__name__)

LOCK = ".lock"
__all__ = ["LOCK", "RESULTS", "RUN_CONFIG", "claim", "output_dir_of", "refusal", "register_resolvers", "start_records"]


def output_dir_of(output_dir: str | None) -> Path:
    """The run dir: the config's ``output_dir``, else (null) the Hydra job's own."""
    if output_dir:
        return Path(output_dir)
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
    """Hold ``out_dir`` for one run: refuse a finished or busy dir, lock it. Under torchrun /
    accelerate launch only rank 0 locks (every rank shares the one run dir)."""
    if (out_dir / RESULTS).exists():
        raise RunDirRefused(refusal(out_dir))
    if not is_main_process():  # rank 0 holds the lock for all ranks
        yield
        return
    lock = _lock(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except Timeout:
        raise RunDirRefused(refusal(out_dir) or f"{out_dir} is in use by another running process") from None
    except OSError as e:
        raise LsrAdaptError(f"cannot write the run dir {out_dir}: {e.strerror or first_line(e)}; "
                            f"choose a writable output_dir / hydra.run.dir") from None
    try:
        if (out_dir / RESULTS).exists():  # finished while we waited for the lock
            raise RunDirRefused(refusal(out_dir))
        yield
    finally:
        lock.release()


def start_records(out_dir: Path, config_text: str) -> None:
    """The run owns ``out_dir`` (claimed, and any resume accepted): its log starts, a killed run's
    stale temp files go, and ``config_resolved.yaml`` is written."""
    runlog.start(out_dir)
    if is_main_process():
        for stale in remove_stale_temp_files(out_dir):
            log.info("removed %s, left by a run killed while writing it", stale)
        write_text(out_dir / RUN_CONFIG, config_text)


# -- keeping Hydra's hands off a finished or busy run dir ------------------------------------------
def _hydra_subdir(output_dir: str, subdir: str = HYDRA_RECORD):
    """``hydra.output_subdir``: Hydra's record of the command, unless the dir is finished or busy, or
    holds an interrupted run's checkpoints (then None: Hydra writes nothing there; the record of the
    command that started the run stays, and a relaunch either continues it or stops with one line)."""
    path = Path(output_dir)
    return None if refusal(path) or checkpoint_dirs(path) else subdir


def register_resolvers() -> None:
    """The resolver conf/config.yaml uses for Hydra's own files (call before Hydra composes)."""
    if not OmegaConf.has_resolver("lsr_adapt_subdir"):
        OmegaConf.register_new_resolver("lsr_adapt_subdir", _hydra_subdir)
