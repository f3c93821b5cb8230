"""Preemption-safe training: small atomic checkpoints, resume from the newest good one, non-finite losses.

``trainer_with_checkpoints(base)`` subclasses a task's ``transformers.Trainer`` so that

* a checkpoint (``<run dir>/checkpoint-<step>/``) holds only what training changes: the trainable
  weights (adapter + head; the frozen base is rebuilt from its own checkpoint: kilobytes to a few
  MB instead of the whole model), optimizer,
  scheduler, grad scaler, every rank's RNG states, the Trainer state (global step, so the
  dataloader skips the batches already seen) and lsr-adapt's own state (per-epoch history, the
  best epoch's weights). It is written into ``.tmp-checkpoint-<step>/`` by every rank and renamed
  into place by rank 0 after a barrier, with a ``manifest.json`` (size and SHA-256 of each file)
  written last: a checkpoint directory either is complete or does not exist;
* only the newest ``keep`` complete checkpoints are kept;
* a non-finite training loss stops the run with an error naming the step and the last good
  checkpoint (``nonfinite="stop"``), or the batch is skipped (``"skip"``: every trainable weight
  gets a zero gradient, so DDP's reducer still sees all of them).

``find_resume_checkpoint(run_dir)`` returns the newest checkpoint whose files match its manifest,
warning about each newer one it passes over (torn by a crash mid-write, or damaged since).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path

import torch

from .distributed import barrier, full_tensor, local_tensor
from .errors import LsrAdaptError
from .iofiles import write_json

log = logging.getLogger(__name__)

PREFIX = "checkpoint-"
MANIFEST = "manifest.json"
WEIGHTS = "trainable.safetensors"
STATE = "lsr_adapt_state.json"
BEST = "best_weights.safetensors"
NONFINITE_POLICIES = ("stop", "skip")


class NonFiniteLoss(LsrAdaptError):
    """A training step produced a NaN/inf loss and ``training.nonfinite_loss=stop``."""


def checkpoint_dirs(run_dir) -> list[Path]:
    """``checkpoint-<step>`` dirs of a run, newest (highest step) first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir()
             if p.is_dir() and (m := re.fullmatch(rf"{PREFIX}(\d+)", p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checkpoint_problem(ckpt: Path) -> str | None:
    """Why ``ckpt`` cannot be resumed from (missing manifest, missing / resized / altered file), or None."""
    try:
        manifest = json.loads((ckpt / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        return f"no readable {MANIFEST} ({type(e).__name__})"
    for name, meta in manifest.get("files", {}).items():
        f = ckpt / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != meta["size"]:
            return f"{name} has {f.stat().st_size} bytes, not {meta['size']}"
        if _sha256(f) != meta["sha256"]:
            return f"{name} does not match its checksum"
    return None


def find_resume_checkpoint(run_dir) -> Path | None:
    """The newest intact checkpoint of ``run_dir`` (None if there is none); newer broken ones are warned about."""
    for ckpt in checkpoint_dirs(run_dir):
        problem = checkpoint_problem(ckpt)
        if problem is None:
            return ckpt
        log.warning("skipping checkpoint %s: %s; falling back to an older one", ckpt, problem)
    return None


def _write_manifest(ckpt: Path) -> None:
    files = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(ckpt.iterdir()) if p.is_file() and p.name != MANIFEST}
    write_json(ckpt / MANIFEST, {"files": files})


def _fsync_dir(path: Path) -> None:
    for f in path.iterdir():  # the data before the rename that publishes it
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


def _rotate(run_dir: Path, step: int, keep: int | None) -> None:
    """Keep the newest ``keep`` checkpoints up to ``step``. Steps only grow within a run, so a higher
    one, or a ``.tmp-`` dir, is left over from an attempt that was killed (or found corrupt)."""
    kept = 0
    for ckpt in checkpoint_dirs(run_dir):
        if int(ckpt.name.removeprefix(PREFIX)) > step or (keep and kept >= keep):
            shutil.rmtree(ckpt, ignore_errors=True)
        else:
            kept += 1
    for torn in run_dir.glob(f".tmp-{PREFIX}*"):
        shutil.rmtree(torn, ignore_errors=True)


def remove_checkpoints(run_dir) -> None:
    """After a run finished: its checkpoints (and torn leftovers) only served to finish it."""
    for ckpt in [*checkpoint_dirs(run_dir), *Path(run_dir).glob(f".tmp-{PREFIX}*")]:
        shutil.rmtree(ckpt, ignore_errors=True)


def load_trainable(model, ckpt) -> None:
    """Put a checkpoint's trainable weights into ``model`` (before the Trainer wraps it in DDP)."""
    from .artifacts import read_weights  # one-line errors for unreadable or non-finite tensors

    ckpt = Path(ckpt)
    saved = read_weights(ckpt / WEIGHTS)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(saved) != set(trainable):
        missing, extra = sorted(set(trainable) - set(saved)), sorted(set(saved) - set(trainable))
        raise LsrAdaptError(f"checkpoint {ckpt} does not fit this run's trainable weights (missing "
                            f"{missing[:3]}, unexpected {extra[:3]}): it was written by another configuration")
    with torch.no_grad():
        for n, t in saved.items():
            if trainable[n].shape != t.shape:
                raise LsrAdaptError(f"checkpoint {ckpt}: {n} has shape {list(t.shape)}, this run's "
                                    f"{list(trainable[n].shape)}: it was written by another configuration")
            trainable[n].copy_(t)


def load_recorder_state(recorder, ckpt) -> list[int]:
    """Restore the EpochRecorder from a checkpoint; returns the steps whose batch was skipped."""
    from .artifacts import read_json, read_weights

    ckpt = Path(ckpt)
    info = read_json(ckpt / STATE)
    recorder.load_state_dict(info, read_weights(ckpt / BEST) if (ckpt / BEST).exists() else None)
    return list(info.get("skipped_batches", []))


def trainer_with_checkpoints(base: type, *, recorder, trainable_names, keep: int | None,
                             nonfinite: str = "stop") -> type:
    """A subclass of the Trainer class ``base`` with the checkpoints and loss check of the module doc.

    ``recorder``: the run's EpochRecorder (its ``state_dict`` travels in the checkpoint);
    ``trainable_names``: the parameters a checkpoint stores. Resuming loads those weights and the
    recorder before the Trainer exists (``load_trainable``, ``load_recorder_state``); the Trainer
    then restores the optimizer, scheduler, RNG states and its step from the same checkpoint.
    """
    names = set(trainable_names)
    if nonfinite not in NONFINITE_POLICIES:
        raise LsrAdaptError(f"unknown training.nonfinite_loss {nonfinite!r}; valid choices: "
                            f"{', '.join(NONFINITE_POLICIES)}")

    class CheckpointingTrainer(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.skipped_batches: list[int] = []  # steps whose batch was dropped (nonfinite="skip")
            self.last_checkpoint: Path | None = None

        # -- checkpoints --------------------------------------------------------------------------
        def _save_checkpoint(self, model, trial) -> None:
            from safetensors.torch import save_file
            from transformers.trainer_callback import ExportableState

            step = self.state.global_step
            run_dir = Path(self._get_output_dir(trial=trial))
            final, tmp = run_dir / f"{PREFIX}{step}", run_dir / f".tmp-{PREFIX}{step}"
            main = self.args.should_save
            if main:
                shutil.rmtree(tmp, ignore_errors=True)  # a torn one from a killed run
                tmp.mkdir(parents=True)
            barrier()
            trainable = self.trainable_state()  # every rank: a collective under FSDP
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
                info, best = recorder.state_dict()
                write_json(tmp / STATE, {**info, "skipped_batches": self.skipped_batches})
                if best:
                    save_file({n: t.contiguous() for n, t in best.items()}, tmp / BEST)
            barrier()  # every rank's RNG file is in
            if main:
                _write_manifest(tmp)
                _fsync_dir(tmp)
                if final.exists():  # the same step written again after a resume
                    shutil.rmtree(final)
                os.replace(tmp, final)
                _rotate(run_dir, step, keep)
            self.last_checkpoint = final
            barrier()

        def trainable_state(self) -> dict[str, torch.Tensor]:
            model = self.accelerator.unwrap_model(self.model)
            return {n: full_tensor(p) for n, p in model.named_parameters() if n in names}

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None) -> None:
            # the weights were loaded before the Trainer wrapped the model (load_trainable)
            self.last_checkpoint = Path(resume_from_checkpoint)

        # -- non-finite losses ---------------------------------------------------------------------
        def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
            out = super().compute_loss(model, inputs, return_outputs=return_outputs, **kwargs)
            loss = out[0] if return_outputs else out
            if not model.training or bool(torch.isfinite(loss.detach()).all()):
                return out
            step = self.state.global_step + 1
            if nonfinite == "stop":
                last = self.last_checkpoint
                raise NonFiniteLoss(
                    f"training loss is {loss.detach().float().mean().item()} at step {step} "
                    f"(epoch {self.state.epoch or 0:.2f}); "
                    + (f"the last good checkpoint is {last}" if last else "no checkpoint was written yet")
                    + "; lower training.learning_rate, or set training.nonfinite_loss=skip to drop such batches")
            log.warning("non-finite training loss at step %d: batch skipped (training.nonfinite_loss=skip)", step)
            self.skipped_batches.append(step)
            # zero gradients for every trainable weight; the NaN never reaches backward
            params = [p for n, p in model.named_parameters() if p.requires_grad]
            loss = sum((local_tensor(p).reshape(-1)[:1] * 0.0).sum() for p in params).to(loss.dtype)
            return (loss, *out[1:]) if return_outputs else loss

    CheckpointingTrainer.__name__ = f"Checkpointing{base.__name__}"
    return CheckpointingTrainer
