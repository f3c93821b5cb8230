"""Hydra callbacks: a sweep that writes its own comparison report when its last job ends."""

from __future__ import annotations

import logging
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
