"""Hydra callbacks: a sweep that writes its own comparison report when its last job ends, and one that
goes on past failed jobs and exits non-zero at the end, naming them (``SweepStatus``)."""

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
