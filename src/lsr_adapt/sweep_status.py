"""A ``--multirun`` goes on past a failed job: the job leaves ``failed.json``, the sweep exits non-zero.

Hydra's basic sweeper stops a sweep at the first job whose task function raised, so one bad value
(``model.lora.r=0,4``) lost every later job. In a multirun, :func:`run_job` turns a job's exception
into ``<job dir>/failed.json`` (status ``failed``, the one-line error, the job's overrides; written
atomically, never a ``results.json``) and returns ``None``, so the launcher moves on; the Optuna
sweeper counts a ``None`` objective as a failed trial. ``hydra_callbacks.SweepStatus`` then counts
the failures when the sweep ends and exits non-zero with one line naming them. A single run keeps
the one-line ``error:`` / exit 2 contract of ``cli.exit_on_user_error`` (``run_job`` lets it pass).

Bottom layer: imports only ``errors``, ``iofiles``, ``outpaths``, ``runlog``, ``cli``, the standard library and Hydra.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from . import runlog
from .cli import log_to_files
from .errors import LsrAdaptError, RunDirRefused, first_line
from .iofiles import write_json
from .outpaths import FAILED, HYDRA_OVERRIDES, HYDRA_RECORD, RESULTS

log = logging.getLogger("lsr_adapt")

# set by the launching process when a sweep starts; jobs inherit it (in-process, joblib workers,
# submitit / Slurm environments), so the sweep's end counts its own failed.json, not an older sweep's
SWEEP_ID_ENV = "LSR_ADAPT_SWEEP_ID"
# set when a sweep is launched again into its own sweep dir (hydra_callbacks.RefuseBeforeWriting):
# its jobs that finished in an earlier launch are kept as they are, not failed
CONTINUED_ENV = "LSR_ADAPT_SWEEP_CONTINUED"


def in_multirun() -> bool:
    """True inside a job of ``--multirun`` (any launcher), False for a single run or outside Hydra."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def error_line(e: BaseException) -> str:
    """The one line a user sees: a user error's own message; for a crash, its type and first line."""
    text = first_line(e)  # the type's name when the message is empty
    if isinstance(e, LsrAdaptError) or text == type(e).__name__:
        return text
    return f"{type(e).__name__}: {text}"


def _job_dir(cfg) -> Path:
    """Where the job writes ``results.json``: ``output_dir`` if set, else Hydra's job directory."""
    from hydra.core.hydra_config import HydraConfig

    out = cfg.get("output_dir") if hasattr(cfg, "get") else None
    return Path(out) if out else Path(HydraConfig.get().runtime.output_dir)


def _is_rank0() -> bool:  # torchrun / accelerate: rank 0 alone writes a job's files
    return os.environ.get("RANK", "0") == "0"


def record_failure(job_dir: Path, e: BaseException) -> Path:
    """Write ``<job_dir>/failed.json`` for ``e`` (atomically) and log its line; returns the file."""
    from hydra.core.hydra_config import HydraConfig

    line = error_line(e)
    hc = HydraConfig.get() if HydraConfig.initialized() else None
    record = {
        "status": "failed",
        "error": line,
        "error_type": type(e).__name__,
        "overrides": list(hc.overrides.task) if hc else [],
        "job_num": hc.job.num if hc else None,
        "sweep_id": os.environ.get(SWEEP_ID_ENV),  # set by hydra_callbacks.SweepStatus: which sweep failed
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    path = Path(job_dir) / FAILED
    runlog.start(job_dir)  # the failure is this job's own: its log takes the lines held so far
    write_json(path, record)
    log.error("job failed: %s", line)
    if not isinstance(e, LsrAdaptError) and not log_to_files(logging.ERROR, "traceback of the failure above",
                                                             (type(e), e, e.__traceback__)):
        log.error("traceback of the failure above", exc_info=e)  # no log file: the console gets it
    return path


def _finished(job_dir: Path) -> str | None:
    if (job_dir / RESULTS).exists():
        return f"{job_dir} already holds a finished run"
    return None


# failures that could not be written to their job dir (a finished or busy run dir is never touched):
# counted by hydra_callbacks.SweepStatus at the end of the sweep (jobs run in this process)
unrecorded: list[FailedJob] = []


def run_job(fn, cfg, *args, refusal=_finished, **kwargs):
    """``fn(cfg, ...)``; inside a ``--multirun``, a failure is recorded and ``None`` returned.

    Outside a multirun every exception propagates unchanged (the entry point's one-line error).
    In a multirun, any ``Exception`` (a user error or a crash) becomes ``failed.json`` in the job's
    directory and the launcher goes on; ``KeyboardInterrupt`` / ``SystemExit`` still stop the sweep.
    A stale ``failed.json`` from an earlier attempt of the same job dir is removed when it starts. In
    a sweep launched again with the same command (``CONTINUED_ENV``), a job that finished before is
    kept as it is and its results returned.
    ``refusal(job_dir)``: why the job dir belongs to another run (finished, or locked by a live
    process), else None; such a dir is never written: the failure is kept in ``unrecorded``.
    """
    if not in_multirun():
        return fn(cfg, *args, **kwargs)
    job_dir = _job_dir(cfg)
    if os.environ.get(CONTINUED_ENV) and (job_dir / RESULTS).exists():
        log.info("%s finished in an earlier launch of this sweep: kept as it is", job_dir)
        return json.loads((job_dir / RESULTS).read_text())
    ours = _is_rank0() and refusal(job_dir) is None
    if ours:
        (job_dir / FAILED).unlink(missing_ok=True)
    try:
        return fn(cfg, *args, **kwargs)
    except Exception as e:
        if not _is_rank0():
            return None
        if ours and refusal(job_dir) is None and not isinstance(e, RunDirRefused):
            record_failure(job_dir, e)
        else:  # the job was refused a dir that is another run's: say so, leave the dir alone
            log.error("job failed: %s", error_line(e))
            hc = _hydra_config()
            unrecorded.append(FailedJob(job_dir, error_line(e), list(hc.overrides.task) if hc else [],
                                        os.environ.get(SWEEP_ID_ENV)))
        return None


def _hydra_config():
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


@dataclass
class FailedJob:
    path: Path  # the job directory
    error: str
    overrides: list
    sweep_id: str | None = None


def read_failure(job_dir: Path) -> FailedJob | None:
    """The failure recorded in ``job_dir`` (``None`` if it has no ``failed.json``)."""
    f = Path(job_dir) / FAILED
    try:
        data = json.loads(f.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        return FailedJob(Path(job_dir), f"{FAILED} unreadable: {e}", [])
    if not isinstance(data, dict):
        return FailedJob(Path(job_dir), f"{FAILED} is not a JSON object", [])
    return FailedJob(Path(job_dir), str(data.get("error", "unknown error")), list(data.get("overrides") or []),
                     data.get("sweep_id"))


def failed_jobs(sweep_dir: Path, sweep_id: str | None = None) -> list[FailedJob]:
    """Jobs below ``sweep_dir`` that left a ``failed.json`` (only those of sweep ``sweep_id``, if given)."""
    out = []
    for f in sorted(Path(sweep_dir).rglob(FAILED), key=lambda p: (len(p.parts), str(p))):
        job = read_failure(f.parent)
        if job is not None and (sweep_id is None or job.sweep_id == sweep_id):
            out.append(job)
    return out


def jobs_started(sweep_dir: Path, since: float) -> int:
    """Hydra job dirs below ``sweep_dir`` whose ``.hydra/overrides.yaml`` was written since ``since``."""
    n = 0
    for f in Path(sweep_dir).rglob(HYDRA_OVERRIDES):
        try:
            n += f.parent.name == HYDRA_RECORD and f.stat().st_mtime >= since
        except FileNotFoundError:
            continue
    return n


def summary_line(failed: list[FailedJob], total: int, sweep_dir: Path) -> str:
    """``error: 1 of 2 jobs failed (0): <its error>; ...`` for the end of a sweep."""

    def name(job: FailedJob) -> str:
        try:
            return str(job.path.relative_to(sweep_dir))
        except ValueError:
            return str(job.path)

    total = max(total, len(failed))
    names = ", ".join(name(j) for j in failed[:10]) + (", ..." if len(failed) > 10 else "")
    first = f"first ({name(failed[0])}): " if len(failed) > 1 else ""
    return (f"error: {len(failed)} of {total} jobs failed ({names}) in {sweep_dir}; {first}{failed[0].error} "
            f"(each failed job's error and overrides are in its {FAILED})")
