"""``AdapterTrainer``: the one ``transformers.Trainer`` subclass, configured by its constructor.

What it adds to the stock Trainer, each switched by an argument rather than by a subclass:

* small atomic checkpoints (``checkpoints.py``): only what training changes (trainable weights,
  optimizer, scheduler, RNG states, Trainer state, the recorder's history and best weights),
  written into ``.tmp-checkpoint-<step>/`` by every rank and renamed into place by rank 0;
* a non-finite training loss policy: ``stop`` (default) keeps a flag on the device, read once per
  logging step, before every checkpoint and every evaluation (no GPU→CPU sync per micro-batch), and
  stops naming the first bad step; ``skip`` drops such batches (every trainable weight gets a zero
  gradient, so DDP's reducer still sees them all); deciding that before the backward pass needs the
  loss on the host, one sync per micro-batch, paid only by runs that opt in;
* ``param_groups``: a method's optimizer parameter groups (LoRA+'s faster B), built where the
  Trainer builds its optimizer, so DDP/FSDP wrapping sees it (FSDP refuses a pre-built optimizer);
* ``loss_metrics``: a task's metrics computed from the evaluation loss (a causal LM's perplexity);
  such evaluations keep no logits (blocks × tokens × vocabulary floats);
* a checkpoint due on an epoch's last step is written after that epoch's evaluation
  (``EpochEndCheckpoint``), so that a run killed right after it resumes with the epoch evaluated.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback

from ..config_schema import NONFINITE_POLICIES, valid_choices
from ..distributed import barrier, full_tensor, local_tensor
from ..errors import LsrAdaptError
from ..iofiles import write_json, write_text, writing
from ..outpaths import RUN_CONFIG
from . import compat
from .checkpoints import BEST, PREFIX, STATE, WEIGHTS, publish_checkpoint
from .recorder import EpochRecorder

log = logging.getLogger(__name__)


class NonFiniteLoss(LsrAdaptError):
    """A training step produced a NaN/inf loss and ``training.nonfinite_loss=stop``."""


class EpochEndCheckpoint(TrainerCallback):
    """Move a step-count checkpoint that falls on an epoch's last optimizer step to after that epoch's
    evaluation. The Trainer saves at the step's end and evaluates at the epoch's end, so a checkpoint
    written first held no record of the evaluation, and a run killed between the two resumed at the
    next epoch with that epoch's evaluation lost (another ``eval_history``, maybe another best epoch)."""

    def __init__(self) -> None:
        self.deferred = False

    def on_step_end(self, args, state, control, **kwargs):
        # state.epoch is epoch + (micro-batch + 1) / micro-batches per epoch: whole on an epoch's last step
        if control.should_save and args.eval_strategy == "epoch" and float(state.epoch or 0).is_integer():
            control.should_save, self.deferred = False, True

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.deferred:  # the Trainer evaluates first, then saves, in the same call
            control.should_save, self.deferred = True, False


class AdapterTrainer(Trainer):
    def __init__(self, *args, recorder: EpochRecorder, trainable_names, keep_checkpoints: int | None = None,
                 nonfinite: str = "stop", skipped_batches=(), param_groups: Callable | None = None,
                 loss_metrics: Callable[[float], dict] | None = None, run_config: str | None = None, **kwargs):
        if nonfinite not in NONFINITE_POLICIES:
            raise LsrAdaptError(f"unknown training.nonfinite_loss {nonfinite!r}; {valid_choices(NONFINITE_POLICIES)}")
        super().__init__(*args, **kwargs)
        self.add_callback(EpochEndCheckpoint())  # after DefaultFlowCallback, which sets should_save
        compat.numeric_console_logs(self)  # {'loss': 0.7927}, not transformers' {'loss': '0.7927'}
        self.recorder, self.trainable_names = recorder, set(trainable_names)
        self.keep_checkpoints, self.nonfinite = keep_checkpoints, nonfinite
        self.param_groups, self.loss_metrics = param_groups, loss_metrics
        self.run_config = run_config  # the resolved config (YAML): each checkpoint keeps it, under its manifest
        self.skipped_batches: list[int] = list(skipped_batches)  # steps whose batch was dropped ("skip")
        self.last_checkpoint: Path | None = None
        self._first_bad_step: torch.Tensor | None = None  # "stop": on the device, -1 while every loss is finite

    # -- optimizer --------------------------------------------------------------------------------
    def create_optimizer(self, model=None):
        if self.param_groups is None or self.optimizer is not None:
            return super().create_optimizer(model)
        opt_cls, opt_kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.model)
        self.optimizer = opt_cls(self.param_groups(model if model is not None else self.model), **opt_kwargs)
        return self.optimizer

    # -- non-finite losses ------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
        out = super().compute_loss(model, inputs, return_outputs=return_outputs, **kwargs)
        if not model.training:
            return out
        loss = out[0] if return_outputs else out
        step = self.state.global_step + 1
        if self.nonfinite == "stop":
            bad = ~torch.isfinite(loss.detach()).all()
            if self._first_bad_step is None:
                self._first_bad_step = torch.full((), -1, dtype=torch.long, device=loss.device)
            self._first_bad_step.masked_fill_(bad & (self._first_bad_step < 0), step)
            return out
        if bool(torch.isfinite(loss.detach()).all()):  # "skip": decided on the host, before backward
            return out
        log.warning("non-finite training loss at step %d: batch skipped (training.nonfinite_loss=skip)", step)
        self.skipped_batches.append(step)
        # zero gradients for every trainable weight; the NaN never reaches backward
        params = [p for p in model.parameters() if p.requires_grad]
        loss = sum((local_tensor(p).reshape(-1)[:1] * 0.0).sum() for p in params).to(loss.dtype)
        return (loss, *out[1:]) if return_outputs else loss

    def check_losses(self) -> None:
        """Raise ``NonFiniteLoss`` if a training loss since the start was NaN/inf (one device read)."""
        if self._first_bad_step is None:
            return
        step = int(self._first_bad_step.item())
        if step < 0:
            return
        last = self.last_checkpoint
        raise NonFiniteLoss(
            f"training loss is not finite at step {step} (epoch {self.state.epoch or 0:.2f}); "
            + (f"the last good checkpoint is {last}" if last else "no checkpoint was written yet")
            + "; lower training.learning_rate, or set training.nonfinite_loss=skip to drop such batches")

    def log(self, logs, *args, **kwargs):
        self.check_losses()
        return super().log(logs, *args, **kwargs)

    def evaluate(self, *args, **kwargs):
        self.check_losses()
        return super().evaluate(*args, **kwargs)

    # -- metrics from the loss --------------------------------------------------------------------
    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        if self.loss_metrics is None:
            return super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys,
                                           metric_key_prefix)
        out = super().evaluation_loop(dataloader, description, prediction_loss_only=True, ignore_keys=ignore_keys,
                                      metric_key_prefix=metric_key_prefix)
        loss = out.metrics.get(f"{metric_key_prefix}_loss")
        if loss is not None:
            out.metrics.update({f"{metric_key_prefix}_{k}": v for k, v in self.loss_metrics(loss).items()})
        return out

    # -- checkpoints ------------------------------------------------------------------------------
    def _save_checkpoint(self, model, trial) -> None:
        self.check_losses()  # never a checkpoint of diverged weights
        step = self.state.global_step
        run_dir = Path(self._get_output_dir(trial=trial))
        final, tmp = run_dir / f"{PREFIX}{step}", run_dir / f".tmp-{PREFIX}{step}"
        main = self.args.should_save
        try:
            self._write_checkpoint(model, run_dir, final, tmp, step, main)
        except LsrAdaptError as e:  # a full disk, a read-only dir: the torn checkpoint goes, the last one stays
            if main:
                shutil.rmtree(tmp, ignore_errors=True)
            last = self.last_checkpoint
            raise LsrAdaptError(f"{e}; free space and rerun the same command to resume"
                                + (f" from {last}" if last else "")) from None
        self.last_checkpoint = final
        barrier()

    def _write_checkpoint(self, model, run_dir: Path, final: Path, tmp: Path, step: int, main: bool) -> None:
        from safetensors.torch import save_file
        from transformers.trainer_callback import ExportableState

        if main:
            shutil.rmtree(tmp, ignore_errors=True)  # a torn one from a killed run
            with writing(tmp, "the checkpoint"):
                tmp.mkdir(parents=True)
        barrier()
        trainable = self.trainable_state()  # every rank: a collective under FSDP
        with writing(tmp, "the checkpoint"):
            if main:
                save_file({n: t.detach().to("cpu").contiguous() for n, t in trainable.items()}, tmp / WEIGHTS)
            if not self.args.save_only_model:
                self._save_optimizer_and_scheduler(str(tmp))
                self._save_scaler(str(tmp))
                self._save_rng_state(str(tmp))  # every rank, its own file
            if main:
                for cb in [*self.callback_handler.callbacks, self.control]:
                    if isinstance(cb, ExportableState):
                        self.state.stateful_callbacks[cb.__class__.__name__] = cb.state()
                self.state.save_to_json(str(tmp / "trainer_state.json"))
                info, best = self.recorder.state_dict()
                write_json(tmp / STATE, {**info, "skipped_batches": self.skipped_batches})
                if self.run_config is not None:  # what a resume must match, checksummed with the rest
                    write_text(tmp / RUN_CONFIG, self.run_config)
                if best:
                    save_file({n: t.contiguous() for n, t in best.items()}, tmp / BEST)
        barrier()  # every rank's RNG file is in
        if main:
            with writing(final, "the checkpoint"):
                publish_checkpoint(tmp, final, step, self.keep_checkpoints)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        model = self.accelerator.unwrap_model(self.model)
        return {n: full_tensor(p) for n, p in model.named_parameters() if n in self.trainable_names}

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None) -> None:
        # the weights were loaded before the Trainer wrapped the model (checkpoints.load_trainable)
        self.last_checkpoint = Path(resume_from_checkpoint)
