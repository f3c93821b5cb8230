"""``EpochRecorder``: per-epoch metrics, and the best epoch's trainable weights kept in memory."""

from __future__ import annotations

import math
import time

from transformers import TrainerCallback

from ..distributed import full_tensor
from ..errors import LsrAdaptError

# Trainer bookkeeping in every evaluation's metrics, not results
_NOT_METRICS = ("runtime", "samples_per_second", "steps_per_second", "model_preparation_time", "epoch")


class DivergedError(LsrAdaptError):
    """The evaluation gave a non-finite loss or metric: the run diverged and must not report success."""


class EpochRecorder(TrainerCallback):
    """Per-epoch metrics, and the best epoch's trainable weights kept in memory (they are small),
    so no full-model checkpoint is written to pick the best epoch. ``metric``: the one that picks
    the best epoch; ``higher``: whether larger is better."""

    def __init__(self, model, metric: str, higher: bool = True):
        self.model, self.metric, self.higher = model, metric, higher
        self.active = False
        self.history, self.best, self.best_epoch, self.best_state = [], None, None, None
        self.before = None  # the evaluations before training (kept in checkpoints: a resumed run has moved on)
        self.t0, self.elapsed_before = time.perf_counter(), 0.0  # elapsed_before: time spent before a resume

    def on_train_begin(self, args, state, control, **kw):
        self.active, self.t0 = True, time.perf_counter()

    def on_train_end(self, args, state, control, **kw):
        self.active = False  # later evaluations (test split) are not epochs

    def on_evaluate(self, args, state, control, metrics=None, **kw):
        if not self.active or not metrics:
            return
        losses = [h["loss"] for h in state.log_history if "loss" in h]
        entry = {k.removeprefix("eval_"): v for k, v in metrics.items() if k.removeprefix("eval_") not in _NOT_METRICS}
        # the epoch this evaluation closes, or (training.args.max_steps / eval_steps) falls in
        entry.update({"epoch": math.ceil((state.epoch or 0) - 1e-6), "step": state.global_step,
                      "elapsed_s": round(self.elapsed_before + time.perf_counter() - self.t0, 3),
                      "train_loss": losses[-1] if losses else None})
        self.history.append(entry)
        check_finite(entry, f"the evaluation after step {state.global_step} (epoch {entry['epoch']})")
        self.consider(entry.get(self.metric), entry["epoch"])

    def state_dict(self) -> tuple[dict, dict | None]:
        """What a checkpoint keeps of this recorder: (JSON-able info, the best epoch's weights)."""
        return {"history": self.history, "best": self.best, "best_epoch": self.best_epoch,
                "before": self.before}, self.best_state

    def load_state_dict(self, info: dict, best_state: dict | None) -> None:
        self.history, self.best, self.best_epoch = list(info["history"]), info["best"], info["best_epoch"]
        self.before = info["before"]
        self.best_state = best_state
        self.elapsed_before = self.history[-1]["elapsed_s"] if self.history else 0.0

    def consider(self, value, epoch: int) -> None:
        if value is not None and (self.best is None or (value > self.best if self.higher else value < self.best)):
            self.best, self.best_epoch = value, epoch
            # whole tensors also under FSDP (a collective: every rank evaluates and decides alike)
            self.best_state = {n: full_tensor(p.detach()).to("cpu", copy=True)
                               for n, p in self.model.named_parameters() if p.requires_grad}


def check_finite(metrics: dict, what: str) -> None:
    """A NaN/inf evaluation loss means the run diverged: an error, never a best epoch. (Metrics may be
    NaN by design, e.g. a correlation of constant predictions, so the loss alone decides.)"""
    loss = metrics.get("loss")
    if isinstance(loss, float) and not math.isfinite(loss):
        raise DivergedError(f"{what} gave a non-finite loss ({loss}): the training diverged; lower "
                            f"training.learning_rate (the run is not marked completed and no adapter is saved)")
