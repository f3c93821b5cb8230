"""Hydra callbacks: a sweep that writes its own comparison report when its last job ends, one that
goes on past failed jobs and exits non-zero at the end, naming them (``SweepStatus``), and one that
refuses a command before Hydra writes anything (``RefuseBeforeWriting``)."""

from __future__ import annotations

import logging
import os
import sys
import time
import uuid
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class ReportOnMultirunEnd(Callback):
    """After a ``--multirun`` (e.g. ``experiment=demo``), run ``python -m lsr_adapt.report`` on the sweep dir."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from .distributed import is_main_process
        from .errors import LsrAdaptError
        from .report import build_report

        if not is_main_process():  # a sweep under torchrun: rank 0 writes the report
            return

        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            written = build_report([sweep_dir])
        except LsrAdaptError as e:  # e.g. every job failed: the jobs' own errors were already shown
            log.error("no comparison report: %s", e)
            return
        log.info("comparison report: %s (%d runs, %d plots)", written["md"], written["runs"], len(written["plots"]))


class SweepStatus(Callback):
    """A ``--multirun`` whose jobs failed ends with one ``error:`` line and a non-zero exit status.

    Jobs record their own failure (``sweep_status.run_job`` writes ``failed.json`` and lets the
    launcher go on); when the sweep ends this counts the failed jobs of this sweep, logs each with
    its error line and exits with status 1. Register it first in ``hydra.callbacks`` (the root
    config): Hydra calls ``on_multirun_end`` in reverse order, so it runs after every other callback
    (e.g. ``ReportOnMultirunEnd``, whose report lists the failed jobs) and the exit comes last.
    """

    def __init__(self) -> None:
        self._started = time.time()

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from .sweep_status import SWEEP_ID_ENV

        self._started = time.time()
        os.environ[SWEEP_ID_ENV] = uuid.uuid4().hex  # inherited by the jobs, written into failed.json

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from .distributed import is_main_process
        from .sweep_status import SWEEP_ID_ENV, failed_jobs, jobs_started, summary_line, unrecorded

        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_id = os.environ.get(SWEEP_ID_ENV)
        failed = failed_jobs(sweep_dir, sweep_id) + [j for j in unrecorded if j.sweep_id == sweep_id]
        if not failed:
            return
        if is_main_process():
            for job in failed:
                log.error("failed job %s (%s): %s", job.path, " ".join(job.overrides), job.error)
            total = jobs_started(sweep_dir, self._started - 1)
            print(summary_line(failed, total, sweep_dir), file=sys.stderr, flush=True)
        raise SystemExit(1)  # after the other callbacks (reverse order) and the launcher's output


class RefuseBeforeWriting(Callback):
    """A command that will be refused stops before Hydra makes its run dir or writes ``.hydra/``.

    Hydra creates the run dir, its ``.hydra/`` record and the log before the task function starts,
    so a single run refused there (a bad value, a finished or busy run dir, an interrupted run's dir
    given another config, a dir it cannot write) used to leave files behind, or rewrite an
    interrupted run's record. ``on_run_start`` answers all of these first, with the one ``error:``
    line. A sweep into a ``hydra.sweep.dir`` that holds another sweep's ``multirun.yaml`` is refused
    the same way (rerunning the same sweep continues it: its finished jobs are kept, the rest run).
    """

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        import copy

        from omegaconf import open_dict, read_write

        from .cli import exit_on_user_error

        task = copy.deepcopy(config)
        with read_write(task), open_dict(task):
            del task["hydra"]
        exit_on_user_error(_check_run, task, Path(str(task.get("output_dir") or config.hydra.run.dir)))

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from omegaconf import OmegaConf

        from .cli import fail
        from .errors import RunDirRefused

        sweep_dir = Path(str(config.hydra.sweep.dir))
        record = sweep_dir / "multirun.yaml"
        if not record.exists():
            return
        try:
            before = list(OmegaConf.load(record).hydra.overrides.task)
        except Exception:  # unreadable: not a sweep this command can continue
            before = None
        now = list(config.hydra.overrides.task)
        if before == now:  # the same sweep again (e.g. after a pre-emption): it continues
            from .sweep_status import CONTINUED_ENV

            os.environ[CONTINUED_ENV] = "1"
            log.info("continuing the sweep in %s: jobs that finished before are kept", sweep_dir)
            return
        fail(RunDirRefused(
            f"hydra.sweep.dir={sweep_dir} holds another sweep (its multirun.yaml has overrides "
            f"{before}, this command {now}); choose another hydra.sweep.dir, or rerun that sweep's "
            f"command to continue it"))


def _check_run(task: DictConfig, out_dir: Path) -> None:
    """What ``train`` would refuse, asked before anything is written (see ``RefuseBeforeWriting``)."""
    import os

    from omegaconf import OmegaConf

    from .config_schema import validate_config
    from .errors import LsrAdaptError, RunDirRefused
    from .tracking import tracker_names
    from .training.checkpoints import checkpoint_dirs, resume_checkpoint
    from .training.rundir import refusal

    sections = validate_config(task)
    tracker_names(sections.logger, sections.training.get("report_to"))  # every tracker named is known and installed
    why = refusal(out_dir)
    if why:
        raise RunDirRefused(why)
    if out_dir.exists() and not os.access(out_dir, os.W_OK | os.X_OK):
        raise LsrAdaptError(f"cannot write the run dir {out_dir} (read-only, or not yours); choose "
                            f"another hydra.run.dir / output_dir")
    if checkpoint_dirs(out_dir):  # an interrupted run: only its own config may continue it
        resume_checkpoint(sections.training.resume, out_dir, OmegaConf.to_container(task, resolve=True))
