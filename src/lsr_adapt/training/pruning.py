"""Optuna pruning inside a run: each epoch's validation metric reported to the run's trial.

The lsr-adapt Optuna sweeper (``hydra_plugins/lsr_adapt_optuna``, driven by ``lsr_adapt.hpo``)
asks the study for a trial, registers it here under the Hydra job number it launches the trial as
(``register``), and launches the job in this process (Hydra's basic launcher). The job's
``build_trainer`` adds :class:`PruningCallback` when a trial is registered for its job number
(``pruning_callbacks``): after every epoch's evaluation it calls ``trial.report(value, epoch)``
and, when the study's pruner says so (``trial.should_prune()``), stops the training there. The run
then finishes as any run does (best epoch's weights, test metrics, adapter) and ``mark_pruned``
records ``status: pruned`` and where it stopped in its ``results.json``; the sweeper tells the
study the trial was pruned. A job launched in another process (joblib, submitit, Slurm) finds no
trial registered and trains without pruning.

Only Optuna's public trial API is used (``report``, ``should_prune``, ``number``); optuna itself is
not imported here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainerCallback

log = logging.getLogger(__name__)


@dataclass
class TrialHandle:
    trial: Any  # an optuna.trial.Trial
    pruned: dict | None = None  # {"epoch", "value", "metric"} once the pruner stopped the run
    reported: list = field(default_factory=list)  # (epoch, value) pairs told to the trial


# Hydra job number -> the trial launched as that job (in this process)
_HANDLES: dict[int, TrialHandle] = {}


def register(job_num: int, trial) -> TrialHandle:
    handle = _HANDLES[int(job_num)] = TrialHandle(trial)
    return handle


def release(job_num: int) -> TrialHandle | None:
    return _HANDLES.pop(int(job_num), None)


def current() -> TrialHandle | None:
    """The trial registered for this Hydra job, if any (None outside a sweep, or for a job of
    another launcher's process)."""
    from hydra.core.hydra_config import HydraConfig

    if not _HANDLES or not HydraConfig.initialized():
        return None
    num = HydraConfig.get().job.get("num")
    return _HANDLES.get(int(num)) if num is not None else None


class PruningCallback(TrainerCallback):
    """Report each epoch's validation ``metric`` to the trial; stop training when it is pruned."""

    def __init__(self, handle: TrialHandle, metric: str):
        self.handle, self.metric = handle, metric

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not metrics or state.global_step == 0:  # the evaluation before training is no epoch's result
            return
        value = metrics.get(f"eval_{self.metric}")
        if value is None:
            return
        epoch = int(round(state.epoch or 0))
        self.handle.trial.report(float(value), epoch)
        self.handle.reported.append((epoch, float(value)))
        if self.handle.trial.should_prune():
            self.handle.pruned = {"epoch": epoch, "value": float(value), "metric": self.metric}
            log.info("trial %d pruned after epoch %d (validation %s %.4g): training stops here",
                     self.handle.trial.number, epoch, self.metric, value)
            control.should_training_stop = True


def pruning_callbacks(metric: str) -> list:
    """``[PruningCallback]`` when this job is an Optuna trial launched in this process, else ``[]``."""
    handle = current()
    return [PruningCallback(handle, metric)] if handle is not None else []


def mark_pruned(results: dict) -> dict:
    """``results`` with ``status: pruned`` and the epoch it stopped at, when the pruner stopped this run."""
    handle = current()
    if handle is not None and handle.pruned is not None:
        results.update(status="pruned", pruned={**handle.pruned, "trial": handle.trial.number})
    return results
